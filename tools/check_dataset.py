"""Check a dataset before training on it: every video of a list found and decodable.

    python -m tools.check_dataset ROOT LIST LABELS [--workers 8]

Each video of LIST is looked up under ROOT (at its listed path, or by its file name in any folder: video_index.py) and
8 frames spread over it are decoded (video_decoder.py). Exit status: 0 every video readable; 1 unreadable videos found
(listed on stdout with the reason); 2 bad arguments, or a list or labels file missing or malformed (one line on stderr
names the file and line). Training never needs this (data.py replaces or counts a bad video as it meets it), but a
download with many broken files is better found before a run than in its accuracy.
"""
import argparse
import functools
import multiprocessing
import os
import sys

import data
from data import DatasetError
from plumbing.video_decoder import DECODE_ERRORS, VideoReader
from plumbing.video_index import locate


def check_one(path: str, num_frames: int = 8):
    """None if num_frames spread frames of the video decode, else the reason they do not."""
    try:
        with VideoReader(path, threads=1) as r:
            r.get(data.sample_indices(r.num_frames, num_frames, "eval"), size=(32, 32))
        return None
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"


def check_videos(root: str, samples: list, num_frames: int = 8, workers: int = 0) -> list:
    """[(relpath as listed, reason)] for every video the dataset could not read: not found, or not decodable."""
    found = locate(root, [p for p, _ in samples])
    paths = [os.path.join(root, f) for f in found if f is not None]
    if workers > 0:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            decoded = pool.map(functools.partial(check_one, num_frames=num_frames), paths, chunksize=16)
    else:
        decoded = [check_one(p, num_frames) for p in paths]
    decoded = iter(decoded)
    reasons = [f"not found under {root}" if f is None else next(decoded) for f in found]
    return [(s[0], why) for s, why in zip(samples, reasons) if why is not None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.check_dataset", description=__doc__.split("\n\n")[0], epilog=(
        "exit status: 0 every video readable; 1 unreadable videos found (listed on stdout with the reason); 2 bad "
        "arguments, or a list or labels file missing or malformed (one line on stderr names the file and line)"))
    ap.add_argument("root", metavar="ROOT", help="the folder holding the videos, as downloaded")
    ap.add_argument("list", metavar="LIST", help="list file of 'relative/path label' lines")
    ap.add_argument("labels", metavar="LABELS", help="labels CSV 'id,name'")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (default: none, decode here)")
    args = ap.parse_args(argv)
    names = None
    try:
        if not os.path.isdir(args.root):
            raise DatasetError(f"{args.root}: ROOT is not a folder")
        names = data.read_labels(args.labels)
        samples = data.read_list(args.list, len(names))
    except (DatasetError, OSError, UnicodeDecodeError) as e:  # the user's input: one line, not a traceback
        if isinstance(e, OSError) and e.filename:
            e = f"{e.filename}: {e.strerror}"
        elif isinstance(e, UnicodeDecodeError):
            e = f"{args.labels if names is None else args.list}: not UTF-8 text ({e.reason})"
        print(f"python -m tools.check_dataset: {e}", file=sys.stderr)
        return 2
    bad = check_videos(args.root, samples, workers=args.workers)
    for path, why in bad:
        print(f"{path}\t{why}")
    print(f"{len(bad)} of {len(samples)} videos unreadable", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
