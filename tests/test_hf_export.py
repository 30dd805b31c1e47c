"""plumbing/hf_export.py and its command (python -m tools.export_hf) against transformers itself: an exported folder
is read by transformers' CLIPModel, CLIPProcessor and CLIPTokenizer as it is, and the model card's recipe (frames ->
get_image_features -> mean -> cosine with get_text_features x logit_scale.exp()) gives our logits for the same frames;
the folder loads back here to the same logits; prompts, the authors' checkpoints, our runs' checkpoints; no pickle,
one-line errors, nothing half-written.

Random weights are perturbed (no bias or norm at a trivial value); their logit scale is CLIP's initial 1/0.07, at
which the bound is 1e-5. At CLIP's trained 100 the same agreement of the cosines (7e-7) is 7e-5 in logits: there fp32
itself rounds that much (both implementations measured 1-2.4e-5 from transformers run in float64).
"""
import glob
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import clip_model
import data
import train
import vifi
from plumbing import clip_weights, hf_export, run_files, vifi_weights
from tools import export_hf
from world import miniworld
from test_clip_model import VIT_B16
from test_vifi import DEEP, SMALL, authors_state_dict, fake_yacs, randomize_prompts, save_authors_checkpoint, \
    write_video  # noqa: F401 (fake_yacs: a fixture)
from tokenizer import tokenize

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["brush_hair", "cartwheel", "ride bike", "sword exercise", "shoot_bow"]
EXPORTED = {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
            "special_tokens_map.json", "preprocessor_config.json", "README.md", "vifi_clip.json"}


def perturbed_clip(config, seed=0, logit_scale=None) -> clip_model.CLIP:
    torch.manual_seed(seed)
    clip = clip_model.CLIP(**config).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if logit_scale is not None:
            clip.logit_scale.fill_(math.log(logit_scale))
    return clip


def random_frames(T, size, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, size, size, 3), dtype=np.uint8)


def features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def transformers_logits(folder, frames: np.ndarray, class_names, templates):
    """The card's recipe with transformers alone: (logits [C], pixel_values). The processor normalises the frames
    (already at the input size: no resize, no crop), with the statistics the folder says."""
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    pixels = processor(images=list(frames), do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    video = features(model.get_image_features(pixel_values=pixels)).mean(0)
    video = video / video.norm()
    text = 0
    for template in templates:
        tokens = processor(text=[template.format(c.replace("_", " ")) for c in class_names], padding=True,
                           return_tensors="pt")
        t = features(model.get_text_features(**tokens))
        text = text + t / t.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * text @ video, pixels


def our_pixels(frames: np.ndarray, norm: str) -> torch.Tensor:
    """data.py's normalisation of frames already at the input size (eval_plan's crop is the whole frame then)."""
    return data.apply_plan(frames, dict(size=frames.shape[1], crops=[(0, 0, frames.shape[2], frames.shape[1])]), norm)


@torch.no_grad()
def our_logits(model, pixels):
    return model.eval()(pixels[None])[0]


def folder_files(folder):
    return {os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**"), recursive=True)
            if os.path.isfile(p)}


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer files


def test_transformers_tokenizer_from_our_files_gives_our_ids(tmp_path):
    """vocab.json and merges.txt written from CLIP's merges by tokenizer.py: transformers' CLIPTokenizer reads them
    and gives our ids, on every class name of the shipped label files in the fine-tuning prompt and on harder text."""
    for name, text in hf_export.tokenizer_files(77).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    tok = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    names = sorted({n for f in glob.glob(os.path.join(ROOT, "splits", "labels", "*.csv")) for n in data.read_labels(f)})
    texts = [vifi.FINETUNE_TEMPLATE.format(n.replace("_", " ")) for n in names] + [
        "", "Hello, World!! It's 3.14 o'clock", "a  photo\tof   café naïve 😀", "二つの", "x <|endoftext|> y",
        "don't STOP 42nd", "[Something] onto [something]"]  # not HTML entities: transformers does not unescape them
    assert len(texts) > 950  # HMDB-51, UCF-101, Kinetics-400 and -600, SSv2
    ours = tokenize(texts)
    batch = tok(texts, padding=True)
    for i, text in enumerate(texts):
        expected = [t for t in ours[i].tolist() if t]
        assert tok(text)["input_ids"] == expected, text
        assert batch["input_ids"][i][:len(expected)] == expected and sum(batch["attention_mask"][i]) == len(expected)
    assert len(json.load(open(tmp_path / "vocab.json"))) == 49408 == tok.vocab_size
    assert tok.model_max_length == 77 and tok.pad_token_id == tok.eos_token_id == 49407


# ---------------------------------------------------------------------------------------------------------------------
# transformers' CLIPModel gives our logits


@pytest.fixture(scope="module")
def b16():
    return perturbed_clip(VIT_B16)


@pytest.mark.parametrize("shape, norm, scale", [pytest.param("ViT-B/16", "clip", None, marks=pytest.mark.slow),
                                               pytest.param("ViT-B/16", "imagenet", None, marks=pytest.mark.slow),
                                               ("small", "clip", None), ("small", "imagenet", None),
                                               ("small", "clip", 100.0)])
def test_transformers_gives_our_logits_through_the_cards_recipe(tmp_path, b16, shape, norm, scale):
    clip = b16 if shape == "ViT-B/16" else perturbed_clip(SMALL, seed=1, logit_scale=scale)
    bound = 1e-5 * clip.logit_scale.exp().item() / (1 / 0.07) if scale else 1e-5
    templates = ["a photo of a {}.", "a video of a person {}."]  # an ensemble: the recipe's loop is exercised
    model = vifi.ViFiCLIP(clip, NAMES, train_mode="none", templates=templates, normalization=norm)
    folder = hf_export.export_hugging_face(model, str(tmp_path / "exported"), frames=4)
    frames = random_frames(4, clip.visual.input_resolution)
    theirs, pixels = transformers_logits(folder, frames, NAMES, templates)
    ours = our_logits(model, our_pixels(frames, norm))
    torch.testing.assert_close(pixels, our_pixels(frames, norm), atol=1e-5, rtol=0)  # the folder's pixel statistics
    difference = (theirs - ours).abs().max().item()
    print(f"{shape}, {norm} statistics, logit scale {clip.logit_scale.exp().item():.1f}: logits {ours.min():.2f} .. "
          f"{ours.max():.2f}, max |ours - transformers| {difference:.2e} (bound {bound:.0e})")
    assert difference <= bound
    assert ours.max() - ours.min() > 0.1  # logits that differ: a wrong class order would show
    config = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    assert (config["image_mean"], config["image_std"]) == tuple(map(list, data.NORMS[norm]))
    # and the folder loads back here, to the same logits
    back = vifi_weights.load_model(folder)
    assert back.format == "hugging face" and back.model.normalization == norm
    assert back.model.class_names == tuple(NAMES) and back.model.templates == tuple(templates)
    torch.testing.assert_close(our_logits(back.model, our_pixels(frames, norm)), ours, atol=0, rtol=0)
    reloaded = clip_weights.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), clip.state_dict().values()))


def test_the_model_cards_code_scores_a_video_as_classify_does(tmp_path, monkeypatch, capsys):
    """The card's python block run as written (the folder's path put in) on a video: our logits, and
    vifi.classify's ranking. A 54 x 54 video at the tiny CLIP's 48 px: the processor's resize to 54 and centre crop
    are then data.py's crop exactly, so the frames are the same."""
    model = vifi.ViFiCLIP(clip_weights.load(miniworld.TINY_CLIP_NAME), ["dancing", "swimming", "cooking"],
                          train_mode="none", normalization="imagenet")
    folder = hf_export.export_hugging_face(model, str(tmp_path / "vifi-clip-hf"), frames=8)
    card = open(os.path.join(folder, "README.md")).read()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(code) == 1 and 'folder = "vifi-clip-hf"' in code[0]
    write_video(tmp_path / "my_video.mp4", frames=20, size=(54, 54))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    frames = data.VideoDataset("", [("my_video.mp4", 0)], num_frames=8, input_size=48, norm="imagenet").load(0)
    ours = our_logits(model, frames)
    difference = (namespace["logits"] - ours).abs().max().item()
    print(f"the card's recipe on a video: max |ours - transformers| {difference:.2e}")
    assert difference <= 1e-5
    ranked = vifi.classify(model, "my_video.mp4", ["dancing", "swimming", "cooking"], num_frames=8, precision="fp32")
    assert [line.split()[-1] for line in printed.splitlines()] == [name for name, _ in ranked]


def test_the_processor_frames_a_larger_video_as_data_py_does(tmp_path):
    """Short side to 256/224 of the input size, centre crop: data.eval_plan's geometry, the pixels equal up to the two
    resizers' rounding (on smooth frames; the short side at 48 or 60 instead of 54 is 5x as far)."""
    model = vifi.ViFiCLIP(clip_weights.load(miniworld.TINY_CLIP_NAME), NAMES, train_mode="none")
    folder = hf_export.export_hugging_face(model, str(tmp_path / "exported"))
    y, x = np.mgrid[0:96, 0:120].astype(np.float64)
    frames = np.stack([np.stack([128 + 100 * np.sin(x / (9 + p)), 128 + 100 * np.cos(y / (7 + p)),
                                 128 + 100 * np.sin((x + y) / (13 + p))], -1).round().astype(np.uint8) for p in (0, 3)])
    ours = data.apply_plan(frames, data.eval_plan(120, 96, 48), "clip")  # [2, 3, 48, 48] from 120 x 96
    theirs = transformers.CLIPProcessor.from_pretrained(folder)(images=list(frames), return_tensors="pt")
    difference = (theirs["pixel_values"] - ours).abs()
    assert theirs["pixel_values"].shape == ours.shape and difference.mean() < 0.05 and difference.max() < 0.25


# ---------------------------------------------------------------------------------------------------------------------
# Every format this project loads, through the command line


def test_the_authors_checkpoint_exports_with_imagenet_statistics(tmp_path, fake_yacs, capsys):
    """A checkpoint in the authors' own layout (test_vifi.authors_state_dict): the command takes the token
    embeddings from --base, the classes from --labels; transformers' logits are those of load_authors_checkpoint."""
    trained = vifi.ViFiCLIP(perturbed_clip(SMALL, seed=5), NAMES, train_mode="none")
    save_authors_checkpoint(tmp_path / "vifi_clip_k400.pth", trained, fake_yacs)
    torch.save(trained.clip.state_dict(), tmp_path / "base.pt")
    data.write_labels(tmp_path / "labels.csv", NAMES)
    code = export_hf.cli([str(tmp_path / "vifi_clip_k400.pth"), str(tmp_path / "out"), "--base",
                          str(tmp_path / "base.pt"), "--labels", str(tmp_path / "labels.csv")])
    assert code == 0, capsys.readouterr().err
    assert "the authors' weights as a Hugging Face CLIP (5 classes recorded, 32 frames, imagenet pixel statistics)" in \
        capsys.readouterr().out
    reference = vifi_weights.load_authors_checkpoint(str(tmp_path / "vifi_clip_k400.pth"), NAMES,
                                                     base=str(tmp_path / "base.pt"))
    frames = random_frames(3, 32)
    theirs, _ = transformers_logits(str(tmp_path / "out"), frames, NAMES, ["a photo of a {}."])
    ours = our_logits(reference, our_pixels(frames, "imagenet"))
    print(f"the authors' layout: max |ours - transformers| {(theirs - ours).abs().max().item():.2e}")
    assert (theirs - ours).abs().max() <= 1e-5
    card = open(tmp_path / "out" / "README.md").read()
    assert "ImageNet's" in card and "`brush_hair`, `cartwheel`" in card and "vifi_clip_k400.pth" in card
    assert json.load(open(tmp_path / "out" / "vifi_clip.json"))["class_names"] == NAMES
    # without --labels the card says the classes are not recorded (the authors' files have none)
    assert export_hf.cli([str(tmp_path / "vifi_clip_k400.pth"), str(tmp_path / "out2"), "--base",
                          str(tmp_path / "base.pt")]) == 0
    assert "classes: not recorded with these weights" in open(tmp_path / "out2" / "README.md").read()


def save_our_run(path, model, *flags):
    """best.pt as train.py writes it (run_files.save_checkpoint), for a run with these flags."""
    cfg = train.parse_command_line(list(flags))[0]
    cfg.normalization = model.normalization
    optimizer = torch.optim.AdamW(vifi.trainable_parameters(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    run_files.save_checkpoint(str(path), model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                              dict(epoch=1), cfg)
    return cfg


def test_our_best_pt_exports_with_its_runs_classes_template_and_frames(tmp_path, capsys):
    base = perturbed_clip(SMALL, seed=7)
    torch.save(base.state_dict(), tmp_path / "clip.pt")
    model = vifi.ViFiCLIP(perturbed_clip(SMALL, seed=8), ["x"], train_mode="both")  # the run's trained weights
    with torch.no_grad():
        model.clip.token_embedding.weight.copy_(base.token_embedding.weight)  # frozen in training: the base's
    save_our_run(tmp_path / "best.pt", model, "--setting", "fewshot", "--k", "4", "--dataset", "hmdb51", "--clip",
                 str(tmp_path / "clip.pt"), "--frames", "16", "--epochs", "3")
    assert export_hf.cli([str(tmp_path / "best.pt"), str(tmp_path / "out")]) == 0, capsys.readouterr().err
    hmdb = data.read_labels(os.path.join(ROOT, "splits", "labels", "hmdb_51_labels.csv"))
    meta = json.load(open(tmp_path / "out" / "vifi_clip.json"))
    assert meta["class_names"] == hmdb and meta["frames"] == 16 and meta["templates"] == ["a photo of a {}."]
    card = open(tmp_path / "out" / "README.md").read()
    assert "- run: setting fewshot, dataset hmdb51, k 4, train both, epochs 3, clip " in card
    assert "- classes (51, in label order" in card
    frames = random_frames(2, 32)
    theirs, _ = transformers_logits(str(tmp_path / "out"), frames, hmdb[:6], ["a photo of a {}."])
    model.set_class_names(hmdb[:6])
    assert (theirs - our_logits(model, our_pixels(frames, "clip"))).abs().max() <= 1e-5
    back = vifi_weights.load_model(str(tmp_path / "out"), hmdb[:6]).model
    pixels = our_pixels(frames, "clip")
    torch.testing.assert_close(our_logits(back, pixels), our_logits(model, pixels), atol=0, rtol=0)


def test_a_prompt_learned_model_exports_its_prompts_beside_the_bridged_clip(tmp_path, capsys):
    """Bridge and prompt (Sec. 5): model.safetensors is the bridged CLIP, which transformers runs without the
    prompts (and the card says so); prompts.safetensors holds them, and the folder loads back here whole."""
    bridged = perturbed_clip(SMALL, seed=9)
    model = randomize_prompts(vifi.ViFiCLIP(bridged, NAMES, train_mode="prompts", **DEEP))
    folder = hf_export.export_hugging_face(model, str(tmp_path / "prompted"), frames=8)
    assert folder_files(folder) == EXPORTED | {"prompts.safetensors"}
    card = open(os.path.join(folder, "README.md")).read()
    assert "**`transformers` alone does not run this model.**" in card and "5 text tokens at 3 layers" in card
    frames = random_frames(2, 32)
    back = vifi_weights.load_model(folder).model
    assert back.prompts.config() == model.prompts.config() and back.templates == model.templates == ("{}.",)
    pixels = our_pixels(frames, "clip")
    torch.testing.assert_close(our_logits(back, pixels), our_logits(model, pixels), atol=0, rtol=0)
    plain = vifi.ViFiCLIP(bridged, NAMES, train_mode="none", templates="{}.")  # the bridged CLIP alone
    theirs, _ = transformers_logits(folder, frames, NAMES, ["{}."])
    assert (theirs - our_logits(plain, our_pixels(frames, "clip"))).abs().max() <= 1e-5
    assert (theirs - our_logits(model, our_pixels(frames, "clip"))).abs().max() > 1e-2  # the prompts matter
    # a prompt checkpoint (vifi_weights.save_prompts) through the command line: on the bridged model it references
    torch.save(bridged.state_dict(), tmp_path / "bridged.pt")
    vifi_weights.save_prompts(str(tmp_path / "prompts.pt"), model.prompts, str(tmp_path / "bridged.pt"))
    assert export_hf.cli([str(tmp_path / "prompts.pt"), str(tmp_path / "cli"), "--classes", ",".join(NAMES)]) == 0
    assert "prompts in prompts.safetensors, which transformers alone does not run" in capsys.readouterr().out
    back = vifi_weights.load_model(str(tmp_path / "cli")).model
    pixels = our_pixels(frames, "clip")
    torch.testing.assert_close(our_logits(back, pixels), our_logits(model, pixels), atol=0, rtol=0)


def test_the_folder_holds_safetensors_and_json_only(tmp_path):
    model = randomize_prompts(vifi.ViFiCLIP(perturbed_clip(SMALL), NAMES, train_mode="none", **DEEP))
    folder = hf_export.export_hugging_face(model, str(tmp_path / "out"))
    from safetensors import safe_open
    for name in folder_files(folder):
        path = os.path.join(folder, name)
        head = open(path, "rb").read(4)
        assert not head.startswith((b"\x80", b"PK")), f"{name}: a pickle or a zip"  # torch.save writes either
        if name.endswith(".json"):
            json.load(open(path))
        elif name.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                assert f.metadata()["format"] == "pt" and list(f.keys())
        else:
            assert name in ("README.md", "merges.txt"), name
            open(path, encoding="utf-8").read()


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing written


def assert_refused(capsys, argv, match, folder):
    code = export_hf.cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.match("python -m tools.export_hf: error: " + match, err), err
    assert not os.path.exists(folder)
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.endswith(".tmp")], "a temporary folder was left"


def test_a_checkpoint_that_cannot_be_exported_is_one_line_and_no_folder(tmp_path, fake_yacs, capsys):
    trained = vifi.ViFiCLIP(perturbed_clip(SMALL), NAMES, train_mode="none")
    state = authors_state_dict(trained)
    del state["module.text_encoder.ln_final.bias"]
    torch.save({"model": state}, tmp_path / "broken.pth")
    torch.save(trained.clip.state_dict(), tmp_path / "base.pt")
    out = str(tmp_path / "out")
    assert_refused(capsys, [str(tmp_path / "broken.pth"), out, "--base", str(tmp_path / "base.pt")],
                   r".*broken\.pth: is incomplete, nothing was loaded; missing \['clip\.ln_final\.bias'\]", out)
    assert_refused(capsys, [str(tmp_path / "absent.pt"), out], r".*absent\.pt: no such file", out)
    assert_refused(capsys, [str(tmp_path / "base.pt"), out, "--classes", " , "], "--classes: no class names", out)
    assert_refused(capsys, [str(tmp_path / "base.pt"), out, "--labels", "nope.csv"], "--labels nope.csv: no such", out)


def test_an_existing_folder_is_kept_unless_forced_and_a_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    model = vifi.ViFiCLIP(perturbed_clip(SMALL), NAMES, train_mode="none")
    torch.save(model.clip.state_dict(), tmp_path / "clip.pt")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    assert export_hf.cli([str(tmp_path / "clip.pt"), str(folder), "--classes", "a,b"]) == 2
    assert "exists; choose another folder, or --force" in capsys.readouterr().err
    assert folder_files(folder) == {"mine.txt"}

    def fail(tmp, files, tensors):  # a write that dies half-way (disk full, Ctrl-C)
        open(os.path.join(tmp, "config.json"), "w").write("{")
        raise OSError("No space left on device")

    monkeypatch.setattr(hf_export, "_write_folder", fail)
    assert export_hf.cli([str(tmp_path / "clip.pt"), str(folder), "--classes", "a,b", "--force"]) == 2
    assert folder_files(folder) == {"mine.txt"}  # the old folder stands
    assert sorted(os.listdir(tmp_path)) == ["clip.pt", "out"]  # and no temporary folder is left
    with pytest.raises(OSError):
        hf_export.export_hugging_face(model, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["clip.pt", "out"]
    monkeypatch.undo()
    assert export_hf.cli([str(tmp_path / "clip.pt"), str(folder), "--classes", "a,b", "--force"]) == 0
    assert folder_files(folder) == EXPORTED and sorted(os.listdir(tmp_path)) == ["clip.pt", "out"]
