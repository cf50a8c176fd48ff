"""Parsing LLM answers: lists in every usual shape, prose rejected, yes/no judgements."""
import pytest

from pas.concepts.llm_parse import ParseError, parse_captions, parse_names, parse_yes_no

LISTS = {
    "json array": ('["Pad Thai", "Green curry", "Massaman Curry"]', ["Pad Thai", "Green curry", "Massaman Curry"]),
    "fenced json object": ('```json\n{"concepts": ["pho", {"name": "ramen"}]}\n```', ["pho", "ramen"]),
    "numbered with prose and descriptions": (
        "Sure! Here are some Thai dishes:\n\n1. **Pad Thai** - stir-fried rice noodles\n2) Green curry: coconut "
        "curry\n3. Tom Yum (hot and sour soup)\n\nLet me know if you need more!",
        ["Pad Thai", "Green curry", "Tom Yum"]),
    "bullets and duplicates": ("- fries\n* French Fries\n\u2022 fries\n+ brewer\u2019s blackbird",
                               ["fries", "French Fries", "fries", "brewer's blackbird"]),
    "comma separated after a header": ("Here are the dishes you asked for: pad thai, pho, ramen.",
                                       ["pad thai", "pho", "ramen"]),
    "one comma line": ("pho, ramen", ["pho", "ramen"]),
    "underscored class names": ("Black_footed_Albatross\nLaysan_Albatross", ["Black footed Albatross",
                                                                             "Laysan Albatross"]),
}


@pytest.mark.parametrize("case", sorted(LISTS))
def test_parse_names_reads_every_usual_list_shape(case):
    text, expected = LISTS[case]
    assert parse_names(text) == expected


@pytest.mark.parametrize("text", ["", "   \n", "I'm sorry, but I cannot help with listing things like that today.",
                                  "Here are some dishes:\n\nPlease note that this is not a complete list of food."])
def test_parse_names_rejects_empty_and_prose(text):
    with pytest.raises(ParseError, match=r"^(empty answer|no concept names in \d+ characters of text)$"):
        parse_names(text)


def test_an_empty_json_list_means_nothing_more():
    assert parse_names("```json\n[]\n```") == []
    with pytest.raises(ParseError, match=r"^no concept names in \d+ characters of text$"):
        parse_names('["", "  ", "Here are none!"]')


def test_parse_names_drops_prose_lines_but_keeps_the_list():
    text = "Certainly! These are all popular in Thailand and beyond.\n1. Khao Soi\n2. Larb\nI hope this helps you."
    assert parse_names(text) == ["Khao Soi", "Larb"]


@pytest.mark.parametrize("text, keep, reason", [
    ("Yes", True, ""),
    ("yes - pad thai is a Thai noodle dish.", True, "pad thai is a Thai noodle dish."),
    ("No. A car is not a dish.", False, "A car is not a dish."),
    ("**No**, it is a vehicle.", False, "it is a vehicle."),
    ('{"answer": "no", "reason": "a tool"}', False, "a tool"),
    ('{"relevant": true}', True, ""),
    ("I think the answer is yes, it is eaten widely.", True, "I think the answer is yes, it is eaten widely."),
])
def test_parse_yes_no(text, keep, reason):
    assert parse_yes_no(text) == (keep, reason)


@pytest.mark.parametrize("text", ["", "Maybe, it depends on the region.", "Yes and no."])
def test_parse_yes_no_rejects_unclear_answers(text):
    with pytest.raises(ParseError, match=r"^(empty answer|both yes and no|no clear yes or no)$"):
        parse_yes_no(text)


def test_parse_captions_keeps_sentences_and_drops_headers():
    text = "Here are 3 captions:\n1. A steaming bowl of pho on a wooden table.\n- Pho, shot from above, soft light\nok"
    assert parse_captions(text) == ["A steaming bowl of pho on a wooden table.", "Pho, shot from above, soft light"]
    with pytest.raises(ParseError, match=r"^no captions in 5 characters of text$"):
        parse_captions("Sure!")
