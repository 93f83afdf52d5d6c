"""The package's dependencies point one way (docs/ARCHITECTURE.md): a module imports only its own layer
and the layers below it. Every import statement counts, the lazy ones inside functions too (they run
as soon as the function does); only ``if TYPE_CHECKING:`` blocks are skipped. A new top-level module or
package must be given a layer here, which is the point: where it sits is a decision."""
# relayout: skip (this file names the packages of the new layout; the relayout tool must not rewrite it)
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "mmzoo"

# Lowest first. A module belongs to the layer of the longest prefix listed; every subsystem's ``cli``
# and ``demo_step`` modules belong to "commands" wherever they live (they drive the whole stack).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mmzoo", "mmzoo.errors", "mmzoo.forking", "mmzoo.quiet")),
    ("io", ("mmzoo.io",)),
    ("archs", ("mmzoo.archs",)),
    ("checkpoint spec", ("mmzoo.checkpoint",)),
    ("upcycle", ("mmzoo.upcycle",)),
    ("converters", ("mmzoo.converters",)),
    ("inspection", ("mmzoo.inspection",)),
    ("models", ("mmzoo.models",)),
    ("api", ("mmzoo.api",)),
    ("data", ("mmzoo.preprocess", "mmzoo.plot")),
    ("generate, train, analysis", ("mmzoo.generate", "mmzoo.train", "mmzoo.analysis")),
    ("hub", ("mmzoo.hub",)),
    ("commands", ("mmzoo.cli", "mmzoo.__main__", "mmzoo.console", "mmzoo.demo")),
]
COMMAND_LEAVES = {"cli", "demo_step"}


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    if module.rsplit(".", 1)[-1] in COMMAND_LEAVES:
        return len(LAYERS) - 1
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, modules: set[str], root: Path = PACKAGE_ROOT) -> list[tuple[str, int]]:
    """(imported mmzoo module, line) for every import statement of the file at ``path``."""
    here = module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []

    def resolve(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((resolve(alias.name), node.lineno) for alias in node.names if alias.name.split(".")[0] == "mmzoo")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".") if is_package else here.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "mmzoo":
                for alias in node.names:  # `from mmzoo.converters import registry` imports the module mmzoo.converters.registry
                    full = f"{target}.{alias.name}"
                    found.append((full if full in modules else resolve(target), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    unplaced = [m for m in all_modules() if layer_of(m) is None]
    assert not unplaced, f"give these modules a layer in tests/test_layering.py LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
    modules = all_modules()
    upward = []
    for module, path in modules.items():
        mine = layer_of(module)
        for imported, line in imports(path, set(modules)):
            theirs = layer_of(imported)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                              f"{imported} ({LAYERS[theirs][0]})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    """Within a layer too, modules do not import each other round in a circle (lazy imports included): a cycle
    means two modules are one concern split in two, or a shared piece wants a module of its own."""
    modules = all_modules()
    graph = {m: {i for i, _ in imports(p, set(modules)) if i != m} for m, p in modules.items()}
    assert not import_cycles(graph), f"import cycles: {import_cycles(graph)}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("source, expected", [
    ("from ..converters.pipeline import convert\n", "mmzoo.converters.pipeline"),
    ("def f():\n    from ..models.load import load_model\n", "mmzoo.models.load"),
    ("import mmzoo.hub\n", "mmzoo.hub"),
    ("from mmzoo import api\n", "mmzoo.api"),
])
def test_the_guard_sees_upward_imports(tmp_path, source, expected):
    """The checker itself: a lazy or absolute import from the lowest layer is found and reported as upward."""
    fake_root = tmp_path / "mmzoo"
    (fake_root / "io").mkdir(parents=True)
    probe = fake_root / "io" / "probe.py"
    probe.write_text(source)
    modules = {"mmzoo", "mmzoo.io", "mmzoo.io.probe", "mmzoo.converters.pipeline", "mmzoo.models.load", "mmzoo.hub", "mmzoo.api"}
    found = [m for m, _ in imports(probe, modules, fake_root)]
    assert found == [expected]
    assert layer_of(expected) > layer_of("mmzoo.io.probe")


def test_type_checking_imports_are_not_edges(tmp_path):
    fake_root = tmp_path / "mmzoo"
    fake_root.mkdir()
    probe = fake_root / "__init__.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .api import convert\n")
    assert imports(probe, {"mmzoo", "mmzoo.api"}, fake_root) == []
