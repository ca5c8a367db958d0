"""`speaker_app` imports one way: no module imports, directly or through others, a module that imports it.

The graph is read from the source with `ast`, so nothing is imported. Every import counts, wherever it
stands: at the top, inside a function (a lazy import still closes a circle as soon as it runs) or
under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "speaker_app"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of `modules` that the module `name` imports, by any form of import statement."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from . import x` and `from pkg import x` import module pkg.x when there is one, else a name of pkg
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import speaker_app.model.x` imports speaker_app.model
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package: Path = ROOT / PACKAGE) -> dict[str, set[str]]:
    """Each module of the package (and its subpackages) -> the package's modules it imports."""
    paths = sorted(package.rglob("*.py"))
    names = {path: module_name(path, package.parent) for path in paths}
    modules = set(names.values())
    return {names[path]: imported(ast.parse(path.read_text(), str(path)), names[path], path.name == "__init__.py",
                                  modules)
            for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path being followed, "done" once all below it are
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_speaker_app_has_no_import_cycles():
    graph = import_graph()
    assert {"speaker_app.model", "speaker_app.checkpoint", "speaker_app.recognizer"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("source, cycle", [
    # the two circles this test was written against: the registry's lazy import, and load_checkpoint's
    ({"model": "def build():\n    from .ecapa import Ecapa\n", "ecapa": "from .model import Base\n"},
     ["pkg.ecapa", "pkg.model", "pkg.ecapa"]),
    ({"a": "from pkg import b\n", "b": "import pkg.c\n", "c": "from . import a\n"},
     ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
    ({"a": "from .b import x\n", "b": "import os\nfrom pkg.c import y\n", "c": "x = 1\n"}, None),
])
def test_the_cycle_finder_reads_every_form_of_import(tmp_path, source, cycle):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in source.items():
        (package / f"{name}.py").write_text(text)
    assert find_cycle(import_graph(package)) == cycle
