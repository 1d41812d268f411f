"""A worker process: owns its connections and the partitions the supervisor assigns to it.

The supervisor spawns `main()` (spawn context, so no threads or sockets are inherited)
and talks to it over a pipe with small dict messages:

    supervisor -> worker   {"op": "assign"|"release", "partitions": [[pipeline, index], ...]}
                           {"op": "drain"}, {"op": "refresh_schema"} (read every table again now)
    worker -> supervisor   {"op": "ready"}, {"op": "assigned"|"released", "partitions": [...]},
                           {"op": "stats", ...}, {"op": "drained"},
                           {"op": "schema", ...} after each read of a table (workers/clickhouse/table_schema.py)

Every control message may carry "traceparent": the supervisor span that caused it.
Liveness is a heartbeat the event loop writes into shared memory: if the loop is
stuck, the beat stops and the supervisor replaces the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import gc
import logging
import os
import signal
import sys
import time
from functools import partial
from typing import Any

from workers import exitcodes
from workers.clickhouse import faults, native, sink
from workers.clickhouse.connect import clickhouse_where
from workers.clickhouse.schema import ServerFeatures
from workers.clickhouse.shards import Shards
from workers.clickhouse.table_schema import SchemaWatch, TableSchema, unused_overrides
from workers.delivery import commits
from workers.nats import streams
from workers.nats.connect import connect_nats, nats_answers
from workers.observability.logs import setup_logging
from workers.observability.profiling import memory_profile
from workers.observability.telemetry import Telemetry
from workers.observability.telemetry import setup as setup_telemetry
from workers.partition.prepare import PartitionTarget
from workers.partition.retry import ServerProbes
from workers.partition.runner import PartitionRunner
from workers.partition.writer import WriteTable
from workers.settings import Config, profiles_dir, targets
from workers.topology import consumer_name, partition_view

log = logging.getLogger("jetsink.worker")

# A partition's loops turn at least every few seconds (pull requests expire within 5 s,
# retries back off at most 30 s and probe a server that is away every 0.5 s, an insert
# times out after send_receive_timeout_s).
STALL_TIMEOUT_S = 180.0
# A NATS outage is waited out in the process, however long: nats-py reconnects every
# reconnect_time_wait.  Only a client still not connected this long after a server
# accepts connections again is given up (a fresh process connects cleanly).
NATS_STUCK_RESTART_S = 20.0
# The cyclic GC (see main()): young collections only after this many net allocations,
# and a full collection every GC_INTERVAL_S from the beat loop.
GC_GEN0_THRESHOLD = 1_000_000
GC_INTERVAL_S = 30.0


class BootError(Exception):
    """The worker cannot start and restarting it will not help."""


class Worker:
    """The event loop side of a worker process."""

    def __init__(
        self, slot: int, config: Config, conn: Any, heartbeat: Any, telemetry: Telemetry | None = None
    ) -> None:
        self.slot = slot
        self.config = config
        self._telemetry = telemetry or Telemetry()
        self._conn = conn
        self._heartbeat = heartbeat
        self._control: asyncio.Queue[dict] = asyncio.Queue()
        self._runners: dict[tuple[str, int], PartitionRunner] = {}
        self._pipelines = {p.name: p for p in config.pipelines}
        # One thread does the CPU- and network-bound part of a batch (parse, map, insert)
        # so the event loop keeps fetching; clickhouse-driver's Client is not thread-safe,
        # and a single thread owning it is the simplest way to honour that.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"insert-{slot}")
        self._parent = os.getppid()
        self._nats_down_since: float | None = None
        self._nats_answers_since: float | None = None  # while not connected: since when a server accepts
        self._gc_at = time.monotonic()
        self._tending: asyncio.Future | None = None  # the replica set's look at its preferred replica
        self._exit_hook = commits.ExitHook.from_env()  # tests only: the in-doubt batch on demand

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))

    def _send(self, msg: dict) -> None:
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError):
            pass  # the supervisor is gone; the loop notices and drains

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: self._control.put_nowait({"op": "drain"}))
        loop.add_reader(self._conn.fileno(), self._read_control)
        self._beat()
        try:
            await self._boot()
        except BootError as exc:
            log.error("worker cannot start: %s", exc)
            self._send({"op": "fatal", "error": str(exc)})
            return exitcodes.BOOT
        self._telemetry.observe_pending(self._pending)
        self._send({"op": "ready", "pid": os.getpid()})
        beats = asyncio.create_task(self._beat_loop())
        schema_reads = asyncio.create_task(self._schemas.run())
        try:
            await self._control_loop()
        finally:
            beats.cancel()
            schema_reads.cancel()
            await self._nc.drain() if self._nc.is_connected else await self._nc.close()
            self._pool.shutdown(wait=True)
        return exitcodes.OK

    async def _boot(self) -> None:
        cfg = self.config
        # One client per replica of each shard (`clickhouse.hosts` is one shard), this slot's preferred
        # first; the schema reads (through its `execute`) and the inserts follow its failovers, and each
        # batch is split over the shards (workers/clickhouse/shards.py, replicas.py).
        self._replicas = Shards(cfg.clickhouse, preferred=self.slot, who=f"worker {self.slot}",
                                log_extra={"slot": self.slot})
        self._client = self._replicas
        # (database, table) -> the pipeline's sharding_key (workers/clickhouse/shards.py), for each table it writes.
        self._sharding_keys = {
            sink.split_table(table, cfg.clickhouse.database): p.sharding_key for p in cfg.pipelines
            for table in (p.table, *(getattr(r, "table", None) for r in getattr(p, "routes", ()))) if table
        }
        where = clickhouse_where(cfg.clickhouse)
        # The servers may still be coming up (embedded mode, a restart): keep trying,
        # beating meanwhile, and only a schema problem is fatal.
        delay = 0.5
        while True:
            try:
                version = await self._in_thread(sink.server_version, self._client)
                break
            except Exception as exc:
                log.warning("waiting for %s: %s", where, exc)
                self._beat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._features = ServerFeatures.from_version(version)
        loop = asyncio.get_running_loop()

        def report(msg: dict) -> None:  # from the insert thread: the pipe is the loop's
            loop.call_soon_threadsafe(self._send, msg)

        tables = {}
        for p in cfg.pipelines:
            for t in targets(p):
                schema = tables[(p.name, t.label)] = TableSchema.for_target(
                    self._client, p, t, cfg.clickhouse.database, self._features, report)
                try:
                    await self._in_thread(schema.read, "start")
                except faults.TableUnusable as exc:  # a table we cannot map: restarting will not help
                    where = p.name if t.label is None else f"{p.name} route {t.label}"
                    raise BootError(f"pipelines {where}: {exc}") from exc
            problem = unused_overrides(p, [tables[(p.name, t.label)].mapper for t in targets(p)])
            if problem:
                raise BootError(f"pipelines {p.name}: {problem}")
        self._schemas = SchemaWatch(tables, self._in_thread)
        delay = 0.5
        while True:
            try:
                self._nc = await connect_nats(cfg.nats, name=f"jetsink-worker-{self.slot}",
                                              reconnected=self._reconnected)
                break
            except ConnectionError as exc:  # an outage is waited out, beating meanwhile
                log.warning("waiting for nats: %s", exc)
                self._beat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.info(
            "worker ready: %s, nats %s",
            where,
            ",".join(cfg.nats.servers),
            extra={"clickhouse_version": ".".join(map(str, version)),
                   "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]},
        )

    def _read_control(self) -> None:
        try:
            while self._conn.poll():
                self._control.put_nowait(self._conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._control.put_nowait({"op": "drain", "why": "supervisor gone"})

    def _beat(self) -> None:
        self._heartbeat.value = time.monotonic()

    async def _beat_loop(self) -> None:
        while True:
            self._beat()
            if os.getppid() != self._parent:
                self._control.put_nowait({"op": "drain", "why": "supervisor gone"})
            now = time.monotonic()
            if self._nc.is_connected:
                self._nats_down_since = self._nats_answers_since = None
            else:
                # An outage is waited out here (the partitions pause, nothing is lost): a
                # restart would cost a boot and a takeover per partition when NATS is back.
                self._nats_down_since = self._nats_down_since or now
                if not await nats_answers(self.config.nats):
                    self._nats_answers_since = None
                elif self._nats_answers_since is None:
                    self._nats_answers_since = now
                elif now - self._nats_answers_since > NATS_STUCK_RESTART_S:
                    # nats-py can stay "reconnecting" for good after a server restart even
                    # when the server is back (seen in the chaos tests). A fresh process
                    # connects cleanly, and JetStream redelivers whatever this one had not acked.
                    log.error(
                        "nats %s: not connected for %.0fs, %.0fs of them while the server accepts connections; "
                        "restarting the worker",
                        ",".join(self.config.nats.servers),
                        now - self._nats_down_since,
                        now - self._nats_answers_since,
                    )
                    sys.stdout.flush()
                    os._exit(1)
            for runner in list(self._runners.values()):
                stalled = runner.stalled_for(now)
                if stalled > STALL_TIMEOUT_S:
                    # Liveness is progress: a partition stuck this long is a bug we must
                    # not sit on. Dump where it is stuck and let the supervisor restart
                    # us; JetStream redelivers what was not acked.
                    log.error(
                        "partition %s made no progress for %.0fs; exiting. Stacks:\n%s",
                        runner.name,
                        stalled,
                        runner.stacks(),
                    )
                    sys.stdout.flush()
                    os._exit(1)
                exc = runner.failed()
                if exc is not None:
                    # A partition task died of a bug; without it the partition would stall
                    # silently. Exiting makes the supervisor restart us, and JetStream
                    # redelivers what was not acked.
                    log.error("partition %s failed: %r", runner.name, exc, exc_info=exc)
                    os._exit(1)
            if self._replicas.return_due() and (self._tending is None or self._tending.done()):
                # Back to the preferred ClickHouse replica once it is healthy, with or without traffic.
                self._tending = asyncio.ensure_future(self._in_thread(self._replicas.tend))
            if now - self._gc_at > GC_INTERVAL_S:
                # The only cyclic garbage left on the hot path is clickhouse-driver's
                # (each column object and its serializer refer to each other: ~30 small
                # objects per insert); collected here, it never adds up.
                self._gc_at = now
                gc.collect()
            self._send({
                "op": "stats", "partitions": {f"{k[0]}/{k[1]}": vars(r.stats) for k, r in self._runners.items()},
                "telemetry_dropped": self._telemetry.dropped(),
                "clickhouse": self._replicas.view(),
            })
            await asyncio.sleep(1.0)

    async def _control_loop(self) -> None:
        while True:
            msg = await self._control.get()
            # A child of the supervisor span that sent it (its "traceparent"), if any.
            with self._telemetry.control_span(msg):
                op = msg.get("op")
                if op == "assign":
                    for pipeline, index in msg["partitions"]:
                        await self._acquire(pipeline, index)
                    self._send({"op": "assigned", "partitions": msg["partitions"]})
                elif op == "release":
                    await self._release([tuple(p) for p in msg["partitions"]])
                    self._send({"op": "released", "partitions": msg["partitions"]})
                elif op == "refresh_schema":
                    self._schemas.refresh_all()
                elif op == "drain":
                    log.info("draining (%s)", msg.get("why", "asked"))
                    await self._release(list(self._runners))
                    self._send({"op": "drained"})
                    return
                else:
                    log.warning("unknown control message %r", msg)

    async def _acquire(self, pipeline: str, index: int) -> None:
        key = (pipeline, index)
        if key in self._runners:
            return
        p = self._pipelines[pipeline]
        db = self.config.clickhouse.database
        tables = [WriteTable(schema, partial(self._insert_columns, schema.table, db))
                  for schema in self._schemas.of(pipeline)]
        # The pipeline as this partition reads it: `stream` is the partition's own with stream_per_partition.
        target = PartitionTarget(
            pipeline=partition_view(p, index), index=index, consumer=consumer_name(pipeline, index), worker=self.slot,
            replicas=streams.replicas_of(self.config.nats.replicas, self._nc._server_info),
        )
        runner = PartitionRunner(
            self._nc, target, tables, self._in_thread, self._telemetry,
            clickhouse=self._replicas.query_log([t.schema.table for t in tables], db),
            tokens=self._features.insert_deduplication_token,
            exit_hook=self._exit_hook,
            probes=ServerProbes(self._nc, self._replicas.answers),
        )
        await runner.start()
        self._runners[key] = runner
        log.info("acquired partition %s", runner.name, extra={"pipeline": pipeline, "partition": index})

    async def _reconnected(self) -> None:
        """NATS is back (nats-py reconnected): the partitions' pull requests went with the old connection."""
        for runner in list(self._runners.values()):
            runner.reconnected()

    def _insert_columns(self, table: str, database: str, names: tuple[str, ...], columns: list[list]) -> int:
        statement = sink.insert_statement(table, database, names)
        # The telemetry's spans and timing wrap the call; with a trace, settings carry its context to the server.
        db, name = sink.split_table(table, database)

        def send(client: Any, part: list[list]) -> int:  # on a shard's replica in use; see Shards.insert
            with self._telemetry.insert(client, db, name, statement, len(part[0]) if part else 0,
                                        self._features) as settings:
                return sink.send_insert(client, statement, part, settings)

        key = self._sharding_keys.get((db, name))
        return self._replicas.insert(table, database, key, names, columns, send)

    def _pending(self) -> list[tuple[str, int, int]]:
        """(pipeline, partition, pending) per owned partition, for the consumer.pending gauge."""
        return [(k[0], k[1], r.stats.pending) for k, r in list(self._runners.items())]

    async def _release(self, keys: list[tuple[str, int]]) -> None:
        runners = [self._runners.pop(k) for k in keys if k in self._runners]
        await asyncio.gather(*(r.stop() for r in runners))
        for r in runners:
            log.info(
                "released partition %s (consumed %d, inserted %d, dead-lettered %d, skipped as stored %d)",
                r.name, r.stats.consumed, r.stats.inserted, r.stats.dead_lettered, r.stats.skipped_duplicates,
                extra={"pipeline": r.target.pipeline.name, "partition": r.target.index},
            )


# The worker's event loop: asyncio's own, or uvloop (libuv; the optional extra jetsink[uvloop]) with
# JETSINK_EVENT_LOOP=uvloop. Measured against each other in 1M-event drains (docs/benchmarks.md,
# "The worker's event loop"): no win beyond this machine's noise, so asyncio's stays the default.
EVENT_LOOP_ENV = "JETSINK_EVENT_LOOP"


def run_loop(main: Any) -> Any:
    """asyncio.run(main) on the event loop the environment names (asyncio's own by default)."""
    loop = os.environ.get(EVENT_LOOP_ENV, "asyncio")
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            log.error("%s=uvloop, but uvloop is not installed (pip install 'jetsink[uvloop]')", EVENT_LOOP_ENV)
            return exitcodes.BOOT
        return uvloop.run(main)
    if loop != "asyncio":
        main.close()
        log.error("%s must be asyncio or uvloop, got %r", EVENT_LOOP_ENV, loop)
        return exitcodes.BOOT
    return asyncio.run(main)


def main(slot: int, config: Config, conn: Any, heartbeat: Any) -> None:
    """Process entry point (multiprocessing spawn target); `config` arrives pickled."""
    # Ctrl-C in a terminal reaches the whole process group; only the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A stuck worker gets SIGABRT from the supervisor: dump every thread's stack first.
    faulthandler.enable()
    setup_logging(config.log_level, role="worker", slot=slot)
    # Providers are built here, in the new process, never inherited.
    telemetry = setup_telemetry(config.observability, role="worker", slot=slot)
    # A worker holds ~100k live message objects at a time, and a young collection walks
    # every one of them (a cache miss each): 50-100 ms a time. Nothing on the hot path
    # makes big cycles (every batch is freed by reference counting the moment its
    # insert returns; tests/unit/test_faults.py checks the insert path), so young
    # collections are kept rare (net allocations, not allocations, count towards the
    # threshold) and the beat loop collects the driver's small cycles every 30 s.
    # Both together cut the sink's CPU per message by ~20 % (docs/benchmarks.md).
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    # clickhouse-driver's column writers without their per-row Python loops (same bytes).
    native.install()
    try:
        # With profiling.memory, the whole worker runs under memray (workers/observability/profiling.py).
        with memory_profile(profiles_dir(config), slot, config.observability.profiling.memory):
            code = run_loop(Worker(slot, config, conn, heartbeat, telemetry).run())
    except Exception:
        log.exception("worker crashed")
        code = 1
    telemetry.shutdown()
    sys.stdout.flush()
    os._exit(code)
