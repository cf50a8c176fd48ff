"""Concept normalisation and embedding-based merging, with the real offline text embedders."""
import numpy as np
import pytest

from pas.concepts.merge import ConceptIndex, MergeConfig, clean_name, concept_key, siblings
from pas.core.config import ConfigError, build
from pas.models.text_embed import EMBEDDERS, load_embedder

# The threshold each registered embedder is used with (its cosine scale differs).
THRESHOLDS = {"minilm": 0.85, "wordllama": 0.74}


@pytest.fixture(scope="module", params=sorted(EMBEDDERS))
def embedder(request):
    return request.param, load_embedder(request.param)


def test_every_registered_embedder_has_a_tested_threshold():
    assert set(THRESHOLDS) == set(EMBEDDERS)


@pytest.mark.parametrize("a, b", [("French Fries", "french-fries"), ("french fries", "French fry"),
                                  ("Brewer's Blackbird", "Brewer_Blackbird"), ("Crème Brûlée", "creme brulee"),
                                  ("  Pad   Thai. ", "pad thai"), ("berries", "berry"), ("tomatoes", "tomato"),
                                  ("Chocolate-chip cookies", "chocolate chip cookie"), ("apple pies", "apple pie")])
def test_keys_ignore_case_punctuation_accents_possessives_and_plurals(a, b):
    assert concept_key(a) == concept_key(b)


@pytest.mark.parametrize("a, b", [("hummus", "hummu"), ("pad thai", "pho"), ("brewer blackbird", "rusty blackbird")])
def test_distinct_names_keep_distinct_keys(a, b):
    assert concept_key(a) != concept_key(b)


def test_clean_name_keeps_inner_punctuation():
    assert clean_name(" **Chuck-will\u2019s-widow.** ".strip("*")) == "chuck-will's-widow"


@pytest.mark.parametrize("a, b, expected", [
    ("eastern meadowlark", "western meadowlark", True), ("croque madame", "croque monsieur", True),
    ("red-bellied woodpecker", "red-headed woodpecker", True), ("fries", "french fries", False),
    ("hamburger", "burger", False), ("pad thai", "phad thai", False), ("great grey shrike", "great gray shrike", False),
    ("mac and cheese", "macaroni and cheese", False)])
def test_siblings_are_family_members_not_variants(a, b, expected):
    assert siblings(a, b) is expected


def test_embedders_return_unit_rows(embedder):
    _, encode = embedder
    vectors = encode(["french fries", "pad thai"])
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_near_duplicates_merge_and_siblings_survive(embedder):
    name, encode = embedder
    index = ConceptIndex(encode, THRESHOLDS[name])
    kept, merges = index.add(["French Fries", "fries", "french fries", "eastern meadowlark", "western meadowlark",
                              "pad thai", "green curry", "massaman curry"])
    assert kept == ["french fries", "eastern meadowlark", "western meadowlark", "pad thai", "green curry",
                    "massaman curry"]
    found = {(m.merged, m.kept, m.reason) for m in merges}
    assert found == {("fries", "french fries", "embedding"), ("french fries", "french fries", "normalised")}
    assert index.aliases["french fries"] == ["fries"]
    assert all(m.similarity >= THRESHOLDS[name] for m in merges if m.reason == "embedding")


def test_bank_names_are_protected_but_later_names_meet_them(embedder):
    name, encode = embedder
    index = ConceptIndex(encode, THRESHOLDS[name])
    assert index.add(["fries", "french fries", "burrito"], protected=True)[0] == ["fries", "french fries", "burrito"]
    assert not index.embedded  # nothing compared yet: no embedding computed
    kept, merges = index.add(["Burritos", "French-Fries", "ramen"])
    assert kept == ["ramen"] and {m.kept for m in merges} == {"burrito", "french fries"}
    pairs = index.near_duplicates()
    assert {(p["a"], p["b"], p["kept_because"]) for p in pairs} == {("fries", "french fries", "bank")}


def test_within_bank_merges_the_bank_too(embedder):
    name, encode = embedder
    index = ConceptIndex(encode, THRESHOLDS[name], within_bank=True)
    kept, merges = index.add(["french fries", "fries"], protected=True)
    assert kept == ["french fries"] and merges[0].reason == "embedding"


def test_merge_config_names_bad_keys():
    with pytest.raises(ConfigError, match="concepts.merge.embedder='glove'.*minilm"):
        build(MergeConfig, {"embedder": "glove"}, "concepts.merge")
    with pytest.raises(ConfigError, match="concepts.merge.threshold"):
        build(MergeConfig, {"threshold": 1.5}, "concepts.merge")
