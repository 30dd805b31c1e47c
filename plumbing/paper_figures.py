"""The paper's figure beside every run: which row of the paper's Tables 1-4, 7 and 8 (ViT-B/16) a train.py run
reproduces, and the paper's figures for it, so that "I get 1-2 points less than the paper" can be read off a run's
own output and metrics.json (evaluation.write_metrics records it as "paper").

The figures live in benchmarks/paper_figures.csv, one line per figure: the table and the paper's row and column it
comes from, then what identifies the run (setting, dataset, zero-shot target, K, split, train mode, frames, views:
clips x crops), the metric of the run's summary it compares with, and the figure. An empty K or split means any
(zero-shot and fully supervised take all splits; the paper trains base-to-novel on three K-shot splits, Appendix D,
a run on one of them). tests/test_paper_figures.py checks every line against the paper's text
(../shared/paper/vifi-clip-paper.md) and that no figure of those rows is missing.

A run is a paper row when, beside those fields, it is run as the paper ran it: the paper's datasets, OpenAI's
ViT-B/16 (the name, or its file by SHA-256), embedding fusion, the paper's class prompt ("a photo of a {}." when
fine-tuning, the bare class name for vanilla CLIP), no --init-from but for bridge and prompt (Tables 7-8), whose
prompts have the authors' sizes (prompts.FEW_SHOT, prompts.BASE_TO_NOVEL). Other flags (epochs, batch, learning rate)
are the user's to keep; the figure is printed whatever they are. No figure where the paper has none: the embedded
world, a custom dataset, another backbone. None of this is the paper's method.
"""
import csv
import functools
import os
from typing import Optional

import prompts
import vifi
from plumbing import clip_weights, protocols

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
FIGURES = os.path.join(ROOT, "benchmarks", "paper_figures.csv")
PAPER_DATASETS = ("k400", "hmdb51", "ucf101", "ssv2")  # the datasets the paper trains on
BACKBONE = "ViT-B/16"
PAPER_PROMPTS = {"fewshot": prompts.FEW_SHOT, "base2novel": prompts.BASE_TO_NOVEL}  # Tables 7 and 8
FLAGS = dict(k="--k", split="--split", frames="--frames", views="--num-clips x --num-crops")


@functools.lru_cache(maxsize=None)
def read_figures(path: str = FIGURES) -> tuple:
    """The lines of the figures file, as dicts of strings (figure a float, table an int)."""
    with open(path, newline="") as f:
        return tuple(dict(row, table=int(row["table"]), figure=float(row["figure"])) for row in csv.DictReader(f))


def _train_row(cfg) -> tuple:
    """(the paper's train mode this run is a row of, or None; why not)."""
    if cfg.train == "prompts":
        if not cfg.init_from:
            return None, "prompts learned without --init-from: the paper prompts a bridged model (Sec. 5)"
        paper = PAPER_PROMPTS.get(cfg.setting, {})
        sizes = {k: getattr(cfg, k) for k in ("n_ctx_text", "depth_text", "n_ctx_vision", "depth_vision")}
        if any(sizes[k] != v for k, v in paper.items() if k in sizes):
            return None, f"prompt sizes {sizes}: the paper's are {({k: paper[k] for k in sizes})}"
        return "prompts", ""
    if cfg.init_from:
        return None, "--init-from: the paper's fine-tuning rows start from CLIP's own weights"
    if cfg.train == "none" or cfg.eval_only:
        if cfg.template != vifi.ZERO_SHOT_TEMPLATE:
            return None, f"vanilla CLIP with the class prompt {cfg.template!r}: the paper's is the bare class name"
        return "none", ""
    if cfg.template != vifi.FINETUNE_TEMPLATE:
        return None, f"the class prompt {cfg.template!r}: the paper fine-tunes with {vifi.FINETUNE_TEMPLATE!r}"
    return cfg.train, ""


def _is_backbone(clip: Optional[str]) -> bool:
    """OpenAI's ViT-B/16: by name, or a file with the SHA-256 of OpenAI's ViT-B-16.pt."""
    if clip == BACKBONE:
        return True
    expected = clip_weights._MODELS[BACKBONE].split("/")[-2]
    return bool(clip) and os.path.isfile(clip) and os.path.getsize(clip) > 10**8 and \
        clip_weights.sha256_of(clip) == expected


def lookup(cfg, path: str = FIGURES) -> tuple:
    """([the figures file's lines for this run], why none when there are none) for a train.Config."""
    if cfg.dataset not in PAPER_DATASETS:
        return [], ("the embedded world is not in the paper" if cfg.dataset == "miniworld" else
                    f"dataset {cfg.dataset}: not one the paper trains on")
    train, why = _train_row(cfg)
    if train is None:
        return [], why
    if cfg.fusion != "embedding":
        return [], f"--fusion {cfg.fusion}: the paper's rows are embedding fusion (Table 5 compares the others)"
    run = dict(k=cfg.k, split=cfg.split, frames=cfg.frames, views=f"{cfg.num_clips}x{cfg.num_crops}")
    found = [r for r in read_figures(path) if (r["setting"], r["dataset"], r["train"]) == (cfg.setting, cfg.dataset,
                                                                                           train)]
    if not found:
        return [], f"the paper has no --train {train} row for {cfg.setting} on {cfg.dataset}"
    for field, flag in FLAGS.items():
        kept = [r for r in found if r[field] == "" or r[field] == str(run[field])]
        if not kept:
            values = sorted({r[field] for r in found}, key=lambda v: (len(v), v))  # 2, 4, 8, 16
            return [], f"{flag} {run[field]}: the paper's rows have {' or '.join(values)}"
        found = kept
    if cfg.setting == "zeroshot":
        targets = (cfg.targets or protocols.PAPER_DATASETS[cfg.dataset].targets).split(",")
        found = [r for r in found if r["target"] in targets]
        if not found:
            return [], f"--targets {cfg.targets}: the paper's targets are hmdb51, ucf101, k600"
    if not _is_backbone(cfg.clip):
        return [], f"--clip {cfg.clip}: the paper's figures are OpenAI's {BACKBONE}'s"
    return found, ""


def run_value(metric: str, reports: dict, summary: dict) -> Optional[float]:
    """The run's figure for a metric of the figures file: the summary's, or the one report's top-5 (Table 4)."""
    if metric in summary:
        return float(summary[metric])
    main = [r for name, r in reports.items() if not name.endswith("(1 view)")]
    return float(main[0][metric]) if len(main) == 1 and metric in main[0] else None


def beside(cfg, reports: dict, summary: dict) -> dict:
    """metrics.json's "paper": the paper's table, row and figures for this run beside its own, and the difference
    (run - paper); or no figures and why ("note")."""
    found, why = lookup(cfg)
    if not found:
        return dict(table=None, row=None, figures=[], note=why)
    figures = []
    for r in found:
        value = run_value(r["metric"], reports, summary)
        figures.append(dict(column=r["column"], metric=r["metric"], paper=r["figure"], run=value,
                            difference=None if value is None else round(value - r["figure"], 2)))
    return dict(table=found[0]["table"], row=found[0]["row"], figures=figures, note="")


def lines(paper: dict, dataset: str) -> list:
    """What a run prints of it: each figure beside the run's, or why there is none (on the paper's datasets only)."""
    if not paper["figures"]:
        return [f"paper: no figure for this run ({paper['note']})"] if dataset in PAPER_DATASETS else []
    out = []
    for f in paper["figures"]:
        run = "not measured" if f["run"] is None else f"{f['run']:.1f} ({f['difference']:+.1f})"
        out.append(f"paper, Table {paper['table']}, {paper['row']}, {f['column']}: {f['paper']:.1f}; this run: {run}")
    return out
