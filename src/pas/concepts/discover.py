"""Concept discovery with an LLM, as in PaS: generate, expand until enough or stalled, filter."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from pas.concepts.llm import CachedChat, Reply
from pas.concepts.llm_parse import ParseError, parse_names, parse_yes_no
from pas.concepts.merge import ConceptIndex, Merge, unsafe_name
from pas.core.config import require_fields

log = logging.getLogger(__name__)

RAW_KEPT = 4000  # characters of an unusable answer kept in the report (the full text is in the cache)


@dataclass(frozen=True)
class DiscoverConfig:
    """params.concepts.discover: how the LLM grows the concept bank."""

    use_bank: bool = True  # start from the domain's curated bank (false: the LLM alone, as in the paper)
    per_request: int = 50  # concepts asked for in each generate/expand request
    max_rounds: int = 5  # expansion rounds at most
    min_growth: int = 5  # stop once a round keeps fewer new concepts than this
    filter: bool = True  # ask a yes/no relevance question per new concept
    max_listed: int = 300  # known concepts shown in an expand prompt (a seeded sample beyond that)

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require_fields(self, prefix, ("per_request", "max_listed"), lambda v: v >= 1, "use a positive integer")
        require_fields(self, prefix, ("max_rounds", "min_growth"), lambda v: v >= 0, "use 0 or more")


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt template shipped in pas/prompts/<name>.txt."""

    name: str
    version: str
    text: str

    def render(self, **fields: Any) -> str:
        """The prompt with its {placeholders} filled."""
        return self.text.format(**fields)


def load_prompt(name: str) -> Prompt:
    """Read pas/prompts/<name>.txt; leading '#' lines are comments, '# version: N' names the version."""
    lines = (resources.files("pas.concepts") / "prompts" / f"{name}.txt").read_text().splitlines()
    version, start = "0", 0
    while start < len(lines) and lines[start].startswith("#"):
        found = re.match(r"#\s*version:\s*(\S+)", lines[start])
        version = found.group(1) if found else version
        start += 1
    return Prompt(name, version, "\n".join(lines[start:]).strip() + "\n")


@dataclass
class Step:
    """Counts for one discovery step."""

    requests: int = 0
    unparsed: int = 0
    proposed: int = 0
    merged: int = 0
    rejected: int = 0
    kept: int = 0


@dataclass
class Discovery:
    """One discovery run: a concept index grown by the LLM, and the report of what happened."""

    spec: dict[str, Any]
    chat: CachedChat | None
    index: ConceptIndex
    cfg: DiscoverConfig
    target: int  # concepts wanted (0: until growth stalls)
    seed: int
    found: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, Step] = field(default_factory=lambda: {"bank": Step(), "generate": Step(), "expand": Step()})
    judged: dict[str, int] = field(default_factory=lambda: {"asked": 0, "yes": 0, "no": 0, "unclear": 0})
    merges: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unparsed: list[dict[str, Any]] = field(default_factory=list)
    kept_per_round: list[int] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    stop_reason: str = ""

    def run(self, bank: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Kept concepts in order (bank first), each with name, source, step, round and bank fields."""
        by_name = {entry["name"]: entry for entry in reversed(bank)}  # the first entry of a name wins
        kept, merges = self.index.add([e["name"] for e in bank], protected=True)
        self._merged("bank", merges)
        self.steps["bank"].proposed, self.steps["bank"].kept = len(bank), len(kept)
        self.steps["bank"].merged = len(merges)
        self.found = [{**by_name.get(name, {}), "name": name, "source": "shipped", "step": "bank"} for name in kept]
        if self.chat is None:
            self.stop_reason = "no llm"
        elif self._enough():
            self.stop_reason = "count reached by the bank"
        else:
            self._discover()
        return self.found

    def _discover(self) -> None:
        examples = [f["name"] for f in self.found[:8]]
        hint = f" For example: {', '.join(examples)}." if examples else ""
        self._round("generate", 0, load_prompt("generate").render(n=self.cfg.per_request, examples=hint,
                                                                  **self._fields()))
        expand = load_prompt("expand")
        for round_ in range(1, self.cfg.max_rounds + 1):
            if self._enough():
                self.stop_reason = "count reached"
                return
            grown = self._round("expand", round_, expand.render(n=self.cfg.per_request, existing=self._listed(round_),
                                                                **self._fields()))
            if grown < self.cfg.min_growth:
                self.stop_reason = f"growth stalled ({grown} < min_growth {self.cfg.min_growth})"
                return
        self.stop_reason = "count reached" if self._enough() else f"max_rounds {self.cfg.max_rounds} done"

    def _fields(self) -> dict[str, str]:
        spec = self.spec
        return {"domain": spec["name"], "description": spec.get("description") or spec["name"],
                "hypernym": spec.get("default_hypernym") or spec["name"]}

    def _enough(self) -> bool:
        return bool(self.target) and len(self.found) >= self.target

    def _listed(self, round_: int) -> str:
        names = [f["name"] for f in self.found]
        if len(names) > self.cfg.max_listed:
            rng = np.random.default_rng([self.seed, round_])
            names = [names[i] for i in sorted(rng.choice(len(names), self.cfg.max_listed, replace=False))]
        return "\n".join(f"- {n}" for n in names)

    def _round(self, step: str, round_: int, prompt: str) -> int:
        """Ask once, parse, merge, filter; return how many new concepts were kept."""
        counts = self.steps[step]
        counts.requests += 1
        reply = self.chat.ask(prompt)
        try:
            names = parse_names(reply.text)
        except ParseError as err:
            counts.unparsed += 1
            self._unparsed(step, round_, reply, str(err))
            if step == "expand":
                self.kept_per_round.append(0)
            return 0
        counts.proposed += len(names)
        source = "generated" if step == "generate" else "expanded"
        before = len(self.found)
        for name in [n for n in names if unsafe_name(n)]:
            counts.rejected += 1
            self._reject(name, source, round_, f"name {unsafe_name(name)}")
        names = [n for n in names if not unsafe_name(n)]
        for name, vector in self.index.prepare(names):
            merge = self.index.match(name, vector)
            if merge is not None and merge.kept in self.refused:
                counts.rejected += 1
                self._reject(name, source, round_, f"same as rejected {merge.kept!r} ({merge.reason})")
                continue
            if merge is not None:
                self.index.record(merge)
                self._merged(step, [merge])
                counts.merged += 1
                continue
            verdict = self._judge(name, round_)
            if verdict is not None:
                counts.rejected += 1
                self._reject(name, source, round_, verdict)
                self.index.insert(name, vector)  # remembered, so a repeat is not asked again
                self.refused.add(name)
                continue
            self.index.insert(name, vector)
            self.found.append({"name": name, "source": source, "step": "filter" if self.cfg.filter else step,
                               "round": round_})
        counts.kept += len(self.found) - before
        if step == "expand":
            self.kept_per_round.append(len(self.found) - before)
        log.info("%s round %d: %d proposed, %d kept (total %d)", step, round_, len(names), len(self.found) - before,
                 len(self.found))
        return len(self.found) - before

    def _reject(self, name: str, source: str, round_: int, reason: str) -> None:
        self.rejected.append({"name": name, "source": source, "step": "filter", "round": round_, "reason": reason})

    def _judge(self, name: str, round_: int) -> str | None:
        """None if the concept is kept, else the reason it is rejected."""
        if not self.cfg.filter:
            return None
        self.judged["asked"] += 1
        reply = self.chat.ask(load_prompt("filter").render(concept=name, **self._fields()), temperature=0.0)
        try:
            keep, reason = parse_yes_no(reply.text)
        except ParseError as err:
            self.judged["unclear"] += 1
            self._unparsed("filter", round_, reply, f"{err} (judging {name!r})")
            return f"unclear judgement: {' '.join(reply.text.split())[:200]}"
        self.judged["yes" if keep else "no"] += 1
        return None if keep else f"llm said no: {reason}" if reason else "llm said no"

    def _merged(self, step: str, merges: list[Merge]) -> None:
        self.merges.extend({**m.as_dict(), "step": step} for m in merges)

    def _unparsed(self, step: str, round_: int, reply: Reply, why: str) -> None:
        log.warning("%s round %d: unusable answer (%s); raw text in the report and cache record %s", step, round_,
                    why, reply.key)
        self.unparsed.append({"step": step, "round": round_, "why": why, "cache_key": reply.key,
                              "raw": reply.text[:RAW_KEPT]})

    def report(self) -> dict[str, Any]:
        """Counts per step, merges, rejected concepts with reasons, unusable answers, why it stopped."""
        steps: dict[str, Any] = {name: vars(step).copy() for name, step in self.steps.items()}
        steps["expand"]["rounds"] = len(self.kept_per_round)
        steps["expand"]["kept_per_round"] = list(self.kept_per_round)
        steps["filter"] = dict(self.judged)
        return {"steps": steps, "stop_reason": self.stop_reason, "merges": self.merges, "rejected": self.rejected,
                "unparsed": self.unparsed,
                "prompt_versions": {n: load_prompt(n).version for n in ("generate", "expand", "filter", "captions")}}
