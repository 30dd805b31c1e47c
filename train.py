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
import pickle
import random
import re
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
    micro_batch: Optional[int] = None   # videos per process per forward pass (default: derived, see plan_batches)
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
    resume: str = ""                    # continue a run: "--resume" (its --out/last.pt) or "--resume PATH/last.pt"
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
COMMON_DEFAULTS = dict(warmup_epochs=5, augment="paper", mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                       num_clips=1, num_crops=1, eval_every=1)
PROMPT_DEFAULTS = {  # the authors' prompting configs: lr 8e-3, 10 tokens x depth 12 (few-shot), 16 x 9 (base2novel)
    "fewshot": dict(lr=8e-3, n_ctx_text=10, n_ctx_vision=10, depth_text=12, depth_vision=12),
    "base2novel": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "zeroshot": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "fully": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
}
# The embedded world: 8 frames of a tiny CLIP on a CPU. Measured on the world's validation split (MINIWORLD_EVAL=val),
# toy-hmdb, seed 1 (README): 16 shots, lr 3e-4 gave 43.3% against 40.6% at 1e-4 (2 shots favour 1e-4: 23.3 against
# 18.6, both above vanilla CLIP's 11.7); base-to-novel at 3e-4 raises novel accuracy (23.3 -> 27.2). Batch 8 gives the
# small datasets enough steps. Zero-shot: 2 epochs of toy-k400 (1536 videos), set by the CPU budget, not measured.
MINIWORLD_DEFAULTS = {
    "zeroshot": dict(frames=8, epochs=2, batch_size=8, lr=3e-4),
    "base2novel": dict(frames=8, epochs=10, batch_size=8, lr=3e-4),
    "fewshot": dict(frames=8, epochs=10, batch_size=8, lr=3e-4),
    "fully": dict(frames=8, epochs=3, batch_size=8, lr=3e-4, num_clips=2, num_crops=3),
}
MINIWORLD_PROMPTS = dict(n_ctx_text=8, n_ctx_vision=8, depth_text=4, depth_vision=4)  # the tiny CLIP has 4 layers
MINIWORLD_COMMON = dict(warmup_epochs=1, mixup=0.0, cutmix=0.0, label_smoothing=0.0, augment="crop",
                        eval_every=10)  # the few-shot and base-to-novel runs evaluate once, at the end


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


# What each flag does, for --help; defaults that depend on the setting are added from the tables above.
HELP = dict(
    setting="zeroshot | base2novel | fewshot | fully (paper Sec. 3, Appendix D)",
    k="shots per class for fewshot, and for base2novel's base classes (the paper uses 2, 4, 8, 16)",
    split="base2novel: seed of the K-shot base split; fewshot/fully: which validation split (1-3)",
    dataset="miniworld (the embedded world) | hmdb51 | ucf101 | ssv2 | k400 | k600 | custom",
    data_root="folder holding the dataset's videos (real and custom datasets)",
    train_list="custom dataset: list file of 'relative/path label' lines",
    val_list="custom dataset: validation list file",
    labels="custom dataset: labels CSV 'id,name'",
    targets="zeroshot: comma-separated target datasets (default hmdb51,ucf101,k600; the world's own)",
    target_roots="zeroshot on real data: comma-separated video folders, one per target",
    clip="CLIP weights: a name or a file (TorchScript, state dict, Hugging Face) (default: ViT-B/16; embedded "
         "world: miniworld-tiny)",
    train="what is trained: both (ViFi-CLIP) | image | text | prompts | none (vanilla CLIP, evaluation only)",
    fusion="embedding (ViFi-CLIP) | decision | image (Table 5)",
    template="prompt template, {} is the class name (default: 'a photo of a {}.'; the bare '{}' for vanilla CLIP; "
             "'{}.' behind learned text prompts)",
    n_ctx_text="prompt learning: learnable text tokens", n_ctx_vision="prompt learning: learnable vision tokens",
    depth_text="prompt learning: text layers with prompts", depth_vision="prompt learning: vision layers with prompts",
    init_from="weights to start from: our best.pt/last.pt, the authors' released .pth, a prompt checkpoint",
    frames="frames sampled per video (T)", epochs="training epochs",
    batch_size="effective batch: micro-batch x processes x accumulation, the same on any number of processes",
    micro_batch="videos per process per forward pass (default: the largest that divides the batch share of "
                "each process, up to 4 on real data and 8 in the world; accumulation makes up the rest)",
    lr="peak learning rate (AdamW, cosine schedule)", weight_decay="AdamW weight decay",
    warmup_epochs="linear warm-up epochs", mixup="mixup alpha (0: off)", cutmix="cutmix alpha (0: off)",
    mixup_switch_prob="probability of cutmix rather than mixup when both are on",
    label_smoothing="label smoothing", num_clips="final evaluation: temporal clips per video",
    num_crops="final evaluation: spatial crops per clip (1 or 3)", eval_every="epochs between evaluations",
    eval_only="evaluate --init-from (or the base model) without training",
    precision="fp32 | bf16 | fp16 (autocast; weights stay fp32; fp16 needs CUDA)",
    grad_checkpointing="activation checkpointing in both towers (less memory, ~20%% slower)",
    compile="torch.compile the model", workers="DataLoader worker processes per process (default: 1 on CPU, "
    "up to 10 on a GPU)", input_size="frame size fed to the image tower (default: the model's resolution)",
    augment="paper (crop, flip, colour) | crop | none", normalization="clip | imagenet pixel statistics (default: "
    "clip; imagenet for the authors' released checkpoints)", seed="random seed (weights, sampling, augmentation)",
    out="output folder", resume="continue the run of --out (or of the given last.pt) exactly where it stopped",
    save_every="also save last.pt every N optimizer steps", max_steps="stop after N optimizer steps (quick looks)",
    reduced_world="the embedded world with 2 training videos a class (tests)",
    device="cuda, cuda:1, cpu (default: cuda if available)")
CHOICES = dict(setting=["zeroshot", "base2novel", "fewshot", "fully"], train=list(vifi.TRAIN_MODES),
               augment=list(data.AUGMENTATIONS), fusion=list(vifi.FUSIONS), precision=["fp32", "bf16", "fp16"],
               normalization=["clip", "imagenet"], split=[1, 2, 3],
               dataset=["miniworld", "hmdb51", "ucf101", "ssv2", "k400", "k600", "custom"])
# Flags that cannot change what a resumed run computes, so they may differ from the interrupted run's.
RESUME_MAY_CHANGE = {"workers", "device", "out", "resume", "save_every", "max_steps", "grad_checkpointing", "compile"}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _setting_defaults(name: str) -> str:
    """'zeroshot 32, ..., fully 16; embedded world 8': a flag's defaults per setting, for --help."""
    def per_setting(tables):
        values = {s: t[name] for s, t in tables.items() if name in t}
        if len(set(map(str, values.values()))) == 1 and len(values) == len(tables):
            return str(next(iter(values.values())))
        return ", ".join(f"{s} {v}" for s, v in values.items())
    parts = []
    for label, common, tables in (("", COMMON_DEFAULTS, PAPER_DEFAULTS), ("embedded world ", MINIWORLD_COMMON,
                                                                          MINIWORLD_DEFAULTS)):
        text = str(common[name]) if name in common else per_setting(tables)
        if text:
            parts.append(label + text)
    if name in PROMPT_DEFAULTS["fewshot"]:
        parts.append("with --train prompts: " + per_setting(PROMPT_DEFAULTS))
    return "; ".join(parts)


def make_parser() -> argparse.ArgumentParser:
    """Every field of Config is a flag; defaults are SUPPRESSed so that we know which flags were given (--resume
    compares exactly those with the interrupted run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        flag, text = "--" + f.name.replace("_", "-"), HELP[f.name]
        default = _setting_defaults(f.name) or (f.default if f.default not in (None, "") else "")
        text += f" (default: {default})" if default != "" and f.type is not bool else ""
        if f.type is bool:
            parser.add_argument(flag, action="store_true", help=text)
        elif f.name == "resume":
            parser.add_argument(flag, nargs="?", const="last.pt", metavar="LAST_PT", help=text)
        else:  # Optional[int] -> int
            kind = typing.get_args(f.type)[0] if typing.get_args(f.type) else f.type
            kind = positive_int if f.name == "k" else kind
            parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), help=text)
    return parser


def parse_command_line(argv=None) -> tuple:
    """(Config with the setting's defaults filled in, the set of flags given on the command line)."""
    given = vars(make_parser().parse_args(argv))
    return resolve_defaults(Config(**given)), set(given)


def parse_args(argv=None) -> Config:
    return parse_command_line(argv)[0]


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

    ev = miniworld.eval_split()  # "test"; "val" with $MINIWORLD_EVAL=val (how the world's defaults were chosen)
    named = [t for t in cfg.targets.split(",") if t]
    unknown = [t for t in named if t not in miniworld.DATASETS]
    if unknown:
        raise ValueError(f"--targets: {unknown} are not datasets of the embedded world ({list(miniworld.DATASETS)})")
    if cfg.setting == "zeroshot":
        return load("toy-k400", "train"), [load(t, ev) for t in named or miniworld.ZEROSHOT_TARGETS]
    if cfg.setting == "fully":
        return load("toy-k400", "train"), [load("toy-k400", ev)]
    target = named[0] if named else miniworld.DEFAULT_TARGET
    train, val = load(target, "train"), load(target, ev)
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
# Sampling: the same global batches, split the same way into micro-batches, whatever the number of processes


class GlobalBatchSampler(Sampler):
    """This process's share of each epoch's global batches. The epoch's order is a permutation drawn from
    (seed, epoch); optimizer step s takes its positions [s*B, (s+1)*B), cut into B/m global micro-batches of m videos.
    Process r of W takes the micro-batches r*A .. (r+1)*A - 1 of every step (A = B/(m*W) accumulation steps), so the
    micro-batches, and everything computed per micro-batch (mixup pairs, the loss mean), are the same on 1 process
    or 8. start_step: resume in the middle of an epoch."""

    def __init__(self, num_videos: int, batch: int, micro_batch: int, rt: Runtime, seed: int):
        self.num_videos, self.batch, self.micro, self.rt, self.seed = num_videos, batch, micro_batch, rt, seed
        self.accumulation = batch // (micro_batch * rt.world_size)
        self.steps = num_videos // batch  # the last incomplete batch is dropped, as the authors do
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0):
        self.epoch, self.start_step = epoch, start_step

    def global_micro_index(self, step: int, i: int) -> int:
        """Index in the whole run of this process's i-th micro-batch of optimizer step `step`: seeds mixup."""
        return step * (self.batch // self.micro) + self.rt.rank * self.accumulation + i

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # what DistributedSampler draws for 1 process
        order = torch.randperm(self.num_videos, generator=g).tolist()
        share = self.micro * self.accumulation  # this process's videos per step
        for s in range(self.start_step, self.steps):
            first = s * self.batch + self.rt.rank * share
            yield from order[first:first + share]

    def __len__(self):
        return (self.steps - self.start_step) * self.micro * self.accumulation


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
    any moment leaves either the old checkpoint or the new one, never half of one (and at most one temporary file,
    which the next run removes)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale_temporaries(out: str):
    """Temporary files of checkpoints and logs that a killed run was writing (this run writes its own anew)."""
    for name in os.listdir(out):
        if re.fullmatch(r"(last|best)\.pt\.tmp\d*|(log\.jsonl|config\.json|metrics\.json)\.tmp", name):
            os.remove(os.path.join(out, name))


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
    for split in evals:
        if reports[split.name]["unreadable"] == len(split.samples):  # an accuracy of 0 that says nothing: stop
            raise UserError(f"{split.name}: all {len(split.samples)} videos under {split.root} are unreadable; "
                            f"check them with: python data.py --check ROOT LIST LABELS")
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
            raise UserError(f"--init-from {cfg.init_from}: no such file")
        loaded = vifi.load_weights(model, cfg.init_from)
        if cfg.normalization is None:  # "imagenet" for the authors' released weights, the run's own for ours
            cfg.normalization = loaded.normalization
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


MICRO_BATCH_LIMIT = dict(paper=4, world=8)  # videos per forward pass: ViT-B/16 at 32 frames; the tiny CLIP


def plan_batches(cfg: Config, rt: Runtime, num_videos: int) -> tuple:
    """(global batch, micro-batch, accumulation, steps per epoch). The effective batch is the setting's on any number of
    processes: each process takes batch/W videos per step, in micro-batches of m with gradient accumulation. Without
    --micro-batch, m is the largest divisor of batch/W up to MICRO_BATCH_LIMIT (on 1, 2, 4 or 8 processes that is the
    same m for every paper setting)."""
    W, batch = rt.world_size, cfg.batch_size
    if num_videos < batch:  # a small K-shot set: one step per epoch with (nearly) every video rather than no step
        batch = num_videos - num_videos % W
        log(rt, f"note: {num_videos} training videos < batch {cfg.batch_size}; using batch {batch}")
    if batch < W:
        raise UserError(f"{num_videos} training videos are fewer than one per process ({W} processes)")
    if batch % W:
        raise UserError(f"--batch-size {batch} cannot be shared by {W} processes; pick a multiple of {W}")
    share = batch // W
    micro = cfg.micro_batch
    if micro is None:
        limit = MICRO_BATCH_LIMIT["world" if cfg.dataset == "miniworld" else "paper"]
        micro = max(m for m in range(1, min(limit, share) + 1) if share % m == 0)
    elif share % micro:
        raise UserError(f"--batch-size {batch} is not a multiple of --micro-batch {micro} x {W} processes; "
                        f"leave --micro-batch out to have it chosen")
    return batch, micro, share // micro, num_videos // batch


def setup(cfg: Config, rt: Runtime, given: set) -> tuple:
    """Everything that can fail on the user's input, checked before compute is spent: the run to resume, the lists and
    videos on disk, the weights, the batch plan. A failure is a UserError with one line naming the flag or file.
    Returns (cfg, checkpoint to resume or None, training Split, evaluation Splits, model, batch plan or None)."""
    try:
        checkpoint, cfg = prepare_resume(cfg, given, rt) if cfg.resume else (None, cfg)
        if cfg.precision == "fp16" and rt.device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device (use bf16 on CPU)")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        train_split, evals = build_splits(cfg)
        model = build_model(cfg, train_split.class_names, rt)
        plan = None
        if not (cfg.eval_only or cfg.train == "none"):
            plan = plan_batches(cfg, rt, len(train_split.samples))
            cfg.micro_batch = plan[1]
        cfg.micro_batch = cfg.micro_batch or MICRO_BATCH_LIMIT["world" if cfg.dataset == "miniworld" else "paper"]
    except INPUT_ERRORS as e:
        raise (e if isinstance(e, UserError) else UserError(str(e))) from e
    return cfg, checkpoint, train_split, evals, model, plan


def train(cfg: Config, rt: Runtime, given=frozenset()) -> dict:
    cfg, checkpoint, train_split, evals, model, plan = setup(cfg, rt, set(given))
    net = model
    log(rt, f"{cfg.setting} on {cfg.dataset}: {len(train_split.samples)} training videos, "
            f"{len(train_split.class_names)} classes; trainable parameters "
            f"{sum(p.numel() for p in vifi.trainable_parameters(net)):,}")
    os.makedirs(cfg.out, exist_ok=True)
    if rt.is_main:
        remove_stale_temporaries(cfg.out)
        atomic_write_text(os.path.join(cfg.out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=2))
    if plan is None:  # evaluation only
        reports, summary = final_evaluation(model, evals, cfg, rt)
        return write_metrics(cfg, rt, reports, summary, history=[])

    batch, _, accumulation, steps_per_epoch = plan
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

    # state: where the run is, and the running sums of the current epoch (so that a resumed epoch's log line covers
    # all of its steps); it goes into every checkpoint.
    state = dict(epoch=0, step_in_epoch=0, step=0, best=-1.0, history=[], epoch_sums=[0.0, 0, 0, 0.0])
    last_path = os.path.join(cfg.out, "last.pt")
    if checkpoint is not None:
        state = restore(checkpoint, net, optimizer, scheduler, scaler)
        del checkpoint
        log(rt, f"resumed from {cfg.resume}: epoch {state['epoch']}, step {state['step']}")
    if rt.is_main:  # the log is the checkpoint's history: a line written after the checkpoint a run resumes from goes
        write_log(cfg.out, state["history"])

    dataset = video_dataset(train_split, cfg, train=True)
    sampler = GlobalBatchSampler(len(dataset), batch, cfg.micro_batch, rt, cfg.seed)
    log(rt, f"batch {batch} = {cfg.micro_batch} x {rt.world_size} processes x {accumulation} accumulation; "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps")
    num_classes = len(train_split.class_names)
    last_evaluation = None  # (reports, summary) of the current weights, if the last epoch evaluated them
    for epoch in range(state["epoch"], cfg.epochs):
        last_evaluation = None
        dataset.set_epoch(epoch)  # seeds the augmentation: (seed, epoch, video index)
        sampler.set_epoch(epoch, start_step=state["step_in_epoch"])
        loader = DataLoader(dataset, batch_size=cfg.micro_batch, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=data.collate, pin_memory=rt.device.type == "cuda")
        model.train()
        step_start, step_sums = time.time(), [0.0, 0, 0]  # this step's loss sum, micro-batches, unreadable videos
        for i, batch_data in enumerate(progress(loader, rt, f"epoch {epoch + 1}/{cfg.epochs}")):
            micro = i % accumulation
            clips = batch_data["clips"].to(rt.device, non_blocking=True)  # [m, T, 3, H, W]
            labels = batch_data["label"].to(rt.device, non_blocking=True)  # [m]
            targets = labels
            if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0:
                # seeded by the global micro-batch: the same mix on any number of processes, and after a resume
                generator = torch.Generator().manual_seed(
                    cfg.seed * 1_000_003 + sampler.global_micro_index(state["step"], micro))
                clips, targets = data.mixup_cutmix(clips, labels, num_classes, mixup_alpha=cfg.mixup,
                                                   cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob,
                                                   smoothing=cfg.label_smoothing, generator=generator)
            last_micro = micro == accumulation - 1
            # DDP all-reduces the gradients on the last micro-batch of a step only
            no_sync = model.no_sync if rt.distributed and not last_micro else contextlib.nullcontext
            with no_sync():
                with autocast(cfg, rt.device):
                    logits = model(clips)  # [m, C], or [m*T, C] for image-level fusion in training
                loss = net.loss(logits, targets, soft_loss=soft_cross_entropy)
                scaler.scale(loss / accumulation).backward()
            step_sums[0] += loss.item()
            step_sums[1] += 1
            step_sums[2] += int((~batch_data["ok"]).sum())  # unreadable videos, replaced by readable ones (data.py)
            if not last_micro:
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            sums = reduce_sum(step_sums, rt)  # over processes: the logged loss is every process's
            state["epoch_sums"] = [a + b for a, b in zip(state["epoch_sums"], sums + [time.time() - step_start])]
            state["step"] += 1
            state["step_in_epoch"] += 1
            step_start, step_sums = time.time(), [0.0, 0, 0]
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                save(last_path, net, optimizer, scheduler, scaler, state, cfg, rt)
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        if state["step_in_epoch"] < steps_per_epoch:  # stopped by --max-steps mid-epoch: resumable from here
            save(last_path, net, optimizer, scheduler, scaler, state, cfg, rt)
            break
        loss_sum, micro_batches, unreadable, seconds = state["epoch_sums"]
        record = dict(epoch=epoch + 1, step=state["step"], loss=loss_sum / max(1, micro_batches),
                      lr=scheduler.get_last_lr()[0], seconds=round(seconds, 1), unreadable_videos=int(unreadable))
        state.update(epoch=epoch + 1, step_in_epoch=0, epoch_sums=[0.0, 0, 0, 0.0])
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
        save(last_path, net, optimizer, scheduler, scaler, state, cfg, rt)
        if rt.is_main:  # after the checkpoint that holds the line: a kill in between loses no line and repeats none
            write_log(cfg.out, state["history"])
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    reports, summary = final_evaluation(model, evals, cfg, rt, single_view=last_evaluation)
    return write_metrics(cfg, rt, reports, summary, state["history"])


def reduce_sum(values: list, rt: Runtime) -> list:
    """Element-wise sum over processes of a few numbers."""
    if not rt.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


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


UNREADABLE_WARNING = 0.01  # more than 1% of a split unreadable: said loudly, in the output and in metrics.json


def unreadable_warnings(reports: dict) -> list:
    """Unreadable videos count as wrong (evaluate); when they are more than a few, the accuracy says more about the
    files than about the model, and the run says so."""
    return [f"{name}: {r['unreadable']} of {r['videos']} videos unreadable, counted as wrong; check them with "
            f"python data.py --check" for name, r in reports.items() if r["unreadable"] > UNREADABLE_WARNING * r["videos"]]


def write_metrics(cfg: Config, rt: Runtime, reports: dict, summary: dict, history: list) -> dict:
    metrics = dict(summary=summary, reports=reports, history=history, config=dataclasses.asdict(cfg),
                   code_version=code_version(), world_size=rt.world_size, warnings=unreadable_warnings(reports))
    if rt.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        atomic_write_text(os.path.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=2))
        for name, r in reports.items():
            log(rt, f"{name:>20}: top-1 {r['top1']:.1f}  top-5 {r['top5']:.1f}  mean-class {r['mean_class']:.1f}  "
                    f"({r['videos']} videos, {r['unreadable']} unreadable)")
        log(rt, "summary: " + json.dumps({k: round(v, 2) for k, v in summary.items()}))
        for warning in metrics["warnings"]:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return metrics


def save(path, net, optimizer, scheduler, scaler, state, cfg: Config, rt: Runtime):
    if not rt.is_main:
        return
    atomic_save(dict(model=vifi.trainable_state_dict(net), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), state=state, rng=rng_states(),
                     config=dataclasses.asdict(cfg)), path)


def prepare_resume(cfg: Config, given: set, rt: Runtime) -> tuple:
    """(the checkpoint to resume from, the interrupted run's configuration). A flag given now that would change what
    the run computes must equal the interrupted run's value: we refuse rather than mix two runs in one."""
    path = os.path.join(cfg.out, "last.pt") if cfg.resume == "last.pt" else cfg.resume
    if not os.path.isfile(path):
        raise UserError(f"--resume: {path} does not exist (nothing to resume; start the run without --resume)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = dict(checkpoint["config"])
    changed = [f"--{name.replace('_', '-')} {getattr(cfg, name)} (the run has {saved[name]})"
               for name in sorted(given - RESUME_MAY_CHANGE) if name in saved and getattr(cfg, name) != saved[name]]
    if changed:
        raise UserError(f"--resume {path}: these flags would change the run: {'; '.join(changed)}")
    for name in RESUME_MAY_CHANGE:  # these are this command's, given or default (workers: chosen for this machine)
        saved[name] = getattr(cfg, name)
    saved["out"] = cfg.out if "out" in given or cfg.resume == "last.pt" else os.path.dirname(path) or "."
    saved["resume"] = path
    return checkpoint, Config(**saved)


def restore(checkpoint: dict, net, optimizer, scheduler, scaler) -> dict:
    vifi.load_trainable_state_dict(net, checkpoint["model"], source="--resume checkpoint")
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"])
    return dict(checkpoint["state"], epoch_sums=checkpoint["state"].get("epoch_sums", [0.0, 0, 0, 0.0]))


def write_log(out: str, history: list):
    """log.jsonl: one line per finished epoch, rewritten from the checkpointed history (a few lines)."""
    atomic_write_text(os.path.join(out, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))


class UserError(ValueError):
    """A mistake in the command line or the input files: reported in one line, without a traceback."""


# What reading the user's input raises (our own checks, and the files and weights that fail to load). During setup these
# are the user's to fix, so the command line prints them as one line.
INPUT_ERRORS = (UserError, data.DatasetError, OSError, ValueError, RuntimeError, pickle.UnpicklingError)


def main(argv=None, given=None):
    if given is None:
        cfg, given = parse_command_line(argv)
    else:
        cfg = parse_args(argv)
    try:
        rt = setup_runtime(cfg)
    except (RuntimeError, ValueError) as e:  # e.g. --device cuda without a GPU, or a misspelt device
        raise UserError(f"--device {cfg.device}: {e}") from e
    try:
        return train(cfg, rt, given)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(argv=None) -> int:
    """`python train.py ...`: a user error exits with status 2 and one line on stderr, before compute is spent."""
    try:
        main(argv)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
