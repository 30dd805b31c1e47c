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


# ---- 07_bridge_and_prompt
def test_07_bridge_and_prompt_claims_can_fail():
    few_shot = dict(vanilla=16.4, bridged=50.0, prompted=50.4, one_video=100 / 720, loss_first=2.15, loss_last=1.55,
                    prompt_bytes=63_000, bridge_bytes=19_979_000)  # the committed QUICK run's figures
    b2n = dict(vanilla=[16.1, 27.5, 20.3], bridged=[57.8, 70.6, 63.5], untrained=[33.9, 37.8, 35.7],
               prompted=[60.8, 67.8, 64.1], one_video=100 / 360, loss_first=2.09, loss_last=1.20)
    assert_claims_can_fail("07_bridge_and_prompt", {
        "claims_parameters": (dict(prompt_fraction_b16=0.0012, prompt_fraction_tiny=0.0019),
                              # image-FT's share of what full fine-tuning trains, in place of the prompts'
                              [dict(prompt_fraction_b16=86_192_640 / 124_323_841, prompt_fraction_tiny=0.0019)]),
        "claims_few_shot": (few_shot, [
            dict(few_shot, prompted=16.4),  # the prompted model at vanilla CLIP's accuracy
            dict(few_shot, bridged=16.4),  # a bridge that taught nothing
            dict(few_shot, prompted=48.0),  # prompts that cost the bridged model two points
            dict(few_shot, loss_last=2.15),  # a loss that did not fall
            dict(few_shot, prompt_bytes=19_979_000),  # a prompt checkpoint holding all of CLIP
        ]),
        "claims_base_to_novel": (b2n, [
            dict(b2n, prompted=[16.1, 27.5, 20.3]),  # vanilla CLIP's figures in place of the prompted model's
            dict(b2n, untrained=[57.8, 70.6, 63.5]),  # untrained prompts that leave the bridged model as it is
            dict(b2n, prompted=[33.9, 37.8, 35.7]),  # training that did not move the prompts from their start
            dict(b2n, prompted=[53.9, 67.8, 60.1]),  # base ending below the bridged model's (the defect)
            dict(b2n, loss_last=2.09),  # a loss that did not fall
        ]),
    })
