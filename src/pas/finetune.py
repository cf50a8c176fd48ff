"""Frozen-backbone transfer: features of a timm backbone on downstream data, then a linear probe.

    run_finetune({"food": Path("data/downstream/food")}, "resnet18",
                 {"pas": "models/pretrain/backbone.safetensors", "random": None}, cfg, out_dir, seed=0)

Layout of out_dir (every path is also listed in out_dir/index.json, relative to out_dir):
    <dataset>/{train,test}_labels.npy            int64, rows that decoded
    <dataset>/<init>/{train,test}_features.npy   float16, L2-normalised (B, D) rows
    <dataset>/<init>/test_logits.npy             float32 (N_test, C) linear-probe logits
    <dataset>/<init>/probe.safetensors           weight (C, D), bias (C,) on the normalised features
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pas.config import require
from pas.downstream import SPLITS, SplitInfo, iter_image_batches, read_split_info
from pas.runtime import pick_device
from pas.shards import atomic_path, save_embeddings, write_json

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED_INITS = ("gain",)  # evaluate() reports the pas-over-random gain under this key


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """params.finetune: feature extraction and linear-probe settings."""

    image_size: int = 64  # shorter side resized to this, then centre-cropped square
    batch_size: int = 256  # images per forward pass, and features per probe step
    probe_epochs: int = 100
    probe_lr: float = 0.01  # AdamW, cosine-decayed to 0 over probe_epochs
    probe_weight_decay: float = 0.0

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.image_size >= 8, f"{prefix}.image_size", self.image_size, "use an integer >= 8")
        require(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "use an integer >= 1")
        require(self.probe_epochs >= 1, f"{prefix}.probe_epochs", self.probe_epochs, "use an integer >= 1")
        require(self.probe_lr > 0, f"{prefix}.probe_lr", self.probe_lr, "use a number > 0")
        require(self.probe_weight_decay >= 0, f"{prefix}.probe_weight_decay", self.probe_weight_decay,
                "use a number >= 0")


def _weights_file(weights: str | Path) -> Path:
    """A backbone.safetensors path, given the file or the folder holding it; it must exist."""
    path = Path(weights)
    path = path / "backbone.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} not found; run the pretrain stage (dvc repro pretrain)")
    return path


def _build_backbone(name: str, weights: str | Path | None, seed: int) -> torch.nn.Module:
    """timm backbone without head; strict-load `weights` (a backbone.safetensors or its folder) if given."""
    import safetensors.torch
    import timm

    with torch.random.fork_rng(devices=[]):  # seeded random init without touching the caller's RNG
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights is not None:
        path = _weights_file(weights)
        try:
            model.load_state_dict(safetensors.torch.load_file(path), strict=True)
        except RuntimeError as err:
            raise RuntimeError(f"{path} does not fit timm backbone {name!r}: {err}") from err
    return model


def _preprocess(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side -> size (bicubic), centre crop, (3, size, size) float32 in [0, 1]."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _batches(images: Iterable[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_features(backbone: torch.nn.Module, images: Iterable[Image.Image], image_size: int, batch_size: int,
                     device: str | None = None, total: int | None = None) -> np.ndarray:
    """Pooled backbone features of `images` (a list or a stream), as L2-normalised float32 (N, D).

    Moves `backbone` to `device` in eval mode (and, for ViTs, sets its input size to image_size).
    """
    device = device or pick_device()
    backbone = backbone.to(device).eval()
    if hasattr(backbone, "set_input_size"):  # ViTs: resample position embeddings to image_size
        backbone.set_input_size(img_size=image_size)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    total = len(images) if total is None and hasattr(images, "__len__") else total
    chunks = []
    with torch.inference_mode(), tqdm(total=total, desc="features", unit="img", leave=False) as bar:
        for batch in _batches(images, batch_size):
            pixels = torch.from_numpy(np.stack([_preprocess(im, image_size) for im in batch])).to(device)
            feats = backbone((pixels - mean) / std).float()  # (B, D)
            chunks.append(torch.nn.functional.normalize(feats, dim=1).cpu())
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, int(getattr(backbone, "num_features", 0))), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32)


def train_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, num_classes: int, cfg: FinetuneConfig,
                       seed: int, device: str | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """Softmax regression on frozen features; return weight (C, D), bias (C,) and per-epoch history.

    Features are standardised per dimension while training (well-conditioned steps for any backbone),
    and the scaling is folded back, so `feats @ weight.T + bias` are logits on the inputs as given.
    """
    device = device or pick_device()
    labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_feats) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as feature rows (>0); got {len(train_feats)} rows, {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}")
    x = torch.as_tensor(np.asarray(train_feats, dtype=np.float32), device=device)  # (N, D)
    y = torch.as_tensor(labels, device=device)  # (N,)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    linear = torch.nn.Linear(x.shape[1], num_classes, device=device)
    torch.nn.init.zeros_(linear.weight)  # convex problem: zero start is deterministic and fine
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.AdamW(linear.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.probe_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, cfg.probe_epochs + 1):
        order = torch.randperm(len(y), generator=gen).to(device)
        loss_sum = correct = torch.zeros((), device=device)  # summed on the device: one sync per epoch
        for idx in order.split(cfg.batch_size):
            logits = linear(x[idx])  # (B, C)
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum = loss_sum + loss.detach() * len(idx)
            correct = correct + (logits.argmax(1) == y[idx]).sum()
        history.append({"epoch": epoch, "loss": loss_sum.item() / len(y), "train_top1": correct.item() / len(y)})
    with torch.no_grad():
        weight = linear.weight / std  # fold the standardisation back: W' = W / std
        bias = linear.bias - weight @ mean  # b' = b - W' mean
    return weight.cpu().numpy().astype(np.float32), bias.cpu().numpy().astype(np.float32), history


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_features(backbone: torch.nn.Module, path: Path, cfg: FinetuneConfig, device: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Stream one split through the backbone; return (features, indices of the rows that decoded)."""
    kept: list[np.ndarray] = []
    total = read_split_info(path).labels.size

    def images() -> Iterator[Image.Image]:
        for rows, batch in iter_image_batches(path):
            kept.append(rows)
            yield from batch

    feats = extract_features(backbone, images(), cfg.image_size, cfg.batch_size, device, total=total)
    return feats, (np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64))


def _check_inits(inits: dict[str, str | Path | None]) -> None:
    for name in inits:
        if not _INIT_NAME.match(name) or name in RESERVED_INITS:
            raise ValueError(f"init name {name!r} is not allowed; use letters, digits, _ . - and not {RESERVED_INITS}")
    if not inits:
        raise ValueError("inits is empty; give at least one, e.g. {'pas': 'backbone.safetensors', 'random': None}")


def _probe_one(backbone: torch.nn.Module, infos: dict[str, SplitInfo], num_classes: int, cfg: FinetuneConfig,
               out_dir: Path, prefix: str, seed: int, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Features of both splits, labels of decoded rows, probe and test logits for one (dataset, init)."""
    record: dict[str, Any] = {}
    feats, labels = {}, {}
    for split, info in infos.items():
        start = time.perf_counter()
        feats[split], rows = _split_features(backbone, info.path, cfg, device)
        labels[split] = info.labels[rows]
        log.info("%s %s: %d features in %.1fs", prefix, split, len(rows), time.perf_counter() - start)
        save_embeddings(feats[split], out_dir / prefix / f"{split}_features.npy")
        record[f"{split}_features"] = f"{prefix}/{split}_features.npy"
        record[split] = {"rows": int(info.labels.size), "images": int(len(rows)), "skipped": int(info.labels.size - len(rows))}
    weight, bias, history = train_linear_probe(feats["train"], labels["train"], num_classes, cfg, seed, device)
    logits = feats["test"] @ weight.T + bias  # (N_test, C)
    _save_npy(logits.astype(np.float32), out_dir / prefix / "test_logits.npy")
    _save_probe(weight, bias, out_dir / prefix / "probe.safetensors")
    record.update(test_logits=f"{prefix}/test_logits.npy", probe=f"{prefix}/probe.safetensors",
                  feature_dim=int(weight.shape[1]), history=history)
    metrics = {"probe_train_loss": history[-1]["loss"], "probe_train_top1": history[-1]["train_top1"],
               "train_images": record["train"]["images"], "test_images": record["test"]["images"],
               "skipped_images": record["train"]["skipped"] + record["test"]["skipped"]}
    return record, {**metrics, "labels": labels}


def run_finetune(datasets: dict[str, Path], backbone_name: str, inits: dict[str, str | Path | None],
                 cfg: FinetuneConfig, out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Features + linear probe for every (dataset, init); write out_dir (see module doc); return probe metrics."""
    _check_inits(inits)
    out_dir, device = Path(out_dir), pick_device()
    index: dict[str, Any] = {"backbone": backbone_name, "seed": seed, "config": dataclasses.asdict(cfg),
                             "inits": {}, "datasets": {}}
    for init, weights in inits.items():  # fail before any work if a weights file is missing
        index["inits"][init] = None if weights is None else {
            "path": str(_weights_file(weights)), "sha256": _sha256(_weights_file(weights))}
    metrics: dict[str, Any] = {}
    for dataset, folder in datasets.items():
        infos = {split: read_split_info(Path(folder) / f"{split}.parquet") for split in SPLITS}
        names = _merge_class_names(dataset, infos["train"], infos["test"])
        entry: dict[str, Any] = {"class_names": names, "num_classes": len(names), "inits": {}}
        metrics[dataset] = {}
        for init, weights in inits.items():
            backbone = _build_backbone(backbone_name, weights, seed)  # same seed: one random baseline everywhere
            record, result = _probe_one(backbone, infos, len(names), cfg, out_dir, f"{dataset}/{init}", seed, device)
            labels = result.pop("labels")  # identical for every init: which rows decode does not depend on it
            for split in ("train", "test"):
                entry[split] = record.pop(split)
                entry[f"{split}_labels"] = f"{dataset}/{split}_labels.npy"
                _save_npy(labels[split], out_dir / entry[f"{split}_labels"])
            entry["inits"][init], metrics[dataset][init] = record, result
            del backbone
        index["datasets"][dataset] = entry
    write_json(index, out_dir / "index.json")
    return metrics


def _merge_class_names(dataset: str, train: SplitInfo, test: SplitInfo) -> list[str]:
    """One class list for a dataset from both splits; a label named differently in each is an error."""
    present = [(info, set(np.unique(info.labels).tolist())) for info in (train, test)]
    names = []
    for label in range(max(len(train.class_names), len(test.class_names))):
        options = {info.class_names[label] for info, labels in present if label in labels}
        if len(options) > 1:
            raise ValueError(f"dataset {dataset!r}: label {label} has names {sorted(options)} in train and test")
        names.append(options.pop() if options else f"class_{label}")
    return names


def _save_probe(weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    import safetensors.numpy

    with atomic_path(path) as tmp:
        safetensors.numpy.save_file({"weight": weight, "bias": bias}, str(tmp))
