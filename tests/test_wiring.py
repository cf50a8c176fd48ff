"""dvc.yaml, params.yaml and the stage scripts agree: one name per stage, declared keys = read keys."""
import importlib.util
import re

import pytest
import yaml

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
PATHS = DVC["vars"][0]["paths"]
STAGES = DVC["stages"]


def render(text: str) -> str:
    def value(match):
        head, _, leaf = match.group(1).partition(".")
        return str(PATHS[leaf] if head == "paths" else PARAMS[head][leaf])
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
    paths = [a for a in args if not a.startswith("--")]
    assert paths and set(paths) <= declared, set(paths) - declared
    metrics_file = "metrics/eval.json" if name == "evaluate" else f"metrics/{name}.json"
    assert metrics_file in declared


def test_every_params_section_is_read_by_some_stage():
    read = {k.partition(".")[0] for s in STAGES.values() for k in s.get("params", [])}
    assert set(PARAMS) - read == set()
