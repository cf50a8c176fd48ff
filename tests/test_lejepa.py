"""LeJEPA's loss against the official minimal implementation (rbalestr-lab/lejepa MINIMAL.md: SIGReg with 17 knots
on [0, 3], trapezoid weights doubled times exp(-t^2/2), statistic times N, mean over directions and views;
invariance `(proj.mean(0) - proj).square().mean()`; total lamb x SIGReg + (1 - lamb) x invariance), recomputed here
in float64 NumPy, and against small cases worked out by hand."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from pas.core.config import ConfigError
from pas.ssl.lejepa import (
    LeJEPA,
    LeJEPAArgs,
    epps_pulley_weights,
    invariance,
    lejepa_loss,
    random_directions,
    sigreg,
)


def official_sigreg(proj: np.ndarray, directions: np.ndarray, knots: int = 17, t_max: float = 3.0) -> float:
    """MINIMAL.md's SIGReg.forward for proj (V, N, P) and directions A (P, M), generalised to `knots` on [0, t_max]."""
    t = np.linspace(0.0, t_max, knots)
    dt = t_max / (knots - 1)
    weights = np.full(knots, 2 * dt)
    weights[[0, -1]] = dt
    phi = np.exp(-t**2 / 2)
    x_t = (proj.astype(np.float64) @ directions.astype(np.float64))[..., None] * t      # (V, N, M, T)
    err = (np.cos(x_t).mean(-3) - phi) ** 2 + np.sin(x_t).mean(-3) ** 2                # (V, M, T)
    statistic = (err @ (weights * phi)) * proj.shape[-2]                              # (V, M)
    return float(statistic.mean())


def official_invariance(proj: np.ndarray) -> float:
    """MINIMAL.md's invariance with every view global: proj (V, N, P)."""
    proj = proj.astype(np.float64)
    return float(((proj.mean(0) - proj) ** 2).mean())


def views(count: int, n: int = 32, dim: int = 6, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, dim, generator=generator)
    return [scale * (shared + 0.5 * torch.randn(n, dim, generator=generator)) for _ in range(count)]


def test_epps_pulley_weights_by_hand() -> None:
    """3 knots on [0, 2]: t = 0, 1, 2, step 1; trapezoid doubled = 1, 2, 1; times exp(-t^2/2)."""
    t, w = epps_pulley_weights(3, 2.0)
    assert torch.allclose(t, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(w, torch.tensor([1.0, 2 * math.exp(-0.5), math.exp(-2.0)]), atol=1e-7)
    # the default rule integrates exp(-t^2/2) over [-3, 3]: sqrt(2 pi) erf(3 / sqrt 2) = 2.4998
    t, w = epps_pulley_weights(17, 3.0)
    assert t.shape == w.shape == (17,) and t[-1] == 3.0
    assert w.sum().item() == pytest.approx(math.sqrt(2 * math.pi) * math.erf(3 / math.sqrt(2)), rel=1e-3)


def test_sigreg_of_one_point_by_hand() -> None:
    """N = 1 at the origin: ecf = 1 at every t, so err(t) = (1 - exp(-t^2/2))^2 and, with 3 knots on [0, 2],
    the statistic is 1 x [0, 2 e^-.5 (1 - e^-.5)^2, e^-2 (1 - e^-2)^2] summed, whatever the directions."""
    directions = random_directions(4, 5, step=3, device="cpu")
    expected = 2 * math.exp(-0.5) * (1 - math.exp(-0.5)) ** 2 + math.exp(-2) * (1 - math.exp(-2)) ** 2
    assert sigreg(torch.zeros(1, 4), directions, knots=3, t_max=2.0).item() == pytest.approx(expected, rel=1e-5)
    # a point at +1 or -1 along a single direction: cos(t) and +-sin(t), the imaginary part counts squared
    one_direction = torch.tensor([[1.0], [0.0]])
    t = np.array([0.0, 1.0, 2.0])
    weights = np.array([1.0, 2 * math.exp(-0.5), math.exp(-2.0)])
    err = (np.cos(t) - np.exp(-t**2 / 2)) ** 2 + np.sin(t) ** 2
    for z in (torch.tensor([[1.0, 5.0]]), torch.tensor([[-1.0, 5.0]])):
        assert sigreg(z, one_direction, knots=3, t_max=2.0).item() == pytest.approx(float(err @ weights), rel=1e-5)


@pytest.mark.parametrize("across_ranks", [True, False])
@pytest.mark.parametrize("knots,t_max,scale", [(17, 3.0, 1.0), (9, 2.0, 0.3), (5, 4.0, 2.0)])
def test_sigreg_equals_the_official_implementation(knots: int, t_max: float, scale: float, across_ranks: bool) -> None:
    z = views(1, n=48, dim=6, seed=knots, scale=scale)[0]
    directions = random_directions(6, 20, step=knots, device="cpu")
    got = sigreg(z, directions, knots, t_max, across_ranks=across_ranks)
    assert got.ndim == 0
    expected = official_sigreg(z.numpy()[None], directions.numpy(), knots, t_max)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_sigreg_is_symmetric_in_the_sign_and_order_of_samples_and_directions() -> None:
    z = views(1, n=40, dim=5, seed=7)[0]
    directions = random_directions(5, 12, step=1, device="cpu")
    value = sigreg(z, directions).item()
    assert sigreg(z[torch.randperm(40)], directions).item() == pytest.approx(value, rel=1e-5)
    assert sigreg(-z, directions).item() == pytest.approx(value, rel=1e-5)      # N(0, I) is symmetric
    assert sigreg(z, directions[:, torch.randperm(12)]).item() == pytest.approx(value, rel=1e-5)


def test_sigreg_scales_with_the_batch_size_for_a_fixed_distribution() -> None:
    """The statistic is N x the weighted squared ECF error: repeating a batch twice doubles it."""
    z = views(1, n=20, dim=5, seed=3)[0]
    directions = random_directions(5, 8, step=2, device="cpu")
    assert sigreg(torch.cat([z, z]), directions).item() == pytest.approx(2 * sigreg(z, directions).item(), rel=1e-5)


def test_random_directions_are_unit_columns_seeded_by_the_step() -> None:
    directions = random_directions(7, 30, step=4, device="cpu")
    assert directions.shape == (7, 30) and directions.dtype == torch.float32
    assert torch.allclose(directions.norm(dim=0), torch.ones(30), atol=1e-6)
    assert torch.equal(directions, random_directions(7, 30, step=4, device="cpu"))
    assert not torch.allclose(directions, random_directions(7, 30, step=5, device="cpu"))
    gaussian = torch.randn(7, 30, generator=torch.Generator().manual_seed(4))     # the draw itself is N(0, I)
    assert torch.allclose(directions, gaussian / gaussian.norm(dim=0), atol=1e-6)


@pytest.mark.parametrize("count", [2, 4])
def test_invariance_with_every_view_global_equals_the_official_formula(count: int) -> None:
    projections = views(count, seed=count)
    expected = official_invariance(torch.stack(projections).numpy())
    assert invariance(projections, global_views=count).item() == pytest.approx(expected, rel=1e-5)


def test_invariance_pulls_local_views_to_the_centroid_of_the_global_ones_only() -> None:
    """Global views 0 and 4 (centroid 2), local views 2 and 5: distances^2 4, 4, 0, 9 -> mean 17 / 4."""
    projections = [torch.full((3, 2), value) for value in (0.0, 4.0, 2.0, 5.0)]
    assert invariance(projections, global_views=2).item() == pytest.approx(17 / 4)
    assert invariance(projections, global_views=3).item() == pytest.approx((4 + 4 + 0 + 9) / 4)   # (0+4+2)/3 = 2
    assert invariance(projections, global_views=1).item() == pytest.approx((0 + 16 + 4 + 25) / 4)


@pytest.mark.parametrize("lamb", [0.02, 0.3, 1.0, 0.0])
def test_lejepa_loss_equals_the_official_minimal_loss(lamb: float) -> None:
    projections = views(4, n=24, dim=6, seed=11)
    directions = random_directions(6, 16, step=9, device="cpu")
    args = LeJEPAArgs(lamb=lamb, global_views=4, knots=9, t_max=2.5)
    total, inv, sig = lejepa_loss(projections, directions, args)
    proj = torch.stack(projections).numpy()
    official_sig = official_sigreg(proj, directions.numpy(), knots=9, t_max=2.5)
    official_inv = official_invariance(proj)
    assert sig.item() == pytest.approx(official_sig, rel=1e-4)
    assert inv.item() == pytest.approx(official_inv, rel=1e-5)
    assert total.item() == pytest.approx(lamb * official_sig + (1 - lamb) * official_inv, rel=1e-4, abs=1e-7)
    assert lejepa_loss(projections, directions, args, across_ranks=False)[0].item() == pytest.approx(total.item())


def test_lejepa_loss_averages_sigreg_over_every_view_local_ones_included() -> None:
    projections = views(2, n=16, dim=4, seed=1) + views(1, n=16, dim=4, seed=2, scale=0.1)   # one local view
    directions = random_directions(4, 10, step=0, device="cpu")
    _, inv, sig = lejepa_loss(projections, directions, LeJEPAArgs(global_views=2))
    per_view = [official_sigreg(p.numpy()[None], directions.numpy()) for p in projections]
    assert sig.item() == pytest.approx(sum(per_view) / 3, rel=1e-4)
    assert inv.item() == pytest.approx(invariance(projections, 2).item())


def test_lejepa_loss_gradients_match_finite_differences() -> None:
    """No stop-gradient anywhere: every view gets the gradient of the whole loss (checked in float64)."""
    projections = [p.double().requires_grad_(True) for p in views(3, n=6, dim=3, seed=5)]
    directions = random_directions(3, 4, step=0, device="cpu").double()
    args = LeJEPAArgs(lamb=0.4, global_views=2, knots=5)
    total, _, _ = lejepa_loss(projections, directions, args)
    total.backward()

    def value(ps: list[torch.Tensor]) -> float:
        inv = np.mean([((p.numpy() - (ps[0].numpy() + ps[1].numpy()) / 2) ** 2).mean() for p in ps])
        sig = official_sigreg(np.stack([p.numpy() for p in ps]), directions.numpy(), knots=5)
        return 0.4 * sig + 0.6 * inv

    for view in range(3):
        for index in [(0, 0), (2, 1), (5, 2)]:
            bumped = [p.detach().clone() for p in projections]
            bumped[view][index] += 1e-6
            lowered = [p.detach().clone() for p in projections]
            lowered[view][index] -= 1e-6
            numeric = (value(bumped) - value(lowered)) / 2e-6
            assert projections[view].grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7)


SCALES = "use [low, high] with 0 < low <= high <= 1"


@pytest.mark.parametrize("settings", [{"lamb": 0.0}, {"lamb": 1.0}, {"knots": 2, "t_max": 1e-3},
                                      {"proj_dim": 1, "proj_hidden_dim": 1, "num_slices": 1, "global_views": 1,
                                       "local_crop_size": 1}, {"local_views": 0, "heldout_images": 0},
                                      {"global_crop_scale": (1.0, 1.0), "local_crop_scale": (0.01, 0.01)}])
def test_lejepa_settings_at_their_limits_are_accepted(settings: dict) -> None:
    LeJEPAArgs(**settings).validate("lejepa")


@pytest.mark.parametrize("settings,message", [
    ({"lamb": 1.5}, "lejepa.lamb=1.5 is not allowed; use a weight in [0, 1]"),
    ({"lamb": -0.1}, "lejepa.lamb=-0.1 is not allowed; use a weight in [0, 1]"),
    ({"num_slices": 0}, "lejepa.num_slices=0 is not allowed; use an integer >= 1"),
    ({"global_views": 0}, "lejepa.global_views=0 is not allowed; use an integer >= 1"),
    ({"knots": 1}, "lejepa.knots=1 is not allowed; use an integer >= 2"),
    ({"t_max": 0.0}, "lejepa.t_max=0.0 is not allowed; use a positive number"),
    ({"local_views": -1}, "lejepa.local_views=-1 is not allowed; use an integer >= 0"),
    ({"heldout_images": -2}, "lejepa.heldout_images=-2 is not allowed; use an integer >= 0"),
    ({"global_crop_scale": (0.5, 1.2)}, f"lejepa.global_crop_scale=[0.5, 1.2] is not allowed; {SCALES}"),
    ({"local_crop_scale": (0.3,)}, f"lejepa.local_crop_scale=[0.3] is not allowed; {SCALES}"),
    ({"local_crop_scale": (0.3, 0.2)}, f"lejepa.local_crop_scale=[0.3, 0.2] is not allowed; {SCALES}"),
    ({"global_crop_scale": (0.0, 0.5)}, f"lejepa.global_crop_scale=[0.0, 0.5] is not allowed; {SCALES}")])
def test_bad_lejepa_settings_name_the_key_the_value_and_the_fix(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        LeJEPAArgs(**settings).validate("lejepa")


def test_lejepa_check_needs_local_views_smaller_than_the_global_ones() -> None:
    LeJEPA.check(LeJEPAArgs(local_views=2, local_crop_size=31), 32, 64, "lejepa")
    LeJEPA.check(LeJEPAArgs(local_views=0, local_crop_size=96), 32, 64, "lejepa")     # no local views: unused
    with pytest.raises(ConfigError, match=r"^lejepa\.local_crop_size=32 is not allowed; use a size below "
                                          r"pretrain\.image_size \(32\)$"):
        LeJEPA.check(LeJEPAArgs(local_views=2, local_crop_size=32), 32, 64, "lejepa")


def test_lejepa_method_projects_every_view_once_and_draws_directions_from_its_step() -> None:
    """project: one projection per view, in order, globals and locals each through the projector; forward: the
    loss of those projections on directions seeded by the step, which counts optimizer steps one by one."""
    from pas.ssl.backbones import create_backbone
    from pas.ssl.base import Progress

    torch.manual_seed(0)
    backbone, dim = create_backbone("test_resnet")
    args = LeJEPAArgs(proj_dim=4, proj_hidden_dim=8, num_slices=8, global_views=2, local_views=2, local_crop_size=16,
                      heldout_images=7)
    method = LeJEPA(backbone, dim, args)
    assert method.heldout_images == 7
    method.eval()
    backbone.eval()                                              # BatchNorm on running statistics: one view = a batch
    views = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        projected = method.project(backbone, views)
        alone = [method.projector(backbone(v)) for v in views]
        assert len(projected) == 4 and all(torch.allclose(p, a, atol=1e-5) for p, a in zip(projected, alone))
        for step in (0, 1, 2):
            output = method(backbone, views)
            total, inv, sig = lejepa_loss(alone, random_directions(4, 8, step, "cpu"), args)
            assert output.loss.item() == pytest.approx(total.item(), rel=1e-4)
            assert set(output.logs) == {"invariance", "sigreg"}
            assert output.logs["invariance"].item() == pytest.approx(inv.item(), rel=1e-4)
            assert output.logs["sigreg"].item() == pytest.approx(sig.item(), rel=1e-4)
            assert torch.allclose(output.embedding, alone[0], atol=1e-5)
            method.after_optimizer_step(backbone, Progress(step, 10, 5))
        assert method.step.dtype == torch.long and int(method.step) == 3
