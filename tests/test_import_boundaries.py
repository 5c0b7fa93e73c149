"""Who may import whom (DESIGN.md §3, ``annotation/__init__.py``), checked on the source with ``ast``: every
``import`` of every project module, at module level and inside functions, resolved to the project module it names.

* ``analysis.engine`` imports nothing of the project outside itself (``test_engine_imports.py`` checks the same at
  run time, without Django settings);
* ``analysis`` never imports ``annotation``;
* the wings ``annotation.expert`` and ``annotation.crowd`` never import each other;
* the shared floor (``annotation.models``, ``claims``, ``naming``, ``common``, ``fields``, the migrations) imports no
  wing; ``annotation.urls``, ``admin`` and ``apps`` are the wiring that may;
* inside a wing, a module imports only modules of its own layer or below (reads and truth, then writes, then
  reports, exports, forms, simulation and demo, then pages), and the crowd's answer submission
  (``annotation.crowd.services``) does not reach the reports, even through other modules;
* the import graph of ``annotation`` has no cycles;
* a function-local import under ``annotation`` carries its reason in a comment on its line.

The checker itself is tested on small synthetic packages with planted violations, so a broken checker cannot pass
silently.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("accounts", "analysis", "annotation", "api", "unitscope")

FLOOR = (
    "annotation.models",
    "annotation.claims",
    "annotation.naming",
    "annotation.common",
    "annotation.fields",
    "annotation.migrations",
)
"""Modules both wings stand on: they import no wing."""
WIRING = ("annotation.urls", "annotation.admin", "annotation.apps")
"""Floor modules that wire the wings into the site (URLs, the admin, demo hooks): allowed to import a wing."""
WINGS = ("annotation.expert", "annotation.crowd")

WING_LAYERS = {
    "aggregation": 0,
    "selectors": 0,
    "truth": 0,
    "images": 0,
    "forced_choice": 0,
    "services": 1,
    "hits": 1,
    "adapters": 1,
    "forced_choice_plan": 1,
    "simulation": 2,
    "reports": 2,
    "exports": 2,
    "forms": 2,
    "demo": 2,
    "forced_choice_simulation": 2,
    "forced_choice_report": 2,
    "views": 3,
    "report_views": 3,
    "forced_choice_views": 3,
}
"""A wing module's layer (by file name): 0 reads, pure rules and truth; 1 writes; 2 what is built on writes and
reads (reports, exports, forms, the simulated raters and crowd, the demo); 3 pages. A module may import its own
layer or lower ones. The expert wing's simulation reads the dataset's truth for the services, so it sits in
layer 0 there (:data:`WING_LAYER_OVERRIDES`)."""
WING_LAYER_OVERRIDES = {"annotation.expert.simulation": 0}
NOT_REACHABLE = (("annotation.crowd.services", "annotation.crowd.reports"),)
"""(from, to): ``to`` must not be reached from ``from`` through any chain of project imports."""


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the project: ``importer`` imports ``imported`` at ``line``;
    ``local`` when the statement sits inside a function; ``reason`` is the comment on its line(s), if any."""

    importer: str
    imported: str
    line: int
    local: bool
    reason: str


def project_modules(root: Path, packages=PROJECT_PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``packages`` under ``root`` (``__init__.py`` is
    the package's own name)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _comments(source: str) -> dict[int, str]:
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """The project modules that ``module`` (source at ``path``) imports, wherever the import statement stands.

    ``from package import name`` counts as importing ``package.name`` when that is a module, else ``package``."""
    source = path.read_text()
    tree = ast.parse(source)
    comments = _comments(source)
    is_package = path.name == "__init__.py"
    local_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    local_lines.add(inner.lineno)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        reason = " ".join(comments[line] for line in range(node.lineno, node.end_lineno + 1) if line in comments)
        for target in dict.fromkeys(targets):
            while target and target not in known and "." in target:  # ``import a.b.c`` of a name inside a module
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                found.append(Import(module, target, node.lineno, node.lineno in local_lines, reason))
    return found


def import_graph(root: Path = PROJECT_DIR, packages=PROJECT_PACKAGES) -> list[Import]:
    modules = project_modules(root, packages)
    known = set(modules)
    return [edge for module, path in modules.items() for edge in imports_of(module, path, known)]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _wing(module: str) -> str | None:
    return next((wing for wing in WINGS if _within(module, wing)), None)


def _layer(module: str) -> int | None:
    if module in WING_LAYER_OVERRIDES:
        return WING_LAYER_OVERRIDES[module]
    if _wing(module) is None or module in WINGS:
        return None
    return WING_LAYERS.get(module.rsplit(".", 1)[1])


def boundary_violations(edges: list[Import]) -> list[str]:
    """Every import that breaks a rule of this module's docstring, as readable lines (empty when all is well)."""
    problems = []
    for edge in edges:
        where = f"{edge.importer}:{edge.line} imports {edge.imported}"
        if _within(edge.importer, "analysis.engine") and not _within(edge.imported, "analysis.engine"):
            problems.append(f"{where}: the engine imports nothing of the project outside itself")
        if _within(edge.importer, "analysis") and _within(edge.imported, "annotation"):
            problems.append(f"{where}: analysis never imports annotation")
        source_wing, target_wing = _wing(edge.importer), _wing(edge.imported)
        if source_wing and target_wing and source_wing != target_wing:
            problems.append(f"{where}: the wings never import each other")
        if any(_within(edge.importer, floor) for floor in FLOOR) and target_wing and edge.importer not in WIRING:
            problems.append(f"{where}: the shared floor imports no wing")
        if source_wing and source_wing == target_wing:
            mine, theirs = _layer(edge.importer), _layer(edge.imported)
            if mine is None or theirs is None:
                problems.append(f"{where}: give both modules a layer in WING_LAYERS")
            elif theirs > mine:
                problems.append(f"{where}: an upward import (layer {mine} → layer {theirs})")
        if _within(edge.importer, "annotation") and edge.local and not edge.reason:
            problems.append(f"{where}: a function-local import needs its reason in a comment on its line")
    return problems


def reachable(edges: list[Import], start: str) -> set[str]:
    """Modules reached from ``start`` through any chain of imports (``start`` excluded)."""
    out: dict[str, set[str]] = {}
    for edge in edges:
        out.setdefault(edge.importer, set()).add(edge.imported)
    seen, todo = set(), [start]
    while todo:
        for nxt in out.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    seen.discard(start)
    return seen


def cycles(edges: list[Import], prefix: str = "annotation") -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself) among the modules under
    ``prefix`` (Tarjan's algorithm), each sorted; empty when the graph is acyclic."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if _within(edge.importer, prefix) and _within(edge.imported, prefix):
            graph.setdefault(edge.importer, set()).add(edge.imported)
            graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def reach_violations(edges: list[Import]) -> list[str]:
    return [f"{start} reaches {target}" for start, target in NOT_REACHABLE if target in reachable(edges, start)]


# -- the project ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return import_graph()


def test_the_graph_sees_the_layout(edges):
    """The walk finds both wings' modules and their imports at both levels (else every rule passes vacuously)."""
    importers = {edge.importer for edge in edges}
    for module in (
        "annotation.crowd.services",
        "annotation.crowd.hits",
        "annotation.crowd.views",
        "annotation.expert.services",
        "annotation.expert.views",
        "annotation.urls",
        "api.views",
    ):
        assert module in importers, module
    assert any(_within(edge.importer, "analysis.engine") for edge in edges)
    assert any(edge.local for edge in edges if _within(edge.importer, "annotation"))  # the reasoned local imports
    assert ("annotation.crowd.hits", "annotation.crowd.services") in {(e.importer, e.imported) for e in edges}


def test_the_project_keeps_its_boundaries(edges):
    assert boundary_violations(edges) == []


def test_annotation_has_no_import_cycles(edges):
    assert cycles(edges, "annotation") == []


def test_submitting_an_answer_does_not_reach_the_reports(edges):
    assert reach_violations(edges) == []


def test_every_wing_module_has_a_layer():
    modules = project_modules(PROJECT_DIR, ("annotation",))
    unlayered = [name for name in modules if _wing(name) and name not in WINGS and _layer(name) is None]
    assert unlayered == []


# -- the checker, on planted violations ---------------------------------------------------------------------------


def _world(root: Path, files: dict[str, str]) -> list[Import]:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in {path.parent for path in root.rglob("*.py")}:  # every folder a package
        while folder != root:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return import_graph(root)


CLEAN = {
    "analysis/engine/maths.py": "import numpy\n",
    "analysis/models.py": "from .engine import maths\n",
    "annotation/models.py": "from analysis.models import *\n",
    "annotation/common.py": "from .models import *\n",
    "annotation/urls.py": "from .crowd import views\nfrom .expert import views as expert_views\n",
    "annotation/crowd/selectors.py": "from ..models import *\n",
    "annotation/crowd/services.py": "from ..common import *\nfrom .selectors import *\n",
    "annotation/crowd/reports.py": "from . import selectors\n",
    "annotation/crowd/views.py": (
        "from . import reports, services\n\ndef page():\n    import torch  # local: keeps torch out of web processes\n"
    ),
    "annotation/expert/views.py": "from annotation.common import *\n",
}


def test_a_clean_world_passes(tmp_path):
    edges = _world(tmp_path, CLEAN)
    assert len(edges) >= 10
    assert boundary_violations(edges) == [] and cycles(edges) == [] and reach_violations(edges) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ({"analysis/engine/maths.py": "from analysis.models import Unit\n"}, "the engine imports nothing"),
        (
            {"analysis/models.py": "def f():\n    from annotation import models  # lazy\n"},
            "analysis never imports annotation",
        ),
        (
            {"annotation/expert/views.py": "from annotation.crowd import selectors\n"},
            "the wings never import each other",
        ),
        ({"annotation/crowd/selectors.py": "from ..expert.views import *\n"}, "the wings never import each other"),
        ({"annotation/common.py": "from .crowd import services\n"}, "the shared floor imports no wing"),
        ({"annotation/crowd/services.py": "from . import views\n"}, "an upward import (layer 1 → layer 3)"),
        ({"annotation/crowd/selectors.py": "def f():\n    from .services import x\n"}, "an upward import"),
        ({"annotation/crowd/services.py": "def f():\n    from .selectors import x\n"}, "needs its reason"),
    ],
)
def test_a_planted_boundary_violation_is_found(tmp_path, planted, expected):
    problems = boundary_violations(_world(tmp_path, {**CLEAN, **planted}))
    assert any(expected in problem for problem in problems), problems


def test_a_planted_cycle_is_found_even_through_a_local_import(tmp_path):
    edges = _world(
        tmp_path,
        {
            **CLEAN,
            "annotation/crowd/selectors.py": (
                "from ..models import *\n\ndef later():\n    from . import reports  # local: a reason does not excuse a circle\n"  # noqa: E501
            ),
        },
    )
    assert cycles(edges) == [["annotation.crowd.reports", "annotation.crowd.selectors"]]


def test_reaching_the_reports_through_another_module_is_found(tmp_path):
    edges = _world(
        tmp_path,
        {
            **CLEAN,
            "annotation/crowd/selectors.py": "from . import aggregation\n",
            "annotation/crowd/aggregation.py": "def f():\n    from . import reports  # a reason\n",
        },
    )
    assert reach_violations(edges) == ["annotation.crowd.services reaches annotation.crowd.reports"]
