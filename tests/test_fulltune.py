"""Full fine-tuning: layer-wise lr decay groups, stratified subsets, and a short run that learns."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pas.core.config import ConfigError, build
from pas.transfer.fulltune import (
    FullConfig,
    NormalisedHead,
    finetune_full,
    layer_decay_groups,
    predict_full,
    subset_positions,
)
from pas.transfer.inits import InitInfo
from pas.transfer.probe import torch_threads

TINY = "resnet10t"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads made these steps ~9x slower."""
    with torch_threads(1):
        yield


def test_layer_decay_gives_the_stem_the_smallest_lr_and_the_head_the_full_lr():
    backbone = timm.create_model(TINY, pretrained=False, num_classes=0)
    head = torch.nn.Linear(backbone.num_features, 3)
    groups = layer_decay_groups(backbone, head, FullConfig(lr=0.1, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(list(backbone.parameters())) + 2  # every parameter exactly once
    stem, last = backbone.conv1[0].weight, backbone.layer4[-1].conv2.weight
    # the head at lr; below it the stages layer4..layer1 and the stem, each one more factor 0.5 down
    expected = {id(head.weight): 0.1, id(last): 0.1 * 0.5, id(backbone.layer3[0].conv1.weight): 0.1 * 0.5 ** 2,
                id(backbone.layer1[0].conv1.weight): 0.1 * 0.5 ** 4, id(stem): 0.1 * 0.5 ** 5}
    assert {key: lr_of[key] for key in expected} == pytest.approx(expected)
    assert lr_of[id(stem)] == pytest.approx(0.1 * 0.5 ** round(np.log(lr_of[id(stem)] / 0.1) / np.log(0.5)))


def test_subset_positions_keep_class_shares():
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    picked = subset_positions(labels, 20, seed=0)
    assert np.bincount(labels[picked]).tolist() == [12, 6, 2]
    np.testing.assert_array_equal(picked, subset_positions(labels, 20, seed=0))
    assert len(subset_positions(labels, 0, seed=0)) == 100


def test_short_full_finetune_learns_colour_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 16)
    pixels = rng.integers(0, 60, size=(48, 3, 16, 16), dtype=np.uint8)
    for i, label in enumerate(labels):
        pixels[i, label, 4:12, 4:12] = 230  # class = colour channel of a bright square
    torch.manual_seed(0)
    backbone = timm.create_model(TINY, pretrained=False, num_classes=0)
    head = NormalisedHead(torch.nn.Linear(backbone.num_features, 3))
    init = InitInfo(TINY, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, {"kind": "random"})
    cfg = FullConfig(epochs=6, batch_size=8, lr=0.01, layer_decay=0.8, weight_decay=0.0)
    history = finetune_full(backbone, head, lambda out, y: (torch.nn.functional.cross_entropy(out, y), out),
                            pixels, labels, init, cfg, seed=0, device="cpu")
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    scores = predict_full(backbone, head, lambda out: out, pixels, init, batch_size=16, device="cpu")
    assert scores.shape == (48, 3) and (scores.argmax(1) == labels).mean() >= 0.8


def test_config_is_validated_by_key():
    with pytest.raises(ConfigError, match=r"finetune.full.batch_size=1"):
        build(FullConfig, {"batch_size": 1}, "finetune.full")
    with pytest.raises(ConfigError, match=r"finetune.full.max_train_images=-1"):
        build(FullConfig, {"max_train_images": -1}, "finetune.full")


def test_probe_started_head_reproduces_the_linear_probe_before_training():
    """LP-FT: backbone + NormalisedHead(probe) give the probe's logits on the frozen features."""
    from pas.transfer.config import LinearConfig
    from pas.transfer.features import pixel_features
    from pas.transfer.probe import fit_standardised_probe, train_linear_probe

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, size=(30, 3, 16, 16), dtype=np.uint8)
    labels = np.arange(30) % 3
    torch.manual_seed(0)
    backbone = timm.create_model(TINY, pretrained=False, num_classes=0)
    init = InitInfo(TINY, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, {"kind": "random"})
    feats = pixel_features(backbone, pixels, init.mean, init.std, batch_size=16, device="cpu")
    cfg = LinearConfig(epochs=10, batch_size=16)
    probe = fit_standardised_probe(feats, labels, 3, cfg, seed=0, device="cpu")
    linear = torch.nn.Linear(feats.shape[1], 3)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(probe.weight))
        linear.bias.copy_(torch.from_numpy(probe.bias))
    scores = predict_full(backbone, NormalisedHead(linear, probe.mean, probe.std), lambda out: out, pixels, init,
                          batch_size=16, device="cpu")
    weight, bias, _ = train_linear_probe(feats, labels, 3, cfg, seed=0, device="cpu")
    np.testing.assert_allclose(scores, feats @ weight.T + bias, rtol=1e-3, atol=1e-3)
