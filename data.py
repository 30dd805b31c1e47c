"""Video data for ViFi-CLIP: split lists, frame sampling, decoding, augmentation, bad-file handling.

Everything the paper says about data lives here (paper Sec. 3 "Problem Settings", Sec. 4 "Experimental setup",
Appendix B-D). The module depends on torch, PyAV (av) and numpy only.

Files (the authors' layout; shipped copies in splits/)
    list file   one video per line, "relative/path.ext label", label an integer class id (paths may hold spaces:
                the label is the last field).
    labels CSV  header "id,name", one class per row; names come from the id column, not from row order.

Splits (paper Sec. 3, Appendix D)
    read_labels(csv_path) -> list[str]                          names[id]
    read_list(list_path, num_classes=None) -> list[(relpath, label)]
    write_list(path, samples) / write_labels(path, names)
    kshot_split(samples, k, seed=0, num_classes=None) -> samples   K random videos per class (few-shot setting)
    base_novel_split(samples, class_names, base_names=None, novel_names=None)
        -> (base_samples, novel_samples, base_names, novel_names)
        the most frequent half of the classes is "base"; both halves are relabelled 0.. in ascending
        (count, id) order, which reproduces the authors' shipped base/novel label files. Pass the training
        split's base_names and novel_names to split a validation list the same way.
    subset_classes(samples, class_names, keep_names) -> samples relabelled to keep_names' order

Frames (sparse segment sampling, TSN; Appendix D)
    sample_indices(num_frames, T, mode='train'|'eval', generator=None, num_clips=1) -> list[int] (num_clips*T)
    decode_frames(path, indices, size=None, threads=0) -> uint8 ndarray [len(indices), H, W, 3] (RGB)
    VideoReader(path, threads=0): .num_frames (estimate), .get(indices, size=None), a context manager

Clips
    VideoDataset(root, samples_or_list_path, class_names=None, num_frames=32, train=False, input_size=224,
                 num_clips=1, num_crops=1, norm='clip', seed=0, decode_threads=1, max_retries=10)
        ds[i] -> (clip, label, index, ok);  ds.load(i) -> clip (raises on unreadable videos)
            clip  float32 [V*T, 3, S, S], V = num_clips * num_crops views, view v = clip c * num_crops + crop k,
                  so clip.view(V, T, 3, S, S) gives the views; single view: [T, 3, S, S]
            label int, index int (of the sample returned), ok bool (False: the requested video was unreadable)
        Multi-view evaluation: clips [B, V*T, 3, S, S] -> clips.view(B * V, T, 3, S, S), score every view,
        average the V scores of each video. Fully-supervised setting: num_clips=4, num_crops=3 (Appendix D and
        the authors' code; Sec. 4 swaps the two numbers); other settings: one view (num_clips=num_crops=1).
    collate(batch) -> dict(clips, label, index, ok)     DataLoader collate_fn (tensors; ok is bool)
    mixup_cutmix(clips, labels, num_classes, ...) -> (clips, soft_targets)   (training option)
    check_videos(root, samples, num_frames=8, workers=0) -> list[(relpath, reason)]
    command line: python data.py --check ROOT LIST LABELS [--workers N]
        exit status 0: every video readable, 1: unreadable videos (listed), 2: bad arguments or list files

Datasets as downloaded (see "Finding the videos" below for the index and its cache)
    resolve(root, samples) -> (samples, missing)   each listed video at ROOT/path, else by file name in any folder
    preflight(root, samples, source="", max_missing=MAX_MISSING) -> (samples, missing)
        resolve, and a one-line DatasetError (how many of how many, examples, the layout expected) when more than
        1% of the list is missing; run before weights or model (train.py's load_split does)
    video_index(root, rebuild=False) -> {file name: [relpaths]}    index_path(root): where it is cached

Bad videos: the contract for train.py and the evaluator
    A missing, empty, truncated (less than half of its frames decodable) or undecodable video raises
    DecodeError/OSError/av.FFmpegError inside the dataset, which catches it, logs the path once (logging,
    logger "data", level WARNING), records it in a failure table shared by all DataLoader worker processes, and
    returns ok=False for that sample.
    * Training (train=True): the clip and label are those of the next readable sample, (i+1) % N, (i+2) % N, ...
      (deterministic), so the batch is complete and is trained on as usual; only ok=False tells. Per epoch:
          ds.set_epoch(epoch)                  # before iter(loader): also seeds the augmentation
          bad = 0
          for batch in loader:                 # collate_fn=data.collate
              bad += int((~batch["ok"]).sum())  # sum over ranks with torch.distributed.all_reduce
          print(f"epoch {epoch}: {bad} unreadable videos replaced")
    * Evaluation (train=False): the sample keeps its true label and index, with a zero clip and ok=False. It
      counts as a wrong prediction and stays in the denominator:
          correct += ((pred == batch["label"]) & batch["ok"]).sum();  total += len(batch["ok"])
          failed += (~batch["ok"]).sum()       # shown in the report
      so the evaluation DataLoader must not use drop_last=True.
    Also: ds.num_failures() is the number of distinct unreadable videos met so far in any worker, and
    ds.failed_videos() lists their paths. A video found bad once is not decoded again by that dataset.

Determinism
    Evaluation views depend only on the video (no random numbers). Training randomness (frame positions, crop,
    flip, colour) comes from a torch.Generator seeded from (seed, epoch, index), so a resumed run reproduces it;
    set_epoch writes to shared memory, so it also reaches persistent DataLoader workers.
"""
import argparse
import csv
import json
import logging
import math
import os
import sys

import av
import numpy as np
import torch

log = logging.getLogger("data")

# CLIP's pixel statistics (its own preprocessing) and ImageNet's (what the authors' mmaction pipeline used;
# their released checkpoints were trained with these). Values for RGB in [0, 1].
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

SCALES = (1, 0.875, 0.75, 0.66)  # multi-scale crop (TSN), as in the authors' training pipeline
JITTER = dict(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)  # authors' ColorJitter settings
GRAYSCALE_P = 0.2
MIN_COVERAGE = 0.5  # a video whose decodable frames stop before this fraction of its length is "truncated"
SEEK_GAP = 250      # seek instead of decoding forward when the next wanted frame is this many frames ahead
MAX_PACKET_ERRORS = 10


class DatasetError(ValueError):
    """A list or labels file is malformed (the message starts with "file:line:"), or the videos of a list are not
    under its root (preflight, resolve)."""


class DecodeError(RuntimeError):
    """A video cannot be decoded (no video stream, no frames, truncated, corrupt)."""


# ----------------------------------------------------------------------------------------------------------
# Split files (paper Sec. 3, Appendix D)

def read_labels(csv_path):
    """Class names of a labels CSV ("id,name"), indexed by id. Ids must be exactly 0..N-1, each once."""
    by_id, line_of = {}, {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # csv handles CRLF and quoted commas
        reader = csv.reader(f)
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if reader.line_num == 1 and not row[0].strip().lstrip("-").isdigit():
                continue  # header
            if len(row) != 2:
                raise DatasetError(f"{where}: expected 2 fields 'id,name', got {len(row)}: {row!r}")
            cid, name = row[0].strip(), row[1].strip()
            if not cid.isdigit():
                raise DatasetError(f"{where}: class id {cid!r} is not a non-negative integer")
            cid = int(cid)
            if not name:
                raise DatasetError(f"{where}: class {cid} has an empty name")
            if cid in by_id:
                raise DatasetError(f"{where}: duplicate class id {cid} (first at line {line_of[cid]})")
            by_id[cid], line_of[cid] = name, reader.line_num
    if not by_id:
        raise DatasetError(f"{csv_path}:1: no classes")
    missing = sorted(set(range(max(by_id) + 1)) - set(by_id))
    if missing:
        raise DatasetError(f"{csv_path}:{line_of[max(by_id)]}: ids must be 0..{max(by_id)} without gaps; "
                           f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return [by_id[i] for i in range(len(by_id))]


def read_list(list_path, num_classes=None):
    """[(relpath, label)] from a list file; labels checked against num_classes when given."""
    samples = []
    with open(list_path, encoding="utf-8") as f:  # universal newlines: CRLF files read the same
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.rsplit(None, 1)
            if len(fields) != 2:
                raise DatasetError(f"{list_path}:{n}: expected 'relative/path label', got {line!r}")
            path, label = fields
            try:
                label = int(label)
            except ValueError:
                raise DatasetError(f"{list_path}:{n}: label {label!r} is not an integer") from None
            if label < 0:
                raise DatasetError(f"{list_path}:{n}: negative label {label}")
            if num_classes is not None and label >= num_classes:
                raise DatasetError(f"{list_path}:{n}: label {label} outside the {num_classes} classes of the "
                                   f"labels file")
            samples.append((path, label))
    if not samples:
        raise DatasetError(f"{list_path}:1: no samples")
    return samples


def write_list(path, samples):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {y}\n" for p, y in samples)


def write_labels(path, names):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "name"])
        w.writerows(enumerate(names))


def _by_class(samples, num_classes=None):
    n = max(y for _, y in samples) + 1 if num_classes is None else num_classes
    groups = [[] for _ in range(n)]
    for s in samples:
        groups[s[1]].append(s)
    return groups


def kshot_split(samples, k, seed=0, num_classes=None):
    """K videos drawn at random from every class (few-shot setting, paper Sec. 3). Output grouped by class.

    A class with fewer than K videos (or none, when num_classes says it exists) is an error."""
    if not samples:
        raise ValueError("no samples")
    groups = _by_class(samples, num_classes)
    short = [f"{c} ({len(g)})" for c, g in enumerate(groups) if len(g) < k]
    if short:
        raise ValueError(f"classes with fewer than K={k} videos, class (videos): {', '.join(short)}")
    rng = np.random.default_rng(seed)
    return [g[i] for g in groups for i in sorted(rng.choice(len(g), size=k, replace=False))]


def base_novel_split(samples, class_names, base_names=None, novel_names=None):
    """Base-to-novel split (paper Sec. 3, Appendix D): the most frequent half of the classes is base.

    Classes are ordered by (number of videos in `samples`, class id), ascending; the first floor(C/2) are novel,
    the rest base (so base gets the extra class when C is odd). Each half is relabelled 0.. in that order, the
    convention of the authors' files (their HMDB-51 split, with 70 videos in every class, is ids 0..24 novel
    and 25..50 base). Returns (base_samples, novel_samples, base_names, novel_names).

    To split another list (e.g. validation) the same way, pass the training split's base_names and novel_names:
    they fix both halves and their label order (both are needed: the novel order cannot be recovered)."""
    if base_names is None and novel_names is None:
        counts = [len(g) for g in _by_class(samples, len(class_names))]
        order = sorted(range(len(class_names)), key=lambda c: (counts[c], c))
        novel, base = order[: len(order) // 2], order[len(order) // 2:]
    elif base_names is None or novel_names is None:
        raise ValueError("give both base_names and novel_names (those of the training split), or neither")
    else:
        base, novel = (subset_ids(class_names, names) for names in (base_names, novel_names))
        if set(base) & set(novel):
            raise ValueError("base_names and novel_names overlap")
    halves = []
    for classes in (base, novel):
        new_id = {c: i for i, c in enumerate(classes)}
        halves.append(([(p, new_id[y]) for p, y in samples if y in new_id], [class_names[c] for c in classes]))
    (base_samples, base_names), (novel_samples, novel_names) = halves
    return base_samples, novel_samples, base_names, novel_names


def subset_ids(class_names, names):
    """Ids of `names` in class_names; unknown names are an error."""
    old_id = {n: i for i, n in enumerate(class_names)}
    unknown = [n for n in names if n not in old_id]
    if unknown:
        raise ValueError(f"class names not in the full label list: {unknown[:5]}")
    return [old_id[n] for n in names]


def subset_classes(samples, class_names, keep_names):
    """Samples of the classes named in keep_names, relabelled to their position there (e.g. to build the
    Kinetics-400 base_train.txt from train.txt with the official base labels)."""
    new_id = {c: i for i, c in enumerate(subset_ids(class_names, keep_names))}
    return [(p, new_id[y]) for p, y in samples if y in new_id]


# ----------------------------------------------------------------------------------------------------------
# Frame sampling (sparse segment sampling [TSN], Appendix D)

def sample_indices(num_frames, T, mode="train", generator=None, num_clips=1):
    """Frame indices, num_clips * T of them, view after view.

    The video is cut into T equal segments and one frame is taken from each: at a uniformly random position in
    training, at the centre in evaluation. With num_clips views in evaluation, view v takes the frame at
    (v + 0.5) / num_clips of each segment, so the views are spread evenly and are the same every time. Videos
    shorter than T frames repeat frames. `generator` is a torch.Generator (training only)."""
    if num_frames < 1 or T < 1 or num_clips < 1:
        raise ValueError(f"need num_frames, T, num_clips >= 1, got {num_frames}, {T}, {num_clips}")
    seg = num_frames / T
    starts = torch.arange(T, dtype=torch.float64) * seg
    if mode == "train":
        offsets = torch.rand(num_clips, T, generator=generator, dtype=torch.float64)
    elif mode == "eval":
        offsets = ((torch.arange(num_clips, dtype=torch.float64) + 0.5) / num_clips)[:, None].expand(num_clips, T)
    else:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    idx = torch.floor(starts + offsets * seg).long().clamp_(0, num_frames - 1)  # [num_clips, T]
    return idx.flatten().tolist()


# ----------------------------------------------------------------------------------------------------------
# Decoding (PyAV)

def _target_size(size, w, h):
    """size: None (keep), int (short side, even sizes), or (width, height)."""
    if size is None:
        return w, h
    if isinstance(size, int):
        even = lambda v: max(2, 2 * round(v / 2))  # even widths convert much faster
        return (size, even(h * size / w)) if w <= h else (even(w * size / h), size)
    return tuple(size)


class VideoReader:
    """One open video. num_frames is an estimate (the container's count, else duration * frame rate, else the
    number of packets); get() is robust to it being wrong.

    Frame k is found by time: the first frame whose timestamp * fps rounds to k, else the last frame before (for
    constant-frame-rate videos, simply the k-th frame; for variable frame rates, the frame on screen then). When
    the stream has no timestamps or no frame rate, frames are counted as they come out of the decoder instead."""

    def __init__(self, path, threads=0):
        self.path = path
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise DecodeError(f"empty file: {path}")
        self.threads = threads
        self._open()  # FileNotFoundError / av.InvalidDataError pass through
        try:
            s = self.stream
            rate = s.average_rate or s.guessed_rate or s.base_rate
            self.fps = float(rate) if rate else None
            self.time_base = float(s.time_base) if s.time_base else None
            self.num_frames = self._estimate_frames()
        except BaseException:
            self.container.close()
            raise

    def _estimate_frames(self):
        s = self.stream
        if s.frames and s.frames > 0:
            return s.frames
        if self.fps:
            if s.duration and self.time_base:
                return max(1, round(s.duration * self.time_base * self.fps))
            if self.container.duration:
                return max(1, round(self.container.duration / av.time_base * self.fps))
        n = 0
        try:
            for p in self.container.demux(s):  # no metadata: count packets
                n += p.size > 0
        except (av.error.EOFError, av.error.InvalidDataError):
            pass
        self._reopen()
        if n == 0:
            raise DecodeError(f"no video frames: {self.path}")
        return n

    def _open(self):
        self.container = av.open(self.path)
        if not self.container.streams.video:
            self.container.close()
            raise DecodeError(f"no video stream: {self.path}")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads
        self.stream.codec_context.thread_count = self.threads  # 0: one per core
        self._used = False

    def _reopen(self):  # a fresh start (raw streams cannot always seek back)
        self.container.close()
        self._open()

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get(self, indices, size=None):
        """Frames at `indices` (any order, repeats allowed) as uint8 RGB [len(indices), H, W, 3].

        Decodes forward once and converts only the frames that are kept (size: None keeps the decoded size, an int
        sets the short side, (width, height) both; the resize happens inside the conversion). Packets of frames
        that are not wanted are decoded with skip_frame=NONREF, so frames that no other frame depends on are
        skipped entirely. Long gaps are crossed by seeking. A video that ends early gives its last frame for the
        indices beyond the end."""
        if self._used:
            self._reopen()
        self._used = True
        want = sorted(set(int(i) for i in indices))
        wanted = set(want)
        s, ctx = self.stream, self.stream.codec_context
        by_time = None  # decided at the first packet: timestamps usable?
        start = s.start_time
        out_size = None
        got = {}  # index -> uint8 array
        j = 0  # next position in `want`
        prev = prev_rgb = None  # last decoded frame and its RGB array (if converted)
        jumped = False  # just sought: the next frame is nearer to want[j] than `prev`
        last_k = -1
        packet_errors = 0
        ended = False
        seek_target = -1

        def index_of(ts):
            return round((ts - start) * self.time_base * self.fps)

        def convert(frame):
            nonlocal out_size
            if out_size is None:
                out_size = _target_size(size, frame.width, frame.height)
            return frame.to_ndarray(width=out_size[0], height=out_size[1], format="rgb24",
                                    interpolation="BILINEAR")

        packets = self.container.demux(s)
        while j < len(want):
            try:
                packet = next(packets)
            except StopIteration:
                ended = True
                break
            except (av.error.EOFError, av.error.InvalidDataError):
                ended = True  # truncated container: treat as the end
                break
            if by_time is None and packet.size:
                by_time = bool(self.fps and self.time_base and packet.pts is not None)
                if by_time and start is None:
                    start = packet.pts
                if not by_time:
                    ctx.skip_frame = "DEFAULT"
            if by_time and packet.size and packet.pts is None:
                ctx.skip_frame = "DEFAULT"
            elif by_time and packet.size:
                k = index_of(packet.pts)
                ctx.skip_frame = "DEFAULT" if k in wanted else "NONREF"
                position = max(last_k, k)
                if want[j] - position > SEEK_GAP and want[j] != seek_target:  # jump ahead instead of decoding
                    seek_target = want[j]
                    ts = int(start + (want[j] - 0.5) / (self.fps * self.time_base))
                    self.container.seek(ts, stream=s, backward=True)
                    packets = self.container.demux(s)
                    jumped = True
                    continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                packet_errors += 1
                if packet_errors > MAX_PACKET_ERRORS:
                    raise DecodeError(f"too many corrupt packets: {self.path}") from None
                continue
            for frame in frames:
                k = index_of(frame.pts) if by_time and frame.pts is not None else last_k + 1
                last_k = max(last_k, k)
                rgb = None  # this frame, converted when first needed
                # wanted indices that no frame matched exactly show the frame before (this one at the very start)
                while j < len(want) and want[j] < k:
                    if prev is None or jumped:
                        rgb = convert(frame) if rgb is None else rgb
                        got[want[j]] = rgb
                    else:
                        prev_rgb = convert(prev) if prev_rgb is None else prev_rgb
                        got[want[j]] = prev_rgb
                    j += 1
                if j < len(want) and want[j] == k:
                    rgb = convert(frame) if rgb is None else rgb
                    got[k] = rgb
                    j += 1
                prev, prev_rgb, jumped = frame, rgb, False
                if j == len(want):
                    break
        if prev is None:
            raise DecodeError(f"no frames decoded: {self.path}")
        if j < len(want):  # the stream ended before the last wanted frame
            if ended and last_k < MIN_COVERAGE * (self.num_frames - 1):
                raise DecodeError(f"truncated: frames end at {last_k + 1} of {self.num_frames}: {self.path}")
            prev_rgb = convert(prev) if prev_rgb is None else prev_rgb
            for w in want[j:]:
                got[w] = prev_rgb
        return np.stack([got[int(i)] for i in indices])


def decode_frames(path, indices, size=None, threads=0):
    """uint8 RGB frames [len(indices), H, W, 3] of the video at `path` (see VideoReader.get)."""
    with VideoReader(path, threads=threads) as r:
        return r.get(indices, size)


# ----------------------------------------------------------------------------------------------------------
# Transforms (Appendix D; the authors' pipeline for training). A plan fixes one geometry and one colour change for
# a whole clip; it is expressed as crop boxes in the decoded frame, each resized straight to input_size^2, which
# equals "resize the short side, then crop" but touches only the pixels that are kept.

def eval_plan(w, h, input_size=224, num_crops=1):
    """Evaluation geometry for a w x h video: short side to 256 (scaled with input_size, e.g. 384 for 336) then a
    centre crop of input_size; or, with num_crops=3, short side to input_size and three crops along the long side
    (start, centre, end). Returns dict(size=input_size, crops=[(x, y, cw, ch)] in source pixels)."""
    m = min(w, h)
    if num_crops == 1:
        c = min(m, round(input_size * m / int(256 / 224 * input_size)))  # the crop, in source pixels
        return dict(size=input_size, crops=[((w - c) // 2, (h - c) // 2, c, c)])
    if num_crops == 3:
        L = max(w, h)
        starts = [0, (L - m) // 2, L - m]
        crops = [(p, 0, m, m) for p in starts] if w >= h else [(0, p, m, m) for p in starts]
        return dict(size=input_size, crops=crops)
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")


AUGMENTATIONS = ("paper", "crop", "none")


def train_plan(w, h, input_size=224, generator=None, augment="paper"):
    """Training geometry and colour for a w x h video, one draw per clip (Appendix B/D, the authors' pipeline):
    short side to 256 (scaled with input_size), multi-scale crop (sides from the scales 1, .875, .75, .66 of the
    short side, width and height at most one scale apart, at one of 5 fixed positions: corners and centre) resized
    to input_size^2, horizontal flip (p .5), colour jitter (p .8), grayscale (p .2).
    augment="crop" keeps the multi-scale crop only: for classes that a flip or a colour change turns into other
    classes ("moving to the left", "red circle": the embedded world; SSv2's left/right classes, too, although the
    authors flipped them). augment="none" uses the evaluation geometry (centre crop), so only the random frame
    positions vary: for tiny frames, where a corner crop can cut the moving object out of the picture.
    Returns dict(size, crops=[(x, y, cw, ch)] in source pixels, flip, jitter (None or (order, b, c, s, h)), gray)."""
    if augment == "none":
        return dict(eval_plan(w, h, input_size), flip=False, jitter=None, gray=False)
    g = generator
    rand = lambda: float(torch.rand((), generator=g))
    r = int(256 / 224 * input_size) / min(w, h)  # source -> resized-to-256 scale
    W1, H1 = round(w * r), round(h * r)
    sizes = [int(min(W1, H1) * s) for s in SCALES]
    sizes = [input_size if abs(x - input_size) < 3 else x for x in sizes]
    pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= 1]
    cw, ch = pairs[int(torch.randint(len(pairs), (), generator=g))]
    ws, hs = (W1 - cw) // 4, (H1 - ch) // 4
    positions = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    x, y = positions[int(torch.randint(5, (), generator=g))]
    cw, ch = min(w, max(1, round(cw / r))), min(h, max(1, round(ch / r)))  # back to source pixels
    x, y = min(round(x / r), w - cw), min(round(y / r), h - ch)
    flip = rand() < 0.5
    jitter = None
    if rand() < JITTER["p"]:
        order = torch.randperm(4, generator=g).tolist()
        u = lambda lo, hi: lo + (hi - lo) * rand()
        b, c, s = (u(1 - JITTER[k], 1 + JITTER[k]) for k in ("brightness", "contrast", "saturation"))
        jitter = (order, b, c, s, u(-JITTER["hue"], JITTER["hue"]))
    gray = rand() < GRAYSCALE_P
    if augment == "crop":
        flip, jitter, gray = False, None, False
    return dict(size=input_size, crops=[(x, y, cw, ch)], flip=flip, jitter=jitter, gray=gray)


_LUMA = torch.tensor([0.299, 0.587, 0.114])
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _gray(x):  # [N, 3, H, W] -> [N, 1, H, W]
    return torch.einsum("c,nchw->nhw", _LUMA, x).unsqueeze(1)


def color_jitter(x, order, b, c, s, h):
    """Brightness, contrast, saturation and hue with one set of factors for all frames, in `order`
    (0..3 = b, c, s, h), clamped to [0, 1] after each step like torchvision's ColorJitter. x: float [N, 3, H, W]
    in [0, 1]. Hue turns the chroma plane of YIQ by 2*pi*h: a linear stand-in for torchvision's HSV hue shift,
    which costs about 300 ms per 32-frame clip."""
    for op in order:
        if op == 0:
            x = x * b
        elif op == 1:
            m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * c + m
        elif op == 2:
            g = _gray(x)
            x = (x - g) * s + g
        else:
            cos, sin = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
            rot = torch.tensor([[1.0, 0, 0], [0, cos, -sin], [0, sin, cos]])
            x = torch.einsum("ij,njhw->nihw", _YIQ2RGB @ rot @ _RGB2YIQ, x)
        x = x.clamp(0, 1)
    return x


def apply_plan(frames, plan, norm="clip"):
    """uint8 RGB frames [N, H, W, 3] (as decoded) -> float [len(crops) * N, 3, S, S], normalised, crop after crop.

    Each crop box is cut out and resized to S x S (bilinear with antialiasing, on uint8 in channels-last layout:
    about 2 ms for 32 frames), then flipped, colour-jittered, grayed and normalised as the plan says."""
    S = plan["size"]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMS[norm])
    views = []
    for x, y, cw, ch in plan["crops"]:
        v = torch.from_numpy(np.ascontiguousarray(frames[:, y:y + ch, x:x + cw])).permute(0, 3, 1, 2)  # [N,3,ch,cw]
        if (ch, cw) != (S, S):
            v = torch.nn.functional.interpolate(v, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        if plan.get("flip"):
            v = v.flip(3)
        v = v.contiguous().float()  # [N, 3, S, S], 0..255
        if plan.get("jitter") or plan.get("gray"):
            v = v.div_(255)
            if plan.get("jitter"):
                v = color_jitter(v, *plan["jitter"])
            if plan.get("gray"):
                v = _gray(v).expand(-1, 3, -1, -1)
            views.append((v - mean) / std)
        else:
            views.append(v.mul_(1 / (255 * std)).sub_(mean / std))  # (v / 255 - mean) / std in one pass
    return torch.cat(views) if len(views) > 1 else views[0]


# ----------------------------------------------------------------------------------------------------------
# Dataset

_DECODE_ERRORS = (DecodeError, OSError, av.error.FFmpegError, EOFError)


class VideoDataset(torch.utils.data.Dataset):
    """Clips of T frames for training or evaluation; see the module docstring for outputs and bad videos.

    samples: a list file path or [(relpath, label)]; class_names: a labels CSV path or a list (checks labels).
    train: random segment positions + augmentation (one view; augment="paper" or "crop", see train_plan); else
    centre positions, or num_clips views spread
    over each segment, times num_crops (1 or 3) crops. norm: 'clip' (default) or 'imagenet' (the authors' code
    and released checkpoints). decode_threads: FFmpeg threads per video; 1 suits DataLoader workers (one per
    core), 0 (one per core) suits loading in the main process."""

    def __init__(self, root, samples, class_names=None, num_frames=32, train=False, input_size=224, num_clips=1,
                 num_crops=1, norm="clip", seed=0, decode_threads=1, max_retries=10, augment="paper"):
        if isinstance(class_names, (str, os.PathLike)):
            class_names = read_labels(class_names)
        if isinstance(samples, (str, os.PathLike)):
            samples = read_list(samples, len(class_names) if class_names is not None else None)
        elif class_names is not None:
            bad = [s for s in samples if not 0 <= s[1] < len(class_names)]
            if bad:
                raise DatasetError(f"label {bad[0][1]} of {bad[0][0]} outside the {len(class_names)} classes")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.root, self.samples, self.class_names = root, list(samples), class_names
        self.num_frames, self.train, self.input_size = num_frames, train, input_size
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        self.norm, self.seed, self.decode_threads, self.max_retries = norm, seed, decode_threads, max_retries
        self.augment = augment
        # Shared memory: visible to (and written by) every DataLoader worker process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._failed = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()  # per sample

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch):
        """Call before iter(loader) each epoch: training augmentation is seeded from (seed, epoch, index)."""
        self._epoch[0] = epoch

    def num_failures(self):
        """Number of distinct unreadable videos met so far (each replaced in training, flagged in evaluation, as
        often as it is asked for; the per-epoch count is the batches' ok flags)."""
        return int(self._failed.sum())

    def failed_videos(self):
        return [self.samples[i][0] for i in torch.nonzero(self._failed).flatten().tolist()]

    def generator(self, index, step=0):
        """The training randomness of sample `index` this epoch (step > 0: its step-th replacement)."""
        seq = np.random.SeedSequence([self.seed, int(self._epoch[0]), index] + ([step] if step else []))
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def load(self, index, generator=None):
        """Clip [V*T, 3, S, S] of sample `index`; raises on unreadable videos."""
        path = os.path.join(self.root, self.samples[index][0])
        T, S = self.num_frames, self.input_size
        with VideoReader(path, threads=self.decode_threads) as r:
            if self.train:
                g = self.generator(index) if generator is None else generator
                frames = r.get(sample_indices(r.num_frames, T, "train", generator=g))  # [T, h, w, 3] uint8
            else:
                frames = r.get(sample_indices(r.num_frames, T, "eval", num_clips=self.num_clips))  # [C*T, h, w, 3]
        h, w = frames.shape[1:3]
        if self.train:
            return apply_plan(frames, train_plan(w, h, S, generator=g, augment=self.augment), self.norm)
        plan = eval_plan(w, h, S, self.num_crops)
        views = [apply_plan(frames[c * T:(c + 1) * T], plan, self.norm) for c in range(self.num_clips)]
        return torch.cat(views) if len(views) > 1 else views[0]  # [num_clips * num_crops * T, 3, S, S]

    def _try(self, index, generator=None):
        if self._failed[index]:  # known bad: do not decode again
            return None
        try:
            return self.load(index, generator)
        except _DECODE_ERRORS as e:
            log.warning("unreadable video %s: %s", self.samples[index][0], e)
            self._failed[index] = True
            return None

    def __getitem__(self, index):
        clip = self._try(index)
        if clip is not None:
            return clip, self.samples[index][1], index, True
        if not self.train:
            V = self.num_clips * self.num_crops
            zero = torch.zeros(V * self.num_frames, 3, self.input_size, self.input_size)
            return zero, self.samples[index][1], index, False
        for step in range(1, self.max_retries + 1):
            j = (index + step) % len(self.samples)
            clip = self._try(j, self.generator(index, step))  # augmented unlike j's own draw
            if clip is not None:
                return clip, self.samples[j][1], j, False  # a valid stand-in; ok=False counts the bad video
        raise RuntimeError(f"{self.max_retries + 1} unreadable videos in a row from {self.samples[index][0]}; "
                           f"check the dataset with: python data.py --check ROOT LIST LABELS")


def collate(batch):
    """DataLoader collate_fn: [(clip, label, index, ok)] -> dict(clips [B, V*T, 3, S, S] float, label [B] int64,
    index [B] int64, ok [B] bool). (The default collate gives the same four tensors as a list.)"""
    clips, labels, index, ok = zip(*batch)
    return dict(clips=torch.stack(clips), label=torch.tensor(labels), index=torch.tensor(index),
                ok=torch.tensor(ok, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------
# Mixup / CutMix with label smoothing (training option; the authors' defaults)

def mixup_cutmix(clips, labels, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1,
                 generator=None):
    """Mix each clip of the batch with the batch reversed: mixup (a blend) or CutMix (one box, the same in every
    frame), chosen per batch with probability switch_prob for CutMix; lambda ~ Beta(alpha, alpha).
    clips [B, ..., H, W] (e.g. [B, T, 3, H, W]), labels [B] -> (mixed clips, soft targets [B, num_classes])
    with label smoothing (1 - smoothing + smoothing / C on the class, smoothing / C elsewhere). Train with
    loss = -(targets * logits.log_softmax(-1)).sum(-1).mean(). Defaults: the authors' settings."""
    g = generator
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))
    off = smoothing / num_classes
    y = torch.full((len(labels), num_classes), off, device=clips.device)
    y.scatter_(1, labels.view(-1, 1).to(clips.device), 1 - smoothing + off)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    other = clips.flip(0)
    if use_cutmix:
        lam = rng.beta(cutmix_alpha, cutmix_alpha)
        H, W = clips.shape[-2:]
        r = math.sqrt(1 - lam)
        ch, cw = int(H * r), int(W * r)
        cy, cx = rng.integers(H), rng.integers(W)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        clips = clips.clone()
        clips[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    elif mixup_alpha > 0:
        lam = rng.beta(mixup_alpha, mixup_alpha)
        clips = clips * lam + other * (1 - lam)
    else:
        lam = 1.0
    return clips, y * lam + y.flip(0) * (1 - lam)


# ----------------------------------------------------------------------------------------------------------
# Finding the videos: the datasets as their users downloaded them
#
# A list names `relative/path label`. The video is ROOT/relative/path when the download has the authors' layout;
# otherwise it is found by its file name in any folder under ROOT (HMDB-51 extracted as one folder per class,
# UCF-101 as UCF-101/<Class>/v_*.avi, Kinetics as train/<class>/<youtube_id>_<start>_<end>.mp4), so nobody has to
# move or rename files. That second lookup uses an index of ROOT, built once and cached:
#   where    $VIFI_CACHE/video-index/<sha256 of ROOT's real path, 16 hex>.json (default ~/.cache/vifi-clip), never
#            inside ROOT: a dataset folder may be read-only or shared, and a file written there would change the
#            very folder time the index is checked against.
#   what     every folder under ROOT (hidden entries skipped, folder links followed once) with its modification time
#            and the names of its files.
#   valid    while every indexed folder still has the modification time recorded (a file added, removed or renamed
#            anywhere changes its folder's time; a new folder changes its parent's): one stat per folder (about 800
#            for Kinetics-400 in class folders), no walk. Otherwise the index is rebuilt. A name missing from a valid
#            index is missing on disk, so a few missing videos do not make every run walk the dataset again.
# A file name found in two places is an error naming both, unless the listed folder picks one (a list naming
# val/x.mp4, with train/a/x.mp4 and val/a/x.mp4 on disk, takes the second).

MAX_MISSING = 0.01  # preflight: at most 1% of a list may be missing (warned; they count as unreadable videos)
INDEX_VERSION = 1

# The authors' list folders (splits/datasets_splits/<folder>/, also under base2novel_splits/) -> the dataset and its
# layout as distributed, for preflight's message.
LAYOUTS = {
    "hmdb_splits": ("HMDB", "HMDB-51 class folders as extracted: ROOT/<class>/<file>.avi"),
    "ucf_splits": ("UCF", "UCF-101 as extracted: ROOT/UCF-101/<Class>/v_<Class>_gNN_cNN.avi"),
    "ssv2_splits": ("SSv2", "Something-Something v2 as extracted: ROOT/<id>.webm"),
    "k400_splits": ("Kinetics-400", "Kinetics as downloaded: ROOT/train|val/<file>.mp4, or in class folders "
                                    "ROOT/train|val/<class>/<youtube_id>_<start>_<end>.mp4"),
    "k600_splits": ("Kinetics-600", "Kinetics as downloaded: ROOT/train|val|test/<file>.mp4, or in class folders "
                                    "ROOT/train|val|test/<class>/<youtube_id>_<start>_<end>.mp4"),
}


def cache_dir():
    """$VIFI_CACHE, default ~/.cache/vifi-clip (shared with miniworld.py)."""
    return os.path.expanduser(os.environ.get("VIFI_CACHE", os.path.join("~", ".cache", "vifi-clip")))


def index_path(root):
    """Where the index of `root` is cached."""
    import hashlib
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir(), "video-index", f"{key}.json")


def _is_file(entry):
    try:
        return entry.is_file()  # follows links
    except OSError:
        return False


def _walk(root):
    """{relative folder ('' for root): [mtime_ns, [file names]]} of every folder under root."""
    folders, seen, stack = {}, set(), [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            st = os.stat(full)
            entries = list(os.scandir(full))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # a folder link seen before (or a cycle)
            continue
        seen.add((st.st_dev, st.st_ino))
        names = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    stack.append(f"{rel}/{e.name}" if rel else e.name)
                elif e.is_file():
                    names.append(e.name)
            except OSError:
                pass
        folders[rel] = [st.st_mtime_ns, sorted(names)]
    return folders


def _index_valid(root, folders):
    for rel, (mtime, _) in folders.items():
        try:
            if os.stat(os.path.join(root, rel) if rel else root).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def video_index(root, rebuild=False):
    """{file name: [paths relative to root]} of every file under root, from the cached index (see above) while it is
    valid, else from a fresh walk, which is then cached (a cache folder that cannot be written only costs the walk
    next time)."""
    path, real = index_path(root), os.path.realpath(root)
    folders = None
    if not rebuild:
        try:
            with open(path, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("version") == INDEX_VERSION and cached.get("root") == real \
                    and _index_valid(root, cached["folders"]):
                folders = cached["folders"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if folders is None:
        folders = _walk(root)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(dict(version=INDEX_VERSION, root=real, folders=folders), f)
            os.replace(tmp, path)  # several processes (torchrun ranks) may write it at once: each write is whole
        except OSError as e:
            log.warning("cannot cache the index of %s at %s: %s", root, path, e)
    by_name = {}
    for rel, (_, names) in folders.items():
        for name in names:
            by_name.setdefault(name, []).append(f"{rel}/{name}" if rel else name)
    return by_name


def _locate(root, paths):
    """For each listed path, the path relative to root where the video is, or None."""
    listings = {}

    def listed_file(rel):  # one scandir per listed folder instead of one stat per video
        folder, name = os.path.split(rel)
        if folder not in listings:
            try:
                listings[folder] = {e.name for e in os.scandir(os.path.join(root, folder)) if _is_file(e)}
            except OSError:
                listings[folder] = set()
        return name in listings[folder]

    found = [p if listed_file(p) else None for p in paths]
    if all(f is not None for f in found):
        return found
    by_name = video_index(root)
    for i, p in enumerate(paths):
        if found[i] is not None:
            continue
        candidates = by_name.get(os.path.basename(p), [])
        folder = os.path.dirname(p)
        if len(candidates) > 1 and folder:
            candidates = [c for c in candidates if c.startswith(folder + "/")] or candidates
        if len(candidates) > 1:
            more = f" (and {len(candidates) - 2} more)" if len(candidates) > 2 else ""
            raise DatasetError(f"{root}: the listed video {p} is found twice, as {candidates[0]} and "
                               f"{candidates[1]}{more}; remove or move one of them")
        if candidates:
            found[i] = candidates[0]
    return found


def resolve(root, samples):
    """(samples, missing): every sample in order, its path replaced by where the video is under root (the listed
    path, else the file found by name in any folder, through the cached index); missing lists the listed paths of
    the videos not found, which keep their listed path (they then count as unreadable, as any bad video)."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such folder")
    found = _locate(root, [p for p, _ in samples])
    resolved = [(f if f is not None else p, *rest) for (p, *rest), f in zip(samples, found)]
    return resolved, [p for (p, _), f in zip(samples, found) if f is None]


def layout_of(source):
    """(dataset, layout as distributed) for a list file of the authors' folders, else ("", "")."""
    parts = os.path.normpath(str(source)).split(os.sep)
    return LAYOUTS.get(parts[-2], ("", "")) if len(parts) >= 2 else ("", "")


def preflight(root, samples, source="", max_missing=MAX_MISSING):
    """Check a list against root before anything heavy: a directory lookup through the index, no decoding.

    Returns resolve(root, samples). More than max_missing of the list not found raises DatasetError with one line:
    how many of how many, three examples, and the layout expected (source: the list file, named in the message; its
    folder among the authors' picks the dataset's layout). Fewer are logged and count as unreadable videos."""
    samples, missing = resolve(root, samples)
    if missing:
        dataset, layout = layout_of(source)
        folder = os.path.dirname(missing[0])
        line = (f"{dataset + ': ' if dataset else ''}{len(missing)} of {len(samples)} videos"
                f"{' in ' + os.path.basename(str(source)) if source else ''} not found under {root}: "
                f"e.g. {', '.join(missing[:3])}; expected ROOT/{folder + '/' if folder else ''}<file> or "
                f"ROOT/<any folder>/<file>{f' ({layout})' if layout else ''}")
        if len(missing) > max_missing * len(samples):
            raise DatasetError(line)
        log.warning("%s; at most %g%% may be missing: they count as unreadable videos", line, 100 * max_missing)
    return samples, missing


# ----------------------------------------------------------------------------------------------------------
# Checking a dataset up front

def _check_one(path, num_frames=8):
    try:
        with VideoReader(path, threads=1) as r:
            r.get(sample_indices(r.num_frames, num_frames, "eval"), size=(32, 32))
        return None
    except _DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"


def check_videos(root, samples, num_frames=8, workers=0):
    """[(relpath as listed, reason)] for every video the dataset could not read: not found (by its path or its file
    name in any folder, see resolve) or not decodable (decodes num_frames spread frames)."""
    found = _locate(root, [p for p, _ in samples])
    paths = [os.path.join(root, f) for f in found if f is not None]
    if workers > 0:
        import functools
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            decoded = pool.map(functools.partial(_check_one, num_frames=num_frames), paths, chunksize=16)
    else:
        decoded = [_check_one(p, num_frames) for p in paths]
    decoded = iter(decoded)
    reasons = [f"not found under {root}" if f is None else next(decoded) for f in found]
    return [(s[0], why) for s, why in zip(samples, reasons) if why is not None]


def main(argv=None):
    ap = argparse.ArgumentParser(description="ViFi-CLIP data tools", epilog=(
        "exit status: 0 every video readable; 1 unreadable videos found (listed on stdout with the reason); 2 bad "
        "arguments, or a list or labels file missing or malformed (one line on stderr names the file and line)"))
    ap.add_argument("--check", nargs=3, metavar=("ROOT", "LIST", "LABELS"),
                    help="decode 8 frames spread over every video of LIST under ROOT (at its listed path or by its file "
                         "name in any folder); list the missing and unreadable ones")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 2
    root, list_path, labels = args.check
    names = None
    try:
        if not os.path.isdir(root):
            raise DatasetError(f"{root}: ROOT is not a folder")
        names = read_labels(labels)
        samples = read_list(list_path, len(names))
    except (DatasetError, OSError, UnicodeDecodeError) as e:  # the user's input: one line, not a traceback
        if isinstance(e, OSError) and e.filename:
            e = f"{e.filename}: {e.strerror}"
        elif isinstance(e, UnicodeDecodeError):
            e = f"{labels if names is None else list_path}: not UTF-8 text ({e.reason})"
        print(f"data.py --check: {e}", file=sys.stderr)
        return 2
    bad = check_videos(root, samples, workers=args.workers)
    for path, why in bad:
        print(f"{path}\t{why}")
    print(f"{len(bad)} of {len(samples)} videos unreadable", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
