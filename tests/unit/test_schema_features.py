"""workers/schema/features.py: what a server version supports, and the one version table."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from schema_cases import MODERN, OLD

from workers.clickhouse.schema import ServerFeatures
from workers.clickhouse.schema.features import VERSION_TABLE, version_table_markdown

CONFIGURATION_MD = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_feature_properties_by_version():
    assert OLD.type_needs("DateTime64") == (20, 1)
    assert OLD.type_needs("Map") == (21, 8)
    assert OLD.type_needs("IPv4") == (19, 3)
    assert OLD.type_needs("Bool") == (21, 12)
    assert OLD.type_needs("LowCardinality") is None  # 18.16 inserts into it (issue 13)
    assert not OLD.insert_deduplication_token
    assert not OLD.opentelemetry_traceparent
    assert MODERN.type_needs("DateTime64") is None
    assert MODERN.type_needs("Map") is None
    assert MODERN.type_needs("IPv4") is None
    assert MODERN.type_needs("Bool") is None
    assert MODERN.type_needs("Date32") is None
    assert MODERN.type_needs("LowCardinality") is None
    assert MODERN.insert_deduplication_token
    assert MODERN.opentelemetry_traceparent
    assert not ServerFeatures.from_version((22, 1)).insert_deduplication_token
    assert ServerFeatures.from_version((22, 2)).insert_deduplication_token
    assert ServerFeatures.from_version((21, 7, 9)).type_needs("Map") == (21, 8)
    assert ServerFeatures.from_version((21, 8)).type_needs("Map") is None
    assert OLD.date_range[1] == date(2105, 12, 31)
    assert MODERN.date_range[1] == date(2149, 6, 6)


def test_types_every_server_has_need_nothing():
    for name in ("UInt64", "String", "DateTime", "Decimal", "Nullable", "Array", "Tuple", "Enum8", "UUID"):
        assert OLD.type_needs(name) is None, name


def test_docs_version_table_is_the_code_table():
    text = CONFIGURATION_MD.read_text()
    m = re.search(r"<!-- versions: begin.*?-->\n(.*?)<!-- versions: end -->", text, re.S)
    assert m is not None, "docs/configuration.md lost its version-table markers"
    assert m[1] == version_table_markdown(), "regenerate it: python -m workers.clickhouse.schema.features"


def test_version_table_rows_are_in_the_docs_once():
    table = version_table_markdown()
    for row in VERSION_TABLE:
        assert table.count(f"| {row.what} |") == 1, row.what
