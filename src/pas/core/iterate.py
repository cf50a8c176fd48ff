"""Iteration helpers shared by the encoders (itertools.batched arrives only in Python 3.12)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items from a list or a stream; the last one may be shorter."""
    if size < 1:
        raise ValueError(f"batch size {size} must be >= 1")
    stream = iter(items)
    while batch := list(islice(stream, size)):
        yield batch
