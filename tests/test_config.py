import pytest

from pas.core.config import ConfigError, build, parse_size
from pas.sources.generate import GenerateConfig


@pytest.mark.parametrize("value, expected", [
    (2000, 2000), ("2000", 2000), ("2_000", 2000), ("500k", 500_000), ("1.2M", 1_200_000), ("1k", 1000),
    ("3B", 3_000_000_000), (" 10K ", 10_000), ("2.01k", 2010), ("1.15M", 1_150_000), ("10B", 10_000_000_000),
])
def test_parse_size_accepts_documented_forms(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["abc", "", "1.5", "-3", 0, "12kb", True, "1.23456k"])
def test_parse_size_rejects_with_one_line_naming_key_and_forms(value):
    with pytest.raises(ConfigError) as err:
        parse_size(value)
    message = str(err.value)
    assert "\n" not in message and message.startswith("size=") and "500k" in message


def test_build_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match=r"unknown key generate\.stepz.*allowed keys"):
        build(GenerateConfig, {"stepz": 3}, "generate")
    with pytest.raises(ConfigError, match=r"generate\.steps='3' must be an integer"):
        build(GenerateConfig, {"steps": "3"}, "generate")
    with pytest.raises(ConfigError, match=r"generate\.resolution=60"):
        build(GenerateConfig, {"resolution": 60}, "generate")
    assert build(GenerateConfig, {"guidance": 1}, "generate").guidance == 1.0


def test_pas_num_threads_sets_torch_threads_and_rejects_junk(monkeypatch):
    import torch

    from pas.core.config import PasError
    from pas.core.runtime import DEFAULT_THREADS, configure_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("PAS_NUM_THREADS", "1")
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("PAS_NUM_THREADS", "two")
        with pytest.raises(PasError, match="PAS_NUM_THREADS='two'"):
            configure_threads()
        monkeypatch.delenv("PAS_NUM_THREADS")
        assert configure_threads() == DEFAULT_THREADS and torch.get_num_threads() == DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)


def test_unset_pas_num_threads_is_a_fixed_count_not_the_machine_s_cores(monkeypatch):
    """Byte-exact results need one thread count: a fresh clone on a 64-core machine must use the committed one."""
    import subprocess
    import sys

    from pas.core.runtime import DEFAULT_THREADS

    monkeypatch.delenv("PAS_NUM_THREADS", raising=False)
    probe = ("import os, sys, torch; torch.set_num_threads(7); from pas.core.runtime import configure_threads, "
             "pick_device; configure_threads(); pick_device(); print(torch.get_num_threads())")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() \
        == str(DEFAULT_THREADS)
    lazy = "import sys; from pas.core.runtime import configure_threads; configure_threads(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"                                     # a stage without a model still never imports torch


def test_require_fields_names_the_first_field_that_fails():
    from types import SimpleNamespace

    from pas.core.config import require_fields

    section = SimpleNamespace(a=3, b=0, c=-1)
    require_fields(section, "x", ("a",), lambda v: v >= 1, "use an integer >= 1")
    with pytest.raises(ConfigError, match=r"^x\.b=0 is not allowed; use an integer >= 1$"):
        require_fields(section, "x", ("a", "b", "c"), lambda v: v >= 1, "use an integer >= 1")


@pytest.mark.parametrize("value", [1e12, "20B", 10_000_000_001])
def test_parse_size_refuses_sizes_beyond_the_bound_in_one_line(value):
    with pytest.raises(ConfigError, match=r"^size=.* is more than 10,000,000,000 images; use a size of at most 10B$"):
        parse_size(value)


def test_top_level_parses_every_key_once_with_one_line_errors():
    from pas.core.config import top_level

    top = top_level({"size": "1.2M", "seed": 3, "domain": "food", "oversample": 1, "mix": {"generated": 1,
                                                                                             "retrieved": 3}})
    assert (top.size, top.seed, top.domain, top.oversample) == (1_200_000, 3, "food", 1.0)
    assert top.mix.real_share == 0.75 and isinstance(top.oversample, float)
    assert top_level({}) == top_level({"size": 300, "seed": 0, "domain": "animals"})          # defaults
    for params, message in [({"seed": -1}, r"^seed=-1 is not allowed; use an integer >= 0$"),
                            ({"oversample": 0.99}, r"^oversample=0.99 is not allowed; use a number >= 1.0 \(candidates "
                                                   r"per final image\)$"),
                            ({"domain": "  "}, r"^domain='  ' is not allowed; name a shipped domain \(animals, food, "
                                               r"birds\)$"),
                            ({"mix": {"generated": 0, "retrieved": 0}}, r"^mix=\(0.0, 0.0\) .*do not both equal 0"),
                            ({"mix": {"generated": -0.1, "retrieved": 1}}, r"^mix=\(-0.1, 1.0\) .*non-negative"),
                            ({"mix": [0.5, 0.5]}, r"^mix=\[0.5, 0.5\] must be a mapping")]:
        with pytest.raises(ConfigError, match=message):
            top_level(params)
    assert top_level({"oversample": 1.0, "mix": {"generated": 0, "retrieved": 1}}).mix.real_share == 1.0   # bounds
    assert top_level({"seed": 0, "mix": {"generated": 1, "retrieved": 0}}).mix.real_share == 0.0


def test_mix_real_share_is_the_normalised_retrieved_share():
    from pas.core.config import MixConfig

    assert MixConfig().real_share == 0.5
    assert MixConfig(generated=3, retrieved=1).real_share == 0.25
    assert MixConfig(generated=0.0, retrieved=2.0).real_share == 1.0
