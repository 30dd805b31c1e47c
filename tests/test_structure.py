"""The shape of the code a reader relies on. At the top, the method: tokenizer -> clip_model -> prompts -> vifi ->
train, each importing only what comes before it, data.py alone; beside it the packages plumbing/, world/ and tools/.
No circle anywhere (imports inside functions included); importing the model or the data loads no weight formats, no
run bookkeeping and nothing of the embedded world; tools/ are leaves."""
import ast
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = ["tokenizer", "clip_model", "prompts", "vifi", "train"]  # the paper's order
METHOD_FILES = METHOD + ["data"]  # the six files at the top of the repository
PACKAGES = ["plumbing", "world", "tools"]
MODEL_AND_DATA = ["tokenizer", "clip_model", "prompts", "vifi", "data"]  # what a reader of the method imports
# All of the project that importing one of MODEL_AND_DATA may load: the method files, and of plumbing/ the decoder
# (data.py) and autocast (vifi.py). Not train.py, nothing of world/ or tools/, no weights, no run bookkeeping.
MAY_LOAD = {f"{m}.py" for m in MODEL_AND_DATA} | {"plumbing/__init__.py", "plumbing/video_decoder.py",
                                                   "plumbing/mixed_precision.py"}


def module_files() -> dict:
    """{dotted module name: its file} for the method files and every module of the packages."""
    files = {os.path.splitext(os.path.basename(f))[0]: f for f in glob.glob(os.path.join(ROOT, "*.py"))}
    for package in PACKAGES:
        for f in glob.glob(os.path.join(ROOT, package, "*.py")):
            name = os.path.splitext(os.path.basename(f))[0]
            if name != "__init__":
                files[f"{package}.{name}"] = f
    return files


def import_graph() -> dict:
    """{module: the project's modules it imports anywhere in its file}, read from the source (nothing imported).
    `from plumbing import x` and `from plumbing.x import y` both count as importing plumbing.x."""
    files = module_files()
    graph = {}
    for m, path in files.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}  # a module of a package
        graph[m] = (names & files.keys()) - {m}
    return graph


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def in_package(modules, package: str) -> list:
    return sorted(m for m in modules if m.startswith(package + "."))


def test_no_import_circle():
    graph = import_graph()
    circles = sorted(m for m in graph if m in reachable(graph, m))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_the_method_files_import_only_what_comes_before_them():
    graph = import_graph()
    for i, m in enumerate(METHOD):
        later = set(METHOD[i + 1:]) & reachable(graph, m)
        assert not later, f"{m}.py reaches {sorted(later)}, which come after it in the reading order"


def test_data_stands_alone():
    graph = import_graph()
    assert not set(METHOD) & reachable(graph, "data"), "data.py must not depend on the model or the training loop"


def test_the_model_and_the_data_reach_nothing_of_the_world():
    """train.py runs on the embedded world by default (world.miniworld); the model and the data never see it."""
    graph = import_graph()
    for m in MODEL_AND_DATA:
        world = in_package(reachable(graph, m), "world")
        assert not world, f"{m}.py reaches {world}"


def test_tools_are_leaves():
    """No method file, nothing of plumbing/ or world/ imports a tool (a tool may use another tool's helper)."""
    graph = import_graph()
    for m, imported in graph.items():
        if not m.startswith("tools."):
            assert not in_package(imported, "tools"), f"{m} imports {in_package(imported, 'tools')}"


def test_the_graph_is_read_from_the_files():  # the checks above would pass on an empty graph
    graph = import_graph()
    assert {"clip_model", "prompts", "tokenizer", "data", "plumbing.mixed_precision"} <= graph["vifi"]
    assert {"vifi", "world.miniworld", "plumbing.run_files"} <= graph["train"]
    assert {"plumbing.hf_export", "train", "tools.classify_video"} <= graph["tools.export_hf"]
    assert "plumbing.video_decoder" in graph["data"] and "data" in graph["plumbing.video_index"]


LOADED = """import os, sys
root = os.path.realpath(sys.argv[1])
sys.path.insert(0, root)
import {module}
files = {{os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}}
print("\\n".join(sorted(os.path.relpath(f, root).replace(os.sep, "/") for f in files if f.startswith(root + os.sep))))
"""


def test_importing_the_model_or_the_data_loads_only_the_method(tmp_path):
    """Each of tokenizer, clip_model, prompts, vifi, data imported alone in a fresh interpreter (in parallel: ~3 s):
    which of the repository's files it loads. Read by file, so the check means the same on any layout: on the layout
    before plumbing/ and world/, `import vifi` loaded clip_weights.py, tiny_clip.py and miniworld.py (through
    prompts.py), and `import data` loaded video_index.py and atomic_files.py."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = {m: subprocess.Popen([sys.executable, "-c", LOADED.format(module=m), ROOT], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in MODEL_AND_DATA}
    extra = {}
    for m, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"import {m}: {err[-2000:]}"
        loaded = set(out.split())
        assert f"{m}.py" in loaded, f"import {m} loaded {sorted(loaded)}"  # the check reads the right files
        print(f"import {m}: {', '.join(sorted(loaded))}")
        if loaded - MAY_LOAD:
            extra[m] = sorted(loaded - MAY_LOAD)
    assert not extra, f"importing the method loads more than the method: {extra}"
