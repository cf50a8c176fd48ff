"""Text-to-image presets: a short name -> hub id and its recommended sampling settings.

A preset is found by its short name or by its hub id (any case, with or without `@revision`):
`sdxl-turbo`, `stabilityai/sdxl-turbo` and `StabilityAI/SDXL-Turbo@main` get the same settings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    """A generator recipe: where the weights live and how they are meant to be sampled."""

    hub_id: str
    steps: int
    guidance: float
    resolution: int


PRESETS: dict[str, Preset] = {
    "sd-turbo": Preset("stabilityai/sd-turbo", steps=1, guidance=0.0, resolution=512),
    "sdxl-turbo": Preset("stabilityai/sdxl-turbo", steps=1, guidance=0.0, resolution=512),
    "sd-1.5": Preset("stable-diffusion-v1-5/stable-diffusion-v1-5", steps=25, guidance=7.5, resolution=512),
    "sd-2.1": Preset("stabilityai/stable-diffusion-2-1", steps=25, guidance=7.5, resolution=768),
    "sd-3.5-medium": Preset("stabilityai/stable-diffusion-3.5-medium", steps=28, guidance=4.5, resolution=1024),
    "flux-schnell": Preset("black-forest-labs/FLUX.1-schnell", steps=4, guidance=0.0, resolution=1024),
}
_BY_HUB_ID = {preset.hub_id.lower(): preset for preset in PRESETS.values()}

TINY_PRESET = Preset("tiny://sd", steps=2, guidance=0.0, resolution=64)
GENERIC = {"steps": 25, "guidance": 7.5, "resolution": 512}  # any other diffusers pipeline


def find_preset(name: str) -> Preset | None:
    """The preset a generator name means: its short name, or its hub id in any case, `@revision` allowed."""
    if name in PRESETS:
        return PRESETS[name]
    return _BY_HUB_ID.get(name.partition("@")[0].lower())


def recommended(name: str) -> dict[str, float | int]:
    """Recommended steps / guidance / resolution for a generator name (preset or its hub id, tiny or any id)."""
    preset = TINY_PRESET if name.startswith("tiny://") else find_preset(name)
    if preset is None:
        return dict(GENERIC)
    return {k: v for k, v in asdict(preset).items() if k != "hub_id"}
