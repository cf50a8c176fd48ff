"""timm architecture names without importing timm (2-4 s with torch): a list written from the locked timm.

`is_timm_arch` answers from timm_archs.txt when the installed timm is the version that wrote it, and asks timm
itself otherwise. Refresh the list with `python -m pas.models.timm_archs` (scripts/lock.sh does, with the lock).
"""
from __future__ import annotations

from functools import cache
from importlib.metadata import version
from pathlib import Path

ARCHS_FILE = Path(__file__).with_name("timm_archs.txt")   # "# timm <version>", then one architecture a line
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")   # weight files a timm backbone loads (pas.ssl.backbones)


def arch_name(model: str) -> str:
    """The architecture of a timm model name, without its pretrained tag (timm _registry.py get_arch_name)."""
    return model.split(".", 1)[0]


@cache
def _listed(path: Path) -> tuple[str, frozenset[str]]:
    lines = path.read_text().splitlines()
    return lines[0].removeprefix("# timm ").strip(), frozenset(lines[1:])


def is_timm_arch(model: str, path: Path = ARCHS_FILE) -> bool:
    """Whether timm can build `model` (a tag after the first dot ignored), as timm.is_model answers."""
    listed_version, archs = _listed(path) if path.is_file() else ("", frozenset())
    if listed_version == version("timm"):
        return arch_name(model) in archs
    import timm

    return timm.is_model(arch_name(model))


def write_archs(path: Path = ARCHS_FILE) -> int:
    """Write the installed timm's architecture names to `path` (atomically); returns how many."""
    import timm
    from timm.models._registry import _model_entrypoints

    # what timm.is_model looks in (timm 1.0 models/_registry.py:363-366): list_models() leaves out the deprecated
    # names, which still build (with a warning)
    archs = sorted(_model_entrypoints)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join([f"# timm {timm.__version__}", *archs]) + "\n")
    tmp.replace(path)
    _listed.cache_clear()
    return len(archs)


if __name__ == "__main__":
    print(f"{write_archs()} timm architectures written to {ARCHS_FILE}")
