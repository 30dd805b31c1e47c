"""Training-step time and peak memory of ViFi-CLIP for every training mode, with and without activation checkpointing,
and what the text cache saves in evaluation.

    python benchmarks/bench_vifi.py [--frames 8] [--batch 1] [--classes 51] [--steps 2] [--device cpu]

ViT-B/16 with random weights (the speed does not depend on them), 224 px frames, the 51 class names of HMDB-51 with
"a photo of a {}.", AdamW over vifi.trainable_parameters. Prompt mode uses the authors' few-shot prompts (10 tokens,
depth 12, both towers); 'none' trains nothing, so its row is one evaluation forward pass (no_grad).

Each configuration runs in a fresh process, so that its peak memory is its own: "peak" is the process's maximum
resident set (ru_maxrss), "step" is that peak minus the resident set after the model was built (activations,
gradients and optimizer state of one step). A step is forward + backward + optimizer.step; the time is the best of
--steps steps after one warm-up step (which also allocates the optimizer state).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import clip_model  # noqa: E402
import data  # noqa: E402
import prompts  # noqa: E402
import vifi  # noqa: E402

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
HMDB51 = data.read_labels(os.path.join(ROOT, "splits", "labels", "hmdb_51_labels.csv"))  # 51 names


def rss_mb() -> float:
    """The current resident set of this process, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def class_names(n: int) -> list:
    return [HMDB51[i % len(HMDB51)] + ("" if i < len(HMDB51) else f" {i}") for i in range(n)]


def build(mode: str, args) -> vifi.ViFiCLIP:
    torch.manual_seed(0)
    clip = clip_model.CLIP(**VIT_B16)
    prompt_config = prompts.FEW_SHOT if mode == "prompts" else {}
    return vifi.ViFiCLIP(clip, class_names(args.classes), train_mode=mode, **prompt_config).to(args.device)


def run_one(mode: str, checkpointing: bool, args) -> dict:
    """One configuration, in this (fresh) process."""
    device = torch.device(args.device)
    model = build(mode, args)
    model.clip.set_grad_checkpointing(checkpointing)
    params = vifi.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=1e-6) if params else None
    videos = torch.randn(args.batch, args.frames, 3, 224, 224, device=device)
    labels = torch.randint(args.classes, (args.batch,), device=device)
    baseline = rss_mb()

    def step():
        if optimizer is None:  # nothing to train: one evaluation pass
            model.eval()
            with torch.no_grad():
                model(videos)
            return
        model.train()
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(videos), labels).backward()
        optimizer.step()

    times = []
    for _ in range(1 + args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(mode=mode, checkpointing=checkpointing, trainable=sum(p.numel() for p in params),
                seconds=min(times[1:]), baseline_mb=baseline, peak_mb=peak, step_mb=peak - baseline)


@torch.no_grad()
def text_cache_costs(args) -> list:
    """Per-batch cost of the text side in evaluation with a frozen text tower: encoding the class prompts (what
    every batch would pay without the cache) against a cache hit."""
    model = build("none", args).eval()
    rows = []
    for n in (args.classes, 400):
        names = class_names(n)
        start = time.perf_counter()
        model.text_features(names)  # miss: encodes n prompts
        miss = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(100):
            model.text_features(names)
        hit = (time.perf_counter() - start) / 100
        rows.append(dict(classes=n, miss_s=miss, hit_s=hit))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=51)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(vifi.TRAIN_MODES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "mode,checkpointing": run one configuration, print JSON
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: 1 frame, one timed "
                        "step of the evaluation pass and of prompt learning")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.steps, args.modes = 1, 1, "prompts,none"
    if args.one:
        mode, ckpt = args.one.split(",")
        print(json.dumps(run_one(mode, ckpt == "1", args)))
        return

    print(f"ViT-B/16, {args.frames} frames x batch {args.batch}, {args.classes} classes, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'mode':>8} {'ckpt':>5} {'trainable':>12} {'step s':>8} {'peak MB':>9} {'step MB':>9}")
    for mode in args.modes.split(","):
        for ckpt in ((0,) if mode == "none" else (0, 1)):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{mode},{ckpt}", "--frames", str(args.frames),
                   "--batch", str(args.batch), "--classes", str(args.classes), "--steps", str(args.steps),
                   "--device", args.device]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"{mode:>8} {'yes' if ckpt else 'no':>5} {r['trainable']:>12,} {r['seconds']:>8.2f} "
                  f"{r['peak_mb']:>9.0f} {r['step_mb']:>9.0f}", flush=True)
    print("\ntext side per evaluation batch, frozen text tower")
    for r in text_cache_costs(args):
        print(f"  {r['classes']:>4} classes: encode {r['miss_s'] * 1e3:8.1f} ms (once per class set), "
              f"cache hit {r['hit_s'] * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
