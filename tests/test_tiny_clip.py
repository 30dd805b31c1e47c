"""The embedded world's tiny CLIP (tiny_clip.py): no class name's word is a filler token of its pretraining, the packed
checkpoint rebuilds bit-exactly, pretraining is deterministic, and the shipped asset loads by name and knows its world."""
import os

import numpy as np
import pytest
import torch

import clip_model
from tokenizer import default_tokenizer, tokenize
from plumbing import clip_weights
from world import miniworld, tiny_clip


def test_no_class_word_is_a_filler_token():
    """No class name's word and no reserved motion word is a filler token of pretraining."""
    tok, fillers = default_tokenizer(), set(tiny_clip.filler_token_ids().tolist())
    for classes, *_ in miniworld.DATASETS.values():
        for spec in classes:
            assert not set(tok.encode(spec["name"])) & fillers, spec["name"]
    assert not set(tok.encode(" ".join(miniworld.RESERVED_WORDS))) & fillers


def test_pack_unpack_is_bit_exact():
    model = tiny_clip.build_tiny_clip(seed=5)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    state_dict["token_embedding.weight"][[3, 320, 49407]] += 0.25
    packed = tiny_clip.pack_checkpoint(state_dict, init_seed=5)
    assert packed["token_rows"].tolist() == [3, 320, 49407]
    rebuilt = tiny_clip.unpack_checkpoint(packed)
    assert rebuilt.keys() == state_dict.keys()
    assert all(torch.equal(rebuilt[k], state_dict[k]) for k in state_dict)
    packed["token_values"][0, 0] += 1e-6
    with pytest.raises(RuntimeError, match="does not match"):
        tiny_clip.unpack_checkpoint(packed)


def test_pretraining_is_deterministic():
    run = lambda: tiny_clip.pretrain(steps=2, batch=8, warmup=1, seed=0, log=None)  # noqa: E731
    assert tiny_clip.state_dict_sha256(run().state_dict()) == tiny_clip.state_dict_sha256(run().state_dict())


def test_the_shipped_tiny_clip_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("VIFI_CACHE", str(tmp_path))
    assert os.path.getsize(tiny_clip.ASSET) <= 15 * 2**20
    packed = torch.load(tiny_clip.ASSET, map_location="cpu", weights_only=True)
    model = clip_weights.load(miniworld.TINY_CLIP_NAME)
    state_dict = model.state_dict()
    assert tiny_clip.state_dict_sha256(state_dict) == packed["sha256"]
    assert clip_model.model_config(state_dict) == tiny_clip.TINY_CONFIG
    path = tiny_clip.tiny_clip_checkpoint()  # the unpacked file is cached: a second call reuses it
    assert os.path.dirname(path) == str(tmp_path) and tiny_clip.tiny_clip_checkpoint() == path
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # and no temporary file is left beside it
    # It has learned its world: a red circle's still is closer to "a red circle." than to other colours.
    scene = {"background": miniworld.random_background(np.random.default_rng(0)),
             "objects": [dict(miniworld.random_object(np.random.default_rng(1), "red", "circle", "big"),
                              x=0.5, y=0.5)]}
    image = tiny_clip.preprocess(miniworld.render(scene)[None])
    texts = [f"a {c} circle." for c in miniworld.COLOURS]
    with torch.no_grad():
        logits, _ = model(image, tokenize(texts, context_length=state_dict["positional_embedding"].shape[0]))
    assert texts[int(logits.argmax())] == "a red circle."
