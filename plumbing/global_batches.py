"""The same global batches on any number of processes (torchrun), so that 8 GPUs train the model 1 GPU trains.

plan_batches splits the setting's effective batch into processes x micro-batches x gradient-accumulation steps;
GlobalBatchSampler gives each process its fixed share of the same global micro-batches; global_micro_index numbers
a micro-batch across the run, so that what is drawn per micro-batch (mixup, cutmix) is the same however the batch
is split, and after a resume. train.py uses these; the paper's method does not depend on them.
"""
from typing import NamedTuple

import torch
from torch.utils.data import Sampler


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
