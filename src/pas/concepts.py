"""Domain spec -> concepts -> diversified prompts (data/concepts.json)."""
from __future__ import annotations

import itertools
import logging
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pas.config import ConfigError, require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConceptsConfig:
    """params.concepts: how many concepts to keep and how many prompts each gets."""

    count: int = 0  # 0 keeps the whole bank
    prompts_per_concept: int = 4
    spec: str = ""  # a YAML path overriding the shipped spec of `domain`

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.count >= 0, f"{prefix}.count", self.count, "use 0 (all) or a positive integer")
        require(self.prompts_per_concept >= 1, f"{prefix}.prompts_per_concept", self.prompts_per_concept,
                "use a positive integer")


def shipped_domains() -> list[str]:
    """Names of the domain specs that ship with pas."""
    folder = resources.files("pas") / "domains"
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
        text = (resources.files("pas") / "domains" / f"{domain}.yaml").read_text()
    spec = yaml.safe_load(text)
    for key in ("name", "concepts", "templates", "positive_prompts", "negative_prompts"):
        if not spec.get(key):
            raise ConfigError(f"domain spec {spec_path or domain!r} lacks the key {key!r}")
    return spec


def _concept_entries(spec: dict[str, Any]) -> list[dict[str, str]]:
    default_hypernym = spec.get("default_hypernym", spec["name"])
    entries, seen = [], set()
    for item in spec["concepts"]:
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = " ".join(str(entry["name"]).split()).lower()
        if name in seen:
            continue
        seen.add(name)
        entries.append({"name": name, "hypernym": entry.get("hypernym", default_hypernym)})
    return entries


def diversify(concept: dict[str, str], spec: dict[str, Any], count: int, seed: int) -> list[str]:
    """Return `count` distinct prompts for a concept: templates x contexts x styles, seeded."""
    contexts = spec.get("contexts") or [""]
    styles = spec.get("styles") or ["photograph"]
    combos = sorted({
        " ".join(t.format(concept=concept["name"], hypernym=concept["hypernym"], context=c, style=s).split())
        for t, c, s in itertools.product(spec["templates"], contexts, styles)
    })
    rng = np.random.default_rng([seed, zlib.crc32(concept["name"].encode())])
    order = rng.permutation(len(combos))
    # Cycle when more prompts are asked for than distinct combinations exist.
    return [combos[order[i % len(combos)]] for i in range(count)]


def build_concepts(domain: str, cfg: ConceptsConfig, seed: int) -> dict[str, Any]:
    """Build the concepts.json document for a domain."""
    spec = load_domain_spec(domain, cfg.spec)
    entries = _concept_entries(spec)
    if cfg.count:
        entries = entries[: cfg.count]
    concepts = [
        {
            "name": e["name"],
            "hypernym": e["hypernym"],
            "source": "shipped",
            "step": "bank",
            "prompts": diversify(e, spec, cfg.prompts_per_concept, seed),
            "negative_prompt": spec.get("negative_prompt", ""),
        }
        for e in entries
    ]
    log.info("domain %s: %d concepts x %d prompts", spec["name"], len(concepts), cfg.prompts_per_concept)
    return {
        "domain": spec["name"],
        "description": spec.get("description", ""),
        "positive_prompts": list(spec["positive_prompts"]),
        "negative_prompts": list(spec["negative_prompts"]),
        "concepts": concepts,
    }
