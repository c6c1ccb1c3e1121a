"""The control plane's imports form a DAG of layers: a module may import its own package or a
lower layer, never a higher one, and no chain of imports comes back to where it started.
Every import counts, including those inside functions (parsed with ast, nothing is imported)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: top-down; a layer may import only layers after it (and its own package)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("services.cli",),
    ("services.demo", "services.nightly", "services.api", "services.doctor"),
    ("services.run",),
    ("services.scheduler",),
    ("services.sweeps", "services.aggregator"),
    ("services.tracking",),
    ("services.store",),
    ("services.core",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The in-repo modules `path` imports (a `from pkg import name` counts pkg.name when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def _unit(module: str) -> str:
    """The package a module belongs to for layering (services.store.db → services.store)."""
    for layer in LAYERS:
        for unit in layer:
            if module == unit or module.startswith(unit + "."):
                return unit
    return module


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{unit} is in no layer of LAYERS; add it to the layer where it belongs.")


def _graph() -> dict[str, set[str]]:
    modules = _modules("services")
    known = set(modules) | set(_modules("workers"))
    return {name: _imports(path, known) for name, path in modules.items()}


def test_every_services_module_has_a_layer() -> None:
    for module in _graph():
        if module != "services":
            _layer(_unit(module))


def test_no_upward_or_sideways_imports() -> None:
    wrong = []
    for module, targets in _graph().items():
        if module == "services":
            continue
        unit = _unit(module)
        for target in targets:
            if not target.startswith("services"):
                continue
            other = _unit(target)
            if other != unit and _layer(other) <= _layer(unit):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers (move the shared code down, e.g. to services.core):\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {t for t in ts if t.startswith("services")} for m, ts in _graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A module importing a submodule of its own package (services.cli → services.cli.demo) is how
            # packages expose their parts; the cycle check is between modules, not package __init__s.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_workers_never_import_services() -> None:
    known = set(_modules("services")) | set(_modules("workers"))
    wrong = [f"{m} imports {t}" for m, p in _modules("workers").items() for t in _imports(p, known)
             if t.startswith("services")]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from services.cli import main\n")
    assert _imports(bad, {"services.cli"}) == {"services.cli"}
    assert _layer(_unit("services.store.db")) > _layer(_unit("services.cli"))
