"""workers/schema/temporal.py: Date, DateTime, DateTime64 and their column fast paths."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from schema_cases import (
    MODERN,
    OLD,
    Override,
    assert_column_as_per_value,
    by_map_rows,
    conv,
    fast_column,
    per_value,
    rejects,
)

from workers.clickhouse.schema import (
    SchemaError,
    ServerFeatures,
    TableColumn,
    compile_mapper,
)


def test_date():
    assert conv("Date")("2026-11-26") == date(2026, 11, 26)
    assert conv("Date")("2149-06-06") == date(2149, 6, 6)
    rejects("Date", "2149-06-07", "out_of_range")
    rejects("Date", "1969-12-31", "out_of_range")
    rejects("Date", "2106-01-01", "out_of_range", features=OLD)
    assert conv("Date", OLD)("2105-12-31") == date(2105, 12, 31)
    for bad in [
        "2026-02-30",
        "2026-1-5",
        "20261126",
        "2026-11-26T00:00:00Z",
        "2026-W48-4",
        " 2026-11-26",
        "２０２６-11-26",
    ]:
        rejects("Date", bad, "invalid_value")
    rejects("Date", 20000, "wrong_type")
    assert conv("Date32")("1900-01-01") == date(1900, 1, 1)


def test_datetime_strings():
    c = conv("DateTime")
    expected = int(datetime(2026, 11, 26, 12, 34, 56, tzinfo=timezone.utc).timestamp())
    for text in [
        "2026-11-26T12:34:56Z", "2026-11-26 12:34:56Z", "2026-11-26t12:34:56z", "2026-11-26T14:34:56+02:00",
        "2026-11-26T10:04:56-0230", "2026-11-26T12:34:56.000Z",
    ]:
        assert c(text) == expected, text
    assert type(c("2026-11-26T12:34:56Z")) is int
    assert "offset" in rejects("DateTime", "2026-11-26T12:34:56", "invalid_value")
    assert "DateTime64(3)" in rejects("DateTime", "2026-11-26T12:34:56.5Z", "lost_precision")
    for bad in ["2026-11-26T24:00:00Z", "2026-02-29T00:00:00Z", "2026-11-26T12:34:60Z", "2026-11-26T12:34Z",
                "2026-11-26T12:34:56+24:00", "2026-11-26T12:34:56 Z", "1700000000"]:
        rejects("DateTime", bad, "invalid_value")
    rejects("DateTime", "1969-12-31T23:59:59Z", "out_of_range")
    assert c("2106-02-07T06:28:15Z") == 2**32 - 1
    rejects("DateTime", "2106-02-07T06:28:16Z", "out_of_range")
    rejects("DateTime", "2106-01-01T00:00:00Z", "out_of_range", features=OLD)


def test_datetime_naive_strings_need_a_column_time_zone():
    assert conv("DateTime('UTC')")("2026-11-26 12:34:56") == conv("DateTime")("2026-11-26T12:34:56Z")
    berlin = conv("DateTime('Europe/Berlin')")
    assert berlin("2026-07-01 12:00:00") == conv("DateTime")("2026-07-01T10:00:00Z")
    assert berlin("2026-01-01 12:00:00") == conv("DateTime")("2026-01-01T11:00:00Z")
    assert berlin("2026-07-01T12:00:00Z") == conv("DateTime")("2026-07-01T12:00:00Z")  # explicit offset wins
    rejects("DateTime('Europe/Berlin')", "2026-10-25 02:30:00", "invalid_value")  # happens twice
    rejects("DateTime('Europe/Berlin')", "2026-03-29 02:30:00", "invalid_value")  # never happens


def test_datetime_epoch_numbers():
    assert conv("DateTime")(1700000000) == 1700000000
    assert conv("DateTime")(1700000000.0) == 1700000000
    rejects("DateTime", 1700000000.5, "lost_precision")
    rejects("DateTime", -1, "out_of_range")
    ms = conv("DateTime", epoch_unit="ms")
    assert ms(1700000000000) == 1700000000
    rejects("DateTime", 1700000000123, "lost_precision", epoch_unit="ms")
    rejects("DateTime", True, "wrong_type")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_datetime_epoch_roundtrips_through_iso_strings(epoch):
    text = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=epoch)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conv("DateTime")(text) == epoch


def test_datetime64():
    c = conv("DateTime64(3)")
    base = 1700000000
    assert c("2023-11-14T22:13:20Z") == base * 1000
    assert c("2023-11-14T22:13:20.1Z") == base * 1000 + 100
    assert c("2023-11-14T22:13:20.123Z") == base * 1000 + 123
    assert c("2023-11-14T22:13:20.123000Z") == base * 1000 + 123
    rejects("DateTime64(3)", "2023-11-14T22:13:20.1234Z", "lost_precision")
    assert conv("DateTime64(9)")("2023-11-14T22:13:20.123456789Z") == base * 10**9 + 123456789
    assert c(base) == base * 1000
    assert conv("DateTime64(3)", epoch_unit="ms")(base * 1000 + 7) == base * 1000 + 7
    assert conv("DateTime64(6)", epoch_unit="ms")(base * 1000 + 7) == (base * 1000 + 7) * 1000
    assert c(1700000000.123) == base * 1000 + 123
    rejects("DateTime64(3)", 1700000000.1234, "lost_precision")
    rejects("DateTime64(0)", base * 1000 + 7, "lost_precision", epoch_unit="ms")
    assert c("1950-01-01T00:00:00Z") < 0  # extended range on modern servers
    rejects("DateTime64(3)", "1899-12-31T23:59:59Z", "out_of_range")
    rejects("DateTime64(9)", "2263-01-01T00:00:00Z", "out_of_range")  # beyond Int64 ticks
    assert conv("DateTime64(3, 'Asia/Tokyo')")("2023-11-15 07:13:20") == base * 1000


TIMESTAMPS = [
    "2026-11-26T12:34:56Z", "2026-11-26T12:34:00Z", "2026-11-26T12:34:59Z", "2026-11-26T12:35:00Z",
    "1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2106-02-07T06:27:59Z", "2026-11-26T12:34:56Z",
]


BAD_TIMESTAMPS = [
    "2026-11-26T12:34:60Z", "2026-11-26T24:00:00Z", "2026-02-29T00:00:00Z", "2026-11-26T12:60:00Z",
    "2026-11-26T12:34:5xZ", "2026-11-26T12:34:-1Z", "2026-11-26T12:34:5.Z", "2026-11-26T12:3:456Z",
    "2026-11-26T12:34:\uff15\uff16Z", "\uff12026-11-26T12:34:56Z", "+026-11-26T12:34:56Z", "2026-11-26X12:34:56Z",
    "2106-02-07T06:28:16Z", "2106-02-07T06:28:15Z", "2106-02-07T06:28:00Z", "1969-12-31T23:59:59Z",
    "2026-11-26T12:34:56z", "2026-11-26t12:34:56Z", "2026-11-26 12:34:56Z", "2026-11-26T12:34:56.5Z",
    "2026-11-26T12:34:56+01:00", "2026-11-26T12:34:56", "2026-11-26T12:34:56 ", None, 1795696496, 1.5, ["x"],
]


def test_datetime_column_fast_path_is_the_per_value_converter():
    assert fast_column("DateTime", TIMESTAMPS) == [conv("DateTime")(v) for v in TIMESTAMPS]
    assert_column_as_per_value("DateTime", TIMESTAMPS, BAD_TIMESTAMPS)
    assert_column_as_per_value("DateTime", ["2105-12-31T23:59:59Z", *TIMESTAMPS[:6]], ["2106-01-01T00:00:00Z"], OLD)
    assert_column_as_per_value("DateTime('Europe/Berlin')", TIMESTAMPS, BAD_TIMESTAMPS)
    assert_column_as_per_value("Nullable(DateTime)", TIMESTAMPS, [None, "2026-11-26T12:34:60Z"])
    assert_column_as_per_value("LowCardinality(DateTime)", TIMESTAMPS, BAD_TIMESTAMPS[:4])
    for bad in ["2026-11-26T12:34:60Z", "2106-02-07T06:28:15Z", "2026-11-26T12:34:56z", None]:
        assert fast_column("DateTime", [TIMESTAMPS[0], bad]) is None  # left to the per-value converter


def test_datetime64_column_fast_path_is_the_per_value_converter():
    for type_text in ["DateTime64(0)", "DateTime64(3)", "DateTime64(9)", "DateTime64(3, 'Asia/Tokyo')"]:
        assert fast_column(type_text, TIMESTAMPS[:6]) == [conv(type_text)(v) for v in TIMESTAMPS[:6]]
        bad = [*BAD_TIMESTAMPS, "2023-11-14T22:13:20.123Z", "1899-12-31T23:59:59Z", "2262-04-11T23:47:16Z",
               "2262-04-11T23:47:17Z", "2262-04-11T23:47:00Z", "1925-01-01T00:00:00Z"]
        assert_column_as_per_value(type_text, TIMESTAMPS[:6], bad)
    v21 = ServerFeatures.from_version((21, 8))  # DateTime64 from 1925-01-01 to 2283-11-11
    assert_column_as_per_value("DateTime64(3)", TIMESTAMPS[:6], ["1924-12-31T23:59:59Z", "2283-11-12T00:00:00Z"], v21)


def test_datetime_fast_path_minute_cache_across_batches(monkeypatch):
    import workers.clickhouse.schema.temporal as temporal

    monkeypatch.setattr(temporal, "_MINUTES_CACHED", 3)  # cleared all the time
    mapper = compile_mapper("t", [TableColumn("c", "DateTime")], [], MODERN)
    c = conv("DateTime")
    for hour in range(10):
        column = [f"2026-11-26T{hour:02d}:{m:02d}:{s:02d}Z" for m in (0, 1, 59) for s in (0, 30, 59)]
        assert mapper.map_rows([{"c": v} for v in column]) == ([[c(v) for v in column]], [])
        # A minute seen before, now with an impossible second: still refused.
        columns, failures = mapper.map_rows([{"c": column[0]}, {"c": column[0][:17] + "60Z"}])
        assert columns == [[c(column[0])]]
        assert [(i, e.reason) for i, e in failures] == [(1, "invalid_value")]


def test_datetime_column_of_repeated_timestamps_converts_each_once():
    # A batch of a few seconds' events: the column is long, its distinct values few.
    column = [TIMESTAMPS[i % 3] for i in range(1000)]
    c = conv("DateTime")
    assert fast_column("DateTime", column) == [c(v) for v in column]
    assert fast_column("DateTime64(3)", column) == [conv("DateTime64(3)")(v) for v in column]
    for bad in ["2026-11-26T12:34:60Z", "2106-02-07T06:28:16Z", "2026-11-26T12:34:56z"]:
        assert fast_column("DateTime", [*column[:500], bad, *column[500:]]) is None  # left to the per-value converter
        assert_column_as_per_value("DateTime", column, [bad])
    # Repeated at first, all distinct after: converted row by row, the same values.
    mixed = column[:300] + [f"2026-11-26T{h:02d}:{m:02d}:{s:02d}Z" for h in range(2) for m in range(60) for s in (1, 2)]
    assert fast_column("DateTime", mixed) == [c(v) for v in mixed]


@settings(max_examples=100)
@given(st.lists(st.sampled_from(TIMESTAMPS + BAD_TIMESTAMPS[:8]), min_size=1, max_size=6), st.integers(256, 600))
def test_datetime_column_of_repeated_timestamps_property(pool, rows):
    column = [pool[i % len(pool)] for i in range(rows)]
    assert by_map_rows("DateTime", column) == per_value("DateTime", column)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.datetimes(min_value=datetime(1965, 1, 1), max_value=datetime(2110, 1, 1)),
            st.integers(0, 19),
            st.sampled_from("0123456789-:TtZz .+6\uff16"),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_datetime_column_fast_path_property(cases):
    column = []
    for moment, at, char, mutate in cases:
        text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        column.append(text[:at] + char + text[at + 1:] if mutate else text)
    assert by_map_rows("DateTime", column) == per_value("DateTime", column)
    assert by_map_rows("DateTime64(3)", column) == per_value("DateTime64(3)", column)


# --------------------------------------------------------------------------- issue 13: date-times without offset

def test_naive_datetimes_are_read_in_the_server_time_zone():
    utc = conv("DateTime")("2024-01-05T10:20:30Z")
    assert conv("DateTime", server_timezone="UTC")("2024-01-05 10:20:30") == utc  # ClickHouse's own format
    assert conv("DateTime", server_timezone="UTC")("2024-01-05T10:20:30") == utc
    assert conv("DateTime", server_timezone="Europe/Berlin")("2024-01-05 11:20:30") == utc
    assert conv("DateTime", server_timezone="Europe/Berlin")("2024-01-05T10:20:30Z") == utc  # an offset wins


def test_naive_datetimes_prefer_the_override_then_the_column_zone():
    utc = conv("DateTime")("2024-07-05T10:20:30Z")
    berlin_column = conv("DateTime('Europe/Berlin')", server_timezone="UTC")
    assert berlin_column("2024-07-05 12:20:30") == utc
    tokyo_override = conv("DateTime('Europe/Berlin')", timezone="Asia/Tokyo", server_timezone="UTC")
    assert tokyo_override("2024-07-05 19:20:30") == utc
    assert conv("DateTime", timezone="Asia/Tokyo")("2024-07-05 19:20:30") == utc


def test_naive_datetimes_without_any_known_zone_are_refused():
    detail = rejects("DateTime", "2024-01-05 10:20:30", "invalid_value")
    assert "timezone" in detail


def test_naive_datetime64_keeps_fractions_it_can_hold():
    c = conv("DateTime64(3)", server_timezone="UTC")
    assert c("2024-01-05 10:20:30.123") == conv("DateTime64(3)")("2024-01-05T10:20:30.123Z")
    rejects("DateTime64(3)", "2024-01-05 10:20:30.1234", "lost_precision", server_timezone="UTC")
    rejects("DateTime", "2024-01-05 10:20:30.5", "lost_precision", server_timezone="UTC")
    whole = conv("DateTime")("2024-01-05T10:20:30Z")
    assert conv("DateTime", server_timezone="UTC")("2024-01-05 10:20:30.000") == whole


def test_date_takes_a_naive_datetime_at_midnight_only():
    assert conv("Date")("2024-01-05 00:00:00") == date(2024, 1, 5)
    assert conv("Date")("2024-01-05T00:00:00.000") == date(2024, 1, 5)
    assert conv("Date32")("2024-01-05 00:00:00") == date(2024, 1, 5)
    assert "time of day" in rejects("Date", "2024-01-05 10:20:30", "lost_precision")
    rejects("Date", "2024-01-05 00:00:00.5", "lost_precision")
    rejects("Date", "2024-01-05T00:00:00Z", "invalid_value")
    rejects("Date", "2024-02-30 00:00:00", "invalid_value")


def test_timezone_override_on_a_column_without_date_times_is_a_schema_error():
    with pytest.raises(SchemaError, match="timezone override applies to DateTime and DateTime64 only"):
        compile_mapper("t", [TableColumn("n", "UInt8")], [Override("n", timezone="UTC")], MODERN)
    with pytest.raises(SchemaError, match="unknown to this host"):
        compile_mapper("t", [TableColumn("ts", "DateTime")], [Override("ts", timezone="Mars/Olympus")], MODERN)


def test_server_time_zone_reaches_the_columns_through_compile_mapper():
    mapper = compile_mapper(
        "t", [TableColumn("a", "DateTime"), TableColumn("b", "Nullable(DateTime64(3))")], [], MODERN,
        server_timezone="Europe/Berlin",
    )
    columns, failures = mapper.map_rows([{"a": "2024-01-05 11:20:30", "b": "2024-01-05 11:20:30.5"}])
    assert failures == []
    assert columns == [[conv("DateTime")("2024-01-05T10:20:30Z")], [conv("DateTime64(3)")("2024-01-05T10:20:30.5Z")]]


def test_datetime64_range_is_the_servers_calendar_in_the_columns_zone():
    # 1900-01-01 00:00:00.001 in Berlin is 1899-12-31 23:00:00.001 UTC: storable, as the server stores it.
    berlin = conv("DateTime64(3, 'Europe/Berlin')")
    assert berlin("1900-01-01 00:00:00.001") == -2208992399999
    assert rejects("DateTime64(3, 'Europe/Berlin')", "1899-12-31 23:59:59.999", "out_of_range")
    assert conv("DateTime64(3, 'Asia/Tokyo')")("2299-12-31 23:59:59.999") == 10413759599999
    assert rejects("DateTime64(3)", "1899-12-31 23:59:59.999", "out_of_range", server_timezone="UTC")
