"""classify_video.py: your own video from the command line, on the tiny CLIP. It ranks what vifi.classify ranks (the
README example's code path), for a file or each video of a folder, with weights by name, file or exported folder;
a bad input is one line on stderr and exit status 2.
"""
import json
import os
import re

import pytest
import torch

import data
import vifi
from plumbing import clip_weights, hf_export
from tools import classify_video
from world import miniworld
from test_vifi import fake_yacs, save_authors_checkpoint, write_video  # noqa: F401 (fake_yacs: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["dancing", "swimming", "cooking"]


@pytest.fixture(scope="module")
def tiny():
    return clip_weights.load(miniworld.TINY_CLIP_NAME)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "a.mp4", frames=12)
    write_video(folder / "b video.mp4", frames=20, size=(64, 48))
    (folder / "notes.txt").write_text("not a video, and not taken for one")
    return folder


def run(capsys, *argv):
    code = classify_video.cli([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def printed_ranking(out: str) -> dict:
    """{video: [(name, percent)]} of the command's output."""
    rankings, current = {}, None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = rankings.setdefault(line[:-1], [])
        elif current is not None and re.match(r"^\s+\d+\.\d\d%  ", line):
            percent, name = line.strip().split("%  ", 1)
            current.append((name, float(percent)))
    return rankings


def test_a_video_is_ranked_as_vifi_classify_ranks_it(tiny, videos, tmp_path, capsys):
    video = videos / "a.mp4"
    code, out, err = run(capsys, video, "--weights", miniworld.TINY_CLIP_NAME, "--classes", ",".join(CLASSES),
                         "--precision", "fp32", "--frames", "4", "--top-k", "2", "--json", tmp_path / "r.json")
    assert code == 0, err
    model = vifi.ViFiCLIP(tiny, CLASSES, train_mode="none")
    expected = vifi.classify(model, str(video), CLASSES, num_frames=4, precision="fp32")
    assert printed_ranking(out) == {str(video): [(n, round(100 * p, 2)) for n, p in expected[:2]]}
    saved = json.load(open(tmp_path / "r.json"))
    assert saved["classes"] == CLASSES and saved["templates"] == ["a photo of a {}."] and saved["frames"] == 4
    ranking = saved["videos"][0]["ranking"]  # pytest.approx compares numbers, not (name, probability) pairs
    assert [r["name"] for r in ranking] == [n for n, _ in expected]
    assert [r["probability"] for r in ranking] == pytest.approx([p for _, p in expected])


def test_each_video_of_a_folder_and_the_classes_from_a_labels_file(tiny, videos, tmp_path, capsys):
    data.write_labels(tmp_path / "labels.csv", CLASSES)
    (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
    outputs = []
    for labels in ("labels.csv", "names.txt"):  # a labels CSV, or one name a line
        code, out, err = run(capsys, videos, "--weights", miniworld.TINY_CLIP_NAME, "--labels", tmp_path / labels,
                             "--precision", "fp32", "--frames", "4", "--template", "a video of {}.")
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    ranked = printed_ranking(outputs[0])
    assert list(ranked) == [str(videos / "a.mp4"), str(videos / "b video.mp4")]  # name order; notes.txt left out
    model = vifi.ViFiCLIP(tiny, CLASSES, train_mode="none")
    expected = vifi.classify(model, str(videos / "b video.mp4"), CLASSES, num_frames=4, templates="a video of {}.",
                             precision="fp32")
    assert ranked[str(videos / "b video.mp4")] == [(n, round(100 * p, 2)) for n, p in expected]


def test_weights_by_exported_folder_and_by_the_authors_file(tiny, videos, tmp_path, capsys, fake_yacs):
    """An exported folder brings its classes, template and pixel statistics; the authors' .pth their statistics."""
    trained = vifi.ViFiCLIP(tiny, CLASSES, train_mode="none", templates="a video of a person {}.",
                            normalization="imagenet")
    hf_export.export_hugging_face(trained, str(tmp_path / "exported"))
    code, out, err = run(capsys, videos / "a.mp4", "--weights", tmp_path / "exported", "--precision", "fp32",
                         "--frames", "4")
    assert code == 0, err
    expected = vifi.classify(trained, str(videos / "a.mp4"), CLASSES, num_frames=4, precision="fp32")
    assert printed_ranking(out)[str(videos / "a.mp4")] == [(n, round(100 * p, 2)) for n, p in expected]
    save_authors_checkpoint(tmp_path / "vifi_clip_k400.pth", trained, fake_yacs)
    code, out, err = run(capsys, videos / "a.mp4", "--weights", tmp_path / "vifi_clip_k400.pth", "--base",
                         miniworld.TINY_CLIP_NAME, "--classes", ",".join(CLASSES), "--template",
                         "a video of a person {}.", "--precision", "fp32", "--frames", "4")
    assert code == 0, err
    assert printed_ranking(out)[str(videos / "a.mp4")] == [(n, round(100 * p, 2)) for n, p in expected]


@pytest.mark.parametrize("argv, message", [
    (["absent.mp4", "--classes", "a,b"], r"absent\.mp4: no such file or folder"),
    (["{bad}", "--classes", "a,b"], r".*bad\.mp4: unreadable video \("),
    (["{videos}/a.mp4", "--classes", " , "], r"--classes: no class names"),
    (["{videos}/a.mp4"], r"no classes to rank: give --classes a,b,c or --labels FILE"),
    (["{videos}/a.mp4", "--labels", "absent.csv"], r"--labels absent\.csv: no such file"),
    (["{videos}/a.mp4", "--classes", "a", "--weights", "absent.pt"], r"absent\.pt: no such file, and not a known"),
    (["{videos}/a.mp4", "--classes", "a", "--template", "no placeholder"], r"templates must be one or more strings"),
    (["{videos}/a.mp4", "--classes", "a", "--json", "absent/r.json"], r"--json absent/r\.json: no such folder"),
    (["{empty}", "--classes", "a"], r".*empty: no video files in this folder"),
])
def test_a_bad_input_is_one_line_and_exit_status_2(videos, tmp_path, capsys, argv, message):
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    argv = [a.format(videos=videos, bad=tmp_path / "bad.mp4", empty=tmp_path / "empty") for a in argv]
    if "--weights" not in argv:
        argv += ["--weights", miniworld.TINY_CLIP_NAME]
    code, out, err = run(capsys, *argv, "--frames", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.match("python -m tools.classify_video: error: " + message, err), err


def test_a_folder_with_an_unreadable_video_ranks_the_others_and_exits_2(videos, tmp_path, capsys):
    for name in ("a.mp4", "b video.mp4"):
        os.link(videos / name, tmp_path / name)
    (tmp_path / "c.mp4").write_bytes(b"\x00" * 100)
    code, out, err = run(capsys, tmp_path, "--weights", miniworld.TINY_CLIP_NAME, "--classes", "a,b",
                         "--frames", "2", "--json", tmp_path / "r.json")
    assert code == 2 and list(printed_ranking(out)) == [str(tmp_path / "a.mp4"), str(tmp_path / "b video.mp4")]
    assert len(err.strip().splitlines()) == 1 and "c.mp4: unreadable video" in err
    assert [v["video"] for v in json.load(open(tmp_path / "r.json"))["videos"]] == [str(tmp_path / n) for n in
                                                                                    ("a.mp4", "b video.mp4")]
