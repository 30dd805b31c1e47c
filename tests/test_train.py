"""train.py end to end on the reduced embedded world: every setting, exact resume, 2 processes = 1 process, exact
evaluation counts, and the errors a user meets before any compute is spent.

The CLIP here has the tiny world model's architecture with random weights: what is tested is the machinery, not what
it learns (benchmarks/small_world_results.py measures that).
"""
import contextlib
import dataclasses
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import clip_model
import data
import train
import vifi
from plumbing import clip_weights, mixed_precision, run_files, video_decoder
from world import miniworld, tiny_clip
from conftest import assert_same_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(argv: list) -> "train.Config":
    """train.py's configuration for these flags, the setting's defaults filled in."""
    return train.parse_command_line(argv)[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    miniworld.ensure_world(root, reduced=True)
    return root


def run(out, world, clip, *args):
    """train.main in this process, on the reduced world, one epoch unless told otherwise."""
    argv = ["--reduced-world", "--data-root", world, "--clip", clip, "--workers", "0", "--out", str(out),
            "--epochs", "1", *map(str, args)]
    return train.main(argv)


def weights(out, name="last.pt"):
    return torch.load(os.path.join(out, name), weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------------------------------
# Every setting


def test_fewshot(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--setting", "fewshot", "--k", "2")
    report = metrics["reports"][f"toy-hmdb {miniworld.eval_split()}"]
    assert report["videos"] == len(miniworld.TOY_HMDB) and report["unreadable"] == 0
    assert metrics["summary"]["top1"] == report["top1"]
    correct = report["top1"] * report["videos"] / 100  # a whole number of the 16 videos
    assert correct == pytest.approx(round(correct)) and report["mean_class"] == pytest.approx(report["top1"])
    on_disk = json.load(open(tmp_path / "metrics.json"))
    assert on_disk["summary"] == pytest.approx(metrics["summary"])
    assert on_disk["config"]["setting"] == "fewshot" and on_disk["code_version"]
    assert len(open(tmp_path / "log.jsonl").readlines()) == 1
    assert os.path.isfile(tmp_path / "best.pt") and os.path.isfile(tmp_path / "config.json")


def test_base2novel_reports_base_novel_and_harmonic_mean(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--setting", "base2novel", "--k", "2")
    s = metrics["summary"]
    assert set(metrics["reports"]) == {"base", "novel"}
    half = len(miniworld.TOY_HMDB) // 2
    assert metrics["reports"]["base"]["num_classes"] == half
    assert metrics["reports"]["novel"]["num_classes"] == len(miniworld.TOY_HMDB) - half
    expected_hm = 0.0 if s["base"] + s["novel"] == 0 else 2 * s["base"] * s["novel"] / (s["base"] + s["novel"])
    assert s["hm"] == pytest.approx(expected_hm)


def test_zeroshot_trains_on_source_and_evaluates_every_target(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--setting", "zeroshot", "--max-steps", "1")
    assert set(metrics["reports"]) == set(miniworld.ZEROSHOT_TARGETS)
    for target in miniworld.ZEROSHOT_TARGETS:
        assert f"{target}_top1_mean" in metrics["summary"] and f"{target}_top1_std" in metrics["summary"]


def test_fully_supervised_evaluates_multi_view_and_single_view(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--setting", "fully", "--max-steps", "1", "--num-clips", "2",
                  "--num-crops", "3")
    name = f"toy-k400 {miniworld.eval_split()}"
    assert set(metrics["reports"]) == {name, f"{name} (1 view)"}
    assert metrics["reports"][name]["videos"] == len(miniworld.TOY_K400)


def test_vanilla_zero_shot_evaluation_only(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--setting", "fewshot", "--k", "2", "--train", "none")
    assert metrics["history"] == [] and metrics["config"]["template"] == "{}"
    assert not os.path.exists(tmp_path / "last.pt")


def test_bridge_and_prompt_from_a_fine_tuned_model(world, random_tiny_clip, tmp_path):
    run(tmp_path / "bridge", world, random_tiny_clip, "--setting", "fewshot", "--k", "2")
    metrics = run(tmp_path / "prompt", world, random_tiny_clip, "--setting", "fewshot", "--k", "2",
                  "--train", "prompts", "--init-from", tmp_path / "bridge" / "best.pt", "--n-ctx-text", "2",
                  "--n-ctx-vision", "2", "--depth-text", "2", "--depth-vision", "2")
    saved = weights(tmp_path / "prompt")
    assert saved and all(k.startswith("prompts.") for k in saved)  # only the prompts are stored
    assert sum(v.numel() for v in saved.values()) == 2 * 2 * 2 * 128
    assert metrics["config"]["lr"] == train.WORLD["prompts"]["lr"]  # the world's prompt recipe, not fine-tuning's


# ---------------------------------------------------------------------------------------------------------------------
# Nothing lost: a run stopped halfway and resumed ends with the same weights


def test_resume_mid_epoch_ends_with_identical_weights(world, random_tiny_clip, tmp_path):
    common = ("--setting", "fewshot", "--k", "2", "--epochs", "2", "--batch-size", "8")
    per_epoch = 2 * len(miniworld.TOY_HMDB) // 8  # steps per epoch
    run(tmp_path / "straight", world, random_tiny_clip, *common)
    stop = per_epoch + per_epoch // 2  # in the middle of epoch 2
    run(tmp_path / "stopped", world, random_tiny_clip, *common, "--max-steps", str(stop))
    stopped = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["state"]
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["step"]) == (1, per_epoch // 2, stop)
    run(tmp_path / "stopped", world, random_tiny_clip, *common, "--resume")
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_the_image_tower_learns_at_its_own_rate(world, random_tiny_clip, tmp_path):
    cfg = config(["--clip", random_tiny_clip, "--lr", "1e-3", "--image-lr-scale", "0.25"])
    model = vifi.ViFiCLIP(clip_weights.load(random_tiny_clip), ["a", "b"], train_mode="both")
    groups = vifi.parameter_groups(model, cfg.lr, cfg.image_lr_scale)
    image = {id(p) for p in model.clip.visual.parameters()}
    assert [g.get("lr", cfg.lr) for g in groups] == [1e-3, 2.5e-4]
    assert all(id(p) not in image for p in groups[0]["params"]) and all(id(p) in image for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(vifi.trainable_parameters(model))
    assert len(vifi.parameter_groups(model, cfg.lr, 1)) == 1  # the paper: one group
    # a scale of 0 freezes the image tower in effect: one step changes the text tower only
    start = torch.load(random_tiny_clip, weights_only=True)
    run(tmp_path, world, random_tiny_clip, "--setting", "fewshot", "--k", "2", "--image-lr-scale", "0",
        "--max-steps", "1", "--warmup-epochs", "0")  # (with a warm-up the first step runs at lr 0, as the authors')
    after = {name.removeprefix("clip."): value for name, value in weights(tmp_path).items()}  # the trained ones
    changed = {name for name in after if not torch.equal(start[name], after[name])}
    assert any(name.startswith("visual.") for name in after)  # trainable, yet unchanged:
    assert changed and all(not name.startswith("visual.") for name in changed), changed
    assert any(name.startswith("transformer.") for name in changed)


def test_a_checkpoint_from_before_a_flag_resumes_with_the_value_it_ran_with(world, random_tiny_clip, tmp_path):
    run(tmp_path, world, random_tiny_clip, "--setting", "fewshot", "--k", "2", "--max-steps", "1")
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    del checkpoint["config"]["image_lr_scale"]  # saved before the flag existed: the run ran at scale 1
    torch.save(checkpoint, tmp_path / "last.pt")
    cfg = config(["--resume", "--out", str(tmp_path)])
    _, resumed = run_files.prepare_resume(cfg, {"resume", "out"})
    assert resumed.image_lr_scale == 1.0 and resumed.lr == checkpoint["config"]["lr"]


def log_lines(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


@pytest.mark.slow  # kills and resumes several runs: the full suite's
def test_a_resumed_epoch_logs_all_of_its_steps_once(world, random_tiny_clip, tmp_path):
    """Killed in the middle of epoch 2 (after a checkpoint), resumed: log.jsonl has one line per epoch, and epoch 2's
    line covers all its steps, not only those after the checkpoint."""
    common = ("--setting", "fewshot", "--k", "2", "--epochs", "2", "--batch-size", "8")
    per_epoch = 2 * len(miniworld.TOY_HMDB) // 8  # steps per epoch
    run(tmp_path / "straight", world, random_tiny_clip, *common)
    run(tmp_path / "stopped", world, random_tiny_clip, *common, "--max-steps", str(per_epoch + per_epoch // 2))
    train.main(["--resume", "--out", str(tmp_path / "stopped")])  # the interrupted run's flags are in its checkpoint
    straight, resumed = log_lines(tmp_path / "straight"), log_lines(tmp_path / "stopped")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(straight, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["step"] == a["step"]
        assert b["summary"] == a["summary"] if "summary" in a else "summary" not in b


@pytest.mark.slow  # kills and resumes several runs: the full suite's
def test_a_kill_between_checkpoint_and_log_repeats_no_line(world, random_tiny_clip, tmp_path, monkeypatch):
    """Kills at the two moments around an epoch's end: after its checkpoint (last.pt) and before the log is written,
    and before the checkpoint (the log written first would then repeat the line on resume). Either way, one line per
    epoch and no temporary file left behind."""
    common = ("--setting", "fewshot", "--k", "2", "--epochs", "2", "--batch-size", "8", "--save-every", "3")
    run(tmp_path / "straight", world, random_tiny_clip, *common)
    real_save, real_write_log = run_files.atomic_save, run_files.write_log

    def kill_at_epoch_end_save(obj, path):
        if path.endswith("last.pt") and obj["state"]["step"] == 2 * len(miniworld.TOY_HMDB) // 8:  # epoch 1's end
            with open(path + ".tmp", "wb") as f:  # what a kill while writing leaves
                f.write(b"half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, path)

    def kill_after_checkpoint(out, history):
        if history:
            raise KeyboardInterrupt
        real_write_log(out, history)

    for name, patch in (("kill_save", ("atomic_save", kill_at_epoch_end_save)),
                        ("kill_log", ("write_log", kill_after_checkpoint))):
        monkeypatch.setattr(run_files, *patch)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / name, world, random_tiny_clip, *common)
        monkeypatch.undo()
        train.main(["--resume", str(tmp_path / name / "last.pt"), "--workers", "0"])  # a path works too
        lines = log_lines(tmp_path / name)
        assert [r["epoch"] for r in lines] == [1, 2], name
        for a, b in zip(log_lines(tmp_path / "straight"), lines):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), name
        assert not [f for f in os.listdir(tmp_path / name) if ".tmp" in f], name


def test_resume_refuses_flags_that_change_the_run(world, random_tiny_clip, tmp_path, capsys):
    common = ("--setting", "fewshot", "--k", "2", "--epochs", "2", "--batch-size", "8")
    run(tmp_path, world, random_tiny_clip, *common, "--max-steps", "2")
    code = train.cli(["--resume", "--out", str(tmp_path), "--lr", "1e-2", "--batch-size", "16", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--batch-size 16 (the run has 8)" in err and "--lr 0.01 (the run has 0.0003)" in err
    assert "workers" not in err  # cannot change the result: allowed
    assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["step"] == 2  # nothing was touched


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no partial file under the real name."""
    path = str(tmp_path / "last.pt")
    run_files.atomic_save({"x": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run_files.atomic_save({"x": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))


# ---------------------------------------------------------------------------------------------------------------------
# Faults a long run meets: a full disk, a broken checkpoint, two runs in one folder, a parent that decoded first


class FillsUp:
    """A file on a disk with `room` bytes left: the write that goes past it writes what fits, then fails as a full
    disk does (OSError ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self.room:
            self.f.write(data[:self.room] if isinstance(data, str) else memoryview(data).cast("B")[:self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def disk_fills_up(monkeypatch, name: str, nth: int, room: int):
    """The nth write of the run file `name` (last.pt, log.jsonl, ...) meets a full disk after `room` bytes."""
    real, count = run_files.atomic_write, [0]

    @contextlib.contextmanager
    def atomic_write(path, mode="wb", tmp=None, encoding=None):
        with real(path, mode, tmp=tmp, encoding=encoding) as f:
            count[0] += os.path.basename(path) == name
            yield FillsUp(f, room) if os.path.basename(path) == name and count[0] == nth else f

    monkeypatch.setattr(run_files, "atomic_write", atomic_write)


@pytest.mark.parametrize("name, nth", [("last.pt", 2), ("log.jsonl", 2), ("metrics.json", 1), ("config.json", 1)])
def test_a_full_disk_stops_the_run_in_one_line_that_says_what_is_safe(name, nth, world, random_tiny_clip, tmp_path,
                                                                      monkeypatch, capsys):
    """Epoch 1 ends at step 6 (48 videos, batch 8). The disk fills up partway through: epoch 2's last.pt, epoch 1's
    log line (after its checkpoint), the metrics at the end, the configuration before anything else."""
    epochs = 2 if name == "last.pt" else 1
    argv = ["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0", "--k", "2",
            "--batch-size", "8", "--epochs", epochs, "--out", tmp_path / "full"]
    disk_fills_up(monkeypatch, name, nth, room=100_000 if name == "last.pt" else 10)
    code, err = user_error(capsys, *argv)
    monkeypatch.undo()
    out = tmp_path / "full"
    safe = (f"{out}/last.pt still holds epoch 1, step 6: free space and rerun with --resume" if name != "config.json"
            else "no checkpoint was written yet: free space and start the run again")
    assert code == 1 and err == f"train.py: error: cannot write {out}/{name}: No space left on device; {safe}\n"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # and the file itself is the previous one whole:
    if name != "config.json":
        assert torch.load(out / "last.pt", weights_only=True)["state"]["step"] == 6
    if name == "last.pt":  # room made: resumed, it ends where an uninterrupted run ends
        assert user_error(capsys, *argv, "--resume")[0] == 0
        run(tmp_path / "straight", world, random_tiny_clip, "--k", "2", "--batch-size", "8", "--epochs", "2")
        straight, resumed = weights(tmp_path / "straight"), weights(out)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight) and straight.keys() == resumed.keys()
        assert [r["epoch"] for r in log_lines(out)] == [1, 2]


def test_a_checkpoint_that_cannot_be_read_is_named_in_one_line(world, random_tiny_clip, tmp_path, capsys):
    run(tmp_path / "run", world, random_tiny_clip, "--k", "2", "--max-steps", "1")
    whole = (tmp_path / "run" / "last.pt").read_bytes()
    base = ["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0", "--k", "2"]
    for damage in ("truncated", "random_bytes", "not_ours"):
        path = tmp_path / damage / "last.pt"
        path.parent.mkdir()
        if damage == "truncated":  # a copy cut short
            path.write_bytes(whole[:len(whole) // 2])
        elif damage == "random_bytes":
            path.write_bytes(os.urandom(len(whole)))
        else:  # a whole torch file, but no run's
            torch.save({"weights": torch.zeros(3)}, path)
        code, err = user_error(capsys, "--resume", path, "--workers", "0")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        what = ("is not a checkpoint of train.py" if damage == "not_ours" else
                "is truncated or corrupt (not a complete checkpoint); restore a whole copy, or start the run anew")
        assert err.startswith(f"train.py: error: --resume: {path} {what}"), err
        if damage != "not_ours":
            code, err = user_error(capsys, *base, "--init-from", path, "--out", tmp_path / "o")
            assert code == 2 and err == (f"train.py: error: --init-from {path} is truncated or corrupt (not a complete "
                                         f"checkpoint)\n"), err
    assert not os.path.exists(tmp_path / "o" / "last.pt")


HOLDER = """import fcntl, os, socket, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(f"{os.getpid()} on {socket.gethostname()}\\n"); f.flush()
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_out_folder_is_refused_in_one_line_until_its_holder_dies(world, random_tiny_clip, tmp_path, capsys):
    """Another process holds --out's lock (as a run does, run_files.hold_folder): a run into it stops before touching
    anything, naming that process; killed (-9), the holder leaves nothing locked."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pt.tmp").write_bytes(b"what a run was writing")  # the holder's; only a holder may clear it
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = user_error(capsys, "--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--k", "2",
                               "--workers", "0", "--max-steps", "1", "--out", out)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"train.py: error: --out {out} is in use by another run: process {holder.pid} on "
                              f"{socket.gethostname()} ({sys.executable} -c import fcntl"), err
        assert err.endswith("wait for it to end, or give another --out\n"), err
        assert sorted(os.listdir(out)) == [".lock", "last.pt.tmp"]  # untouched
    finally:
        holder.kill()  # kill -9: the lock goes with the process
        holder.wait()
    run(out, world, random_tiny_clip, "--k", "2", "--max-steps", "1")
    assert os.path.isfile(out / "last.pt") and not os.path.exists(out / "last.pt.tmp")


def test_stale_temporaries_are_exactly_the_names_run_files_writes(tmp_path, monkeypatch):
    """remove_stale_temporaries removes what a kill while atomic_save / atomic_write_text write leaves (<file>.tmp of
    the run's five files), and nothing else of --out."""
    monkeypatch.setattr(run_files, "atomic_write", lambda path, mode, tmp: open(tmp, mode))  # killed before renaming
    for name in ("last.pt", "best.pt"):
        run_files.atomic_save({}, str(tmp_path / name))
    for name in ("log.jsonl", "config.json", "metrics.json"):
        run_files.atomic_write_text(str(tmp_path / name), "")
    assert sorted(os.listdir(tmp_path)) == ["best.pt.tmp", "config.json.tmp", "last.pt.tmp", "log.jsonl.tmp",
                                            "metrics.json.tmp"]
    others = [".lock", "last.pt", "last.pt.123.tmp", "last.pt.tmp1", "mine.tmp"]  # names no run writes
    for name in others:
        (tmp_path / name).write_text("")
    run_files.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == others


def folder_state(out):
    return {name: (os.stat(out / name).st_size, os.stat(out / name).st_mtime_ns) for name in os.listdir(out)}


@pytest.mark.slow  # three real train.py processes
def test_a_second_run_into_the_same_out_stops_and_the_first_goes_on(world, random_tiny_clip, tmp_path):
    """The same command launched twice (a scheduler's retry): the second stops in one line naming the first, which
    is frozen meanwhile (SIGSTOP) so that anything the second touched would show; the first then finishes whole."""
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--reduced-world", "--data-root", world, "--clip",
               random_tiny_clip, "--workers", "0", "--k", "2", "--batch-size", "8", "--epochs", "2", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (os.path.isfile(out / ".lock") and open(out / ".lock").read().startswith(f"{first.pid} on ")):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
        before = folder_state(out)
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert folder_state(out) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.startswith(f"train.py: error: --out {out} is in use by another run: process {first.pid} on "
                                    f"{socket.gethostname()} ({sys.executable} {command[1]} --reduced-world")
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert [r["epoch"] for r in log_lines(out)] == [1, 2] and "train.py: error" not in stderr
    assert json.load(open(out / "metrics.json"))["history"] == log_lines(out)


FULL_DISK = """import contextlib, errno, os, sys
sys.path.insert(0, {root!r})
import train
from plumbing import run_files
real = run_files.atomic_write


@contextlib.contextmanager
def full(path, mode="wb", tmp=None, encoding=None):  # checkpoints meet a full disk
    with real(path, mode, tmp=tmp, encoding=encoding) as f:
        if path.endswith(".pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        yield f


run_files.atomic_write = full
if __name__ == "__main__":
    sys.exit(train.cli())
"""


@pytest.mark.slow  # two processes
def test_a_full_disk_stops_every_process_of_a_distributed_run(world, random_tiny_clip, tmp_path):
    """Only the first process writes; the other, which would wait for it at the next step, stops with it."""
    script = tmp_path / "full_disk_train.py"
    script.write_text(FULL_DISK.format(root=ROOT))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(script), "--reduced-world", "--data-root", world, "--clip",
               random_tiny_clip, "--workers", "0", "--k", "2", "--batch-size", "8", "--epochs", "2", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    line = (f"train.py: error: cannot write {out}/last.pt: No space left on device; no checkpoint was written yet: "
            f"free space and start the run again")  # the first checkpoint: epoch 1 ends before any evaluation
    # each process says it once (their lines may interleave on the shared stderr) and ends with status 1, unless
    # torchrun, seeing the first end, stopped the other before it printed (SIGTERM, exit code -15): no process hangs,
    # none fails otherwise
    assert result.returncode != 0 and 1 <= result.stderr.count(line) <= 2, result.stderr[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", result.stderr)
    assert codes and set(codes) <= {"1", "-15"}, result.stderr[-3000:]
    assert "Connection closed" not in result.stderr and not [f for f in os.listdir(out) if f.endswith(".tmp")]


DECODES_FIRST = """import sys
sys.path.insert(0, {root!r})
import train
from plumbing import video_decoder
if __name__ == "__main__":
    video_decoder.decode_frames({video!r}, [0, 10], size=(64, 64))  # as a notebook that shows a frame first
    sys.exit(train.cli({argv!r}))
"""


def test_workers_do_not_hang_when_the_parent_has_decoded_and_resized(world, random_tiny_clip, tmp_path):
    """The training and evaluation loaders' workers, in a process that has decoded and resized a frame before: workers
    forked from it hang forever in their first resize with PyAV 19 (a timeout here). global_batches.loader starts
    them clean."""
    paths = miniworld.dataset_paths("toy-hmdb", world, reduced=True)
    video = os.path.join(paths["root"], data.read_list(paths["train"])[0][0])
    argv = ["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "1", "--k", "2",
            "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "out")]
    script = tmp_path / "decodes_first.py"
    script.write_text(DECODES_FIRST.format(root=ROOT, video=video, argv=argv))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its hung workers
        process.communicate()
        pytest.fail(f"DataLoader workers hung (PyAV {video_decoder.av.__version__}) after the parent decoded a frame")
    assert process.returncode == 0, stderr[-3000:]
    metrics = json.load(open(tmp_path / "out" / "metrics.json"))
    assert metrics["history"] == [] and metrics["reports"][f"toy-hmdb {miniworld.eval_split()}"]["videos"] == \
        len(miniworld.TOY_HMDB)


# ---------------------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes equal 1 process with the same effective batch; evaluation counts every video once


def custom_dataset(world, tmp_path, val_count=15, corrupt=False):
    """toy-hmdb of the reduced world as a custom dataset, with an odd number of validation videos."""
    paths = miniworld.dataset_paths("toy-hmdb", world, reduced=True)
    names = data.read_labels(paths["labels"])
    val = data.read_list(paths["val"], len(names))[:val_count]
    train_samples = data.read_list(paths["train"], len(names))
    if corrupt:  # one unreadable video in each list
        bad = tmp_path / "videos"
        bad.mkdir(exist_ok=True)
        (bad / "broken.mp4").write_bytes(b"\x00not a video" * 100)
        os.symlink(paths["root"], bad / "world")
        train_samples = [(f"world/{p}", y) for p, y in train_samples] + [("broken.mp4", 0)]
        val = [(f"world/{p}", y) for p, y in val] + [("broken.mp4", 1)]
        root = str(bad)
    else:
        root = paths["root"]
    data.write_list(tmp_path / "train.txt", train_samples)
    data.write_list(tmp_path / "val.txt", val)
    return ["--dataset", "custom", "--data-root", root, "--train-list", str(tmp_path / "train.txt"),
            "--val-list", str(tmp_path / "val.txt"), "--labels", paths["labels"]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, out, nproc=2, timeout=600):
    """train.py on `nproc` gloo processes; returns the completed process (stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", os.path.join(ROOT, "train.py"), *map(str, args), "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_processes_train_the_model_of_one_process_with_the_paper_recipe(world, random_tiny_clip, tmp_path, capsys):
    """Mixup, cutmix and label smoothing on (the default on real data), a learning rate at which a different batch
    shows: the same global micro-batches, the same mixes, the same weights and the same logged loss. (Before, each
    process took every other video and seeded mixup by its rank: weights differed by 1e-3.)"""
    dataset = custom_dataset(world, tmp_path)
    common = ["--setting", "fewshot", "--k", "2", "--clip", random_tiny_clip, "--workers", "0", "--epochs", "1",
              "--batch-size", "16", "--lr", "1e-3", "--warmup-epochs", "0", "--mixup", "0.8", "--cutmix", "1.0",
              "--label-smoothing", "0.1", *dataset]
    one = train.main([*common, "--out", str(tmp_path / "one")])
    one_output = capsys.readouterr().out
    result = torchrun(common, tmp_path / "two")
    two = json.load(open(tmp_path / "two" / "metrics.json"))
    # No --micro-batch: 4 videos a forward pass both ways (custom data), accumulation makes up the rest.
    assert "batch 16 = 4 x 1 processes x 4 accumulation" in one_output
    assert "batch 16 = 4 x 2 processes x 2 accumulation" in result.stdout and two["world_size"] == 2
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-5)  # every process's loss
    # Every one of the 15 validation videos counted exactly once by the two processes together.
    assert two["reports"]["val"]["videos"] == one["reports"]["val"]["videos"] == 15
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    initial = torch.load(random_tiny_clip, weights_only=True)
    assert max((a[n] - initial[n[len("clip."):]]).abs().max() for n in a) > 1e-3  # a step shows above tolerance
    # Same samples and mixes; a different batch moves weights by ~lr = 1e-3. Seen on one CPU: 2 elements of the 8 M
    # (one of 16,384 in a tensor) 1.5-2e-4 apart, Adam's steps on gradients that are ~0 (see assert_same_weights).
    assert_same_weights(a, b, atol=1e-4, stray=1e-3)
    assert two["reports"]["val"]["top1"] == pytest.approx(one["reports"]["val"]["top1"])


def test_unreadable_videos_never_stop_training_and_count_as_wrong(world, random_tiny_clip, tmp_path, capsys):
    dataset = custom_dataset(world, tmp_path, val_count=5, corrupt=True)
    metrics = train.main(["--setting", "fewshot", "--k", "2", "--clip", random_tiny_clip, "--workers", "0",
                          "--epochs", "1", "--batch-size", "8", *dataset, "--out", str(tmp_path / "out")])
    report = metrics["reports"]["val"]
    assert report["videos"] == 6 and report["unreadable"] == 1  # in the denominator, reported
    # The broken training video is drawn only if the K-shot sample picked it; one epoch draws every sampled video once.
    train_list = data.read_list(dataset[dataset.index("--train-list") + 1])
    picked = data.kshot_split(train_list, 2, seed=1)  # --split 1 seeds the K-shot draw
    assert metrics["history"][0]["unreadable_videos"] == sum(path == "broken.mp4" for path, _ in picked)
    # 1 of 6 is more than the 1% a run tolerates in silence: said at the end and in metrics.json
    assert metrics["warnings"] == ["val: 1 of 6 videos unreadable, counted as wrong; check them with python -m "
                                   "tools.check_dataset"]
    assert "WARNING: val: 1 of 6 videos unreadable" in capsys.readouterr().err
    assert json.load(open(tmp_path / "out" / "metrics.json"))["warnings"] == metrics["warnings"]


def test_a_validation_set_of_unreadable_videos_fails_the_run(world, random_tiny_clip, tmp_path, capsys):
    dataset = custom_dataset(world, tmp_path, val_count=0, corrupt=True)  # the validation list: one broken video
    code = train.cli(["--setting", "fewshot", "--k", "2", "--clip", random_tiny_clip, "--workers", "0", "--epochs", "1",
                      "--batch-size", "8", *dataset, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "val: all 1 videos under" in err and "are unreadable" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "metrics.json")  # no accuracy of 0 reported as a result


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors before training starts


def test_unknown_setting_is_refused(capsys):
    with pytest.raises(SystemExit):
        config(["--setting", "semi"])
    assert "invalid choice: 'semi'" in capsys.readouterr().err


def test_k_larger_than_a_class_is_refused(world, random_tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="fewer than"):
        run(tmp_path, world, random_tiny_clip, "--setting", "fewshot", "--k", "4")  # the reduced world has 2 per class


def test_labels_outside_the_csv_are_refused(world, random_tiny_clip, tmp_path):
    dataset = custom_dataset(world, tmp_path)
    with open(tmp_path / "val.txt", "a") as f:
        f.write("some/video.mp4 99\n")
    with pytest.raises(train.UserError, match=rf"val\.txt:16: label 99 outside the {len(miniworld.TOY_HMDB)} classes"):
        train.main(["--setting", "fewshot", "--k", "2", "--clip", random_tiny_clip, *dataset, "--out", str(tmp_path)])


def test_missing_data_root_is_refused(random_tiny_clip, tmp_path):
    with pytest.raises(train.UserError, match="--data-root /no/such/folder"):
        train.main(["--dataset", "hmdb51", "--data-root", "/no/such/folder", "--clip", random_tiny_clip,
                    "--out", str(tmp_path)])


def test_weights_that_do_not_fit_are_refused(world, random_tiny_clip, tmp_path):
    state_dict = torch.load(random_tiny_clip, weights_only=True)
    state_dict["visual.proj"] = torch.zeros(3, 3)
    torch.save(state_dict, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong\.pt: clip\.visual\.proj has shape \(3, 3\)"):
        run(tmp_path, world, random_tiny_clip, "--init-from", tmp_path / "wrong.pt", "--k", "2")
    with pytest.raises(ValueError, match=r"wrong\.pt: weights do not fit"):
        run(tmp_path, world, str(tmp_path / "wrong.pt"), "--k", "2")


def test_bf16_autocast_and_activation_checkpointing_train(world, random_tiny_clip, tmp_path):
    metrics = run(tmp_path, world, random_tiny_clip, "--k", "2", "--precision", "bf16",
                  "--grad-checkpointing")
    assert metrics["history"][0]["loss"] > 0
    assert all(v.dtype == torch.float32 for v in weights(tmp_path).values())  # fp32 master weights


def test_precision_auto_on_a_cpu_is_fp32_for_training_and_evaluation_however_fast_bf16_is(world, random_tiny_clip,
                                                                                          tmp_path, monkeypatch):
    # a reported figure must not depend on a timing of the machine: classify's measured choice stays out of train.py
    monkeypatch.setattr(mixed_precision, "inference_precision", lambda device, requested="auto": "bf16")
    evaluated = run(tmp_path / "eval", world, random_tiny_clip, "--setting", "fewshot", "--k", "2", "--train", "none")
    assert evaluated["config"]["precision"] == "fp32"
    trained = run(tmp_path / "train", world, random_tiny_clip, "--k", "2", "--max-steps", "1")
    assert trained["config"]["precision"] == "fp32"


def test_fp16_without_cuda_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--precision fp16 needs a CUDA device"):
        train.main(["--precision", "fp16", "--device", "cpu", "--out", str(tmp_path)])


def test_batch_that_does_not_divide_is_refused(world, random_tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="--batch-size 10 is not a multiple of --micro-batch 4"):
        run(tmp_path, world, random_tiny_clip, "--k", "2", "--batch-size", "10", "--micro-batch", "4")


def test_defaults_follow_the_paper_per_setting():
    cfg = config(["--setting", "zeroshot", "--dataset", "k400"])
    assert (cfg.frames, cfg.epochs, cfg.batch_size, cfg.lr, cfg.clip) == (32, 10, 256, 8e-6, "ViT-B/16")
    cfg = config(["--setting", "fully", "--dataset", "k400"])
    assert (cfg.frames, cfg.epochs, cfg.batch_size, cfg.lr, cfg.num_clips, cfg.num_crops) == (16, 30, 512, 22e-6, 4, 3)
    cfg = config(["--setting", "fewshot", "--dataset", "hmdb51"])
    assert (cfg.frames, cfg.batch_size, cfg.lr, cfg.mixup, cfg.cutmix, cfg.label_smoothing) == (32, 64, 2e-6, .8, 1, .1)
    cfg = config(["--setting", "base2novel", "--dataset", "hmdb51", "--train", "prompts"])
    assert (cfg.lr, cfg.n_ctx_text, cfg.depth_vision) == (4e-2, 16, 9)
    cfg = config(["--setting", "fewshot", "--dataset", "hmdb51", "--train", "prompts", "--lr", "1e-3"])
    assert (cfg.lr, cfg.n_ctx_vision, cfg.depth_text) == (1e-3, 10, 12)  # an explicit flag wins
    assert config([]).clip == miniworld.TINY_CLIP_NAME
    assert cfg.image_lr_scale == 1 and config([]).image_lr_scale == 0.1  # the paper: one rate; the world: two
    # the paper's multi-scale crop; the world: the crop alone, and none for few-shot and zero-shot (their classes are
    # where an object ends and how big it grows, which a crop moves and scales: train.WORLD)
    assert cfg.augment == "paper"
    assert [config(["--setting", s]).augment for s in ("fewshot", "base2novel", "zeroshot", "fully")] == \
        ["none", "crop", "none", "crop"]
    # prompt learning trains without the crop in every setting of the world (base-to-novel included); the paper's
    # datasets keep the paper's augmentation for prompts too
    assert config(["--setting", "base2novel", "--train", "prompts"]).augment == "none"
    assert config(["--setting", "base2novel", "--dataset", "hmdb51", "--train", "prompts"]).augment == "paper"


def user_error(capsys, *argv):
    """train.py's command line on argv: (exit status, what it wrote to stderr)."""
    code = train.cli([*map(str, argv)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["no_data_root", "missing_videos", "duplicate_label_id", "k_too_large",
                                  "corrupt_init_from", "empty_init_from", "other_architecture", "nothing_to_resume",
                                  "fp16_on_cpu", "bad_device"])
def test_every_user_error_is_one_line_without_traceback(case, world, random_tiny_clip, tmp_path, capsys):
    base = ["--reduced-world", "--data-root", world, "--clip", random_tiny_clip, "--workers", "0",
            "--out", tmp_path / "o", "--k", "2"]
    if case == "no_data_root":
        argv, expect = ["--dataset", "hmdb51", "--data-root", "/no/such/folder"], "--data-root /no/such/folder"
    elif case == "missing_videos":
        dataset = custom_dataset(world, tmp_path)
        with open(tmp_path / "val.txt", "a") as f:
            f.write("".join(f"gone/video{i}.mp4 0\n" for i in range(5)))
        argv, expect = [*base, *dataset], "5 of 20 videos in val.txt not found under"
    elif case == "duplicate_label_id":
        dataset = custom_dataset(world, tmp_path)
        labels = tmp_path / "labels.csv"
        names = open(dataset[dataset.index("--labels") + 1]).read().splitlines()
        labels.write_text("\n".join(names + [names[-1]]) + "\n")
        dataset[dataset.index("--labels") + 1] = str(labels)
        argv, expect = [*base, *dataset], "labels.csv:"
    elif case == "k_too_large":
        argv, expect = [*base, "--k", "4"], "fewer than K=4"
    elif case == "corrupt_init_from":
        (tmp_path / "random.pt").write_bytes(os.urandom(4096))
        argv, expect = [*base, "--init-from", tmp_path / "random.pt"], "random.pt"
    elif case == "empty_init_from":
        torch.save({}, tmp_path / "empty.pt")
        argv, expect = [*base, "--init-from", tmp_path / "empty.pt"], "empty.pt: holds none of this model's weights"
    elif case == "other_architecture":
        other = dict(tiny_clip.TINY_CONFIG, embed_dim=64)
        torch.save(clip_model.CLIP(**other).state_dict(), tmp_path / "other.pt")
        argv, expect = [*base, "--init-from", tmp_path / "other.pt"], "other.pt"
    elif case == "nothing_to_resume":
        argv, expect = [*base, "--resume"], "--resume"
    elif case == "fp16_on_cpu":
        argv, expect = [*base, "--precision", "fp16", "--device", "cpu"], "--precision fp16"
    else:
        argv, expect = [*base, "--device", "tpu7"], "--device tpu7"
    code, err = user_error(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("train.py: error: ") and expect in err, err
    assert not os.path.exists(tmp_path / "o" / "last.pt")


def test_help_describes_every_flag_with_its_defaults(capsys):
    with pytest.raises(SystemExit):
        config(["--help"])
    out = capsys.readouterr().out
    out = " ".join(out.split())
    for f in dataclasses.fields(train.Config):  # every flag, with its help text
        assert f"--{f.name.replace('_', '-')}" in out and " ".join(f.metadata["help"].split()[:4]) in out, f.name
    assert "frames sampled per video (T) (default: zeroshot 32; base2novel 32; fewshot 32; fully 16; world " \
           "zeroshot 8;" in out


@pytest.mark.parametrize("k", [1, 3, 32])
def test_any_positive_k_is_accepted(k):
    assert config(["--k", str(k)]).k == k


def test_k_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        config(["--k", "0"])
    assert "0 is not a positive integer" in capsys.readouterr().err
