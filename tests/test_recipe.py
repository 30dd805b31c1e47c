"""The paper's recipe as the authors' code trains it (muzairkhattak/ViFi-CLIP), element by element: the schedule
against timm's CosineLRScheduler configured as theirs, ImageNet normalisation, their prompt and baseline rates, their
training frame sampling, random-permutation mixup pairing, per-frame colour jitter (against torchvision's own
ColorJitter operations), mixed precision on CUDA, their evaluation schedule and the figure they report.
benchmarks/README.md, "Departures from the authors' code", lists where we differ on purpose.
"""
import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import data
import train
from plumbing import evaluation, global_batches, mixed_precision
from world import miniworld

from timm.scheduler import cosine_lr as timm_scheduler  # a test-only reference, like openai-clip and transformers


def config(argv: list) -> "train.Config":
    """train.py's configuration for these flags, the setting's defaults filled in."""
    return train.parse_command_line(argv)[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    miniworld.ensure_world(root, reduced=True)
    return root


# ---------------------------------------------------------------------------------------------------------------------
# The learning-rate schedule, per optimizer step


def authors_lrs(lr: float, epochs: int, num_videos: int, batch: int) -> list:
    """The lr of each optimizer step in the authors' main.py on 8 GPUs with 4 videos each: timm's CosineLRScheduler as
    their utils/optimizer.py builds it, step_update(epoch * len(train_loader) + idx) after each optimizer step, idx
    counting micro-batches, len(train_loader) = ceil(videos / 8) // 4 (DistributedSampler pads, drop_last)."""
    accumulation, iterations = batch // 32, math.ceil(num_videos / 8) // 4
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = timm_scheduler.CosineLRScheduler(optimizer, t_initial=int(epochs * iterations), lr_min=lr / 100,
                                                 warmup_lr_init=0, warmup_t=int(5 * iterations), cycle_limit=1,
                                                 t_in_epochs=False)
    lrs = []
    for epoch in range(epochs):
        for idx in range(iterations):
            if (idx + 1) % accumulation == 0:
                lrs.append(optimizer.param_groups[0]["lr"])  # the lr this optimizer step runs at
                scheduler.step_update(epoch * iterations + idx)
    return lrs


@pytest.mark.parametrize("setting, dataset, train_mode, num_videos", [
    ("zeroshot", "k400", "both", 240_436), ("fully", "k400", "both", 240_436), ("fully", "k400", "image", 240_436),
    ("fewshot", "hmdb51", "both", 51 * 16), ("fewshot", "ucf101", "both", 101 * 2), ("fewshot", "hmdb51", "both", 102),
    ("base2novel", "hmdb51", "both", 26 * 16), ("base2novel", "k400", "prompts", 200 * 16)])
def test_schedule_is_the_authors_step_for_step(setting, dataset, train_mode, num_videos):
    cfg = config(["--setting", setting, "--dataset", dataset, "--train", train_mode])
    steps = num_videos // cfg.batch_size
    accumulation, iterations = global_batches.authors_iterations(cfg.batch_size, num_videos)
    ours = [cfg.lr * train.lr_multiplier(s, steps, cfg.epochs, cfg.warmup_epochs, accumulation, iterations)
            for s in range(cfg.epochs * steps)]
    theirs = authors_lrs(cfg.lr, cfg.epochs, num_videos, cfg.batch_size)
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    assert ours[0] == 0.0  # their first step runs at warmup_lr_init
    # the cosine is not restarted after warm-up: right after it the lr is already below its peak
    after_warmup = ours[5 * steps + 1]
    assert after_warmup < 0.99 * cfg.lr


def test_the_training_loop_uses_that_schedule(world, random_tiny_clip, tmp_path):
    metrics = train.main(["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0",
                          "--out", str(tmp_path), "--k", "2", "--epochs", "3", "--warmup-epochs", "1",
                          "--batch-size", "8", "--lr", "1e-3"])
    steps = 2 * len(miniworld.TOY_HMDB) // 8
    for record in metrics["history"]:  # the lr logged after epoch e is the one the next step runs at
        assert record["lr"] == pytest.approx(1e-3 * train.lr_multiplier(record["step"], steps, 3, 1), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Defaults: normalisation, prompt learning rates, the fully supervised baselines, the evaluation schedule


def test_paper_settings_normalise_with_imagenet_statistics_and_the_world_with_clips():
    for setting in ("zeroshot", "base2novel", "fewshot", "fully"):
        for dataset in ("hmdb51", "ucf101", "k400", "custom"):
            for mode in ("both", "none", "prompts", "image"):
                cfg = config(["--setting", setting, "--dataset", dataset, "--train", mode])
                assert cfg.normalization == "imagenet", (setting, dataset, mode)
    assert config([]).normalization == "clip"  # the tiny CLIP was pretrained on CLIP's statistics
    assert config(["--dataset", "hmdb51", "--normalization", "clip"]).normalization == "clip"
    assert config(["--dataset", "hmdb51", "--init-from", "x.pt"]).normalization is None  # the weights'


def test_init_from_keeps_the_pixel_statistics_its_weights_were_trained_with(world, random_tiny_clip, tmp_path):
    common = ["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0", "--k", "2",
              "--epochs", "1"]
    train.main([*common, "--out", str(tmp_path / "a"), "--normalization", "imagenet"])
    metrics = train.main([*common, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "best.pt")])
    assert metrics["config"]["normalization"] == "imagenet"


def test_prompt_and_baseline_rates_are_the_authors_configs():
    cfg = config(["--setting", "base2novel", "--dataset", "hmdb51", "--train", "prompts"])
    assert (cfg.lr, cfg.n_ctx_text, cfg.depth_vision, cfg.epochs) == (4e-2, 16, 9, 11)
    cfg = config(["--setting", "fewshot", "--dataset", "ucf101", "--train", "prompts"])
    assert (cfg.lr, cfg.n_ctx_vision, cfg.depth_text) == (8e-3, 10, 12)
    for mode in ("image", "text"):
        cfg = config(["--setting", "fully", "--dataset", "k400", "--train", mode])
        assert (cfg.batch_size, cfg.lr, cfg.epochs) == (256, 8e-6, 30)
    cfg = config(["--setting", "fully", "--dataset", "k400", "--train", "both"])
    assert (cfg.batch_size, cfg.lr) == (512, 22e-6)
    for mode in ("image", "text"):  # their zero-shot baselines train as ViFi-CLIP does
        cfg = config(["--setting", "zeroshot", "--dataset", "k400", "--train", mode])
        assert (cfg.batch_size, cfg.lr) == (256, 8e-6)


def test_evaluation_schedule_counts_from_the_first_epoch_and_reports_the_best(world, random_tiny_clip, tmp_path,
                                                                             monkeypatch):
    """Theirs: evaluate when epoch % SAVE_FREQ == 0 (epochs from 0) or at the last, report the maximum."""
    assert [config(["--setting", s, "--dataset", "hmdb51"]).eval_every for s in ("fewshot", "base2novel")] \
        == [10, 10]
    assert config(["--setting", "fully", "--dataset", "k400"]).eval_every == 1
    scripted = iter([30.0, 50.0, 40.0])  # the accuracies of the three evaluations, in order

    def evaluate_splits(net, splits, cfg, rt, num_clips=1, num_crops=1):
        top1 = next(scripted)
        report = dict(top1=top1, top5=top1, mean_class=top1, videos=24, unreadable=0)
        return {"toy-hmdb test": report}, dict(top1=top1)
    monkeypatch.setattr(evaluation, "evaluate_splits", evaluate_splits)
    metrics = train.main(["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0",
                          "--out", str(tmp_path), "--k", "2", "--epochs", "4", "--eval-every", "2"])
    assert [(r["epoch"], r["summary"]["top1"]) for r in metrics["history"] if "summary" in r] == \
        [(1, 30.0), (3, 50.0), (4, 40.0)]  # epochs 0, 2 and the last, counted from 0
    assert metrics["summary"]["top1"] == 50.0 and metrics["reported"] == "the best of the evaluations, after epoch 3"
    assert metrics["final"]["summary"]["top1"] == 40.0
    assert json.load(open(tmp_path / "metrics.json"))["summary"] == pytest.approx(metrics["summary"])
    # zero-shot and fully supervised report the final weights, as theirs
    assert train.REPORTED == {"fewshot": "best", "base2novel": "best", "zeroshot": "final", "fully": "final"}


def test_base_to_novel_chooses_its_best_by_the_base_classes():
    assert evaluation.headline(dict(base=60.0, novel=10.0, hm=17.1)) == 60.0


# ---------------------------------------------------------------------------------------------------------------------
# Frame sampling in training


def authors_train_offsets(num_frames: int, T: int, rng: np.random.Generator) -> list:
    """mmaction's SampleFrames in training mode with clip_len 1, as their pipeline sets it (out of bounds: loop)."""
    avg = num_frames // T
    if avg > 0:
        offsets = np.arange(T) * avg + rng.integers(avg, size=T)
    else:
        offsets = np.around(np.arange(T) * num_frames / T).astype(int)
    return (offsets % num_frames).tolist()


@pytest.mark.parametrize("n", [3, 5, 8, 9, 15, 16, 20, 37, 300])
def test_training_frames_are_drawn_as_the_authors_draw_them(n):
    T = 8
    g = torch.Generator().manual_seed(n)
    ours = [data.sample_indices(n, T, "train", generator=g) for _ in range(400)]
    rng = np.random.default_rng(n)
    theirs = [authors_train_offsets(n, T, rng) for _ in range(400)]
    # the same support per position (every frame they can draw, and no other) ...
    assert [sorted({d[t] for d in ours}) for t in range(T)] == [sorted({d[t] for d in theirs}) for t in range(T)]
    if n < 2 * T:  # ... so a video of T..2T-1 frames always gives its first T frames, and a short one is fixed
        assert all(d == theirs[0] for d in ours)
    seen = {i for d in ours for i in d}
    assert seen == set(range(n - n % T)) if n >= T else seen <= set(range(n))  # the last n mod T frames never


# ---------------------------------------------------------------------------------------------------------------------
# Mixup / CutMix pairing and colour jitter


def test_mixup_pairs_by_a_random_permutation_of_the_micro_batch():
    clips = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 2, 3, 8, 8).contiguous()  # clip i is the constant i
    labels = torch.arange(4)
    unmixed, own_weight = 0, []
    for seed in range(500):
        mixed, target = data.mixup_cutmix(clips, labels, 4, generator=torch.Generator().manual_seed(seed))
        unmixed += int((mixed == clips).flatten(1).all(1).sum())
        own_weight += target[torch.arange(4), labels].tolist()
    # a permutation of 4 leaves a clip with itself 1 time in 4 (their blending.py); the batch reversed never does
    assert 0.2 < unmixed / 2000 < 0.3
    assert 0.6 < np.mean(own_weight) < 0.68  # the authors' 0.641; reversed pairing gives 0.553


def test_colour_jitter_is_drawn_per_frame_as_torchvisions_colorjitter():
    frames = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 40, 48, 3), dtype=np.uint8), 6, 0)
    for seed in range(40):
        plan = data.train_plan(48, 40, 32, torch.Generator().manual_seed(seed), frames=6)
        if not plan["jitter"] or plan["gray"]:
            continue
        assert len(plan["jitter"]) == 6
        out = data.apply_plan(frames, plan)
        assert not (out == out[:1]).all(), "six identical frames, jittered alike"
        # each frame equals torchvision's own ColorJitter operations with that frame's factors
        plain = data.apply_plan(frames, dict(plan, jitter=None))
        x = plain * torch.tensor(data.CLIP_STD).view(1, 3, 1, 1) + torch.tensor(data.CLIP_MEAN).view(1, 3, 1, 1)
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for i, (order, *factors) in enumerate(plan["jitter"]):
            ref = x[i:i + 1].clamp(0, 1)
            for op in order:
                ref = ops[op](ref, factors[op])
            ours = out[i:i + 1] * torch.tensor(data.CLIP_STD).view(1, 3, 1, 1) + \
                torch.tensor(data.CLIP_MEAN).view(1, 3, 1, 1)
            torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Precision


def test_precision_auto_is_mixed_on_cuda_and_fp32_on_a_cpu(monkeypatch):
    assert mixed_precision.training_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert mixed_precision.training_precision("cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert mixed_precision.training_precision("cuda:1") == "fp16"  # with a GradScaler (train.py)
