"""workers/schema/numeric.py: integers, floats, decimals, Bool."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from schema_cases import (
    MODERN,
    conv,
    rejects,
)

from workers.schema import (
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
    rejects("Int32", "12", "wrong_type")
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
    rejects("Float64", 2**53 + 1, "out_of_range")  # would be stored as 2**53
    rejects("Float64", 10**400, "out_of_range")
    assert conv("Float32")(16777216) == 16777216.0
    rejects("Float32", 16777217, "out_of_range")
    rejects("Float32", 3.5e38, "out_of_range")
    rejects("Float32", 1e-50, "out_of_range")  # would silently become 0
    assert conv("Float32")(-3.4e38) == -3.4e38
    rejects("Float64", "1.5", "wrong_type")
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
    rejects("Decimal(18, 4)", "1.00001", "out_of_range")  # no rounding
    rejects("Decimal(18, 4)", 1.5, "wrong_type")  # floats are not exact
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
        assert info.value.reason == "out_of_range"
