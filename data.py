"""Video data for ViFi-CLIP: split lists, sparse frame sampling, augmentation, clips, bad videos (paper Sec. 3-4,
Appendix B-D).

A list file holds "relative/path label" per line (the label is the last field, so paths may hold spaces); a labels CSV
holds "id,name" rows: the authors' layout, shipped in splits/.

Reading order:
  read_labels, read_list            the files (DatasetError "file:line: ..." for anything malformed)
  kshot_split, base_novel_split     the few-shot and base-to-novel splits (Sec. 3)
  sample_indices                    sparse segment sampling (TSN): T segments, one frame of each
  eval_plan, train_plan, apply_plan one geometry per clip (colour per frame), as crop boxes resized to the input size
  VideoDataset, collate             clips [V*T, 3, S, S] (V = num_clips x num_crops views) with label, index, ok
  mixup_cutmix                      the authors' mixup / cutmix with label smoothing

Bad videos: a missing, empty, truncated or undecodable video never stops a run. VideoDataset logs it once, records it
in a table shared by the DataLoader workers and returns ok=False: training gets the next readable sample instead
(deterministically), so the batch is complete; evaluation gets a zero clip with the true label, which counts as wrong
and stays in the denominator.

Determinism: evaluation views depend only on the video; training randomness (frame positions, crop, flip, colour)
comes from a generator seeded by (seed, epoch, index), so a resumed run reproduces it.

Beside this file: plumbing/video_decoder.py (decodes only the frames a clip needs), plumbing/video_index.py (finds
listed videos in a dataset folder as downloaded) and tools/check_dataset.py (`python -m tools.check_dataset ROOT LIST
LABELS`: every video readable?).
"""
import csv
import logging
import math
import os

import numpy as np
import torch

from plumbing.video_decoder import DECODE_ERRORS, VideoReader

log = logging.getLogger("data")

# CLIP's pixel statistics (its own preprocessing) and ImageNet's (what the authors' mmaction pipeline used;
# their released checkpoints were trained with these). Values for RGB in [0, 1].
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

SCALES = (1, 0.875, 0.75, 0.66)  # multi-scale crop (TSN), as in the authors' training pipeline
JITTER = dict(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)  # authors' ColorJitter settings
GRAYSCALE_P = 0.2


class DatasetError(ValueError):
    """A list or labels file is malformed (the message starts with "file:line:"), or the videos of a list are not
    under its root (video_index.preflight, video_index.resolve)."""


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
    old_id = {n: i for i, n in enumerate(class_names)}
    unknown = [n for n in names if n not in old_id]
    if unknown:
        raise ValueError(f"class names not in the full label list: {unknown[:5]}")
    return [old_id[n] for n in names]


# ----------------------------------------------------------------------------------------------------------
# Frame sampling (sparse segment sampling [TSN], Appendix D)

def sample_indices(num_frames, T, mode="train", generator=None, num_clips=1):
    """Frame indices, num_clips * T of them, view after view (sparse segment sampling, TSN).

    Training, as the authors' pipeline samples (mmaction's SampleFrames): T segments of num_frames // T frames, one
    frame at a uniformly random position in each; so the last num_frames mod T frames are never drawn, and a video of
    T to 2T - 1 frames always gives frames 0..T-1. A video shorter than T frames repeats frames: round(t * N / T),
    rounding half to even. `generator` is a torch.Generator.
    Evaluation: the video cut into T equal segments, the frame at the centre of each; with num_clips views, view v
    takes the frame at (v + 0.5) / num_clips of each segment, so the views are spread evenly and are the same every
    time (the authors' multi-view test draws its clips at random: benchmarks/README.md, departures)."""
    if num_frames < 1 or T < 1 or num_clips < 1:
        raise ValueError(f"need num_frames, T, num_clips >= 1, got {num_frames}, {T}, {num_clips}")
    if mode == "train":
        seg = num_frames // T
        if seg > 0:
            idx = torch.arange(T) * seg + torch.randint(seg, (num_clips, T), generator=generator)
        else:
            idx = torch.round(torch.arange(T, dtype=torch.float64) * num_frames / T).long().expand(num_clips, T)
        return (idx % num_frames).flatten().tolist()  # "% num_frames": a rounded index of N wraps to 0, as theirs
    if mode != "eval":
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    seg = num_frames / T
    starts = torch.arange(T, dtype=torch.float64) * seg
    offsets = ((torch.arange(num_clips, dtype=torch.float64) + 0.5) / num_clips)[:, None].expand(num_clips, T)
    idx = torch.floor(starts + offsets * seg).long().clamp_(0, num_frames - 1)  # [num_clips, T]
    return idx.flatten().tolist()


# ----------------------------------------------------------------------------------------------------------
# Transforms (Appendix D). A plan fixes one geometry for a whole clip (and a colour change per frame), as crop boxes
# in the decoded frame resized straight to input_size^2: "resize the short side, then crop", touching only kept pixels.

def resized_short_side(input_size: int) -> int:
    """The short side a frame is resized to before cropping: 256 for 224, scaled with input_size (384 for 336)."""
    return int(256 / 224 * input_size)


def eval_plan(w, h, input_size=224, num_crops=1):
    """Evaluation geometry for a w x h video: short side to 256 (scaled with input_size, e.g. 384 for 336) then a
    centre crop of input_size; or, with num_crops=3, short side to input_size and three crops along the long side
    (start, centre, end). Returns dict(size=input_size, crops=[(x, y, cw, ch)] in source pixels)."""
    m = min(w, h)
    if num_crops == 1:
        c = min(m, round(input_size * m / resized_short_side(input_size)))  # the crop, in source pixels
        return dict(size=input_size, crops=[((w - c) // 2, (h - c) // 2, c, c)])
    if num_crops == 3:
        L = max(w, h)
        starts = [0, (L - m) // 2, L - m]
        crops = [(p, 0, m, m) for p in starts] if w >= h else [(0, p, m, m) for p in starts]
        return dict(size=input_size, crops=crops)
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")


AUGMENTATIONS = ("paper", "crop", "none")


def train_plan(w, h, input_size=224, generator=None, augment="paper", frames=1):
    """Training geometry and colour for `frames` frames of a w x h video (Appendix B/D, the authors' pipeline): short
    side to 256 (scaled with input_size), multi-scale crop (sides from SCALES of the short side, width and height at
    most one scale apart, at a corner or the centre) resized to input_size^2, flip (p .5), colour jitter (p .8, then
    drawn anew for every frame, as their pipeline jitters frame by frame), grayscale (p .2); all but the jitter's
    factors are one draw per clip. augment="crop": the crop only, for classes that a flip or a colour change turns into
    others ("moving to the left", "red circle"; SSv2's left/right classes, though the authors flipped them); "none":
    the evaluation's centre crop, only the frame positions vary.
    Returns dict(size, crops=[(x, y, cw, ch)] in source pixels, flip, jitter (None or one (order, b, c, s, h) per
    frame), gray)."""
    if augment == "none":
        return dict(eval_plan(w, h, input_size), flip=False, jitter=None, gray=False)
    g = generator
    rand = lambda: float(torch.rand((), generator=g))
    r = resized_short_side(input_size) / min(w, h)  # source -> resized-to-256 scale
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
    if rand() < JITTER["p"]:  # torchvision's ColorJitter.get_params, once per frame
        u = lambda lo, hi: lo + (hi - lo) * rand()
        jitter = []
        for _ in range(frames):
            order = torch.randperm(4, generator=g).tolist()
            b, c, s = (u(1 - JITTER[k], 1 + JITTER[k]) for k in ("brightness", "contrast", "saturation"))
            jitter.append((order, b, c, s, u(-JITTER["hue"], JITTER["hue"])))
    gray = rand() < GRAYSCALE_P
    if augment == "crop":
        flip, jitter, gray = False, None, False
    return dict(size=input_size, crops=[(x, y, cw, ch)], flip=flip, jitter=jitter, gray=gray)


_LUMA = torch.tensor([0.299, 0.587, 0.114])  # PIL's grayscale, as the authors' GrayScale
_JITTER_LUMA = torch.tensor([0.2989, 0.587, 0.114])  # torchvision's, as its ColorJitter on tensors


def _gray(x, luma=_LUMA):  # [N, 3, H, W] -> [N, 1, H, W]
    return torch.einsum("c,nchw->nhw", luma, x).unsqueeze(1)


def _shift_hue(x, h):
    """The hue of HSV turned by h [N] of a full turn, saturation and value kept. x: [N, 3, H, W] in [0, 1]."""
    hi, lo = x.max(1, keepdim=True).values, x.min(1, keepdim=True).values
    chroma = hi - lo  # = value x saturation
    r, g, b = x.split(1, dim=1)
    c = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sixths = torch.where(hi == r, ((g - b) / c) % 6, torch.where(hi == g, (b - r) / c + 2, (r - g) / c + 4))
    sixths = (sixths + 6 * h.view(-1, 1, 1, 1)) % 6  # [N, 1, H, W], the hue in [0, 6)
    k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + sixths) % 6  # HSV -> RGB: R, G, B at n = 5, 3, 1
    return hi - chroma * (torch.minimum(k, 4 - k)).clamp(0, 1)


def color_jitter(x, params):
    """torchvision's ColorJitter with given factors, one set per frame: params[i] = (order, b, c, s, h) for frame i,
    brightness, contrast, saturation and hue (HSV) applied in `order` (0..3 = b, c, s, h), each result clamped to
    [0, 1]. x: float [N, 3, H, W] in [0, 1]. Vectorised over the frames (torchvision's hue costs ~0.1 s a frame)."""
    orders = torch.tensor([p[0] for p in params])  # [N, 4]
    factors = torch.tensor([p[1:] for p in params], dtype=x.dtype)  # [N, 4]: b, c, s, h
    x = x.clone()
    for position in range(orders.shape[1]):
        for op in range(4):
            i = torch.nonzero(orders[:, position] == op).flatten()
            if len(i) == 0:
                continue
            v, f = x[i], factors[i, op].view(-1, 1, 1, 1)
            if op == 0:
                v = v * f
            elif op == 1:
                v = f * v + (1 - f) * _gray(v, _JITTER_LUMA).mean(dim=(1, 2, 3), keepdim=True)
            elif op == 2:
                v = f * v + (1 - f) * _gray(v, _JITTER_LUMA)
            else:
                v = _shift_hue(v, f.flatten())
            x[i] = v.clamp(0, 1)
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
            if plan.get("jitter"):  # one draw per frame
                v = color_jitter(v, plan["jitter"])
            if plan.get("gray"):
                v = _gray(v).expand(-1, 3, -1, -1)
            views.append((v - mean) / std)
        else:
            views.append(v.mul_(1 / (255 * std)).sub_(mean / std))  # (v / 255 - mean) / std in one pass
    return torch.cat(views) if len(views) > 1 else views[0]


# ----------------------------------------------------------------------------------------------------------
# Dataset

class VideoDataset(torch.utils.data.Dataset):
    """Clips of T frames for training or evaluation; see the module docstring for outputs and bad videos.

    samples: a list file path or [(relpath, label)]; class_names: a labels CSV path or a list (checks labels).
    train: random segment positions + augmentation (one view, see train_plan); else centre positions, or num_clips
    views spread over each segment, times num_crops (1 or 3) crops. norm: 'clip' or 'imagenet' (the authors' code
    and released checkpoints). decode_threads: FFmpeg threads per video (1 in DataLoader workers, 0: one per core)."""

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
        for name, value, allowed in (("norm", norm, list(NORMS)), ("augment", augment, AUGMENTATIONS),
                                     ("num_crops", num_crops, (1, 3))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
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
            return apply_plan(frames, train_plan(w, h, S, generator=g, augment=self.augment, frames=len(frames)),
                              self.norm)
        plan = eval_plan(w, h, S, self.num_crops)
        views = [apply_plan(frames[c * T:(c + 1) * T], plan, self.norm) for c in range(self.num_clips)]
        return torch.cat(views) if len(views) > 1 else views[0]  # [num_clips * num_crops * T, 3, S, S]

    def _try(self, index, generator=None):
        if self._failed[index]:  # known bad: do not decode again
            return None
        try:
            return self.load(index, generator)
        except DECODE_ERRORS as e:
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
                           f"check the dataset with: python -m tools.check_dataset ROOT LIST LABELS")


def collate(batch):
    """DataLoader collate_fn: [(clip, label, index, ok)] -> dict(clips [B, V*T, 3, S, S], label, index, ok [B])."""
    clips, labels, index, ok = zip(*batch)
    return dict(clips=torch.stack(clips), label=torch.tensor(labels), index=torch.tensor(index),
                ok=torch.tensor(ok, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------
# Mixup / CutMix with label smoothing (the authors' defaults)

def mixup_cutmix(clips, labels, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1,
                 generator=None):
    """Mix each clip of the batch with a partner drawn by a random permutation of the batch (the authors' blending; a
    clip may draw itself and stay unmixed): mixup (a blend) or CutMix (one box, the same in every frame; chosen with
    probability switch_prob), lambda ~ Beta(alpha, alpha), corrected to the box's area. clips [B, ..., H, W],
    labels [B] -> (mixed clips, smoothed soft targets [B, num_classes]). Defaults: the authors' settings."""
    g = generator
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))
    off = smoothing / num_classes
    y = torch.full((len(labels), num_classes), off, device=clips.device)
    y.scatter_(1, labels.view(-1, 1).to(clips.device), 1 - smoothing + off)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    partner = torch.randperm(len(labels), generator=g).to(clips.device)
    other = clips[partner]
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
    return clips, y * lam + y[partner] * (1 - lam)
