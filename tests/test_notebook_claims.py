"""Every claim a notebook's text makes can fail.

A notebook's check() calls sit in functions named claims_<what>(r), each a function of the numbers it judges (a dict
`r`), called by the notebook on its run's numbers. Here each such function is read from the committed notebook and
fed (1) numbers for which its sentences hold (those of a run), which must pass, and (2) numbers for which a sentence
is false (e.g. the vanilla model's in place of the trained one's), each of which must fail; together the false ones
must make every check() in the function fail at least once. So a check that cannot fail (`V == clips * crops` where V
is defined so, `> chance` where chance is 1.4%) has no counterexample and fails this test.

The functions see only `r`, `check`, `np` and `math`: no notebook global, so that what they judge is what they are
given.

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
NOTEBOOKS = {os.path.basename(p)[:-len(".ipynb")]: p
             for p in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))}


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


def test_every_notebook_has_its_claims_tested():
    """A notebook without a test below would have checks no false number ever reached."""
    tested = {name[len("test_"):-len("_claims_can_fail")] for name in globals()
              if name.startswith("test_") and name.endswith("_claims_can_fail")}
    assert set(NOTEBOOKS) == tested, f"notebooks without a claims test here: {sorted(set(NOTEBOOKS) - tested)}"


# One test per notebook: the numbers for which its claims hold (a run's), and for which each claim is false.


# ---- 01_clip_from_scratch, 02_images_to_videos, 03_zero_shot, 04_base_to_novel, 06_fully_supervised

def test_01_clip_from_scratch_claims_can_fail():
    run = dict(text_by_hand_vs_module=9.8e-7, image_by_hand_vs_module=0.0, ranked_first=6, stills=6,
               p_match_raw=0.252, p_match_learned=0.936, openai_installed=True, same_ids=7, texts=7,
               openai_image=1.43e-6, openai_text=1.07e-6)
    assert_claims_can_fail("01_clip_from_scratch", {
        "claims_clip": (run, [
            dict(run, text_by_hand_vs_module=0.31),  # e.g. the text read at the last position, not the end token
            dict(run, ranked_first=3),  # half of the stills, not most
            dict(run, p_match_learned=0.252),  # a logit scale of 1: the softmax of raw cosines
            dict(run, same_ids=6),  # one text tokenized differently
            dict(run, openai_image=0.02),  # e.g. OpenAI's fp16-rounded weights
        ]),
    })


def test_02_images_to_videos_claims_can_fail():
    run = dict(eq1_by_hand_vs_forward=0.0, backwards_vs_forward=4.8e-7, shuffled_vs_forward=4.8e-7,
               shrinking_is_growing_reversed=True, grow_vs_shrink_embedding=0.0, grow_vs_shrink_decision=0.0)
    assert_claims_can_fail("02_images_to_videos", {
        "claims_order": (run, [
            dict(run, eq1_by_hand_vs_forward=0.4),  # e.g. pooling after normalising each frame
            dict(run, shuffled_vs_forward=1.3),  # a model that sees frame order
            dict(run, shrinking_is_growing_reversed=False),
            dict(run, grow_vs_shrink_decision=0.2),
        ]),
    })


def test_03_zero_shot_claims_can_fail():
    run = dict(shared_class_names=0, vanilla={"toy-hmdb": 16.4, "toy-ucf": 35.0},
               vifi_clip={"toy-hmdb": 50.0, "toy-ucf": 59.7}, world=True, ablations_from_benchmarks=True,
               ablation={"CLIP image-FT": {"toy-hmdb": [9.4, 1.9], "toy-ucf": [7.1, 1.6]},
                         "CLIP text-FT": {"toy-hmdb": [0.5, 1.9], "toy-ucf": [-0.2, 2.1]}})
    assert_claims_can_fail("03_zero_shot", {
        "claims_zero_shot": (run, [
            dict(run, shared_class_names=3),
            dict(run, vifi_clip=run["vanilla"]),  # the bridged model scoring as vanilla CLIP
            dict(run, vifi_clip={"toy-hmdb": 50.0, "toy-ucf": 42.0}),  # a gain of 7 points on toy-ucf only
            dict(run, vanilla={"toy-hmdb": 16.4, "toy-ucf": 20.0}),  # toy-ucf not 10 points above toy-hmdb
            dict(run, ablation=dict(run["ablation"], **{  # image-FT level with ViFi-CLIP
                "CLIP image-FT": {"toy-hmdb": [0.5, 1.9], "toy-ucf": [-0.2, 2.1]}})),
            dict(run, ablation=dict(run["ablation"], **{  # the paper's order: ViFi-CLIP 2.8 and 7.0 points ahead
                "CLIP text-FT": {"toy-hmdb": [2.8, 0.6], "toy-ucf": [7.0, 1.1]}})),
        ]),
    })


def test_04_base_to_novel_claims_can_fail():
    run = dict(shared_classes=0, base_before=16.1, novel_before=27.5, hm_before=20.3, base_after=49.4, novel_after=35.0,
               hm_after=41.0, novel_curve=[[1, 51.4], [3, 37.8], [5, 35.0]],
               base_curve=[[1, 40.8], [3, 47.8], [5, 49.4]])
    assert_claims_can_fail("04_base_to_novel", {
        "claims_base_to_novel": (run, [
            dict(run, shared_classes=1),
            dict(run, base_after=16.1, novel_after=27.5, hm_after=20.3),  # vanilla CLIP's figures after training
            dict(run, hm_after=25.0),  # HM up by less than 10 points
            dict(run, novel_after=26.1),  # novel below vanilla CLIP's (the world without the crop, seed 1)
            dict(run, novel_curve=[[1, 30.1], [3, 33.2], [5, 35.0]]),  # novel rising with base: the paper's picture
            dict(run, novel_curve=[[1, 37.0], [3, 36.1], [5, 35.0]]),  # a peak at epoch 1, but a fall of 2 points
            dict(run, base_curve=[[1, 49.4], [3, 47.8], [5, 46.0]]),  # base falling too
        ]),
    })


def test_06_fully_supervised_claims_can_fail():
    benchmarks = {"vanilla CLIP": {"views": [4.4, 0.0], "1 view": [9.1, 0.0]},
                  "CLIP image-FT": {"views": [13.3, 0.6], "1 view": [18.5, 0.6]},
                  "CLIP text-FT": {"views": [23.2, 0.6], "1 view": [26.0, 1.0]},
                  "ViFi-CLIP": {"views": [23.8, 1.4], "1 view": [27.3, 0.7]}}
    run = dict(world=True, crops_identical=True, this_run={"1 view": 23.3, "views": 17.6},
               vanilla={"1 view": 9.1, "views": 4.4}, benchmarks=benchmarks, view_spread=0.003, mean_p_true=0.045)
    assert_claims_can_fail("06_fully_supervised", {
        "claims_fully": (run, [
            dict(run, crops_identical=False),  # wide videos: three different crops
            dict(run, this_run={"1 view": 9.1, "views": 4.4}),  # vanilla CLIP's figures after training
            dict(run, this_run={"1 view": 23.3, "views": 23.3}),  # the views changing nothing
            dict(run, benchmarks=dict(benchmarks, **{"ViFi-CLIP": {"views": [28.5, 1.4], "1 view": [27.3, 0.7]}})),
            dict(run, view_spread=0.02),  # views that disagree (wide, long videos)
            dict(run, benchmarks=dict(benchmarks, **{"ViFi-CLIP": {"views": [26.0, 0.7], "1 view": [27.3, 0.7]}})),
            dict(run, benchmarks=dict(benchmarks, **{  # the paper's order: image-FT close to ViFi-CLIP, above text-FT
                "CLIP image-FT": {"views": [22.5, 0.6], "1 view": [26.0, 0.6]}})),
        ]),
    })


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
