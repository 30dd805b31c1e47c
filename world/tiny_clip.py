"""The embedded world's tiny CLIP: OpenAI's CLIP at a small size, pretrained on the still images of miniworld.py.

It plays CLIP's part in the world's miniature of ViFi-CLIP's experiment (miniworld.py): clip_model.CLIP at 48 px (ViT
with patch 8, 4 + 4 layers of width 128, 8.0 M parameters, the real BPE tokenizer), pretrained with CLIP's own
objective (symmetric InfoNCE over a batch of image-caption pairs) on the world's image-caption corpus, whose captions
say what a still shows and never describe motion. The trained model ships packed in assets/tiny_clip_world.pt (see
"The shipped checkpoint" below) and is reached by clip_weights.load("miniworld-tiny") (miniworld.TINY_CLIP_NAME),
which unpacks it into the cache on first use.

Two details matter at this size (measured):
  - the vision tower's positional embedding is redrawn with std 0.5 (OpenAI's width ** -0.5 is 0.088 here): with the
    small default, the untrained image features hardly carry position and position words are never learned;
  - a 200-step warm-up: untrained image embeddings are nearly identical, and without warm-up the text tower follows
    them into a constant for a while.

Command line:
  python -m world.tiny_clip --out assets/tiny_clip_world.pt   pretrain the tiny CLIP (1600 steps, 1 thread) and
                                                             write it packed (the other flags: --help)
"""
import argparse
import functools
import hashlib
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

import clip_model
import data
from tokenizer import default_tokenizer, tokenize
from world import miniworld
from plumbing.atomic_files import atomic_write

# ----------------------------------------------------------------------------------------------------------------------
# The tiny CLIP
#
# The text context is 32 tokens (a caption takes at most 26 with its start and end tokens, 28 with fillers): room for
# the learned prompt tokens of prompts.py. Positions past 28 are never trained in pretraining (they keep their init).

TINY_CONFIG = dict(embed_dim=128, image_resolution=48, vision_layers=4, vision_width=128, vision_patch_size=8,
                   context_length=32, vocab_size=49408, transformer_width=128, transformer_heads=2,
                   transformer_layers=4)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
ASSET = os.path.join(ROOT, "assets", "tiny_clip_world.pt")


def token_table_init(seed: int, vocab_size: int = 49408, width: int = 128):
    """The token embedding table's initial value, N(0, 0.02), from numpy's legacy RandomState: its stream is frozen
    across numpy versions, so the table can be rebuilt bit-exactly from the seed (see pack_checkpoint)."""
    table = np.random.RandomState(seed).standard_normal((vocab_size, width)) * 0.02
    return torch.from_numpy(table.astype(np.float32))


def build_tiny_clip(seed: int = 0):
    """A freshly initialised tiny CLIP (clip_model.CLIP with TINY_CONFIG), deterministic from seed."""
    torch.manual_seed(seed)
    model = clip_model.CLIP(**TINY_CONFIG)
    with torch.no_grad():
        model.token_embedding.weight.copy_(token_table_init(seed, TINY_CONFIG["vocab_size"],
                                                            TINY_CONFIG["transformer_width"]))
        model.visual.positional_embedding.normal_(0, 0.5)  # module docstring: the default spread is too small here
    return model


def preprocess(images: np.ndarray, resolution: int = 48):
    """uint8 [N, H, W, 3] stills -> float [N, 3, resolution, resolution], exactly as data.py prepares an evaluation
    frame (short side scaled to 256/224 of the input size, centre crop, CLIP's normalisation), so the stills the tiny
    CLIP learns from are framed like the video frames it will see."""
    return data.apply_plan(images, data.eval_plan(images.shape[2], images.shape[1], resolution))


# Filler tokens. Real captions are full of words that say nothing about the picture ("my", "yesterday", "#art"), and
# CLIP's text tower learns to look past them. Ours would not: every caption here is pure description, so a word it
# never saw (its embedding is a random initial row, as large as a learned one) would weigh as much as "red" or "left",
# and class names such as "moving to the left" would be ruled by the random row of "moving". So each caption gets 0-2
# random tokens inserted at random places, drawn from the vocabulary minus the captions' own tokens and minus every
# word of every class name, and these rows are kept frozen at their initial values (their gradient is zeroed): to
# the text tower they look exactly like the words it never saw, and it learns to ignore such words. The words of the
# class names themselves never occur in pretraining.
FILLER_COUNTS = (0.4, 0.35, 0.25)  # probability of inserting 0, 1, 2 filler tokens into a caption


@functools.lru_cache(maxsize=None)
def caption_token_ids() -> frozenset:
    """Token ids of the corpus's captions (with start and end): the rows of the token table that pretraining trains.
    Every other row keeps its initial value. (BPE never merges across words, so the captions' tokens are those of
    their fragments.)"""
    tok = default_tokenizer()
    ids = {tok.sot_token, tok.eot_token}
    for piece in miniworld.caption_fragments():
        ids.update(tok.encode(piece))
    return frozenset(ids)


@functools.lru_cache(maxsize=None)
def filler_token_ids():
    """LongTensor of the filler vocabulary (see above)."""
    tok = default_tokenizer()
    excluded = set(caption_token_ids())
    words = {w for classes, *_ in miniworld.DATASETS.values() for spec in classes
             for w in re.findall(r"[a-z]+", spec["name"])}
    for word in words | set(miniworld.RESERVED_WORDS):
        excluded.update(tok.encode(word))
        excluded.update(tok.encode(word + "s"))
    return torch.tensor([i for i in range(tok.sot_token) if i not in excluded])


def add_filler_tokens(tokens, rng: np.random.Generator):
    """Insert 0-2 filler tokens at random places between the start and end tokens of each row of [N, L] tokens."""
    fillers = filler_token_ids()
    out = tokens.clone()
    for row in range(tokens.shape[0]):
        n = int(rng.choice(len(FILLER_COUNTS), p=FILLER_COUNTS))
        ids = tokens[row][: int(tokens[row].argmax()) + 1].tolist()  # sot ... eot
        n = min(n, tokens.shape[1] - len(ids))
        for _ in range(n):
            ids.insert(int(rng.integers(1, len(ids))), int(fillers[rng.integers(len(fillers))]))
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def corpus_batch(step: int, batch: int, seed: int, fillers: bool = True):
    """Batch `step` of the pretraining stream: (images [batch, 3, 48, 48], tokens [batch, 32])."""
    images, captions = miniworld.caption_batch(batch, seed, start=step * batch)
    tokens = tokenize(captions, TINY_CONFIG["context_length"])
    if fillers:
        tokens = add_filler_tokens(tokens, np.random.default_rng([seed, step, 1]))
    return preprocess(images, TINY_CONFIG["image_resolution"]), tokens


def probe_stills(n: int = 600, seed: int = 10**6) -> list:
    """n held-out one-object stills of the corpus (scenes), seeded apart from the pretraining stream."""
    items, i = [], 0
    while len(items) < n:
        scene, _ = miniworld.random_still(np.random.default_rng([seed, i]))
        i += 1
        if len(scene["objects"]) == 1:
            items.append(scene)
    return items


def still_probe(model, n: int = 600, seed: int = 10**6) -> dict:
    """Zero-shot accuracy on held-out one-object stills: colour (8-way), shape (6-way), 9-way position (objects in
    a grid cell), size (4-way), edge (4-way, objects cut off by an edge), and three 2-way states of objects in a grid
    cell: tilted vs upright (rotatable shapes), faint vs solid, blurry vs sharp. Each attribute is read by comparing
    captions that differ only in it; accuracies are balanced (the mean over the true values of the accuracy on each),
    so chance is 100 / ways."""
    scenes = probe_stills(n, seed)
    images = preprocess(np.stack([miniworld.render(s) for s in scenes]), TINY_CONFIG["image_resolution"])
    objs = [s["objects"][0] for s in scenes]
    model.eval()
    cache = {}

    def encode(texts):
        key = tuple(texts)
        if key not in cache:
            with torch.no_grad():
                cache[key] = torch.nn.functional.normalize(
                    model.encode_text(tokenize(list(texts), TINY_CONFIG["context_length"])), dim=-1)
        return cache[key]

    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)

    def accuracy(items):  # items: (index, candidate captions, index of the true one); balanced over the true ones
        if not items:
            return None
        hits = {}
        for k, texts, t in items:
            hits.setdefault(t, []).append(int((img[k] @ encode(texts).T).argmax()) == t)
        return 100 * float(np.mean([np.mean(h) for h in hits.values()]))

    colours, shapes, sizes = list(miniworld.COLOURS), list(miniworld.SHAPES), list(miniworld.SIZES)
    cells, edges = list(miniworld.POSITION_PHRASES), list(miniworld.EDGE_PHRASES)
    an = miniworld.articles  # "a orange star." -> "an orange star."
    on_edge = [min(o["x"], 1 - o["x"], o["y"], 1 - o["y"]) < o["r"] for o in objs]
    edge_of = lambda o: edges[int(np.argmin([o["x"], 1 - o["x"], o["y"], 1 - o["y"]]))]  # noqa: E731
    res = {
        "colour": accuracy([(k, [f"a {c} object." for c in colours], colours.index(o["colour"]))
                            for k, o in enumerate(objs) if o["alpha"] == 1]),
        "shape": accuracy([(k, [an(f"a {o['colour']} {s}.") for s in shapes], shapes.index(o["shape"]))
                           for k, o in enumerate(objs) if not on_edge[k]]),
        "position": accuracy([(k, [an(f"a {o['colour']} {o['shape']} {miniworld.POSITION_PHRASES[c][0]}.")
                                   for c in cells], cells.index(miniworld.grid_cell(o["x"], o["y"])))
                              for k, o in enumerate(objs) if not on_edge[k]]),
        "size": accuracy([(k, [an(f"a {miniworld.SIZE_WORDS[z][0]} {o['colour']} {o['shape']}.") for z in sizes],
                           sizes.index(o["size"])) for k, o in enumerate(objs) if not on_edge[k]]),
        "edge": accuracy([(k, [an(f"a {o['colour']} {o['shape']} {miniworld.EDGE_PHRASES[e][0]}.") for e in edges],
                           edges.index(edge_of(o))) for k, o in enumerate(objs) if on_edge[k]]),
        "tilted": accuracy([(k, [an(f"a {w} {o['colour']} {o['shape']}.") for w in ("upright", "tilted")],
                             int(miniworld.is_tilted(o))) for k, o in enumerate(objs)
                            if not on_edge[k] and o["shape"] in miniworld.SYMMETRY
                            and (o["angle"] == 0 or miniworld.is_tilted(o)) and "blur" not in o and o["alpha"] == 1]),
        "faint": accuracy([(k, [an(f"a {o['colour']} {o['shape']}."), an(f"a faint {o['colour']} {o['shape']}.")],
                            int(o["alpha"] < 1)) for k, o in enumerate(objs) if not on_edge[k] and "blur" not in o]),
        "blurry": accuracy([(k, [an(f"a {o['colour']} {o['shape']}."), an(f"a blurry {o['colour']} {o['shape']}.")],
                             int("blur" in o)) for k, o in enumerate(objs) if not on_edge[k] and o["alpha"] == 1]),
    }
    return {k: round(v, 1) for k, v in res.items() if v is not None}


def pretrain(steps: int = 1600, batch: int = 128, lr: float = 3e-4, warmup: int = 200, weight_decay: float = 0.2,
             seed: int = 0, log_every: int = 50, probe_every: int = 300, log=print, on_probe=None):
    """Contrastive pretraining of the tiny CLIP on the caption corpus; returns the model (eval mode).

    AdamW (betas 0.9/0.98, eps 1e-6 as OpenAI's), linear warm-up then cosine to 0, gradient clipping at 1.0, weight
    decay only on 2-D weights that are not embeddings, logit scale learned from log(1/0.07) and clamped at log(100).
    Zero weight decay on the token table means that rows of tokens absent from the captions get exactly zero updates
    (Adam's step is m / (sqrt(v) + eps) with m = v = 0): pack_checkpoint relies on it."""
    model = build_tiny_clip(seed)
    # Only the caption tokens' rows of the token table are trained (see FILLER_COUNTS): they live in a small parameter
    # while training, and the big table stays frozen. The same arithmetic as training the whole table with those rows'
    # gradient kept (AdamW changes a row with zero gradient and zero decay not at all), without a 49408-row gradient
    # and optimizer step at every step.
    table = model.token_embedding.weight
    table.requires_grad_(False)
    rows = torch.tensor(sorted(caption_token_ids()))
    row_of = torch.full((table.shape[0],), -1, dtype=torch.long)
    row_of[rows] = torch.arange(len(rows))
    trained_rows = torch.nn.Parameter(table[rows].clone())

    def embed(tokens):
        k = row_of[tokens]
        return torch.where((k >= 0)[..., None], trained_rows[k.clamp(min=0)], F.embedding(tokens, table))

    model.token_embedding.forward = embed
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + [("token_rows", trained_rows)]
    decay = [p for n, p in params if p.ndim == 2 and "embedding" not in n and n != "token_rows"]
    rest = [p for n, p in params if not (p.ndim == 2 and "embedding" not in n and n != "token_rows")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def write_back():  # the trained rows into the table, for probing and saving
        with torch.no_grad():
            table[rows] = trained_rows

    def schedule(s):  # linear warm-up, then cosine to 0
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    t0, running = time.time(), []
    for step in range(steps):
        model.train()
        images, tokens = corpus_batch(step, batch, seed)
        logits_per_image, logits_per_text = model(images, tokens)
        labels = torch.arange(len(images))
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running.append(loss.item())
        if log and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps} loss {np.mean(running):.3f} logit_scale {model.logit_scale.exp().item():.1f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f} s")
            running = []
        if log and probe_every and ((step + 1) % probe_every == 0 or step + 1 == steps):
            write_back()
            log(f"  stills zero-shot: {still_probe(model)}")
            if on_probe:  # e.g. save an intermediate checkpoint
                on_probe(model, step + 1)
    write_back()
    del model.token_embedding.forward  # back to nn.Embedding's own
    table.requires_grad_(True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# The shipped checkpoint
#
# The token table is 49408 x 128 = 6.3 M of the model's 8.0 M parameters, but the captions use only a few dozen tokens
# (71 rows in the shipped model): every other row still holds its initial value (zero weight decay and Adam give them
# exactly zero updates). So the asset stores the trained rows and the seed of the initial table, and the table is
# rebuilt on load: 6.7 MB in fp32 instead of 32 MB (fp16 would still be 16 MB and not exact). The rebuilt state dict
# is checked against a SHA-256 of the trained one.


def state_dict_sha256(state_dict: dict) -> str:
    """A hash of a state dict's names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def pack_checkpoint(state_dict: dict, init_seed: int) -> dict:
    """The compact form of a tiny CLIP state dict whose token table started as token_table_init(init_seed)."""
    table = state_dict["token_embedding.weight"]
    init = token_table_init(init_seed, *table.shape)
    rows = torch.nonzero((table != init).any(dim=1)).flatten()
    rest = {k: v.clone() for k, v in state_dict.items() if k != "token_embedding.weight"}
    return {"format": "miniworld-tiny-clip/1", "state_dict": rest, "token_rows": rows,
            "token_values": table[rows].clone(), "token_init_seed": init_seed,
            "token_table_shape": list(table.shape), "sha256": state_dict_sha256(state_dict)}


def unpack_checkpoint(packed: dict) -> dict:
    """The full state dict (OpenAI's names) of a packed checkpoint, checked bit-exact against its hash."""
    table = token_table_init(packed["token_init_seed"], *packed["token_table_shape"])
    table[packed["token_rows"]] = packed["token_values"]
    state_dict = dict(packed["state_dict"])
    state_dict["token_embedding.weight"] = table
    if state_dict_sha256(state_dict) != packed["sha256"]:
        raise RuntimeError("the tiny CLIP rebuilt from the packed checkpoint does not match its hash (did numpy's "
                           "RandomState stream change?)")
    return state_dict


def tiny_clip_checkpoint(asset: str = ASSET) -> str:
    """Path of the tiny CLIP as a plain state dict file (OpenAI's names, torch.load(weights_only=True)), unpacked from
    the shipped asset into the cache on first use. clip_weights.load("miniworld-tiny") calls this."""
    if not os.path.isfile(asset):
        raise FileNotFoundError(f"{asset} is missing; build it with: python -m world.tiny_clip --out {asset}")
    with open(asset, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    path = os.path.join(miniworld.cache_root(), f"tiny_clip_world-{digest}.pt")
    if os.path.isfile(path):
        return path
    os.makedirs(miniworld.cache_root(), exist_ok=True)
    state_dict = unpack_checkpoint(torch.load(asset, map_location="cpu", weights_only=True))
    with atomic_write(path) as f:  # a concurrent reader (another torchrun rank) sees no file or the whole file
        torch.save(state_dict, f)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m world.tiny_clip", description="pretrain the tiny CLIP on the "
                                     "world's caption corpus and write the packed checkpoint")
    parser.add_argument("--out", default=ASSET)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--probe-every", type=int, default=500,
                        help="probe the stills (and save <out>.step<N>) this often")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the shipped asset was built with 1; a busy machine also runs it fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)  # before the intermediate checkpoints
    t0 = time.time()

    def save_intermediate(model, step):
        if step < args.steps:
            torch.save(pack_checkpoint(model.state_dict(), args.seed), f"{args.out}.step{step}")

    model = pretrain(args.steps, args.batch, args.lr, seed=args.seed, probe_every=args.probe_every,
                     log=lambda s: print(s, flush=True), on_probe=save_intermediate)
    packed = pack_checkpoint(model.state_dict(), args.seed)
    with atomic_write(args.out) as f:  # a kill while writing leaves the previous asset whole
        torch.save(packed, f)
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 1e6:.1f} MB, {len(packed['token_rows'])} trained token "
          f"rows, state dict sha256 {packed['sha256']}, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
