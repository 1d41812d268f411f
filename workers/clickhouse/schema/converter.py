"""The record every type family builds: how one ClickHouse type turns JSON values into driver values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Converter:
    convert: Callable[[Any], Any]  # JSON value -> driver value; raises Rejected
    zero: Any  # what ClickHouse stores for an omitted column, in emitted form
    nullable: bool = False
    # (allowed exact python types, lo, hi) when a whole column can be validated with
    # C-level set(map(type, ...)) / min / max and emitted unchanged; lo/hi are None
    # when the type needs no range check.
    fast: tuple | None = None
    accepts_str_keys: bool = True  # usable as a Map key converter given the JSON key text
    # Parsing a string is costly and values repeat within a batch (timestamps of one
    # second, a handful of IPs): convert each distinct string once per batch.
    dedupe_strings: bool = False
    # A whole-column fast path for the common, valid case: list of JSON values -> the
    # list convert() would make of them, or None when any value is not of the type and
    # shape it handles (null and the mapper's missing marker included; the per-value
    # converter then decides and names the error).  It must accept only what convert()
    # accepts, and emit exactly what convert() emits.
    column: Callable[[list], list | None] | None = None


ONLY_STR = frozenset({str})
MAX_EXACT_FLOAT_INT = 2**53
CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z", re.ASCII)
