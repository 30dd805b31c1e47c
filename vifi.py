"""ViFi-CLIP: CLIP fine-tuned on videos, with nothing added but temporal pooling (paper Sec. 4, Fig. 3).

A video [T, 3, H, W] is encoded by CLIP's image tower as T separate images; the T frame embeddings are averaged
(temporal pooling, "embedding-level fusion"), normalised, and compared by cosine similarity with the normalised
text embeddings of the class prompts ("a photo of a {class}."), scaled by exp(logit_scale) = 1/tau:

    logits[b, c] = exp(logit_scale) * <v_b / |v_b|, t_c / |t_c|>,    v_b = mean_t image_encoder(frame_{b,t})

and the loss is cross-entropy over the classes (Sec. 4, Eq. 1). Everything else is CLIP (clip_model.py) and, for the
second stage of "bridge and prompt" (Sec. 5), learnable prompt tokens (prompts.py).

Fusion variants (Sec. 4.3, Table 5), `fusion=`:
  embedding  frame embeddings averaged, then compared with the classes (ViFi-CLIP, the default)
  decision   each frame compared with the classes, the frame logits averaged
  image      each frame is a training image of its own: in training, forward returns one row of logits per frame
             ([B*T, C]) and loss() gives every frame its video's label; in evaluation a video is scored by its
             frames' average class probability (forward returns log(mean_t softmax(frame logits)), so a softmax of
             the output is that average). With T = 1 the three agree.

What is trained, `train_mode=` (the rows of Tables 1-4; the authors' TRAINER.ViFi_CLIP.USE / PROMPT_MODEL):
  both      image and text tower, and logit_scale (ViFi-CLIP; the authors' "both" trains every parameter of their
            model, logit_scale included)
  image     image tower only (CLIP image-FT)
  text      text tower only (CLIP text-FT)
  prompts   the prompt tokens only, CLIP frozen (bridge and prompt, stage 2; needs n_ctx/depth > 0)
  none      nothing (vanilla CLIP zero-shot, or evaluating a trained model)
The token-embedding table (clip.token_embedding) is frozen in every mode: the authors' model embeds the class
prompts once into buffers, outside the optimizer, so their fine-tuning never updates it (and their checkpoints do
not hold it). train_token_embedding=True unfreezes it in the modes that train the text tower. Frozen parameters
have requires_grad=False; give the optimizer trainable_parameters(model) only, so they cost no gradient and no
optimizer state.

Class names can change at any time (set_class_names, or forward(..., class_names=...)): base classes in training,
novel classes in evaluation, another dataset for zero-shot transfer. When no text-side parameter is being trained
(or gradients are off), the normalised class embeddings are computed once per (class names, templates) and reused;
the cache is keyed on the text-side parameters' storage and version counters, so an optimizer step,
load_state_dict or .to() invalidates it by itself. (An in-place write through `.data` bypasses version counters:
call clear_text_cache() after one.) What it saves at every evaluation batch, measured: benchmarks/README.md.

Prompt templates, `templates=`: the authors fine-tune and evaluate with FINETUNE_TEMPLATE "a photo of a {}." and
report vanilla CLIP zero-shot with the bare class name, ZERO_SHOT_TEMPLATE "{}". A list of templates is averaged
(prompt ensembling: the mean of the normalised embeddings, normalised again). With learned text prompts the default
is "{}.": the learned tokens stand where "a photo of a" stood; fewer than its 4 tokens, started from its words,
leave the others in the prompt ("of a {}." for 2, as in the authors' code). Underscores in class names become
spaces.

Loading weights into a ViFiCLIP (the authors' released checkpoints, our own runs, prompt files) is not part of the
method: vifi_weights.py. The authors' released models were trained on ImageNet-normalised frames: a model carries
`normalization` ("clip" or "imagenet"), which classify uses.
"""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

import clip_model
import data
import prompts as prompts_module
from clip_model import CLIP
from tokenizer import tokenize
from plumbing import mixed_precision

TRAIN_MODES = ("both", "image", "text", "prompts", "none")
FUSIONS = ("embedding", "decision", "image")
FINETUNE_TEMPLATE = "a photo of a {}."  # Appendix B: the handcrafted prompt of every fine-tuning experiment
ZERO_SHOT_TEMPLATE = "{}"  # the authors' vanilla-CLIP zero-shot evaluation (their ZS_EVAL): the bare class name


def text_tower_parameters(clip: CLIP) -> list:
    """CLIP's text tower, token embeddings included, in a fixed order."""
    return [clip.token_embedding.weight, clip.positional_embedding, *clip.transformer.parameters(),
            *clip.ln_final.parameters(), clip.text_projection]


class ViFiCLIP(nn.Module):
    """CLIP over videos: [B, T, 3, H, W] frames -> [B, C] class logits, for the class names it holds.

    clip: a clip_model.CLIP (it becomes self.clip, trained in place). The prompt arguments build self.prompts
    (prompts.PromptLearner); with their defaults (no tokens) the model is exactly CLIP. normalization ("clip" or
    "imagenet") records which pixel statistics the weights expect; classify() uses it."""

    def __init__(self, clip: CLIP, class_names: Sequence[str], fusion: str = "embedding", train_mode: str = "both",
                 templates: Union[str, Sequence[str], None] = None, n_ctx_text: int = 0, depth_text: int = 0,
                 n_ctx_vision: int = 0, depth_vision: int = 0, ctx_init: Optional[str] = "a photo of a",
                 train_token_embedding: bool = False, normalization: str = "clip"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if normalization not in data.NORMS:  # the pixel statistics a model's weights may expect
            raise ValueError(f"normalization must be one of {tuple(data.NORMS)}, got {normalization!r}")
        self.clip = clip
        self.prompts = prompts_module.PromptLearner(clip, n_ctx_text, depth_text, n_ctx_vision, depth_vision,
                                                    ctx_init).to(clip.positional_embedding.device)
        self.fusion = fusion
        self.normalization = normalization
        self.set_templates(templates)
        self.set_class_names(class_names)
        self._text_cache = {}  # (names, templates, autocast) -> (weights version, [C, D] features)
        self.set_train_mode(train_mode, train_token_embedding)

    # -- configuration ---------------------------------------------------------------------------------------------

    def set_train_mode(self, mode: str, train_token_embedding: bool = False):
        """Freeze everything a mode does not train (see the module docstring); requires_grad is the only switch."""
        if mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {mode!r}")
        if mode == "prompts" and not (self.prompts.has_text or self.prompts.has_vision):
            raise ValueError("train_mode 'prompts' needs prompt tokens: set n_ctx_text/depth_text and/or "
                             "n_ctx_vision/depth_vision (prompts.FEW_SHOT, prompts.BASE_TO_NOVEL)")
        image, text = mode in ("both", "image"), mode in ("both", "text")
        self.clip.visual.requires_grad_(image)
        for p in text_tower_parameters(self.clip):
            p.requires_grad_(text)
        self.clip.token_embedding.requires_grad_(text and train_token_embedding)
        self.clip.logit_scale.requires_grad_(mode == "both")
        self.prompts.requires_grad_(mode == "prompts")
        self.train_mode = mode

    def set_class_names(self, class_names: Sequence[str]):
        """The classes forward() scores, in label order. Nothing is retrained; their text embeddings are computed on
        the next forward (or taken from the cache)."""
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError("class_names must be a non-empty list of names")
        self.class_names = tuple(class_names)

    def set_templates(self, templates: Union[str, Sequence[str], None]):
        """None: "{}." with learned text prompts, else FINETUNE_TEMPLATE. A string or a list (averaged)."""
        if templates is None:
            templates = self.prompts.template if self.prompts.has_text else FINETUNE_TEMPLATE
        self.templates = _as_templates(templates)

    def clear_text_cache(self):
        self._text_cache = {}

    # -- text side -------------------------------------------------------------------------------------------------

    def _text_side_parameters(self) -> list:
        return text_tower_parameters(self.clip) + list(self.prompts.text)

    def encode_class_prompts(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """-> [C, D] unit-norm class embeddings, averaged over the templates (prompt ensembling). No cache."""
        names = [name.replace("_", " ") for name in class_names]
        texts = [template.format(name) for template in templates for name in names]  # template-major
        tokens = tokenize(texts, context_length=self.clip.context_length).to(self.clip.positional_embedding.device)
        features = F.normalize(self.prompts.encode_text(self.clip, tokens).float(), dim=-1)  # [K*C, D], fp32
        features = features.view(len(templates), len(names), -1).mean(0)  # [C, D]
        return F.normalize(features, dim=-1)

    def text_features(self, class_names: Optional[Sequence[str]] = None,
                      templates: Union[str, Sequence[str], None] = None) -> torch.Tensor:
        """[C, D] unit-norm class embeddings for class_names (default: the model's), through the cache when no
        text-side parameter is being trained."""
        names = self.class_names if class_names is None else tuple(class_names)
        templates = self.templates if templates is None else _as_templates(templates)
        params = self._text_side_parameters()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self.encode_class_prompts(names, templates)  # the text tower learns from this very batch
        device = self.clip.positional_embedding.device.type
        key = (names, templates, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        # Any in-place update of a weight (optimizer step, load_state_dict) bumps its version counter; .to() moves
        # its storage. Either changes this, and the cached embeddings are recomputed.
        version = tuple((p.data_ptr(), p._version) for p in params)
        hit = self._text_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        with torch.no_grad():
            features = self.encode_class_prompts(names, templates)
        self._text_cache = {k: v for k, v in self._text_cache.items() if v[0] == version}  # drop stale entries
        self._text_cache[key] = (version, features)
        return features

    # -- video side and the logits ---------------------------------------------------------------------------------

    def encode_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """videos: [B, T, 3, H, W] -> [B, T, D] frame embeddings (not normalised): the T frames of every video go
        through the image tower as B*T independent images."""
        B, T = videos.shape[:2]
        frames = self.prompts.encode_image(self.clip, videos.flatten(0, 1))  # [B*T, D]
        return frames.view(B, T, -1)

    def forward(self, videos: torch.Tensor, class_names: Optional[Sequence[str]] = None,
                templates: Union[str, Sequence[str], None] = None) -> torch.Tensor:
        """videos: [B, T, 3, H, W] -> logits [B, C] (C = number of class names). Image-level fusion in training
        mode returns [B*T, C], one row per frame (video b's frames are rows b*T .. b*T+T-1)."""
        B, T = videos.shape[:2]
        frames = self.encode_frames(videos).float()  # [B, T, D]
        text = self.text_features(class_names, templates)  # [C, D], unit norm, fp32
        scale = self.clip.logit_scale.exp()  # 1 / tau of Eq. 1
        # The head (pooling, cosines) stays in fp32 under autocast: a bf16 cosine is off by up to ~0.004, enough to
        # swap near-tied classes (measured: 13 of 480 world predictions changed in bf16, 6 with this fp32 head).
        with torch.autocast(videos.device.type, enabled=False):
            if self.fusion == "embedding":
                video = F.normalize(frames.mean(dim=1), dim=-1)  # [B, D]: temporal pooling, then the cosine
                return scale * video @ text.t()  # [B, C]
            frame_logits = scale * F.normalize(frames, dim=-1) @ text.t()  # [B, T, C]
        if self.fusion == "decision":
            return frame_logits.mean(dim=1)  # [B, C]
        if self.training:  # image-level: every frame is a sample of its own
            return frame_logits.flatten(0, 1)  # [B*T, C]
        # log of the frames' mean probability, computed stably: softmax of this is mean_t softmax(frame_logits)
        return torch.logsumexp(frame_logits.float().log_softmax(dim=-1), dim=1) - math.log(T)  # [B, C]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes (Sec. 4, Eq. 1), averaged over the batch: -log softmax(logits)[label].
        targets: [B] class ids, or [B, C] probabilities (mixup, CutMix, label smoothing), which F.cross_entropy takes
        as they are. For image-level fusion in training (logits [B*T, C]) every frame gets its video's target."""
        if logits.shape[0] != targets.shape[0]:
            if logits.shape[0] % targets.shape[0]:
                raise ValueError(f"{logits.shape[0]} rows of logits for {targets.shape[0]} targets")
            targets = targets.repeat_interleave(logits.shape[0] // targets.shape[0], dim=0)
        return F.cross_entropy(logits.float(), targets)

    def extra_repr(self) -> str:
        return (f"train_mode={self.train_mode!r}, fusion={self.fusion!r}, classes={len(self.class_names)}, "
                f"templates={self.templates!r}, normalization={self.normalization!r}")


def _as_templates(templates: Union[str, Sequence[str]]) -> tuple:
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be one or more strings with a '{{}}' for the class name, got {templates!r}")
    return templates


# ----------------------------------------------------------------------------------------------------------------------
# What the optimizer and the training checkpoints see


def trainable_parameters(model: nn.Module) -> list:
    """The parameters the train mode trains: pass these (not model.parameters()) to the optimizer, so that frozen
    ones get no optimizer state."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: ViFiCLIP, lr: float, image_lr_scale: float = 1.0) -> list:
    """The optimizer's parameter groups: the trainable parameters at lr, those of the image tower at lr x
    image_lr_scale (one group when that is 1, as in the paper; the embedded world trains its image tower slower).
    The first group holds the rest, so its learning rate is the run's; when only the image tower trains, the one
    group is its own, at lr x image_lr_scale (what train.py then logs as the rate)."""
    params = trainable_parameters(model)
    if image_lr_scale == 1:
        return [dict(params=params)]
    image = {id(p) for p in model.clip.visual.parameters()}
    groups = [dict(params=[p for p in params if id(p) not in image]),
              dict(params=[p for p in params if id(p) in image], lr=lr * image_lr_scale)]
    return [g for g in groups if g["params"]]


def trainable_state_dict(model: nn.Module) -> dict:
    """{name: tensor} of the trainable parameters only (a prompt run: kilobytes)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state_dict(model: nn.Module, state_dict: dict, source: str = "state dict"):
    """The inverse of trainable_state_dict, strictly: exactly the model's trainable parameters, same shapes."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = params.keys() - state_dict.keys(), state_dict.keys() - params.keys()
    if missing or unexpected:
        raise ValueError(f"{source}: trainable parameters do not match this model (train mode and prompt settings "
                         f"must be the same): missing {clip_model.shorten(sorted(missing))}, "
                         f"unexpected {clip_model.shorten(sorted(unexpected))}")
    for name, p in params.items():
        if p.shape != state_dict[name].shape:
            raise ValueError(f"{source}: {name} has shape {tuple(state_dict[name].shape)}, expected {tuple(p.shape)}")
        p.copy_(state_dict[name])


# ----------------------------------------------------------------------------------------------------------------------
# One of the users' own videos


@torch.no_grad()
def classify(model: ViFiCLIP, video_path: str, class_names: Sequence[str], num_frames: int = 8,
             templates: Union[str, Sequence[str], None] = None, precision: str = "auto") -> list:
    """Rank class_names for the video at video_path: [(name, probability)], most likely first.

    num_frames frames are taken from the centres of equal segments, resized (short side 256/224 of the model's input
    size) and centre-cropped as in the authors' evaluation, normalised as the weights expect (model.normalization).
    The authors evaluate with 32 frames; 8 keep a CPU quick (ViT-B/16: a few seconds on two cores). precision:
    "auto" (mixed_precision.inference_precision's choice: bf16 where it is faster, else fp32), "fp32", "bf16" or
    "fp16" (autocast; the weights stay fp32)."""
    size = model.clip.visual.input_resolution
    reader = data.VideoDataset("", [(video_path, 0)], num_frames=num_frames, train=False, input_size=size,
                               norm=model.normalization)
    frames = reader.load(0)  # [T, 3, S, S]; raises if the video cannot be read
    device = model.clip.positional_embedding.device
    was_training = model.training
    model.eval()
    try:
        with mixed_precision.autocast(device, mixed_precision.inference_precision(device, precision)):
            logits = model(frames[None].to(device), class_names=class_names, templates=templates)  # [1, C]
    finally:
        model.train(was_training)
    probs = logits[0].float().softmax(dim=-1).tolist()
    return sorted(zip(class_names, probs), key=lambda pair: -pair[1])
