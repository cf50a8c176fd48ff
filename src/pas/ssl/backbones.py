"""timm backbones without classifier heads: random init or weights from a local file."""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from torch import nn

from pas.core.config import ConfigError

log = logging.getLogger(__name__)


def close_backbones(name: str, limit: int = 8) -> list[str]:
    """timm model names that look like `name` (for error messages)."""
    import timm

    names = timm.list_models()
    matches = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    stem = name.split(".")[0].rstrip("0123456789_") or name
    matches += [n for n in timm.list_models(f"*{stem}*") if n not in matches]
    return matches[:limit]


def check_backbone(name: str) -> None:
    """Raise a ConfigError naming close matches unless `name` is a timm model."""
    import timm

    if not timm.is_model(name):
        hint = ", ".join(close_backbones(name)) or "none; see timm.list_models()"
        raise ConfigError(f"backbone={name!r} is not a timm model; close matches: {hint}")


def backbone_hint(name: str) -> str:
    """The 'what is allowed' text for a bad backbone name."""
    close = close_backbones(name)
    return "use a timm model name" + (f", e.g. {', '.join(close)}" if close else " (timm.list_models())")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a .safetensors or torch state_dict into `model` strictly (classifier keys dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"init={str(path)!r}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    dropped = [k for k in state if any(k.startswith(f"{h}.") for h in heads)]
    for key in dropped:
        del state[key]
    if dropped:
        log.info("dropped classifier weights %s from %s", ", ".join(dropped), path)
    model.load_state_dict(state, strict=True)
    log.info("loaded backbone weights from %s", path)


def create_backbone(name: str, init: str = "random", **kwargs: float) -> tuple[nn.Module, int]:
    """Build timm model `name` without a head (num_classes=0) -> (module, feature dimension).

    `kwargs` go to timm.create_model (e.g. drop_path_rate for a DINO student)."""
    import timm

    check_backbone(name)
    try:  # transformers then accept any image size; parameter shapes are unchanged
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise ConfigError(f"backbone={name!r} does not take {', '.join(kwargs)} ({err})") from err
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as err2:
            raise ConfigError(f"backbone={name!r} does not take {', '.join(kwargs)} ({err2})") from err2
    if init != "random":
        load_weights(model, init)
    return model, int(model.num_features)
