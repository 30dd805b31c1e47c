"""What a training run leaves in --out, written so that nothing is lost: atomic checkpoints, a log that stays true
across kills, the random states and the code version that make a resumed run exact, and the check that a resumed run
is the run that was interrupted. The faults a long run meets are said in one line (RunFileError): a file that cannot
be written (a full disk) with what is still safe, a checkpoint that cannot be read, a --out that another run holds.
train.py calls these; none of it is the paper's method.
"""
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pickle
import random
import re
import socket
import subprocess
import time
import zipfile

import numpy as np
import torch
import torch.distributed as dist

import vifi
from plumbing.atomic_files import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: its commit goes in metrics.json


class RunFileError(Exception):
    """A run file that cannot be written, or a --out that another run holds: train.py says it in one line, without a
    traceback, and exits with status 1."""


# The run's files are written atomically (atomic_files.py: a crash at any moment leaves either the old file or the new
# one, never half of one), each through the fixed temporary name <path>.tmp: at most one per file is left by a kill -9,
# and remove_stale_temporaries, which knows these names, removes it when the run resumes. A write that fails (a full
# disk) leaves the old file and no temporary, and is a RunFileError that says which file, why, and what is still safe.


def atomic_save(obj, path: str):
    """torch.save, atomically."""
    with _writing(path), atomic_write(path, "wb", tmp=path + ".tmp") as f:
        target = _KeepsWriteError(f)
        try:
            torch.save(obj, target)
        except RuntimeError:  # torch reports a failed write as "unexpected pos ..." of its zip writer
            if target.error is None:
                raise
            raise target.error from None


def atomic_write_text(path: str, text: str):
    with _writing(path), atomic_write(path, "w", tmp=path + ".tmp") as f:
        f.write(text)


class _KeepsWriteError:
    """The file torch.save writes to, keeping the OSError of a write that failed (No space left on device), which
    torch itself turns into a RuntimeError about positions in its zip file."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


@contextlib.contextmanager
def _writing(path: str):
    """An OSError while writing path becomes a RunFileError: the file, the cause as the OS says it, what is safe."""
    try:
        yield
    except OSError as e:
        out = os.path.dirname(path) or "."
        fix = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        raise RunFileError(f"cannot write {path}: {e.strerror or e}; {still_safe(out, fix)}") from e


def still_safe(out: str, fix: str) -> str:
    """What a run that stops now leaves in `out` to go on from, read from the checkpoint on disk, and what to do."""
    path = os.path.join(out, "last.pt")
    if not os.path.isfile(path):
        return f"no checkpoint was written yet: {fix} and start the run again"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state"]
    except Exception:  # noqa: BLE001 (whatever the reason, it cannot be resumed from)
        return f"{path} cannot be read either: {fix} and start the run again"
    return f"{path} still holds epoch {state['epoch']}, step {state['step']}: {fix} and rerun with --resume"


def on_main(rt, write, *args):
    """write(*args) on the main process only (the run's files), and every process learns whether it failed: a
    RunFileError there is raised on every process, so that none waits forever for a main process that stopped."""
    error = None
    if rt.is_main:
        try:
            write(*args)
        except RunFileError as e:
            error = str(e)
    if rt.distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise RunFileError(error)


# One run per --out: the main process holds an OS lock (flock) on <out>/.lock for as long as the run goes on. The lock
# belongs to the open file, so it dies with the process: a kill -9 leaves nothing to clean up. The lock file holds the
# process id, which the refusal names. Like torch.distributed's process group, the lock is the process's: taken by
# hold_folder, let go by release_folders when train.main ends (or by the process ending).
_held = {}  # real path of a folder this process holds -> its open lock file


def hold_folder(out: str, rt):
    """Take --out for this run before anything in it is touched, then remove the temporaries a killed run left (only
    the holder may). Another run holding it is a RunFileError, on every process, naming the process that holds it."""
    on_main(rt, _lock, out)


def _lock(out: str):
    if os.path.realpath(out) in _held:  # this process holds it already (runs one after another in one process)
        return
    try:
        os.makedirs(out, exist_ok=True)
        f = os.fdopen(os.open(os.path.join(out, ".lock"), os.O_RDWR | os.O_CREAT, 0o644), "r+")
    except OSError as e:
        raise RunFileError(f"--out {out}: cannot create the folder or its .lock: {e.strerror or e}") from e
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "whose id is not written yet"
        f.close()
        raise RunFileError(f"--out {out} is in use by another run: process {holder}{_command_of(holder)}; wait "
                           f"for it to end, or give another --out") from None
    except OSError as e:  # a filesystem without locks (ENOLCK, EOPNOTSUPP): run, and say what is not guarded
        print(f"note: --out {out} cannot be locked ({e.strerror}); a second run into it would not be stopped",
              flush=True)
    with contextlib.suppress(OSError):  # who holds it, for a second run's message (a full disk: held all the same)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
    _held[os.path.realpath(out)] = f
    remove_stale_temporaries(out)


def _command_of(holder: str) -> str:
    """' (its command line)' when the holder runs on this machine, else ''."""
    pid, _, host = holder.partition(" on ")
    try:
        if host != socket.gethostname():
            return ""
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            command = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())  # one line
        return f" ({command[:200]})" if command else ""
    except (OSError, ValueError):
        return ""


def release_folders():
    """Let go of the --out this process holds (train.main's end)."""
    for f in _held.values():
        f.close()
    _held.clear()


def remove_stale_temporaries(out: str):
    """The temporary files a killed run was writing (a run writes its own anew): <path>.tmp of the files above."""
    for name in os.listdir(out):
        if re.fullmatch(r"(last\.pt|best\.pt|log\.jsonl|config\.json|metrics\.json)\.tmp", name):
            os.remove(os.path.join(out, name))


@dataclasses.dataclass
class RunState:
    """Where a run is, in every checkpoint: what an exact resume continues from."""
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0
    best: float = -1.0  # the best headline figure evaluated so far (evaluation.headline), that of best.pt
    best_evaluation: dict = None  # its epoch, reports and summary
    history: list = dataclasses.field(default_factory=list)  # one log line per finished epoch
    # the current epoch's sums so far, over every process, so that a resumed epoch's log line covers all its steps
    loss_sum: float = 0.0
    micro_batches: int = 0
    unreadable: int = 0
    seconds: float = 0.0


class Bookkeeping:
    """The run's files in --out, kept so that nothing is lost: last.pt and best.pt (all an exact resume needs), the log
    (rewritten after the checkpoint that holds its lines, so a kill in between loses no line and repeats none). Every
    write goes through on_main: a full disk stops every process, in one line."""

    def __init__(self, cfg, rt, net, optimizer, scheduler, scaler):
        self.cfg, self.rt, self.net = cfg, rt, net
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.state = RunState()
        self.step_sums, self.step_start = [0.0, 0, 0], time.time()  # the optimizer step in progress, on this process

    def start(self, checkpoint: dict = None) -> RunState:
        """A new run's state, or the interrupted run's restored from its checkpoint (weights, optimizer, schedule,
        random generators); the log is rewritten from it."""
        if checkpoint is not None:
            self.state = RunState(**restore_checkpoint(checkpoint, self.net, self.optimizer, self.scheduler,
                                                       self.scaler, source=self.cfg.resume))
            if self.rt.is_main:
                print(f"resumed from {self.cfg.resume}: epoch {self.state.epoch}, step {self.state.step}", flush=True)
        on_main(self.rt, write_log, self.cfg.out, self.state.history)
        self.step_start = time.time()
        return self.state

    def save(self, name: str):
        on_main(self.rt, save_checkpoint, os.path.join(self.cfg.out, name), self.net, self.optimizer, self.scheduler,
                self.scaler, dataclasses.asdict(self.state), self.cfg)

    def count_micro_batch(self, loss: float, readable: torch.Tensor):
        """A micro-batch's loss and its unreadable videos (readable: [m] bools), into the current step's sums."""
        self.step_sums = [self.step_sums[0] + loss, self.step_sums[1] + 1, self.step_sums[2] + int((~readable).sum())]

    def count_step(self):
        """An optimizer step taken: its sums (every process's) join the epoch's; last.pt every --save-every steps."""
        sums, self.step_sums = self.step_sums, [0.0, 0, 0]  # loss, micro-batches, unreadable videos
        if self.rt.distributed:
            reduced = torch.tensor(sums, dtype=torch.float64, device=self.rt.device)
            dist.all_reduce(reduced)
            sums = reduced.tolist()
        s = self.state
        s.loss_sum, s.micro_batches = s.loss_sum + sums[0], s.micro_batches + sums[1]
        s.unreadable += sums[2]
        s.seconds += time.time() - self.step_start
        self.step_start = time.time()
        s.step, s.step_in_epoch = s.step + 1, s.step_in_epoch + 1
        if self.cfg.save_every and s.step % self.cfg.save_every == 0:
            self.save("last.pt")

    def finish_epoch(self, epoch: int, lr: float) -> dict:
        """The finished epoch's log line (its mean loss, lr, time, unreadable videos); the state moves to the next."""
        s = self.state
        record = dict(epoch=epoch + 1, step=s.step, loss=s.loss_sum / max(1, s.micro_batches), lr=lr,
                      seconds=round(s.seconds, 1), unreadable_videos=int(s.unreadable))
        s.epoch, s.step_in_epoch, s.loss_sum, s.micro_batches, s.unreadable, s.seconds = epoch + 1, 0, 0.0, 0, 0, 0.0
        self.step_sums = [0.0, 0, 0]  # a step the epoch's batches left unfinished is not counted (none: global_batches)
        return record

    def consider(self, evaluation: tuple, headline: float, epoch: int):
        """best.pt, when this evaluation's headline figure is the best so far."""
        if headline > self.state.best:
            self.state.best = headline
            self.state.best_evaluation = dict(epoch=epoch + 1, reports=evaluation[0], summary=evaluation[1])
            self.save("best.pt")

    def log(self, record: dict):
        """The epoch's line into the history, printed, into last.pt, then into log.jsonl."""
        self.state.history.append(record)
        if self.rt.is_main:
            print(json.dumps(record), flush=True)
        self.save("last.pt")
        on_main(self.rt, write_log, self.cfg.out, self.state.history)
        self.step_start = time.time()  # the next step's time leaves out the evaluation and the files


def save_checkpoint(path: str, net, optimizer, scheduler, scaler, state: dict, cfg):
    """last.pt / best.pt: all that an exact resume needs. The trainable weights (vifi.trainable_state_dict), the
    optimizer, schedule and loss scaler, the loop's state, every random generator and the run's configuration."""
    atomic_save(dict(model=vifi.trainable_state_dict(net), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), state=state, rng=rng_states(),
                     config=dataclasses.asdict(cfg)), path)


def restore_checkpoint(checkpoint: dict, net, optimizer, scheduler, scaler, source: str) -> dict:
    """save_checkpoint undone, in place; returns the loop's state."""
    vifi.load_trainable_state_dict(net, checkpoint["model"], source=source)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"])
    return checkpoint.pop("state")


def rng_states() -> dict:
    """Every random generator's state, in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    states = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict):
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def code_version() -> str:
    """The git commit the run's code came from ("-dirty" with uncommitted changes), for metrics.json."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# train.py's flags that cannot change what a resumed run computes, so they may differ from the interrupted run's
RESUME_MAY_CHANGE = {"workers", "device", "out", "resume", "save_every", "max_steps", "grad_checkpointing", "compile"}
# Flags added after runs were saved, with the value such a run ran with (a resume restores it)
ADDED_FLAGS = {"image_lr_scale": 1.0}


def prepare_resume(cfg, given: set, may_change: set = RESUME_MAY_CHANGE, added: dict = ADDED_FLAGS) -> tuple:
    """(the checkpoint to resume from, the interrupted run's configuration) for --resume. The run's flags come from
    its checkpoint; a flag given now (`given`) that would change what the run computes must equal the interrupted
    run's value, so we refuse rather than mix two runs in one. Flags in `may_change` take this command's values;
    flags in `added` (name -> value) that the checkpoint predates take the value its run ran with."""
    path = os.path.join(cfg.out, "last.pt") if cfg.resume == "last.pt" else cfg.resume
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {path} does not exist (nothing to resume; start the run without --resume)")
    checkpoint = read_run_checkpoint(path, "--resume")
    saved = {**(added or {}), **checkpoint["config"]}
    changed = [f"--{name.replace('_', '-')} {getattr(cfg, name)} (the run has {saved[name]})"
               for name in sorted(given - may_change) if name in saved and getattr(cfg, name) != saved[name]]
    if changed:
        raise ValueError(f"--resume {path}: these flags would change the run: {'; '.join(changed)}")
    for name in may_change:  # this command's, given or default (workers: chosen anew for this machine)
        saved[name] = getattr(cfg, name)
    saved.update(out=cfg.out if "out" in given or cfg.resume == "last.pt" else os.path.dirname(path) or ".",
                 resume=path)
    return checkpoint, type(cfg)(**saved)


def read_run_checkpoint(path: str, flag: str) -> dict:
    """A last.pt / best.pt of train.py, or a ValueError in one line that says what the file is not."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    damaged = ValueError(f"{flag}: {path} is truncated or corrupt (not a complete checkpoint); restore a whole copy, "
                         f"or start the run anew without --resume")
    if not zipfile.is_zipfile(path):  # the end of every file torch.save writes: a copy cut short has none
        raise damaged
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError) as e:  # whole, but objects that a checkpoint of ours never holds
        raise ValueError(f"{flag}: {path} is not a checkpoint of train.py ({str(e).splitlines()[0][:200]})") from None
    except Exception:  # noqa: BLE001 (zip members that do not inflate, a bad CRC: torch raises RuntimeError)
        raise damaged from None
    if not (isinstance(checkpoint, dict) and {"model", "config", "state"} <= checkpoint.keys()):
        raise ValueError(f"{flag}: {path} is not a checkpoint of train.py (it has no run configuration and state)")
    return checkpoint


def write_log(out: str, history: list):
    """log.jsonl: one line per finished epoch, rewritten whole from the checkpointed history (a few lines)."""
    atomic_write_text(os.path.join(out, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
