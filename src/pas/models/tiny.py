"""Small random-weight models, saved in the real on-disk layouts, whose bytes do not depend on library versions.

They let the offline default and the tests exercise exactly the code that loads real models
(`from_pretrained` on a diffusers folder, open_clip's `local-dir:` schema). Only the parameter names and
shapes come from the libraries (a model built on the meta device, so their initialisation code never runs on
data); every value comes from pas's own seeded stream per (seed, name, shape) and every file (configs,
tokenizer, safetensors) is written by pas, without library version stamps. An update of torch, diffusers,
transformers or open_clip therefore cannot change the bytes, unless it renames or reshapes a parameter.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

SEED = 0
_SMALL_STD = 0.02          # token/position embeddings (CLIP's own init is a normal of std 0.02 / 0.01)
_ZEROED = ("visual.class_embedding", "visual.positional_embedding")  # see TINY_CLIP_CONFIG
_LOGIT_SCALE = math.log(1 / 0.07)                                     # CLIP's initial temperature


def seeded_uniform(seed: int, name: str, shape: tuple[int, ...], bound: float) -> np.ndarray:
    """float32 values uniform in [-bound, bound), a pure function of (seed, name, shape).

    The stream is SHAKE-256 of the key (FIPS 202: fixed forever), not numpy's Generator, whose
    distributions are not promised to stay the same across numpy versions (NEP 19); the arithmetic is
    exact or correctly rounded IEEE, so every machine gets the same bytes.
    """
    count = math.prod(shape)
    stream = hashlib.shake_256(f"pas-tiny/{seed}/{name}/{list(shape)}".encode()).digest(8 * count)
    unit = (np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) * 2.0 ** -53   # [0, 1)
    return ((unit * 2.0 - 1.0) * bound).astype(np.float32).reshape(shape)


def initial_value(name: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """One parameter's value from its name and shape, as torch's default init would scale it.

    Biases 0, norm scales (1-D weights) 1, embeddings a small uniform of std 0.02, matrices and convolutions
    uniform in +-1/sqrt(fan_in) (torch's kaiming_uniform_(a=sqrt(5)) bound); CLIP's projections used as
    `x @ proj` have their fan-in first. Anything else is an error, so a new kind of parameter is noticed.
    """
    owner, _, leaf = name.rpartition(".")
    owner = owner.rpartition(".")[2]      # the module holding it: token_embedding, linear_1, ...
    if name in _ZEROED or leaf.endswith("bias"):
        return np.zeros(shape, np.float32)
    if name == "logit_scale" and shape == ():
        return np.full(shape, _LOGIT_SCALE, np.float32)
    if len(shape) == 1 and leaf == "weight":
        return np.ones(shape, np.float32)
    if len(shape) == 2 and ("embedding" in leaf or (leaf == "weight" and owner.endswith("embedding"))):
        return seeded_uniform(seed, name, shape, _SMALL_STD * math.sqrt(3))   # std of U(-b, b) is b/sqrt(3)
    if len(shape) == 2 and leaf in ("proj", "text_projection"):
        return seeded_uniform(seed, name, shape, 1 / math.sqrt(shape[0]))
    if len(shape) >= 2 and leaf.endswith("weight"):
        return seeded_uniform(seed, name, shape, 1 / math.sqrt(math.prod(shape[1:])))
    raise ValueError(f"tiny models: no initial value for parameter {name!r} of shape {shape}; add a rule")


def seeded_state(shapes: Mapping[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """A whole state dict of initial values, keyed as `shapes`."""
    return {name: initial_value(name, shape, seed) for name, shape in shapes.items()}


def state_shapes(make: Callable[[], object]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the module `make()` builds, built on the meta device (no data, no RNG)."""
    import torch

    with torch.device("meta"):
        module = make()
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_weights(path: Path, shapes: Mapping[str, tuple[int, ...]], seed: int) -> None:
    """safetensors of the seeded state; metadata only the constant {"format": "pt"} transformers writes."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(seeded_state(shapes, seed), str(path), metadata={"format": "pt"})


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


_TOKENS = [*_bytes_to_unicode(), *(c + "</w>" for c in _bytes_to_unicode()), "<|startoftext|>", "<|endoftext|>"]
_BOS, _EOS = len(_TOKENS) - 2, len(_TOKENS) - 1


def _write_tokenizer(folder: Path) -> None:
    """A character-level CLIP tokenizer: vocab.json + merges.txt (no merges) + tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(_TOKENS)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})


# Each component: the constructor arguments pas chooses (also its saved config) and the module class.
TEXT_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "vocab_size": len(_TOKENS), "max_position_embeddings": 77,
                "bos_token_id": _BOS, "eos_token_id": _EOS, "pad_token_id": _EOS}
# Cross-attention at the 16x16 level only (the first block plain convolutions): self-attention over the 32x32
# latent's 1,024 tokens was 71% of a render on CPU; at 256 tokens the tiny pipeline renders 2.7x faster.
UNET = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 32,
        "attention_head_dim": 8, "norm_num_groups": 16}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 64],
       "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "norm_num_groups": 16, "sample_size": 64}
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "timestep_spacing": "trailing", "steps_offset": 1}   # steps_offset=1 as diffusers expects
PIPELINE = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
            "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def build_tiny_sd(dest: Path, seed: int = SEED) -> None:
    """A ~1.7M-parameter Stable-Diffusion-layout pipeline rendering 64x64 images."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / "model_index.json", PIPELINE)
    _write_json(dest / "scheduler" / "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler", **SCHEDULER})
    _write_tokenizer(dest / "tokenizer")
    _write_json(dest / "text_encoder" / "config.json",
                {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **TEXT_ENCODER})
    _write_weights(dest / "text_encoder" / "model.safetensors",
                   state_shapes(lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))), seed)
    for folder, cls, kwargs in (("unet", UNet2DConditionModel, UNET), ("vae", AutoencoderKL, VAE)):
        _write_json(dest / folder / "config.json", {"_class_name": cls.__name__, **kwargs})
        _write_weights(dest / folder / "diffusion_pytorch_model.safetensors",
                       state_shapes(lambda cls=cls, kwargs=kwargs: cls(**kwargs)), seed)


TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        # One 64x64 patch: the image tower starts with a random projection of the whole image,
        # so random-weight embeddings keep pixel-space geometry (copies ~1.0, distinct images
        # spread out) instead of collapsing onto one direction as deep random ViTs do; the class and
        # positional embeddings are zero (_ZEROED): no shared offset that would pull all images together.
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 256, "head_width": 64, "patch_size": 64,
                       "pool_type": "avg"},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def build_tiny_clip(dest: Path, seed: int = SEED) -> None:
    """A small open_clip ViT saved as open_clip_config.json + open_clip_model.safetensors."""
    import open_clip

    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / "open_clip_config.json", TINY_CLIP_CONFIG)
    _write_weights(dest / "open_clip_model.safetensors",
                   state_shapes(lambda: open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])), seed)


TINY_BUILDERS: dict[str, dict[str, Callable[[Path], None]]] = {
    "generator": {"sd": build_tiny_sd},
    "clip": {"clip": build_tiny_clip},
}
