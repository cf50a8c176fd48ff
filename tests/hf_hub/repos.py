"""Builders of the repos the local hub serves: the real repos' file layouts and names, small random weights.

Each builder writes `<root>/<org>/<name>/` (atomically: built beside it, then renamed) and is deterministic
(fixed seeds; the same files byte for byte on each run with the same library versions).

- `stabilityai/sdxl-turbo`: a tiny `StableDiffusionXLPipeline` (same pipeline class, components, config keys and
  scheduler config as the real repo; shrunken sizes) saved in fp32 and as the `fp16` variant, plus the real repo's
  other files: the root-level single-file checkpoints (real safetensors of the merged state dict, fp32 and fp16),
  the ONNX exports (`*.onnx` files with placeholder bytes: no client here loads them), README, license, images.
- `timm/vit_base_patch32_clip_224.openai`: where open_clip 3.x fetches `ViT-B-32` / `openai` from (pretrained.py
  `_VITB32["openai"].hf_hub`; factory.py `download_pretrained_from_hf` asks `open_clip_model.safetensors` first).
  Random weights of the real ViT-B-32 built with QuickGELU (the tag's `quick_gelu=True`), stored in fp16.
- `timm/resnet18.a1_in1k`: what `timm.create_model("resnet18.a1_in1k", pretrained=True)` fetches (its
  pretrained_cfg `hf_hub_id`; timm/models/_hub.py `load_state_dict_from_hf` asks `model.safetensors` first),
  written by timm's own `save_for_hf` (config.json, model.safetensors, pytorch_model.bin).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

SDXL_TURBO = "stabilityai/sdxl-turbo"
OPENAI_VIT_B_32 = "timm/vit_base_patch32_clip_224.openai"
TIMM_RESNET18 = "timm/resnet18.a1_in1k"
RESNET18_TIMM_NAME = "resnet18.a1_in1k"
SDXL_SINGLE_FILES = ("sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors")

# The .gitattributes the Hub writes into a new repo (LFS for weights and archives), plus ONNX external data.
GITATTRIBUTES = "\n".join(f"{p} filter=lfs diff=lfs merge=lfs -text" for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*", "*.onnx_data", "*.png", "*.jpg",
)) + "\n"

# scheduler/scheduler_config.json of stabilityai/sdxl-turbo (EulerAncestral, "trailing" timesteps).
SDXL_TURBO_SCHEDULER = {
    "_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None,
}
# model_index.json of stabilityai/sdxl-turbo (its components only; this diffusers' save adds null entries).
SDXL_TURBO_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.24.0.dev0",
    "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
# The ONNX exports in the real repo (optimum layout); placeholders, loaded by nothing here.
SDXL_ONNX_FILES = ("text_encoder/model.onnx", "text_encoder_2/model.onnx", "unet/model.onnx",
                   "unet/model.onnx_data", "vae_decoder/model.onnx", "vae_encoder/model.onnx")
SDXL_SIDE_FILES = ("LICENSE.md", "image_quality_one_step.png", "output_tile.jpg", "prompt_alignment_one_step.png")


def _seeded_bytes(seed: int, size: int) -> bytes:
    """Deterministic filler bytes (for files whose content no client reads)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size,), generator=generator, dtype=torch.uint8).numpy().tobytes()


def _atomic_build(root: Path, repo_id: str, fill: Callable[[Path], None]) -> Path:
    """Build a repo into a temporary sibling folder with `fill`, then move it to `<root>/<repo_id>`."""
    final = Path(root) / repo_id
    if final.is_dir():
        return final
    tmp = final.parent / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / ".gitattributes").write_text(GITATTRIBUTES)
        fill(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """A character-level CLIP BPE tokenizer in the files SDXL repos ship: vocab.json, merges.txt,
    special_tokens_map.json, tokenizer_config.json (no tokenizer.json)."""
    from pas.models.tiny import _write_tokenizer

    _write_tokenizer(folder)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "errors": "replace", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", **special}, indent=2))


def tiny_sdxl_pipeline(tokenizer_dir: Path):
    """A ~2M-parameter StableDiffusionXLPipeline with sdxl-turbo's components and scheduler (64x64 images)."""
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizers = []
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):  # as in SDXL's two tokenizers
        _write_clip_tokenizer(tokenizer_dir / sub, pad)
        tokenizers.append(CLIPTokenizer.from_pretrained(str(tokenizer_dir / sub)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoders = []
        for cls, extra in ((CLIPTextModel, {}), (CLIPTextModelWithProjection, {"projection_dim": 32})):
            tok = tokenizers[len(encoders)]
            encoders.append(cls(CLIPTextConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tok), max_position_embeddings=77, hidden_act="gelu",
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                **extra)))
        # The real UNet's keys (addition_embed_type "text_time", linear projections, per-block transformer
        # depth); widths shrunk: time ids 6 x 8 + pooled text 32 = 80 projection inputs, cross-attention 32 + 32.
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=16, sample_size=64, scaling_factor=0.13025,  # SDXL's VAE scaling factor
        )
    scheduler = EulerAncestralDiscreteScheduler.from_config(SDXL_TURBO_SCHEDULER)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )


def _fill_sdxl_turbo(dest: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tokenizers = dest.parent / f".{dest.name}-tokenizers"
    pipe = tiny_sdxl_pipeline(tokenizers)
    pipe.save_pretrained(str(dest), safe_serialization=True)
    pipe.to(torch.float16).save_pretrained(str(dest), safe_serialization=True, variant="fp16")
    for sub in ("tokenizer", "tokenizer_2"):  # the repo's tokenizer files, not this transformers' re-save
        shutil.rmtree(dest / sub)
        shutil.copytree(tokenizers / sub, dest / sub)
    shutil.rmtree(tokenizers)
    (dest / "model_index.json").write_text(json.dumps(SDXL_TURBO_MODEL_INDEX, indent=2) + "\n")
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_TURBO_SCHEDULER, indent=2) + "\n")
    # Root-level single-file checkpoints (the original-format all-in-one files); here the merged diffusers state
    # dict under the component names, a real safetensors that is several times any one component.
    pipe.to(torch.float32)
    merged = {f"{name}.{key}": value.detach().clone().contiguous()
              for name in ("unet", "vae", "text_encoder", "text_encoder_2")
              for key, value in getattr(pipe, name).state_dict().items()}
    save_file(merged, str(dest / SDXL_SINGLE_FILES[0]))
    save_file({k: v.half() for k, v in merged.items()}, str(dest / SDXL_SINGLE_FILES[1]))
    (dest / "README.md").write_text(
        "---\npipeline_tag: text-to-image\ninference: false\nlicense: other\nlicense_name: sai-nc-community\n"
        "license_link: https://huggingface.co/stabilityai/sdxl-turbo/blob/main/LICENSE.md\n---\n\n"
        "# SDXL-Turbo Model Card (local test hub: tiny random weights in the real layout)\n")
    for index, name in enumerate(SDXL_SIDE_FILES + SDXL_ONNX_FILES):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(_seeded_bytes(100 + index, 4096))
    for sub in ("vae_decoder", "vae_encoder"):  # the ONNX VAE halves carry the VAE's config
        shutil.copy(dest / "vae" / "config.json", dest / sub / "config.json")


def build_sdxl_turbo(root: Path) -> Path:
    """`<root>/stabilityai/sdxl-turbo`: a tiny SDXL-Turbo pipeline in the real repo's layout."""
    return _atomic_build(root, SDXL_TURBO, _fill_sdxl_turbo)


def openai_vit_b_32(seed: int = 0):
    """The random ViT-B-32 with QuickGELU (fp32) whose fp16 weights the openai repo serves."""
    import torch

    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)


def _fill_openai_vit_b_32(dest: Path) -> None:
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    model = openai_vit_b_32()
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / "open_clip_model.safetensors"))
    model_cfg = dict(open_clip.get_model_config("ViT-B-32"), quick_gelu=True)
    save_config_for_hf(model, dest / "open_clip_config.json", model_config=model_cfg)
    # timm's side of the repo (vit_base_patch32_clip_224 as a timm model): its config; its weights files
    # (model.safetensors, open_clip_pytorch_model.bin) are left out: ~600 MB more that open_clip never asks for.
    (dest / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch32_clip_224", "num_classes": 512, "num_features": 768,
        "global_pool": "token",
        "pretrained_cfg": {"tag": "openai", "custom_load": False, "input_size": [3, 224, 224],
                           "fixed_input_size": True, "interpolation": "bicubic", "crop_pct": 1.0,
                           "crop_mode": "center", "mean": list(open_clip.OPENAI_DATASET_MEAN),
                           "std": list(open_clip.OPENAI_DATASET_STD), "num_classes": 512, "pool_size": None,
                           "first_conv": "patch_embed.proj", "classifier": "head"},
    }, indent=2))
    (dest / "README.md").write_text(
        "---\ntags:\n- clip\n- openai\n- timm\n- open_clip\nlibrary_name: open_clip\nlicense: apache-2.0\n---\n"
        "# Model card for vit_base_patch32_clip_224.openai (local test hub: random weights, fp16)\n")


def build_openai_vit_b_32(root: Path) -> Path:
    """`<root>/timm/vit_base_patch32_clip_224.openai`: open_clip's ViT-B-32 `openai` tag, random QuickGELU weights."""
    return _atomic_build(root, OPENAI_VIT_B_32, _fill_openai_vit_b_32)


def reference_openai_clip(repo_folder: Path):
    """A QuickGELU ViT-B-32 holding the weights `repo_folder` serves (fp16 values, in fp32): expected embeddings."""
    from safetensors.torch import load_file

    model = openai_vit_b_32()
    served = load_file(str(Path(repo_folder) / "open_clip_model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in served.items()})
    return model.eval()


def timm_resnet18(seed: int = 0):
    """The random resnet18 (a1_in1k pretrained_cfg) whose weights the timm repo serves."""
    import torch

    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(RESNET18_TIMM_NAME, pretrained=False)


def _fill_timm_resnet18(dest: Path) -> None:
    from timm.models import save_for_hf

    save_for_hf(timm_resnet18(), str(dest), safe_serialization="both")
    (dest / "README.md").write_text(
        "---\ntags:\n- image-classification\n- timm\n- transformers\npipeline_tag: image-classification\n"
        "library_name: timm\nlicense: apache-2.0\n---\n# Model card for resnet18.a1_in1k (local test hub: random weights)\n")


def build_timm_resnet18(root: Path) -> Path:
    """`<root>/timm/resnet18.a1_in1k`: timm's hub layout for resnet18.a1_in1k, random weights."""
    return _atomic_build(root, TIMM_RESNET18, _fill_timm_resnet18)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    SDXL_TURBO: build_sdxl_turbo,
    OPENAI_VIT_B_32: build_openai_vit_b_32,
    TIMM_RESNET18: build_timm_resnet18,
}
