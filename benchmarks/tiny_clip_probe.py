"""What the tiny CLIP's image features carry, whatever its captions taught it to say: a linear probe.

    python benchmarks/tiny_clip_probe.py [CHECKPOINT ...] [--stills 3000] [--quick]

tiny_clip.still_probe asks the model zero-shot, through its text tower ("a tilted red star." against "an upright red
star."). A low score there can mean that the image features do not hold the attribute, or that they hold it and the
captions never tied a word to it. This script tells the two apart: a logistic regression (5-fold cross-validated,
balanced accuracy; chance is 100 / classes) reads each attribute straight off the normalised image embeddings of
held-out stills (tiny_clip.probe_stills). If a supervised linear read-out cannot find it, the features do not carry it.

CHECKPOINT: a tiny CLIP state dict, or a train.py checkpoint (last.pt / best.pt of a run on the embedded world: its
trained tensors over the shipped tiny CLIP). Default: the shipped tiny CLIP and the same architecture untrained.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import clip_model  # noqa: E402
from world import miniworld, tiny_clip  # noqa: E402


def load_state_dict(path: str) -> dict:
    """A tiny CLIP state dict from a plain state dict or a train.py checkpoint (whose 'model' holds the trained
    tensors, named 'clip.<OpenAI name>')."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in loaded:
        return loaded
    state_dict = torch.load(tiny_clip.tiny_clip_checkpoint(), weights_only=True)
    state_dict.update({k.removeprefix("clip."): v for k, v in loaded["model"].items() if k.startswith("clip.")})
    return state_dict


def attributes(scenes: list) -> dict:
    """attribute -> [(still index, class)]: the same subsets as tiny_clip.still_probe, plus big and huge objects
    alone (a tiny object spans 2-3 pixels at 48 px)."""
    objs = [s["objects"][0] for s in scenes]
    inside = [min(o["x"], 1 - o["x"], o["y"], 1 - o["y"]) >= o["r"] for o in objs]
    large = [o["size"] in ("big", "huge") for o in objs]
    posed = [inside[k] and o["shape"] in miniworld.SYMMETRY and (o["angle"] == 0 or miniworld.is_tilted(o))
             and "blur" not in o and o["alpha"] == 1 for k, o in enumerate(objs)]
    colours = list(miniworld.COLOURS)
    return {
        "colour": [(k, colours.index(o["colour"])) for k, o in enumerate(objs) if o["alpha"] == 1],
        "shape": [(k, miniworld.SHAPES.index(o["shape"])) for k, o in enumerate(objs) if inside[k]],
        "shape, big/huge": [(k, miniworld.SHAPES.index(o["shape"])) for k, o in enumerate(objs)
                            if inside[k] and large[k]],
        "blurry": [(k, int("blur" in o)) for k, o in enumerate(objs) if inside[k] and o["alpha"] == 1],
        "tilted": [(k, int(miniworld.is_tilted(o))) for k, o in enumerate(objs) if posed[k]],
        "tilted, big/huge": [(k, int(miniworld.is_tilted(o))) for k, o in enumerate(objs) if posed[k] and large[k]],
    }


def linear_probe(state_dict: dict, scenes: list, folds: int = 5) -> dict:
    """attribute -> (number of stills, classes, balanced accuracy % of a cross-validated logistic regression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    model = clip_model.build_model(state_dict).eval()
    images = tiny_clip.preprocess(np.stack([miniworld.render(s) for s in scenes]), model.visual.input_resolution)
    with torch.no_grad():
        features = torch.cat([model.encode_image(images[i:i + 256]) for i in range(0, len(images), 256)])
    features = torch.nn.functional.normalize(features, dim=-1).numpy()
    results = {}
    for name, items in attributes(scenes).items():
        x, y = features[[k for k, _ in items]], np.array([c for _, c in items])
        probe = LogisticRegression(C=10, max_iter=3000, class_weight="balanced")
        score = cross_val_score(probe, x, y, cv=min(folds, np.bincount(y).min()), scoring="balanced_accuracy")
        results[name] = (len(y), len(set(y)), 100 * float(score.mean()))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--stills", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: 300 stills")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenes = tiny_clip.probe_stills(300 if args.quick else args.stills)
    models = {path: load_state_dict(path) for path in args.checkpoints} or {
        "shipped tiny CLIP": load_state_dict(tiny_clip.tiny_clip_checkpoint()),
        "untrained (same architecture)": tiny_clip.build_tiny_clip(0).state_dict()}
    for name, state_dict in models.items():
        print(f"{name}:")
        for attribute, (n, classes, accuracy) in linear_probe(state_dict, scenes).items():
            print(f"  {attribute:<17} {accuracy:5.1f}% (chance {100 / classes:.1f}%, {n} stills)", flush=True)


if __name__ == "__main__":
    main()
