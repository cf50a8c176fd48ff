"""recipes/: the official settings as files, applied whole by one param or as -S flags; every value cites a source."""
from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from conftest import REPO

from pas.core.config import ConfigError, build, load_params
from pas.core.recipes import available, main, recipe_flags, with_recipe
from pas.ssl import METHODS, method_args
from pas.ssl.pretrain import PretrainConfig
from pas.transfer.config import finetune_config

RECIPES = REPO / "recipes"
PRETRAIN_RECIPES = ("dino_vits16", "all4one_resnet18_cifar", "all4one_resnet18_imagenet100")
FINETUNE_RECIPES = ("resnet50_finetune_224", "vits16_finetune_224")


def test_the_paper_recipes_exist_and_build():
    assert set(available(RECIPES)) == {*PRETRAIN_RECIPES, *FINETUNE_RECIPES}
    params = load_params(REPO / "params.yaml")
    for name in PRETRAIN_RECIPES:
        cfg = build(PretrainConfig, with_recipe({**params, "pretrain": {**params["pretrain"], "recipe": name}},
                                                "pretrain", RECIPES), "pretrain")
        recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())["pretrain"]
        assert cfg.method == recipe["method"] and cfg.backbone == recipe["backbone"]
        # the method's block lists every Args field, so no offline value of params.yaml survives underneath
        block = recipe["method_args"][cfg.method]
        assert set(block) == {f.name for f in dataclasses.fields(METHODS[cfg.method].Args)}
        assert dataclasses.asdict(cfg.args()) == dataclasses.asdict(method_args(cfg.method, block, "r"))
    for name in FINETUNE_RECIPES:
        cfg = finetune_config(with_recipe({"finetune": {**params["finetune"], "recipe": name}}, "finetune", RECIPES))
        assert cfg.image_size == 224 and cfg.full.augmentation(cfg.image_size) == "random_resized_crop"
        assert cfg.full.max_train_images == 0     # a replaced block keeps no offline value


def test_dino_recipe_is_the_vanilla_main_dino_defaults():
    params = load_params(REPO / "params.yaml")
    cfg = build(PretrainConfig, with_recipe({"pretrain": {**params["pretrain"], "recipe": "dino_vits16"}}, "pretrain",
                                            RECIPES), "pretrain")
    args = cfg.args()
    assert (cfg.backbone, cfg.image_size, cfg.lr, cfg.lr_scaling, cfg.weight_decay, cfg.weight_decay_end) == \
           ("vit_small_patch16_224", 224, 0.0005, "linear", 0.04, 0.4)
    assert (args.teacher_temp, args.warmup_teacher_temp, args.warmup_teacher_temp_epochs) == (0.04, 0.04, 0)
    assert (args.grad_clip, args.drop_path_rate, args.out_dim, args.local_crops, args.local_crop_size) == \
           (3.0, 0.1, 65536, 8, 96)
    assert cfg.effective_lr(1024) == pytest.approx(0.002)      # 0.0005 x 1024 / 256


def test_every_recipe_value_cites_its_source():
    for path in RECIPES.glob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#") and any("Apply with" in line for line in lines), path.name
        for line in lines:
            value = re.match(r"^\s+(- )?[a-z_]+: \S", line)       # a value (scalar, list or inline mapping)
            assert not value or "# " in line, f"{path.name}: {line!r} cites no source"


def test_a_recipe_wins_and_replaces_only_its_methods_block():
    params = {"pretrain": {"recipe": "dino_vits16", "epochs": 2, "batch_size": 32,
                           "method_args": {"dino": {"out_dim": 64, "local_crop_size": 16}, "simclr": {"proj_dim": 8}}}}
    section = with_recipe(params, "pretrain", RECIPES)
    assert section["epochs"] == 100 and section["batch_size"] == 64
    assert section["method_args"]["simclr"] == {"proj_dim": 8}               # another method's block is kept
    assert section["method_args"]["dino"]["out_dim"] == 65536                  # the recipe's block, whole
    assert with_recipe({"pretrain": {"recipe": "", "epochs": 2}}, "pretrain", RECIPES) == {"recipe": "", "epochs": 2}


def test_bad_recipes_are_named_with_what_exists():
    with pytest.raises(ConfigError, match=r"pretrain.recipe='dino' is not a recipe; use '' \(none\) or one of "
                                          r"all4one_resnet18_cifar, .*dino_vits16"):
        with_recipe({"pretrain": {"recipe": "dino"}}, "pretrain", RECIPES)
    with pytest.raises(ConfigError, match=r"finetune.recipe='dino_vits16': .* has no finetune block \(it holds: "
                                          r"pretrain\); use it as pretrain.recipe"):
        with_recipe({"finetune": {"recipe": "dino_vits16"}}, "finetune", RECIPES)


def test_the_flags_are_the_same_recipe(capsys, tmp_path):
    """`pas recipe NAME` prints -S flags; applied by DVC's own override parser to params.yaml they give the config
    the recipe key gives."""
    from dvc.utils.hydra import apply_overrides

    params = load_params(REPO / "params.yaml")
    for name in (*PRETRAIN_RECIPES, *FINETUNE_RECIPES):
        target = tmp_path / f"{name}.yaml"
        target.write_text((REPO / "params.yaml").read_text())
        apply_overrides(target, [flag.removeprefix("-S '").removesuffix("'") for flag in recipe_flags(name, RECIPES)])
        flagged = load_params(target)
        section = "pretrain" if name in PRETRAIN_RECIPES else "finetune"
        recipe = with_recipe({section: {**params[section], "recipe": name}}, section, RECIPES)
        if section == "pretrain":
            assert dataclasses.replace(build(PretrainConfig, flagged["pretrain"], "pretrain"), recipe=name) == \
                   build(PretrainConfig, recipe, "pretrain"), name
        else:
            assert dataclasses.replace(finetune_config(flagged["finetune"]), recipe=name) == \
                   finetune_config(recipe), name
    assert main(["dino_vits16", "--root", str(RECIPES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run \\\n  -S '++pretrain.method=dino'")
    assert "-S '++pretrain.method_args.dino.grad_clip=3.0'" in out
    assert main(["nope", "--root", str(RECIPES)]) == 2
    assert "recipe 'nope' not found; recipes: all4one_resnet18_cifar" in capsys.readouterr().err
    for argv in (["--root", "/nonexistent"], ["dino_vits16", "--root", "/nonexistent"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == ("pas recipe: error: no recipes folder /nonexistent; run pas recipe in the "
                                           "repository, or pass --root FOLDER\n")


def test_a_recipe_says_which_params_it_replaces(caplog):
    with caplog.at_level("WARNING"):
        with_recipe({"pretrain": {"recipe": "dino_vits16", "epochs": 2, "method": "dino"}}, "pretrain", RECIPES)
    assert "pretrain.recipe=dino_vits16 replaces params.yaml's pretrain.epochs; to change one, use `pas recipe " \
           "dino_vits16` flags instead" in caplog.text
