"""How many candidates of each source and concept: prefix-stable, derived only from params."""
from __future__ import annotations

import math

from pas.core.config import MixConfig, require


def candidate_counts(size: int, oversample: float, mix: MixConfig) -> dict[str, int]:
    """Split ceil(size * oversample) candidates between the generated and retrieved sources."""
    require(oversample >= 1.0, "oversample", oversample, "use a number >= 1.0 (candidates per final image)")
    total = math.ceil(size * oversample)
    generated = round(total * (1 - mix.real_share))
    return {"generated": generated, "retrieved": total - generated}


def concept_of(index: int, n_concepts: int) -> int:
    """Image `index` of a source belongs to concept index % n (round robin: prefix-stable)."""
    return index % n_concepts


def per_concept_quota(total: int, n_concepts: int) -> list[int]:
    """How many of `total` round-robin images fall on each concept."""
    return [total // n_concepts + (1 if c < total % n_concepts else 0) for c in range(n_concepts)]
