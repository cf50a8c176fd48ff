"""An open_clip model from the hub, built as its pretrained tag says and saved so `local-dir:` rebuilds it the same.

`ARCH/TAG`: open_clip's pretrained config (open_clip/pretrained.py) names the hub file of a tag (`hf_hub`
`org/name/[file]`) and whether its weights were trained with QuickGELU (`quick_gelu`). `create_model` only warns
when that does not match the architecture config (open_clip/factory.py, `create_model`, the "QuickGELU mismatch"
warning), so the tag's activation is forced (`force_quick_gelu`) and saved as `quick_gelu: true` in model_cfg.
`hf-hub:org/name`: the repo's open_clip_config.json, tokenizer files and one weights file, copied from the cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pas.models.hub as hub

CONFIG = "open_clip_config.json"
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
# open_clip's local-dir preference (factory.py, _find_checkpoint_in_dir): safetensors first
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth")


def tag_uses_quick_gelu(arch: str, tag: str) -> bool:
    """Whether pretrained tag `tag` of `arch` was trained with QuickGELU (open_clip's pretrained cfg)."""
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))


def fetch_tag(arch: str, tag: str, dest: Path) -> dict[str, Any]:
    """Build `arch` with the weights of `tag` (pinned hub commit, HF cache) and the tag's activation; save to dest."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    quick = tag_uses_quick_gelu(arch, tag)
    if not cfg.get("hf_hub"):   # every tag of open_clip 3.3 has one; a URL-only tag could not be pinned by commit
        from pas.core.config import ConfigError

        raise ConfigError(f"models.clip='{arch}/{tag}': open_clip gives this tag no Hugging Face hub id to pin; "
                          "use a tag with one, an hf-hub:org/name repository or a local folder")
    repo_id, filename = os.path.split(cfg["hf_hub"])  # open_clip's convention (pretrained.py, download_pretrained)
    sha = hub.pin(repo_id)
    weights = oc_pretrained.download_pretrained_from_hf(repo_id, filename=filename or None, revision=sha)
    source = {"hub_id": repo_id, "revision": sha}
    model = open_clip.create_model(arch, pretrained=weights, force_quick_gelu=quick)
    save(model, arch, cfg, quick, dest)
    return {"source": "open_clip", "tag": tag, "quick_gelu": quick, **source}


def save(model: Any, arch: str, pretrained_cfg: dict[str, Any], quick_gelu: bool, dest: Path) -> None:
    """open_clip_config.json (architecture, the tag's activation and preprocessing) + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = open_clip.get_model_config(arch)
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    preprocess = {k: pretrained_cfg[k] for k in PREPROCESS_KEYS if k in pretrained_cfg}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / "open_clip_model.safetensors"))


def fetch_hf_hub(repo_id: str, revision: str | None, dest: Path) -> dict[str, Any]:
    """An `hf-hub:` open_clip repo at a pinned commit: its config, tokenizer files and one weights file."""
    from huggingface_hub import snapshot_download

    sha = hub.pin(repo_id, revision)
    files = hub.repo_files(repo_id, sha)
    weights = next((w for w in WEIGHT_FILES if w in files), None)
    if CONFIG not in files or weights is None:
        raise FileNotFoundError(f"{repo_id} has no {CONFIG} or open_clip weights ({', '.join(WEIGHT_FILES)})")
    wanted = [f for f in files if ("/" not in f and f.endswith((".json", ".txt", ".model"))) or f == weights]
    snapshot = snapshot_download(repo_id, revision=sha, allow_patterns=wanted)
    hub.copy_files(snapshot, wanted, dest)
    return {"source": "hub", "hub_id": repo_id, "revision": sha}
