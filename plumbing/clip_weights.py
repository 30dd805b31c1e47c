"""CLIP's weights from wherever a user has them: `load(name_or_path)` -> clip_model.CLIP.

  a known name       "ViT-B/16" and the other OpenAI ViTs, downloaded once into $CLIP_CACHE (~/.cache/clip) with
                     their SHA-256 checked; "miniworld-tiny", the embedded world's tiny CLIP (tiny_clip.py)
  TorchScript        OpenAI's own archives (ViT-B-16.pt): the weights are read, their code is not run
  a state dict       torch.save(model.state_dict()) in OpenAI's names
  Hugging Face       an openai/clip-vit-* checkpoint (model.safetensors / pytorch_model.bin, or its folder), renamed

Loading is always strict and every error names the file. None of this is the paper's method: clip_model.py holds the
model, and build_model there reads the architecture off the tensors' shapes.
"""
import hashlib
import http.client
import json
import os
import sys
import urllib.request
import zipfile
from typing import Optional

import torch

from clip_model import OPENAI_METADATA_KEYS, CLIP, build_model, shorten
from world import miniworld, tiny_clip
from plumbing.atomic_files import atomic_write

# ----------------------------------------------------------------------------------------------------------------------
# Loading: names, TorchScript archives, state dicts, Hugging Face checkpoints

# OpenAI's public addresses; the folder name is the file's SHA-256.
_MODELS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/"
                      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def available_models() -> list:
    return list(_MODELS) + [miniworld.TINY_CLIP_NAME]


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("CLIP_CACHE", os.path.join("~", ".cache", "clip")))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    """A known model could not be fetched. The message is one line: which model, from where, why, the file to fetch
    on a machine with internet, and the --clip path (or the cache path) to use instead."""


def download(url: str, root: str, expected_sha256: str, name: Optional[str] = None) -> str:
    """Fetch url into root (once), checking its SHA-256; written to a temporary file and renamed, so an interrupted
    or altered download never leaves a file that looks complete. Prints where the file goes (stderr). A failure
    raises DownloadError, whose one-line message says how to do without the network."""
    os.makedirs(root, exist_ok=True)
    file_name = os.path.basename(url)
    target = os.path.join(root, file_name)
    if os.path.isfile(target):
        if sha256_of(target) == expected_sha256:
            return target
        raise RuntimeError(f"{target}: SHA-256 does not match {expected_sha256}; the cached file is corrupt or "
                           "incomplete, delete it to download again")

    def failed(reason):
        what = f"CLIP {name}" if name else file_name
        reason = " ".join(str(reason).split())  # one line, whatever the network library wrote
        return DownloadError(f"cannot download {what} from {url}: {reason}; offline, fetch {file_name} (SHA-256 "
                             f"{expected_sha256}) on a machine with internet and pass --clip /path/to/{file_name}, "
                             f"or put it at {target}")

    print(f"downloading {f'CLIP {name}' if name else file_name} from {url} to {target}", file=sys.stderr, flush=True)
    with atomic_write(target, tmp=f"{target}.{os.getpid()}.part") as out:  # renamed over target if no error is raised
        try:
            with urllib.request.urlopen(url, timeout=60) as source:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, a cut connection
            raise failed(f"{type(e).__name__}: {e}") from e
        out.flush()
        actual = sha256_of(out.name)  # the file as written, before it takes the final name
        if actual != expected_sha256:
            raise failed(f"downloaded file has SHA-256 {actual}, expected {expected_sha256} (incomplete or altered)")
    return target


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive is a zip with a code/ folder and constants.pkl; torch.save's zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names)


def _read_state_dict(path: str) -> dict:
    """Tensors of a file in any supported format, in the file's own naming."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    if _is_torchscript(path):
        return {k: v for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not a state dict (a dict of tensors)")
    return obj


def _resolve_path(name_or_path: str) -> str:
    if name_or_path in _MODELS:
        url = _MODELS[name_or_path]
        return download(url, cache_dir(), expected_sha256=url.split("/")[-2], name=name_or_path)
    if name_or_path == miniworld.TINY_CLIP_NAME:
        return tiny_clip.tiny_clip_checkpoint()  # unpacked from assets/ on first use
    if os.path.isdir(name_or_path):  # a Hugging Face model folder
        for candidate in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(name_or_path, candidate)):
                return os.path.join(name_or_path, candidate)
        raise FileNotFoundError(f"{name_or_path}: a folder without model.safetensors or pytorch_model.bin")
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: no such file, and not a known model name {available_models()}")
    return name_or_path


def load(name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32) -> CLIP:
    """A CLIP from a known name (available_models(): downloaded once with its SHA-256 checked, or built for the tiny
    one), OpenAI's TorchScript archive, a plain state dict, or a Hugging Face openai/clip-vit-* checkpoint (a
    .safetensors / .bin file or its folder). Loading is always strict. Returns the model in eval mode."""
    path = _resolve_path(name_or_path)
    try:
        state_dict = _read_state_dict(path)
    except Exception as e:  # torch, zipfile, pickle and safetensors all raise their own types for a damaged file
        raise RuntimeError(f"{path}: cannot read weights, the file is truncated or corrupt ({type(e).__name__}: {e})") \
            from None
    if any(k.startswith(("vision_model.", "text_model.")) for k in state_dict):
        _check_hf_activation(path)
        state_dict = convert_hf_state_dict(state_dict, source=path)
    return build_model(state_dict, source=path).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face naming -> OpenAI naming

_HF_LAYER_RENAMES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: Hugging Face's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_HF_BUFFERS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")


def _check_hf_activation(path: str):
    """OpenAI's weights need QuickGELU; a Hugging Face CLIP trained with another activation would load but be wrong."""
    config_path = os.path.join(os.path.dirname(path), "config.json")
    if not os.path.isfile(config_path):
        return
    with open(config_path) as f:
        config = json.load(f)
    for tower in ("vision_config", "text_config"):
        act = config.get(tower, {}).get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise ValueError(f"{config_path}: {tower}.hidden_act is {act!r}; this CLIP uses QuickGELU only")


def convert_hf_state_dict(hf: dict, source: str = "state dict") -> dict:
    """Rename a Hugging Face CLIPModel state dict to OpenAI's names. Hugging Face splits each attention's input
    projection into q/k/v (concatenated back here) and stores the projections as Linear weights ([out, in]; OpenAI
    stores [in, out] matrices)."""
    out, leftover = {}, []
    qkv = {}
    for key, value in hf.items():
        if key in _HF_BUFFERS:
            continue
        if key in _HF_RENAMES:
            out[_HF_RENAMES[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif ".encoder.layers." in key:
            tower, rest = key.split(".encoder.layers.")
            layer, name = rest.split(".", 1)
            prefix = ("visual.transformer" if tower == "vision_model" else "transformer") + f".resblocks.{layer}."
            if name.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                qkv[(prefix, name[10], name.rsplit(".", 1)[1])] = value  # (block, 'q'|'k'|'v', 'weight'|'bias')
                continue
            for old, new in _HF_LAYER_RENAMES.items():
                if name.startswith(old + "."):
                    out[prefix + new + name[len(old):]] = value
                    break
            else:
                leftover.append(key)
        else:
            leftover.append(key)
    for prefix, kind in {(p, k) for (p, _, k) in qkv}:  # each block's weight and bias
        try:
            out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([qkv[(prefix, c, kind)] for c in "qkv"], dim=0)
        except KeyError as e:
            raise ValueError(f"{source}: attention projection missing for {e}") from None
    if leftover:
        raise ValueError(f"{source}: unexpected keys in Hugging Face checkpoint: {shorten(leftover)}")
    return out


def to_hf_state_dict(state_dict: dict) -> dict:
    """The inverse of convert_hf_state_dict, for tests and for users who want to export."""
    inverse = {v: k for k, v in _HF_RENAMES.items()}
    inverse_layer = {v: k for k, v in _HF_LAYER_RENAMES.items()}
    out = {}
    for key, value in state_dict.items():
        if key in OPENAI_METADATA_KEYS:
            continue
        if key in inverse:
            out[inverse[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        else:
            tower = "vision_model" if key.startswith("visual.") else "text_model"
            rest = key.split("resblocks.", 1)[1]
            layer, name = rest.split(".", 1)
            prefix = f"{tower}.encoder.layers.{layer}."
            if name.startswith("attn.in_proj_"):
                kind = name.rsplit("_", 1)[1]
                for c, chunk in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{c}_proj.{kind}"] = chunk.contiguous()
                continue
            for new, old in inverse_layer.items():
                if name.startswith(new + "."):
                    out[prefix + old + name[len(new):]] = value
                    break
    return out
