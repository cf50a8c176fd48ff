"""filter.exemplars: DataComp's image-based filter against the exemplars folder. Planted clusters are kept or removed
as the exemplars select them, with the reason and its count; exemplars copied from downstream images are named as
an oracle setting; a missing or empty folder is one clear error; with the rule off nothing new is read."""
import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_image

from pas.core.config import ConfigError, DataError, build
from pas.core.shards import write_table
from pas.curation.exemplar_filter import (
    REASON,
    default_clusters,
    exemplar_clusters,
    exemplar_copies,
    exemplar_files,
    exemplar_rule,
)
from pas.curation.filter import FilterConfig, filter_candidates
from pas.models.clip import ClipEncoder


def blobs(centres: np.ndarray, per: int, seed: int = 0, spread: float = 0.05) -> np.ndarray:
    """(len(centres) * per, D) unit vectors scattered around each unit centre in turn."""
    rng = np.random.default_rng(seed)
    points = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((len(centres) * per, centres.shape[1]))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


CENTRES = np.eye(8, dtype=np.float32)[:4]          # four well-separated directions in 8-D


def test_the_clusters_the_exemplars_fall_into_are_kept_and_the_rest_rejected_with_the_reason():
    candidates = blobs(CENTRES, 30)                                # 120 candidates, 30 per blob
    exemplars = blobs(CENTRES[[1, 3]], 2, seed=1)                  # two exemplars near blob 1, two near blob 3
    blob = np.repeat(np.arange(4), 30)
    why = [""] * 120
    why[0], why[35] = "out_of_domain", "too_small"               # already rejected: keep their own reason
    pool = np.array([w != "too_small" for w in why])
    out, counts = exemplar_rule(why, candidates, exemplars, pool, clusters=4)
    kept = np.array([w == "" for w in out])
    assert set(blob[kept]) == {1, 3} and kept.sum() == 59           # blob 1 less its too_small member, all of blob 3
    assert [w for w, b in zip(out, blob) if b in (0, 2) and w != "out_of_domain"] == [REASON] * 59
    assert out[0] == "out_of_domain" and out[35] == "too_small"
    assert counts == {"clusters": 4, "selected_clusters": 2, "clustered": 119, "in_selected_clusters": 59}


def test_more_neighbours_per_exemplar_keep_more_clusters():
    candidates = blobs(CENTRES, 25)
    between = CENTRES[0] + 0.8 * CENTRES[2]                        # nearest blob 0, then blob 2
    exemplar = (between / np.linalg.norm(between))[None]
    pool = np.ones(100, bool)
    one, _ = exemplar_rule([""] * 100, candidates, exemplar, pool, clusters=4, neighbors=1)
    two, counts = exemplar_rule([""] * 100, candidates, exemplar, pool, clusters=4, neighbors=2)
    blob = np.repeat(np.arange(4), 25)
    assert set(blob[[w == "" for w in one]]) == {0}
    assert set(blob[[w == "" for w in two]]) == {0, 2} and counts["selected_clusters"] == 2


def test_k_defaults_to_one_cluster_per_128_pool_images_and_is_capped_by_the_pool():
    assert [default_clusters(n) for n in (1, 100, 128 * 5, 10**9)] == [1, 1, 5, 100_000]
    candidates = blobs(CENTRES, 3)
    labels, selected, k = exemplar_clusters(candidates, candidates[:1], clusters=50)
    assert k == 12 and labels.shape == (12,) and selected.tolist() == [labels[0]]
    assert exemplar_clusters(candidates, candidates[:1], pool=np.zeros(12, bool))[2] == 0   # nothing to cluster


def test_the_clustering_is_the_same_for_the_same_inputs():
    candidates = blobs(np.eye(16, dtype=np.float32), 20, spread=0.4)
    first = exemplar_clusters(candidates, candidates[:3], clusters=10)
    second = exemplar_clusters(candidates, candidates[:3], clusters=10)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_exemplar_copies_count_hash_matches_per_split_and_say_oracle():
    downstream = {"toy/test": {"aa", "bb"}, "toy/train": {"bb", "cc"}}
    found = exemplar_copies(["bb", "cc", "dd", ""], downstream)
    assert found == {"images": 4, "downstream_copies": 2, "by_split": {"toy/test": 1, "toy/train": 2},
                     "checked_splits": ["toy/test", "toy/train"], "oracle": True}
    assert exemplar_copies(["dd", ""], downstream)["oracle"] is False
    assert exemplar_copies(["", ""], {"toy/test": {""}})["downstream_copies"] == 0   # flat images never match


# ---- the folder, as retrieval reads it -------------------------------------------------------------------------

def test_exemplar_files_are_the_ones_retrieval_reads(tmp_path):
    from pas.sources.retrieve import exemplar_images

    concepts = [{"name": "red fox"}, {"name": "owl"}, {"name": "cat"}]
    for name in ("a.jpg", "b.PNG", "notes.txt", "red fox/1.jpg", "owl/2.webp", "owl/skip.gif", "dog/3.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    per_concept, domain = exemplar_images(tmp_path, concepts)
    assert exemplar_files(tmp_path, concepts) == sorted(domain + [p for ps in per_concept.values() for p in ps])
    assert [p.relative_to(tmp_path).as_posix() for p in exemplar_files(tmp_path, concepts)] == \
        ["a.jpg", "b.PNG", "owl/2.webp", "red fox/1.jpg"]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: (root.mkdir(), (root / "README.md").write_text("put images here")), "holds no exemplar image"),
])
def test_a_missing_or_empty_exemplars_folder_is_one_clear_error(tmp_path, setup, message):
    setup(tmp_path / "exemplars")
    with pytest.raises(DataError, match=message) as err:
        exemplar_files(tmp_path / "exemplars", [{"name": "owl"}])
    text = str(err.value)
    assert str(tmp_path / "exemplars") in text and "filter.exemplars: false" in text and "\n" not in text


def test_the_params_are_checked_by_name():
    assert build(FilterConfig, {"exemplars": True}, "filter").exemplars is True
    with pytest.raises(ConfigError, match="filter.exemplars='on' must be true or false"):
        build(FilterConfig, {"exemplars": "on"}, "filter")
    with pytest.raises(ConfigError, match="filter.exemplar_neighbors=0"):
        build(FilterConfig, {"exemplar_neighbors": 0}, "filter")
    with pytest.raises(ConfigError, match="filter.exemplar_clusters=-1"):
        build(FilterConfig, {"exemplar_clusters": -1}, "filter")


# ---- the stage's work on a small scene: candidates embedded by the tiny CLIP ------------------------------------

def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scene(tmp_path_factory, tiny_models):
    """Candidates (24 images, embed's manifest columns, their tiny-CLIP embeddings), concepts.json, a downstream
    set whose train split holds candidates 0 and 1, and exemplar folders: copies of those two (oracle) or of
    candidates 5 and 6 (not in the downstream set)."""
    root = tmp_path_factory.mktemp("exemplar_scene")
    images = [make_image(300 + i) for i in range(24)]
    encoder = ClipEncoder(tiny_models["clip"], "cpu")
    (root / "candidates").mkdir()
    np.save(root / "candidates" / "embeddings.npy", encoder.encode_images(images).astype(np.float16))
    write_table(pa.table({"key": [f"c{i}" for i in range(24)], "concept": ["owl", "fox"] * 12,
                          "width": [64] * 24, "height": [8] + [64] * 23, "decodable": [True] * 24,
                          "pixel_std": [30.0] * 24}), root / "candidates" / "manifest.parquet")
    (root / "concepts.json").write_text(json.dumps({
        "positive_prompts": ["a photo of an animal"], "negative_prompts": ["a diagram"],
        "concepts": [{"name": "owl", "prompts": ["an owl"]}, {"name": "fox", "prompts": ["a fox"]}]}))
    split = {"label": [0, 1, 0, 1], "label_name": ["a", "b", "a", "b"]}
    write_table(pa.table({"image": [png(images[i]) for i in (0, 1)] + [png(make_image(900 + i)) for i in (0, 1)],
                          **split}), root / "downstream" / "toy" / "train.parquet")
    write_table(pa.table({"image": [png(make_image(950 + i)) for i in range(4)], **split}),
                root / "downstream" / "toy" / "test.parquet")
    for folder, picks in (("oracle", (0, 1)), ("own", (5, 6))):
        (root / folder / "owl").mkdir(parents=True)
        images[picks[0]].save(root / folder / f"{picks[0]}.png")                 # a domain exemplar
        images[picks[1]].save(root / folder / "owl" / f"{picks[1]}.png")         # a concept's exemplar
    return root, tiny_models["clip"]


def run_filter(scene, cfg, exemplars="own"):
    root, clip = scene
    return filter_candidates(root / "candidates", root / "concepts.json", clip, cfg, root / exemplars,
                             root / "downstream")


def test_the_stage_keeps_only_the_exemplars_clusters_and_counts_the_reason(scene):
    cfg = FilterConfig(exemplars=True, exemplar_clusters=23)   # 23 past the quality rules: one cluster each
    rows, metrics = run_filter(scene, cfg)
    kept = [r["key"] for r in rows if r["kept"]]
    assert kept == ["c5", "c6"]                                # each exemplar is a candidate: its own cluster
    assert rows[0]["reason"] == "too_small"                    # the quality rule comes first
    assert metrics["rejected"] == {"too_small": 1, REASON: 21} and metrics["kept"] == 2
    assert sum(r["reason"] == REASON for r in rows) == metrics["rejected"][REASON]
    assert metrics["exemplars"]["clusters"] == 23 and metrics["exemplars"]["clustered"] == 23
    assert metrics["exemplars"]["selected_clusters"] == 2 and metrics["oracle_exemplars"] is False
    assert metrics["exemplars"]["checked_splits"] == ["toy/test", "toy/train"]


def test_exemplars_copied_from_downstream_images_are_flagged_as_an_oracle_setting(scene, caplog):
    with caplog.at_level(logging.WARNING, logger="pas.curation.exemplar_filter"):
        _, metrics = run_filter(scene, FilterConfig(exemplars=True), exemplars="oracle")
    assert metrics["oracle_exemplars"] is True
    assert metrics["exemplars"]["downstream_copies"] == 2 and metrics["exemplars"]["by_split"] == {"toy/train": 2}
    assert "ORACLE EXEMPLARS: 2 of 2 exemplar images are copies of downstream images (toy/train: 2)" in caplog.text


class Run:
    """The stage's MLflow run, recording its tags."""

    def __init__(self):
        self.tags = {}

    def set_tags(self, tags):
        self.tags.update(tags)


def test_the_stage_writes_the_reasons_and_tags_its_run_oracle_from_the_params(scene, tmp_path):
    from argparse import Namespace

    from test_wiring import stage_module

    root, clip = scene
    args = Namespace(candidates=root / "candidates", concepts=root / "concepts.json", clip=clip,
                     exemplars=root / "oracle", downstream=root / "downstream", out=tmp_path / "filtered.parquet")
    run = Run()
    metrics = stage_module("filter").body(args, {"filter": {"exemplars": True, "exemplar_clusters": 4}}, run)
    written = pq.read_table(args.out).to_pylist()
    assert sum(r["reason"] == REASON for r in written) == metrics["rejected"][REASON] > 0
    assert run.tags == {"pas.exemplars": "ORACLE EXEMPLARS: 2 of 2 exemplar images are downstream images "
                                         "(toy/train: 2)"}
    run = Run()
    stage_module("filter").body(args, {"filter": {}}, run)          # the rule off: no tag, no exemplar reason
    assert run.tags == {} and REASON not in {r["reason"] for r in pq.read_table(args.out).to_pylist()}


def test_the_stage_tags_the_mlflow_run_with_what_the_exemplars_are():
    from test_wiring import stage_module

    tags = stage_module("filter").honesty_tags
    found = {"images": 3, "downstream_copies": 2, "by_split": {"toy/train": 2}, "checked_splits": ["toy/train"]}
    assert tags({"exemplars": found, "oracle_exemplars": True}) == {
        "pas.exemplars": "ORACLE EXEMPLARS: 2 of 3 exemplar images are downstream images (toy/train: 2)"}
    clean = {**found, "downstream_copies": 0, "by_split": {}}
    assert tags({"exemplars": clean, "oracle_exemplars": False})["pas.exemplars"] == \
        "3 exemplar images, none a copy of a downstream image"
    assert "not checked" in tags({"exemplars": {**clean, "checked_splits": []}, "oracle_exemplars": False})[
        "pas.exemplars"]
    assert tags({"candidates": 5}) == {}                       # the rule did not run: no tag


def test_a_missing_folder_stops_the_stage_before_any_model_loads(scene, tmp_path):
    root, _ = scene
    with pytest.raises(DataError, match="does not exist"):
        filter_candidates(root / "candidates", root / "concepts.json", tmp_path / "no_clip",
                          FilterConfig(exemplars=True), tmp_path / "no_exemplars", root / "downstream")


def test_with_the_rule_off_nothing_new_is_read_and_the_output_is_unchanged(scene, tmp_path):
    root, clip = scene
    plain_rows, plain = filter_candidates(root / "candidates", root / "concepts.json", clip, FilterConfig())
    rows, metrics = filter_candidates(root / "candidates", root / "concepts.json", clip, FilterConfig(),
                                      tmp_path / "missing", tmp_path / "missing_too")
    assert rows == plain_rows and metrics == plain
    assert set(metrics) == {"candidates", "kept", "rejected", "domain_score_mean"}
    assert all(r["reason"] != REASON for r in rows)
