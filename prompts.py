"""Deep vision-language prompts for CLIP: the second stage of "bridge and prompt" (paper Sec. 5, Fig. 6).

After ViFi-CLIP has bridged the image-to-video gap by fine-tuning (Sec. 4), the whole model is frozen and only a
few learnable tokens are trained, on both towers and at several depths:

  text tower    n_ctx_text tokens right after the start token, in front of the class name: "<sot> [ctx] {name}."
  vision tower  n_ctx_vision tokens after the patch tokens (they carry no position embedding)
  depth         layers 0 .. depth-1 carry prompts. Layer 0's tokens enter with the input; before each deeper layer
                i < depth, the outputs of the previous layer at the prompt positions are thrown away and replaced by
                layer i's own tokens. Layers from `depth` on let the prompt positions flow through like any token.

Text and vision have their own n_ctx and depth. With n_ctx = 0 or depth = 0 a tower gets no prompts at all and is
exactly plain CLIP. Nothing of CLIP is copied here: clip_model.py's towers take `prompts` (layer 0) and
`deep_prompts` (layers 1 ..) arguments, and this module only owns the tensors.

Initialisation, as in the authors' code (their trainers/vificlip.py and clip/model.py):
  * the text tokens of layer 0 start as the token embeddings of the words `ctx_init` ("a photo of a") when
    n_ctx_text is at most the number of those words' tokens (4); with fewer, the first n_ctx_text words are learned
    and the rest stay fixed words of the class prompt ("a photo" learned + "of a {name}."). Otherwise, and for
    every other prompt tensor, normal(0, 0.02).
  * with the words as initialisation, "<sot> [ctx] {name}." is exactly "a photo of a {name}." before training
    (tests/test_prompts.py checks this against plain CLIP).
Note that with the authors' base-to-novel setting (16 tokens, CTX_INIT "a photo of a") the words do not fit, so
their code (and this one) starts from random tokens there.

The authors' configs, train.py's prompt defaults: FEW_SHOT (10 tokens, depth 12, both towers) and BASE_TO_NOVEL (16
tokens, depth 9). Prompt checkpoints (kilobytes: the prompt tensors, the configuration and a reference to the bridged
model they were trained on, never CLIP's weights nor anything that depends on the class names) are written and read
beside the other weight files: plumbing/vifi_weights.py's save_prompts / load_prompts.
"""
from typing import Optional

import torch
from torch import nn

import clip_model
from tokenizer import default_tokenizer, tokenize

FEW_SHOT = dict(n_ctx_text=10, depth_text=12, n_ctx_vision=10, depth_vision=12)
BASE_TO_NOVEL = dict(n_ctx_text=16, depth_text=9, n_ctx_vision=16, depth_vision=9)


class PromptLearner(nn.Module):
    """The learnable prompt tokens of both towers, one [n_ctx, width] tensor per prompted layer.

    text[i] / vision[i] are layer i's tokens (i = 0 .. depth-1); the authors' names for them are in
    plumbing/vifi_weights.py's mapping table. `template` is the class-prompt text the tokens sit in front of ("{}."
    normally)."""

    def __init__(self, clip: clip_model.CLIP, n_ctx_text: int = 10, depth_text: int = 12, n_ctx_vision: int = 10,
                 depth_vision: int = 12, ctx_init: Optional[str] = "a photo of a"):
        super().__init__()
        for name, n_ctx, depth, layers in (("text", n_ctx_text, depth_text, clip.transformer.layers),
                                           ("vision", n_ctx_vision, depth_vision, clip.visual.transformer.layers)):
            if n_ctx < 0 or not 0 <= depth <= layers:
                raise ValueError(f"{name} prompts: n_ctx {n_ctx} must be >= 0 and depth {depth} in 0..{layers} "
                                 f"(the {name} tower has {layers} layers)")
        self.n_ctx_text, self.depth_text = n_ctx_text, depth_text
        self.n_ctx_vision, self.depth_vision = n_ctx_vision, depth_vision
        self.ctx_init = ctx_init
        self.template = "{}."  # the words after the learned context; "{}" is the class name
        text_width, vision_width = clip.transformer.width, clip.visual.transformer.width

        # No tokens or no depth: no parameters at all, so the tower is exactly plain CLIP.
        n_text = depth_text if n_ctx_text > 0 else 0
        n_vision = depth_vision if n_ctx_vision > 0 else 0
        self.text = nn.ParameterList([nn.Parameter(_normal(n_ctx_text, text_width)) for _ in range(n_text)])
        self.vision = nn.ParameterList([nn.Parameter(_normal(n_ctx_vision, vision_width)) for _ in range(n_vision)])
        if n_text and ctx_init:
            self._init_text_from_words(clip, ctx_init)

    @torch.no_grad()
    def _init_text_from_words(self, clip: clip_model.CLIP, words: str):
        ids = tokenize(words)[0]  # [77]: <sot> words <eot> 0 ...
        word_ids = ids[1:int(ids.argmax())]  # without <sot> and <eot>
        if self.n_ctx_text > len(word_ids):  # the words do not fill the context: random start (authors' rule)
            return
        embedding = clip.token_embedding.weight[word_ids[:self.n_ctx_text]]  # [n_ctx, W]
        self.text[0].copy_(embedding.to(self.text[0].dtype))
        rest = default_tokenizer().decode(word_ids[self.n_ctx_text:].tolist()).strip()  # words not learned
        self.template = f"{rest} {{}}." if rest else "{}."

    @property
    def has_text(self) -> bool:
        return len(self.text) > 0

    @property
    def has_vision(self) -> bool:
        return len(self.vision) > 0

    def config(self) -> dict:
        """The constructor arguments (what a prompt checkpoint stores beside the tensors)."""
        return dict(n_ctx_text=self.n_ctx_text, depth_text=self.depth_text, n_ctx_vision=self.n_ctx_vision,
                    depth_vision=self.depth_vision, ctx_init=self.ctx_init)

    def encode_text(self, clip: clip_model.CLIP, text: torch.Tensor) -> torch.Tensor:
        """text: [N, 77] token ids -> [N, embed_dim]; this learner's text prompts at layers 0 .. depth_text-1."""
        if not self.has_text:
            return clip.encode_text(text)
        return clip.encode_text(text, prompts=self.text[0], deep_prompts=list(self.text[1:]))

    def encode_image(self, clip: clip_model.CLIP, image: torch.Tensor) -> torch.Tensor:
        """image: [N, 3, H, W] -> [N, embed_dim]; this learner's vision prompts at layers 0 .. depth_vision-1."""
        if not self.has_vision:
            return clip.encode_image(image)
        return clip.encode_image(image, prompts=self.vision[0], deep_prompts=list(self.vision[1:]))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def _normal(n: int, width: int) -> torch.Tensor:
    return torch.empty(n, width).normal_(0, 0.02)
