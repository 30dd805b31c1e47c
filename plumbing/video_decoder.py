"""The fast seeking video decoder behind data.VideoDataset: the frames a clip needs, not the whole video.

Sparse sampling (TSN) keeps T frames of a video that has hundreds. Decoding everything to RGB and indexing is the
plain way; VideoReader.get decodes only up to the last wanted frame, seeks when the next wanted frame is far ahead
(SEEK_GAP), converts to RGB only the frames kept, and resizes during conversion. Measured against that plain way on
H.264 clips shaped like UCF-101 and Kinetics: 2.2-2.9x the clips per second (benchmarks/bench_data.py), with exactly
the same frames (tests/test_data.py). None of this is the paper's method; data.py holds the sampling and the clips.
"""
import os
import re

import av
import numpy as np

MIN_COVERAGE = 0.5  # a video whose decodable frames stop before this fraction of its length is "truncated"
SEEK_GAP = 250      # seek instead of decoding forward when the next wanted frame is this many frames ahead, or
                    # two keyframe intervals if the video says it has shorter ones (prepare_videos.py: gop=16)
MAX_PACKET_ERRORS = 10


class DecodeError(RuntimeError):
    """A video cannot be decoded (no video stream, no frames, truncated, corrupt)."""


DECODE_ERRORS = (DecodeError, OSError, av.error.FFmpegError, EOFError)  # what an unreadable video raises


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
        self.seeks = 0  # seeks made by get() so far (what the tests check: PyAV's own types cannot be patched)
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
            comment = " ".join(v for k, v in self.container.metadata.items() if k.lower() == "comment")
            gop = re.search(r"\bgop=(\d+)", comment)  # written by prepare_videos.py
            self.seek_gap = min(SEEK_GAP, 2 * int(gop.group(1))) if gop else SEEK_GAP  # a keyframe is in between
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
                if want[j] - position > self.seek_gap and want[j] != seek_target:  # jump ahead, not decode
                    seek_target = want[j]
                    ts = int(start + (want[j] - 0.5) / (self.fps * self.time_base))
                    self.container.seek(ts, stream=s, backward=True)
                    self.seeks += 1
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
