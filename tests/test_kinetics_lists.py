"""kinetics_lists.py: the Kinetics-400 training lists from the official annotations, for the videos on disk."""
import csv
import os
import re

import pytest

import data
from plumbing import protocols, video_index
from tools import kinetics_lists

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = os.path.join(ROOT, "splits", "datasets_splits")
LABELS = os.path.join(ROOT, "splits", "labels")
NAMES = data.read_labels(os.path.join(LABELS, "kinetics_400_labels.csv"))
BASE = data.read_labels(os.path.join(LABELS, "kinetics_400_base_labels.csv"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path / "cache"))


def write_annotations(path, rows, split=True):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end"] + (["split", "is_cc"] if split else []))
        w.writerows([r + (["train", "0"] if split else []) for r in rows])


def placeholder(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_lists_for_the_videos_on_disk(tmp_path, capsys):
    rows = [  # (label as the annotations write it, youtube id, start, end); the official file is sorted by label
        ["answering questions", "-ans_0", "5", "15"],      # novel class 2
        ["abseiling", "ab-1", "0", "10"],                  # class 0, base 169
        ["air drumming", "ai_1", "117", "127"],            # class 1, base 174
        ["abseiling", "ab-2", "1024", "1034"],
        ["passing American football (in game)", "pa1", "3", "13"],  # class 208, base 57
        ["abseiling", "ab-gone", "7", "17"],               # not downloaded
        ["air drumming", "ai_1", "117", "127"],            # listed twice in the annotations: once in the lists
    ]
    write_annotations(tmp_path / "train.csv", rows)
    root = tmp_path / "k400"
    for label, yid, s, e in rows:  # the crawler's layout: train/<class>/<id>_<start>_<end>.mp4
        if yid != "ab-gone":
            placeholder(root / "train" / label / f"{yid}_{int(s):06d}_{int(e):06d}.mp4")
    code = kinetics_lists.main([str(tmp_path / "train.csv"), str(root), str(tmp_path / "out"),
                                "--absent", str(tmp_path / "absent.txt")])
    assert code == 0
    assert open(tmp_path / "out" / "train.txt").read() == (
        "train/ab-1_000000_000010.mp4 0\n"
        "train/ab-2_001024_001034.mp4 0\n"
        "train/ai_1_000117_000127.mp4 1\n"
        "train/-ans_0_000005_000015.mp4 2\n"
        "train/pa1_000003_000013.mp4 208\n")
    assert open(tmp_path / "out" / "base_train.txt").read() == (
        "train/ab-1_000000_000010.mp4 169\n"
        "train/ab-2_001024_001034.mp4 169\n"
        "train/ai_1_000117_000127.mp4 174\n"
        "train/pa1_000003_000013.mp4 57\n")
    out, err = capsys.readouterr()
    assert "5 of 6 annotated videos found" in out
    assert "1 of 6 annotated videos not found, left out: e.g. train/ab-gone_000007_000017.mp4" in err
    assert open(tmp_path / "absent.txt").read() == "train/ab-gone_000007_000017.mp4\n"
    # The lists read back against the labels files and resolve in the class-folder layout, none missing.
    train_list = data.read_list(tmp_path / "out" / "train.txt", len(NAMES))
    data.read_list(tmp_path / "out" / "base_train.txt", len(BASE))
    assert video_index.preflight(str(root), train_list, str(tmp_path / "out" / "train.txt"))[1] == []


def test_base_list_is_derived_as_the_authors_derived_theirs(tmp_path):
    """Annotations made from the shipped val.txt (20 classes, base and novel, in the annotations' order: by label name,
    not class id): the lists written are the matching lines of the shipped val.txt and base_val.txt, in their order and
    numbering."""
    val = data.read_list(os.path.join(SPLITS, "k400_splits", "val.txt"), len(NAMES))
    classes = list(range(0, 400, 20))
    chosen = [s for c in classes for s in [s for s in val if s[1] == c][:3]]
    rows = []
    for path, y in chosen:
        stem = os.path.splitext(os.path.basename(path))[0]
        yid, start, end = stem.rsplit("_", 2)  # youtube ids may hold '_' themselves
        rows.append([NAMES[y], yid, str(int(start)), str(int(end)), "val"])
    rows.sort(key=lambda r: r[0])  # annotation files are sorted by label name, not by class id (stable within one)
    with open(tmp_path / "val.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"]] + rows)
    root = tmp_path / "k400"
    for path, y in chosen:
        placeholder(root / "val" / NAMES[y].replace(" ", "_") / os.path.basename(path))
    assert kinetics_lists.main([str(tmp_path / "val.csv"), str(root), str(tmp_path / "out")]) == 0
    ours = data.read_list(tmp_path / "out" / "train.txt")
    assert sorted(ours, key=lambda s: s[1]) == ours and set(ours) == set(chosen)
    assert ours == [s for s in val if s in set(chosen)]
    kept = {p for p, _ in chosen}
    shipped_base = [s for s in data.read_list(os.path.join(SPLITS, "base2novel_splits", "k400_splits",
                                                           "base_val.txt")) if s[0] in kept]
    assert data.read_list(tmp_path / "out" / "base_train.txt") == shipped_base and shipped_base


def test_default_output_is_where_train_py_reads(tmp_path, monkeypatch):
    d = protocols.PAPER_DATASETS["k400"]
    assert kinetics_lists.TRAIN_LIST == os.path.join(protocols.SPLITS, "datasets_splits", d.folder, d.train)
    assert kinetics_lists.BASE_TRAIN_LIST == os.path.join(protocols.SPLITS, "datasets_splits", "base2novel_splits",
                                                          d.folder, "base_train.txt")
    monkeypatch.setattr(kinetics_lists, "TRAIN_LIST", str(tmp_path / "a" / "train.txt"))
    monkeypatch.setattr(kinetics_lists, "BASE_TRAIN_LIST", str(tmp_path / "b" / "base_train.txt"))
    write_annotations(tmp_path / "train.csv", [["abseiling", "x", "0", "10"]], split=False)
    placeholder(tmp_path / "k400" / "train" / "x_000000_000010.mp4")  # the flat mirror layout
    assert kinetics_lists.main([str(tmp_path / "train.csv"), str(tmp_path / "k400")]) == 0
    assert open(tmp_path / "a" / "train.txt").read() == "train/x_000000_000010.mp4 0\n"
    assert open(tmp_path / "b" / "base_train.txt").read() == "train/x_000000_000010.mp4 169\n"


@pytest.mark.parametrize("rows, message", [
    ([["abseiling", "x", "0", "10"]], r"none of the 1 videos of train\.csv found under .*: e\.g\. "
                                      r"train/x_000000_000010\.mp4; expected ROOT/<split>/<file>"),
    ([["abseilling", "x", "0", "10"], ["jumping jacks", "y", "0", "10"]],
     r"train\.csv: 2 labels are not classes of .*kinetics_400_labels\.csv: e\.g\. abseilling, jumping jacks"),
    ([["abseiling", "x", "zero", "10"]], r"train\.csv:2: time_start/time_end are not numbers"),
])
def test_errors_are_one_line(tmp_path, capsys, rows, message):
    write_annotations(tmp_path / "train.csv", rows)
    (tmp_path / "k400").mkdir()
    assert kinetics_lists.main([str(tmp_path / "train.csv"), str(tmp_path / "k400"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err)
    assert not os.path.exists(tmp_path / "out")


def test_subset_classes():
    samples = [("a", 0), ("b", 1), ("c", 2), ("d", 1)]
    assert kinetics_lists.subset_classes(samples, ["x", "y", "z"], ["z", "y"]) == [("b", 1), ("c", 0), ("d", 1)]
    with pytest.raises(ValueError, match="not in the full label list"):
        kinetics_lists.subset_classes(samples, ["x", "y", "z"], ["w"])
