"""Text-to-image generation with diffusers into deterministic, resumable WebDataset shards.

Image i of a run maps to (concept, prompt, seed) by a rule that depends only on params, and
every record carries a fingerprint of what produced it. A shard whose records all match is
kept byte for byte; matching records of a partial or longer shard are reused; only missing
images are rendered. A shard is the unit of work: with PAS_RAY_ADDRESS set, Ray actors render the
shards (pas.core.scaleout).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pas.core.config import require
from pas.core.runtime import pick_device
from pas.core.scaleout import map_on_ray, ray_address
from pas.core.shards import encode_jpeg, read_shard, shard_name, write_shard, write_table
from pas.core.work_store import TEAM, WorkStore, resolve
from pas.sources.plan import concept_of

log = logging.getLogger(__name__)

IMAGES = "images"   # the work store's kind of rendered images, by job digest


@dataclass(frozen=True)
class GenerateConfig:
    """params.generate: sampling (None = the model preset's recommendation) and output encoding."""

    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    output_size: int = 64
    batch_size: int = 16
    shard_size: int = 1000
    jpeg_quality: int = 90

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        for name in ("steps", "resolution", "output_size", "batch_size", "shard_size"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{prefix}.{name}", value, "use a positive integer (or null)")
        require(self.resolution is None or self.resolution % 8 == 0, f"{prefix}.resolution", self.resolution,
                "use a multiple of 8")
        require(1 <= self.jpeg_quality <= 100, f"{prefix}.jpeg_quality", self.jpeg_quality, "use 1..100")
        require(self.guidance is None or self.guidance >= 0, f"{prefix}.guidance", self.guidance, "use >= 0")


@dataclass(frozen=True)
class Sampling:
    """The effective sampling settings of a run (params over the model's recommendation)."""

    steps: int
    guidance: float
    resolution: int
    output_size: int
    jpeg_quality: int


@dataclass(frozen=True)
class Throughput:
    """Machine switches that do not change what is rendered; read from the environment."""

    compile: bool = False
    attention_slicing: bool = False
    vae_slicing: bool = False

    @classmethod
    def from_env(cls) -> Throughput:
        """PAS_COMPILE, PAS_ATTENTION_SLICING, PAS_VAE_SLICING set to 1 turn a switch on."""
        flag = lambda name: os.environ.get(name, "0") not in ("", "0", "false")  # noqa: E731
        return cls(flag("PAS_COMPILE"), flag("PAS_ATTENTION_SLICING"), flag("PAS_VAE_SLICING"))


def effective_sampling(cfg: GenerateConfig, recommended: dict[str, Any]) -> Sampling:
    """Fill the settings params leave null from the model's recommended ones."""
    pick = lambda name: getattr(cfg, name) if getattr(cfg, name) is not None else recommended[name]  # noqa: E731
    return Sampling(int(pick("steps")), float(pick("guidance")), int(pick("resolution")), cfg.output_size,
                    cfg.jpeg_quality)


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of image `index`: depends only on the run seed and the index."""
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF


def makeup_jobs(concepts: list[dict[str, Any]], missing: dict[str, int], start: int, seed: int) -> list[dict[str, Any]]:
    """Jobs that make up what retrieval could not give (retrieve.shortfall: generate): `missing[name]` more images
    of each short concept, numbered from `start` (after the planned images), prompts in turn."""
    jobs, index = [], start
    for concept in concepts:
        for j in range(missing.get(concept["name"], 0)):
            jobs.append({"key": f"gen{index:08d}", "index": index, "concept": concept["name"],
                         "prompt": concept["prompts"][j % len(concept["prompts"])],
                         "negative_prompt": concept.get("negative_prompt", ""), "seed": image_seed(seed, index)})
            index += 1
    return jobs


def retrieval_shortfall(shortfall_json: str | Path) -> dict[str, int]:
    """Images per concept generation must make up: retrieve's shortfall.json when its policy is `generate`."""
    path = Path(shortfall_json)
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return dict(record.get("missing", {})) if record.get("policy") == "generate" else {}


def plan_jobs(concepts: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Map image i to (concept, prompt, seed) by a rule that depends only on params (prefix-stable)."""
    n = len(concepts)
    jobs = []
    for i in range(count):
        concept = concepts[concept_of(i, n)]
        prompts = concept["prompts"]
        jobs.append({
            "key": f"gen{i:08d}",
            "index": i,
            "concept": concept["name"],
            "prompt": prompts[(i // n) % len(prompts)],
            "negative_prompt": concept.get("negative_prompt", ""),
            "seed": image_seed(seed, i),
        })
    return jobs


def job_digest(job: dict[str, Any], sampling: Sampling, model: dict[str, Any]) -> str:
    """What produced one image: the job, the effective sampling settings and the exact model.

    The model counts by its content hash alone, not by the name params gave it: `sdxl-turbo` and
    `stabilityai/sdxl-turbo` are one model, and renaming it renders nothing again.
    """
    payload = json.dumps({"job": job, "sampling": sampling.__dict__, "model": model["sha256"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_pipeline(model_dir: str | Path, device: str, throughput: Throughput = Throughput(),
                  variant: str | None = None) -> Any:
    """Load a diffusers text-to-image pipeline from a local folder (half precision + channels-last on GPU).

    `variant` is the lock entry's (the fp16 weight files the models stage fetched); bf16 only where the GPU runs it
    natively (an emulated bf16 is several times slower than fp16).
    """
    import torch
    from diffusers import AutoPipelineForText2Image

    on_gpu = device.startswith("cuda")
    native_bf16 = on_gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    dtype = (torch.bfloat16 if native_bf16 else torch.float16) if on_gpu else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), dtype=dtype, variant=variant)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if on_gpu and getattr(pipe, "unet", None) is not None:
        pipe.unet.to(memory_format=torch.channels_last)
    if throughput.attention_slicing:
        pipe.enable_attention_slicing()
    if throughput.vae_slicing and hasattr(pipe, "vae"):
        pipe.vae.enable_slicing()
    if throughput.compile and denoiser is not None:
        denoiser.forward = torch.compile(denoiser.forward, mode="reduce-overhead")
    return pipe


TRUNCATION_NOTICES = ("truncated because CLIP can only handle", "Token indices sequence length is longer")


class WithoutTruncationNotices(logging.Filter):
    """Drops the per-batch prompt-truncation notices of diffusers and transformers: generate warns once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in TRUNCATION_NOTICES)


def long_prompts(model_dir: str | Path, prompts: Iterable[str]) -> tuple[list[str], int]:
    """(prompts longer than the text encoder reads, its token limit): CLIP reads 77 tokens and drops the rest."""
    folder = Path(model_dir) / "tokenizer"
    if not folder.is_dir():
        return [], 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    limit = tokenizer.model_max_length
    unique = sorted(set(prompts))
    lengths = tokenizer(unique, truncation=False, verbose=False).input_ids if unique else []
    return [p for p, ids in zip(unique, lengths) if len(ids) > limit], limit


def render(pipe: Any, jobs: list[dict[str, Any]], sampling: Sampling) -> list[Any]:
    """Render one batch of jobs with one seeded generator per image; returns PIL images."""
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(job["seed"]) for job in jobs]
    kwargs: dict[str, Any] = {}
    if sampling.guidance > 1.0 and any(job["negative_prompt"] for job in jobs):
        kwargs["negative_prompt"] = [job["negative_prompt"] for job in jobs]
    quiet = WithoutTruncationNotices()
    loggers = [logging.getLogger(type(pipe).__module__), logging.getLogger("transformers.tokenization_utils_base")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        with torch.inference_mode():
            out = pipe(prompt=[job["prompt"] for job in jobs], num_inference_steps=sampling.steps,
                       guidance_scale=sampling.guidance, height=sampling.resolution, width=sampling.resolution,
                       generator=generators, output_type="pil", **kwargs)
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    return out.images


def _encode(image: Any, sampling: Sampling) -> bytes:
    return encode_jpeg(image.resize((sampling.output_size, sampling.output_size)), sampling.jpeg_quality)


def _existing_records(shard: Path) -> dict[str, tuple[bytes, dict[str, Any]]]:
    if not shard.exists():
        return {}
    try:
        return {key: (jpeg, meta) for key, jpeg, meta in read_shard(shard)}
    except Exception:  # a damaged shard is simply regenerated
        log.warning("shard %s is unreadable: regenerating it", shard.name)
        return {}


class ShardWriter:
    """Renders the missing images of one shard (or restores them from the team's work store) and writes shard +
    index atomically."""

    def __init__(self, pipe_factory: Any, sampling: Sampling, model: dict[str, Any], batch_size: int,
                 store: WorkStore | None = None) -> None:
        self.pipe_factory, self.sampling, self.model, self.batch_size = pipe_factory, sampling, model, batch_size
        self.store = store
        self.encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jpeg")  # off the render path

    def _meta(self, job: dict[str, Any], fingerprint: str, name: str) -> dict[str, Any]:
        return {**job, **self.sampling.__dict__, "model": self.model["name"],
                "revision": self.model.get("revision", ""), "shard": name, "fingerprint": fingerprint,
                "source": "generated",  # no timings: a shard's bytes depend on its jobs alone
                "width": self.sampling.output_size, "height": self.sampling.output_size}

    def run(self, out_dir: Path, index: int, jobs: list[dict[str, Any]]) -> tuple[str, int, int]:
        """Bring shard `index` up to date; return ('kept' | 'updated' | 'rendered', images rendered, images
        restored from the work store)."""
        name = shard_name("generated", index)
        shard, table = out_dir / name, out_dir / f"{name[:-4]}.parquet"
        prints = [job_digest(job, self.sampling, self.model) for job in jobs]
        existing = _existing_records(shard)
        reusable = {j["key"]: existing[j["key"]] for j, fp in zip(jobs, prints)
                    if j["key"] in existing and existing[j["key"]][1].get("fingerprint") == fp}
        if len(reusable) == len(jobs) == len(existing):
            if not table.exists():
                _write_index([meta for _, meta in reusable.values()], table)
            return "kept", 0, 0
        wanted = [(j, fp) for j, fp in zip(jobs, prints) if j["key"] not in reusable]
        stored = self.store.fetch(IMAGES, [fp for _, fp in wanted]) if self.store is not None and wanted else {}
        for job, fp in wanted:
            if fp in stored:
                reusable[job["key"]] = (stored[fp], self._meta(job, fp, name))
        missing = [(j, fp) for j, fp in wanted if j["key"] not in reusable]
        rendered: dict[str, tuple[Future, dict[str, Any]]] = {}
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            images = render(self.pipe_factory(), [j for j, _ in batch], self.sampling)
            for (job, fp), image in zip(batch, images):
                rendered[job["key"]] = (self.encoder.submit(_encode, image, self.sampling), self._meta(job, fp, name))
        records = []
        for job in jobs:
            if job["key"] in reusable:
                records.append((job["key"], *reusable[job["key"]]))
            else:
                future, meta = rendered[job["key"]]
                records.append((job["key"], future.result(), meta))
        if self.store is not None and rendered:     # saved before the shard: a kill loses no finished image
            self.store.put_many(IMAGES, {meta["fingerprint"]: jpeg for key, jpeg, meta in records if key in rendered})
        write_shard(shard, records)
        _write_index([meta for _, _, meta in records], table)
        return ("updated" if len(reusable) > len(stored) else "rendered"), len(missing), len(stored)


def _write_index(rows: list[dict[str, Any]], path: Path) -> None:
    write_table(pa.Table.from_pylist(rows), path)


def _shard_worker(model_dir: str, model: dict[str, Any], sampling: Sampling, batch_size: int,
                  out_dir: Path, store: WorkStore | None = None,
                  ) -> Callable[[tuple[int, list[dict[str, Any]]]], tuple[str, int, int]]:
    """A ShardWriter on this process's device, as a function of (shard index, its jobs); the pipeline loads on the
    first shard that needs rendering."""
    device, pipe = pick_device(), []

    def pipe_factory() -> Any:
        if not pipe:
            log.info("loading %s on %s", model["name"], device)
            pipe.append(load_pipeline(model_dir, device, Throughput.from_env(), model.get("variant")))
        return pipe[0]

    writer = ShardWriter(pipe_factory, sampling, model, batch_size, store)
    return lambda task: writer.run(out_dir, *task)


def generate(model_dir: str | Path, model: dict[str, Any], jobs: list[dict[str, Any]], cfg: GenerateConfig,
             out_dir: str | Path, store: WorkStore | str | None = TEAM) -> dict[str, Any]:
    """Bring every shard of `jobs` under out_dir up to date and write manifest.parquet.

    An image missing locally is taken from the team's work store (`store`, pas.core.work_store) when it holds it,
    else rendered and saved there.

    With PAS_RAY_ADDRESS set, the shards are rendered by one model-holding Ray actor per GPU (or CPU slot) of the
    cluster; each shard is written atomically from its jobs alone, so the bytes do not depend on who rendered it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampling = effective_sampling(cfg, model.get("recommended", {}))
    long, limit = long_prompts(model_dir, (job["prompt"] for job in jobs))
    if long:
        log.warning("%d of %d distinct prompts are longer than the text encoder's %d tokens: it reads only their "
                    "start (e.g. %r)", len(long), len({job["prompt"] for job in jobs}), limit, long[0][:120])
    groups = [jobs[i : i + cfg.shard_size] for i in range(0, len(jobs), cfg.shard_size)]
    store = resolve(store)
    make_worker = partial(_shard_worker, str(model_dir), model, sampling, cfg.batch_size, out_dir, store)
    tasks = list(enumerate(groups))
    address = ray_address()
    outcome: dict[str, int] = {"kept": 0, "updated": 0, "rendered": 0}
    rendered, restored, t0 = 0, 0, time.perf_counter()
    if address:
        results: Iterator[tuple[str, int, int]] = map_on_ray(make_worker, tasks, address, "generate")
    else:
        worker = make_worker()
        results = (worker(task) for task in tqdm(tasks, desc="generate", unit="shard"))
    for state, count, from_store in results:
        outcome[state] += 1
        rendered += count
        restored += from_store
    seconds = time.perf_counter() - t0
    log.info("generate: %d images rendered, %d restored from the team's work store, %d kept", rendered, restored,
             len(jobs) - rendered - restored)
    metrics = {"images": len(jobs), "shards": len(groups), "images_rendered": rendered, "images_restored": restored,
               "shards_kept": outcome["kept"], "shards_updated": outcome["updated"],
               "shards_rendered": outcome["rendered"], "images_per_second": rendered / seconds if rendered else 0.0,
               "engine": "ray" if address else "local",
               **{f"sampling_{k}": v for k, v in sampling.__dict__.items()}}
    merge_manifest(out_dir, len(groups))
    return metrics


def merge_manifest(out_dir: str | Path, n_shards: int) -> int:
    """Concatenate the per-shard indexes into manifest.parquet and drop shards beyond `n_shards`."""
    out_dir = Path(out_dir)
    wanted = {shard_name("generated", i) for i in range(n_shards)}
    wanted |= {f"{name[:-4]}.parquet" for name in wanted} | {"manifest.parquet"}
    for stale in sorted(p for p in out_dir.iterdir() if p.name not in wanted):
        log.info("removing %s (not part of this run)", stale.name)
        stale.unlink()
    missing = [i for i in range(n_shards) if not (out_dir / f"{shard_name('generated', i)[:-4]}.parquet").exists()]
    if missing:
        from pas.core.config import DataError

        raise DataError(f"{out_dir}: shards {missing[:5]} are not generated; run the generate stage again")
    tables = [pq.read_table(out_dir / f"{shard_name('generated', i)[:-4]}.parquet") for i in range(n_shards)]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({"key": pa.array([], pa.string())})
    write_table(table, out_dir / "manifest.parquet")
    return table.num_rows
