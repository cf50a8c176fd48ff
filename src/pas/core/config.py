"""Typed, validated configuration: params.yaml sections -> frozen dataclasses."""
from __future__ import annotations

import dataclasses
import decimal
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SIZE_FORMS = "an integer (2000), an underscored integer (2_000) or a k/M/B suffix (500k, 1.2M)"
MAX_SIZE = 10_000_000_000  # curated images (LAION-5B is the largest public pool); beyond it the plan cannot fit in memory
_SIZE_RE = re.compile(r"^\s*(\d[\d_]*(?:\.\d+)?)\s*([kKmMbB]?)\s*$")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


class PasError(Exception):
    """An error a user can fix; stages print its message as one line and exit non-zero."""


class ConfigError(PasError, ValueError):
    """A parameter is missing, unknown or has a bad value; the message names the key."""


class DataError(PasError):
    """Input data is missing or unusable; the message names the file and how to fix it."""


def user_error(err: PasError | FileNotFoundError) -> str:
    """The one line a user sees for an expected error: its message, or the path a missing file has."""
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"no such file or folder: {err.filename} (check the path, or run dvc repro to build it)"
    return str(err)


def parse_size(value: Any, key: str = "size") -> int:
    """Parse 500k, 1.2M, 2_000 or 2000 into a positive integer image count."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not a size; use {SIZE_FORMS}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ConfigError(f"{key}={value!r} is not a size; use {SIZE_FORMS}")
        mantissa, suffix = match.groups()
        scaled = decimal.Decimal(mantissa.replace("_", "")) * _SUFFIX[suffix.lower()]  # exact: 2.01k is 2010
        if scaled != scaled.to_integral_value():
            raise ConfigError(f"{key}={value!r} is not a whole number of images; use {SIZE_FORMS}")
        number = int(scaled)
    if number <= 0:
        raise ConfigError(f"{key}={value!r} must be positive; use {SIZE_FORMS}")
    if number > MAX_SIZE:
        raise ConfigError(f"{key}={value!r} is more than {MAX_SIZE:,} images; use a size of at most 10B")
    return number


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """params.mix: the share of candidates generated vs retrieved (normalised to sum 1)."""

    generated: float = 0.5
    retrieved: float = 0.5

    def validate(self, prefix: str) -> None:
        """Shares are non-negative and not both zero."""
        require(self.generated >= 0 and self.retrieved >= 0 and self.generated + self.retrieved > 0,
                prefix, (self.generated, self.retrieved), "use non-negative shares that do not both equal 0")

    @property
    def real_share(self) -> float:
        """The retrieved (real) share, normalised: retrieved / (generated + retrieved)."""
        return self.retrieved / (self.generated + self.retrieved)


@dataclasses.dataclass(frozen=True)
class TopLevel:
    """The top-level params (size, seed, domain, oversample, mix), parsed once with one-line errors."""

    size: int = 300  # images in the curated dataset (parsed from 300, 2_000, 500k, 1.2M)
    seed: int = 0
    domain: str = "animals"
    oversample: float = 2.0
    mix: MixConfig = MixConfig()

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first bad value."""
        require(self.seed >= 0, "seed", self.seed, "use an integer >= 0")
        require(self.oversample >= 1.0, "oversample", self.oversample,
                "use a number >= 1.0 (candidates per final image)")
        require(bool(self.domain.strip()), "domain", self.domain, "name a shipped domain (animals, food, birds)")


# Sections of params.yaml beside the top-level keys: one per stage that has settings, plus `models`.
SECTIONS = ("models", "sample_data", "concepts", "generate", "pool_index", "retrieve", "filter", "dedup", "report",
            "pretrain", "finetune", "evaluate")
TOP_LEVEL_KEYS = tuple(f.name for f in dataclasses.fields(TopLevel))


def top_level(params: dict[str, Any]) -> TopLevel:
    """TopLevel from the top-level keys present in `params` (absent keys keep their defaults)."""
    data = {name: params[name] for name in TOP_LEVEL_KEYS if name in params}
    if "size" in data:
        data["size"] = parse_size(data["size"])
    if "mix" in data:
        if not isinstance(data["mix"], dict):
            raise ConfigError(f"mix={data['mix']!r} must be a mapping: {{generated: 0.5, retrieved: 0.5}}")
        data["mix"] = build(MixConfig, data["mix"], "mix")
    return build(TopLevel, data, "")


def check_keys(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Refuse a top-level key that is neither a top-level param nor a section (a typo like `sise`)."""
    allowed = (*TOP_LEVEL_KEYS, *SECTIONS)
    for key in params:
        if key not in allowed:
            near = [a for a in allowed if _close(str(key), a)]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"unknown top-level key {key!r} in {source}{hint}; allowed: {', '.join(allowed)}")


def _close(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def read_yaml12(text: str) -> Any:
    """Parse YAML 1.2 as DVC writes it (`dvc exp run -S x=0.00001` stores 1e-05, a string to a YAML 1.1 reader)."""
    import json

    from ruamel.yaml import YAML

    # plain Python types (the round-trip of JSON drops ruamel's wrappers); a parse error stays one line
    try:
        return json.loads(json.dumps(YAML(typ="safe", pure=True).load(text)))
    except Exception as err:  # noqa: BLE001 - ruamel's scanner/parser errors share no public base class
        raise ConfigError(f"params file is not valid YAML: {' '.join(str(err).split())}") from err


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml (or another YAML file) into a dict, with a clear error if absent."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run from the repository root")
    data = read_yaml12(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of parameters")
    check_keys(data, str(path))
    return data


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return tuple(_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def build(cls: type[T], data: dict[str, Any] | None, prefix: str) -> T:
    """Build dataclass `cls` from `data`, failing on unknown keys and wrong types by name."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; allowed keys of {prefix}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name  # prefix "": top-level keys
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key} in params.yaml")
            continue
        kwargs[name] = _check_type(data[name], hints[name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming key, value and what is allowed unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is not allowed; {allowed}")


def require_fields(section: Any, prefix: str, names: Iterable[str], ok: Callable[[Any], bool], allowed: str) -> None:
    """`require` for each named field of a config section: the first field whose value fails `ok` is named."""
    for name in names:
        value = getattr(section, name)
        require(ok(value), f"{prefix}.{name}", value, allowed)
