"""The moving parts of a bench run: servers, the run's config, the sink process, profilers.

The bench drives jetsink exactly as a user runs it: `python -m supervisor --config FILE`
as a child process, workers found as that process's children. Everything a run creates
has fresh names (stream BENCH_<id>, database bench_<id>), so runs never see each other's
data, even against long-lived external servers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from bench.clickhouse_cluster import ClickHouseCluster
from bench.events import KINDS
from bench.nats_cluster import NatsCluster, start_cluster
from supervisor import embedded, embedded_clickhouse, embedded_nats
from workers.topology import account_mapping

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "bench"


def child_env() -> dict[str, str]:
    """Environment of every child: this checkout first on the path, unbuffered logs."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------ servers


@dataclass
class Servers:
    """Where NATS and ClickHouse are, as config sections, and their local pids if any."""

    nats_section: dict[str, Any]
    clickhouse_section: dict[str, Any]
    nats_pid: int | None
    clickhouse_pid: int | None
    owned: list[embedded.ServerProcess] = field(default_factory=list)
    nats_profile_port: int | None = None  # Go's pprof endpoint of a nats-server the bench started
    cluster: NatsCluster | None = None  # --cluster N: the bench's own NATS cluster, in place of one server
    starts: dict[str, int] = field(default_factory=dict)  # cluster node -> times started again
    # --clickhouse-cluster SxR: the bench's own ZooKeeper + shards x replicas, in place of one clickhouse-server
    ch_cluster: ClickHouseCluster | None = None

    def stop(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.stop()
            if self.ch_cluster is not None:
                self.ch_cluster.stop()
        finally:
            embedded.stop_all(*self.owned)

    def nats_processes(self) -> dict[str, int]:
        """The nats-server processes to measure: watched name -> pid. A cluster node started again
        is watched under a name of its own (nats-n1.1), so the CPU of each run of it adds up."""
        if self.cluster is None:
            return {"nats": self.nats_pid} if self.nats_pid else {}
        out = {}
        for n in self.cluster.nodes:
            if n.server is not None and n.server.alive():
                again = self.starts.get(n.name, 0)
                out[f"nats-{n.name}" + (f".{again}" if again else "")] = n.server.pid
        return out

    def restart_node(self, name: str) -> None:
        """Start a killed cluster node again on its store."""
        assert self.cluster is not None
        self.cluster.start(self.cluster.node(name))
        self.starts[name] = self.starts.get(name, 0) + 1

    def fresh_cluster(self, base: Path) -> None:
        """Stop the cluster (its stores go) and start a new one of the same size under `base`."""
        assert self.cluster is not None
        size, old = len(self.cluster.nodes), self.cluster
        old.stop()
        shutil.rmtree(old.nodes[0].data_dir.parent, ignore_errors=True)
        self.cluster = start_cluster(base, size)
        self.starts = {}
        self.nats_section = {"url": self.cluster.urls}


def bring_up(base: dict[str, Any], base_dir: Path, work_dir: Path, cluster: int = 0,
             clickhouse_cluster: tuple[int, int] | None = None) -> Servers:
    """Start nats-server / clickhouse-server for sections marked embedded; else use the given ones.
    With `cluster` > 0, a NATS cluster of that many nodes in place of the nats section's server;
    with `clickhouse_cluster` (shards, replicas), a ClickHouse cluster in place of the clickhouse section's.

    Servers the bench starts listen on free ports and keep their data under work_dir, so a
    bench never touches the data of `python -m supervisor` on the same machine.
    """
    owned: list[embedded.ServerProcess] = []
    nats = dict(base.get("nats") or {})
    ch = dict(base.get("clickhouse") or {})
    profile_port: int | None = None
    nats_cluster: NatsCluster | None = None
    ch_cluster: ClickHouseCluster | None = None
    try:
        if cluster:
            nats_cluster = start_cluster(work_dir / "nats-cluster-1", cluster)
            nats_section: dict[str, Any] = {"url": nats_cluster.urls}
            nats_pid: int | None = None
        elif nats.get("embedded", False):
            # Go's profiler answers on this port only when asked (NatsProfiler); idle, it costs nothing.
            profile_port = embedded.free_port()
            server = embedded_nats.start_nats(  # with a config file: --layout stream_per_partition maps into it
                work_dir / "nats", embedded.free_port(), extra_args=["--profile", str(profile_port)], mappings={}
            )
            owned.append(server)
            nats_section = {"url": f"nats://{server.host}:{server.port}"}
            nats_pid = server.pid
        else:
            nats_section = _absolute_files({k: v for k, v in nats.items() if k != "embedded"}, base_dir)
            urls = nats_section.get("url", "nats://127.0.0.1:4222")
            nats_pid = local_listener(urls[0] if isinstance(urls, list) else urls, 4222)
        if clickhouse_cluster is not None:
            shards, replicas = clickhouse_cluster
            ch_cluster = ClickHouseCluster.start(work_dir / "clickhouse-cluster", shards=shards, replicas=replicas)
            ch_section = cluster_section(ch_cluster)
            ch_pid = None
        elif ch.get("embedded", False):
            server = embedded_clickhouse.start_clickhouse(work_dir / "clickhouse", embedded.free_port())
            owned.append(server)
            ch_section: dict[str, Any] = {"host": server.host, "port": server.port}
            ch_pid: int | None = server.pid
        else:
            ch_section = _absolute_files({k: v for k, v in ch.items() if k not in ("embedded", "database")}, base_dir)
            ch_pid = local_listener(f"tcp://{ch_section.get('host', '127.0.0.1')}:{ch_section.get('port', 9000)}", 9000)
    except BaseException:
        if nats_cluster is not None:
            nats_cluster.stop()
        if ch_cluster is not None:
            ch_cluster.stop()
        embedded.stop_all(*owned)
        raise
    return Servers(nats_section, ch_section, nats_pid, ch_pid, owned, profile_port, nats_cluster,
                   ch_cluster=ch_cluster)


def cluster_section(cluster: ClickHouseCluster) -> dict[str, Any]:
    """The clickhouse section for the bench's ClickHouse cluster: `shards`, or `hosts` for one shard."""
    if len(cluster.shards) == 1:
        return {"hosts": [r.address for r in cluster.shards[0].replicas]}
    return {"shards": [{"hosts": [r.address for r in s.replicas], "weight": s.weight} for s in cluster.shards]}


# The local table the bench creates on every node of its ClickHouse cluster, and the Distributed table
# over it (the probe counts through it); the key is the pipeline's sharding_key.
CLUSTER_KEY = "cityHash64(event_id)"


def create_cluster_tables(cluster: ClickHouseCluster, database: str, table: str, create_table: str) -> str:
    """The pipeline's `create_table` made a ReplicatedMergeTree ON CLUSTER, and a Distributed table
    `<table>_all` over it; returns the Distributed table's name."""
    ddl, n = re.subn(r"(?is)^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?\S+",
                     f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster.cluster_name}", create_table)
    ddl, m = re.subn(r"(?i)ENGINE\s*=\s*MergeTree\(\s*\)",
                     f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}')",
                     ddl)
    if not (n and m):
        raise ValueError("--clickhouse-cluster needs the pipeline's create_table to be a CREATE TABLE ... "
                         "ENGINE = MergeTree() statement (made Replicated on every node)")
    client = cluster.replicas[0].client()
    try:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster.cluster_name}")
        client.execute(ddl)
        client.execute(f"CREATE TABLE IF NOT EXISTS {database}.{table}_all ON CLUSTER {cluster.cluster_name} "
                       f"AS {database}.{table} ENGINE = Distributed({cluster.cluster_name}, {database}, {table}, "
                       f"{CLUSTER_KEY})")
    finally:
        client.disconnect()
    return f"{table}_all"


def cluster_parts(cluster: ClickHouseCluster) -> str:
    """system.parts of one replica of each shard, as a table expression (remote() picks a live replica)."""
    shards = ",".join("|".join(r.address for r in s.replicas) for s in cluster.shards)
    return f"remote('{shards}', system.parts)"


def cluster_rows(cluster: ClickHouseCluster, database: str, table: str) -> dict[str, Any]:
    """Rows per shard and per replica once replication caught up (SYSTEM SYNC REPLICA on each)."""
    replicas: dict[str, int] = {}
    shards: dict[str, int] = {}
    for shard in cluster.shards:
        for r in shard.replicas:
            client = r.client()
            try:
                client.execute(f"SYSTEM SYNC REPLICA {database}.{table}")
                rows = client.execute(f"SELECT count() FROM {database}.{table}")[0][0]
                replicas[f"s{shard.number}{r.name}"] = int(rows)
            finally:
                client.disconnect()
        shards[f"s{shard.number}"] = replicas[f"s{shard.number}{shard.replicas[0].name}"]
    return {"layout": f"{len(cluster.shards)}x{len(cluster.shards[0].replicas)}", "rows_per_shard": shards,
            "rows_per_replica": replicas}


def _absolute_files(section: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    # The generated config lives elsewhere; relative secret/TLS paths must keep pointing
    # where the user's config meant.
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out[key] = _absolute_files(value, base_dir)
        elif key.endswith("_file") and isinstance(value, str) and not os.path.isabs(value):
            out[key] = str(base_dir / value)
        else:
            out[key] = value
    return out


def local_listener(url: str, default_port: int) -> int | None:
    """Pid of the local process listening on the URL's port (to measure its CPU), else None."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parts.port or default_port
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        return None
    return None


# --------------------------------------------------------------------- run config


@dataclass(frozen=True)
class RunNames:
    """Fresh names of one run's stream, subjects and database."""

    run_id: str
    stream: str
    dlq_stream: str
    subject: str  # the pipeline's input pattern, e.g. bench1a2b3c.events.*
    publish_prefix: str  # producers publish to <prefix>.<key>
    database: str
    table: str

    @classmethod
    def fresh(cls, subject: str, table: str) -> "RunNames":
        tokens = subject.split(".")
        if tokens.count("*") != 1 or tokens[-1] != "*" or ">" in tokens:
            raise ValueError(f"bench needs a pipeline subject ending in one '*' (like events.*), got {subject!r}")
        run_id = uuid.uuid4().hex[:8]
        return cls(
            run_id=run_id,
            stream=f"BENCH_{run_id}",
            dlq_stream=f"BENCH_{run_id}_DLQ",
            subject=f"bench{run_id}.{subject}",
            publish_prefix=f"bench{run_id}.{'.'.join(tokens[:-1])}",
            database=f"bench_{run_id}",
            table=table.rpartition(".")[2],
        )


def run_config(
    base: dict[str, Any],
    servers: Servers,
    names: RunNames,
    workers: int | None,
    state_dir: Path,
    memory_profiles: bool,
    tracing: bool,
    routes: int = 0,
    layout: str | None = None,
) -> dict[str, Any]:
    """The config the bench starts the supervisor with: the base's first pipeline, renamed; with `routes`,
    its events routed by kind over that many routes, all into its table (each route one part per batch)."""
    pipelines = base.get("pipelines") or []
    if not pipelines:
        raise ValueError("the config has no pipelines to benchmark")
    pipeline = {k: v for k, v in pipelines[0].items() if k != "dlq"}
    if servers.ch_cluster is not None:
        pipeline.pop("create_table", None)  # the bench makes the tables on every node (create_cluster_tables)
        if len(servers.ch_cluster.shards) > 1:
            pipeline["sharding_key"] = CLUSTER_KEY
    pipeline.update(
        name=PIPELINE,
        stream=names.stream,
        subject=names.subject,
        table=names.table,
        dlq={"stream": names.dlq_stream, "subject": f"dlq.bench{names.run_id}"},
    )
    if layout is not None:
        pipeline["layout"] = layout
    if routes:
        table = pipeline.pop("table")
        pipeline.pop("create_table", None)  # run.py creates the table
        kinds = [list(KINDS[i::routes]) for i in range(routes)]
        pipeline["routes"] = [{"name": f"r{i}", "field": "kind", "in": k, "table": table}
                              for i, k in enumerate(kinds) if k]
    # The bench records its own CPU profiles over the measured window; the supervisor's
    # periodic ones (with observability on) would put a second py-spy on each worker.
    # Without the bench's profiles (--no-profiles), a --trace run keeps the supervisor's
    # periodic CPU profiles at the default's duty cycle (10 %: the default is a 30 s window
    # every 300 s) but a shorter period (1 s every 10 s), so that a drain of a few
    # seconds pays for them too.
    periodic = bool(tracing) and not memory_profiles
    profiling: dict[str, Any] = {"cpu": periodic, "memory": bool(memory_profiles)}
    if periodic:
        profiling.update(interval_s=10, duration_s=1)
    observability: dict[str, Any] = {"enabled": bool(tracing), "profiling": profiling}
    return {
        "workers": workers or base.get("workers", 1),
        "shutdown_grace_s": base.get("shutdown_grace_s", 30),
        "state_dir": str(state_dir),
        "log_level": "info",
        "nats": {**servers.nats_section, "embedded": False},
        "clickhouse": {**servers.clickhouse_section, "database": names.database}
        | ({} if servers.ch_cluster is not None else {"embedded": False}),
        "pipelines": [pipeline],
        "observability": observability,
        # A free port: the bench must not collide with a sink already running here.
        "admin": {"listen": "127.0.0.1:0"},
    }


def map_subject(servers: Servers, subject: str, partitions: int) -> None:
    """stream_per_partition: the account of the bench's own nats-server (or every node of its --cluster) maps
    `subject` into partitions (config files rewritten, then a reload; provisioning waits until its probes see it)."""
    src, dest = account_mapping(subject, partitions)
    if servers.cluster is not None:
        servers.cluster.map_subjects({src: dest})  # every node, also when a chaos kill starts one again
        return
    nats_servers = [s for s in servers.owned if s.name == "nats-server"]
    if not nats_servers:
        raise ValueError("--layout stream_per_partition maps the subject on the bench's own nats-server or cluster "
                         "only (nats.embedded, or --cluster); on a server of yours, add the mapping yourself")
    for server in nats_servers:
        embedded_nats.write_mappings(server.data_dir, {src: dest})
        embedded_nats.reload(server)


def write_config(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- sinks


class LogTail:
    """Reads a JSON-lines log as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""
        self.lines: list[dict] = []

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return []
        data = self._partial + chunk
        raw_lines = data.split(b"\n")
        self._partial = raw_lines.pop()
        new = []
        for raw in raw_lines:
            try:
                line = orjson.loads(raw)
                if not isinstance(line, dict):
                    raise ValueError
            except ValueError:
                line = {"msg": raw.decode(errors="replace"), "raw": True}
            new.append(line)
        self.lines += new
        return new


class _ChildProcess:
    """What both sinks share: one child process, its pid and exit code."""

    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


class JetsinkSink(_ChildProcess):
    """`python -m supervisor --config FILE`; learns its workers and partitions from its admin endpoint's
    /status (found as `python -m supervisor status` finds it), its errors from its log.

    `slot_base` numbers its workers apart from other instances' in the same run.
    """

    name = "jetsink"

    def __init__(self, config_path: Path, log_path: Path, partitions: int, slot_base: int = 0) -> None:
        from supervisor.config import load_config

        self.config_path = config_path
        self.config = load_config(config_path)
        self.log = LogTail(log_path)
        self.partitions = partitions
        self.slot_base = slot_base
        self.proc: subprocess.Popen | None = None
        self.workers: dict[int, int] = {}  # slot (+ slot_base) -> pid of the current worker
        self.owned: set[str] = set()
        self.status: dict[str, Any] = {}
        self.errors: list[str] = []

    @property
    def instance_id(self) -> str:
        return self.config.instance_id

    def start(self) -> None:
        with open(self.log.path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "--config", str(self.config_path)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
            )

    def poll(self) -> list[tuple[int, int]]:
        """Asks /status; returns workers that became ready since: [(slot, pid)]."""
        from supervisor.admin import admin_address, fetch_status

        for line in self.log.read():
            if line.get("level") == "error":
                self.errors.append(str(line.get("msg", "")))
        address = admin_address(self.config)
        if address is None:
            return []
        try:
            self.status = fetch_status(address, timeout=2.0)
        except (OSError, ValueError):
            return []
        ready = []
        owned = set()
        for w in self.status.get("workers") or []:
            if not w.get("ready") or w.get("pid") is None:
                continue
            slot = self.slot_base + int(w["slot"])
            owned.update(w.get("partitions") or ())
            if self.workers.get(slot) != w["pid"]:
                self.workers[slot] = w["pid"]
                ready.append((slot, w["pid"]))
        self.owned = owned
        return ready

    def is_ready(self) -> bool:
        return len(self.owned) >= self.partitions

    def stop(self, timeout: float = 90.0) -> int | None:
        """TERM (workers drain and exit, memray profiles are written), then KILL if needed."""
        code = embedded.terminate(self.proc, timeout)
        for line in self.log.read():
            if line.get("level") == "error":
                self.errors.append(str(line.get("msg", "")))
        return code


class JetsinkInstances:
    """Several jetsink instances (supervisors with their own instance_id, state_dir and admin port) sharing
    one pipeline's partitions, driven as one sink; their workers are numbered instance by instance."""

    name = "jetsink"

    def __init__(self, sinks: list[JetsinkSink], partitions: int) -> None:
        self.sinks = sinks
        self.partitions = partitions

    @property
    def pid(self) -> int:
        return self.sinks[0].pid

    @property
    def workers(self) -> dict[int, int]:
        return {slot: pid for s in self.sinks for slot, pid in s.workers.items()}

    @property
    def errors(self) -> list[str]:
        return [e for s in self.sinks for e in s.errors]

    def start(self) -> None:
        for s in self.sinks:
            s.start()

    def poll(self) -> list[tuple[int, int]]:
        return [x for s in self.sinks for x in s.poll()]

    def exit_code(self) -> int | None:
        codes = [s.exit_code() for s in self.sinks]
        return next((c for c in codes if c is not None), None)

    def is_ready(self) -> bool:
        """Every partition owned, and every instance owning its share."""
        owned = [s.owned for s in self.sinks]
        return len(set().union(*owned)) >= self.partitions and all(owned)

    def inserted(self) -> int:
        """Rows the instances' current workers say they inserted (their last /status)."""
        return sum(int(st.get("inserted", 0)) for s in self.sinks for w in s.status.get("workers") or []
                   for st in (w.get("stats") or {}).values())

    def stop(self, timeout: float = 90.0) -> int | None:
        # Workers report their counters once a second: the per-instance figures are read
        # once they stopped changing (at most a few seconds), before the drain ends them.
        deadline, last, since = time.monotonic() + 5.0, -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < 1.5:
            self.poll()
            if self.inserted() != last:
                last, since = self.inserted(), time.monotonic()
            time.sleep(0.2)
        codes = [s.stop(timeout) for s in self.sinks]
        return next((c for c in codes if c not in (0, None)), codes[0])

    def instance_of(self, slot: int) -> str:
        return next(s.instance_id for s in reversed(self.sinks) if slot >= s.slot_base)


class NaiveSink(_ChildProcess):
    """bench/naive.py as a child process: one process, no supervisor."""

    name = "naive"

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.workers: dict[int, int] = {}
        self.errors: list[str] = []
        self._announced = False

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.naive", *self.args],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
            )
        self.workers = {0: self.proc.pid}

    def poll(self) -> list[tuple[int, int]]:
        if self._announced or self.proc is None:
            return []
        self._announced = True
        return [(0, self.proc.pid)]

    def is_ready(self) -> bool:
        return self.proc is not None

    def stop(self, timeout: float = 30.0) -> int | None:
        return embedded.terminate(self.proc, timeout)


# ------------------------------------------------------------------------ profiles


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


class CpuProfiler:
    """py-spy record on one process (100 Hz, non-blocking, per thread) into collapsed stacks."""

    def __init__(self, binary: str, name: str, pid: int, out_dir: Path, rate: int = 100) -> None:
        self.name = name
        self.pid = pid
        self.rate = rate
        self.raw_path = out_dir / f"cpu-{name}.collapsed.txt"
        self.log_path = out_dir / f"cpu-{name}.py-spy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--threads",
                 "--format", "raw", "-o", str(self.raw_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        """SIGINT makes py-spy write what it has; it also stops by itself when the target exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def write_views(self) -> dict[str, Any]:
        """speedscope JSON and SVG beside the collapsed stacks; paths relative to the out dir."""
        from bench import flame

        if not self.raw_path.exists():
            note = self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""
            return {
                "cpu_svg": None,
                "cpu_speedscope": None,
                "samples": 0,
                "top": [],
                "error": note.strip() or "py-spy wrote nothing",
            }
        raw = self.raw_path.read_text(errors="replace")
        return {
            **_flame_views(raw, f"{self.name} (pid {self.pid})", self.rate, self.raw_path),
            "parts": flame.worker_parts(raw),
        }


def _flame_views(raw: str, title: str, rate_hz: int, raw_path: Path) -> dict[str, Any]:
    """speedscope JSON and SVG of collapsed stacks, written beside raw_path (cpu-<name>.collapsed.txt):
    their paths relative to the out dir, the sample count and the top frames."""
    from bench import flame

    speedscope, svg, samples = flame.convert(raw, title, rate_hz)
    stem = raw_path.name[: -len(".collapsed.txt")]
    json_path = raw_path.with_name(f"{stem}.speedscope.json")
    svg_path = raw_path.with_name(f"{stem}.svg")
    json_path.write_bytes(speedscope)
    svg_path.write_text(svg)
    return {"cpu_svg": f"profiles/{svg_path.name}", "cpu_speedscope": f"profiles/{json_path.name}",
            "samples": samples, "top": flame.top_functions(raw)}


class NatsProfiler:
    """nats-server's own CPU profile (Go's pprof at 100 Hz) over a drain, beside the workers'.

    Go's /debug/pprof/profile answers after the number of seconds asked for, so a thread
    asks for short windows back to back until stopped and adds their samples up.
    """

    WINDOW_S = 2

    def __init__(self, port: int, name: str, out_dir: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={self.WINDOW_S}"
        self.raw_path = out_dir / f"cpu-{name}.collapsed.txt"
        self.stacks: dict[tuple[str, ...], int] = {}
        self.period_ns = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"profile-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from bench import pprof

        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=self.WINDOW_S + 30) as answer:
                    data = answer.read()
                stacks, self.period_ns = pprof.read(data)
            except (OSError, pprof.ProfileError) as exc:
                self.error = f"{self.url}: {exc}"
                return
            for frames, count in stacks:
                key = tuple(frames)
                self.stacks[key] = self.stacks.get(key, 0) + count

    def stop(self) -> None:
        """Ends after the window under way (at most WINDOW_S) is added."""
        self._stop.set()
        self._thread.join(self.WINDOW_S + 35)

    def write_views(self) -> dict[str, Any]:
        """Collapsed stacks, speedscope JSON and SVG in out_dir; results.json's servers.nats_profile."""
        from bench import pprof

        stacks = [(list(k), c) for k, c in self.stacks.items()]
        out: dict[str, Any] = {"cpu_svg": None, "cpu_speedscope": None, "samples": sum(c for _, c in stacks),
                               "parts": pprof.breakdown(stacks), "top": [], "error": self.error}
        if not stacks:
            out["error"] = self.error or "no samples (the server was idle)"
            return out
        raw = pprof.to_collapsed(stacks)
        self.raw_path.write_text(raw)
        rate = round(1e9 / self.period_ns) if self.period_ns else 100
        out.update(_flame_views(raw, self.name, rate, self.raw_path))
        return out


def collect_memray(state_dir: Path, slot: int, out_dir: Path) -> dict[str, Any]:
    """Copy a worker's memray flame graph and summary (written at its exit) into out_dir.

    The observability side writes <state_dir>/profiles/memray-worker<slot>-<pid>.{bin,html,
    summary.json}; the .bin files stay behind (they can be large).
    """
    found = sorted((state_dir / "profiles").glob(f"memray-worker{slot}-*.bin"), key=lambda p: p.stat().st_mtime)
    htmls = sorted((state_dir / "profiles").glob(f"memray-worker{slot}-*.html"), key=lambda p: p.stat().st_mtime)
    if found and not htmls:
        # The worker was killed before it could write its reports: make them from the capture.
        from workers.observability.profiling import finalize_memray

        try:
            finalize_memray(found[-1])
        except Exception:
            pass
        htmls = sorted((state_dir / "profiles").glob(f"memray-worker{slot}-*.html"), key=lambda p: p.stat().st_mtime)
    out: dict[str, Any] = {
        "memray_html": None,
        "memray_peak_mb": None,
        "memray_top": [],
        "memray_heap_mb_by_minute": [],
    }
    if not htmls:
        return out
    html = htmls[-1]
    target = out_dir / f"memray-worker{slot}.html"
    shutil.copyfile(html, target)
    out["memray_html"] = f"profiles/{target.name}"
    summary = html.with_name(html.name[: -len(".html")] + ".summary.json")
    if summary.exists():
        shutil.copyfile(summary, out_dir / f"memray-worker{slot}.summary.json")
        data = orjson.loads(summary.read_bytes())
        peak = data.get("peak_memory_bytes")
        if isinstance(peak, (int, float)):
            out["memray_peak_mb"] = round(peak / 2**20, 1)
        out["memray_top"] = (data.get("top_allocations") or [])[:10]
        out["memray_heap_mb_by_minute"] = data.get("heap_mb_by_minute") or []
    return out


def wait_for(cond: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
