"""Any ViFi-CLIP as a Hugging Face CLIP folder: `export_hugging_face(model, folder)`.

A fine-tuned ViFi-CLIP is a CLIP (both towers and the logit scale) plus the mean over frames (paper Sec. 4, Eq. 1),
so its weights need nothing new to be read by transformers: `CLIPModel.from_pretrained(folder)` and
`CLIPProcessor.from_pretrained(folder)` read the folder as it is, and the model card (README.md in the folder) shows
the few lines that score a video with them: frames -> get_image_features -> mean -> cosine with get_text_features x
logit_scale.exp(). tests/test_hf_export.py checks those logits against ours with transformers itself.

The command line (our runs, the authors' files, prompt checkpoints, any CLIP): python -m tools.export_hf.

The folder holds safetensors and JSON only (no pickle), and is written whole or not at all (into a temporary folder
beside it, renamed at the end):

  config.json                 CLIPConfig: the architecture read off the weights' shapes, QuickGELU
  model.safetensors           both towers and logit_scale in Hugging Face's names (clip_weights.to_hf_state_dict), fp32
  vocab.json, merges.txt      CLIP's BPE tokenizer, written from assets/bpe_simple_vocab_16e6.txt.gz by tokenizer.py
  tokenizer_config.json, special_tokens_map.json
  preprocessor_config.json    CLIPImageProcessor: short side to 256/224 of the input size, centre crop, bilinear, and
                              the pixel statistics the weights were trained with (ImageNet's for the authors' releases)
  README.md                   the model card
  vifi_clip.json              what transformers does not read: classes, templates, frames, fusion, pixel statistics,
                              prompt settings (vifi_weights.load_hugging_face reads the folder back)
  prompts.safetensors         a prompt-learned model's prompts (Sec. 5, bridge and prompt): transformers alone runs
                              the bridged model without them, which is not this model

Not the paper's method: vifi.py is the model, vifi_weights.py reads every format this writes.
"""
import json
import os
import shutil
from typing import Optional, Sequence

import torch

import data
import tokenizer
from vifi import ViFiCLIP
from plumbing import clip_weights, vifi_weights

# Special tokens as CLIP's tokenizer has them; Hugging Face's CLIP tokenizers pad with the end token too.
SPECIAL_TOKENS = dict(bos_token=tokenizer.SOT_TEXT, eos_token=tokenizer.EOT_TEXT, unk_token=tokenizer.EOT_TEXT,
                      pad_token=tokenizer.EOT_TEXT)


class ExportError(ValueError):
    """A model or a folder that cannot be exported; the message is one line."""


# ----------------------------------------------------------------------------------------------------------------------
# The files


def hf_config(clip) -> dict:
    """config.json of a transformers CLIPModel with this CLIP's architecture (read off its modules)."""
    visual, text = clip.visual, clip.transformer
    embed_dim = clip.text_projection.shape[1]
    common = dict(hidden_act="quick_gelu", layer_norm_eps=clip.ln_final.eps, attention_dropout=0.0, dropout=0.0,
                  initializer_range=0.02, initializer_factor=1.0, projection_dim=embed_dim)
    text_config = dict(model_type="clip_text_model", vocab_size=clip.vocab_size, hidden_size=text.width,
                       intermediate_size=text.resblocks[0].mlp.c_fc.out_features, num_hidden_layers=text.layers,
                       num_attention_heads=text.resblocks[0].attn.heads, max_position_embeddings=clip.context_length,
                       bos_token_id=tokenizer.default_tokenizer().sot_token,
                       eos_token_id=tokenizer.default_tokenizer().eot_token,  # pooled at the first end token
                       pad_token_id=tokenizer.default_tokenizer().eot_token, **common)
    vision_config = dict(model_type="clip_vision_model", hidden_size=visual.transformer.width,
                         intermediate_size=visual.transformer.resblocks[0].mlp.c_fc.out_features,
                         num_hidden_layers=visual.transformer.layers,
                         num_attention_heads=visual.transformer.resblocks[0].attn.heads,
                         image_size=visual.input_resolution, patch_size=visual.patch_size, num_channels=3, **common)
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=embed_dim,
                logit_scale_init_value=float(clip.logit_scale), text_config=text_config, vision_config=vision_config,
                torch_dtype="float32")


def tokenizer_files(context_length: int) -> dict:
    """{file name: text} of CLIP's tokenizer as transformers' CLIPTokenizer reads it: the vocabulary (the 256 byte
    symbols, the same with "</w>", one entry per merge, the two special tokens: tokenizer.Tokenizer's, id for id) and
    the merges CLIP uses, after the "#version" line transformers skips."""
    tok = tokenizer.default_tokenizer()
    merges = tokenizer.load_merges()
    special = dict(SPECIAL_TOKENS)
    return {
        "vocab.json": json.dumps(tok.encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(dict(tokenizer_class="CLIPTokenizer", model_max_length=context_length,
                                                 do_lower_case=True, errors="replace", add_prefix_space=False,
                                                 **special), indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def preprocessor_config(input_size: int, normalization: str) -> dict:
    """CLIPImageProcessor's settings for frames as data.eval_plan prepares them: the short side to 256/224 of the
    input size (256 for 224), a centre crop of the input size, bilinear, and the weights' pixel statistics."""
    mean, std = data.NORMS[normalization]
    return dict(image_processor_type="CLIPImageProcessor", processor_class="CLIPProcessor", do_convert_rgb=True,
                do_resize=True, size=dict(shortest_edge=data.resized_short_side(input_size)),
                resample=2,  # PIL's BILINEAR
                do_center_crop=True, crop_size=dict(height=input_size, width=input_size), do_rescale=True,
                rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean), image_std=list(std))


def hf_state_dict(clip) -> dict:
    """Both towers and logit_scale in Hugging Face's names, as separate fp32 tensors (safetensors stores no views)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in clip_weights.to_hf_state_dict(clip.state_dict()).items()}


def model_card(model: ViFiCLIP, classes: Sequence[str], frames: int, source: Optional[str], run: Optional[dict],
               name: str = "FOLDER") -> str:
    """README.md of the folder: what it is, what it was fine-tuned with, and the lines that score a video."""
    clip = model.clip
    prompted = model.prompts.has_text or model.prompts.has_vision
    size, norm = clip.visual.input_resolution, model.normalization
    templates = list(model.templates)
    lines = ["---", "library_name: transformers",
             "tags: [video-classification, clip, vifi-clip]", "---", "",
             "# ViFi-CLIP" + (" with learned prompts (bridge and prompt)" if prompted else ""), ""]
    what = (f"A CLIP fine-tuned on videos as in *Fine-tuned CLIP Models are Efficient Video Learners* (Rasheed et al., "
            f"CVPR 2023): every frame is encoded as an image, the frame embeddings are averaged over time, and the "
            f"video is scored against class prompts by cosine similarity times `logit_scale.exp()`. These are the "
            f"weights of a plain `transformers` `CLIPModel` (image tower {clip.visual.transformer.layers} layers, "
            f"patch {clip.visual.patch_size}, {size} px; text tower {clip.transformer.layers} layers, "
            f"{clip.context_length} tokens), exported by ViFi-CLIP in plain PyTorch (`hf_export.py`)")
    lines += [what + (f" from `{source}`." if source else "."), ""]
    if prompted:
        config = model.prompts.config()
        lines += [f"**`transformers` alone does not run this model.** It is a bridged model with learned prompts "
                  f"(paper Sec. 5): {config['n_ctx_text']} text tokens at {config['depth_text']} layers and "
                  f"{config['n_ctx_vision']} vision tokens at {config['depth_vision']} layers, in "
                  f"`{vifi_weights.HF_PROMPTS_FILE}` (settings in `{vifi_weights.HF_EXPORT_FILE}`). `CLIPModel` "
                  f"reads the bridged model without them, and the recipe below scores videos with that model, not "
                  f"with this one. ViFi-CLIP in plain PyTorch runs it: "
                  f"`vifi_weights.load_hugging_face(folder, class_names)`, or "
                  f"`python -m tools.classify_video VIDEO --weights FOLDER`.", ""]
    lines += ["## What it was fine-tuned with", ""]
    if run:
        keys = ("setting", "dataset") + (("k",) if run.get("setting") in ("fewshot", "base2novel") else ()) + (
            "train", "epochs", "clip", "init_from")
        described = ", ".join(f"{k.replace('_', ' ')} {run[k]}" for k in keys if run.get(k) not in (None, ""))
        lines += [f"- run: {described}"]
    if classes:
        shown = ", ".join(f"`{c}`" for c in classes[:50]) + (f" and {len(classes) - 50} more" if len(classes) > 50
                                                             else "")
        lines += [f"- classes ({len(classes)}, in label order; `{vifi_weights.HF_EXPORT_FILE}` lists them all): "
                  f"{shown}"]
    else:
        lines += ["- classes: not recorded with these weights"]
    lines += [f"- class prompt{'s (their text embeddings averaged)' if len(templates) > 1 else ''}: "
              + ", ".join(f"`{t}`" for t in templates) + " (`{}` is the class name, underscores read as spaces"
              + (", behind the learned text tokens)" if model.prompts.has_text else ")"),
              f"- frames: {frames} per video, one from the middle of each of {frames} equal segments, short side "
              f"resized to {data.resized_short_side(size)}, centre crop {size} x {size}",
              f"- pixel statistics: {'ImageNet' if norm == 'imagenet' else 'CLIP'}'s (mean "
              f"{list(data.NORMS[norm][0])}, std {list(data.NORMS[norm][1])}), in `preprocessor_config.json`"
              + (" (the authors' releases were trained on ImageNet-normalised frames)" if norm == "imagenet" else ""),
              f"- fusion: {model.fusion}" + ("" if model.fusion == "embedding" else
                                            " (trained so; the recipe below pools embeddings, as ViFi-CLIP does)"),
              "", "## Scoring a video with transformers", "",
              "Any class names can be scored (zero-shot); the frames are RGB images (PIL, or H x W x 3 uint8 arrays).",
              "", "```python", _recipe(name, templates, classes, frames), "```", "",
              "Frames through `get_image_features`, their mean (temporal pooling), then the cosine with the class "
              "prompts' `get_text_features` times `logit_scale.exp()`: the logits of ViFi-CLIP (Eq. 1).", ""]
    return "\n".join(lines)


def _recipe(name: str, templates: Sequence[str], classes: Sequence[str], frames: int) -> str:
    example = list(classes[:3]) if classes else ["dancing", "swimming", "cooking"]
    return f'''import av  # PyAV, to decode the video; any decoder will do
import torch
from transformers import CLIPModel, CLIPProcessor

folder = {json.dumps(name, ensure_ascii=False)}  # this folder's path (or its name on the Hugging Face Hub)
model = CLIPModel.from_pretrained(folder).eval()
processor = CLIPProcessor.from_pretrained(folder)
classes = {json.dumps(example, ensure_ascii=False)}
templates = {json.dumps(list(templates), ensure_ascii=False)}
T = {frames}

with av.open("my_video.mp4") as container:
    decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
frames = [decoded[int((i + 0.5) * len(decoded) / T)] for i in range(T)]  # the middle of T equal segments


def features(output):  # transformers 4 returns the embeddings, 5 an output holding them as pooler_output
    return output if isinstance(output, torch.Tensor) else output.pooler_output


with torch.no_grad():
    pixels = processor(images=frames, return_tensors="pt")["pixel_values"]  # [T, 3, H, W]
    video = features(model.get_image_features(pixel_values=pixels)).mean(0)  # the mean over frames
    video = video / video.norm()
    text = 0
    for template in templates:  # several templates: the mean of their unit embeddings
        prompts = [template.format(c.replace("_", " ")) for c in classes]
        embeddings = features(model.get_text_features(**processor(text=prompts, padding=True, return_tensors="pt")))
        text = text + embeddings / embeddings.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * text @ video  # [classes]
for name, p in sorted(zip(classes, logits.softmax(-1).tolist()), key=lambda pair: -pair[1]):
    print(f"{{p:7.2%}}  {{name}}")'''


# ----------------------------------------------------------------------------------------------------------------------
# Writing the folder


def export_hugging_face(model: ViFiCLIP, folder: str, classes: Optional[Sequence[str]] = None, frames: int = 32,
                        source: Optional[str] = None, run: Optional[dict] = None, overwrite: bool = False) -> str:
    """Write `model` as a Hugging Face CLIP folder (module docstring) and return its path.

    classes: the class names the weights were fine-tuned with, for the card and vifi_clip.json (default
    model.class_names; [] says they are unknown). frames: the frames per video they were trained with (32: the
    paper's, but for fully supervised, 16). source, run: where the weights came from and the training run's
    configuration, for the card. The folder is written whole into a temporary folder beside it and renamed at the end;
    an existing folder is an error unless overwrite. Raises ExportError."""
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not overwrite:
        raise ExportError(f"{folder} exists; choose another folder, or replace it (--force, overwrite=True)")
    if model.normalization not in data.NORMS:
        raise ExportError(f"unknown pixel statistics {model.normalization!r}")
    classes = list(model.class_names if classes is None else classes)
    clip = model.clip
    prompted = model.prompts.has_text or model.prompts.has_vision
    files = {
        "config.json": json.dumps(hf_config(clip), indent=2),
        "preprocessor_config.json": json.dumps(preprocessor_config(clip.visual.input_resolution, model.normalization),
                                               indent=2),
        **tokenizer_files(clip.context_length),
        vifi_weights.HF_EXPORT_FILE: json.dumps(dict(
            format=vifi_weights.HF_EXPORT_FORMAT, class_names=classes, templates=list(model.templates), frames=frames,
            normalization=model.normalization, fusion=model.fusion,
            prompts=model.prompts.config() if prompted else None, source=source), indent=2),
        "README.md": model_card(model, classes, frames, source, run, os.path.basename(folder)),
    }
    tensors = {"model.safetensors": (hf_state_dict(clip), {"format": "pt"})}
    if prompted:
        prompts = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
                   for k, v in model.prompts.state_dict().items()}
        tensors[vifi_weights.HF_PROMPTS_FILE] = (prompts, {"format": "pt",
                                                           "config": json.dumps(model.prompts.config())})
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(folder)}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        _write_folder(tmp, files, tensors)
        if os.path.exists(folder):  # overwrite: the old folder goes only once the new one is complete
            old = f"{tmp}.old"
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_folder(tmp: str, files: dict, tensors: dict):
    from safetensors.torch import save_file
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    for name, (state_dict, metadata) in tensors.items():
        save_file(state_dict, os.path.join(tmp, name), metadata=metadata)
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)  # as readable as the JSON files (safetensors writes 0600)
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
