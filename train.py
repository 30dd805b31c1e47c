"""Train and evaluate ViFi-CLIP in the paper's four settings, on one process or many (torchrun).

    python train.py --setting fewshot --k 16                         # the embedded world, one process, CPU is fine
    torchrun --nproc_per_node=8 train.py --setting fewshot --k 16 \\
        --dataset hmdb51 --data-root /data/hmdb51                    # the paper's Table 3 protocol on 8 GPUs

Settings (paper Sec. 3, Appendix D; protocols.py says which lists each one reads):
  zeroshot    train on the source dataset (Kinetics-400), evaluate on target datasets whose classes are unseen; the
              mean and spread over three splits per target (Table 1)
  base2novel  train on K shots of the base classes (the most frequent half), evaluate base and novel classes and
              their harmonic mean (Table 2)
  fewshot     train on K videos per class, evaluate on the first validation split (Table 3)
  fully       train on every training video, evaluate with 4 temporal x 3 spatial views at the end (Table 4)

What is trained (--train, vifi.py): both towers (ViFi-CLIP), image (CLIP image-FT), text (CLIP text-FT), prompts
(bridge and prompt, Sec. 5, usually with --init-from a bridged model), none (vanilla CLIP, evaluation only).

--out receives config.json, log.jsonl (a line per epoch), metrics.json, last.pt and best.pt; --resume continues a
run exactly; a run holds its --out while it runs, and a full disk or a checkpoint that cannot be read is said in one
line (run_files.py).
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
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
from tqdm import tqdm

import data
import vifi
from plumbing import clip_weights, evaluation, global_batches, mixed_precision, protocols, run_files, vifi_weights
from world import miniworld

# ----------------------------------------------------------------------------------------------------------------------
# Configuration: every flag with its help; None means "the setting's default" (the tables below)


def flag(default, help: str):
    return field(default=default, metadata=dict(help=help))


@dataclass
class Config:
    setting: str = flag("fewshot", "zeroshot | base2novel | fewshot | fully")
    k: int = flag(16, "shots per class for fewshot and for base2novel's base classes (the paper: 2, 4, 8, 16)")
    split: int = flag(1, "base2novel: seed of the K-shot base split; fewshot/fully: which validation split")
    dataset: str = flag("miniworld", "miniworld (the embedded world) | hmdb51 | ucf101 | ssv2 | k400 | k600 | custom")
    data_root: str = flag("", "folder holding the dataset's videos, in the layout it was downloaded in")
    train_list: str = flag("", "custom dataset: list file of 'relative/path label' lines")
    val_list: str = flag("", "custom dataset: validation list file")
    labels: str = flag("", "custom dataset: labels CSV 'id,name'")
    targets: str = flag("", "zeroshot: comma-separated target datasets (default: the source's usual ones)")
    target_roots: str = flag("", "zeroshot on real data: comma-separated video folders, one per target")
    clip: Optional[str] = flag(None, "CLIP weights: a name or a file (clip_weights.load)")
    train: str = flag("both", "what is trained: both (ViFi-CLIP) | image | text | prompts | none")
    fusion: str = flag("embedding", "embedding (ViFi-CLIP) | decision | image (Table 5)")
    template: Optional[str] = flag(None, "class prompt, {} is the class name (the bare '{}' for vanilla CLIP; "
                                         "'{}.' behind learned text prompts)")
    n_ctx_text: Optional[int] = flag(None, "prompt learning: learnable text tokens")
    n_ctx_vision: Optional[int] = flag(None, "prompt learning: learnable vision tokens")
    depth_text: Optional[int] = flag(None, "prompt learning: text layers with prompts")
    depth_vision: Optional[int] = flag(None, "prompt learning: vision layers with prompts")
    init_from: str = flag("", "weights to start from: our best.pt / last.pt, the authors' .pth, a prompt checkpoint")
    frames: Optional[int] = flag(None, "frames sampled per video (T)")
    epochs: Optional[int] = flag(None, "training epochs")
    batch_size: Optional[int] = flag(None, "effective batch, the same on any number of processes")
    micro_batch: Optional[int] = flag(None, "videos per process per forward pass (default: the largest divisor of "
                                            "each process's share of the batch up to --max-micro-batch)")
    max_micro_batch: Optional[int] = flag(None, "the largest micro-batch the device's memory allows")
    lr: Optional[float] = flag(None, "peak learning rate (AdamW, cosine schedule)")
    image_lr_scale: Optional[float] = flag(None, "the image tower's learning rate as a fraction of --lr")
    weight_decay: float = flag(0.001, "AdamW weight decay")
    warmup_epochs: Optional[float] = flag(None, "linear warm-up epochs")
    mixup: Optional[float] = flag(None, "mixup alpha (0: off)")
    cutmix: Optional[float] = flag(None, "cutmix alpha (0: off)")
    mixup_switch_prob: float = flag(0.5, "probability of cutmix rather than mixup when both are on")
    label_smoothing: Optional[float] = flag(None, "label smoothing")
    num_clips: Optional[int] = flag(None, "final evaluation: temporal clips per video")
    num_crops: Optional[int] = flag(None, "final evaluation: spatial crops per clip (1 or 3)")
    eval_every: Optional[int] = flag(None, "evaluate after the first epoch and every N epochs after it, and after "
                                            "the last (0: after the last only)")
    eval_only: bool = flag(False, "evaluate --init-from (or the base model) without training")
    precision: str = flag("auto", "auto | fp32 | bf16 | fp16 (autocast; weights stay fp32; fp16 needs CUDA and "
                                  "scales the loss); auto: bf16 on a CUDA GPU that has it, else fp16; fp32 on a CPU")
    grad_checkpointing: bool = flag(False, "activation checkpointing in both towers (less memory, ~20%% slower)")
    compile: bool = flag(False, "torch.compile the model")
    workers: Optional[int] = flag(None, "DataLoader workers per process (default: 1 on CPU, up to 10 on a GPU)")
    input_size: Optional[int] = flag(None, "frame size fed to the image tower (default: the model's resolution)")
    augment: Optional[str] = flag(None, "paper (crop, flip, colour) | crop | none (centre crop)")
    normalization: Optional[str] = flag(None, "clip | imagenet pixel statistics (default: what --init-from was "
                                              "trained with, else the setting's)")
    seed: int = flag(1024, "random seed (weights, sampling, augmentation)")
    out: str = flag("out", "output folder")
    resume: str = flag("", "continue the run of --out (or of the last.pt given) exactly where it stopped")
    save_every: int = flag(0, "also save last.pt every N optimizer steps")
    max_steps: int = flag(0, "stop after N optimizer steps (quick looks)")
    reduced_world: bool = flag(False, "the embedded world with 2 training videos a class (tests)")
    device: str = flag("", "cuda, cuda:1, cpu (default: cuda if available)")


# The paper's defaults (Appendix B, Sec. 4) as the authors' configs and code train, per setting. A dataset's own
# `defaults` (protocols.py, miniworld.World) change some of them; explicit flags always win. What we do differently
# from the authors' code, and why: benchmarks/README.md, "Departures from the authors' code".
PAPER_DEFAULTS = {
    # ImageNet's pixel statistics: their pipeline normalises every run with them, vanilla CLIP's evaluation included.
    # eval_every 1: after every epoch (their SAVE_FREQ), with the first epoch counted as epoch 0.
    "common": dict(clip="ViT-B/16", image_lr_scale=1.0, warmup_epochs=5, augment="paper", mixup=0.8, cutmix=1.0,
                   label_smoothing=0.1, num_clips=1, num_crops=1, eval_every=1, max_micro_batch=4,
                   normalization="imagenet"),
    "zeroshot": dict(frames=32, epochs=10, batch_size=256, lr=8e-6, eval_every=0),  # the targets, once, at the end
    "base2novel": dict(frames=32, epochs=11, batch_size=64, lr=2e-6, eval_every=10),  # their SAVE_FREQ 10
    "fewshot": dict(frames=32, epochs=50, batch_size=64, lr=2e-6, eval_every=10),
    "fully": dict(frames=16, epochs=30, batch_size=512, lr=22e-6, num_clips=4, num_crops=3),
}
# Their fully supervised CLIP image-FT and text-FT configs train with a smaller batch and rate than ViFi-CLIP's.
PAPER_BASELINES = {"fully": dict(batch_size=256, lr=8e-6)}
PROMPT_DEFAULTS = {  # --train prompts: their few-shot (10 tokens x depth 12) and base-to-novel (16 x 9) configs;
    # zero-shot and fully supervised have no prompting config of theirs and take base-to-novel's shape at few-shot's lr
    "fewshot": dict(lr=8e-3, n_ctx_text=10, n_ctx_vision=10, depth_text=12, depth_vision=12),
    "base2novel": dict(lr=4e-2, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "zeroshot": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
    "fully": dict(lr=8e-3, n_ctx_text=16, n_ctx_vision=16, depth_text=9, depth_vision=9),
}
# The figure a run reports, as the authors report it: few-shot and base-to-novel the best of the evaluations during
# training (their "Max accuracy"), zero-shot and fully supervised the final weights (multi-view for fully).
REPORTED = {"fewshot": "best", "base2novel": "best", "zeroshot": "final", "fully": "final"}
# A new dataset is one entry here: an object with splits(cfg) and defaults (protocols.py).
DATASETS = dict(protocols.PAPER_DATASETS, miniworld=miniworld.WORLD)
# Flags that cannot change what a resumed run computes, so they may differ from the interrupted run's.
RESUME_MAY_CHANGE = {"workers", "device", "out", "resume", "save_every", "max_steps", "grad_checkpointing", "compile"}
# Flags added after runs were saved, with the value such a run ran with (a resume restores it).
ADDED_FLAGS = {"image_lr_scale": 1.0}


def setting_defaults(cfg: Config) -> dict:
    """The defaults of cfg's setting, dataset and training mode: the tables above, later ones winning (the paper's,
    its baselines', the dataset's, the prompts')."""
    own = DATASETS[cfg.dataset].defaults or {}
    defaults = {**PAPER_DEFAULTS["common"], **PAPER_DEFAULTS[cfg.setting]}
    if cfg.train in ("image", "text"):
        defaults.update(PAPER_BASELINES.get(cfg.setting, {}))
    defaults.update(own.get("common", {}))
    defaults.update(own.get(cfg.setting, {}))
    if cfg.train == "prompts":
        defaults.update(PROMPT_DEFAULTS[cfg.setting], **own.get("prompts", {}))
        defaults.update(template="")  # vifi.py's choice: the learned text tokens stand where "a photo of a" stood
    else:  # vanilla CLIP is evaluated as the authors report it, with the bare class name
        vanilla = cfg.train == "none" and not cfg.init_from
        defaults.update(n_ctx_text=0, n_ctx_vision=0, depth_text=0, depth_vision=0,
                        template=vifi.ZERO_SHOT_TEMPLATE if vanilla else vifi.FINETUNE_TEMPLATE)
    return defaults


def resolve_defaults(cfg: Config) -> Config:
    """Fill cfg's unset fields from setting_defaults. The pixel statistics of a run --init-from weights are left to
    build_model: those the weights were trained with, where their file says."""
    for name, value in setting_defaults(cfg).items():
        if getattr(cfg, name) is None and not (name == "normalization" and cfg.init_from):
            setattr(cfg, name, value)
    return cfg


def positive_int(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return int(text)


def make_parser() -> argparse.ArgumentParser:
    """Every Config field is a flag. Defaults are SUPPRESSed so that we know which flags were given (--resume compares
    exactly those); --help lists each table default per setting."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    choices = dict(setting=list(PAPER_DEFAULTS)[1:], dataset=list(DATASETS), train=list(vifi.TRAIN_MODES),
                   fusion=list(vifi.FUSIONS), precision=["auto", "fp32", "bf16", "fp16"],
                   augment=list(data.AUGMENTATIONS), normalization=list(data.NORMS), split=[1, 2, 3])
    tables = {"": PAPER_DEFAULTS, "image/text-FT ": PAPER_BASELINES, "world ": miniworld.WORLD.defaults,
              "prompts ": PROMPT_DEFAULTS}
    for f in dataclasses.fields(Config):
        shown = [f"{where}{setting} {table[setting][f.name]}" for where, table in tables.items()
                 for setting in table if f.name in table[setting]]
        default = "; ".join(shown) or (f.default if f.default not in (None, "", False) else "")
        text = f.metadata["help"] + (f" (default: {default})" if default != "" else "")
        if f.type is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true", help=text)
        elif f.name == "resume":
            parser.add_argument("--resume", nargs="?", const="last.pt", metavar="LAST_PT", help=text)
        else:
            kind = positive_int if f.name == "k" else (typing.get_args(f.type) or [f.type])[0]
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, choices=choices.get(f.name), help=text)
    return parser


def parse_command_line(argv=None) -> tuple:
    """(Config with the defaults filled in, the names of the flags given on the command line)."""
    given = vars(make_parser().parse_args(argv))
    return resolve_defaults(Config(**given)), set(given)


def parse_args(argv=None) -> Config:
    return parse_command_line(argv)[0]


class UserError(ValueError):
    """A mistake in the command line or the input files: reported in one line, without a traceback."""


# What reading the user's input raises (our checks, and files or weights that fail to load). During setup these are the
# user's to fix, so the command line prints them as one line.
INPUT_ERRORS = (ValueError, OSError, RuntimeError, pickle.UnpicklingError)

# ----------------------------------------------------------------------------------------------------------------------
# Processes: one per device under torchrun, or a single plain process


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    distributed: bool = False


def setup_runtime(cfg: Config) -> Runtime:
    """Read torchrun's environment; nccl on GPUs, gloo on CPUs. A plain `python train.py` is one process."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device("cuda", local_rank) if device == torch.device("cuda") else device
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
    return Runtime(rank, world_size, device, rank == 0, world_size > 1)


def log(rt: Runtime, *args):
    if rt.is_main:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# The model and its data


def build_splits(cfg: Config) -> tuple:
    """(training Split, [evaluation Splits]) of the setting on the dataset, every list checked against its folder."""
    return DATASETS[cfg.dataset].splits(cfg)


def build_model(cfg: Config, class_names: list, rt: Runtime) -> vifi.ViFiCLIP:
    clip = clip_weights.load(cfg.clip)
    if cfg.input_size is None:
        cfg.input_size = clip.visual.input_resolution
    model = vifi.ViFiCLIP(clip, class_names, fusion=cfg.fusion, train_mode=cfg.train, templates=cfg.template or None,
                          n_ctx_text=cfg.n_ctx_text, n_ctx_vision=cfg.n_ctx_vision, depth_text=cfg.depth_text,
                          depth_vision=cfg.depth_vision)
    if cfg.init_from:
        if not os.path.isfile(cfg.init_from):
            raise UserError(f"--init-from {cfg.init_from}: no such file")
        try:
            loaded = vifi_weights.load_weights(model, cfg.init_from)
        except INPUT_ERRORS as e:  # each names the file: "--init-from x.pt is truncated or corrupt ..."
            raise UserError(f"--init-from {e}") from e
        # "imagenet" for the authors' released weights, the run's own for ours, else the setting's
        cfg.normalization = cfg.normalization or loaded.normalization or setting_defaults(cfg)["normalization"]
    model.normalization = cfg.normalization
    model.clip.set_grad_checkpointing(cfg.grad_checkpointing)
    return model.to(rt.device)


# The authors' layout, in whose units their schedule counts: 4 videos per GPU on 8 GPUs, the rest of the batch by
# gradient accumulation (their configs: BATCH_SIZE 4, ACCUMULATION_STEPS = batch / 32).
AUTHORS_GPUS, AUTHORS_GPU_BATCH = 8, 4


def authors_iterations(batch: int, num_videos: int) -> tuple:
    """(micro-batches per optimizer step, micro-batches per epoch) of one of the authors' 8 processes for this batch
    (their DistributedSampler pads the videos to a multiple of 8; their loader drops an incomplete micro-batch). A batch
    their layout cannot hold (not a multiple of 32, e.g. the embedded world's 8) counts one iteration per step."""
    per_iteration = AUTHORS_GPUS * AUTHORS_GPU_BATCH
    if batch % per_iteration:
        return 1, num_videos // batch
    return batch // per_iteration, -(-num_videos // AUTHORS_GPUS) // AUTHORS_GPU_BATCH


def lr_multiplier(step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float, accumulation: int = 1,
                  iterations_per_epoch: int = None) -> float:
    """The learning rate of optimizer step `step` (from 0), as a multiple of the peak lr, as the authors' code sets it
    (Appendix B: 5 warm-up epochs, cosine to lr/100). Their timm CosineLRScheduler counts iterations (micro-batches),
    t_initial = epochs x iterations per epoch, warm-up from 0; without warmup_prefix, so the cosine runs over the whole
    run, warm-up included, and the lr falls steeply when warm-up ends. It is updated after each optimizer step to the
    lr of the step's last iteration, so the first step runs at 0 (it only starts Adam's moments)."""
    iterations = iterations_per_epoch or steps_per_epoch * accumulation
    total, warmup = int(epochs * iterations), int(warmup_epochs * iterations)
    if step == 0:
        return 0.0 if warmup else 1.0
    epoch, i = divmod(step - 1, steps_per_epoch)
    t = epoch * iterations + (i + 1) * accumulation - 1  # the iteration of the previous step's last micro-batch
    if t < warmup:
        return t / warmup
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / total))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets [B, C] (mixup/cutmix and label smoothing); hard targets [B] also work.
    The paper's loss (Sec. 4, Eq. 1) is the hard-target case: -log softmax(sim(v, t) / tau)[label]."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Setup: everything that can fail on the user's input, before compute is spent


def setup(cfg: Config, rt: Runtime, given: set) -> tuple:
    """(cfg, checkpoint to resume or None, training Split, evaluation Splits, model, batch plan or None). A failure
    is a UserError whose one line names the flag or the file."""
    try:
        checkpoint, cfg = (run_files.prepare_resume(cfg, given, RESUME_MAY_CHANGE, ADDED_FLAGS) if cfg.resume
                           else (None, cfg))
        run_files.hold_folder(cfg.out, rt)  # one run per --out: a second one stops here, touching nothing
        if cfg.precision == "fp16" and rt.device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device (use bf16 on CPU)")
        if cfg.precision == "auto":  # the authors train and evaluate in fp16 (apex O1); a CPU stays exact
            cfg.precision = mixed_precision.training_precision(rt.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        train_split, evals = build_splits(cfg)  # lists checked against the videos on disk, before any weights
        model = build_model(cfg, train_split.class_names, rt)
        plan = None if cfg.eval_only or cfg.train == "none" else global_batches.plan_batches(
            cfg, rt, len(train_split.samples))
        cfg.micro_batch = plan[1] if plan else cfg.micro_batch or cfg.max_micro_batch
    except INPUT_ERRORS as e:
        raise (e if isinstance(e, UserError) else UserError(str(e))) from e
    return cfg, checkpoint, train_split, evals, model, plan


# ----------------------------------------------------------------------------------------------------------------------
# Training


def train(cfg: Config, rt: Runtime, given=frozenset()) -> dict:
    cfg, checkpoint, train_split, evals, model, plan = setup(cfg, rt, set(given))
    net = model  # the model itself; `model` may become its DDP / compiled wrapper
    log(rt, f"{cfg.setting} on {cfg.dataset}: {len(train_split.samples)} training videos, "
            f"{len(train_split.class_names)} classes; trainable parameters "
            f"{sum(p.numel() for p in vifi.trainable_parameters(net)):,}"
            + (f"; the image tower's learning rate is {cfg.image_lr_scale:g} x --lr"
               if cfg.image_lr_scale != 1 and cfg.train in ("both", "image") else ""))
    run_files.on_main(rt, run_files.atomic_write_text, os.path.join(cfg.out, "config.json"),
                      json.dumps(dataclasses.asdict(cfg), indent=2))
    if plan is None:  # evaluation only
        return evaluation.write_metrics(cfg, rt, *evaluation.final_evaluation(net, evals, cfg, rt), history=[],
                                        reported="the weights as loaded")

    batch, _, accumulation, steps_per_epoch = plan
    total_steps = cfg.epochs * steps_per_epoch
    groups = vifi.parameter_groups(net, cfg.lr, cfg.image_lr_scale)  # the world's image tower learns slower
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay,
                                  fused=rt.device.type == "cuda" or None)
    accumulation_theirs, iterations = authors_iterations(batch, len(train_split.samples))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, accumulation_theirs, iterations))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.precision == "fp16")
    if rt.distributed:
        model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    def save(name: str):  # a write that fails (a full disk) stops every process, in one line (run_files.on_main)
        run_files.on_main(rt, run_files.save_checkpoint, os.path.join(cfg.out, name), net, optimizer, scheduler,
                          scaler, state, cfg)

    # Where the run is, and the running sums of the epoch (loss, micro-batches, unreadable videos, seconds), so that a
    # resumed epoch's log line covers all of its steps. It goes into every checkpoint.
    state = dict(epoch=0, step_in_epoch=0, step=0, best=-1.0, best_evaluation=None, history=[],
                 epoch_sums=[0.0, 0, 0, 0.0])
    if checkpoint is not None:
        state = run_files.restore_checkpoint(checkpoint, net, optimizer, scheduler, scaler, source=cfg.resume)
        log(rt, f"resumed from {cfg.resume}: epoch {state['epoch']}, step {state['step']}")
    # the log is the checkpoint's history (a line written after that checkpoint goes)
    run_files.on_main(rt, run_files.write_log, cfg.out, state["history"])

    dataset = train_split.dataset(cfg, train=True)
    sampler = global_batches.GlobalBatchSampler(len(dataset), batch, cfg.micro_batch, rt, cfg.seed)
    if batch < cfg.batch_size:  # a small K-shot set: one step per epoch with (nearly) every video, not no step
        log(rt, f"note: {len(dataset)} training videos < batch {cfg.batch_size}; using batch {batch}")
    log(rt, f"batch {batch} = {cfg.micro_batch} x {rt.world_size} processes x {accumulation} accumulation; "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps")
    # built once: its workers (data.loader: never forked from this process) start once and serve every epoch
    loader = data.loader(dataset, cfg.micro_batch, cfg.workers, sampler, pin_memory=rt.device.type == "cuda")
    num_classes = len(train_split.class_names)
    last_evaluation = None  # (reports, summary) of the current weights, if the last epoch evaluated them
    for epoch in range(state["epoch"], cfg.epochs):
        last_evaluation = None
        dataset.set_epoch(epoch)  # seeds the augmentation: (seed, epoch, video index)
        sampler.set_epoch(epoch, start_step=state["step_in_epoch"])
        model.train()
        step_start, step_sums = time.time(), [0.0, 0, 0]  # this step's loss sum, micro-batches, unreadable videos
        # a bar on the first process, in a terminal (None: tqdm leaves it out where the output is not one, e.g. a log)
        bar = tqdm(loader, f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stdout,
                   disable=not rt.is_main or None)
        for i, batch_data in enumerate(bar):
            micro = i % accumulation
            clips = batch_data["clips"].to(rt.device, non_blocking=True)  # [m, T, 3, H, W]
            labels = targets = batch_data["label"].to(rt.device, non_blocking=True)  # [m]
            if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0:
                # seeded by the global micro-batch: the same mix on any number of processes, and after a resume
                generator = torch.Generator().manual_seed(
                    cfg.seed * 1_000_003 + sampler.global_micro_index(state["step"], micro))
                clips, targets = data.mixup_cutmix(clips, labels, num_classes, mixup_alpha=cfg.mixup,
                                                   cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob,
                                                   smoothing=cfg.label_smoothing, generator=generator)
            last_micro = micro == accumulation - 1
            # DDP all-reduces the gradients on the last micro-batch of a step only
            with model.no_sync() if rt.distributed and not last_micro else contextlib.nullcontext():
                with mixed_precision.autocast(rt.device, cfg.precision):
                    logits = model(clips)  # [m, C], or [m*T, C] for image-level fusion in training
                loss = net.loss(logits, targets, soft_loss=soft_cross_entropy)  # Eq. 1 (with soft targets)
                scaler.scale(loss / accumulation).backward()
            step_sums = [step_sums[0] + loss.item(), step_sums[1] + 1, step_sums[2] + int((~batch_data["ok"]).sum())]
            if not last_micro:
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if rt.distributed:  # the loss logged is every process's
                reduced = torch.tensor(step_sums, dtype=torch.float64, device=rt.device)
                dist.all_reduce(reduced)
                step_sums = reduced.tolist()
            sums = step_sums + [time.time() - step_start]
            state["epoch_sums"] = [a + b for a, b in zip(state["epoch_sums"], sums)]
            state["step"] += 1
            state["step_in_epoch"] += 1
            step_start, step_sums = time.time(), [0.0, 0, 0]
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                save("last.pt")
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        if state["step_in_epoch"] < steps_per_epoch:  # stopped by --max-steps mid-epoch: resumable from here
            save("last.pt")
            break
        loss_sum, micro_batches, unreadable, seconds = state["epoch_sums"]
        record = dict(epoch=epoch + 1, step=state["step"], loss=loss_sum / max(1, micro_batches),
                      lr=scheduler.get_last_lr()[0], seconds=round(seconds, 1), unreadable_videos=int(unreadable))
        state.update(epoch=epoch + 1, step_in_epoch=0, epoch_sums=[0.0, 0, 0, 0.0])
        if (cfg.eval_every and epoch % cfg.eval_every == 0) or epoch + 1 == cfg.epochs:  # as theirs: from the first
            last_evaluation = evaluation.evaluate_splits(net, evals, cfg, rt)
            record.update(summary=last_evaluation[1])
            if evaluation.headline(last_evaluation[1]) > state["best"]:
                state["best"] = evaluation.headline(last_evaluation[1])
                state["best_evaluation"] = dict(epoch=epoch + 1, reports=last_evaluation[0], summary=last_evaluation[1])
                save("best.pt")
            net.set_class_names(train_split.class_names)
        state["history"].append(record)
        log(rt, json.dumps(record))
        save("last.pt")
        # after the checkpoint that holds the line: a kill in between loses no line and repeats none
        run_files.on_main(rt, run_files.write_log, cfg.out, state["history"])
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    reports, summary = evaluation.final_evaluation(net, evals, cfg, rt, last_evaluation)
    best = state.get("best_evaluation")
    if REPORTED[cfg.setting] == "best" and best and best["epoch"] != state["epoch"]:  # their "Max accuracy"
        final = dict(reports=reports, summary=summary)
        return evaluation.write_metrics(cfg, rt, best["reports"], best["summary"], state["history"], final=final,
                                        reported=f"the best of the evaluations, after epoch {best['epoch']}")
    return evaluation.write_metrics(cfg, rt, reports, summary, state["history"], reported="the final weights")


def main(argv=None) -> dict:
    cfg, given = parse_command_line(argv)
    try:
        rt = setup_runtime(cfg)
    except (RuntimeError, ValueError) as e:  # e.g. --device cuda without a GPU, or a misspelt device
        raise UserError(f"--device {cfg.device}: {e}") from e
    try:
        return train(cfg, rt, given)
    finally:
        run_files.release_folders()  # the lock on --out (run_files.hold_folder)
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(argv=None) -> int:
    """`python train.py ...`: a user error exits with status 2 and one line on stderr, before compute is spent; a run
    file that cannot be written (a full disk) or a --out that another run holds, with status 1 and one line."""
    try:
        main(argv)
    except (UserError, data.DatasetError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except run_files.RunFileError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
