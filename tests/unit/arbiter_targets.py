"""Scripted worker entries for tests/unit/test_arbiter.py (module-level: spawn pickles them by name).

Each speaks the worker side of the control protocol (workers/worker.py) without any
server. Every acquire and release is appended, before it is confirmed, to
<state_dir>/ownership.log as "<slot> <acquire|release> <pipeline>/<index>": one write per
line with O_APPEND, so the file's order is the order in which the workers acted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from workers import exitcodes
from workers.settings import Config


def _record(config: Config, slot: int, what: str, partitions: list) -> None:
    path = Path(config.state_dir) / "ownership.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for pipeline, index in partitions:
            os.write(fd, f"{slot} {what} {pipeline}/{index}\n".encode())
    finally:
        os.close(fd)


def _serve(slot: int, config: Config, conn: Any, heartbeat: Any, hold_releases: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heartbeat.value = time.monotonic()
    owned: list = []
    held: list = []  # release requests not yet carried out (hold_releases)
    conn.send({"op": "ready", "pid": os.getpid()})
    while True:
        msg = conn.recv()
        heartbeat.value = time.monotonic()
        op = msg["op"]
        if op == "assign":
            _record(config, slot, "acquire", msg["partitions"])
            owned += [p for p in msg["partitions"] if p not in owned]
            conn.send({"op": "assigned", "partitions": msg["partitions"]})
        elif op == "release" and hold_releases:
            held.append(msg["partitions"])
        elif op in ("release", "finish_releases"):
            for parts in [msg["partitions"]] if op == "release" else held:
                _record(config, slot, "release", parts)
                owned = [p for p in owned if p not in parts]
                conn.send({"op": "released", "partitions": parts})
            held = [] if op == "finish_releases" else held
        elif op == "refresh_schema":  # as workers/clickhouse/table_schema.py reports a read of the table
            conn.send({"op": "schema", "pipeline": "events", "table": "default.events", "digest": "d1",
                       "read_at": time.time(), "problem": None, "columns": [["id", "String", "", ""]]})
        elif op == "drain":
            _record(config, slot, "release", owned)
            conn.send({"op": "drained"})
            os._exit(exitcodes.OK)


def obedient(slot: int, config: Config, conn: Any, heartbeat: Any) -> None:
    """Carries out every control message at once."""
    _serve(slot, config, conn, heartbeat, hold_releases=False)


def slow_to_release(slot: int, config: Config, conn: Any, heartbeat: Any) -> None:
    """Holds every release until the test sends {"op": "finish_releases"}: a worker mid-batch."""
    _serve(slot, config, conn, heartbeat, hold_releases=True)


def cannot_boot(slot: int, config: Config, conn: Any, heartbeat: Any) -> None:
    """A worker whose table does not match: says why and exits BOOT (workers/worker.py)."""
    conn.send({"op": "fatal", "error": "pipelines events: no such table"})
    os._exit(exitcodes.BOOT)


def dies_at_import(slot: int, config: Config, conn: Any, heartbeat: Any) -> None:
    """A broken install: the process dies before it ever reports ready."""
    os._exit(1)
