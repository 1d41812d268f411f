"""Fixtures of the modern-ClickHouse layer: ClickHouse 26.x's engine in process (chdb-core, a test extra).

A missing chdb fails these tests with an install instruction instead of skipping them,
as a missing server binary fails the integration tests.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import orjson
import pytest

from workers.clickhouse import native, sink
from workers.clickhouse.schema import ServerFeatures
from workers.clickhouse.schema.mapper import omission_groups


@pytest.fixture(scope="session")
def chdb_session() -> Iterator[Any]:
    try:
        from chdb import session
    except ImportError:
        pytest.fail("chdb-core is not installed: pip install -e '.[test]' (it is a test extra)", pytrace=False)
    s = session.Session()
    yield s
    s.close()


@pytest.fixture(scope="session")
def modern_client(chdb_session):
    from tests.modern.chdb_client import ChdbClient

    return ChdbClient(chdb_session)


@pytest.fixture
def modern_db(modern_client) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    modern_client.query(f"CREATE DATABASE {name}")
    yield name
    modern_client.query(f"DROP DATABASE IF EXISTS {name}")


class Modern:
    """jetsink's path into a table of the chdb engine, and ClickHouse's own JSON parser into its twin."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.database = database
        self.features = ServerFeatures.from_version(client.version)

    def create(self, name: str, ddl: str, settings: str = "") -> str:
        table = f"{self.database}.{name}"
        self.client.query(f"CREATE TABLE {table} ({ddl}) ENGINE = Memory{settings}")
        return table

    def mapper(self, table: str, overrides=(), unknown_keys: str = "ignore", **options: Any):
        return sink.build_mapper(self.client, table, self.database, overrides, self.features, unknown_keys, **options)

    def store(self, table: str, texts: list[str], overrides=(), unknown_keys: str = "ignore", **options: Any):
        """Map ``texts`` with the mapper built from the table and insert them; {index: (reason, detail)}."""
        mapper = self.mapper(table, overrides, unknown_keys, **options)
        columns, failures = mapper.map_rows([orjson.loads(t) for t in texts])
        if columns and columns[0]:
            groups = omission_groups(mapper, columns)  # rows leaving columns to the server, as TableSchema inserts
            for names, part in [(mapper.column_names, columns)] if groups is None else \
                    [(g.names, g.columns) for g in groups]:
                sink.insert(self.client, table, self.database, names, part)
        return {i: (e.reason, e.detail) for i, e in failures}

    def parse(self, table: str, texts: list[str]) -> None:
        """ClickHouse's own JSONEachRow parser (best-effort date-times, as jetsink reads them) into ``table``."""
        body = "\n".join(texts)
        self.client.query(
            f"INSERT INTO {table} SETTINGS date_time_input_format = 'best_effort' FORMAT JSONEachRow {body}"
        )

    def rows(self, table: str, order: str = "id") -> list[dict]:
        text = self.client.query(
            f"SELECT * FROM {table} ORDER BY {order} "
            "SETTINGS output_format_json_quote_denormals = 1, output_format_json_quote_64bit_integers = 1",
            "JSONEachRow",
        )
        return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture
def modern(modern_client, modern_db) -> Iterator[Modern]:
    was = native.installed()
    native.install()
    yield Modern(modern_client, modern_db)
    if not was:
        native.uninstall()
