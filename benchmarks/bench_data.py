"""Decode + sample + transform speed of data.py against the naive way and against decord, and of a dataset prepared
by prepare_videos.py against the original videos, on generated clips.

    python benchmarks/bench_data.py [--rounds 7] [--quick]

H.264 clips are written with PyAV into a temporary folder, shaped like UCF-101 (320x240, 25 fps, 7 s), Kinetics
(340x256, 30 fps, 10 s) and Kinetics' many HD originals (1280x720 and 1920x1080, 30 fps, 10 s): a panning textured
background, moving blocks and sensor noise, encoded by libx264 (B-frames, one keyframe per 250 frames) at its default
quality for the small clips (0.55-0.65 Mbit/s) and at 2.5 and 4.5 Mbit/s for the HD ones. The HD clips
are also prepared once (prepare_videos.transcode: short side 256, a keyframe every 16 frames).

Each method loads a 32-frame clip:
    naive             decode every frame to RGB, then index the 32 sampled frames (no transform; small clips only:
                      a 1080p clip would hold 1.9 GB of RGB)
    naive+transform   the same, then torchvision: short side to 256, centre crop 224, normalise
    ours eval         data.VideoDataset(train=False): decode (frames nobody needs skipped), convert only the
                      kept frames, cut the centre crop, resize it to 224, normalise
    ours train        data.VideoDataset(train=True): random segment positions, multi-scale crop, flip,
                      colour jitter, grayscale, normalise
    decord eval/train decord.VideoReader(num_threads=1).get_batch on the same indices, then the same transform as
                      ours (data.apply_plan); before timing, its frames are asserted identical to ours for the
                      evaluation indices and for a training draw. decord is a benchmark-only dependency
                      (pip install decord): without it the rows are skipped with a note.
    prepared          ours eval/train on the prepared copy of an HD clip
ours with 1 FFmpeg decoding thread (as in a DataLoader worker) and with FFmpeg's default (one per core).
Methods run interleaved, round after round, and each reports its best round and the median (clips/s by the wall
clock), so that load from other processes hurts all methods alike, and its CPU time per clip (best round), which
is what sets how many DataLoader workers a GPU needs. Torch uses one thread, like a DataLoader worker.
--quick: 1-second Kinetics-like and 720p clips only, one round, no FFmpeg-threads rows (a smoke run, under 30 s).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import torch
import torchvision.transforms.functional as TF

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from plumbing import video_decoder  # noqa: E402
from tools import prepare_videos  # noqa: E402

try:
    import decord
except ImportError:  # benchmark-only: not in requirements.txt
    decord = None

T = 32


def write_clip(path, width, height, fps, seconds, seed=0, bit_rate=None, preset=None):
    """The pattern is computed once on a canvas 64 pixels larger than the frame and panned over; the noise comes
    from a pool of 4 frames at random offsets (1080p frames render in milliseconds)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height + 64, 0:width + 64].astype(np.float32)
    canvas = np.stack([120 + 60 * np.sin(xx / 37), 120 + 60 * np.sin(yy / 23), 120 + 60 * np.sin((xx + yy) / 51)], -1)
    canvas = np.clip(canvas + rng.normal(0, 30, size=canvas.shape), 0, 255).astype(np.int16)  # + texture
    noise = rng.normal(0, 6, size=(4, height + 8, width + 8, 3)).round().astype(np.int16)
    block = 50 * max(1, height // 256)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": preset} if preset else {})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if bit_rate:
            s.bit_rate = bit_rate
        for i in range(int(fps * seconds)):
            t = i / fps
            ox, oy = int(16 + 15 * np.sin(t * 0.7)), int(16 + 10 * np.cos(t * 0.5))  # camera pan
            img = canvas[oy:oy + height, ox:ox + width].copy()
            for j in range(3):  # moving objects
                cx = int((width - block) * (0.5 + 0.5 * np.sin(t * (1.1 + 0.4 * j) + j)))
                cy = int((height - block) * (0.5 + 0.5 * np.cos(t * (0.8 + 0.3 * j) + j)))
                img[cy:cy + block, cx:cx + block] = (80 * j, 255 - 60 * j, 120)
            dy, dx = rng.integers(8, size=2)
            img += noise[i % 4, dy:dy + height, dx:dx + width]  # sensor noise
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")))
        c.mux(s.encode())


def naive(path):
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = data.sample_indices(len(frames), T, "eval")
    return np.stack([frames[i] for i in idx])


MEAN, STD = (torch.tensor(v).view(1, 3, 1, 1) for v in data.NORMS["clip"])


def naive_transform(path):
    x = torch.from_numpy(naive(path)).permute(0, 3, 1, 2)
    x = TF.center_crop(TF.resize(x, 256, antialias=True), [224, 224])
    return (x.float() / 255 - MEAN) / STD


def decord_load(path, train, generator=None):
    """decord's clip: the same indices and the same transform as data.VideoDataset.load."""
    vr = decord.VideoReader(path, num_threads=1)
    with video_decoder.VideoReader(path) as r:  # our frame count, so that both take the same indices
        n = r.num_frames
    frames = vr.get_batch(data.sample_indices(n, T, "train" if train else "eval", generator=generator)).asnumpy()
    h, w = frames.shape[1:3]
    plan = data.train_plan(w, h, 224, generator=generator, frames=T) if train else data.eval_plan(w, h, 224)
    return data.apply_plan(frames, plan)


def assert_decord_frames_identical(path):
    vr = decord.VideoReader(path, num_threads=1)
    with video_decoder.VideoReader(path, threads=1) as r:
        for mode in ("eval", "train"):
            idx = data.sample_indices(r.num_frames, T, mode, generator=torch.Generator().manual_seed(0))
            ours, theirs = r.get(idx), vr.get_batch(idx).asnumpy()
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs), \
                f"decord's {mode} frames differ from ours: max |difference| {np.abs(ours.astype(int) - theirs).max()}"
    return len(idx)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1-second clips, one round (a smoke run)")
    args = ap.parse_args()
    seconds = (lambda s: 1) if args.quick else (lambda s: s)
    rounds = 1 if args.quick else args.rounds
    torch.set_num_threads(1)
    if decord is None:
        print("note: decord is not importable (pip install decord): its rows are skipped")
    with tempfile.TemporaryDirectory() as tmp:
        clips = {  # name: (file, width, height, fps, seconds, bit rate, prepared copy)
            "UCF-101-like 320x240 25fps": ("ucf.mp4", 320, 240, 25, seconds(7), None, False),
            "Kinetics-like 340x256 30fps": ("k400.mp4", 340, 256, 30, seconds(10), None, False),
            "Kinetics HD 1280x720 30fps 2.5 Mbit/s": ("hd720.mp4", 1280, 720, 30, seconds(10), 2_500_000, True),
            "Kinetics HD 1920x1080 30fps 4.5 Mbit/s": ("hd1080.mp4", 1920, 1080, 30, seconds(10), 4_500_000, True),
        }
        if args.quick:
            clips = {k: v for k, v in clips.items() if k.startswith(("Kinetics-like", "Kinetics HD 1280"))}
        for name, (f, w, h, fps, sec, rate, prepare) in clips.items():
            start = time.perf_counter()
            write_clip(os.path.join(tmp, f), w, h, fps, sec, bit_rate=rate, preset="veryfast" if rate else None)
            line = f"{name}: {sec} s written in {time.perf_counter() - start:.1f} s"
            if prepare:
                start = time.perf_counter()
                prepare_videos.transcode(os.path.join(tmp, f), os.path.join(tmp, "prepared", f))
                line += f", prepared in {time.perf_counter() - start:.1f} s"
            print(line, flush=True)
        for name, (f, w, h, fps, sec, rate, prepare) in clips.items():
            path = os.path.join(tmp, f)
            make = lambda root, train, threads: data.VideoDataset(root, [(f, 0)], ["x"], num_frames=T, train=train,
                                                                  decode_threads=threads)
            ev1, ev0, tr1, tr0 = make(tmp, False, 1), make(tmp, False, 0), make(tmp, True, 1), make(tmp, True, 0)
            epoch = iter(range(10**9))

            def train(ds):
                ds.set_epoch(next(epoch))  # a new random clip every time
                return ds.load(0)

            methods = {}
            if not prepare:
                methods["naive: decode all to RGB, index"] = lambda: naive(path)
                methods["naive + torchvision eval transform"] = lambda: naive_transform(path)
            methods["ours eval, 1 decode thread"] = lambda: ev1.load(0)
            methods["ours train, 1 decode thread"] = lambda: train(tr1)
            if not args.quick:
                methods["ours eval, FFmpeg threads (2)"] = lambda: ev0.load(0)
                methods["ours train, FFmpeg threads (2)"] = lambda: train(tr0)
            if decord is not None:
                assert_decord_frames_identical(path)
                methods["decord eval, 1 thread"] = lambda: decord_load(path, False)
                methods["decord train, 1 thread"] = lambda: decord_load(path, True, tr1.generator(next(epoch)))
            if prepare:
                pe1, pt1 = make(os.path.join(tmp, "prepared"), False, 1), make(os.path.join(tmp, "prepared"), True, 1)
                methods["prepared: ours eval, 1 decode thread"] = lambda: pe1.load(0)
                methods["prepared: ours train, 1 decode thread"] = lambda: train(pt1)
                if decord is not None:
                    assert_decord_frames_identical(os.path.join(tmp, "prepared", f))
            wall = {k: [] for k in methods}
            cpu = {k: [] for k in methods}
            for fn in methods.values():
                fn()  # warm-up
            for _ in range(rounds):
                for k, fn in methods.items():
                    t, c = time.perf_counter(), time.process_time()
                    fn()
                    wall[k].append(time.perf_counter() - t)
                    cpu[k].append(time.process_time() - c)
            reference = next(k for k in methods if k.startswith("naive")) if not prepare else None
            print(f"{name}, {sec} s, {T} frames, {rounds} rounds; clips/s by wall clock (best, median), "
                  f"CPU ms per clip (best)" + ("; decord's frames identical to ours" if decord else ""))
            for k in methods:
                best, med = 1 / min(wall[k]), 1 / statistics.median(wall[k])
                if k.startswith(("prepared", "decord")):  # against ours on the same (original) clip, same mode
                    base = "ours " + ("train" if "train" in k else "eval") + ", 1 decode thread"
                    versus = f"{min(wall[base]) / min(wall[k]):5.2f}x ours"
                elif reference:
                    versus = f"{min(wall[reference]) / min(wall[k]):5.2f}x naive"
                else:
                    versus = ""
                print(f"  {k:38s} {best:6.1f} {med:6.1f} clips/s  {versus:12s}  CPU {1000 * min(cpu[k]):6.1f} ms",
                      flush=True)


if __name__ == "__main__":
    main()
