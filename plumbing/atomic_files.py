"""Writing a file whole or not at all: `with atomic_write(path) as f: ...`.

A file that another process may read while it is written (the video index cache of several torchrun ranks, the
unpacked tiny CLIP), or that must survive a crash (a run's checkpoints and log, prompt checkpoints, downloaded weights),
is written to a temporary file beside it, flushed to disk (fsync), and only then renamed over it: os.replace is atomic
within a folder, so a reader or a crash at any moment finds the old file or the new one, never half of one. An
exception inside the block (a failed check, Ctrl-C) removes the temporary file and leaves the old one as it was; only
a kill -9 or a power cut can leave a temporary file behind. Its name is `<path>.<pid>.tmp` by default, so that
processes writing the same file at once never share one; run_files.py names its own `<path>.tmp`, which a resumed run
recognises and removes. None of this is the paper's method.
"""
import contextlib
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", tmp: str = None, encoding: str = None):
    """A file object open for writing (mode "wb" or "w") at a temporary name beside path (tmp, default
    `<path>.<pid>.tmp`); when the block ends, its content is flushed to disk and renamed over path. If the block
    raises, the temporary file is removed, path is left untouched, and the exception goes on."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode {mode!r}, expected 'wb' or 'w'")
    tmp = f"{path}.{os.getpid()}.tmp" if tmp is None else tmp
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that got us here
            os.remove(tmp)
        raise
