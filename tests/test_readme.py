"""The README as an executable specification: every command it shows runs, or is listed here as skipped with the reason.

Commands are read from the README's indented code lines and `inline code` that start with python/python3/torchrun/bash,
and its ```python blocks. Each must match one rule of COMMANDS below (a regular expression): RUN as written (in a
temporary folder, so that `out/` lands there), RUN in a short mode (benchmarks: --quick), or SKIP with the reason
(real datasets, a GPU, several machines). A command that matches no rule fails the test: a new README command comes
with a rule. The runs marked slow are left out of the fast tier (`pytest -m "not slow"`).
"""
import json
import os
import re
import shlex
import socket
import subprocess

import pytest
import torch

import data
from world import miniworld
import test_vifi
from conftest import assert_same_weights
from test_vifi import save_authors_checkpoint, write_video

fake_yacs = test_vifi.fake_yacs  # a fixture, taken by name below

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "benchmarks", "README.md")]
RUN, QUICK, SKIP = "run as written", "run in its short mode", "skip"
SHARE = "run in order in one folder"  # your own video and sharing weights: test_readme_sharing_commands_run_in_order

# (pattern, what to do, reason). The first rule that matches a command decides.
COMMANDS = [
    (r"-m pytest|^bash \.ci/run$", SKIP, "the test suite itself (CI runs it: bash .ci/run)"),
    (r"^python3? -m tools\.(export_hf|classify_video) ", SHARE, ""),  # on the tiny CLIP, see the test
    (r"--nnodes", SKIP, "needs several machines"),
    (r"benchmarks/gpu_checks\.py", SKIP, "needs a CUDA GPU"),
    (r"^python3? -m world\.tiny_clip", SKIP,
     "pretrains the tiny CLIP: half an hour (tests/test_tiny_clip.py runs 2 steps)"),
    (r"^python3? -m tools\.check_dataset ROOT LIST LABELS", RUN, ""),  # on the embedded world's toy-hmdb
    (r"^python3? -m tools\.prepare_videos K400 train\.txt K400_256", RUN, ""),  # on 20 of the world's videos
    (r"^python3? train\.py --help$", RUN, ""),
    (r"--data-root (?!\S*world)|--target-roots|--dataset (hmdb51|ucf101|k400|k600|ssv2|custom)|tools\.kinetics_lists|"
     r"^(?:.*&& )?python3? -m tools\.check_dataset (?!\S*world)(/|[A-Z])", SKIP,
     "needs a real dataset or the user's files"),
    (r"--init-from (?!out/)", SKIP, "needs weights trained on a real dataset"),
    (r"^(python3? -m pip install (-q )?-r requirements\.txt && )?python3? train\.py --setting fewshot --k 16$", RUN, ""),
    (r"^torchrun --nproc_per_node=2 train\.py --setting fewshot --k 16$", RUN, ""),
    (r"^python3? benchmarks/\w+\.py", QUICK, ""),
]


def readme_text() -> str:
    return "\n".join(open(path).read() for path in READMES)


def readme_commands(text: str) -> list:
    """Shell commands of the README: indented code lines and inline code that start with a program we run."""
    starts = r"(?:python3?|torchrun|bash) "
    text = re.sub(r"\\\n\s*", "", text)  # a command continued on the next line with a backslash
    found = [line.strip() for line in text.splitlines() if re.match(r"^    " + starts, line)]
    found += re.findall(r"`(" + starts + r"[^`]+)`", text)
    return list(dict.fromkeys(c.strip() for c in found))  # in order, once each


def python_blocks(text: str) -> list:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def rule_for(command: str):
    for pattern, action, reason in COMMANDS:
        if re.search(pattern, command):
            return action, reason
    return None, None


def test_every_readme_command_has_a_rule():
    commands = readme_commands(readme_text())
    assert any("train.py --setting fewshot --k 16" in c for c in commands), "the README lost its main command"
    unknown = [c for c in commands if rule_for(c)[0] is None]
    assert not unknown, f"README commands without a rule in tests/test_readme.py: {unknown}"
    for c in commands:  # the skipped ones, by name and reason, in the test log
        action, reason = rule_for(c)
        print(f"{action:>22}: {c}" + (f"  ({reason})" if reason else ""))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell(command: str, cwd, timeout=1200) -> subprocess.CompletedProcess:
    """The command as a user types it in the repository root, run from any folder: the scripts by their path, the
    modules (python -m tools.NAME) through PYTHONPATH."""
    words = [os.path.join(ROOT, w) if w.endswith(".py") and os.path.isfile(os.path.join(ROOT, w)) else w
             for w in shlex.split(command.split("&& ")[-1])]  # the install before && is CI's own first step
    env = dict(os.environ, PET_MASTER_PORT=str(free_port()), PET_MASTER_ADDR="127.0.0.1", PYTHONPATH=ROOT)
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def runnable(action):
    return [c for c in readme_commands(readme_text()) if rule_for(c)[0] == action]


@pytest.mark.slow
@pytest.mark.parametrize("command", runnable(RUN))
def test_readme_command_runs(command, tmp_path):
    world = miniworld.dataset_paths("toy-hmdb")
    data.write_list(tmp_path / "twenty.txt", data.read_list(world["val"])[:20])
    command = command.replace("ROOT LIST LABELS", f"{world['root']} {world['val']} {world['labels']}")
    command = command.replace("K400 train.txt K400_256", f"{world['root']} {tmp_path / 'twenty.txt'} {tmp_path / 'prepared'}")
    result = shell(command, tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if "tools.prepare_videos" in command:  # every listed video re-encoded, at its listed path
        assert all(os.path.isfile(tmp_path / "prepared" / p) for p, _ in data.read_list(tmp_path / "twenty.txt"))
    if "train.py --setting" in command:  # the main job: a result on the embedded world's test set
        metrics = json.load(open(tmp_path / "out" / "metrics.json"))
        assert metrics["reports"][f"toy-hmdb {miniworld.eval_split()}"]["videos"] == len(data.read_list(world["eval"]))
        assert metrics["summary"]["top1"] > 100 / len(miniworld.TOY_HMDB)  # above chance
        print(f"{command}: top-1 {metrics['summary']['top1']:.1f}, {metrics['world_size']} processes")


@pytest.mark.slow
@pytest.mark.parametrize("command", runnable(QUICK))
def test_readme_benchmark_runs_in_its_short_mode(command, tmp_path):
    result = shell(command + " --quick", tmp_path, timeout=600)
    assert result.returncode == 0, f"{command} --quick\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "a benchmark prints its figures"


def test_readme_python_snippets_run(tmp_path, fake_yacs, monkeypatch):
    """Each ```python block, on the tiny CLIP: "ViT-B/16" -> the tiny model, the authors' released weights -> tiny
    weights saved in the authors' layout, "my_video.mp4" -> a rendered video."""
    import vifi
    from plumbing import clip_weights
    blocks = python_blocks(readme_text())
    assert blocks, "the README shows how to classify one's own video"
    trained = vifi.ViFiCLIP(clip_weights.load(miniworld.TINY_CLIP_NAME), ["dancing", "swimming"], train_mode="none")
    save_authors_checkpoint(tmp_path / "vifi_clip_k400.pth", trained, fake_yacs)
    write_video(tmp_path / "my_video.mp4")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        code = block.replace('"ViT-B/16"', f'"{miniworld.TINY_CLIP_NAME}"')
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.slow
def test_readme_sharing_commands_run_in_order(tmp_path, fake_yacs):
    """The commands of "Your own video" and "Sharing weights", in the README's order, in one folder, on the tiny CLIP:
    out/best.pt is a checkpoint of the main job's run as run_files writes it (the tiny CLIP's weights, not trained),
    vifi_clip_k400.pth tiny weights in the authors' layout (their token embeddings come from the tiny CLIP: the
    command gets --base miniworld-tiny), my_video.mp4 a rendered video, splits/ the repository's."""
    import train
    import vifi
    from plumbing import clip_weights, run_files
    commands = runnable(SHARE)
    assert [c.split()[2] for c in commands] == ["tools.classify_video", "tools.export_hf", "tools.export_hf",
                                                "tools.classify_video"]
    clip = clip_weights.load(miniworld.TINY_CLIP_NAME)
    cfg = train.parse_command_line(["--setting", "fewshot", "--k", "16"])[0]  # the main job's configuration
    cfg.normalization = "clip"
    model = vifi.ViFiCLIP(clip, ["dancing", "swimming"], train_mode=cfg.train)
    optimizer = torch.optim.AdamW(vifi.trainable_parameters(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    os.makedirs(tmp_path / "out")
    run_files.save_checkpoint(str(tmp_path / "out" / "best.pt"), model, optimizer, scheduler,
                              torch.amp.GradScaler("cpu", enabled=False), dict(epoch=10), cfg)
    save_authors_checkpoint(tmp_path / "vifi_clip_k400.pth", model, fake_yacs)
    write_video(tmp_path / "my_video.mp4")
    for command in commands:
        if "vifi_clip_k400.pth" in command and "--base" not in command:
            command += f" --base {miniworld.TINY_CLIP_NAME}"
        result = shell(command.replace("splits/labels/", os.path.join(ROOT, "splits", "labels", "")), tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        if "tools.export_hf" in command:  # a folder transformers reads, the run's classes or the labels' in its card
            folder = tmp_path / command.split()[4]
            card = open(folder / "README.md").read()
            count = len(miniworld.TOY_HMDB) if "best.pt" in command else 400  # the main job's, or Kinetics-400's
            assert f"- classes ({count}, in label order" in card
            transformers = pytest.importorskip("transformers")
            transformers.CLIPModel.from_pretrained(str(folder))
            transformers.CLIPProcessor.from_pretrained(str(folder))
        else:  # a ranking
            assert "my_video.mp4:" in result.stdout and re.search(r"^\s+\d+\.\d\d%  ", result.stdout, flags=re.M)
        print(f"{command}: ok")


@pytest.mark.slow
def test_one_and_two_processes_end_with_the_same_top1(tmp_path):
    """The README's main command, cut short (one epoch, 4 steps), on 1 process and with torchrun on 2: the same
    global batches, so the same model up to the order of floating-point sums, and the same top-1."""
    main = "train.py --setting fewshot --k 16 --epochs 1 --max-steps 4"
    for name in ("one", "two"):
        os.makedirs(tmp_path / name)
    one = shell(f"python3 {main}", tmp_path / "one")
    two = shell(f"torchrun --nproc_per_node=2 {main}", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert "batch 8 = 8 x 1 processes x 1 accumulation" in one.stdout  # the split is the program's, and reported
    assert "batch 8 = 4 x 2 processes x 1 accumulation" in two.stdout
    a, b = (json.load(open(tmp_path / d / "out" / "metrics.json")) for d in ("one", "two"))
    assert a["summary"]["top1"] == b["summary"]["top1"]
    assert_same_weights(*(torch.load(tmp_path / d / "out" / "last.pt", weights_only=True)["model"]
                          for d in ("one", "two")))
