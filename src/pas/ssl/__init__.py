"""Self-supervised pretraining methods: a registry from method name to its class.

A method (pas.ssl.base.SSLMethod) is built as `cls(backbone, feature_dim, args)`, where `args`
is its own frozen `cls.Args` dataclass (params.pretrain.method_args.<name>). Its
`forward(backbone, views)` returns a MethodOutput; it names its views' augmentations and may
update a teacher or a queue in `after_optimizer_step`. Adding a method means adding one module
here and one entry in METHODS.
"""
from __future__ import annotations

from typing import Any

from pas.core.config import ConfigError, build
from pas.ssl.all4one import All4One
from pas.ssl.barlow_twins import BarlowTwins
from pas.ssl.base import SSLMethod
from pas.ssl.dino import DINO
from pas.ssl.lejepa import LeJEPA
from pas.ssl.nnclr import NNCLR
from pas.ssl.simclr import SimCLR
from pas.ssl.swav import SwAV

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "nnclr": NNCLR,
    "barlow_twins": BarlowTwins,
    "dino": DINO,
    "all4one": All4One,
    "swav": SwAV,
    "lejepa": LeJEPA,
}


def get_method(name: str) -> type[SSLMethod]:
    """Return the method class registered as `name`; a ConfigError lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown SSL method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


def method_args(name: str, data: dict[str, Any] | None, prefix: str) -> Any:
    """Build method `name`'s frozen Args from a params mapping; unknown keys fail naming `prefix`.key."""
    return build(get_method(name).Args, data, prefix)
