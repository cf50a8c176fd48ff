"""Downstream protocols, one registry: each turns an init's features (or its backbone) into test-set scores.

    results = PROTOCOLS["fewshot"](ctx)   # {"fewshot_1": ProtocolResult, "fewshot_5": ..., "fewshot_10": ...}

A protocol returns named results; each holds one (N_test, C) score array per run (several for
few-shot seeds), a learning curve (per-epoch loss / train top-1) and a little info. ELFIS variants of
linear and full are returned beside the plain head as `<protocol>_elfis`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pas.transfer.config import ProtocolSettings
from pas.transfer.elfis import ElfisHead, MetaCategories, elfis_loss, elfis_probe_scores
from pas.transfer.fulltune import NormalisedHead, finetune_full, predict_full, subset_positions
from pas.transfer.inits import InitInfo
from pas.transfer.probe import (
    StandardisedProbe,
    fewshot_positions,
    fit_standardised_probe,
    knn_predict,
    linear_probe_scores,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """Test scores (N_test, C) per run, the learning curve of the first run, and extra info."""

    scores: list[np.ndarray]
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a protocol may use for one (dataset, init)."""

    class_names: list[str]
    feats: dict[str, np.ndarray]  # train / test: (N, D) L2-normalised
    labels: dict[str, np.ndarray]  # train / test: (N,) int64
    pixels: dict[str, np.ndarray]  # train / test: (N, 3, S, S) uint8
    backbone: Callable[[], torch.nn.Module]  # a fresh backbone with the init's weights
    init: InitInfo
    settings: ProtocolSettings
    meta: MetaCategories | None  # ELFIS meta-categories, when some protocol trains experts
    seed: int
    device: str

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return len(self.class_names)


def _linear(ctx: Context) -> dict[str, ProtocolResult]:
    train, test, labels = ctx.feats["train"], ctx.feats["test"], ctx.labels["train"]
    scores, history = linear_probe_scores(train, labels, test, ctx.num_classes, ctx.settings.linear, ctx.seed, ctx.device)
    results = {"linear": ProtocolResult([scores], history)}
    if "linear" in ctx.settings.elfis.protocols and ctx.meta is not None:
        scores, history = elfis_probe_scores(train, labels, test, ctx.meta.groups, ctx.num_classes, ctx.settings.linear,
                                             ctx.settings.elfis, ctx.seed, ctx.device)
        results["linear_elfis"] = ProtocolResult([scores], history, {"meta_categories": ctx.meta.names})
    return results


def _knn(ctx: Context) -> dict[str, ProtocolResult]:
    cfg = ctx.settings.knn
    scores = knn_predict(ctx.feats["train"], ctx.labels["train"], ctx.feats["test"], cfg.k, cfg.temperature,
                         ctx.num_classes, ctx.device)
    return {"knn": ProtocolResult([scores], [], {"k": cfg.k, "temperature": cfg.temperature})}


def _fewshot(ctx: Context) -> dict[str, ProtocolResult]:
    results = {}
    for shots in ctx.settings.fewshot.shots:
        runs, history, sizes = [], [], []
        for draw in range(ctx.settings.fewshot.seeds):
            picked = fewshot_positions(ctx.labels["train"], shots, ctx.seed + draw)
            scores, curve = linear_probe_scores(ctx.feats["train"][picked], ctx.labels["train"][picked],
                                                ctx.feats["test"], ctx.num_classes, ctx.settings.linear, ctx.seed + draw,
                                                ctx.device)
            runs.append(scores)
            history = history or curve
            sizes.append(len(picked))
        results[f"fewshot_{shots}"] = ProtocolResult(runs, history, {"shots": shots, "train_images": sizes})
    return results


def _full_one(ctx: Context, head: torch.nn.Module, loss_fn: Callable, predict: Callable, picked: np.ndarray,
              probe: StandardisedProbe | None) -> ProtocolResult:
    backbone = ctx.backbone()
    wrapped = NormalisedHead(head, *((probe.mean, probe.std) if probe is not None else ()))
    history = finetune_full(backbone, wrapped, loss_fn, ctx.pixels["train"][picked], ctx.labels["train"][picked],
                            ctx.init, ctx.settings.full, ctx.seed, ctx.device)
    scores = predict_full(backbone, wrapped, predict, ctx.pixels["test"], ctx.init, ctx.settings.batch_size, ctx.device)
    return ProtocolResult([scores], history, {"train_images": int(len(picked)), "probe_init": probe is not None})


def _start_head(probe: StandardisedProbe | None, linear: torch.nn.Linear) -> None:
    """LP-FT: copy the linear probe fitted on the frozen train features into `linear`."""
    if probe is not None:
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(probe.weight))
            linear.bias.copy_(torch.from_numpy(probe.bias))


def _full(ctx: Context) -> dict[str, ProtocolResult]:
    picked = subset_positions(ctx.labels["train"], ctx.settings.full.max_train_images, ctx.seed)
    dim = int(ctx.feats["train"].shape[1])
    probe = fit_standardised_probe(ctx.feats["train"], ctx.labels["train"], ctx.num_classes, ctx.settings.linear,
                                   ctx.seed, ctx.device) if ctx.settings.full.probe_init else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        plain = torch.nn.Linear(dim, ctx.num_classes)
    _start_head(probe, plain)
    results = {"full": _full_one(ctx, plain, lambda out, y: (torch.nn.functional.cross_entropy(out, y), out),
                                 lambda out: out, picked, probe)}
    if "full" in ctx.settings.elfis.protocols and ctx.meta is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            head = ElfisHead(dim, ctx.num_classes, ctx.meta.groups)
        _start_head(probe, head.general)
        result = _full_one(ctx, head, elfis_loss(head, ctx.settings.elfis.expert_weight), head.combine, picked, probe)
        results["full_elfis"] = dataclasses.replace(result, info={**result.info, "meta_categories": ctx.meta.names})
    return results


PROTOCOLS: dict[str, Callable[[Context], dict[str, ProtocolResult]]] = {
    "linear": _linear,
    "knn": _knn,
    "fewshot": _fewshot,
    "full": _full,
}
