"""Every notebook in notebooks/ runs top to bottom without an error (nbclient), on the embedded default.

Each notebook is read from its committed file and executed in memory, with notebooks/ as its working directory; the
executed copy goes to pytest's temporary folder (for a look after a failure), never over the committed file. The
notebooks write their training runs under runs/notebooks/ (git-ignored). The embedded world and the tiny CLIP are
prepared once, up front, so that no notebook pays for generating them.

    python -m pytest -q tests/test_notebooks.py              # all of them (a few minutes each, on 2 cores)
    python -m pytest -q tests/test_notebooks.py -k few_shot  # one
"""
import glob
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
CELL_TIMEOUT = 600  # seconds for any one cell; a whole notebook should take 1-3 minutes on 2 idle cores


@pytest.fixture(scope="session")
def embedded_world():
    """Generate the world's videos (first time: up to ~2 minutes) and unpack the tiny CLIP, once per session."""
    import clip_model
    import clip_weights
    import miniworld
    miniworld.ensure_world()
    clip_weights.load(clip_weights.TINY_MODEL_NAME)


def test_there_are_notebooks_and_they_are_small():
    assert len(NOTEBOOKS) >= 9, f"expected the 9 notebooks in notebooks/, found {NOTEBOOKS}"
    for path in NOTEBOOKS:  # committed with their outputs (plots as PNG): keep the repository light
        assert os.path.getsize(path) < 1_500_000, f"{path}: {os.path.getsize(path) / 1e6:.1f} MB"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p)[:-len(".ipynb")] for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, embedded_world, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    start = time.time()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    finally:
        nbformat.write(nb, str(tmp_path / os.path.basename(path)))
        print(f"{os.path.basename(path)}: {time.time() - start:.0f} s (executed copy in {tmp_path})")
