"""Parse LLM answers: concept-name lists, captions and yes/no judgements, tolerant of chatty output."""
from __future__ import annotations

import json
import re
from typing import Any

MAX_NAME_WORDS = 6
MAX_NAME_CHARS = 60
_FENCE = re.compile(r"^```[\w-]*\s*$", re.M)
_BULLET = re.compile(r"^\s*(?:[-*+>\u2022\u00b7\u2013\u2014]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)]|#\d+[.:)]?)\s+")
_MARKUP = re.compile(r"[*`\"\u201c\u201d\[\]]|^'|'$")
_PAREN = re.compile(r"\s*[(\[][^)\]]*[)\]]")
_DESCRIPTION = re.compile(r"\s+[-\u2013\u2014]\s+.*$|:\s+.*$")
_PROSE_START = re.compile(
    r"^(here|sure|certainly|of course|okay|ok|note|please|let me|i |i'|i\u2019|as an|these|this is|the following|"
    r"below|hope|feel free|in summary|sorry)\b", re.I)
_YES = {"yes", "y", "true", "relevant", "correct"}
_NO = {"no", "n", "false", "irrelevant", "incorrect"}


class ParseError(ValueError):
    """An LLM answer held nothing usable; the message says why (the caller keeps the raw text)."""


def _strip_fences(text: str) -> str:
    return _FENCE.sub("", text).strip()


def _json_items(text: str) -> list[Any] | None:
    """The list inside a JSON answer (a bare array or the first list value of an object), if any."""
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = text.find(opener), text.rfind(closer)
        if start < 0 or end <= start:
            continue
        try:
            data = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            continue
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if lists:
                return lists[0]
    return None


def _item_text(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("name") or item.get("concept") or next(iter(item.values()), "")
    return str(item)


def _clean_item(raw: str) -> str:
    text = _BULLET.sub("", raw.strip().replace("\u2019", "'").replace("\u2018", "'").replace("_", " "))
    text = _MARKUP.sub("", text)
    text = _PAREN.sub("", text)
    text = _DESCRIPTION.sub("", text)
    return " ".join(text.split()).strip(" .,;:!")


def is_name(text: str) -> bool:
    """Whether a cleaned item looks like a concept name rather than prose."""
    words = text.split()
    return (
        0 < len(words) <= MAX_NAME_WORDS
        and len(text) <= MAX_NAME_CHARS
        and any(ch.isalpha() for ch in text)
        and not any(ch in text for ch in "?!=<>{}|")
        and not _PROSE_START.match(text)
    )


def _split_lines(text: str) -> list[str]:
    """Lines of a plain-text answer; comma-separated lists are split into their items."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.rstrip().endswith(":")]
    items: list[str] = []
    for line in lines:
        body = _BULLET.sub("", line.strip())
        head, sep, tail = body.partition(": ")
        if sep and "," in tail and len(head.split()) >= 3:
            body = tail  # "Here are some dishes: a, b, c"
        separators = body.count(",") + body.count(";")
        if separators >= 2 or (separators == 1 and len(lines) == 1):
            items.extend(re.split(r"[;,]", body))
        else:
            items.append(line)
    return items


def parse_names(text: str) -> list[str]:
    """Concept names from an answer: a JSON array, a numbered/bulleted list, or comma-separated text.

    Bullets, numbering, markdown, quotes, parentheticals and ' - description' tails are removed;
    prose lines are dropped; order is kept and duplicates are left for the merge step to report.
    An empty JSON list is a valid answer ([]); otherwise ParseError when nothing name-like remains.
    """
    body = _strip_fences(text or "")
    if not body:
        raise ParseError("empty answer")
    found = _json_items(body)
    if found == []:
        return []  # an explicit empty list: the model has nothing (more) to add
    raw_items = [_item_text(i) for i in found] if found is not None else _split_lines(body)
    names = [name for name in (_clean_item(r) for r in raw_items) if is_name(name)]
    if not names:
        raise ParseError(f"no concept names in {len(body)} characters of text")
    return names


def parse_captions(text: str, min_words: int = 3) -> list[str]:
    """One caption per line (bullets, numbering and quotes removed; headers and short lines dropped)."""
    body = _strip_fences(text or "")
    found = _json_items(body) if body.startswith(("[", "{")) else None
    lines = [_item_text(i) for i in found] if found is not None else body.splitlines()
    captions = []
    for line in lines:
        caption = " ".join(_MARKUP.sub("", _BULLET.sub("", line.strip())).split()).strip()
        if caption.endswith(":") or len(caption.split()) < min_words or _PROSE_START.match(caption):
            continue
        captions.append(caption)
    if not captions:
        raise ParseError(f"no captions in {len(body)} characters of text")
    return captions


def parse_yes_no(text: str) -> tuple[bool, str]:
    """A yes/no judgement and its reason ("No. Cars are not food." -> (False, "Cars are not food.")).

    Reads JSON ({"answer": "yes", "reason": ...}), a leading yes/no word, or a lone yes/no word
    anywhere in the text. Raises ParseError when the answer is empty or ambiguous.
    """
    body = _strip_fences(text or "")
    if not body:
        raise ParseError("empty answer")
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            answer = data.get("answer", data.get("relevant", data.get("keep")))
            reason = str(data.get("reason", "")).strip()
            if isinstance(answer, bool):
                return answer, reason
            if str(answer).strip().lower() in _YES | _NO:
                return str(answer).strip().lower() in _YES, reason
    plain = _MARKUP.sub("", body)
    first = re.match(r"^\W*(\w+)\W*(.*)$", plain, re.S)
    first_clause = re.split(r"[.,;:!?\n]", plain.strip(), maxsplit=1)[0]
    clause = {w.lower() for w in re.findall(r"\b(yes|no)\b", first_clause, re.I)}
    if len(clause) > 1:
        raise ParseError("both yes and no")
    if first and first.group(1).lower() in _YES | _NO:
        return first.group(1).lower() in _YES, " ".join(first.group(2).split())[:300]
    words = {w.lower() for w in re.findall(r"\b(yes|no)\b", plain, re.I)}
    if len(words) == 1:
        return words == {"yes"}, " ".join(plain.split())[:300]
    raise ParseError("no clear yes or no")
