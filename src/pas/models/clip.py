"""CLIP image and text embeddings from a local open_clip directory (models/clip).

torch is imported where a model runs, not here: modules that only name ClipEncoder (the report stage through
pas.curation.decontam -> pas.curation.embed) import this without loading torch."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pas.core.iterate import batched
from pas.core.runtime import num_workers

if TYPE_CHECKING:
    import torch


class Preprocessed:
    """Item i of `source`, an (image or None, info) pair, with the image through the CLIP preprocess: a DataLoader
    runs both the source's loading (decode) and the preprocessing in its workers (a map-style dataset: __getitem__
    and __len__, all torch's DataLoader asks of one)."""

    def __init__(self, source: Sequence[tuple[Image.Image | None, Any]], preprocess: Any) -> None:
        self.source, self.preprocess = source, preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, Any]:
        image, info = self.source[i]
        return (None if image is None else self.preprocess(image.convert("RGB"))), info


class ClipEncoder:
    """Batched, L2-normalised CLIP embeddings (half precision on GPU)."""

    DEFAULT_BATCH = 64

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = DEFAULT_BATCH) -> None:
        import open_clip
        import torch

        model_dir = Path(model_dir)
        if not (model_dir / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{model_dir} holds no open_clip model; run the models stage (dvc repro models)")
        name = f"local-dir:{model_dir}"
        model, _, self.preprocess = open_clip.create_model_and_transforms(name, device=device)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.device, self.batch_size = device, batch_size

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32 unit vectors for N texts."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    def encode_images(self, images: Iterable[Image.Image], total: int | None = None, desc: str = "embed",
                      workers: int | None = None) -> np.ndarray:
        """(N, D) float32 unit vectors for N PIL images, streamed in batches; each batch is preprocessed on
        `workers` threads (default pas.core.runtime.num_workers(); PIL's resize and torch's ops release the GIL).
        An indexable source whose loading should run in processes goes to encode_source instead."""
        import torch

        workers = num_workers() if workers is None else workers
        out = []
        with ThreadPoolExecutor(workers) if workers > 0 else _Inline() as pool:
            for batch in tqdm(batched(images, self.batch_size), desc=desc, unit="batch",
                              total=None if total is None else -(-total // self.batch_size)):
                out.append(self.encode_pixels(torch.stack(list(pool.map(self._preprocess, batch)))))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def encode_source(self, source: Sequence[tuple[Image.Image | None, Any]], desc: str = "embed",
                      workers: int | None = None) -> tuple[np.ndarray, list[Any]]:
        """(vectors (M, D), infos (N,)) of an indexable source of N (image or None, info) pairs: loading and the
        CLIP preprocess run in `workers` DataLoader workers (default pas.core.runtime.num_workers()), the model in
        this process on batches of batch_size images in source order (the batches encode_images makes of the
        M images that are not None), so the vectors do not depend on the worker count."""
        import torch

        loader = torch.utils.data.DataLoader(Preprocessed(source, self.preprocess), batch_size=self.batch_size,
                                             num_workers=num_workers() if workers is None else workers,
                                             collate_fn=list)
        out, infos, pending = [], [], []
        for items in tqdm(loader, desc=desc, unit="batch"):
            for pixels, info in items:
                infos.append(info)
                if pixels is not None:
                    pending.append(pixels)
                if len(pending) == self.batch_size:
                    out.append(self.encode_pixels(torch.stack(pending)))
                    pending = []
        if pending:
            out.append(self.encode_pixels(torch.stack(pending)))
        return (np.concatenate(out) if out else np.zeros((0, 0), np.float32)), infos

    def _preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> the model's (3, H, W) input."""
        return self.preprocess(image.convert("RGB"))

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, D) float32 unit vectors for a (B, 3, H, W) batch already preprocessed."""
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device, self.dtype)).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()


class _Inline:
    """A pool of no threads: map in the calling thread."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn: Any, items: Iterable[Any]) -> Iterable[Any]:
        """map(fn, items), here."""
        return map(fn, items)


def concept_queries(encoder: ClipEncoder, concepts: list[dict[str, Any]]) -> np.ndarray:
    """(C, D) one unit query per concept: the normalised mean of its prompts' text embeddings."""
    queries = []
    for concept in concepts:
        mean = encoder.encode_texts(concept["prompts"]).mean(axis=0)
        queries.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(queries).astype(np.float32)
