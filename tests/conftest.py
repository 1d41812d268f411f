"""Shared fixtures: a real nats-server and a real clickhouse-server per session.

A missing server binary fails the tests with an install instruction instead of
skipping them: a skipped integration suite would let CI go green untested.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import embedded, embedded_clickhouse, embedded_nats

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ is marked `integration`."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


def _fail_if_missing(find) -> None:
    try:
        find()
    except embedded.ServerNotFoundError as exc:
        missing = str(exc)
    else:
        return
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    _fail_if_missing(embedded_nats.find_nats_server)
    server = embedded_nats.start_nats(tmp_path_factory.mktemp("nats"), embedded.free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mapped_nats_server(tmp_path_factory):
    """A second nats-server whose account mappings tests add by config reload (stream_per_partition)."""
    _fail_if_missing(embedded_nats.find_nats_server)
    mappings: dict[str, str] = {}
    server = embedded_nats.start_nats(tmp_path_factory.mktemp("mapped-nats"), embedded.free_port(), mappings=mappings)
    yield server, mappings
    server.stop()


@pytest.fixture(params=["single_stream", "stream_per_partition"])
def layout(request) -> str:
    """Both stream layouts (pipelines[].layout), for the tests that prove the guarantees on each."""
    return request.param


@pytest.fixture
def layout_nats(layout, request):
    """The test's NATS for `layout`: the session's server, or one whose account maps subjects into partitions."""
    from tests.integration.harness import LayoutNats

    if layout == "single_stream":
        return LayoutNats(layout, request.getfixturevalue("nats_url"))
    return mapped_layout_nats(request.getfixturevalue("mapped_nats_server"))


@pytest.fixture
def mapped(mapped_nats_server):
    """The session's nats-server whose account mappings a test adds, as a stream_per_partition LayoutNats."""
    return mapped_layout_nats(mapped_nats_server)


def mapped_layout_nats(mapped_nats_server):
    from tests.integration.harness import LayoutNats

    server, mappings = mapped_nats_server
    return LayoutNats("stream_per_partition", f"nats://{server.host}:{server.port}", server, mappings)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory):
    _fail_if_missing(embedded_clickhouse.find_clickhouse_server)
    server = embedded_clickhouse.start_clickhouse(tmp_path_factory.mktemp("clickhouse"), embedded.free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server) -> str:
    return f"nats://{nats_server.host}:{nats_server.port}"


@pytest.fixture(scope="session")
def clickhouse_client(clickhouse_server):
    from clickhouse_driver import Client

    client = Client(host=clickhouse_server.host, port=clickhouse_server.port)
    yield client
    client.disconnect()


@pytest.fixture(scope="session")
def ch_version(clickhouse_client) -> tuple[int, ...]:
    from workers.clickhouse.sink import server_version

    return server_version(clickhouse_client)


@pytest.fixture
def ch_database(clickhouse_client) -> Iterator[str]:
    """A fresh, uniquely named database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    clickhouse_client.execute(f"CREATE DATABASE {name}")
    yield name
    clickhouse_client.execute(f"DROP DATABASE IF EXISTS {name}")
