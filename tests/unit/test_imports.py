"""Imports go one way: bench -> supervisor -> workers, and no project module is in an import cycle.

Inside workers/, the subpackages are layered the same way (workers/__init__.py names them):
worker -> partition -> delivery -> {nats, clickhouse} -> observability -> leaf modules;
the NATS and ClickHouse sides never import each other.

Every module's imports are read with `ast`, function-level and TYPE_CHECKING imports
included (an import inside a function is still a dependency). `from pkg import name`
counts as an import of pkg.name when that is a module, else of pkg.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "supervisor", "workers")
# What each package may import from the project, besides itself.
ALLOWED = {"bench": {"supervisor", "workers"}, "supervisor": {"workers"}, "workers": set()}


# Inside workers/: what each part may import, besides itself. "leaf" is every top-level module but worker.
WORKER_PARTS = ("nats", "clickhouse", "delivery", "partition", "observability")
WORKER_ALLOWED = {
    "leaf": set(),
    "observability": {"leaf"},
    "nats": {"leaf", "observability"},
    "clickhouse": {"leaf", "observability"},
    "delivery": {"leaf", "observability", "nats", "clickhouse"},
    "partition": {"leaf", "observability", "nats", "clickhouse", "delivery"},
    "worker": {"leaf", "observability", "nats", "clickhouse", "delivery", "partition"},
}


def worker_part(module: str) -> str | None:
    """Which part of workers/ a module is in (None outside workers/, and for the package itself)."""
    parts = module.split(".")
    if parts[0] != "workers" or len(parts) == 1:
        return None
    if parts[1] in WORKER_PARTS or parts[1] == "worker":
        return parts[1]
    return "leaf"


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages under `root`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` (at `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` of a module we do not have (e.g. a name in it): its nearest module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Imports against bench -> supervisor -> workers."""
    bad = []
    for name, targets in sorted(graph.items()):
        package = name.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                bad.append(f"{name} imports {target}")
    return bad


def across_layers(graph: dict[str, set[str]]) -> list[str]:
    """Imports between workers' parts against WORKER_ALLOWED."""
    bad = []
    for name, targets in sorted(graph.items()):
        part = worker_part(name)
        if part is None:
            continue
        for target in sorted(targets):
            other = worker_part(target)
            if other is not None and other != part and other not in WORKER_ALLOWED[part]:
                bad.append(f"{name} imports {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_imports_go_one_way():
    assert wrong_way(import_graph(REPO)) == []


def test_workers_parts_import_down_the_layers_only():
    assert across_layers(import_graph(REPO)) == []


def test_every_workers_subpackage_is_a_known_part_with_a_docstring():
    """A new folder in workers/ gets a place in the layers (and says what it holds) before it is used."""
    folders = {p.parent.name for p in (REPO / "workers").glob("*/__init__.py")}
    assert folders == set(WORKER_PARTS)
    for folder in folders:
        assert ast.get_docstring(ast.parse((REPO / "workers" / folder / "__init__.py").read_text()))


def test_no_module_is_in_an_import_cycle():
    assert cycles(import_graph(REPO)) == []


def test_the_checks_catch_a_wrong_way_import_and_a_cycle(tmp_path):
    files = {
        "workers/__init__.py": "",
        "workers/a.py": "def f():\n    from supervisor import arbiter\n",  # function-level still counts
        "workers/b.py": "from workers import c\n",
        "workers/c.py": "from . import d\n",
        "workers/d.py": "import workers.b\n",
        "supervisor/__init__.py": "",
        "supervisor/arbiter.py": "from workers.a import f\n",
        "bench/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert wrong_way(graph) == ["workers.a imports supervisor.arbiter"]
    assert across_layers(graph) == []
    assert cycles(graph) == [["supervisor.arbiter", "workers.a"], ["workers.b", "workers.c", "workers.d"]]


def test_the_layer_check_catches_the_two_sides_importing_each_other(tmp_path):
    files = {
        "workers/__init__.py": "",
        "workers/settings.py": "",
        "workers/nats/__init__.py": "",
        "workers/nats/dlq.py": "from workers.clickhouse import sink\nfrom workers import settings\n",
        "workers/clickhouse/__init__.py": "",
        "workers/clickhouse/sink.py": "",
        "workers/settings2.py": "from workers.partition import runner\n",  # a leaf importing upwards
        "workers/partition/__init__.py": "",
        "workers/partition/runner.py": "from workers.nats import dlq\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert across_layers(import_graph(tmp_path)) == [
        "workers.nats.dlq imports workers.clickhouse.sink",
        "workers.settings2 imports workers.partition.runner",
    ]
