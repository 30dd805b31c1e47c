"""Tests of data.py: split files, frame sampling, decoding, transforms, bad videos, mixup.

The videos are written here with PyAV (tiny, 64x48): each frame carries its index as 8 black/white stripes
(bit b of the index in stripe b), which survive lossy codecs, so a test can read back which frame it got.
"""
import glob
import logging
import os
import re
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

import data
from plumbing import global_batches, video_decoder
from tools import check_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = os.path.join(ROOT, "splits")
W, H, N = 64, 48, 40  # test video size and length


# ----------------------------------------------------------------------------------------------------------
# helpers

def stripes(i, w=W, h=H):
    img = np.zeros((h, w, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            img[:, b * 8:(b + 1) * 8] = 255
    return img


def read_index(frame):  # [H, W, 3] at W=64 -> the encoded index
    return sum(1 << b for b in range(8) if frame[:, b * 8:(b + 1) * 8].mean() > 128)


def gray(i):  # a frame of uniform brightness 10 + 6 i (for transformed clips)
    return np.full((H, W, 3), 10 + 6 * i, np.uint8)


def write_video(path, codec, n=N, fmt=None, options=None, pts_ms=None, draw=stripes, size=(W, H), rate=25):
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        if codec == "libx264":
            s.options = {"g": "10"}  # a keyframe every 10 frames: lets the seek test seek
        if pts_ms is not None:
            s.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(draw(i), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


VFR_PTS = [0] + np.cumsum([10, 70] * 15)[:29].tolist()  # bursts: 10 ms then 70 ms apart (average 25 fps)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    v = {
        "mp4": write_video(d / "h264.mp4", "libx264"),
        "avi": write_video(d / "mpeg4.avi", "mpeg4"),
        "vp8": write_video(d / "vp8.webm", "libvpx"),
        "vp9": write_video(d / "vp9.webm", "libvpx-vp9"),
        "mkv": write_video(d / "h264.mkv", "libx264"),
        "raw": write_video(d / "raw.h264", "libx264", fmt="h264"),  # no timestamps, no count, no duration
        "vfr": write_video(d / "vfr.mkv", "libx264", n=30, pts_ms=VFR_PTS),
        "short": write_video(d / "short.mp4", "libx264", n=5),
        "long": write_video(d / "long.mp4", "libx264", n=400),
        "gray": write_video(d / "gray.mp4", "libx264", draw=gray),
        "wide": write_video(d / "wide.mp4", "libx264", size=(96, 48),
                            draw=lambda i: np.repeat(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None],
                                                     48, 0).repeat(3, 2)),
    }
    fast = write_video(d / "faststart.mp4", "libx264", options={"movflags": "faststart"})
    raw = open(fast, "rb").read()
    for name, frac in (("trunc_head", 0.6), ("trunc_tail", 0.97)):
        v[name] = str(d / f"{name}.mp4")
        open(v[name], "wb").write(raw[: int(len(raw) * frac)])
    v["corrupt"] = str(d / "corrupt.mp4")
    open(v["corrupt"], "wb").write(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    v["empty"] = str(d / "empty.mp4")
    open(v["empty"], "wb").close()
    v["missing"] = str(d / "missing.mp4")
    v["dir"] = str(d)
    return v


# ----------------------------------------------------------------------------------------------------------
# split files

def write_text(path, text):
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def test_read_labels_by_id_quoted_crlf(tmp_path):
    p = write_text(tmp_path / "l.csv", 'id,name\r\n2,"Putting something, then something"\r\n0,a\r\n1, b \r\n')
    assert data.read_labels(p) == ["a", "b", "Putting something, then something"]


@pytest.mark.parametrize("text, message", [
    ("id,name\n0,a\n2,c\n", "without gaps; missing [1]"),
    ("id,name\n0,a\n1,b\n0,c\n", ":4: duplicate class id 0 (first at line 2)"),
    ("id,name\n0,a,extra\n", ":2: expected 2 fields"),
    ("id,name\nx,a\n", ":2: class id 'x'"),
    ("id,name\n0,\n", ":2: class 0 has an empty name"),
    ("id,name\n", "no classes"),
])
def test_read_labels_errors(tmp_path, text, message):
    p = write_text(tmp_path / "l.csv", text)
    with pytest.raises(data.DatasetError, match=None) as e:
        data.read_labels(p)
    assert message in str(e.value) and str(e.value).startswith(p)


def test_read_list(tmp_path):
    p = write_text(tmp_path / "l.txt", "a/x.mp4 1\r\nfolder with space/y z.avi 0\n\n   \nc.webm 2")
    assert data.read_list(p, 3) == [("a/x.mp4", 1), ("folder with space/y z.avi", 0), ("c.webm", 2)]


@pytest.mark.parametrize("text, message", [
    ("a.mp4 0\nb.mp4 3\n", ":2: label 3 outside the 3 classes"),
    ("a.mp4 0\nb.mp4\n", ":2: expected 'relative/path label'"),
    ("a.mp4 zero\n", ":1: label 'zero' is not an integer"),
    ("a.mp4 -1\n", ":1: negative label -1"),
    ("\n\n", "no samples"),
])
def test_read_list_errors(tmp_path, text, message):
    p = write_text(tmp_path / "l.txt", text)
    with pytest.raises(data.DatasetError) as e:
        data.read_list(p, 3)
    assert message in str(e.value) and str(e.value).startswith(p)


def test_write_read_roundtrip(tmp_path):
    names = ["a, with comma", 'quote "q"', "c"]
    data.write_labels(tmp_path / "l.csv", names)
    assert data.read_labels(tmp_path / "l.csv") == names
    samples = [("x/a b.mp4", 2), ("y.avi", 0)]
    data.write_list(tmp_path / "l.txt", samples)
    assert data.read_list(tmp_path / "l.txt", 3) == samples


def _shipped_pairs():
    """Every shipped list with the labels CSV it belongs to."""
    L = os.path.join(SPLITS, "labels")
    full = {"hmdb": "hmdb_51", "ucf": "ucf_101", "ssv2": "ssv2", "k400": "kinetics_400"}
    halves = {"hmdb": "hmdb_51", "ucf": "ucf_101", "ssv2": "ssv2_174", "k400": "kinetics_400"}
    pairs = []
    for path in sorted(glob.glob(os.path.join(SPLITS, "datasets_splits", "**", "*.txt"), recursive=True)):
        parts = os.path.relpath(path, os.path.join(SPLITS, "datasets_splits")).split(os.sep)
        name = parts[-1]
        if parts[0] == "k600_splits":
            csv_name = f"ZS_split{name.split('_')[1][5:]}_K600.csv"
        elif parts[0] == "base2novel_splits":
            ds = parts[1].split("_")[0]
            csv_name = f"{halves[ds]}_{'novel' if name.startswith('novel') else 'base'}_labels.csv"
        else:
            csv_name = f"{full[parts[0].split('_')[0]]}_labels.csv"
        pairs.append((path, os.path.join(L, csv_name)))
    return pairs


def test_every_shipped_list_parses_against_its_labels():
    pairs = _shipped_pairs()
    assert len(pairs) == 47
    for list_path, csv_path in pairs:
        names = data.read_labels(csv_path)
        samples = data.read_list(list_path, len(names))
        assert len({y for _, y in samples}) == len(names), list_path  # every class appears
    # the shipped label files: full lists and both halves agree by name, Kinetics-600 zero-shot is disjoint
    L = os.path.join(SPLITS, "labels")
    for full, half in (("hmdb_51", "hmdb_51"), ("ucf_101", "ucf_101"), ("ssv2", "ssv2_174"),
                       ("kinetics_400", "kinetics_400")):
        names = data.read_labels(os.path.join(L, f"{full}_labels.csv"))
        base = data.read_labels(os.path.join(L, f"{half}_base_labels.csv"))
        novel = data.read_labels(os.path.join(L, f"{half}_novel_labels.csv"))
        assert sorted(base + novel) == sorted(names) and len(base) - len(novel) in (0, 1)
    k400 = set(data.read_labels(os.path.join(L, "kinetics_400_labels.csv")))
    k600 = set(data.read_labels(os.path.join(L, "kinetics_600_labels.csv")))
    for i in (1, 2, 3):
        zs = data.read_labels(os.path.join(L, f"ZS_split{i}_K600.csv"))
        assert len(zs) == 160 and set(zs) <= k600 and not set(zs) & k400


def test_shipped_fewshot_lists_have_k_per_class():
    for ds in ("hmdb", "ucf", "ssv2"):
        for k in (2, 4, 8, 16):
            path = os.path.join(SPLITS, "datasets_splits", f"{ds}_splits", f"train1_few_shot_{k}.txt")
            samples = data.read_list(path)
            counts = np.bincount([y for _, y in samples])
            assert (counts == k).all()


def generated_list(num_classes=6, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 12, num_classes)
    return [(f"c{c}/v{i}.mp4", c) for c in range(num_classes) for i in range(counts[c])], counts


def test_kshot_split():
    samples, counts = generated_list()
    a = data.kshot_split(samples, 3, seed=1)
    assert a == data.kshot_split(samples, 3, seed=1)
    assert a != data.kshot_split(samples, 3, seed=2)
    assert (np.bincount([y for _, y in a]) == 3).all() and set(a) <= set(samples) and len(set(a)) == len(a)
    short = ", ".join(f"{c} ({n})" for c, n in enumerate(counts) if n < 10)
    with pytest.raises(ValueError, match=re.escape(f"fewer than K=10 videos, class (videos): {short}") + "$"):
        data.kshot_split(samples, 10)
    with pytest.raises(ValueError, match=r"class \(videos\): 6 \(0\)"):
        data.kshot_split(samples, 1, num_classes=7)


def test_base_novel_split():
    samples, counts = generated_list(7)
    names = [f"n{c}" for c in range(7)]
    base, novel, base_names, novel_names = data.base_novel_split(samples, names)
    order = sorted(range(7), key=lambda c: (counts[c], c))  # ascending frequency, ties by id
    assert novel_names == [names[c] for c in order[:3]] and base_names == [names[c] for c in order[3:]]
    assert min(counts[[int(n[1:]) for n in base_names]]) >= max(counts[[int(n[1:]) for n in novel_names]])
    assert len(base) + len(novel) == len(samples)
    for half, half_names in ((base, base_names), (novel, novel_names)):
        for path, y in half:  # remapped labels point at the same class name
            assert half_names[y] == f"n{path.split('/')[0][1:]}"


def test_base_novel_split_of_validation_with_training_names():
    train, counts = generated_list(7)
    names = [f"n{c}" for c in range(7)]
    _, _, base_names, novel_names = data.base_novel_split(train, names)
    val = [(f"c{c}/w{i}.mp4", c) for c in range(7) for i in range(2)]  # equal counts: its own split would differ
    base_val, novel_val, b, n = data.base_novel_split(val, names, base_names=base_names, novel_names=novel_names)
    assert (b, n) == (base_names, novel_names)
    assert all(base_names[y] == f"n{p.split('/')[0][1:]}" for p, y in base_val) and len(base_val) == 8
    assert all(novel_names[y] == f"n{p.split('/')[0][1:]}" for p, y in novel_val) and len(novel_val) == 6
    with pytest.raises(ValueError, match="both base_names and novel_names"):
        data.base_novel_split(val, names, base_names=base_names)
    with pytest.raises(ValueError, match="overlap"):
        data.base_novel_split(val, names, base_names=base_names, novel_names=base_names[:1])


def test_base_novel_split_reproduces_authors_hmdb():
    # HMDB-51 split 1 has 70 training videos in every class: ties everywhere, broken by class id.
    names = data.read_labels(os.path.join(SPLITS, "labels", "hmdb_51_labels.csv"))
    samples = [(f"{c}_{i}.avi", c) for c in range(51) for i in range(70)]
    _, _, base_names, novel_names = data.base_novel_split(samples, names)
    assert base_names == data.read_labels(os.path.join(SPLITS, "labels", "hmdb_51_base_labels.csv"))
    assert novel_names == data.read_labels(os.path.join(SPLITS, "labels", "hmdb_51_novel_labels.csv"))


def test_base_labels_ordered_by_frequency_in_authors_ucf():
    # the authors' UCF base classes are numbered by ascending training count, ties by original id
    names = data.read_labels(os.path.join(SPLITS, "labels", "ucf_101_labels.csv"))
    base_names = data.read_labels(os.path.join(SPLITS, "labels", "ucf_101_base_labels.csv"))
    base = data.read_list(os.path.join(SPLITS, "datasets_splits", "base2novel_splits", "ucf_splits", "base_train.txt"))
    counts = np.bincount([y for _, y in base])
    keys = [(counts[i], names.index(n)) for i, n in enumerate(base_names)]
    assert keys == sorted(keys)


# ----------------------------------------------------------------------------------------------------------
# frame sampling

@pytest.mark.parametrize("n", [1, 5, 8, 9, 300, 10000])
def test_sample_indices_train_eval(n):
    T = 8
    seg = n / T
    for mode in ("train", "eval"):
        g = torch.Generator().manual_seed(0)
        idx = data.sample_indices(n, T, mode, generator=g)
        assert len(idx) == T and all(0 <= i < n for i in idx) and idx == sorted(idx)
        for t, i in enumerate(idx):  # one frame inside each segment
            assert np.floor(t * seg) <= i <= max(np.ceil((t + 1) * seg) - 1, np.floor(t * seg))
    assert data.sample_indices(n, T, "eval") == [int((t + 0.5) * seg) for t in range(T)]
    if n < T:  # short videos repeat frames
        assert len(set(data.sample_indices(n, T, "eval"))) == n


def test_sample_indices_random_and_seeded():
    a = data.sample_indices(300, 8, "train", generator=torch.Generator().manual_seed(1))
    assert a == data.sample_indices(300, 8, "train", generator=torch.Generator().manual_seed(1))
    assert a != data.sample_indices(300, 8, "train", generator=torch.Generator().manual_seed(2))
    # positions cover whole segments in training
    g = torch.Generator().manual_seed(0)
    firsts = {data.sample_indices(80, 8, "train", generator=g)[0] for _ in range(200)}
    assert firsts == set(range(10))


def test_sample_indices_multiview():
    idx = data.sample_indices(300, 8, "eval", num_clips=4)
    assert len(idx) == 32 and idx == data.sample_indices(300, 8, "eval", num_clips=4)
    views = np.array(idx).reshape(4, 8)
    seg = 300 / 8
    assert (np.diff(views, axis=0) > 0).all()  # spread over each segment, view after view
    assert views[:, 0].tolist() == [int((v + 0.5) / 4 * seg) for v in range(4)]
    assert data.sample_indices(300, 8, "eval", num_clips=1) == [int((t + 0.5) * seg) for t in range(8)]
    assert data.sample_indices(3, 8, "eval", num_clips=3)[-1] == 2  # short video: still valid


def test_sample_indices_errors():
    for args in ((0, 8), (10, 0)):
        with pytest.raises(ValueError):
            data.sample_indices(*args)
    with pytest.raises(ValueError, match="mode"):
        data.sample_indices(10, 2, "test")


# ----------------------------------------------------------------------------------------------------------
# decoding

@pytest.mark.parametrize("kind", ["mp4", "avi", "vp8", "vp9", "mkv", "raw"])
def test_decode_containers_codecs(videos, kind):
    with video_decoder.VideoReader(videos[kind]) as r:
        assert r.num_frames == N
        idx = [39, 0, 7, 7, 20, 33]
        frames = r.get(idx)
    assert frames.shape == (6, H, W, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == idx


def test_missing_metadata(videos):
    with av.open(videos["mkv"]) as c:
        assert c.streams.video[0].frames == 0  # Matroska stores no frame count: estimated from the duration
    with av.open(videos["raw"]) as c:
        s = c.streams.video[0]
        assert s.frames == 0 and c.duration is None  # nothing: counted from the packets, decoded in order


def test_decode_every_frame_and_repeated_get(videos):
    with video_decoder.VideoReader(videos["mp4"]) as r:
        assert [read_index(f) for f in r.get(range(N))] == list(range(N))
        assert [read_index(f) for f in r.get([5, 1])] == [5, 1]  # a second get starts over


def test_decode_resize_inside_conversion(videos):
    assert video_decoder.decode_frames(videos["mp4"], [3], size=96).shape == (1, 96, 128, 3)  # short side
    assert video_decoder.decode_frames(videos["mp4"], [3], size=(30, 20)).shape == (1, 20, 30, 3)
    assert video_decoder.decode_frames(videos["wide"], [3], size=35).shape == (1, 35, 70, 3)  # even width: fast path


def test_decode_variable_frame_rate(videos):
    with video_decoder.VideoReader(videos["vfr"]) as r:
        got = [read_index(f) for f in r.get(range(r.num_frames))]
        slots = [round(p / 1000 * r.fps) for p in VFR_PTS]
    # frame k: the first frame whose time rounds to slot k, else the last one before
    expect = [slots.index(k) if k in slots else max(i for i, s in enumerate(slots) if s < k)
              for k in range(len(got))]
    assert got == expect and got == sorted(got)


def test_decode_short_video_repeats(videos):
    with video_decoder.VideoReader(videos["short"]) as r:
        idx = data.sample_indices(r.num_frames, 8, "eval")
        got = [read_index(f) for f in r.get(idx)]
    assert got == idx and len(set(got)) == 5


def test_decode_estimate_too_high(videos):
    with video_decoder.VideoReader(videos["mp4"]) as r:
        r.num_frames = 60  # the metadata overstates the length: the video ends early
        got = [read_index(f) for f in r.get(data.sample_indices(60, 6, "eval"))]
    assert got == [5, 15, 25, 35, 39, 39]  # last decoded frame reused
    with video_decoder.VideoReader(videos["mp4"]) as r:
        r.num_frames = 200  # ends before half its stated length: truncated
        with pytest.raises(video_decoder.DecodeError, match="truncated"):
            r.get([150])


def test_decode_seeks_over_long_gaps(videos, monkeypatch):
    monkeypatch.setattr(video_decoder, "SEEK_GAP", 30)
    idx = [3, 150, 151, 390, 399, 200]
    with video_decoder.VideoReader(videos["long"]) as r:
        got = [read_index(f) % 256 for f in r.get(idx)]
    assert got == [i % 256 for i in idx] and r.seeks >= 2


@pytest.mark.parametrize("kind, error", [("missing", FileNotFoundError), ("empty", video_decoder.DecodeError),
                                         ("corrupt", av.error.InvalidDataError), ("dir", OSError),
                                         ("trunc_head", video_decoder.DecodeError)])
def test_decode_bad_files_raise(videos, kind, error):
    with pytest.raises(error):
        video_decoder.decode_frames(videos[kind], [0, 5, 39])


def test_decode_truncated_tail_still_reads(videos):
    got = [read_index(f) for f in video_decoder.decode_frames(videos["trunc_tail"], [0, 20, 39])]
    assert got[:2] == [0, 20] and got[2] <= 39


# ----------------------------------------------------------------------------------------------------------
# transforms

def unnormalize(x, norm="clip"):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in data.NORMS[norm])
    return x * std + mean


def test_eval_plan():
    # 320x240: short side to 256 then a centre 224 crop = a centre 210 crop of the source, resized to 224
    assert data.eval_plan(320, 240, 224, 1) == dict(size=224, crops=[(55, 15, 210, 210)])
    assert data.eval_plan(340, 256, 336, 1) == dict(size=336, crops=[(58, 16, 224, 224)])  # 256 -> 384 for 336
    assert data.eval_plan(320, 240, 224, 3)["crops"] == [(0, 0, 240, 240), (40, 0, 240, 240), (80, 0, 240, 240)]
    assert data.eval_plan(240, 320, 224, 3)["crops"] == [(0, 0, 240, 240), (0, 40, 240, 240), (0, 80, 240, 240)]
    with pytest.raises(ValueError):
        data.eval_plan(320, 240, 224, 2)


def test_train_plan_ranges_and_determinism():
    plans = [data.train_plan(320, 240, 224, torch.Generator().manual_seed(s)) for s in range(300)]
    sides = [240, 210, 180, 158]  # 256, 224, 192, 168 (scales 1, .875, .75, .66) in source pixels
    for p in plans:
        [(x, y, cw, ch)] = p["crops"]
        assert p["size"] == 224 and 0 <= x <= 320 - cw and 0 <= y <= 240 - ch
        assert cw in sides and ch in sides and abs(sides.index(cw) - sides.index(ch)) <= 1
        for order, b, c, s, hue in p["jitter"] or []:  # one draw per frame (one frame here)
            assert sorted(order) == [0, 1, 2, 3] and 0.6 <= b <= 1.4 and 0.6 <= c <= 1.4 and 0.8 <= s <= 1.2
            assert abs(hue) <= 0.1
    frac = lambda key: np.mean([bool(p[key]) for p in plans])
    assert 0.4 < frac("flip") < 0.6 and 0.7 < frac("jitter") < 0.9 and 0.1 < frac("gray") < 0.3
    assert len({p["crops"][0] for p in plans}) > 20
    assert plans[3] == data.train_plan(320, 240, 224, torch.Generator().manual_seed(3))


def test_apply_plan_shapes_ranges():
    frames = np.random.default_rng(0).integers(0, 256, (4, 256, 292, 3), dtype=np.uint8)
    plan = data.eval_plan(292, 256, 224, 1)  # a 224 crop: no resize, exact pixels
    out = data.apply_plan(frames, plan, "clip")
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    x = unnormalize(out)
    torch.testing.assert_close(x * 255, torch.from_numpy(frames[:, 16:240, 34:258]).permute(0, 3, 1, 2).float(),
                               atol=1e-3, rtol=0)
    im = data.apply_plan(frames, plan, "imagenet")
    torch.testing.assert_close(unnormalize(im, "imagenet"), x, atol=1e-5, rtol=0)
    three = data.apply_plan(frames, data.eval_plan(292, 256, 224, 3), "clip")
    assert three.shape == (12, 3, 224, 224)
    for g in range(20):  # training: every combination stays in range
        plan = data.train_plan(146, 128, 112, torch.Generator().manual_seed(g))
        x = unnormalize(data.apply_plan(frames[:2, :128, :146], plan))
        assert x.shape == (2, 3, 112, 112) and x.min() >= -1e-5 and x.max() <= 1 + 1e-5


def test_crop_then_resize_equals_resize_then_crop():
    # the paper's order (short side to 256, centre crop 224) against ours (crop 210 of 240, resize to 224)
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([127 + 120 * np.sin(xx / 23), 127 + 120 * np.cos(yy / 17), 127 + 120 * np.sin((xx + yy) / 31)], -1)
    frames = img[None].astype(np.uint8)
    ours = unnormalize(data.apply_plan(frames, data.eval_plan(320, 240, 224, 1)))
    full = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    full = torch.nn.functional.interpolate(full, size=(256, 341), mode="bilinear", antialias=True)
    ref = full[:, :, 16:240, 58:282] / 255
    assert (ours - ref).abs().mean() < 0.01


def test_augmentation_geometry_is_clip_consistent():
    frame = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 6, 0)  # six identical frames
    for seed in range(30):
        plan = data.train_plan(80, 60, 56, torch.Generator().manual_seed(seed), frames=6)
        out = data.apply_plan(clip, dict(plan, jitter=None))
        assert out.shape == (6, 3, 56, 56)
        assert (out == out[:1]).all(), plan  # the same crop, flip, grayscale for every frame


def test_color_jitter():
    x = torch.rand(3, 3, 8, 8)
    same = lambda order, b, c, s, h: [(order, b, c, s, h)] * 3  # noqa: E731
    torch.testing.assert_close(data.color_jitter(x, same([0, 1, 2, 3], 1.0, 1.0, 1.0, 0.0)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(data.color_jitter(x, same([0], 0.5, 1, 1, 0)), x * 0.5)
    g = data.color_jitter(x, same([2], 1, 1, 0.0, 0))  # saturation 0: gray
    assert torch.allclose(g[:, 0], g[:, 1], atol=1e-5) and torch.allclose(g[:, 1], g[:, 2], atol=1e-5)
    gray_in = x[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(data.color_jitter(gray_in, same([3], 1, 1, 1, 0.1)), gray_in, atol=1e-5, rtol=0)
    hue = data.color_jitter(x, same([3], 1, 1, 1, 0.1))
    assert not torch.allclose(hue, x) and hue.min() >= 0 and hue.max() <= 1


# ----------------------------------------------------------------------------------------------------------
# dataset

def make_dataset(videos, names, **kw):
    root = os.path.dirname(videos["mp4"])
    samples = [(os.path.basename(videos[n]), i % 3) for i, n in enumerate(names)]
    kw.setdefault("input_size", 32)
    return data.VideoDataset(root, samples, ["a", "b", "c"], num_frames=8, **kw)


def test_dataset_eval_frames_and_views(videos):
    ds = make_dataset(videos, ["gray"], num_clips=2)
    clip, label, index, ok = ds[0]
    assert clip.shape == (16, 3, 32, 32) and label == 0 and index == 0 and ok is True
    brightness = unnormalize(clip).mean(dim=(1, 2, 3)) * 255
    frames = ((brightness - 10) / 6).round().long().tolist()
    assert frames == data.sample_indices(N, 8, "eval", num_clips=2)
    assert torch.equal(ds[0][0], clip)  # the same views every time


def test_dataset_three_crops(videos):
    ds = make_dataset(videos, ["wide"], num_crops=3, num_clips=1)
    clip = ds[0][0].view(3, 8, 3, 32, 32)
    left, centre, right = (unnormalize(v).mean() for v in clip)
    assert left < centre < right  # crops along the long side of a left-to-right ramp


def test_dataset_train_determinism(videos):
    ds = make_dataset(videos, ["mp4", "gray"], train=True, seed=3)
    a = ds[1][0]
    assert a.shape == (8, 3, 32, 32)
    assert torch.equal(ds[1][0], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], a)
    other = make_dataset(videos, ["mp4", "gray"], train=True, seed=4)
    assert not torch.equal(other[1][0], a)


def test_dataset_normalisation_option(videos):
    a = make_dataset(videos, ["gray"])[0][0]
    b = make_dataset(videos, ["gray"], norm="imagenet")[0][0]
    torch.testing.assert_close(unnormalize(a), unnormalize(b, "imagenet"), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        make_dataset(videos, ["gray"], norm="bgr")


def test_dataset_label_checks(videos, tmp_path):
    with pytest.raises(data.DatasetError, match="outside the 3 classes"):
        data.VideoDataset("/", [("a.mp4", 3)], ["a", "b", "c"])
    lst = write_text(tmp_path / "l.txt", "a.mp4 0\nb.mp4 5\n")
    csv_path = write_text(tmp_path / "l.csv", "id,name\n0,a\n1,b\n")
    with pytest.raises(data.DatasetError, match=":2: label 5 outside the 2 classes"):
        data.VideoDataset("/", lst, csv_path)


def test_training_replaces_bad_videos_and_counts(videos, caplog):
    ds = make_dataset(videos, ["mp4", "missing", "empty", "corrupt", "gray"], train=True)
    with caplog.at_level(logging.WARNING, logger="data"):
        clip, label, index, ok = ds[1]
        assert index == 4 and label == 4 % 3 and clip.shape == (8, 3, 32, 32)  # the next readable one
        assert ok is False  # flags the bad video; the stand-in is trained on
        assert int(ds._failed.sum()) == 3
        ds[1], ds[2]  # known bad: not decoded or logged again
    assert int(ds._failed.sum()) == 3  # distinct videos, however often they were met
    failed = sorted(ds.samples[i][0] for i in ds._failed.nonzero().flatten().tolist())  # the shared failure table
    assert failed == ["corrupt.mp4", "empty.mp4", "missing.mp4"]
    assert not torch.equal(clip, ds[4][0])  # the stand-in is not a copy of sample 4's own clip
    assert len([r for r in caplog.records if "unreadable video" in r.getMessage()]) == 3
    all_bad = make_dataset(videos, ["missing", "empty"], train=True, max_retries=3)
    with pytest.raises(RuntimeError, match="unreadable videos in a row"):
        all_bad[0]


def test_evaluation_flags_bad_videos(videos):
    ds = make_dataset(videos, ["mp4", "missing", "trunc_head", "corrupt"], num_clips=2)
    results = [ds[i] for i in range(len(ds))]
    assert [r[3] for r in results] == [True, False, False, False]
    assert [r[1] for r in results] == [0, 1, 2, 0] and [r[2] for r in results] == [0, 1, 2, 3]
    assert all(r[0].shape == (16, 3, 32, 32) for r in results) and not results[1][0].any()
    clips, labels, index, ok = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))  # default collate
    assert ok.dtype == torch.bool and ok.tolist() == [True, False, False, False] and len(labels) == 4
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.collate)))
    assert batch["ok"].tolist() == [True, False, False, False] and batch["label"].tolist() == [0, 1, 2, 0]
    assert batch["clips"].shape == (4, 16, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]
    # the evaluator's arithmetic: failures are wrong answers, in the denominator
    pred = batch["label"].clone()  # even a perfect model
    assert ((pred == batch["label"]) & batch["ok"]).sum() / len(batch["ok"]) == 0.25


def test_failure_count_and_epoch_cross_worker_processes(videos):
    """global_batches.loader's workers: started clean, kept across epochs, sharing the failure table and the epoch.
    This process decodes and resizes first, as a notebook that shows a frame does: workers forked from it hang in their
    first resize with PyAV 19 (the timeout turns a hang into a failure)."""
    video_decoder.decode_frames(videos["mp4"], [0, 10], size=(64, 64))
    ds = make_dataset(videos, ["mp4", "missing", "gray", "empty"], train=True)
    loader = global_batches.loader(ds, batch_size=2, workers=2, timeout=120)
    seen = {}
    for epoch in range(2):
        ds.set_epoch(epoch)
        bad = 0
        for batch in loader:
            assert batch["clips"].shape == (2, 8, 3, 32, 32) and batch["ok"].dtype == torch.bool
            bad += int((~batch["ok"]).sum())
            for c, i, ok in zip(batch["clips"], batch["index"].tolist(), batch["ok"].tolist()):
                if ok:
                    seen[(epoch, i)] = c
        assert bad == 2 and int(ds._failed.sum()) == 2  # found inside the worker processes, counted once
    ds.set_epoch(1)  # the workers used the epoch set in the main process
    assert torch.equal(seen[(1, 2)], ds[2][0]) and not torch.equal(seen[(0, 2)], seen[(1, 2)])


def test_check_videos_and_command_line(videos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path / "cache"))  # missing.mp4 is looked up in the index of root
    root = os.path.dirname(videos["mp4"])
    samples = [(os.path.basename(videos[k]), 0) for k in ("mp4", "missing", "avi", "empty", "corrupt", "trunc_head")]
    bad = check_dataset.check_videos(root, samples)
    assert [p for p, _ in bad] == ["missing.mp4", "empty.mp4", "corrupt.mp4", "trunc_head.mp4"]
    lst = tmp_path / "l.txt"
    data.write_list(lst, samples)
    data.write_labels(tmp_path / "l.csv", ["a"])
    assert check_dataset.main([root, str(lst), str(tmp_path / "l.csv")]) == 1
    out, err = capsys.readouterr()
    assert "missing.mp4\t" in out and "4 of 6 videos unreadable" in err
    data.write_list(lst, samples[:1])
    assert check_dataset.main([root, str(lst), str(tmp_path / "l.csv")]) == 0


@pytest.mark.parametrize("list_text, labels_text, message", [
    ("a.mp4\n", "id,name\n0,a\n", "l.txt:1: expected 'relative/path label'"),  # no label
    ("a.mp4 0\nb.mp4 1\n", "id,name\n0,a\n", "l.txt:2: label 1 outside the 1 classes"),
    ("a.mp4 0\nb.mp4 one\n", "id,name\n0,a\n", "l.txt:2: label 'one' is not an integer"),
    ("a.mp4 0\n", "id,name\n0,a\n1,b\n0,c\n", "l.csv:4: duplicate class id 0 (first at line 2)"),
    (None, "id,name\n0,a\n", "l.txt: No such file or directory"),
    ("a.mp4 0\n", None, "l.csv: No such file or directory"),
    (b"a\xff.mp4 0\n", "id,name\n0,a\n", "l.txt: not UTF-8 text"),
])
def test_check_command_refuses_bad_list_files_in_one_line(tmp_path, capsys, list_text, labels_text, message):
    """Exit status 2 and one line on stderr naming the file (and the line), no traceback."""
    for name, text in (("l.txt", list_text), ("l.csv", labels_text)):
        if text is not None:
            (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert check_dataset.main([str(tmp_path), str(tmp_path / "l.txt"), str(tmp_path / "l.csv")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"{tmp_path / message}" in err


def test_check_command_exit_status_from_the_shell(tmp_path):
    """The documented exit statuses, as a shell sees them (0 and 1: test_check_videos_and_command_line)."""
    script = [sys.executable, "-m", "tools.check_dataset"]  # from the repository root, as the README says
    run = subprocess.run([*script, str(tmp_path), str(tmp_path / "no.txt"), str(tmp_path / "no.csv")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no.csv" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    help_text = subprocess.run([*script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert all(f"{code} " in help_text.stdout.split("exit status")[1] for code in (0, 1, 2))
    (tmp_path / "l.txt").write_text("a.mp4 0\n")
    (tmp_path / "l.csv").write_text("id,name\n0,a\n")
    assert check_dataset.main([str(tmp_path / "no_such_root"), str(tmp_path / "l.txt"),
                      str(tmp_path / "l.csv")]) == 2  # a ROOT that is not a folder is a bad argument


# ----------------------------------------------------------------------------------------------------------
# mixup / cutmix

def test_mixup_cutmix():
    clips = torch.rand(4, 1, 3, 16, 16).repeat(1, 3, 1, 1, 1)  # 3 identical frames a clip
    labels = torch.tensor([0, 1, 2, 3])
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        mixed, target = data.mixup_cutmix(clips, labels, 5, generator=g)
        assert mixed.shape == clips.shape and target.shape == (4, 5)
        torch.testing.assert_close(target.sum(1), torch.ones(4))
        assert (target[:, 4] - 0.02).abs().max() < 1e-6  # class 4 is in no clip: smoothing only
        assert (mixed == mixed[:, :1]).all()  # every frame of a clip is mixed the same way
    mixed, target = data.mixup_cutmix(clips, labels, 5, mixup_alpha=0, cutmix_alpha=0, smoothing=0)
    assert torch.equal(mixed, clips) and torch.equal(target, torch.eye(5)[:4])
    g = torch.Generator().manual_seed(0)
    a = data.mixup_cutmix(clips, labels, 5, generator=g)
    g = torch.Generator().manual_seed(0)
    b = data.mixup_cutmix(clips, labels, 5, generator=g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the target's weight matches the share of the clip that stayed (cutmix only)
    g = torch.Generator().manual_seed(1)
    m, t = data.mixup_cutmix(clips, labels, 5, mixup_alpha=0, smoothing=0, generator=g)
    kept = (m[0] == clips[0]).float().mean()
    assert abs(t[0, 0] - kept) < 1e-6
