"""ClickHouse column types -> strict converters from JSON values to driver values.

A table's schema (rows of ``system.columns``) and the pipeline's column
overrides are compiled ONCE into a :class:`ColumnMapper`; its
:meth:`ColumnMapper.map_rows` turns parsed JSON documents into the columnar
lists clickhouse-driver inserts.  Everything that can be known from the schema
(unknown types, types the server is too old for, bad override defaults,
overrides naming missing or computed columns) is a :class:`SchemaError` at
compile time, never a surprise at the first row.

Strictness: a value is stored only if it is exactly the value that was sent.
Nothing is wrapped, truncated, rounded or guessed, even where ClickHouse's own
text parsers would; such a document fails with :class:`MappingError` and goes
to the dead-letter queue instead.  What each type accepts is the table in
docs/configuration.md ("Mapping JSON to columns").

The package, by responsibility (as clickhouse-driver's ``columns/``):

- ``errors``: SchemaError, MappingError and the converters' Rejected;
- ``features``: ServerFeatures and the one ClickHouse version table;
- ``parser``: type strings -> ClickHouseType;
- ``converter``: the Converter record every family builds;
- ``numeric``, ``temporal``, ``text``, ``containers``: the converters by type family;
- ``builder``: type name -> factory, build_converter;
- ``mapper``: TableColumn, ColumnMapper, compile_mapper.
"""

from workers.clickhouse.schema.builder import build_converter
from workers.clickhouse.schema.builder import compile_type as _compile_type  # noqa: F401  (tests import it by this name)
from workers.clickhouse.schema.errors import MappingError, SchemaError
from workers.clickhouse.schema.features import ServerFeatures
from workers.clickhouse.schema.mapper import ColumnMapper, TableColumn, compile_mapper
from workers.clickhouse.schema.parser import ClickHouseType, parse_type

__all__ = [
    "ClickHouseType",
    "ColumnMapper",
    "MappingError",
    "SchemaError",
    "ServerFeatures",
    "TableColumn",
    "build_converter",
    "compile_mapper",
    "parse_type",
]
