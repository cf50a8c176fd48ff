"""ELFIS: affinity, clustering of planted groups, the expert head's outputs and training on frozen features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pas.core.config import ConfigError, build
from pas.transfer.config import LinearConfig
from pas.transfer.elfis import (
    ElfisConfig,
    ElfisHead,
    class_affinity,
    cluster_classes,
    discover_meta_categories,
    elfis_loss,
    elfis_probe_scores,
    embed_class_names,
)


def test_affinity_mixes_scaled_text_and_symmetrised_confusion():
    text = np.eye(3, dtype=np.float32)
    text[1] = [0.6, 0.8, 0.0]  # class 1's name is close to class 0's
    confusion = np.array([[8, 0, 2], [0, 10, 0], [2, 0, 8]])  # the model mixes 0 and 2
    only_text = class_affinity(text, confusion, 1.0)
    only_model = class_affinity(text, confusion, 0.0)
    assert only_text[0, 1] == pytest.approx(1.0) and only_text[0, 2] == pytest.approx(0.0)
    assert only_model[0, 2] == pytest.approx(1.0) and only_model[0, 1] == pytest.approx(0.0)
    np.testing.assert_allclose(class_affinity(text, confusion, 0.5), 0.5 * only_text + 0.5 * only_model)
    np.testing.assert_allclose(only_model, only_model.T)
    assert np.all(np.diag(only_model) == 1.0)


def test_clustering_recovers_planted_meta_categories():
    blocks = [[0, 3, 5], [1, 4], [2, 6, 7]]
    affinity = np.full((8, 8), 0.05)
    for block in blocks:
        affinity[np.ix_(block, block)] = 0.9
    np.fill_diagonal(affinity, 1.0)
    assert cluster_classes(affinity, 3) == blocks
    assert cluster_classes(affinity, 1) == [list(range(8))]
    assert len(cluster_classes(affinity, 0)) == 3  # auto: round(sqrt(8))


def test_class_name_embeddings_group_related_names():
    names = ["cat", "truck", "dog", "car"]
    groups = cluster_classes(class_affinity(embed_class_names(names, "wordllama"), np.eye(4), 1.0), 2)
    assert [[names[i] for i in g] for g in groups] == [["cat", "dog"], ["truck", "car"]]


def test_head_combines_general_and_expert_into_a_distribution():
    torch.manual_seed(0)
    head = ElfisHead(6, 5, [[0, 2], [1, 3, 4]])
    out = head(torch.randn(4, 6))
    assert out.general.shape == (4, 5) and [e.shape for e in out.experts] == [(4, 2), (4, 3)]
    log_probs = head.combine(out)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(4))
    loss, scores = elfis_loss(head, 1.0)(out, torch.tensor([0, 1, 2, 4]))
    assert loss.item() > 0 and scores.shape == (4, 5)
    with pytest.raises(ValueError, match="cover classes 0..4 once"):
        ElfisHead(6, 5, [[0, 1], [1, 2, 3, 4]])


def _blobs(rng, per_class, centres):
    labels = np.repeat(np.arange(len(centres)), per_class)
    feats = centres[labels] + 0.4 * rng.normal(size=(len(labels), centres.shape[1]))
    return feats.astype(np.float32), labels


def test_meta_categories_from_confusion_and_expert_training_on_features():
    """Classes 0/1 and 2/3 share a centre but for a small offset: the first model confuses them in pairs."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 12)) * 3
    centres = np.stack([base[0], base[0] + 0.5, base[1], base[1] + 0.5])
    centres[[1, 3], 0] += 1.5
    train_x, train_y = _blobs(rng, 40, centres)
    test_x, test_y = _blobs(rng, 20, centres)
    names = ["a", "b", "c", "d"]
    cfg = ElfisConfig(groups=2, text_weight=0.0, folds=2)
    meta = discover_meta_categories(names, embed_class_names(names, "wordllama"), train_x, train_y,
                                    LinearConfig(epochs=20, batch_size=32), cfg, seed=0, device="cpu")
    assert meta.groups == [[0, 1], [2, 3]] and meta.names == [["a", "b"], ["c", "d"]]
    assert 0.5 < meta.first_model_top1 < 1.0
    scores, history = elfis_probe_scores(train_x, train_y, test_x, meta.groups, 4, LinearConfig(epochs=30,
                                         batch_size=32), cfg, seed=0, device="cpu")
    assert scores.shape == (80, 4) and history[-1]["loss"] < history[0]["loss"]
    np.testing.assert_allclose(np.exp(scores).sum(1), 1.0, rtol=1e-4)
    assert (scores.argmax(1) == test_y).mean() >= 0.85


def test_config_is_validated_by_key():
    assert build(ElfisConfig, {}, "finetune.elfis").protocols == ("linear",)
    with pytest.raises(ConfigError, match=r"finetune.elfis.protocols=\['knn'\]"):
        build(ElfisConfig, {"protocols": ["knn"]}, "finetune.elfis")
    with pytest.raises(ConfigError, match=r"finetune.elfis.text_weight=2.0"):
        build(ElfisConfig, {"text_weight": 2.0}, "finetune.elfis")
