"""Domain spec -> concepts (bank, LLM discovery, merging) -> diversified prompts (data/concepts.json)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pas.concepts.discover import DiscoverConfig, Discovery
from pas.concepts.diversify import diversify, llm_captions
from pas.concepts.llm import LLMConfig, create_chat
from pas.concepts.merge import ConceptIndex, MergeConfig, clean_name, concept_key, unsafe_name
from pas.core.config import ConfigError, build, require
from pas.models.text_embed import lazy_embedder

log = logging.getLogger(__name__)

__all__ = ["ConceptsConfig", "build_concepts", "concept_metrics", "diversify", "load_domain_spec", "shipped_domains"]

_SECTIONS = {"llm": LLMConfig, "discover": DiscoverConfig, "merge": MergeConfig}


@dataclass(frozen=True)
class ConceptsConfig:
    """params.concepts: where concepts come from, how they are merged and how many prompts each gets."""

    count: int = 0  # 0 keeps every concept found (the whole bank without an LLM)
    prompts_per_concept: int = 4
    spec: str = ""  # a YAML path overriding the shipped spec of `domain`
    captions: int = 0  # LLM-written captions per concept, counted in prompts_per_concept
    llm: LLMConfig = field(default_factory=LLMConfig)  # a mapping, or just the back end name: `llm: none`
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if name == "llm" and isinstance(value, str):
                value = {"backend": value}
            if isinstance(value, dict):
                object.__setattr__(self, name, build(cls, value, f"concepts.{name}"))
            elif not isinstance(value, cls):
                raise ConfigError(f"concepts.{name}={value!r} must be a mapping of {cls.__name__} keys")

    def validate(self, prefix: str) -> None:
        """Check ranges and that captions have an LLM to write them."""
        require(self.count >= 0, f"{prefix}.count", self.count, "use 0 (all) or a positive integer")
        require(self.prompts_per_concept >= 1, f"{prefix}.prompts_per_concept", self.prompts_per_concept,
                "use a positive integer")
        require(0 <= self.captions <= self.prompts_per_concept, f"{prefix}.captions", self.captions,
                f"use 0..prompts_per_concept ({self.prompts_per_concept})")
        require(self.captions == 0 or self.llm.backend != "none", f"{prefix}.captions", self.captions,
                f"captions need an LLM: set {prefix}.llm.backend, or use 0")


def shipped_domains() -> list[str]:
    """Names of the domain specs that ship with pas."""
    folder = resources.files("pas.concepts") / "domains"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_domain_spec(domain: str, spec_path: str = "") -> dict[str, Any]:
    """Load a domain spec by shipped name, or from an explicit YAML path."""
    if spec_path:
        path = Path(spec_path)
        if not path.is_file():
            raise ConfigError(f"concepts.spec={spec_path!r}: file not found; give a domain YAML path or ''")
        text = path.read_text()
    else:
        if domain not in shipped_domains():
            raise ConfigError(
                f"domain={domain!r} has no shipped spec; use one of {', '.join(shipped_domains())} "
                "or set concepts.spec to a YAML file"
            )
        text = (resources.files("pas.concepts") / "domains" / f"{domain}.yaml").read_text()
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise ConfigError(f"domain spec {spec_path or domain!r} must be a YAML mapping")
    for key in ("name", "templates", "positive_prompts", "negative_prompts"):
        if not spec.get(key):
            raise ConfigError(f"domain spec {spec_path or domain!r} lacks the key {key!r}")
    return spec


def bank_entries(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's curated concepts, cleaned, first of each key kept, with hypernym and optional fields."""
    default_hypernym = spec.get("default_hypernym", spec["name"])
    entries, seen = [], set()
    for i, item in enumerate(spec.get("concepts") or []):
        raw = {"name": item} if isinstance(item, str) else item
        if not isinstance(raw, dict) or not str(raw.get("name", "")).strip():
            raise ConfigError(f"domain spec {spec['name']!r}: concepts[{i}]={item!r} needs a name "
                              "(a string, or a mapping with name and optional hypernym/label/definition/negative)")
        if reason := unsafe_name(raw["name"]):
            raise ConfigError(f"domain spec {spec['name']!r}: concepts[{i}] name {raw['name']!r} {reason}; "
                              "rename it (concept names become prompts, folder names and MLflow keys)")
        name = clean_name(raw["name"])
        if not concept_key(name) or concept_key(name) in seen:
            continue
        seen.add(concept_key(name))
        entry = {"name": name, "hypernym": raw.get("hypernym", default_hypernym)}
        entry.update({k: raw[k] for k in ("label", "definition", "negative") if raw.get(k)})
        entries.append(entry)
    return entries


def _concept_record(found: dict[str, Any], spec: dict[str, Any], aliases: list[str]) -> dict[str, Any]:
    record = {"name": found["name"], "hypernym": found.get("hypernym") or spec.get("default_hypernym", spec["name"]),
              "source": found["source"], "step": found["step"], "aliases": aliases}
    record.update({k: found[k] for k in ("label", "definition", "round") if k in found})
    negatives = [spec.get("negative_prompt", ""), found.get("negative", "")]
    record["negative_prompt"] = ", ".join(n for n in negatives if n)
    return record


def build_concepts(domain: str, cfg: ConceptsConfig, seed: int,
                   cache_dir: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the concepts.json document for a domain, and the discovery report.

    Without an LLM (`concepts.llm.backend: none`) the curated bank is the concept list. With one,
    the bank (if `discover.use_bank`) is grown by generate/expand/filter; every name passes
    normalisation and embedding-based merging. LLM answers are cached under `cache_dir`.
    """
    spec = load_domain_spec(domain, cfg.spec)
    chat = create_chat(cfg.llm, cache_dir, seed)
    bank = bank_entries(spec) if chat is None or cfg.discover.use_bank else []
    if chat is None and not bank:
        raise ConfigError(f"domain spec {cfg.spec or domain!r} has no concepts; add a `concepts:` list or set "
                          "concepts.llm.backend to an LLM")
    index = ConceptIndex(lazy_embedder(cfg.merge.embedder), cfg.merge.threshold, cfg.merge.within_bank,
                         cfg.merge.keep_siblings)
    discovery = Discovery(spec, chat, index, cfg.discover, cfg.count, seed)
    found = discovery.run(bank)
    if cfg.count:
        found = found[: cfg.count]
    concepts, unusable = [], 0
    for item in found:
        record = _concept_record(item, spec, index.aliases.get(item["name"], []))
        captions = []
        if cfg.captions and chat is not None:
            captions = llm_captions(chat, record, spec, cfg.captions)
            unusable += not captions
        templated = diversify(record, spec, cfg.prompts_per_concept - len(captions), seed)
        record["prompts"] = captions + templated
        record["prompt_sources"] = ["llm captions"] * len(captions) + ["templates"] * len(templated)
        concepts.append(record)
    report = discovery.report()
    names = {c["name"] for c in concepts}
    report["near_duplicates_kept"] = [p for p in index.near_duplicates() if {p["a"], p["b"]} <= names]
    report["captions"] = {"per_concept": cfg.captions, "unusable": unusable}
    report["llm"] = {"backend": cfg.llm.backend, "model": cfg.llm.model,
                     "requests": 0 if chat is None else chat.requests, "cache_hits": 0 if chat is None else chat.hits}
    report["sources"] = {"total": len(concepts), **{s: sum(c["source"] == s for c in concepts)
                                                      for s in ("shipped", "generated", "expanded")}}
    log.info("domain %s: %d concepts x %d prompts (%s)", spec["name"], len(concepts), cfg.prompts_per_concept,
             discovery.stop_reason)
    document = {
        "domain": spec["name"],
        "description": spec.get("description", ""),
        "positive_prompts": list(spec["positive_prompts"]),
        "negative_prompts": list(spec["negative_prompts"]),
        "concepts": concepts,
    }
    return document, report


REPORT_LISTS = ("merges", "rejected", "unparsed", "near_duplicates_kept")


def concept_metrics(document: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """metrics/concepts.json: counts at the top (MLflow logs the numbers), the report's lists under `details`."""
    return {"concepts": len(document["concepts"]), "prompts": sum(len(c["prompts"]) for c in document["concepts"]),
            **{f"{name}_count": len(report[name]) for name in REPORT_LISTS},
            **{k: v for k, v in report.items() if k not in REPORT_LISTS},
            "details": {k: report[k] for k in REPORT_LISTS}}
