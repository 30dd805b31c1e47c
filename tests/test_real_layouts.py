"""The datasets as their users download them: HMDB-51 in class folders, UCF-101 as UCF-101/<Class>/v_*.avi, Kinetics
as train|val/<class>/<youtube_id>_<start>_<end>.mp4. Every listed video is found (video_index.resolve, through the cached
index), decodes, and trains; an empty or wrong root stops at once with one line, before any weights are fetched.

Videos are tiny (32x32, 4 frames) and named after the shipped lists; where only finding matters, empty files stand in.
"""
import os
import re
import time

import av
import numpy as np
import pytest

import data
import train
from plumbing import clip_weights, video_index
from tools import check_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = os.path.join(ROOT, "splits", "datasets_splits")
LABELS = os.path.join(ROOT, "splits", "labels")
HMDB_VAL1 = os.path.join(SPLITS, "hmdb_splits", "val1.txt")
HMDB_LABELS = os.path.join(LABELS, "hmdb_51_labels.csv")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The index cache of these tests, away from the user's."""
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_video(path, frames=4):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    codec = {".avi": "mpeg4", ".mp4": "libx264", ".webm": "libvpx"}[os.path.splitext(path)[1]]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            img = np.full((32, 32, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def placeholder(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def first_of_classes(samples, classes, per_class):
    out = []
    for c in classes:
        out += [s for s in samples if s[1] == c][:per_class]
    return out


def hmdb_folder(name):  # HMDB-51's class archives extract to folders named like brush_hair
    return name.replace(" ", "_")


def ucf_class(file_name):  # v_ApplyEyeMakeup_g01_c01.avi -> ApplyEyeMakeup
    return file_name.split("_")[1]


# ---------------------------------------------------------------------------------------------------------------------
# Each official layout: every listed video found and decodable


def test_hmdb_class_folders_as_extracted(tmp_path):
    names = data.read_labels(HMDB_LABELS)
    samples = first_of_classes(data.read_list(HMDB_VAL1, len(names)), [0, 1, 2], 2)
    root = tmp_path / "hmdb51"
    for p, y in samples:
        tiny_video(root / hmdb_folder(names[y]) / p)
    resolved, missing = video_index.resolve(str(root), samples)
    assert missing == [] and resolved == [(f"{hmdb_folder(names[y])}/{p}", y) for p, y in samples]
    assert check_dataset.check_videos(str(root), samples) == []  # 0 unreadable: found through the index, decoded
    clip = data.VideoDataset(str(root), resolved, num_frames=2, input_size=32).load(0)
    assert clip.shape == (2, 3, 32, 32)


def test_shipped_hmdb_val1_resolves_in_class_folders(tmp_path):
    """All 1,530 names of the shipped split 1 list, one folder per class: found by a directory lookup, no decode."""
    names = data.read_labels(HMDB_LABELS)
    samples = data.read_list(HMDB_VAL1, len(names))
    root = tmp_path / "hmdb51"
    for p, y in samples:
        placeholder(root / hmdb_folder(names[y]) / p)
    resolved, missing = video_index.preflight(str(root), samples, HMDB_VAL1)
    assert missing == [] and len(resolved) == 1530
    assert all(r == (f"{hmdb_folder(names[y])}/{p}", y) for r, (p, y) in zip(resolved, samples))


def test_ucf101_as_extracted(tmp_path):
    """UCF101.rar extracts to UCF-101/<Class>/v_<Class>_gNN_cNN.avi; the root is the folder that holds UCF-101."""
    list_path = os.path.join(SPLITS, "ucf_splits", "val1.txt")
    samples = first_of_classes(data.read_list(list_path), [0, 1, 50], 2)
    root = tmp_path / "ucf"
    for p, _ in samples:
        tiny_video(root / "UCF-101" / ucf_class(p) / p)
    resolved, missing = video_index.preflight(str(root), samples, list_path)
    assert missing == [] and resolved == [(f"UCF-101/{ucf_class(p)}/{p}", y) for p, y in samples]
    assert check_dataset.check_videos(str(root), samples) == []


def test_kinetics_class_folders_as_downloaded(tmp_path):
    """The Kinetics downloaders write <split>/<class>/<youtube_id>_<start:06d>_<end:06d>.mp4; the lists name
    <split>/<file>."""
    names = data.read_labels(os.path.join(LABELS, "kinetics_400_labels.csv"))
    list_path = os.path.join(SPLITS, "k400_splits", "val.txt")
    samples = first_of_classes(data.read_list(list_path, len(names)), [0, 1, 208], 2)
    root = tmp_path / "k400"
    for p, y in samples:
        split, file_name = p.split("/")
        tiny_video(root / split / names[y] / file_name)
    resolved, missing = video_index.preflight(str(root), samples, list_path)
    assert missing == []
    assert resolved == [(f"val/{names[y]}/{p.split('/')[1]}", y) for p, y in samples]
    assert check_dataset.check_videos(str(root), samples) == []


def test_listed_folder_picks_between_two_files_of_one_name(tmp_path):
    placeholder(tmp_path / "train" / "a" / "x.mp4")
    placeholder(tmp_path / "val" / "a" / "x.mp4")
    resolved, missing = video_index.resolve(str(tmp_path), [("val/x.mp4", 0), ("train/x.mp4", 1)])
    assert resolved == [("val/a/x.mp4", 0), ("train/a/x.mp4", 1)] and missing == []


def test_a_name_found_twice_is_an_error_naming_both(tmp_path):
    placeholder(tmp_path / "run" / "clip_1.avi")
    placeholder(tmp_path / "walk" / "clip_1.avi")
    with pytest.raises(data.DatasetError, match=r"clip_1\.avi is found twice, as (run|walk)/clip_1\.avi and "
                                                r"(walk|run)/clip_1\.avi"):
        video_index.resolve(str(tmp_path), [("clip_1.avi", 0)])


# ---------------------------------------------------------------------------------------------------------------------
# The index: built once, cached outside the root, rebuilt when a folder changes


def test_index_is_cached_outside_the_root_and_not_walked_again(tmp_path, cache, monkeypatch):
    root = tmp_path / "videos"
    for c in ("a", "b"):
        placeholder(root / c / f"{c}.avi")
    samples = [("a.avi", 0), ("b.avi", 1), ("gone.avi", 1)]
    assert video_index.resolve(str(root), samples)[1] == ["gone.avi"]
    assert os.path.isfile(video_index.index_path(str(root))) and str(cache) in video_index.index_path(str(root))
    assert sorted(os.listdir(root)) == ["a", "b"]  # nothing written into the dataset

    def no_walk(root):
        raise AssertionError("walked again")

    monkeypatch.setattr(video_index, "_walk", no_walk)
    resolved, missing = video_index.resolve(str(root), samples)  # a missing name alone does not rebuild a valid index
    assert resolved[:2] == [("a/a.avi", 0), ("b/b.avi", 1)] and missing == ["gone.avi"]


def test_index_is_rebuilt_when_a_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "videos"
    placeholder(root / "a" / "a.avi")
    video_index.resolve(str(root), [("a.avi", 0)])
    walks = []
    walk = video_index._walk
    monkeypatch.setattr(video_index, "_walk", lambda r: walks.append(r) or walk(r))
    placeholder(root / "a" / "late.avi")
    os.utime(root / "a", ns=(1, 1))  # the folder's time changed (explicitly: coarse clocks could hide it)
    assert video_index.resolve(str(root), [("late.avi", 0)]) == ([("a/late.avi", 0)], [])
    assert len(walks) == 1
    video_index.resolve(str(root), [("late.avi", 0)])
    assert len(walks) == 1  # valid again


def test_index_works_when_the_cache_cannot_be_written(tmp_path, monkeypatch, caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path / "not-a-folder"))
    placeholder(tmp_path / "videos" / "a" / "a.avi")
    assert video_index.resolve(str(tmp_path / "videos"), [("a.avi", 0)]) == ([("a/a.avi", 0)], [])
    assert "cannot cache the index" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Pre-flight: one line, before anything heavy


def test_preflight_on_an_empty_root_says_what_is_missing_in_one_line(tmp_path):
    samples = data.read_list(HMDB_VAL1)
    with pytest.raises(data.DatasetError) as failure:
        video_index.preflight(str(tmp_path), samples, HMDB_VAL1)
    message = str(failure.value)
    assert "\n" not in message
    assert message == (f"HMDB: 1530 of 1530 videos in val1.txt not found under {tmp_path}: e.g. "
                       f"{samples[0][0]}, {samples[1][0]}, {samples[2][0]}; expected ROOT/<file> or "
                       "ROOT/<any folder>/<file> (HMDB-51 class folders as extracted: ROOT/<class>/<file>.avi)")


def test_preflight_names_the_kinetics_layout(tmp_path):
    list_path = os.path.join(SPLITS, "base2novel_splits", "k400_splits", "base_val.txt")
    with pytest.raises(data.DatasetError, match=r"^Kinetics-400: 9944 of 9944 videos in base_val\.txt not found "
                                                r".*; expected ROOT/val/<file> or ROOT/<any folder>/<file> "
                                                r"\(Kinetics as downloaded: .*<youtube_id>_<start>_<end>\.mp4\)$"):
        video_index.preflight(str(tmp_path), data.read_list(list_path), list_path)


def test_preflight_allows_one_percent_missing_and_reports_them(tmp_path, caplog):
    samples = [(f"c{i % 4}/v{i}.avi", i % 4) for i in range(300)]
    for p, _ in samples[3:]:
        placeholder(tmp_path / "videos" / p)
    resolved, missing = video_index.preflight(str(tmp_path / "videos"), samples, "my_list.txt")  # 3 of 300: 1%
    assert missing == ["c0/v0.avi", "c1/v1.avi", "c2/v2.avi"] and resolved == samples
    assert "3 of 300 videos in my_list.txt not found" in caplog.text and "count as unreadable" in caplog.text
    os.remove(tmp_path / "videos" / samples[3][0])
    with pytest.raises(data.DatasetError, match=r"^4 of 300 videos in my_list\.txt not found under .*: e\.g\. "
                                                r"c0/v0\.avi, c1/v1\.avi, c2/v2\.avi; expected ROOT/c0/<file> or "
                                                r"ROOT/<any folder>/<file>$"):
        video_index.preflight(str(tmp_path / "videos"), samples, "my_list.txt")


def test_check_command_finds_videos_by_name(tmp_path, capsys):
    names = data.read_labels(HMDB_LABELS)
    samples = first_of_classes(data.read_list(HMDB_VAL1, len(names)), [0, 1], 2)
    for p, y in samples:
        tiny_video(tmp_path / "hmdb51" / hmdb_folder(names[y]) / p)
    data.write_list(tmp_path / "val.txt", samples + [("absent.avi", 0)])
    assert check_dataset.main([str(tmp_path / "hmdb51"), str(tmp_path / "val.txt"), HMDB_LABELS]) == 1
    out, err = capsys.readouterr()
    assert out == f"absent.avi\tnot found under {tmp_path / 'hmdb51'}\n" and "1 of 5 videos unreadable" in err


# ---------------------------------------------------------------------------------------------------------------------
# train.py on a layout as downloaded


def test_training_on_hmdb_class_folders(tmp_path, random_tiny_clip, one_thread):
    """Three HMDB-51 classes in class folders, lists in the authors' format with the shipped names."""
    names = data.read_labels(HMDB_LABELS)
    classes = [0, 1, 2]
    relabel = lambda samples: [(p, classes.index(y)) for p, y in samples]
    train_samples = first_of_classes(
        data.read_list(os.path.join(SPLITS, "hmdb_splits", "train1_few_shot_2.txt"), len(names)), classes, 2)
    val_samples = first_of_classes(data.read_list(HMDB_VAL1, len(names)), classes, 2)
    root = tmp_path / "hmdb51"
    for p, y in train_samples + val_samples:
        tiny_video(root / hmdb_folder(names[y]) / p)
    data.write_list(tmp_path / "train.txt", relabel(train_samples))
    data.write_list(tmp_path / "val.txt", relabel(val_samples))
    data.write_labels(tmp_path / "labels.csv", [names[c] for c in classes])
    metrics = train.main(["--setting", "fewshot", "--k", "2", "--dataset", "custom", "--data-root", str(root),
                          "--train-list", str(tmp_path / "train.txt"), "--val-list", str(tmp_path / "val.txt"),
                          "--labels", str(tmp_path / "labels.csv"), "--clip", random_tiny_clip, "--epochs", "1",
                          "--max-steps", "1", "--frames", "2", "--workers", "0", "--out", str(tmp_path / "out")])
    assert metrics["reports"]["val"]["videos"] == 6 and metrics["reports"]["val"]["unreadable"] == 0
    assert metrics["history"][0]["unreadable_videos"] == 0


@pytest.mark.parametrize("args, first_line", [
    (["--dataset", "hmdb51"], r"HMDB: 1530 of 1530 videos in val1\.txt not found under "),
    (["--setting", "fully", "--dataset", "k400"], r"Kinetics-400: 19877 of 19877 videos in val\.txt not found under "),
    (["--setting", "base2novel", "--dataset", "ucf101"], r"UCF: \d+ of \d+ videos in fs_base_s1_train\.txt not found"),
])
def test_an_empty_or_wrong_root_stops_before_any_download(tmp_path, monkeypatch, capsys, args, first_line):
    def no_download(*args, **kwargs):
        pytest.fail("the weights were fetched before the data was checked")

    monkeypatch.setattr(clip_weights, "download", no_download)
    monkeypatch.setitem(clip_weights._MODELS, "ViT-B/16", "http://127.0.0.1:9/x/ViT-B-16.pt")
    monkeypatch.setenv("CLIP_CACHE", str(tmp_path / "clip-cache"))
    wrong = tmp_path / "wrong"
    placeholder(wrong / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")  # UCF-101 is not HMDB-51
    for root in (tmp_path / "empty", wrong):
        root.mkdir(exist_ok=True)
        start = time.monotonic()
        code = train.cli([*args, "--data-root", str(root), "--clip", "ViT-B/16", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert re.match("train.py: error: " + first_line, err) and time.monotonic() - start < 30
    assert not os.path.exists(tmp_path / "out")
