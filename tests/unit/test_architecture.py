"""The structure the architecture notes promise (docs/architecture.md): no import cycles among
the project's modules (imports inside functions count), no function in flows/ or tasks/ over
100 lines, a flow body that reads like the stage diagram, no formatter opt-outs."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "flows").glob("*.py"), *(ROOT / "tasks").rglob("*.py")])


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports, anywhere in its code."""
    modules = {module_name(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    names = sorted(graph)
    index = {m: i for i, m in enumerate(names)}
    edges = [(index[a], index[b]) for a, targets in graph.items() for b in targets]
    rows, cols = zip(*edges, strict=True) if edges else ((), ())
    matrix = csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(matrix, directed=True, connection="strong")
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels, strict=True):
        groups.setdefault(int(label), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_project_has_no_import_cycles():
    graph = import_graph()
    assert "tasks.out_of_core.features" in graph and graph["flows.train"]  # read everything
    assert cycles(graph) == []


def test_in_memory_modules_never_import_the_out_of_core_twin():
    graph = import_graph()
    in_memory = [m for m in graph if m.startswith("tasks.") and "out_of_core" not in m]
    offenders = [m for m in in_memory if any("out_of_core" in t for t in graph[m])]
    assert offenders == []


def functions() -> list[tuple[int, str]]:
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = node.end_lineno - node.lineno + 1
                found.append((size, f"{path.relative_to(ROOT)}:{node.name}"))
    return sorted(found, reverse=True)


def test_no_function_is_over_100_lines():
    assert [f for f in functions() if f[0] > 100] == []


def test_the_flow_body_reads_like_the_diagram():
    tree = ast.parse((ROOT / "flows" / "train.py").read_text())
    (flow,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_flow"
    ]
    body_start = flow.body[1].lineno  # after the docstring
    assert flow.end_lineno - body_start + 1 <= 60
    stages = [
        n.items[0].context_expr.args[0].value
        for n in ast.walk(flow)
        if isinstance(n, ast.With)
        and isinstance(n.items[0].context_expr, ast.Call)
        and getattr(n.items[0].context_expr.func, "attr", "") == "stage"
    ]
    assert stages == ["ingest", "train", "select", "compare", "export", "champion", "report"]


def test_no_formatter_opt_outs():
    paths = [*SOURCES, *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    marker = "fmt: " + "skip"  # spelt apart so this file does not match itself
    assert [str(p) for p in paths if marker in p.read_text()] == []


def test_no_task_in_the_flow_gets_a_manifest_as_a_parameter():
    """Regression (wide data, 5,000 columns): write_report and publish_artifacts got
    `feature_set.manifest`, whose per-column statistics are ~13 MB of numbers. Prefect walks
    every task parameter element by element, twice per task run: ~15 s of the report stage.
    Tasks get the FeatureSet, which reads its manifest when asked."""
    tree = ast.parse((ROOT / "flows" / "train.py").read_text())
    (flow,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_flow"
    ]
    passed = [
        ast.unparse(call)
        for call in ast.walk(flow)
        if isinstance(call, ast.Call)
        for arg in [*call.args, *(k.value for k in call.keywords)]
        if isinstance(arg, ast.Attribute) and arg.attr == "manifest"
    ]
    assert passed == []
