"""A diffusers pipeline from the hub: only the files the pipeline loads, the fp16 variant when the repo has one.

`DiffusionPipeline.download` (diffusers/pipelines/pipeline_utils.py, `download`) fetches into the Hugging Face
cache exactly what `from_pretrained` will read: the component folders of model_index.json, one weight format,
the variant's files; never the root-level single-file checkpoints. The resolved folder copies that set.
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import pas.models.hub as hub

VARIANT = "fp16"  # half-precision weights: what a GPU loads anyway, about half the bytes


def pick_variant(files: list[str]) -> str | None:
    """`fp16` when the repo has fp16 weight files (diffusers' own test), else None (the full-precision files)."""
    from diffusers.pipelines.pipeline_loading_utils import variant_compatible_siblings

    try:
        _, variant_files = variant_compatible_siblings(files, variant=VARIANT)
    except ValueError:  # "no such modeling files are available"
        return None
    return VARIANT if variant_files else None


def loaded_files(snapshot: Path, variant: str | None) -> list[str]:
    """The files of a cached snapshot that `from_pretrained(variant=...)` reads.

    The same selection as `DiffusionPipeline.download` (diffusers 0.42 pipeline_utils.py, the allow/ignore patterns
    built from `_get_custom_components_and_folders`, `_get_ignore_patterns` and `variant_compatible_siblings`),
    applied to what the cache holds: a shared cache may also hold other files of the same commit.
    """
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.pipeline_loading_utils import (
        _get_custom_components_and_folders,
        _get_ignore_patterns,
        filter_model_files,
        variant_compatible_siblings,
    )
    from diffusers.utils import CONFIG_NAME
    from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME

    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    config: dict[str, Any] = json.loads((snapshot / DiffusionPipeline.config_name).read_text())
    config.pop("_ignore_files", None)
    _, folders = _get_custom_components_and_folders(str(snapshot), config, names, None, variant)
    model_folders = {os.path.split(f)[0] for f in filter_model_files(names) if os.path.split(f)[0] in folders}
    ignore = _get_ignore_patterns([], sorted(model_folders), names, True, False, None, False, False, variant)
    model_files, _ = variant_compatible_siblings(names, variant=variant, ignore_patterns=ignore)
    allow = [*model_files, *(f"{k}/*" for k in folders if k not in model_folders),
             *(f"{k}/config.json" for k in model_folders), SCHEDULER_CONFIG_NAME, CONFIG_NAME,
             DiffusionPipeline.config_name]
    ignore = ignore + [f"{i}.index.*json" for i in ignore]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in allow)
            and not any(fnmatch.fnmatch(n, p) for p in ignore)]


def fetch_pipeline(repo_id: str, sha: str, dest: Path) -> str | None:
    """Download pipeline `repo_id` at commit `sha` into the HF cache, copy what it loads into `dest`; the variant."""
    from diffusers import DiffusionPipeline

    variant = pick_variant(hub.repo_files(repo_id, sha))
    snapshot = Path(DiffusionPipeline.download(repo_id, revision=sha, variant=variant))
    hub.copy_files(snapshot, loaded_files(snapshot, variant), dest)
    return variant
