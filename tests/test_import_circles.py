"""No import circles, and the layering of DESIGN.md, checked from the source alone.

The checker reads every module of our packages (a package is a top-level directory with an
`__init__.py`, so a new daemon is checked the day it lands) and builds the graph of which
module imports which: `ast` for .py files, a line pattern for Cython's .pyx/.pxd (which
`ast` cannot read). Every import counts wherever it sits: at the top, inside a function,
under `if TYPE_CHECKING:`; relative imports are resolved against the importing module, and
`from pkg import name` points at the submodule pkg.name when there is one, else at pkg.
Nothing is imported or executed, so the test works on a clean clone before `make native`.

Then:
- every strongly connected component of more than one module is a circle, and each is
  listed (a module that imports itself is not one);
- `core` imports no daemon package; `native` imports nothing of ours outside `native`; no
  daemon imports another daemon (a daemon is any package but `core` and `native`). The
  packages in USERS are not daemons but users of them (the web console, the examples): they
  may import the daemons' packages (their clients, their launch declarations); nothing
  imports them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_PACKAGES = frozenset({"tests", "bench", ".venv", "build", "var"})
SHARED = frozenset({"core", "native"})
USERS = frozenset({"console", "examples"})  # use the daemons through their clients
SOURCE_SUFFIXES = (".py", ".pyx", ".pxd")
# `from a.b import c`, `from a.b cimport c`, `import a.b`, `cimport a.b` in Cython sources.
_CYTHON_FROM = re.compile(r"^\s*from\s+(\.*[\w.]*)\s+c?import\s+(.+)$")
_CYTHON_IMPORT = re.compile(r"^\s*c?import\s+([\w.]+(?:\s*,\s*[\w.]+)*)\s*$")

@dataclass
class Graph:
    """Modules by dotted name and, for each, the modules of ours it imports."""

    packages: set[str] = field(default_factory=set)  # modules that are packages
    edges: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str) -> None:
        self.edges.setdefault(name, set())


def discover(root: Path) -> list[str]:
    """Our top-level packages: directories of `root` holding an __init__.py."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in NOT_PACKAGES and not p.name.startswith(".")
                  and (p / "__init__.py").is_file())


def sources(root: Path, packages: list[str]) -> Iterator[tuple[str, Path, bool]]:
    """(module name, file, is a package) for every source file of `packages`."""
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.suffix not in SOURCE_SUFFIXES or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            yield ".".join(parts), path, is_package


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The dotted name a (possibly relative) import of `target` from `module` means."""
    if level == 0:
        return target
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base):
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, target] if target else base) or None


def _python_imports(path: Path, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of a .py file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.level, node.module)
            if target is not None:
                yield target, [alias.name for alias in node.names]


def _cython_imports(path: Path, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """The same for a .pyx/.pxd file, read line by line (parenthesised name lists are read
    as far as the first line: a submodule named on a later line is not seen)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        found = _CYTHON_FROM.match(line)
        if found:
            dots = len(found.group(1)) - len(found.group(1).lstrip("."))
            target = _absolute(module, is_package, dots, found.group(1)[dots:] or None)
            names = [n.split(" as ")[0].strip(" ()") for n in found.group(2).split(",")]
            if target is not None:
                yield target, [n for n in names if n.isidentifier()]
            continue
        found = _CYTHON_IMPORT.match(line)
        if found:
            for name in found.group(1).split(","):
                yield name.strip(), []


def _resolve(graph: Graph, target: str) -> str | None:
    """The module of ours `target` names: itself, or its longest known prefix."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in graph.edges:
            return name
        parts.pop()
    return None


def build(root: Path) -> Graph:
    """The import graph of every package under `root`."""
    graph = Graph()
    found = list(sources(root, discover(root)))
    for module, _, is_package in found:
        graph.add(module)
        if is_package:
            graph.packages.add(module)
    for module, path, is_package in found:
        read = _python_imports if path.suffix == ".py" else _cython_imports
        for target, names in read(path, module, is_package):
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in graph.edges]
            if len(hits) < len(names) or not names:  # something of the module itself
                hits.append(target)
            for hit in hits:
                resolved = _resolve(graph, hit)
                if resolved is not None and resolved != module:
                    graph.edges[module].add(resolved)
    return graph


def circles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph.edges):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.edges[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return sorted(found)


def layering_breaches(graph: Graph) -> list[str]:
    """Every import that crosses DESIGN.md's layers the wrong way, as 'a -> b: rule'."""
    out = []
    for module, targets in sorted(graph.edges.items()):
        home = module.split(".")[0]
        for target in sorted(targets):
            away = target.split(".")[0]
            if away == home:
                continue
            if home == "native":
                out.append(f"{module} -> {target}: native imports nothing outside native")
            elif home == "core" and away not in SHARED:
                out.append(f"{module} -> {target}: core imports no daemon")
            elif away in USERS:
                out.append(f"{module} -> {target}: nothing imports a user of the daemons")
            elif home in USERS:
                continue
            elif home not in SHARED and away not in SHARED:
                out.append(f"{module} -> {target}: a daemon never imports another daemon")
    return out


# -- the checker itself, on small made-up trees ---------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build(root)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    graph = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/a.py": "def f():\n    import app.b\n",
        "app/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n",
        "app/c.py": "from app.sub import d\n",
        "app/sub/__init__.py": "",
        "app/sub/d.py": "from .. import a\nfrom app import VALUE\n",
        "app/_fast.pyx": "from app.sub.d cimport thing\nimport app.e\n",
        "app/e.py": "",
        "tests/__init__.py": "import app.a\n",
        "loose.py": "import app.a\n",
    })
    assert graph.edges["app.a"] == {"app.b"}
    assert graph.edges["app.b"] == {"app.c"}
    assert graph.edges["app.c"] == {"app.sub.d"}
    assert graph.edges["app.sub.d"] == {"app.a", "app"}
    assert graph.edges["app._fast"] == {"app.sub.d", "app.e"}
    assert "tests" not in graph.edges and "loose" not in graph.edges
    assert circles(graph) == [["app.a", "app.b", "app.c", "app.sub.d"]]


def test_the_checker_reports_layering(tmp_path: Path) -> None:
    graph = _tree(tmp_path, {
        "core/__init__.py": "", "core/x.py": "import native.y\nimport alpha.z\n",
        "native/__init__.py": "", "native/y.py": "from core import x\n",
        "alpha/__init__.py": "", "alpha/z.py": "import core.x\nimport native.y\nimport beta\n",
        "beta/__init__.py": "",
    })
    assert layering_breaches(graph) == [
        "alpha.z -> beta: a daemon never imports another daemon",
        "core.x -> alpha.z: core imports no daemon",
        "native.y -> core.x: native imports nothing outside native",
    ]


# -- our tree -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ours() -> Graph:
    return build(ROOT)


def test_our_packages_are_found() -> None:
    packages = discover(ROOT)
    assert {"core", "native", "idgen", "kvcache", "scheduler"} <= set(packages)
    assert not NOT_PACKAGES & set(packages)


def test_no_import_circles(ours: Graph) -> None:
    found = circles(ours)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layering(ours: Graph) -> None:
    breaches = layering_breaches(ours)
    assert not breaches, "imports across the layers of DESIGN.md:\n" + "\n".join(breaches)
