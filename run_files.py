"""What a training run leaves in --out, written so that nothing is lost: atomic checkpoints, a log that stays true
across kills, the random states and the code version that make a resumed run exact, and the check that a resumed run
is the run that was interrupted. train.py calls these; none of it is the paper's method.
"""
import dataclasses
import json
import os
import random
import re
import subprocess

import numpy as np
import torch

from atomic_files import atomic_write
import vifi

HERE = os.path.dirname(os.path.abspath(__file__))


# The run's files are written atomically (atomic_files.py: a crash at any moment leaves either the old file or the new
# one, never half of one), each through the fixed temporary name <path>.tmp: at most one per file is left by a kill -9,
# and remove_stale_temporaries, which knows these names, removes it when the run resumes.


def atomic_save(obj, path: str):
    """torch.save, atomically."""
    with atomic_write(path, "wb", tmp=path + ".tmp") as f:
        torch.save(obj, f)


def atomic_write_text(path: str, text: str):
    with atomic_write(path, "w", tmp=path + ".tmp") as f:
        f.write(text)


def remove_stale_temporaries(out: str):
    """The temporary files a killed run was writing (a run writes its own anew): <path>.tmp of the files above."""
    for name in os.listdir(out):
        if re.fullmatch(r"(last|best)\.pt\.tmp\d*|(log\.jsonl|config\.json|metrics\.json)\.tmp", name):
            os.remove(os.path.join(out, name))


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
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_resume(cfg, given: set, may_change: set, added: dict = None) -> tuple:
    """(the checkpoint to resume from, the interrupted run's configuration) for --resume. The run's flags come from
    its checkpoint; a flag given now (`given`) that would change what the run computes must equal the interrupted
    run's value, so we refuse rather than mix two runs in one. Flags in `may_change` take this command's values;
    flags in `added` (name -> value) that the checkpoint predates take the value its run ran with."""
    path = os.path.join(cfg.out, "last.pt") if cfg.resume == "last.pt" else cfg.resume
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {path} does not exist (nothing to resume; start the run without --resume)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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


def write_log(out: str, history: list):
    """log.jsonl: one line per finished epoch, rewritten whole from the checkpointed history (a few lines)."""
    atomic_write_text(os.path.join(out, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
