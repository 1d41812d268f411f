"""What the connected ClickHouse server supports, from its version: the one version table.

:data:`VERSION_TABLE` is the only place the versions are written.  The builder asks
:meth:`ServerFeatures.type_needs` before it builds a type; docs/configuration.md's
table is :func:`version_table_markdown` (tests/unit/test_schema_features.py fails when
the two differ; ``python -c 'import workers.clickhouse.schema.features as f; print(f.version_table_markdown())'``
prints it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class VersionRow:
    """One type or feature and the first release that has it without experimental settings."""

    what: str  # as the docs show it
    since: tuple[int, ...] | None  # None: every server we target
    note: str = ""
    types: tuple[str, ...] = ()  # the type constructors it gates
    key: str = ""  # how ServerFeatures names a feature that is not a type


VERSION_TABLE: tuple[VersionRow, ...] = (
    VersionRow("(U)Int8..64, Float32/64, String, FixedString(N)", None, "18.16 is the oldest server we target"),
    VersionRow("Date, DateTime, DateTime('tz'), UUID, Enum8/16", None),
    VersionRow("Decimal(P,S) with P <= 38, Decimal32/64/128(S)", None),
    VersionRow("Nullable, Array, Tuple", None),
    VersionRow("IPv4, IPv6", (19, 3), types=("IPv4", "IPv6")),
    # 18.16 inserts into LowCardinality columns (clickhouse-driver writes them); only its CREATE TABLE
    # needs the experimental setting, and jetsink creates no tables on its own.
    VersionRow(
        "LowCardinality(T)", None,
        "before 19.9 a CREATE TABLE with it needs allow_experimental_low_cardinality_type = 1",
    ),
    VersionRow("DateTime64(P[, 'tz'])", (20, 1), types=("DateTime64",)),
    VersionRow(
        "Int128, Int256, UInt256, Decimal with P > 38", (20, 8), "experimental before 21.x",
        types=("Int128", "Int256", "UInt256", "Decimal256"),
    ),
    VersionRow(
        "`opentelemetry_traceparent` (client trace context)", (20, 11), "protocol revision 54442",
        key="opentelemetry_traceparent",
    ),
    VersionRow("UInt128", (21, 6), types=("UInt128",)),
    VersionRow("Map(K, V)", (21, 8), "experimental 21.1 .. 21.7", types=("Map",)),
    VersionRow("Date32", (21, 9), types=("Date32",)),
    VersionRow("Bool", (21, 12), types=("Bool",)),
    VersionRow(
        "`insert_deduplication_token` (insert setting)", (22, 2),
        "exactly_once: a batch's insert carries a token of its range, the same when sent again",
        key="insert_deduplication_token",
    ),
    VersionRow(
        "Date up to 2149-06-06, DateTime up to 2106-02-07", (21, 4), "before: up to 2105-12-31",
        key="extended_dates",
    ),
    VersionRow("DateTime64 1925..2283", (21, 4), "before: 1970..2105"),
    VersionRow("DateTime64 / Date32 1900..2299", (22, 8), "before: 1925..2283", key="widest_dates"),
    # The rows below are tested on 26.9 only (its engine in process, tests/modern/); the
    # versions are the first releases that have them without experimental settings.
    VersionRow("EPHEMERAL columns", (22, 4), "take the message's value", key="ephemeral"),
    VersionRow("Nested(...) kept whole (flatten_nested = 0), SimpleAggregateFunction(f, T)", None,
               "an array of objects; inserted as T"),
    VersionRow(
        "JSON, JSON(max_dynamic_paths=N, path Type, SKIP path, ...)", (25, 3),
        "an object, sent as its JSON text for the server's own parser (typed paths, SKIP and limits applied there)",
        types=("JSON",),
    ),
    VersionRow("BFloat16", (24, 12), "numbers it holds exactly", types=("BFloat16",)),
    VersionRow("Time, Time64(P)", (25, 6), "`\"[-]h:mm:ss[.f]\"`", types=("Time", "Time64")),
    # Experimental from 24.1 (Variant) and 24.5 (Dynamic); usable without settings, and
    # with Dynamic's shared variant that native_variant.py writes, from 25.3.
    VersionRow(
        "Variant(T1, ...), Dynamic, Dynamic(max_types=N)", (25, 3),
        "experimental from 24.1 (Variant), 24.5 (Dynamic); the variant ClickHouse's JSON parser picks, "
        "the type its JSON inference gives (below)",
        types=("Variant", "Dynamic"),
    ),
)

_TYPE_SINCE = {t: row.since for row in VERSION_TABLE if row.since is not None for t in row.types}
_KEY_SINCE = {row.key: row.since for row in VERSION_TABLE if row.key}

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _epoch(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return (date(y, m, d).toordinal() - _EPOCH_ORDINAL) * 86400 + hh * 3600 + mm * 60 + ss


def version_text(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


def version_table_markdown() -> str:
    """docs/configuration.md's version table, made from :data:`VERSION_TABLE`."""
    lines = ["| Type / feature | Needs ClickHouse | Notes |", "|---|---|---|"]
    for row in VERSION_TABLE:
        needs = "any (18.16+)" if row.since is None else version_text(row.since)
        lines.append(f"| {row.what} | {needs} | {row.note} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerFeatures:
    """What the connected ClickHouse server supports, derived from its version (see VERSION_TABLE)."""

    version: tuple[int, ...]

    @classmethod
    def from_version(cls, v: tuple[int, ...]) -> "ServerFeatures":
        """Features of a server reporting version ``v`` (e.g. ``(18, 16, 1)``)."""
        return cls(tuple(int(x) for x in v))

    def _has(self, key: str) -> bool:
        return self.version >= _KEY_SINCE[key]

    def type_needs(self, type_name: str) -> tuple[int, ...] | None:
        """The version a type constructor needs if this server lacks it, else None."""
        since = _TYPE_SINCE.get(type_name)
        return since if since is not None and self.version < since else None

    @property
    def version_text(self) -> str:
        return version_text(self.version)

    @property
    def opentelemetry_traceparent(self) -> bool:
        return self._has("opentelemetry_traceparent")

    @property
    def insert_deduplication_token(self) -> bool:
        return self._has("insert_deduplication_token")

    @property
    def date_range(self) -> tuple[date, date]:
        """Dates the server's date functions handle correctly (older LUTs end in 2105)."""
        if self._has("extended_dates"):
            return date(1970, 1, 1), date(2149, 6, 6)
        return date(1970, 1, 1), date(2105, 12, 31)

    @property
    def date32_range(self) -> tuple[date, date]:
        if self._has("widest_dates"):
            return date(1900, 1, 1), date(2299, 12, 31)
        return date(1925, 1, 1), date(2283, 11, 11)

    @property
    def datetime_range(self) -> tuple[int, int]:
        """Inclusive epoch-second bounds of DateTime."""
        if self._has("extended_dates"):
            return 0, 2**32 - 1
        return 0, _epoch(2105, 12, 31, 23, 59, 59)

    @property
    def datetime64_range(self) -> tuple[int, int]:
        """Inclusive epoch-second bounds of DateTime64 (whole seconds; any fraction is allowed in the last)."""
        if self._has("widest_dates"):
            return _epoch(1900, 1, 1), _epoch(2299, 12, 31, 23, 59, 59)
        if self._has("extended_dates"):
            return _epoch(1925, 1, 1), _epoch(2283, 11, 11, 23, 59, 59)
        return 0, _epoch(2105, 12, 31, 23, 59, 59)

