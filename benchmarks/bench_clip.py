"""Speed of clip_model.py against OpenAI's reference implementation, on identical random ViT-B/16 weights, in one run.

    python benchmarks/bench_clip.py [--batch 8 32] [--repeats 5] [--device cpu] [--quick]

Prints frames/s for encode_image (fp32, and bf16 autocast) at each batch size, and the time to encode the 51 HMDB-51
class prompts ("a photo of a {name}."), for both implementations, and our speed as a ratio of theirs. Runs alternate
between the two models so that both see the same machine load. The default batches are one video's frames: 8 (the
embedded world's clips) and 32 (the paper's zero-shot, base-to-novel and few-shot clips, Sec. 4).
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import clip_model  # noqa: E402
import data  # noqa: E402
import tokenizer  # noqa: E402
from conftest import _load_openai_module  # noqa: E402  (OpenAI's clip/model.py, loaded without its __init__)

HMDB51 = data.read_labels(os.path.join(ROOT, "splits", "labels", "hmdb_51_labels.csv"))  # 51 names


def synchronize(device):
    """Wait for queued GPU work, so that the clock measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats):
    """Best of `repeats` wall-clock timings (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="images per encode_image call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="batch 2, one round (a smoke run, under 30 s)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = [2], 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    reference = _load_openai_module("model").CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12).float().eval()
    ours = clip_model.build_model(reference.state_dict()).eval()
    reference, ours = reference.to(device), ours.to(device)
    prompts = tokenizer.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in HMDB51]).to(device)
    print(f"ViT-B/16, random weights, device {device}, {torch.get_num_threads()} threads")

    rows = []
    for batch in args.batch:
        images = torch.randn(batch, 3, 224, 224, device=device)
        for precision, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
            def run(model):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model.encode_image(images)
                synchronize(device)
            run(ours), run(reference)  # warm-up
            t_ref, t_ours = [], []
            for _ in range(args.repeats):  # alternate, so both see the same machine
                t_ref.append(best_time(lambda: run(reference), 1))
                t_ours.append(best_time(lambda: run(ours), 1))
            rows.append((f"images {precision}, batch {batch}", batch / min(t_ref), batch / min(t_ours), "frames/s"))

    # What block_at (clip_model.py: the last layer computed at the token each tower reads) buys on its own: ours
    # against ours with a full last layer whose output is then read at that token.
    def full_last_layer(block, x, position, causal):
        return block(x, causal)[torch.arange(x.shape[0], device=x.device), position]

    def with_block_at(enabled, fn):
        saved = clip_model.block_at
        clip_model.block_at = saved if enabled else full_last_layer
        try:
            fn()
        finally:
            clip_model.block_at = saved

    for batch in args.batch:
        images = torch.randn(batch, 3, 224, 224, device=device)
        run = lambda enabled: with_block_at(enabled, lambda: (ours.encode_image(images), synchronize(device)))  # noqa
        run(False), run(True)
        t_full, t_cut = [], []
        for _ in range(args.repeats):
            t_full.append(best_time(lambda: run(False), 1))
            t_cut.append(best_time(lambda: run(True), 1))
        rows.append((f"ours, block_at vs full, batch {batch}", batch / min(t_full), batch / min(t_cut), "frames/s"))

    def text(model):
        model.encode_text(prompts)
        synchronize(device)
    text(ours), text(reference)
    t_ref, t_ours = [], []
    for _ in range(args.repeats):
        t_ref.append(best_time(lambda: text(reference), 1))
        t_ours.append(best_time(lambda: text(ours), 1))
    rows.append(("51 HMDB-51 prompts", min(t_ref), min(t_ours), "s"))

    print(f"{'':34} {'reference':>12} {'ours':>12} {'speed-up':>9}   (block_at rows: full last layer, block_at)")
    for label, ref, our, unit in rows:
        speedup = our / ref if unit != "s" else ref / our
        print(f"{label:34} {ref:10.2f} {unit[:2]:>1} {our:10.2f} {unit[:2]:>1} {speedup:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
