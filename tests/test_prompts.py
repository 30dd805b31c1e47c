"""prompts.py: deep vision-language prompts (paper Sec. 5, Fig. 6) on a small random CLIP.

The semantics are checked where they live, at the inputs of the transformer layers: layer i < depth sees its own
prompt tokens at the prompt positions, layer i >= depth sees what the previous layer made of them.
"""
import inspect
import os

import pytest
import torch

import clip_model
import prompts
from tokenizer import tokenize
from plumbing import clip_weights, vifi_weights

# Four layers per tower, so that a depth of 2 leaves prompted and unprompted layers on both sides.
SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=4, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=48, transformer_heads=1, transformer_layers=4)
NAMES = ["brush hair", "cartwheel", "ride bike"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = clip_model.CLIP(**SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():  # no parameter at a trivial value (zero biases, unit norms)
            p.add_(0.02 * torch.randn_like(p))
    return model


def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def record_block_io(transformer):
    """Inputs and outputs of every layer of a Transformer, filled by hooks; returns (records, handles). A layer's input
    is caught at its ln_1 (the last layer runs through clip_model.block_at, not the block's forward); its output is
    the block's forward output (all layers but the last)."""
    inputs, outputs, handles = {}, {}, []
    for i, block in enumerate(transformer.resblocks):
        handles.append(block.ln_1.register_forward_pre_hook(
            lambda module, args, i=i: inputs.__setitem__(i, args[0].detach())))
        handles.append(block.register_forward_hook(lambda module, args, out, i=i: outputs.__setitem__(i, out.detach())))
    return inputs, outputs, handles


# ---------------------------------------------------------------------------------------------------------------------
# No tokens, no depth: exactly CLIP


@pytest.mark.parametrize("n_ctx, depth", [(0, 4), (5, 0), (0, 0)])
def test_no_tokens_or_no_depth_is_exactly_plain_clip(clip, n_ctx, depth):
    learner = prompts.PromptLearner(clip, n_ctx_text=n_ctx, depth_text=depth, n_ctx_vision=n_ctx, depth_vision=depth)
    assert list(learner.parameters()) == []
    text = tokenize([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        torch.testing.assert_close(learner.encode_image(clip, images()), clip.encode_image(images()), atol=0, rtol=0)
        torch.testing.assert_close(learner.encode_text(clip, text), clip.encode_text(text), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Deep prompts: layer i < depth gets its own tokens, deeper layers do not


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_vision_prompts_replace_prompt_positions_up_to_depth_only(clip, depth):
    n_ctx = 3
    learner = prompts.PromptLearner(clip, n_ctx_text=0, depth_text=0, n_ctx_vision=n_ctx, depth_vision=depth)
    assert len(learner.vision) == depth
    start = 1 + (32 // 8) ** 2  # class token + patches
    inputs, outputs, handles = record_block_io(clip.visual.transformer)
    try:
        with torch.no_grad():
            learner.encode_image(clip, images())
    finally:
        for h in handles:
            h.remove()
    slot = slice(start, start + n_ctx)
    # layer 0: the tokens entered with the input, before ln_pre (which normalises each token on its own)
    torch.testing.assert_close(inputs[0][:, slot], clip.visual.ln_pre(learner.vision[0]).expand(2, -1, -1))
    for i in range(1, 4):
        if i < depth:  # this layer's own tokens, exactly
            assert torch.equal(inputs[i][:, slot], learner.vision[i].expand(2, -1, -1))
        else:  # what the previous layer made of the prompt positions, untouched
            assert torch.equal(inputs[i][:, slot], outputs[i - 1][:, slot])
        assert torch.equal(inputs[i][:, :start], outputs[i - 1][:, :start])  # the image tokens flow through


@pytest.mark.parametrize("depth", [1, 3])
def test_text_prompts_follow_the_start_token_up_to_depth_only(clip, depth):
    n_ctx = 2
    learner = prompts.PromptLearner(clip, n_ctx_text=n_ctx, depth_text=depth, n_ctx_vision=0, depth_vision=0,
                                    ctx_init=None)
    text = tokenize([f"{n}." for n in NAMES])
    inputs, outputs, handles = record_block_io(clip.transformer)
    try:
        with torch.no_grad():
            learner.encode_text(clip, text)
    finally:
        for h in handles:
            h.remove()
    slot = slice(1, 1 + n_ctx)
    expected0 = learner.text[0] + clip.positional_embedding[slot]  # inserted after <sot>, with their positions
    torch.testing.assert_close(inputs[0][:, slot], expected0.expand(3, -1, -1))
    torch.testing.assert_close(inputs[0][:, 0], clip.token_embedding.weight[49406] + clip.positional_embedding[0]
                               .expand(3, -1))
    for i in range(1, 4):
        if i < depth:
            assert torch.equal(inputs[i][:, slot], learner.text[i].expand(3, -1, -1))
        else:
            assert torch.equal(inputs[i][:, slot], outputs[i - 1][:, slot])


def test_every_prompt_tensor_gets_a_gradient_and_nothing_of_clip_does(clip):
    learner = prompts.PromptLearner(clip, n_ctx_text=3, depth_text=4, n_ctx_vision=2, depth_vision=3)
    clip.requires_grad_(False)
    try:
        loss = learner.encode_image(clip, images()).square().sum() + \
            learner.encode_text(clip, tokenize([f"{n}." for n in NAMES])).square().sum()
        loss.backward()
    finally:
        clip.requires_grad_(True)
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in clip.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Initialisation


def test_context_from_words_is_exactly_the_handcrafted_prompt(clip):
    """"<sot> [a photo of a] {name}." with the words' embeddings as the context == CLIP on "a photo of a {name}."
    (the authors' "X X X X {name}." with the X replaced)."""
    learner = prompts.PromptLearner(clip, n_ctx_text=4, depth_text=1, n_ctx_vision=0, depth_vision=0,
                                    ctx_init="a photo of a")
    assert learner.template == "{}."
    with torch.no_grad():
        ours = learner.encode_text(clip, tokenize([learner.template.format(n) for n in NAMES]))
        plain = clip.encode_text(tokenize([f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)


def test_fewer_tokens_than_words_learn_the_first_words_and_keep_the_rest(clip):
    """The authors' rule for n_ctx < 4: "a photo" is learned, "of a" stays a fixed part of the class prompt."""
    learner = prompts.PromptLearner(clip, n_ctx_text=2, depth_text=1, n_ctx_vision=0, depth_vision=0)
    assert learner.template == "of a {}."
    with torch.no_grad():
        ours = learner.encode_text(clip, tokenize([learner.template.format(n) for n in NAMES]))
        plain = clip.encode_text(tokenize([f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=0)


def test_more_tokens_than_words_start_random(clip):
    """As in the authors' code: the words are used only when n_ctx <= their token count, so the base-to-novel
    setting (16 tokens, CTX_INIT "a photo of a") starts from normal(0, 0.02) tokens."""
    learner = prompts.PromptLearner(clip, **dict(prompts.BASE_TO_NOVEL, depth_text=4, depth_vision=4))
    assert learner.template == "{}."
    words = clip.token_embedding.weight[tokenize("a photo of a")[0, 1:5]]
    assert not torch.allclose(learner.text[0][:4], words)
    for p in list(learner.text) + list(learner.vision):
        assert abs(p.std().item() - 0.02) < 0.005 and abs(p.mean().item()) < 0.005


def test_presets_are_the_authors_configs(clip):
    assert prompts.FEW_SHOT == dict(n_ctx_text=10, depth_text=12, n_ctx_vision=10, depth_vision=12)
    assert prompts.BASE_TO_NOVEL == dict(n_ctx_text=16, depth_text=9, n_ctx_vision=16, depth_vision=9)
    assert inspect.signature(prompts.PromptLearner).parameters["ctx_init"].default == "a photo of a"  # their CTX_INIT
    learner = prompts.PromptLearner(clip, n_ctx_text=10, depth_text=4, n_ctx_vision=7, depth_vision=2)
    assert [tuple(p.shape) for p in learner.text] == [(10, 48)] * 4
    assert [tuple(p.shape) for p in learner.vision] == [(7, 64)] * 2


def test_depth_beyond_the_tower_is_refused(clip):
    with pytest.raises(ValueError, match=r"depth 5 in 0..4"):
        prompts.PromptLearner(clip, n_ctx_text=2, depth_text=5)


# ---------------------------------------------------------------------------------------------------------------------
# Prompt checkpoints (written and read by vifi_weights.py)


def test_prompt_checkpoint_holds_prompts_config_and_base_reference_only(clip, tmp_path):
    base = tmp_path / "bridged.pt"
    torch.save(clip.state_dict(), base)
    learner = prompts.PromptLearner(clip, n_ctx_text=4, depth_text=2, n_ctx_vision=3, depth_vision=2)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "prompts.pt"
    vifi_weights.save_prompts(str(path), learner, str(base))
    assert sorted(os.listdir(tmp_path)) == ["bridged.pt", "prompts.pt"]  # no temporary file left behind
    assert path.stat().st_size < 16_000  # kilobytes: no CLIP weights, no class-name buffers
    payload = vifi_weights.read_prompts(str(path))
    assert sorted(payload["prompts"]) == ["text.0", "text.1", "vision.0", "vision.1"]
    assert payload["base_model"] == dict(ref=str(base), sha256=clip_weights.sha256_of(str(base)))
    assert payload["config"] == learner.config()

    loaded, reference = vifi_weights.load_prompts(str(path), clip)
    assert reference["ref"] == str(base)
    text = tokenize([f"{n}." for n in NAMES])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(clip, text), learner.encode_text(clip, text), atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(clip, images()), learner.encode_image(clip, images()),
                                   atol=0, rtol=0)


def test_openai_names_are_referenced_with_their_published_hash():
    assert vifi_weights.base_reference("ViT-B/16") == dict(
        ref="ViT-B/16", sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f")


def test_other_files_are_not_prompt_checkpoints(clip, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), path)
    with pytest.raises(ValueError, match=r"weights\.pt: not a prompt checkpoint"):
        vifi_weights.read_prompts(str(path))


def test_prompts_of_another_shape_are_refused(clip, tmp_path):
    learner = prompts.PromptLearner(clip, n_ctx_text=4, depth_text=2, n_ctx_vision=3, depth_vision=2)
    path = tmp_path / "p.pt"
    vifi_weights.save_prompts(str(path), learner, "ViT-B/16")
    payload = torch.load(path, weights_only=True)
    payload["prompts"]["vision.1"] = torch.zeros(3, 99)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"p\.pt: prompts do not fit this CLIP"):
        vifi_weights.load_prompts(str(path), clip)
