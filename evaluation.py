"""Exact evaluation (paper Sec. 3-4): every video of a split counted once whatever the number of processes, an
unreadable video counted as wrong, multi-view scores summed over views, and each setting's headline figures (the
harmonic mean of base and novel, Table 2; the mean and spread over zero-shot splits, Table 1).
"""
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

import data


@torch.no_grad()
def evaluate(net, dataset: data.VideoDataset, class_names: list, rt, batch_size: int, workers: int, autocast,
             progress=lambda loader, desc: loader) -> dict:
    """Top-1, top-5 and mean per-class accuracy of the ViFiCLIP `net` on a dataset of clips [V*T, 3, S, S]. Videos
    are dealt out rank, rank+W, ... with no padding and the per-video results gathered, so every video counts exactly
    once. With V views per video the softmax scores of the views are summed, as the authors do."""
    net.eval()
    net.set_class_names(class_names)
    views = dataset.num_clips * dataset.num_crops
    loader = DataLoader(Subset(dataset, range(rt.rank, len(dataset), rt.world_size)), batch_size=batch_size,
                        num_workers=workers, collate_fn=data.collate)
    results = []  # (index, label, top-5 predicted classes, readable)
    for batch in progress(loader, f"eval {len(dataset)} videos"):
        clips = batch["clips"].to(rt.device, non_blocking=True)  # [B, V*T, 3, H, W]
        B = clips.shape[0]
        with autocast():
            logits = net(clips.view(B * views, dataset.num_frames, *clips.shape[2:]))  # [B*V, C]
        scores = logits.float().softmax(-1).view(B, views, -1).sum(1)  # [B, C]
        top5 = scores.topk(min(5, scores.shape[1]), dim=-1).indices.cpu()
        results += [(int(batch["index"][i]), int(batch["label"][i]), top5[i].tolist(), bool(batch["ok"][i]))
                    for i in range(B)]
    if rt.distributed:
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    assert sorted(r[0] for r in results) == list(range(len(dataset))), "evaluation lost or repeated a video"
    return accuracy_report(results, len(class_names))


def accuracy_report(results: list, num_classes: int) -> dict:
    """results: [(index, label, top5, readable)]; unreadable videos count as misclassified."""
    correct1 = [ok and top5[0] == label for _, label, top5, ok in results]
    correct5 = [ok and label in top5 for _, label, top5, ok in results]
    per_class = {}
    for (_, label, _, _), c in zip(results, correct1):
        per_class.setdefault(label, []).append(c)
    return dict(top1=100.0 * float(np.mean(correct1)), top5=100.0 * float(np.mean(correct5)),
                mean_class=100.0 * float(np.mean([np.mean(v) for v in per_class.values()])),
                videos=len(results), unreadable=sum(not r[3] for r in results), num_classes=num_classes)


def summarize(setting: str, reports: dict) -> dict:
    """The setting's headline figures: base/novel harmonic mean (Table 2), mean ± std over zero-shot splits
    (Table 1), top-1 of a single split."""
    summary = {}
    if setting == "base2novel" and {"base", "novel"} <= reports.keys():
        b, n = reports["base"]["top1"], reports["novel"]["top1"]
        summary.update(base=b, novel=n, hm=0.0 if b + n == 0 else 2 * b * n / (b + n))
    if setting == "zeroshot":
        by_target = {}
        for name, report in reports.items():
            by_target.setdefault(name.split("/")[0], []).append(report)
        for target, rs in by_target.items():
            for metric in ("top1", "top5"):
                values = [r[metric] for r in rs]
                summary[f"{target}_{metric}_mean"] = float(np.mean(values))
                summary[f"{target}_{metric}_std"] = float(np.std(values))
    if len(reports) == 1:
        summary.update(top1=next(iter(reports.values()))["top1"])
    return summary


def headline(summary: dict) -> float:
    """The number best.pt is chosen by: the harmonic mean, else top-1, else the mean of the zero-shot targets."""
    if "hm" in summary:
        return summary["hm"]
    if "top1" in summary:
        return summary["top1"]
    means = [v for k, v in summary.items() if k.endswith("top1_mean")]
    return float(np.mean(means)) if means else 0.0


UNREADABLE_WARNING = 0.01  # more than 1% of a split unreadable: said loudly, in the output and in metrics.json


def unreadable_warnings(reports: dict) -> list:
    """Unreadable videos count as wrong; when they are more than a few, the accuracy says more about the files than
    about the model, and the run says so."""
    return [f"{name}: {r['unreadable']} of {r['videos']} videos unreadable, counted as wrong; check them with "
            f"python data.py --check" for name, r in reports.items() if r["unreadable"] > UNREADABLE_WARNING * r["videos"]]
