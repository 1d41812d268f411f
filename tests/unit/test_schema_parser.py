"""workers/schema/parser.py: ClickHouse type strings."""

from __future__ import annotations

import pytest
from schema_cases import (
    T,
)

from workers.clickhouse.schema import (
    parse_type,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("UInt64", T("UInt64")),
        (
            "Nullable(Array(LowCardinality(String)))",
            T("Nullable", T("Array", T("LowCardinality", T("String")))),
        ),
        ("Enum8('a\\'b' = 1, 'c''d' = -2, 'e,f' = 3)", T("Enum8", ("a'b", 1), ("c'd", -2), ("e,f", 3))),
        ("DateTime('Europe/Berlin')", T("DateTime", "Europe/Berlin")),
        ("DateTime64(3, 'UTC')", T("DateTime64", 3, "UTC")),
        ("DateTime64(6)", T("DateTime64", 6)),
        ("Decimal(18, 4)", T("Decimal", 18, 4)),
        ("Decimal64(4)", T("Decimal64", 4)),
        ("FixedString(16)", T("FixedString", 16)),
        ("Map(String, Array(Nullable(UInt8)))", T("Map", T("String"), T("Array", T("Nullable", T("UInt8"))))),
        ("Tuple(a String, b Nullable(Int8))", T("Tuple", ("a", T("String")), ("b", T("Nullable", T("Int8"))))),
        ("  Array( Array(Int32) )  ", T("Array", T("Array", T("Int32")))),
    ],
)
def test_parse_type(text, expected):
    assert parse_type(text) == expected


@pytest.mark.parametrize(
    "text", ["", "Array(", "Array(String", "Enum8('a = 1)", "UInt8)", "Map(String,)", "Array(String) x", "Int$"]
)
def test_parse_type_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_type(text)
