"""Model registry: resolve each model named in params to a pinned local directory.

A name is `tiny://<kind>` (small random model built from a config), a generator preset
(sdxl-turbo, sd-turbo, ... see pas.models.presets), an existing local directory, or a hub id (`org/name[@revision]` for diffusers; `hf-hub:org/name` or
`ARCH/pretrained-tag` for open_clip). Later stages load only the local directories.
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


def content_hash(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ENTRY_FILE):
        digest.update(str(path.relative_to(folder)).encode())
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
    shutil.copytree(src, dest)
    return {"source": "local", "revision": "content"}


def _hub_generator(role: str, name: str, dest: Path, said: str | None = None) -> dict[str, Any]:
    """Download a diffusers pipeline pinned to its commit; errors name the model as params said it (`said`)."""
    from huggingface_hub import HfApi, snapshot_download

    repo_id, _, revision = name.partition("@")
    try:
        sha = HfApi().model_info(repo_id, revision=revision or None).sha
        snapshot_download(repo_id, revision=sha, local_dir=dest,
                          allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"])
    except Exception as err:  # network, auth, missing repo: one clear line
        shown = f"{said!r} ({name})" if said else repr(name)
        raise ConfigError(f"models.{role}={shown}: could not download from the Hugging Face hub "
                          f"({type(err).__name__}); check the id and network, or use a local dir or tiny://sd") from err
    return {"source": "hub", "revision": sha}


def _preset(role: str, name: str, dest: Path) -> dict[str, Any]:
    return {**_hub_generator(role, PRESETS[name].hub_id, dest, said=name), "hub_id": PRESETS[name].hub_id}


def _open_clip(role: str, name: str, dest: Path) -> dict[str, Any]:
    import open_clip

    if name.startswith("hf-hub:"):
        from huggingface_hub import HfApi, snapshot_download

        repo_id = name[len("hf-hub:"):]
        try:
            sha = HfApi().model_info(repo_id).sha
            snapshot_download(repo_id, revision=sha, local_dir=dest)
        except Exception as err:
            raise ConfigError(f"models.clip={name!r}: could not download ({type(err).__name__}); "
                              "check the id and network, or use a local dir or tiny://clip") from err
        return {"source": "hub", "revision": sha}
    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise ConfigError(f"models.clip={name!r}: unknown open_clip architecture {arch!r}; "
                          "use ARCH/TAG (e.g. ViT-L-14/laion2b_s32b_b82k), hf-hub:org/name, a local dir or tiny://clip")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ConfigError(f"models.clip={name!r}: unknown pretrained tag {tag!r} for {arch}; use one of {', '.join(tags)}")
    try:
        model = open_clip.create_model(arch, pretrained=tag)
    except Exception as err:
        raise ConfigError(f"models.clip={name!r}: could not load the weights ({type(err).__name__}); "
                          "check the network, or use a local dir or tiny://clip") from err
    _save_open_clip(model, arch, tag, dest)
    return {"source": "open_clip", "revision": tag}


def _save_open_clip(model: Any, arch: str, tag: str, dest: Path) -> None:
    import json

    import open_clip
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config(arch)
    pretrained = open_clip.get_pretrained_cfg(arch, tag)
    preprocess = {k: pretrained[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pretrained}
    dest.mkdir(parents=True)
    (dest / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / "open_clip_model.safetensors"))


def scheme_of(role: str, name: str) -> str:
    """Classify a model name: tiny, local or hub; fail at once on anything else."""
    if name.startswith("tiny://"):
        return "tiny"
    if role == "generator" and name in PRESETS:
        return "preset"
    if Path(name).is_dir():
        return "local"
    hub_like = _HUB_ID.match(name) or (role == "clip" and name.startswith("hf-hub:"))
    if hub_like and not Path(name).is_absolute() and not name.startswith("."):
        return "hub"
    presets = f"a preset ({', '.join(PRESETS)}), " if role == "generator" else ""
    raise ConfigError(f"models.{role}={name!r} is not tiny://..., {presets}an existing local directory, or a hub id "
                      "(org/name for diffusers; ARCH/TAG or hf-hub:org/name for open_clip)")


RESOLVERS: dict[tuple[str, str], Callable[[str, str, Path], dict[str, Any]]] = {
    ("generator", "tiny"): _tiny,
    ("clip", "tiny"): _tiny,
    ("generator", "local"): _local,
    ("clip", "local"): _local,
    ("generator", "hub"): _hub_generator,
    ("generator", "preset"): _preset,
    ("clip", "hub"): _open_clip,
}


def resolve(role: str, name: str, dest: Path) -> dict[str, Any]:
    """Materialise model `name` for `role` into `dest` and return its lock entry."""
    resolver = RESOLVERS[(role, scheme_of(role, name))]
    if dest.exists():
        shutil.rmtree(dest)
    log.info("resolving models.%s = %s", role, name)
    entry = {"name": name, **resolver(role, name, dest)}
    if role == "generator":
        entry["recommended"] = recommended(name)
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
