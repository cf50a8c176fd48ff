"""The house by pipeline phase: src/pas folders are the DAG's rows over core/, imports only go down the DAG
(a phase imports core and the phases above it), and no module import circle exists, lazy imports included."""
import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"
# The rows of the DAG, ground first: a folder may import itself and the folders before it, never one after it.
PHASES = ["core", "data", "models", "concepts", "sources", "curation", "ssl", "transfer", "evaluate"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "pas").rglob("*.py"))}


def imports_of(path: Path, known: set[str], package: str | None = None) -> set[str]:
    """pas modules a file imports anywhere (function-level and TYPE_CHECKING imports included)."""
    found = set()
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "pas":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pas"}
    return {name for name in found if name in known}


def phase(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PHASES else None


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


def test_every_module_lives_in_a_phase_folder():
    loose = [m for m in GRAPH if m.count(".") == 1 and m != "pas.cli" and phase(m) is None]
    assert loose == [], f"modules outside the phase folders: {loose}"
    assert {p for p in (SRC / "pas").iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == {SRC / "pas" / name for name in PHASES}


@pytest.mark.parametrize("folder", PHASES)
def test_a_phase_imports_only_core_and_the_phases_above_it(folder):
    allowed = set(PHASES[: PHASES.index(folder) + 1])
    backward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if phase(m) == folder
                      for d in deps if phase(d) not in allowed)
    assert backward == [], f"imports from {folder}/ into a later phase (or outside the phases): {backward}"


def test_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if dep == node or dep == node.rpartition(".")[0]:
                continue  # a module importing its own package's __init__ is not a circle through code
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_layout_check_sees_a_planted_backward_import(tmp_path):
    planted = tmp_path / "pas" / "core" / "x.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from pas.evaluate.metrics import summarise\n")
    found = imports_of(planted, {"pas.evaluate.metrics"} | set(GRAPH), package="pas.core")
    assert "pas.evaluate.metrics" in found
