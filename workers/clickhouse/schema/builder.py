"""ClickHouse type -> converter: a table from type name to factory, as clickhouse-driver's columns/service.py.

Every factory takes the :class:`Builder` (server features, epoch unit, the problems
found so far) and the parsed type; containers build their element types through it,
so a type the server lacks is found however deeply it is nested.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workers.clickhouse.schema.containers import (
    array_converter,
    map_converter,
    map_key_converter,
    nullable_converter,
    tuple_converter,
)
from workers.clickhouse.schema.converter import Converter
from workers.clickhouse.schema.dynamic import dynamic_converter
from workers.clickhouse.schema.errors import MappingError, Rejected, SchemaError
from workers.clickhouse.schema.features import ServerFeatures, version_text
from workers.clickhouse.schema.modern import bfloat16_converter, json_object_converter, time_converter
from workers.clickhouse.schema.numeric import (
    DECIMAL_SIZES,
    INT_TYPES,
    convert_bool,
    decimal_converter,
    float_converter,
    int_converter,
)
from workers.clickhouse.schema.parser import ClickHouseType, parse_type
from workers.clickhouse.schema.temporal import (
    date_converter,
    datetime64_converter,
    datetime_converter,
    local_bounds,
)
from workers.clickhouse.schema.text import (
    convert_string,
    convert_string_or_json,
    enum_converter,
    fixed_string_converter,
    ipv4_converter,
    ipv6_converter,
    uuid_converter,
)
from workers.clickhouse.schema.variant import variant_converter


class Builder:
    """Builds a converter for one column, collecting every problem instead of stopping at the first."""

    def __init__(
        self,
        features: ServerFeatures,
        epoch_unit: str,
        timezone: str | None = None,
        server_timezone: str | None = None,
        objects_as_strings: bool = False,
    ):
        self.features = features
        self.objects_as_strings = objects_as_strings
        self.epoch_unit = epoch_unit
        self.timezone = timezone  # the column override's, for strings without offset
        self.server_timezone = server_timezone
        self.timezone_used = False
        self.problems: list[str] = []

    def need(self, feature: str) -> None:
        since = self.features.type_needs(feature)
        if since is not None:
            self.problems.append(
                f"needs ClickHouse >= {version_text(since)} (for {feature}); server is {self.features.version_text}"
            )

    def unsupported(self, t: ClickHouseType, why: str = "is not supported") -> Converter:
        self.problems.append(f"{t.name} {why}")
        return Converter(convert_string, "")

    def build(self, t: ClickHouseType) -> Converter:
        factory = _FACTORIES.get(t.name)
        if factory is None:
            return self.unsupported(t)
        self.need(t.name)
        return factory(self, t)

    def element(self, t: ClickHouseType) -> ClickHouseType | None:
        """The one type argument of a wrapper such as Array(T), or None if it has not exactly one."""
        return t.args[0] if len(t.args) == 1 and isinstance(t.args[0], ClickHouseType) else None

    def plain(self, t: ClickHouseType, conv: Converter) -> Converter:
        if t.args:
            self.problems.append(f"{t.name} takes no arguments")
        return conv

    def naive_zone(self, column_zone: str | None) -> str | None:
        """Where a date-time without offset is read: the override's zone, the column's, else the server's."""
        self.timezone_used = True
        return self.zone(self.timezone or column_zone or self.server_timezone)

    def zone(self, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"time zone {name!r} is unknown to this host (install tzdata?)")
            return None
        return name


_Factory = Callable[[Builder, ClickHouseType], Converter]


def _int(b: Builder, t: ClickHouseType) -> Converter:
    bits, signed = INT_TYPES[t.name]
    return b.plain(t, int_converter(t.name, bits, signed))


def _float(b: Builder, t: ClickHouseType) -> Converter:
    return b.plain(t, float_converter(t.name))


def _bool(b: Builder, t: ClickHouseType) -> Converter:
    return b.plain(t, Converter(convert_bool, False, fast=(frozenset({bool}), None, None), accepts_str_keys=False))


def _string(b: Builder, t: ClickHouseType) -> Converter:
    # An all-string column keeps the fast path either way; objects and arrays go value by value.
    convert = convert_string_or_json if b.objects_as_strings else convert_string
    return b.plain(t, Converter(convert, "", fast=(frozenset({str}), None, None)))


def _fixed_string(b: Builder, t: ClickHouseType) -> Converter:
    if len(t.args) != 1 or not isinstance(t.args[0], int) or t.args[0] < 1:
        return b.unsupported(t, "needs one positive length")
    return fixed_string_converter(t.args[0])


def _date(b: Builder, t: ClickHouseType) -> Converter:
    bounds = b.features.date_range if t.name == "Date" else b.features.date32_range
    return b.plain(t, date_converter(t.name, bounds))


def _datetime(b: Builder, t: ClickHouseType) -> Converter:
    args = t.args
    if args and not (len(args) == 1 and isinstance(args[0], str)):
        return b.unsupported(t, "takes only a time zone name")
    column_zone = b.zone(args[0] if args else None)
    return datetime_converter(t.name, b.naive_zone(column_zone), b.features.datetime_range, b.epoch_unit)


def _datetime64(b: Builder, t: ClickHouseType) -> Converter:
    args = t.args
    if not (1 <= len(args) <= 2 and isinstance(args[0], int) and 0 <= args[0] <= 9) or (
        len(args) == 2 and not isinstance(args[1], str)
    ):
        return b.unsupported(t, "needs a precision 0..9 and an optional time zone")
    column_zone = b.zone(args[1] if len(args) == 2 else None)
    zone = b.naive_zone(column_zone)
    type_name = f"DateTime64({args[0]})"
    bounds = local_bounds(b.features.datetime64_range, column_zone or b.zone(b.server_timezone))
    return datetime64_converter(type_name, args[0], zone, bounds, b.epoch_unit)


def _uuid(b: Builder, t: ClickHouseType) -> Converter:
    return uuid_converter()


def _decimal(b: Builder, t: ClickHouseType) -> Converter:
    name, args = t.name, t.args
    if name == "Decimal" and len(args) == 2 and all(isinstance(a, int) for a in args):
        precision, scale = args
    elif name in DECIMAL_SIZES and len(args) == 1 and isinstance(args[0], int):
        precision, scale = DECIMAL_SIZES[name], args[0]
    else:
        return b.unsupported(t, "needs (precision, scale)")
    if not (1 <= precision <= 76 and 0 <= scale <= precision):
        return b.unsupported(t, f"has an impossible precision/scale ({precision}, {scale})")
    if precision > 38 and name != "Decimal256":
        b.need("Decimal256")
    return decimal_converter(f"Decimal({precision}, {scale})", precision, scale)


def _enum(b: Builder, t: ClickHouseType) -> Converter:
    if not t.args or not all(isinstance(a, tuple) and isinstance(a[1], int) for a in t.args):
        return b.unsupported(t, "needs 'name' = value members")
    return enum_converter(t.name, t.args)


def _ipv4(b: Builder, t: ClickHouseType) -> Converter:
    return ipv4_converter()


def _ipv6(b: Builder, t: ClickHouseType) -> Converter:
    return ipv6_converter()


def _nullable(b: Builder, t: ClickHouseType) -> Converter:
    inner = b.element(t)
    return b.unsupported(t, "needs one type") if inner is None else nullable_converter(b.build(inner))


def _low_cardinality(b: Builder, t: ClickHouseType) -> Converter:
    inner = b.element(t)
    return b.unsupported(t, "needs one type") if inner is None else b.build(inner)


def _array(b: Builder, t: ClickHouseType) -> Converter:
    inner = b.element(t)
    return b.unsupported(t, "needs one type") if inner is None else array_converter(b.build(inner))


def _map(b: Builder, t: ClickHouseType) -> Converter:
    args = t.args
    if len(args) != 2 or not all(isinstance(a, ClickHouseType) for a in args):
        return b.unsupported(t, "needs a key and a value type")
    key = b.build(args[0])
    if map_key_converter(key, args[0]) is None:
        return b.unsupported(t, f"keys of type {args[0].name} cannot come from JSON object keys")
    return map_converter(args[0], key, b.build(args[1]))


def _tuple(b: Builder, t: ClickHouseType) -> Converter:
    if not t.args:
        return b.unsupported(t, "needs element types")
    elements = []
    for a in t.args:
        if isinstance(a, ClickHouseType):
            elements.append((None, b.build(a)))
        elif isinstance(a, tuple) and isinstance(a[1], ClickHouseType):
            elements.append((a[0], b.build(a[1])))
        else:
            return b.unsupported(t, "has an element that is not a type")
    return tuple_converter(elements)


def _json(b: Builder, t: ClickHouseType) -> Converter:
    # Its parameters (settings, typed paths, SKIP) are the server's to apply: the text is parsed there.
    return json_object_converter()


def _bfloat16(b: Builder, t: ClickHouseType) -> Converter:
    return b.plain(t, bfloat16_converter())


def _time(b: Builder, t: ClickHouseType) -> Converter:
    if t.name == "Time":
        return b.plain(t, time_converter(None))
    if len(t.args) != 1 or not isinstance(t.args[0], int) or not 0 <= t.args[0] <= 9:
        return b.unsupported(t, "needs a precision 0..9")
    return time_converter(t.args[0])


def _nested(b: Builder, t: ClickHouseType) -> Converter:
    # A Nested column the server keeps whole (flatten_nested = 0) is Array(Tuple(...)) of its fields.
    if not t.args or not all(isinstance(a, tuple) and isinstance(a[1], ClickHouseType) for a in t.args):
        return b.unsupported(t, "needs named fields")
    return array_converter(_tuple(b, ClickHouseType("Tuple", t.args)))


def _simple_aggregate_function(b: Builder, t: ClickHouseType) -> Converter:
    # Inserted as its value type T: the server aggregates when it merges.
    if len(t.args) != 2 or not isinstance(t.args[1], ClickHouseType):
        return b.unsupported(t, "needs a function and a type")
    return b.build(t.args[1])


def _variant(b: Builder, t: ClickHouseType) -> Converter:
    # Which variant a value becomes is ClickHouse's parser's choice, followed where it is certain (variant.py).
    return variant_converter(b, t)


def _dynamic(b: Builder, t: ClickHouseType) -> Converter:
    # The type ClickHouse's JSON inference gives the value, where it does not depend on settings (dynamic.py).
    return dynamic_converter(b, t)


_FACTORIES: Mapping[str, _Factory] = {
    **{name: _int for name in INT_TYPES},
    "Float32": _float,
    "Float64": _float,
    "Bool": _bool,
    "String": _string,
    "FixedString": _fixed_string,
    "Date": _date,
    "Date32": _date,
    "DateTime": _datetime,
    "DateTime64": _datetime64,
    "UUID": _uuid,
    "Decimal": _decimal,
    **{name: _decimal for name in DECIMAL_SIZES},
    "Enum8": _enum,
    "Enum16": _enum,
    "IPv4": _ipv4,
    "IPv6": _ipv6,
    "Nullable": _nullable,
    "LowCardinality": _low_cardinality,
    "Array": _array,
    "Map": _map,
    "Tuple": _tuple,
    "JSON": _json,
    "BFloat16": _bfloat16,
    "Time": _time,
    "Time64": _time,
    "Nested": _nested,
    "SimpleAggregateFunction": _simple_aggregate_function,
    "Variant": _variant,
    "Dynamic": _dynamic,
}


def build_converter(
    type_text: str,
    features: ServerFeatures,
    epoch_unit: str = "s",
    timezone: str | None = None,
    server_timezone: str | None = None,
    objects_as_strings: bool = False,
) -> Callable[[Any], Any]:
    """A strict JSON-value -> driver-value function for one ClickHouse type.

    Raises SchemaError if the type is unsupported (by us or by the server); the
    returned function raises MappingError(reason, detail) for values it refuses.
    """
    converter = compile_type(
        type_text, features, epoch_unit, f"type {type_text}", timezone, server_timezone, objects_as_strings
    )
    inner = converter.convert

    def convert(value: Any) -> Any:
        try:
            return inner(value)
        except Rejected as e:
            raise MappingError(e.reason, f"value{e.where}: {e.message}") from None

    return convert


def compile_type(
    type_text: str,
    features: ServerFeatures,
    epoch_unit: str,
    where: str,
    timezone: str | None = None,
    server_timezone: str | None = None,
    objects_as_strings: bool = False,
) -> Converter:
    """The converter of one column's type; SchemaError listing every problem found in it.

    ``timezone`` (a column override) reads date-times without offset, before the
    column's own zone and ``server_timezone``; it is an error on a type without date-times.
    ``objects_as_strings``: String takes a JSON object or array as its compact JSON text.
    """
    try:
        node = parse_type(type_text)
    except ValueError as e:
        raise SchemaError(f"{where}: cannot parse type {type_text!r}: {e}") from None
    builder = Builder(features, epoch_unit, timezone, server_timezone, objects_as_strings)
    converter = builder.build(node)
    if timezone is not None and not builder.timezone_used:
        builder.problems.append(f"the timezone override applies to DateTime and DateTime64 only, not {node.name}")
    if builder.problems:
        unique = list(dict.fromkeys(builder.problems))
        # Version problems read as a sentence ("type IPv4 needs ..."), the rest after a colon.
        raise SchemaError([f"{where}: type {type_text}{' ' if p.startswith('needs') else ': '}{p}" for p in unique])
    return converter
