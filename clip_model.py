"""CLIP (ViT image tower + causal text tower), written from scratch in plain PyTorch.

This is the model of Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021),
in the form OpenAI released it: the parameter names and shapes are exactly those of OpenAI's checkpoints, so a state
dict moves between their code and ours with `strict=True`. ViFi-CLIP (vifi.py) fine-tunes this model on videos by
encoding every frame as an image (paper Sec. 4).

Reading order:
  LayerNorm, QuickGELU          two details OpenAI's weights depend on
  Attention, ResidualBlock      one pre-norm transformer layer (scaled_dot_product_attention inside)
  Transformer                   a stack of layers, with the deep-prompt hook (below), activation checkpointing and
                                a last layer that computes only the token a tower reads
  VisionTransformer             patches -> class token + positions -> transformer -> projected class token
  CLIP                          both towers, encode_image / encode_text / forward
  build_model                   the architecture inferred from a state dict's shapes
  load                          OpenAI names, TorchScript archives, plain state dicts, Hugging Face checkpoints

Layout: every sequence tensor here is batch-first, [N, L, W] (OpenAI's code is sequence-first, [L, N, W]; the
weights don't care).

The deep-prompt hook (used by prompts.py, paper Sec. 5, Fig. 6): both towers take two optional arguments,
  prompts:      [n_ctx, W] learnable tokens added to the input sequence (vision: after the patch tokens, before
                ln_pre; text: right after the start token, in front of the words), and
  deep_prompts: a list of [n_ctx, W] tensors, one per later layer: before layer i (i = 1 .. len(deep_prompts)) the
                prompt positions of the running sequence are replaced by deep_prompts[i - 1].
With no prompts the towers are exactly plain CLIP. Nothing else of CLIP needs to change to prompt it.
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
        # over the [N, L, 4W] activation. The in-place division is autograd-safe: silu saves its input, not its output.
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

    def forward(self, x: torch.Tensor, causal: bool, read: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [N, L, W] -> [N, L, W]. With read ([N, Q] positions): -> [N, Q, W], the outputs at those positions only;
        every position still serves as a key and a value."""
        N, L, W = x.shape
        heads, head_dim = self.heads, W // self.heads
        if read is None:  # every position is a query: one matmul makes q, k and v
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3W]
            q, k, v = qkv.view(N, L, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # [N, heads, L, head_dim] each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [N, heads, L, head_dim]
        else:  # queries at the read positions only
            w_q, w_kv = self.in_proj_weight.split([W, 2 * W])
            b_q, b_kv = self.in_proj_bias.split([W, 2 * W])
            q = F.linear(gather_positions(x, read), w_q, b_q)  # [N, Q, W]
            q = q.view(N, -1, heads, head_dim).transpose(1, 2)  # [N, heads, Q, head_dim]
            kv = F.linear(x, w_kv, b_kv)  # [N, L, 2W]
            k, v = kv.view(N, L, 2, heads, head_dim).permute(2, 0, 3, 1, 4)  # [N, heads, L, head_dim] each
            mask = None
            if causal:  # a query sees the keys up to its own position (is_causal would align the queries at 0)
                mask = (torch.arange(L, device=x.device) <= read.unsqueeze(-1)).unsqueeze(1)  # [N, 1, Q, L]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, heads, Q, head_dim]
        return self.out_proj(y.transpose(1, 2).reshape(N, -1, W))


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x: [N, L, W], positions: [N, Q] -> [N, Q, W], x[n, positions[n, q]]."""
    return x.take_along_dim(positions.unsqueeze(-1), dim=1)


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

    def forward(self, x: torch.Tensor, causal: bool = False, read: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [N, L, W] -> [N, L, W], or [N, Q, W] at the read positions ([N, Q]) only (see Transformer)."""
        y = self.attn(self.ln_1(x), causal, read)
        if read is not None:
            x = gather_positions(x, read)
        x = x + y
        return x + self.mlp(self.ln_2(x))


def replace_tokens(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """x[:, start:start+n] = tokens for every sequence of the batch, out of place (autograd-safe).
    x: [N, L, W], tokens: [n, W]."""
    n = tokens.shape[0]
    tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], tokens, x[:, start + n:]], dim=1)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualBlock(width, heads) for _ in range(layers)])
        self.grad_checkpointing = False  # recompute each layer's activations in backward: less memory, ~30% slower

    def forward(self, x: torch.Tensor, causal: bool = False, deep_prompts: Optional[list] = None,
                prompt_start: int = 0, read: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [N, L, W] -> [N, L, W]. deep_prompts[i-1] ([n_ctx, W]) replaces x[:, prompt_start:prompt_start+n_ctx]
        before layer i.

        read ([N, Q] positions): return only the outputs at those positions, [N, Q, W]. Each tower reads one token
        (the class token, the end token), so its last layer needs queries, attention output and MLP there only; the
        other positions are still its keys and values. Same result, about 7% less work at ViT-B/16."""
        deep_prompts = deep_prompts or []
        if len(deep_prompts) >= self.layers:
            raise ValueError(f"{len(deep_prompts)} deep prompts for {self.layers} layers: at most layers - 1 "
                             "(the input prompts count as layer 0)")
        for i, block in enumerate(self.resblocks):
            if 1 <= i <= len(deep_prompts):
                x = replace_tokens(x, prompt_start, deep_prompts[i - 1])
            last_read = read if i == self.layers - 1 else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, last_read, use_reentrant=False)
            else:
                x = block(x, causal, last_read)
        return x


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
        class_token = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)  # [N, 1]: position 0
        x = self.transformer(x, deep_prompts=deep_prompts, prompt_start=prompt_start, read=class_token)  # [N, 1, W]
        x = self.ln_post(x[:, 0])  # [N, W]
        return x @ self.proj  # [N, output_dim]


class CLIP(nn.Module):
    """Both towers. The constructor takes OpenAI's arguments (ViT image towers only; ResNet CLIPs are not used by
    ViFi-CLIP)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        heads=vision_width // 64 or 1, output_dim=embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self):
        """OpenAI's initialisation, so that a model trained from scratch (the tiny one of miniworld.py) starts where
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
        Transformer). Same result as running all 77 positions, several times faster for short prompts such as class
        names.
        prompts ([n_ctx, W]) are inserted after the start token; the sequence is then cut back to context_length.
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
        x = self.transformer(x, causal=True, deep_prompts=deep_prompts, prompt_start=1, read=eot.unsqueeze(1))
        x = self.ln_final(x[:, 0])  # [N, W], at the end token
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
        transformer_heads=max(transformer_width // 64, 1),
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
        raise ValueError(f"{source}: weights do not fit CLIP{config}: missing keys {_short(missing)}, "
                         f"unexpected keys {_short(unexpected)}, wrong shapes {_short(wrong_shape)}")
    model.load_state_dict(state_dict, strict=True)
    return model.float().eval()


def _short(keys, n=8):
    keys = list(keys)
    return keys[:n] + ([f"... ({len(keys) - n} more)"] if len(keys) > n else [])


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
TINY_MODEL_NAME = "miniworld-tiny"  # the embedded default's tiny CLIP, built by miniworld.py


def available_models() -> list:
    return list(_MODELS) + [TINY_MODEL_NAME]


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
    tmp = f"{target}.{os.getpid()}.part"
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as source, open(tmp, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, a cut connection
            raise failed(f"{type(e).__name__}: {e}") from e
        actual = sha256_of(tmp)
        if actual != expected_sha256:
            raise failed(f"downloaded file has SHA-256 {actual}, expected {expected_sha256} (incomplete or altered)")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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
    if name_or_path == TINY_MODEL_NAME:
        import miniworld  # the one import against the flow: the embedded default lives there and is built on demand
        return miniworld.tiny_clip_checkpoint()
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
        raise ValueError(f"{source}: unexpected keys in Hugging Face checkpoint: {_short(leftover)}")
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


# ----------------------------------------------------------------------------------------------------------------------
# Looking inside: attention maps


@torch.no_grad()
def last_layer_attention(clip: CLIP, images: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                         deep_prompts: Optional[list] = None) -> torch.Tensor:
    """The image tower's last-layer attention weights: [N, heads, L, L], each row sums to 1 (L = 1 + patches, plus
    the vision prompts if any). Row 0 is where the class token, which becomes the image embedding, looks; reshaped
    over the patch grid it is an attention map like those of the paper's Fig. 4 (vanilla CLIP versus ViFi-CLIP on
    video frames). encode_image runs unchanged: a hook catches the last block's input, and the weights are recomputed
    from it with the block's ln_1 and in_proj parameters (scaled_dot_product_attention does not return them)."""
    block, inputs = clip.visual.transformer.resblocks[-1], []
    hook = block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        clip.encode_image(images, prompts=prompts, deep_prompts=deep_prompts)
    finally:
        hook.remove()
    x = block.ln_1(inputs[-1])  # [N, L, W]
    N, L, W = x.shape
    heads = block.attn.heads
    qkv = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).view(N, L, 3, heads, W // heads)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]  # [N, heads, L, head_dim] each
    return (q.float() @ k.float().transpose(-2, -1) * (W // heads) ** -0.5).softmax(dim=-1)
