"""Image-based filtering against the user's exemplar images (DataComp's `image_based` baseline).

DataComp (mlfoundations/datacomp, commit 274dbee) runs the method in two steps:
- baselines/image_based_clustering.py `train_kmeans` (lines 27-70) clusters the pool's image embeddings with
  faiss k-means: L2 (GpuIndexFlatL2, line 57), `niter = 20` (line 41), `seed` (line 42; `--seed` defaults to 0,
  line 183), no subsampling (`max_points_per_centroid = 10000000`, line 45), `--num_clusters` 100,000 (line 151;
  image_based_clustering.md runs it so on the 12.8M-image small pool: 128 images per cluster), on the pool left
  after the basic caption filter (`load_embedding_helper`, `caption_filtering`, lines 90-98).
- baselines/apply_filter.py `get_centroid_ids_gpu` (lines 80-108) gives each embedding the centroid of largest
  inner product (einsum + argmax, lines 100-105); `load_uids_with_image_filter` assigns the target set (ImageNet-1k
  train CLIP embeddings) to the pool centroids and keeps `torch.unique` of their ids; `image_filter_helper` keeps
  the candidates whose centroid is one of them (lines 176-190), after the CLIP-score threshold of
  `image_based_intersect_clip_score` (lines 149-158) and the caption filter (line 172).

pas adaptation: the targets are the images of the exemplars folder retrieval reads (`exemplars/<concept>/*`,
`exemplars/*`, as pas.sources.retrieve.exemplar_images lists them), embedded by the CLIP the embed stage used; the
pool is this run's candidates that pass the quality rules (pas's basic filter); k is the pool size / 128 (at most
100,000) unless given; each exemplar keeps its `neighbors` nearest centroids (1: DataComp's rule). Exemplars that
are copies of downstream images (the 8x8 average hash decontamination matches, pas.curation.decontam) are
counted: curating toward them selects with the evaluation data in hand, an oracle setting (the honesty checks,
pas.evaluate.honesty).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from pas.core.config import DataError
from pas.core.names import safe_name
from pas.curation.embed import pixel_hash
from pas.data.downstream import find_datasets, iter_image_batches

log = logging.getLogger(__name__)

EXEMPLAR_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")   # those retrieval reads (pas.sources.retrieve)
POINTS_PER_CLUSTER = 128       # DataComp small: 12.8M candidates in 100,000 clusters
MAX_CLUSTERS = 100_000         # image_based_clustering.py --num_clusters
NITER = 20                     # train_kmeans: cluster.niter
SEED = 0                       # train_kmeans / --seed default
REASON = "off_exemplar_cluster"


def exemplar_files(folder: str | Path, concepts: list[dict[str, Any]]) -> list[Path]:
    """Every exemplar image retrieval would use, sorted: `<folder>/*` and `<folder>/<concept name or safe_name>/*`;
    a DataError (one line) when the folder is missing or holds none."""
    folder = Path(folder)
    fix = "put images in it (<concept>/*.jpg for a concept, *.jpg for the domain) or set filter.exemplars: false"
    if not folder.is_dir():
        raise DataError(f"filter.exemplars is on but the exemplars folder {folder} does not exist; {fix}")

    def images(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXEMPLAR_SUFFIXES) \
            if path.is_dir() else []

    found = images(folder)
    for concept in concepts:
        found += images(folder / concept["name"]) or images(folder / safe_name(concept["name"]))
    if not found:
        raise DataError(f"filter.exemplars is on but {folder} holds no exemplar image "
                        f"({', '.join(EXEMPLAR_SUFFIXES)}) for the domain or a concept; {fix}")
    return sorted(set(found))


def load_exemplars(paths: list[Path]) -> list[Image.Image]:
    """The exemplar images decoded as RGB; an unreadable one is a DataError naming it."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                out.append(image.convert("RGB"))
        except Exception as err:  # noqa: BLE001 - any decoder failure means the user's file is unusable
            raise DataError(f"exemplar image {path} cannot be read ({err}); replace or remove it") from err
    return out


def default_clusters(points: int) -> int:
    """k when params say 0: DataComp's 128 pool images per cluster, 1..100,000."""
    return int(min(MAX_CLUSTERS, max(1, round(points / POINTS_PER_CLUSTER))))


def train_centroids(embeddings: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """(k, D) L2 k-means centroids of (N, D) embeddings as DataComp's train_kmeans trains them (faiss; every GPU
    faiss sees, the CPU without one)."""
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    kmeans = faiss.Kmeans(data.shape[1], k, niter=NITER, seed=seed, max_points_per_centroid=10_000_000,
                          min_points_per_centroid=1, gpu=True)
    kmeans.train(data)
    return kmeans.centroids


def nearest_centroids(features: np.ndarray, centroids: np.ndarray, n: int = 1) -> np.ndarray:
    """(N, n) ids of each feature's n centroids of largest inner product (get_centroid_ids_gpu for n = 1)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(features, dtype=np.float32), min(n, len(centroids)))[1]


def exemplar_clusters(candidates: np.ndarray, exemplars: np.ndarray, clusters: int = 0, neighbors: int = 1,
                      pool: np.ndarray | None = None, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, int]:
    """(cluster of each of the (N, D) candidates, sorted ids of the clusters the (E, D) exemplars select, k):
    k-means of the `pool` candidates (a bool mask, default all; k = `clusters`, 0: default_clusters), every
    candidate assigned to its nearest centroid, each exemplar selecting its `neighbors` nearest centroids."""
    trained = candidates if pool is None else candidates[pool]
    if not len(trained):
        return np.full(len(candidates), -1, np.int64), np.zeros(0, np.int64), 0
    k = min(clusters or default_clusters(len(trained)), len(trained))
    centroids = train_centroids(trained, k, seed)
    labels = nearest_centroids(candidates, centroids)[:, 0] if len(candidates) else np.zeros(0, np.int64)
    return labels.astype(np.int64), np.unique(nearest_centroids(exemplars, centroids, neighbors)).astype(np.int64), k


def exemplar_rule(why: list[str], candidates: np.ndarray, exemplars: np.ndarray, pool: np.ndarray,
                  clusters: int = 0, neighbors: int = 1) -> tuple[list[str], dict[str, Any]]:
    """Reject with REASON every candidate the other rules keep (`why` '') whose cluster no exemplar selects (the
    k-means is trained on the `pool` mask, the candidates past the quality rules). Returns (reasons, counts)."""
    labels, selected, k = exemplar_clusters(candidates, exemplars, clusters, neighbors, pool)
    chosen = np.isin(labels, selected)
    out = [REASON if not w and not keep else w for w, keep in zip(why, chosen)]
    return out, {"clusters": k, "selected_clusters": int(len(selected)), "clustered": int(pool.sum()),
                 "in_selected_clusters": int((chosen & pool).sum())}


def downstream_hashes(root: str | Path) -> dict[str, set[str]]:
    """{'<dataset>/<split>': average hashes of its images} for every downstream split under `root` ({} if none),
    decoded and hashed as decontamination hashes them."""
    root = Path(root)
    if not root.is_dir() or not any(root.iterdir()):
        return {}
    return {f"{name}/{split}": {pixel_hash(image) for _, images in iter_image_batches(info) for image in images} - {""}
            for name, dataset in sorted(find_datasets(root).items()) for split, info in dataset.splits.items()}


def exemplar_copies(exemplars: list[str], downstream: dict[str, set[str]]) -> dict[str, Any]:
    """How many exemplar images (average hashes; '' for a flat image, never a match) are copies of an image of a
    downstream split; `oracle` when any is: curating toward them selects with the evaluation data in hand."""
    by_split = {name: sum(bool(h) and h in found for h in exemplars) for name, found in sorted(downstream.items())}
    copies = sum(bool(h) and any(h in found for found in downstream.values()) for h in exemplars)
    return {"images": len(exemplars), "downstream_copies": copies,
            "by_split": {name: count for name, count in by_split.items() if count},
            "checked_splits": sorted(downstream), "oracle": copies > 0}


def filter_by_exemplars(why: list[str], candidates: np.ndarray, files: list[Path], encoder: Any, pool: np.ndarray,
                        clusters: int = 0, neighbors: int = 1, downstream: str | Path | None = None
                        ) -> tuple[list[str], dict[str, Any]]:
    """The exemplar rule with the exemplar `files` embedded by `encoder` (the CLIP of the candidates' embeddings),
    and the check whether they are downstream images: (reasons, {'exemplars': counts, 'oracle_exemplars': bool})."""
    pictures = load_exemplars(files)
    vectors = encoder.encode_images(pictures, total=len(pictures), desc="exemplars")
    why, counts = exemplar_rule(why, candidates, vectors, pool, clusters, neighbors)
    copies = exemplar_copies([pixel_hash(p) for p in pictures],
                             downstream_hashes(downstream) if downstream is not None else {})
    if copies["oracle"]:
        log.warning("ORACLE EXEMPLARS: %d of %d exemplar images are copies of downstream images (%s): the curated set "
                    "was selected with the evaluation data in hand", copies["downstream_copies"], len(pictures),
                    ", ".join(f"{name}: {count}" for name, count in copies["by_split"].items()))
    log.info("exemplar filter: %d exemplar images select %d of %d clusters; %d candidates off them", len(pictures),
             counts["selected_clusters"], counts["clusters"], why.count(REASON))
    return why, {"exemplars": {**counts, **copies}, "oracle_exemplars": copies["oracle"]}
