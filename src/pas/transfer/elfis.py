"""ELFIS (arXiv 2303.09269): meta-categories of classes and expert heads trained jointly with the general head.

1. Meta-categories: an affinity between classes mixes lexical similarity (cosine of class-name text
   embeddings) and model similarity (how often a first model, a cross-fitted linear probe, confuses the
   two), both min-max scaled to [0, 1]: A = w * text + (1 - w) * confusion. Spectral clustering of A
   gives `groups` meta-categories (0 = round(sqrt(C))).
2. ElfisHead: a general head over all C classes plus one expert head per meta-category over its classes.
   Trained jointly: CE(general) + expert_weight * CE(expert of the label's meta-category).
3. Prediction: p(c) = 0.5 p_general(c) + 0.5 p_general(g(c)) p_expert(c | g(c)), where p_general(g) sums
   the general head's probabilities over the meta-category's classes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from pas.core.runtime import pick_device
from pas.transfer.config import ElfisConfig, LinearConfig
from pas.transfer.probe import cross_fitted_scores, fit_head, standardise

log = logging.getLogger(__name__)

def embed_class_names(names: list[str], model: str) -> np.ndarray:
    """L2-normalised text embeddings (C, E) of class names ('red_circle' is embedded as 'red circle')."""
    from pas.models.text_embed import load_embedder

    encode = load_embedder(model, "finetune.elfis.text_model")
    emb = np.asarray(encode([name.replace("_", " ").replace("-", " ") for name in names]), dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _scale_off_diagonal(matrix: np.ndarray) -> np.ndarray:
    off = ~np.eye(len(matrix), dtype=bool)
    low, high = matrix[off].min(), matrix[off].max()
    scaled = (matrix - low) / (high - low) if high > low else np.zeros_like(matrix)
    np.fill_diagonal(scaled, 1.0)
    return scaled


def class_affinity(text_emb: np.ndarray, confusion: np.ndarray, text_weight: float) -> np.ndarray:
    """(C, C) affinity in [0, 1]: text cosine and symmetrised row-normalised confusion, each scaled, mixed."""
    text = text_emb @ text_emb.T
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    confused = (rates + rates.T) / 2
    return text_weight * _scale_off_diagonal(text) + (1 - text_weight) * _scale_off_diagonal(confused)


def cluster_classes(affinity: np.ndarray, groups: int) -> list[list[int]]:
    """Meta-categories: spectral clusters of the affinity graph, each a sorted class list, ordered by first class.

    Spectral clustering (deterministic cluster_qr assignment) keeps groups balanced; average linkage on
    1 - affinity tended to leave one big group and singletons on animal-shape-mnist.
    """
    from sklearn.cluster import SpectralClustering

    count = len(affinity)
    groups = min(groups or max(1, round(math.sqrt(count))), count)
    if groups <= 1 or count < 2:
        return [list(range(count))]
    labels = SpectralClustering(n_clusters=groups, affinity="precomputed", assign_labels="cluster_qr",
                                random_state=0).fit_predict(np.clip(affinity, 1e-3, 1.0))  # floor: a connected graph
    found = [sorted(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels)]
    return sorted(found, key=lambda members: members[0])


@dataclasses.dataclass(frozen=True)
class ElfisOutput:
    """ElfisHead's raw outputs: general logits (B, C) and one (B, |g|) logit block per meta-category."""

    general: torch.Tensor
    experts: list[torch.Tensor]


class ElfisHead(nn.Module):
    """A general linear head plus one linear expert per meta-category, on the same features."""

    def __init__(self, dim: int, num_classes: int, groups: list[list[int]]) -> None:
        super().__init__()
        covered = sorted(c for g in groups for c in g)
        if covered != list(range(num_classes)):
            raise ValueError(f"meta-categories must cover classes 0..{num_classes - 1} once each; got {groups}")
        self.general = nn.Linear(dim, num_classes)
        self.experts = nn.ModuleList(nn.Linear(dim, len(g)) for g in groups)
        self.groups = [list(g) for g in groups]
        group_of, local = torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long)
        for g, members in enumerate(groups):
            group_of[members] = g
            local[members] = torch.arange(len(members))
        self.register_buffer("group_of", group_of, persistent=False)  # (C,) meta-category of each class
        self.register_buffer("local", local, persistent=False)  # (C,) index of each class inside its expert

    def forward(self, feats: torch.Tensor) -> ElfisOutput:
        """(B, D) features -> general and expert logits."""
        return ElfisOutput(self.general(feats), [expert(feats) for expert in self.experts])

    def combine(self, out: ElfisOutput) -> torch.Tensor:
        """(B, C) log-probabilities: half the general head, half meta-category prior times expert."""
        general = out.general.softmax(dim=1)  # (B, C)
        hierarchical = torch.zeros_like(general)
        for members, logits in zip(self.groups, out.experts):
            prior = general[:, members].sum(dim=1, keepdim=True)  # (B, 1) p(g)
            hierarchical[:, members] = prior * logits.softmax(dim=1)  # (B, |g|) p(g) p(c | g)
        return (0.5 * general + 0.5 * hierarchical).clamp_min(1e-12).log()

    def loss(self, out: ElfisOutput, labels: torch.Tensor, expert_weight: float) -> torch.Tensor:
        """CE of the general head + expert_weight * mean CE of each sample's own expert."""
        loss = nn.functional.cross_entropy(out.general, labels)
        groups = self.group_of[labels]  # (B,)
        expert_sum = out.general.new_zeros(())
        for g, logits in enumerate(out.experts):
            mine = groups == g
            if mine.any():
                expert_sum = expert_sum + nn.functional.cross_entropy(logits[mine], self.local[labels[mine]],
                                                                      reduction="sum")
        return loss + expert_weight * expert_sum / len(labels)


def elfis_loss(head: ElfisHead, expert_weight: float) -> Callable[[ElfisOutput, torch.Tensor],
                                                                  tuple[torch.Tensor, torch.Tensor]]:
    """A pas.transfer.probe.HeadLoss for `head`: (joint loss, combined scores)."""
    def loss_fn(out: ElfisOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return head.loss(out, labels, expert_weight), head.combine(out)
    return loss_fn


@dataclasses.dataclass(frozen=True)
class MetaCategories:
    """Meta-categories found for one (dataset, init): class indices and names per group, and their inputs."""

    groups: list[list[int]]
    names: list[list[str]]
    first_model_top1: float  # out-of-fold top-1 of the first model whose confusions were used


def discover_meta_categories(class_names: list[str], text_emb: np.ndarray, train_feats: np.ndarray,
                             train_labels: np.ndarray, linear_cfg: LinearConfig, cfg: ElfisConfig, seed: int,
                             device: str | None = None) -> MetaCategories:
    """Cluster classes by name embeddings and the cross-fitted linear probe's confusion matrix."""
    count = len(class_names)
    scores = cross_fitted_scores(train_feats, train_labels, count, linear_cfg, cfg.folds, seed, device)
    confusion = confusion_matrix(train_labels, scores.argmax(axis=1), labels=np.arange(count))
    groups = cluster_classes(class_affinity(text_emb, confusion, cfg.text_weight), cfg.groups)
    top1 = float(np.trace(confusion) / max(confusion.sum(), 1))
    names = [[class_names[c] for c in members] for members in groups]
    log.info("ELFIS meta-categories (first model top-1 %.3f): %s", top1, names)
    return MetaCategories(groups, names, top1)


def elfis_probe_scores(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                       groups: list[list[int]], num_classes: int, linear_cfg: LinearConfig, cfg: ElfisConfig,
                       seed: int, device: str | None = None) -> tuple[np.ndarray, list[dict[str, float]]]:
    """ElfisHead on frozen, standardised features (the linear probe's recipe); test log-probs (N_test, C)."""
    device = device or pick_device()
    x, mean, std = standardise(train_feats, device)  # (N, D)
    y = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ElfisHead(x.shape[1], num_classes, groups).to(device)
    history = fit_head(head, elfis_loss(head, cfg.expert_weight), x, y, linear_cfg, seed)
    with torch.no_grad():
        test = (torch.as_tensor(np.asarray(test_feats, dtype=np.float32), device=device) - mean) / std
        scores = head.combine(head(test))
    return scores.cpu().numpy().astype(np.float32), history
