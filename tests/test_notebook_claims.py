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


# ---- 08_what_vifi_clip_looks_at, 09_your_own_video
def test_08_what_vifi_clip_looks_at_claims_can_fail():
    attention = dict(tv_models=0.06, tv_neighbours=0.21, tv_videos=0.60, moving_area=0.23,
                     moving_share={"vanilla CLIP": 0.671, "ViFi-CLIP": 0.686})
    world = {"vanilla CLIP": [0.311, 0.313, 0.312], "ViFi-CLIP": [0.325, 0.331, 0.328]}
    assert_claims_can_fail("08_what_vifi_clip_looks_at", {
        "claims_attention": (attention, [
            dict(attention, tv_models=0.15),  # the maps moved by most of a neighbouring frame's distance
            dict(attention, moving_share={"vanilla CLIP": 0.30, "ViFi-CLIP": 0.31}),  # about the patches' own share
            dict(attention, moving_share={"vanilla CLIP": 0.671, "ViFi-CLIP": 0.75}),  # the paper's shift to motion
        ]),
        "claims_zero_shot": (dict(top1={"vanilla CLIP": 16.4, "ViFi-CLIP": 50.0}),
                             [dict(top1={"vanilla CLIP": 16.4, "ViFi-CLIP": 19.0})]),  # within 5 points
        "claims_clusters": (dict(world=world), [
            dict(world={"vanilla CLIP": [0.31, 0.31, 0.31], "ViFi-CLIP": [0.41, 0.41, 0.41]}),  # the paper's +0.10
            dict(world={"vanilla CLIP": [0.84, 0.86, 0.85], "ViFi-CLIP": [0.84, 0.86, 0.85]}),  # the paper's level
        ]),
        "claims_colour": (dict(v_colour={"vanilla CLIP": 0.70, "ViFi-CLIP": 0.67},
                               v_class={"vanilla CLIP": 0.31, "ViFi-CLIP": 0.33}), [
            dict(v_colour={"vanilla CLIP": 0.35, "ViFi-CLIP": 0.67},
                 v_class={"vanilla CLIP": 0.31, "ViFi-CLIP": 0.33}),  # vanilla CLIP about as much by class
            dict(v_colour={"vanilla CLIP": 0.70, "ViFi-CLIP": 0.40},
                 v_class={"vanilla CLIP": 0.31, "ViFi-CLIP": 0.33}),  # fine-tuning erased the colour islands
        ]),
    })


def test_09_your_own_video_claims_can_fail():
    phrase = dict(k400_names_in_phrase=0, k400_names_with_motion_word=3, motion_word_tokens_trained=0,
                  other_words_untrained=0)
    assert_claims_can_fail("09_your_own_video", {
        # vanilla CLIP's first choice (an index into CLASS_NAMES) for the spinning and the still triangle
        "claims_control": (dict(vanilla_first_spinning=0, vanilla_first_still=0),
                           [dict(vanilla_first_spinning=0, vanilla_first_still=3)]),  # it told them apart
        "claims_questions": (dict(colour_right={"vanilla CLIP": True, "ViFi-CLIP": True}),
                             [dict(colour_right={"vanilla CLIP": True, "ViFi-CLIP": False})]),
        "claims_new_phrase": (phrase, [
            dict(phrase, k400_names_in_phrase=1),         # "pink star spinning": toy-k400's "star spinning"
            dict(phrase, k400_names_with_motion_word=0),  # a motion toy-k400 never names ("pink star rolling")
            dict(phrase, motion_word_tokens_trained=1),   # a caption word in the motion word's place ("faint")
            dict(phrase, other_words_untrained=1),        # a colour no caption has ("magenta triangle spinning")
        ]),
    })
