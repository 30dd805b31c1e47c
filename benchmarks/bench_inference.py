"""Classifying a video on a CPU: ours in the precision mixed_precision.inference_precision picks ("auto") against OpenAI's
reference in fp32, on identical random ViT-B/16 weights, in one run.

    python benchmarks/bench_inference.py [--frames 8 32] [--repeats 5] [--threads N] [--quick]

One call is what vifi.classify does once the frames are decoded: a video's T frames [T, 3, 224, 224] through the
image tower, the embeddings averaged and normalised, scored against the 51 HMDB-51 class prompts, whose embeddings
are computed once and cached (both sides). Rows: the reference in fp32, ours in fp32, ours in bf16 autocast (whatever
auto chose, to show what bf16 gives on this processor) and ours in auto's choice. Calls alternate between the
variants, round after round, and each reports its best round, so that load from other processes hurts all alike.
Agreement on 4 videos of random frames: the centred logits (minus their mean over the classes) of ours in every
precision against the reference, cosine > 0.99 and the same top class, asserted.

    python benchmarks/bench_inference.py --world [--init-from CHECKPOINT]

Agreement where it counts: top-1 on the embedded world's toy-hmdb validation videos (480, 8 frames) in fp32 and in
bf16 autocast, and how many predictions changed, with the tiny CLIP (vanilla, bare class names, as `train.py
--setting fewshot --k 16 --train none --eval-only`), or a model trained by train.py ("a photo of a {}.").
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import clip_model  # noqa: E402
import tokenizer  # noqa: E402
import vifi  # noqa: E402
from plumbing import clip_weights, mixed_precision, vifi_weights  # noqa: E402
from bench_clip import HMDB51  # noqa: E402
from conftest import _load_openai_module  # noqa: E402  (OpenAI's clip/model.py, loaded without its __init__)


def reference_classifier(reference):
    """The reference's video logits: OpenAI's encode_image on the frames, mean over time, cosine with the class
    prompts' embeddings (encoded once) times its logit scale."""
    tokens = tokenizer.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in HMDB51])
    text = F.normalize(reference.encode_text(tokens).float(), dim=-1)  # [C, D]

    def logits(videos):  # [B, T, 3, H, W] -> [B, C]
        frames = reference.encode_image(videos.flatten(0, 1)).float().view(*videos.shape[:2], -1)
        return reference.logit_scale.exp() * F.normalize(frames.mean(1), dim=-1) @ text.t()
    return logits


def ours_classifier(model, precision):
    dtype = mixed_precision.AUTOCAST_DTYPES[precision]

    def logits(videos):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return model(videos).float()
    return logits


def agreement(a, b):
    """(min cosine of the centred logits, same argmax everywhere)"""
    ca, cb = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return F.cosine_similarity(ca, cb, dim=-1).min().item(), bool((a.argmax(-1) == b.argmax(-1)).all())


@torch.no_grad()
def world_agreement(init_from=None, limit=None, batch=8):
    import data
    from world import miniworld
    paths = miniworld.dataset_paths(miniworld.DEFAULT_TARGET)
    names = data.read_labels(paths["labels"])
    samples = data.read_list(paths["val"], len(names))[:limit]
    model = vifi.ViFiCLIP(clip_weights.load(miniworld.TINY_CLIP_NAME), names, train_mode="none",
                          templates=vifi.FINETUNE_TEMPLATE if init_from else vifi.ZERO_SHOT_TEMPLATE).eval()
    if init_from:
        vifi_weights.load_weights(model, init_from)
    dataset = data.VideoDataset(paths["root"], samples, num_frames=8, input_size=model.clip.visual.input_resolution)
    clips = torch.stack([dataset.load(i) for i in range(len(samples))])  # [N, 8, 3, S, S]
    labels = torch.tensor([y for _, y in samples])
    predictions = {}
    for precision in ("fp32", "bf16"):
        predict = ours_classifier(model, precision)
        batches = [clips[i:i + batch] for i in range(0, len(clips), batch)]
        predictions[precision] = torch.cat([predict(b).argmax(-1) for b in batches])
        correct = int((predictions[precision] == labels).sum())
        print(f"  {precision}: top-1 {100 * correct / len(labels):.2f}% ({correct} of {len(labels)} videos)")
    changed = int((predictions["fp32"] != predictions["bf16"]).sum())
    print(f"  predictions that differ between fp32 and bf16: {changed} of {len(labels)}")


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32], help="frames per video")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (best one reported)")
    parser.add_argument("--quick", action="store_true", help="2 frames, 1 round (a smoke run, under 30 s)")
    parser.add_argument("--world", action="store_true", help="top-1 in fp32 and bf16 on the embedded world instead")
    parser.add_argument("--init-from", help="--world: a checkpoint written by train.py (default: vanilla tiny CLIP)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.world:
        print(f"embedded world, toy-hmdb validation, {args.init_from or 'vanilla tiny CLIP'}")
        return world_agreement(args.init_from, limit=96 if args.quick else None)
    if args.quick:
        args.frames, args.repeats = [2], 1
    torch.manual_seed(0)
    reference = _load_openai_module("model").CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12).float().eval()
    model = vifi.ViFiCLIP(clip_model.build_model(reference.state_dict()), HMDB51, train_mode="none").eval()
    auto = mixed_precision.inference_precision("cpu", "auto")
    variants = {"reference fp32": reference_classifier(reference), "ours fp32": ours_classifier(model, "fp32"),
                "ours bf16": ours_classifier(model, "bf16"), f"ours auto ({auto})": ours_classifier(model, auto)}
    print(f"ViT-B/16, random weights, {len(HMDB51)} classes, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; auto = {auto}")

    videos = torch.randn(4, 2 if args.quick else 4, 3, 224, 224)
    expected = variants["reference fp32"](videos)
    for name, fn in variants.items():
        if name != "reference fp32":
            cosine, same = agreement(fn(videos), expected)
            print(f"  {name:22s} vs reference: centred-logit cosine {cosine:.5f}, same top class: {same}")
            assert cosine > 0.99 and same, f"{name} disagrees with the reference"

    print(f"{'frames':>6} {'variant':22s} {'videos/s':>9} {'frames/s':>9} {'/ reference':>12} {'/ ours fp32':>12}")
    for T in args.frames:
        video = torch.randn(1, T, 3, 224, 224)
        times = {name: [] for name in variants}
        for fn in variants.values():
            fn(video)  # warm-up (and the class embeddings into the cache)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(video)
                times[name].append(time.perf_counter() - start)
        best = {name: min(t) for name, t in times.items()}
        for name in variants:
            print(f"{T:>6} {name:22s} {1 / best[name]:9.3f} {T / best[name]:9.2f} "
                  f"{best['reference fp32'] / best[name]:11.2f}x {best['ours fp32'] / best[name]:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
