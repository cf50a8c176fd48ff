"""Text-to-image generation with diffusers into deterministic, resumable WebDataset shards."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pas.config import require
from pas.plan import concept_of
from pas.shards import encode_jpeg, shard_name, write_shard, write_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateConfig:
    """params.generate: diffusion sampling and output encoding."""

    steps: int = 2
    guidance: float = 0.0
    resolution: int = 64
    output_size: int = 64
    batch_size: int = 8
    shard_size: int = 1000
    jpeg_quality: int = 90

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        for name in ("steps", "resolution", "output_size", "batch_size", "shard_size"):
            value = getattr(self, name)
            require(value >= 1, f"{prefix}.{name}", value, "use a positive integer")
        require(self.resolution % 8 == 0, f"{prefix}.resolution", self.resolution, "use a multiple of 8")
        require(1 <= self.jpeg_quality <= 100, f"{prefix}.jpeg_quality", self.jpeg_quality, "use 1..100")
        require(self.guidance >= 0, f"{prefix}.guidance", self.guidance, "use a number >= 0")


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of image `index`: depends only on the run seed and the index."""
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF


def plan_jobs(concepts: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Map image i to (concept, prompt, seed) by a rule that depends only on params."""
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


def _fingerprint(cfg: GenerateConfig, model: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    payload = json.dumps({"cfg": asdict(cfg), "model": model, "jobs": jobs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_pipeline(model_dir: str | Path, device: str) -> Any:
    """Load a diffusers text-to-image pipeline from a local directory (half precision on GPU)."""
    import torch
    from diffusers import AutoPipelineForText2Image

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def render(pipe: Any, jobs: list[dict[str, Any]], cfg: GenerateConfig, device: str) -> list[Any]:
    """Render one batch of jobs with per-image seeded generators; returns PIL images."""
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(job["seed"]) for job in jobs]
    kwargs: dict[str, Any] = {}
    if any(job["negative_prompt"] for job in jobs) and cfg.guidance > 1.0:
        kwargs["negative_prompt"] = [job["negative_prompt"] for job in jobs]
    with torch.inference_mode():
        out = pipe(
            prompt=[job["prompt"] for job in jobs],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            height=cfg.resolution,
            width=cfg.resolution,
            generator=generators,
            output_type="pil",
            **kwargs,
        )
    return out.images


def generate(
    model_dir: str | Path, model: dict[str, Any], jobs: list[dict[str, Any]], cfg: GenerateConfig,
    out_dir: str | Path, device: str = "cpu",
) -> dict[str, Any]:
    """Render `jobs` into shards under out_dir, skipping complete shards with the same fingerprint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = [jobs[i : i + cfg.shard_size] for i in range(0, len(jobs), cfg.shard_size)]
    wanted, reused, rendered, seconds = set(), 0, 0, 0.0
    pipe = None
    for index, group in enumerate(tqdm(groups, desc="generate shards", unit="shard")):
        name = shard_name("generated", index)
        wanted.update({name, f"{name[:-4]}.parquet"})
        fingerprint = _fingerprint(cfg, model, group)
        table_path = out_dir / f"{name[:-4]}.parquet"
        if (out_dir / name).exists() and table_path.exists():
            meta = pq.read_metadata(table_path).metadata or {}
            if meta.get(b"pas.fingerprint", b"").decode() == fingerprint:
                reused += 1
                continue
            log.info("shard %s was written with other params: regenerating", name)
        if pipe is None:
            pipe = load_pipeline(model_dir, device)
        records, rows = [], []
        for start in range(0, len(group), cfg.batch_size):
            batch = group[start : start + cfg.batch_size]
            t0 = time.perf_counter()
            images = render(pipe, batch, cfg, device)
            elapsed = (time.perf_counter() - t0) / len(batch)
            seconds += elapsed * len(batch)
            for job, image in zip(batch, images):
                image = image.resize((cfg.output_size, cfg.output_size))
                meta = {**job, "model": model["name"], "revision": model["revision"], "steps": cfg.steps,
                        "guidance": cfg.guidance, "resolution": cfg.resolution, "shard": name,
                        "seconds": round(elapsed, 4), "source": "generated"}
                records.append((job["key"], encode_jpeg(image, cfg.jpeg_quality), meta))
                rows.append({**meta, "width": cfg.output_size, "height": cfg.output_size})
        write_shard(out_dir / name, records)
        _write_shard_table(rows, table_path, fingerprint)
        rendered += len(group)
    for stale in sorted(p for p in out_dir.iterdir() if p.name not in wanted and p.name != "manifest.parquet"):
        log.info("removing stale %s", stale.name)
        stale.unlink()
    tables = [pq.read_table(out_dir / f"{shard_name('generated', i)[:-4]}.parquet") for i in range(len(groups))]

    write_table(pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.string())}),
                out_dir / "manifest.parquet")
    return {"images": len(jobs), "shards": len(groups), "shards_reused": reused, "images_rendered": rendered,
            "seconds_per_image": seconds / rendered if rendered else 0.0}


def _write_shard_table(rows: list[dict[str, Any]], path: Path, fingerprint: str) -> None:

    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({"pas.fingerprint": fingerprint})
    write_table(table, path)


