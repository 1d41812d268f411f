"""One worker slot as the supervisor sees it, and the mechanics of its process.

The arbiter decides (who owns which partition, when to restart); a ``WorkerHandle``
does: spawn the process with the Config and its end of a pipe, send and receive control
messages, reap it, abort it (SIGABRT, so faulthandler dumps its stacks) and kill it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.assignment import Partition
from workers.settings import Config

# The entry of a worker process: (slot, config, conn, heartbeat) -> None; it must be
# picklable by reference (a module-level function), since workers are spawned.
WorkerTarget = Callable[[int, Config, Any, Any], None]


@dataclass(frozen=True)
class Timings:
    """How patient the arbiter is with its workers (docs/operations.md, "Crashes and restarts")."""

    heartbeat_timeout_s: float = 60.0
    abort_grace_s: float = 5.0  # after SIGABRT (which dumps the stuck worker's stacks), SIGKILL
    backoff_start_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_run_s: float = 60.0  # a worker up this long has its backoff reset
    max_failed_boots: int = 3  # consecutive deaths before `ready`: a boot failure, stop restarting


@dataclass
class WorkerHandle:
    """One worker slot: the supervisor's view of it, and the mechanics of its process."""

    slot: int
    backoff_s: float = Timings.backoff_start_s  # the next restart's delay
    process: Any = None
    conn: Any = None
    heartbeat: Any = None
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    failed_boots: int = 0
    owned: set[Partition] = field(default_factory=set)
    acquiring: set[Partition] = field(default_factory=set)
    releasing: set[Partition] = field(default_factory=set)
    draining: bool = False  # told to drain (shutdown, reload or retirement)
    respawn: bool = False  # after a drain-for-reload: start again at once, new config
    retiring: bool = False  # slot removed by a resize: drain once empty, then forget
    abort_sent_at: float | None = None
    stats: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process is not None

    def holds(self) -> set[Partition]:
        return self.owned | self.acquiring | self.releasing

    def spawn(self, ctx: Any, target: WorkerTarget, config: Config) -> None:
        """Start the slot's process; it gets the Config itself (pickled) and its end of a pipe."""
        parent_conn, child_conn = ctx.Pipe()
        self.heartbeat = ctx.Value("d", time.monotonic(), lock=False)
        self.process = ctx.Process(target=target, args=(self.slot, config, child_conn, self.heartbeat),
                                   name=f"jetsink-worker-{self.slot}")
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.started_at = time.monotonic()
        self.restart_at = None

    def waitables(self) -> list[Any]:
        """What wakes the loop for this worker: its pipe and its exit."""
        return [self.conn, self.process.sentinel] if self.alive else []

    def send(self, msg: dict) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            pass  # the process is gone; the loop reaps it

    def receive(self) -> list[dict]:
        """The messages waiting on the pipe, without blocking."""
        msgs: list[dict] = []
        if self.conn is None:
            return msgs
        try:
            while self.conn.poll():
                msgs.append(self.conn.recv())
        except (EOFError, OSError):
            pass  # the process is gone; the loop reaps it
        return msgs

    def exited(self) -> bool:
        return self.process is not None and not self.process.is_alive()

    def reap(self) -> int | None:
        """Join the exited process, close its pipe, forget what it held; its exit code."""
        self.process.join()
        code = self.process.exitcode
        self.conn.close()
        self.process = self.conn = None
        self.ready = self.draining = False
        self.owned.clear()
        self.acquiring.clear()
        self.releasing.clear()
        self.abort_sent_at = None
        return code

    def abort(self) -> None:
        """SIGABRT: faulthandler in the worker dumps every thread's stack, then it dies."""
        os.kill(self.process.pid, signal.SIGABRT)
        self.abort_sent_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL and wait for it (the loop still reaps the slot)."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join()
