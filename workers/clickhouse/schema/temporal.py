"""Dates and times: Date, Date32, DateTime([tz]), DateTime64(P[, tz]).

Emitted as clickhouse-driver takes them fastest: ``datetime.date`` for dates, int
epoch seconds for DateTime, int ticks of 10**-P s for DateTime64.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from operator import add, itemgetter
from typing import Any, Callable
from zoneinfo import ZoneInfo

from workers.clickhouse.schema.converter import MAX_EXACT_FLOAT_INT, ONLY_STR, Converter
from workers.clickhouse.schema.errors import Rejected, show, wrong_type

_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?)?\Z", re.ASCII
)


def date_converter(type_name: str, bounds: tuple[date, date]) -> Converter:
    lo, hi = bounds

    def parse(v: str) -> date:
        m = _DATE.match(v)
        if m is None:
            raise Rejected("invalid_value", f"{show(v)} is not a date in YYYY-MM-DD form")
        if m[4] is not None and (m[4] != "00" or m[5] != "00" or m[6] != "00" or (m[7] or "").strip("0")):
            # A date-time without offset is accepted at midnight only: the date is then all it says.
            raise Rejected("lost_precision", f"{show(v)} has a time of day; {type_name} keeps only the date")
        try:
            d = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            raise Rejected("invalid_value", f"{show(v)} is not a real date") from None
        if lo <= d <= hi:
            return d
        raise Rejected("out_of_range", f"{show(v)} is outside the {type_name} range {lo} .. {hi}")

    def convert(v: Any) -> date:
        if type(v) is str:
            return parse(v)
        raise wrong_type("a date string YYYY-MM-DD", v)

    return Converter(convert, date(1970, 1, 1), dedupe_strings=True)


_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?\Z",
    re.ASCII,
)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def _instant_parser(zone: ZoneInfo | None) -> Callable[[str], tuple[int, str]]:
    """A function: timestamp string -> (epoch seconds, fraction digits); naive strings need ``zone``."""
    match, parse_local, epoch, second = _DATETIME.match, datetime.fromisoformat, _EPOCH_NAIVE, timedelta(seconds=1)

    def parse(v: str) -> tuple[int, str]:
        m = match(v)
        if m is None:
            raise Rejected(
                "invalid_value", f"{show(v)} is not an ISO-8601 timestamp like 2026-11-26T12:34:56Z"
            )
        try:
            # The regex fixed the shape; the C parser checks the calendar (and refuses second 60).
            local = parse_local(v[:19])
        except ValueError as e:
            raise Rejected("invalid_value", f"{show(v)} is not a real date and time ({e})") from None
        seconds = (local - epoch) // second
        last = v[-1]
        if last == "Z" or last == "z":  # the common case needs no more regex groups
            return seconds, m[1]
        sign, oh, om = m.group(3, 4, 5)
        if sign is not None:
            offset = int(oh) * 3600 + int(om) * 60
            if oh > "23" or om > "59":
                raise Rejected("invalid_value", f"{show(v)} has an impossible UTC offset")
            seconds = seconds - offset if sign == "+" else seconds + offset
        elif zone is None:
            raise Rejected(
                "invalid_value",
                f"{show(v)} has no UTC offset and no time zone is known to read it in; add 'Z' or '+hh:mm', "
                "or set the column's timezone override",
            )
        else:
            placed = local.replace(tzinfo=zone)
            offset_early = placed.utcoffset()
            if placed.replace(fold=1).utcoffset() != offset_early:
                raise Rejected(
                    "invalid_value",
                    f"{show(v)} is ambiguous or does not exist in {zone.key} (DST change); send an explicit offset",
                )
            seconds -= int(offset_early.total_seconds())
        return seconds, m[1]

    return parse


# "YYYY-MM-DDThh:mm:ssZ" is what most producers send: whole columns of it have a fast path.
_MINUTE_OF = itemgetter(slice(0, 17))  # "YYYY-MM-DDThh:mm:"
_SECOND_OF = itemgetter(slice(17, 20))  # "ssZ"
_MINUTES_CACHED = 10_000  # about a week of distinct minutes, ~1.5 MB
_SAMPLE = 64  # a column's first values, to tell whether its timestamps repeat


def _utc_column(parse: Callable[[str], int], lo: int, hi: int, scale: int) -> Callable[[list], list | None]:
    """A column fast path for timestamps that are all "YYYY-MM-DDThh:mm:ssZ".

    Such a string is valid exactly when its minute ("YYYY-MM-DDThh:mm:") is and its
    seconds are 00..59 (the calendar does not depend on the second), and it stands
    for the minute's instant plus the seconds.  So each minute is parsed once, by the
    strict ``parse`` as "...:00Z", and kept while the whole minute is in range; a row
    then costs two dict lookups and an addition, all in C.  Anything else (offsets,
    fractions, second 60, a minute out of range) returns None: the general path.
    """
    minutes: dict[str, int] = {}
    seconds = {f"{s:02d}Z": s * scale for s in range(60)}
    last_second = 59 * scale

    def learn(minute: str) -> bool:
        try:
            start = parse(minute + "00Z")
        except Rejected:
            return False
        if not (lo <= start and start + last_second <= hi):
            return False
        minutes[minute] = start
        return True

    def column(values: list) -> list | None:
        if not (set(map(type, values)) <= ONLY_STR and set(map(len, values)) == {20}):
            return None
        n = len(values)
        if n >= 4 * _SAMPLE and len(set(values[:_SAMPLE])) * 4 <= _SAMPLE:
            # Rows sharing timestamps (a second's events in one batch): each distinct one once.
            distinct = list(set(values))
            if len(distinct) * 4 <= n:
                done = instants(distinct)
                return None if done is None else list(map(dict(zip(distinct, done, strict=True)).__getitem__, values))
        return instants(values)

    def instants(values: list) -> list | None:
        keys = list(map(_MINUTE_OF, values))
        try:
            starts = list(map(minutes.__getitem__, keys))
        except KeyError:
            if len(minutes) > _MINUTES_CACHED:
                minutes.clear()
            if not all(map(learn, set(keys).difference(minutes))):
                return None
            starts = list(map(minutes.get, keys))
            if None in starts:  # cleared meanwhile by another thread mapping this column
                return None
        try:
            return list(map(add, starts, map(seconds.__getitem__, map(_SECOND_OF, values))))
        except KeyError:  # not "00Z" .. "59Z"
            return None

    return column


def _zone(name: str | None) -> ZoneInfo | None:
    return None if name is None else ZoneInfo(name)


def _range_check(type_name: str, lo: int, hi: int) -> Callable[[int, Any], int]:
    """check(value, shown): the value when it lies in lo..hi, else out_of_range naming `shown` and the type."""

    def check(value: int, shown: Any) -> int:
        if lo <= value <= hi:
            return value
        raise Rejected("out_of_range", f"{show(shown)} is outside the {type_name} range")

    return check


def datetime_converter(type_name: str, naive_zone: str | None, bounds: tuple[int, int], epoch_unit: str) -> Converter:
    """DateTime; strings without offset are read in ``naive_zone`` (refused when it is None)."""
    lo, hi = bounds
    zone = _zone(naive_zone)
    per_unit = 1000 if epoch_unit == "ms" else 1

    check = _range_check(type_name, lo, hi)

    instant = _instant_parser(zone)

    def parse(v: str) -> int:
        seconds, fraction = instant(v)
        if fraction and fraction.strip("0"):
            raise Rejected(
                "lost_precision", f"{show(v)} has sub-second digits {type_name} cannot store; use DateTime64(3)"
            )
        return check(seconds, v)

    def from_number(v: Any) -> int:
        iv = v
        if type(v) is float:
            if not (v.is_integer() and -MAX_EXACT_FLOAT_INT < v < MAX_EXACT_FLOAT_INT):
                raise Rejected(
                    "lost_precision",
                    f"epoch {show(v)} has sub-second digits {type_name} cannot store; use DateTime64(3)",
                )
            iv = int(v)
        if per_unit != 1:
            if iv % per_unit:
                raise Rejected(
                    "lost_precision", f"epoch {show(v)} ms has milliseconds {type_name} cannot store; use DateTime64(3)"
                )
            iv //= per_unit
        return check(iv, v)

    def convert(v: Any) -> int:
        t = type(v)
        if t is str:
            return parse(v)
        if t is int or t is float:
            return from_number(v)
        raise wrong_type(f"a timestamp string or epoch {'milliseconds' if per_unit != 1 else 'seconds'}", v)

    return Converter(convert, 0, dedupe_strings=True, column=_utc_column(parse, lo, hi, 1))


_INT64 = (-(2**63), 2**63 - 1)


def datetime64_converter(
    type_name: str, precision: int, naive_zone: str | None, bounds: tuple[int, int], epoch_unit: str
) -> Converter:
    """DateTime64(P); strings without offset are read in ``naive_zone`` (refused when it is None)."""
    scale = 10**precision
    lo = max(bounds[0] * scale, _INT64[0])
    hi = min(bounds[1] * scale + scale - 1, _INT64[1])
    zone = _zone(naive_zone)
    unit_digits = 3 if epoch_unit == "ms" else 0

    check = _range_check(type_name, lo, hi)

    def too_precise(shown: Any) -> Rejected:
        return Rejected("lost_precision", f"{show(shown)} has more fraction digits than {type_name} stores")

    instant = _instant_parser(zone)

    def parse(v: str) -> int:
        seconds, fraction = instant(v)
        ticks = seconds * scale
        if fraction:
            kept, dropped = fraction[:precision], fraction[precision:]
            if dropped.strip("0"):
                raise too_precise(v)
            if kept:
                ticks += int(kept) * 10 ** (precision - len(kept))
        if lo <= ticks <= hi:
            return ticks
        raise Rejected("out_of_range", f"{show(v)} is outside the {type_name} range")

    def from_number(v: Any) -> int:
        if type(v) is float:
            if v.is_integer() and -MAX_EXACT_FLOAT_INT < v < MAX_EXACT_FLOAT_INT:
                v_exact: int | Decimal = int(v)
            else:
                # The shortest repr is the text JSON encoders emit for a double.
                v_exact = Decimal(repr(v))
        else:
            v_exact = v
        shift = precision - unit_digits
        if isinstance(v_exact, int):
            if shift >= 0:
                return check(v_exact * 10**shift, v)
            ticks, rest = divmod(v_exact, 10**-shift)
            if rest:
                raise too_precise(v)
            return check(ticks, v)
        scaled = v_exact.scaleb(shift)
        if scaled != scaled.to_integral_value():
            raise too_precise(v)
        return check(int(scaled), v)

    def convert(v: Any) -> int:
        t = type(v)
        if t is str:
            return parse(v)
        if t is int or t is float:
            return from_number(v)
        raise wrong_type(f"a timestamp string or epoch {'milliseconds' if unit_digits else 'seconds'}", v)

    return Converter(convert, 0, dedupe_strings=True, column=_utc_column(parse, lo, hi, scale))


def local_bounds(bounds: tuple[int, int], zone_name: str | None) -> tuple[int, int]:
    """DateTime64's range in epoch seconds for a column stored in `zone_name`.

    The server's calendar covers its range of dates in the column's own zone (1900-01-01
    00:00:00 in Berlin is 23:00 of the day before in UTC, and storable): `bounds`, the
    range in UTC, moved by the zone's offset at each end.  No zone: UTC.
    """
    if zone_name is None:
        return bounds
    zone = ZoneInfo(zone_name)
    lo, hi = bounds

    def offset(epoch: int) -> int:
        wall = datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)
        return int(zone.utcoffset(wall).total_seconds())

    return lo - offset(lo), hi - offset(hi)
