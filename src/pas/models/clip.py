"""CLIP image and text embeddings from a local open_clip directory (models/clip)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pas.core.iterate import batched


class ClipEncoder:
    """Batched, L2-normalised CLIP embeddings (half precision on GPU)."""

    DEFAULT_BATCH = 64

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = DEFAULT_BATCH) -> None:
        import open_clip

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
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    def encode_images(self, images: Iterable[Image.Image], total: int | None = None, desc: str = "embed") -> np.ndarray:
        """(N, D) float32 unit vectors for N PIL images, streamed in batches."""
        out = []
        for batch in tqdm(batched(images, self.batch_size), desc=desc, unit="batch",
                          total=None if total is None else -(-total // self.batch_size)):
            out.append(self.encode_pixels(torch.stack([self.preprocess(im.convert("RGB")) for im in batch])))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, D) float32 unit vectors for a (B, 3, H, W) batch already preprocessed."""
        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device, self.dtype)).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()


def concept_queries(encoder: ClipEncoder, concepts: list[dict[str, Any]]) -> np.ndarray:
    """(C, D) one unit query per concept: the normalised mean of its prompts' text embeddings."""
    queries = []
    for concept in concepts:
        mean = encoder.encode_texts(concept["prompts"]).mean(axis=0)
        queries.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(queries).astype(np.float32)
