"""The map of docs/architecture.md, kept true: every import of every walletd module (read with ast,
imports inside functions included) goes one way, down the layers the map draws, and no module or
package imports itself back through others."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "walletd"

# Each part of walletd (a sub-package or a top-level module) and its layer: a module imports only
# its own part and parts of lower layers. The same table is drawn in docs/architecture.md.
LAYERS: dict[str, int] = {
    "walletd": 0, "domain": 0, "logs": 0, "config": 0, "metrics_dir": 0, "smoke": 0,
    "keys": 1, "metrics": 1, "config_catalogue": 1, "demo": 1,
    "persistence": 2,
    "actors": 3, "auth": 3, "integrity": 3, "webhooks": 3,
    "jobs": 4, "memory": 4,
    "appkeys": 5,
    "handlers": 6,
    "resources": 7,
    "app": 8,
    "server": 9,
    "cli": 10,
    "__main__": 11,
}
# Stated on their own in docs/architecture.md, stricter than the layers.
NEVER = {
    "domain": set(LAYERS) - {"domain"},  # the money rules: no I/O, nothing of walletd but themselves
    "persistence": {"handlers", "actors", "jobs", "webhooks", "auth", "appkeys", "resources", "app"},
    "actors": {"persistence", "handlers", "jobs"},  # the ledger is handed in: actors know its interface only
    "handlers": {"actors", "jobs", "resources", "app", "server"},  # through app keys and commands only
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    """The part of walletd a module belongs to: walletd.persistence.citus.ledger -> persistence."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def import_source(package: str, node: ast.ImportFrom) -> str:
    """The module a `from … import` reads from, relative ones resolved against `package`."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> set[str]:
    """The walletd modules this one imports, anywhere in it (module level or inside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = import_source(package, node)
            # `from walletd.persistence import ledger` imports the module walletd.persistence.ledger.
            named |= {f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names}
    found = set()
    for name in named:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("walletd") and name != module:
            found.add(name)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_reader_sees_imports_inside_functions_and_relative_ones():
    # What the checks below rely on: a function-level import counts like one at the top.
    assert "walletd.handlers.routes" in GRAPH["walletd.handlers.errors_doc"]
    assert "walletd.persistence.citus.ledger" in GRAPH["walletd.resources"]
    # walletd has no relative import today; one added later is resolved like an absolute one.
    relative = ast.parse("from ..db import x\nfrom . import layout").body
    assert [import_source("walletd.persistence.citus", node) for node in relative] == [  # type: ignore[arg-type]
        "walletd.persistence.db", "walletd.persistence.citus"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    assert cycles(GRAPH) == []


def test_no_package_imports_itself_back():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, imported in GRAPH.items():
        packages[part(module)] |= {part(i) for i in imported} - {part(module)}
    assert cycles(packages) == []


def test_every_part_of_walletd_has_a_layer():
    assert {part(m) for m in MODULES} == set(LAYERS), "add the new part to LAYERS and to docs/architecture.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    mine = part(module)
    upward = sorted(i for i in GRAPH[module] if part(i) != mine and LAYERS[part(i)] >= LAYERS[mine])
    forbidden = sorted(i for i in GRAPH[module] if part(i) in NEVER.get(mine, ()))
    assert upward == [], f"{module} imports a part of its own layer or above"
    assert forbidden == [], f"{module} imports what docs/architecture.md says {mine} never imports"


def test_the_map_names_every_part_and_its_layer():
    text = (REPO / "docs" / "architecture.md").read_text()
    drawn = {name: int(layer) for layer, name in re.findall(r"^\| (\d+) \| `(?:walletd/)?([\w]+)(?:/|\.py)?` \|", text,
                                                             re.M)}
    assert drawn == {name: layer for name, layer in LAYERS.items() if name != "walletd"}


def test_no_shipped_module_imports_the_tests_or_the_benchmark():
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("tests", "bench") for n in names), path


def test_test_helpers_are_outside_the_package():
    assert not (PACKAGE / "testing.py").exists() and not (PACKAGE / "citus_cluster.py").exists()
    assert (REPO / "tests" / "support" / "servers.py").exists()
