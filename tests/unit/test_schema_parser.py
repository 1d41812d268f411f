"""workers/schema/parser.py: ClickHouse type strings."""

from __future__ import annotations

import pytest
from schema_cases import (
    T,
)

from workers.clickhouse.schema import (
    parse_type,
)
from workers.clickhouse.schema.parser import Setting, Skip, type_text


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
        # What 26.x's system.columns prints: backquoted names, settings, dotted paths, SKIP.
        ("Tuple(`a b` Int32, `c.d` String)", T("Tuple", ("a b", T("Int32")), ("c.d", T("String")))),
        ("Tuple(`a\\`b` Int8, `x``y` Int8)", T("Tuple", ("a`b", T("Int8")), ("x`y", T("Int8")))),
        (
            "JSON(max_dynamic_paths=16, `a.b` UInt32, SKIP x, SKIP `p.q`, SKIP REGEXP 'r.*')",
            T("JSON", Setting("max_dynamic_paths", 16), ("a.b", T("UInt32")), Skip("x"), Skip("p.q"),
              Skip("r.*", regexp=True)),
        ),
        ("JSON(a.b UInt32, max_dynamic_types=2)", T("JSON", ("a.b", T("UInt32")), Setting("max_dynamic_types", 2))),
        ("JSON", T("JSON")),
        ("Dynamic(max_types=10)", T("Dynamic", Setting("max_types", 10))),
        ("Variant(String, UInt64)", T("Variant", T("String"), T("UInt64"))),
        ("SimpleAggregateFunction(sum, UInt64)", T("SimpleAggregateFunction", T("sum"), T("UInt64"))),
        (
            "AggregateFunction(quantiles(0.5, 0.9), UInt64)",
            T("AggregateFunction", T("quantiles", 0.5, 0.9), T("UInt64")),
        ),
        ("Nested(x UInt8, y String)", T("Nested", ("x", T("UInt8")), ("y", T("String")))),
        ("Time64(3)", T("Time64", 3)),
        ("Object('json')", T("Object", "json")),
        ("Tuple(SKIP String)", T("Tuple", ("SKIP", T("String")))),  # SKIP is JSON's only
    ],
)
def test_parse_type(text, expected):
    assert parse_type(text) == expected
    assert parse_type(type_text(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "Array(", "Array(String", "Enum8('a = 1)", "UInt8)", "Map(String,)", "Array(String) x", "Int$",
             "Tuple(`a Int8)", "JSON(max_dynamic_paths=)", "Tuple(a.)"]
)
def test_parse_type_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_type(text)
