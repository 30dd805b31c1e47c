"""clip_model.py against OpenAI's own implementation (the `openai-clip` package), on random weights at real shapes.

Every test that compares outputs builds the reference model, copies its weights into ours, and compares. Random
weights are perturbed so that no bias or norm parameter sits at a trivial value (zeros or ones) that could hide a bug.
"""
import copy
import io
import os
import pytest
import torch
import torch.nn.functional as F

import clip_model
from tokenizer import tokenize
from plumbing import clip_weights
from world import miniworld

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
# A small CLIP with the same structure, for the loading and error tests (fast to build, trace and save).
SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)
# OpenAI's released architectures, by their constructor arguments.
RELEASED = {
    "ViT-B/32": dict(VIT_B16, vision_patch_size=32),
    "ViT-B/16": VIT_B16,
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12,
                     transformer_layers=12),
    "ViT-L/14@336px": dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=768,
                           transformer_heads=12, transformer_layers=12),
}


def perturbed_reference(module, config, seed=0):
    torch.manual_seed(seed)
    model = module.CLIP(**config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def texts_with_varied_lengths():
    """Token rows whose end tokens sit at very different positions, including the last one (76)."""
    return tokenize(["a photo of a cat.", "", "a photo of a person doing a cartwheel on the beach at sunset.",
                     " ".join(["word"] * 75)])


@pytest.fixture(scope="module")
def b16_pair(openai_model_module):
    reference = perturbed_reference(openai_model_module, VIT_B16)
    ours = clip_model.build_model(reference.state_dict())
    return reference, ours


@pytest.fixture(scope="module")
def small_pair(openai_model_module):
    reference = perturbed_reference(openai_model_module, SMALL, seed=1)
    ours = clip_model.build_model(reference.state_dict())
    return reference, ours


def small_inputs():
    torch.manual_seed(2)
    return torch.randn(3, 3, 32, 32), texts_with_varied_lengths()


def assert_same_outputs(reference, ours, images, texts, atol=1e-5):
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), atol=atol, rtol=0)
        torch.testing.assert_close(ours.encode_text(texts), reference.encode_text(texts), atol=atol, rtol=0)
        ours_logits, ours_per_text = ours(images, texts)
        ref_logits, ref_per_text = reference(images, texts)
        torch.testing.assert_close(ours_logits, ref_logits, atol=atol * 100, rtol=0)  # logits are scaled by ~14
        torch.testing.assert_close(ours_per_text, ref_per_text, atol=atol * 100, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Parity at ViT-B/16 shapes


def test_vit_b16_state_dict_moves_both_ways_strictly(b16_pair):
    reference, ours = b16_pair
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs, strict=True)


def test_vit_b16_matches_openai_in_fp32(b16_pair):
    reference, ours = b16_pair
    torch.manual_seed(3)
    images = torch.randn(2, 3, 224, 224)
    assert_same_outputs(reference, ours, images, texts_with_varied_lengths())


def test_vit_b16_matches_openai_with_gradients_enabled(b16_pair):
    """Training runs without torch.no_grad; attention kernels may differ from inference, outputs must not."""
    reference, ours = b16_pair
    texts = texts_with_varied_lengths()
    torch.testing.assert_close(ours.encode_text(texts), reference.encode_text(texts), atol=1e-5, rtol=0)


def test_bf16_autocast_is_close_to_fp32(b16_pair):
    """Measured: cosine similarity to fp32 above 0.999 for images and texts, on random ViT-B/16 weights."""
    _, ours = b16_pair
    torch.manual_seed(4)
    images, texts = torch.randn(2, 3, 224, 224), texts_with_varied_lengths()
    with torch.no_grad():
        image_fp32, text_fp32 = ours.encode_image(images), ours.encode_text(texts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_bf16, text_bf16 = ours.encode_image(images), ours.encode_text(texts)
    assert image_bf16.dtype == torch.bfloat16
    assert F.cosine_similarity(image_bf16.float(), image_fp32).min() > 0.999
    assert F.cosine_similarity(text_bf16.float(), text_fp32).min() > 0.999


# ---------------------------------------------------------------------------------------------------------------------
# Architecture inference


@pytest.mark.parametrize("name", list(RELEASED))
def test_build_model_infers_released_architectures(openai_model_module, name):
    with torch.device("meta"):  # shapes only: no memory, no time
        reference = openai_model_module.CLIP(**RELEASED[name])
    assert clip_model.model_config(reference.state_dict()) == RELEASED[name]
    with torch.device("meta"):
        ours = clip_model.CLIP(**clip_model.model_config(reference.state_dict()))
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: v.shape for k, v in reference.state_dict().items()}


def test_small_model_matches_openai(small_pair):
    reference, ours = small_pair
    assert_same_outputs(reference, ours, *small_inputs())


# ---------------------------------------------------------------------------------------------------------------------
# Loading every supported format


def test_load_plain_state_dict(small_pair, tmp_path):
    reference, _ = small_pair
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    assert_same_outputs(reference, clip_weights.load(str(path)), *small_inputs())


def test_load_torchscript_archive_as_openai_distributes_it(small_pair, tmp_path):
    """OpenAI's .pt files are traced TorchScript archives whose state dict also holds three metadata entries."""
    reference = copy.deepcopy(small_pair[0])
    images, texts = small_inputs()
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(reference, name):  # int attributes in OpenAI's class; tensor entries in their archives
            delattr(reference, name)
        reference.register_buffer(name, torch.tensor(value))
    traced = torch.jit.trace(reference, (images, texts), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    assert "input_resolution" in torch.jit.load(str(path)).state_dict()
    assert_same_outputs(reference, clip_weights.load(str(path)), images, texts)


def _hf_model(config):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.CLIPConfig(
        text_config=dict(vocab_size=config["vocab_size"], hidden_size=config["transformer_width"],
                         intermediate_size=4 * config["transformer_width"],
                         num_hidden_layers=config["transformer_layers"],
                         num_attention_heads=config["transformer_heads"],
                         max_position_embeddings=config["context_length"], hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=config["vision_width"], intermediate_size=4 * config["vision_width"],
                           num_hidden_layers=config["vision_layers"], num_attention_heads=config["vision_width"] // 64,
                           image_size=config["image_resolution"], patch_size=config["vision_patch_size"],
                           hidden_act="quick_gelu"),
        projection_dim=config["embed_dim"])
    torch.manual_seed(5)
    model = transformers.CLIPModel(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_load_hugging_face_checkpoint(tmp_path, safe):
    hf = _hf_model(SMALL)
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    if not safe:  # recent transformers write safetensors regardless; make the .bin file the way older ones did
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = clip_weights.load(str(tmp_path))
    images, texts = small_inputs()
    with torch.no_grad():
        out = hf(input_ids=texts, pixel_values=images)
        torch.testing.assert_close(F.normalize(ours.encode_image(images), dim=-1), out.image_embeds, atol=1e-5, rtol=0)
        torch.testing.assert_close(F.normalize(ours.encode_text(texts), dim=-1), out.text_embeds, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(images, texts)[0], out.logits_per_image, atol=1e-4, rtol=0)


def test_hugging_face_conversion_round_trips(small_pair):
    _, ours = small_pair
    state_dict = ours.state_dict()
    back = clip_weights.convert_hf_state_dict(clip_weights.to_hf_state_dict(state_dict))
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


def test_load_returns_fp32_unless_asked(small_pair, tmp_path):
    reference, _ = small_pair
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, path)  # OpenAI ships fp16 weights
    assert clip_weights.load(str(path)).dtype == torch.float32
    model = clip_weights.load(str(path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    images, texts = small_inputs()
    with torch.no_grad():
        assert model.encode_image(images.bfloat16()).dtype == torch.bfloat16
        assert model.encode_text(texts).dtype == torch.bfloat16


def test_known_name_downloads_once_and_checks_the_hash(tmp_path, monkeypatch, small_pair):
    """The download path, exercised with a file:// address instead of OpenAI's server (tests never download)."""
    reference, _ = small_pair
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    digest = __import__("hashlib").sha256(buffer.getvalue()).hexdigest()
    served = tmp_path / "server" / digest / "ViT-tiny.pt"  # OpenAI's addresses are .../<sha256>/<file name>
    served.parent.mkdir(parents=True)
    served.write_bytes(buffer.getvalue())
    monkeypatch.setitem(clip_weights._MODELS, "ViT-tiny", served.as_uri())
    monkeypatch.setenv("CLIP_CACHE", str(tmp_path / "cache"))
    model = clip_weights.load("ViT-tiny")
    assert_same_outputs(reference, model, *small_inputs())
    assert sorted(os.listdir(tmp_path / "cache")) == ["ViT-tiny.pt"]  # no temporary file left behind
    clip_weights.load("ViT-tiny")  # second time: from the cache


# Without the network (tests never leave the machine: 127.0.0.1 and file:// only)

B16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def test_unreachable_server_says_in_one_line_how_to_work_offline(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:9/{B16_SHA}/ViT-B-16.pt"  # port 9 (discard): nothing listens, refused at once
    monkeypatch.setitem(clip_weights._MODELS, "ViT-B/16", url)
    monkeypatch.setenv("CLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(clip_weights.DownloadError) as failure:
        clip_weights.load("ViT-B/16")
    message = str(failure.value)
    assert "\n" not in message and isinstance(failure.value, RuntimeError)
    assert message.startswith(f"cannot download CLIP ViT-B/16 from {url}: URLError")
    assert f"fetch ViT-B-16.pt (SHA-256 {B16_SHA})" in message
    assert "pass --clip /path/to/ViT-B-16.pt" in message
    assert f"or put it at {tmp_path / 'cache' / 'ViT-B-16.pt'}" in message
    assert os.listdir(tmp_path / "cache") == []


def serve_once(body: bytes, length: int):
    """A local HTTP server that announces `length` bytes, sends `body` and closes: a connection cut mid-download."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("how", ["connection cut", "truncated file"])
def test_partial_download_never_becomes_the_cached_file(tmp_path, how):
    weights = os.urandom(200_000)
    digest = __import__("hashlib").sha256(weights).hexdigest()
    cache = tmp_path / "cache"
    if how == "connection cut":
        server, thread = serve_once(weights[:50_000], len(weights))
        url = f"http://127.0.0.1:{server.server_address[1]}/{digest}/ViT-x.pt"
    else:
        served = tmp_path / "server" / digest / "ViT-x.pt"
        served.parent.mkdir(parents=True)
        served.write_bytes(weights[:50_000])
        url = served.as_uri()
    try:
        with pytest.raises(clip_weights.DownloadError, match=r"cannot download ViT-x\.pt from .*: "
                           r"(IncompleteRead|downloaded file has SHA-256 \w+, expected " + digest + ")"):
            clip_weights.download(url, str(cache), expected_sha256=digest)
    finally:
        if how == "connection cut":
            thread.join(10)
            server.server_close()
    assert os.listdir(cache) == []  # neither the cached name nor a temporary file


def test_fetching_a_model_prints_where_it_is_cached(tmp_path, capsys):
    served = tmp_path / "w.pt"
    served.write_bytes(b"weights")
    digest = __import__("hashlib").sha256(b"weights").hexdigest()
    target = clip_weights.download(served.as_uri(), str(tmp_path / "cache"), expected_sha256=digest, name="ViT-w")
    assert target == str(tmp_path / "cache" / "w.pt")
    assert f"downloading CLIP ViT-w from {served.as_uri()} to {target}" in capsys.readouterr().err
    clip_weights.download(served.as_uri(), str(tmp_path / "cache"), expected_sha256=digest, name="ViT-w")
    assert capsys.readouterr().err == ""  # cached: nothing fetched, nothing printed


def test_available_models_lists_openai_vits_and_the_tiny_world():
    names = clip_weights.available_models()
    assert {"ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px", miniworld.TINY_CLIP_NAME} <= set(names)


# ---------------------------------------------------------------------------------------------------------------------
# Errors name the file and say what is wrong


def test_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="no/such/weights.pt"):
        clip_weights.load("no/such/weights.pt")


def test_truncated_file_is_named(small_pair, tmp_path):
    reference, _ = small_pair
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    path = tmp_path / "truncated.pt"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(RuntimeError, match=r"truncated\.pt: cannot read weights, the file is truncated or corrupt"):
        clip_weights.load(str(path))


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RuntimeError, match=r"garbage\.pt: cannot read weights"):
        clip_weights.load(str(path))


def test_cached_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_CACHE", str(tmp_path))
    (tmp_path / "ViT-B-16.pt").write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match=r"ViT-B-16\.pt: SHA-256 does not match 5806e77c"):
        clip_weights.load("ViT-B/16")


def test_download_with_wrong_hash_is_refused_and_leaves_nothing(tmp_path):
    served = tmp_path / "file.pt"
    served.write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=r"file\.pt: downloaded file has SHA-256 .*, expected 0000"):
        clip_weights.download(served.as_uri(), str(cache), expected_sha256="0" * 64)
    assert os.listdir(cache) == []


def test_unknown_architecture_is_named(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"resnet\.pt: this is a ResNet CLIP checkpoint"):
        clip_weights.load(str(path))
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"other\.pt: unknown architecture"):
        clip_weights.load(str(path))


def test_missing_and_unexpected_keys_are_listed(small_pair, tmp_path):
    reference, _ = small_pair
    state_dict = dict(reference.state_dict())
    del state_dict["visual.ln_post.bias"]
    state_dict["visual.extra"] = torch.zeros(1)
    path = tmp_path / "mismatch.pt"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"mismatch\.pt: weights do not fit .*missing keys \['visual\.ln_post\.bias'\]"
                                         r".*unexpected keys \['visual\.extra'\]"):
        clip_weights.load(str(path))


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(RuntimeError, match=r"list\.pt: .*not a state dict"):
        clip_weights.load(str(path))


def test_hugging_face_clip_with_another_activation_is_refused(tmp_path):
    hf = _hf_model(SMALL)
    hf.config.vision_config.hidden_act = "gelu"
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json: vision_config\.hidden_act is 'gelu'"):
        clip_weights.load(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# Training-time features


def test_activation_checkpointing_gives_same_outputs_and_gradients(small_pair):
    _, ours = small_pair
    images, texts = small_inputs()

    def loss_and_grads():
        ours.zero_grad()
        logits, _ = ours(images, texts)
        logits.logsumexp(-1).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}

    plain_logits, plain_grads = loss_and_grads()
    ours.set_grad_checkpointing(True)
    try:
        ckpt_logits, ckpt_grads = loss_and_grads()
    finally:
        ours.set_grad_checkpointing(False)
        ours.zero_grad()
    torch.testing.assert_close(ckpt_logits, plain_logits)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5)


def test_text_is_cut_after_the_last_end_token(small_pair, monkeypatch):
    """The shortcut is invisible in the output (checked against OpenAI above) and really shortens the sequence."""
    _, ours = small_pair
    lengths = []
    original = ours.transformer.forward
    monkeypatch.setattr(ours.transformer, "forward", lambda x, *a, **kw: lengths.append(x.shape[1]) or original(x, *a, **kw))
    with torch.no_grad():
        ours.encode_text(tokenize(["a photo of a cat.", "a dog."]))
    assert lengths == [8]  # <sot> a photo of a cat . <eot>


def test_last_layer_computes_only_the_token_each_tower_reads(small_pair):
    """The last layer's MLP sees the class token / the end token only; earlier layers see every position."""
    _, ours = small_pair
    images, texts = small_inputs()
    shapes, handles = {}, []
    for name, transformer in (("vision", ours.visual.transformer), ("text", ours.transformer)):
        for i in (0, transformer.layers - 1):
            hook = (lambda key: lambda module, args: shapes.__setitem__(key, tuple(args[0].shape)))((name, i))
            handles.append(transformer.resblocks[i].mlp.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            ours.encode_image(images), ours.encode_text(texts)
    finally:
        for handle in handles:
            handle.remove()
    assert shapes == {("vision", 0): (3, 17, 64), ("vision", 1): (3, 64),
                      ("text", 0): (4, 77, 64), ("text", 1): (4, 64)}


@pytest.mark.parametrize("causal", [False, True])
def test_a_layer_at_one_position_is_the_full_layer_there_with_the_same_gradients(small_pair, causal):
    """block_at against the full layer's output taken at the same position, a different position per sequence (as
    the text tower's end tokens), in values and in the gradients of input and weights."""
    _, ours = small_pair
    block = copy.deepcopy(ours.transformer.resblocks[0])
    torch.manual_seed(7)
    x = torch.randn(3, 9, 64, requires_grad=True)
    position = torch.tensor([4, 8, 0])  # [N]

    def output_and_grads(at_position):
        block.zero_grad()
        x.grad = None
        y = clip_model.block_at(block, x, position, causal) if at_position else block(x, causal)[range(3), position]
        y.pow(2).sum().backward()
        return y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()}

    y_full, dx_full, dw_full = output_and_grads(False)
    y_at, dx_at, dw_at = output_and_grads(True)
    assert y_at.shape == (3, 64)
    torch.testing.assert_close(y_at, y_full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dx_at, dx_full, atol=1e-5, rtol=1e-4)
    for name in dw_full:
        torch.testing.assert_close(dw_at[name], dw_full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradients_match_openai(small_pair):
    """Training: every parameter's gradient equals the reference's (the last-layer shortcut, the fused QuickGELU and
    scaled_dot_product_attention included)."""
    reference, ours = small_pair
    images, texts = small_inputs()
    grads = []
    for model in (reference, ours):
        model.zero_grad()
        logits_per_image, _ = model(images, texts)
        logits_per_image.log_softmax(dim=-1).diagonal().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_quick_gelu_is_x_times_sigmoid_of_1702x():
    """The silu form computes OpenAI's function, x * sigmoid(1.702 x), and its gradient."""
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    y = clip_model.QuickGELU()(x)
    expected = x * torch.sigmoid(1.702 * x)
    torch.testing.assert_close(y, expected, atol=1e-14, rtol=1e-12)
    grad, = torch.autograd.grad(y.sum(), x)
    expected_grad, = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, expected_grad, atol=1e-14, rtol=1e-12)


def test_prompt_hook_with_no_tokens_is_plain_clip(small_pair):
    _, ours = small_pair
    images, texts = small_inputs()
    empty = torch.zeros(0, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, prompts=empty, deep_prompts=[]),
                                   ours.encode_image(images), atol=0, rtol=0)
        torch.testing.assert_close(ours.encode_text(texts[:3], prompts=empty), ours.encode_text(texts[:3]),
                                   atol=0, rtol=0)


def test_prompt_hook_replaces_prompt_positions_at_deeper_layers(small_pair):
    """Deep prompts replace the running prompt tokens before layer 1, so they change the output. (prompts.py's tests
    check the exact semantics: depth d changes layers up to d only.)"""
    _, ours = small_pair
    images, texts = small_inputs()
    torch.manual_seed(6)
    prompts, deep = torch.randn(3, 64), [torch.randn(3, 64)]
    with torch.no_grad():
        with_deep = ours.encode_image(images, prompts=prompts, deep_prompts=deep)
        without = ours.encode_image(images, prompts=prompts)
        assert not torch.allclose(with_deep, without)
        text_out = ours.encode_text(texts[:3], prompts=prompts, deep_prompts=deep)
        assert text_out.shape == (3, 32)
    with pytest.raises(ValueError, match="at most layers - 1"):
        ours.encode_image(images, prompts=prompts, deep_prompts=deep * 2)
    with pytest.raises(ValueError, match="do not fit in 77 positions"):
        ours.encode_text(texts[3:], prompts=prompts)  # that text already ends at position 76


# ---------------------------------------------------------------------------------------------------------------------
# Attention maps (notebook 8, paper Fig. 4)


def test_last_layer_attention_rows_sum_to_one_and_leave_encode_image_unchanged(small_pair):
    _, ours = small_pair
    images, _ = small_inputs()
    with torch.no_grad():
        before = ours.encode_image(images)
    attention = clip_model.last_layer_attention(ours, images)
    L = 1 + (ours.visual.input_resolution // ours.visual.patch_size) ** 2
    assert attention.shape == (len(images), ours.visual.transformer.resblocks[-1].attn.heads, L, L)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    assert not ours.visual.transformer.resblocks[-1]._forward_pre_hooks  # the hook is removed
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), before, atol=0, rtol=0)


def test_last_layer_attention_matches_openai_attention_weights(b16_pair):
    """The recomputed weights are those nn.MultiheadAttention returns in OpenAI's model (12 heads at ViT-B/16)."""
    reference, ours = b16_pair
    torch.manual_seed(5)
    images = torch.randn(2, 3, 224, 224)
    block, inputs = reference.visual.transformer.resblocks[-1], []
    hook = block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        with torch.no_grad():
            reference.encode_image(images)
            x = block.ln_1(inputs[0])  # [L, N, W]: OpenAI's layout is sequence-first
            _, expected = block.attn(x, x, x, need_weights=True, average_attn_weights=False)  # [N, heads, L, L]
    finally:
        hook.remove()
    torch.testing.assert_close(clip_model.last_layer_attention(ours, images), expected, atol=1e-5, rtol=1e-4)


def test_a_transformer_read_at_one_position_per_sequence_is_the_full_one_there(small_pair):
    """Transformer(x, read) computes the last layer at one position per sequence only: the values of every layer run
    at every position, read there."""
    _, ours = small_pair
    torch.manual_seed(8)
    x, read = torch.randn(3, 9, 64), torch.tensor([8, 0, 3])
    with torch.no_grad():
        full = x
        for block in ours.transformer.resblocks:
            full = block(full, causal=True)  # [3, 9, 64]
        torch.testing.assert_close(ours.transformer(x, read, causal=True), full[range(3), read], atol=1e-6, rtol=1e-5)
