"""The supervisor's main loop: spawn workers, hand out partitions, restart the fallen, drain on TERM.

Read it top to bottom like gunicorn's arbiter: signal handlers only queue the signal;
the loop waits on (signal pipe, worker pipes, worker exits), handles what came, then
reconciles: every ready worker is told to release the partitions it should no longer
own, and to acquire the ones it should own once no other worker holds them. That one
rule (release before acquire) serves start-up, crash restarts, resizes and reloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

from supervisor import provision
from supervisor.schemas import SchemaBook
from supervisor.status import PoolView, StatusServer, summary
from supervisor.systemd import Notifier
from supervisor.assignment import Partition, assign, rebalance
from supervisor.config import ConfigError, load_config
from workers.settings import Config, profiles_dir
from supervisor.profiler import ProfileScheduler
from workers import exitcodes
from workers import telemetry as otel
from workers import worker as worker_main

log = logging.getLogger("jetsink.supervisor")

# The exit-code protocol of `python -m supervisor` (docs/operations.md).

HEARTBEAT_TIMEOUT_S = 60.0
ABORT_GRACE_S = 5.0  # after SIGABRT (which dumps the stuck worker's stacks), SIGKILL
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0  # a worker up this long has its backoff reset
MAX_FAILED_BOOTS = 3  # consecutive deaths before `ready`: a boot failure, stop restarting


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


class Arbiter:
    """Runs the worker pool for one Config until TERM/INT; returns the exit code."""

    def __init__(self, config: Config, config_text: str) -> None:
        self.config = config
        self._config_text = config_text
        self._ctx = multiprocessing.get_context("spawn")
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._workers: dict[int, WorkerHandle] = {}
        self._desired: dict[int, tuple[Partition, ...]] = {}
        self._size = config.workers
        self._servers: list[Any] = []
        self._draining_since: float | None = None
        self._exit_code = exitcodes.OK
        self._notifier = Notifier()
        self._announced_ready = False  # READY=1 sent for the current generation
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self._view = PoolView()
        self._snapshot: dict | None = None  # replaced, never mutated: the status thread reads it
        self._schemas = SchemaBook()  # the tables' versions as the workers read them
        self._status_server: StatusServer | None = None
        # Observability (built in run()): spans, metrics, CPU profiles of the workers.
        self._telemetry = otel.Telemetry()
        self._trace_cause: Any = None  # context of the operation that control messages serve
        self._profiler: ProfileScheduler | None = None

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._on_signal)
        try:
            self._start_observability()
            with self._telemetry.span("supervisor.start"):
                self._trace_cause = self._telemetry.capture()
                self._start_servers()
                self._provision(self.config)
                self._start_status_server()
                self._desired = assign(self._partitions(self.config), self._size)
                for slot in range(self._size):
                    self._spawn(self._handle(slot))
                log.info("supervising %d workers over %d partitions", self._size, sum(map(len, self._desired.values())))
            self._loop(wake_r)
        except (provision.ProvisionError, OSError, RuntimeError) as exc:
            # Unreachable servers, an embedded server that would not start, a table that
            # does not match, a taken admin port: one clear line naming it, and the
            # boot-failure exit code.
            log.error("cannot start: %s", exc)
            self._exit_code = exitcodes.BOOT
        finally:
            self._kill_all()
            if self._status_server is not None:
                self._status_server.stop()
            self._stop_observability()
            for server in reversed(self._servers):
                server.stop()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return self._exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.put_nowait(signum)  # nothing else: the loop decides

    def _start_observability(self) -> None:
        obs = self.config.observability
        self._telemetry = otel.setup(obs, role="supervisor")
        if obs.enabled and obs.profiling.cpu:
            self._profiler = ProfileScheduler(obs.profiling, profiles_dir(self.config))

    def _stop_observability(self) -> None:
        if self._profiler is not None:
            self._profiler.stop()
        self._telemetry.shutdown()

    def _profile(self) -> None:
        """Let the CPU profiler start or collect windows (never blocks)."""
        if self._profiler is not None:
            ready = {w.slot: w.process.pid for w in self._workers.values() if w.alive and w.ready and not w.draining}
            self._profiler.tick(time.monotonic(), ready if self._draining_since is None else {})

    _SIGNAL_SPANS = {
        signal.SIGTERM: "supervisor.shutdown", signal.SIGINT: "supervisor.shutdown", signal.SIGHUP: "supervisor.reload",
        signal.SIGTTIN: "supervisor.resize", signal.SIGTTOU: "supervisor.resize",
    }

    def _traced_signal(self, sig: int) -> None:
        """Handle a signal in its own span; the control messages it causes carry that span."""
        name = self._SIGNAL_SPANS.get(sig)
        if name is None:
            return self._handle_signal(sig)
        with self._telemetry.span(name, {"jetsink.signal": signal.Signals(sig).name}):
            self._trace_cause = self._telemetry.capture()
            self._handle_signal(sig)

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

    def _start_status_server(self) -> None:
        admin = self.config.admin
        if not admin.enabled:
            return
        self._status_server = StatusServer(admin.listen, lambda: self._snapshot)
        self._status_server.start()  # it logs its address

    @staticmethod
    def _provision(config: Config) -> None:
        provision.check_tables(config)
        asyncio.run(provision.provision_streams(config))

    @staticmethod
    def _partitions(config: Config) -> list[Partition]:
        return [Partition(name, i) for name, i in provision.partitions_of(config)]

    # -- the loop ---------------------------------------------------------------

    def _loop(self, wake_r: int) -> None:
        while True:
            waitables: list[Any] = [wake_r]
            for w in self._workers.values():
                if w.alive:
                    waitables += [w.conn, w.process.sentinel]
            for ready in wait(waitables, timeout=1.0):
                if ready == wake_r:
                    os.read(wake_r, 512)
            while not self._signals.empty():
                self._traced_signal(self._signals.get_nowait())
            for w in list(self._workers.values()):
                self._read_messages(w)
            self._reap()
            self._profile()
            self._report()
            if self._draining_since is not None:
                if not any(w.alive for w in self._workers.values()):
                    log.info("all workers drained; exiting")
                    return
                if time.monotonic() - self._draining_since > self.config.shutdown_grace_s:
                    log.error("drain took longer than shutdown_grace_s=%s; killing workers", self.config.shutdown_grace_s)
                    self._kill_all()
                    return
                continue
            if self._exit_code != exitcodes.OK:
                return
            self._murder_stalled()
            self._restart_due()
            self._reconcile()

    def _report(self) -> None:
        """Publish the status snapshot and talk to systemd (READY, STATUS, WATCHDOG)."""
        snapshot = self._view.snapshot(self._workers.values(), draining=self._draining_since is not None)
        snapshot["schemas"] = self._schemas.snapshot(s for s, w in self._workers.items() if w.alive)
        self._snapshot = snapshot
        now = time.monotonic()
        n = self._notifier
        if not n.enabled:
            return
        active = [w for s, w in self._workers.items() if s < self._size]
        if not self._announced_ready and self._draining_since is None and active and all(w.ready for w in active):
            n.ready()
            self._announced_ready = True
        interval = n.watchdog_interval()
        # Only a loop that still turns pets the watchdog: a hung supervisor gets restarted.
        if interval and now >= self._next_watchdog:
            n.watchdog()
            self._next_watchdog = now + interval
        if now >= self._next_status:
            n.status(summary(self._snapshot))
            self._next_status = now + 5.0

    def _handle_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self._draining_since is not None:
                log.warning("second %s while draining: exiting now", name)
                self._kill_all()
                raise SystemExit(exitcodes.OK)
            log.info("%s: draining workers (grace %ss)", name, self.config.shutdown_grace_s)
            self._notifier.stopping()
            self._draining_since = time.monotonic()
            for w in self._workers.values():
                w.restart_at = None
                self._drain(w)
        elif sig == signal.SIGQUIT:
            log.warning("SIGQUIT: stopping now without draining")
            self._kill_all()
            raise SystemExit(exitcodes.OK)
        elif self._draining_since is not None:
            log.warning("%s ignored while draining", name)
        elif sig == signal.SIGHUP:
            self._notifier.reloading()
            self._reload()
            self._refresh_schemas()
            # READY=1 again once every worker of the (possibly new) generation is ready.
            self._announced_ready = False
        elif sig == signal.SIGTTIN:
            self._resize(self._size + 1, why="SIGTTIN")
        elif sig == signal.SIGTTOU:
            if self._size > 1:
                self._resize(self._size - 1, why="SIGTTOU")
            else:
                log.warning("SIGTTOU: already at one worker")

    def _read_messages(self, w: WorkerHandle) -> None:
        if w.conn is None:
            return
        try:
            while w.conn.poll():
                self._on_message(w, w.conn.recv())
        except (EOFError, OSError):
            pass  # the process is gone; _reap handles it

    def _on_message(self, w: WorkerHandle, msg: dict) -> None:
        op = msg.get("op")
        parts = {Partition(p, i) for p, i in msg["partitions"]} if op in ("assigned", "released") else set()
        if op == "ready":
            w.ready = True
            w.failed_boots = 0
            log.info("worker %d ready (pid %d)", w.slot, w.process.pid, extra={"slot": w.slot})
            if self._draining_since is not None:
                self._drain(w)
        elif op == "stats":
            w.stats = msg
        elif op == "assigned":
            w.acquiring -= parts
            w.owned |= parts
        elif op == "released":
            w.releasing -= parts
            w.owned -= parts
        elif op == "schema":
            self._schemas.seen(w.slot, msg)
        elif op == "fatal":
            log.error("worker %d cannot start: %s", w.slot, msg.get("error"), extra={"slot": w.slot})

    def _reconcile(self) -> None:
        """Release what a worker should not own; assign what it should, once free."""
        held: dict[Partition, int] = {p: w.slot for w in self._workers.values() if w.alive for p in w.holds()}
        for w in self._workers.values():
            if not w.ready or w.draining:
                continue
            want = set(self._desired.get(w.slot, ()))
            release = (w.owned | w.acquiring) - want - w.releasing
            if release:
                w.releasing |= release
                with self._telemetry.span("supervisor.release", {"jetsink.worker.slot": w.slot}, parent=self._trace_cause):
                    self._send(w, {"op": "release", "partitions": _wire(release)})
            acquire = {p for p in want - w.holds() if p not in held}
            if acquire:
                w.acquiring |= acquire
                held.update((p, w.slot) for p in acquire)
                with self._telemetry.span("supervisor.assign", {"jetsink.worker.slot": w.slot}, parent=self._trace_cause):
                    self._send(w, {"op": "assign", "partitions": _wire(acquire)})
            if w.retiring and not w.holds():
                self._drain(w)

    def _drain(self, w: WorkerHandle) -> None:
        if w.alive and not w.draining:
            w.draining = True
            with self._telemetry.span("supervisor.drain", {"jetsink.worker.slot": w.slot}, parent=self._trace_cause):
                self._send(w, {"op": "drain"})

    def _reap(self) -> None:
        for w in list(self._workers.values()):
            proc = w.process
            if proc is None or proc.is_alive():
                continue
            proc.join()
            code = proc.exitcode
            self._read_messages(w)
            w.conn.close()
            was_ready, expected = w.ready, w.draining
            w.process = w.conn = None
            w.ready = w.draining = False
            w.owned.clear(), w.acquiring.clear(), w.releasing.clear()
            w.abort_sent_at = None
            if self._draining_since is not None:
                log.info("worker %d exited (%s)", w.slot, code, extra={"slot": w.slot})
                continue
            if expected and w.slot >= self._size:
                log.info("worker %d retired", w.slot, extra={"slot": w.slot})
                del self._workers[w.slot]
                continue
            if expected and (w.respawn or w.retiring):
                w.respawn = w.retiring = False
                self._spawn(w)
                continue
            if code == exitcodes.BOOT:
                log.error("worker %d could not boot; stopping (fix the cause and start again)", w.slot, extra={"slot": w.slot})
                self._exit_code = exitcodes.BOOT
                continue
            if not was_ready:
                w.failed_boots += 1
                if w.failed_boots >= MAX_FAILED_BOOTS:
                    log.error("worker %d died %d times before it was ready (exit %s); stopping", w.slot, w.failed_boots, code, extra={"slot": w.slot})
                    self._exit_code = exitcodes.BOOT
                    continue
            if time.monotonic() - w.started_at > STABLE_RUN_S:
                w.backoff_s = BACKOFF_START_S
            w.restart_at = time.monotonic() + w.backoff_s
            log.error("worker %d died (exit %s); restarting in %.1fs", w.slot, code, w.backoff_s, extra={"slot": w.slot})
            w.backoff_s = min(w.backoff_s * 2, BACKOFF_MAX_S)

    def _murder_stalled(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if not w.alive:
                continue
            if w.abort_sent_at is not None:
                if now - w.abort_sent_at > ABORT_GRACE_S:
                    w.process.kill()
            elif now - w.heartbeat.value > HEARTBEAT_TIMEOUT_S:
                log.error("worker %d made no progress for %.0fs; aborting it", w.slot, now - w.heartbeat.value, extra={"slot": w.slot})
                os.kill(w.process.pid, signal.SIGABRT)
                w.abort_sent_at = now

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if not w.alive and w.restart_at is not None and now >= w.restart_at:
                w.restarts += 1
                self._telemetry.worker_restarted(w.slot)
                with self._telemetry.span("supervisor.restart", {"jetsink.worker.slot": w.slot}):
                    self._trace_cause = self._telemetry.capture()
                    self._spawn(w)

    # -- resize and reload ------------------------------------------------------

    def _resize(self, size: int, why: str) -> None:
        old = self._size
        self._size = size
        self._desired = rebalance(self._desired, self._partitions(self.config), size)
        for slot in range(size):
            w = self._handle(slot)
            w.retiring = False
            if not w.alive and w.restart_at is None:
                self._spawn(w)
        for slot, w in self._workers.items():
            if slot >= size:
                w.retiring = True
        moved = sum(1 for s, ps in self._desired.items() for p in ps if p not in self._workers[s].holds())
        log.info("%s: workers %d -> %d; %d partitions move", why, old, size, moved)

    def _reload(self) -> None:
        source = self.config.source
        try:
            text = Path(source).read_text()
            new = load_config(source)
        except (ConfigError, OSError) as exc:
            log.error("SIGHUP: %s is invalid, keeping the running config:\n%s", source, exc)
            return
        if dataclasses.replace(new, workers=self.config.workers) == self.config:
            if new.workers != self._size:
                self._resize(new.workers, why="SIGHUP")
            else:
                log.info("SIGHUP: %s unchanged", source)
            self.config = new
            self._config_text = text
            return
        try:
            self._provision(new)
        except (provision.ProvisionError, ConnectionError) as exc:
            log.error("SIGHUP: cannot apply %s, keeping the running config: %s", source, exc)
            return
        log.info("SIGHUP: config changed; restarting workers with it")
        self.config = new
        self._config_text = text
        self._size = new.workers
        self._desired = rebalance(self._desired, self._partitions(new), new.workers)
        for slot, w in list(self._workers.items()):
            if slot >= new.workers:
                w.retiring = True
                self._drain(w)
            elif w.alive:
                w.respawn = True
                self._drain(w)
        for slot in range(new.workers):
            w = self._handle(slot)
            if not w.alive and w.restart_at is None:
                self._spawn(w)

    def _refresh_schemas(self) -> None:
        """SIGHUP: every running worker reads its tables again now (config changed or not)."""
        running = [w for w in self._workers.values() if w.ready and not w.draining]
        if running:
            log.info("SIGHUP: workers read every table again")
        for w in running:
            self._send(w, {"op": "refresh_schema"})

    # -- workers ----------------------------------------------------------------

    def _handle(self, slot: int) -> WorkerHandle:
        if slot not in self._workers:
            self._workers[slot] = WorkerHandle(slot=slot)
        return self._workers[slot]

    def _spawn(self, w: WorkerHandle) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        w.heartbeat = self._ctx.Value("d", time.monotonic(), lock=False)
        w.process = self._ctx.Process(
            target=worker_main.main,
            args=(w.slot, self.config, child_conn, w.heartbeat),
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
            w.conn.send(self._telemetry.inject(msg))  # + "traceparent" of the current span
        except (BrokenPipeError, OSError):
            pass

    def _kill_all(self) -> None:
        for w in self._workers.values():
            if w.process is not None and w.process.is_alive():
                w.process.kill()
                w.process.join()


def _wire(parts: set[Partition]) -> list[list[Any]]:
    return [[p.pipeline, p.index] for p in sorted(parts)]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port
