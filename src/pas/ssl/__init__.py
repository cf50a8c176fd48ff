"""Self-supervised pretraining methods: a registry from method name to its class.

A method is an nn.Module built by `cls.from_config(backbone, feature_dim, cfg)` whose
`forward(backbone, view1, view2)` returns a dict with a scalar "loss". Adding a method means
adding one module here and one entry in METHODS.
"""
from __future__ import annotations

from torch import nn

from pas.config import ConfigError
from pas.ssl.simclr import SimCLR

METHODS: dict[str, type[nn.Module]] = {
    "simclr": SimCLR,
}


def get_method(name: str) -> type[nn.Module]:
    """Return the method class registered as `name`; a ConfigError lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown SSL method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None
