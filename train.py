"""Train and evaluate ViFi-CLIP in every setting of the paper, on one process or many (torchrun).

    python train.py --setting fewshot --k 16                         # the embedded world, one process, CPU is fine
    torchrun --nproc_per_node=8 train.py --setting fewshot --k 16 \\
        --dataset hmdb51 --data-root /data/hmdb51                    # the paper's Table 3 protocol on 8 GPUs

Settings (paper Sec. 3 and Appendix D):
  zeroshot    train on the source dataset (Kinetics-400), evaluate on the target datasets' splits, whose classes are
              unseen; report the mean and spread over the three splits (Table 1)
  base2novel  train on the 16-shot base classes (most frequent half), evaluate base and novel classes, and their
              harmonic mean (Table 2)
  fewshot     train on K videos per class, evaluate on the first validation split (Table 3)
  fully       train on all training videos, evaluate with 4 temporal x 3 spatial views at the end (Table 4)

What is trained (--train, vifi.py): both towers (ViFi-CLIP), image (CLIP image-FT), text (CLIP text-FT),
prompts (bridge and prompt, Sec. 5, usually with --init-from a bridged model), none (vanilla CLIP, evaluation only).

Everything the run used goes to --out: config.json, log.jsonl (one line per epoch), metrics.json (every figure, the
configuration and the code version), last.pt and best.pt (written atomically; --resume continues exactly).
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import clip_model
import data
import vifi

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = os.path.join(HERE, "splits")

# ----------------------------------------------------------------------------------------------------------------------
# Configuration: one dataclass, every field a command-line flag; None means "the setting's default" (resolve_defaults)


@dataclass
class Config:
    # what to run
    setting: str = "fewshot"            # zeroshot | base2novel | fewshot | fully
    k: int = 16                         # shots per class: fewshot, and base2novel's base classes (16 in the paper)
    split: int = 1                      # base2novel: seed of the 16-shot base split; fewshot/fully: validation split
    dataset: str = "miniworld"          # miniworld | hmdb51 | ucf101 | ssv2 | k400 | k600 | custom
    data_root: str = ""                 # the folder holding the dataset's videos (real datasets and custom)
    train_list: str = ""                # custom dataset: list file of "relative/path label" lines
    val_list: str = ""                  # custom dataset
    labels: str = ""                    # custom dataset: labels CSV "id,name"
    targets: str = ""                   # zeroshot: comma-separated target datasets (default: the source's usual ones)
    target_roots: str = ""              # zeroshot on real data: comma-separated video folders, one per target
    # the model
    clip: Optional[str] = None          # name or path (clip_model.load); default ViT-B/16, or the tiny world model
    train: str = "both"                 # both | image | text | prompts | none
    fusion: str = "embedding"           # embedding | decision | image (Table 5)
    template: Optional[str] = None      # default "a photo of a {}."; the bare "{}" for vanilla CLIP (--train none
                                        # without --init-from); "{}." behind learned text prompts (vifi.py)
    n_ctx_text: Optional[int] = None    # prompt learning (--train prompts): tokens and depth per tower
    n_ctx_vision: Optional[int] = None
    depth_text: Optional[int] = None
    depth_vision: Optional[int] = None
    init_from: str = ""                 # weights to start from (bridge and prompt: the bridged model)
    # optimisation (defaults from the paper's Appendix B and the authors' configs, per setting)
    frames: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None    # effective batch: micro_batch x processes x accumulation steps
    micro_batch: Optional[int] = None   # videos per process per forward pass
    lr: Optional[float] = None
    weight_decay: float = 0.001
    warmup_epochs: Optional[float] = None
    mixup: Optional[float] = None       # mixup alpha (0 disables); the authors' default 0.8
    cutmix: Optional[float] = None      # cutmix alpha (0 disables); the authors' default 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: Optional[float] = None
    # evaluation
    num_clips: Optional[int] = None     # final evaluation views: temporal clips x spatial crops
    num_crops: Optional[int] = None
    eval_every: Optional[int] = None    # epochs between evaluations on the validation set (default 1; 5 in the world)
    eval_only: bool = False
    # engineering
    precision: str = "fp32"             # fp32 | bf16 | fp16 (autocast; weights stay fp32)
    grad_checkpointing: bool = False
    compile: bool = False
    workers: Optional[int] = None       # DataLoader workers per process (default: 1 on CPU, up to 10 on a GPU)
    input_size: Optional[int] = None    # frame size fed to the image tower (default: the model's resolution)
    augment: Optional[str] = None       # paper (crop, flip, colour) | crop (no flip or colour) | none (centre crop):
                                        # the embedded world's classes depend on direction, colour and edges
    normalization: Optional[str] = None  # clip | imagenet; default clip, or imagenet when --init-from is one of the
                                         # authors' released checkpoints (they were trained on ImageNet statistics)
    seed: int = 1024
    out: str = "out"
    resume: bool = False                # continue the run in --out from its last.pt
    save_every: int = 0                 # also save last.pt every N optimizer steps (0: at epoch ends only)
    max_steps: int = 0                  # stop after this many optimizer steps (tests, quick looks); 0: no limit
    reduced_world: bool = False         # the embedded world's reduced version (2 training videos a class: tests)
    device: str = ""                    # default: cuda if available, else cpu


# The paper's defaults (Appendix B, Sec. 4) and the authors' configs, per setting, for real datasets.
PAPER_DEFAULTS = {
    "zeroshot": dict(frames=32, epochs=10, batch_size=256, lr=8e-6),
    "base2novel": dict(frames=32, epochs=11, batch_size=64, lr=2e-6),
    "fewshot": dict(frames=32, epochs=50, batch_size=64, lr=2e-6),
    "fully": dict(frames=16, epochs=30, batch_size=512, lr=22e-6, num_clips=4, num_crops=3),
}
COMMON_DEFAULTS = dict(micro_batch=4, warmup_epochs=5, augment="paper", mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                       num_clips=1, num_crops=1, eval_every=1)
PROMPT_DEFAULTS = {  # the authors' prompting configs: lr 8e-3, 10 tokens x depth 12 (few-shot), 16 x 9 (base2novel)
    "fewshot": dict(lr=8e-3, n_ctx_text=10, n_ctx_vision=10, depth_text=12, depth_vision=12),
    "base2novel": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "zeroshot": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "fully": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
}
# The embedded world: 8 frames of a tiny CLIP on a CPU. Learning rate and batch measured on toy-hmdb, 16 shots
# (README): lr 3e-4 learns best (1e-3 falls back, as shared/notes found), batch 8 gives the small datasets enough
# steps; 10 epochs reach within 1.5 points of 20.
MINIWORLD_DEFAULTS = {
    "zeroshot": dict(frames=8, epochs=3, batch_size=8, lr=3e-4),
    "base2novel": dict(frames=8, epochs=10, batch_size=8, lr=3e-4),
    "fewshot": dict(frames=8, epochs=10, batch_size=8, lr=3e-4),
    "fully": dict(frames=8, epochs=3, batch_size=8, lr=3e-4, num_clips=2, num_crops=3),
}
MINIWORLD_PROMPTS = dict(n_ctx_text=8, n_ctx_vision=8, depth_text=4, depth_vision=4)  # the tiny CLIP has 4 layers
MINIWORLD_COMMON = dict(micro_batch=8, warmup_epochs=1, mixup=0.0, cutmix=0.0, label_smoothing=0.0, augment="crop",
                        eval_every=5)


def resolve_defaults(cfg: Config) -> Config:
    """Fill every field left at None from the setting's defaults; explicit flags always win."""
    world = cfg.dataset == "miniworld"
    layers = [COMMON_DEFAULTS, PAPER_DEFAULTS[cfg.setting]]
    if world:
        layers += [MINIWORLD_COMMON, MINIWORLD_DEFAULTS[cfg.setting]]
    if cfg.train == "prompts":
        layers.append(PROMPT_DEFAULTS[cfg.setting])
        if world:
            layers.append(MINIWORLD_PROMPTS)
    defaults = {}
    for layer in layers:
        defaults.update(layer)
    if cfg.train != "prompts":
        defaults.update(n_ctx_text=0, n_ctx_vision=0, depth_text=0, depth_vision=0)
    defaults["clip"] = clip_model.TINY_MODEL_NAME if world else "ViT-B/16"
    if cfg.train == "none" and not cfg.init_from:
        defaults["template"] = vifi.ZERO_SHOT_TEMPLATE  # the authors' vanilla CLIP zero-shot: the bare class name
    elif cfg.train == "prompts":
        defaults["template"] = ""  # vifi.py's choice: the learned tokens stand where "a photo of a" stood
    else:
        defaults["template"] = vifi.FINETUNE_TEMPLATE
    for name, value in defaults.items():
        if getattr(cfg, name, None) is None:
            setattr(cfg, name, value)
    return cfg


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = dict(setting=["zeroshot", "base2novel", "fewshot", "fully"], train=list(vifi.TRAIN_MODES),
                   augment=list(data.AUGMENTATIONS), fusion=list(vifi.FUSIONS), precision=["fp32", "bf16", "fp16"],
                   normalization=["clip", "imagenet"],
                   dataset=["miniworld", "hmdb51", "ucf101", "ssv2", "k400", "k600", "custom"], k=[2, 4, 8, 16],
                   split=[1, 2, 3])
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action="store_true")
        else:  # Optional[int] -> int
            kind = typing.get_args(f.type)[0] if typing.get_args(f.type) else f.type
            parser.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name))
    return resolve_defaults(Config(**vars(parser.parse_args(argv))))


# ----------------------------------------------------------------------------------------------------------------------
# Processes: one per device under torchrun, or a single plain process


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(cfg: Config) -> Runtime:
    """Read torchrun's environment; nccl on GPUs, gloo on CPUs. A plain `python train.py` is one process."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (use bf16 on CPU)")
    cores = max(1, len(os.sched_getaffinity(0)) // world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        cfg.workers = max(1, min(10, cores - 1)) if cfg.workers is None else cfg.workers  # see README: data
    else:
        cfg.workers = 1 if cfg.workers is None else cfg.workers
        if "OMP_NUM_THREADS" not in os.environ:
            # The compute threads and the DataLoader workers share the CPU cores. Oversubscribed, PyTorch's OpenMP
            # threads spin-wait on each other: measured on 2 cores, a training step went from 0.4 s to 5 s.
            torch.set_num_threads(max(1, cores - cfg.workers))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world_size, local_rank, device)


def log(rt: Runtime, *args):
    if rt.is_main:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Data: which list files and class names each setting uses (paper Appendix D)


@dataclass
class Split:
    """One list of videos with its class names: what a DataLoader is built from."""
    name: str
    root: str
    samples: list            # [(relative path, label)]
    class_names: list


# The authors' split files (shipped in splits/): dataset -> (labels CSV, {purpose: list file}).
REAL_DATASETS = {
    "hmdb51": dict(labels="hmdb_51_labels.csv", folder="hmdb_splits", base="hmdb_51_base_labels.csv",
                   novel="hmdb_51_novel_labels.csv", b2n="hmdb_splits", val="val{split}.txt",
                   fewshot="train1_few_shot_{k}.txt"),
    "ucf101": dict(labels="ucf_101_labels.csv", folder="ucf_splits", base="ucf_101_base_labels.csv",
                   novel="ucf_101_novel_labels.csv", b2n="ucf_splits", val="val{split}.txt",
                   fewshot="train1_few_shot_{k}.txt"),
    "ssv2": dict(labels="ssv2_labels.csv", folder="ssv2_splits", base="ssv2_174_base_labels.csv",
                 novel="ssv2_174_novel_labels.csv", b2n="ssv2_splits", val="validation.txt",
                 fewshot="train1_few_shot_{k}.txt"),
    "k400": dict(labels="kinetics_400_labels.csv", folder="k400_splits", base="kinetics_400_base_labels.csv",
                 novel="kinetics_400_novel_labels.csv", b2n="k400_splits", val="val.txt", train="train.txt"),
}
ZEROSHOT_TARGETS = {"k400": "hmdb51,ucf101,k600", "miniworld": None}  # miniworld: filled from miniworld.py


def _split_file(*parts) -> str:
    path = os.path.join(SPLITS, "datasets_splits", *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: split list not found" + (
            " (the full Kinetics-400 training lists are not shipped: build them from the Kinetics-400 annotations, "
            "see splits/README.md)" if "k400" in path else ""))
    return path


def _labels_file(name: str) -> str:
    return os.path.join(SPLITS, "labels", name)


def load_split(name: str, root: str, list_path: str, labels_path: str) -> Split:
    class_names = data.read_labels(labels_path)
    # Pre-flight, before weights or model: every listed video found (by path or by file name in any folder of the
    # download) or a one-line DatasetError; the samples point at the files found.
    samples, _ = data.preflight(root, data.read_list(list_path, len(class_names)), list_path)
    return Split(name, root, samples, class_names)


def check_root(root: str, what: str):
    if not root:
        raise ValueError(f"--data-root is required for {what} (the folder holding its videos)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data-root {root}: no such folder ({what})")


def real_splits(cfg: Config):
    """(train Split, [evaluation Splits]) for the authors' datasets, from their list files."""
    if cfg.dataset == "custom":
        check_root(cfg.data_root, "a custom dataset")
        for flag in ("train_list", "val_list", "labels"):
            if not getattr(cfg, flag):
                raise ValueError(f"--dataset custom needs --{flag.replace('_', '-')}")
        train = load_split("train", cfg.data_root, cfg.train_list, cfg.labels)
        val = load_split("val", cfg.data_root, cfg.val_list, cfg.labels)
        if cfg.setting == "fewshot":
            train.samples = data.kshot_split(train.samples, cfg.k, seed=cfg.split)
        if cfg.setting == "base2novel":
            return base_novel(train, val, cfg)
        return train, [val]
    if cfg.dataset == "k600":
        raise ValueError("Kinetics-600 is a zero-shot target only: use --setting zeroshot --dataset k400 "
                         "--targets k600 (or hmdb51,ucf101,k600)")
    check_root(cfg.data_root, cfg.dataset)
    d = REAL_DATASETS[cfg.dataset]
    labels = _labels_file(d["labels"])
    if cfg.setting == "base2novel":
        folder = os.path.join("base2novel_splits", d["b2n"])
        train = load_split("base train", cfg.data_root, _split_file(folder, f"fs_base_s{cfg.split}_train.txt"),
                           _labels_file(d["base"]))
        base = load_split("base", cfg.data_root, _split_file(folder, "base_val.txt"), _labels_file(d["base"]))
        novel = load_split("novel", cfg.data_root, _split_file(folder, "novel_val.txt"), _labels_file(d["novel"]))
        return train, [base, novel]
    val_file = d["val"].format(split=cfg.split)
    val = load_split("val", cfg.data_root, _split_file(d["folder"], val_file), labels)
    if cfg.setting == "fewshot":
        if "fewshot" not in d:
            raise ValueError(f"the paper's few-shot protocol has no {cfg.dataset} split (hmdb51, ucf101, ssv2)")
        train_file = _split_file(d["folder"], d["fewshot"].format(k=cfg.k))
    else:
        if "train" not in d:
            raise ValueError(f"--setting {cfg.setting} trains on Kinetics-400 in the paper; "
                             f"{cfg.dataset} has no full training list here")
        train_file = _split_file(d["folder"], d["train"])
    train = load_split("train", cfg.data_root, train_file, labels)
    if cfg.setting == "zeroshot":
        return train, zeroshot_targets_real(cfg)
    return train, [val]


def zeroshot_targets_real(cfg: Config) -> list:
    """Each target's three splits (HMDB-51/UCF-101: val1-3; Kinetics-600: the 3 x 160 classes not in K-400)."""
    names = (cfg.targets or ZEROSHOT_TARGETS["k400"]).split(",")
    roots = cfg.target_roots.split(",") if cfg.target_roots else []
    if len(roots) != len(names):
        raise ValueError(f"--target-roots needs one video folder per target ({','.join(names)}), got {len(roots)}")
    splits = []
    for name, root in zip(names, roots):
        check_root(root, f"zero-shot target {name}")
        for s in (1, 2, 3):
            if name == "k600":
                splits.append(load_split(f"k600/{s}", root, _split_file("k600_splits", f"ZS_split{s}_K600_eval.txt"),
                                         _labels_file(f"ZS_split{s}_K600.csv")))
            elif name in ("hmdb51", "ucf101"):
                d = REAL_DATASETS[name]
                splits.append(load_split(f"{name}/{s}", root, _split_file(d["folder"], f"val{s}.txt"),
                                         _labels_file(d["labels"])))
            else:
                raise ValueError(f"--targets: unknown zero-shot target {name!r} (hmdb51, ucf101, k600)")
    return splits


def base_novel(train: Split, val: Split, cfg: Config):
    """The paper's base/novel split of a dataset with no official one: most frequent half of the classes = base,
    K shots (16 in the paper) of each base class (seeded by --split) for training, validation split by class."""
    base_train, _, base_names, novel_names = data.base_novel_split(train.samples, train.class_names)
    base_val, novel_val, _, _ = data.base_novel_split(val.samples, val.class_names, base_names=base_names,
                                                      novel_names=novel_names)
    base_train = data.kshot_split(base_train, cfg.k, seed=cfg.split)
    return (Split("base train", train.root, base_train, base_names),
            [Split("base", val.root, base_val, base_names), Split("novel", val.root, novel_val, novel_names)])


def world_splits(cfg: Config):
    """The same protocols on the embedded synthetic world (miniworld.py): toy-k400 plays Kinetics-400 (zero-shot
    source, fully supervised), toy-hmdb and toy-ucf play HMDB-51 and UCF-101 (zero-shot targets; few-shot and
    base-to-novel on toy-hmdb, or on the first toy dataset named by --targets)."""
    import miniworld  # generates the world on first use (cached; safe with several processes)

    def load(name, which):
        p = miniworld.dataset_paths(name, cfg.data_root or None, reduced=cfg.reduced_world)
        return load_split(f"{name} {which}" if cfg.setting != "zeroshot" else name, p["root"], p[which], p["labels"])

    named = [t for t in cfg.targets.split(",") if t]
    unknown = [t for t in named if t not in miniworld.DATASETS]
    if unknown:
        raise ValueError(f"--targets: {unknown} are not datasets of the embedded world ({list(miniworld.DATASETS)})")
    if cfg.setting == "zeroshot":
        return load("toy-k400", "train"), [load(t, "val") for t in named or miniworld.ZEROSHOT_TARGETS]
    if cfg.setting == "fully":
        return load("toy-k400", "train"), [load("toy-k400", "val")]
    target = named[0] if named else miniworld.DEFAULT_TARGET
    train, val = load(target, "train"), load(target, "val")
    if cfg.setting == "fewshot":
        train.samples = data.kshot_split(train.samples, cfg.k, seed=cfg.split)
        return train, [val]
    return base_novel(train, val, cfg)


def build_splits(cfg: Config):
    return world_splits(cfg) if cfg.dataset == "miniworld" else real_splits(cfg)


def video_dataset(split: Split, cfg: Config, train: bool, num_clips=1, num_crops=1):
    return data.VideoDataset(split.root, split.samples, num_frames=cfg.frames, train=train,
                             input_size=cfg.input_size, num_clips=num_clips, num_crops=num_crops,
                             norm=cfg.normalization, seed=cfg.seed, augment=cfg.augment)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling: every process sees its share of each global batch, in an order that depends only on (seed, epoch)


class ResumableDistributedSampler(Sampler):
    """DistributedSampler's shuffled share of the data for this process, truncated to whole global batches, and able
    to start mid-epoch (resume). Global batch b is positions [b*B, (b+1)*B) of the epoch's permutation; this process
    takes every world_size-th of them, so the samples of one optimizer step are the same whatever the number of
    processes."""

    def __init__(self, dataset, rt: Runtime, samples_per_process: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.samples_per_process = samples_per_process
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(self.inner)[self.start:self.samples_per_process])

    def __len__(self):
        return self.samples_per_process - self.start


# ----------------------------------------------------------------------------------------------------------------------
# Optimisation


def cosine_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """The authors' schedule as a multiplier of the base lr: linear warm-up, then cosine down to lr/100. (Their warm-up
    starts at exactly 0, which wastes the first step; ours starts at 1/warmup_steps.)"""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def autocast(cfg: Config, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets [B, C] (mixup/cutmix and label smoothing); hard targets [B] also work.
    The paper's loss (Sec. 4) is the hard-target case: -log softmax(sim(v, t) / tau)[label]."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, exact resume


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed over the target: a crash at
    any moment leaves either the old checkpoint or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_states() -> dict:
    """Every random generator's state, in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    states = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict):
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: exact (every video counted once, whatever the number of processes) and multi-view


@torch.no_grad()
def evaluate(model, split: Split, cfg: Config, rt: Runtime, num_clips=1, num_crops=1) -> dict:
    """Top-1, top-5 and mean per-class accuracy on one split. Videos are dealt out rank, rank+W, ... with no padding;
    the per-video scores are gathered, so every video counts exactly once. A video that cannot be read counts as
    wrong and is reported (data.py), never dropped from the denominator. With several views, the softmax scores of
    the views are summed, as the authors do."""
    net = unwrap(model)
    net.eval()
    net.set_class_names(split.class_names)
    dataset = video_dataset(split, cfg, train=False, num_clips=num_clips, num_crops=num_crops)
    mine = list(range(rt.rank, len(dataset), rt.world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=cfg.micro_batch,
                        num_workers=cfg.workers, collate_fn=data.collate)
    views = num_clips * num_crops
    results = []  # (index, label, top-5 predicted classes, readable)
    for batch in progress(loader, rt, f"eval {split.name}"):
        clips = batch["clips"].to(rt.device, non_blocking=True)  # [B, views*T, 3, H, W]
        B = clips.shape[0]
        clips = clips.view(B * views, cfg.frames, *clips.shape[2:])  # [B*views, T, 3, H, W]
        with autocast(cfg, rt.device):
            logits = net(clips)  # [B*views, C]
        scores = logits.float().softmax(-1).view(B, views, -1).sum(1)  # [B, C]
        top5 = scores.topk(min(5, scores.shape[1]), dim=-1).indices.cpu()
        for i in range(B):
            results.append((int(batch["index"][i]), int(batch["label"][i]), top5[i].tolist(), bool(batch["ok"][i])))
    if rt.distributed:
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    assert sorted(r[0] for r in results) == list(range(len(dataset))), "evaluation lost or repeated a video"
    return accuracy_report(results, len(split.class_names))


def accuracy_report(results, num_classes: int) -> dict:
    """results: [(index, label, top5, readable)]; unreadable videos count as misclassified."""
    correct1 = [ok and top5[0] == label for _, label, top5, ok in results]
    correct5 = [ok and label in top5 for _, label, top5, ok in results]
    per_class = {}
    for (_, label, _, _), c in zip(results, correct1):
        per_class.setdefault(label, []).append(c)
    return dict(top1=100.0 * float(np.mean(correct1)), top5=100.0 * float(np.mean(correct5)),
                mean_class=100.0 * float(np.mean([np.mean(v) for v in per_class.values()])),
                videos=len(results), unreadable=sum(not r[3] for r in results), num_classes=num_classes)


def summarize(cfg: Config, reports: dict) -> dict:
    """The setting's headline figures: base/novel harmonic mean (Table 2), mean ± std over zero-shot splits
    (Table 1)."""
    summary = {}
    if cfg.setting == "base2novel" and {"base", "novel"} <= reports.keys():
        b, n = reports["base"]["top1"], reports["novel"]["top1"]
        summary.update(base=b, novel=n, hm=0.0 if b + n == 0 else 2 * b * n / (b + n))
    if cfg.setting == "zeroshot":
        by_target = {}
        for name, report in reports.items():
            by_target.setdefault(name.split("/")[0], []).append(report)
        for target, rs in by_target.items():
            for metric in ("top1", "top5"):
                values = [r[metric] for r in rs]
                summary[f"{target}_{metric}_mean"] = float(np.mean(values))
                summary[f"{target}_{metric}_std"] = float(np.std(values))
    if len(reports) == 1:
        summary.update(top1=next(iter(reports.values()))["top1"])
    return summary


def headline(cfg: Config, summary: dict) -> float:
    """The number 'best' is chosen by."""
    if "hm" in summary:
        return summary["hm"]
    if "top1" in summary:
        return summary["top1"]
    means = [v for k, v in summary.items() if k.endswith("top1_mean")]
    return float(np.mean(means)) if means else 0.0


def evaluate_all(model, evals: list, cfg: Config, rt: Runtime, num_clips=1, num_crops=1) -> tuple:
    reports = {s.name: evaluate(model, s, cfg, rt, num_clips, num_crops) for s in evals}
    return reports, summarize(cfg, reports)


# ----------------------------------------------------------------------------------------------------------------------
# The model


def unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def build_model(cfg: Config, class_names: list, rt: Runtime):
    clip = clip_model.load(cfg.clip)
    if cfg.input_size is None:
        cfg.input_size = clip.visual.input_resolution
    prompt_config = dict(n_ctx_text=cfg.n_ctx_text, n_ctx_vision=cfg.n_ctx_vision, depth_text=cfg.depth_text,
                         depth_vision=cfg.depth_vision)
    model = vifi.ViFiCLIP(clip, class_names, fusion=cfg.fusion, train_mode=cfg.train,
                          templates=cfg.template or None, **prompt_config)
    if cfg.init_from:
        if not os.path.isfile(cfg.init_from):
            raise FileNotFoundError(f"--init-from {cfg.init_from}: no such file")
        vifi.load_weights(model, cfg.init_from)
        if cfg.normalization is None and vifi.is_authors_state_dict(
                vifi._model_entry(vifi.read_checkpoint(cfg.init_from))):
            cfg.normalization = "imagenet"  # the authors' released models were trained on ImageNet statistics
    cfg.normalization = cfg.normalization or "clip"
    model.normalization = cfg.normalization
    if cfg.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    return model.to(rt.device)


# ----------------------------------------------------------------------------------------------------------------------
# Training


def progress(iterable, rt: Runtime, desc: str):
    """A progress bar with ETA on the first process only."""
    if not rt.is_main:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stdout)


def plan_batches(cfg: Config, rt: Runtime, num_videos: int):
    """Effective batch = micro_batch x processes x accumulation. Returns (global batch, accumulation, steps/epoch)."""
    per_step = cfg.micro_batch * rt.world_size
    if cfg.batch_size % per_step:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --micro-batch {cfg.micro_batch} x "
                         f"{rt.world_size} processes; pick a batch size or micro-batch that divides")
    batch = cfg.batch_size
    if num_videos < batch:  # a small K-shot set: one step per epoch with every video rather than no step at all
        batch = max(per_step, num_videos // per_step * per_step)
        log(rt, f"note: {num_videos} training videos < batch {cfg.batch_size}; using batch {batch}")
    if num_videos < batch:
        raise ValueError(f"{num_videos} training videos are fewer than one micro-batch per process ({per_step})")
    return batch, batch // per_step, num_videos // batch


def train(cfg: Config, rt: Runtime) -> dict:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_split, evals = build_splits(cfg)
    model = build_model(cfg, train_split.class_names, rt)
    net = model
    log(rt, f"{cfg.setting} on {cfg.dataset}: {len(train_split.samples)} training videos, "
            f"{len(train_split.class_names)} classes; trainable parameters "
            f"{sum(p.numel() for p in vifi.trainable_parameters(net)):,}")
    os.makedirs(cfg.out, exist_ok=True)
    if rt.is_main:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
    if cfg.eval_only or cfg.train == "none":
        reports, summary = final_evaluation(model, evals, cfg, rt)
        return write_metrics(cfg, rt, reports, summary, history=[])

    batch, accumulation, steps_per_epoch = plan_batches(cfg, rt, len(train_split.samples))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    params = vifi.trainable_parameters(net)  # frozen parameters get no optimizer state
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay,
                                  fused=rt.device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.precision == "fp16")
    if rt.distributed:
        model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    state = dict(epoch=0, step_in_epoch=0, step=0, best=-1.0, history=[])
    last_path = os.path.join(cfg.out, "last.pt")
    if cfg.resume:
        state = resume(last_path, net, optimizer, scheduler, scaler, cfg)
        log(rt, f"resumed from {last_path}: epoch {state['epoch']}, step {state['step']}")

    dataset = video_dataset(train_split, cfg, train=True)
    sampler = ResumableDistributedSampler(dataset, rt, steps_per_epoch * accumulation * cfg.micro_batch, cfg.seed)
    log(rt, f"batch {batch} = {cfg.micro_batch} x {rt.world_size} processes x {accumulation} accumulation; "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps")
    loop = TrainLoop(model, net, optimizer, scheduler, scaler, dataset, sampler, cfg, rt, accumulation,
                     len(train_split.class_names))
    last_evaluation = None  # (reports, summary) of the current weights, if the last epoch evaluated them
    for epoch in range(state["epoch"], cfg.epochs):
        last_evaluation = None
        record = loop.run_epoch(epoch, state)
        if state["step_in_epoch"] < steps_per_epoch:  # stopped by --max-steps mid-epoch: resumable from here
            save(last_path, net, optimizer, scheduler, scaler, state, cfg, rt)
            break
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            reports, summary = evaluate_all(model, evals, cfg, rt)
            last_evaluation = (reports, dict(summary))
            record.update(summary=summary)
            if headline(cfg, summary) > state["best"]:
                state["best"] = headline(cfg, summary)
                save(os.path.join(cfg.out, "best.pt"), net, optimizer, scheduler, scaler, state, cfg, rt)
            net.set_class_names(train_split.class_names)
        state["history"].append(record)
        log(rt, json.dumps(record))
        if rt.is_main:
            with open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        save(last_path, net, optimizer, scheduler, scaler, state, cfg, rt)
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    reports, summary = final_evaluation(model, evals, cfg, rt, single_view=last_evaluation)
    return write_metrics(cfg, rt, reports, summary, state["history"])


@dataclass
class TrainLoop:
    """What one epoch of training needs, held together so that run_epoch reads as the algorithm."""
    model: torch.nn.Module       # what is called: possibly DDP- and compile-wrapped
    net: vifi.ViFiCLIP           # the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dataset: data.VideoDataset
    sampler: ResumableDistributedSampler
    cfg: Config
    rt: Runtime
    accumulation: int
    num_classes: int

    def run_epoch(self, epoch: int, state: dict) -> dict:
        """Train from state["step_in_epoch"] to the epoch's end (or --max-steps); updates state in place and
        returns the epoch's log record."""
        cfg, rt = self.cfg, self.rt
        self.dataset.set_epoch(epoch)  # seeds the augmentation: (seed, epoch, video index)
        self.sampler.set_epoch(epoch, start=state["step_in_epoch"] * self.accumulation * cfg.micro_batch)
        loader = DataLoader(self.dataset, batch_size=cfg.micro_batch, sampler=self.sampler, num_workers=cfg.workers,
                            collate_fn=data.collate, drop_last=True, pin_memory=rt.device.type == "cuda")
        start, losses, unreadable = time.time(), [], 0
        self.model.train()
        last_path = os.path.join(cfg.out, "last.pt")
        for i, batch in enumerate(progress(loader, rt, f"epoch {epoch + 1}/{cfg.epochs}")):
            last_micro = (i + 1) % self.accumulation == 0
            losses.append(train_micro_step(self.model, batch, cfg, rt, self.num_classes, self.accumulation,
                                           self.scaler, step=state["step"], micro=i % self.accumulation,
                                           sync=last_micro))
            unreadable += int((~batch["ok"]).sum())  # replaced by readable videos (data.py)
            if not last_micro:
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            state["step"] += 1
            state["step_in_epoch"] += 1
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                save(last_path, self.net, self.optimizer, self.scheduler, self.scaler, state, cfg, rt)
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        return dict(epoch=epoch + 1, step=state["step"], loss=float(np.mean(losses)) if losses else None,
                    lr=self.scheduler.get_last_lr()[0], seconds=round(time.time() - start, 1),
                    unreadable_videos=reduce_sum(unreadable, rt))


def train_micro_step(model, batch_data, cfg: Config, rt: Runtime, num_classes: int, accumulation: int, scaler,
                     step: int, micro: int, sync: bool) -> float:
    """Forward and backward of one micro-batch; gradients are all-reduced (DDP) only on the last micro-batch of an
    optimizer step. Mixup/cutmix draw their randomness from (seed, rank, step, micro): a resumed run replays it."""
    clips = batch_data["clips"].to(rt.device, non_blocking=True)  # [B, T, 3, H, W]
    labels = batch_data["label"].to(rt.device, non_blocking=True)  # [B]
    targets = labels
    if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0:
        generator = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + rt.rank) * 1_000_003 + step) * 64 + micro)
        clips, targets = data.mixup_cutmix(clips, labels, num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                                           switch_prob=cfg.mixup_switch_prob, smoothing=cfg.label_smoothing,
                                           generator=generator)
    no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not sync else contextlib.nullcontext()
    with no_sync:
        with autocast(cfg, rt.device):
            logits = model(clips)  # [B, C], or [B*T, C] for image-level fusion in training
        loss = unwrap(model).loss(logits, targets, soft_loss=soft_cross_entropy) / accumulation
        scaler.scale(loss).backward()
    return loss.item() * accumulation


def reduce_sum(value: int, rt: Runtime) -> int:
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.long, device=rt.device)
    dist.all_reduce(t)
    return int(t.item())


def final_evaluation(model, evals, cfg: Config, rt: Runtime, single_view=None):
    """The setting's reported evaluation: single view, or the fully-supervised multi-view protocol. single_view:
    (reports, summary) of the final weights, single view, when the last epoch already computed them."""
    if cfg.num_clips * cfg.num_crops == 1:
        return single_view or evaluate_all(model, evals, cfg, rt)
    reports, summary = evaluate_all(model, evals, cfg, rt, num_clips=cfg.num_clips, num_crops=cfg.num_crops)
    single, single_summary = single_view or evaluate_all(model, evals, cfg, rt)  # what the views add (Table 4)
    reports.update({f"{k} (1 view)": v for k, v in single.items()})
    summary.update({f"{k}_1view": v for k, v in single_summary.items()})
    return reports, summary


def write_metrics(cfg: Config, rt: Runtime, reports: dict, summary: dict, history: list) -> dict:
    metrics = dict(summary=summary, reports=reports, history=history, config=dataclasses.asdict(cfg),
                   code_version=code_version(), world_size=rt.world_size)
    if rt.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        tmp = os.path.join(cfg.out, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
        os.replace(tmp, os.path.join(cfg.out, "metrics.json"))
        for name, r in reports.items():
            log(rt, f"{name:>20}: top-1 {r['top1']:.1f}  top-5 {r['top5']:.1f}  mean-class {r['mean_class']:.1f}  "
                    f"({r['videos']} videos, {r['unreadable']} unreadable)")
        log(rt, "summary: " + json.dumps({k: round(v, 2) for k, v in summary.items()}))
    return metrics


def save(path, net, optimizer, scheduler, scaler, state, cfg: Config, rt: Runtime):
    if not rt.is_main:
        return
    atomic_save(dict(model=vifi.trainable_state_dict(net), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), state=state, rng=rng_states(),
                     config=dataclasses.asdict(cfg)), path)


def resume(path, net, optimizer, scheduler, scaler, cfg: Config) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: {path} does not exist (nothing to resume in --out {cfg.out})")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    vifi.load_trainable_state_dict(net, checkpoint["model"], source=path)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"])
    return checkpoint["state"]


def main(argv=None):
    cfg = parse_args(argv)
    rt = setup_runtime(cfg)
    try:
        return train(cfg, rt)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
