"""Prompt diversification per concept: templates x contexts x styles x viewpoints, seeded; LLM captions."""
from __future__ import annotations

import itertools
import logging
import string
import zlib
from typing import Any

import numpy as np

from pas.concepts.discover import load_prompt
from pas.concepts.llm import CachedChat
from pas.concepts.llm_parse import ParseError, parse_captions
from pas.core.config import ConfigError

log = logging.getLogger(__name__)

AXES = {"context": "contexts", "style": "styles", "viewpoint": "viewpoints"}  # placeholder -> spec list
CONCEPT_FIELDS = ("concept", "a_concept", "hypernym", "a_hypernym", "definition")


def with_article(noun: str) -> str:
    """'an' or 'a' before a noun phrase ("an american crow", "a european goldfinch")."""
    lowered = noun.lower()
    vowel = lowered[:1] in set("aeiou") and not lowered.startswith(("eu", "uni", "use", "one", "ewe"))
    return f"{'an' if vowel or lowered.startswith(('hour', 'honest')) else 'a'} {noun}"


def _values(concept: dict[str, Any]) -> dict[str, str]:
    values = {"concept": concept["name"], "a_concept": with_article(concept["name"]),
              "hypernym": concept["hypernym"], "a_hypernym": with_article(concept["hypernym"])}
    if concept.get("definition"):
        values["definition"] = str(concept["definition"])
    return values


def template_prompts(concept: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Every distinct prompt the spec's templates give for a concept, sorted.

    A template is expanded over the axes it names ({context}, {style}, {viewpoint}); one naming a
    field the concept lacks (e.g. {definition}) is skipped for that concept.
    """
    values = _values(concept)
    prompts: set[str] = set()
    for template in spec["templates"]:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        if any(f in CONCEPT_FIELDS and f not in values for f in fields):
            continue
        axes = sorted(f for f in fields if f in AXES)
        choices = [spec.get(AXES[a]) or [""] for a in axes]
        for combo in itertools.product(*choices):
            text = template.format(**values, **dict(zip(axes, combo)))
            prompts.add(" ".join(text.split()).strip(" ,"))
    return sorted(prompts)


def diversify(concept: dict[str, Any], spec: dict[str, Any], count: int, seed: int) -> list[str]:
    """Return `count` prompts for a concept: distinct template combinations in a seeded order."""
    combos = template_prompts(concept, spec)
    if not combos and count:
        raise ConfigError(f"no template of domain spec {spec['name']!r} applies to {concept['name']!r}; "
                          "add one that uses only {concept}/{hypernym} and the axes")
    rng = np.random.default_rng([seed, zlib.crc32(concept["name"].encode())])
    order = rng.permutation(len(combos))
    # Cycle when more prompts are asked for than distinct combinations exist.
    return [combos[order[i % len(combos)]] for i in range(count)]


def llm_captions(chat: CachedChat, concept: dict[str, Any], spec: dict[str, Any], count: int) -> list[str]:
    """Up to `count` distinct LLM-written captions for a concept (cached; [] when the answer is unusable)."""
    prompt = load_prompt("captions").render(
        n=count, concept=concept["name"], hypernym=concept["hypernym"], domain=spec["name"],
        description=spec.get("description") or spec["name"])
    reply = chat.ask(prompt)
    try:
        captions = parse_captions(reply.text)
    except ParseError as err:
        log.warning("captions for %r unusable (%s); cache record %s", concept["name"], err, reply.key)
        return []
    return list(dict.fromkeys(captions))[:count]
