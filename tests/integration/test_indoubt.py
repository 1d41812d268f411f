"""What ClickHouse's query log says about an insert whose client died, on the real server
(18.16 here): the facts workers/clickhouse/indoubt.py builds its answer on.  The query log does not know
the stream layout; what does is how batches are numbered (one stream's sequences, or each partition
stream's from 1), which the last test runs on both layouts."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from clickhouse_driver import Client

from tests.integration.harness import wait_until
from workers.clickhouse import indoubt

# A client that sends an insert's data block, or half of it, and dies (os._exit) before the
# end of the query: what a worker killed mid-insert leaves the server with.
_DYING_CLIENT = r"""
import os, socket, sys
from clickhouse_driver import Client
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
port, table, query_id, cut = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "half"
c = Client(host="127.0.0.1", port=port)
conn = c.connection
send_data = conn.send_data
sent = []
def dying_send_data(block, table_name=""):
    if not block.num_rows:
        if sent:
            os._exit(9)  # the whole block went out; die before the end-of-data packet
        return send_data(block, table_name)  # the empty block that ends the external tables
    sent.append(block)
    if not cut:
        send_data(block, table_name)
        conn.fout.flush()
        return
    conn.fout.flush()
    a, b = socket.socketpair()
    conn.fout = conn.block_out.fout = BufferedSocketWriter(a, 1 << 20)
    send_data(block, table_name)
    conn.fout.flush()
    a.close()
    data = b"".join(iter(lambda: b.recv(1 << 16), b""))
    conn.socket.sendall(data[: len(data) // 2])
    os._exit(9)
conn.send_data = dying_send_data
c.execute(f"INSERT INTO {table} (n) VALUES", [list(range(1000))], columnar=True,
          settings={"log_queries": 1}, query_id=query_id)
"""


def _table(client, db):
    table = f"{db}.t{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree() ORDER BY n")
    return table


def _dying_insert(port, table, query_id, cut):
    proc = subprocess.run(
        [sys.executable, "-c", _DYING_CLIENT, str(port), table, query_id, cut], capture_output=True, text=True
    )
    assert proc.returncode == 9, proc.stderr


def test_the_query_log_tells_whether_an_insert_landed(clickhouse_server, clickhouse_client, ch_database):
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    try:
        table = _table(client, ch_database)
        # The server process must visibly predate the inserts (its uptime, in whole seconds).
        wait_until(lambda: client.execute("SELECT uptime()")[0][0] > indoubt.UPTIME_MARGIN_S + 1, 30, "server uptime")
        began_at = time.time()
        ident = indoubt.identity("p", 0, 1, 1000, uuid.uuid4().int % 10**18, tokens=False)

        # Never sent: nothing logged by this very server process.
        assert indoubt.landed(client, ident.query_id, began_at) is False
        # Sent whole, then the client died before ending the query: the block is in the table.
        _dying_insert(clickhouse_server.port, table, ident.query_id, "whole")
        assert indoubt.landed(client, ident.query_id, began_at) is True
        assert client.execute(f"SELECT count() FROM {table}")[0][0] == 1000

        other = indoubt.identity("p", 0, 1001, 2000, uuid.uuid4().int % 10**18, tokens=False)
        # Cut mid-block: nothing in the table, and the log says so.
        _dying_insert(clickhouse_server.port, table, other.query_id, "half")
        assert indoubt.landed(client, other.query_id, began_at) is False
        assert client.execute(f"SELECT count() FROM {table}")[0][0] == 1000

        # An insert sent before this server process started: its silence proves nothing.
        third = indoubt.identity("p", 0, 2001, 3000, uuid.uuid4().int % 10**18, tokens=False)
        uptime = client.execute("SELECT uptime()")[0][0]
        assert indoubt.landed(client, third.query_id, time.time() - uptime - 60) is None
    finally:
        client.disconnect()


def test_the_query_log_tells_two_partitions_batches_apart(layout, clickhouse_server, ch_database):
    """On both layouts (tests/conftest.py's `layout`): the first batches of partitions 0 and 1 of one pipeline,
    as each layout numbers them.  One stream numbers both partitions' messages (single_stream: 1..1000 and
    1001..2000); with stream_per_partition each partition's stream numbers its own from 1, so both batches
    are 1..1000, here with the same first timestamp too.  Partition 0's insert landed and partition 1's was
    cut mid-block: each next owner's question is answered about its own insert."""
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    try:
        table = _table(client, ch_database)
        wait_until(lambda: client.execute("SELECT uptime()")[0][0] > indoubt.UPTIME_MARGIN_S + 1, 30, "server uptime")
        began_at = time.time()
        first_ts_ns = uuid.uuid4().int % 10**18
        other_first = 1 if layout == "stream_per_partition" else 1001
        p0 = indoubt.identity("p", 0, 1, 1000, first_ts_ns, tokens=False)
        p1 = indoubt.identity("p", 1, other_first, other_first + 999, first_ts_ns, tokens=False)
        assert p0.query_id != p1.query_id
        _dying_insert(clickhouse_server.port, table, p0.query_id, "whole")
        _dying_insert(clickhouse_server.port, table, p1.query_id, "half")
        assert indoubt.landed(client, p0.query_id, began_at) is True
        assert indoubt.landed(client, p1.query_id, began_at) is False
        assert client.execute(f"SELECT count() FROM {table}")[0][0] == 1000
    finally:
        client.disconnect()
