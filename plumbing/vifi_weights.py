"""ViFi-CLIP's weights from wherever a user has them: `load_weights(model, path)` fills a vifi.ViFiCLIP.

  the authors' released checkpoints   their ViFi-CLIP and prompt models (.pth), unpickled safely and renamed
  our own runs                        train.py's best.pt / last.pt (the trainable parameters, whole parts)
  prompt checkpoints                  save_prompts' files (the prompts and a SHA-256 reference to the bridged model)
  OpenAI state dicts                  a CLIP in OpenAI's names (clip_weights.py reads every other CLIP format)
  Hugging Face folders                hf_export.py's (with their classes, templates, pixel statistics and prompts),
                                      or any openai/clip-vit-* folder (load_hugging_face)

`load_model(name, file or folder, class_names)` builds a ready ViFiCLIP from any of them (classify_video.py and
hf_export.py take their weights through it). A file loads whole or not at all, and every error names the file. Not
the paper's method: vifi.py is the model.

The authors' released checkpoints (load_authors_checkpoint, load_weights): a .pth whose "model" entry is the
state dict of their DistributedDataParallel-wrapped model. Key mapping (after removing their "module." prefix):

  authors' key                                                ours (ViFiCLIP state dict)
  image_encoder.<k>  (conv1, class_embedding, positional_      clip.visual.<k>
      embedding, ln_pre, transformer.resblocks.{i}.{attn,
      ln_1, mlp, ln_2}, ln_post, proj)
  image_encoder.VPT                                           prompts.vision.0
  image_encoder.transformer.resblocks.{i}.VPT_shallow, i>=1   prompts.vision.{i}
  text_encoder.<k>  (positional_embedding, transformer.       clip.<k>
      resblocks.{i}.*, ln_final, text_projection)
  prompt_learner.ctx                                          prompts.text.0
  text_encoder.transformer.resblocks.{i}.VPT_shallow, i>=1    prompts.text.{i}
  logit_scale                                                 clip.logit_scale
  prompt_learner.complete_text_embeddings, .token_prefix,     ignored: token embeddings of *their* class prompts;
      .token_suffix                                           ours are computed from the class names given
  (absent)                                                    clip.token_embedding.weight, from the base CLIP

Every other key is an error, and every CLIP weight but the token embeddings must be in the file. Those files also
pickle the training config (a yacs CfgNode), so torch.load(weights_only=True) refuses them; read_checkpoint
unpickles them with an allow-list (tensors, plain containers; the config is replaced by an empty stand-in) and
refuses anything else by name. The released models were trained on frames normalised with ImageNet's mean/std
(data.NORMS["imagenet"]), not CLIP's: models loaded from them carry normalization="imagenet", which classify uses.
"""
import copy
import json
import os
import pickle
import re
import zipfile
from typing import NamedTuple, Optional, Sequence, Union

import torch

import clip_model
import data
import prompts as prompts_module
from clip_model import CLIP, shorten
from vifi import ViFiCLIP
from plumbing import clip_weights
from plumbing.atomic_files import atomic_write

# ----------------------------------------------------------------------------------------------------------------------
# Reading checkpoints that pickle more than tensors, safely


class UnsafeCheckpointError(pickle.UnpicklingError):
    pass


class DroppedConfig(dict):
    """Stands in for the authors' pickled yacs CfgNode: it is built and filled by the unpickler, keeps nothing, and no
    code of the original class runs."""

    original_class = "yacs.config.CfgNode"

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass


# What a checkpoint may contain: tensors (torch's rebuild functions; storages are resolved by torch.load itself),
# containers and bytes. Nothing here can run code of the file's choosing.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("builtins", "set"), ("builtins", "frozenset"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes objects
}
_DROPPED_GLOBALS = {("yacs.config", "CfgNode"): DroppedConfig}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        module = {"__builtin__": "builtins"}.get(module, module)  # Python 2 names, which protocol 2 writes
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) in _DROPPED_GLOBALS:
            return _DROPPED_GLOBALS[(module, name)]
        raise UnsafeCheckpointError(f"refusing to unpickle {module}.{name}: a checkpoint may hold only tensors, "
                                    "plain containers and a yacs config")


class _restricted_pickle:
    """The pickle-module interface torch.load(pickle_module=...) uses, with the allow-list above."""
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path: str):
    """Unpickle a checkpoint that may contain the authors' yacs config (replaced by an empty DroppedConfig) besides
    tensors and plain containers; anything else is refused with UnsafeCheckpointError naming the file and the class.
    Zip checkpoints are memory-mapped, so tensors that are not used (optimizer state) are never read from disk."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle,
                          mmap=zipfile.is_zipfile(path))
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception:  # torch, zipfile and pickle raise their own types for a damaged file
        raise RuntimeError(f"{path} is truncated or corrupt (not a complete checkpoint)") from None


def _model_entry(checkpoint) -> dict:
    """The state dict inside a training checkpoint ({"model": ..., "optimizer": ..., ...}), or the dict itself."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"not a checkpoint dict but a {type(checkpoint).__name__}")
    return checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# The authors' checkpoints (mapping table in the module docstring)

_AUTHORS_IGNORED = ("prompt_learner.complete_text_embeddings", "prompt_learner.token_prefix",
                    "prompt_learner.token_suffix")
# Their CTX_INIT in every config they ship (and their default); the file's own copy of the config is not read.
_AUTHORS_CTX_INIT = "a photo of a"
_AUTHORS_DEEP_PROMPT = re.compile(r"(image|text)_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")


def is_authors_state_dict(state_dict: dict) -> bool:
    return any(k.startswith(("module.image_encoder.", "image_encoder.")) for k in state_dict)


def convert_authors_state_dict(state_dict: dict, source: str = "state dict") -> tuple:
    """The authors' ViFiCLIP state dict -> (CLIP state dict in OpenAI's names without token_embedding.weight,
    PromptLearner state dict, PromptLearner config). Unknown keys are an error.

    Their prompt learner starts the text tokens from the words of CTX_INIT when there are at most 4 of them (the
    tokens of "a photo of a"), and builds every class prompt as "<sot> [ctx] rest {name}.": with 2 tokens the rest
    is "of a", kept as fixed words; with 4 or more (random start) nothing. prompts.PromptLearner does the same from
    ctx_init, which the config therefore carries."""
    clip_sd, layers, unknown = {}, {"text": {}, "vision": {}}, []
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key  # DistributedDataParallel's prefix
        deep = _AUTHORS_DEEP_PROMPT.fullmatch(k)
        if k in _AUTHORS_IGNORED:
            continue
        if k == "prompt_learner.ctx":
            layers["text"][0] = value
        elif k == "image_encoder.VPT":
            layers["vision"][0] = value
        elif deep:
            layers["text" if deep.group(1) == "text" else "vision"][int(deep.group(2))] = value
        elif k.startswith("image_encoder."):
            clip_sd["visual." + k[len("image_encoder."):]] = value
        elif k.startswith("text_encoder."):
            clip_sd[k[len("text_encoder."):]] = value
        elif k == "logit_scale":
            clip_sd[k] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: keys that are not part of the authors' ViFi-CLIP: {shorten(unknown)}")
    config, prompt_sd = dict(ctx_init=_AUTHORS_CTX_INIT), {}
    for tower, found in layers.items():
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"{source}: {tower} prompts at layers {sorted(found)}; expected layers 0 .. d-1")
        widths = {v.shape for v in found.values()}
        if len(widths) > 1:
            raise ValueError(f"{source}: {tower} prompts of different shapes {widths}")
        config[f"n_ctx_{tower}"] = found[0].shape[0] if found else 0
        config[f"depth_{tower}"] = len(found)
        prompt_sd.update({f"{tower}.{i}": v for i, v in found.items()})
    return clip_sd, prompt_sd, config


def load_authors_checkpoint(path: str, class_names: Sequence[str], base: Union[str, CLIP] = "ViT-B/16",
                            **kwargs) -> ViFiCLIP:
    """A ViFiCLIP with the weights of one of the authors' released checkpoints (fine-tuned, or prompt-tuned: the
    prompt settings are read off the tensors), loaded as load_weights loads them. The token embeddings come from
    `base` (their files do not hold them; all their models are ViT-B/16). kwargs go to ViFiCLIP and override what
    the file implies (e.g. ctx_init=None for a model trained without CTX_INIT; see convert_authors_state_dict);
    defaults train_mode="none", normalization="imagenet"."""
    return _authors_model(read_checkpoint(path), path, class_names, base, **kwargs)


def _authors_model(checkpoint, path: str, class_names: Sequence[str], base: Union[str, CLIP], **kwargs) -> ViFiCLIP:
    if not is_authors_state_dict(_model_entry(checkpoint)):
        raise ValueError(f"{path}: not one of the authors' checkpoints (no image_encoder weights)")
    _, _, prompt_config = convert_authors_state_dict(_model_entry(checkpoint), path)
    clip = clip_weights.load(base) if isinstance(base, str) else copy.deepcopy(base)
    model = ViFiCLIP(clip, class_names, **{"train_mode": "none", **prompt_config, **kwargs})  # kwargs win
    _load_checkpoint(model, checkpoint, path)
    model.normalization = kwargs.get("normalization", model.normalization)  # given explicitly: it stands
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Starting a model from a checkpoint, and prompt checkpoints


class Loaded(NamedTuple):
    """What load_weights found in a file and did."""
    format: str  # "authors", "openai", "prompts" or "ours" (load_weights' table)
    keys: list  # the names loaded (the model's state-dict names), sorted
    normalization: Optional[str]  # the pixel statistics the weights expect, now model.normalization; None: unsaid


def load_weights(model: ViFiCLIP, path: str) -> Loaded:
    """Copy the weights of a checkpoint into `model` (train.py --init-from; the bridged model of bridge and prompt),
    strictly: what the file is must load whole, or nothing loads. Returns Loaded(format, keys, normalization).

      format   the file                             what it must hold
      authors  the authors' checkpoint              every CLIP weight but the token embeddings (their files have none)
      openai   a CLIP state dict in OpenAI's names  every CLIP weight
      prompts  a prompt checkpoint (save_prompts)   exactly the model's prompts
      ours     our names ("clip.*", "prompts.*")    whole parts: any part it has a weight of, it has all of

    The parts: the image tower, the text tower, logit_scale, the token embeddings, the text prompts, the vision
    prompts (the authors' prompts too are parts: every prompted layer of the model, or none). Parts are the unit
    because our own checkpoints are partial by design: train.py saves the trainable parameters only (a prompt run's
    best.pt holds just the prompts; a fine-tuned one everything but the frozen token embeddings), and a bridged
    model's prompts start fresh (Sec. 5: bridge with a fine-tuned model, then prompt). What a file has no part of
    keeps its values. An empty file, unknown keys, a wrong shape or a missing weight is an error naming the file
    and the keys, raised before anything is copied.

    The weights' pixel statistics come with them, into model.normalization (which classify uses): ImageNet's for
    the authors' checkpoints (their data pipeline normalised with them), CLIP's for OpenAI's CLIP, the run's
    --normalization for train.py's checkpoints (their "config"); a prompt checkpoint, or our names without a config,
    leave it as it is (Loaded.normalization None)."""
    return _load_checkpoint(model, read_checkpoint(path), path)


def _part(key: str) -> str:
    """The part of a ViFiCLIP a state-dict name belongs to (load_weights loads whole parts)."""
    for prefix in ("clip.visual.", "prompts.text.", "prompts.vision."):
        if key.startswith(prefix):
            return prefix
    return key if key in ("clip.logit_scale", "clip.token_embedding.weight") else "clip.text tower"


@torch.no_grad()
def _load_checkpoint(model: ViFiCLIP, checkpoint, path: str) -> Loaded:
    own, normalization = model.state_dict(), None
    if isinstance(checkpoint, dict) and checkpoint.get("format") == PROMPT_CHECKPOINT_FORMAT:
        form, state_dict = "prompts", {f"prompts.{k}": v for k, v in checkpoint["prompts"].items()}
        required = [k for k in own if k.startswith("prompts.")]
    else:
        state_dict = _model_entry(checkpoint)
        if is_authors_state_dict(state_dict):
            form, normalization = "authors", "imagenet"
            clip_sd, prompt_sd, _ = convert_authors_state_dict(state_dict, path)
            state_dict = {**{f"clip.{k}": v for k, v in clip_sd.items()},
                          **{f"prompts.{k}": v for k, v in prompt_sd.items()}}
            required = [k for k in own if k.startswith("clip.") and k != "clip.token_embedding.weight"]
        elif any(k.startswith(("clip.", "prompts.")) for k in state_dict):
            form, required, config = "ours", [], checkpoint.get("config")
            if isinstance(config, dict) and config.get("normalization") in data.NORMS:
                normalization = config["normalization"]  # the run's (train.py saves its configuration)
        else:  # a CLIP in OpenAI's names (or nothing at all)
            form, normalization = "openai", "clip"
            state_dict = {f"clip.{k}": v for k, v in state_dict.items() if k not in clip_model.OPENAI_METADATA_KEYS}
            required = [k for k in own if k.startswith("clip.")]
    unexpected = [k for k in state_dict if k not in own]
    if unexpected:
        raise ValueError(f"{path}: keys this model does not have (check the prompt settings): {shorten(unexpected)}")
    parts = {_part(k) for k in state_dict}
    missing = [k for k in own if k not in state_dict and (k in required or _part(k) in parts)]
    if missing or not state_dict:
        what = "holds none of this model's weights" if not state_dict else "is incomplete, nothing was loaded"
        raise ValueError(f"{path}: {what}; missing {shorten(missing)}")
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, this model's is {tuple(own[k].shape)}")
    for k, v in state_dict.items():
        own[k].copy_(v)  # state_dict() tensors share storage with the parameters
    model.normalization = normalization or model.normalization
    return Loaded(form, sorted(state_dict), normalization)


def _load_base(ref: Union[str, CLIP]) -> tuple:
    """-> (CLIP, normalization) for a bridged model: a CLIP, an authors' checkpoint, or anything clip_weights.load
    reads."""
    if isinstance(ref, CLIP):
        return ref, None
    if os.path.isfile(ref):
        try:
            checkpoint = read_checkpoint(ref)
            authors = is_authors_state_dict(_model_entry(checkpoint))
        except (pickle.UnpicklingError, RuntimeError, ValueError):  # TorchScript, safetensors...: clip_model's job
            authors = False
        if authors:  # its prompts, if it has any, are not used: a base is the bridged CLIP
            return _authors_model(checkpoint, ref, ["-"], "ViT-B/16").clip, "imagenet"
    return clip_weights.load(ref), "clip"


# ----------------------------------------------------------------------------------------------------------------------
# Prompt checkpoints (bridge and prompt, Sec. 5): the prompts, their configuration, and which bridged model they belong to

PROMPT_CHECKPOINT_FORMAT = "vifi-clip prompts v1"


def base_reference(base_model: str) -> dict:
    """What a prompt checkpoint records about the model the prompts were trained on: the name or path as given, and
    its SHA-256 when it can be known without downloading (OpenAI's names carry it; files are hashed)."""
    sha256 = None
    if base_model in clip_weights._MODELS:
        sha256 = clip_weights._MODELS[base_model].split("/")[-2]  # OpenAI's addresses are .../<sha256>/<file>
    elif os.path.isfile(base_model):
        sha256 = clip_weights.sha256_of(base_model)
    return dict(ref=base_model, sha256=sha256)


def save_prompts(path: str, learner: prompts_module.PromptLearner, base_model: str):
    """Write the prompt tensors, the learner's configuration and a reference to the bridged model (base_reference),
    atomically (atomic_files.py)."""
    payload = dict(format=PROMPT_CHECKPOINT_FORMAT, config=learner.config(),
                   prompts={k: v.detach().cpu().clone() for k, v in learner.state_dict().items()},
                   base_model=base_reference(base_model))
    with atomic_write(path) as f:
        torch.save(payload, f)


def read_prompts(path: str) -> dict:
    """The content of a prompt checkpoint: dict(format, config, prompts, base_model). Loaded with
    weights_only=True (tensors and plain containers only)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read a prompt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != PROMPT_CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a prompt checkpoint (no format {PROMPT_CHECKPOINT_FORMAT!r})")
    return payload


def load_prompts(path: str, clip: CLIP) -> tuple:
    """-> (prompts.PromptLearner for `clip` with the saved tensors, base_model reference dict). Strict: the saved
    tensors must be exactly the learner's, with the learner's shapes."""
    payload = read_prompts(path)
    learner = prompts_module.PromptLearner(clip, **payload["config"])
    try:
        learner.load_state_dict(payload["prompts"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: prompts do not fit this CLIP: {e}") from None
    return learner, payload["base_model"]


def load_prompted(path: str, class_names: Sequence[str], base: Union[str, CLIP, None] = None, verify: bool = True,
                  **kwargs) -> ViFiCLIP:
    """A ViFiCLIP from a prompt checkpoint (save_prompts): the bridged model it references (or `base`: a
    name, a path or a CLIP), with the saved prompts. When the reference recorded a SHA-256 and the base is a file,
    the file must match it (verify=False skips the check). kwargs go to ViFiCLIP (default train_mode="none")."""
    payload = read_prompts(path)
    reference = payload["base_model"]
    base = reference["ref"] if base is None else base
    if verify and isinstance(base, str) and os.path.isfile(base) and reference.get("sha256"):
        actual = clip_weights.sha256_of(base)
        if actual != reference["sha256"]:
            raise ValueError(f"{path}: its prompts were trained on {reference['ref']} (SHA-256 "
                             f"{reference['sha256'][:12]}...), but {base} has SHA-256 {actual[:12]}...; pass "
                             "verify=False to use it anyway")
    clip, normalization = _load_base(base)
    kwargs = dict(dict(train_mode="none"), **kwargs)
    if normalization is not None:
        kwargs.setdefault("normalization", normalization)
    model = ViFiCLIP(clip, class_names, **payload["config"], **kwargs)
    try:
        model.prompts.load_state_dict(payload["prompts"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: prompts do not fit the base model: {e}") from None
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face folders (hf_export.py writes them), and any ViFi-CLIP by name, file or folder

HF_EXPORT_FORMAT = "vifi-clip hugging face export v1"
HF_EXPORT_FILE = "vifi_clip.json"  # what transformers does not read: classes, templates, frames, pixel statistics
HF_PROMPTS_FILE = "prompts.safetensors"  # a prompt-learned model's prompts (Sec. 5), beside the bridged CLIP


def _folder_normalization(folder: str) -> str:
    """The pixel statistics of a Hugging Face folder's preprocessor_config.json ("clip" when it has none, or others)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return "clip"
    with open(path) as f:
        mean = json.load(f).get("image_mean")
    for name, (norm_mean, _) in data.NORMS.items():
        if isinstance(mean, list) and len(mean) == 3 and all(abs(a - b) < 1e-6 for a, b in zip(mean, norm_mean)):
            return name
    return "clip"


def read_hugging_face_export(folder: str) -> dict:
    """The content of an exported folder's vifi_clip.json ({} for a plain Hugging Face CLIP folder)."""
    path = os.path.join(folder, HF_EXPORT_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != HF_EXPORT_FORMAT:
        raise ValueError(f"{path}: not a ViFi-CLIP export (no format {HF_EXPORT_FORMAT!r})")
    return meta


def load_hugging_face(folder: str, class_names: Optional[Sequence[str]] = None, **kwargs) -> ViFiCLIP:
    """A ViFiCLIP from a Hugging Face CLIP folder: ours (hf_export.py: its classes, templates, fusion, pixel
    statistics and prompts come back with it) or any openai/clip-vit-* one (the pixel statistics of its
    preprocessor_config.json). class_names default to those the export records; kwargs go to ViFiCLIP (default
    train_mode="none")."""
    clip = clip_weights.load(folder)
    meta = read_hugging_face_export(folder)
    names = list(class_names or meta.get("class_names") or [])
    if not names:
        raise ValueError(f"{folder}: no class names recorded with these weights; give the classes to score")
    prompt_config = meta.get("prompts") or {}
    options = dict(train_mode="none", templates=meta.get("templates"), fusion=meta.get("fusion", "embedding"),
                   normalization=meta.get("normalization") or _folder_normalization(folder), **prompt_config)
    model = ViFiCLIP(clip, names, **{**options, **kwargs})
    if prompt_config:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = os.path.join(folder, HF_PROMPTS_FILE)
        try:
            model.prompts.load_state_dict(load_file(path), strict=True)
        except (OSError, SafetensorError, RuntimeError) as e:
            raise ValueError(f"{path}: the prompts of {HF_EXPORT_FILE} cannot be loaded "
                             f"({type(e).__name__}: {' '.join(str(e).split())})") from None
    return model


class LoadedModel(NamedTuple):
    """What load_model found."""
    model: ViFiCLIP
    format: str  # "hugging face", "name" (a CLIP by name), "openai", "authors", "prompts" or "ours"
    config: Optional[dict]  # our run's configuration (train.py's config.json), an export's vifi_clip.json, or None


def load_model(ref: str, class_names: Optional[Sequence[str]] = None, base: Optional[str] = None,
               **kwargs) -> LoadedModel:
    """Any ViFi-CLIP this project can load, ready to evaluate (train_mode="none"), scoring `class_names`:

      a folder          a Hugging Face CLIP folder (load_hugging_face; class_names default to the export's)
      a name            a CLIP clip_weights.load knows ("ViT-B/16", "miniworld-tiny"): vanilla CLIP
      our best.pt ...   train.py's checkpoints, rebuilt from their run's configuration: its CLIP (or `base`), its
                        --init-from (the bridged model of a prompt run), its template, fusion and prompt settings
      the authors' .pth their released models; the token embeddings their files lack come from `base` (ViT-B/16)
      a prompt file     save_prompts' checkpoint, on the bridged model it references (or `base`)
      any other file    a CLIP as clip_weights.load reads it (OpenAI's archives, state dicts, safetensors)

    kwargs go to ViFiCLIP. Errors are ValueError / FileNotFoundError / RuntimeError whose one line names the file."""
    if os.path.isdir(ref):
        return LoadedModel(load_hugging_face(ref, class_names, **kwargs), "hugging face",
                           read_hugging_face_export(ref) or None)
    names = list(class_names or [])
    if not names:
        raise ValueError(f"{ref}: give the class names to score")
    kwargs = dict(dict(train_mode="none"), **kwargs)
    if not os.path.isfile(ref):  # a name (clip_weights.load says what it knows when it is not one)
        return LoadedModel(ViFiCLIP(clip_weights.load(ref), names, **kwargs), "name", None)
    try:
        checkpoint = read_checkpoint(ref)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, ValueError):  # TorchScript, safetensors...: clip_weights' job
        checkpoint = None
    if isinstance(checkpoint, dict) and checkpoint.get("format") == PROMPT_CHECKPOINT_FORMAT:
        return LoadedModel(load_prompted(ref, names, base=base, **kwargs), "prompts", None)
    entry = _model_entry(checkpoint) if isinstance(checkpoint, dict) else {}
    if is_authors_state_dict(entry):
        return LoadedModel(_authors_model(checkpoint, ref, names, base or "ViT-B/16", **kwargs), "authors", None)
    if any(k.startswith(("clip.", "prompts.")) for k in entry):
        model, config = _our_model(checkpoint, ref, names, base, **kwargs)
        return LoadedModel(model, "ours", config)
    model = ViFiCLIP(clip_weights.load(ref), names, **kwargs)
    return LoadedModel(model, "openai", None)


def _our_model(checkpoint: dict, path: str, class_names: Sequence[str], base: Optional[str], **kwargs) -> tuple:
    """train.py's best.pt / last.pt (the trainable weights and the run's configuration) -> (ViFiCLIP, config): the
    model the run trained, built as train.build_model builds it."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        if base is None:
            raise ValueError(f"{path}: holds our weights but no run configuration; name the CLIP they were trained "
                             "from (base)")
        config = {}
    clip_ref = base or config.get("clip")
    options = dict(fusion=config.get("fusion") or "embedding", templates=config.get("template") or None,
                   **{k: config.get(k) or 0 for k in ("n_ctx_text", "depth_text", "n_ctx_vision", "depth_vision")})
    model = ViFiCLIP(clip_weights.load(clip_ref), class_names, **{**options, **kwargs})
    init_from = config.get("init_from")
    if init_from:  # the run started from these weights (the bridged model of bridge and prompt)
        if not os.path.isfile(init_from):
            raise FileNotFoundError(f"{path}: its run started from --init-from {init_from}, which is not there "
                                    "(run from the run's folder, or give the path it has now)")
        load_weights(model, init_from)
    _load_checkpoint(model, checkpoint, path)
    return model, config
