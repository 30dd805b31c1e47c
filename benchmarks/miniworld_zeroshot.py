"""Zero-shot top-1 of the tiny image-pretrained CLIP on the embedded world's test videos (issue 4's acceptance).

    python benchmarks/miniworld_zeroshot.py [--clip miniworld-tiny] [--json out.json]

For each dataset of miniworld.py, every test video ($MINIWORLD_EVAL=val: validation video) is read through data.py (evaluation view, 48 px) and
classified by cosine similarity with the class names' text embeddings, as vanilla CLIP is in the paper (Table 1,
"Vanilla CLIP" rows). Two prompts ("a photo of a {}." and the bare class name) and two ways to see a video:
  single frame   T = 1: the video's centre frame, i.e. CLIP on an image
  mean of 8      T = 8: the centre frames of 8 equal segments, image embeddings averaged (ViFi-CLIP's pooling)
Accuracy is also split by what tells a class apart (miniworld.MOTION_CUE): "frame" classes (where the object is),
"motion" classes (several frames needed) and "order" classes (only the order of the frames differs from a partner),
and shows the classes whose names use only caption words (the others contain words the text tower never saw).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from tokenizer import tokenize  # noqa: E402
from plumbing import clip_weights  # noqa: E402
from world import miniworld  # noqa: E402

PROMPTS = {"a photo of a {}.": "a photo of a {}.", "bare name": "{}"}


@torch.no_grad()
def video_features(model, paths, frames, batch=32):
    """[N, T, D] normalised frame embeddings of a dataset's evaluation videos, and their labels."""
    ds = data.VideoDataset(paths["root"], paths["eval"], paths["labels"], num_frames=frames, train=False,
                           input_size=model.visual.input_resolution, decode_threads=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    feats, labels = [], []
    for clips, y, _, ok in loader:
        assert ok.all(), "unreadable videos in the world"
        B = clips.shape[0]
        f = model.encode_image(clips.flatten(0, 1)).view(B, frames, -1)
        feats.append(F.normalize(f, dim=-1))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def text_features(model, names, template):
    tokens = tokenize([template.format(n) for n in names], context_length=model.context_length)
    return F.normalize(model.encode_text(tokens), dim=-1)


def evaluate(model, name):
    paths = miniworld.dataset_paths(name)
    classes = miniworld.DATASETS[name][0]
    names = data.read_labels(paths["labels"])
    cue = torch.tensor([["frame", "motion", "order"].index(miniworld.MOTION_CUE[c["motion"]]) for c in classes])
    seen = torch.tensor([not miniworld.unseen_words(n) or miniworld.unseen_words(n) == ["moving"] for n in names])
    views = {"single frame": video_features(model, paths, 1), "mean of 8": video_features(model, paths, 8)}
    rows = {}
    for prompt, template in PROMPTS.items():
        text = text_features(model, names, template)
        for view, (feats, labels) in views.items():
            video = F.normalize(feats.mean(dim=1), dim=-1)
            pred = (video @ text.T).argmax(dim=1)
            correct = (pred == labels).float()
            row = {"top1": 100 * correct.mean().item()}
            for i, c in enumerate(["frame", "motion", "order"]):
                m = cue[labels] == i
                row[c] = 100 * correct[m].mean().item() if m.any() else None
            m = seen[labels]
            row["caption words"] = 100 * correct[m].mean().item() if m.any() else None
            row["per class"] = {names[k]: 100 * correct[labels == k].mean().item() for k in range(len(names))}
            rows[(prompt, view)] = row
    return {"classes": len(names), "videos": len(views["mean of 8"][1]), "chance": 100 / len(names), "rows": rows}


def fmt(x):
    return "-" if x is None else f"{x:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", default=miniworld.TINY_CLIP_NAME, help="name or path for clip_weights.load")
    parser.add_argument("--datasets", default=",".join(miniworld.DATASETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", action="store_true", help="also print every class's accuracy")
    parser.add_argument("--json", default=None, help="write all figures here")
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: toy-hmdb only")
    args = parser.parse_args()
    if args.quick:
        args.datasets = "toy-hmdb"
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = clip_weights.load(args.clip).eval()
    results = {}
    print(f"| dataset (role) | classes, {miniworld.eval_split()} videos | chance | prompt | view | top-1 | frame cls | motion cls | "
          "order cls | caption-word cls |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        r = evaluate(model, name)
        results[name] = r
        for (prompt, view), row in r["rows"].items():
            print(f"| {name} ({miniworld.ROLES[name]}) | {r['classes']}, {r['videos']} | {r['chance']:.1f} | "
                  f"{prompt} | {view} | **{row['top1']:.1f}** | {fmt(row['frame'])} | {fmt(row['motion'])} | "
                  f"{fmt(row['order'])} | {fmt(row['caption words'])} |")
    if args.per_class:
        for name, r in results.items():
            print(f"\n{name}: per-class top-1 (prompt 'a photo of a {{}}.'; single frame / mean of 8)")
            single, mean = r["rows"][("a photo of a {}.", "single frame")], r["rows"][("a photo of a {}.", "mean of 8")]
            for cls in single["per class"]:
                print(f"  {cls:<36} {single['per class'][cls]:5.1f} {mean['per class'][cls]:5.1f}")
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: {**r, "rows": {f"{p} | {v}": row for (p, v), row in r["rows"].items()}}
                       for n, r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
