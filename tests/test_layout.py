"""The layout rules of the code map (README "Code map"): stage folders, inference without training, no import
cycles, SQL only in storage/. Read from the source with ast, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "s2m_retrieval"
ROOT_FILES = {"__init__.py", "errors.py", "viz.py", "demo.py"}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of s2m_retrieval and index."""
    out = {}
    for top in (PACKAGE, ROOT / "index"):
        for path in top.rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import in the file, at any depth (lazy imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {imp for imp in _imports(path) if imp in modules and imp != name} for name, path in modules.items()}


def test_the_package_root_holds_only_the_entry_files_and_the_stage_folders():
    files = {p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix == ".py"}
    assert files == ROOT_FILES
    for folder in ("data", "networks", "model", "ingest", "query", "storage", "evaluation", "generation", "service",
                   "training", "testing"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


def test_inference_never_imports_training():
    offenders = {name: sorted(i for i in imps if i.startswith("s2m_retrieval.training"))
                 for name, imps in _graph().items() if not name.startswith("s2m_retrieval.training")}
    assert {k: v for k, v in offenders.items() if v} == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph, each as a path that returns to its start."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def _between_files(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without a package's __init__ importing its own submodules (its face) and without a module
    importing a package above it (that only runs the face)."""
    return {m: {i for i in imps if not i.startswith(m + ".") and not m.startswith(i + ".")} for m, imps in graph.items()}


def test_there_are_no_import_cycles():
    assert _cycles(_between_files(_graph())) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a.db": {"a.migrate"}, "a.migrate": {"a.db"}, "a": {"a.db"}, "b": set()}
    assert _cycles(_between_files(graph)) == [["a.db", "a.migrate", "a.db"]]


def test_sql_statements_live_in_storage():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("s2m_retrieval.storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlalchemy"):
                if {"select", "insert", "update", "delete", "text"} & {a.name for a in node.names}:
                    offenders.append(name)
    assert offenders == []


def test_the_lower_folders_import_only_what_their_docstrings_allow():
    allowed = {"s2m_retrieval.data": {"s2m_retrieval.errors", "s2m_retrieval.data"},
               "s2m_retrieval.networks": {"s2m_retrieval.errors", "s2m_retrieval.data", "s2m_retrieval.networks"},
               "s2m_retrieval.generation": {"s2m_retrieval.errors", "s2m_retrieval.data", "s2m_retrieval.networks",
                                            "s2m_retrieval.model", "s2m_retrieval.viz", "s2m_retrieval.generation"},
               "index": {"s2m_retrieval.errors", "index"}}
    bad = []
    for name, imports in _graph().items():
        for folder, ok in allowed.items():
            if name == folder or name.startswith(folder + "."):
                bad += [(name, i) for i in imports
                        if not any(i == a or i.startswith(a + ".") for a in ok) and i != "s2m_retrieval"]
    assert bad == []
