"""How far the main job could go on the tiny CLIP's frozen features: read-outs of its frame embeddings on videos.

    python benchmarks/video_feature_probe.py [--seeds 1 2 3] [--quick]

The main job (`train.py --setting fewshot --k 16`: toy-hmdb, 8 frames) fine-tunes both towers of the tiny CLIP and
classifies the mean of the frame embeddings (Eq. 1). Here the tiny CLIP stays frozen: each video's 8 frames
(train.py's evaluation frames, the centre of each segment) are encoded once, and small read-outs are trained on the
K-shot training videos of `--split s` (the very videos the main job trains on with that seed) and scored on the
evaluation split (test; MINIWORLD_EVAL=val: validation), as train.py scores the main job:

  linear, mean of frames      a logistic regression on the normalised mean of the frame embeddings, each taken at
                              unit norm (Eq. 1 averages them as they come, then normalises)
  cosine head, CLIP's scale   one free unit vector per class, logits exp(logit_scale) * cos(video, class): the best a
                              text tower could do on frozen image features if it could write any class embedding
                              (text-FT's role)
  per-frame map, then mean    a residual two-layer MLP applied to each frame's embedding before the mean, then a linear
                              layer: what adapting the frozen embedding frame by frame can add under mean pooling
  frames in order             a logistic regression on the 8 frame embeddings concatenated: what the frames hold
                              when their order is kept (no mean pooling; the paper's method has none)

and the same with every training video (20-43 per class) instead of K. Every read-out's settings were fixed before
this script was run on the test split (they were tried once on the validation split); each is deterministic.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import train  # noqa: E402
from plumbing import protocols  # noqa: E402
from world import miniworld  # noqa: E402


@torch.no_grad()
def frame_embeddings(net, split, cfg) -> torch.Tensor:
    """[N, T, D] unit-norm frame embeddings of a Split's videos, evaluation frames, frozen model."""
    net.eval()
    loader = torch.utils.data.DataLoader(split.dataset(cfg), batch_size=32, collate_fn=data.collate)
    out = []
    for batch in loader:
        out.append(F.normalize(net.encode_frames(batch["clips"]).float(), dim=-1))
    return torch.cat(out)


def logistic_regression(x_train, y_train, x_eval) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=10, max_iter=5000).fit(x_train, y_train).predict(x_eval)


def fit(head: torch.nn.Module, x, y, steps: int, lr: float, weight_decay: float) -> torch.nn.Module:
    """Full-batch AdamW on the cross-entropy of head(x)."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


class CosineHead(torch.nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.classes, self.scale = torch.nn.Parameter(torch.randn(classes, dim) * 0.01), scale

    def forward(self, frames):  # [N, T, D] -> [N, C]
        return self.scale * F.normalize(frames.mean(1), dim=-1) @ F.normalize(self.classes, dim=-1).t()


class PerFrameMap(torch.nn.Module):
    def __init__(self, dim, classes, hidden=256):
        super().__init__()
        self.map = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, frames):  # [N, T, D] -> [N, C]
        return self.head((frames + self.map(frames)).mean(1))


def read_outs(train_x, train_y, eval_x, eval_y, C: int, scale: float, quick: bool) -> dict:
    """read-out -> top-1 % on the evaluation videos."""
    D = train_x.shape[-1]
    mean = lambda x: F.normalize(x.mean(1), dim=-1).numpy()  # noqa: E731
    top1 = lambda predicted: 100.0 * float(np.mean(np.asarray(predicted) == eval_y.numpy()))  # noqa: E731
    torch.manual_seed(0)
    cosine = fit(CosineHead(D, C, scale), train_x, train_y, 50 if quick else 2000, 1e-2, 0.0)
    torch.manual_seed(0)
    per_frame = fit(PerFrameMap(D, C), train_x, train_y, 20 if quick else 300, 3e-3, 0.1)
    with torch.no_grad():
        return {"linear, mean of frames": top1(logistic_regression(mean(train_x), train_y, mean(eval_x))),
                "cosine head, CLIP's scale": top1(cosine(eval_x).argmax(1)),
                "per-frame map, then mean": top1(per_frame(eval_x).argmax(1)),
                "frames in order": top1(logistic_regression(train_x.flatten(1).numpy(), train_y,
                                                            eval_x.flatten(1).numpy()))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="K-shot splits (train.py --split)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: one seed, short fits, "
                                                             "40 evaluation videos")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
    cfg, given = train.parse_command_line(["--setting", "fewshot", "--k", str(args.k), "--train", "none"])
    rt = train.setup_runtime(cfg)
    built = train.setup(cfg, rt, given)  # the vanilla model and the derived configuration (input size, statistics)
    cfg, net = built.cfg, built.model
    _, (evaluation,) = miniworld.WORLD.splits(cfg)  # the main job's evaluation split
    paths = miniworld.dataset_paths(miniworld.DEFAULT_TARGET)
    full = protocols.load_split("train", paths["root"], paths["train"], paths["labels"])
    if args.quick:
        evaluation.samples = evaluation.samples[::len(evaluation.samples) // 40]
    net.set_class_names(full.class_names)
    scale = float(net.clip.logit_scale.exp())
    train_x, eval_x = frame_embeddings(net, full, cfg), frame_embeddings(net, evaluation, cfg)
    train_y = torch.tensor([label for _, label in full.samples])
    eval_y = torch.tensor([label for _, label in evaluation.samples])
    C = len(full.class_names)
    row = {path: i for i, (path, _) in enumerate(full.samples)}
    print(f"{evaluation.name}: {len(evaluation.samples)} videos, {len(full.class_names)} classes, frozen tiny CLIP "
          f"(logit scale {scale:.1f}); top-1 %")
    shots = []  # one dict of read-outs per K-shot split
    for seed in args.seeds:
        split = protocols.kshot(full, dataclasses.replace(cfg, split=seed))
        idx = torch.tensor([row[path] for path, _ in split.samples])
        shots.append(read_outs(train_x[idx], train_y[idx], eval_x, eval_y, C, scale, args.quick))
    everything = None if args.quick else read_outs(train_x, train_y, eval_x, eval_y, C, scale, args.quick)
    for name in shots[0]:
        figures = [r[name] for r in shots]
        line = (f"  {name:<27} K={args.k}: {np.mean(figures):5.1f} ± {np.std(figures):.1f} "
                f"({', '.join(f'{f:.1f}' for f in figures)})")
        print(line + (f"   every training video: {everything[name]:.1f}" if everything else ""), flush=True)


if __name__ == "__main__":
    main()
