"""Column values that come from the message rather than its JSON document (`columns.<name>.source`).

A source is compiled once per column, with the table's schema, into a function from the
batch's messages (the (subject, reply, data, headers) tuples of workers/message.py) to one
value per message.  What the function returns is either input for the column's converter
(a subject's text, a header's text, a delivery count: converted and range-checked like a
JSON value, so a header that is no valid UUID is refused the same way; a `Refused` in place
of a value dead-letters that message only) or, for the
timestamp and sequence sources, the value the driver writes (``emitted``).  `_MISSING`
marks an absent value (no such header, no such subject token): the column's missing rule
decides (its default, or `missing_required` when the override is `required`).

The type checks run at compile time, so a source that cannot fill its column is a
SchemaError at start-up naming the column, never a surprise at the first row.  Nothing is
computed for a table without metadata columns: the mapper only calls these functions for
the columns that have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from workers import message
from workers.clickhouse.schema.converter import CANONICAL_INT
from workers.clickhouse.schema.errors import Rejected, SchemaError
from workers.clickhouse.schema.parser import ClickHouseType, parse_type
from workers.topology import original_subject_of, partition_token_index

SUBJECT, REPLY, DATA, HEADERS = message.SUBJECT, message.REPLY, message.DATA, message.HEADERS

_INTEGERS = frozenset(f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64, 128, 256))
# Column types whose converter reads a JSON string (text sources: subject, a token, a header).
_TEXT = frozenset({
    "String", "FixedString", "Enum8", "Enum16", "UUID", "Date", "Date32", "DateTime", "DateTime64",
    "IPv4", "IPv6", "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256", "Bool",
})


@dataclass(frozen=True, slots=True)
class Refused:
    """In place of a value one message cannot give (a header sent twice, a token that is no integer):
    the column's converter raises it, so only that message is dead-lettered."""

    rejected: Rejected


def refusing(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The column's converter, raising what a source refused in place of a value."""
    def convert_or_refuse(v: Any) -> Any:
        if type(v) is Refused:
            raise v.rejected
        return convert(v)
    return convert_or_refuse


@dataclass(frozen=True)
class Source:
    """A column's compiled source: values(msgs) -> one value per message."""

    kind: str
    values: Callable[[Sequence[tuple]], list]
    emitted: bool  # the values are what the driver writes (no converter), e.g. DateTime64 ticks


def _base(t: ClickHouseType) -> ClickHouseType:
    """The type under Nullable / LowCardinality wrappers."""
    while t.name in ("Nullable", "LowCardinality") and len(t.args) == 1 and isinstance(t.args[0], ClickHouseType):
        t = t.args[0]
    return t


def compile_source(
    override: Any, type_text: str, where: str, subject: str, partitions: int, missing: Any,
) -> Source:
    """The Source of a column whose override has a `source` other than json (raises SchemaError).

    `subject` is the pipeline's subject pattern (`events.*`): the partition token sits before
    its first `*` in every stored subject.  `missing` is the mapper's marker for an absent value.
    """
    kind = override.source
    base = _base(parse_type(type_text))
    name = base.name

    def refuse(accepts: str) -> SchemaError:
        return SchemaError(f"{where}: source {kind} cannot fill {type_text}; it fills {accepts}")

    cut = partition_token_index(subject)
    if kind in ("subject", "subject_token", "header"):
        if name not in _TEXT and name not in _INTEGERS:
            raise refuse("String, FixedString, LowCardinality(String), Enum, UUID, Date/DateTime, IP, Decimal, "
                         "Bool or integer columns (Nullable too)")
        as_int = name in _INTEGERS
        if kind == "subject":
            def text_values(msgs: Sequence[tuple]) -> list:
                return _per_subject(msgs, lambda s: original_subject_of(s, cut))
        elif kind == "subject_token":
            n = override.subject_token
            index = n - 1 if n > 0 else n

            def token(stored: bytes) -> Any:
                tokens = original_subject_of(stored, cut).split(".")
                return tokens[index] if -len(tokens) <= index < len(tokens) else missing

            def text_values(msgs: Sequence[tuple]) -> list:
                return _per_subject(msgs, token)
        else:
            header = override.header.encode()

            def text_values(msgs: Sequence[tuple]) -> list:
                return [_one_header(m[HEADERS], header, missing) for m in msgs]

        if not as_int:
            return Source(kind, text_values, emitted=False)

        def int_values(msgs: Sequence[tuple]) -> list:
            return [_as_int(v, kind) if v is not missing else v for v in text_values(msgs)]
        return Source(kind, int_values, emitted=False)

    if kind == "stream_sequence":
        if name not in ("UInt64", "Int64"):
            raise refuse("UInt64 or Int64 (Nullable too)")
        return Source(kind, lambda msgs: message.ack_field(msgs, message.STREAM_SEQ), True)

    if kind == "timestamp":
        if name == "DateTime64":
            div = 10 ** (9 - int(base.args[0] if base.args else 3))
        elif name == "DateTime":
            div = 10**9
        elif name in ("UInt64", "Int64"):
            div = 1
        else:
            raise refuse("DateTime64(P[, tz]) (truncated to P digits), DateTime (whole seconds), or UInt64/Int64 "
                         "(nanoseconds since the epoch)")
        if div == 1:
            return Source(kind, lambda msgs: message.ack_field(msgs, message.TIMESTAMP), True)
        return Source(kind, lambda msgs: [ns // div for ns in message.ack_field(msgs, message.TIMESTAMP)], True)

    if kind in ("delivered", "partition"):
        if name not in _INTEGERS:
            raise refuse("integer columns (Nullable too)")
        if kind == "delivered":
            return Source(kind, lambda msgs: message.ack_field(msgs, message.DELIVERED), False)
        return Source(kind, lambda msgs: _per_subject(msgs, lambda s: int(s.split(b".")[cut])), False)

    if kind == "headers":
        if name != "Map" or len(base.args) != 2:
            raise refuse("Map(String, String) or Map(String, Array(String))")
        key, value = (_base(a) for a in base.args)
        if key.name != "String":
            raise refuse("Map(String, String) or Map(String, Array(String))")
        if value.name == "String":
            return Source(kind, lambda msgs: [_single_headers(m[HEADERS]) for m in msgs], False)
        if value.name == "Array" and _base(value.args[0]).name == "String":
            return Source(kind, lambda msgs: [message.header_lists(m[HEADERS]) for m in msgs], False)
        raise refuse("Map(String, String) or Map(String, Array(String))")

    if kind == "message":
        if name != "String":
            raise refuse("String (Nullable too): the message's bytes as they were published")
        return Source(kind, lambda msgs: [m[DATA] for m in msgs], True)

    raise SchemaError(f"{where}: unknown source {kind!r}")


def _as_int(text: str, kind: str) -> Any:
    if not CANONICAL_INT.match(text):
        return Refused(Rejected("wrong_type", f"{kind} {text!r} is not an integer"))
    return int(text)


def _per_subject(msgs: Sequence[tuple], value: Callable[[bytes], Any]) -> list:
    """value(stored subject) of every message, computed once per distinct subject of the batch."""
    subjects = [m[SUBJECT] for m in msgs]
    known = {s: value(s) for s in set(subjects)}
    return list(map(known.__getitem__, subjects))


def _one_header(raw: bytes | None, name: bytes, missing: Any) -> Any:
    values = message.header_values(raw, name)
    if not values:
        return missing
    if len(values) > 1:
        return Refused(Rejected(
            "invalid_value", f"header {name.decode()!r} is sent {len(values)} times; a column holds one value"))
    return values[0]


def _single_headers(raw: bytes | None) -> Any:
    out = {}
    for k, values in message.header_lists(raw).items():
        if len(values) > 1:
            return Refused(Rejected(
                "invalid_value", f"header {k!r} is sent {len(values)} times; Map(String, String) holds one value "
                "per name (use Map(String, Array(String)) to keep them all)"))
        out[k] = values[0]
    return out
