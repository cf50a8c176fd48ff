"""Self-supervised pretraining methods: a registry from method name to its class.

A method (pas.ssl.base.SSLMethod) is built as `cls(backbone, feature_dim, args)`, where `args`
is its own frozen `cls.Args` dataclass (params.pretrain.method_args.<name>, defined torch-free in pas.ssl.args). Its
`forward(backbone, views)` returns a MethodOutput; it names its views' augmentations and may
update a teacher or a queue in `after_optimizer_step`. Adding a method means adding one module
here, its Args in pas.ssl.args (and METHOD_ARGS), and one entry in METHODS.

The registry imports a method's module (torch, its augmentations) only when that method is looked up, so that
importing pas.ssl or pas.ssl.pretrain (pas plan, a stage's config checks) loads nothing heavy.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pas.core.config import ConfigError, build

if TYPE_CHECKING:
    from pas.ssl.base import SSLMethod


def _load(name: str) -> type[SSLMethod]:
    """Import method `name`'s module and return its class (a KeyError for an unknown name)."""
    if name == "simclr":
        from pas.ssl.simclr import SimCLR
        return SimCLR
    if name == "nnclr":
        from pas.ssl.nnclr import NNCLR
        return NNCLR
    if name == "barlow_twins":
        from pas.ssl.barlow_twins import BarlowTwins
        return BarlowTwins
    if name == "dino":
        from pas.ssl.dino import DINO
        return DINO
    if name == "all4one":
        from pas.ssl.all4one import All4One
        return All4One
    if name == "swav":
        from pas.ssl.swav import SwAV
        return SwAV
    if name == "lejepa":
        from pas.ssl.lejepa import LeJEPA
        return LeJEPA
    if name == "stablerep":
        from pas.ssl.stablerep import StableRep
        return StableRep
    raise KeyError(name)


class MethodRegistry(Mapping[str, "type[SSLMethod]"]):
    """Method name -> class: the names are known up front, a class is imported on first lookup."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._loaded: dict[str, type[SSLMethod]] = {}

    def __getitem__(self, name: str) -> type[SSLMethod]:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = _load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


METHODS: Mapping[str, type[SSLMethod]] = MethodRegistry(
    ("simclr", "nnclr", "barlow_twins", "dino", "all4one", "swav", "lejepa", "stablerep"))


def get_method(name: str) -> type[SSLMethod]:
    """Return the method class registered as `name`; a ConfigError lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown SSL method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


def method_args(name: str, data: dict[str, Any] | None, prefix: str) -> Any:
    """Build method `name`'s frozen Args from a params mapping; unknown keys fail naming `prefix`.key."""
    from pas.ssl.args import METHOD_ARGS

    if name not in METHOD_ARGS:
        get_method(name)   # the ConfigError that lists the valid names
    return build(METHOD_ARGS[name], data, prefix)
