"""The same global batches on any number of processes (torchrun), so that 8 GPUs train the model 1 GPU trains.

plan_batches splits the setting's effective batch into processes x micro-batches x gradient-accumulation steps;
GlobalBatchSampler gives each process its fixed share of the same global micro-batches; global_micro_index numbers
a micro-batch across the run, so that what is drawn per micro-batch (mixup, cutmix) is the same however the batch
is split, and after a resume. Runtime is a process's place among them; loader, a DataLoader whose workers start from
a clean process (never forked from one that decoded video: PyAV 19 hangs there). train.py uses these; the paper's
method does not depend on them.
"""
import dataclasses
import multiprocessing
import os
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

import data


@dataclasses.dataclass
class Runtime:
    """This process's place among the run's processes (train.setup_runtime reads torchrun's environment into it)."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    distributed: bool = False


def cpu_cores(rt: Runtime) -> int:
    """This process's share of the CPU cores it may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: none
    return max(1, cores // rt.world_size)


class BatchPlanError(ValueError):
    """A batch that cannot be split as asked (reported as a user error)."""


class BatchPlan(NamedTuple):
    batch: int  # videos per optimizer step, over all processes
    micro: int  # videos per process per forward pass
    accumulation: int  # micro-batches per process per optimizer step
    steps_per_epoch: int


def plan_batches(batch: int, micro: int, max_micro: int, world_size: int, num_videos: int) -> BatchPlan:
    """How each optimizer step's batch is cut: each of world_size processes takes batch/W videos per step, in
    micro-batches with gradient accumulation. Without a micro-batch (None), it is the largest divisor of batch/W up to
    max_micro: for every paper setting on 1 to 16 processes that is the same 4."""
    W = world_size
    if num_videos < batch:  # a small K-shot set: one step per epoch with (nearly) every video rather than no step
        batch = num_videos - num_videos % W
    if batch < W:
        raise BatchPlanError(f"{num_videos} training videos are fewer than one per process ({W} processes)")
    if batch % W:
        raise BatchPlanError(f"--batch-size {batch} cannot be shared by {W} processes; pick a multiple of {W}")
    share = batch // W
    if micro is None:
        micro = max(m for m in range(1, min(max_micro, share) + 1) if share % m == 0)
    elif share % micro:
        raise BatchPlanError(f"--batch-size {batch} is not a multiple of --micro-batch {micro} x {W} processes; "
                             f"leave --micro-batch out to have it chosen")
    return BatchPlan(batch, micro, share // micro, num_videos // batch)


class GlobalBatchSampler(Sampler):
    """This process's share of each epoch's global batches. The epoch's order is a permutation drawn from
    (seed, epoch); optimizer step s takes its positions [s*B, (s+1)*B), cut into B/m global micro-batches of m videos.
    Process r of W takes the micro-batches r*A .. (r+1)*A - 1 of every step (A accumulation steps), so the
    micro-batches, and all that is computed per micro-batch (mixup pairs, the loss mean), are the same on 1 process
    or 8. start_step: resume in the middle of an epoch."""

    def __init__(self, num_videos: int, batch: int, micro_batch: int, rt, seed: int):
        self.num_videos, self.batch, self.micro, self.rank, self.seed = num_videos, batch, micro_batch, rt.rank, seed
        self.accumulation = batch // (micro_batch * rt.world_size)
        self.steps = num_videos // batch  # the last incomplete batch is dropped, as the authors do
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0):
        self.epoch, self.start_step = epoch, start_step

    def global_micro_index(self, step: int, i: int) -> int:
        """The run-wide index of this process's i-th micro-batch of optimizer step `step` (it seeds mixup)."""
        return step * (self.batch // self.micro) + self.rank * self.accumulation + i

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's permutation for 1 process
        order = torch.randperm(self.num_videos, generator=g).tolist()
        share = self.micro * self.accumulation
        for s in range(self.start_step, self.steps):
            first = s * self.batch + self.rank * share
            yield from order[first:first + share]

    def __len__(self):
        return (self.steps - self.start_step) * self.micro * self.accumulation


# The authors' layout, in whose units their learning-rate schedule counts (train.lr_multiplier): 4 videos per GPU on 8
# GPUs, the rest of the batch by gradient accumulation (their configs: BATCH_SIZE 4, ACCUMULATION_STEPS = batch / 32).
AUTHORS_GPUS, AUTHORS_GPU_BATCH = 8, 4


def authors_iterations(batch: int, num_videos: int) -> tuple:
    """(micro-batches per optimizer step, micro-batches per epoch) of one of the authors' 8 processes for this batch
    (their DistributedSampler pads the videos to a multiple of 8; their loader drops an incomplete micro-batch). A batch
    their layout cannot hold (not a multiple of 32, e.g. the embedded world's 8) counts one iteration per step."""
    per_iteration = AUTHORS_GPUS * AUTHORS_GPU_BATCH
    if batch % per_iteration:
        return 1, num_videos // batch
    return batch // per_iteration, -(-num_videos // AUTHORS_GPUS) // AUTHORS_GPU_BATCH


# DataLoader workers are never forked from the process that uses them: a fork copies FFmpeg's state as it is, and with
# PyAV 19 a worker forked after the parent has resized one frame hangs forever in its own first resize (the scaler's
# thread pool, cached per thread, is copied without its threads). Workers start from a "forkserver", a clean process
# that has decoded nothing and has imported torch and av once, so that a worker starts in ~0.1 s rather than a fresh
# interpreter's ~2 s ("spawn", where there is no forkserver). A script that uses workers needs the usual
# `if __name__ == "__main__":` guard, as train.py has: a worker imports the main module.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def loader(dataset, batch_size, workers=0, sampler=None, pin_memory=False, persistent=True, **kwargs):
    """A DataLoader of clips (data.collate) whose `workers` processes start clean (WORKER_START) and, if `persistent`,
    stay until the loader is gone: build it once and iterate it every epoch (set_epoch reaches them: shared memory).
    kwargs go to the DataLoader (e.g. timeout)."""
    if workers > 0:
        kwargs.update(num_workers=workers, persistent_workers=persistent,
                      multiprocessing_context=multiprocessing.get_context(WORKER_START))
        if WORKER_START == "forkserver":  # takes effect when the server starts, at the first loader with workers
            multiprocessing.set_forkserver_preload(["torch", "av"])
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=data.collate,
                                       pin_memory=pin_memory, **kwargs)
