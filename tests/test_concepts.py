import pytest

from pas.concepts import ConceptsConfig, build_concepts, shipped_domains
from pas.config import ConfigError

FOOD101_SAMPLE = ["apple pie", "baby back ribs", "takoyaki", "waffles", "french fries", "pho"]


def test_shipped_domains_include_default_and_food():
    assert {"animals", "food"} <= set(shipped_domains())


def test_food_bank_has_every_food101_class():
    doc = build_concepts("food", ConceptsConfig(prompts_per_concept=2), seed=0)
    names = {c["name"] for c in doc["concepts"]}
    assert len(names) == 101 and set(FOOD101_SAMPLE) <= names


def test_prompts_are_distinct_deterministic_and_mention_the_concept():
    cfg = ConceptsConfig(prompts_per_concept=5)
    a, b = build_concepts("animals", cfg, seed=1), build_concepts("animals", cfg, seed=1)
    assert a == b
    for concept in a["concepts"]:
        assert len(concept["prompts"]) == 5 == len(set(concept["prompts"]))
        assert all(concept["name"] in p for p in concept["prompts"])
    assert build_concepts("animals", cfg, seed=2) != a


def test_count_truncates_and_unknown_domain_fails_clearly(tmp_path):
    assert len(build_concepts("animals", ConceptsConfig(count=3), 0)["concepts"]) == 3
    with pytest.raises(ConfigError, match="domain='martians'.*animals"):
        build_concepts("martians", ConceptsConfig(), 0)
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: t\nconcepts: [a, b, A]\ntemplates: ['{concept}']\npositive_prompts: [x]\nnegative_prompts: [y]\n")
    doc = build_concepts("ignored", ConceptsConfig(spec=str(spec)), 0)
    assert [c["name"] for c in doc["concepts"]] == ["a", "b"]
