"""Concept names: normalisation (case, punctuation, plurals) and near-synonym merging by embedding."""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pas.core.config import require
from pas.models.text_embed import EMBEDDERS, Encoder

log = logging.getLogger(__name__)

_KEEP_S = ("ss", "us", "is")  # glass, hummus, ibis: not plurals


def unsafe_name(text: str) -> str | None:
    """Why a proposed concept name cannot be a concept (control or bidi characters, a path separator, only dots),
    or None. Concept names become prompts, MLflow keys and folder names; these would corrupt or escape them."""
    text = str(text)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text):
        return "contains control or bidi formatting characters"
    if any(sep in text for sep in ("/", "\\")):
        return "contains a path separator (/ or \\)"
    if text.strip(" .") == "" and text.strip():
        return "is only dots"
    return None


def clean_name(text: str) -> str:
    """Display form of a name: NFKC, lower case, straight quotes, single spaces, no edge punctuation."""
    text = unicodedata.normalize("NFKC", str(text)).replace("\u2019", "'").replace("\u2018", "'")
    text = " ".join(text.replace("_", " ").split()).lower()
    return text.strip(" .,;:!?\"'`*-")


def _singular(word: str) -> str:
    """A stem shared by a word's singular and plural (cookie/cookies -> cooki, fry/fries -> fri)."""
    if len(word) > 3 and not word.endswith(_KEEP_S):
        if word.endswith(("ies", "ches", "shes", "xes", "zzes", "sses", "oes")):
            word = word[:-2]
        elif word.endswith("s"):
            word = word[:-1]
    if word.endswith("ie"):
        return word[:-1]
    return word[:-1] + "i" if word.endswith("y") and len(word) > 2 else word


def concept_key(name: str) -> str:
    """Identity of a name up to case, accents, punctuation, possessives and plurals.

    "French Fries", "french-fries" and "french fry" share a key; so do "Brewer's Blackbird"
    and "Brewer_Blackbird".
    """
    text = unicodedata.normalize("NFKD", clean_name(name))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"'s\b", "", text)
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    return " ".join(_singular(w) for w in words)


def _close(a: str, b: str) -> bool:
    """Tokens that name the same thing: equal, one abbreviates the other, or one edit apart."""
    if a.startswith(b) or b.startswith(a):
        return True
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 3:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def siblings(a: str, b: str) -> bool:
    """Whether two names are distinct members of one family, never to be merged by embedding.

    True when they share a word and each also has a word the other lacks ("eastern meadowlark" /
    "western meadowlark", "croque madame" / "croque monsieur"). Containment ("fries" /
    "french fries"), spelling variants ("pad thai" / "phad thai", "gray" / "grey") and names
    with no common word ("hamburger" / "burger") are left to the embedding threshold.
    """
    ta, tb = concept_key(a).split(), concept_key(b).split()
    if not set(ta) & set(tb):
        return False
    only_a = [t for t in ta if t not in tb]
    only_b = [t for t in tb if t not in ta]
    left_a = [t for t in only_a if not any(_close(t, u) for u in only_b)]
    left_b = [t for t in only_b if not any(_close(t, u) for u in only_a)]
    return bool(left_a) and bool(left_b)


@dataclass(frozen=True)
class Merge:
    """One name folded into another, and why."""

    kept: str
    merged: str
    reason: str  # "normalised" (same key) | "embedding" (cosine >= threshold)
    similarity: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON form for reports."""
        return {"kept": self.kept, "merged": self.merged, "reason": self.reason,
                "similarity": round(float(self.similarity), 4)}


@dataclass
class ConceptIndex:
    """The concepts kept so far; a new name either joins them or is merged into one of them.

    A name whose key (concept_key) is already present is merged ("normalised"). Otherwise its
    embedding is compared by cosine with every kept name's; at or above `threshold` it is merged
    into the nearest ("embedding"), unless the two are `siblings` and `keep_siblings` is set.
    Protected names (the curated bank) are merged only by key unless `within_bank` is set, and
    are embedded only once something needs comparing with them (so a bank-only run loads no model).
    """

    encode: Encoder
    threshold: float
    within_bank: bool = False
    keep_siblings: bool = True
    names: list[str] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    vectors: list[np.ndarray | None] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return concept_key(name) in self.keys

    def __len__(self) -> int:
        return len(self.names)

    @property
    def embedded(self) -> bool:
        """Whether every kept name has an embedding (the model has been used)."""
        return bool(self.vectors) and all(v is not None for v in self.vectors)

    def prepare(self, names: list[str], embed: bool = True) -> list[tuple[str, np.ndarray | None]]:
        """Clean names (dropping empty ones) and embed them in one batch when `embed`."""
        cleaned = [c for c in (clean_name(n) for n in names) if concept_key(c)]
        if not embed or not cleaned:
            return [(c, None) for c in cleaned]
        return list(zip(cleaned, self.encode(cleaned)))

    def match(self, name: str, vector: np.ndarray | None) -> Merge | None:
        """The merge that `name` would undergo, or None if it is new (compares by key, then embedding)."""
        key = concept_key(name)
        if key in self.keys:
            return Merge(self.names[self.keys[key]], name, "normalised")
        if vector is None or not self.names:
            return None
        self._embed_missing()
        sims = np.stack(self.vectors) @ vector
        for best in np.argsort(-sims):
            if sims[best] < self.threshold:
                break
            if not (self.keep_siblings and siblings(self.names[best], name)):
                return Merge(self.names[best], name, "embedding", float(sims[best]))
        return None

    def insert(self, name: str, vector: np.ndarray | None) -> None:
        """Keep a new name."""
        self.keys[concept_key(name)] = len(self.names)
        self.names.append(name)
        self.vectors.append(vector)
        self.aliases[name] = []

    def record(self, merge: Merge) -> None:
        """Remember a merged name as an alias of the kept one."""
        if merge.merged != merge.kept and merge.merged not in self.aliases[merge.kept]:
            self.aliases[merge.kept].append(merge.merged)
        log.info("merged %r into %r (%s, %.3f)", merge.merged, merge.kept, merge.reason, merge.similarity)

    def add(self, names: list[str], protected: bool = False) -> tuple[list[str], list[Merge]]:
        """Add names in order without any relevance check; return (names kept, merges)."""
        kept, merges = [], []
        for name, vector in self.prepare(names, embed=not protected or self.within_bank):
            merge = self.match(name, vector)
            if merge is None:
                self.insert(name, vector)
                kept.append(name)
            else:
                self.record(merge)
                merges.append(merge)
        return kept, merges

    def _embed_missing(self) -> None:
        missing = [i for i, v in enumerate(self.vectors) if v is None]
        if missing:
            for i, vector in zip(missing, self.encode([self.names[i] for i in missing])):
                self.vectors[i] = vector

    def near_duplicates(self) -> list[dict[str, Any]]:
        """Kept pairs at or above the threshold that were not merged (protected bank names, siblings)."""
        if len(self.names) < 2 or not self.embedded:
            return []
        matrix = np.stack(self.vectors)
        sims = np.triu(matrix @ matrix.T, k=1)
        rows, cols = np.nonzero(sims >= self.threshold)
        pairs = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: -sims[rc])
        return [{"a": self.names[r], "b": self.names[c], "similarity": round(float(sims[r, c]), 4),
                 "kept_because": "siblings" if siblings(self.names[r], self.names[c]) else "bank"} for r, c in pairs]


@dataclass(frozen=True)
class MergeConfig:
    """params.concepts.merge: how near-duplicate concept names are merged."""

    embedder: str = "minilm"  # a registered text embedder (pas.models.text_embed): minilm | wordllama
    threshold: float = 0.85  # cosine at or above which two names merge (minilm ~0.85, wordllama ~0.74)
    within_bank: bool = False  # also merge near-duplicates inside the curated bank
    keep_siblings: bool = True  # never merge "eastern X" / "western X"-style siblings

    def validate(self, prefix: str) -> None:
        """Check the embedder name and the threshold range."""
        require(self.embedder in EMBEDDERS, f"{prefix}.embedder", self.embedder,
                f"use one of {', '.join(sorted(EMBEDDERS))}")
        require(0.0 < self.threshold <= 1.0, f"{prefix}.threshold", self.threshold, "use a cosine in (0, 1]")
