"""The torch-free copies that config checks and `pas plan` read agree with the code that runs: protocol and weight
source names, each SSL method's Args, and the locked timm's architecture list."""
import timm
from timm.models._registry import _model_entrypoints

from pas.models import timm_archs
from pas.ssl import METHODS, get_method, method_args
from pas.ssl.args import METHOD_ARGS
from pas.transfer import config, inits, protocols


def test_protocol_and_weight_source_names_are_the_registries_keys():
    assert config.PROTOCOL_NAMES == tuple(protocols.PROTOCOLS)
    assert config.WEIGHT_SOURCE_NAMES == tuple(inits.WEIGHT_SOURCES)


def test_every_method_builds_the_args_class_it_runs_with():
    assert set(METHOD_ARGS) == set(METHODS)
    for name in METHODS:
        assert METHOD_ARGS[name] is get_method(name).Args
        assert type(method_args(name, None, f"pretrain.method_args.{name}")) is get_method(name).Args


def test_the_shipped_timm_list_is_the_installed_timms(tmp_path):
    listed_version, archs = timm_archs._listed(timm_archs.ARCHS_FILE)
    assert listed_version == timm.__version__, "refresh it: python -m pas.models.timm_archs (scripts/lock.sh does)"
    assert archs == frozenset(_model_entrypoints)


def test_an_arch_is_answered_from_the_list_or_by_timm_when_versions_differ(tmp_path):
    assert timm_archs.is_timm_arch("resnet18.a1_in1k") and not timm_archs.is_timm_arch("resnet_nope")
    stale = tmp_path / "archs.txt"
    stale.write_text("# timm 0.0.1\nresnet_only_here\n")     # another timm wrote it: timm itself answers
    assert timm_archs.is_timm_arch("resnet18", stale) and not timm_archs.is_timm_arch("resnet_only_here", stale)
    same = tmp_path / "same.txt"
    same.write_text(f"# timm {timm.__version__}\nresnet_only_here\n")
    assert timm_archs.is_timm_arch("resnet_only_here.tag", same) and not timm_archs.is_timm_arch("resnet18", same)
    timm_archs.write_archs(written := tmp_path / "written.txt")
    assert written.read_text().splitlines()[0] == f"# timm {timm.__version__}"
    assert timm_archs.is_timm_arch("vit_small_patch16_224", written)


def test_only_stablerep_trains_on_prompt_groups_and_its_group_is_images_per_prompt():
    grouped = {name: method_args(name, None, "x").group_views for name in METHODS}
    assert grouped == {**{name: None for name in METHODS}, "stablerep": 6}
    assert method_args("stablerep", {"images_per_prompt": 3}, "x").group_views == 3
