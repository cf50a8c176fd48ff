"""Downstream transfer: every (dataset, init, protocol) -> test-set scores, learning curves and an index.

    cfg = finetune_config(params["finetune"])
    run_finetune(find_datasets("data/downstream"), "resnet18", "data/pretrain", cfg, out_dir, seed=0)

Per dataset the images are decoded once (uint8, image_size); per init the features are computed once
and shared by the linear, kNN, few-shot and ELFIS protocols; full fine-tuning trains fresh copies.
Layout of out_dir (every path is also listed in out_dir/index.json, relative to out_dir):
    <dataset>/{train,test}_labels.npy            int64, items that decoded
    <dataset>/<init>/{train,test}_features.npy   float16, L2-normalised (N, D)
    <dataset>/<init>/<result>[_<run>].npy        float32 (N_test, C) test scores of a protocol result
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pas.core.runtime import pick_device
from pas.core.shards import atomic_path, save_embeddings, write_json
from pas.data.downstream import (
    Dataset,
    DownstreamDataError,
    find_datasets,
    load_dataset,
)
from pas.transfer.config import FinetuneConfig, finetune_config
from pas.transfer.elfis import (
    MetaCategories,
    discover_meta_categories,
    embed_class_names,
)
from pas.transfer.features import eval_transform, extract_features, load_pixels, pixel_features
from pas.transfer.index import index_path, pretrain_dataset, read_finetune_index
from pas.transfer.inits import InitInfo, build_init
from pas.transfer.probe import train_linear_probe
from pas.transfer.protocols import PROTOCOLS, Context

__all__ = ["FinetuneConfig", "extract_features", "finetune_config", "pretrain_dataset", "read_finetune_index",
           "run_finetune", "train_linear_probe"]

log = logging.getLogger(__name__)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _decode(dataset: Dataset, image_size: int, problems: list[str]) -> tuple[dict[str, np.ndarray],
                                                                          dict[str, np.ndarray]]:
    """uint8 pixels and labels of both splits (items that decode); undecodable items go to `problems`."""
    pixels, labels = {}, {}
    for split, info in dataset.splits.items():
        start = time.perf_counter()
        pixels[split], kept = load_pixels(info, image_size, problems)
        labels[split] = info.labels[kept]
        log.info("%s %s: %d of %d images decoded in %.1fs", dataset.name, split, len(kept), len(info.labels),
                 time.perf_counter() - start)
        if not len(kept):
            raise DownstreamDataError(f"dataset {dataset.name!r}: no readable image in its {split} split ({info.path})")
    present = np.unique(labels["train"])
    if len(present) < 2:  # one class: any score is 100%, and a gain over another init means nothing
        raise DownstreamDataError(f"dataset {dataset.name!r}: its train split has images of {len(present)} class(es) "
                                  f"({', '.join(dataset.class_names[i] for i in present)}); classification needs 2 or more")
    return pixels, labels


def _run_init(name: str, built: tuple[torch.nn.Module, InitInfo], dataset: Dataset, pixels: dict[str, np.ndarray],
              labels: dict[str, np.ndarray], text_emb: np.ndarray | None, cfg: FinetuneConfig, out_dir: Path,
              seed: int, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Features, meta-categories and every protocol for one (dataset, init); write scores; return index + metrics."""
    prefix, start = f"{dataset.name}/{name}", time.perf_counter()
    backbone, info = built
    feats = {split: pixel_features(backbone, pixels[split], info.mean, info.std, cfg.batch_size, device)
             for split in ("train", "test")}
    record: dict[str, Any] = {"feature_dim": int(feats["train"].shape[1]), "results": {}}
    for split, array in feats.items():
        save_embeddings(array, out_dir / prefix / f"{split}_features.npy")
        record[f"{split}_features"] = f"{prefix}/{split}_features.npy"
    meta: MetaCategories | None = None
    if text_emb is not None:
        meta = discover_meta_categories(dataset.class_names, text_emb, feats["train"], labels["train"], cfg.linear,
                                        cfg.elfis, seed, device)
        record["meta_categories"] = meta.names
        record["first_model_top1"] = meta.first_model_top1
    ctx = Context(dataset.class_names, feats, labels, pixels, lambda: copy.deepcopy(backbone), info,
                  cfg.protocol_settings(), meta,
                  seed, device)
    metrics: dict[str, Any] = {"feature_dim": record["feature_dim"]}
    for protocol in cfg.protocols:
        began = time.perf_counter()
        for name, result in PROTOCOLS[protocol](ctx).items():
            paths = [f"{prefix}/{name}.npy" if len(result.scores) == 1 else f"{prefix}/{name}_{i}.npy"
                     for i in range(len(result.scores))]
            for scores, path in zip(result.scores, paths):
                _save_npy(scores.astype(np.float32), out_dir / path)
            record["results"][name] = {"protocol": protocol, "scores": paths, "history": result.history,
                                       "info": result.info}
            if result.history:
                metrics[f"{name}_train_loss"] = result.history[-1]["loss"]
        metrics[f"{protocol}_seconds"] = round(time.perf_counter() - began, 2)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s done in %.1fs", prefix, metrics["seconds"])
    return record, metrics


def _init_pixels(dataset: Dataset, info: InitInfo, pixels: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 cache: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> tuple[
                     dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The pixels an init is evaluated on: its pretrained cfg's transform (timm baselines), else the shared decode."""
    if info.data_config is None:
        return pixels, labels
    key = json.dumps(info.data_config, sort_keys=True)
    if key not in cache:
        transform = eval_transform(info.data_config)
        decoded = {split: load_pixels(split_info, 0, [], transform) for split, split_info in dataset.splits.items()}
        for split, (_, kept) in decoded.items():  # the same images decode whatever the transform: scores line up
            if not np.array_equal(dataset.splits[split].labels[kept], labels[split]):
                raise DownstreamDataError(f"dataset {dataset.name!r} {split}: another set of images decoded for "
                                          "an init's transform; the dataset changed while it was read")
        cache[key] = ({split: array for split, (array, _) in decoded.items()}, labels)
        log.info("%s: decoded again with %s", dataset.name, {k: info.data_config.get(k) for k in
                 ("input_size", "interpolation", "crop_pct")})
    return cache[key]


def run_finetune(datasets: dict[str, Dataset | str | Path], backbone_name: str, pretrained: str | Path | None,
                 cfg: FinetuneConfig, out_dir: str | Path, seed: int,
                 baselines: str | Path | None = None) -> dict[str, Any]:
    """Every protocol for every (dataset, init); write out_dir (see module doc); return training metrics.

    `baselines` is the models stage's models/baselines folder (the `weights: timm` inits)."""
    out_dir, device = Path(out_dir), pick_device()
    pretrained = Path(pretrained) if pretrained is not None else None
    datasets = {name: d if isinstance(d, Dataset) else load_dataset(d, name, cfg.test_fraction, seed)
                for name, d in datasets.items()}
    # every init is built before any work: a missing weights file or a bad arch fails at once
    built = {spec.name: build_init(spec, backbone_name, pretrained, seed, baselines) for spec in cfg.inits}
    index: dict[str, Any] = {"backbone": backbone_name, "seed": seed, "config": dataclasses.asdict(cfg),
                             "inits": {spec.name: {"arch": info.arch, "weights": spec.weights, "mean": list(info.mean),
                                                   "std": list(info.std), "source": info.source,
                                                   **({"data_config": info.data_config} if info.data_config else {})}
                                       for spec, (_, info) in zip(cfg.inits, built.values())},
                             "datasets": {}}
    metrics: dict[str, Any] = {}
    for name, dataset in datasets.items():
        problems = list(dataset.problems)
        try:
            pixels, labels = _decode(dataset, cfg.image_size, problems)
        except DownstreamDataError as err:  # one unusable dataset does not end a run over several
            log.error("skipping dataset %s: %s", name, err)
            index["datasets"][name] = {"skipped": str(err), "problems": [*problems, str(err)]}
            metrics[name] = {"skipped": 1, "problems": len(problems) + 1}
            continue
        text_emb = embed_class_names(dataset.class_names, cfg.elfis.text_model) \
            if cfg.elfis.protocols and len(dataset.class_names) > 1 else None
        entry: dict[str, Any] = {"format": dataset.format, "root": str(dataset.root),
                                 "class_names": dataset.class_names, "num_classes": len(dataset.class_names),
                                 "problems": problems, "inits": {}}
        for split in ("train", "test"):
            entry[split] = {"items": int(len(dataset.splits[split].labels)), "images": int(len(labels[split]))}
            entry[f"{split}_labels"] = f"{name}/{split}_labels.npy"
            _save_npy(labels[split], out_dir / entry[f"{split}_labels"])
        metrics[name] = {"problems": len(problems), "train_images": entry["train"]["images"],
                         "test_images": entry["test"]["images"]}
        decodes: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
        for init, pair in built.items():
            init_pixels, init_labels = _init_pixels(dataset, pair[1], pixels, labels, decodes)
            entry["inits"][init], metrics[name][init] = _run_init(init, pair, dataset, init_pixels, init_labels,
                                                                  text_emb, cfg, out_dir, seed, device)
        index["datasets"][name] = entry
    write_json(index, index_path(out_dir))
    return metrics


def select_datasets(root: str | Path, cfg: FinetuneConfig, seed: int) -> dict[str, Dataset]:
    """The datasets params.finetune.datasets names under `root` (all of them when empty)."""
    return find_datasets(root, cfg.datasets, cfg.test_fraction, seed)

