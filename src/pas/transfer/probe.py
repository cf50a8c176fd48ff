"""Classifiers on frozen features: a training loop for any head, the linear probe, weighted kNN, few-shot picks."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from pas.core.runtime import pick_device
from pas.transfer.config import LinearConfig

log = logging.getLogger(__name__)

# loss(head output, labels (B,)) -> (scalar loss, (B, C) scores used for the running train accuracy)
HeadLoss = Callable[[object, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _check(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if len(feats) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as feature rows (>0); got {len(feats)} rows, {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}")
    return labels


def standardise(train: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(standardised train features (N, D), mean (D,), std (D,)) for well-conditioned steps on any backbone."""
    x = torch.as_tensor(np.asarray(train, dtype=np.float32), device=device)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std, mean, std


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op CPU threads and restore the previous count afterwards.

    A head on cached features makes thousands of tiny steps: more threads only add synchronisation,
    which on a busy 2-core machine made a 512-d probe step ~40x slower (111 ms vs 2.9 ms measured).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_head(head: torch.nn.Module, loss_fn: HeadLoss, x: torch.Tensor, y: torch.Tensor, cfg: LinearConfig,
             seed: int) -> list[dict[str, float]]:
    """AdamW + cosine over cfg.epochs of shuffled mini-batches; return per-epoch loss and train top-1."""
    if x.device.type == "cpu":
        with torch_threads(1):
            return _fit_head(head, loss_fn, x, y, cfg, seed)
    return _fit_head(head, loss_fn, x, y, cfg, seed)


def _fit_head(head: torch.nn.Module, loss_fn: HeadLoss, x: torch.Tensor, y: torch.Tensor, cfg: LinearConfig,
              seed: int) -> list[dict[str, float]]:
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(y), generator=gen).to(y.device)
        loss_sum = correct = torch.zeros((), device=y.device)  # summed on the device: one sync per epoch
        for idx in order.split(cfg.batch_size):
            loss, scores = loss_fn(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum = loss_sum + loss.detach() * len(idx)
            correct = correct + (scores.detach().argmax(1) == y[idx]).sum()
        history.append({"epoch": epoch, "loss": loss_sum.item() / len(y), "train_top1": correct.item() / len(y)})
    return history


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.functional.cross_entropy(logits, y), logits


@dataclasses.dataclass(frozen=True)
class StandardisedProbe:
    """A linear probe as trained: logits = ((feats - mean) / std) @ weight.T + bias."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    history: list[dict[str, float]]


def fit_standardised_probe(train_feats: np.ndarray, train_labels: np.ndarray, num_classes: int, cfg: LinearConfig,
                           seed: int, device: str | None = None) -> StandardisedProbe:
    """Softmax regression on per-dimension standardised frozen features (zero start, deterministic)."""
    device = device or pick_device()
    y = torch.as_tensor(_check(train_feats, train_labels, num_classes), device=device)  # (N,)
    x, mean, std = standardise(train_feats, device)  # (N, D)
    linear = torch.nn.Linear(x.shape[1], num_classes, device=device)
    torch.nn.init.zeros_(linear.weight)  # convex problem: zero start is deterministic and fine
    torch.nn.init.zeros_(linear.bias)
    history = fit_head(linear, _cross_entropy, x, y, cfg, seed)
    as_np = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return StandardisedProbe(as_np(linear.weight), as_np(linear.bias), as_np(mean), as_np(std), history)


def train_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, num_classes: int, cfg: LinearConfig,
                       seed: int, device: str | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Softmax regression on frozen features; return weight (C, D), bias (C,) and per-epoch history.

    Features are standardised per dimension while training and the scaling is folded back, so
    `feats @ weight.T + bias` are logits on the inputs as given.
    """
    probe = fit_standardised_probe(train_feats, train_labels, num_classes, cfg, seed, device)
    weight = probe.weight / probe.std  # fold the standardisation back: W' = W / std
    bias = probe.bias - weight @ probe.mean  # b' = b - W' mean
    return weight.astype(np.float32), bias.astype(np.float32), probe.history


def linear_probe_scores(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, num_classes: int,
                        cfg: LinearConfig, seed: int, device: str | None = None
                        ) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Train a linear probe and return its test logits (N_test, C) and history."""
    weight, bias, history = train_linear_probe(train_feats, train_labels, num_classes, cfg, seed, device)
    return (np.asarray(test_feats, dtype=np.float32) @ weight.T + bias).astype(np.float32), history


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, k: int,
                temperature: float, num_classes: int, device: str | None = None, chunk: int = 1024) -> np.ndarray:
    """Weighted kNN class scores (N_test, C): cosine top-k neighbours vote exp(sim / T) for their class (DINO)."""
    device = device or pick_device()
    train = torch.nn.functional.normalize(torch.as_tensor(train_feats, dtype=torch.float32, device=device), dim=1)
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=device)  # (N_train,)
    k = min(k, len(labels))
    out = []
    for start in range(0, len(test_feats), chunk):
        test = torch.as_tensor(test_feats[start:start + chunk], dtype=torch.float32, device=device)
        sims = torch.nn.functional.normalize(test, dim=1) @ train.T  # (B, N_train)
        top_sims, top_idx = sims.topk(k, dim=1)  # (B, k)
        weights = (top_sims / temperature).exp()
        scores = torch.zeros(len(test), num_classes, device=device)
        scores.scatter_add_(1, labels[top_idx], weights)  # (B, C)
        out.append(scores.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), dtype=np.float32)


def fewshot_positions(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` random positions per class (all of a class with fewer), sorted; deterministic in seed."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            log.warning("class %d has %d training image(s), fewer than %d shots; using them all", label,
                        len(members), shots)
        picked.append(rng.choice(members, size=min(shots, len(members)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def cross_fitted_scores(feats: np.ndarray, labels: np.ndarray, num_classes: int, cfg: LinearConfig, folds: int,
                        seed: int, device: str | None = None) -> np.ndarray:
    """Out-of-fold linear-probe logits (N, C) for the training set itself (k-fold, stratified by position)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % folds
    scores = np.zeros((len(labels), num_classes), dtype=np.float32)
    for fold in range(folds):
        held = fold_of == fold
        if held.all() or not held.any():
            continue
        scores[held], _ = linear_probe_scores(feats[~held], labels[~held], feats[held], num_classes, cfg, seed, device)
    return scores
