"""The GPU checks of clip_model.py, in one run: parity with OpenAI's implementation under fp32, bf16 autocast and fp16
autocast, and image/text throughput against it at batch 256. Prints a markdown table for the README.

    python benchmarks/gpu_checks.py                      # on the GPU (the default device is cuda)
    python benchmarks/gpu_checks.py --device cpu --batch 4 --repeats 1   # the same code path on a CPU, to try it

Both models hold the same random ViT-B/16 weights, perturbed so that no bias or norm sits at 0 or 1 (as in the tests).
Parity in fp32 runs with TF32 switched off (PyTorch allows it for cuDNN convolutions by default); the autocast rows
compare each implementation with the fp32 reference output (cosine similarity) and the two with each other (max
absolute difference), because under autocast both are only close to fp32. Throughput alternates between the two
models and keeps the best of --repeats runs.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import clip_model  # noqa: E402
import data  # noqa: E402
import tokenizer  # noqa: E402
from bench_clip import best_time, synchronize  # noqa: E402  (benchmarks/ is this script's folder, first on sys.path)
from conftest import _load_openai_module  # noqa: E402  (OpenAI's clip/model.py, loaded without its __init__)

VIT_B16 = (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)  # OpenAI's CLIP constructor arguments
K400 = data.read_labels(os.path.join(ROOT, "splits", "labels", "kinetics_400_labels.csv"))  # 400 names
PRECISIONS = {"fp32": None, "bf16 autocast": torch.bfloat16, "fp16 autocast": torch.float16}


def models(device):
    """(reference, ours) with identical perturbed random ViT-B/16 weights, in fp32 on `device`."""
    torch.manual_seed(0)
    reference = _load_openai_module("model").CLIP(*VIT_B16).float().eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = clip_model.build_model(reference.state_dict()).eval()
    return reference.to(device), ours.to(device)


def encode(model, images, texts, device, dtype):
    """-> (image embeddings, text embeddings) in fp32, under autocast to dtype (None: plain fp32)."""
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model.encode_image(images).float(), model.encode_text(texts).float()


def parity_rows(reference, ours, images, texts, device):
    rows = []
    expected = encode(reference, images, texts, device, None)
    for name, dtype in PRECISIONS.items():
        theirs = encode(reference, images, texts, device, dtype)
        mine = encode(ours, images, texts, device, dtype)
        for tower, e, t, m in zip(("images", "texts"), expected, theirs, mine):
            rows.append(dict(check=f"parity {tower}, {name}", max_abs_diff=(m - t).abs().max().item(),
                             ours_cosine_to_fp32=F.cosine_similarity(m, e).min().item(),
                             reference_cosine_to_fp32=F.cosine_similarity(t, e).min().item()))
    return rows


def throughput_rows(reference, ours, images, texts, device, repeats):
    rows = []
    for name, dtype in PRECISIONS.items():
        for tower, unit, run in (("images", "images/s", lambda m: m.encode_image(images)),
                                 ("texts", "texts/s", lambda m: m.encode_text(texts))):
            def timed(model):
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
                    run(model)
                synchronize(device)
            timed(reference), timed(ours)  # warm-up (kernel selection, allocator)
            t_ref, t_ours = [], []
            for _ in range(repeats):  # alternate, so both see the same machine
                t_ref.append(best_time(lambda: timed(reference), 1))
                t_ours.append(best_time(lambda: timed(ours), 1))
            n = len(images) if tower == "images" else len(texts)
            rows.append(dict(check=f"throughput {tower}, {name}", reference=n / min(t_ref), ours=n / min(t_ours),
                             unit=unit, speedup=min(t_ref) / min(t_ours)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256, help="images and texts per call")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu to try the script)")
    torch.backends.cudnn.allow_tf32 = False  # exact fp32 for the parity rows (and the same for both models)
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"ViT-B/16, random weights, {name}, torch {torch.__version__}, batch {args.batch}", flush=True)

    reference, ours = models(device)
    torch.manual_seed(1)
    images = torch.randn(args.batch, 3, 224, 224, device=device)
    prompts = [f"a photo of a {n.replace('_', ' ')}." for n in (K400 * (args.batch // len(K400) + 1))[:args.batch]]
    texts = tokenizer.tokenize(prompts).to(device)  # [batch, 77]

    print("\n| check | max abs diff, ours vs reference | cosine to fp32, ours | cosine to fp32, reference |")
    print("|---|---|---|---|")
    parity_images = images[:min(8, args.batch)]  # a few are enough for parity
    for r in parity_rows(reference, ours, parity_images, texts[:min(64, args.batch)], device):
        print(f"| {r['check']} | {r['max_abs_diff']:.2e} | {r['ours_cosine_to_fp32']:.5f} | "
              f"{r['reference_cosine_to_fp32']:.5f} |", flush=True)

    print("\n| check | reference | ours | ours / reference |")
    print("|---|---|---|---|")
    for r in throughput_rows(reference, ours, images, texts, device, args.repeats):
        print(f"| {r['check']} | {r['reference']:.1f} {r['unit']} | {r['ours']:.1f} {r['unit']} | "
              f"{r['speedup']:.2f}x |", flush=True)
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
