"""Full fine-tuning at device speed, the device-independent parts: AMP / channels_last / cuDNN settings chosen per
device, weight decay off for norms, biases and a ViT's pos_embed / cls_token, and augmentation in DataLoader workers
giving the very batches the main process would."""
from __future__ import annotations

import os

import numpy as np
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pas.transfer.fulltune import (
    AugmentedBatches,
    DeviceSettings,
    FullConfig,
    NormalisedHead,
    device_settings,
    finetune_full,
    is_convolutional,
    layer_decay_groups,
)
from pas.transfer.inits import InitInfo
from pas.transfer.probe import torch_threads


def test_device_settings_per_device():
    assert device_settings("cpu", convolutional=True, bf16_native=True) == DeviceSettings()   # float32, as before
    bf16 = device_settings("cuda", convolutional=True, bf16_native=True)
    assert bf16 == DeviceSettings(torch.bfloat16, False, True, True, True)
    fp16 = device_settings("cuda", convolutional=False, bf16_native=False)
    assert fp16.amp_dtype == torch.float16 and fp16.grad_scaler and not fp16.channels_last
    assert is_convolutional(timm.create_model("resnet10t", num_classes=0))
    assert not is_convolutional(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=1))


def test_vit_position_embedding_class_token_norms_and_biases_get_no_weight_decay():
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2)
    head = NormalisedHead(torch.nn.Linear(backbone.num_features, 3))
    groups = layer_decay_groups(backbone, head, FullConfig(weight_decay=0.05))
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay_of) == len(list(backbone.parameters())) + 2           # every parameter exactly once
    names = dict(backbone.named_parameters())
    none = {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.weight", "blocks.1.attn.qkv.bias"}
    assert {n: decay_of[id(names[n])] for n in none} == dict.fromkeys(none, 0.0)
    decayed = {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"}
    assert {n: decay_of[id(names[n])] for n in decayed} == dict.fromkeys(decayed, 0.05)
    assert decay_of[id(head.head.weight)] == 0.05 and decay_of[id(head.head.bias)] == 0.0


def test_augmentation_runs_in_workers_and_gives_the_main_process_batches(tmp_path, monkeypatch):
    seen = tmp_path / "pids"
    seen.mkdir()
    build = AugmentedBatches.__getitem__

    def noting(self, i):
        (seen / str(os.getpid())).touch()
        return build(self, i)

    monkeypatch.setattr(AugmentedBatches, "__getitem__", noting)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 8)
    pixels = rng.integers(0, 255, size=(16, 3, 16, 16), dtype=np.uint8)
    init = InitInfo("resnet10t", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, {"kind": "random"})
    runs = {}
    with torch_threads(1):
        for workers in (0, 2):
            torch.manual_seed(0)
            backbone = timm.create_model("resnet10t", num_classes=0)
            head = NormalisedHead(torch.nn.Linear(backbone.num_features, 2))
            cfg = FullConfig(epochs=2, batch_size=4, lr=0.01, weight_decay=0.05, augment="random_resized_crop")
            history = finetune_full(backbone, head, lambda out, y: (torch.nn.functional.cross_entropy(out, y), out),
                                    pixels, labels, init, cfg, seed=0, device="cpu", workers=workers)
            runs[workers] = (history, [p.detach().clone() for p in backbone.parameters()])
            pids = {int(p.name) for p in seen.iterdir()}
            assert (pids == {os.getpid()}) if workers == 0 else (os.getpid() not in pids and len(pids) >= 1)
            for p in seen.iterdir():
                p.unlink()
    assert runs[0][0] == runs[2][0]                                       # same losses, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[2][1], strict=True))
