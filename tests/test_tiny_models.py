"""The tiny models' bytes are pas's own: fixed content hashes, no torch RNG or library init, no version stamps."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pas.models.registry import content_hash
from pas.models.tiny import build_tiny_clip, build_tiny_sd, initial_value, seeded_uniform

# content_hash of each built folder. A change here changes the offline default's models/ outputs and
# every result downstream: recommit dvc.lock, metrics/ and plots/ from a full `dvc repro` with it.
EXPECTED = {
    "sd": "4a84972f0bca7e124a0f698a0039e9df011a0266ece8a748711ca6fb65e10865",
    "clip": "cb7e71fa2f4c26236783c480600392d66f35276c41424a4d7da113b006450ff9",
}


def build_both(root: Path) -> dict[str, Path]:
    """Build tiny://sd and tiny://clip under root."""
    build_tiny_sd(root / "sd")
    build_tiny_clip(root / "clip")
    return {"sd": root / "sd", "clip": root / "clip"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build_both(tmp_path_factory.mktemp("tiny"))


def test_the_built_models_have_the_recorded_content_hashes(built):
    assert {kind: content_hash(folder) for kind, folder in built.items()} == EXPECTED


def test_the_weights_come_neither_from_torch_rng_nor_from_the_libraries_init(tmp_path, monkeypatch):
    def constant(tensor, *args, **kwargs):  # what a library update changing the init (or the RNG) would do
        with torch.no_grad():
            return tensor.fill_(0.5)

    for name in ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                 "xavier_normal_", "trunc_normal_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, constant)
    monkeypatch.setattr(torch.Tensor, "uniform_", constant)
    monkeypatch.setattr(torch.Tensor, "normal_", constant)
    torch.manual_seed(1234)
    assert {kind: content_hash(folder) for kind, folder in build_both(tmp_path).items()} == EXPECTED


def test_saved_files_carry_no_library_version(built):
    for path in sorted(p for folder in built.values() for p in folder.rglob("*.json")):
        if path.name == "vocab.json":
            continue
        keys = set(json.loads(path.read_text()))
        assert not {k for k in keys if "version" in k}, path
    for path in sorted(p for folder in built.values() for p in folder.rglob("*.safetensors")):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        assert header["__metadata__"] == {"format": "pt"}, path


def test_the_clip_embeddings_deliberately_zeroed_stay_zero_and_others_are_random(built):
    from safetensors.numpy import load_file

    state = load_file(str(built["clip"] / "open_clip_model.safetensors"))
    assert not state["visual.class_embedding"].any() and not state["visual.positional_embedding"].any()
    assert state["positional_embedding"].std() > 0 and state["token_embedding.weight"].std() > 0
    assert state["logit_scale"] == pytest.approx(math.log(1 / 0.07))


def test_initial_values_follow_torchs_default_scales():
    conv = initial_value("down.0.conv.weight", (64, 32, 3, 3))
    assert conv.dtype == np.float32 and 0.9 / math.sqrt(288) < np.abs(conv).max() < 1 / math.sqrt(288)
    assert conv.std() == pytest.approx(1 / math.sqrt(3 * 288), rel=0.05)
    assert (initial_value("norm1.weight", (32,)) == 1).all() and not initial_value("norm1.bias", (32,)).any()
    assert not initial_value("attn.in_proj_bias", (96,)).any()
    assert initial_value("token_embedding.weight", (514, 32)).std() == pytest.approx(0.02, rel=0.05)
    linear = initial_value("time_embedding.linear_1.weight", (128, 32))       # a Linear inside an "embedding"
    assert np.abs(linear).max() > 0.9 / math.sqrt(32)


def test_the_stream_is_a_pure_function_of_seed_name_and_shape():
    a = seeded_uniform(0, "w", (3, 4), 1.0)
    assert a.tobytes() == seeded_uniform(0, "w", (3, 4), 1.0).tobytes()
    assert not np.array_equal(a, seeded_uniform(1, "w", (3, 4), 1.0))
    assert not np.array_equal(a, seeded_uniform(0, "v", (3, 4), 1.0))
    assert not np.array_equal(a.ravel(), seeded_uniform(0, "w", (4, 3), 1.0).ravel())


def test_an_unknown_kind_of_parameter_is_refused_by_name():
    with pytest.raises(ValueError, match="'blocks.0.gamma' of shape \\(4, 4\\)"):
        initial_value("blocks.0.gamma", (4, 4))

