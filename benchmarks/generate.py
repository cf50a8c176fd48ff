"""Text-to-image throughput: images/s and peak memory, batched vs one-at-a-time, in one run.

    python benchmarks/generate.py                                   # tiny://sd on this machine
    python benchmarks/generate.py --preset sdxl-turbo --random-weights --batch-sizes 1 16   # on a GPU

`--random-weights` builds the real architecture from its config (no download): the UNet, VAE
and text encoders of SD-Turbo (SD 2.1), SDXL-Turbo or SD-1.5, with a character-level tokenizer.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pas.core.runtime import pick_device
from pas.models.presets import recommended
from pas.models.tiny import _write_tokenizer, build_tiny_sd
from pas.sources.generate import Sampling, load_pipeline, render

VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=2, norm_num_groups=32)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
SD1_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280))
SD2_UNET = dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
SDXL_UNET = dict(sample_size=64, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 use_linear_projection=True, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def build_random(preset: str, dest: Path) -> None:
    """Save a random-weight pipeline with the real architecture of `preset`."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = _write_tokenizer(dest.parent / "tok")
    tokenizer = CLIPTokenizer(str(dest.parent / "tok/vocab.json"), str(dest.parent / "tok/merges.txt"),
                              model_max_length=77)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    text = lambda cls, cfg: cls(CLIPTextConfig(vocab_size=vocab, max_position_embeddings=77, **ids, **cfg))  # noqa: E731
    scheduler = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                timestep_spacing="trailing")
    vae = AutoencoderKL(**VAE)
    if preset == "sdxl-turbo":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text(CLIPTextModel, CLIP_L),
                                         text_encoder_2=text(CLIPTextModelWithProjection, CLIP_G),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer,
                                         unet=UNet2DConditionModel(**SDXL_UNET), scheduler=scheduler)
    elif preset == "sd-1.5":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text(CLIPTextModel, CLIP_L), tokenizer=tokenizer,
                                       unet=UNet2DConditionModel(**SD1_UNET), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif preset == "sd-turbo":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text(CLIPTextModel, CLIP_H), tokenizer=tokenizer,
                                       unet=UNet2DConditionModel(**SD2_UNET), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        raise SystemExit(f"--random-weights knows sd-turbo, sdxl-turbo and sd-1.5, not {preset!r}")
    pipe.save_pretrained(str(dest))


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory (GPU) or peak resident set size of this process (CPU), in MiB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(pipe, sampling: Sampling, batch: int, images: int, repeats: int) -> list[float]:
    """images/s of rendering `images` images in batches of `batch`, `repeats` times."""
    jobs = [{"prompt": f"a photo of dish number {i}", "negative_prompt": "", "seed": i} for i in range(images)]
    render(pipe, jobs[:batch], sampling)  # warm-up
    rates = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start in range(0, images, batch):
            render(pipe, jobs[start : start + batch], sampling)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny, sd-turbo, sdxl-turbo or sd-1.5")
    parser.add_argument("--random-weights", action="store_true", help="build the real architecture, random init")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--images", type=int, default=32, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, help="override the preset's resolution")
    args = parser.parse_args()
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        if args.preset == "tiny":
            build_tiny_sd(folder)
            rec = recommended("tiny://sd")
        else:
            if not args.random_weights:
                raise SystemExit("real weights need the models stage; pass --random-weights to benchmark the architecture")
            build_random(args.preset, folder)
            rec = recommended(args.preset)
        pipe = load_pipeline(folder, device)
        sampling = Sampling(rec["steps"], rec["guidance"], args.resolution or rec["resolution"], 384, 90)
        print(f"device={device} preset={args.preset} steps={sampling.steps} resolution={sampling.resolution} "
              f"images={args.images} repeats={args.repeats}")
        medians = {}
        for batch in args.batch_sizes:
            rates = measure(pipe, sampling, batch, args.images, args.repeats)
            medians[batch] = statistics.median(rates)
            print(f"batch {batch:>3}: {medians[batch]:8.2f} images/s (median of {args.repeats}), "
                  f"peak memory {peak_memory_mb(device):,.0f} MiB")
        if len(medians) > 1:
            low, high = min(medians), max(medians)
            print(f"batched/unbatched ratio (batch {high} vs {low}): {medians[high] / medians[low]:.2f}x")


if __name__ == "__main__":
    main()
