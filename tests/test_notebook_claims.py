"""Every claim a notebook's text makes can fail.

A notebook's check() calls sit in functions named claims_<what>(r), each a function of the numbers it judges (a dict
`r`), called by the notebook on its run's numbers. Here each such function is read from the committed notebook and
fed (1) numbers for which its sentences hold (those of a run), which must pass, and (2) numbers for which a sentence
is false (e.g. the vanilla model's in place of the trained one's), each of which must fail; together the false ones
must make every check() in the function fail at least once. So a check that cannot fail (`V == clips * crops` where V
is defined so, `> chance` where chance is 1.4%) has no counterexample and fails this test.

The functions see only `r`, `check`, `np` and `math`: no notebook global, so that what they judge is what they are given.

    python -m pytest -q tests/test_notebook_claims.py
"""
import ast
import glob
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = {os.path.basename(p)[:-len(".ipynb")]: p for p in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))}


class Failed(Exception):
    def __init__(self, line, sentence):
        super().__init__(f"line {line}: {sentence}")
        self.line = line


def _check(condition, sentence):
    if not condition:
        raise Failed(sys._getframe(1).f_lineno, sentence)


def claims_functions(notebook: str) -> dict:
    """{name: (function, {line of each check() call})} of the notebook's claims_* functions, and the lines of any
    check() outside them (which this test forbids)."""
    with open(NOTEBOOKS[notebook]) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    functions, stray = {}, []
    for n, cell in enumerate(cells):
        source = "".join(cell["source"])
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        tree = ast.parse(source)
        inside = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("claims"):
                lines = {c.lineno for c in ast.walk(node) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Name) and c.func.id == "check"}
                namespace = dict(check=_check, np=np, math=math)
                exec(compile(ast.Module(body=[node], type_ignores=[]), f"<{notebook} cell {n}>", "exec"), namespace)
                functions[node.name] = (namespace[node.name], lines)
                inside |= {id(c) for c in ast.walk(node)}
        stray += [f"code cell {n}, line {c.lineno}" for c in ast.walk(tree) if isinstance(c, ast.Call)
                  and isinstance(c.func, ast.Name) and c.func.id == "check" and id(c) not in inside]
    return functions, stray


def assert_claims_can_fail(notebook: str, examples: dict):
    """examples: {claims function: (numbers for which it holds, [numbers for which one of its sentences is false])}."""
    functions, stray = claims_functions(notebook)
    assert not stray, f"{notebook}: check() outside a claims_* function (untestable with other numbers): {stray}"
    assert functions, f"{notebook}: no claims_* function"
    assert set(functions) == set(examples), \
        f"{notebook}: claims functions {sorted(functions)}, counterexamples given for {sorted(examples)}"
    for name, (function, lines) in functions.items():
        holds, false_ones = examples[name]
        function(holds)  # raises Failed if a sentence is false on numbers where it should hold
        failed = set()
        for numbers in false_ones:
            with pytest.raises(Failed) as info:
                function(numbers)
            failed.add(info.value.line)
        assert failed == lines, (f"{notebook}.{name}: the check() calls on lines {sorted(lines - failed)} never fail "
                                 f"on the false numbers given")


# One test per notebook: the numbers for which its claims hold (a run's), and for which each claim is false.


# ---- 05_few_shot
def test_05_few_shot_claims_can_fail():
    loss = [3.328209559, 2.330125809, 2.133043726]  # the run's training loss per epoch (K = 2, 3 epochs)
    loop = dict(logits_gap=0.0, loss_gap=0.0, loss_loop=loss, loss_train=loss, top1_loop=34.17, top1_train=34.17,
                test_videos=720, same_recipe=True)
    k2 = dict(epochs=[3, 10], vifi=[34.17, 25.83], image=31.67, text=35.42)
    curve = dict(vifi=[34.17, 31.81, 37.08, 45.42], vanilla=16.39, first_loss=[3.33, 3.10, 2.77, 2.61],
                 last_loss=[2.13, 2.08, 1.71, 1.53])
    fused = {"embedding-level": 34.17, "decision-level": 33.89, "image-level": 35.69}
    assert_claims_can_fail("05_few_shot", {
        "claims_splits": (dict(k=[2, 4, 8, 16], fewest=[2, 4, 8, 16], most=[2, 4, 8, 16]),
                          [dict(k=[2, 4, 8, 16], fewest=[2, 4, 8, 12], most=[2, 4, 8, 16])]),  # a class short of K
        "claims_loop": (loop, [
            dict(loop, logits_gap=0.31),  # decision-level fusion's logits in place of the temporal mean's
            dict(loop, loss_gap=0.05),  # the loss with label smoothing 0.1
            dict(loop, loss_loop=[2.60, 1.98, 1.65]),  # the loop: another K-shot draw, seed and no schedule
            dict(loop, top1_loop=43.6, top1_train=39.6),  # the top-1s, the loop's and train.py's
            dict(loop, top1_loop=34.17 + 100 / 720),  # one test video apart
        ]),
        "claims_k2": (k2, [
            dict(k2, text=26.11),  # image-FT's 3-epoch figure in place of text-FT's: 8 points behind
            dict(k2, epochs=[10], vifi=[31.67], image=25.83, text=31.0),  # the paper's order at the full protocol
            dict(k2, vifi=[34.17, 33.5], image=36.0),  # ViFi-CLIP holding its level when trained longer
        ]),
        "claims_curve": (curve, [
            dict(curve, vifi=[16.39, 31.81, 37.08, 45.42]),  # K = 2 at vanilla CLIP's level
            dict(curve, vifi=[34.17, 31.81, 37.08, 36.0]),  # K = 16 level with K = 2
            dict(curve, last_loss=[3.40, 2.08, 1.71, 1.53]),  # K = 2's loss not falling
        ]),
        "claims_fusion_frames": (dict(one_frame=6e-8, frames=0.11, T=8), [
            dict(one_frame=0.11, frames=0.11, T=8),  # a single frame scored differently
            dict(one_frame=6e-8, frames=0.0, T=8),  # --fusion ignored
        ]),
        "claims_fusion_runs": (dict(quick=True, top1=fused), [
            dict(quick=True, top1={"embedding-level": 47.4, "decision-level": 46.3, "image-level": 40.8}),
            dict(quick=False, top1={"embedding-level": 40.8, "decision-level": 46.3, "image-level": 47.4}),
        ]),
    })
