"""Concept text embeddings -> kNN in the pool index -> per-concept retrieved images in shards."""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from pas.core.config import DataError, require, require_fields
from pas.core.names import safe_name
from pas.core.shards import decode_image, encode_jpeg, read_table, shard_name, write_json, write_shard
from pas.core.work_store import TEAM, WorkStore, resolve
from pas.sources.download import DownloadSettings, Fetched, download
from pas.sources.plan import per_concept_quota
from pas.sources.pool_sources import load_items

log = logging.getLogger(__name__)


SHORTFALL_POLICIES = ("fill", "generate", "error")


@dataclass(frozen=True)
class RetrieveConfig:
    """params.retrieve: how deep to search, what a short concept does, a similarity floor, the shard encoding.

    Each concept's quota comes from the plan (size x oversample x mix.retrieved / concepts), never a fixed k.
    """

    search_factor: float = 2.0  # first search depth = the largest quota x this (room for images concepts share)
    shortfall: str = "fill"  # fill: other concepts' next-best images | generate: generation makes up the
    #                          difference (the generate stage reads shortfall.json) | error: stop, naming them
    min_similarity: float = -1.0
    shard_size: int = 1000
    jpeg_quality: int = 90
    download_margin: float = 0.2     # a pool of URLs: extra hits asked per concept for failed downloads
    download_rounds: int = 3         # rounds of replacing failed hits with the next candidates
    download_timeout_s: int = 10
    download_threads: int = 16
    download_min_side: int = 16      # a smaller download counts as failed (too small)
    exemplars: str = "exemplars"     # folder: <concept>/ images exemplify a concept, top-level images the domain
    exemplar_weight: float = 0.5     # share of the exemplars' mean image embedding in a concept's query

    def validate(self, prefix: str) -> None:
        """Check ranges and the shortfall policy."""
        require(self.search_factor >= 1.0, f"{prefix}.search_factor", self.search_factor, "use a number >= 1")
        require(self.shortfall in SHORTFALL_POLICIES, f"{prefix}.shortfall", self.shortfall,
                f"use one of {', '.join(SHORTFALL_POLICIES)}")
        require(-1.0 <= self.min_similarity <= 1.0, f"{prefix}.min_similarity", self.min_similarity, "use -1..1")
        require(self.shard_size >= 1, f"{prefix}.shard_size", self.shard_size, "use a positive integer")
        require(self.download_margin >= 0, f"{prefix}.download_margin", self.download_margin, "use a share >= 0")
        require(0.0 <= self.exemplar_weight <= 1.0, f"{prefix}.exemplar_weight", self.exemplar_weight,
                "use a share in [0, 1]")
        require_fields(self, prefix, ("download_rounds", "download_timeout_s", "download_threads"), lambda v: v >= 1,
                       "use an integer >= 1")


@dataclass
class Selection:
    """Which pool rows go to which concept, what each concept lacked, how deep the search went."""

    chosen: list[dict[str, Any]]
    shortfall: dict[int, int]  # concept index -> images missing from its own quota (before any fill)
    filled: int  # images other concepts gave to make up the total (shortfall: fill)
    depth: int  # neighbours searched per concept


def assign(similarities: np.ndarray, neighbours: np.ndarray, quotas: list[int], min_similarity: float,
           exclude: frozenset[int] | set[int] = frozenset()) -> list[dict[str, Any]]:
    """Greedy best-first assignment: each pool image goes to its best-scoring concept with room left.

    similarities, neighbours: (C, k) search results per concept; images in `exclude` (failed downloads) are
    skipped. Returns one claim per image.
    """
    claims = _claims(similarities, neighbours, min_similarity)
    taken: set[int] = set(exclude)
    filled = [0] * len(quotas)
    chosen = []
    for sim, concept, image, rank in claims:
        if image in taken or filled[concept] >= quotas[concept]:
            continue
        taken.add(image)
        filled[concept] += 1
        chosen.append({"pool_row": image, "concept_index": concept, "similarity": sim, "rank": rank})
    chosen.sort(key=lambda c: (c["concept_index"], c["rank"]))
    return chosen


def _claims(similarities: np.ndarray, neighbours: np.ndarray, min_similarity: float) -> list[tuple]:
    claims = [(float(similarities[c, r]), c, int(neighbours[c, r]), r)
              for c in range(similarities.shape[0]) for r in range(similarities.shape[1])
              if neighbours[c, r] >= 0 and similarities[c, r] >= min_similarity]
    claims.sort(key=lambda t: (-t[0], t[1], t[2]))
    return claims


def fill_claims(similarities: np.ndarray, neighbours: np.ndarray, taken: set[int], count: int,
                min_similarity: float) -> list[dict[str, Any]]:
    """Up to `count` more images, best similarity first over every concept, none already taken."""
    extra, seen = [], set(taken)
    for sim, concept, image, rank in _claims(similarities, neighbours, min_similarity):
        if len(extra) == count:
            break
        if image not in seen:
            seen.add(image)
            extra.append({"pool_row": image, "concept_index": concept, "similarity": sim, "rank": rank})
    return extra


def select(index: faiss.Index, queries: np.ndarray, quotas: list[int], cfg: RetrieveConfig,
           exclude: frozenset[int] | set[int] = frozenset()) -> Selection:
    """Search as deep as the quotas need (doubling until they are met, the pool is exhausted or results fall
    below min_similarity), assign best-first (never an image in `exclude`), and apply the shortfall policy."""
    queries = np.ascontiguousarray(queries)
    depth = min(index.ntotal, max(1, math.ceil(max(quotas, default=0) * cfg.search_factor)))
    while True:
        similarities, neighbours = index.search(queries, depth)
        chosen = assign(similarities, neighbours, quotas, cfg.min_similarity, exclude)
        got = np.bincount([c["concept_index"] for c in chosen], minlength=len(quotas))
        shortfall = {i: int(q - g) for i, (q, g) in enumerate(zip(quotas, got)) if g < q}
        extra = []
        if shortfall and cfg.shortfall == "fill":
            extra = fill_claims(similarities, neighbours, {c["pool_row"] for c in chosen} | set(exclude),
                                sum(shortfall.values()), cfg.min_similarity)
        met = len(chosen) + len(extra) == sum(quotas) if cfg.shortfall == "fill" else not shortfall
        below_floor = bool(len(similarities)) and bool((similarities[:, -1] < cfg.min_similarity).all())
        if met or depth >= index.ntotal or below_floor:
            break
        depth = min(index.ntotal, depth * 2)
    chosen = sorted(chosen + extra, key=lambda c: (c["concept_index"], c["rank"]))
    return Selection(chosen, shortfall, len(extra), depth)


EXEMPLAR_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def exemplar_images(folder: Path, concepts: list[dict[str, Any]]) -> tuple[dict[int, list[Path]], list[Path]]:
    """(concept index -> its exemplar images, the domain's): `<folder>/<concept name or safe_name>/*` and
    `<folder>/*` (image files only; a missing folder has none)."""
    def images(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXEMPLAR_SUFFIXES) \
            if path.is_dir() else []

    per_concept = {}
    for i, concept in enumerate(concepts):
        found = images(folder / concept["name"]) or images(folder / safe_name(concept["name"]))
        if found:
            per_concept[i] = found
    return per_concept, images(folder)


class ExemplarImages:
    """Exemplar image files as an indexable (image, None) source for ClipEncoder.encode_source."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, None]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return image.convert("RGB"), None


def blend_exemplars(queries: np.ndarray, concepts: list[dict[str, Any]], folder: Path, encoder: Any,
                    weight: float) -> tuple[np.ndarray, dict[str, int]]:
    """Image queries beside the text: each concept's query becomes the unit vector of (1 - weight) x its text query
    + weight x the mean embedding of its exemplar images (else the domain's, if any), so the pool is searched
    near curated seed images as well as near the prompts."""
    per_concept, domain = exemplar_images(folder, concepts)
    if not per_concept and not domain:
        return queries, {"concepts_with_exemplars": 0, "domain_exemplars": 0}
    def mean_of(paths: list[Path]) -> np.ndarray:
        vectors, _ = encoder.encode_source(ExemplarImages(paths), desc="exemplars")   # decoded in DataLoader workers
        mean = vectors.mean(axis=0)
        return mean / max(np.linalg.norm(mean), 1e-12)

    domain_mean = mean_of(domain) if domain else None
    out = queries.copy()
    for i in range(len(concepts)):
        image = mean_of(per_concept[i]) if i in per_concept else domain_mean
        if image is not None:
            blended = (1 - weight) * queries[i] + weight * image
            out[i] = blended / max(np.linalg.norm(blended), 1e-12)
    log.info("exemplar images: %d concept(s) with their own, %d for the whole domain", len(per_concept), len(domain))
    return out.astype(np.float32), {"concepts_with_exemplars": len(per_concept), "domain_exemplars": len(domain)}


@dataclass(frozen=True)
class PoolFiles:
    """files.parquet of a pool index: the id of every vector and, for a pool of URLs, where to fetch it."""

    ids: list[str]
    urls: list[str | None] | None = None      # a URL pool (no local copies): hits are downloaded
    captions: list[str | None] | None = None
    source_urls: list[str | None] | None = None  # every item's URL when known, local copies or not (attribution)

    @classmethod
    def read(cls, folder: Path) -> PoolFiles:
        """Read <pool_index>/files.parquet; urls only when the pool has no local image_path."""
        table = read_table(folder / "files.parquet")
        names = table.column_names
        web = "url" in names and "image_path" not in names
        column = (lambda *options: next((table.column(n).to_pylist() for n in options if n in names), None))
        return cls(table.column("id").to_pylist(), column("url") if web else None, column("caption", "TEXT"),
                   column("url", "URL"))


def _url(files: PoolFiles, row: int) -> str | None:
    """Where pool item `row` came from, when the pool's metadata says."""
    urls = files.source_urls or files.urls
    return urls[row] if urls else None


def select_downloaded(index: faiss.Index, queries: np.ndarray, quotas: list[int], cfg: RetrieveConfig,
                      files: PoolFiles, cache: Path, store: WorkStore | None = None,
                      ) -> tuple[Selection, dict[int, bytes], dict[str, Any]]:
    """Select with a margin for failed downloads, fetch the hits, and replace each failure with the next
    candidate of its concept, for up to `download_rounds` rounds; keep the best `quota` downloads per concept."""
    asked = [math.ceil(q * (1 + cfg.download_margin)) for q in quotas]
    fetched = Fetched()
    settings = DownloadSettings(cfg.download_timeout_s, cfg.download_threads, cfg.download_min_side, cfg.shard_size)
    selection = select(index, queries, asked, cfg)
    for _ in range(cfg.download_rounds):
        hits = [{"pool_row": c["pool_row"], "url": files.urls[c["pool_row"]],
                 "caption": files.captions[c["pool_row"]] if files.captions else None} for c in selection.chosen]
        download(hits, cache, settings, fetched, store)
        got = Counter(c["concept_index"] for c in selection.chosen if c["pool_row"] in fetched.images)
        if all(got[i] >= q for i, q in enumerate(quotas)):
            break
        selection = select(index, queries, asked, cfg, exclude=set(fetched.errors))
        if all(c["pool_row"] in fetched.images or c["pool_row"] in fetched.errors for c in selection.chosen):
            break  # nothing new to try: the pool is exhausted for the short concepts
    ok = [c for c in selection.chosen if c["pool_row"] in fetched.images]
    kept, spare, count = [], [], Counter()
    for claim in sorted(ok, key=lambda c: (c["concept_index"], c["rank"])):
        if count[claim["concept_index"]] < quotas[claim["concept_index"]]:
            kept.append(claim)
            count[claim["concept_index"]] += 1
        else:
            spare.append(claim)
    shortfall = {i: q - count[i] for i, q in enumerate(quotas) if count[i] < q}
    filled = []
    if shortfall and cfg.shortfall == "fill":  # other concepts' spare downloads make up the total
        filled = sorted(spare, key=lambda c: -c["similarity"])[: sum(shortfall.values())]
    chosen = sorted(kept + filled, key=lambda c: (c["concept_index"], c["rank"]))
    result = Selection(chosen, shortfall, len(filled), selection.depth)
    return result, {c["pool_row"]: fetched.images[c["pool_row"]] for c in chosen}, fetched.metrics()


def retrieve(
    index: faiss.Index, queries: np.ndarray, concepts: list[dict[str, Any]], pool_ids: list[str] | PoolFiles,
    pool_source: Path, total: int, cfg: RetrieveConfig, out_dir: Path, downloads: Path | None = None,
    store: WorkStore | str | None = TEAM,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Search, assign to the plan's quotas, and copy the chosen pool images into shards; return rows + metrics.

    pool_ids[i] is the pool item id of index vector i (or the whole PoolFiles). A pool of URLs has its hits
    downloaded into `downloads` (img2dataset, resumable), or taken from the team's work store (`store`,
    pas.core.work_store) when it holds them. out_dir/shortfall.json lists each concept the pool
    could not fill (for the dataset report).
    """
    files = pool_ids if isinstance(pool_ids, PoolFiles) else PoolFiles(list(pool_ids))
    pool_ids = files.ids
    quotas = per_concept_quota(total, len(concepts))
    fetched_metrics: dict[str, Any] | None = None
    if files.urls is not None:
        if downloads is None:
            raise DataError(f"{pool_source} is a pool of URLs: retrieve needs a downloads folder (--downloads)")
        selection, by_row, fetched_metrics = select_downloaded(index, queries, quotas, cfg, files, downloads,
                                                               resolve(store))
        log.info("retrieve: %d URLs downloaded, %d restored from the team's work store",
                 fetched_metrics["urls_downloaded"], fetched_metrics["urls_restored"])
    else:
        selection, by_row = select(index, queries, quotas, cfg), None
    shortfall = {concepts[i]["name"]: n for i, n in selection.shortfall.items()}
    if shortfall and cfg.shortfall == "error":
        worst = sorted(shortfall.items(), key=lambda item: -item[1])[:5]
        raise DataError(f"the pool cannot fill the retrieval quota of {len(shortfall)} concept(s) (missing "
                        f"{', '.join(f'{name!r}: {n}' for name, n in worst)}); add pool images, lower size or "
                        "mix.retrieved, or set retrieve.shortfall: fill")
    chosen = selection.chosen
    if by_row is not None:
        payload = {pool_ids[row]: data for row, data in by_row.items()}
    else:
        try:
            payload = load_items(pool_source, [pool_ids[c["pool_row"]] for c in chosen])
        except OSError as err:
            raise DataError(f"pool item {err.filename or err} cannot be read from {pool_source}: give the pool's "
                            "metadata an image_path column for local copies, or a url column to download them") from None
    rows, records, shard_index = [], [], 0

    def flush() -> None:
        nonlocal records, shard_index
        if records:
            write_shard(out_dir / shard_name("retrieved", shard_index), records)
            shard_index += 1
            records = []

    for claim in chosen:
        concept = concepts[claim["concept_index"]]
        pool_id = pool_ids[claim["pool_row"]]
        image = decode_image(payload[pool_id])
        key = f"ret{claim['pool_row']:08d}"
        meta = {"key": key, "source": "retrieved", "concept": concept["name"], "prompt": concept["prompts"][0],
                "pool_source": str(pool_source), "pool_id": pool_id, "pool_row": claim["pool_row"],
                "similarity": claim["similarity"],
                "url": _url(files, claim["pool_row"]),
                "caption": files.captions[claim["pool_row"]] if files.captions else None,
                "rank": claim["rank"], "shard": shard_name("retrieved", shard_index),
                "width": image.width, "height": image.height}
        records.append((key, encode_jpeg(image, cfg.jpeg_quality), meta))
        rows.append(meta)
        if len(records) == cfg.shard_size:
            flush()
    flush()
    if shortfall:
        log.warning("the pool fell short of the quota of %d concept(s) by %d image(s)%s: %s", len(shortfall),
                    sum(shortfall.values()), f"; {selection.filled} filled by other concepts" if selection.filled
                    else "", dict(sorted(shortfall.items(), key=lambda item: -item[1])[:10]))
    write_json({"policy": cfg.shortfall, "quota": dict(zip([c["name"] for c in concepts], quotas)),
                "missing": shortfall, "filled": selection.filled}, out_dir / "shortfall.json")
    metrics = {"images": len(rows), "requested": total, "shards": shard_index, "concepts_short": len(shortfall),
               "shortfall": sum(shortfall.values()), "filled": selection.filled, "search_depth": selection.depth,
               "shortfall_per_concept": shortfall,
               "mean_similarity": float(np.mean([r["similarity"] for r in rows])) if rows else 0.0}
    if fetched_metrics is not None:
        metrics["downloads"] = fetched_metrics
    return rows, metrics
