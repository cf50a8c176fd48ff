"""Published training recipes as files: `recipes/<name>.yaml` holds a params section (pretrain, finetune) whose
values override params.yaml's when that section's `recipe` key names the file.

    section = with_recipe(params, "pretrain")      # params["pretrain"] with recipes/<pretrain.recipe>.yaml applied
    recipe_flags("dino_vits16")                    # the same recipe as `dvc exp run -S` flags

A recipe's values win over params.yaml's (that is what applying a recipe means); a `method_args.<method>` block
replaces that method's block whole, so no offline value survives underneath a recipe. To change one recipe
value, run its flags (`pas recipe NAME`) with that flag edited instead of the recipe key.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pas.core.config import ConfigError

log = logging.getLogger(__name__)

RECIPES_DIR = Path("recipes")
SECTIONS = ("pretrain", "finetune")


def available(root: Path = RECIPES_DIR) -> list[str]:
    """Names of the recipe files under `root`."""
    return sorted(p.stem for p in Path(root).glob("*.yaml"))


def load_recipe(name: str, section: str, root: Path = RECIPES_DIR) -> dict[str, Any]:
    """The `section` block of recipes/<name>.yaml; a ConfigError names the key and the recipes there are."""
    path = Path(root) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{section}.recipe={name!r} is not a recipe; use '' (none) or one of "
                          f"{', '.join(available(root)) or '(none found)'} (files in {root}/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    block = data.get(section) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        holds = ", ".join(k for k in data if k in SECTIONS) if isinstance(data, dict) else ""
        raise ConfigError(f"{section}.recipe={name!r}: {path} has no {section} block "
                          f"(it holds: {holds or 'nothing'}); use it as {holds.split(',')[0] or 'a section'}.recipe")
    if "recipe" in block:
        raise ConfigError(f"{path}: a recipe cannot name another recipe ({section}.recipe)")
    return block


def apply_recipe(values: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """`values` with the recipe's keys put over them; method_args blocks replace the method's block whole."""
    out = dict(values)
    for key, value in recipe.items():
        if key == "method_args" and isinstance(value, dict):
            out[key] = {**dict(values.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def with_recipe(params: dict[str, Any], section: str, root: Path = RECIPES_DIR) -> dict[str, Any]:
    """params[section] with the recipe it names (section.recipe) applied; unchanged when it names none."""
    values = dict(params.get(section) or {})
    name = values.get("recipe") or ""
    if not name:
        return values
    if not isinstance(name, str):
        raise ConfigError(f"{section}.recipe={name!r} must be a recipe name (a file of {root}/ without .yaml)")
    recipe = load_recipe(name, section, root)
    replaced = sorted(k for k, v in recipe.items() if k in values and values[k] != v and k != "method_args")
    if replaced:
        log.warning("%s.recipe=%s replaces params.yaml's %s; to change one, use `pas recipe %s` flags instead",
                    section, name, ", ".join(f"{section}.{k}" for k in replaced), name)
    return apply_recipe(values, recipe)


def _leaves(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for key, inner in value.items() for leaf in _leaves(f"{prefix}.{key}", inner)]
    return [(prefix, value)]


def _yaml_value(value: Any) -> str:
    """A value in the override syntax `dvc exp run -S` parses (Hydra): flow-style lists and mappings, floats
    without exponent (1e-05 would stay a string)."""
    if isinstance(value, float) and "e" in repr(value):
        import numpy as np

        return np.format_float_positional(value, trim="-")
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return value if isinstance(value, str) else json.dumps(value)


def recipe_flags(name: str, root: Path = RECIPES_DIR) -> list[str]:
    """The recipe as `-S ++key=value` flags of `dvc exp run` (`++`: add the key when params.yaml lacks it)."""
    path = Path(root) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe {name!r} not found; recipes: {', '.join(available(root)) or '(none)'}")
    data = yaml.safe_load(path.read_text()) or {}
    flags = []
    for section in SECTIONS:
        for key, value in _leaves(section, data.get(section) or {}):
            flags.append(f"-S '++{key}={_yaml_value(value)}'")
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """`pas recipe [NAME]`: list the recipes, or print one as dvc exp run flags."""
    from pas.core.stage import command_parser

    parser = command_parser("recipe", "List the recipes of recipes/, or print one as `dvc exp run -S` flags (apply a "
                                      "recipe whole with pretrain.recipe / finetune.recipe).")
    parser.add_argument("name", nargs="?", help="a recipe name (a file of recipes/ without .yaml)")
    parser.add_argument("--root", default=str(RECIPES_DIR), help="the recipes folder")
    args = parser.parse_args(argv)
    try:
        if not Path(args.root).is_dir():
            raise ConfigError(f"no recipes folder {Path(args.root).absolute()}; run pas recipe in the repository, "
                              "or pass --root FOLDER")
        if args.name:
            print("dvc exp run \\\n  " + " \\\n  ".join(recipe_flags(args.name, Path(args.root))))
            return 0
    except ConfigError as err:
        print(f"pas recipe: error: {err}", file=sys.stderr)
        return 2
    for name in available(Path(args.root)):
        data = yaml.safe_load((Path(args.root) / f"{name}.yaml").read_text()) or {}
        print(f"{name:<28} {', '.join(f'{s}.recipe' for s in SECTIONS if s in data)}")
    return 0
