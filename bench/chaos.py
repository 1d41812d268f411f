"""`python -m bench --chaos KIND[,KIND...] [--chaos-at F]`: kill -9 during the drain, then accounting.

KIND is what is killed once a fraction F (default 0.3) of the messages is stored:

    kill-worker           one worker process (its supervisor restarts it)
    kill-supervisor       the supervisor and its workers at once, then a new supervisor
                          (what systemd's Restart= does after an OOM kill of the unit)
    kill-nats             the bench's nats-server, restarted on its store
    kill-clickhouse       the bench's clickhouse-server, restarted on its data; with --clickhouse-cluster,
                          the replica worker 0 inserts into (it fails over), restarted on its data
  with --cluster N (the bench's own NATS cluster), the node that leads, at that moment:
    kill-stream-leader    the pipeline's stream (partition 0's with stream_per_partition)
    kill-consumer-leader  partition 0's durable consumer
    kill-kv-leader        the commit-state bucket (stream KV_jetsink_commits_<pipeline>)
  A killed node starts again on its store once another node leads what it killed it for (or
  RESTART_AFTER_S after the kill without one); a thread of its own watches the election.

A comma list is a schedule: the k-th of n kills is due at F + k (1 - F) / n of the
messages (0.3, 0.65 for two), and never before the node killed before it is back and every
replica of the stream, the commit-state bucket and every consumer is current again (a second
node down would cost the cluster its quorum, which is another experiment).

results.json gets a "chaos" section (kind, at, fired_at_s, recovery_s, node, kills: one
entry per kill) and, at top level, `recovery_s`, `skipped_duplicates` and `worker_deaths`;
`duplicates` and `lost` are counted as in every run, from ClickHouse directly.  recovery_s:
from the kill to the end of the dip it caused: the first second whose insert rate is back to
RECOVERED of the rate in the WINDOW_S before the kill.  stall_s: the longest time the
bench's polls of the table (100 ms apart) saw no new row while published messages waited to
be stored, from the kill to the next kill or the end of the drain; no_rows_s the same
without the condition.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PROCESS_KINDS = ("kill-worker", "kill-supervisor", "kill-nats", "kill-clickhouse")
LEADER_KINDS = ("kill-stream-leader", "kill-consumer-leader", "kill-kv-leader")
KINDS = PROCESS_KINDS + LEADER_KINDS
WINDOW_S = 5.0
RECOVERED = 0.8
RESTART_AFTER_S = 10.0  # a killed leader's node starts again at the latest this long after the kill
CHECK_EVERY_S = 0.5  # how often a follower thread asks the cluster
QUERY_TIMEOUT_S = 2.0  # one leader query; an election may leave it unanswered

_DIED = re.compile(r"^worker \d+ died\b")


class ChaosError(RuntimeError):
    """The asked-for fault cannot be injected here (e.g. the server is not the bench's own)."""


def parse_kinds(text: str) -> list[str]:
    """`kill-a,kill-b` -> ["kill-a", "kill-b"]; ValueError naming an unknown kind."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise ValueError("--chaos: no kind given")
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"--chaos: unknown kind {k!r}; one of {', '.join(KINDS)} (or a comma list of them)")
    return kinds


@dataclass
class Kill:
    """One kill of a schedule and what followed it (wall-clock times)."""

    kind: str
    at: float  # fraction of the messages stored when it is due
    fired_at: float | None = None
    stored: int | None = None  # messages stored when it fired
    node: str | None = None  # the NATS node killed (leader kinds)
    led: list[str] = field(default_factory=list)  # what that node led when it was killed
    new_leader: str | None = None
    elected_at: float | None = None  # first time another node was seen leading the object
    restarted_at: float | None = None
    caught_up_at: float | None = None  # the node back and every replica of every object current again
    checked_at: float = 0.0
    follower: threading.Thread | None = None  # watches the election, then the node catching up
    restart_due: bool = False  # set by the follower; the drain loop starts the node

    @property
    def settled(self) -> bool:
        """The next kill may fire: nothing of this one is still under way."""
        if self.fired_at is None:
            return False
        return self.kind not in LEADER_KINDS or self.caught_up_at is not None


@dataclass
class Chaos:
    """A schedule of kills, each fired once its share of the `expected` messages is stored.

    `stream`, `pipeline` and `layout` name what the leader kinds look up, through `nats` (bench.monitor.NatsThread).
    """

    kind: str  # as given: one kind or a comma list
    at: float
    expected: int
    stream: str = ""
    pipeline: str = ""
    partitions: int = 1
    nats: Any = None
    layout: str = "single_stream"  # pipelines[].layout: with stream_per_partition "the stream" is partition 0's
    kills: list[Kill] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if not self.kills:
            kinds = parse_kinds(self.kind)
            n = len(kinds)
            self.kills = [Kill(k, round(self.at + i * (1 - self.at) / n, 4)) for i, k in enumerate(kinds)]

    @property
    def fired_at(self) -> float | None:
        return self.kills[0].fired_at

    def _next(self) -> Kill | None:
        return next((k for k in self.kills if k.fired_at is None), None)

    def due(self, stored: int) -> bool:
        """The next kill's share is stored and the kill before it has settled."""
        k = self._next()
        if k is None or stored < k.at * self.expected:
            return False
        i = self.kills.index(k)
        return i == 0 or self.kills[i - 1].settled

    def step(self, now: float, stored: int, sink: Any, servers: Any, say: Any) -> bool:
        """Called on every poll of the drain: fire what is due. True when a process changed (the caller
        watches the new pids): a kill, or a node a follower thread started again since the last call."""
        restarted = [k for k in self.kills if k.restart_due and k.restarted_at is None]
        for k in restarted:
            self._restart(k, servers, say)
        if self.due(stored):
            k = self._next()
            if k.kind in LEADER_KINDS and now - k.checked_at < CHECK_EVERY_S:
                return bool(restarted)
            k.checked_at = now
            if not self.fire(now, sink, servers, k, stored):
                return bool(restarted)  # no node leads it right now: asked again on a later poll
            say(f"chaos: {k.kind} at {stored:,} stored" + (f": kill -9 of {k.node}" if k.node else ""))
            if k.kind in LEADER_KINDS:
                # Its own thread asks the cluster, so that the drain's polls keep their pace through the election.
                k.follower = threading.Thread(target=self._follow, args=(k, servers, say), daemon=True,
                                              name=f"chaos-{k.node}")
                k.follower.start()
            return True
        return bool(restarted)

    def _follow(self, k: Kill, servers: Any, say: Any) -> None:
        """Ask for the killed node to start again once another node leads its object (at the latest
        RESTART_AFTER_S after the kill), then wait until the cluster is whole: every replica of the stream,
        the commit-state bucket and every consumer current.  The drain loop starts the node: a server
        started from this thread would get SIGTERM when the thread ends (PR_SET_PDEATHSIG follows the
        thread that forked it)."""
        while not k.restart_due and not self._stop.wait(CHECK_EVERY_S):
            leader = self._leader(k.kind)
            if leader is not None and leader != k.node:
                k.new_leader, k.elected_at = leader, time.time()
            k.restart_due = k.elected_at is not None or time.time() - k.fired_at >= RESTART_AFTER_S
        while k.caught_up_at is None and not self._stop.wait(CHECK_EVERY_S):
            if k.restarted_at is not None and self._whole():
                k.caught_up_at = time.time()
                say(f"chaos: {k.node} is back and every replica is current again")

    def finish(self, servers: Any, say: Any) -> None:
        """After the drain: start any node still down (the accounting and the next run need the whole
        cluster) and note the kills that never fired."""
        self._stop.set()
        for k in self.kills:
            if k.follower is not None:
                k.follower.join()
            if k.fired_at is None:
                self.notes.append(f"chaos: {k.kind} did not fire: the drain ended before its turn (at {k.at:.0%})")
            elif k.kind in LEADER_KINDS and k.restarted_at is None:
                self.notes.append(f"chaos: the drain ended before {k.node} was started again")
                self._restart(k, servers, say, after_drain=True)

    def fire(self, now: float, sink: Any, servers: Any, k: Kill | None = None, stored: int | None = None) -> bool:
        """Kill (and, for the servers and the supervisor, start again) what the kill names.
        False (nothing killed) when no node leads the object of a leader kind at this moment."""
        from supervisor import embedded_clickhouse, embedded_nats

        k = k or self._next()
        if k is None:
            raise ChaosError("every kill of the schedule has fired")
        if k.kind in LEADER_KINDS:
            return self._kill_leader(now, servers, k, stored)
        k.fired_at, k.stored = now, stored
        if k.kind == "kill-worker":
            if not sink.workers:
                raise ChaosError("kill-worker: no worker known yet")
            slot = min(sink.workers)
            _kill(sink.workers[slot])
            self.notes.append(f"chaos: kill -9 of worker {slot} (pid {sink.workers[slot]})")
        elif k.kind == "kill-supervisor":
            pids = [sink.pid, *sink.workers.values()]
            for pid in pids:
                _kill(pid)
            sink.proc.wait()
            sink.start()
            self.notes.append(f"chaos: kill -9 of the supervisor and its workers (pids {pids}), then a new supervisor")
        elif k.kind == "kill-clickhouse" and getattr(servers, "ch_cluster", None) is not None:
            replica = _replica_in_use(sink, servers.ch_cluster)
            pid = replica.pid
            replica.kill()
            replica.start()
            self.notes.append(f"chaos: kill -9 of clickhouse replica {replica.address} (shard {replica.shard} "
                              f"{replica.name}, pid {pid}), the one worker 0 inserted into; restarted as pid "
                              f"{replica.pid}")
        elif k.kind in ("kill-nats", "kill-clickhouse"):
            name = "nats" if k.kind == "kill-nats" else "clickhouse"
            i, server = _owned(servers, name)
            server.proc.kill()
            server.proc.wait()
            if name == "nats":
                extra = ["--profile", str(servers.nats_profile_port)] if servers.nats_profile_port else []
                # With the account's subject mappings it had (--layout stream_per_partition), if any.
                again = embedded_nats.start_nats(server.data_dir, server.port, extra_args=extra,
                                                 mappings=embedded_nats.written_mappings(server.data_dir))
                servers.nats_pid = again.pid
            else:
                again = embedded_clickhouse.start_clickhouse(server.data_dir, server.port)
                servers.clickhouse_pid = again.pid
            servers.owned[i] = again
            self.notes.append(f"chaos: kill -9 of {server.name} (pid {server.pid}), restarted as pid {again.pid}")
        else:
            raise ChaosError(f"unknown chaos kind {k.kind!r}; one of {', '.join(KINDS)}")
        return True

    def _kill_leader(self, now: float, servers: Any, k: Kill, stored: int | None) -> bool:
        if getattr(servers, "cluster", None) is None:
            raise ChaosError(f"--chaos {k.kind} needs the bench's own NATS cluster (--cluster 3)")
        leaders = self._leaders()
        node = leaders.get(_OBJECT[k.kind])
        if node is None:
            return False
        k.stored, k.node = stored, node
        k.led = [obj for obj, n in leaders.items() if n == node]
        pid = servers.cluster.node(node).server.pid
        k.fired_at = time.time()  # the leaders' query took a moment
        servers.cluster.kill(node)
        self.notes.append(f"chaos: kill -9 of NATS node {node} (pid {pid}), leader of {', '.join(k.led)}")
        return True

    def _restart(self, k: Kill, servers: Any, say: Any, after_drain: bool = False) -> None:
        servers.restart_node(k.node)
        k.restarted_at = time.time()
        if k.elected_at is None and not after_drain:
            self.notes.append(f"chaos: no node was seen leading {_OBJECT[k.kind]} within {RESTART_AFTER_S:.0f} s "
                              f"of the kill of {k.node}; started it again anyway")
        say(f"chaos: {k.node} started again on its store"
            + (f" ({k.new_leader} leads {_OBJECT[k.kind]} now)" if k.new_leader else ""))

    # ---------------------------------------------------------------- cluster queries

    def _objects(self) -> dict[str, tuple[str, str | None]]:
        """Object label -> (stream, consumer or None) of everything a node may lead."""
        from workers.delivery.commits import bucket_name
        from workers.topology import STREAM_PER_PARTITION, consumer_name, partition_stream

        # With a stream per partition, "the stream" is partition 0's, and each consumer is on its partition's.
        def stream_of(p: int) -> str:
            return partition_stream(self.stream, p) if self.layout == STREAM_PER_PARTITION else self.stream

        objs: dict[str, tuple[str, str | None]] = {"stream": (stream_of(0), None),
                                                   "kv": (f"KV_{bucket_name(self.pipeline)}", None)}
        for p in range(self.partitions):
            objs[f"consumer {p}"] = (stream_of(p), consumer_name(self.pipeline, p))
        return objs

    def _leaders(self) -> dict[str, str | None]:
        """Object label -> the node leading it now (None: no answer, e.g. an election under way)."""
        objs = self._objects()

        async def q() -> dict[str, str | None]:
            infos = await asyncio.gather(*(_info(self.nats, s, c) for s, c in objs.values()), return_exceptions=True)
            return {label: None if isinstance(i, BaseException) or i.cluster is None else i.cluster.leader
                    for label, i in zip(objs, infos, strict=True)}

        try:
            return self.nats.call(q(), timeout=QUERY_TIMEOUT_S + 1)
        except Exception:
            return {}

    def _object_info(self, kind: str) -> Any:
        stream, consumer = self._objects()[_OBJECT[kind]]
        try:
            return self.nats.call(_info(self.nats, stream, consumer), timeout=QUERY_TIMEOUT_S + 1)
        except Exception:
            return None  # an election under way, or the bench's connection failing over

    def _leader(self, kind: str) -> str | None:
        info = self._object_info(kind)
        return None if info is None or info.cluster is None else info.cluster.leader

    def _whole(self) -> bool:
        """Every object has a leader and every replica of it is current."""
        objs = self._objects()

        async def q() -> list[Any]:
            return await asyncio.gather(*(_info(self.nats, s, c) for s, c in objs.values()), return_exceptions=True)

        try:
            infos = self.nats.call(q(), timeout=QUERY_TIMEOUT_S + 1)
        except Exception:
            return False
        return all(not isinstance(i, BaseException) and i.cluster is not None and i.cluster.leader is not None
                   and all(r.current and not r.offline for r in i.cluster.replicas or ()) for i in infos)

    # ---------------------------------------------------------------------- figures

    def figures(self, timeline: list[dict[str, Any]], polls: list[tuple[float, int, int]], t_start: float,
                t_end: float | None) -> dict[str, Any]:
        """The chaos section of results.json: from the run's one-second timeline (recovery) and the
        polls behind it (t since the start, rows + dead letters, published; stalls), ending at `t_end` (the
        drain's last row), times in seconds since `t_start`."""
        rel = [None if k.fired_at is None else k.fired_at - t_start for k in self.kills]
        kills = []
        for i, k in enumerate(self.kills):
            fired = rel[i]
            until = next((r for r in rel[i + 1:] if r is not None), t_end)

            stall = None if fired is None else longest_stall(polls, fired, until)

            def since(t: float | None, fired: float | None = fired) -> float | None:
                return None if t is None or fired is None else round(t - t_start - fired, 2)

            kills.append({
                "kind": k.kind,
                "at": k.at,
                "fired_at_s": None if fired is None else round(fired, 2),
                "stored_at_kill": k.stored,
                "node": k.node,
                "led": k.led,
                "new_leader": k.new_leader,
                "elected_s": since(k.elected_at),
                "restarted_s": since(k.restarted_at),
                "caught_up_s": since(k.caught_up_at),
                "recovery_s": None if fired is None else recovery_s(timeline, fired),
                "stall_s": stall[0] if stall else None,
                "no_rows_s": stall[1] if stall else None,
            })
        fired = [x for x in kills if x["fired_at_s"] is not None]
        recoveries = [x["recovery_s"] for x in fired]
        return {
            "kind": self.kind,
            "at": self.at,
            "fired_at_s": kills[0]["fired_at_s"],
            "recovery_s": None if not fired or None in recoveries else max(recoveries),
            "node": kills[0]["node"],
            "kills": kills,
        }


_OBJECT = {"kill-stream-leader": "stream", "kill-consumer-leader": "consumer 0", "kill-kv-leader": "kv"}


async def _info(nats: Any, stream: str, consumer: str | None) -> Any:
    js = nats.nc.jetstream(timeout=QUERY_TIMEOUT_S)
    return await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))


def recovery_s(timeline: list[dict[str, Any]], fired: float) -> float | None:
    """Seconds from `fired` to the end of the dip it caused: the first timeline point back at
    RECOVERED of the rate before it, after the first one below (rows already on their way
    when the kill came land in the first second after it).  0.0 when the rate never dipped;
    the end of the drain counts as recovered; None when neither."""
    before = [p["rate"] for p in timeline if fired - WINDOW_S <= p["t"] < fired and p.get("rate")]
    if not before:
        return None
    target = RECOVERED * sum(before) / len(before)
    after = [p for p in timeline if p["t"] > fired]
    dip = next((i for i, p in enumerate(after) if p.get("rate", 0.0) < target), None)
    if dip is None:
        return 0.0
    for p in after[dip:]:
        if p.get("rate", 0.0) >= target:
            return round(p["t"] - fired, 2)
    if after[-1]["inserted"] + after[-1]["dlq"] >= after[-1]["published"] > 0:
        return round(after[-1]["t"] - fired, 2)  # drained before the rate came back: done is recovered
    return None


def longest_stall(polls: list[tuple[float, int, int]], start: float, end: float | None) -> tuple[float, float]:
    """From polls (t, stored, published) between the last one at or before `start` and `end` (the next
    kill, or the drain's last row; None: the last poll): the longest time no new row was stored while
    published messages waited to be (the sink's own stall), and the longest time no new row was stored
    at all (in a live run this includes waiting for the publisher, itself waiting for a new leader)."""
    window = [p for p in polls if p[0] <= start][-1:] + [p for p in polls if start < p[0]
                                                         and (end is None or p[0] <= end)]
    stalled, no_rows = 0.0, 0.0
    count, since, waited_since = None, 0.0, None
    for t, n, published in window:
        if n != count:
            count, since, waited_since = n, t, None
        if waited_since is None and published > n:
            waited_since = t
        no_rows = max(no_rows, t - since)
        if waited_since is not None:
            stalled = max(stalled, t - waited_since)
    return round(stalled, 2), round(no_rows, 2)


def skipped_duplicates(log_lines: list[dict]) -> int:
    """Deliveries acked as already stored, from the workers' release lines (those that drained)."""
    total = 0
    for line in log_lines:
        msg = str(line.get("msg", ""))
        if msg.startswith("released partition") and "skipped as stored " in msg:
            total += int(msg.rsplit("skipped as stored ", 1)[1].rstrip(")"))
    return total


def worker_deaths(log_lines: list[dict]) -> int:
    """Worker processes that exited unasked during the run: the supervisor's "worker N died" lines."""
    return sum(1 for line in log_lines if _DIED.match(str(line.get("msg", ""))))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _replica_in_use(sink: Any, cluster: Any) -> Any:
    """The ClickHouse replica worker 0 inserts into (its /status), else the first shard's first replica."""
    status = getattr(sink, "status", None) or getattr((getattr(sink, "sinks", None) or [None])[0], "status", None)
    workers = sorted((status or {}).get("workers") or [], key=lambda w: w.get("slot", 0))
    ch = (workers[0].get("clickhouse") or {}) if workers else {}
    in_use = (ch.get("in_use_list") or [ch.get("in_use")])[0]
    return next((r for r in cluster.replicas if r.address == in_use), cluster.replicas[0])


def _owned(servers: Any, name: str) -> tuple[int, Any]:
    for i, server in enumerate(servers.owned):
        if name in server.name:
            return i, server
    raise ChaosError(f"--chaos kill-{name} needs the bench's own {name} server (mark it embedded in the config)")
