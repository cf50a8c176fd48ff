"""The paper's claim tested honestly: same-architecture gains only, oracle concepts flagged, LLM-only concepts."""
from __future__ import annotations

import numpy as np
import pytest
from test_concepts import FOOD101
from test_llm import LLMServer

from pas.concepts.build import ConceptsConfig, build_concepts
from pas.core.config import ConfigError, build
from pas.evaluate.eval_md import render_eval_md
from pas.evaluate.honesty import check_architectures, concept_overlap, mixed_architectures, normalise_name


def test_gains_across_architectures_are_refused_by_default_and_marked_when_allowed():
    arches = {"pas": "resnet50", "random": "resnet50", "imagenet": "resnet50.a1_in1k", "lite": "tf_efficientnet_lite0"}
    assert mixed_architectures(arches, "pas") == {"lite": {"reference": "resnet50", "baseline": "tf_efficientnet_lite0"}}
    with pytest.raises(ConfigError, match=r"pas is resnet50, lite is tf_efficientnet_lite0.*allow_mixed_arch"):
        check_architectures(arches, "pas", allow_mixed=False)
    assert check_architectures({"pas": "resnet50", "imagenet": "resnet50.tv_in1k"}, "pas", False) == {}
    assert set(check_architectures(arches, "pas", allow_mixed=True)) == {"lite"}


def _metrics_and_index(mixed: dict | None, overlap: dict | None):
    results = {"pas": {"linear": {"top1": 0.5}}, "imagenet": {"linear": {"top1": 0.7}},
               "gain": {"imagenet": {"linear": -0.2}}}
    summary = {"reference": "pas", "datasets": 1, "gain": {"imagenet": {"linear": -0.2}}}
    if mixed:
        summary["mixed_architecture"] = mixed
    if overlap:
        summary["concept_overlap"] = {"shapes": overlap}
    index = {"inits": {"pas": {"arch": "resnet18", "weights": "pretrain"},
                       "imagenet": {"arch": "tf_efficientnet_lite0", "weights": "timm"}},
             "datasets": {"shapes": {"format": "parquet", "num_classes": 2, "train": {"images": 4},
                                     "test": {"images": 2}, "inits": {"pas": {}, "imagenet": {}}}}}
    return {"shapes": results, "summary": summary}, index


def test_eval_md_says_confounded_and_oracle_concepts_in_bold():
    overlap = concept_overlap([{"name": "cat", "source": "shipped"}, {"name": "dog", "source": "generated"}],
                              ["cat", "dog", "cow"])
    metrics, index = _metrics_and_index({"imagenet": {"reference": "resnet18", "baseline": "tf_efficientnet_lite0"}},
                                        overlap)
    text = render_eval_md(metrics, index, "pas")
    assert "**CONFOUNDED: the gain over imagenet compares different architectures (resnet18 vs " \
           "tf_efficientnet_lite0)" in text
    assert "| pas − imagenet **(different architecture)** |" in text
    assert "**ORACLE CONCEPTS: the shipped concept bank names 2 of 3 classes of shapes (by source: 1 generated, " \
           "1 shipped" in text
    clean, index = _metrics_and_index(None, concept_overlap([{"name": "dog", "source": "generated"}], ["cat", "dog"]))
    text = render_eval_md(clean, index, "pas")
    assert "CONFOUNDED" not in text and "ORACLE" not in text and "| pas − imagenet |" in text
    assert "concepts name 1 of 2 classes of shapes (by source: 1 generated); none of those comes from the shipped " \
           "bank" in text
    nothing, index = _metrics_and_index(None, concept_overlap([{"name": "pho", "source": "shipped"}], ["cat", "dog"]))
    text = render_eval_md(nothing, index, "pas")        # a shipped bank that names no class: not oracle, and said so
    assert "Concept overlap: no concept names any of the 2 classes of shapes." in text and "ORACLE" not in text


def test_concept_overlap_matches_names_and_aliases_across_spelling():
    assert normalise_name("  Apple_Pie ") == normalise_name("apple pie") == normalise_name("apple-pie")
    concepts = [{"name": "apple pie", "source": "generated", "aliases": []},
                {"name": "fries", "source": "expanded", "aliases": ["french fries"]},
                {"name": "waffle", "source": "shipped"}]
    overlap = concept_overlap(concepts, ["apple_pie", "french_fries", "waffles", "pho"])
    assert (overlap["named"], overlap["classes"], overlap["share"]) == (2, 4, 0.5)   # 'waffle' is not 'waffles'
    assert overlap["by_source"] == {"generated": 1, "expanded": 1} and overlap["oracle"] is False
    assert overlap["examples"] == ["apple_pie", "french_fries"]


def _chef(prompt: str):
    """A scripted LLM naming dishes (two of them Food-101 classes) and saying yes to each."""
    if prompt.startswith("Domain:"):
        return 200, "Yes.", 0.0
    if "already in the list" in prompt:
        return 200, "[]", 0.0
    return 200, '["apple pie", "bibimbap", "khachapuri", "tteokbokki"]', 0.0


def test_paper_faithful_concepts_come_from_the_llm_alone_and_are_not_oracle(tmp_path):
    """concepts.discover.use_bank: false + an LLM: the paper's autonomous setting on the shipped food domain."""
    server = LLMServer()
    server.reply = _chef
    try:
        def config(use_bank: bool) -> ConceptsConfig:
            return build(ConceptsConfig, {
                "prompts_per_concept": 2,
                "llm": {"backend": "openai", "model": "chef-1", "base_url": server.url, "timeout_s": 5,
                        "retries": 1, "backoff_s": 0.01},
                "discover": {"use_bank": use_bank, "min_growth": 1, "max_rounds": 1},
                "merge": {"embedder": "wordllama", "threshold": 0.9}}, "concepts")

        doc, _ = build_concepts("food", config(False), seed=0, cache_dir=tmp_path / "cache")
        names = [c["name"] for c in doc["concepts"]]
        assert names == ["apple pie", "bibimbap", "khachapuri", "tteokbokki"]
        assert {c["source"] for c in doc["concepts"]} == {"generated"}
        assert all(c["prompt_sources"] == ["templates", "templates"] for c in doc["concepts"])
        overlap = concept_overlap(doc["concepts"], FOOD101)
        assert (overlap["named"], overlap["oracle"], overlap["by_source"]) == (2, False, {"generated": 2})

        banked, _ = build_concepts("food", config(True), seed=0, cache_dir=tmp_path / "cache")
        overlap = concept_overlap(banked["concepts"], FOOD101)
        assert overlap["oracle"] is True and overlap["named"] == 101 and overlap["by_source"]["shipped"] == 101
    finally:
        server.close()


def test_diversity_is_compared_on_equal_samples_in_one_space():
    from pas.curation.diversity import against_references

    eye = np.eye(16)                                   # 16 orthogonal images: as diverse as 16 can be
    same = np.tile(eye[:1], (40, 1))                   # 40 copies of one image
    out = against_references(eye, {"flat/train": same, "wide/train": np.vstack([eye, eye])}, cap=10)
    assert out["flat/train"]["n"] == 10 == out["wide/train"]["n"]            # min(16, 40, cap)
    assert out["flat/train"]["curated_vendi"] == pytest.approx(10.0)         # 10 sampled orthogonal rows
    assert out["flat/train"]["reference_vendi"] == pytest.approx(1.0)
    assert out["flat/train"]["reference_mean_cosine_distance"] == pytest.approx(0.0)
    assert out["flat/train"]["curated_mean_cosine_distance"] == pytest.approx(1.0)
    assert against_references(eye, {"x/train": same}, cap=2000)["x/train"]["n"] == 16


def test_the_concepts_tag_says_what_was_checked_not_more():
    """pas.concepts: oracle, or only that no shipped-bank concept names a class (not 'autonomous': a bank-only run
    whose bank misses the classes was still not an LLM alone), or not checked."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("stage_evaluate", REPO / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    assert stage.honesty_tags({"oracle_concepts": True})["pas.concepts"].startswith("oracle concepts")
    assert stage.honesty_tags({"oracle_concepts": False})["pas.concepts"] == \
        "no downstream class named by the shipped bank"
    assert stage.honesty_tags({})["pas.concepts"] == "not checked"
