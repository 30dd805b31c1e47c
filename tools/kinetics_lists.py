"""Kinetics-400's two training lists that the authors did not ship, built from the official annotations for the
videos you have on disk.

    python -m tools.kinetics_lists ANNOTATIONS.csv ROOT [OUT_DIR] [--absent FILE]

ANNOTATIONS.csv  the official training annotations (Kinetics-400 train.csv: label,youtube_id,time_start,time_end,
                 split[,is_cc]); `split` names the folder of the lists' paths (train), as in the authors' lists.
ROOT             the download: each video is looked up as data.py finds them (ROOT/train/<file>, or by its file name
                 in any folder under ROOT, e.g. ROOT/train/<class>/<file>; see video_index.resolve).
OUT_DIR          where train.txt and base_train.txt are written; by default where train.py and the authors' tree keep
                 them: splits/datasets_splits/k400_splits/train.txt and
                 splits/datasets_splits/base2novel_splits/k400_splits/base_train.txt.
--absent FILE    also write the annotated videos not found, one path a line (to fetch them again).

What is written, in the authors' format (data.read_list):
  train.txt       train/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4 <id in splits/labels/kinetics_400_labels.csv>,
                  one line per annotated video found under ROOT, grouped by class id (annotation order within a
                  class), like the authors' val.txt and train_tiny.txt. The paths are the authors', not where the
                  files happen to be: train.py resolves them through data.py's index, so one list serves any layout.
  base_train.txt  the base-to-novel setting's "all training videos of the base classes": the lines of train.txt whose
                  class is one of the 200 base classes (splits/labels/kinetics_400_base_labels.csv), relabelled to base
                  ids, in train.txt's order (subset_classes). That is how the authors' base_val.txt and
                  novel_val.txt derive from val.txt, line for line (tests/test_kinetics_lists.py checks it on the
                  shipped files); the base classes are theirs, not recomputed by frequency.
Annotated videos that are not on disk are left out and reported (count and examples; --absent lists them all).
"""
import argparse
import csv
import os
import sys

import data
from plumbing import video_index

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # (ROOT below is the dataset's folder)
LABELS = os.path.join(REPOSITORY, "splits", "labels", "kinetics_400_labels.csv")
BASE_LABELS = os.path.join(REPOSITORY, "splits", "labels", "kinetics_400_base_labels.csv")
TRAIN_LIST = os.path.join(REPOSITORY, "splits", "datasets_splits", "k400_splits", "train.txt")
BASE_TRAIN_LIST = os.path.join(REPOSITORY, "splits", "datasets_splits", "base2novel_splits", "k400_splits",
                               "base_train.txt")
COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def video_path(split, youtube_id, start, end):
    """The authors' (and the Kinetics downloaders') name of a clip: <split>/<youtube_id>_<start:06d>_<end:06d>.mp4."""
    return f"{split}/{youtube_id}_{int(start):06d}_{int(end):06d}.mp4"


def _key(name):  # class names as written by the annotations, the labels files and the downloaders' folders
    return " ".join(name.replace("_", " ").lower().split())


def read_annotations(csv_path):
    """[(listed path, label name)] of an official annotations CSV, each video once, in file order."""
    out, seen = [], set()
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not set(COLUMNS) <= set(reader.fieldnames or ()):
            raise data.DatasetError(f"{csv_path}:1: expected the columns {','.join(COLUMNS)}[,split], got "
                                    f"{','.join(reader.fieldnames or ())}")
        for row in reader:
            try:
                path = video_path((row.get("split") or "train").strip(), row["youtube_id"].strip(),
                                  float(row["time_start"]), float(row["time_end"]))
            except (TypeError, ValueError):
                raise data.DatasetError(f"{csv_path}:{reader.line_num}: time_start/time_end are not numbers: "
                                        f"{row!r}") from None
            if path not in seen:
                seen.add(path)
                out.append((path, row["label"].strip()))
    if not out:
        raise data.DatasetError(f"{csv_path}:1: no videos")
    return out


def build_lists(annotations_csv, root, labels=LABELS, base_labels=BASE_LABELS):
    """(train samples, base_train samples, absent paths) for the annotated videos found under root."""
    names = data.read_labels(labels)
    class_id = {_key(n): i for i, n in enumerate(names)}
    annotated = read_annotations(annotations_csv)
    unknown = sorted({label for _, label in annotated if _key(label) not in class_id})
    if unknown:
        raise data.DatasetError(f"{annotations_csv}: {len(unknown)} labels are not classes of {labels}: e.g. "
                                f"{', '.join(unknown[:3])}")
    samples = [(path, class_id[_key(label)]) for path, label in annotated]
    _, absent = video_index.resolve(root, samples)
    if len(absent) == len(samples):
        raise data.DatasetError(f"none of the {len(samples)} videos of {os.path.basename(annotations_csv)} found "
                                f"under {root}: e.g. {', '.join(absent[:3])}; expected ROOT/<split>/<file> or "
                                f"ROOT/<any folder>/<file> (Kinetics as downloaded)")
    gone = set(absent)
    train = sorted((s for s in samples if s[0] not in gone), key=lambda s: s[1])  # stable: annotation order kept
    base_train = subset_classes(train, names, data.read_labels(base_labels))
    return train, base_train, absent


def subset_classes(samples, class_names, keep_names):
    """Samples of the classes named in keep_names, relabelled to their position there (e.g. to build the
    Kinetics-400 base_train.txt from train.txt with the official base labels)."""
    new_id = {c: i for i, c in enumerate(data.subset_ids(class_names, keep_names))}
    return [(p, new_id[y]) for p, y in samples if y in new_id]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.kinetics_lists", description=__doc__.split("\n\n")[0])
    ap.add_argument("annotations", help="the official training annotations CSV (Kinetics-400 train.csv)")
    ap.add_argument("root", help="the folder of the downloaded videos")
    ap.add_argument("out_dir", nargs="?", default=None,
                    help="where to write train.txt and base_train.txt (default: where train.py reads them)")
    ap.add_argument("--absent", default=None, help="write the annotated videos not found to this file")
    ap.add_argument("--labels", default=LABELS, help="labels CSV of the classes (default: Kinetics-400's)")
    ap.add_argument("--base-labels", default=BASE_LABELS, help="labels CSV of the base classes")
    args = ap.parse_args(argv)
    try:
        train, base_train, absent = build_lists(args.annotations, args.root, args.labels, args.base_labels)
    except data.DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out_dir:
        train_path, base_path = (os.path.join(args.out_dir, n) for n in ("train.txt", "base_train.txt"))
    else:
        train_path, base_path = TRAIN_LIST, BASE_TRAIN_LIST
    for path, samples in ((train_path, train), (base_path, base_train)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        data.write_list(path, samples)
    total = len(train) + len(absent)
    print(f"{len(train)} of {total} annotated videos found under {args.root}: wrote {train_path} "
          f"({len(train)} videos, {len({y for _, y in train})} classes) and {base_path} ({len(base_train)} videos, "
          f"{len({y for _, y in base_train})} base classes)")
    if absent:
        print(f"{len(absent)} of {total} annotated videos not found, left out: e.g. {', '.join(absent[:5])}"
              + (f" (all in {args.absent})" if args.absent else " (--absent FILE lists them all)"), file=sys.stderr)
    if args.absent:
        with open(args.absent, "w", encoding="utf-8") as f:
            f.writelines(p + "\n" for p in absent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
