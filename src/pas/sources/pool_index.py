"""Index an unlabeled pool: stream it, embed it with CLIP in resumable chunks, build a faiss index.

Chunks (`chunk-NNNNNN.npy` float16 embeddings + `.parquet` item table) are written atomically
and fingerprinted, so a killed run resumes at the first unfinished chunk. The index is built
from the chunks one at a time (never all embeddings in RAM) and its type follows the pool size
and a memory budget; nprobe / efSearch are tuned until recall@10 against exact search on
held-out queries reaches the target.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pas.core.config import ConfigError, require
from pas.core.runtime import num_workers, pick_device
from pas.core.scaleout import map_on_ray, ray_address
from pas.core.shards import atomic_path, save_embeddings, write_table
from pas.core.work_store import TEAM, WorkStore, pack, resolve, unpack
from pas.models.clip import ClipEncoder
from pas.models.registry import read_entry
from pas.sources.embedding_pool import check_model, is_embedding_pool, iter_blocks, iter_files, open_pool, rows_of
from pas.sources.index_blocks import block_rows, build_in_blocks, code_bytes, needs_disk
from pas.sources.pool_config import INDEX_KINDS, PoolIndexConfig
from pas.sources.pool_sources import PoolItem, decode_checked, iter_pool
from pas.sources.rerank import Reranked, Rows

log = logging.getLogger(__name__)


def check_source(source: str) -> Path:
    """Fail at once, naming the param, when the pool path is missing."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"pool_index.source={source!r}: not found; point it at a folder (images, tar shards, "
                          "parquet, .lst lists) or one such file (the offline default is made by sample_data)")
    return path


class _Decoded(torch.utils.data.Dataset):
    """Decode + preprocess a chunk's items (run in DataLoader workers)."""

    def __init__(self, items: list[PoolItem], preprocess: Callable, min_side: int) -> None:
        self.items, self.preprocess, self.min_side = items, preprocess, min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        item = self.items[i]
        image, reason = (None, item.reason) if item.reason else decode_checked(item.data, self.min_side)
        row = {"id": item.id, "kind": item.kind, "reason": reason, "usable": image is not None,
               "width": image.width if image else 0, "height": image.height if image else 0}
        return (self.preprocess(image) if image is not None else None), row


def _collate(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[torch.Tensor | None, list[dict[str, Any]]]:
    pixels = [p for p, _ in batch if p is not None]
    return (torch.stack(pixels) if pixels else None), [row for _, row in batch]


def _chunk_digest(base: str, items: list[PoolItem]) -> str:
    """Content address of a chunk: its items' ids, bytes (sha256) and skip reasons, and what embeds them."""
    digest = hashlib.sha256(base.encode())
    for item in items:
        content = hashlib.sha256(item.data).hexdigest() if item.data else "-"
        digest.update(f"{item.id}:{content}:{item.reason}\n".encode())
    return digest.hexdigest()[:16]


def _chunks(source: Path, size: int) -> Iterator[list[PoolItem]]:
    stream = iter_pool(source)
    while chunk := list(islice(stream, size)):
        yield chunk


def load_encoder(clip: str | Path, batch_size: int) -> ClipEncoder:
    """The CLIP encoder on this process's device (in a Ray actor: the actor's GPU)."""
    return ClipEncoder(clip, pick_device(), batch_size)


def _chunk_worker(make_encoder: Callable[[], Any], cfg: PoolIndexConfig, loader_workers: int) -> Callable:
    """The encoder, loaded once, as a function of one chunk task (items, fingerprint, its two file paths)."""
    encoder = make_encoder()
    return lambda task: _embed_chunk(encoder, cfg, loader_workers, *task)


def _embed_chunk(encoder: Any, cfg: PoolIndexConfig, loader_workers: int, items: list[PoolItem], digest: str,
                 paths: tuple[Path, Path]) -> tuple[str, tuple[Path, Path]]:
    table_path, emb_path = paths
    loader = torch.utils.data.DataLoader(_Decoded(items, encoder.preprocess, cfg.min_side),
                                         batch_size=cfg.batch_size, num_workers=loader_workers, collate_fn=_collate)
    rows, embeddings = [], []
    for pixels, batch_rows in loader:
        rows.extend(batch_rows)
        if pixels is not None:
            embeddings.append(encoder.encode_pixels(pixels))
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)
    save_embeddings(matrix, emb_path)
    table = pa.Table.from_pylist(rows).replace_schema_metadata({"pas.fingerprint": digest})
    write_table(table, table_path)  # written last: it marks the chunk complete
    return digest, paths


CHUNKS = "pool-chunks"   # the work store's kind of embedded pool chunks, by chunk digest


def _restore_chunk(store: WorkStore, digest: str, paths: tuple[Path, Path]) -> bool:
    """Write a chunk's two files from the team's work store (embeddings first, the table last); False if absent."""
    payload = store.fetch(CHUNKS, [digest]).get(digest)
    if payload is None:
        return False
    table_path, emb_path = paths
    embeddings, table = unpack(payload)
    for data, path in ((embeddings, emb_path), (table, table_path)):
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    return True


def _save_chunk(store: WorkStore, digest: str, paths: tuple[Path, Path]) -> None:
    """Save a chunk just embedded to the team's work store."""
    table_path, emb_path = paths
    store.put(CHUNKS, digest, pack([emb_path.read_bytes(), table_path.read_bytes()]))


def embed_pool(source: Path, make_encoder: Callable[[], Any], cfg: PoolIndexConfig, out_dir: Path, model_sha: str,
               loader_workers: int = 0, store: WorkStore | None = None, counts: Counter | None = None) -> int:
    """Embed the pool into fingerprinted chunk files under out_dir; return the number of chunks.

    Finished chunks are kept (the encoder is not even loaded when all are). With PAS_RAY_ADDRESS set, the chunks
    to embed stream to one encoder-holding Ray actor per GPU (or CPU slot); each writes its chunk atomically.
    A chunk the team's work store holds (`store`) is restored from it; one embedded here is saved there. `counts`
    receives chunks, reused, restored and embedded.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = json.dumps([model_sha, cfg.min_side, str(source)])
    seen = Counter() if counts is None else counts

    def pending() -> Iterator[tuple[list[PoolItem], str, tuple[Path, Path]]]:
        for index, items in enumerate(tqdm(_chunks(source, cfg.chunk_size), desc="pool chunks", unit="chunk")):
            seen["chunks"] += 1
            table_path, emb_path = chunk_paths(out_dir, index)
            digest = _chunk_digest(base, items)
            if table_path.exists() and emb_path.exists():
                meta = pq.read_schema(table_path).metadata or {}
                if meta.get(b"pas.fingerprint", b"").decode() == digest:
                    seen["reused"] += 1
                    continue
            if store is not None and _restore_chunk(store, digest, (table_path, emb_path)):
                seen["restored"] += 1
                continue
            yield items, digest, (table_path, emb_path)

    def finished(digest: str, paths: tuple[Path, Path]) -> None:
        seen["embedded"] += 1
        if store is not None:
            _save_chunk(store, digest, paths)

    address = ray_address()
    if address:
        for done in map_on_ray(partial(_chunk_worker, make_encoder, cfg, 0), pending(), address, "pool chunks (ray)"):
            finished(*done)
    else:
        work = None
        for task in pending():
            work = work or _chunk_worker(make_encoder, cfg, loader_workers)
            finished(*work(task))
    count = seen["chunks"]
    for stale in sorted(out_dir.glob("chunk-*")):
        if int(stale.stem.split("-")[1]) >= count:
            stale.unlink()
    log.info("pool: %d chunks (%d reused from an earlier run, %d restored from the team's work store, %d embedded)",
             count, seen["reused"], seen["restored"], seen["embedded"])
    return count


def chunk_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    """(file table, embeddings) of chunk `index`: the one place their names are spelled."""
    return out_dir / f"chunk-{index:06d}.parquet", out_dir / f"chunk-{index:06d}.npy"


def chunk_embeddings(out_dir: Path, count: int) -> Iterator[np.ndarray]:
    """Yield each chunk's embeddings (float32, memory-mapped from float16) in order."""
    for index in range(count):
        array = np.load(chunk_paths(out_dir, index)[1], mmap_mode="r")
        if array.size:
            yield np.asarray(array, dtype=np.float32)


def _flat(dim: int, n: int, budget_mb: int) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


def _nlist(n: int) -> int:
    # sqrt(n) lists: k-means training stays minutes on a few CPU cores at 1M vectors;
    # recall is then bought with nprobe, which `tune` sets.
    return int(max(1, min(65536, np.sqrt(n), n // 39)))


def _ivf_flat(dim: int, n: int, budget_mb: int) -> faiss.Index:
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, _nlist(n), faiss.METRIC_INNER_PRODUCT)


def _ivf_sq8(dim: int, n: int, budget_mb: int) -> faiss.Index:
    return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, _nlist(n), faiss.ScalarQuantizer.QT_8bit,
                                         faiss.METRIC_INNER_PRODUCT)


def pq_bytes(dim: int, n: int, budget_mb: int) -> int:
    """Bytes of one IVF-PQ code (8-bit sub-quantizers): the finest of dim/4, dim/8, dim/16 whose codes of `n`
    vectors (plus their ids) fit the budget, else the coarsest."""
    options = [m for m in (dim // 4, dim // 8, dim // 16) if m >= 1 and dim % m == 0] or [1]
    fitting = [m for m in options if n * (m + 8) <= budget_mb * 2**20]
    return fitting[0] if fitting else options[-1]


def _ivf_pq(dim: int, n: int, budget_mb: int) -> faiss.Index:
    m = pq_bytes(dim, n, budget_mb)
    return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, _nlist(n), m, 8, faiss.METRIC_INNER_PRODUCT)


def _hnsw(dim: int, n: int, budget_mb: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    return index


INDEXES: dict[str, Callable[[int, int, int], faiss.Index]] = {
    "flat": _flat, "ivf_flat": _ivf_flat, "ivf_sq8": _ivf_sq8, "ivf_pq": _ivf_pq, "hnsw": _hnsw}
assert tuple(INDEXES) == INDEX_KINDS, "pas.sources.pool_config.INDEX_KINDS names every index INDEXES builds"


def choose_index(n: int, dim: int, budget_mb: int) -> str:
    """Exact below 200k vectors when it fits; else the most exact IVF variant whose lists fit the budget in memory:
    float, then 8-bit codes, then PQ codes (a quarter to a sixteenth of a byte a dimension) whose candidates are
    re-ranked exactly from the stored vectors. PQ lists too large even so are built on disk
    (benchmarks/webpool.py, 10M x 512 in a 2 GB budget: PQ with 128-byte codes re-ranked in memory, not 8-bit
    codes memory-mapped from disk, whose pages alone took 11 GB of resident memory)."""
    budget = budget_mb * 2**20
    if n < 200_000 and n * dim * 4 <= budget:
        return "flat"
    if n * (dim * 4 + 8) <= budget:
        return "ivf_flat"
    if n * (dim + 8) <= budget:
        return "ivf_sq8"
    return "ivf_pq"


def without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) neighbour ids with each query's own id left out: leave-one-out queries, a pool image asking for its
    neighbours among the others, as a new image of the same distribution would."""
    return np.stack([row[row != mine][:k] for row, mine in zip(ids, own)])


def exact_neighbours(chunks: Callable[[], Iterator[np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids over all chunks, merging per-chunk results (memory flat in pool size)."""
    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    offset = 0
    for block in chunks():
        flat = faiss.IndexFlatIP(block.shape[1])
        flat.add(block)
        d, i = flat.search(queries, min(k, len(block)))
        all_d, all_i = np.hstack([best_d, d]), np.hstack([best_i, i + offset])
        order = np.argsort(-all_d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(all_d, order, 1), np.take_along_axis(all_i, order, 1)
        offset += len(block)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


RERANK_FACTORS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def tune(index: Any, queries: np.ndarray, truth: np.ndarray, target: float,
         own: np.ndarray | None = None) -> tuple[dict[str, int], float]:
    """Raise nprobe (IVF) or efSearch (HNSW) until recall@k reaches `target`; return settings + recall. With `own`
    (the queries' ids in the index) each query's own id is left out of what the index finds. A re-ranked index
    also raises its candidate factor (up to the one it was built with) at each nprobe, while that still helps:
    whether the codes or the coarse lists limit recall depends on the data."""
    k = truth.shape[1]

    def found() -> np.ndarray:
        if own is None:
            return index.search(queries, k)[1]
        return without_self(index.search(queries, k + 1)[1], own, k)

    base = index.index if isinstance(index, Reranked) else index
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        knob, values, apply = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
                                         if v < ivf.nlist] + [ivf.nlist], lambda v: setattr(ivf, "nprobe", v)
    elif isinstance(base, faiss.IndexHNSW):
        knob, values, apply = "efSearch", [16, 32, 64, 128, 256, 512, 1024], lambda v: setattr(base.hnsw, "efSearch", v)
    else:
        return {}, recall(found(), truth)
    factors = ([f for f in RERANK_FACTORS if f < index.factor] + [index.factor]) if isinstance(index, Reranked) else []
    step = 0
    for value in values:
        apply(value)
        if factors:
            index.factor = factors[step]
        achieved = recall(found(), truth)
        while achieved < target and step + 1 < len(factors):
            index.factor = factors[step + 1]
            more = recall(found(), truth)
            if more < achieved + 0.01:        # the coarse lists limit recall here, not the codes: raise nprobe
                index.factor = factors[step]
                break
            step, achieved = step + 1, more
        if achieved >= target:
            break
    settings = {knob: value}
    if factors:
        settings["rerank"] = index.factor
    return settings, achieved


def build_index(chunks: Callable[[], Iterator[np.ndarray]], n: int, dim: int, cfg: PoolIndexConfig,
                seed: int = 0, disk: Path | None = None, rows: Rows | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on a sample, add chunk by chunk, tune for the target recall; return index + description.

    With `disk` (a folder) an IVF index is built through resumable block files there; its lists are merged in
    memory when they fit memory_budget_mb, else into disk/lists.ivfdata, searched memory-mapped
    (pas.sources.index_blocks). With `rows` (a reader of the stored vectors) IVF-PQ candidates are re-ranked
    exactly (pas.sources.rerank).
    """
    kind = choose_index(n, dim, cfg.memory_budget_mb) if cfg.index == "auto" else cfg.index
    index = INDEXES[kind](dim, n, cfg.memory_budget_mb)
    rng = np.random.default_rng(seed)
    sample_size = min(n, 10_000 if index.is_trained else 39 * index.nlist)  # faiss wants >= 39 per list
    keep = np.sort(rng.choice(n, size=sample_size, replace=False))
    # recall is measured on pool images the quantizer was not trained on (trained ones are quantized too well)
    own = (np.setdiff1d(rng.choice(n, size=min(n, 400), replace=False), keep)[:200] if n > len(keep)
           else np.sort(rng.choice(keep, size=min(200, len(keep)), replace=False)))
    sample, probes, offset = [], [], 0
    for block in chunks():
        for ids, gathered in ((keep, sample), (own, probes)):
            gathered.append(block[ids[(ids >= offset) & (ids < offset + len(block))] - offset])
        offset += len(block)
    sample_matrix, queries = np.concatenate(sample), np.concatenate(probes)
    if not index.is_trained:
        log.info("training %s on %d vectors", kind, len(sample_matrix))
        index.train(sample_matrix)
    is_ivf = faiss.try_extract_index_ivf(index) is not None
    on_disk = disk is not None and needs_disk(index, n, cfg.memory_budget_mb)
    if disk is not None and is_ivf:
        index = build_in_blocks(index, chunks, disk, block_rows(index, cfg.memory_budget_mb), on_disk)
    else:
        for block in tqdm(chunks(), desc=f"index {kind}", unit="chunk"):
            index.add(block)
    reranked = kind == "ivf_pq" and cfg.rerank > 0 and rows is not None
    if reranked:  # PQ codes are coarse: their candidates are re-scored exactly from the stored vectors
        index = Reranked(index, rows, cfg.rerank)
    k = min(10, n - 1)  # leave-one-out: each probe asks for its neighbours among the other pool images
    if k >= 1:
        truth = without_self(exact_neighbours(chunks, queries, k + 1), own, k)
        settings, achieved = tune(index, queries, truth, cfg.target_recall, own)
    else:  # a pool of one image: nothing to tune
        settings, achieved = {}, 1.0
    base = index.index if isinstance(index, Reranked) else index
    nlist = getattr(faiss.try_extract_index_ivf(base), "nlist", 0)
    description = {"index": kind, "vectors": n, "dim": dim, "rerank": 0, **settings, "nlist": nlist,
                   "recall_at_10": achieved, "on_disk": on_disk, "list_bytes": n * code_bytes(base)}
    if kind == "ivf_pq":
        description["pq_bytes"] = faiss.extract_index_ivf(base).code_size
    if (cfg.index == "auto" and nlist and settings.get("nprobe", 0) * 2 > nlist
            and n * dim * 4 <= cfg.memory_budget_mb * 2**20):
        # Data without cluster structure: the target recall needs most lists, so exact search is faster.
        log.info("%s needs nprobe %d of %d for recall %.2f: using exact search instead", kind,
                 settings["nprobe"], nlist, cfg.target_recall)
        index = faiss.IndexFlatIP(dim)
        for block in chunks():
            index.add(block)
        description = {"index": "flat", "vectors": n, "dim": dim, "recall_at_10": 1.0,
                       "fallback_from": {"index": kind, "nlist": nlist, **settings, "recall_at_10": achieved}}
    description["target_recall"] = cfg.target_recall
    description["recall_met"] = description["recall_at_10"] >= cfg.target_recall
    if not description["recall_met"]:
        log.warning("pool index %s reaches recall@10 %.3f, below pool_index.target_recall %.2f: retrieval will miss "
                    "some true neighbours; raise pool_index.memory_budget_mb or choose index: flat",
                    description["index"], description["recall_at_10"], cfg.target_recall)
    return index, description


def save_index(index: faiss.Index, description: dict[str, Any], folder: Path) -> None:
    """Write index.faiss and index.json (type, tuned search settings, measured recall) atomically."""
    with atomic_path(folder / "index.faiss") as tmp:
        faiss.write_index(index.index if isinstance(index, Reranked) else index, str(tmp))
    with atomic_path(folder / "index.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2, sort_keys=True))


def load_index(folder: Path) -> Any:
    """Memory-map a saved index and apply its tuned search settings."""
    description = json.loads((folder / "index.json").read_text())
    # on-disk lists are memory-mapped by faiss itself; IO_FLAG_MMAP on such an index misreads it (faiss 1.x)
    flags = faiss.IO_FLAG_READ_ONLY if description.get("on_disk") else faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    index = faiss.read_index(str(folder / "index.faiss"), flags)
    if "nprobe" in description:
        faiss.extract_index_ivf(index).nprobe = description["nprobe"]
    if "efSearch" in description:
        index.hnsw.efSearch = description["efSearch"]
    if description.get("rerank"):
        return Reranked(index, stored_rows(folder, description), description["rerank"])
    return index


def index_pool(cfg: PoolIndexConfig, clip: str | Path, out: Path, seed: int,
               store: WorkStore | str | None = TEAM) -> dict[str, Any]:
    """The stage: embed the pool into resumable chunks (restored from the team's work store when it holds them),
    then write files.parquet and the index."""
    source = check_source(cfg.source)
    if is_embedding_pool(source):
        return index_embedding_pool(source, cfg, clip, out, seed)
    chunks_dir = out / "chunks"
    model_sha = read_entry(clip)["sha256"]
    counts: Counter = Counter()
    count = embed_pool(source, partial(load_encoder, str(clip), cfg.batch_size), cfg, chunks_dir, model_sha,
                       num_workers(), resolve(store), counts)
    items = pa.concat_tables([pq.read_table(chunk_paths(chunks_dir, i)[0]) for i in range(count)])
    usable = items.filter(items.column("usable"))
    if usable.num_rows == 0:
        raise ConfigError(f"pool_index.source={cfg.source!r} holds no usable images")
    write_table(usable.replace_schema_metadata(None), out / "files.parquet")  # row i = index id i
    dim = next(chunk_embeddings(chunks_dir, count)).shape[1]
    index, description = build_index(lambda: chunk_embeddings(chunks_dir, count), usable.num_rows, dim, cfg, seed,
                                     disk=out, rows=chunk_rows(chunks_dir, count))
    description["clip_sha256"] = model_sha  # lets embed reuse these vectors only for the same CLIP model
    description["chunks"] = count
    save_index(index, description, out)
    reasons = Counter(items.column("reason").to_pylist())
    return {"items": items.num_rows, "indexed": usable.num_rows, "skipped": items.num_rows - usable.num_rows,
            "reasons": dict(reasons), "chunks_embedded": counts["embedded"], "chunks_restored": counts["restored"],
            **description}


def index_embedding_pool(source: Path, cfg: PoolIndexConfig, clip: str | Path, out: Path,
                         seed: int) -> dict[str, Any]:
    """The stage for a pool of precomputed embeddings: check the model, write files.parquet, build the index; the
    vectors are streamed from their parts and never recomputed."""
    pool = open_pool(source, cfg.embedding_model)
    entry = read_entry(clip)
    check_model(pool, entry["name"], ClipEncoder(clip, "cpu").encode_texts(["a photo"]).shape[1])
    log.info("pool of %d precomputed %s embeddings in %d part(s): indexing without re-embedding", pool.rows,
             pool.model, len(pool.parts))
    with atomic_path(out / "files.parquet") as tmp:
        writer = None
        for table in iter_files(pool):
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    index, description = build_index(lambda: iter_blocks(pool), pool.rows, pool.dim, cfg, seed, disk=out,
                                     rows=lambda ids: rows_of(pool, ids))
    description.update(kind="embeddings", source=str(source), embedding_model=pool.model, parts=len(pool.parts),
                       clip_sha256=entry["sha256"])  # checked by name: the same model, so embed may reuse them
    save_index(index, description, out)
    return {"items": pool.rows, "indexed": pool.rows, "skipped": 0, "reasons": {}, **description}


def pool_embeddings(folder: Path, ids: list[int], model_sha: str) -> np.ndarray | None:
    """(len(ids), D) float32 pool vectors of index ids, read chunk by chunk (memory-mapped); None when the pool
    was embedded by another CLIP model than `model_sha` (its vectors are then not comparable)."""
    description = json.loads((folder / "index.json").read_text())
    if description.get("clip_sha256") != model_sha:
        return None
    rows = stored_rows(folder, description)
    return None if rows is None else rows(np.asarray(ids, dtype=np.int64))


def stored_rows(folder: Path, description: dict[str, Any]) -> Rows | None:
    """A reader of the pool's stored vectors by index id: its embedding parts, or the chunks pool_index wrote."""
    if description.get("kind") == "embeddings":
        pool = open_pool(Path(description["source"]), description["embedding_model"])
        return lambda ids: rows_of(pool, ids)
    if "chunks" not in description:
        return None
    return chunk_rows(folder / "chunks", description["chunks"])


def chunk_rows(chunks_dir: Path, count: int) -> Rows:
    """A reader of chunk embeddings by index id (ids count the usable items of the chunks in order)."""
    def read(ids: np.ndarray) -> np.ndarray:
        wanted = np.asarray(ids, dtype=np.int64)
        out: np.ndarray | None = None
        offset = 0
        for index in range(count):
            block = np.load(chunk_paths(chunks_dir, index)[1], mmap_mode="r")
            if not block.size:
                continue
            if out is None:
                out = np.zeros((len(wanted), block.shape[1]), np.float32)
            inside = (wanted >= offset) & (wanted < offset + len(block))
            out[inside] = block[wanted[inside] - offset]
            offset += len(block)
        return out if out is not None else np.zeros((len(wanted), 0), np.float32)
    return read
