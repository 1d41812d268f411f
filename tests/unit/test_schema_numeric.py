"""workers/schema/numeric.py: integers, floats, decimals, Bool."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from schema_cases import (
    MODERN,
    conv,
    rejects,
)

from workers.clickhouse.schema import (
    MappingError,
)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_uint8_accepts_exactly_its_range(v):
    c = conv("UInt8")
    if 0 <= v <= 255:
        assert c(v) == v
    else:
        with pytest.raises(MappingError) as info:
            c(v)
        assert info.value.reason == "out_of_range"


@pytest.mark.parametrize(
    "type_text, lo, hi",
    [
        ("Int8", -128, 127), ("Int16", -(2**15), 2**15 - 1), ("Int32", -(2**31), 2**31 - 1),
        ("Int64", -(2**63), 2**63 - 1), ("UInt16", 0, 2**16 - 1), ("UInt32", 0, 2**32 - 1),
        ("UInt64", 0, 2**64 - 1), ("Int128", -(2**127), 2**127 - 1), ("UInt256", 0, 2**256 - 1),
    ],
)
def test_int_boundaries(type_text, lo, hi):
    c = conv(type_text)
    assert c(lo) == lo
    assert c(hi) == hi
    rejects(type_text, lo - 1, "out_of_range")
    rejects(type_text, hi + 1, "out_of_range")


def test_int_type_strictness():
    assert conv("Int32")(3.0) == 3
    assert type(conv("Int32")(3.0)) is int
    rejects("Int32", 3.5, "wrong_type")
    rejects("Int64", float(2**53), "wrong_type")  # cannot prove the sender meant exactly this integer
    rejects("UInt8", -1.0, "out_of_range")
    rejects("Int32", True, "wrong_type")  # a JSON boolean is not a number
    assert conv("Int32")("12") == 12  # a canonical decimal string (issue 13)
    detail = rejects("Int32", None, "wrong_type")
    assert "null" in detail


def test_big_ints_accept_canonical_decimal_strings():
    assert conv("Int128")("-170141183460469231731687303715884105728") == -(2**127)
    assert conv("UInt256")(str(2**256 - 1)) == 2**256 - 1
    for bad in ["+5", "05", " 5", "5.0", "1e3", "0x10"]:
        rejects("Int128", bad, "invalid_value")
    rejects("UInt128", "-1", "out_of_range")


def test_floats():
    assert conv("Float64")(1.5) == 1.5
    assert conv("Float64")(2**53) == float(2**53)
    rejects("Float64", 2**53 + 1, "lost_precision")  # would be stored as 2**53
    rejects("Float64", 10**400, "out_of_range")
    assert conv("Float32")(16777216) == 16777216.0
    rejects("Float32", 16777217, "lost_precision")
    rejects("Float32", 3.5e38, "out_of_range")
    rejects("Float32", 1e-50, "out_of_range")  # would silently become 0
    assert conv("Float32")(-3.4e38) == -3.4e38
    assert conv("Float64")("1.5") == 1.5  # numeric strings (issue 13)
    rejects("Float64", False, "wrong_type")


def test_bool():
    assert conv("Bool")(True) is True
    assert conv("Bool")(False) is False
    rejects("Bool", 1, "wrong_type")
    rejects("Bool", "true", "wrong_type")


def test_decimals():
    c = conv("Decimal(18, 4)")
    assert c("123.45") == Decimal("123.45")
    assert c("-0.0001") == Decimal("-0.0001")
    assert c("1.230000") == Decimal("1.23")
    assert c("00012") == Decimal(12)
    assert c(42) == 42
    assert c("99999999999999.9999") == Decimal("99999999999999.9999")
    rejects("Decimal(18, 4)", "100000000000000", "out_of_range")
    rejects("Decimal(18, 4)", 10**14, "out_of_range")
    rejects("Decimal(18, 4)", "1.00001", "lost_precision")  # no rounding
    assert c(1.5) == Decimal("1.5")  # a JSON number of at most 15 significant digits is exact
    for bad in ["1e3", ".5", "5.", "+1", "1,5", "NaN", "Infinity", " 1", ""]:
        rejects("Decimal(18, 4)", bad, "invalid_value")
    assert conv("Decimal32(2)")("9999999.99") == Decimal("9999999.99")
    rejects("Decimal32(2)", "10000000", "out_of_range")
    assert conv("Decimal(76, 10)", MODERN)("1." + "0" * 9 + "1") == Decimal("1.0000000001")


@settings(max_examples=200)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=Decimal("-99999999999999.9999"),
                   max_value=Decimal("99999999999999.9999")))
def test_decimal_roundtrip(d):
    assert conv("Decimal(18, 4)")(format(d, "f")) == d


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=5, max_value=12))
def test_decimal_more_fraction_digits_rejected(n, places):
    text = f"{n // 10**places}.{n % 10**places:0{places}d}"
    value = Decimal(text)
    c = conv("Decimal(18, 4)")
    if value == value.quantize(Decimal("0.0001")):
        assert c(text) == value
    else:
        with pytest.raises(MappingError) as info:
            c(text)
        assert info.value.reason == "lost_precision"


# --------------------------------------------------------------------------- issue 13: exact values producers send

@pytest.mark.parametrize(
    "type_text, sent, stored",
    [
        ("Decimal(9, 2)", 1.5, "1.5"), ("Decimal(9, 2)", 1.23, "1.23"), ("Decimal(9, 2)", 1.230, "1.23"),
        ("Decimal(9, 2)", 9999999.99, "9999999.99"), ("Decimal(9, 2)", -9999999.99, "-9999999.99"),
        ("Decimal(9, 2)", 1e2, "100"), ("Decimal(9, 2)", 1.5e1, "15"), ("Decimal(18, 4)", 1.2345, "1.2345"),
        ("Decimal(18, 0)", 123456789012345.0, "123456789012345"), ("Decimal(9, 2)", -0.0, "0"),
        ("Decimal(38, 20)", 1e-20, "1e-20"),
    ],
)
def test_decimal_accepts_json_numbers_it_can_hold_exactly(type_text, sent, stored):
    assert conv(type_text)(sent) == Decimal(stored)


def test_decimal_json_number_rejections_name_the_rule():
    assert "send" in rejects("Decimal(18, 4)", 0.1 + 0.2, "lost_precision")  # 0.30000000000000004: 17 digits
    assert "string" in rejects("Decimal(18, 4)", 1234567890.123456, "lost_precision")  # 16 digits
    assert "fraction digits" in rejects("Decimal(9, 2)", 1.234, "lost_precision")
    assert "integer digits" in rejects("Decimal(9, 2)", 1e7, "out_of_range")
    assert "integer digits" in rejects("Decimal(9, 2)", 10000000.5, "out_of_range")


@settings(max_examples=500)
@given(
    st.integers(min_value=1, max_value=15).flatmap(
        lambda digits: st.tuples(st.integers(-(10**digits) + 1, 10**digits - 1), st.integers(-20, 20))
    ),
    st.integers(min_value=1, max_value=38).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, p))),
)
def test_decimal_json_numbers_of_at_most_15_digits_are_stored_exactly_or_dead_lettered(number, column):
    """Any decimal of <= 15 significant digits, sent as a JSON number, is stored exactly or refused with a reason."""
    unscaled, exponent = number
    precision, scale = column
    sent = Decimal(unscaled).scaleb(exponent)
    parsed = orjson.loads(f"{sent:e}".encode())  # what a producer's JSON number is after parsing
    whole_digits = max(sent.adjusted() + 1, 0) if sent else 0
    fraction_digits = max(-sent.normalize().as_tuple().exponent, 0) if sent else 0
    holds = whole_digits <= precision - scale and fraction_digits <= scale
    c = conv(f"Decimal({precision}, {scale})")
    if holds:
        assert c(parsed) == sent
    else:
        with pytest.raises(MappingError) as info:
            c(parsed)
        assert info.value.reason in ("out_of_range", "lost_precision")
        assert "digits" in info.value.detail


@pytest.mark.parametrize(
    "type_text, text, value",
    [
        ("Int64", "42", 42), ("Int64", "-123", -123), ("Int64", "9223372036854775807", 2**63 - 1),
        ("UInt64", "18446744073709551615", 2**64 - 1), ("UInt8", "0", 0), ("Int8", "-128", -128),
        ("Int256", str(-(2**255)), -(2**255)),
    ],
)
def test_integers_accept_canonical_decimal_strings(type_text, text, value):
    assert conv(type_text)(text) == value
    assert type(conv(type_text)(text)) is int


def test_integer_strings_keep_the_range_checks_and_the_syntax():
    rejects("Int64", "9223372036854775808", "out_of_range")
    rejects("UInt64", "-1", "out_of_range")
    rejects("UInt8", "256", "out_of_range")
    for bad in ["+5", "05", " 5", "5 ", "5.0", "1e3", "0x10", "", "-", "٣"]:
        rejects("Int64", bad, "invalid_value")
    rejects("Int64", True, "wrong_type")
    rejects("UInt8", False, "wrong_type")


def test_floats_accept_numeric_strings_and_the_proto3_specials():
    assert conv("Float64")("-1.25e-3") == -1.25e-3
    assert conv("Float64")("9007199254740992") == 2.0**53
    assert conv("Float64")("Infinity") == float("inf")
    assert conv("Float64")("-Infinity") == float("-inf")
    nan = conv("Float32")("NaN")
    assert nan != nan
    assert conv("Float32")("0.5") == 0.5
    rejects("Float64", "9007199254740993", "lost_precision")
    rejects("Float64", "1e400", "out_of_range")
    for bad in ["nan", "inf", "+1", "1.", ".5", " 1", "0x1p3", "1_000", ""]:
        rejects("Float64", bad, "invalid_value")


def test_float32_range_is_compared_after_rounding():
    assert conv("Float32")(3.4028235e38) == 3.4028235e38  # FLT_MAX's shortest text, as ClickHouse prints it
    assert conv("Float32")(-3.4028235e38) == -3.4028235e38
    assert conv("Float32")("3.4028235e38") == 3.4028235e38
    rejects("Float32", 3.4028236e38, "out_of_range")  # rounds to infinity
    assert conv("Float32")(1e-45) == 1e-45  # rounds to the smallest subnormal
    rejects("Float32", 7e-46, "out_of_range")  # rounds to 0
