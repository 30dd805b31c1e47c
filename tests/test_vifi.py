"""vifi.py: ViFi-CLIP (paper Sec. 4-5) on a small random CLIP: fusions, training modes, class names, the text cache,
the authors' checkpoints, prompt checkpoints and classify().

Reference values are computed by hand from clip_model's two encoders, so that Eq. 1 itself is checked, not only
vifi.py against itself.
"""
import collections
import copy
import os
import sys
import types

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip_model
import vifi
from tokenizer import tokenize
from plumbing import clip_weights, mixed_precision, vifi_weights

SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=48, transformer_heads=1, transformer_layers=3)
NAMES = ["brush_hair", "cartwheel", "ride bike", "sword exercise"]
NOVEL = ["kiss", "pour", "shoot bow"]
DEEP = dict(n_ctx_text=5, depth_text=3, n_ctx_vision=2, depth_vision=2)  # on every layer but one; 5 > 4 words: random


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

TEXT_TOWER = ("positional_embedding", "transformer.", "ln_final.", "text_projection")
EXPECTED_TRAINED = {  # which of the model's parameters each mode trains, by name
    "both": lambda n: n.startswith(("clip.visual.", "clip.logit_scale") + tuple("clip." + t for t in TEXT_TOWER)),
    "image": lambda n: n.startswith("clip.visual."),
    "text": lambda n: n.startswith(tuple("clip." + t for t in TEXT_TOWER)),
    "prompts": lambda n: n.startswith("prompts."),
    "none": lambda n: False,
}


def random_clip(seed=0):
    torch.manual_seed(seed)
    model = clip_model.CLIP(**SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():  # no parameter at a trivial value (zero biases, unit norms)
            p.add_(0.02 * torch.randn_like(p))
    return model


def randomize_prompts(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_(0, 0.5)
    return model


def videos(B=2, T=3, seed=2):
    torch.manual_seed(seed)
    return torch.randn(B, T, 3, 32, 32)


@pytest.fixture(scope="module")
def clip():
    return random_clip()


def build(clip, names=NAMES, **kwargs):
    return vifi.ViFiCLIP(copy.deepcopy(clip), names, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# The model is Eq. 1 on top of CLIP


def test_embedding_fusion_is_eq1_on_plain_clip(clip):
    """Mean of the frame embeddings, normalised, cosine with "a photo of a {name}." (underscores as spaces), times
    exp(logit_scale): computed by hand with CLIP's two encoders."""
    model = build(clip, train_mode="none").eval()
    x = videos()
    with torch.no_grad():
        logits = model(x)
        frames = clip.encode_image(x.flatten(0, 1)).view(2, 3, -1)
        video = F.normalize(frames.mean(1), dim=-1)
        text = F.normalize(clip.encode_text(tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])),
                           dim=-1)
        expected = clip.logit_scale.exp() * video @ text.t()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", vifi.FUSIONS)
@pytest.mark.parametrize("mode", vifi.TRAIN_MODES)
def test_shapes_and_dtypes_for_every_fusion_and_mode(clip, fusion, mode):
    model = build(clip, fusion=fusion, train_mode=mode, **DEEP)
    x, labels = videos(B=2, T=3), torch.tensor([0, 3])
    model.train()
    logits = model(x)
    assert logits.shape == ((6, 4) if fusion == "image" else (2, 4)) and logits.dtype == torch.float32
    loss = model.loss(logits, labels)
    assert loss.shape == () and torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4)
        assert model(x, class_names=NOVEL).shape == (2, 3)


def test_bf16_autocast_runs_and_stays_close(clip):
    model = build(clip, train_mode="both", **DEEP)
    x, labels = videos(), torch.tensor([1, 2])
    with torch.no_grad():
        fp32 = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = model.loss(logits, labels)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32  # the head runs in fp32 (vifi.forward)
    loss.backward()
    assert F.cosine_similarity(logits, fp32).min() > 0.99 and not torch.equal(logits.detach(), fp32)


def test_with_one_frame_the_three_fusions_agree(clip):
    x, labels = videos(B=3, T=1), torch.tensor([0, 1, 3])
    models = {f: build(clip, fusion=f, train_mode="both", **DEEP) for f in vifi.FUSIONS}
    for m in models.values():
        randomize_prompts(m)
    with torch.no_grad():
        train_losses = {f: m.loss(m.train()(x), labels) for f, m in models.items()}
        probs = {f: m.eval()(x).softmax(-1) for f, m in models.items()}
        logits = {f: models[f](x) for f in ("embedding", "decision")}
    torch.testing.assert_close(logits["embedding"], logits["decision"], atol=1e-5, rtol=0)
    for f in ("decision", "image"):
        torch.testing.assert_close(train_losses[f], train_losses["embedding"], atol=1e-5, rtol=0)
        torch.testing.assert_close(probs[f], probs["embedding"], atol=1e-6, rtol=0)


def test_decision_and_image_fusion_by_hand(clip):
    """Decision: mean of frame logits. Image: every frame a sample with its video's label in training; the frames'
    mean probability in evaluation."""
    x, labels = videos(B=2, T=3), torch.tensor([2, 0])
    decision = build(clip, fusion="decision", train_mode="none").eval()
    image = build(clip, fusion="image", train_mode="none")
    with torch.no_grad():
        frames = F.normalize(decision.encode_frames(x), dim=-1)  # [2, 3, D]
        frame_logits = clip.logit_scale.exp() * frames @ decision.text_features().t()  # [2, 3, C]
        torch.testing.assert_close(decision(x), frame_logits.mean(1), atol=1e-5, rtol=0)
        train_logits = image.train()(x)
        torch.testing.assert_close(train_logits, frame_logits.flatten(0, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(image.loss(train_logits, labels),
                                   F.cross_entropy(frame_logits.flatten(0, 1), torch.tensor([2, 2, 2, 0, 0, 0])))
        torch.testing.assert_close(image.eval()(x).softmax(-1), frame_logits.softmax(-1).mean(1), atol=1e-6, rtol=0)


def test_soft_targets(clip):
    """Mixup/label smoothing give probability targets; with image-level fusion they repeat per frame too."""
    model = build(clip, fusion="image", train_mode="none").train()
    x = videos(B=2, T=3)
    soft = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.5, 0.0]])
    with torch.no_grad():
        logits = model(x)
        expected = -(soft.repeat_interleave(3, 0) * logits.log_softmax(-1)).sum(-1).mean()
        torch.testing.assert_close(model.loss(logits, soft), expected)


def test_templates_are_ensembled(clip):
    """A list of templates: the mean of the normalised embeddings, normalised again (CLIP's prompt ensembling)."""
    templates = ["a photo of a {}.", "a video of a person {}.", "{}"]
    model = build(clip, templates=templates, train_mode="none")
    with torch.no_grad():
        singles = [F.normalize(clip.encode_text(tokenize([t.format(n.replace("_", " ")) for n in NAMES])), dim=-1)
                   for t in templates]
        expected = F.normalize(torch.stack(singles).mean(0), dim=-1)
        torch.testing.assert_close(model.text_features(), expected, atol=1e-6, rtol=0)
        bare = build(clip, templates=vifi.ZERO_SHOT_TEMPLATE, train_mode="none").text_features()
        torch.testing.assert_close(bare, F.normalize(clip.encode_text(tokenize(
            [n.replace("_", " ") for n in NAMES])), dim=-1), atol=1e-6, rtol=0)


def test_default_template_follows_the_prompts(clip):
    assert build(clip).templates == ("a photo of a {}.",)
    assert build(clip, **DEEP).templates == ("{}.",)  # the learned context stands where "a photo of a" stood
    with pytest.raises(ValueError, match="'{}' for the class name"):
        build(clip, templates="a photo")


# ---------------------------------------------------------------------------------------------------------------------
# Training modes: exactly the right parameters learn


@pytest.mark.parametrize("mode", vifi.TRAIN_MODES)
def test_gradients_reach_exactly_what_each_mode_trains(clip, mode):
    model = build(clip, fusion="embedding", train_mode=mode, **DEEP)
    expected = {n for n, _ in model.named_parameters() if EXPECTED_TRAINED[mode](n)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert {id(p) for p in vifi.trainable_parameters(model)} == \
           {id(p) for n, p in model.named_parameters() if n in expected}
    assert "clip.token_embedding.weight" not in expected  # never trained by default, as in the authors' code
    model.train()
    logits = model(videos())
    loss = model.loss(logits, torch.tensor([0, 1]))
    if mode == "none":
        assert not loss.requires_grad
        return
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == expected
    # every trained tensor really receives signal (catches a tower silently cut off from the loss)
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in got)


def test_token_embeddings_can_be_unfrozen(clip):
    model = build(clip, train_mode="text", train_token_embedding=True)
    model.train()
    model.loss(model(videos()), torch.tensor([0, 1])).backward()
    assert model.clip.token_embedding.weight.grad is not None


def test_prompt_mode_needs_prompts(clip):
    with pytest.raises(ValueError, match="needs prompt tokens"):
        build(clip, train_mode="prompts")
    with pytest.raises(ValueError, match="train_mode must be one of"):
        build(clip, train_mode="all")


def test_trainable_state_dict_round_trip(clip):
    model = randomize_prompts(build(clip, train_mode="prompts", **DEEP))
    state = vifi.trainable_state_dict(model)
    assert sorted(state) == ["prompts.text.0", "prompts.text.1", "prompts.text.2", "prompts.vision.0",
                             "prompts.vision.1"]
    other = build(clip, train_mode="prompts", **DEEP)
    vifi.load_trainable_state_dict(other, state, source="ckpt.pt")
    with torch.no_grad():
        torch.testing.assert_close(other(videos()), model(videos()), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"ckpt\.pt: trainable parameters do not match"):
        vifi.load_trainable_state_dict(build(clip, train_mode="image"), state, source="ckpt.pt")


# ---------------------------------------------------------------------------------------------------------------------
# Class names and the text cache


def test_changing_class_names_is_the_same_as_building_with_them(clip):
    model = randomize_prompts(build(clip, NAMES, train_mode="none", **DEEP)).eval()
    fresh = randomize_prompts(build(clip, NOVEL, train_mode="none", **DEEP)).eval()
    with torch.no_grad():
        base_logits = model(videos())
        assert torch.equal(model(videos(), class_names=NOVEL), fresh(videos()))  # a one-off override ...
        assert model.class_names == tuple(NAMES)  # ... leaves the model's classes alone
        model.set_class_names(NOVEL)
        assert torch.equal(model(videos()), fresh(videos()))
        model.set_class_names(NAMES)
        assert torch.equal(model(videos()), base_logits)


def count_text_encodings(model, monkeypatch):
    calls = []
    original = model.encode_class_prompts
    monkeypatch.setattr(model, "encode_class_prompts", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_frozen_text_side_is_encoded_once_per_class_set(clip, monkeypatch):
    """CLIP image-FT trains with a frozen text tower: its class embeddings are computed once, whatever the number of
    steps; in evaluation (no_grad) the same holds for every mode."""
    model = build(clip, train_mode="image")
    calls = count_text_encodings(model, monkeypatch)
    optimizer = torch.optim.SGD(vifi.trainable_parameters(model), lr=0.1)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(model(videos()), torch.tensor([0, 1])).backward()
        optimizer.step()
    assert len(calls) == 1
    model.eval()
    with torch.no_grad():
        model(videos(), class_names=NOVEL)
        model(videos(), class_names=NOVEL)
        model(videos())
    assert len(calls) == 2  # NOVEL once; NAMES still cached


def test_cache_is_invalidated_by_optimizer_steps_and_loading(clip, monkeypatch):
    model = build(clip, train_mode="both", **DEEP)
    calls = count_text_encodings(model, monkeypatch)
    optimizer = torch.optim.AdamW(vifi.trainable_parameters(model), lr=1e-2)

    def eval_logits():
        model.eval()
        with torch.no_grad():
            return model(videos())

    before = eval_logits()
    assert torch.equal(eval_logits(), before) and len(calls) == 1  # cached
    model.train()
    model.loss(model(videos()), torch.tensor([0, 1])).backward()  # training the text tower: never cached
    assert len(calls) == 2
    optimizer.step()
    after = eval_logits()
    assert len(calls) == 3 and not torch.allclose(after, before)
    reference = build(model.clip, train_mode="none", **DEEP)  # a model with the new weights, never cached
    reference.prompts.load_state_dict(model.prompts.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(after, reference.eval()(videos()), atol=0, rtol=0)
    model.load_state_dict(build(clip, train_mode="both", **DEEP).state_dict())  # back to the first weights
    torch.testing.assert_close(eval_logits(), before, atol=0, rtol=0)
    assert len(calls) == 4
    with torch.no_grad():  # an in-place write to one prompt tensor
        model.prompts.text[2].add_(1.0)
    eval_logits()
    assert len(calls) == 5


def test_cache_keeps_autocast_results_apart(clip):
    model = build(clip, train_mode="none").eval()
    with torch.no_grad():
        fp32 = model.text_features()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.text_features()
        assert fp32.dtype == bf16.dtype == torch.float32  # normalised in fp32, from towers run in bf16
        assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.02)
        assert torch.equal(model.text_features(), fp32)


# ---------------------------------------------------------------------------------------------------------------------
# The authors' checkpoints


class FakeCfgNode(dict):
    """Pickles like yacs.config.CfgNode (a dict subclass with attributes, one of them a set)."""

    def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__new_allowed__": False})


@pytest.fixture
def fake_yacs(monkeypatch):
    """A module yacs.config with a CfgNode, so that torch.save writes the authors' config object as they did."""
    module = types.ModuleType("yacs.config")
    FakeCfgNode.__module__, FakeCfgNode.__qualname__, FakeCfgNode.__name__ = "yacs.config", "CfgNode", "CfgNode"
    module.CfgNode = FakeCfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return FakeCfgNode


def authors_state_dict(model: vifi.ViFiCLIP) -> collections.OrderedDict:
    """The state dict the authors' trainers/vificlip.py ViFiCLIP (wrapped in DistributedDataParallel) would have for
    these weights, written from their module structure: image_encoder = clip.visual (first-layer vision prompts
    `VPT`, deeper ones `VPT_shallow` in each block), text_encoder = positional_embedding / transformer / ln_final /
    text_projection (deeper text prompts `VPT_shallow` in each block), prompt_learner (`ctx` and class-name buffers),
    logit_scale. No token embedding."""
    clip, out = model.clip, collections.OrderedDict()
    n_cls = len(model.class_names)
    if model.prompts.has_text:
        out["prompt_learner.ctx"] = model.prompts.text[0]
        out["prompt_learner.token_prefix"] = torch.randn(n_cls, 1, 48)
        out["prompt_learner.token_suffix"] = torch.randn(n_cls, 72, 48)
    else:
        out["prompt_learner.complete_text_embeddings"] = torch.randn(n_cls, 77, 48)
    for k, v in clip.visual.state_dict().items():
        out[f"image_encoder.{k}"] = v
    if model.prompts.has_vision:
        out["image_encoder.VPT"] = model.prompts.vision[0]
        for i in range(1, len(model.prompts.vision)):
            out[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = model.prompts.vision[i]
    out["text_encoder.positional_embedding"] = clip.positional_embedding
    for k, v in clip.transformer.state_dict().items():
        out[f"text_encoder.transformer.{k}"] = v
    for i in range(1, len(model.prompts.text)):
        out[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = model.prompts.text[i]
    for k, v in clip.ln_final.state_dict().items():
        out[f"text_encoder.ln_final.{k}"] = v
    out["text_encoder.text_projection"] = clip.text_projection
    out["logit_scale"] = clip.logit_scale
    return collections.OrderedDict((f"module.{k}", v.detach().clone()) for k, v in out.items())


def save_authors_checkpoint(path, model, cfg_class):
    """Their utils/tools.py epoch_saving: model, optimizer, lr_scheduler, max_accuracy, epoch, config."""
    params = [torch.nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.AdamW(params)
    params[0].grad = torch.ones(3)
    optimizer.step()
    config = cfg_class({"MODEL": cfg_class({"ARCH": "ViT-B/16"}), "BASE": [""]})
    torch.save({"model": authors_state_dict(model), "optimizer": optimizer.state_dict(),
                "lr_scheduler": {"t_initial": 100, "base_values": [8e-6], "noise_range_t": None},
                "max_accuracy": 51.3, "epoch": 9, "config": config}, path)


@pytest.mark.parametrize("prompted", [False, True], ids=["finetuned", "prompted"])
def test_authors_checkpoint_loads_and_gives_the_same_logits(clip, tmp_path, fake_yacs, prompted):
    trained = build(random_clip(seed=5), train_mode="none", **(DEEP if prompted else {}))
    randomize_prompts(trained)
    path = tmp_path / "vifi_clip_10_epochs_k400_full_finetuned.pth"
    save_authors_checkpoint(path, trained, fake_yacs)
    # The base CLIP supplies only the token embeddings, which their files lack: give it the trained model's table,
    # and every other weight different, to show that those come from the file.
    base = random_clip(seed=6)
    with torch.no_grad():
        base.token_embedding.weight.copy_(trained.clip.token_embedding.weight)
    loaded = vifi_weights.load_authors_checkpoint(str(path), NOVEL, base=base)
    assert loaded.normalization == "imagenet" and loaded.train_mode == "none"
    assert loaded.prompts.config() == dict(DEEP if prompted else dict(n_ctx_text=0, depth_text=0, n_ctx_vision=0,
                                                                      depth_vision=0), ctx_init="a photo of a")
    trained.set_class_names(NOVEL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(videos()), trained.eval()(videos()), atol=0, rtol=0)
    # load_weights (train.py --init-from) reads the same file into an existing model
    target = build(base, train_mode="both", **(DEEP if prompted else {}))
    loaded = vifi_weights.load_weights(target, str(path))
    assert loaded.format == "authors" and loaded.normalization == "imagenet" == target.normalization
    assert loaded.keys == sorted(k for k in target.state_dict() if k != "clip.token_embedding.weight")
    target.set_class_names(NOVEL)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(videos()), trained(videos()), atol=0, rtol=0)


def test_authors_prompts_shorter_than_their_init_words_keep_the_other_words(clip, tmp_path, fake_yacs):
    """Their prompt learner with CTX_INIT "a photo of a" (4 tokens) and N_CTX_TEXT <= 4 learns the first N_CTX
    tokens and keeps the rest as words of every class prompt: 2 tokens give "<sot> [ctx] of a {name}.". Started
    from the words' own embeddings, that is plain CLIP's "a photo of a {name}." (not "a photo {name}.")."""
    two = build(clip, train_mode="none", n_ctx_text=2, depth_text=1, ctx_init=None)
    with torch.no_grad():
        two.prompts.text[0].copy_(clip.token_embedding.weight[tokenize("a photo")[0, 1:3]])
    torch.save({"model": authors_state_dict(two)}, tmp_path / "two_tokens.pth")
    loaded = vifi_weights.load_authors_checkpoint(str(tmp_path / "two_tokens.pth"), NAMES, base=clip)
    assert loaded.templates == ("of a {}.",)
    with torch.no_grad():
        expected = F.normalize(clip.encode_text(tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])),
                               dim=-1)
        torch.testing.assert_close(loaded.text_features(), expected)
    # what the file does not say can be given (it used to be "TypeError: multiple values for ctx_init")
    other = vifi_weights.load_authors_checkpoint(str(tmp_path / "two_tokens.pth"), NAMES, base=clip, ctx_init=None)
    assert other.templates == ("{}.",) and other.prompts.ctx_init is None
    other = vifi_weights.load_authors_checkpoint(str(tmp_path / "two_tokens.pth"), NAMES, base=clip, templates="{} video.")
    assert other.templates == ("{} video.",)


def test_authors_checkpoint_with_unknown_or_missing_keys_is_refused(clip, tmp_path, fake_yacs):
    model = build(clip, train_mode="none")
    state = authors_state_dict(model)
    extra = collections.OrderedDict(state, **{"module.temporal_transformer.weight": torch.zeros(1)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth: keys that are not part of .*temporal_transformer"):
        vifi_weights.load_authors_checkpoint(str(tmp_path / "extra.pth"), NAMES, base=clip)
    missing = collections.OrderedDict((k, v) for k, v in state.items() if "ln_post.bias" not in k)
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth: .*missing \['clip\.visual\.ln_post\.bias'\]"):
        vifi_weights.load_authors_checkpoint(str(tmp_path / "missing.pth"), NAMES, base=clip)


def assert_refused_untouched(model, path, match):
    """load_weights refuses the file, and the model keeps every value it had: nothing loads partly."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        vifi_weights.load_weights(model, str(path))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_load_weights_refuses_an_authors_checkpoint_that_lacks_a_weight(clip, tmp_path, fake_yacs):
    """The same rule as load_authors_checkpoint: every CLIP weight but the token embeddings, and every layer of the
    prompts it holds. (Before: the base values stayed, without a word.)"""
    trained = randomize_prompts(build(random_clip(seed=5), train_mode="none", **DEEP))
    state = authors_state_dict(trained)
    torch.save({"model": {k: v for k, v in state.items() if "ln_post.bias" not in k}}, tmp_path / "nobias.pth")
    assert_refused_untouched(build(clip, **DEEP), tmp_path / "nobias.pth",
                             r"nobias\.pth: .*missing \['clip\.visual\.ln_post\.bias'\]")
    deepest = f"module.text_encoder.transformer.resblocks.{DEEP['depth_text'] - 1}.VPT_shallow"
    torch.save({"model": {k: v for k, v in state.items() if k != deepest}}, tmp_path / "shallow.pth")
    assert_refused_untouched(build(clip, **DEEP), tmp_path / "shallow.pth",
                             rf"shallow\.pth: .*missing \['prompts\.text\.{DEEP['depth_text'] - 1}'\]")
    # a shape error on the last key is found before anything is copied
    wrong = dict(state, **{"module.logit_scale": torch.zeros(2)})
    torch.save({"model": wrong}, tmp_path / "shape.pth")
    assert_refused_untouched(build(clip, **DEEP), tmp_path / "shape.pth", r"shape\.pth: clip\.logit_scale has shape")


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "evil.pth"
    torch.save({"model": {"logit_scale": torch.zeros(())}, "config": Payload()}, path)
    with pytest.raises(vifi_weights.UnsafeCheckpointError, match=r"evil\.pth: refusing to unpickle (posix|nt)\.mkdir"):
        vifi_weights.read_checkpoint(str(path))
    assert not marker.exists()


def test_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "half.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeError, match=r"half\.pth is truncated or corrupt \(not a complete checkpoint\)$"):
        vifi_weights.read_checkpoint(str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Starting from checkpoints: train.py's, plain CLIP state dicts, prompt checkpoints


def test_load_weights_from_our_and_openai_names(clip, tmp_path):
    source = randomize_prompts(build(random_clip(seed=7), train_mode="both", **DEEP))
    torch.save({"model": vifi.trainable_state_dict(source), "config": {"clip": "x"}}, tmp_path / "last.pt")
    target = build(clip, train_mode="prompts", **DEEP)
    loaded = vifi_weights.load_weights(target, str(tmp_path / "last.pt"))
    assert loaded.format == "ours" and loaded.normalization is None and target.normalization == "clip"
    assert "clip.token_embedding.weight" not in loaded.keys  # 'both' trains neither
    assert "prompts.text.0" not in loaded.keys
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in loaded.keys)
    # train.py's checkpoints carry the run's configuration: the weights keep the pixel statistics they learnt with
    torch.save({"model": vifi.trainable_state_dict(source), "config": {"normalization": "imagenet"}},
               tmp_path / "best.pt")
    assert vifi_weights.load_weights(target, str(tmp_path / "best.pt")).normalization == "imagenet" == target.normalization
    torch.save(source.clip.state_dict(), tmp_path / "clip.pt")  # OpenAI's names
    target = build(clip, train_mode="both", normalization="imagenet")
    loaded = vifi_weights.load_weights(target, str(tmp_path / "clip.pt"))
    assert loaded.format == "openai" and loaded.normalization == "clip" == target.normalization
    assert all(torch.equal(v, source.clip.state_dict()[k]) for k, v in target.clip.state_dict().items())
    with pytest.raises(ValueError, match=r"clip\.pt: keys this model does not have"):
        torch.save(dict(source.clip.state_dict(), extra=torch.zeros(1)), tmp_path / "clip.pt")
        vifi_weights.load_weights(target, str(tmp_path / "clip.pt"))


def test_load_weights_refuses_files_without_the_models_weights(clip, tmp_path):
    """train.py --init-from a file that holds none of the model's weights would train from the base model."""
    for name, content in (("empty.pt", {}), ("empty_model.pt", {"model": {}, "config": {}})):
        torch.save(content, tmp_path / name)
        assert_refused_untouched(build(clip, **DEEP), tmp_path / name,
                                 rf"{name.replace('.', '[.]')}: .*missing \['clip\.")


def test_load_weights_takes_whole_parts_of_our_checkpoints(clip, tmp_path):
    """train.py's checkpoints hold the trainable parameters only (a prompt run: the prompts); each part a file
    holds (a tower, logit_scale, the token embeddings, the text or vision prompts) must be whole."""
    source = randomize_prompts(build(random_clip(seed=7), train_mode="prompts", **DEEP))
    torch.save({"model": vifi.trainable_state_dict(source)}, tmp_path / "best.pt")
    target = build(clip, train_mode="prompts", **DEEP)
    vifi_weights.load_weights(target, str(tmp_path / "best.pt"))
    assert all(torch.equal(a, b) for a, b in zip(target.prompts.parameters(), source.prompts.parameters()))
    assert torch.equal(target.clip.visual.conv1.weight, clip.visual.conv1.weight)  # not in the file: kept
    partial = {k: v for k, v in vifi.trainable_state_dict(source).items() if k != "prompts.vision.1"}
    torch.save({"model": partial}, tmp_path / "partial.pt")
    assert_refused_untouched(build(clip, **DEEP), tmp_path / "partial.pt",
                             r"partial\.pt: .*missing \['prompts\.vision\.1'\]")
    both = build(random_clip(seed=7), train_mode="both")
    partial = {k: v for k, v in vifi.trainable_state_dict(both).items() if k != "clip.ln_final.bias"}
    torch.save({"model": partial}, tmp_path / "partial.pt")
    assert_refused_untouched(build(clip), tmp_path / "partial.pt", r"partial\.pt: .*missing \['clip\.ln_final\.bias'\]")


def test_prompt_checkpoint_round_trip_on_its_bridged_model(tmp_path):
    bridged = random_clip(seed=8)
    base_path = tmp_path / "bridged.pt"
    torch.save(bridged.state_dict(), base_path)
    model = randomize_prompts(build(bridged, train_mode="prompts", **DEEP))
    vifi_weights.save_prompts(str(tmp_path / "prompts.pt"), model.prompts, str(base_path))
    loaded = vifi_weights.load_prompted(str(tmp_path / "prompts.pt"), NAMES)
    assert loaded.train_mode == "none" and loaded.templates == ("{}.",)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(videos()), model.eval()(videos()), atol=0, rtol=0)
    target = build(bridged, train_mode="prompts", **DEEP)  # load_weights also takes prompt checkpoints
    loaded = vifi_weights.load_weights(target, str(tmp_path / "prompts.pt"))
    assert loaded.format == "prompts" and loaded.normalization is None and target.normalization == "clip"
    assert all(torch.equal(a, b) for a, b in zip(target.prompts.parameters(), model.prompts.parameters()))
    torch.save(random_clip(seed=9).state_dict(), base_path)  # the bridged model changed under the prompts
    with pytest.raises(ValueError, match=r"prompts\.pt: its prompts were trained on .*bridged\.pt \(SHA-256"):
        vifi_weights.load_prompted(str(tmp_path / "prompts.pt"), NAMES)
    vifi_weights.load_prompted(str(tmp_path / "prompts.pt"), NAMES, verify=False)


# ---------------------------------------------------------------------------------------------------------------------
# classify: one of the users' own videos


def write_video(path, frames=16, size=(48, 64)):
    """A short H.264 video: a bright square moving across a dark background."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.full((*size, 3), 20, dtype=np.uint8)
            image[10:30, 2 + 3 * t:22 + 3 * t] = (230, 60, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_classify_ranks_the_classes_of_a_video(clip, tmp_path):
    import data
    path = tmp_path / "my video.mp4"
    write_video(path)
    model = build(clip, train_mode="both", normalization="imagenet").train()
    ranked = vifi.classify(model, str(path), NOVEL, num_frames=4, precision="fp32")
    assert [name for name, _ in ranked] != [] and sorted(n for n, _ in ranked) == sorted(NOVEL)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert model.training and model.class_names == tuple(NAMES)  # left as it was
    # the same as the model on the frames data.py gives for evaluation, normalised as the model expects
    frames = data.VideoDataset("", [(str(path), 0)], num_frames=4, input_size=32, norm="imagenet").load(0)
    with torch.no_grad():
        expected = model.eval()(frames[None], class_names=NOVEL)[0].softmax(-1)
    assert dict(ranked) == pytest.approx(dict(zip(NOVEL, expected.tolist())), abs=1e-6)


def test_readme_example_gives_the_authors_weights_their_pixel_statistics(tmp_path, fake_yacs, monkeypatch):
    """README, "Your own video", as written but on the tiny CLIP: the authors' weights were trained on
    ImageNet-normalised frames, so after load_weights classify must normalise with ImageNet's statistics."""
    import data
    from world import miniworld
    trained = vifi.ViFiCLIP(clip_weights.load(miniworld.TINY_CLIP_NAME), ["dancing", "swimming"], train_mode="none")
    save_authors_checkpoint(tmp_path / "vifi_clip_k400.pth", trained, fake_yacs)
    write_video(tmp_path / "my_video.mp4")
    monkeypatch.chdir(tmp_path)
    # the README's lines ("miniworld-tiny" for "ViT-B/16"; classify's answer kept for the checks below)
    model = vifi.ViFiCLIP(clip_weights.load("miniworld-tiny"), ["dancing", "swimming"], templates="a photo of a {}.")
    vifi_weights.load_weights(model, "vifi_clip_k400.pth")      # optional: the authors' released ViFi-CLIP weights
    ranked = vifi.classify(model, "my_video.mp4", ["dancing", "swimming", "cooking"])
    print(ranked)

    names = ["dancing", "swimming", "cooking"]

    def probabilities(norm):  # what classify computes, on frames normalised with `norm`, in the precision it chose
        frames = data.VideoDataset("", [("my_video.mp4", 0)], num_frames=8, norm=norm,
                                   input_size=model.clip.visual.input_resolution).load(0)
        # classify's "auto" runs bf16 on a CPU where bf16 measures faster (seen: 2.2x on one of these machines)
        precision = mixed_precision.inference_precision("cpu")
        with torch.no_grad(), mixed_precision.autocast(torch.device("cpu"), precision):
            return dict(zip(names, model.eval()(frames[None], class_names=names)[0].softmax(-1).tolist()))

    assert model.normalization == "imagenet"
    assert dict(ranked) == pytest.approx(probabilities("imagenet"), abs=1e-6)
    assert dict(ranked) != pytest.approx(probabilities("clip"), abs=1e-6)


def test_classify_in_bf16_agrees_with_fp32(clip, tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path)
    model = build(clip, train_mode="none")
    fp32 = vifi.classify(model, str(path), NOVEL, num_frames=4, precision="fp32")
    bf16 = vifi.classify(model, str(path), NOVEL, num_frames=4, precision="bf16")
    assert fp32[0][0] == bf16[0][0]
    assert dict(bf16) == pytest.approx(dict(fp32), abs=0.02) and dict(bf16) != dict(fp32)  # bf16 really ran


def test_inference_precision_explicit_requests_and_errors():
    for precision in ("fp32", "bf16", "fp16"):
        assert mixed_precision.inference_precision("cpu", precision) == precision
    with pytest.raises(ValueError, match="precision must be one of"):
        mixed_precision.inference_precision("cpu", "fp64")
    assert mixed_precision.inference_precision("meta") == "fp32"  # a device we know nothing about


@pytest.mark.parametrize("speedup, expected", [(3.0, "bf16"), (0.7, "fp32"), (1.1, "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_where_it_measures_faster(monkeypatch, capsys, speedup, expected):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16: auto is fp32 without measuring")
    calls = []
    monkeypatch.setattr(mixed_precision, "_cpu_bf16_speedup", {})
    monkeypatch.setattr(mixed_precision, "_measure_cpu_bf16_speedup", lambda: calls.append(1) or speedup)
    assert mixed_precision.inference_precision("cpu") == expected
    assert f"inference precision: {expected} (auto: bf16 measured {speedup:.2f}x fp32" in capsys.readouterr().out
    assert mixed_precision.inference_precision(torch.device("cpu"), "auto") == expected  # measured once per process
    assert len(calls) == 1 and capsys.readouterr().out == ""
