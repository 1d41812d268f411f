"""Which route of a routed pipeline (`pipelines[].routes`) each message of a batch takes.

Routes are tried in order and the first whose condition holds wins: `subject` (a subject or
pattern, matched against the subject the producer published to, i.e. the stored subject
without the partition token) and/or `field` (a dotted path into the document, with
`equals`, `in` or `exists`). What needs no document is decided first (`by_subject`), so a
message a subject-only route skips is never parsed: a stream may carry payloads that are
no JSON on subjects the pipeline skips. The rest is decided with its document (`by_doc`);
a message that is no JSON meets no field condition, so a later route may still skip it
(else it is dead-lettered as invalid JSON).

Values compare as JSON values: `true` is not `1`, `"1"` is not `1`, `1` is `1.0`.
Pure functions of the config and the messages, run in the insert thread.
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from workers import message
from workers.topology import partition_token_index

UNROUTED = -1
UNDECIDED = -2  # needs the document
NO_DOCUMENT = object()  # a message that is no JSON: no field condition holds for it
_MISSING = object()
_CACHE_LIMIT = 65_536  # distinct subjects remembered between batches


def _json_key(v: Any) -> Any:
    """A hashable key under which equal JSON values (and only those) meet."""
    if v is None:
        return ("null",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, float)):
        return ("num", v)  # 1 == 1.0 and hash alike
    if isinstance(v, str):
        return ("str", v)
    return ("json", orjson.dumps(v, option=orjson.OPT_SORT_KEYS))


class _Route:
    __slots__ = ("label", "skip", "subject", "path", "test", "values", "table_index")

    def __init__(self, route: Any, table_index: int | None) -> None:
        self.label = route.name
        self.skip = bool(route.skip)
        self.subject = None if route.subject is None else route.subject.encode().split(b".")
        self.path = route.field
        self.table_index = table_index
        self.test = None if route.field is None else ("exists" if route.exists is not None else "in")
        if route.exists is not None:
            self.values = route.exists
        elif route.in_values is not None:
            self.values = frozenset(map(_json_key, route.in_values))
        else:
            self.values = frozenset((_json_key(route.equals),))

    def subject_matches(self, tokens: list[bytes]) -> bool:
        pattern = self.subject
        return len(pattern) == len(tokens) and all(p == b"*" or p == t for p, t in zip(pattern, tokens, strict=True))

    def doc_matches(self, doc: Any) -> bool:
        if doc is NO_DOCUMENT:
            return False
        value = doc
        for k in self.path:
            if type(value) is not dict:
                value = _MISSING
                break
            value = value.get(k, _MISSING)
            if value is _MISSING:
                break
        if self.test == "exists":
            return (value is not _MISSING) == self.values
        return value is not _MISSING and _json_key(value) in self.values


class Router:
    """A routed pipeline's routes, compiled once; `table_labels` are the routes that insert, in order."""

    def __init__(self, pipeline: Any) -> None:
        tables = [r.name for r in pipeline.routes if not r.skip]
        self.routes = [_Route(r, None if r.skip else tables.index(r.name)) for r in pipeline.routes]
        self.table_labels = tables
        self.unrouted_skip = pipeline.unrouted == "skip"
        self._cut = partition_token_index(pipeline.subject)
        self._by_subject: dict[bytes, tuple[int, int]] = {}  # stored subject -> (decision, first route to try)

    def by_subject(self, msgs: Sequence[tuple]) -> list[int]:
        """Per message: its route's index, UNROUTED, or UNDECIDED (a route with a field may match)."""
        cache = self._by_subject
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        out = []
        for m in msgs:
            subject = m[message.SUBJECT]
            hit = cache.get(subject)
            if hit is None:
                hit = cache[subject] = self._decide_subject(subject)
            out.append(hit[0])
        return out

    def by_doc(self, subject: bytes, doc: Any) -> int:
        """The route of a message by_subject left UNDECIDED, given its document."""
        start = self._by_subject[subject][1] if subject in self._by_subject else 0
        tokens = None
        for i in range(start, len(self.routes)):
            route = self.routes[i]
            if route.subject is not None:
                if tokens is None:
                    tokens = self._tokens(subject)
                if not route.subject_matches(tokens):
                    continue
            if route.path is None or route.doc_matches(doc):
                return i
        return UNROUTED

    def _tokens(self, subject: bytes) -> list[bytes]:
        tokens = subject.split(b".")
        del tokens[self._cut]
        return tokens

    def _decide_subject(self, subject: bytes) -> tuple[int, int]:
        tokens = self._tokens(subject)
        for i, route in enumerate(self.routes):
            if route.subject is not None and not route.subject_matches(tokens):
                continue
            if route.path is not None:
                return (UNDECIDED, i)
            return (i, i)
        return (UNROUTED, len(self.routes))
