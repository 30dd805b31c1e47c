"""Rank class names for your own video from the command line: the README example's code path (vifi.classify).

    python -m tools.classify_video VIDEO_OR_FOLDER --classes dancing,swimming,cooking
        --weights W       a CLIP name (default ViT-B/16: vanilla CLIP), our best.pt / last.pt, the authors' released
                          .pth, a prompt checkpoint, or a folder tools.export_hf wrote (vifi_weights.load_model)
        --base CLIP       the CLIP the authors' .pth take their token embeddings from (default ViT-B/16)
        --classes a,b,c   the class names to rank, or --labels FILE (a labels CSV "id,name", or one name a line);
                          an exported folder's own classes when neither is given
        --template T      the class prompt, {} the class name (default: the weights' own, else "a photo of a {}.")
        --frames N        frames per video (default 8: quick on a CPU; the paper's models were trained with 32)
        --precision P     auto | fp32 | bf16 | fp16 (vifi.classify)
        --top-k K         how many classes to print per video (default 5)
        --json FILE       also write every ranking, whole, as JSON

A folder ranks each of its video files (by extension), in name order. A missing file, an unreadable video, or an
empty class list is one line on stderr and exit status 2 (the other videos of a folder are still ranked).
"""
import argparse
import json
import os
import sys
from typing import Optional

import torch

import data
import vifi
from plumbing import vifi_weights
from plumbing.video_decoder import DECODE_ERRORS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv")


class UserError(ValueError):
    """A bad input: reported as one line, exit status 2."""


def videos_of(path: str) -> list:
    """The video files a path names: itself, or a folder's video files in name order."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(path, name)))
        if not found:
            raise UserError(f"{path}: no video files in this folder ({', '.join(VIDEO_EXTENSIONS)})")
        return found
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file or folder")
    return [path]


def read_classes(classes: Optional[str], labels: Optional[str]) -> Optional[list]:
    """--classes a,b,c or --labels FILE (a labels CSV "id,name", or one name a line) -> names, or None if neither."""
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            raise ValueError("--classes: no class names (give them comma-separated: --classes dancing,swimming)")
        return names
    if labels is None:
        return None
    if not os.path.isfile(labels):
        raise FileNotFoundError(f"--labels {labels}: no such file")
    try:
        return data.read_labels(labels)
    except data.DatasetError:  # not a labels CSV: one name a line
        with open(labels, encoding="utf-8-sig") as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError(f"--labels {labels}: no class names in the file") from None
        return names


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.classify_video", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="a video file, or a folder of them")
    parser.add_argument("--weights", default="ViT-B/16", help="a CLIP name, our best.pt / last.pt, the authors' .pth, "
                                                              "a prompt checkpoint, an exported folder (default "
                                                              "ViT-B/16)")
    parser.add_argument("--base", help="the CLIP the authors' checkpoints take their token embeddings from (default "
                                       "ViT-B/16)")
    parser.add_argument("--classes", help="class names, comma-separated")
    parser.add_argument("--labels", help="class names from a file: a labels CSV 'id,name', or one name a line")
    parser.add_argument("--template", help="class prompt, {} is the class name (default: the weights' own)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--top-k", type=int, default=5, help="classes printed per video (default 5)")
    parser.add_argument("--json", help="write the rankings to this file as JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.frames < 1 or args.top_k < 1:
        raise UserError(f"--frames {args.frames} and --top-k {args.top_k} must be at least 1")
    if args.classes is not None and args.labels is not None:
        raise UserError("give the classes once: --classes or --labels")
    videos = videos_of(args.video)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UserError(f"--json {args.json}: no such folder")
    try:
        classes = read_classes(args.classes, args.labels)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    if classes is None and not os.path.isdir(args.weights):
        raise UserError("no classes to rank: give --classes a,b,c or --labels FILE")
    try:
        model = vifi_weights.load_model(args.weights, classes, base=args.base).model.to(args.device)
    except (ValueError, OSError, RuntimeError, vifi_weights.pickle.UnpicklingError) as e:
        raise UserError(str(e)) from None
    classes = list(model.class_names)
    templates = args.template or model.templates
    rankings, failed = [], 0
    for path in videos:
        try:
            ranked = vifi.classify(model, path, classes, num_frames=args.frames, templates=templates,
                                   precision=args.precision)
        except DECODE_ERRORS as e:
            print(f"python -m tools.classify_video: error: {path}: unreadable video ({' '.join(str(e).split())})",
                  file=sys.stderr, flush=True)
            failed += 1
            continue
        except ValueError as e:  # a template without {}, a prompt too long for the text tower, a precision
            raise UserError(str(e)) from None
        rankings.append(dict(video=path, ranking=[dict(name=n, probability=p) for n, p in ranked]))
        print(f"{path}:")
        for name, p in ranked[:args.top_k]:
            print(f"  {100 * p:6.2f}%  {name}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(weights=args.weights, classes=classes, templates=list(vifi._as_templates(templates)),
                           frames=args.frames, normalization=model.normalization, videos=rankings), f, indent=2)
    return 2 if failed else 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except UserError as e:
        print(f"python -m tools.classify_video: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(cli())
