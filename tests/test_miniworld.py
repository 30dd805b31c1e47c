"""The embedded world (miniworld.py): the reduced world is generated in seconds, decodes through data.py with the right
labels, is deterministic and safe to generate from two processes at once. Its tiny CLIP: tests/test_tiny_clip.py."""
import ast
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from plumbing import video_decoder
from world import miniworld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def file_hashes(folder):
    """{relative path: sha256} of every file under folder."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reduced_world(tmp_path_factory):
    return miniworld.ensure_world(str(tmp_path_factory.mktemp("world")), seed=0, reduced=True)


def object_mask(frames):
    """Pixels far from each frame's median colour (the background): [T, H, W] bool."""
    frames = frames.astype(np.float32)
    background = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    return np.abs(frames - background).sum(-1) > 120


def test_the_world_imports_no_model():
    """miniworld.py is the world alone (numpy, av): the tiny CLIP's module imports it, never the other way round (no
    import circle), and its imports are all at the top of the file."""
    tree = ast.parse(open(os.path.join(ROOT, "world", "miniworld.py")).read())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(node in tree.body for node in imports)
    names = {alias.name for node in imports if isinstance(node, ast.Import) for alias in node.names}
    names |= {f"{node.module}.{alias.name}" for node in imports if isinstance(node, ast.ImportFrom)
              for alias in node.names}  # from plumbing import x: plumbing.x
    model = ("torch", "clip_model", "plumbing.clip_weights", "world.tiny_clip")
    assert not [name for name in names for m in model if name == m or name.startswith(m + ".")]


@pytest.mark.parametrize("name", list(miniworld.DATASETS))
def test_every_class_has_its_own_name_and_files(reduced_world, name):
    """Two classes with one name would be one prompt for two labels, and one folder for both classes' videos (world
    v2's toy-k400 had "star spinning" twice: the later class's files overwrote the earlier one's)."""
    names = [spec["name"] for spec in miniworld.DATASETS[name][0]]
    assert len(set(names)) == len(names) and len({miniworld.slug(n) for n in names}) == len(names)
    paths = miniworld.dataset_paths(name, root=os.path.dirname(reduced_world), reduced=True)
    rels = [rel for split in miniworld.SPLITS for rel, _ in data.read_list(paths[split], len(names))]
    assert len(set(rels)) == len(rels)


@pytest.mark.parametrize("name", list(miniworld.DATASETS))
def test_reduced_world_decodes_through_data_py_with_the_right_labels(reduced_world, name):
    paths = miniworld.dataset_paths(name, root=os.path.dirname(reduced_world), reduced=True)
    classes = miniworld.DATASETS[name][0]
    names = data.read_labels(paths["labels"])
    assert names == [spec["name"] for spec in classes]
    for split, per_class in ((s, miniworld.REDUCED[s]) for s in miniworld.SPLITS):
        samples = data.read_list(paths[split], len(names))
        assert len(samples) == per_class * len(names)
        for rel, label in samples:  # the label is the class whose folder holds the file
            assert rel.split("/")[0] == miniworld.slug(names[label])
        ds = data.VideoDataset(paths["root"], paths[split], paths["labels"], num_frames=8, train=False, input_size=48)
        for i in range(0, len(ds), max(1, len(ds) // 6)):
            clip, label, index, ok = ds[i]
            assert ok and index == i and label == samples[i][1]
            assert clip.shape == (8, 3, 48, 48) and torch.isfinite(clip).all()


def test_the_pixels_show_the_label(reduced_world):
    """Decoded through data.py, 'moving to the left edge' moves left until the edge cuts it, 'growing until huge'
    grows, 'blinking' vanishes and comes back."""
    paths = miniworld.dataset_paths("toy-hmdb", root=os.path.dirname(reduced_world), reduced=True)
    names = data.read_labels(paths["labels"])
    by_name = {names[label]: rel for rel, label in data.read_list(paths["val"], len(names))}
    T = miniworld.REDUCED["frames"]
    decode = lambda name: video_decoder.decode_frames(os.path.join(paths["root"], by_name[name]), list(range(T)))  # noqa: E731
    mask = object_mask(decode("moving to the left edge"))
    xs = [np.nonzero(m)[1].mean() for m in mask]
    assert xs[-1] < xs[0] - 10  # pixels of a 64-pixel frame
    assert mask[-1][:, 0].any() and not mask[0][:, 0].any()  # it ends cut off by the left edge
    area = object_mask(decode("growing until huge")).sum(axis=(1, 2))
    assert area[-1] > 4 * area[0]
    area = object_mask(decode("blinking")).sum(axis=(1, 2))
    assert area.min() == 0 and area.max() > 20


def test_same_seed_same_files_whatever_the_workers(tmp_path, reduced_world):
    one = miniworld.ensure_world(str(tmp_path / "a"), seed=0, reduced=True, workers=1)
    reference = file_hashes(reduced_world)  # made with the default number of workers
    assert file_hashes(one) == reference
    other = file_hashes(miniworld.ensure_world(str(tmp_path / "b"), seed=1, reduced=True))
    videos = [k for k in reference if k.endswith(".mp4")]
    assert len(videos) > 100 and all(other[k] != reference[k] for k in videos)


def test_two_processes_at_once_make_one_world(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from world import miniworld; "
            "print(miniworld.ensure_world(sys.argv[2], seed=3, reduced=True, workers=1))")
    procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    folders = {out.strip() for out, _ in outs}
    assert folders == {miniworld.world_dir(str(tmp_path), seed=3, reduced=True)}
    # each dataset was generated once: the second process waited on the lock and found them done
    assert sum(err.count("generating") for _, err in outs) == len(miniworld.DATASETS)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(f) for f in folders] +
                                                  [os.path.basename(f) + ".lock" for f in folders])
    folder = folders.pop()
    assert sorted(os.listdir(folder)) == sorted(miniworld.DATASETS)
    for name in miniworld.DATASETS:
        paths = miniworld.dataset_paths(name, root=str(tmp_path), seed=3, reduced=True)
        for split in miniworld.SPLITS:
            for rel, _ in data.read_list(paths[split]):
                assert os.path.getsize(os.path.join(paths["root"], rel)) > 0
        assert open(os.path.join(folder, name, "DATASET.txt")).read() == miniworld._stamp(name, 3, True)


def test_a_dataset_is_generated_on_first_use_only(tmp_path):
    paths = miniworld.dataset_paths("toy-hmdb", root=str(tmp_path), reduced=True)
    folder = miniworld.world_dir(str(tmp_path), reduced=True)
    assert os.listdir(folder) == ["toy-hmdb"] and paths["root"].startswith(os.path.join(folder, "toy-hmdb"))


def test_evaluation_is_on_test_unless_the_variable_says_val(tmp_path, monkeypatch):
    """train.py evaluates on paths["eval"]: the test split by default, val for choosing settings."""
    monkeypatch.delenv("MINIWORLD_EVAL", raising=False)
    paths = miniworld.dataset_paths("toy-hmdb", root=str(tmp_path), reduced=True)
    assert paths["eval"] == paths["test"] != paths["val"]
    monkeypatch.setenv("MINIWORLD_EVAL", "val")
    assert miniworld.dataset_paths("toy-hmdb", root=str(tmp_path), reduced=True)["eval"] == paths["val"]
    monkeypatch.setenv("MINIWORLD_EVAL", "train")
    with pytest.raises(ValueError, match="MINIWORLD_EVAL"):
        miniworld.dataset_paths("toy-hmdb", root=str(tmp_path), reduced=True)
    # the splits hold different videos
    names = {s: {rel for rel, _ in data.read_list(paths[s])} for s in miniworld.SPLITS}
    assert not (names["val"] & names["test"]) and not (names["train"] & names["test"])


def test_a_dataset_of_another_version_is_regenerated(tmp_path):
    folder = miniworld.ensure_world(str(tmp_path), reduced=True, datasets="toy-ucf")
    stamp = os.path.join(folder, "toy-ucf", "DATASET.txt")
    with open(stamp, "w") as f:
        f.write("miniworld version 0\n")  # as if an older miniworld.py had written it
    assert miniworld.ensure_world(str(tmp_path), reduced=True, datasets="toy-ucf") == folder
    assert open(stamp).read() == miniworld._stamp("toy-ucf", 0, True)


def test_the_caption_corpus_is_deterministic_and_names_what_it_shows():
    a_images, a_captions = miniworld.caption_batch(16, seed=0, start=100)
    b_images, b_captions = miniworld.caption_batch(4, seed=0, start=104)
    assert np.array_equal(a_images[4:8], b_images) and a_captions[4:8] == b_captions
    words = miniworld.caption_words()
    for vocabulary in (miniworld.COLOURS, miniworld.SHAPES):
        assert set(vocabulary) <= words
    for phrases in (miniworld.EDGE_PHRASES, miniworld.STATE_WORDS, miniworld.DISTANCE_PHRASES):
        for phrase in (p for group in phrases.values() for p in group):
            assert set(re.findall(r"[a-z]+", phrase)) <= words, phrase
    # Class names that a still can describe use caption words only (apart from "moving"); motion words are unseen.
    assert miniworld.unseen_words("red circle moving to the left edge") == ["moving"]
    assert miniworld.unseen_words("fading until faint") == ["fading", "until"]
    assert miniworld.unseen_words("spinning") == ["spinning"]


def test_stills_show_their_states():
    """A faint object is drawn faintly, a blurry one smeared (more pixels partly covered), an edge object cut off."""
    rng = np.random.default_rng(0)
    bg = {**miniworld.random_background(rng), "kind": "plain", "base": [0, 0, 0]}
    obj = dict(miniworld.random_object(rng, "white", "square", "big"), x=0.5, y=0.5, angle=0.0)
    sharp = miniworld.render({"background": bg, "objects": [obj]}).astype(float)
    faint = miniworld.render({"background": bg, "objects": [dict(obj, alpha=0.3)]}).astype(float)
    blurry = miniworld.render({"background": bg, "objects": [dict(obj, blur=[0.15, 0.0])]}).astype(float)
    assert 0.2 < faint.max() / sharp.max() < 0.45
    partly = lambda img: ((img.mean(-1) > 40) & (img.mean(-1) < 200)).sum()  # noqa: E731
    assert partly(blurry) > 3 * partly(sharp)
    edge = dict(obj)
    miniworld.place_on_edge(edge, "left", rng)
    assert edge["x"] < edge["r"]
