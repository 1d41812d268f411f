"""`python -m bench --chaos KIND [--chaos-at F]`: one kill -9 during the drain, then accounting.

KIND is what is killed once a fraction F (default 0.3) of the messages is stored:

    kill-worker       one worker process (its supervisor restarts it)
    kill-supervisor   the supervisor and its workers at once, then a new supervisor
                      (what systemd's Restart= does after an OOM kill of the unit)
    kill-nats         the bench's nats-server, restarted on its store
    kill-clickhouse   the bench's clickhouse-server, restarted on its data

results.json gets a "chaos" section (kind, at, fired_at_s, recovery_s) and, at top level,
`recovery_s` and `skipped_duplicates`; `duplicates` and `lost` are counted as in every run,
from ClickHouse directly.  recovery_s: from the kill to the end of the dip it caused: the first
second whose insert rate is back to RECOVERED of the rate in the WINDOW_S before the kill.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

KINDS = ("kill-worker", "kill-supervisor", "kill-nats", "kill-clickhouse")
WINDOW_S = 5.0
RECOVERED = 0.8


class ChaosError(RuntimeError):
    """The asked-for fault cannot be injected here (e.g. the server is not the bench's own)."""


@dataclass
class Chaos:
    """One fault, fired once when `at` of the `expected` messages are stored."""

    kind: str
    at: float
    expected: int
    fired_at: float | None = None  # wall-clock time of the kill
    notes: list[str] = field(default_factory=list)

    def due(self, stored: int) -> bool:
        return self.fired_at is None and stored >= self.at * self.expected

    def fire(self, now: float, sink: Any, servers: Any) -> None:
        """Kill (and, for the servers and the supervisor, start again) what `kind` names."""
        from supervisor import embedded_clickhouse, embedded_nats

        self.fired_at = now
        if self.kind == "kill-worker":
            if not sink.workers:
                raise ChaosError("kill-worker: no worker known yet")
            slot = min(sink.workers)
            _kill(sink.workers[slot])
            self.notes.append(f"chaos: kill -9 of worker {slot} (pid {sink.workers[slot]})")
        elif self.kind == "kill-supervisor":
            pids = [sink.pid, *sink.workers.values()]
            for pid in pids:
                _kill(pid)
            sink.proc.wait()
            sink.start()
            self.notes.append(f"chaos: kill -9 of the supervisor and its workers (pids {pids}), then a new supervisor")
        elif self.kind in ("kill-nats", "kill-clickhouse"):
            name = "nats" if self.kind == "kill-nats" else "clickhouse"
            i, server = _owned(servers, name)
            server.proc.kill()
            server.proc.wait()
            if name == "nats":
                extra = ["--profile", str(servers.nats_profile_port)] if servers.nats_profile_port else []
                again = embedded_nats.start_nats(server.data_dir, server.port, extra_args=extra)
                servers.nats_pid = again.pid
            else:
                again = embedded_clickhouse.start_clickhouse(server.data_dir, server.port)
                servers.clickhouse_pid = again.pid
            servers.owned[i] = again
            self.notes.append(f"chaos: kill -9 of {server.name} (pid {server.pid}), restarted as pid {again.pid}")
        else:
            raise ChaosError(f"unknown chaos kind {self.kind!r}; one of {', '.join(KINDS)}")

    def figures(self, timeline: list[dict[str, Any]], t_start: float) -> dict[str, Any]:
        """The chaos section of results.json, from the run's one-second timeline."""
        if self.fired_at is None:
            return {"kind": self.kind, "at": self.at, "fired_at_s": None, "recovery_s": None}
        fired = self.fired_at - t_start
        return {
            "kind": self.kind,
            "at": self.at,
            "fired_at_s": round(fired, 2),
            "recovery_s": recovery_s(timeline, fired),
        }


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


def skipped_duplicates(log_lines: list[dict]) -> int:
    """Deliveries acked as already stored, from the workers' release lines (those that drained)."""
    total = 0
    for line in log_lines:
        msg = str(line.get("msg", ""))
        if msg.startswith("released partition") and "skipped as stored " in msg:
            total += int(msg.rsplit("skipped as stored ", 1)[1].rstrip(")"))
    return total


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _owned(servers: Any, name: str) -> tuple[int, Any]:
    for i, server in enumerate(servers.owned):
        if name in server.name:
            return i, server
    raise ChaosError(f"--chaos kill-{name} needs the bench's own {name} server (mark it embedded in the config)")
