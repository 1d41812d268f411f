"""The supervisor's main loop: spawn workers, hand out partitions, restart the fallen, drain on TERM.

Read it top to bottom like gunicorn's arbiter: signal handlers only queue the signal;
the loop waits on (signal pipe, worker pipes, worker exits), then handles what came,
restarts crashed workers with capped backoff and kills workers whose heartbeat stopped.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from supervisor.assignment import Partition, assign
from supervisor.config import Config
from supervisor import provision
from workers import worker as worker_main

log = logging.getLogger("jetsink.supervisor")

# The exit-code protocol of `python -m supervisor` (docs/operations.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_BOOT = 3

HEARTBEAT_TIMEOUT_S = 60.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0  # a worker up this long has its backoff reset


@dataclass
class WorkerHandle:
    """The supervisor's view of one worker slot."""

    slot: int
    process: Any = None
    conn: Any = None
    heartbeat: Any = None
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    restart_at: float | None = None
    partitions: tuple[Partition, ...] = ()
    stats: dict = field(default_factory=dict)


class Arbiter:
    """Runs the worker pool for one Config until TERM/INT; returns the exit code."""

    def __init__(self, config: Config, config_text: str) -> None:
        self.config = config
        self._config_text = config_text
        self._ctx = multiprocessing.get_context("spawn")
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._workers: dict[int, WorkerHandle] = {}
        self._servers: list[Any] = []
        self._draining_since: float | None = None
        self._exit_code = EXIT_OK

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._on_signal)
        try:
            self._start_servers()
            provision.check_tables(self.config)
            asyncio.run(provision.provision_streams(self.config))
            partitions = [Partition(name, i) for name, i in provision.partitions_of(self.config)]
            assignment = assign(partitions, self.config.workers)
            for slot in range(self.config.workers):
                self._workers[slot] = WorkerHandle(slot=slot, partitions=assignment[slot])
                self._spawn(self._workers[slot])
            log.info("supervising %d workers over %d partitions", self.config.workers, len(partitions))
            self._loop(wake_r)
        except (provision.ProvisionError, ConnectionError, RuntimeError, FileNotFoundError) as exc:
            # Unreachable servers, an embedded server that would not start, a table that
            # does not match: one clear line naming it, and the boot-failure exit code.
            log.error("cannot start: %s", exc)
            self._exit_code = EXIT_BOOT
        finally:
            self._kill_all()
            for server in reversed(self._servers):
                server.stop()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return self._exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.put_nowait(signum)  # nothing else: the loop decides

    def _start_servers(self) -> None:
        from supervisor import embedded

        cfg = self.config
        state = Path(cfg.state_dir)
        if cfg.nats.embedded:
            host, port = _host_port(cfg.nats.servers[0], 4222)
            self._servers.append(embedded.start_nats(state / "nats", port=port, host=host))
            log.info("started embedded nats-server on %s:%d (store %s)", host, port, state / "nats")
        if cfg.clickhouse.embedded:
            self._servers.append(embedded.start_clickhouse(state / "clickhouse", port=cfg.clickhouse.port, host=cfg.clickhouse.host))
            log.info("started embedded clickhouse-server on %s:%d (data %s)", cfg.clickhouse.host, cfg.clickhouse.port, state / "clickhouse")

    # -- the loop ---------------------------------------------------------------

    def _loop(self, wake_r: int) -> None:
        while True:
            waitables: list[Any] = [wake_r]
            for w in self._workers.values():
                if w.process is not None:
                    waitables += [w.conn, w.process.sentinel]
            for ready in wait(waitables, timeout=1.0):
                if ready == wake_r:
                    os.read(wake_r, 512)
            while not self._signals.empty():
                self._handle_signal(self._signals.get_nowait())
            for w in self._workers.values():
                self._read_messages(w)
            self._reap()
            if self._draining_since is not None:
                if all(w.process is None for w in self._workers.values()):
                    log.info("all workers drained; exiting")
                    return
                if time.monotonic() - self._draining_since > self.config.shutdown_grace_s:
                    log.error("drain took longer than shutdown_grace_s=%s; killing workers", self.config.shutdown_grace_s)
                    self._kill_all()
                    return
                continue
            if self._exit_code != EXIT_OK:
                return
            self._murder_stalled()
            self._restart_due()

    def _handle_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self._draining_since is not None:
                log.warning("second %s while draining: exiting now", name)
                self._kill_all()
                raise SystemExit(EXIT_OK)
            log.info("%s: draining workers (grace %ss)", name, self.config.shutdown_grace_s)
            self._draining_since = time.monotonic()
            for w in self._workers.values():
                w.restart_at = None
                self._send(w, {"op": "drain"})
        elif sig == signal.SIGQUIT:
            log.warning("SIGQUIT: stopping now without draining")
            self._kill_all()
            raise SystemExit(EXIT_OK)
        else:
            log.warning("%s is not handled yet; ignoring", name)

    def _read_messages(self, w: WorkerHandle) -> None:
        if w.conn is None:
            return
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                op = msg.get("op")
                if op == "ready":
                    w.ready = True
                    log.info("worker %d ready (pid %d)", w.slot, w.process.pid, extra={"slot": w.slot})
                    if self._draining_since is None:
                        self._send(w, {"op": "assign", "partitions": [[p.pipeline, p.index] for p in w.partitions]})
                    else:
                        self._send(w, {"op": "drain"})
                elif op == "stats":
                    w.stats = msg
                elif op == "fatal":
                    log.error("worker %d cannot start: %s", w.slot, msg.get("error"), extra={"slot": w.slot})
                elif op in ("assigned", "released", "drained"):
                    log.debug("worker %d %s %s", w.slot, op, msg.get("partitions", ""))
        except (EOFError, OSError):
            pass  # the process is gone; _reap handles it

    def _reap(self) -> None:
        for w in self._workers.values():
            proc = w.process
            if proc is None or proc.is_alive():
                continue
            proc.join()
            code = proc.exitcode
            self._read_messages(w)
            w.conn.close()
            w.process = w.conn = None
            w.ready = False
            if self._draining_since is not None:
                log.info("worker %d exited (%s)", w.slot, code, extra={"slot": w.slot})
                continue
            if code == worker_main.EXIT_BOOT_ERROR:
                log.error("worker %d could not boot; stopping (fix the cause and start again)", w.slot, extra={"slot": w.slot})
                self._exit_code = EXIT_BOOT
                continue
            if time.monotonic() - w.started_at > STABLE_RUN_S:
                w.backoff_s = BACKOFF_START_S
            w.restart_at = time.monotonic() + w.backoff_s
            log.error("worker %d died (exit %s); restarting in %.1fs", w.slot, code, w.backoff_s, extra={"slot": w.slot})
            w.backoff_s = min(w.backoff_s * 2, BACKOFF_MAX_S)

    def _murder_stalled(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if w.process is not None and now - w.heartbeat.value > HEARTBEAT_TIMEOUT_S:
                log.error("worker %d made no progress for %.0fs; killing it", w.slot, now - w.heartbeat.value, extra={"slot": w.slot})
                w.process.kill()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if w.process is None and w.restart_at is not None and now >= w.restart_at:
                w.restarts += 1
                self._spawn(w)

    # -- workers ----------------------------------------------------------------

    def _spawn(self, w: WorkerHandle) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        w.heartbeat = self._ctx.Value("d", time.monotonic(), lock=False)
        cfg = self.config
        base_dir = str(cfg.source.parent) if cfg.source else os.getcwd()
        w.process = self._ctx.Process(
            target=worker_main.main,
            args=(w.slot, self._config_text, base_dir, str(cfg.source) if cfg.source else None, child_conn, w.heartbeat),
            name=f"jetsink-worker-{w.slot}",
        )
        w.process.start()
        child_conn.close()
        w.conn = parent_conn
        w.started_at = time.monotonic()
        w.restart_at = None
        log.info("spawned worker %d (pid %d)", w.slot, w.process.pid, extra={"slot": w.slot})

    def _send(self, w: WorkerHandle, msg: dict) -> None:
        if w.conn is None:
            return
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError):
            pass

    def _kill_all(self) -> None:
        for w in self._workers.values():
            if w.process is not None and w.process.is_alive():
                w.process.kill()
                w.process.join()


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port
