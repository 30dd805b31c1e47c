"""The shape of the code a reader relies on: imports flow one way, tokenizer -> clip_model -> prompts -> vifi -> train,
data.py alone, side modules below the file they serve, and no circle anywhere (imports inside functions included)."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = ["tokenizer", "clip_model", "prompts", "vifi", "train"]  # the paper's order


def import_graph() -> dict:
    """{module: the project's modules it imports anywhere in its file}, read from the source (nothing imported)."""
    modules = {os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(ROOT, "*.py"))}
    graph = {}
    for m in modules:
        tree = ast.parse(open(os.path.join(ROOT, m + ".py"), encoding="utf-8").read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        graph[m] = (names & modules) - {m}
    return graph


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


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


def test_the_graph_is_read_from_the_files():  # the checks above would pass on an empty graph
    graph = import_graph()
    assert {"clip_model", "prompts", "tokenizer", "data"} <= graph["vifi"] and "vifi" in graph["train"]
