"""Smoke tests for the real servers that embedded mode and the fixtures start."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import nats
import psutil
import pytest
from nats.js.api import StreamConfig

from supervisor import embedded, embedded_clickhouse, embedded_nats


def test_jetstream_stores_and_returns_a_message(nats_url):
    async def roundtrip():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="SMOKE", subjects=["smoke.>"]))
            ack = await js.publish("smoke.one", b"hello", headers={"k": "v"})
            stored = await js.get_msg("SMOKE", ack.seq)
            await js.delete_stream("SMOKE")
            return ack, stored
        finally:
            await nc.close()

    ack, stored = asyncio.run(roundtrip())

    assert ack.stream == "SMOKE"
    assert stored.subject == "smoke.one"
    assert stored.data == b"hello"
    assert stored.headers["k"] == "v"


def test_clickhouse_columnar_insert_reads_back(clickhouse_client, ch_database):
    table = f"{ch_database}.t"
    clickhouse_client.execute(
        f"CREATE TABLE {table} (a UInt32, b String) ENGINE = MergeTree() ORDER BY a"
    )

    clickhouse_client.execute(
        f"INSERT INTO {table} (a, b) VALUES", [[1, 2], ["x", "y"]], columnar=True
    )

    assert clickhouse_client.execute(f"SELECT a, b FROM {table} ORDER BY a") == [
        (1, "x"),
        (2, "y"),
    ]


def test_ch_database_is_fresh(clickhouse_client, ch_database):
    assert clickhouse_client.execute(f"SHOW TABLES FROM {ch_database}") == []


def test_version_is_detected(ch_version):
    assert isinstance(ch_version, tuple)
    assert all(isinstance(part, int) for part in ch_version)
    assert ch_version >= (18,)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _start(kind: str, data_dir: Path, port: int, **kwargs) -> embedded.ServerProcess:
    start = {"nats": embedded_nats.start_nats, "clickhouse": embedded_clickhouse.start_clickhouse}[kind]
    return start(data_dir, port, **kwargs)


@pytest.mark.parametrize("kind", ["nats", "clickhouse"])
def test_stop_frees_the_port(kind, tmp_path):
    port = embedded.free_port()
    server = _start(kind, tmp_path, port)
    assert not _port_is_free(server.host, port)

    server.stop()

    assert server.proc.returncode is not None
    assert _port_is_free(server.host, port)
    server.stop()  # a second stop is harmless


@pytest.mark.parametrize("kind", ["nats", "clickhouse"])
def test_taken_port_is_a_clear_error(kind, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(embedded.ServerStartError) as caught:
            _start(kind, tmp_path, port, ready_timeout=30)

    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "--- last " in message  # log lines are shown
    assert "already in use" in message.lower()


def test_clickhouse_binary_override_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("JETSINK_CLICKHOUSE_BIN", str(tmp_path / "no-such-clickhouse"))

    with pytest.raises(embedded.ServerNotFoundError, match="JETSINK_CLICKHOUSE_BIN"):
        embedded_clickhouse.find_clickhouse_server()


def test_server_dies_with_a_killed_parent(tmp_path):
    """A kill -9'd parent must not leave its nats-server holding the port."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from supervisor import embedded, embedded_nats
                server = embedded_nats.start_nats(Path({str(tmp_path)!r}), embedded.free_port())
                print(server.pid, server.port, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        child_pid, port = map(int, parent.stdout.readline().split())
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()

    try:
        psutil.Process(child_pid).wait(timeout=15)
    except psutil.TimeoutExpired:
        # Reparented to an init that does not reap: a zombie is dead enough.
        assert psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    assert _port_is_free("127.0.0.1", port)
