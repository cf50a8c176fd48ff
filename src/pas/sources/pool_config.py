"""params.pool_index as a checked config, apart from the indexing code (faiss, torch): `pas plan` and the stages
that only read the section import this."""
from __future__ import annotations

from dataclasses import dataclass

from pas.core.config import require

INDEX_KINDS = ("flat", "ivf_flat", "ivf_sq8", "ivf_pq", "hnsw")   # pas.sources.pool_index.INDEXES builds each


@dataclass(frozen=True)
class PoolIndexConfig:
    """params.pool_index: the pool, the screening rule, chunking and the index choice."""

    source: str = "data/pool"
    min_side: int = 8
    index: str = "auto"  # auto | flat | ivf_flat | ivf_sq8 | ivf_pq | hnsw
    memory_budget_mb: int = 4096
    embedding_model: str = ""  # a pool of precomputed embeddings: the CLIP that made them (or its embedding_model.txt)
    rerank: int = 50  # ivf_pq: re-score up to this many x k candidates exactly (factor tuned with nprobe; 0: off)
    target_recall: float = 0.95
    chunk_size: int = 4096
    batch_size: int = 64

    def validate(self, prefix: str) -> None:
        """Check the index type and ranges."""
        require(self.index in INDEX_KINDS or self.index == "auto", f"{prefix}.index", self.index,
                f"use auto or one of {', '.join(INDEX_KINDS)}")
        require(self.min_side >= 1, f"{prefix}.min_side", self.min_side, "use a positive integer")
        require(self.chunk_size >= 1, f"{prefix}.chunk_size", self.chunk_size, "use a positive integer")
        require(0 < self.target_recall <= 1, f"{prefix}.target_recall", self.target_recall, "use 0..1")
        require(self.memory_budget_mb >= 1, f"{prefix}.memory_budget_mb", self.memory_budget_mb,
                "use a positive number of MB (the index must fit in it)")
        require(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "use a positive integer")
        require(self.rerank >= 0, f"{prefix}.rerank", self.rerank, "use 0 (off) or the largest candidate factor")
