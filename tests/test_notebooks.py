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
    from plumbing import clip_weights
    from world import miniworld
    miniworld.ensure_world()
    clip_weights.load(miniworld.TINY_CLIP_NAME)


def test_there_are_notebooks_and_they_are_small():
    assert len(NOTEBOOKS) >= 9, f"expected the 9 notebooks in notebooks/, found {NOTEBOOKS}"
    for path in NOTEBOOKS:  # committed with their outputs (plots as PNG): keep the repository light
        assert os.path.getsize(path) < 1_500_000, f"{path}: {os.path.getsize(path) / 1e6:.1f} MB"


def test_notebooks_name_what_they_reproduce_and_check_their_claims():
    """The top cell names the paper's figures and tables the notebook reproduces (or says it reproduces none), and
    the claims the text makes are check()ed against the outputs (notebook_helpers.check raises when one fails)."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        top = nb.cells[0].source
        assert "Reproduces" in top, f"{os.path.basename(path)}: the first cell should say what of the paper it reproduces"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "import notebook_helpers" in code, f"{os.path.basename(path)}: setup through notebooks/notebook_helpers.py"
        assert "check(" in code, f"{os.path.basename(path)}: no claim of its text is checked"


def test_check_prints_a_claim_that_holds_and_raises_on_one_that_does_not(capsys):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    import notebook_helpers
    notebook_helpers.check(2 > 1, "two beats one")
    assert "two beats one" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="one beats two"):
        notebook_helpers.check(1 > 2, "one beats two")
    assert notebook_helpers.change(16.25, 24.58) == "rises from 16.2% to 24.6%"
    assert notebook_helpers.change(39.5, 39.17) == "falls from 39.5% to 39.2%"


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
