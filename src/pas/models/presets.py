"""Text-to-image presets: a short name -> hub id and its recommended sampling settings."""
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

TINY_PRESET = Preset("tiny://sd", steps=2, guidance=0.0, resolution=64)
GENERIC = {"steps": 25, "guidance": 7.5, "resolution": 512}  # any other diffusers pipeline


def recommended(name: str) -> dict[str, float | int]:
    """Recommended steps / guidance / resolution for a generator name (preset, tiny or any id)."""
    if name in PRESETS:
        preset = PRESETS[name]
    elif name.startswith("tiny://"):
        preset = TINY_PRESET
    else:
        return dict(GENERIC)
    return {k: v for k, v in asdict(preset).items() if k != "hub_id"}
