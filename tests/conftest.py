"""Shared test fixtures.

The independent reference for CLIP is OpenAI's own code, shipped by the `openai-clip` package on PyPI. Its
`clip/__init__.py` imports `pkg_resources`, which recent setuptools no longer provides, so we load the two files we
need (`clip/model.py`, `clip/simple_tokenizer.py`) directly from the installed package folder.
"""
import importlib.util
import os
import sys

import pytest
import torch

# The method files sit in the repository root, beside the packages plumbing/, world/ and tools/: make them importable
# from tests/.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import clip_model  # noqa: E402
from world import tiny_clip  # noqa: E402

# Two cores on CI: keep intra-op threads bounded so tests behave the same everywhere.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _load_openai_module(name):
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'openai-clip' package is needed for the reference tests (pip install -r requirements.txt)")
    folder = spec.submodule_search_locations[0]
    path = os.path.join(folder, f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"openai_clip_reference_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def openai_model_module():
    """OpenAI's clip/model.py (CLIP, build_model), loaded without the package's __init__."""
    return _load_openai_module("model")


@pytest.fixture(scope="session")
def openai_tokenizer_module():
    """OpenAI's clip/simple_tokenizer.py (SimpleTokenizer)."""
    return _load_openai_module("simple_tokenizer")


@pytest.fixture(scope="module")
def random_tiny_clip(tmp_path_factory):
    """A state-dict file of a CLIP with the embedded world's tiny architecture and random weights: what the train.py
    tests train (they test the machinery, not what it learns)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(clip_model.CLIP(**tiny_clip.TINY_CONFIG).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: a second intra-op thread only adds synchronisation, which on a busy 2-core
    machine was measured to make each forward pass 200x slower (1 ms -> 0.2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_weights(a: dict, b: dict, atol=1e-5, stray=0.0):
    """Two state dicts trained on the same batches, differently split (processes, micro-batches): equal up to the order
    of floating-point sums. Not compared: the key third of attention's in_proj_bias. Softmax ignores a key bias, so its
    gradient is rounding noise, which Adam (normalising by the gradient's size) turns into steps of up to lr.
    stray: the fraction of a tensor's elements allowed outside the tolerance. Any other weight whose gradient happens
    to be ~0 goes the same way; a different batch instead moves most elements."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("attn.in_proj_bias"):
            width = x.shape[0] // 3
            x, y = torch.cat([x[:width], x[2 * width:]]), torch.cat([y[:width], y[2 * width:]])
        if stray:
            off = ~torch.isclose(y, x, atol=atol, rtol=1e-4)
            assert off.float().mean() <= stray, f"{name}: {int(off.sum())} of {off.numel()} elements differ"
        else:
            torch.testing.assert_close(y, x, atol=atol, rtol=1e-4, msg=name)
