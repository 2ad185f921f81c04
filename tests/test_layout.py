"""The companion's layout (issue 15): no module reaches into another's private names,
modules stay small, and every module says what it exports.

Read from the source with ``ast`` (the private-name rule) and by importing each module
(``__all__``). Internal modules (a name starting with ``_``: ``companion._common``,
``companion.exercises._core``) exist to be imported by the package's own modules: their
*public* names are the package's shared helpers, so importing those is allowed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "companion"
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MODULES = {_module_name(p): p for p in FILES}
IDS = [str(p.relative_to(ROOT)) for p in FILES]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    return dotted in MODULES


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The absolute module of ``from <module> import ...`` written in module ``here``."""
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def private_reaches(source: str, here: str, *, is_package: bool = False, where: str = "") -> list[str]:
    """Every place in ``source`` (module ``here``) that imports or reads a private name of
    another companion module."""
    tree = ast.parse(source)
    found = []
    aliases = {}  # local name -> the companion module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "companion" or a.name.startswith("companion."):
                    aliases[a.asname or "companion"] = a.name if a.asname else "companion"
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, here, is_package)
            if module != "companion" and not module.startswith("companion."):
                continue
            for a in node.names:
                if _is_module(f"{module}.{a.name}"):
                    aliases[a.asname or a.name] = f"{module}.{a.name}"  # a module, private or not: allowed
                elif _is_private(a.name) and module != here:
                    found.append(f"{where}:{node.lineno}: from {module} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        dotted = _dotted(node.value)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in aliases:
            continue
        owner = aliases[head] + (f".{rest}" if rest else "")
        if _is_module(owner) and owner != here and not _is_module(f"{owner}.{node.attr}"):
            found.append(f"{where}:{node.lineno}: {dotted}.{node.attr}")
    return found


def test_the_private_name_check_has_power():
    """The checker flags each kind of reach and lets the allowed imports through."""
    source = (
        "from companion.sampling import _static\n"
        "from companion import sampling, _common\n"
        "from companion._common import check_int\n"
        "from companion.exercises import _core\n"
        "from companion.exercises._core import exercise\n"
        "import companion.toy as toy\n"
        "import companion.sde\n"
        "x = sampling._check_eps\n"
        "y = toy._component_terms\n"
        "z = companion.sde._positive_float\n"
        "w = _common.check_int, sampling.__name__, _core.exercise, companion._common\n"
        "class A:\n"
        "    def f(self):\n"
        "        return self._x\n"
    )
    found = private_reaches(source, "companion.probe", where="probe.py")
    assert len(found) == 4, found
    for what in ("import _static", "sampling._check_eps", "toy._component_terms", "sde._positive_float"):
        assert any(what in f for f in found), (what, found)
    # relative imports inside the exercises package resolve to absolute module names
    assert private_reaches("from ._core import _REGISTRY", "companion.exercises.odes")
    assert not private_reaches("from ._core import exercise", "companion.exercises.odes")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_no_module_reaches_into_another_modules_private_names(path):
    found = private_reaches(path.read_text(encoding="utf-8"), _module_name(path),
                            is_package=path.name == "__init__.py", where=str(path.relative_to(ROOT)))
    assert not found, "private names of other modules:\n" + "\n".join(found)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_modules_stay_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most {MAX_LINES}): split it by idea"


@pytest.mark.parametrize("name", sorted(MODULES), ids=sorted(MODULES))
def test_every_module_says_what_it_exports(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert all(isinstance(n, str) for n in exported) and len(set(exported)) == len(exported), exported
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


# ------------------------------------------------------------------ no import cycles (issue 25)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the companion modules it imports, from the source of each module
    (``{name: (source, is_package)}``). Every import counts, at module level or inside a
    function: a lazy import hides a cycle from Python, not from a reader."""
    graph = {}
    for here, (source, is_package) in sources.items():
        edges = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in sources)
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, here, is_package)
                for a in node.names:
                    sub = f"{module}.{a.name}"
                    if sub in sources:
                        edges.add(sub)  # from companion import sde
                    elif module in sources:
                        edges.add(module)  # from companion.sde import VP
        edges.discard(here)
        graph[here] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle that a depth-first search meets, each as a closed path [a, b, ..., a]."""
    found, state = [], {}

    def visit(u, stack):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u, [])
    return found


def test_the_cycle_check_has_power():
    """A loop closed by an import inside a function is found; a chain is not a loop."""
    sources = {
        "companion.a": ("from companion.b import f\n", False),
        "companion.b": ("def f():\n    from companion import a\n    return a\n", False),
        "companion.c": ("from companion import a, b\n", False),
    }
    assert import_cycles(import_graph(sources)) == [["companion.a", "companion.b", "companion.a"]]
    sources["companion.b"] = ("def f():\n    return 1\n", False)
    assert import_cycles(import_graph(sources)) == []


def test_the_companion_has_no_import_cycle():
    sources = {name: (path.read_text(encoding="utf-8"), path.name == "__init__.py") for name, path in MODULES.items()}
    cycles = import_cycles(import_graph(sources))
    assert not cycles, "import cycles among the companion's modules:\n" + "\n".join(" -> ".join(c) for c in cycles)
