"""The embedded default: a small synthetic world of shapes, with the still images a tiny CLIP is pretrained on.

ViFi-CLIP's experiment is: take CLIP, pretrained on images and their captions, and carry it over to videos. This file
and tiny_clip.py build a miniature of that experiment that runs on a laptop CPU in minutes, so that the whole method
can be run, read and tested without OpenAI's weights or the real datasets:

  1. A renderer: coloured shapes (circle, square, triangle, star, cross, ring) of four sizes on varied dark
     backgrounds, drawn with numpy, optionally faint (translucent) or smeared by motion blur. Scenes are plain dicts, so
     a frame is a pure function of its scene.
  2. An image-caption corpus: random still scenes and captions that say what is visible ("a tilted small red star at
     the top left.", "a half-visible blue ring on the left edge.", "a blurry green circle.", "two shapes touching.").
     It stands in for the 400 million image-text pairs CLIP was pretrained on. Captions say what a single photo can
     show, never motion: a still image shows none.
  3. Motions: functions that turn a random object into 16 frames (moving to an edge or a corner, spinning, blinking,
     growing until huge, two objects coming together until touching, ...), with motion blur where things move fast.
  4. Three video datasets written as real H.264 .mp4 files with list files (train, val, test) and a labels CSV, in the
     layout data.py reads for HMDB-51 and UCF-101 (see "Datasets" below):
       toy-k400   74 classes, the source dataset, Kinetics-400's role (trained on for zero-shot transfer)
       toy-hmdb   24 motions of an arbitrary object, HMDB-51's role (motion matters most)
       toy-ucf    24 classes of one named object doing one thing, UCF-101's role (appearance helps more)
     Class names use caption words where a still can show the class ("moving to the left edge", "fading until
     faint"), as real action names do ("riding a horse"); the rest of their words only videos can teach.
  5. A tiny CLIP, in tiny_clip.py: clip_model.CLIP at a small size (48 px, ViT with patch 8, 4 + 4 layers of width
     128, the real BPE tokenizer), pretrained contrastively on the corpus of item 2. It ships in assets/ and is reached
     by clip_weights.load("miniworld-tiny") (TINY_CLIP_NAME, the world's default CLIP).

Everything is deterministic from a seed. A dataset's videos are generated on its first use into a cache directory
($VIFI_CACHE, default ~/.cache/vifi-clip), under a file lock, so several torchrun ranks can start at once. Each dataset
has a validation split, for choosing settings, and a test split, for reporting; train.py evaluates on test unless
$MINIWORLD_EVAL=val.

The gap between images and videos is real here: a still never shows spinning, blinking or bouncing, so words for them
never occur in captions; some classes differ only in motion (spinning vs standing still), and some only in the order of
their frames (growing vs shrinking), which mean pooling over frames cannot see at all (the paper's SSv2 case).

Command line:
  python -m world.miniworld generate [--reduced] [--root DIR]  write the video datasets (normally done on first use)
  python -m world.miniworld show                                print the datasets, classes and paths
  python -m world.tiny_clip --out assets/tiny_clip_world.pt     pretrain the tiny CLIP (1600 steps, 1 thread)
"""
import argparse
import concurrent.futures
import fcntl
import functools
import math
import multiprocessing
import os
import re
import shutil
import sys
import time

import av
import numpy as np

from plumbing import protocols

# ----------------------------------------------------------------------------------------------------------------------
# The vocabulary of the world

# Bump when anything that changes the generated files changes: the cached world is then regenerated.
WORLD_VERSION = 3

COLOURS = {  # name -> RGB in [0, 1]; bright, so they stand out on the dark backgrounds
    "red": (0.92, 0.12, 0.10),
    "green": (0.15, 0.80, 0.15),
    "blue": (0.15, 0.35, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.62, 0.18, 0.88),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
    "pink": (1.00, 0.52, 0.78),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
ROTATABLE = ("square", "triangle", "star", "cross")  # a turning circle or ring looks the same in every frame
SYMMETRY = {"square": math.pi / 2, "cross": math.pi / 2, "triangle": 2 * math.pi / 3, "star": 2 * math.pi / 5}

# Radii in units of the canvas side (the canvas is the unit square). Videos use small and big; stills all four
# (a growing object goes from tiny to huge).
SIZES = {"tiny": (0.04, 0.06), "small": (0.08, 0.12), "big": (0.19, 0.25), "huge": (0.29, 0.34)}
VIDEO_SIZES = ("small", "big")
SIZE_WORDS = {"tiny": ("tiny",), "small": ("small", "little"), "big": ("big", "large"), "huge": ("huge",)}

# A 3 x 3 grid of positions: column (left, middle, right) x row (top, middle, bottom), with the phrases captions use.
GRID = (0.2, 0.5, 0.8)
POSITION_PHRASES = {
    (0, 0): ("at the top left", "in the top left corner"),
    (1, 0): ("at the top", "up at the top"),
    (2, 0): ("at the top right", "in the top right corner"),
    (0, 1): ("on the left", "to the left"),
    (1, 1): ("in the middle", "in the centre"),
    (2, 1): ("on the right", "to the right"),
    (0, 2): ("at the bottom left", "in the bottom left corner"),
    (1, 2): ("at the bottom", "down at the bottom"),
    (2, 2): ("at the bottom right", "in the bottom right corner"),
}
# An object cut off by an edge of the canvas (its centre within its radius of the edge): what the last frame of a
# video of an object moving to that edge shows.
EDGE_PHRASES = {
    "left": ("on the left edge", "at the left edge"),
    "right": ("on the right edge", "at the right edge"),
    "top": ("on the top edge", "at the top edge"),
    "bottom": ("on the bottom edge", "at the bottom edge"),
}
# What a single still can show of an object beyond colour, shape, size and place, as real photo captions say
# "blurry" or "half hidden": turned off its upright pose, drawn faintly, smeared by motion blur, cut off by an edge.
STATE_WORDS = {"tilted": ("tilted",), "upright": ("upright",), "faint": ("faint", "pale"), "blurry": ("blurry",),
               "edge": ("half-visible",)}
# Two objects: how far apart they are.
DISTANCE_PHRASES = {"touching": ("touching",), "close": ("close together",), "far": ("far apart",)}


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
#
# A scene is {"background": {...}, "objects": [obj, ...]}; an object is a dict with
#   shape (one of SHAPES), rgb (3 floats), x, y (centre, canvas units, y downwards), r (radius), angle (radians),
#   alpha (opacity in [0, 1]), and optionally blur ([dx, dy]: motion blur along that vector, canvas units).
# Shapes are drawn on a grid SUPERSAMPLE times finer than the output and averaged down: cheap anti-aliasing.

SUPERSAMPLE = 2
BLUR_SAMPLES = 7  # copies of a blurred shape, spread along its blur vector


def random_background(rng: np.random.Generator) -> dict:
    """A dark background: plain, a gradient, soft blotches or faint stripes, with a fixed grain."""
    kind = ["plain", "gradient", "blotches", "stripes"][rng.integers(4)]
    return {
        "kind": kind,
        "base": rng.uniform(0.02, 0.28, 3).tolist(),
        "other": rng.uniform(0.02, 0.28, 3).tolist(),
        "angle": float(rng.uniform(0, 2 * math.pi)),
        "period": float(rng.uniform(0.12, 0.3)),
        "blotches": rng.uniform(-0.08, 0.08, (4, 4, 3)).tolist(),
        "grain_seed": int(rng.integers(2**31)),
    }


def render_background(bg: dict, size: int) -> np.ndarray:
    """[size, size, 3] float32 image of a background dict."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    base, other = np.array(bg["base"], np.float32), np.array(bg["other"], np.float32)
    along = (xx - 0.5) * math.cos(bg["angle"]) + (yy - 0.5) * math.sin(bg["angle"])  # signed distance along a direction
    if bg["kind"] == "plain":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif bg["kind"] == "gradient":
        t = np.clip(along + 0.5, 0, 1)[..., None]
        img = base * (1 - t) + other * t
    elif bg["kind"] == "blotches":  # a 4 x 4 grid of offsets, bilinearly interpolated: low-frequency texture
        grid = np.array(bg["blotches"], np.float32)
        g = np.clip(c * 3, 0, 3 - 1e-6)
        i0, f = g.astype(int), (g - g.astype(int))[:, None]
        rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]  # [size, 4, 3]
        img = base + rows[:, i0] * (1 - f[None]) + rows[:, i0 + 1] * f[None]
    else:  # stripes
        t = (np.sin(2 * math.pi * along / bg["period"]) > 0)[..., None]
        img = np.where(t, base, base * 0.6 + other * 0.4)
    grain = np.random.default_rng(bg["grain_seed"]).normal(0, 0.015, (size, size, 1)).astype(np.float32)
    return np.clip(img + grain, 0, 1).astype(np.float32)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit shape in its own coordinates (u right, v up, radius 1)."""
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "ring":
        d = u * u + v * v
        return (d <= 1) & (d >= 0.5 ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "triangle":  # equilateral, pointing up, centred on its circumcentre: three half-planes
        inside = np.ones(u.shape, bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3 + math.pi / 3  # outward normal of the edge opposite vertex k
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if shape == "star":  # five points: the radius goes linearly between 1 (points) and 0.45 (notches) with the angle
        theta = np.arctan2(u, v)  # 0 at the top
        k = np.abs(((theta / (2 * math.pi / 5)) % 1.0) - 0.5) * 2  # 1 at a point, 0 at a notch
        return u * u + v * v <= (0.45 + 0.55 * k) ** 2
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: dict, size: int = 64, background: np.ndarray = None) -> np.ndarray:
    """[size, size, 3] uint8 image of a scene. `background` (render_background's output) can be passed to reuse it
    across the frames of a video."""
    img = render_background(scene["background"], size) if background is None else background.copy()
    fine = size * SUPERSAMPLE
    c = (np.arange(fine, dtype=np.float32) + 0.5) / fine
    for obj in scene["objects"]:
        if obj["alpha"] <= 0:
            continue
        # Only the object's bounding box is rasterised.
        bx, by = obj.get("blur", (0.0, 0.0))  # motion blur: the shape smeared along this vector
        rx, ry = obj["r"] + abs(bx) / 2, obj["r"] + abs(by) / 2
        x0, x1 = max(int((obj["x"] - rx) * fine) - 1, 0), min(int((obj["x"] + rx) * fine) + 2, fine)
        y0, y1 = max(int((obj["y"] - ry) * fine) - 1, 0), min(int((obj["y"] + ry) * fine) + 2, fine)
        x0, y0 = x0 - x0 % SUPERSAMPLE, y0 - y0 % SUPERSAMPLE  # whole output pixels
        x1, y1 = min(x1 + (-x1) % SUPERSAMPLE, fine), min(y1 + (-y1) % SUPERSAMPLE, fine)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.meshgrid(c[y0:y1], c[x0:x1], indexing="ij")
        r, ca, sa = obj["r"], math.cos(obj["angle"]), math.sin(obj["angle"])
        offsets = np.linspace(-0.5, 0.5, BLUR_SAMPLES) if (bx or by) else [0.0]
        m = 0
        for o in offsets:
            dx, dy = (xx - obj["x"] - o * bx) / r, (obj["y"] + o * by - yy) / r  # v points up
            u, v = ca * dx + sa * dy, -sa * dx + ca * dy  # rotate the sample points by -angle
            m = m + _shape_mask(obj["shape"], u, v).astype(np.float32) / len(offsets)
        h, w = m.shape[0] // SUPERSAMPLE, m.shape[1] // SUPERSAMPLE
        cover = m.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))[..., None] * obj["alpha"]
        sl = img[y0 // SUPERSAMPLE:y0 // SUPERSAMPLE + h, x0 // SUPERSAMPLE:x0 // SUPERSAMPLE + w]
        sl *= 1 - cover
        sl += cover * np.array(obj["rgb"], np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_object(rng: np.random.Generator, colour: str = None, shape: str = None, size: str = None,
                  sizes: tuple = VIDEO_SIZES) -> dict:
    """An object with the given (or random) colour name, shape and size class (drawn from `sizes`), at a random place
    in the middle region, upright or at a random angle. Returned with its words (colour, size) for captions."""
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    size = size or sizes[rng.integers(len(sizes))]
    rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.05, 0.05, 3), 0, 1).tolist()
    r = float(rng.uniform(*SIZES[size]))
    return {"shape": shape, "rgb": rgb, "x": float(rng.uniform(0.3, 0.7)), "y": float(rng.uniform(0.3, 0.7)), "r": r,
            "angle": float(rng.uniform(0, 2 * math.pi)) if rng.random() < 0.5 else 0.0, "alpha": 1.0,
            "colour": colour, "size": size}


def is_tilted(obj: dict) -> bool:
    """A rotatable shape at least 20% of its symmetry angle away from upright."""
    if obj["shape"] not in SYMMETRY:
        return False
    f = (obj["angle"] / SYMMETRY[obj["shape"]]) % 1.0
    return 0.2 <= f <= 0.8


# ----------------------------------------------------------------------------------------------------------------------
# The image-caption corpus (CLIP's pretraining data in miniature)
#
# A caption names some of what the still shows, in a random selection and order of phrases, the way real alt-texts
# do: colour, shape (or "object", "shape"), size, place (a grid cell or an edge), and a state a single photo can show
# (tilted, faint, blurry, half-visible); two objects come with how far apart they are. Words for motion never occur.

NOUNS = ("object", "shape", "thing")
PREFIXES = ("a photo of", "a picture of", "an image of")
EMPTY_CAPTIONS = ("an empty background.", "a photo of nothing.", "an empty dark scene.")


def caption_fragments() -> list:
    """Every piece of text a caption is made of: the corpus's whole vocabulary, enumerated from the definitions above."""
    pieces = ["a", "an", "and", "two", "shapes", "objects", ".", ","] + list(NOUNS) + list(PREFIXES)
    pieces += list(EMPTY_CAPTIONS) + list(COLOURS) + list(SHAPES)
    pieces += [w for words in SIZE_WORDS.values() for w in words]
    pieces += [w for words in STATE_WORDS.values() for w in words]
    pieces += [p for phrases in POSITION_PHRASES.values() for p in phrases]
    pieces += [p for phrases in EDGE_PHRASES.values() for p in phrases]
    pieces += [p for phrases in DISTANCE_PHRASES.values() for p in phrases]
    return pieces


def articles(text: str) -> str:
    """'a orange' -> 'an orange'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def grid_cell(x: float, y: float) -> tuple:
    """The 3 x 3 grid cell of a point (nearest of GRID in each direction)."""
    return int(np.argmin([abs(x - g) for g in GRID])), int(np.argmin([abs(y - g) for g in GRID]))


def _pick(rng, options):
    return options[rng.integers(len(options))]


def place_on_edge(obj: dict, edge: str, rng) -> None:
    """Put obj's centre within 0.1-0.6 of its radius of an edge (cut off by it), anywhere along it."""
    inset = obj["r"] * rng.uniform(0.1, 0.6)
    along = float(rng.uniform(0.25, 0.75))
    obj["x"], obj["y"] = {"left": (inset, along), "right": (1 - inset, along),
                          "top": (along, inset), "bottom": (along, 1 - inset)}[edge]


def _object_phrase(rng, obj: dict, words: dict, place: bool = True) -> str:
    """'tilted small red star at the top left' with each part kept or dropped at random."""
    colour = obj["colour"] if rng.random() < 0.85 else ""
    noun = obj["shape"] if rng.random() < 0.8 else _pick(rng, NOUNS)
    size = _pick(rng, SIZE_WORDS[obj["size"]]) if rng.random() < (0.8 if obj["size"] in ("tiny", "huge") else 0.5) \
        else ""
    state = _pick(rng, STATE_WORDS[words["state"]]) if words.get("state") and rng.random() < 0.85 else ""
    pos = words["pos"] if place and rng.random() < 0.7 else ""
    if words.get("state") == "edge" and not pos and not state:
        state = STATE_WORDS["edge"][0]
    if state and rng.random() < 0.25:  # "a red star, tilted" as often as "a tilted red star"
        text = " ".join(w for w in (size, colour, noun, pos) if w) + f", {state}"
    else:
        text = " ".join(w for w in (state, size, colour, noun, pos) if w)
    return text


def random_still(rng: np.random.Generator) -> tuple:
    """One (scene, caption) pair of the corpus. 70% one object, 25% two, 5% none."""
    scene = {"background": random_background(rng), "objects": []}
    u = rng.random()
    n = 0 if u < 0.05 else (1 if u < 0.75 else 2)
    if n == 0:
        return scene, _pick(rng, EMPTY_CAPTIONS)
    prefix = _pick(rng, PREFIXES) + " " if rng.random() < 0.3 else ""
    if n == 1:
        obj = random_object(rng, sizes=tuple(SIZES))
        words = {}
        kind = rng.random()
        if kind < 0.2:  # on an edge
            edge = _pick(rng, list(EDGE_PHRASES))
            obj["r"] = min(obj["r"], SIZES["big"][1])
            place_on_edge(obj, edge, rng)
            words["pos"], words["state"] = _pick(rng, EDGE_PHRASES[edge]), "edge"
        else:
            cell = tuple(list(POSITION_PHRASES)[rng.integers(9)])
            margin = 0.8 * obj["r"]  # keep most of the object inside the canvas
            obj["x"] = float(np.clip(GRID[cell[0]] + rng.uniform(-0.06, 0.06), margin, 1 - margin))
            obj["y"] = float(np.clip(GRID[cell[1]] + rng.uniform(-0.06, 0.06), margin, 1 - margin))
            words["pos"] = _pick(rng, POSITION_PHRASES[cell])
            s = rng.random()
            if s < 0.15:
                obj["alpha"] = float(rng.uniform(0.2, 0.5))
                words["state"] = "faint"
            elif s < 0.3:
                angle, length = rng.uniform(0, math.pi), rng.uniform(0.06, 0.14)
                obj["blur"] = [float(length * math.cos(angle)), float(length * math.sin(angle))]
                words["state"] = "blurry"
            elif obj["shape"] in SYMMETRY:
                words["state"] = "tilted" if is_tilted(obj) else ("upright" if obj["angle"] == 0 else None)
        scene["objects"].append(obj)
        return scene, articles(prefix + "a " + _object_phrase(rng, obj, words) + ".")
    # two objects in different cells, or touching
    a, b = random_object(rng, sizes=("tiny", "small", "big")), random_object(rng, sizes=("tiny", "small", "big"))
    a["r"], b["r"] = min(a["r"], 0.15), min(b["r"], 0.15)
    if rng.random() < 0.3:  # touching: side by side or one above the other
        a["x"], a["y"] = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        d = (a["r"] + b["r"]) * 0.95
        angle = rng.uniform(0, 2 * math.pi)
        b["x"], b["y"] = a["x"] + d * math.cos(angle), a["y"] + d * math.sin(angle)
    else:
        cells = [tuple(c) for c in rng.permutation(list(POSITION_PHRASES))[:2]]
        for obj, cell in zip((a, b), cells):
            margin = 0.8 * obj["r"]
            obj["x"] = float(np.clip(GRID[cell[0]] + rng.uniform(-0.06, 0.06), margin, 1 - margin))
            obj["y"] = float(np.clip(GRID[cell[1]] + rng.uniform(-0.06, 0.06), margin, 1 - margin))
    for obj in (a, b):
        obj["x"], obj["y"] = float(obj["x"]), float(obj["y"])
    scene["objects"] = [a, b]
    dist = math.dist((a["x"], a["y"]), (b["x"], b["y"]))
    distance = "touching" if dist < (a["r"] + b["r"]) * 1.05 else ("close" if dist < 0.4 else "far")
    rel = _pick(rng, DISTANCE_PHRASES[distance])
    place = rng.random() < 0.3 and distance != "touching"
    pa = _object_phrase(rng, a, {"pos": POSITION_PHRASES[grid_cell(a["x"], a["y"])][0]}, place)
    pb = _object_phrase(rng, b, {"pos": POSITION_PHRASES[grid_cell(b["x"], b["y"])][0]}, place)
    v = rng.random()
    if v < 0.45:
        text = f"a {pa} and a {pb}" + (f", {rel}" if rng.random() < 0.6 else "")
    elif v < 0.75:
        text = f"two {_pick(rng, ('objects', 'shapes'))} {rel}"
    else:
        text = f"a {a['colour']} {a['shape']} and a {b['colour']} {b['shape']} {rel}"
    return scene, articles(prefix + text + ".")


def caption_batch(n: int, seed: int, start: int = 0, size: int = 64) -> tuple:
    """Pairs start .. start+n-1 of the corpus of `seed`, rendered: (uint8 [n, size, size, 3], list of n strings).
    Pair i depends only on (seed, i), so the corpus is an endless, reproducible stream."""
    images, captions = np.empty((n, size, size, 3), np.uint8), []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        scene, caption = random_still(rng)
        images[i - start] = render(scene, size)
        captions.append(caption)
    return images, captions


@functools.lru_cache(maxsize=None)
def caption_words(n: int = 20000, seed: int = 0) -> frozenset:
    """The words of the first n captions of the corpus (the pretraining stream is much longer, but uses no others)."""
    words = set()
    for i in range(n):
        words.update(re.findall(r"[a-z]+", random_still(np.random.default_rng([seed, i]))[1]))
    return frozenset(words)


def unseen_words(text: str) -> list:
    """The words of text that no caption contains: the tiny CLIP's text tower never trained their embeddings."""
    seen = caption_words()
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in seen]


# ----------------------------------------------------------------------------------------------------------------------
# Motions: an object (or two) over FRAMES frames
#
# Each motion function takes (rng, T, spec) and returns T lists of objects (one list per frame, the same objects in
# the same order). spec holds the class's colour and shape (None: random) and, for recolouring, the two colours.
# Reversing a video's frames turns growing into shrinking, appearing into disappearing and coming together into moving
# apart: those pairs differ ONLY in the order of their frames, so mean pooling over frames cannot tell them apart.
# render_video adds motion blur: each frame smears an object along its displacement between neighbouring frames, as a
# camera's exposure does, so a single frame of a fast motion shows a blurry object (a word the captions know).

FRAMES = 16  # frames per video
FPS = 8
EXPOSURE = 0.8  # motion blur: the fraction of the displacement per frame an object is smeared over


def _ramp(T: int, start: float, end: float) -> np.ndarray:
    """T values going linearly from start to end."""
    return np.linspace(start, end, T)


def _place(obj: dict, x: float, y: float, **changes) -> dict:
    return {**obj, "x": float(x), "y": float(y), **changes}


def _anywhere(obj: dict, rng) -> tuple:
    m = 0.8 * obj["r"] + 0.05
    return rng.uniform(max(m, 0.18), min(1 - m, 0.82)), rng.uniform(max(m, 0.18), min(1 - m, 0.82))


# Where a move ends: an edge (cut off by it, as EDGE_PHRASES stills show), a corner cell, or the middle.
CORNERS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}


def _move_to(rng, T, spec, target: str):
    """From near the middle (or, to the middle: from near an edge) to the target, at an even speed."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    if target == "middle":
        end = np.array([0.5, 0.5]) + rng.uniform(-0.05, 0.05, 2)
        angle = rng.uniform(0, 2 * math.pi)
        start = end + rng.uniform(0.3, 0.36) * np.array([math.cos(angle), math.sin(angle)])
    else:
        start = np.array([0.5, 0.5]) + rng.uniform(-0.08, 0.08, 2)
        if target in EDGE_PHRASES:
            end = dict(obj)
            place_on_edge(end, target, rng)
            end = np.array([end["x"], end["y"]])
            along = 1 if target in ("left", "right") else 0  # keep the other coordinate near the start's
            end[along] = start[along] + rng.uniform(-0.1, 0.1)
        else:
            cx, cy = CORNERS[target]
            m = 0.8 * obj["r"]
            end = np.array([cx, cy], float) * (1 - 2 * rng.uniform(0.12, 0.2)) + rng.uniform(0.12, 0.2)
            end = np.clip(end, m, 1 - m)
    path = start[None] + np.linspace(0, 1, T)[:, None] * (end - start)[None]
    return [[_place(obj, x, y)] for x, y in path]


def _still(rng, T, spec):
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = _anywhere(obj, rng)
    return [[_place(obj, x, y)] for _ in range(T)]


def _still_two(rng, T, spec):
    """Two objects standing still in different places."""
    a, b = _two_objects(rng, spec)
    cells = [tuple(c) for c in rng.permutation(list(POSITION_PHRASES))[:2]]
    for obj, cell in zip((a, b), cells):
        obj["x"] = float(np.clip(GRID[cell[0]] + rng.uniform(-0.06, 0.06), obj["r"], 1 - obj["r"]))
        obj["y"] = float(np.clip(GRID[cell[1]] + rng.uniform(-0.06, 0.06), obj["r"], 1 - obj["r"]))
    return [[dict(a), dict(b)] for _ in range(T)]


def _spin(rng, T, spec):
    obj = random_object(rng, spec.get("colour"), spec.get("shape") or ROTATABLE[rng.integers(len(ROTATABLE))])
    x, y = _anywhere(obj, rng)
    turns = rng.uniform(0.5, 1.0) * (1 if rng.random() < 0.5 else -1)
    angles = obj["angle"] + 2 * math.pi * turns * np.linspace(0, 1, T)
    return [[_place(obj, x, y, angle=float(a))] for a in angles]


def _blink(rng, T, spec):
    """On and off, 2 or 3 frames each."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = _anywhere(obj, rng)
    half, phase = int(rng.integers(2, 4)), int(rng.integers(6))
    return [[_place(obj, x, y, alpha=float(((t + phase) // half) % 2 == 0))] for t in range(T)]


def _bounce(rng, T, spec):
    """Up and down off a floor, like a ball: y = floor - height * |sin|."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    obj["r"] = min(obj["r"], 0.15)
    x = rng.uniform(0.25, 0.75)
    floor = rng.uniform(0.75, 0.85) - obj["r"] * 0.5
    height = rng.uniform(0.35, 0.45)
    bounces, phase = rng.uniform(1.5, 2.5), rng.uniform(0, 1)
    t = np.linspace(0, 1, T)
    ys = floor - height * np.abs(np.sin(math.pi * (bounces * t + phase)))
    return [[_place(obj, x, y)] for y in ys]


def _shake(rng, T, spec):
    """Fast small jitter from side to side (a period of about 3 frames)."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = _anywhere(obj, rng)
    amp, period, phase = rng.uniform(0.05, 0.08), rng.uniform(2.6, 3.4), rng.uniform(0, 2 * math.pi)
    return [[_place(obj, x + amp * math.sin(2 * math.pi * t / period + phase), y)] for t in range(T)]


def _swing(rng, T, spec):
    """Slowly from one side to the other and back (one to one and a half periods, wide)."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    obj["r"] = min(obj["r"], 0.15)
    y = rng.uniform(0.3, 0.7)
    amp, periods, phase = rng.uniform(0.25, 0.3), rng.uniform(1.0, 1.5), rng.uniform(0, 2 * math.pi)
    t = np.linspace(0, 1, T)
    return [[_place(obj, 0.5 + amp * math.sin(2 * math.pi * periods * s + phase), y)] for s in t]


def _orbit(rng, T, spec):
    """Round a circle of radius about 0.2 around a point near the middle."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    obj["r"] = min(obj["r"], 0.13)
    cx, cy, radius = rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55), rng.uniform(0.18, 0.24)
    a0, turns = rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.0) * (1 if rng.random() < 0.5 else -1)
    angles = a0 + 2 * math.pi * turns * np.linspace(0, 1, T)
    return [[_place(obj, cx + radius * math.cos(a), cy + radius * math.sin(a))] for a in angles]


def _grow(rng, T, spec):
    """From tiny to huge."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    radii = _ramp(T, rng.uniform(*SIZES["tiny"]), rng.uniform(*SIZES["huge"]))
    return [[_place(obj, x, y, r=float(r))] for r in radii]


def _appear(rng, T, spec):
    """Nothing, then the object fades in over 2 or 3 frames and stays."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = _anywhere(obj, rng)
    start, length = rng.uniform(0.2, 0.5) * T, rng.uniform(2, 3)
    return [[_place(obj, x, y, alpha=float(np.clip((t - start) / length, 0, 1)))] for t in range(T)]


def _fade(rng, T, spec):
    """Solid, then slowly fainter over the whole video, to the faintness of FAINT stills."""
    obj = random_object(rng, spec.get("colour"), spec.get("shape"))
    x, y = _anywhere(obj, rng)
    return [[_place(obj, x, y, alpha=float(a))] for a in _ramp(T, 1.0, rng.uniform(0.2, 0.35))]


def _two_objects(rng, spec):
    a = random_object(rng, spec.get("colour"), spec.get("shape"))
    b = random_object(rng, None, spec.get("shape"))
    while b["colour"] == a["colour"]:
        b = random_object(rng, None, spec.get("shape"))
    a["r"], b["r"] = min(a["r"], 0.14), min(b["r"], 0.14)
    return a, b


def _meet(rng, T, spec):
    """Two different objects from opposite sides until they touch in the middle."""
    a, b = _two_objects(rng, spec)
    horizontal, other = rng.random() < 0.5, rng.uniform(0.35, 0.65)
    gap = (a["r"] + b["r"]) / 2 * 0.95  # each centre's final distance from the meeting point: touching
    centre = rng.uniform(0.45, 0.55)
    pa, pb = _ramp(T, rng.uniform(0.1, 0.16), centre - gap), _ramp(T, rng.uniform(0.84, 0.9), centre + gap)
    if horizontal:
        return [[_place(a, p, other), _place(b, q, other)] for p, q in zip(pa, pb)]
    return [[_place(a, other, p), _place(b, other, q)] for p, q in zip(pa, pb)]


def _recolour(rng, T, spec):
    """One colour fading into another over the middle half of the video."""
    first, second = spec["colours"]
    obj = random_object(rng, first, spec.get("shape"))
    target = np.clip(np.array(COLOURS[second]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    x, y = _anywhere(obj, rng)
    frames = []
    for t in np.linspace(0, 1, T):
        w = float(np.clip((t - 0.25) / 0.5, 0, 1))
        frames.append([_place(obj, x, y, rgb=((1 - w) * np.array(obj["rgb"]) + w * target).tolist())])
    return frames


def _reversed(motion):
    return lambda rng, T, spec: motion(rng, T, spec)[::-1]


def _to(target):
    return lambda rng, T, spec: _move_to(rng, T, spec, target)


MOTIONS = {
    "left": _to("left"), "right": _to("right"), "top": _to("top"), "bottom": _to("bottom"),
    "top left": _to("top left"), "top right": _to("top right"), "bottom left": _to("bottom left"),
    "bottom right": _to("bottom right"), "middle": _to("middle"),
    "still": _still,
    "still two": _still_two,
    "spin": _spin,
    "blink": _blink,
    "bounce": _bounce,
    "shake": _shake,
    "swing": _swing,
    "orbit": _orbit,
    "grow": _grow,
    "shrink": _reversed(_grow),  # order-only partner of grow
    "appear": _appear,
    "disappear": _reversed(_appear),  # order-only partner of appear
    "fade": _fade,
    "meet": _meet,
    "part": _reversed(_meet),  # order-only partner of meet
    "recolour": _recolour,  # (a, b) and (b, a) are an order-only pair
}

# How each motion is told apart, for the README and the benchmark: "frame" = a single frame mostly shows it (where the
# object is), "motion" = only several frames show it (no single frame does, but the set of frames does), "order" =
# only the order of the frames shows it (its partner has the same frames reversed).
MOTION_CUE = {m: "frame" for m in ("left", "right", "top", "bottom", "top left", "top right", "bottom left",
                                   "bottom right", "middle", "still two")}
MOTION_CUE.update({m: "motion" for m in ("still", "spin", "blink", "bounce", "shake", "swing", "orbit", "fade")})
MOTION_CUE.update({m: "order" for m in ("grow", "shrink", "appear", "disappear", "meet", "part", "recolour")})


def add_motion_blur(frames: list) -> list:
    """Smear each object along its displacement between the neighbouring frames (EXPOSURE of it)."""
    T = len(frames)
    out = []
    for t in range(T):
        prev, nxt = frames[max(t - 1, 0)], frames[min(t + 1, T - 1)]
        objs = []
        for k, obj in enumerate(frames[t]):
            span = max(min(t + 1, T - 1) - max(t - 1, 0), 1)
            vx, vy = (nxt[k]["x"] - prev[k]["x"]) / span, (nxt[k]["y"] - prev[k]["y"]) / span
            if math.hypot(vx, vy) * EXPOSURE > 0.01:
                obj = {**obj, "blur": [float(vx * EXPOSURE), float(vy * EXPOSURE)]}
            objs.append(obj)
        out.append(objs)
    return out


def render_video(rng: np.random.Generator, spec: dict, T: int = FRAMES, size: int = 64) -> np.ndarray:
    """uint8 [T, size, size, 3] frames of one random video of a class spec."""
    background = random_background(rng)
    objects = add_motion_blur(MOTIONS[spec["motion"]](rng, FRAMES, spec))
    if T != FRAMES:  # a shorter video (the reduced world): every (FRAMES / T)-th frame, same motion
        objects = [objects[i] for i in np.linspace(0, FRAMES - 1, T).round().astype(int)]
    bg = render_background(background, size)
    return np.stack([render({"background": background, "objects": objs}, size, background=bg) for objs in objects])


# ----------------------------------------------------------------------------------------------------------------------
# Datasets
#
# Class names use the captions' words wherever a still can show the class ("moving to the left edge": the last frames
# show an object cut off by the left edge; "growing until huge", "fading until faint"), as real action names do
# ("riding a horse" is visible in a photo). Words that no still shows (spinning, blinking, bouncing, shaking,
# orbiting, moving, growing, ...) never occur in a caption, so the tiny CLIP's text tower knows nothing of them: those
# parts of a name are learned from videos only. That is the image-to-video gap ViFi-CLIP bridges.


def _c(name, motion, colour=None, shape=None, colours=None):
    spec = {"name": name, "motion": motion, "colour": colour, "shape": shape}
    if colours:
        spec["colours"] = colours
    return spec


# The motion phrases, in the order of the toy-hmdb classes. "{s}" is where toy-k400 puts its shape.
PHRASES = {
    "left": "{s} moving to the left edge", "right": "{s} moving to the right edge",
    "top": "{s} moving to the top edge", "bottom": "{s} moving to the bottom edge",
    "top left": "{s} moving to the top left corner", "top right": "{s} moving to the top right corner",
    "bottom left": "{s} moving to the bottom left corner", "bottom right": "{s} moving to the bottom right corner",
    "middle": "{s} moving to the middle",
    "still": "{s} standing still",
    "spin": "{s} spinning",
    "blink": "{s} blinking",
    "bounce": "{s} bouncing",
    "shake": "{s} shaking",
    "swing": "{s} swinging from side to side",
    "orbit": "{s} orbiting",
    "grow": "{s} growing until huge",
    "shrink": "{s} shrinking until tiny",
    "appear": "{s} appearing",
    "disappear": "{s} disappearing",
    "fade": "{s} fading until faint",
    "meet": "two {s} coming together until touching",
    "part": "two {s} moving far apart",
    "still two": "two {s} standing still",
}


def _phrase(motion: str, subject: str = "") -> str:
    """The class name of a motion, for a subject ('' for any object)."""
    p = PHRASES[motion]
    if motion in ("meet", "part", "still two"):
        subject = subject + "s" if subject else "objects"
    return p.format(s=subject).strip()


# HMDB-51's role: what an arbitrary object (random colour, shape, size, background) does. 24 classes.
TOY_HMDB = [_c(_phrase(m), m) for m in PHRASES]

# UCF-101's role: one named object doing one thing. Appearance (colour and shape) separates most classes, as it does
# in UCF-101; the pairs that share an object are separated by motion or, for the order-only pairs, by order alone.
TOY_UCF = [
    _c(f"{colour} {shape} " + _phrase(m), m, colour, shape) for colour, shape, m in (
        ("red", "circle", "top"), ("red", "circle", "bottom"), ("yellow", "triangle", "top left"),
        ("orange", "square", "bottom right"), ("white", "cross", "left"), ("white", "cross", "right"),
        ("green", "circle", "middle"),
        ("blue", "square", "spin"), ("blue", "square", "still"), ("yellow", "star", "blink"),
        ("yellow", "star", "still"), ("purple", "ring", "bounce"), ("purple", "ring", "still"),
        ("orange", "circle", "shake"), ("red", "star", "swing"), ("pink", "star", "orbit"),
        ("white", "triangle", "spin"), ("pink", "cross", "fade"),
        ("green", "triangle", "grow"), ("green", "triangle", "shrink"),
        ("blue", "circle", "appear"), ("blue", "circle", "disappear"))
] + [
    _c("square turning from red to blue", "recolour", None, "square", ("red", "blue")),
    _c("square turning from blue to red", "recolour", None, "square", ("blue", "red")),
]

# Kinetics-400's role, the source for zero-shot transfer: many classes, a shape doing something in a random colour.
# Every motion of toy-hmdb occurs with three shapes and every shape with many motions, so neither alone names the class:
# training on it teaches the motion words that toy-hmdb and toy-ucf use. No class name occurs in the target datasets.
def _k400_classes():
    classes = []
    for i, m in enumerate(PHRASES):
        pool = ROTATABLE if m == "spin" else SHAPES
        shapes = []
        for j in range(3):  # every other shape of the pool, the next one where that is taken (4 rotatable shapes)
            start = (i + 2 * j) % len(pool)
            shapes.append(next(s for s in pool[start:] + pool[:start] if s not in shapes))
        classes += [_c(_phrase(m, shape), m, shape=shape) for shape in shapes]
    classes.append(_c("star turning from green to yellow", "recolour", shape="star", colours=("green", "yellow")))
    classes.append(_c("cross turning from white to pink", "recolour", shape="cross", colours=("white", "pink")))
    return classes


TOY_K400 = _k400_classes()

# name -> (classes, minimum training videos per class, step, validation videos per class, test videos per class).
# Training counts are skewed: the class of frequency rank k (0 = most frequent; the ranking is a seeded permutation of
# the classes) has minimum + int(step * (C - 1 - k)) training videos. With step 1 all counts differ, so "the most
# frequent half is base" (the paper's base-to-novel split) is well defined for the targets; toy-k400 (step 0.25, 12-30
# videos a class, 1536 in all: kept small so that zero-shot training takes a couple of minutes on a CPU) has ties.
# A minimum >= 16 leaves K = 16 shots for every class of the few-shot targets.
# The validation split is for choosing settings (train.py's world defaults were measured on it); the test split is for
# reporting (README, notebooks).
DATASETS = {
    "toy-k400": (TOY_K400, 12, 0.25, 4, 4),
    "toy-hmdb": (TOY_HMDB, 20, 1, 15, 30),
    "toy-ucf": (TOY_UCF, 20, 1, 15, 30),
}
# The real dataset each one stands in for.
ROLES = {"toy-k400": "kinetics400", "toy-hmdb": "hmdb51", "toy-ucf": "ucf101"}
# The reduced world of the tests: every class, 2 training videos and 1 validation and 1 test video each, 8 frames.
REDUCED = {"train": 2, "val": 1, "test": 1, "frames": 8}
SPLITS = ("train", "val", "test")
# Words kept out of the filler vocabulary of the tiny CLIP's pretraining besides the class names' (see
# tiny_clip.FILLER_COUNTS): motion words a future class name might use, so that a renamed class never names a filler
# token.
RESERVED_WORDS = ("moving", "standing", "still", "spinning", "rotating", "turning", "blinking", "bouncing", "shaking",
                  "swinging", "orbiting", "growing", "shrinking", "appearing", "disappearing", "fading", "coming",
                  "together", "until", "from", "side", "to", "going", "round", "sliding", "falling", "rising",
                  "jumping", "running", "walking", "flying", "rolling", "waving", "flashing", "pulsing", "back",
                  "forth", "along", "towards", "away")


def slug(name: str) -> str:
    return name.replace(" ", "_")


def train_counts(dataset: str, seed: int = 0) -> list:
    """Training videos per class (in class order): skewed by a seeded ranking of the classes."""
    classes, minimum, step, _, _ = DATASETS[dataset]
    C = len(classes)
    rank = np.empty(C, int)
    rank[np.random.default_rng([seed, _dataset_index(dataset), 7]).permutation(C)] = np.arange(C)
    return [minimum + int(step * (C - 1 - int(k))) for k in rank]


def split_counts(dataset: str, seed: int = 0, reduced: bool = False) -> dict:
    """{split: videos per class (a list in class order)} of a dataset."""
    classes, _, _, n_val, n_test = DATASETS[dataset]
    if reduced:
        return {s: [REDUCED[s]] * len(classes) for s in SPLITS}
    return {"train": train_counts(dataset, seed), "val": [n_val] * len(classes), "test": [n_test] * len(classes)}


def _dataset_index(dataset: str) -> int:
    return list(DATASETS).index(dataset)


def write_video(path: str, frames: np.ndarray, fps: int = FPS):
    """Encode uint8 [T, H, W, 3] frames as H.264 (yuv420p, crf 18) in an .mp4, reproducibly: the same frames give the
    same bytes. That needs one x264 thread and no macroblock-tree rate control (mbtree=0): with mbtree, encoding the
    same 64 x 64 frames 30 times gave 5 different files (measured with PyAV 18 / x264 core 165)."""
    container = av.open(path, mode="w")
    try:
        container.metadata.clear()
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def _video_jobs(folder: str, dataset: str, seed: int, reduced: bool) -> tuple:
    """The videos of one dataset to render ((path, rng key, class spec, frames) each) and its list files' lines."""
    jobs, lines = [], {s: [] for s in SPLITS}
    classes = DATASETS[dataset][0]
    for split, counts in split_counts(dataset, seed, reduced).items():
        for label, spec in enumerate(classes):
            for i in range(counts[label]):
                rel = f"{slug(spec['name'])}/{slug(spec['name'])}_{split}_{i:03d}.mp4"
                key = [seed, _dataset_index(dataset), label, SPLITS.index(split), i]
                jobs.append((os.path.join(folder, "videos", rel), key, spec, REDUCED["frames"] if reduced else FRAMES))
                lines[split].append(f"{rel} {label}")
    return jobs, lines


def _make_videos(jobs: list):
    for path, key, spec, T in jobs:
        write_video(path, render_video(np.random.default_rng(key), spec, T))


def generate_dataset(folder: str, dataset: str, seed: int = 0, reduced: bool = False, workers: int = None):
    """Write one dataset into folder (which must not exist):
      videos/<class>/<class>_<split>_<i>.mp4,  labels.csv (id,name),
      train.txt, val.txt, test.txt ("<class>/<file>.mp4 <label>" per line, relative to videos/),
    and DATASET.txt, written last. The files depend only on (dataset, seed, reduced), not on the number of workers."""
    jobs, lists = _video_jobs(folder, dataset, seed, reduced)
    for path in {os.path.dirname(j[0]) for j in jobs}:
        os.makedirs(path, exist_ok=True)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    if workers <= 1:
        _make_videos(jobs)
    else:  # fork: the workers need only numpy and av; the videos are split into interleaved chunks
        chunks = [jobs[w::workers] for w in range(workers)]
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_make_videos, chunks))
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("id,name\n" + "".join(f"{i},{spec['name']}\n" for i, spec in enumerate(DATASETS[dataset][0])))
    for split, lines in lists.items():
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "DATASET.txt"), "w") as f:
        f.write(_stamp(dataset, seed, reduced))


def _stamp(dataset: str, seed: int, reduced: bool) -> str:
    return f"miniworld version {WORLD_VERSION} dataset {dataset} seed {seed} reduced {reduced}\n"


def cache_root() -> str:
    """$VIFI_CACHE, default ~/.cache/vifi-clip."""
    return os.path.expanduser(os.environ.get("VIFI_CACHE", os.path.join("~", ".cache", "vifi-clip")))


def world_dir(root: str = None, seed: int = 0, reduced: bool = False) -> str:
    name = f"miniworld-v{WORLD_VERSION}-seed{seed}" + ("-reduced" if reduced else "")
    return os.path.join(root or cache_root(), name)


def ensure_world(root: str = None, seed: int = 0, reduced: bool = False, workers: int = None,
                 datasets=None) -> str:
    """The world's folder, with the named datasets (default: all) generated first where missing or of another
    version; each dataset is generated on first use only. Safe when several processes call it at once (torchrun
    ranks): one generates under a file lock into a temporary folder and renames it into place; the others wait on the
    lock and find it done."""
    folder = world_dir(root, seed, reduced)
    names = list(DATASETS) if datasets is None else [datasets] if isinstance(datasets, str) else list(datasets)

    def ready(name):
        try:
            with open(os.path.join(folder, name, "DATASET.txt")) as f:
                return f.read() == _stamp(name, seed, reduced)
        except OSError:
            return False

    if all(ready(n) for n in names):
        return folder
    os.makedirs(folder, exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        for name in names:
            if ready(name):  # another process made it while we waited
                continue
            target = os.path.join(folder, name)
            tmp = f"{target}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            t0 = time.time()
            print(f"miniworld: generating {'the reduced ' if reduced else ''}{name} (seed {seed}) in {target} ...",
                  file=sys.stderr, flush=True)
            generate_dataset(tmp, name, seed, reduced, workers)
            if os.path.exists(target):  # an older version, or an interrupted copy: replace it
                shutil.rmtree(target)
            os.rename(tmp, target)
            print(f"miniworld: done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return folder


# Which list train.py evaluates on ("eval" of dataset_paths): the test split, unless $MINIWORLD_EVAL says "val" (for
# choosing settings: train.py's world defaults were measured that way; the README's tables and the notebooks use test).
EVAL_SPLIT_VARIABLE = "MINIWORLD_EVAL"


def eval_split() -> str:
    split = os.environ.get(EVAL_SPLIT_VARIABLE, "test")
    if split not in ("val", "test"):
        raise ValueError(f"${EVAL_SPLIT_VARIABLE} must be 'val' or 'test', not {split!r}")
    return split


def dataset_paths(name: str, root: str = None, seed: int = 0, reduced: bool = False) -> dict:
    """Where data.py finds dataset `name` (one of DATASETS), generating it if needed: {"root": video folder, "train",
    "val", "test": list files, "eval": the list to evaluate on (test, or val with $MINIWORLD_EVAL=val), "labels":
    labels CSV}."""
    if name not in DATASETS:
        raise KeyError(f"unknown miniworld dataset {name!r}; one of {list(DATASETS)}")
    d = os.path.join(ensure_world(root, seed, reduced, datasets=name), name)
    paths = {"root": os.path.join(d, "videos"), "labels": os.path.join(d, "labels.csv")}
    paths.update({s: os.path.join(d, f"{s}.txt") for s in SPLITS})
    paths["eval"] = paths[eval_split()]
    return paths


# The paper's protocols on the world (train.py's defaults when no dataset is named): zero-shot trains on toy-k400 and
# evaluates on these targets (Kinetics-400 -> HMDB-51, UCF-101); few-shot and base-to-novel use DEFAULT_TARGET.
ZEROSHOT_TARGETS = ("toy-hmdb", "toy-ucf")
DEFAULT_TARGET = "toy-hmdb"
# The world's CLIP, by the name clip_weights.load knows it: the tiny CLIP of tiny_clip.py, pretrained on the world's
# stills and shipped in assets/.
TINY_CLIP_NAME = "miniworld-tiny"


# ----------------------------------------------------------------------------------------------------------------------
# The world as one of train.py's datasets
class World:
    """The embedded world as one of train.py's datasets (train.DATASETS["miniworld"]; its defaults: train.WORLD):
    toy-k400 plays Kinetics-400 (zero-shot source, fully supervised), toy-hmdb and toy-ucf play HMDB-51 and UCF-101
    (zero-shot targets; few-shot and base-to-novel on toy-hmdb, or on the first toy dataset named by --targets)."""

    def splits(self, cfg) -> tuple:
        """Evaluated on each dataset's test split; $MINIWORLD_EVAL=val evaluates on the validation split instead
        (how the defaults above were chosen, so that the reported figures were not tuned on)."""
        def load(name, which):
            p = dataset_paths(name, cfg.data_root or None, reduced=cfg.reduced_world)
            return protocols.load_split(f"{name} {which}" if cfg.setting != "zeroshot" else name, p["root"], p[which],
                                        p["labels"])

        ev = eval_split()
        named = [t for t in cfg.targets.split(",") if t]
        unknown = [t for t in named if t not in DATASETS]
        if unknown:
            raise ValueError(f"--targets: {unknown} are not datasets of the embedded world ({list(DATASETS)})")
        if cfg.setting == "zeroshot":
            return load("toy-k400", "train"), [load(t, ev) for t in named or ZEROSHOT_TARGETS]
        if cfg.setting == "fully":
            return load("toy-k400", "train"), [load("toy-k400", ev)]
        target = named[0] if named else DEFAULT_TARGET
        train, val = load(target, "train"), load(target, ev)
        if cfg.setting == "fewshot":
            return protocols.kshot(train, cfg), [val]
        return protocols.base_novel(train, val, cfg)


WORLD = World()


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m world.miniworld", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the video datasets")
    g.add_argument("--root", default=None, help="cache folder (default $VIFI_CACHE or ~/.cache/vifi-clip)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--reduced", action="store_true", help="the tests' small world")
    g.add_argument("--workers", type=int, default=None)
    sub.add_parser("show", help="print the datasets and their classes")
    args = parser.parse_args(argv)
    if args.command == "generate":
        print(ensure_world(args.root, args.seed, args.reduced, args.workers))
    else:
        for name, (classes, _, _, n_val, n_test) in DATASETS.items():
            counts = train_counts(name)
            print(f"{name} ({ROLES[name]}'s role): {len(classes)} classes, {sum(counts)} training videos "
                  f"({min(counts)}-{max(counts)} per class), {n_val} validation and {n_test} test videos per class")
            for i, spec in enumerate(classes):
                print(f"  {i:2d} {spec['name']:<44} {MOTION_CUE[spec['motion']]:<6} train {counts[i]}")


if __name__ == "__main__":
    main()
