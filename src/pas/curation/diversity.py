"""Dataset diversity from unit embeddings: Vendi score and mean pairwise cosine distance (both exact, O(N * D^2))."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy) of the eigenvalues of K/N with the cosine kernel K = X X^T: the effective number of distinct items.

    The non-zero eigenvalues of X X^T / N equal those of X^T X / N, so a (D, D) matrix suffices.
    embeddings: (N, D) unit rows. 1.0 for identical items, N for orthogonal ones.
    """
    x = np.asarray(embeddings, np.float64)
    if len(x) == 0:
        return 0.0
    eig = np.linalg.eigvalsh(x.T @ x / len(x))
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mean_cosine_distance(embeddings: np.ndarray) -> float:
    """1 - mean cosine over all pairs i != j of unit rows (NaN below two items)."""
    x = np.asarray(embeddings, np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    total = x.sum(axis=0)
    return float(1.0 - (total @ total - n) / (n * (n - 1)))


def diversity(embeddings: np.ndarray, labels: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """{'all': {...}, <label>: {...}} with n, vendi and mean_cosine_distance, overall and per label."""
    out = {"all": _one(embeddings)}
    labels = np.asarray(labels, dtype=object)
    for label in sorted(set(labels.tolist())) if len(labels) else []:
        out[str(label)] = _one(embeddings[labels == label])
    return out


def _one(x: np.ndarray) -> dict[str, float]:
    distance = mean_cosine_distance(x)
    return {"n": int(len(x)), "vendi": round(vendi_score(x), 4),
            "mean_cosine_distance": None if np.isnan(distance) else round(distance, 4)}


def against_references(curated: np.ndarray, references: dict[str, np.ndarray], cap: int = 2000,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Vendi score and mean cosine distance of the curated set next to each reference set (a downstream train
    split), each pair on a seeded sample of the same size (min of both and `cap`) in the same embedding space:
    {reference: {n, curated_vendi, reference_vendi, curated_mean_cosine_distance, reference_mean_cosine_distance}}."""
    out = {}
    for name, reference in sorted(references.items()):
        n = min(len(curated), len(reference), cap)
        rng = np.random.default_rng(seed)
        mine = _one(curated[np.sort(rng.permutation(len(curated))[:n])])
        theirs = _one(reference[np.sort(rng.permutation(len(reference))[:n])])
        out[name] = {"n": n, "curated_vendi": mine["vendi"], "reference_vendi": theirs["vendi"],
                     "curated_mean_cosine_distance": mine["mean_cosine_distance"],
                     "reference_mean_cosine_distance": theirs["mean_cosine_distance"]}
    return out
