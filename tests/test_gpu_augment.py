"""The views' draws against the official parameters, and the batched device ops (run here on CPU tensors)."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from pas.ssl import method_args
from pas.ssl.augment import cpu_views
from pas.ssl.dino import DINO
from pas.ssl.gpu_augment import adjust, apply_views, crop_resize, decode_batch, device_views, gaussian_blur
from pas.ssl.views import (
    BRIGHTNESS,
    CONTRAST,
    FLIP,
    GRAY,
    HUE,
    JITTER,
    ORDER,
    SATURATION,
    SIGMA,
    SOLARIZE,
    X0,
    X1,
    Y0,
    Y1,
    ViewSpec,
    byol_views,
    sample_view,
    sample_views,
)

N = 4000
DINO_VIEWS = DINO.view_transforms(method_args("dino", {}, "x"), 224)


def draws(spec: ViewSpec, width: int = 500, height: int = 400, n: int = N, seed: int = 0) -> np.ndarray:
    rng = random.Random(seed)
    return np.array([sample_view(spec, width, height, rng) for _ in range(n)])


def share(flags: np.ndarray, p: float) -> bool:
    """The observed share is within 4.5 binomial standard deviations of p (fixed seeds: never flaky)."""
    return abs(flags.mean() - p) <= 4.5 * math.sqrt(p * (1 - p) / len(flags)) + 1e-9


def test_dino_views_carry_the_official_parameters():
    # main_dino.py DataAugmentationDINO: global (0.4, 1) at 224, local (0.05, 0.4) at 96, 8 local crops
    assert [(v.size, v.scale) for v in DINO_VIEWS] == [(224, (0.4, 1.0))] * 2 + [(96, (0.05, 0.4))] * 8
    assert {(v.flip, v.jitter, v.jitter_p, v.grayscale, v.sigma) for v in DINO_VIEWS} == \
        {(0.5, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, (0.1, 2.0))}
    assert [v.blur for v in DINO_VIEWS] == [1.0, 0.1] + [0.5] * 8
    assert [v.solarize for v in DINO_VIEWS] == [0, 0.2] + [0] * 8
    assert [(v.blur, v.solarize) for v in byol_views(224)] == [(1.0, 0), (0.1, 0.2)]   # BYOL's asymmetric pair


@pytest.mark.parametrize("spec", [DINO_VIEWS[0], DINO_VIEWS[2], ViewSpec(224)], ids=["global", "local", "simclr"])
def test_crop_scale_and_ratio_follow_torchvisions_random_resized_crop(spec):
    ours = draws(spec)
    w, h = ours[:, X1] - ours[:, X0], ours[:, Y1] - ours[:, Y0]
    torch.manual_seed(0)
    image = torch.zeros(3, 400, 500)
    theirs = np.array([RandomResizedCrop.get_params(image, list(spec.scale), list(spec.ratio)) for _ in range(N)])
    for ours_v, theirs_v in ((w * h / 2e5, theirs[:, 2] * theirs[:, 3] / 2e5), (w / h, theirs[:, 3] / theirs[:, 2])):
        assert stats.ks_2samp(ours_v, theirs_v).pvalue > 1e-3
    assert (w * h / 2e5 >= spec.scale[0] - 0.01).all() and (w * h / 2e5 <= spec.scale[1] + 0.01).all()
    assert (ours[:, X0] >= 0).all() and (ours[:, X1] <= 500).all() and (ours[:, Y1] <= 400).all()


@pytest.mark.parametrize("view", range(3))
def test_flip_jitter_grayscale_blur_and_solarize_happen_at_their_probabilities(view):
    spec = DINO_VIEWS[view]
    d = draws(spec)
    assert share(d[:, FLIP], 0.5) and share(d[:, JITTER], 0.8) and share(d[:, GRAY], 0.2)
    assert share(d[:, SIGMA] > 0, spec.blur) and share(d[:, SOLARIZE], spec.solarize)
    jittered = d[d[:, JITTER] > 0]
    for column, low, high in ((BRIGHTNESS, 0.6, 1.4), (CONTRAST, 0.6, 1.4), (SATURATION, 0.8, 1.2), (HUE, -0.1, 0.1)):
        assert stats.kstest(jittered[:, column], stats.uniform(low, high - low).cdf).pvalue > 1e-3
    orders = {tuple(row) for row in jittered[:, ORDER].astype(int)}
    assert len(orders) == 24 and all(sorted(o) == [0, 1, 2, 3] for o in orders)   # every order of the four
    sigma = d[d[:, SIGMA] > 0, SIGMA]
    if len(sigma):
        assert stats.kstest(sigma, stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3


def test_draws_are_deterministic_for_a_seed_and_independent_between_images():
    assert np.array_equal(draws(DINO_VIEWS[0], seed=3), draws(DINO_VIEWS[0], seed=3))
    a, b = draws(DINO_VIEWS[0], seed=1), draws(DINO_VIEWS[0], seed=2)
    # two images' flips (and jitter) agree as often as independent coins do, not always
    assert share(a[:, FLIP] == b[:, FLIP], 0.5) and share(a[:, JITTER] == b[:, JITTER], 0.68)


@pytest.mark.parametrize("op, reference", [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                           (2, TF.adjust_saturation), (3, TF.adjust_hue)])
def test_batched_colour_adjustments_equal_torchvisions_per_image(op, reference):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 12, 12)
    factors = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1]) if op == 3 else torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4])
    out = adjust(x.clone(), op, factors)
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(5)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_blur_spreads_each_sample_by_its_own_sigma():
    impulse = torch.zeros(4, 3, 41, 41)
    impulse[:, :, 20, 20] = 1.0
    sigma = torch.tensor([0.0, 0.5, 1.2, 2.0])
    out = gaussian_blur(impulse.clone(), sigma, 2.0)
    offsets = torch.arange(41.0) - 20
    profile = out[:, 0].sum(1)                                    # (4, 41): the blur along x
    spread = (profile * offsets ** 2).sum(1).sqrt()
    assert torch.equal(out[0], impulse[0])                        # sigma 0: untouched
    assert torch.allclose(spread[2:], sigma[2:], rtol=0.02)       # a sampled kernel: sigma 0.5 spreads by 0.46
    assert 0.45 < spread[1] < 0.5
    assert torch.allclose(out.sum((2, 3)), torch.ones(4, 3))      # mass kept


def test_crop_resize_takes_each_images_own_box():
    ramp = torch.arange(64.0).repeat(64, 1)                       # value = x coordinate
    images = [torch.stack([ramp, ramp.T, ramp * 0]).to(torch.uint8), torch.full((3, 32, 48), 200, dtype=torch.uint8)]
    boxes = torch.tensor([[16.0, 0.0, 48.0, 64.0], [0.0, 0.0, 48.0, 32.0]])
    out = crop_resize(images, boxes, 8) * 255
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out[0, 0, 0], torch.arange(8.0) * 4 + 16 + 1.5, atol=1e-3)   # x 16..48 in 8 steps
    assert torch.allclose(out[1], torch.full((3, 8, 8), 200.0))                         # padding never sampled


def _jpeg(side: int = 96, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((side // 8, side // 8, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((side, side), Image.BILINEAR).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_device_path_on_cpu_matches_the_cpu_path_and_changing_one_sample_changes_only_it():
    specs = [ViewSpec(32, blur=0.5, solarize=0.2), ViewSpec(16, scale=(0.05, 0.4), blur=0.5)]
    jpegs = [_jpeg(seed=i) for i in range(6)]
    params = torch.tensor([sample_views(specs, 96, 96, random.Random(i)) for i in range(6)])
    views = device_views(jpegs, params, specs, "cpu")
    cpu = [cpu_views(jpeg, specs, random.Random(i)) for i, jpeg in enumerate(jpegs)]
    for v in range(2):
        assert views[v].shape == (6, 3, specs[v].size, specs[v].size) and views[v].dtype == torch.float32
        reference = torch.stack([c[v] for c in cpu])
        assert (views[v] - reference).abs().mean() < 0.06          # normalised units: the same draws, ~1/255 apart
    changed = params.clone()
    changed[2, 0, FLIP] = 1 - changed[2, 0, FLIP]
    again = device_views(jpegs, changed, specs, "cpu")
    differs = [not torch.equal(a, b) for a, b in zip(again[0], views[0])]
    assert differs == [False, False, True, False, False, False] and torch.equal(again[1], views[1])


def test_device_views_are_deterministic_for_the_same_draws():
    specs = DINO.view_transforms(method_args("dino", {"local_crops": 2, "local_crop_size": 16}, "x"), 32)
    jpegs = [_jpeg(seed=i) for i in range(3)]
    params = torch.tensor([sample_views(specs, 96, 96, random.Random(i)) for i in range(3)])
    first, second = apply_views(decode_batch(jpegs, "cpu"), params, specs), device_views(jpegs, params, specs, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
