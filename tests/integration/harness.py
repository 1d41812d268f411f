"""Run the real supervisor as a user would (`python -m supervisor --config FILE`) against test servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from clickhouse_driver import Client

from supervisor import embedded, embedded_clickhouse, embedded_nats
from supervisor.admin import admin_address, fetch_status
from supervisor.config import load_config

REPO = Path(__file__).resolve().parents[2]

# The demo table's columns (config.yaml's create_table), for tests that make it with other engines.
DEMO_COLUMNS = """(
  event_id String, ts DateTime, user_id UInt64, kind String, amount Float64,
  country FixedString(2), tags Array(String), session_id UUID, payload String
)"""
DEMO_TABLE = "CREATE TABLE IF NOT EXISTS {table} " + DEMO_COLUMNS + " ENGINE = MergeTree() ORDER BY (kind, ts)"


def pipeline_names(tag: str) -> tuple[dict[str, str], str]:
    """Fresh names for one test's pipeline (tests share a nats-server and a database server):
    {name: <tag><hex>, stream: <TAG>_<hex>, subject: <tag><hex>.*} for sink_config(**names),
    and the prefix events are published under (<prefix>.<key>)."""
    h = uuid.uuid4().hex[:8]
    return {"name": f"{tag}{h}", "stream": f"{tag.upper()}_{h}", "subject": f"{tag}{h}.*"}, f"{tag}{h}"


def sink_config(
    tmp_path: Path,
    nats_url: str,
    ch_port: int,
    database: str,
    *,
    name: str = "events",
    stream: str = "EVENTS",
    subject: str = "events.*",
    partitions: int = 8,
    workers: int = 2,
    max_rows: int = 5000,
    max_wait_ms: int = 200,
    ack_wait_s: float = 4.0,
    pipeline: dict | None = None,
    nats: dict | None = None,
    clickhouse: dict | None = None,
    **extra: Any,
) -> Path:
    """Write a config.yaml for one demo pipeline and return its path.

    `pipeline`, `nats` and `clickhouse` add keys to (or replace keys of) those sections;
    `extra` sets top-level keys."""
    data = {
        "workers": workers,
        "shutdown_grace_s": 30,
        "state_dir": str(tmp_path / "var"),
        "log_level": "info",
        "nats": {"url": nats_url},
        "clickhouse": {"host": "127.0.0.1", "port": ch_port, "database": database},
        # Many supervisors run at once in the suite: each gets a free admin port.
        "admin": {"listen": "127.0.0.1:0"},
        "pipelines": [
            {
                "name": name,
                "stream": stream,
                "subject": subject,
                "partitions": partitions,
                "table": "events",
                "create_table": DEMO_TABLE.format(table=f"{database}.events"),
                "batch": {"max_rows": max_rows, "max_wait_ms": max_wait_ms},
                "ack_wait_s": ack_wait_s,
                "columns": {
                    "event_id": {"required": True},
                    "user_id": {"path": "user.id", "required": True},
                },
            }
        ],
    }
    data["pipelines"][0].update(pipeline or {})
    data["nats"].update(nats or {})
    data["clickhouse"].update(clickhouse or {})
    data.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def event_counts(client: Client, db: str) -> tuple[int, int]:
    """(rows, distinct event_ids) in `db`.events."""
    return client.execute(f"SELECT count(), uniqExact(event_id) FROM {db}.events")[0]


@contextmanager
def under_load(
    cfg: Path, log_path: Path, nats_url: str, prefix: str, total: int, rate: float, partitions: int
) -> Iterator[tuple["Supervisor", "Load"]]:
    """A supervisor owning `partitions` partitions, and a Load publishing events 0..total-1 to it at
    `rate`/s; the supervisor is closed on the way out."""
    sup = Supervisor(cfg, log_path)
    try:
        sup.wait_acquired(partitions)
        load = Load(nats_url, prefix, 0, total, rate)
        load.start()
        yield sup, load
    finally:
        sup.close()


def rows_flowing(sup: "Supervisor", client: Client, db: str, n: int = 3000) -> None:
    """Wait until `db`.events holds more than n rows."""
    sup.wait(lambda: event_counts(client, db)[0] > n, 60, "rows flowing")


def all_once(sup: "Supervisor", client: Client, db: str, total: int, timeout: float = 180.0) -> tuple[int, int]:
    """Wait until events 0..total-1 (bench.events ids) are all in `db`.events; return (lost, duplicates)
    counted there, failing if the table holds an event_id outside them."""
    sup.wait(lambda: event_counts(client, db)[1] >= total, timeout, f"all {total} event_ids")
    rows, distinct = event_counts(client, db)
    assert (
        client.execute(f"SELECT count() FROM {db}.events WHERE toUInt64(substring(event_id, 2)) >= {total}")[0][0] == 0
    )
    return total - distinct, rows - distinct


def resent_unknown(sup: "Supervisor") -> int:
    """Rows the workers sent again because ClickHouse, restarted, could not say whether a failed insert
    had landed (each logged with its range): the only duplicates a clickhouse-server kill -9 may leave
    in a plain MergeTree before 22.2 (docs/architecture.md, the guarantee table)."""
    return sum(int(line.get("rows", 0)) for line in sup.logged("cannot tell whether the failed insert"))


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Supervisor:
    """`python -m supervisor --config FILE` as a child process, its JSON logs in a file.

    Readiness, workers and partitions come from the admin endpoint's /status (found the
    way `python -m supervisor status` finds it); the log is for asserting what was said.
    """

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._config = load_config(config)
        self._log = open(log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(config)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    def lines(self) -> list[dict]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"msg": raw, "raw": True})
        return out

    def logged(self, text: str) -> list[dict]:
        return [line for line in self.lines() if text in str(line.get("msg", ""))]

    def address(self, timeout: float = 60.0) -> str:
        """host:port of the admin endpoint, once the supervisor listens."""
        return self.wait(lambda: admin_address(self._config), timeout, "the admin endpoint")

    def status(self) -> dict | None:
        """The supervisor's /status now; None before its endpoint answers."""
        address = admin_address(self._config)
        if address is None:
            return None
        try:
            return fetch_status(address)
        except (OSError, ValueError):
            return None

    def workers(self) -> list[dict]:
        """/status's workers (slot, pid, ready, partitions, ...); [] before it answers."""
        return (self.status() or {}).get("workers") or []

    def wait_acquired(self, partitions: int, timeout: float = 60.0) -> None:
        """Until every worker is ready and together they own at least `partitions` partitions."""
        def owned() -> bool:
            workers = self.workers()
            return bool(workers) and all(w["ready"] for w in workers) and \
                sum(len(w["partitions"]) for w in workers) >= partitions
        self.wait(owned, timeout, f"{partitions} partitions acquired")

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """wait_until, failing at once (with the log) if the supervisor exits meanwhile."""
        return wait_until(lambda: self._check_alive() and cond(), timeout, what)

    def worker_pids(self) -> dict[int, int]:
        """slot -> pid of each running worker, from /status."""
        return {w["slot"]: w["pid"] for w in self.workers() if w["pid"] is not None}

    def _check_alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
        return True

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class _OwnServer:
    """A server of the test's own that the test may stop or kill and start again on the same data
    and port; leaving the `with` block stops it."""

    def __init__(self, start: Callable[[Path, int], Any], data_dir: Path) -> None:
        self._start, self.dir, self.port = start, data_dir, embedded.free_port()
        self.server = start(self.dir, self.port)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        self.server.proc.kill()
        self.server.proc.wait()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = self._start(self.dir, self.port)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()


class OwnNats(_OwnServer):
    """A nats-server (JetStream on) of the test's own; `url` to connect to it.  With `mappings`
    (source -> destination) the account maps those subjects; `map` adds one as an operator would."""

    def __init__(self, tmp_path: Path, mappings: dict[str, str] | None = None) -> None:
        self.mappings = mappings
        super().__init__(partial(embedded_nats.start_nats, mappings=mappings), tmp_path / "nats")
        self.url = f"nats://127.0.0.1:{self.port}"

    def map(self, subject: str, partitions: int) -> None:
        """Map `subject` into partitions (stream_per_partition) by a config reload, and wait until the
        server applies it (a probe publish is mapped)."""
        map_subject(self.server, self.mappings, subject, partitions)


# On a probe publish: a stream taking its subject refuses it (it expects a stream that does not exist).
NOT_STORED = {"Nats-Expected-Stream": "jetsink-test-probe"}


def map_subject(server: Any, mappings: dict[str, str], subject: str, partitions: int) -> None:
    """Add the stream_per_partition mapping of `subject` to a nats-server's config, reload it and wait
    until a publish to `subject` is mapped (seen by a core subscriber of the mapped subjects)."""

    from workers.topology import account_mapping, partition_filter

    src, dest = account_mapping(subject, partitions)
    mappings[src] = dest
    embedded_nats.write_mappings(server.data_dir, mappings)
    embedded_nats.reload(server)
    mapped = partition_filter(subject, 0).replace(".0.", ".*.", 1)
    wait_until(lambda: run(_heard(server, mapped, subject)), 20, f"the mapping of {subject} applied")


def unmap_subject(server: Any, mappings: dict[str, str], subject: str) -> None:
    """Remove the mapping of `subject` from a nats-server's config, reload it and wait until a publish to
    `subject` is no longer mapped (a core subscriber of `subject` sees it)."""

    del mappings[subject]
    embedded_nats.write_mappings(server.data_dir, mappings)
    embedded_nats.reload(server)
    wait_until(lambda: run(_heard(server, subject, subject)), 20, f"the mapping of {subject} removed")


async def _heard(server: Any, listen: str, subject: str) -> bool:
    """Whether a core subscriber of `listen` sees a publish to `subject` (its `*` made a token) within 0.5 s."""
    import nats

    nc = await nats.connect(f"nats://{server.host}:{server.port}")
    try:
        sub = await nc.subscribe(listen)
        await nc.publish(subject.replace("*", "probe"), b"", headers=NOT_STORED)
        try:
            await sub.next_msg(timeout=0.5)
            return True
        except Exception:
            return False
    finally:
        await nc.close()


def replica_sql(replica: Any, sql: str, rows: Any = None, **settings: Any) -> Any:
    """One statement on a cluster replica (bench/clickhouse_cluster.py) over its own connection (a client
    left connected slows the servers' stop)."""
    client = replica.client(**settings)
    try:
        return client.execute(sql, rows) if rows is not None else client.execute(sql)
    finally:
        client.disconnect()


class LayoutNats:
    """A test's NATS for one layout: `url`; `pipeline(subject, partitions)` the pipeline keys it needs
    (with stream_per_partition, the account mapping is added first); `expected(stream)` what a publish
    may name as its stream (None: a stream per partition)."""

    def __init__(self, layout: str, url: str, server: Any = None, mappings: dict[str, str] | None = None) -> None:
        self.layout, self.url, self._server, self._mappings = layout, url, server, mappings

    @property
    def per_partition(self) -> bool:
        return self.layout == "stream_per_partition"

    def pipeline(self, subject: str, partitions: int, **keys: Any) -> dict:
        if self.per_partition:
            map_subject(self._server, self._mappings, subject, partitions)
        return {"layout": self.layout, **keys}

    def unmap(self, subject: str) -> None:
        """Remove the account's mapping of `subject` (stream_per_partition), as an operator would."""
        unmap_subject(self._server, self._mappings, subject)

    def expected(self, stream: str) -> str | None:
        return None if self.per_partition else stream

    def streams(self, stream: str, partitions: int) -> list[str]:
        """The streams holding the pipeline's messages."""
        return [f"{stream}_{i}" for i in range(partitions)] if self.per_partition else [stream]

    def stream_of(self, stream: str, index: int) -> str:
        """The stream holding partition `index` (its consumer's stream)."""
        return f"{stream}_{index}" if self.per_partition else stream


def own_mappings(layout: str, subject: str, partitions: int) -> dict[str, str] | None:
    """The account mappings an OwnNats needs for a pipeline of `layout` (None: single_stream, no config file)."""
    from workers.topology import account_mapping

    return dict([account_mapping(subject, partitions)]) if layout == "stream_per_partition" else None


class OwnClickHouse(_OwnServer):
    """A clickhouse-server of the test's own, with `database` created; `client` talks to it."""

    def __init__(self, tmp_path: Path, database: str) -> None:
        super().__init__(embedded_clickhouse.start_clickhouse, tmp_path / "ch")
        self.client = Client(host="127.0.0.1", port=self.port)
        try:
            self.client.execute(f"CREATE DATABASE {database}")
        except Exception:
            self.server.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.client.disconnect()
        super().__exit__(*exc)

def run(coro: Any) -> Any:
    return asyncio.run(coro)


def publish_events(nats_url: str, msgs: Any, stream: str) -> Any:
    """Publish (subject, body, headers) tuples to JetStream, every one acked (bench.events.publish)."""
    import nats

    from bench.events import publish

    async def go() -> Any:
        nc = await nats.connect(nats_url)
        try:
            return await publish(nc, msgs, stream=stream)
        finally:
            await nc.close()

    return run(go())


class Load(threading.Thread):
    """Publishes events start..start+count-1 at `rate`/s from a thread, surviving outages.

    Each event carries Nats-Msg-Id = its event_id, so a publish retried after a lost
    PubAck is de-duplicated by JetStream; `published` counts acked events only.
    """

    def __init__(self, nats_url: str, prefix: str, start: int, count: int, rate: float, keys: int = 16,
                 make: Callable[[int], dict] | None = None) -> None:
        super().__init__(daemon=True)
        self.nats_url, self.prefix, self.start_at = nats_url, prefix, start
        self.count, self.rate, self.keys = count, rate, keys
        self.make = make  # event i; default bench.events.make_event
        self.published = 0
        self.errors = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # surfaced by join_checked
            self.error = exc

    async def _publish(self) -> None:
        import nats
        import orjson

        from bench.events import make_event

        async def closed_cb() -> None:
            pass

        nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, closed_cb=closed_cb)
        t0 = time.monotonic()
        try:
            for n, i in enumerate(range(self.start_at, self.start_at + self.count)):
                ahead = n / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing the load, not waiting for an event
                ev = (self.make or make_event)(i)
                data = orjson.dumps(ev)
                while True:
                    try:
                        reply = await nc.request(f"{self.prefix}.k{i % self.keys}", data, timeout=2.0,
                                                 headers={"Nats-Msg-Id": ev["event_id"]})
                        if b'"error"' not in reply.data:
                            break
                    except Exception:
                        pass
                    self.errors += 1
                    await asyncio.sleep(0.2)
                self.published += 1
        finally:
            await nc.close()

    def join_checked(self, timeout: float) -> int:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"publisher still running after {timeout}s ({self.published}/{self.count} published)")
        if self.error is not None:
            raise self.error
        return self.published


@contextmanager
def fed(
    cfg: Path, log_path: Path, nats_url: str, stream: str, msgs: Any, partitions: int = 1
) -> Iterator["Supervisor"]:
    """A supervisor with its `partitions` acquired and `msgs` published to its stream (closed on the way out)."""
    sup = Supervisor(cfg, log_path)
    try:
        sup.wait_acquired(partitions)
        publish_events(nats_url, msgs, stream)
        yield sup
    finally:
        sup.close()


def demo_events(prefix: str, start: int, count: int) -> Iterator[tuple[str, bytes, None]]:
    """(subject, body, headers) of bench.events' events start..start+count-1 over 16 keys."""
    import orjson

    from bench.events import make_event

    for i in range(start, start + count):
        yield f"{prefix}.k{i % 16}", orjson.dumps(make_event(i)), None


def skipped_as_stored(sup: "Supervisor") -> int:
    """Deliveries the workers acked as already stored, from their release lines (after terminate)."""
    return sum(
        int(line["msg"].rsplit("skipped as stored ", 1)[1].rstrip(")")) for line in sup.logged("released partition")
    )
