"""What can confound a PaS-vs-baseline gain, checked from the run's own records.

- Architecture: a gain between inits of different architectures mixes architecture with data
  (`mixed_architectures`); evaluate refuses it unless evaluate.allow_mixed_arch marks it.
- Concepts: when the shipped concept bank already names a downstream set's classes, the dataset was
  built with oracle concepts, not the paper's autonomous LLM discovery (`concept_overlap`).
- Exemplars: when the images the filter's exemplar rule (filter.exemplars) curates toward are copies of downstream
  images, the dataset was selected with the evaluation data in hand; the filter stage checks this where it reads
  them (pas.curation.exemplar_filter.exemplar_copies: metrics/filter.json `oracle_exemplars`, MLflow tag
  `pas.exemplars`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pas.core.config import ConfigError

ORACLE_SOURCE = "shipped"   # concepts.json source of the curated bank (LLM ones: generated, expanded)
_SEPARATORS = re.compile(r"[\s_\-/]+")


def normalise_name(name: str) -> str:
    """Compare-ready class or concept name: lower case, `_ - /` and runs of spaces as one space."""
    return _SEPARATORS.sub(" ", name.strip().lower()).strip()


def mixed_architectures(arches: dict[str, str], reference: str) -> dict[str, dict[str, str]]:
    """Baselines whose architecture differs from the reference init's: {baseline: {reference, baseline}}."""
    return {name: {"reference": arches[reference], "baseline": arch}
            for name, arch in arches.items() if name != reference and _base(arch) != _base(arches[reference])}


def _base(arch: str) -> str:
    """timm architecture without its pretrained tag (resnet50.a1_in1k -> resnet50)."""
    return arch.split(".")[0]


def check_architectures(arches: dict[str, str], reference: str, allow_mixed: bool) -> dict[str, dict[str, str]]:
    """The mixed-architecture baselines; a ConfigError when there are some and they are not allowed."""
    mixed = mixed_architectures(arches, reference)
    if mixed and not allow_mixed:
        pairs = "; ".join(f"{reference} is {m['reference']}, {name} is {m['baseline']}" for name, m in mixed.items())
        raise ConfigError(f"a gain across architectures mixes architecture with data ({pairs}); give the compared "
                          f"inits one architecture in finetune.inits (pretrain.backbone = the baseline's arch), or "
                          f"set evaluate.allow_mixed_arch: true to report it marked as confounded")
    return mixed


def concept_overlap(concepts: Iterable[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """How many downstream classes a concept (name or alias) names, by the concept's source; `oracle` when a
    shipped-bank concept names one."""
    by_name: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        for name in [concept["name"], *concept.get("aliases", [])]:
            by_name.setdefault(normalise_name(name), concept)
    matched = {cls: by_name[normalise_name(cls)] for cls in class_names if normalise_name(cls) in by_name}
    sources: dict[str, int] = {}
    for concept in matched.values():
        sources[concept.get("source", "unknown")] = sources.get(concept.get("source", "unknown"), 0) + 1
    return {"classes": len(class_names), "named": len(matched),
            "share": len(matched) / len(class_names) if class_names else 0.0,
            "by_source": sources, "oracle": sources.get(ORACLE_SOURCE, 0) > 0,
            "examples": sorted(matched)[:10]}
