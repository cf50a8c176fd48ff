"""dvc.yaml, params.yaml and the stage scripts agree: one name per stage, declared keys = read keys,
and every pas module a stage runs is one of its deps (so editing it reruns exactly the stages using it)."""
import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
PATHS = DVC["vars"][0]["paths"]
STAGES = DVC["stages"]
# The ground every stage stands on (src/pas/core: params loading and checks, one-line errors, MLflow, machine
# settings, shard I/O, hashing): a dep of none, so editing it reruns nothing (DESIGN.md "Layout").
PLUMBING_DIR = "src/pas/core/"


def is_plumbing(path: str) -> bool:
    """Files exempt from stage deps: the core/ ground and the package's own __init__."""
    return path.startswith(PLUMBING_DIR) or path == "src/pas/__init__.py"


def render(text: str) -> str:
    def value(match):
        head, _, leaf = match.group(1).partition(".")
        return str(PATHS[leaf] if head == "paths" else PARAMS[head][leaf] if leaf else PARAMS[head])
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def stage_module(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dag_has_every_pas_step():
    assert {"models", "concepts", "generate", "pool_index", "retrieve", "embed", "filter", "dedup",
            "pretrain", "finetune", "evaluate"} <= set(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_script_declares_exactly_the_params_of_dvc_yaml(name):
    stage = STAGES[name]
    assert stage["cmd"].startswith(f"python stages/{name}.py")
    assert set(stage_module(name).KEYS) == set(stage.get("params", []))
    for key in stage.get("params", []):
        head, _, leaf = key.partition(".")
        assert head in PARAMS and (not leaf or leaf in PARAMS[head]), key


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_path_in_the_command_is_a_declared_dep_or_out(name):
    stage = STAGES[name]
    declared = set()
    for entry in stage.get("deps", []) + stage.get("outs", []) + stage.get("plots", []) + stage.get("metrics", []):
        declared.add(render(next(iter(entry)) if isinstance(entry, dict) else entry))
    args = render(stage["cmd"]).split()[2:]
    paths = [a for i, a in enumerate(args) if not a.startswith("--") and args[i - 1] != "--size"]
    assert paths and set(paths) <= declared, set(paths) - declared
    metrics_file = "metrics/eval.json" if name == "evaluate" else f"metrics/{name}.json"
    assert metrics_file in declared


def test_every_params_section_is_read_by_some_stage():
    read = {k.partition(".")[0] for s in STAGES.values() for k in s.get("params", [])}
    assert set(PARAMS) - read == set()


def _module_file(name: str) -> Path | None:
    path = REPO / "src" / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _pas_imports(path: Path) -> set[str]:
    """pas modules imported anywhere in a file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pas":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pas"}
    return found


def pas_files_run_by(script: Path) -> set[str]:
    """Repository-relative files of every pas module the script imports, transitively (not through PLUMBING)."""
    files, todo = set(), [script]
    while todo:
        for name in _pas_imports(todo.pop()):
            path = _module_file(name)
            if path is not None and path not in files:
                files.add(path)
                if not is_plumbing(str(path.relative_to(REPO))):
                    todo.append(path)
    return {str(path.relative_to(REPO)) for path in files}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_pas_module_a_stage_runs_is_a_dep(name):
    deps = [render(d) for d in STAGES[name].get("deps", []) if isinstance(d, str)]
    covered = {f for f in pas_files_run_by(REPO / "stages" / f"{name}.py")
               if any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    missing = {f for f in pas_files_run_by(REPO / "stages" / f"{name}.py") - covered if not is_plumbing(f)}
    assert not missing, f"add to the deps of stage {name}: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_that_reads_size_has_it_in_its_command(name):
    """DVC's run-cache key drops `size` params (treeverse/dvc#10296); the cmd is in the key, so size goes there."""
    reads_size = "size" in STAGES[name].get("params", [])
    assert ("--size ${size}" in STAGES[name]["cmd"]) == reads_size
