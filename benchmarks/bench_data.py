"""Decode + sample + transform speed of data.py against the naive way, on generated clips.

    python benchmarks/bench_data.py [--rounds 9]

Two H.264 clips are written with PyAV into a temporary folder, shaped like UCF-101 (320x240, 25 fps, 7 s) and
Kinetics (340x256, 30 fps, 10 s): a panning textured background, moving blocks and sensor noise, encoded by
libx264 with its defaults (B-frames, one keyframe per 250 frames), 0.5-0.65 Mbit/s.

Each method loads a 32-frame clip:
    naive             decode every frame to RGB, then index the 32 sampled frames (no transform)
    naive+transform   the same, then torchvision: short side to 256, centre crop 224, normalise
    ours eval         data.VideoDataset(train=False): decode (frames nobody needs skipped), convert only the
                      kept frames, cut the centre crop, resize it to 224, normalise
    ours train        data.VideoDataset(train=True): random segment positions, multi-scale crop, flip,
                      colour jitter, grayscale, normalise
each with 1 FFmpeg decoding thread (as in a DataLoader worker) and with FFmpeg's default (one per core).
Methods run interleaved, round after round, and each reports its best round and the median (clips/s by the wall
clock), so that load from other processes hurts all methods alike, and its CPU time per clip (best round), which
is what sets how many DataLoader workers a GPU needs. Torch uses one thread, like a DataLoader worker.
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

T = 32


def write_clip(path, width, height, fps, seconds, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.normal(0, 30, size=(height + 64, width + 64, 3)).astype(np.float32)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(int(fps * seconds)):
            t = i / fps
            ox, oy = int(16 + 15 * np.sin(t * 0.7)), int(16 + 10 * np.cos(t * 0.5))  # camera pan
            img = np.empty((height, width, 3), np.float32)
            img[..., 0] = 120 + 60 * np.sin((xx + ox) / 37)
            img[..., 1] = 120 + 60 * np.sin((yy + oy) / 23)
            img[..., 2] = 120 + 60 * np.sin((xx + yy + ox) / 51)
            img += texture[oy:oy + height, ox:ox + width]
            for j in range(3):  # moving objects
                cx = int((width - 50) * (0.5 + 0.5 * np.sin(t * (1.1 + 0.4 * j) + j)))
                cy = int((height - 50) * (0.5 + 0.5 * np.cos(t * (0.8 + 0.3 * j) + j)))
                img[cy:cy + 50, cx:cx + 50] = (80 * j, 255 - 60 * j, 120)
            img += rng.normal(0, 6, size=img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        clips = {"UCF-101-like 320x240 25fps 7s": ("ucf.mp4", 320, 240, 25, 7),
                 "Kinetics-like 340x256 30fps 10s": ("k400.mp4", 340, 256, 30, 10)}
        for name, (f, w, h, fps, sec) in clips.items():
            write_clip(os.path.join(tmp, f), w, h, fps, sec)
        for name, (f, *_) in clips.items():
            path = os.path.join(tmp, f)
            make = lambda train, threads: data.VideoDataset(tmp, [(f, 0)], ["x"], num_frames=T, train=train,
                                                            decode_threads=threads)
            ev1, ev0, tr1, tr0 = make(False, 1), make(False, 0), make(True, 1), make(True, 0)
            epoch = iter(range(10**9))

            def train(ds):
                ds.set_epoch(next(epoch))  # a new random clip every time
                return ds.load(0)

            methods = {
                "naive: decode all to RGB, index": lambda: naive(path),
                "naive + torchvision eval transform": lambda: naive_transform(path),
                "ours eval, 1 decode thread": lambda: ev1.load(0),
                "ours eval, FFmpeg threads (2)": lambda: ev0.load(0),
                "ours train, 1 decode thread": lambda: train(tr1),
                "ours train, FFmpeg threads (2)": lambda: train(tr0),
            }
            wall = {k: [] for k in methods}
            cpu = {k: [] for k in methods}
            for fn in methods.values():
                fn()  # warm-up
            for _ in range(args.rounds):
                for k, fn in methods.items():
                    t, c = time.perf_counter(), time.process_time()
                    fn()
                    wall[k].append(time.perf_counter() - t)
                    cpu[k].append(time.process_time() - c)
            base = 1 / min(wall["naive: decode all to RGB, index"])
            print(f"{name}, {T} frames, {args.rounds} rounds; clips/s by wall clock (best, median), "
                  f"CPU ms per clip (best)")
            for k in methods:
                best, med = 1 / min(wall[k]), 1 / statistics.median(wall[k])
                print(f"  {k:36s} {best:6.1f} {med:6.1f} clips/s  {best / base:5.2f}x naive  "
                      f"CPU {1000 * min(cpu[k]):6.1f} ms")


if __name__ == "__main__":
    main()
