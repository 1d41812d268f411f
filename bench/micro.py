"""Micro-benchmarks of a worker's per-row hot path, without any server.

A batch costs, per message: intake (the NATS protocol read in bulk by
``workers.nats.wire.BulkParser``, batching, the batch's ack decision) -> ``orjson.loads``
-> ``ColumnMapper.map_rows`` -> the driver's client-side serialisation of the
columnar INSERT block.  Each step is
timed here on the demo table (config.yaml) with the bench's own traffic
(:class:`bench.events.EventTemplates`, 350-byte events by default like
``python -m bench``), as the median of repeated runs in microseconds per row::

    python -c "import bench.micro; bench.micro.main()"
    python -m bench.micro --rows 10000 --repeats 15

The serialisation step runs clickhouse-driver's own code (``column_chunks``, given a
copy of the columns as a worker gives it ->
``ColumnOrientedBlock`` -> ``BlockOutputStream`` -> ``write_column``, as
``Client.send_data`` does for ``columnar=True, types_check=False``) into a
socket writer whose socket only counts bytes: the network is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import clickhouse_driver.client
import orjson
from clickhouse_driver import defines
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.streams.native import BlockOutputStream
from clickhouse_driver.util.compat import get_localzone_name_compat
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str

from bench.events import EventTemplates
from supervisor.config import parse_config
from workers.clickhouse import native
from workers.clickhouse.schema import ColumnMapper, ServerFeatures, TableColumn, compile_mapper
from workers.partition import prepare as prep
from workers.settings import ColumnOverride
from workers.worker import GC_GEN0_THRESHOLD

# The demo table of config.yaml, as system.columns reports it, and its overrides.
DEMO_COLUMNS = (
    TableColumn("event_id", "String"),
    TableColumn("ts", "DateTime"),
    TableColumn("user_id", "UInt64"),
    TableColumn("kind", "String"),
    TableColumn("amount", "Float64"),
    TableColumn("country", "FixedString(2)"),
    TableColumn("tags", "Array(String)"),
    TableColumn("session_id", "UUID"),
    TableColumn("payload", "String"),
)
DEMO_OVERRIDES = (
    ColumnOverride("event_id", required=True),
    ColumnOverride("user_id", path=("user", "id"), required=True),
    ColumnOverride("ts", epoch_unit="ms"),
    ColumnOverride("tags", has_default=True, default=[]),
)
DEMO_FEATURES = ServerFeatures.from_version((23, 8, 1))
# The demo table with columns filled from the message (columns.<name>.source, issue 24).
META_COLUMNS = (
    TableColumn("subj", "LowCardinality(String)"),
    TableColumn("seq", "UInt64"),
    TableColumn("stored", "DateTime64(9, 'UTC')"),
    TableColumn("tenant", "String"),
    TableColumn("raw", "String"),
)
META_OVERRIDES = (
    ColumnOverride("subj", source="subject"),
    ColumnOverride("seq", source="stream_sequence"),
    ColumnOverride("stored", source="timestamp"),
    ColumnOverride("tenant", source="header", header="X-Tenant"),
    ColumnOverride("raw", source="message"),
)

DEFAULT_PAYLOAD_BYTES = 350  # bench/cli.py --payload-bytes
DEFAULT_ROWS = 10_000  # config.yaml batch.max_rows
DEFAULT_REPEATS = 15


def demo_mapper() -> ColumnMapper:
    # objects_as_strings as a pipeline's default (workers/settings.py) compiles it.  jetsink's column
    # writers installed as in a worker (its mapper then packs UUID columns for them).
    native.install()
    return compile_mapper("events", DEMO_COLUMNS, DEMO_OVERRIDES, DEMO_FEATURES, objects_as_strings=True)


def meta_mapper() -> ColumnMapper:
    """The demo mapper with five metadata columns (subject, sequence, stored time, a header, the raw message)."""
    native.install()
    return compile_mapper("events", DEMO_COLUMNS + META_COLUMNS, DEMO_OVERRIDES + META_OVERRIDES, DEMO_FEATURES,
                          objects_as_strings=True, subject="events.*", partitions=8)


def demo_messages(bodies: list[bytes]) -> list[tuple]:
    """The bodies as a partition holds them: (stored subject, ack subject, data, headers)."""
    return [
        (b"events.3.k%d" % (i % 256), b"$JS.ACK.EVENTS.jetsink_events_3.1.%d.%d.%d.%d" % (
            i + 1, i + 1, 1_765_000_000_000_000_000 + i * 1000, len(bodies) - i - 1), body,
         b"NATS/1.0\r\nX-Tenant: t%d\r\n\r\n" % (i % 7))
        for i, body in enumerate(bodies)
    ]


def demo_block(rows: int, payload_bytes: int = DEFAULT_PAYLOAD_BYTES) -> tuple[tuple[str, ...], list[str], list[list]]:
    """(column names, their types, the mapped columns) of `rows` demo events; all must map."""
    docs = [orjson.loads(b) for b in demo_bodies(rows, payload_bytes)]
    mapper = demo_mapper()
    columns, failures = mapper.map_rows(docs)
    if failures:
        raise AssertionError(f"demo events failed to map: {failures[:3]}")
    types = {c.name: c.type for c in DEMO_COLUMNS}
    return mapper.column_names, [types[n] for n in mapper.column_names], columns


def demo_bodies(rows: int, payload_bytes: int = DEFAULT_PAYLOAD_BYTES) -> list[bytes]:
    """The JSON bodies `python -m bench` publishes, messages 0..rows-1."""
    templates = EventTemplates(payload_bytes, size=min(rows, 10_000))
    return [templates.body(i) for i in range(rows)]


# --------------------------------------------------------------------------- serialisation

class CountingSocket:
    """Where the driver's socket writer flushes to: counts the bytes and drops them (or keeps them)."""

    def __init__(self, keep: bool = False) -> None:
        self.sent = 0
        self.kept: list[bytes] | None = [] if keep else None

    def sendall(self, data: bytes) -> None:
        self.sent += len(data)
        if self.kept is not None:
            self.kept.append(bytes(data))


class Serialiser:
    """clickhouse-driver's client side of one columnar INSERT's data, into a byte counter.

    With the column writers a worker installs (workers.clickhouse.native), as a worker runs it.
    """

    def __init__(self, column_names: Sequence[str], column_types: Sequence[str], keep: bool = False):
        native.install()
        revision = defines.CLIENT_REVISION
        # A server in the local zone: the driver then gives DateTime columns no zone to
        # convert to (our DateTime values are int epochs, which it never converts anyway).
        zone = get_localzone_name_compat()
        self.context = Context()
        self.context.server_info = ServerInfo("ClickHouse", 23, 8, 1, revision, zone, "micro", revision)
        self.context.settings = {}
        self.context.client_settings = {
            "insert_block_size": defines.DEFAULT_INSERT_BLOCK_SIZE,
            "strings_as_bytes": False,
            "strings_encoding": defines.STRINGS_ENCODING,
            "use_numpy": False,
            "input_format_null_as_default": False,
        }
        self.columns_with_types = list(zip(column_names, column_types, strict=False))
        self.socket = CountingSocket(keep)
        self.fout = BufferedSocketWriter(self.socket, defines.BUFFER_SIZE)
        self.stream = BlockOutputStream(self.fout, self.context)

    def write(self, columns: list[list]) -> int:
        """Serialise `columns` as Client.send_data + Connection.send_data do; returns the bytes written.

        `columns` are left unchanged: like a worker, the driver gets a copy (its UUID column
        rewrites a list of UUID objects in place).
        """
        before = self.socket.sent
        block_size = self.context.client_settings["insert_block_size"]
        # As a worker inserts: its copy of the batch's columns (faults.isolate_bad_rows), handed over
        # to the driver's column_chunks (workers.clickhouse.native.columns_handed_over).
        part = [col[:] for col in columns]
        with native.columns_handed_over():
            chunks = list(clickhouse_driver.client.column_chunks(part, block_size))
        for chunk in chunks:
            block = ColumnOrientedBlock(self.columns_with_types, chunk, types_check=False)
            write_varint(ClientPacketTypes.DATA, self.fout)
            write_binary_str("", self.fout)  # temporary table name
            self.stream.write(block)  # ends with a flush
        return self.socket.sent - before


# --------------------------------------------------------------------------- timing

@contextlib.contextmanager
def worker_gc():
    """The cyclic GC as a worker runs it (workers/worker.py): boot objects frozen, rare young collections.

    With CPython's default thresholds the collector would walk the batch's live
    objects every few hundred allocations, a cost the worker does not pay.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _median_us_per_row(run: Callable[[], Any], rows: int, repeats: int) -> float:
    # The thread's CPU time, not the wall clock: on a shared machine a run that is
    # descheduled half-way would otherwise count the other tenant's time.
    times = []
    with worker_gc():
        for _ in range(repeats):
            start = time.thread_time()
            run()
            times.append(time.thread_time() - start)
    return statistics.median(times) / rows * 1e6


def delivery_frames(bodies: list[bytes], chunk: int = 256 * 1024) -> list[bytes]:
    """`bodies` as JetStream delivers them to a pull inbox (HMSG with a Nats-Msg-Id
    header and a real ack subject), cut into socket reads of `chunk` bytes."""
    out = []
    for i, body in enumerate(bodies):
        headers = b"NATS/1.0\r\nNats-Msg-Id: e%012d\r\n\r\n" % i
        reply = b"$JS.ACK.EVENTS.jetsink_events_3.1.%d.%d.1790000000000000000.%d" % (
            8 * i + 3,
            i + 1,
            len(bodies) - i - 1,
        )
        out.append(
            b"HMSG events.3.k%d 7 %b %d %d\r\n%b%b\r\n"
            % (i % 32, reply, len(headers), len(headers) + len(body), headers, body)
        )
    data = b"".join(out)
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def bench_intake(frames: list[bytes], rows: int, repeats: int) -> float:
    """Median us/row of reading deliveries off the socket into a batch and deciding its ack."""
    import asyncio

    from workers.delivery.acks import AckTracker
    from workers.nats.wire import BulkParser
    from workers.partition.batch import Batch

    class _Client:  # what the parser asks of nats-py for routed messages
        stats = {"in_msgs": 0}

    def once() -> None:
        batch = Batch(rows, 1 << 40, 1.0)
        parser = BulkParser(_Client())
        parser.routes[b"7"] = batch.extend

        async def feed() -> None:
            for frame in frames:
                await parser.parse(frame)

        asyncio.run(feed())
        if len(batch) != rows or AckTracker(0, 0).stored(batch.messages, redelivered=False) is None:
            raise AssertionError("intake lost messages or refused to ack a clean batch")

    return _median_us_per_row(once, rows, repeats)


def bench_loads(msgs: list[tuple], repeats: int) -> float:
    """Median us/row of orjson.loads over the messages, as a worker calls it: one array of
    prepare.CHUNK messages at a time (workers.partition.prepare._loads_all)."""
    slices = [msgs[i : i + prep.CHUNK] for i in range(0, len(msgs), prep.CHUNK)]
    if [d for s in slices for d in prep._loads_all(s)] != [orjson.loads(m[2]) for m in msgs]:
        raise AssertionError("a slice's array parse differs from the messages parsed one by one")
    return _median_us_per_row(lambda: [prep._loads_all(s) for s in slices], len(msgs), repeats)


def bench_map(mapper: ColumnMapper, docs: list[Any], repeats: int) -> float:
    """Median us/row of mapper.map_rows(docs); every doc must map (asserts no failures)."""
    _, failures = mapper.map_rows(docs)
    if failures:
        raise AssertionError(f"demo events failed to map: {failures[:3]}")
    return _median_us_per_row(lambda: mapper.map_rows(docs), len(docs), repeats)


def bench_map_meta(mapper: ColumnMapper, docs: list[Any], msgs: list[tuple], repeats: int) -> float:
    """Median us/row of mapper.map_rows(docs, msgs) for a mapper with metadata columns."""
    _, failures = mapper.map_rows(docs, msgs)
    if failures:
        raise AssertionError(f"demo events failed to map: {failures[:3]}")
    return _median_us_per_row(lambda: mapper.map_rows(docs, msgs), len(docs), repeats)


def bench_prepare(msgs: list[tuple], repeats: int, chunk: int | None = None) -> float:
    """Median us/row of a worker's whole map step (workers.partition.prepare.prepare: parse, loads
    and map, in slices of prepare.CHUNK messages), or in slices of `chunk` (a batch's size: one pass)."""
    pipeline = {"name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 8, "table": "events"}
    target = prep.PartitionTarget(parse_config({"pipelines": [pipeline]}, Path(".")).pipelines[0], 3, "c", 0)
    mapper = demo_mapper()
    saved = prep.CHUNK
    prep.CHUNK = chunk or saved
    try:
        p = prep.prepare(msgs, mapper, target, first_deliveries=True)
        if p.dead or p.rows != len(msgs):
            raise AssertionError(f"demo events failed to map: {[d.error for d in p.dead[:3]]}")
        return _median_us_per_row(lambda: prep.prepare(msgs, mapper, target, first_deliveries=True), len(msgs),
                                  repeats)
    finally:
        prep.CHUNK = saved


def bench_serialise(serialiser: Serialiser, columns: list[list], repeats: int) -> float:
    """Median us/row of the driver's serialisation of `columns`."""
    rows = len(columns[0]) if columns else 0
    return _median_us_per_row(lambda: serialiser.write(columns), rows, repeats)


def run(
    rows: int = DEFAULT_ROWS, repeats: int = DEFAULT_REPEATS, payload_bytes: int = DEFAULT_PAYLOAD_BYTES
) -> dict[str, Any]:
    """All four steps; a dict of the figures (us/row) and what they were measured on."""
    bodies = demo_bodies(rows, payload_bytes)
    docs = [orjson.loads(b) for b in bodies]
    mapper = demo_mapper()
    columns, _ = mapper.map_rows(docs)
    types = {c.name: c.type for c in DEMO_COLUMNS}
    serialiser = Serialiser(mapper.column_names, [types[n] for n in mapper.column_names])
    result = {
        "rows": rows,
        "repeats": repeats,
        "mean_body_bytes": sum(map(len, bodies)) / rows,
        "intake_us": bench_intake(delivery_frames(bodies), rows, repeats),
        "loads_us": bench_loads(demo_messages(bodies), repeats),
        "map_us": bench_map(mapper, docs, repeats),
        "map_meta_us": bench_map_meta(meta_mapper(), docs, demo_messages(bodies), repeats),
        "prepare_us": bench_prepare(demo_messages(bodies), repeats),
        "prepare_one_pass_us": bench_prepare(demo_messages(bodies), repeats, chunk=rows),
        "serialise_us": bench_serialise(serialiser, columns, repeats),
        "block_bytes": serialiser.write(columns),
    }
    result["total_us"] = result["intake_us"] + result["loads_us"] + result["map_us"] + result["serialise_us"]
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']} demo events of {result['mean_body_bytes']:.0f} bytes, "
        f"median of {result['repeats']} runs",
        f"{'step':<28} {'us/row':>8}",
    ]
    for label, key in (
        ("intake (wire, batch, ack)", "intake_us"),
        ("orjson.loads (500 at once)", "loads_us"),
        ("ColumnMapper.map_rows", "map_us"),
        ("driver serialisation", "serialise_us"),
        ("total", "total_us"),
    ):
        lines.append(f"{label:<28} {result[key]:>8.3f}")
    lines.append(f"{'map_rows + 5 metadata cols':<28} {result['map_meta_us']:>8.3f}  (not in the total: "
                 "subject, sequence, stored time, a header, the raw message)")
    lines.append(f"{'prepare (loads + map)':<28} {result['prepare_us']:>8.3f}  (not in the total: a worker's map "
                 f"step, in slices of {prep.CHUNK} messages; the batch in one pass: "
                 f"{result['prepare_one_pass_us']:.3f})")
    lines.append(f"(block: {result['block_bytes']} bytes, {result['block_bytes'] / result['rows']:.1f} per row)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"events per batch (default {DEFAULT_ROWS})")
    p.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed runs per step (default {DEFAULT_REPEATS})"
    )
    p.add_argument(
        "--payload-bytes", type=int, default=DEFAULT_PAYLOAD_BYTES,
        help=f"size of each JSON event (default {DEFAULT_PAYLOAD_BYTES}, as python -m bench)",
    )
    args = p.parse_args(argv)
    if args.rows < 1 or args.repeats < 1 or args.payload_bytes < 0:
        p.error("--rows and --repeats must be >= 1, --payload-bytes >= 0")
    print(format_table(run(args.rows, args.repeats, args.payload_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
