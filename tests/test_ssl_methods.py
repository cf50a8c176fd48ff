"""Method pieces against their definitions: All4One's queue, neighbours, centroid module and feature
loss; DINO's loss, teacher, centre and schedules; Barlow Twins; per-method views; monitor maths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ssl import build_method, one_thread  # noqa: F401  (fixture)

from pas.core.config import ConfigError
from pas.ssl import METHODS, method_args
from pas.ssl.all4one import All4One, feature_contrast
from pas.ssl.barlow_twins import barlow_twins_loss
from pas.ssl.base import Progress
from pas.ssl.centroid import CentroidEncoder, sinusoidal_encoding
from pas.ssl.dino import dino_loss, teacher_temperature
from pas.ssl.heads import cosine_momentum
from pas.ssl.module import param_groups
from pas.ssl.monitor import effective_rank, embedding_std, knn_accuracy
from pas.ssl.support import SupportQueue


def test_support_queue_is_fifo_in_whole_batches() -> None:
    queue = SupportQueue(size=6, dim=3)
    batches = [F.normalize(torch.randn(2, 3), dim=1) for _ in range(4)]
    for batch in batches[:3]:
        queue.push(batch)
    assert torch.equal(queue.queue, torch.cat(batches[:3]))
    queue.push(batches[3])                                   # full: the oldest batch goes first
    assert torch.equal(queue.queue, torch.cat([batches[3], batches[1], batches[2]]))
    assert int(queue.ptr) == 2
    with pytest.raises(ValueError, match="multiple"):
        queue.push(torch.randn(4, 3))


def test_queue_size_must_be_a_multiple_of_the_global_batch() -> None:
    args = method_args("all4one", {"queue_size": 96}, "pretrain.method_args.all4one")
    All4One.check(args, 32, global_batch=32, prefix="pretrain.method_args.all4one")
    with pytest.raises(ConfigError, match=r"pretrain\.method_args\.all4one\.queue_size=96.*global batch \(64"):
        All4One.check(args, 32, global_batch=64, prefix="pretrain.method_args.all4one")


def test_neighbours_are_the_true_top_k() -> None:
    torch.manual_seed(0)
    queue = SupportQueue(size=50, dim=8)
    z = F.normalize(torch.randn(4, 8), dim=1)
    index, entries = queue.nearest(z, 5)
    sims = (z @ queue.queue.T).numpy()
    expected = np.argsort(-sims, axis=1)[:, :5]              # brute force, best first
    assert np.array_equal(index.numpy(), expected)
    assert torch.equal(entries, queue.queue[index])


def test_feature_loss_equals_a_hand_computed_value() -> None:
    """N = D = 2: C1 = I (no penalty); C2 = [[a, a], [a, -a]] with a = 1/sqrt(2).

    on = sqrt(0.5 * (0 + ((a-1)^2 + (a+1)^2) / 2)) = sqrt(0.75); off = sqrt(0.5 * (0 + a^2)) = 0.5;
    L = 10 * (0.5 * on + 0.5 * off) = 5 sqrt(3) / 2 + 2.5.
    """
    z1_m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2_m = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    z1 = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    expected = 5 * math.sqrt(3) / 2 + 2.5
    assert feature_contrast(z1_m, z2_m, z1, z2).item() == pytest.approx(expected, abs=1e-5)


def test_positional_encoding_is_the_official_sinusoid() -> None:
    """Token j of 5 gets channel j of an interleaved sin/cos encoding over the feature positions p."""
    table = sinusoidal_encoding(5, 4)
    p = torch.arange(4.0)
    w = [1.0, 10000 ** (-2 / 6), 10000 ** (-4 / 6)]
    expected = torch.stack([(p * w[0]).sin(), (p * w[0]).cos(), (p * w[1]).sin(), (p * w[1]).cos(), (p * w[2]).sin()])
    assert table.shape == (5, 4)
    assert torch.allclose(table, expected, atol=1e-6)


def test_centroid_module_is_the_papers_transformer() -> None:
    encoder = CentroidEncoder(dim=256, tokens=5)               # the paper's sizes
    layers = encoder.encoder.layers
    assert len(layers) == 3
    for layer in layers:
        assert layer.self_attn.num_heads == 8 and layer.self_attn.batch_first
        assert layer.linear1.out_features == 512 and layer.dropout.p == 0.1
    table = sinusoidal_encoding(5, 256)                       # entries computed by hand from the definition
    p = 3.0                                                    # feature position 3; C = 6 channels for 5 tokens
    expected = [math.sin(p), math.cos(p), math.sin(p * 10000 ** (-2 / 6)), math.cos(p * 10000 ** (-2 / 6)),
                math.sin(p * 10000 ** (-4 / 6))]
    assert torch.allclose(table[:, 3], torch.tensor(expected), atol=1e-6)
    encoder.eval()
    torch.manual_seed(0)
    sequence = torch.randn(3, 5, 256)
    centroid = encoder(sequence)
    assert centroid.shape == (3, 256)
    swapped = sequence[:, [0, 2, 1, 3, 4]]                     # the same neighbours in another order
    assert not torch.allclose(encoder(swapped), centroid, atol=1e-4)       # positions matter, as encoded
    plain = encoder.encoder(swapped)[:, 0]                     # without positions the encoder is order-blind
    assert torch.allclose(plain, encoder.encoder(sequence)[:, 0], atol=1e-5)
    sequence_b = sequence.clone()
    sequence_b[1] += 1.0                                       # one sample's sequence changes only its centroid
    moved = encoder(sequence_b)
    assert torch.allclose(moved[[0, 2]], centroid[[0, 2]], atol=1e-6) and not torch.allclose(moved[1], centroid[1])


def test_all4one_step_matches_its_definition() -> None:
    """Total = 0.5 (centroid + neighbour + feature); the queue receives normalised momentum view-1
    projections after the step; the centroid module trains at 0.1 x the base lr."""
    torch.manual_seed(0)
    backbone, method = build_method("all4one", queue_size=8)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = method(backbone, views)
    logs = out.logs
    total = 0.5 * (logs["centroid"] + logs["neighbour"] + logs["feature"])
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    with torch.no_grad():
        expected = F.normalize(method.momentum_projector(method.momentum_backbone(views[0])), dim=-1)
    before = method.support.queue.clone()
    method.after_optimizer_step(backbone, Progress(1, 10, 5))
    assert torch.allclose(method.support.queue[:4], expected, atol=1e-5)
    assert torch.equal(method.support.queue[4:], before[4:])
    groups = param_groups(torch.nn.ModuleList([backbone, method]), 0.0, 1.0, method.lr_scales())
    centroid_params = {id(p) for p in method.centroid.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= centroid_params if group["lr"] == pytest.approx(0.1) else not ids & centroid_params
    trained = {id(p) for g in groups for p in g["params"]}
    assert not trained & {id(p) for p in method.momentum_backbone.parameters()}     # EMA only


def test_dino_loss_equals_a_hand_computed_value() -> None:
    """K = 2, one image, 2 global + 1 local crop, temperatures 1, centre 0: mean of 4 cross-entropies."""
    student = [torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    teacher = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    def ce(t, s):
        q = np.exp(t) / np.exp(t).sum()
        return -(q * (s - np.log(np.exp(s).sum()))).sum()
    s = [x.numpy()[0] for x in student]
    t = [x.numpy()[0] for x in teacher]
    expected = (ce(t[0], s[1]) + ce(t[0], s[2]) + ce(t[1], s[0]) + ce(t[1], s[2])) / 4
    assert dino_loss(student, teacher, torch.zeros(2), 1.0, 1.0).item() == pytest.approx(expected, abs=1e-6)
    center, temp = np.array([1.0, 0.5]), 0.5                           # centred, sharpened targets
    t = [(x - center) / temp for x in t]
    expected = (ce(t[0], s[1]) + ce(t[0], s[2]) + ce(t[1], s[0]) + ce(t[1], s[2])) / 4
    got = dino_loss(student, teacher, torch.tensor(center, dtype=torch.float32), 1.0, temp)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    student_temp = 0.1                                                   # the student's own sharpening
    s_sharp = [x / student_temp for x in s]
    expected = (ce(t[0], s_sharp[1]) + ce(t[0], s_sharp[2]) + ce(t[1], s_sharp[0]) + ce(t[1], s_sharp[2])) / 4
    got = dino_loss(student, teacher, torch.tensor(center, dtype=torch.float32), student_temp, temp)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    batch = [torch.cat([x, x.flip(1)]) for x in student], [torch.cat([x, x.flip(1)]) for x in teacher]
    mirrored = dino_loss(*batch, torch.zeros(2), 1.0, 1.0)               # a batch of 2: the mean over images
    one = dino_loss(student, teacher, torch.zeros(2), 1.0, 1.0)
    flipped = dino_loss([x.flip(1) for x in student], [x.flip(1) for x in teacher], torch.zeros(2), 1.0, 1.0)
    assert mirrored.item() == pytest.approx((one.item() + flipped.item()) / 2, abs=1e-6)


def test_dino_schedules() -> None:
    vanilla = method_args("dino", {}, "x")       # main_dino.py defaults: 0.04 throughout, no warm-up
    assert teacher_temperature(vanilla, 0) == teacher_temperature(vanilla, 50) == pytest.approx(0.04)
    args = method_args("dino", {"teacher_temp": 0.07, "warmup_teacher_temp_epochs": 30}, "x")   # README "boosting"
    assert teacher_temperature(args, 0) == pytest.approx(0.04)
    assert teacher_temperature(args, 15) == pytest.approx(0.055)
    assert teacher_temperature(args, 30) == teacher_temperature(args, 99) == pytest.approx(0.07)
    assert cosine_momentum(0.996, 1.0, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0, 1.0) == pytest.approx(1.0)


def test_dino_teacher_is_an_ema_and_the_centre_follows_the_teacher() -> None:
    torch.manual_seed(0)
    backbone, method = build_method("dino", base_momentum=0.5, final_momentum=0.5, freeze_last_layer_epochs=1.0)
    views = [torch.randn(4, 3, 32, 32)] * 2 + [torch.randn(4, 3, 16, 16)] * 2
    with torch.no_grad():
        _, teacher_logits = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))
    teacher_before = [p.clone() for p in method.teacher_backbone.parameters()]
    method(backbone, views).loss.backward()
    method.before_optimizer_step(Progress(0, 10, 5))             # epoch 0 < 1: prototypes frozen
    assert method.head.last_layer.weight.grad is None
    assert method.head.mlp[0].weight.grad is not None
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)                                          # stand-in for an optimizer step
    method.after_optimizer_step(backbone, Progress(1, 10, 5))
    for t, t0, s in zip(method.teacher_backbone.parameters(), teacher_before, backbone.parameters()):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s, atol=1e-6)
    assert torch.allclose(method.center, 0.1 * teacher_logits.mean(0), atol=1e-5)    # centre momentum 0.9
    assert float(method.epoch) == pytest.approx(0.2)
    assert method.export_backbone(backbone) is method.teacher_backbone


def test_barlow_twins_loss_equals_a_hand_computed_value() -> None:
    """Identical standardised views with perfectly correlated dimensions: C = all ones -> on 0, off 2 lambda."""
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    on, off = barlow_twins_loss(z, z.clone(), lambd=0.5)
    assert on.item() == pytest.approx(0.0, abs=1e-4)
    assert off.item() == pytest.approx(2 * 0.5, rel=1e-4)
    # A general case against numpy, written from the paper's definition: N = 5 images, D = 3 features, raw
    # (shifted, scaled) embeddings, C from batch-standardised views, on = sum (1 - C_ii)^2, off = sum_{i!=j} C_ij^2.
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, (5, 3))
    b = a @ rng.normal(size=(3, 3)) + rng.normal(-1.0, 0.5, (5, 3))
    standard = lambda x: (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)  # noqa: E731  (biased variance, as the paper)
    c = standard(a).T @ standard(b) / 5
    want_on = ((np.diag(c) - 1) ** 2).sum()
    want_off = 0.3 * ((c - np.diag(np.diag(c))) ** 2).sum()
    on, off = barlow_twins_loss(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), lambd=0.3)
    assert (on.item(), off.item()) == pytest.approx((want_on, want_off), rel=1e-4)


def _solarize_p(view) -> float:
    return view.solarize


def test_views_per_method() -> None:
    a4 = METHODS["all4one"].view_transforms(method_args("all4one", {}, "x"), 64)
    assert len(a4) == 2 and _solarize_p(a4[0]) == 0 and _solarize_p(a4[1]) == pytest.approx(0.2)
    dino_args = method_args("dino", {"local_crops": 3, "local_crop_size": 24}, "x")
    crops = METHODS["dino"].view_transforms(dino_args, 64)
    assert [c.size for c in crops] == [64] * 2 + [24] * 3
    assert _solarize_p(crops[1]) == pytest.approx(0.2) and _solarize_p(crops[0]) == 0
    with pytest.raises(ConfigError, match="local_crop_size"):
        METHODS["dino"].check(method_args("dino", {"local_crop_size": 64}, "x"), 64, 8, "x")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_args_reject_unknown_keys_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key pretrain\.method_args\.{name}\.no_such_key"):
        method_args(name, {"no_such_key": 1}, f"pretrain.method_args.{name}")


def test_collapse_indicators_and_knn_accuracy() -> None:
    torch.manual_seed(0)
    spread = torch.randn(512, 16)
    collapsed = torch.ones(512, 16) + 1e-4 * torch.randn(512, 16)
    assert embedding_std(spread) == pytest.approx(1 / 4, rel=0.1)               # about 1/sqrt(D)
    assert embedding_std(collapsed) < 1e-3
    assert effective_rank(spread) > 14 and effective_rank(collapsed) < 1.1
    centres = F.normalize(torch.randn(3, 16), dim=1)
    labels = torch.arange(3).repeat_interleave(10)
    points = centres[labels] + 0.01 * torch.randn(30, 16)
    assert knn_accuracy(points, labels, k=5, temperature=0.07) == 1.0
    assert knn_accuracy(torch.randn(30, 16), labels, k=5, temperature=0.07) < 0.7


def test_sigreg_is_near_zero_for_gaussian_samples_and_large_for_a_collapsed_batch() -> None:
    from pas.ssl.lejepa import random_directions, sigreg

    torch.manual_seed(0)
    directions = random_directions(16, 256, step=0, device="cpu")
    assert torch.allclose(directions.norm(dim=0), torch.ones(256))
    gaussian = sigreg(torch.randn(1024, 16), directions)
    collapsed = sigreg(torch.ones(1024, 16) + 0.01 * torch.randn(1024, 16), directions)
    shrunk = sigreg(0.1 * torch.randn(1024, 16), directions)               # right shape, wrong scale
    assert gaussian < 2.0 and collapsed > 100 * gaussian and shrunk > 20 * gaussian
    assert not torch.equal(directions, random_directions(16, 256, step=1, device="cpu"))   # redrawn each step
    assert torch.equal(directions, random_directions(16, 256, step=0, device="cpu"))       # same on every rank


def test_lejepa_invariance_pulls_every_view_to_the_global_centroid() -> None:
    from pas.ssl.lejepa import LeJEPAArgs, invariance, lejepa_loss, random_directions

    torch.manual_seed(0)
    same = torch.randn(64, 16)
    assert invariance([same, same, same], global_views=2) == 0
    a, b, local = torch.zeros(8, 4), 2 * torch.ones(8, 4), torch.ones(8, 4)    # centroid of a and b is 1
    assert invariance([a, b, local], global_views=2) == pytest.approx((1 + 1 + 0) / 3)
    views = [torch.randn(256, 16, requires_grad=True) for _ in range(4)]
    total, inv, sig = lejepa_loss(views, random_directions(16, 64, 0, "cpu"), LeJEPAArgs(lamb=0.05))
    assert total.ndim == 0 and torch.isfinite(total)
    assert total.item() == pytest.approx(0.05 * sig.item() + 0.95 * inv.item(), rel=1e-5)
    total.backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in views)


def test_sinkhorn_codes_are_distributions_that_use_every_prototype_equally() -> None:
    from pas.ssl.swav import sinkhorn

    torch.manual_seed(0)
    scores = F.normalize(torch.randn(256, 16), dim=1) @ F.normalize(torch.randn(32, 16), dim=1).T   # (B, K)
    scores[:, 0] += 0.5                                  # every sample prefers prototype 0: a collapse to undo
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (256, 32) and (codes >= 0).all()
    assert torch.allclose(codes.sum(dim=1), torch.ones(256), atol=1e-5)
    per_prototype = codes.sum(dim=0)                                            # ideally B / K = 8 each
    raw = torch.softmax(scores / 0.05, dim=1).sum(dim=0)                        # without balancing: far from it
    assert per_prototype.min() > 0.5 * 8 and per_prototype.max() < 1.5 * 8
    assert raw[0] > 10 * 8 and per_prototype[0] < 1.5 * 8        # 15x its share before, about its share after
    converged = sinkhorn(scores, epsilon=0.05, iterations=200).sum(dim=0)       # the fixed point: exactly equal
    assert torch.allclose(converged, torch.full((32,), 8.0), rtol=0.02)


def test_swapped_prediction_is_lowest_when_every_crop_predicts_the_codes() -> None:
    from pas.ssl.swav import swapped_prediction

    codes = [F.one_hot(torch.arange(8) % 4, 4).float()] * 2
    agree = [10 * (2 * c - 1) for c in codes] + [10 * (2 * codes[0] - 1)]
    disagree = [torch.roll(s, 1, dims=1) for s in agree]
    good, bad = swapped_prediction(agree, codes, [0, 1], 0.1), swapped_prediction(disagree, codes, [0, 1], 0.1)
    assert good.ndim == 0 and good < 1e-3 < bad


def test_swav_freezes_prototypes_in_the_first_epoch_and_fills_its_queue() -> None:
    from pas.ssl.backbones import create_backbone
    from pas.ssl.swav import SwAV, SwAVArgs

    backbone, dim = create_backbone("test_resnet")
    method = SwAV(backbone, dim, SwAVArgs(nmb_prototypes=10, feat_dim=8, hidden_mlp=16, local_crops=0,
                                          queue_length=8, epoch_queue_starts=0, freeze_prototypes_epochs=1.0))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    method(backbone, views).loss.backward()
    method.before_optimizer_step(Progress(0, 10, 5))
    assert method.prototypes.weight.grad is None                                # epoch 0: frozen
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(10))    # kept on the unit sphere
    assert method.queue[0, :4].abs().sum() > 0 and method.queue[0, 4:].abs().sum() == 0
    method.zero_grad()
    method(backbone, views).loss.backward()
    method.before_optimizer_step(Progress(6, 10, 5))
    assert method.prototypes.weight.grad is not None                            # after the first epoch: trained
    with pytest.raises(ConfigError, match="queue_length"):
        SwAV.check(SwAVArgs(queue_length=100, local_crop_size=32), 64, 64, "pretrain.method_args.swav")
