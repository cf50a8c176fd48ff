"""DINO in detail: every argument's range and message, the head, the loss worked by hand, views, the frozen layer."""
from __future__ import annotations

import math
import re

import pytest
import torch

from pas.core.config import ConfigError
from pas.ssl import method_args
from pas.ssl.base import Progress
from pas.ssl.dino import DINO, DINOArgs, DINOHead, dino_loss, teacher_temperature

LIMITS = [  # (field, first bad value, last good value, words of the message)
    ("out_dim", 0, 1, "an integer >= 1"), ("hidden_dim", 0, 1, "an integer >= 1"),
    ("bottleneck_dim", 0, 1, "an integer >= 1"), ("local_crop_size", 0, 1, "an integer >= 1"),
    ("student_temp", 0.0, 1e-6, "a positive number"), ("teacher_temp", 0.0, 1e-6, "a positive number"),
    ("warmup_teacher_temp", 0.0, 1e-6, "a positive number"),
    ("center_momentum", 1.01, 1.0, "a number in [0, 1]"), ("center_momentum", -0.01, 0.0, "a number in [0, 1]"),
    ("base_momentum", 1.5, 1.0, "a number in [0, 1]"), ("final_momentum", -1.0, 0.0, "a number in [0, 1]"),
    ("drop_path_rate", 1.1, 1.0, "a number in [0, 1]"),
    ("warmup_teacher_temp_epochs", -1.0, 0.0, "a number >= 0"), ("freeze_last_layer_epochs", -0.5, 0.0, "a number >= 0"),
    ("grad_clip", -1.0, 0.0, "a number >= 0"), ("local_crops", -1, 0, "a number >= 0"),
]


@pytest.mark.parametrize(("field", "bad", "good", "words"), LIMITS)
def test_every_argument_is_checked_at_its_bound_and_named(field, bad, good, words):
    method_args("dino", {field: good}, "pretrain.method_args.dino")          # the bound itself is allowed
    expected = f"pretrain.method_args.dino.{field}={bad!r} is not allowed; use {words}"
    with pytest.raises(ConfigError, match=rf"^{re.escape(expected)}$"):
        method_args("dino", {field: bad}, "pretrain.method_args.dino")


@pytest.mark.parametrize("scale", [[0.5, 0.4], [0.0, 0.5], [0.1, 1.2], [0.3]])
def test_crop_scales_are_ordered_fractions(scale):
    for name in ("global_crop_scale", "local_crop_scale"):
        with pytest.raises(ConfigError, match=rf"^x.{name}=\[.*\] is not allowed; use \[low, high\] with 0 < low <= high"):
            method_args("dino", {name: scale}, "x")
    method_args("dino", {"global_crop_scale": [1.0, 1.0], "local_crop_scale": [0.01, 0.01]}, "x")


def test_local_crops_must_be_smaller_than_the_global_ones():
    args = method_args("dino", {"local_crop_size": 32}, "x")
    DINO.check(args, 33, 8, "p")
    with pytest.raises(ConfigError, match=r"^p.local_crop_size=32 is not allowed; use a size below pretrain.image_size "
                                          r"\(32\)$"):
        DINO.check(args, 32, 8, "p")


def test_the_head_normalises_its_bottleneck_and_its_prototypes():
    torch.manual_seed(0)
    args = DINOArgs(out_dim=12, hidden_dim=16, bottleneck_dim=6)
    head = DINOHead(10, args)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 16), (16, 16), (16, 6)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert all(float(m.bias.abs().max()) == 0 and float(m.weight.std()) < 0.05 for m in linears)   # trunc_normal 0.02
    assert not head.last_scale.requires_grad and head.last_scale.shape == (12, 1)     # norm_last_layer: g fixed at 1
    assert head.last_layer.bias is None                                                # prototypes only, as main_dino.py
    assert DINOHead(10, DINOArgs(out_dim=12, hidden_dim=16, bottleneck_dim=6, norm_last_layer=False)).last_scale.requires_grad
    bottleneck, logits = head(torch.randn(4, 10))
    assert torch.allclose(bottleneck.norm(dim=1), torch.ones(4), atol=1e-6)
    # each logit is the cosine of the bottleneck with a unit prototype: |logit| <= 1, and it equals that product
    prototypes = torch.nn.functional.normalize(head.last_layer.weight, dim=1)
    assert torch.allclose(logits, bottleneck @ prototypes.T, atol=1e-6) and float(logits.abs().max()) <= 1 + 1e-6


def test_dino_loss_by_hand():
    """Two global crops and one local crop of one image, 2 prototypes: the mean over the 4 (teacher, other view) pairs."""
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])]
    t = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    center = torch.tensor([1.0, 0.0])
    tau_s, tau_t = 0.5, 0.25
    q = [torch.softmax((x - center) / tau_t, -1) for x in t]
    logp = [torch.log_softmax(x / tau_s, -1) for x in s]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = sum(float(-(q[i] * logp[v]).sum()) for i, v in pairs) / len(pairs)
    assert float(dino_loss(s, t, center, tau_s, tau_t)) == pytest.approx(expected, rel=1e-6)
    # the centre matters, a teacher never distils into its own view
    assert float(dino_loss(s, t, torch.zeros(2), tau_s, tau_t)) != pytest.approx(expected)
    same_view = sum(float(-(q[i] * logp[i]).sum()) for i in (0, 1))
    assert expected != pytest.approx((expected * 4 + same_view) / 6)


def test_teacher_temperature_warms_up_linearly_then_stays():
    args = DINOArgs(teacher_temp=0.07, warmup_teacher_temp=0.03, warmup_teacher_temp_epochs=4)
    assert [round(teacher_temperature(args, e), 6) for e in (0, 1, 2, 3, 4, 10)] == [0.03, 0.04, 0.05, 0.06, 0.07, 0.07]


def test_views_are_two_global_crops_then_the_local_ones():
    args = DINOArgs(local_crops=3, local_crop_size=24, global_crop_scale=(0.3, 0.9), local_crop_scale=(0.1, 0.2))
    views = DINO.view_transforms(args, 48)
    assert len(views) == 5

    assert [(v.size, v.scale) for v in views] == [(48, (0.3, 0.9))] * 2 + [(24, (0.1, 0.2))] * 3
    assert [v.blur for v in views] == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert [v.solarize for v in views] == [0, 0.2, 0, 0, 0]


def test_the_last_layer_is_frozen_only_during_its_epochs():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    dino = DINO(backbone, 4, DINOArgs(out_dim=8, hidden_dim=8, bottleneck_dim=4, freeze_last_layer_epochs=1.0,
                                      norm_last_layer=False))
    for p in dino.head.parameters():
        p.grad = torch.ones_like(p)
    dino.before_optimizer_step(Progress(step=9, total_steps=100, steps_per_epoch=10))    # epoch 0.9
    assert dino.head.last_layer.weight.grad is None and dino.head.last_scale.grad is None
    assert dino.head.mlp[0].weight.grad is not None
    for p in dino.head.parameters():
        p.grad = torch.ones_like(p)
    dino.before_optimizer_step(Progress(step=10, total_steps=100, steps_per_epoch=10))   # epoch 1: trains
    assert dino.head.last_layer.weight.grad is not None and dino.head.last_scale.grad is not None
    assert dino.grad_clip == 3.0 and math.isclose(dino.args.drop_path_rate, 0.1)


def test_forward_distils_every_view_and_returns_the_first_global_embedding():
    """Two 16 px global views and two 8 px local ones: the loss covers all four student views, the embedding is view 1's."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    args = DINOArgs(out_dim=10, hidden_dim=8, bottleneck_dim=4, local_crops=2, local_crop_size=8,
                    warmup_teacher_temp=0.03, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    dino = DINO(backbone, 6, args)
    views = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16), torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    out = dino(backbone, views)
    with torch.no_grad():
        student = [dino.head(backbone(v))[1] for v in views]
        teacher = [dino.teacher_head(dino.teacher_backbone(v))[1] for v in views[:2]]
        only_globals = dino_loss(student[:2], teacher, dino.center, args.student_temp, 0.03)
        expected = dino_loss(student, teacher, dino.center, args.student_temp, 0.03)
        first_global = dino.head(backbone(views[0]))[0]
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.loss) != pytest.approx(float(only_globals), rel=1e-3)
    assert torch.allclose(out.embedding, first_global, atol=1e-6)
    assert out.logs == {"teacher_temp": pytest.approx(0.03)}                          # epoch 0: the warm-up start
