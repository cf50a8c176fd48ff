"""ImageNet baselines (`finetune.inits` entries with `weights: timm`), fetched by the models stage, loaded offline.

timm downloads a model's weights from its `hf_hub_id` through the Hugging Face cache; the hub commit is pinned by
appending `@sha` to it (timm/models/_hub.py, `hf_split`). The folder is saved in timm's hub layout (config.json with
the pretrained cfg + model.safetensors, timm/models/_hub.py `save_for_hf`), which `timm.create_model(
"local-dir:<folder>", pretrained=True)` loads with its pretrained cfg (input size, interpolation, crop_pct, mean/std).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pas.core.config import ConfigError
import pas.models.hub as hub

TIMM_WEIGHTS = "timm"  # the finetune.inits `weights` value these baselines serve
WEIGHTS_FILE = "model.safetensors"


def timm_baselines(finetune: dict[str, Any] | None) -> dict[str, str]:
    """{init name: timm arch} for every `finetune.inits` entry with `weights: timm`, in params order."""
    inits = (finetune or {}).get("inits") or []
    if not isinstance(inits, list):
        raise ConfigError(f"finetune.inits={inits!r} must be a list of {{name, arch, weights}} mappings")
    out = {}
    for i, item in enumerate(inits):
        if isinstance(item, dict) and item.get("weights") == TIMM_WEIGHTS:
            name, arch = item.get("name"), item.get("arch")
            if not name or not arch or arch == "pretrain":
                raise ConfigError(f"finetune.inits[{i}]={item!r}: weights: timm needs a name and a timm arch with "
                                  "ImageNet weights (e.g. resnet50.a1_in1k), not arch: pretrain")
            out[str(name)] = str(arch)
    return out


def hub_source(arch: str) -> str:
    """The hub repo (`org/name[@revision]`) timm loads `arch`'s pretrained weights from; a clear error if none."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(arch.split(".")[0]):
        raise ConfigError(f"finetune.inits arch={arch!r} is not a timm model; see timm.list_models()")
    cfg = get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"finetune.inits arch={arch!r}: timm has no hub weights for it; name a pretrained tag, "
                          f"e.g. {', '.join(timm.list_pretrained(arch.split('.')[0] + '*')[:3]) or 'resnet50.a1_in1k'}")
    return cfg.hf_hub_id


def fetch(arch: str, dest: Path) -> dict[str, Any]:
    """timm's ImageNet weights for `arch` at a pinned hub commit, saved in timm's hub layout under dest."""
    import timm
    from timm.models import save_for_hf

    repo_id, revision = hub.split_revision(hub_source(arch))
    sha = hub.pin(repo_id, revision)
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"hf_hub_id": f"{repo_id}@{sha}"})
    save_for_hf(model, str(dest), safe_serialization=True)
    return {"source": "timm", "arch": arch, "tag": model.pretrained_cfg.get("tag"), "hub_id": repo_id,
            "revision": sha}


def load(folder: str | Path, num_classes: int = 0) -> Any:
    """The baseline saved in `folder` (no network), headless by default; its pretrained_cfg says how to feed it."""
    import timm

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no timm baseline (config.json + {WEIGHTS_FILE}); "
                                "run the models stage (dvc repro models)")
    return timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=num_classes)
