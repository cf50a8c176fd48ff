"""Concept banks, specs and prompt diversification with `llm: none` (offline, no model loaded)."""
import argparse
import json

import pytest
import yaml

from conftest import REPO
from pas.concepts.build import ConceptsConfig, build_concepts, shipped_domains
from pas.concepts.diversify import template_prompts, with_article
from pas.concepts.merge import concept_key
from pas.core.config import ConfigError, build

# Food-101 meta/classes.txt (sorted by byte value: cheese_plate before cheesecake).
FOOD101 = """
apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding
breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake
chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder
club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame
eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup
french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich
grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna
lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings
oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib
pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad
shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake sushi tacos
takoyaki tiramisu tuna_tartare waffles
""".split()

# CUB-200-2011 classes.txt, without the numbers.
CUB200 = """
Black_footed_Albatross Laysan_Albatross Sooty_Albatross Groove_billed_Ani Crested_Auklet Least_Auklet
Parakeet_Auklet Rhinoceros_Auklet Brewer_Blackbird Red_winged_Blackbird Rusty_Blackbird Yellow_headed_Blackbird
Bobolink Indigo_Bunting Lazuli_Bunting Painted_Bunting Cardinal Spotted_Catbird Gray_Catbird
Yellow_breasted_Chat Eastern_Towhee Chuck_will_Widow Brandt_Cormorant Red_faced_Cormorant Pelagic_Cormorant
Bronzed_Cowbird Shiny_Cowbird Brown_Creeper American_Crow Fish_Crow Black_billed_Cuckoo Mangrove_Cuckoo
Yellow_billed_Cuckoo Gray_crowned_Rosy_Finch Purple_Finch Northern_Flicker Acadian_Flycatcher
Great_Crested_Flycatcher Least_Flycatcher Olive_sided_Flycatcher Scissor_tailed_Flycatcher Vermilion_Flycatcher
Yellow_bellied_Flycatcher Frigatebird Northern_Fulmar Gadwall American_Goldfinch European_Goldfinch
Boat_tailed_Grackle Eared_Grebe Horned_Grebe Pied_billed_Grebe Western_Grebe Blue_Grosbeak Evening_Grosbeak
Pine_Grosbeak Rose_breasted_Grosbeak Pigeon_Guillemot California_Gull Glaucous_winged_Gull Heermann_Gull
Herring_Gull Ivory_Gull Ring_billed_Gull Slaty_backed_Gull Western_Gull Anna_Hummingbird
Ruby_throated_Hummingbird Rufous_Hummingbird Green_Violetear Long_tailed_Jaeger Pomarine_Jaeger Blue_Jay
Florida_Jay Green_Jay Dark_eyed_Junco Tropical_Kingbird Gray_Kingbird Belted_Kingfisher Green_Kingfisher
Pied_Kingfisher Ringed_Kingfisher White_breasted_Kingfisher Red_legged_Kittiwake Horned_Lark Pacific_Loon
Mallard Western_Meadowlark Hooded_Merganser Red_breasted_Merganser Mockingbird Nighthawk Clark_Nutcracker
White_breasted_Nuthatch Baltimore_Oriole Hooded_Oriole Orchard_Oriole Scott_Oriole Ovenbird Brown_Pelican
White_Pelican Western_Wood_Pewee Sayornis American_Pipit Whip_poor_Will Horned_Puffin Common_Raven
White_necked_Raven American_Redstart Geococcyx Loggerhead_Shrike Great_Grey_Shrike Baird_Sparrow
Black_throated_Sparrow Brewer_Sparrow Chipping_Sparrow Clay_colored_Sparrow House_Sparrow Field_Sparrow
Fox_Sparrow Grasshopper_Sparrow Harris_Sparrow Henslow_Sparrow Le_Conte_Sparrow Lincoln_Sparrow
Nelson_Sharp_tailed_Sparrow Savannah_Sparrow Seaside_Sparrow Song_Sparrow Tree_Sparrow Vesper_Sparrow
White_crowned_Sparrow White_throated_Sparrow Cape_Glossy_Starling Bank_Swallow Barn_Swallow Cliff_Swallow
Tree_Swallow Scarlet_Tanager Summer_Tanager Artic_Tern Black_Tern Caspian_Tern Common_Tern Elegant_Tern
Forsters_Tern Least_Tern Green_tailed_Towhee Brown_Thrasher Sage_Thrasher Black_capped_Vireo Blue_headed_Vireo
Philadelphia_Vireo Red_eyed_Vireo Warbling_Vireo White_eyed_Vireo Yellow_throated_Vireo Bay_breasted_Warbler
Black_and_white_Warbler Black_throated_Blue_Warbler Blue_winged_Warbler Canada_Warbler Cape_May_Warbler
Cerulean_Warbler Chestnut_sided_Warbler Golden_winged_Warbler Hooded_Warbler Kentucky_Warbler Magnolia_Warbler
Mourning_Warbler Myrtle_Warbler Nashville_Warbler Orange_crowned_Warbler Palm_Warbler Pine_Warbler
Prairie_Warbler Prothonotary_Warbler Swainson_Warbler Tennessee_Warbler Wilson_Warbler Worm_eating_Warbler
Yellow_Warbler Northern_Waterthrush Louisiana_Waterthrush Bohemian_Waxwing Cedar_Waxwing
American_Three_toed_Woodpecker Pileated_Woodpecker Red_bellied_Woodpecker Red_cockaded_Woodpecker
Red_headed_Woodpecker Downy_Woodpecker Bewick_Wren Cactus_Wren Carolina_Wren House_Wren Marsh_Wren Rock_Wren
Winter_Wren Common_Yellowthroat
""".split()

# CUB class names whose common name shares no words with the folder name.
CUB_RENAMED = {"Sayornis": "phoebe", "Geococcyx": "greater roadrunner", "Artic_Tern": "arctic tern"}


def test_reference_lists_are_complete():
    """The references are checked against what is known of the published files, not only counted."""
    import re

    assert len(FOOD101) == len(set(FOOD101)) == 101 and FOOD101 == sorted(FOOD101)     # classes.txt is sorted
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in FOOD101)
    assert (FOOD101[0], FOOD101[-1]) == ("apple_pie", "waffles")
    assert len(CUB200) == len(set(CUB200)) == 200                                      # classes 001..200 in order
    assert (CUB200[0], CUB200[16], CUB200[-1]) == ("Black_footed_Albatross", "Cardinal", "Common_Yellowthroat")
    assert all(re.fullmatch(r"[A-Z][A-Za-z]*(_[A-Za-z]+)*", name) for name in CUB200)


def test_shipped_domains_include_default_food_and_birds():
    assert {"animals", "food", "birds"} <= set(shipped_domains())


def test_food_bank_has_300_dishes_and_every_food101_class():
    doc, report = build_concepts("food", ConceptsConfig(prompts_per_concept=2), seed=0)
    names = [c["name"] for c in doc["concepts"]]
    assert len(names) >= 300 and len(set(names)) == len(names)
    assert {n.replace("_", " ") for n in FOOD101} <= set(names)
    assert {c["label"] for c in doc["concepts"] if "label" in c} == set(FOOD101)
    assert all(c["source"] == "shipped" and c["step"] == "bank" for c in doc["concepts"])
    assert report["stop_reason"] == "no llm" and report["llm"]["requests"] == 0


def test_birds_bank_has_200_species_and_every_cub_class():
    doc, _ = build_concepts("birds", ConceptsConfig(prompts_per_concept=2), seed=0)
    assert len(doc["concepts"]) >= 200
    by_label = {c["label"]: c["name"] for c in doc["concepts"] if "label" in c}
    assert set(by_label) == set(CUB200)
    for label, name in by_label.items():
        if label in CUB_RENAMED:
            assert name == CUB_RENAMED[label]
        else:  # the common name holds the folder name's words ("Florida_Jay" -> "florida scrub jay")
            assert set(concept_key(label).split()) <= set(concept_key(name).split()), (label, name)
    assert all(c["prompts"][0] and "  " not in c["prompts"][0] for c in doc["concepts"])


def test_prompts_are_distinct_deterministic_and_mention_the_concept():
    cfg = ConceptsConfig(prompts_per_concept=5)
    a, b = build_concepts("animals", cfg, seed=1)[0], build_concepts("animals", cfg, seed=1)[0]
    assert a == b
    for concept in a["concepts"]:
        assert len(concept["prompts"]) == 5 == len(set(concept["prompts"]))
        assert all(concept["name"] in p for p in concept["prompts"])
        assert concept["negative_prompt"]
    assert build_concepts("animals", cfg, seed=2)[0] != a


def test_templates_expand_over_named_axes_and_skip_missing_fields():
    spec = {"templates": ["a photo of {a_concept}", "{a_concept} {context}, {viewpoint}", "{concept}: {definition}"],
            "contexts": ["in a tree", "in flight"], "viewpoints": ["side view"], "styles": ["unused"]}
    owl = {"name": "owl", "hypernym": "bird"}
    assert template_prompts(owl, spec) == ["a photo of an owl", "an owl in a tree, side view",
                                           "an owl in flight, side view"]
    assert "owl: a night bird" in template_prompts({**owl, "definition": "a night bird"}, spec)
    assert [with_article(w) for w in ("american crow", "european robin", "hour", "bear")] == [
        "an american crow", "a european robin", "an hour", "a bear"]


def test_count_truncates_and_unknown_domain_fails_clearly(tmp_path):
    assert len(build_concepts("animals", ConceptsConfig(count=3), 0)[0]["concepts"]) == 3
    with pytest.raises(ConfigError, match="domain='martians'.*animals"):
        build_concepts("martians", ConceptsConfig(), 0)
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: t\nconcepts: [a, b, A, 'B.']\ntemplates: ['{concept}']\npositive_prompts: [x]\n"
                    "negative_prompts: [y]\n")
    doc, _ = build_concepts("ignored", ConceptsConfig(spec=str(spec)), 0)
    assert [c["name"] for c in doc["concepts"]] == ["a", "b"]
    spec.write_text("name: t\ntemplates: ['{concept}']\npositive_prompts: [x]\nnegative_prompts: [y]\n")
    with pytest.raises(ConfigError, match="no concepts.*concepts.llm.backend"):
        build_concepts("ignored", ConceptsConfig(spec=str(spec)), 0)
    spec.write_text(spec.read_text() + "concepts: [{hypernym: dish}]\n")
    with pytest.raises(ConfigError, match=r"concepts\[0\].*needs a name"):
        build_concepts("ignored", ConceptsConfig(spec=str(spec)), 0)


def test_negative_prompts_join_the_spec_and_the_concept(tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ntemplates: ['{concept}']\npositive_prompts: [x]\nnegative_prompts: [y]\n"
                    "negative_prompt: blurry\nconcepts: [{name: latte, negative: cappuccino}, tea]\n")
    doc, _ = build_concepts("t", ConceptsConfig(spec=str(spec)), 0)
    assert [c["negative_prompt"] for c in doc["concepts"]] == ["blurry, cappuccino", "blurry"]


def test_params_section_builds_and_unknown_keys_are_named():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = build(ConceptsConfig, params["concepts"], "concepts")
    assert cfg.llm.backend == "none"  # the offline default
    with pytest.raises(ConfigError, match="unknown key concepts.llm.api_key"):
        build(ConceptsConfig, {"llm": {"api_key": "x"}}, "concepts")
    with pytest.raises(ConfigError, match="concepts.discover"):
        build(ConceptsConfig, {"discover": "many"}, "concepts")


class RecordingRun:
    """Collects what a stage body hands to MLflow (the MLflow side is tested in test_tracking.py)."""

    def __init__(self):
        self.artifacts = {}

    def log_artifact(self, path):
        self.artifacts[path.name] = json.loads(path.read_text())


def test_stage_body_writes_concepts_and_cache_folder_and_returns_the_report(tmp_path):
    from test_wiring import stage_module

    stage = stage_module("concepts")
    args = argparse.Namespace(out=str(tmp_path / "data/concepts.json"), llm_cache=str(tmp_path / "data/llm_cache"))
    params = {"domain": "birds", "seed": 0, "concepts": {"count": 5, "prompts_per_concept": 2}}
    run = RecordingRun()
    metrics = stage.body(args, params, run)
    doc = json.loads((tmp_path / "data/concepts.json").read_text())
    assert len(doc["concepts"]) == 5 and (tmp_path / "data/llm_cache").is_dir()
    assert metrics["concepts"] == 5 and metrics["prompts"] == 10 and metrics["steps"]["bank"]["kept"] == 301
    assert metrics["stop_reason"] == "no llm" and metrics["merges_count"] == metrics["rejected_count"] == 0
    assert metrics["details"] == {"merges": [], "rejected": [], "unparsed": [], "near_duplicates_kept": []}
    assert run.artifacts["concepts_report.json"]["sources"] == {"total": 5, "shipped": 5, "generated": 0,
                                                                "expanded": 0}
