"""prepare_videos.py: a dataset re-encoded once to a short side of 256 with close keyframes.

Test videos carry their frame index as 8 black/white stripes across the width (bit b in stripe b), which survive
resizing and lossy codecs, so a test can read back which source frame a prepared frame is.
"""
import glob
import os
from fractions import Fraction

import av
import numpy as np
import pytest

import data
from plumbing import video_decoder
from tools import prepare_videos


def stripes(i, w, h):
    img = np.zeros((h, w, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            img[:, b * w // 8:(b + 1) * w // 8] = 255
    return img


def read_index(frame):  # [H, W, 3] -> the index its stripes encode (read at the centre of each stripe)
    w = frame.shape[1]
    return sum(1 << b for b in range(8) if frame[:, (2 * b + 1) * w // 16].mean() > 128)


def write_video(path, codec="libx264", n=40, size=(160, 96), pts_ms=None, rate=25):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, **({"time_base": Fraction(1, 1000)} if pts_ms else {}))
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(stripes(i, *size), format="rgb24")
            if pts_ms:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def indices_of(path):
    with video_decoder.VideoReader(path) as r:
        return r.num_frames, [read_index(f) for f in r.get(list(range(r.num_frames)))]


def tmp_files(root):
    return glob.glob(os.path.join(root, "**", ".*.tmp-*"), recursive=True)


@pytest.mark.parametrize("ext, codec", [(".mp4", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9"),
                                        (".mkv", "libx264")])
def test_short_side_frames_and_duration_are_kept(tmp_path, ext, codec):
    src = write_video(tmp_path / f"src{ext}", codec, n=40, size=(160, 96))
    dst = str(tmp_path / "out" / f"v{ext}")
    assert prepare_videos.transcode(src, dst, short_side=64) == 40
    with av.open(dst) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (106, 64)  # aspect kept, even sides
        duration = float(c.duration / av.time_base)
    with av.open(src) as c:
        assert duration == pytest.approx(c.duration / av.time_base, abs=1 / 25 + 1e-6)
    assert indices_of(dst) == indices_of(src) == (40, list(range(40)))  # data.sample_indices keep their meaning
    assert tmp_files(tmp_path) == []


def test_variable_frame_rate_keeps_its_timestamps(tmp_path):
    pts = [0] + np.cumsum([10, 70] * 15)[:29].tolist()  # bursts: 10 ms then 70 ms apart
    src = write_video(tmp_path / "vfr.mkv", n=30, size=(64, 48), pts_ms=pts)
    dst = str(tmp_path / "out" / "vfr.mkv")
    prepare_videos.transcode(src, dst)

    def times(path):
        with av.open(path) as c:
            s = c.streams.video[0]
            return [round(float(f.pts * s.time_base), 3) for f in c.decode(s)]
    assert times(dst) == times(src) == [p / 1000 for p in pts]
    assert indices_of(dst) == indices_of(src)


def test_frames_are_never_enlarged(tmp_path):
    src = write_video(tmp_path / "small.mp4", size=(64, 48))
    dst = str(tmp_path / "out.mp4")
    prepare_videos.transcode(src, dst, short_side=256)
    with av.open(dst) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (64, 48)
    assert prepare_videos.output_size(1920, 1080, 256) == (456, 256)
    assert prepare_videos.output_size(720, 1280, 320) == (320, 568)  # portrait
    assert prepare_videos.output_size(342, 256, 256) == (342, 256)


def test_keyframes_at_most_gop_frames_apart(tmp_path):
    src = write_video(tmp_path / "long.mp4", n=100, size=(64, 48))
    dst = str(tmp_path / "out.mp4")
    prepare_videos.transcode(src, dst, gop=16)
    with av.open(dst) as c:
        keys = [i for i, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]
    assert keys[0] == 0 and max(np.diff(keys + [100])) <= 16


def test_the_reader_seeks_over_two_keyframe_intervals_of_a_prepared_video(tmp_path):
    src = write_video(tmp_path / "long.mp4", n=200, size=(64, 48))  # libx264's default: a keyframe every 250
    dst = str(tmp_path / "out.mp4")
    prepare_videos.transcode(src, dst, gop=16)
    idx = [3, 40, 41, 120, 199, 60]  # 37, 79 and 79 frames apart: more than 2 x 16, a seek each
    for path, expected_seeks in ((src, 0), (dst, 3)):
        with video_decoder.VideoReader(path) as r:
            assert [read_index(f) for f in r.get(idx)] == idx
            assert r.seeks == expected_seeks, path


def make_dataset(root):
    """A list of three good videos (two folders, two containers), a corrupt one and a missing one."""
    write_video(os.path.join(root, "a", "one.mp4"))
    write_video(os.path.join(root, "a", "two words.avi"), "mpeg4")
    write_video(os.path.join(root, "b", "three.mkv"))
    with open(os.path.join(root, "b", "corrupt.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    samples = [("a/one.mp4", 0), ("a/two words.avi", 1), ("b/corrupt.mp4", 0), ("b/three.mkv", 1),
               ("b/missing.mp4", 1)]
    data.write_list(os.path.join(root, "list.txt"), samples)
    return samples


def test_command_reports_unreadable_sources_does_the_rest_and_resumes(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    samples = make_dataset(src)
    assert prepare_videos.main([src, os.path.join(src, "list.txt"), dst, "--workers", "2"]) == 1
    out = capsys.readouterr()
    failed = dict(line.split("\t") for line in out.out.splitlines())
    assert sorted(failed) == ["b/corrupt.mp4", "b/missing.mp4"] and "FileNotFoundError" in failed["b/missing.mp4"]
    assert "3 prepared, 0 already there, 2 unreadable, of 5 videos" in out.err
    good = [p for p, _ in samples if p not in failed]
    assert all(os.path.isfile(os.path.join(dst, p)) for p in good)
    assert not os.path.exists(os.path.join(dst, "b", "corrupt.mp4")) and tmp_files(dst) == []
    # the same list works on the prepared root (minus the videos that were unreadable anyway)
    dataset = data.VideoDataset(dst, [s for s in samples if s[0] in good], num_frames=8, input_size=32)
    assert all(dataset[i][3] for i in range(len(dataset)))

    # a second run skips what is done: nothing is rewritten
    stamps = {p: os.stat(os.path.join(dst, p)).st_mtime_ns for p in good}
    assert prepare_videos.main([src, os.path.join(src, "list.txt"), dst, "--workers", "0"]) == 1
    assert "0 prepared, 3 already there, 2 unreadable" in capsys.readouterr().err
    assert stamps == {p: os.stat(os.path.join(dst, p)).st_mtime_ns for p in good}
    data.write_list(os.path.join(src, "good.txt"), [s for s in samples if s[0] in good])
    assert prepare_videos.main([src, os.path.join(src, "good.txt"), dst, "--workers", "0"]) == 0


def test_a_killed_run_leaves_no_half_file_and_its_leftovers_are_cleared(tmp_path):
    src = write_video(tmp_path / "v.mp4")
    dst = str(tmp_path / "out" / "v.mp4")
    os.makedirs(os.path.dirname(dst))
    stale = os.path.join(os.path.dirname(dst), ".v.tmp-12345.mp4")  # what a killed run leaves
    with open(stale, "wb") as f:
        f.write(b"half a video")
    prepare_videos.transcode(src, dst)
    assert os.listdir(os.path.dirname(dst)) == ["v.mp4"]
    # a source that ends halfway through: refused as data.py refuses it, nothing written
    half = str(tmp_path / "half.mp4")
    with open(src, "rb") as f, open(half, "wb") as g:
        g.write(f.read()[: os.path.getsize(src) // 3])
    with pytest.raises((video_decoder.DecodeError, av.error.FFmpegError)):
        prepare_videos.transcode(half, str(tmp_path / "out" / "half.mp4"))
    assert os.listdir(os.path.dirname(dst)) == ["v.mp4"]


def test_bad_arguments_exit_with_status_2(tmp_path, capsys):
    src = tmp_path / "src"
    make_dataset(str(src))
    for argv in ([str(tmp_path / "nowhere"), str(src / "list.txt"), str(tmp_path / "dst")],
                 [str(src), str(src / "nolist.txt"), str(tmp_path / "dst")],
                 [str(src), str(src / "list.txt"), str(src)],
                 [str(src), str(src / "list.txt"), str(tmp_path / "dst"), "--short-side", "100"]):
        with pytest.raises(SystemExit) as e:
            prepare_videos.main(argv)
        assert e.value.code == 2
    assert not os.path.exists(tmp_path / "dst")


def test_a_download_in_class_folders_is_prepared_at_the_listed_paths(tmp_path, monkeypatch):
    """HMDB-51 as extracted (one folder per class) with the authors' flat list: each source is found by its name
    (video_index) and its prepared copy written at the listed path, so the list reads DST_ROOT as it is."""
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path / "cache"))
    src, dst = tmp_path / "hmdb", tmp_path / "prepared"
    write_video(str(src / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"), "mpeg4")
    write_video(str(src / "cartwheel" / "Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi"), "mpeg4")
    samples = [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0), ("Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi", 1)]
    data.write_list(str(tmp_path / "list.txt"), samples)
    assert prepare_videos.main([str(src), str(tmp_path / "list.txt"), str(dst), "--workers", "0"]) == 0
    for rel, _ in samples:
        assert indices_of(str(dst / rel))[0] == 40
