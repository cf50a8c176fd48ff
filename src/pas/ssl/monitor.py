"""Per-epoch monitoring: collapse indicators of embeddings and online kNN accuracy on a labeled set."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pas.ssl.augment import eval_transform, normalize_uint8

log = logging.getLogger(__name__)


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of the L2-normalised z (N, D): 0 when collapsed, about 1/sqrt(D) when spread."""
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())


def effective_rank(z: Tensor, eps: float = 1e-7) -> float:
    """exp(entropy of the normalised singular values) of the L2-normalised z (N, D) (RankMe): 1 .. min(N, D)."""
    s = torch.linalg.svdvals(F.normalize(z.float(), dim=1))
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(features: Tensor, labels: Tensor, k: int, temperature: float) -> float:
    """Leave-one-out weighted kNN top-1 on features (N, D) with labels (N,).

    Each sample's k most cosine-similar other samples vote exp(similarity / temperature) for their label.
    """
    f = F.normalize(features.float(), dim=1)
    sims = f @ f.T                                                              # (N, N)
    sims.fill_diagonal_(float("-inf"))                                          # leave one out
    k = min(k, len(labels) - 1)
    top, index = sims.topk(k, dim=1)                                            # (N, k)
    votes = torch.zeros(len(labels), int(labels.max()) + 1, device=f.device)
    votes.scatter_add_(1, labels[index], (top / temperature).exp())
    return float((votes.argmax(dim=1) == labels).float().mean())


@dataclass(frozen=True)
class LabeledSet:
    """A small labeled image set held in memory: pixels (N, 3, S, S) uint8 and labels (N,) int64."""

    pixels: Tensor
    labels: Tensor


def load_labeled_set(path: str | Path, image_size: int, max_images: int, seed: int) -> LabeledSet:
    """Read a downstream parquet split (image, label, label_name); keep a seeded sample of max_images."""
    from pas.data.downstream import load_split

    images, labels, _ = load_split(path)
    if len(images) < 2:
        raise ValueError(f"{path}: the kNN monitor needs at least 2 labeled images, found {len(images)}")
    rows = np.arange(len(images))
    if len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    transform = eval_transform(image_size)
    pixels = torch.stack([transform(images[i].convert("RGB")) for i in rows])
    log.info("kNN monitor: %d labeled images from %s", len(rows), path)
    return LabeledSet(pixels, torch.as_tensor(labels[rows], dtype=torch.long))


@torch.no_grad()
def embed(backbone: torch.nn.Module, pixels: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Backbone features (N, F) of uint8 pixels (N, 3, S, S), in eval mode; the previous mode is restored."""
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = [backbone(normalize_uint8(pixels[i:i + batch_size].to(device))).float()
                  for i in range(0, len(pixels), batch_size)]
    finally:
        backbone.train(was_training)
    return torch.cat(chunks)


class KnnMonitor(L.Callback):
    """After each training epoch: kNN top-1 and collapse indicators of the exported backbone's features."""

    def __init__(self, labeled: LabeledSet, k: int, temperature: float, batch_size: int = 256) -> None:
        self.labeled = labeled
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone = pl_module.method.export_backbone(pl_module.backbone)
        features = embed(backbone, self.labeled.pixels, self.batch_size, pl_module.device)
        labels = self.labeled.labels.to(features.device)
        values = {"knn_top1": knn_accuracy(features, labels, self.k, self.temperature),
                  "feature_std": embedding_std(features), "feature_rank": effective_rank(features)}
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, prog_bar=name == "knn_top1", sync_dist=True)
        self.history.append(values)

    def state_dict(self) -> dict[str, Any]:
        """The per-epoch values so far (kept in checkpoints)."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the per-epoch values of a resumed run."""
        self.history = list(state_dict.get("history", []))


def score_heldout(method: Any, backbone: torch.nn.Module, views: list[torch.Tensor], seed: int = 0) -> float | None:
    """The method's label-free score (e.g. LeJEPA's loss) of held-out views (V tensors (N, 3, S, S)) as one batch,
    computed as training computes it (batch-norm on batch statistics, drop-path seeded) on copies of the networks,
    so nothing of the trained ones changes. None when the method has no such score."""
    method_copy, backbone_copy = copy.deepcopy(method), copy.deepcopy(backbone)
    device = next(backbone.parameters()).device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        score = method_copy.label_free_score(backbone_copy, [v.to(device) for v in views])
    return None if score is None else float(score)
