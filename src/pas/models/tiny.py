"""Small random-initialised models built from configs, saved in the real on-disk layouts.

They let the offline default and the tests exercise exactly the code that loads real models
(`from_pretrained` on a diffusers folder, open_clip's `local-dir:` schema).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

# Byte-level BPE alphabet (as in CLIP): every byte maps to a printable unicode character.


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_tokenizer(folder: Path) -> int:
    """Write a character-level CLIP tokenizer (vocab.json + merges.txt); return its size."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(tokens)


def build_tiny_sd(dest: Path) -> None:
    """A ~1M-parameter Stable-Diffusion-layout pipeline rendering 64x64 images."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok_dir = dest.parent / f".{dest.name}-tokenizer"
        vocab_size = _write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=vocab_size, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=16, sample_size=64,
        )
        scheduler = EulerDiscreteScheduler(   # steps_offset=1 as diffusers expects (unused by "trailing" spacing)
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
            steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(dest), safe_serialization=True)
        for path in tok_dir.iterdir():
            path.unlink()
        tok_dir.rmdir()


TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        # One 64x64 patch: the image tower starts with a random projection of the whole image,
        # so random-weight embeddings keep pixel-space geometry (copies ~1.0, distinct images
        # spread out) instead of collapsing onto one direction as deep random ViTs do.
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 256, "head_width": 64, "patch_size": 64,
                       "pool_type": "avg"},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def build_tiny_clip(dest: Path) -> None:
    """A small open_clip ViT saved as open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])
        with torch.no_grad():  # no shared offset that would pull all images together
            model.visual.class_embedding.zero_()
            model.visual.positional_embedding.zero_()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / "open_clip_model.safetensors"))


TINY_BUILDERS: dict[str, dict[str, Callable[[Path], None]]] = {
    "generator": {"sd": build_tiny_sd},
    "clip": {"clip": build_tiny_clip},
}
