"""Prepare a video dataset once, so that every epoch reads it fast: re-encode every video of a list to a short side of
256 pixels (or 320) with a keyframe every 16 frames, in parallel worker processes.

    python -m tools.prepare_videos SRC_ROOT LIST DST_ROOT [--short-side 256] [--gop 16] [--workers N]

then train with the same list and --data-root DST_ROOT. Kinetics comes at its original resolution (many 720p and 1080p
clips) and a training clip needs every reference frame up to its last sampled one decoded, so decoding full-size
frames is most of the data loader's work every epoch, for frames that the transforms bring to a short side of 256
anyway (data.train_plan, eval_plan). Measured on 10-second clips (README, Benchmarks): a 32-frame training clip loads
10x faster from a prepared 1080p video, 5x from a 720p one.

What is written
    DST_ROOT/<relative path>, the same relative path and file extension as in the list, so the list stays valid.
    The container stays what the extension says; the codec is one it holds: H.264 (libx264, CRF 23, tuned for fast
    decoding: 1.2-1.8x faster to read than without, 8-13% larger) in .mp4, .m4v, .mov and .mkv, VP9 (libvpx-vp9,
    realtime speed) in .webm, MPEG-4 Part 2 (q 4) in .avi, the container's default codec for any other extension.
    Frames keep their timestamps (in .avi, which has none, their order at the source's frame rate), so a video keeps
    its number of frames and its duration and data.sample_indices picks the same frames. Audio is dropped (data.py
    reads video only). Frames are never enlarged: a video whose short side is already at most --short-side keeps its
    size (and is still re-encoded, for the keyframes). The file's comment says "gop=16": video_decoder reads it.
    A keyframe every --gop frames (default 16), where libx264's default is 250: to reach a frame more than two GOPs
    ahead, video_decoder.VideoReader (and decord) seek to the keyframe before it instead of decoding all in between.
    Measured on prepared 10-second clips: 8 sparse frames load 1.3-1.8x faster than at GOP 250 (decord: 1.4-1.9x);
    32 frames, 9 apart, about as fast (0.9-1.2x: every GOP holds a sampled frame, so every GOP is decoded anyway).
    The files are about twice the size they would be at GOP 250, still 3-8x smaller than the sources.

Safe to stop and run again
    A video whose destination exists is skipped, so a second run continues where a killed one stopped. Each video is
    written to a hidden temporary file in its destination folder (".<name>.tmp-<pid><ext>") and renamed over the
    destination only when complete (os.replace: atomic), so a destination file is never half written; temporary
    files of a killed run are removed by the next one.
    A source that cannot be read (missing, empty, no video stream, undecodable, or truncated: fewer than half of its
    announced frames decodable, video_decoder's rule) is reported, nothing is written for it, and the others are done;
    the report lists each as "relative/path<TAB>reason". Exit status: 0 when every video is done, 1 when some could
    not be prepared, 2 for bad arguments.
"""
import argparse
import glob
import multiprocessing
import os
import sys
from fractions import Fraction

import av

import data
from plumbing import video_decoder, video_index

SHORT_SIDE = 256
GOP = 16
# extension -> (codec, its options); other extensions get their container's default codec
CODECS = {
    ".mp4": ("libx264", {"crf": "23", "preset": "fast", "tune": "fastdecode"}),
    ".m4v": ("libx264", {"crf": "23", "preset": "fast", "tune": "fastdecode"}),
    ".mov": ("libx264", {"crf": "23", "preset": "fast", "tune": "fastdecode"}),
    ".mkv": ("libx264", {"crf": "23", "preset": "fast", "tune": "fastdecode"}),
    ".webm": ("libvpx-vp9", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    ".avi": ("mpeg4", {}),
}
KEEPS_TIMESTAMPS = ("libx264", "libvpx-vp9", "libvpx")  # codecs given the source's time base; others are renumbered
MPEG4_Q = 4  # fixed quantiser for MPEG-4 Part 2 (ffmpeg -q:v 4): 2 is near lossless, 31 worst


def output_size(width, height, short_side):
    """(width, height) with the short side at most short_side (never enlarged), aspect kept, both even."""
    scale = min(1.0, short_side / min(width, height))
    even = lambda v: max(2, 2 * round(v * scale / 2))  # yuv420p needs even sides
    return even(width), even(height)


def _tmp_name(dst):
    folder, name = os.path.split(dst)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")  # the extension tells FFmpeg the container


def _remove_stale_tmp(dst):
    folder, name = os.path.split(dst)
    stem, ext = os.path.splitext(name)
    for path in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(stem)}.tmp-*{glob.escape(ext)}")):
        os.remove(path)


def _frames(container, stream):
    """Decoded frames of `stream`, tolerating a few corrupt packets and a truncated end as video_decoder does."""
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.EOFError, av.error.InvalidDataError):
            return  # truncated container: its end
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            errors += 1
            if errors > video_decoder.MAX_PACKET_ERRORS:
                raise video_decoder.DecodeError("too many corrupt packets") from None


def _expected_frames(container, stream, rate):
    """The number of frames the container announces (as video_decoder estimates it), 0 if it says nothing."""
    if stream.frames:
        return stream.frames
    if stream.duration and stream.time_base:
        return round(stream.duration * stream.time_base * rate)
    return round(container.duration / av.time_base * rate) if container.duration else 0


def transcode(src, dst, short_side=SHORT_SIDE, gop=GOP):
    """Write the video at src to dst (a complete file or nothing): short side at most short_side, a keyframe every
    gop frames, same frames and timestamps, codec chosen by dst's extension (module docstring). Returns the number of
    frames written; raises video_decoder.DecodeError, OSError or av.FFmpegError when the source cannot be read."""
    if os.path.isfile(src) and os.path.getsize(src) == 0:
        raise video_decoder.DecodeError("empty file")
    ext = os.path.splitext(dst)[1].lower()
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    _remove_stale_tmp(dst)
    tmp = _tmp_name(dst)
    frames_written = 0
    try:
        with av.open(src) as source:
            if not source.streams.video:
                raise video_decoder.DecodeError("no video stream")
            stream = source.streams.video[0]
            stream.codec_context.thread_count = 1  # parallel by processes instead
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate or 25
            with av.open(tmp, "w") as out:
                out.metadata["comment"] = f"prepare_videos.py: short side {short_side}, gop={gop}"  # video_decoder
                codec, options = CODECS.get(ext, (out.default_video_codec, {}))
                keep_time = codec in KEEPS_TIMESTAMPS and stream.time_base is not None
                time_base = stream.time_base if keep_time else 1 / Fraction(rate)
                video = out.add_stream(codec, rate=rate, time_base=time_base, options=dict(options, g=str(gop)))
                video.codec_context.thread_count = 1
                if codec == "mpeg4":
                    video.codec_context.qscale = True
                    video.codec_context.global_quality = MPEG4_Q
                pts = None
                for frame in _frames(source, stream):
                    if frames_written == 0:
                        video.width, video.height = output_size(frame.width, frame.height, short_side)
                    small = frame.reformat(width=video.width, height=video.height, format="yuv420p",
                                           interpolation="AREA")
                    if not keep_time:
                        pts = frames_written
                    elif frame.pts is not None:  # the source's time, made strictly increasing as muxers require
                        pts = frame.pts if pts is None else max(frame.pts, pts + 1)
                    else:
                        pts = 0 if pts is None else pts + 1
                    small.pts, small.time_base = pts, time_base
                    out.mux(video.encode(small))
                    frames_written += 1
                expected = _expected_frames(source, stream, rate)
                if frames_written == 0 or frames_written < video_decoder.MIN_COVERAGE * expected:
                    raise video_decoder.DecodeError(f"truncated: {frames_written} of {expected} frames decodable")
                out.mux(video.encode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before it takes the final name
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return frames_written


def _prepare_one(job):
    """(relpath, src, dst, short_side, gop) -> (relpath, status, detail); status "done", "skipped" or "failed"."""
    rel, src, dst, short_side, gop = job
    if os.path.exists(dst):
        return rel, "skipped", ""
    try:
        return rel, "done", transcode(src, dst, short_side, gop)
    except (video_decoder.DecodeError, OSError, av.error.FFmpegError, EOFError, ValueError) as e:
        return rel, "failed", f"{type(e).__name__}: {e}"


def prepare(src_root, samples, dst_root, short_side=SHORT_SIDE, gop=GOP, workers=0, progress=True):
    """Prepare every video of samples ([(relpath, label)]) from src_root into dst_root; returns
    {"done": n, "skipped": n, "failed": [(relpath, reason)]}. workers > 0: that many processes."""
    paths = list(dict.fromkeys(rel for rel, _ in samples))  # each video once, in list order
    # The source as downloaded (at its listed path, or by its name in any folder: video_index); the prepared copy at
    # the listed path, so that the list reads it from DST_ROOT whatever the download's layout was.
    found = video_index.locate(src_root, paths)
    jobs = [(rel, os.path.join(src_root, src or rel), os.path.join(dst_root, rel), short_side, gop)
            for rel, src in zip(paths, found)]
    result = {"done": 0, "skipped": 0, "failed": []}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        results = pool.imap_unordered(_prepare_one, jobs) if pool else map(_prepare_one, jobs)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(jobs), unit="video", desc="prepare", dynamic_ncols=True)
        for rel, status, detail in results:
            if status == "failed":
                result["failed"].append((rel, detail))
            else:
                result[status] += 1
    finally:
        if pool:
            pool.terminate()  # every result is in: nothing is cut short
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_videos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src_root", metavar="SRC_ROOT", help="where the list's relative paths are")
    ap.add_argument("list", metavar="LIST", help="list file: 'relative/path label' per line")
    ap.add_argument("dst_root", metavar="DST_ROOT", help="where the prepared videos go (same relative paths)")
    ap.add_argument("--short-side", type=int, default=SHORT_SIDE, choices=[256, 320],
                    help="short side of the prepared frames (320 leaves room for larger crops)")
    ap.add_argument("--gop", type=int, default=GOP, help="frames from one keyframe to the next")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (default: cores)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.src_root):
        ap.error(f"SRC_ROOT {args.src_root}: no such folder")
    if args.gop < 1:
        ap.error("--gop must be at least 1")
    try:
        samples = data.read_list(args.list)
    except (OSError, data.DatasetError) as e:
        ap.error(f"LIST: {e}")
    if os.path.realpath(args.src_root) == os.path.realpath(args.dst_root):
        ap.error("DST_ROOT must differ from SRC_ROOT (the prepared videos keep the same relative paths)")
    result = prepare(args.src_root, samples, args.dst_root, args.short_side, args.gop, args.workers)
    for rel, why in result["failed"]:
        print(f"{rel}\t{why}")
    total = result["done"] + result["skipped"] + len(result["failed"])
    print(f"{result['done']} prepared, {result['skipped']} already there, {len(result['failed'])} unreadable, of "
          f"{total} videos; train with the same list and --data-root {args.dst_root}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
