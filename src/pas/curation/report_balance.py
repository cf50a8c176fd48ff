"""The dataset report's balance section: the groups balancing evened out (clusters, or concepts) and their sizes
before and after it."""
from __future__ import annotations

import html
from collections import Counter
from typing import Any

import numpy as np


def group_counts(decisions: list[dict[str, Any]]) -> tuple[str, dict[str, int], dict[str, int]]:
    """The groups balancing evened out (the balancer's clusters, or concepts when it had none) and their sizes
    before balancing (the survivors: curated + trimmed) and after (curated)."""
    survivors = [d for d in decisions if d["status"] in ("curated", "trimmed")]
    kind = "cluster" if any(d.get("cluster", -1) >= 0 for d in survivors) else "concept"
    label = (lambda d: str(d["cluster"])) if kind == "cluster" else (lambda d: d["concept"])
    before = Counter(label(d) for d in survivors)
    after = Counter(label(d) for d in survivors if d["status"] == "curated")
    return kind, dict(before), {g: after.get(g, 0) for g in before}


def _spread(counts: list[int]) -> dict[str, Any]:
    """Largest, smallest, and the KL divergence (nats) of the share per group from an even share."""
    total = sum(counts)
    p = np.asarray([c for c in counts if c], float) / max(total, 1)
    return {"largest": max(counts, default=0), "smallest": min(counts, default=0),
            "kl_from_even": float(np.log(len(counts)) + (p * np.log(p)).sum()) if total else 0.0}


def balance_summary(kind: str, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """What balancing did to the group sizes: counts, extremes and KL from an even share, before and after."""
    return {"groups": kind, "count": len(before), "before": _spread(list(before.values())),
            "after": _spread([after.get(g, 0) for g in before])}


def balance_note(summary: dict[str, Any], mode: str) -> str:
    """One HTML line: the balance mode and how many groups it evened out."""
    return (f"<p>dedup.balance: <b>{html.escape(mode or 'unknown')}</b>; {summary['count']} {summary['groups']}s"
            + (" (the balancer's top-level clusters)" if mode == "hkmeans" else "") + ".</p>")


def balance_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the balance table: largest and smallest group and KL from even, before and after."""
    kind = summary["groups"]
    return ([" ", f"largest {kind}", f"smallest {kind}", "KL from an even share (0: even)"],
            [[when, summary[when]["largest"], summary[when]["smallest"], f"{summary[when]['kl_from_even']:.3f}"]
             for when in ("before", "after")])
