"""CLIP (ViT image tower + causal text tower), written from scratch in plain PyTorch.

This is the model of Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021),
in the form OpenAI released it: the parameter names and shapes are exactly those of OpenAI's checkpoints, so a state
dict moves between their code and ours with `strict=True`. ViFi-CLIP (vifi.py) fine-tunes this model on videos by
encoding every frame as an image (paper Sec. 4).

Reading order:
  LayerNorm, QuickGELU          two details OpenAI's weights depend on
  Attention, ResidualBlock      one pre-norm transformer layer (scaled_dot_product_attention inside)
  block_at                      a layer computed at the one token a tower reads (a measured speed-up)
  Transformer                   a stack of layers, with the deep-prompt hook (below) and activation checkpointing
  VisionTransformer             patches -> class token + positions -> transformer -> projected class token
  CLIP                          both towers, encode_image / encode_text / forward
  build_model                   the architecture inferred from a state dict's shapes
Loading weights (OpenAI's names and downloads, TorchScript archives, Hugging Face checkpoints, the embedded world's
tiny CLIP) is not part of the model: clip_weights.load.

Layout: every sequence tensor here is batch-first, [N, L, W] (OpenAI's code is sequence-first, [L, N, W]; the
weights don't care).

The deep-prompt hook (used by prompts.py, paper Sec. 5, Fig. 6): both towers take two optional arguments,
  prompts:      [n_ctx, W] learnable tokens added to the input sequence (vision: after the patch tokens, before
                ln_pre; text: right after the start token, in front of the words), and
  deep_prompts: a list of [n_ctx, W] tensors, one per later layer: before layer i (i = 1 .. len(deep_prompts)) the
                prompt positions of the running sequence are replaced by deep_prompts[i - 1].
With no prompts the towers are exactly plain CLIP. Nothing else of CLIP needs to change to prompt it.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------------
# Building blocks


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always computes in fp32 and returns the input's dtype (OpenAI's fp16 weights need this)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI trained CLIP with. Plain GELU changes the outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same function as silu(1.702 x) / 1.702, computed by F.silu's one fused kernel instead of three passes
        # over the [N, L, 4W] activation, with one activation kept for backward instead of two (benchmarks/README.md,
        # Speed). In-place division is autograd-safe: silu saves its input.
        return F.silu(1.702 * x).div_(1.702)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (in_proj_*, out_proj), computed by
    F.scaled_dot_product_attention (flash / memory-efficient kernels where the device has them)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, f"width {width} is not divisible by {heads} heads"
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """x: [N, L, W] -> [N, L, W]."""
        N, L, W = x.shape
        q, k, v = split_heads(F.linear(x, self.in_proj_weight, self.in_proj_bias), self.heads, W)  # one matmul
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [N, heads, L, W/heads]
        return self.out_proj(y.transpose(1, 2).reshape(N, L, W))


def split_heads(x: torch.Tensor, heads: int, width: int) -> torch.Tensor:
    """[N, L, n * width] (n projections side by side: q, k, v) -> [n, N, heads, L, width / heads]."""
    return x.view(*x.shape[:2], -1, heads, width // heads).permute(2, 0, 3, 1, 4)


class ResidualBlock(nn.Module):
    """One pre-norm transformer layer: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()  # a Sequential so that the names are mlp.c_fc / mlp.c_proj, as in OpenAI's weights
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


def block_at(block: ResidualBlock, x: torch.Tensor, position: torch.Tensor, causal: bool) -> torch.Tensor:
    """block(x) at one position per sequence: x [N, L, W], position [N] -> [N, W].

    A speed-up, nothing else: each tower reads one token of its last layer (the class token, the end token), so that
    layer needs the query, the attention output and the MLP at that token only; every position is still a key and a
    value: about 7% of the matrix-multiply work of ViT-B/16's image tower (measured: benchmarks/README.md, Speed).
    The result equals block(x)[range(N), position] to float rounding (tested)."""
    N, L, W = x.shape
    heads = block.attn.heads
    h = block.ln_1(x)
    w_q, w_kv = block.attn.in_proj_weight.split([W, 2 * W])
    b_q, b_kv = block.attn.in_proj_bias.split([W, 2 * W])
    rows = torch.arange(N, device=x.device)
    q = split_heads(F.linear(h[rows, position, None], w_q, b_q), heads, W)[0]  # [N, heads, 1, W/heads]
    k, v = split_heads(F.linear(h, w_kv, b_kv), heads, W)  # [N, heads, L, W/heads] each
    mask = None
    if causal:  # the query sees the keys up to its own position
        mask = (torch.arange(L, device=x.device) <= position[:, None])[:, None, None, :]  # [N, 1, 1, L]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(N, W)
    x = x[rows, position] + block.attn.out_proj(y)  # [N, W]
    return x + block.mlp(block.ln_2(x))


def replace_tokens(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """x[:, start:start+n] = tokens for every sequence of the batch, out of place (autograd-safe).
    x: [N, L, W], tokens: [n, W]."""
    n = tokens.shape[0]
    tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], tokens, x[:, start + n:]], dim=1)


class Transformer(nn.Module):
    """A stack of layers, read at one position per sequence: what each tower reads (its class token, its end
    token)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualBlock(width, heads) for _ in range(layers)])
        self.grad_checkpointing = False  # recompute each layer's activations in backward: less memory, slower

    def forward(self, x: torch.Tensor, read: torch.Tensor, causal: bool = False, deep_prompts: Optional[list] = None,
                prompt_start: int = 0) -> torch.Tensor:
        """x: [N, L, W], read: [N] positions -> [N, W], the last layer's output at position read[n] of each sequence
        (the last layer computes only there: block_at). deep_prompts[i-1] ([n_ctx, W]) replaces
        x[:, prompt_start:prompt_start+n_ctx] before layer i (Sec. 5)."""
        deep_prompts = deep_prompts or []
        if len(deep_prompts) >= self.layers:
            raise ValueError(f"{len(deep_prompts)} deep prompts for {self.layers} layers: at most layers - 1 "
                             "(the input prompts count as layer 0)")
        run = checkpoint if self.grad_checkpointing and torch.is_grad_enabled() else (lambda f, *a, **_: f(*a))
        for i, block in enumerate(self.resblocks):
            if 1 <= i <= len(deep_prompts):
                x = replace_tokens(x, prompt_start, deep_prompts[i - 1])
            if i < self.layers - 1:
                x = run(block, x, causal, use_reentrant=False)  # [N, L, W]
        return run(block_at, block, x, read, causal, use_reentrant=False)  # the last layer at `read` only: [N, W]


# ----------------------------------------------------------------------------------------------------------------------
# The two towers


class VisionTransformer(nn.Module):
    """ViT image encoder: [N, 3, H, W] images -> [N, output_dim] embeddings (the projected class token)."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                deep_prompts: Optional[list] = None) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))  # [N, W, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid*grid, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, W]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, 1 + grid*grid, W]
        prompt_start = x.shape[1]
        if prompts is not None:  # learnable vision prompts go after the patch tokens and carry no position
            x = torch.cat([x, prompts.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)  # [N, 1 + grid*grid + n_ctx, W]
        x = self.ln_pre(x)
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # [N]: position 0
        x = self.transformer(x, class_token, deep_prompts=deep_prompts, prompt_start=prompt_start)  # [N, W]
        x = self.ln_post(x)
        return x @ self.proj  # [N, output_dim]


def heads_for(width: int) -> int:
    """OpenAI's CLIPs have one attention head per 64 channels (at least one)."""
    return max(width // 64, 1)


class CLIP(nn.Module):
    """Both towers. The constructor takes OpenAI's arguments (ViT image towers only; ResNet CLIPs are not used by
    ViFi-CLIP)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        heads=heads_for(vision_width), output_dim=embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self):
        """OpenAI's initialisation, so that a model trained from scratch (the tiny one of tiny_clip.py) starts where
        theirs did."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for transformer in (self.transformer, self.visual.transformer):
            width, layers = transformer.width, transformer.layers
            proj_std = width ** -0.5 * (2 * layers) ** -0.5
            attn_std = width ** -0.5
            fc_std = (2 * width) ** -0.5
            for block in transformer.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def set_grad_checkpointing(self, enabled: bool = True):
        """Activation checkpointing for both towers (torch.utils.checkpoint): trade compute for memory."""
        self.visual.transformer.grad_checkpointing = enabled
        self.transformer.grad_checkpointing = enabled

    def encode_image(self, image: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                     deep_prompts: Optional[list] = None) -> torch.Tensor:
        """image: [N, 3, H, W] -> [N, embed_dim] (not normalised, as OpenAI's)."""
        return self.visual(image, prompts=prompts, deep_prompts=deep_prompts)

    def encode_text(self, text: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                    deep_prompts: Optional[list] = None) -> torch.Tensor:
        """text: [N, context_length] token ids (tokenizer.tokenize) -> [N, embed_dim], read at the end token.

        The text transformer is causal, so the output at the end token depends only on the tokens up to it: the
        sequence is cut after the batch's last end token, and the last layer computes the end token only (see
        block_at). Same result as running all 77 positions, in less time (benchmarks/README.md).
        prompts ([n_ctx, W]) are inserted after the start token, which moves the end tokens n_ctx positions on; the
        longest prompted text must still fit in context_length.
        """
        n_ctx = 0 if prompts is None else prompts.shape[0]
        eot = text.argmax(dim=-1) + n_ctx  # [N]: the end token has the largest id (49407) in CLIP's vocabulary
        length = int(eot.max()) + 1
        if length > self.context_length:
            raise ValueError(f"{n_ctx} prompt tokens + the longest text do not fit in {self.context_length} positions")
        x = self.token_embedding(text[:, :length])  # [N, length, W]
        if prompts is not None:
            x = torch.cat([x[:, :1], prompts.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)[:, :length]
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, eot, causal=True, deep_prompts=deep_prompts, prompt_start=1)  # [N, W], the end token
        x = self.ln_final(x)
        return x @ self.text_projection  # [N, embed_dim]

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        """-> (logits_per_image [N_img, N_text], logits_per_text [N_text, N_img]), as OpenAI's."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# ----------------------------------------------------------------------------------------------------------------------
# Architecture from a state dict

# Keys that OpenAI's TorchScript archives keep beside the weights; they are metadata, not parameters.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _count_layers(state_dict: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def model_config(state_dict: dict) -> dict:
    """CLIP's constructor arguments, read off the shapes of a state dict in OpenAI's naming."""
    if "visual.proj" not in state_dict:
        if any(k.startswith("visual.layer1") for k in state_dict):
            raise ValueError("this is a ResNet CLIP checkpoint; only ViT image towers are supported")
        raise ValueError("unknown architecture: no 'visual.proj' (not a CLIP ViT state dict)")
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=vision_patch_size * grid,
        vision_layers=_count_layers(state_dict, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=heads_for(transformer_width),
        transformer_layers=_count_layers(state_dict, "transformer.resblocks."),
    )


def build_model(state_dict: dict, source: str = "state dict") -> CLIP:
    """A CLIP with the architecture the tensors' shapes say (ViT-B/32, B/16, L/14, L/14@336px, or any smaller one),
    its weights loaded strictly, in fp32. `source` names the file in error messages."""
    state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_METADATA_KEYS}
    try:
        config = model_config(state_dict)
    except KeyError as e:
        raise ValueError(f"{source}: unknown architecture, missing {e}") from None
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    model = CLIP(**config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state_dict.items()
                   if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{source}: weights do not fit CLIP{config}: missing keys {shorten(missing)}, "
                         f"unexpected keys {shorten(unexpected)}, wrong shapes {shorten(wrong_shape)}")
    model.load_state_dict(state_dict, strict=True)
    return model.float().eval()


def shorten(keys, n=8) -> list:
    """At most n items of a list for an error message, and how many more there are."""
    keys = list(keys)
    return keys[:n] + ([f"... ({len(keys) - n} more)"] if len(keys) > n else [])


# ----------------------------------------------------------------------------------------------------------------------
# Looking inside: attention maps


@torch.no_grad()
def last_layer_attention(clip: CLIP, images: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                         deep_prompts: Optional[list] = None) -> torch.Tensor:
    """The image tower's last-layer attention weights: [N, heads, L, L], each row sums to 1 (L = 1 + patches, plus
    the vision prompts if any). Row 0 is where the class token, which becomes the image embedding, looks; reshaped
    over the patch grid it is an attention map like those of the paper's Fig. 4 (vanilla CLIP versus ViFi-CLIP on
    video frames). encode_image runs unchanged: a hook catches the last block's input (at its ln_1), and the weights
    are recomputed from it with the block's ln_1 and in_proj parameters (scaled_dot_product_attention does not return
    them)."""
    block, inputs = clip.visual.transformer.resblocks[-1], []
    hook = block.ln_1.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        clip.encode_image(images, prompts=prompts, deep_prompts=deep_prompts)
    finally:
        hook.remove()
    x = block.ln_1(inputs[-1])  # [N, L, W]
    W, heads = x.shape[-1], block.attn.heads
    q, k, _ = split_heads(F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias), heads, W)
    return (q.float() @ k.float().transpose(-2, -1) * (W // heads) ** -0.5).softmax(dim=-1)  # [N, heads, L, L]
