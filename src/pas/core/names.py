"""One sanitiser for names that come from users, domain specs, LLMs or label columns and end up as MLflow keys
or file names: stable, collision-free, length-capped. The original name stays in the JSON metrics and reports."""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_NAME = 64  # characters of a sanitised name, hash suffix included (MLflow keys allow 250 in all)
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.-]+|\.{2,}")  # anything else, and runs of dots (no `..` in a path)


def safe_name(text: str, max_len: int = MAX_NAME) -> str:
    """`text` as [A-Za-z0-9 _.-] (no leading dot or space, no `..`); a changed name gets `-<8 hex of sha1(text)>`,
    so two different names never map to one (MLflow keys and folder names both allow these characters).

    safe_name("snow leopard") == "snow leopard"; safe_name("brewer's blackbird") == "brewer_s blackbird-<hash>".
    """
    text = str(text)
    plain = _UNSAFE.sub("_", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()).strip("_. ")
    if plain == text and 0 < len(text) <= max_len:
        return text
    suffix = "-" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return (plain[: max_len - len(suffix)] or "x") + suffix
