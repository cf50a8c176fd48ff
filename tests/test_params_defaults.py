"""One source of defaults: every params.yaml value equals its config dataclass default (so a stage run with a
section left out behaves like the shipped params), and the top-level params parse once with one-line errors."""
import dataclasses

import pytest
import yaml
from conftest import REPO

from pas.concepts.build import ConceptsConfig
from pas.core.config import SECTIONS, TOP_LEVEL_KEYS, ConfigError, MixConfig, TopLevel, check_keys, top_level
from pas.curation.dedup import DedupConfig
from pas.curation.filter import FilterConfig
from pas.curation.report import ReportConfig
from pas.data.sample_data import SampleDataConfig
from pas.evaluate.metrics import EvaluateConfig
from pas.models.registry import ModelsConfig
from pas.sources.generate import GenerateConfig
from pas.sources.pool_index import PoolIndexConfig
from pas.sources.retrieve import RetrieveConfig
from pas.ssl.pretrain import PretrainConfig
from pas.transfer.config import FinetuneConfig

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CONFIGS = {"models": ModelsConfig, "sample_data": SampleDataConfig, "concepts": ConceptsConfig,
           "generate": GenerateConfig, "pool_index": PoolIndexConfig, "retrieve": RetrieveConfig,
           "filter": FilterConfig, "dedup": DedupConfig, "report": ReportConfig, "pretrain": PretrainConfig,
           "finetune": FinetuneConfig, "evaluate": EvaluateConfig}
# pretrain.method_args are deltas by design: each method's Args defaults are its official recipe (cited in its
# module), and params.yaml shrinks them for the offline CPU default, as dinov2's experiment configs do.
DELTAS = {"pretrain.method_args"}


def plain(value):
    """Dataclasses, tuples and numbers in the form yaml.safe_load gives."""
    if dataclasses.is_dataclass(value):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def drift(cls, data, prefix):
    """(key, params value, dataclass default) for every params.yaml leaf whose default differs."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = []
    for key, value in data.items():
        name = f"{prefix}.{key}"
        if name in DELTAS:
            continue
        assert key in fields, f"params.yaml has {name}, which {cls.__name__} does not know"
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            found += drift(type(default), value, name)
        elif plain(default) != plain(value):
            found.append((name, value, plain(default)))
    return found


def test_every_section_has_its_config_and_params_has_only_known_keys():
    assert set(CONFIGS) == set(SECTIONS)
    assert set(PARAMS) == set(SECTIONS) | set(TOP_LEVEL_KEYS)


@pytest.mark.parametrize("section", sorted(CONFIGS))
def test_params_yaml_equals_the_dataclass_defaults(section):
    assert drift(CONFIGS[section], PARAMS[section], section) == []


def test_top_level_params_equal_the_defaults():
    assert top_level(PARAMS) == TopLevel()


def test_the_drift_check_sees_a_changed_default():
    changed = {**PARAMS["generate"], "batch_size": PARAMS["generate"]["batch_size"] + 1}
    assert drift(GenerateConfig, changed, "generate") == [("generate.batch_size", changed["batch_size"],
                                                            float(PARAMS["generate"]["batch_size"]))]


@pytest.mark.parametrize("params, message", [
    ({"seed": "abc"}, r"^seed='abc' must be an integer$"),
    ({"seed": -1}, r"^seed=-1 is not allowed; use an integer >= 0$"),
    ({"size": "abc"}, r"^size='abc' is not a size"),
    ({"oversample": 0.5}, r"^oversample=0\.5 is not allowed; use a number >= 1\.0"),
    ({"mix": 0.5}, r"^mix=0\.5 must be a mapping"),
    ({"mix": {"generated": -1, "retrieved": 1}}, r"^mix=\(-1\.0, 1\.0\) is not allowed"),
    ({"domain": 3}, r"^domain=3 must be a string$"),
])
def test_bad_top_level_params_give_one_line_naming_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        top_level(params)


def test_top_level_parses_sizes_once():
    top = top_level({"size": "2.01k", "seed": 3, "mix": {"generated": 1, "retrieved": 0}})
    assert (top.size, top.seed, top.mix, top.oversample) == (2010, 3, MixConfig(1.0, 0.0), TopLevel().oversample)


def test_a_misspelt_top_level_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown top-level key 'sise' in params\.yaml \(did you mean size\?\)"):
        check_keys({"sise": 5000, "size": 300})


def test_params_yaml_is_in_dvcs_own_form_so_a_set_changes_only_its_lines(tmp_path):
    """`dvc exp run -S` re-dumps params.yaml (block lists, '' for empty strings, no null): shipped in that form, an
    experiment's params diff is the lines it set, and every comment survives."""
    import difflib

    from dvc.utils.hydra import apply_overrides

    original = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(original)
    apply_overrides(str(path), ["size=300"])                              # the value it already has
    assert path.read_text() == original
    apply_overrides(str(path), ["size=1k", "finetune.protocols=[linear]", "pretrain.method_args.swav.hidden_mlp=256"])
    changed = [line for line in difflib.unified_diff(original.splitlines(), path.read_text().splitlines(), n=0,
                                                      lineterm="") if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-size: 300            # images in the curated dataset: 300, 2_000, 500k, 1.2M",
                       "+size: 1k             # images in the curated dataset: 300, 2_000, 500k, 1.2M",
                       "-      hidden_mlp: 512", "+      hidden_mlp: 256", "-  - knn", "-  - fewshot", "-  - full"]
