"""Train and evaluate ViFi-CLIP in the paper's four settings (Sec. 3), on one process or many (torchrun).

    python train.py --setting fewshot --k 16                         # the embedded world, one process, CPU is fine
    torchrun --nproc_per_node=8 train.py --setting fewshot --k 16 --dataset hmdb51 --data-root /data/hmdb51

zeroshot (Table 1), base2novel (Table 2), fewshot (Table 3), fully (Table 4, multi-view): plumbing/protocols.py says
which lists each reads. --train both (ViFi-CLIP), image / text (CLIP image-FT / text-FT), prompts (bridge and prompt,
Sec. 5, with --init-from a bridged model), none (vanilla CLIP). --out receives config.json, log.jsonl, metrics.json,
last.pt and best.pt; --resume continues a run exactly (plumbing/run_files.py).
"""
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import prompts
import vifi
from plumbing import clip_weights, command_line, evaluation, global_batches, mixed_precision, protocols, run_files
from plumbing import vifi_weights
from plumbing.global_batches import Runtime
from world import miniworld

flag, UserError, INPUT_ERRORS = command_line.flag, command_line.UserError, command_line.INPUT_ERRORS

# ----------------------------------------------------------------------------------------------------------------------
# Configuration: every flag with its help; None means "the setting's default" (the tables below)


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
    template: Optional[str] = flag(None, "class prompt, {} is the class name ('{}' for vanilla CLIP, as the authors)")
    n_ctx_text: Optional[int] = flag(None, "prompt learning: learnable text tokens")
    n_ctx_vision: Optional[int] = flag(None, "prompt learning: learnable vision tokens")
    depth_text: Optional[int] = flag(None, "prompt learning: text layers with prompts")
    depth_vision: Optional[int] = flag(None, "prompt learning: vision layers with prompts")
    init_from: str = flag("", "weights to start from: our best.pt / last.pt, the authors' .pth, a prompt checkpoint")
    frames: Optional[int] = flag(None, "frames sampled per video (T)")
    epochs: Optional[int] = flag(None, "training epochs")
    batch_size: Optional[int] = flag(None, "effective batch, the same on any number of processes")
    micro_batch: Optional[int] = flag(None, "videos per process per forward pass (default: chosen, plan_batches)")
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
    eval_every: Optional[int] = flag(None, "evaluate after epochs 1, 1 + N, ... and the last (0: the last only)")
    eval_only: bool = flag(False, "evaluate --init-from (or the base model) without training")
    precision: str = flag("auto", "auto (CUDA: bf16, else fp16 with loss scaling; CPU: fp32) | fp32 | bf16 | fp16")
    grad_checkpointing: bool = flag(False, "activation checkpointing in both towers (less memory, more time)")
    compile: bool = flag(False, "torch.compile the model")
    workers: Optional[int] = flag(None, "DataLoader workers per process (default: 1 on CPU, up to 10 on a GPU)")
    input_size: Optional[int] = flag(None, "frame size fed to the image tower (default: the model's resolution)")
    augment: Optional[str] = flag(None, "paper (crop, flip, colour) | crop | none (centre crop)")
    normalization: Optional[str] = flag(None, "clip | imagenet pixel statistics (default: --init-from's, else below)")
    seed: int = flag(1024, "random seed (weights, sampling, augmentation)")
    out: str = flag("out", "output folder")
    resume: str = flag("", "continue the run of --out (or of the last.pt given) exactly where it stopped")
    save_every: int = flag(0, "also save last.pt every N optimizer steps")
    max_steps: int = flag(0, "stop after N optimizer steps (quick looks)")
    reduced_world: bool = flag(False, "the embedded world with 2 training videos a class (tests)")
    device: str = flag("", "cuda, cuda:1, cpu (default: cuda if available)")


# The defaults, side by side: the paper's (Appendix B, the authors' configs and code; where we differ from their code:
# benchmarks/README.md, "Departures from the authors' code") and the embedded world's changes to them (a tiny CLIP on a
# CPU in minutes; each value measured on the world's validation split: benchmarks/README.md, "The world's defaults").
# A flag given on the command line wins over both.
PAPER = {
    "common": dict(clip="ViT-B/16",  # every table's backbone
                   image_lr_scale=1.0,  # one learning rate for both towers
                   warmup_epochs=5,  # Appendix B, then their cosine to lr/100 (lr_multiplier)
                   augment="paper",  # multi-scale crop, flip, colour jitter per frame, grayscale (data.train_plan)
                   mixup=0.8, cutmix=1.0, label_smoothing=0.1,  # Appendix B
                   num_clips=1, num_crops=1,  # one view, but for Table 4
                   eval_every=1,  # after every epoch (their SAVE_FREQ), the first epoch counted as epoch 0
                   max_micro_batch=4,  # their 4 videos per GPU
                   normalization="imagenet"),  # their pipeline's pixel statistics, vanilla CLIP's included
    "zeroshot": dict(frames=32, epochs=10, batch_size=256, lr=8e-6, eval_every=0),  # the targets, once, at the end
    "base2novel": dict(frames=32, epochs=11, batch_size=64, lr=2e-6, eval_every=10),  # their SAVE_FREQ 10
    "fewshot": dict(frames=32, epochs=50, batch_size=64, lr=2e-6, eval_every=10),
    "fully": dict(frames=16, epochs=30, batch_size=512, lr=22e-6, num_clips=4, num_crops=3),  # Table 4: 4 x 3 views
}
PAPER_BASELINES = {"fully": dict(batch_size=256, lr=8e-6)}  # their fully supervised image-FT and text-FT configs
PROMPT_DEFAULTS = {  # --train prompts: their few-shot and base-to-novel configs (tokens and depths: prompts.py)
    "fewshot": dict(prompts.FEW_SHOT, lr=8e-3), "base2novel": dict(prompts.BASE_TO_NOVEL, lr=4e-2)}
# zero-shot and fully supervised have no prompting config of theirs: base-to-novel's shape at few-shot's lr
PROMPT_DEFAULTS["zeroshot"] = PROMPT_DEFAULTS["fully"] = dict(PROMPT_DEFAULTS["base2novel"], lr=8e-3)
WORLD = {
    "common": dict(clip=miniworld.TINY_CLIP_NAME,  # the tiny CLIP pretrained on the world's stills
                   image_lr_scale=0.1,  # the text tower learns new words, the image tower only adapts
                   warmup_epochs=1,  # 10 epochs, not 50
                   mixup=0.0, cutmix=0.0, label_smoothing=0.0,  # 8-video batches of few classes
                   augment="crop",  # a flip or a hue shift turns a class into another ("to the left", "red")
                   eval_every=0,  # one evaluation, at the end: nothing is chosen on the test split
                   max_micro_batch=8,  # tiny frames
                   normalization="clip"),  # the statistics its CLIP was pretrained with
    "zeroshot": dict(frames=8, epochs=2, batch_size=8, lr=3e-4, augment="none"),  # no crop: where an object ends
    "base2novel": dict(frames=8, epochs=10, batch_size=8, lr=3e-4),  # and how big it grows are its classes' cues
    "fewshot": dict(frames=8, epochs=10, batch_size=8, lr=3e-4, augment="none"),
    "fully": dict(frames=8, epochs=3, batch_size=8, lr=3e-4, num_clips=2, num_crops=3),  # 3 epochs: the CPU budget
    # prompts: start near the bridged model ("a photo of a", 2 of 39 vision tokens) and stop before they overfit
    "prompts": dict(n_ctx_text=4, n_ctx_vision=2, depth_text=4, depth_vision=4, lr=2e-3, epochs=3, augment="none"),
}
# The figure a run reports, as the authors report it: few-shot and base-to-novel the best of the evaluations during
# training (their "Max accuracy"), zero-shot and fully supervised the final weights (multi-view for fully).
REPORTED = {"fewshot": "best", "base2novel": "best", "zeroshot": "final", "fully": "final"}
# A dataset is an object with splits(cfg) -> (training Split, [evaluation Splits]) (protocols.py).
DATASETS = dict(protocols.PAPER_DATASETS, miniworld=miniworld.WORLD)


# ----------------------------------------------------------------------------------------------------------------------
# Training: the loop, from a batch to the optimizer step (setup, which prepares its Run, comes after it)


def train(run: "Run", rt: "Runtime") -> dict:
    cfg, net, plan, train_split = run.cfg, run.model, run.plan, run.train_split  # `model` may wrap net (DDP, compile)
    run_files.hold_folder(cfg.out, rt)  # one run per --out: a second one stops here, before it writes anything
    log(rt, f"{cfg.setting} on {cfg.dataset}: {len(train_split.samples)} training videos, "
            f"{len(train_split.class_names)} classes; trainable parameters "
            f"{sum(p.numel() for p in vifi.trainable_parameters(net)):,}"
            + (f"; the image tower at {cfg.image_lr_scale:g} x --lr" if net.clip.visual.conv1.weight.requires_grad
               and cfg.image_lr_scale != 1 else ""))
    run_files.on_main(rt, run_files.atomic_write_text, os.path.join(cfg.out, "config.json"),
                      json.dumps(dataclasses.asdict(cfg), indent=2))
    if plan is None:  # evaluation only
        return evaluation.write_metrics(cfg, rt, *evaluation.final_evaluation(net, run.evals, cfg, rt), history=[],
                                        reported="the weights as loaded")

    optimizer = torch.optim.AdamW(vifi.parameter_groups(net, cfg.lr, cfg.image_lr_scale), lr=cfg.lr,
                                  betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay,
                                  fused=rt.device.type == "cuda" or None)
    # the units the authors' schedule counts in: micro-batches of their 8-GPU layout
    theirs = global_batches.authors_iterations(plan.batch, len(train_split.samples))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(
        step, plan.steps_per_epoch, cfg.epochs, cfg.warmup_epochs, *theirs))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.precision == "fp16")
    model = net
    if rt.distributed:
        model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    book = run_files.Bookkeeping(cfg, rt, net, optimizer, scheduler, scaler)  # last.pt, best.pt, log.jsonl
    state = book.start(run.checkpoint)  # a new run's state, or the interrupted run's (--resume)

    dataset = train_split.dataset(cfg, train=True)
    sampler = global_batches.GlobalBatchSampler(len(dataset), plan.batch, plan.micro, rt, cfg.seed)
    if plan.batch < cfg.batch_size:  # a small K-shot set: one step per epoch with (nearly) every video, not no step
        log(rt, f"note: {len(dataset)} training videos < batch {cfg.batch_size}; using batch {plan.batch}")
    log(rt, f"batch {plan.batch} = {plan.micro} x {rt.world_size} processes x {plan.accumulation} accumulation; "
            f"{plan.steps_per_epoch} steps/epoch, {cfg.epochs * plan.steps_per_epoch} steps")
    # built once: its workers (global_batches.loader: never forked from this process) start once and serve every epoch
    loader = global_batches.loader(dataset, plan.micro, cfg.workers, sampler, pin_memory=rt.device.type == "cuda")
    mixing = cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0
    last_evaluation = None  # (reports, summary) of the current weights, if the last epoch evaluated them
    for epoch in range(state.epoch, cfg.epochs):
        last_evaluation = None
        dataset.set_epoch(epoch)  # seeds the augmentation: (seed, epoch, video index)
        sampler.set_epoch(epoch, start_step=state.step_in_epoch)
        model.train()
        # a bar on the first process, in a terminal (None: tqdm leaves it out where the output is not one, e.g. a log)
        for i, batch in enumerate(tqdm(loader, f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stdout,
                                       disable=not rt.is_main or None)):
            micro = i % plan.accumulation
            clips = batch["clips"].to(rt.device, non_blocking=True)  # [m, T, 3, H, W]
            labels = targets = batch["label"].to(rt.device, non_blocking=True)  # [m]
            if mixing:  # seeded by the global micro-batch: the same mix on any number of processes, and after a resume
                generator = torch.Generator().manual_seed(
                    cfg.seed * 1_000_003 + sampler.global_micro_index(state.step, micro))
                clips, targets = data.mixup_cutmix(clips, labels, len(train_split.class_names), cfg.mixup, cfg.cutmix,
                                                   cfg.mixup_switch_prob, cfg.label_smoothing, generator=generator)
            last_micro = micro == plan.accumulation - 1
            # DDP all-reduces the gradients on the last micro-batch of a step only
            with model.no_sync() if rt.distributed and not last_micro else contextlib.nullcontext():
                with mixed_precision.autocast(rt.device, cfg.precision):
                    logits = model(clips)  # [m, C], or [m*T, C] for image-level fusion in training
                loss = net.loss(logits, targets)  # Eq. 1: cross-entropy of the cosine logits (soft targets: mixup)
                scaler.scale(loss / plan.accumulation).backward()
            book.count_micro_batch(loss.item(), batch["ok"])  # the step's loss and unreadable videos
            if not last_micro:
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            book.count_step()  # the epoch's sums, last.pt if --save-every
            if cfg.max_steps and state.step >= cfg.max_steps:
                break
        if state.step_in_epoch < plan.steps_per_epoch:  # stopped by --max-steps mid-epoch: resumable from here
            book.save("last.pt")
            break
        record = book.finish_epoch(epoch, lr=scheduler.get_last_lr()[0])
        if (cfg.eval_every and epoch % cfg.eval_every == 0) or epoch + 1 == cfg.epochs:  # as theirs: from the first
            last_evaluation = evaluation.evaluate_splits(net, run.evals, cfg, rt)
            record.update(summary=last_evaluation[1])
            book.consider(last_evaluation, evaluation.headline(last_evaluation[1]), epoch)  # best.pt if the best
            net.set_class_names(train_split.class_names)
        book.log(record)  # the history, last.pt, then log.jsonl
        if cfg.max_steps and state.step >= cfg.max_steps:
            break
    final = evaluation.final_evaluation(net, run.evals, cfg, rt, last_evaluation)  # multi-view for fully
    return evaluation.report(cfg, rt, final, state, best_reported=REPORTED[cfg.setting] == "best")


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


# ----------------------------------------------------------------------------------------------------------------------
# The command line: the tables above, then the flags given


def setting_defaults(cfg: Config) -> dict:
    """The defaults of cfg's setting, dataset and training mode: the tables above, later ones winning."""
    world = WORLD if cfg.dataset == "miniworld" else {}
    baselines = PAPER_BASELINES.get(cfg.setting, {}) if cfg.train in ("image", "text") else {}
    defaults = {**PAPER["common"], **PAPER[cfg.setting], **baselines, **world.get("common", {}),
                **world.get(cfg.setting, {})}
    if cfg.train == "prompts":
        defaults.update(PROMPT_DEFAULTS[cfg.setting], **world.get("prompts", {}))
        defaults.update(template="")  # vifi.py's choice: the learned text tokens stand where "a photo of a" stood
    else:  # vanilla CLIP is evaluated as the authors report it, with the bare class name
        vanilla = cfg.train == "none" and not cfg.init_from
        defaults.update(n_ctx_text=0, n_ctx_vision=0, depth_text=0, depth_vision=0,
                        template=vifi.ZERO_SHOT_TEMPLATE if vanilla else vifi.FINETUNE_TEMPLATE)
    return defaults


def parse_command_line(argv=None) -> tuple:
    """(Config with the setting's defaults filled in, the names of the flags given on the command line). The pixel
    statistics of a run --init-from weights are left to derive: those the weights were trained with, where known."""
    choices = dict(setting=list(PAPER)[1:], dataset=list(DATASETS), train=list(vifi.TRAIN_MODES),
                   fusion=list(vifi.FUSIONS), precision=["auto", "fp32", "bf16", "fp16"],
                   augment=list(data.AUGMENTATIONS), normalization=list(data.NORMS), split=[1, 2, 3])
    tables = {"": PAPER, "image/text-FT ": PAPER_BASELINES, "world ": WORLD, "prompts ": PROMPT_DEFAULTS}
    parser = command_line.make_parser(Config, __doc__, tables, choices, optional_value=dict(resume="last.pt"),
                                      positive=("k",))
    given = vars(parser.parse_args(argv))
    cfg = Config(**given)
    for name, value in setting_defaults(cfg).items():
        if getattr(cfg, name) is None and not (name == "normalization" and cfg.init_from):
            setattr(cfg, name, value)
    return cfg, set(given)


# ----------------------------------------------------------------------------------------------------------------------
# Processes: one per device under torchrun, or a single plain process


def setup_runtime(cfg: Config) -> Runtime:
    """Read torchrun's environment; nccl on GPUs, gloo on CPUs. A plain `python train.py` is one process."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device == torch.device("cuda"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world_size, device, rank == 0, world_size > 1)


def log(rt: Runtime, *args):
    if rt.is_main:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Setup: the data, the model and the derived values, everything that can fail on the user's input, before compute


def build_splits(cfg: Config) -> tuple:
    """(training Split, [evaluation Splits]) of the setting on the dataset, every list checked against its folder."""
    return DATASETS[cfg.dataset].splits(cfg)


def build_model(cfg: Config, class_names: list, rt: Runtime) -> tuple:
    """(the ViFiCLIP of cfg on rt's device, the pixel statistics its --init-from file says its weights expect, or
    None). cfg is only read: what the weights say goes into the configuration in derive."""
    model = vifi.ViFiCLIP(clip_weights.load(cfg.clip), class_names, fusion=cfg.fusion, train_mode=cfg.train,
                          templates=cfg.template or None, n_ctx_text=cfg.n_ctx_text, n_ctx_vision=cfg.n_ctx_vision,
                          depth_text=cfg.depth_text, depth_vision=cfg.depth_vision)
    normalization = None
    if cfg.init_from:
        if not os.path.isfile(cfg.init_from):
            raise UserError(f"--init-from {cfg.init_from}: no such file")
        try:  # "imagenet" for the authors' released weights, the run's own for ours, None where the file does not say
            normalization = vifi_weights.load_weights(model, cfg.init_from).normalization
        except INPUT_ERRORS as e:  # each names the file: "--init-from x.pt is truncated or corrupt ..."
            raise UserError(f"--init-from {e}") from e
    model.clip.set_grad_checkpointing(cfg.grad_checkpointing)
    return model.to(rt.device), normalization


def derive(cfg: Config, rt: Runtime, model: vifi.ViFiCLIP, weights_normalization, num_videos: int) -> tuple:
    """(cfg with every value that follows from the flags, the weights and the machine, the batch plan), computed here
    and never changed after: the input size (the CLIP's resolution), the pixel statistics (--init-from's where its file
    says, else the setting's), the precision (the authors train and evaluate in fp16, apex O1; a CPU stays exact), the
    DataLoader workers (one on a CPU, up to 10 on a GPU) and the micro-batch (plan_batches; None: evaluation only)."""
    plan = None if cfg.eval_only or cfg.train == "none" else global_batches.plan_batches(
        cfg.batch_size, cfg.micro_batch, cfg.max_micro_batch, rt.world_size, num_videos)
    workers = max(1, min(10, global_batches.cpu_cores(rt) - 1)) if rt.device.type == "cuda" else 1
    return dataclasses.replace(
        cfg, input_size=cfg.input_size or model.clip.visual.input_resolution,
        normalization=cfg.normalization or weights_normalization or setting_defaults(cfg)["normalization"],
        precision=mixed_precision.training_precision(rt.device) if cfg.precision == "auto" else cfg.precision,
        workers=workers if cfg.workers is None else cfg.workers,
        micro_batch=plan.micro if plan else cfg.micro_batch or cfg.max_micro_batch), plan


@dataclass
class Run:
    """What setup prepares: the run's configuration, its data, its model and how its batches are cut."""
    cfg: Config
    checkpoint: Optional[dict]  # the interrupted run's last.pt, for --resume
    train_split: protocols.Split
    evals: list  # the evaluation Splits
    model: vifi.ViFiCLIP
    plan: Optional[global_batches.BatchPlan]  # None: evaluation only


def setup(cfg: Config, rt: Runtime, given: set) -> Run:
    """A failure is a UserError whose one line names the flag or the file."""
    try:
        checkpoint, cfg = run_files.prepare_resume(cfg, given) if cfg.resume else (None, cfg)
        if cfg.precision == "fp16" and rt.device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device (use bf16 on CPU)")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        train_split, evals = build_splits(cfg)  # lists checked against the videos on disk, before any weights
        model, weights_normalization = build_model(cfg, train_split.class_names, rt)
        cfg, plan = derive(cfg, rt, model, weights_normalization, len(train_split.samples))
    except INPUT_ERRORS as e:
        raise (e if isinstance(e, UserError) else UserError(str(e))) from e
    model.normalization = cfg.normalization  # which classify and the exports read
    if rt.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The compute threads and the DataLoader workers share the CPU cores. Oversubscribed, PyTorch's OpenMP
        # threads spin-wait on each other (benchmarks/README.md, "CPU threads").
        torch.set_num_threads(max(1, global_batches.cpu_cores(rt) - cfg.workers))
    return Run(cfg, checkpoint, train_split, evals, model, plan)


def main(argv=None) -> dict:
    cfg, given = parse_command_line(argv)
    try:
        rt = setup_runtime(cfg)
    except (RuntimeError, ValueError) as e:  # e.g. --device cuda without a GPU, or a misspelt device
        raise UserError(f"--device {cfg.device}: {e}") from e
    try:
        return train(setup(cfg, rt, given), rt)
    finally:
        run_files.release_folders()  # the lock on --out (run_files.hold_folder)
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(argv=None) -> int:
    """`python train.py ...`: a user error exits with status 2 and one line on stderr, before compute is spent; a run
    file that cannot be written (a full disk) or a --out that another run holds, with status 1 and one line."""
    try:
        main(argv)
    except (UserError, data.DatasetError, run_files.RunFileError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, run_files.RunFileError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
