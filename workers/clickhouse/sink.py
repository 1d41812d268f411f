"""The ClickHouse side of a worker: table schema, constant defaults, columnar insert."""

from __future__ import annotations

import re
from typing import Any, Sequence

from clickhouse_driver import Client

from workers.clickhouse import indoubt
from workers.clickhouse.schema import ColumnMapper, ServerFeatures, TableColumn, compile_mapper


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
_PURE_CALL = re.compile(r"^(CAST|(?!today$)to[A-Za-z0-9]+|array|tuple|map)$")
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


def constant_defaults(client: Client, columns: Sequence[TableColumn]) -> dict[str, Any]:
    """Evaluate, once, the DEFAULT expressions that are constants; keyed by column name."""
    out: dict[str, Any] = {}
    for col in columns:
        if col.default_kind != "DEFAULT" or not col.default_expression:
            continue
        if not _is_constant_expression(col.default_expression):
            continue
        out[col.name] = client.execute(f"SELECT CAST(({col.default_expression}) AS {col.type})")[0][0]
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
) -> ColumnMapper:
    """Read the table's schema and compile its ColumnMapper (raises SchemaError / LookupError).

    ``unknown_keys`` is the pipeline's setting: "ignore" or "dead_letter" documents with keys no column reads.
    """
    columns = table_columns(client, table, database)
    if not columns:
        db, name = split_table(table, database)
        raise LookupError(f"table {db}.{name} does not exist")
    return compile_columns(client, table, columns, overrides, features, unknown_keys)


def compile_columns(
    client: Client,
    table: str,
    columns: Sequence[TableColumn],
    overrides: Sequence[Any],
    features: ServerFeatures,
    unknown_keys: str = "ignore",
) -> ColumnMapper:
    """The ColumnMapper of `columns` as read from the table (evaluates its constant DEFAULTs; raises SchemaError)."""
    return compile_mapper(
        table, columns, overrides, features, constant_defaults(client, columns), unknown_keys, server_timezone(client)
    )


def insert(
    client: Client,
    table: str,
    database: str,
    column_names: Sequence[str],
    columns: list[list],
    settings: dict | None = None,
) -> int:
    """Insert columnar data; returns the row count ClickHouse accepted."""
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
    """
    ident = indoubt.current.get()
    if ident is None:
        return client.execute(statement, columns, columnar=True, types_check=False, settings=settings)
    # A batch with a recorded range: the same query_id (and token) every time it is sent,
    # so that its next owner can tell whether it landed (workers/indoubt.py).
    settings = {**(settings or {}), **ident.settings()}
    return client.execute(
        statement, columns, columnar=True, types_check=False, settings=settings, query_id=ident.query_id
    )
