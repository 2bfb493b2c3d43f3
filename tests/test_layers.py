"""The package's structure as docs/ARCHITECTURE.md draws it: layers with imports flowing one way, no cycle, no
import of our own modules hidden inside a function, short functions.

Parsed from the source with `ast`, so a new module must be given a layer here (and in the docs) to pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wisparse_export"

# Lower layers never import higher ones. The face (cli, the package's own __init__) may import anything.
LAYERS = {
    "contract": ("errors", "files", "plan", "scores", "identity", "quant"),
    "model access": ("models", "data", "random_models"),
    "sparse runtime": ("runtime", "kernels"),
    "method": ("calibration", "search", "fitness", "pipeline", "config", "evaluate"),
    "artifacts": ("export", "onnx_graph", "manifest", "ort", "check", "trt", "bench", "report", "checkpoint", "tasks"),
    "face": ("cli", "__main__", "__init__"),
}
RANK = {mod: i for i, mods in enumerate(LAYERS.values()) for mod in mods}
MAX_LINES = 60
LONG_OK: dict[str, str] = {}  # "module.function": why (mirrored in docs/ARCHITECTURE.md)


def modules() -> dict[str, Path]:
    """Dotted names under the package ('kernels.build' for kernels/build.py) -> file."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
        if parts[0] in ("plugins", "recipes"):  # sub-packages of data and CUDA sources, not library layers
            continue
        out[".".join(parts)] = f
    return out


def layer(name: str) -> int:
    top = name.split(".")[0]
    assert top in RANK, f"module {name} has no layer: add it to LAYERS here and to docs/ARCHITECTURE.md"
    return RANK[top]


def own_imports(name: str, tree: ast.AST, is_pkg: bool = False) -> list[tuple[str, ast.AST, bool]]:
    """(imported module or module.name, node, inside a function) for each import of our own package."""
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: list[tuple[str, ast.AST, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[: len(here) - child.level + 1]
                elif (child.module or "").split(".")[0] == "wisparse_export":
                    base = []
                else:
                    continue
                mod = (child.module or "").removeprefix("wisparse_export").lstrip(".")
                target = ".".join([*base, *filter(None, mod.split("."))])
                found.extend((".".join(filter(None, [target, a.name])), child, in_func) for a in child.names)
            visit(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, ast.AST, bool]]]:
    mods = modules()
    g = {}
    for name, f in mods.items():
        edges = own_imports(name, ast.parse(f.read_text()), f.name == "__init__.py")
        # "from .x import y": y is a module when x.y is one, else a name inside x
        edges = [(t if t in mods else t.rsplit(".", 1)[0], n, fn) for t, n, fn in edges]
        unique = {(t, n.lineno): (t, n, fn) for t, n, fn in edges if t in mods and t != name}
        g[name] = list(unique.values())
    return g


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_imports_flow_one_way():
    bad = [f"{name}:{node.lineno} imports {t} ({list(LAYERS)[layer(t)]}) from {list(LAYERS)[layer(name)]}"
           for name, edges in graph().items() for t, node, _ in edges
           if layer(name) < layer(t) and name.split(".")[0] not in ("cli", "__main__", "__init__")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    g = {n: sorted({t for t, _, _ in edges}) for n, edges in graph().items()}
    state: dict[str, int] = {}

    def walk(n: str, path: list[str]) -> None:
        state[n] = 1
        for t in g[n]:
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(t):], t]))
            if t not in state:
                walk(t, [*path, t])
        state[n] = 2

    for n in g:
        if n not in state:
            walk(n, [n])


def test_no_own_import_inside_a_function():
    bad = [f"{name}:{node.lineno} imports {t} inside a function" for name, edges in graph().items()
           for t, node, in_func in edges if in_func]
    assert not bad, "\n".join(bad)


def test_functions_are_short():
    long = []
    for name, f in modules().items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - start + 1
                if n > MAX_LINES and f"{name}.{node.name}" not in LONG_OK:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_the_checker_resolves_imports():
    """The parser itself: a function-level relative import is found and resolved (this test can fail)."""
    src = "from .errors import WisparseError\n\ndef f():\n    from .runtime import apply\n    return apply\n"
    found = own_imports("plan", ast.parse(src))
    assert [(t, fn) for t, _, fn in found] == [("errors.WisparseError", False), ("runtime.apply", True)]
    found = own_imports("kernels.ops", ast.parse("from . import build\nfrom ..scores import keep\n"))
    assert [t for t, _, _ in found] == ["kernels.build", "scores.keep"]
    found = own_imports("kernels", ast.parse("from .ops import run\nfrom wisparse_export.plan import Plan\n"), True)
    assert [t for t, _, _ in found] == ["kernels.ops.run", "plan.Plan"]
