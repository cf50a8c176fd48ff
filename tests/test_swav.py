"""SwAV's Sinkhorn codes and swapped-prediction loss against the official algorithm (facebookresearch/swav,
main_swav.py: distributed_sinkhorn and the loss of the training loop), recomputed here in float64 NumPy, and
against small cases worked out by hand."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pas.core.config import ConfigError
from pas.ssl.base import Progress
from pas.ssl.swav import SwAV, SwAVArgs, sinkhorn, swapped_prediction


def official_sinkhorn(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """main_swav.py's distributed_sinkhorn on one process: Q = exp(scores / eps)^T (K, B) scaled to total 1, then
    each prototype (row) to 1/K and each sample (column) to 1/B per iteration; the columns times B are the codes."""
    q = np.exp(scores.astype(np.float64) / epsilon).T
    prototypes, batch = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / prototypes
        q = q / q.sum(axis=0, keepdims=True) / batch
    return (q * batch).T


def official_loss(scores: list[np.ndarray], codes: list[np.ndarray], assign: list[int], temperature: float) -> float:
    """main_swav.py's loss: for each assignment crop, minus the mean over the batch of sum_k q log softmax(x / T)
    of every other crop, averaged over those crops, then over the assignment crops."""
    total = 0.0
    for q, crop in zip(codes, assign):
        sub = 0.0
        others = [v for v in range(len(scores)) if v != crop]
        for v in others:
            x = scores[v].astype(np.float64) / temperature
            log_p = x - x.max(axis=1, keepdims=True)
            log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
            sub -= np.mean(np.sum(q * log_p, axis=1))
        total += sub / len(others)
    return total / len(assign)


def cosine_scores(batch: int, prototypes: int, seed: int) -> torch.Tensor:
    """(B, K) cosines of random unit embeddings with random unit prototypes, as SwAV computes them."""
    generator = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, 8, generator=generator), dim=1)
    c = F.normalize(torch.randn(prototypes, 8, generator=generator), dim=1)
    return z @ c.T


def test_one_sinkhorn_iteration_by_hand() -> None:
    """exp(scores / eps) = [[1, 1], [1, 3]]: total 6; prototypes scaled to 1/2 each gives [[1/4, 1/4], [1/8, 3/8]]
    (rows: prototypes); samples scaled to 1/2 each and times B = 2 gives codes [2/3, 1/3] and [2/5, 3/5]."""
    epsilon = 0.05
    scores = torch.tensor([[0.0, 0.0], [0.0, epsilon * math.log(3.0)]])
    codes = sinkhorn(scores, epsilon, iterations=1)
    assert codes.dtype == torch.float32
    assert torch.allclose(codes, torch.tensor([[2 / 3, 1 / 3], [2 / 5, 3 / 5]]), atol=1e-6)
    # no iteration: only the total is scaled (to B), rows are not yet distributions
    assert torch.allclose(sinkhorn(scores, epsilon, iterations=0), torch.tensor([[1 / 3, 1 / 3], [1 / 3, 1.0]]),
                          atol=1e-6)


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 0), (0.05, 1), (0.05, 3), (0.5, 2), (0.03, 10)])
def test_sinkhorn_equals_the_official_algorithm(epsilon: float, iterations: int) -> None:
    scores = cosine_scores(batch=12, prototypes=5, seed=iterations)        # B != K: the two scalings differ
    codes = sinkhorn(scores, epsilon, iterations)
    assert codes.shape == (12, 5)
    assert np.allclose(codes.numpy(), official_sinkhorn(scores.numpy(), epsilon, iterations), rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_equivariant_to_sample_order_and_ignores_gradients() -> None:
    scores = cosine_scores(batch=10, prototypes=4, seed=1).requires_grad_(True)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    codes = sinkhorn(scores, 0.05, 3)
    assert not codes.requires_grad                                           # the codes are targets
    assert torch.allclose(sinkhorn(scores[order], 0.05, 3), codes[order], atol=1e-6)


def test_swapped_prediction_by_hand() -> None:
    """Two crops, one sample, two prototypes. Codes of crop 0 = [1, 0], predicted by crop 1's scores [0, 0]:
    -log(1/2). Codes of crop 1 = [1/2, 1/2], predicted by crop 0's scores [T log 3, 0] (softmax [3/4, 1/4]):
    -(log(3/4) + log(1/4)) / 2. The loss is the mean of the two."""
    temperature = 0.1
    scores = [torch.tensor([[temperature * math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0]])]
    codes = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    expected = (math.log(2.0) - (math.log(0.75) + math.log(0.25)) / 2) / 2
    assert swapped_prediction(scores, codes, [0, 1], temperature).item() == pytest.approx(expected, rel=1e-6)
    # one assignment crop: only its own term, not halved
    assert swapped_prediction(scores, codes[:1], [0], temperature).item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert swapped_prediction(scores, codes[1:], [1], temperature).item() == pytest.approx(
        -(math.log(0.75) + math.log(0.25)) / 2, rel=1e-6)


@pytest.mark.parametrize("assign,temperature", [([0, 1], 0.1), ([0, 1], 0.5), ([1, 3], 0.2), ([2], 0.1)])
def test_swapped_prediction_equals_the_official_loss(assign: list[int], temperature: float) -> None:
    """Four crops of different predictions, soft codes: every crop other than the assignment crop predicts it."""
    scores = [cosine_scores(batch=6, prototypes=5, seed=10 + v) for v in range(4)]
    codes = [sinkhorn(scores[crop], 0.05, 3) for crop in assign]
    loss = swapped_prediction(scores, codes, assign, temperature)
    assert loss.ndim == 0
    expected = official_loss([s.numpy() for s in scores], [q.numpy() for q in codes], assign, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_swapped_prediction_gradient_flows_to_the_predicting_scores_only() -> None:
    """The codes are targets; each crop's scores get the gradient of cross-entropy: (softmax - q) / (T B) per
    assignment crop it predicts, divided by the number of predicting crops and of assignment crops."""
    temperature = 0.2
    scores = [cosine_scores(batch=4, prototypes=3, seed=v).requires_grad_(True) for v in range(3)]
    codes = [sinkhorn(scores[0], 0.05, 3)]
    swapped_prediction(scores, codes, [0], temperature).backward()
    assert scores[0].grad is None                                            # a crop never predicts its own codes
    for v in (1, 2):
        expected = (torch.softmax(scores[v].detach() / temperature, dim=1) - codes[0]) / (temperature * 4 * 2)
        assert torch.allclose(scores[v].grad, expected, atol=1e-6)


@pytest.mark.parametrize("settings", [{"nmb_prototypes": 1, "feat_dim": 1, "hidden_mlp": 1, "sinkhorn_iterations": 1,
                                       "local_crop_size": 1}, {"queue_length": 0, "epoch_queue_starts": 0,
                                       "freeze_prototypes_epochs": 0.0, "local_crops": 0},
                                      {"temperature": 1e-3, "epsilon": 1e-3},
                                      {"global_crop_scale": (1.0, 1.0), "local_crop_scale": (0.01, 0.01)}])
def test_swav_settings_at_their_limits_are_accepted(settings: dict) -> None:
    SwAVArgs(**settings).validate("swav")


SCALES = "use [low, high] with 0 < low <= high <= 1"


@pytest.mark.parametrize("settings,message", [
    ({"sinkhorn_iterations": 0}, "swav.sinkhorn_iterations=0 is not allowed; use an integer >= 1"),
    ({"nmb_prototypes": 0}, "swav.nmb_prototypes=0 is not allowed; use an integer >= 1"),
    ({"epsilon": 0.0}, "swav.epsilon=0.0 is not allowed; use a positive number"),
    ({"temperature": -0.1}, "swav.temperature=-0.1 is not allowed; use a positive number"),
    ({"queue_length": -1}, "swav.queue_length=-1 is not allowed; use a number >= 0"),
    ({"freeze_prototypes_epochs": -0.5}, "swav.freeze_prototypes_epochs=-0.5 is not allowed; use a number >= 0"),
    ({"global_crop_scale": (0.5, 1.2)}, f"swav.global_crop_scale=[0.5, 1.2] is not allowed; {SCALES}"),
    ({"local_crop_scale": (0.3,)}, f"swav.local_crop_scale=[0.3] is not allowed; {SCALES}"),
    ({"local_crop_scale": (0.3, 0.2)}, f"swav.local_crop_scale=[0.3, 0.2] is not allowed; {SCALES}"),
    ({"global_crop_scale": (0.0, 0.5)}, f"swav.global_crop_scale=[0.0, 0.5] is not allowed; {SCALES}")])
def test_bad_swav_settings_name_the_key_the_value_and_the_fix(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SwAVArgs(**settings).validate("swav")


def test_swav_check_needs_small_local_crops_and_a_queue_of_whole_batches() -> None:
    SwAV.check(SwAVArgs(queue_length=128, local_crop_size=31), 32, 64, "swav")         # two batches of 64
    SwAV.check(SwAVArgs(queue_length=0, local_crops=0, local_crop_size=96), 32, 64, "swav")
    with pytest.raises(ConfigError, match=r"^swav\.local_crop_size=32 is not allowed; use a size below "
                                          r"pretrain\.image_size \(32\)$"):
        SwAV.check(SwAVArgs(local_crop_size=32), 32, 64, "swav")
    with pytest.raises(ConfigError, match=r"^swav\.queue_length=96 is not allowed; use 0 or a multiple of the "
                                          r"global batch \(64\)$"):
        SwAV.check(SwAVArgs(queue_length=96, local_crop_size=16), 32, 64, "swav")


def test_swav_queue_fills_newest_first_and_its_scores_join_the_codes_once_full() -> None:
    """queue_length 8, batch 4: step 1 (queue empty) and step 2 (half full) compute codes on the batch alone;
    from step 3 the queued embeddings' scores are prepended to the Sinkhorn input (main_swav.py:293-302)."""
    from pas.ssl.backbones import create_backbone

    torch.manual_seed(0)
    backbone, dim = create_backbone("test_resnet")
    args = SwAVArgs(nmb_prototypes=6, feat_dim=4, hidden_mlp=8, local_crops=0, queue_length=8, epoch_queue_starts=0)
    method = SwAV(backbone, dim, args)
    queue = [torch.zeros(0, 4), torch.zeros(0, 4)]                 # newest first, as the method keeps it
    for step in range(4):
        views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
        with torch.no_grad():
            embeddings, scores = method.embed(backbone, views)
            weight = method.prototypes.weight.clone()
        codes = []
        for i in (0, 1):
            joined = torch.cat([queue[i] @ weight.T, scores[i]]) if len(queue[i]) == 8 else scores[i]
            codes.append(sinkhorn(joined, args.epsilon, args.sinkhorn_iterations)[-4:])
            queue[i] = torch.cat([embeddings[i], queue[i]])[:8]
        expected = swapped_prediction(scores, codes, [0, 1], args.temperature)
        output = method(backbone, views)
        assert output.logs == {"queue": 1.0}
        assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5), step
        assert torch.allclose(output.embedding, embeddings[0], atol=1e-6)
        filled = min(8, 4 * (step + 1))
        assert torch.allclose(method.queue[:, :filled], torch.stack(queue)[:, :filled], atol=1e-6)
        assert method.queue[:, filled:].abs().sum() == 0
    assert bool(method.queue_used)
    method.eval()                                                  # evaluation never changes the queue
    before = method.queue.clone()
    method(backbone, [torch.randn(4, 3, 32, 32) for _ in range(2)])
    assert torch.equal(method.queue, before)


def test_swav_queue_waits_for_its_epoch() -> None:
    from pas.ssl.backbones import create_backbone

    backbone, dim = create_backbone("test_resnet")
    method = SwAV(backbone, dim, SwAVArgs(nmb_prototypes=6, feat_dim=4, hidden_mlp=8, local_crops=0, queue_length=8,
                                          epoch_queue_starts=2))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    assert method(backbone, views).logs == {"queue": 0.0} and method.queue.abs().sum() == 0
    method.after_optimizer_step(backbone, Progress(10, 100, 5))    # epoch 2
    assert method(backbone, views).logs == {"queue": 1.0} and method.queue.abs().sum() > 0
    method.prototypes.weight.grad = torch.ones_like(method.prototypes.weight)
    method.before_optimizer_step(Progress(5, 100, 5))              # epoch 1.0 = freeze_prototypes_epochs: trained
    assert method.prototypes.weight.grad is not None
