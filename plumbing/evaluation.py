"""Exact evaluation (paper Sec. 3-4): every video of a split counted once whatever the number of processes, an
unreadable video counted as wrong, multi-view scores summed over views (Table 4), each setting's headline figures (the
harmonic mean of base and novel, Table 2; the mean and spread over zero-shot splits, Table 1), and the run's
metrics.json. train.py calls evaluate_splits after training epochs and final_evaluation at the end.
"""
import dataclasses
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm import tqdm

import data
from data import DatasetError
from plumbing import global_batches, mixed_precision, paper_figures, run_files


@torch.no_grad()
def evaluate(net, dataset: data.VideoDataset, class_names: list, rt, batch_size: int, workers: int, autocast,
             progress=lambda loader, desc: loader) -> dict:
    """Top-1, top-5 and mean per-class accuracy of the ViFiCLIP `net` on a dataset of clips [V*T, 3, S, S]. Videos
    are dealt out rank, rank+W, ... with no padding and the per-video results gathered, so every video counts exactly
    once. With V views per video the softmax scores of the views are summed, as the authors do."""
    net.eval()
    net.set_class_names(class_names)
    views = dataset.num_clips * dataset.num_crops
    loader = global_batches.loader(Subset(dataset, range(rt.rank, len(dataset), rt.world_size)), batch_size, workers,
                                   persistent=False)  # read once: its workers end with the pass
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
    """The number best.pt is chosen by: base-to-novel's base accuracy (as the authors choose; the novel classes stay
    unseen), else top-1, else the mean of the zero-shot targets."""
    if "base" in summary:
        return summary["base"]
    if "top1" in summary:
        return summary["top1"]
    means = [v for k, v in summary.items() if k.endswith("top1_mean")]
    return float(np.mean(means)) if means else 0.0


UNREADABLE_WARNING = 0.01  # more than 1% of a split unreadable: said loudly, in the output and in metrics.json


def unreadable_warnings(reports: dict) -> list:
    """Unreadable videos count as wrong; when they are more than a few, the accuracy says more about the files than
    about the model, and the run says so."""
    return [f"{name}: {r['unreadable']} of {r['videos']} videos unreadable, counted as wrong; check them with "
            f"python -m tools.check_dataset" for name, r in reports.items()
            if r["unreadable"] > UNREADABLE_WARNING * r["videos"]]


def evaluate_splits(net, splits: list, cfg, rt, num_clips=1, num_crops=1) -> tuple:
    """({split name: report}, the setting's summary) of the current weights on train.py's evaluation splits."""
    reports = {}
    for split in splits:
        dataset = split.dataset(cfg, train=False, num_clips=num_clips, num_crops=num_crops)
        bar = lambda loader, desc: tqdm(loader, f"eval {split.name}", leave=False, file=sys.stdout,  # noqa: E731
                                        disable=not rt.is_main or None)
        reports[split.name] = evaluate(net, dataset, split.class_names, rt, cfg.micro_batch, cfg.workers,
                                       lambda: mixed_precision.autocast(rt.device, cfg.precision), bar)
        if reports[split.name]["unreadable"] == len(split.samples):  # an accuracy of 0 that says nothing: stop
            raise DatasetError(f"{split.name}: all {len(split.samples)} videos under {split.root} are unreadable; "
                               f"check them with: python -m tools.check_dataset ROOT LIST LABELS")
    return reports, summarize(cfg.setting, reports)


def final_evaluation(net, splits: list, cfg, rt, single_view=None) -> tuple:
    """The setting's reported evaluation: single view, or the fully-supervised multi-view protocol and what the views
    add (Table 4). single_view: the final weights' (reports, summary), when the last epoch computed them."""
    single = single_view or evaluate_splits(net, splits, cfg, rt)
    if cfg.num_clips * cfg.num_crops == 1:
        return single
    reports, summary = evaluate_splits(net, splits, cfg, rt, num_clips=cfg.num_clips, num_crops=cfg.num_crops)
    reports.update({f"{k} (1 view)": v for k, v in single[0].items()})
    summary.update({f"{k}_1view": v for k, v in single[1].items()})
    return reports, summary


def report(cfg, rt, final: tuple, state, best_reported: bool) -> dict:
    """The finished run's metrics.json: the final weights' (reports, summary) `final`, or, where the setting reports the
    best of its evaluations (best_reported: the authors' "Max accuracy") and that was not the last, the best's, with
    the final weights' beside them. state: the run's RunState (its history and best evaluation)."""
    best = state.best_evaluation
    if best_reported and best and best["epoch"] != state.epoch:
        return write_metrics(cfg, rt, best["reports"], best["summary"], state.history,
                             final=dict(reports=final[0], summary=final[1]),
                             reported=f"the best of the evaluations, after epoch {best['epoch']}")
    return write_metrics(cfg, rt, *final, state.history, reported="the final weights")


def write_metrics(cfg, rt, reports: dict, summary: dict, history: list, reported: str, final: dict = None) -> dict:
    """metrics.json in the run's folder (written whole or not at all), and the results printed. `reported` says which
    weights the figures are of; `final`: the final weights' reports and summary, where the figures are another's."""
    metrics = dict(summary=summary, reports=reports, reported=reported, history=history,
                   config=dataclasses.asdict(cfg), code_version=run_files.code_version(), world_size=rt.world_size,
                   warnings=unreadable_warnings(reports))
    if final is not None:
        metrics["final"] = final
    metrics["paper"] = paper_figures.beside(cfg, reports, summary)  # the paper's figure for this run's row, if any
    if rt.is_main:
        run_files.atomic_write_text(os.path.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=2))
        for name, r in reports.items():
            print(f"{name:>20}: top-1 {r['top1']:.1f}  top-5 {r['top5']:.1f}  mean-class {r['mean_class']:.1f}  "
                  f"({r['videos']} videos, {r['unreadable']} unreadable)")
        print(f"summary ({reported}): " + json.dumps({k: round(v, 2) for k, v in summary.items()}), flush=True)
        if final is not None:
            print("final weights: " + json.dumps({k: round(v, 2) for k, v in final["summary"].items()}), flush=True)
        print("".join(f"{line}\n" for line in paper_figures.lines(metrics["paper"], cfg.dataset)), end="", flush=True)
        for warning in metrics["warnings"]:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return metrics
