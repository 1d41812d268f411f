"""The ClickHouse side of a worker: table schema, constant defaults, columnar insert."""

from __future__ import annotations

import re
from typing import Any, Sequence

from clickhouse_driver import Client

from workers.clickhouse import indoubt, native
from workers.clickhouse.schema import ColumnMapper, ServerFeatures, TableColumn, compile_mapper
from workers.clickhouse.schema.mapper import DefaultText
from workers.clickhouse.schema.parser import ClickHouseType, parse_type


def quote_ident(name: str) -> str:
    """Backquote an identifier (config already restricts names; this guards SQL anyway)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def split_table(table: str, database: str) -> tuple[str, str]:
    """'db.t' -> ('db', 't'); 't' -> (database, 't')."""
    db, _, name = table.rpartition(".")
    return (db or database, name)


def qualified(table: str, database: str) -> str:
    db, name = split_table(table, database)
    return f"{quote_ident(db)}.{quote_ident(name)}"


def server_version(client: Client) -> tuple[int, ...]:
    """The server's version as a tuple of ints, e.g. (18, 16, 1)."""
    text = client.execute("SELECT version()")[0][0]
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def table_columns(client: Client, table: str, database: str) -> list[TableColumn]:
    """The table's columns from system.columns, in table order; [] if it does not exist."""
    db, name = split_table(table, database)
    rows = client.execute(
        "SELECT name, type, default_kind, default_expression FROM system.columns "
        "WHERE database = %(db)s AND table = %(t)s",
        {"db": db, "t": name},
    )
    # system.columns lists columns in table order on every version we support.
    return [TableColumn(name=r[0], type=r[1], default_kind=r[2], default_expression=r[3]) for r in rows]


# Functions whose value does not depend on when or where they are evaluated; a DEFAULT
# built only from these and literals can be evaluated once and sent with each row.
_PURE_CALL = re.compile(r"^(CAST|(?!today$)to[A-Za-z0-9]+|array|tuple|map|defaultValueOfTypeName)$")
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def _is_constant_expression(expr: str) -> bool:
    """True when `expr` is literals and pure conversions only (no columns, no now()/rand())."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expr)  # string literals cannot name anything
    # The type in CAST(x AS T) is not a column reference.
    text = re.sub(r"\bAS\s+[A-Za-z0-9_]+(\([^)]*\))?", " ", text, flags=re.I)
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if word.upper() in ("NULL", "TRUE", "FALSE", "INF", "NAN"):
            continue
        if text[m.end():].lstrip().startswith("(") and _PURE_CALL.match(word):
            continue
        return False
    return True


# Types the driver reads back inexactly (DateTime64 through a float of seconds: a
# nanosecond lost, 2299-12-31 23:59:59.999999 read as 2300): their constant DEFAULTs are
# read as the server's toString(), which their converter reads exactly.  Only where
# needed: 18.16's toString(Decimal128) writes garbage, and the driver reads Decimal,
# Date32, UUID, IPv6 and Enum exactly (tests/modern/test_defaults.py).
_AS_TEXT = frozenset({"DateTime64"})


def _as_text(t: ClickHouseType, x: str, depth: int = 0) -> str | None:
    """SQL turning `x` of type `t` into its text (arrays of it: arrays of text), or None for the driver's value."""
    if t.name in _AS_TEXT:
        return f"toString({x})"
    if t.name in ("Nullable", "LowCardinality") and len(t.args) == 1 and isinstance(t.args[0], ClickHouseType):
        return _as_text(t.args[0], x, depth)
    if t.name == "Array" and len(t.args) == 1 and isinstance(t.args[0], ClickHouseType):
        inner = _as_text(t.args[0], f"x{depth}", depth + 1)
        return None if inner is None else f"arrayMap(x{depth} -> {inner}, {x})"
    return None


def constant_defaults(client: Client, columns: Sequence[TableColumn]) -> dict[str, Any]:
    """Evaluate, once, the DEFAULT (and EPHEMERAL) expressions that are constants; keyed by column name.

    A value is as the driver reads it, or a DefaultText (the server's own text of it,
    which the column's converter reads) for DateTime64 (_AS_TEXT).  An expression the
    server cannot evaluate this way is left out (the column is then filled as one with a
    non-constant DEFAULT).
    """
    out: dict[str, Any] = {}
    for col in columns:
        if col.default_kind not in ("DEFAULT", "EPHEMERAL") or not col.default_expression:
            continue
        if not _is_constant_expression(col.default_expression):
            continue
        value = f"CAST(({col.default_expression}) AS {col.type})"
        try:
            text = _as_text(parse_type(col.type), value)
        except ValueError:
            text = None
        try:
            if text is not None:
                out[col.name] = DefaultText(client.execute(f"SELECT {text}")[0][0])
            else:
                out[col.name] = client.execute(f"SELECT {value}")[0][0]
        except Exception:  # noqa: BLE001  (e.g. a type the driver cannot read: the server fills it)
            continue
    return out


def server_timezone(client: Client) -> str:
    """The server's time zone: where it reads date-times without offset into columns that declare none."""
    return client.execute("SELECT timezone()")[0][0]


def build_mapper(
    client: Client,
    table: str,
    database: str,
    overrides: Sequence[Any],
    features: ServerFeatures,
    unknown_keys: str = "ignore",
    objects_as_strings: bool = True,
    **mapping: Any,
) -> ColumnMapper:
    """Read the table's schema and compile its ColumnMapper (raises SchemaError / LookupError).

    ``unknown_keys`` is the pipeline's setting: "ignore" or "dead_letter" documents with keys no column reads;
    ``objects_as_strings`` the pipeline's too (String columns store JSON objects and arrays as their text);
    ``mapping``: compile_mapper's shared_overrides, subject, partitions (see pipeline_mapping).
    """
    columns = table_columns(client, table, database)
    if not columns:
        db, name = split_table(table, database)
        raise LookupError(f"table {db}.{name} does not exist")
    return compile_columns(client, table, columns, overrides, features, unknown_keys, objects_as_strings, **mapping)


def pipeline_mapping(pipeline: Any, target: Any) -> dict[str, Any]:
    """compile_columns' arguments for one of a pipeline's tables (a workers.settings.TableTarget)."""
    return dict(
        overrides=target.columns, shared_overrides=target.shared, unknown_keys=pipeline.unknown_keys,
        objects_as_strings=pipeline.objects_as_strings, subject=pipeline.subject, partitions=pipeline.partitions,
    )


def compile_columns(
    client: Client,
    table: str,
    columns: Sequence[TableColumn],
    overrides: Sequence[Any],
    features: ServerFeatures,
    unknown_keys: str = "ignore",
    objects_as_strings: bool = True,
    **mapping: Any,
) -> ColumnMapper:
    """The ColumnMapper of `columns` as read from the table (evaluates its constant DEFAULTs; raises SchemaError).

    Each column is also tried on the driver, with the column writers a worker uses
    (workers.clickhouse.native): a type it cannot write is found here, not at the first insert.
    """
    native.install()
    return compile_mapper(
        table, columns, overrides, features, constant_defaults(client, columns), unknown_keys, server_timezone(client),
        writable=native.write_problem, objects_as_strings=objects_as_strings, **mapping,
    )


def insert(
    client: Client,
    table: str,
    database: str,
    column_names: Sequence[str],
    columns: list[list],
    settings: dict | None = None,
) -> int:
    """Insert columnar data; returns the row count ClickHouse accepted. `columns` are handed over (send_insert)."""
    return send_insert(client, insert_statement(table, database, column_names), columns, settings)


def insert_statement(table: str, database: str, column_names: Sequence[str]) -> str:
    """The INSERT statement for columnar data into `table`."""
    cols = ", ".join(quote_ident(c) for c in column_names)
    return f"INSERT INTO {qualified(table, database)} ({cols}) VALUES"


def send_insert(client: Client, statement: str, columns: list[list], settings: dict | None = None) -> int:
    """Run an INSERT statement with columnar data: the driver serialises and sends it.

    `settings` may carry `opentelemetry_traceparent` (servers >= 20.11), which
    clickhouse-driver sends in the query's client info rather than as a setting.
    Under an identity (`indoubt.run_as`) the insert gets its query_id and settings.
    `columns` are handed over: the driver may rewrite them in place (pass a copy you do not need again).
    """
    ident = indoubt.current.get()
    with native.columns_handed_over():  # the driver may rewrite `columns` in place: they are its own
        if ident is None:
            return client.execute(statement, columns, columnar=True, types_check=False, settings=settings)
        # A batch with a recorded range: the same query_id (and token) every time it is sent,
        # so that its next owner can tell whether it landed (workers/clickhouse/indoubt.py).
        settings = {**(settings or {}), **ident.settings()}
        return client.execute(
            statement, columns, columnar=True, types_check=False, settings=settings, query_id=ident.query_id
        )
