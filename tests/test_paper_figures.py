"""paper_figures.py: the paper's figures file checked against the paper's own text, which run is which row, and the
figure beside a run's in its output and metrics.json.

The paper (../shared/paper/vifi-clip-paper.md, beside the repository) is read as markdown: its tables are the blocks
of "|" lines, numbered by their captions ("Table N."), in order. A column's label is its header cell (a dataset
spanning several columns is carried right) and the cell of the sub-header row below it (Base / Novel / HM, $K=2$ ...;
where that row is written shorter than the table, as Table 2's, its pattern repeats).
"""
import csv
import dataclasses
import json
import os
import re

import pytest
import torch

import train
import vifi
from plumbing import clip_weights, evaluation, paper_figures, protocols
from world import miniworld
from test_vifi import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(os.path.dirname(ROOT), "shared", "paper", "vifi-clip-paper.md")  # beside the repository
needs_paper = pytest.mark.skipif(not os.path.isfile(PAPER), reason="the paper's text is not beside the repository")

# What the figures file says, and how the paper writes it
PAPER_NAMES = {"k400": "K-400", "hmdb51": "HMDB-51", "ucf101": "UCF-101", "ssv2": "SSv2", "k600": "K600"}
SETTING_OF_TABLE = {1: "zeroshot", 2: "base2novel", 3: "fewshot", 4: "fully", 7: "fewshot", 8: "base2novel"}
ROWS = {"Vanilla CLIP": "none", "CLIP image-FT": "image", "CLIP text-FT": "text", "ViFi-CLIP": "both",
        "VL Prompting": "prompts", "VL prompting": "prompts"}
ROWS_OF_TABLE = {1: ["Vanilla CLIP", "CLIP image-FT", "CLIP text-FT", "ViFi-CLIP"], 2: ["Vanilla CLIP", "CLIP image-FT",
                 "CLIP text-FT", "ViFi-CLIP"], 3: ["Vanilla CLIP", "CLIP image-FT", "CLIP text-FT", "ViFi-CLIP"],
                 4: ["CLIP image-FT", "CLIP text-FT", "ViFi-CLIP"], 7: ["VL Prompting"], 8: ["VL prompting"]}
NOT_ACCURACY = {"Frames", "Views", "GFLOPs", "TP"}  # Table 4's other columns


def cell_number(cell: str):
    match = re.search(r"[-+]?\d+(?:\.\d+)?", re.sub(r"<[^>]+>", "", cell))
    return None if match is None else float(match.group())


def paper_tables(text: str) -> dict:
    """{table number: (column labels, [(row label of each column, cells)])}, from the markdown."""
    blocks, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|[\s|:-]+\|", line.strip()):  # not the |---| separator
                block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            blocks.append(block)
            block = []
    numbers = list(dict.fromkeys(int(n) for n in re.findall(r"^Table (\d+)\. ", text, flags=re.M)))
    assert len(numbers) == len(blocks), f"{len(blocks)} tables for captions {numbers}"
    tables = {}
    for number, rows in zip(numbers, blocks):
        header, width = rows[0], len(rows[0])
        groups, current = [], ""
        for cell in header:
            current = cell or current
            groups.append(current)
        body = rows[1:]
        sub = [""] * width
        if body and not body[0][0]:  # a sub-header row: Base / Novel / HM, K = 2 / 4 / 8 / 16
            pattern = [c for c in body[0][1:] if c]
            sub = [""] + [pattern[i % len(pattern)] for i in range(width - 1)]
            body = body[1:]
        labels = [re.sub(r"\$\s*K\s*=\s*(\d+)\s*\$", r"K=\1", " ".join(p for p in (g, s) if p)) for g, s in
                  zip(groups, sub)]
        label_columns = [i for i, g in enumerate(groups) if g in ("Method", "Model")]
        owner = [max(j for j in label_columns if j <= i) for i in range(width)]  # the label column of each column
        data_rows = []
        for cells in body:
            cells = cells + [""] * (width - len(cells))
            row_labels = [re.sub(r"\s*\[\d+\]$", "", cells[owner[i]]) for i in range(width)]
            data_rows.append((row_labels, cells))
        tables[number] = (labels, data_rows)
    return tables


@pytest.fixture(scope="module")
def tables():
    with open(PAPER, encoding="utf-8") as f:
        return paper_tables(f.read())


def paper_cell(tables, table: int, row: str, column: str):
    labels, rows = tables[table]
    assert column in labels, f"Table {table} has no column {column!r}: {labels}"
    i = labels.index(column)
    found = [cells[i] for row_labels, cells in rows if row_labels[i] == row]
    assert len(found) == 1, f"Table {table}: {len(found)} rows {row!r} for column {column!r}"
    return cell_number(found[0])


def expected_column(r: dict) -> str:
    """The paper's column for a line of the figures file, from its run fields alone."""
    table = r["table"]
    if table == 1:
        return {"hmdb51": "HMDB-51", "ucf101": "UCF-101"}.get(r["target"]) or \
            f"K600 (Top-{r['metric'].split('_')[1][3:]})"
    if table in (2, 8):
        return f"{PAPER_NAMES[r['dataset']]} {dict(base='Base', novel='Novel', hm='HM')[r['metric']]}"
    if table in (3, 7):
        return f"{PAPER_NAMES[r['dataset']]} K={r['k']}"
    return dict(top1="Top-1", top5="Top-5")[r["metric"]]


# ---------------------------------------------------------------------------------------------------------------------
# The figures file against the paper


@needs_paper
def test_the_parser_reads_the_papers_tables(tables):
    """Known cells by hand, so that the checks below read what they claim to (and could fail)."""
    assert set(tables) == set(range(1, 12))
    assert paper_cell(tables, 1, "ViFi-CLIP", "K600 (Top-5)") == 92.2
    assert paper_cell(tables, 1, "Vanilla CLIP", "HMDB-51") == 40.8
    assert paper_cell(tables, 2, "CLIP text-FT", "SSv2 HM") == 10.8
    assert paper_cell(tables, 3, "ViFi-CLIP", "UCF-101 K=2") == 80.7
    assert paper_cell(tables, 4, "CLIP image-FT", "Top-5") == 96.2
    assert paper_cell(tables, 7, "VL Prompting", "SSv2 K=16") == 13.5
    assert paper_cell(tables, 8, "VL prompting", "HMDB-51 Novel") == 54.9
    assert paper_cell(tables, 5, "Embedding fusion", "SSv2") == 12.4


@needs_paper
def test_every_figure_is_the_papers_at_its_table_row_and_column(tables):
    rows = paper_figures.read_figures()
    assert len(rows) == 139
    for r in rows:
        where = f"Table {r['table']}, {r['row']}, {r['column']}"
        assert paper_cell(tables, r["table"], r["row"], r["column"]) == r["figure"], where


@needs_paper
def test_no_figure_of_the_rows_is_missing(tables):
    """Every accuracy the paper gives in the rows the file covers (ViT-B/16: ViFi-CLIP, CLIP image-FT / text-FT and
    vanilla CLIP in Tables 1-4, bridge and prompt in Tables 7-8) is in the file."""
    have = {(r["table"], r["row"], r["column"]) for r in paper_figures.read_figures()}
    for table, names in ROWS_OF_TABLE.items():
        labels, rows = tables[table]
        for row_labels, cells in rows:
            for i, cell in enumerate(cells):
                if row_labels[i] in names and labels[i].split()[0] not in NOT_ACCURACY | {"Method", "Model"} \
                        and cell_number(cell) is not None:
                    assert (table, row_labels[i], labels[i]) in have, f"Table {table}: {row_labels[i]}, {labels[i]}"


def test_each_lines_run_fields_say_its_table_row_and_column():
    """What identifies the run must be the row and column the figure is taken from: the setting of its table, the
    train mode of its row, the dataset / K / metric of its column, the paper's frames and views (Sec. 4)."""
    seen = set()
    for r in paper_figures.read_figures():
        where = f"Table {r['table']}, {r['row']}, {r['column']}"
        assert r["setting"] == SETTING_OF_TABLE[r["table"]], where
        assert r["train"] == ROWS[r["row"]], where
        assert r["column"] == expected_column(r), where
        assert (r["frames"], r["views"]) == (("16", "4x3") if r["setting"] == "fully" else ("32", "1x1")), where
        assert r["split"] == ("1" if r["setting"] == "fewshot" else ""), where  # few-shot: the first split only
        assert r["k"] == {"fewshot": r["k"], "base2novel": "16"}.get(r["setting"], ""), where
        assert (r["target"] != "") == (r["setting"] == "zeroshot"), where
        assert r["dataset"] in paper_figures.PAPER_DATASETS, where
        key = tuple(r[f] for f in ("setting", "dataset", "target", "k", "split", "train", "frames", "views", "metric"))
        assert key not in seen, f"{where}: a second figure for the same run and metric"
        seen.add(key)


# ---------------------------------------------------------------------------------------------------------------------
# Which run is which row


def config(*flags):
    return train.parse_command_line(["--clip", "ViT-B/16", *flags])[0]


@pytest.mark.parametrize("flags, table, row, figures", [
    (["--setting", "fewshot", "--k", "16", "--dataset", "hmdb51"], 3, "ViFi-CLIP", {"HMDB-51 K=16": 66.8}),
    (["--setting", "fewshot", "--k", "2", "--dataset", "ssv2", "--train", "image"], 3, "CLIP image-FT",
     {"SSv2 K=2": 4.9}),
    (["--setting", "fewshot", "--k", "8", "--dataset", "ucf101", "--train", "none"], 3, "Vanilla CLIP",
     {"UCF-101 K=8": 63.6}),
    (["--setting", "base2novel", "--dataset", "k400", "--train", "text", "--split", "3"], 2, "CLIP text-FT",
     {"K-400 Base": 73.4, "K-400 Novel": 59.7, "K-400 HM": 65.8}),
    (["--setting", "zeroshot", "--dataset", "k400"], 1, "ViFi-CLIP",
     {"HMDB-51": 51.3, "UCF-101": 76.8, "K600 (Top-1)": 71.2, "K600 (Top-5)": 92.2}),
    (["--setting", "zeroshot", "--dataset", "k400", "--targets", "ucf101", "--train", "none"], 1, "Vanilla CLIP",
     {"UCF-101": 63.2}),
    (["--setting", "fully", "--dataset", "k400"], 4, "ViFi-CLIP", {"Top-1": 83.9, "Top-5": 96.3}),
    (["--setting", "fewshot", "--k", "4", "--dataset", "hmdb51", "--train", "prompts", "--init-from", "k400.pth"],
     7, "VL Prompting", {"HMDB-51 K=4": 65.1}),
    (["--setting", "base2novel", "--dataset", "ssv2", "--train", "prompts", "--init-from", "k400.pth"], 8,
     "VL prompting", {"SSv2 Base": 15.8, "SSv2 Novel": 11.5, "SSv2 HM": 13.3}),
])
def test_a_paper_run_finds_its_row(flags, table, row, figures):
    found, why = paper_figures.lookup(config(*flags))
    assert why == "" and {(r["table"], r["row"]) for r in found} == {(table, row)}
    assert {r["column"]: r["figure"] for r in found} == figures


@pytest.mark.parametrize("flags, why", [
    (["--setting", "fewshot", "--k", "16"], "the embedded world is not in the paper"),
    (["--setting", "fewshot", "--dataset", "custom"], "dataset custom: not one the paper trains on"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--k", "3"], "--k 3: the paper's rows have 2 or 4 or 8 or 16"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--split", "2"], "--split 2: the paper's rows have 1"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--frames", "8"], "--frames 8: the paper's rows have 32"),
    (["--setting", "fully", "--dataset", "k400", "--num-clips", "1"], "--num-clips x --num-crops 1x3: the paper's"),
    (["--setting", "fully", "--dataset", "k400", "--train", "none"], "the paper has no --train none row for fully"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--fusion", "decision"], "--fusion decision: the paper's rows"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--init-from", "k400.pth"], "--init-from: the paper's"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--train", "prompts"], "prompts learned without --init-from"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--train", "prompts", "--init-from", "k400.pth",
      "--depth-text", "4"], "prompt sizes"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--template", "a video of a {}."], "the class prompt"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--train", "none", "--template", "a photo of a {}."],
     "vanilla CLIP with the class prompt"),
    (["--setting", "fewshot", "--dataset", "hmdb51", "--eval-only"], "vanilla CLIP with the class prompt"),
    (["--setting", "zeroshot", "--dataset", "k400", "--targets", "ssv2"], "--targets ssv2"),
])
def test_a_run_the_paper_has_no_figure_for_says_why(flags, why):
    found, reason = paper_figures.lookup(config(*flags))
    assert found == [] and reason.startswith(why), reason


def test_the_backbone_is_openais_vit_b16_by_name_or_by_file(tmp_path, monkeypatch):
    flags = ["--setting", "fewshot", "--dataset", "hmdb51"]
    found, why = paper_figures.lookup(train.parse_command_line(["--clip", "ViT-B/32", *flags])[0])
    assert found == [] and why == "--clip ViT-B/32: the paper's figures are OpenAI's ViT-B/16's"
    weights = tmp_path / "ViT-B-16.pt"  # a file named like it is not it: the SHA-256 decides
    with open(weights, "wb") as f:
        f.truncate(10**8 + 1)
    assert paper_figures.lookup(train.parse_command_line(["--clip", str(weights), *flags])[0])[0] == []
    expected = clip_weights._MODELS["ViT-B/16"].split("/")[-2]
    monkeypatch.setattr(clip_weights, "sha256_of", lambda path: expected if path == str(weights) else "other")
    assert paper_figures.lookup(train.parse_command_line(["--clip", str(weights), *flags])[0])[0] != []


# ---------------------------------------------------------------------------------------------------------------------
# The figure beside a run's own


def fake_reports(names, top1=60.0, top5=90.0):
    return {n: dict(top1=top1, top5=top5, mean_class=top1, videos=10, unreadable=0, num_classes=5) for n in names}


def test_beside_compares_the_summary_and_the_multi_view_top5():
    cfg = config("--setting", "fully", "--dataset", "k400")
    reports = fake_reports(["val", "val (1 view)"], top1=82.5, top5=96.0)
    paper = paper_figures.beside(cfg, reports, evaluation.summarize(cfg.setting, {"val": reports["val"]}))
    assert paper["table"] == 4 and paper["row"] == "ViFi-CLIP"
    assert paper["figures"] == [dict(column="Top-1", metric="top1", paper=83.9, run=82.5, difference=-1.4),
                                dict(column="Top-5", metric="top5", paper=96.3, run=96.0, difference=-0.3)]
    cfg = config("--setting", "zeroshot", "--dataset", "k400", "--targets", "hmdb51")
    reports = {f"hmdb51/{s}": r for s, r in zip((1, 2, 3), fake_reports("abc").values())}
    reports["hmdb51/2"] = dict(reports["hmdb51/2"], top1=54.0)
    paper = paper_figures.beside(cfg, reports, evaluation.summarize(cfg.setting, reports))
    assert paper["figures"] == [dict(column="HMDB-51", metric="hmdb51_top1_mean", paper=51.3, run=58.0,
                                     difference=6.7)]
    assert paper_figures.lines(paper, "k400") == ["paper, Table 1, ViFi-CLIP, HMDB-51: 51.3; this run: 58.0 (+6.7)"]


class OneProcess:
    rank, world_size, is_main, distributed = 0, 1, True, False


def test_metrics_json_records_the_paper_figure_and_the_run_prints_it(tmp_path, capsys):
    cfg = config("--setting", "base2novel", "--dataset", "hmdb51", "--out", str(tmp_path))
    reports = {"base": fake_reports(["x"], top1=72.0)["x"], "novel": fake_reports(["x"], top1=50.0)["x"]}
    metrics = evaluation.write_metrics(cfg, OneProcess(), reports, evaluation.summarize(cfg.setting, reports), [],
                                       reported="the final weights")
    on_disk = json.load(open(tmp_path / "metrics.json"))
    assert on_disk["paper"] == metrics["paper"] and metrics["paper"]["table"] == 2
    assert [(f["column"], f["paper"], f["difference"]) for f in on_disk["paper"]["figures"]] == [
        ("HMDB-51 Base", 73.8, -1.8), ("HMDB-51 Novel", 53.3, -3.3), ("HMDB-51 HM", 61.9, -2.88)]
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["paper, Table 2, ViFi-CLIP, HMDB-51 Base: 73.8; this run: 72.0 (-1.8)",
                        "paper, Table 2, ViFi-CLIP, HMDB-51 Novel: 53.3; this run: 50.0 (-3.3)",
                        "paper, Table 2, ViFi-CLIP, HMDB-51 HM: 61.9; this run: 59.0 (-2.9)"]
    cfg = dataclasses.replace(cfg, frames=8)  # a paper dataset, not a paper row: said, and recorded
    metrics = evaluation.write_metrics(cfg, OneProcess(), reports, {}, [], reported="the final weights")
    assert metrics["paper"] == dict(table=None, row=None, figures=[], note="--frames 8: the paper's rows have 32")
    assert capsys.readouterr().out.splitlines()[-1] == "paper: no figure for this run (--frames 8: the paper's rows " \
                                                       "have 32)"
    cfg = config("--setting", "fewshot", "--out", str(tmp_path))  # the embedded world: recorded, not printed
    metrics = evaluation.write_metrics(cfg, OneProcess(), fake_reports(["toy-hmdb test"]), {"top1": 60.0}, [],
                                       reported="the final weights")
    assert metrics["paper"]["figures"] == [] and "paper" not in capsys.readouterr().out


def test_a_paper_setting_run_of_train_py_ends_with_the_papers_figure(tmp_path, monkeypatch, capsys, one_thread):
    """train.main on HMDB-51's few-shot row (K=2, 32 frames, ViT-B/16), its videos and weights swapped for six
    rendered videos and the tiny CLIP: the run ends with Table 3's figure beside its own, in metrics.json too."""
    for i in range(6):
        write_video(tmp_path / f"v{i}.mp4", frames=16 + i)
    names = ["brush_hair", "cartwheel", "catch"]
    splits = (protocols.Split("train", str(tmp_path), [(f"v{i}.mp4", i % 3) for i in range(3)], names),
              [protocols.Split("val", str(tmp_path), [(f"v{i}.mp4", i % 3) for i in range(3, 6)], names)])
    monkeypatch.setattr(train, "build_splits", lambda cfg: splits)
    tiny = clip_weights.load(miniworld.TINY_CLIP_NAME)
    monkeypatch.setattr(clip_weights, "load", lambda name, *a, **k: tiny if name == "ViT-B/16" else pytest.fail(name))
    metrics = train.main(["--setting", "fewshot", "--k", "2", "--dataset", "hmdb51", "--data-root", str(tmp_path),
                          "--epochs", "1", "--batch-size", "3", "--workers", "0", "--out", str(tmp_path / "out")])
    top1 = metrics["summary"]["top1"]
    assert metrics["paper"] == dict(table=3, row="ViFi-CLIP", note="", figures=[dict(
        column="HMDB-51 K=2", metric="top1", paper=57.2, run=top1, difference=round(top1 - 57.2, 2))])
    assert json.load(open(tmp_path / "out" / "metrics.json"))["paper"] == metrics["paper"]
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"paper, Table 3, ViFi-CLIP, HMDB-51 K=2: 57.2; this run: {top1:.1f} ({top1 - 57.2:+.1f})"
