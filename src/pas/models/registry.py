"""Model registry: resolve each model named in params to a pinned local directory.

A name is `tiny://<kind>` (small random model built from a config), a generator preset
(sdxl-turbo, sd-turbo, ... see pas.models.presets), an existing local directory, or a hub id (`org/name[@revision]`
for diffusers; `hf-hub:org/name[@revision]` or `ARCH/pretrained-tag` for open_clip). Hub files come through the
Hugging Face cache (pas.models.hub: HF_ENDPOINT, HF_HUB_OFFLINE); ImageNet baselines of finetune.inits
(`weights: timm`) are fetched here too (pas.models.baselines). Later stages load only the local directories.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pas.core.config import ConfigError, DataError
from pas.models.presets import PRESETS, recommended
from pas.models.tiny import TINY_BUILDERS

log = logging.getLogger(__name__)

ROLES = ("generator", "clip")
ENTRY_FILE = "pas-model.json"  # each resolved folder describes itself (name, source, revision, hash)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ModelsConfig:
    """params.models: the text-to-image generator and the CLIP model."""

    generator: str = "tiny://sd"
    clip: str = "tiny://clip"


def model_files(folder: Path) -> list[Path]:
    """The model's own files under `folder`: no hidden path (a tool's cache or metadata), not the entry file."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ENTRY_FILE
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def content_hash(folder: Path) -> str:
    """sha256 over every model file's relative path and bytes, in sorted order (hidden paths excluded)."""
    digest = hashlib.sha256()
    for path in model_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _tiny(role: str, name: str, dest: Path) -> dict[str, Any]:
    kind = name[len("tiny://"):]
    builders = TINY_BUILDERS[role]
    if kind not in builders:
        raise ConfigError(f"models.{role}={name!r}: unknown tiny model; use one of "
                          + ", ".join(f"tiny://{k}" for k in builders))
    builders[kind](dest)
    return {"source": "tiny", "revision": "config"}


def _local(role: str, name: str, dest: Path) -> dict[str, Any]:
    src = Path(name)
    marker = {"generator": "model_index.json", "clip": "open_clip_config.json"}[role]
    if not (src / marker).is_file():
        raise ConfigError(f"models.{role}={name!r}: directory lacks {marker}; "
                          f"point it at a saved {'diffusers pipeline' if role == 'generator' else 'open_clip model'}")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*"))  # no tool metadata (.cache/huggingface, ...)
    return {"source": "local", "revision": "content"}


def scheme_of(role: str, name: str) -> str:
    """Classify a model name: tiny, local or hub; fail at once on anything else."""
    if name.startswith("tiny://"):
        return "tiny"
    if role == "generator" and name in PRESETS:
        return "hub"
    if Path(name).is_dir():
        return "local"
    hub_like = _HUB_ID.match(name) or (role == "clip" and name.startswith("hf-hub:"))
    if hub_like and not Path(name).is_absolute() and not name.startswith("."):
        if role == "clip" and not name.startswith("hf-hub:"):
            _check_open_clip_tag(name)
        return "hub"
    presets = f"a preset ({', '.join(PRESETS)}), " if role == "generator" else ""
    raise ConfigError(f"models.{role}={name!r} is not tiny://..., {presets}an existing local directory, or a hub id "
                      "(org/name for diffusers; ARCH/TAG or hf-hub:org/name for open_clip)")


def _check_open_clip_tag(name: str) -> None:
    import open_clip

    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise ConfigError(f"models.clip={name!r}: unknown open_clip architecture {arch!r}; "
                          "use ARCH/TAG (e.g. ViT-L-14/laion2b_s32b_b82k), hf-hub:org/name, a local dir or tiny://clip")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ConfigError(f"models.clip={name!r}: unknown pretrained tag {tag!r} for {arch}; use one of {', '.join(tags)}")


Resolver = Callable[[str, str, Path], dict[str, Any]]
RESOLVERS: dict[str, Resolver] = {"tiny": _tiny, "local": _local}


def resolve(role: str, name: str, dest: Path, fetch_hub: Resolver | None = None) -> dict[str, Any]:
    """Materialise model `name` for `role` into `dest` and return its lock entry.

    Hub names need `fetch_hub(role, name, dest)` (pas.models.fetch.fetch_hub, the models stage's network side).
    """
    scheme = scheme_of(role, name)
    resolver = fetch_hub if scheme == "hub" else RESOLVERS[scheme]
    if resolver is None:
        raise ConfigError(f"models.{role}={name!r} is a hub model: the models stage fetches it (dvc repro models)")
    if dest.exists():
        shutil.rmtree(dest)
    log.info("resolving models.%s = %s", role, name)
    entry = {"name": name, **resolver(role, name, dest)}
    if role == "generator":
        entry["recommended"] = recommended(name)
    return pin_entry(entry, dest)


def pin_entry(entry: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Add the folder's content hash to its lock entry and write the entry into the folder."""
    entry["sha256"] = content_hash(dest)
    (dest / ENTRY_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return entry


def read_entry(folder: str | Path) -> dict[str, Any]:
    """The lock entry a resolved model folder carries; a clear error if the folder is not one."""
    path = Path(folder) / ENTRY_FILE
    if not path.is_file():
        raise DataError(f"{folder} is not a resolved model folder (no {ENTRY_FILE}); run `dvc repro models`")
    return json.loads(path.read_text())


def check_names(cfg: ModelsConfig) -> None:
    """Validate every model name before any work is done."""
    for role in ROLES:
        scheme_of(role, getattr(cfg, role))
