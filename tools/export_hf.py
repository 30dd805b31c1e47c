"""Write any ViFi-CLIP this project loads as a Hugging Face CLIP folder that transformers reads as it is.

    python -m tools.export_hf WEIGHTS FOLDER      WEIGHTS: our best.pt / last.pt, the authors' released .pth, a prompt
                                                  checkpoint, a Hugging Face folder, a CLIP name or file
        --labels FILE | --classes a,b,...         the classes the weights were fine-tuned with, for the card (our runs:
                                                  read from the run's configuration; the authors' files have none)
        --base ViT-B/16                           the CLIP the authors' files take their token embeddings from
        --frames N                                the frames per video the weights were trained with (our runs: theirs)
        --force                                   replace FOLDER if it exists

What the folder holds: plumbing/hf_export.py, which writes it (from Python: hf_export.export_hugging_face(model,
folder)); README.md, "Sharing weights". A weight file that cannot be exported is one line on stderr and exit status 2.
"""
import argparse
import os
import sys

import data
import train
from plumbing import hf_export, protocols, vifi_weights
from tools.classify_video import read_classes


def run_class_names(config: dict) -> list:
    """The classes a train.py run trained on, from its configuration ([] when they cannot be known here): the label
    files of the paper's datasets (the base half for base-to-novel), a custom dataset's labels, the embedded world's."""
    dataset, setting = config.get("dataset"), config.get("setting")
    found = protocols.PAPER_DATASETS.get(dataset)
    if isinstance(found, protocols.AuthorsDataset):  # no video needed: the shipped label files
        source = protocols.PAPER_DATASETS["k400"] if setting == "zeroshot" else found
        return data.read_labels(protocols._labels_file(source.base_labels if setting == "base2novel" else
                                                       source.labels))
    try:  # the run's own lists (the world, a custom dataset), where they are
        cfg = train.Config(**{k: v for k, v in config.items() if k in train.Config.__dataclass_fields__})
        return list(train.build_splits(cfg)[0].class_names)
    except (ValueError, OSError, RuntimeError, KeyError):
        return []


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="our best.pt / last.pt, the authors' .pth, a prompt checkpoint, a Hugging "
                                        "Face folder, a CLIP name or file")
    parser.add_argument("folder", help="the folder to write")
    parser.add_argument("--labels", help="the classes the weights were fine-tuned with: a labels CSV 'id,name' or "
                                         "one name a line (default: our runs' own; the authors' files have none)")
    parser.add_argument("--classes", help="the same, comma-separated")
    parser.add_argument("--base", help="the CLIP the authors' checkpoints take their token embeddings from (default "
                                       "ViT-B/16); our checkpoints: instead of the CLIP their run names")
    parser.add_argument("--frames", type=int, help="frames per video the weights were trained with (default: our "
                                                   "runs' own, else 32)")
    parser.add_argument("--force", action="store_true", help="replace the folder if it exists")
    return parser


def main(argv=None) -> str:
    args = make_parser().parse_args(argv)
    if os.path.exists(args.folder) and not args.force:
        raise hf_export.ExportError(f"{args.folder} exists; choose another folder, or --force to replace it")
    if args.classes is not None and args.labels is not None:
        raise hf_export.ExportError("give the classes once: --classes or --labels")
    if args.frames is not None and args.frames < 1:
        raise hf_export.ExportError(f"--frames {args.frames}: must be at least 1")
    classes = read_classes(args.classes, args.labels)
    recorded = vifi_weights.read_hugging_face_export(args.weights) if os.path.isdir(args.weights) else {}
    loaded = vifi_weights.load_model(args.weights, classes or recorded.get("class_names") or ["?"], base=args.base)
    run = loaded.config if loaded.format == "ours" else None
    if classes is None:
        classes = run_class_names(run) if run else list(recorded.get("class_names") or [])
    frames = args.frames or (run or {}).get("frames") or recorded.get("frames") or 32
    folder = hf_export.export_hugging_face(loaded.model, args.folder, classes=classes, frames=frames,
                                           source=args.weights, run=run, overwrite=args.force)
    prompted = loaded.model.prompts.has_text or loaded.model.prompts.has_vision
    what = dict(ours="our run's", authors="the authors'", prompts="prompt-learned", openai="CLIP", name="CLIP")
    print(f"{folder}: {what.get(loaded.format, loaded.format)} weights as a Hugging Face CLIP "
          f"({len(classes) or 'no'} classes recorded, {frames} frames, {loaded.model.normalization} pixel statistics"
          + (f"; prompts in {vifi_weights.HF_PROMPTS_FILE}, which transformers alone does not run)" if prompted
             else ")"))
    return folder


def cli(argv=None) -> int:
    """`python -m tools.export_hf ...`: a weight file that cannot be exported is one line on stderr and exit status 2."""
    try:
        main(argv)
    except (ValueError, OSError, RuntimeError, vifi_weights.pickle.UnpicklingError) as e:
        print(f"python -m tools.export_hf: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
