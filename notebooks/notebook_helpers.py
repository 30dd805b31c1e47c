"""What every notebook shares, so that each notebook holds only its own idea:

  setup(name)   finds the repository and makes its modules importable, sets CPU threads and plot size, starts the
                notebook's clock; QUICK is the switch between CI-sized runs and train.py's full protocol
  run(name, *argv)
                `python train.py argv --out runs/notebooks/<notebook>/<name>` in the notebook's own process: the
                metrics dict train.main returns (runs/ is git-ignored)
  run_shared(*argv)
                the same, trained once for every notebook that runs the same command: reused while the command and
                the code stay the same
  bridge(clip)  the bridged model notebooks 3, 7, 8 and 9 share (ViFi-CLIP trained on toy-k400), through run_shared
  check(condition, sentence)
                a claim the notebook's text makes, tested against this run's outputs: printed when it holds, an
                error (which fails tests/test_notebooks.py) when it does not. Every check() of a notebook sits in a
                function claims_<what>(r) of the numbers it judges, called on this run's numbers;
                tests/test_notebook_claims.py feeds each such function numbers for which its sentences are false
                and requires every check() in it to fail on one of them
  change(before, after)
                words for a measured change ("rises from 16.2% to 24.6%"), for sentences computed from results

Set NOTEBOOKS_QUICK=0 in the environment (or QUICK = False in a notebook's configuration cell) for the full protocol.
"""
import os
import shutil
import sys
import time


def find_root(start: str) -> str:
    """The repository root: the first folder at or above `start` that holds train.py."""
    root = os.path.abspath(start)
    while not os.path.isfile(os.path.join(root, "train.py")):
        if os.path.dirname(root) == root:
            raise RuntimeError("run the notebooks from inside the repository (notebooks/ or its root)")
        root = os.path.dirname(root)
    return root


ROOT = find_root(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the project's modules live in the repository root, the notebooks in notebooks/
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the saved outputs

QUICK = os.environ.get("NOTEBOOKS_QUICK", "1") != "0"  # True: short runs for CI; False: train.py's protocol
_notebook = {"name": "scratch", "start": time.time()}


def setup(name: str) -> str:
    """Threads, plots and the clock for notebook `name` (its runs go to runs/notebooks/<name>/); returns ROOT."""
    import matplotlib.pyplot as plt
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # on 2 cores: 1 thread (2 busy threads spin-wait badly)
    plt.rcParams.update({"figure.dpi": 80})
    _notebook.update(name=name, start=time.time())
    return ROOT


def runs_folder(*parts: str) -> str:
    return os.path.join(ROOT, "runs", "notebooks", _notebook["name"], *parts)


def run(name: str, *argv) -> dict:
    """`python train.py argv --out runs/notebooks/<notebook>/<name>`, in this process: the metrics dict."""
    return _train([str(a) for a in argv], runs_folder(name))


def run_shared(*argv) -> dict:
    """run(), trained once for all notebooks: the run of the same command, with the same code (the method files, the
    plumbing and the world), is reused (runs/notebooks/shared/<hash>/; metrics.json, written last, marks a finished
    run). The metrics dict, with "out": the run's folder (best.pt, last.pt)."""
    import glob
    import hashlib
    import json
    argv = [str(a) for a in argv]
    key = hashlib.sha256(json.dumps(argv).encode())
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "plumbing", "*.py"))
                       + glob.glob(os.path.join(ROOT, "world", "*.py"))):
        with open(path, "rb") as f:
            key.update(f.read())
    out = os.path.join(ROOT, "runs", "notebooks", "shared", key.hexdigest()[:16])
    if os.path.isfile(os.path.join(out, "metrics.json")):
        print("$ python train.py", " ".join(argv), f"(trained by an earlier notebook: {os.path.relpath(out, ROOT)})")
        with open(os.path.join(out, "metrics.json")) as f:
            return dict(json.load(f), out=out)
    return dict(_train(argv, out), out=out)


def _train(argv: list, out: str) -> dict:
    import train
    shutil.rmtree(out, ignore_errors=True)  # a fresh run (train.py appends to log.jsonl), or an unfinished one's
    print("$ python train.py", " ".join(argv + ["--out", out]).replace(ROOT + os.sep, ""))  # paths from the root
    start = time.time()
    metrics = train.main(argv + ["--out", out])
    print(f"[{time.time() - start:.0f} s]")
    return metrics


def bridge(clip: str) -> dict:
    """The bridged model that notebooks 3, 7, 8 and 9 share: ViFi-CLIP fine-tuned on toy-k400 (the zero-shot setting,
    the world's defaults), trained by the first of them and reused by the others (run_shared). The metrics dict, with
    "out" and "checkpoint" (its last.pt: the zero-shot setting reports the final weights)."""
    metrics = run_shared("--setting", "zeroshot", "--clip", clip, "--dataset", "miniworld", "--train", "both")
    return dict(metrics, checkpoint=os.path.join(metrics["out"], "last.pt"))


class ClaimNotShown(AssertionError):
    """The notebook's text claims something this run's outputs do not show: the text or the code has drifted."""


def check(condition, sentence: str):
    """Print `sentence` if `condition` holds; raise ClaimNotShown if not (the notebook then fails in CI)."""
    if not condition:
        raise ClaimNotShown(f"the text claims: {sentence!r}, but this run's outputs do not show it")
    print("✓", sentence)


def change(before: float, after: float, unit: str = "%", tolerance: float = 0.05, digits: int = 1) -> str:
    """'rises from 16.2% to 24.6%', 'falls from ...', or 'stays at ...' (within `tolerance`), to `digits` decimals."""
    if abs(after - before) <= tolerance:
        return f"stays at {after:.{digits}f}{unit}"
    return f"{'rises' if after > before else 'falls'} from {before:.{digits}f}{unit} to {after:.{digits}f}{unit}"


def elapsed():
    print(f"notebook ran in {time.time() - _notebook['start']:.0f} s")
