"""Helpers the tests of workers/schema/ share: converters by type text, and a column mapped both ways."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from workers.clickhouse.schema import (
    ClickHouseType,
    MappingError,
    ServerFeatures,
    TableColumn,
    build_converter,
    compile_mapper,
)
from workers.clickhouse.schema.builder import compile_type

MODERN = ServerFeatures.from_version((23, 8, 1))


OLD = ServerFeatures.from_version((18, 16, 1))


@dataclass(frozen=True)
class Override:  # the duck-typed shape of supervisor.config.ColumnOverride
    column: str
    path: tuple[str, ...] | None = None
    required: bool = False
    has_default: bool = False
    default: Any = None
    epoch_unit: str = "s"
    timezone: str | None = None


def conv(type_text: str, features: ServerFeatures = MODERN, epoch_unit: str = "s", **zones: str | None):
    """The converter of type_text; ``zones``: timezone (the override's) and server_timezone."""
    return build_converter(type_text, features, epoch_unit, **zones)


def rejects(
    type_text: str,
    value: Any,
    reason: str,
    features: ServerFeatures = MODERN,
    epoch_unit: str = "s",
    **zones: str | None,
) -> str:
    with pytest.raises(MappingError) as info:
        conv(type_text, features, epoch_unit, **zones)(value)
    assert info.value.reason == reason, str(info.value)
    return info.value.detail


def T(name: str, *args: Any) -> ClickHouseType:
    return ClickHouseType(name, tuple(args))


# map_rows converts whole columns at once where it can (workers/schema/converter.py, Converter.column).
# Each fast path must insert exactly what the per-value converter makes and refuse exactly what
# it refuses, with the same reason and message: the tests map a column both ways.

def typed(x: Any) -> Any:
    """x with every value's exact type attached, so that 1 == 1.0 == True cannot hide a difference."""
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [typed(e) for e in x])
    if isinstance(x, UUID):
        return ("UUID", type(x) is UUID, x.int, x.is_safe)
    return (type(x).__name__, x)


def per_value(type_text: str, values: list, features: ServerFeatures = MODERN) -> list:
    c = conv(type_text, features)
    out = []
    for v in values:
        try:
            out.append(("ok", typed(c(v))))
        except MappingError as e:
            out.append((e.reason, e.detail.removeprefix("value")))
    return out


def by_map_rows(type_text: str, values: list, features: ServerFeatures = MODERN, normal: Any = None) -> list:
    """Like per_value, through map_rows; `normal` (if any) turns each mapped value back into what the
    per-value converter makes (packed UUIDs into UUIDs)."""
    mapper = compile_mapper("t", [TableColumn("c", type_text)], [], features)
    columns, failures = mapper.map_rows([{"c": v} for v in values])
    errors = dict(failures)
    good = iter(columns[0] if normal is None else list(map(normal, columns[0])))
    return [
        (errors[i].reason, errors[i].detail.removeprefix("column c")) if i in errors else ("ok", typed(next(good)))
        for i in range(len(values))
    ]


def assert_column_as_per_value(
    type_text: str, good: list, bad: list, features: ServerFeatures = MODERN, normal: Any = None,
) -> None:
    """The all-good column, and each bad value alone among good ones, map as value by value."""
    assert by_map_rows(type_text, good, features, normal) == per_value(type_text, good, features)
    for b in bad:
        column = [*good[:2], b, *good[2:]]
        assert by_map_rows(type_text, column, features, normal) == per_value(type_text, column, features), b


def fast_column(type_text: str, values: list, features: ServerFeatures = MODERN) -> list | None:
    return compile_type(type_text, features, "s", where="test").column(values)
