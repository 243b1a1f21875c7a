"""The package's layers, read from its import statements (ast, no import executed).

core imports no other steerlab package; the method packages (sae, explain, steer, control, circuits) import only
core, models and themselves, and never the world or the task suites; evals is the only place a method meets a task
suite; no module imports itself back through a cycle.
"""

import ast
from collections import defaultdict
from pathlib import Path

import steerlab

ROOT = Path(steerlab.__file__).parent
METHODS = ("sae", "explain", "steer", "control", "circuits")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = [x for x in rel.parts if x != "__init__"]
        out[".".join(["steerlab", *parts])] = p
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """steerlab modules that module ``name`` imports (anywhere in it, lazily imported ones included)."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t != "steerlab":
                found.add(t)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_core_imports_no_other_steerlab_package():
    bad = [(m, t) for m in MODULES if _layer(m) == "core" for t in _imports(m) if _layer(t) != "core"]
    assert not bad, f"core must stand alone: {bad}"


def test_method_packages_import_only_core_models_and_themselves():
    bad = [(m, t) for m in MODULES if _layer(m) in METHODS for t in _imports(m)
           if _layer(t) not in ("core", "models", _layer(m))]
    assert not bad, f"method packages depend on core and models only: {bad}"


def test_no_method_package_imports_the_world_or_the_task_suites():
    bad = [(m, t) for m in MODULES if _layer(m) in ("core", *METHODS) for t in _imports(m)
           if _layer(t) in ("world", "tasks")]
    assert not bad, bad


def test_the_package_has_no_import_cycle():
    graph = defaultdict(set)
    for m in MODULES:
        for t in _imports(m):
            if MODULES[t].name != "__init__.py" and not t.startswith(m + "."):
                graph[m].add(t)
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in graph[u]:
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                visit(v)
        stack.pop()
        state[u] = 2

    for m in MODULES:
        if not state.get(m):
            visit(m)
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_the_parser_sees_real_imports():
    """The checks above are only as good as the parser: it must find the edges we know exist."""
    assert "steerlab.core.activations" in _imports("steerlab.sae.io")
    assert "steerlab.world" in _imports("steerlab.tasks.tinyworld")
    assert len(MODULES) > 30
