"""The paper's tables in miniature, on the embedded world: every row is one train.py command, run for 3 seeds.

    python benchmarks/small_world_results.py [--seeds 1 2 3] [--out runs/small_world] [--only fewshot,...]

Rows (paper table in brackets):
  vanilla CLIP, zero-shot                          [Tables 1-3, first row]   --train none
  ViFi-CLIP / CLIP image-FT / CLIP text-FT         [Tables 1, 3]             --train both | image | text
  ViFi-CLIP, image-FT, text-FT at K = 2, 4, 8      [Table 3]                 --k 2 | 4 | 8
  fully supervised on toy-k400                     [Table 4]                 --setting fully
  embedding / decision / image-level fusion        [Table 5]                 --fusion ...
  VL prompting on the bridged model                [Tables 7-8]              --train prompts --init-from <bridged>
Protocols: few-shot (K=16 on toy-hmdb; also at K = 2, 4, 8), fully supervised (toy-k400), zero-shot (train on
toy-k400, evaluate toy-hmdb and toy-ucf), base-to-novel (toy-hmdb). The bridged model of the prompting rows is the
ViFi-CLIP trained on toy-k400 (zero-shot protocol) with the same seed. Every figure is on the world's test split
(miniworld.dataset_paths "eval"; set MINIWORLD_EVAL=val to run the table on the validation split, as the defaults
were chosen). Prints a markdown table of mean ± std over seeds, and writes it with every run's metrics to
--out/results.json.
"""
import argparse
import json
import os
import tempfile
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from world import miniworld  # noqa: E402

# name -> (group, train.py arguments, figures to report)
FEWSHOT = ["--setting", "fewshot", "--k", "16"]
ZEROSHOT = ["--setting", "zeroshot"]
B2N = ["--setting", "base2novel"]
FULLY = ["--setting", "fully"]
ROWS = {
    "fewshot/vanilla": (FEWSHOT + ["--train", "none"], ["top1"]),
    "fewshot/vifi-clip": (FEWSHOT + ["--train", "both"], ["top1"]),
    "fewshot/image-ft": (FEWSHOT + ["--train", "image"], ["top1"]),
    "fewshot/text-ft": (FEWSHOT + ["--train", "text"], ["top1"]),
    # the few-shot curve of Table 3: K = 2, 4, 8 (K = 16 is fewshot/vifi-clip)
    "kshot/k2-vifi-clip": (["--setting", "fewshot", "--k", "2", "--train", "both"], ["top1"]),
    "kshot/k4-vifi-clip": (["--setting", "fewshot", "--k", "4", "--train", "both"], ["top1"]),
    "kshot/k8-vifi-clip": (["--setting", "fewshot", "--k", "8", "--train", "both"], ["top1"]),
    # the same curve for the two single-tower baselines (Table 3's image-FT and text-FT rows)
    **{f"kshot/k{k}-{mode}-ft": (["--setting", "fewshot", "--k", str(k), "--train", mode], ["top1"])
       for mode in ("image", "text") for k in (2, 4, 8)},
    "fusion/decision": (FEWSHOT + ["--train", "both", "--fusion", "decision"], ["top1"]),
    "fusion/image": (FEWSHOT + ["--train", "both", "--fusion", "image"], ["top1"]),
    "zeroshot/vanilla": (ZEROSHOT + ["--train", "none"], ["toy-hmdb_top1_mean", "toy-ucf_top1_mean"]),
    "zeroshot/vifi-clip": (ZEROSHOT + ["--train", "both"], ["toy-hmdb_top1_mean", "toy-ucf_top1_mean"]),
    "zeroshot/image-ft": (ZEROSHOT + ["--train", "image"], ["toy-hmdb_top1_mean", "toy-ucf_top1_mean"]),
    "zeroshot/text-ft": (ZEROSHOT + ["--train", "text"], ["toy-hmdb_top1_mean", "toy-ucf_top1_mean"]),
    # Table 4: fully supervised on the source dataset (toy-k400, 74 classes), 2 clips x 3 crops at evaluation
    "fully/vanilla": (FULLY + ["--train", "none"], ["top1"]),
    "fully/vifi-clip": (FULLY + ["--train", "both"], ["top1"]),
    "fully/image-ft": (FULLY + ["--train", "image"], ["top1"]),
    "fully/text-ft": (FULLY + ["--train", "text"], ["top1"]),
    "base2novel/vanilla": (B2N + ["--train", "none"], ["base", "novel", "hm"]),
    "base2novel/vifi-clip": (B2N + ["--train", "both"], ["base", "novel", "hm"]),
    # Bridge and prompt (Sec. 5): the bridged model is zeroshot/vifi-clip's best.pt (trained on toy-k400)
    "bridged/zero-shot": (FEWSHOT + ["--train", "none", "--init-from", "{bridged}"], ["top1"]),
    "bridged/vl-prompting": (FEWSHOT + ["--train", "prompts", "--init-from", "{bridged}"], ["top1"]),
    "bridged-b2n/zero-shot": (B2N + ["--train", "none", "--init-from", "{bridged}"], ["base", "novel", "hm"]),
    "bridged-b2n/vl-prompting": (B2N + ["--train", "prompts", "--init-from", "{bridged}"], ["base", "novel", "hm"]),
}


def run_row(name, args, seed, out):
    run_dir = os.path.join(out, name.replace("/", "_"), f"seed{seed}")
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_path):  # finished before: reuse (delete the folder to rerun)
        with open(metrics_path) as f:
            return json.load(f)
    bridged = os.path.join(out, "zeroshot_vifi-clip", f"seed{seed}", "best.pt")
    argv = [a.format(bridged=bridged) for a in args] + ["--seed", str(seed), "--split", str(seed), "--out", run_dir]
    print(f"=== {name} seed {seed}: python train.py {' '.join(argv)}", flush=True)
    return train.main(argv)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "small_world"))
    parser.add_argument("--only", default="", help="comma-separated row-name prefixes")
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: the few-shot vanilla row (no "
                        "training), one seed, written under --out (default a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.only = args.seeds[:1], "fewshot/vanilla"
        if args.out == parser.get_default("out"):
            args.out = tempfile.mkdtemp(prefix="small_world_quick_")
    rows = {n: r for n, r in ROWS.items() if not args.only or any(n.startswith(p) for p in args.only.split(","))}
    results = {}
    for name, (row_args, figures) in rows.items():
        runs = [run_row(name, row_args, seed, args.out)["summary"] for seed in args.seeds]
        results[name] = {f: (float(np.mean([r[f] for r in runs])), float(np.std([r[f] for r in runs])))
                         for f in figures}
    lines = ["| row | " + " | ".join(["figures (mean ± std over seeds " + ",".join(map(str, args.seeds)) + ")"]) + " |",
             "|---|---|"]
    for name, figures in results.items():
        lines.append(f"| {name} | " + ", ".join(f"{f} {m:.1f} ± {s:.1f}" for f, (m, s) in figures.items()) + " |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(results=results, table=table, seeds=args.seeds, eval_split=miniworld.eval_split()), f, indent=2)


if __name__ == "__main__":
    main()
