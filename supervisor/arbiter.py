"""The supervisor's main loop: spawn workers, hand out partitions, restart the fallen, drain on TERM.

Read it top to bottom like gunicorn's arbiter: signal handlers only queue the signal;
each turn of the loop waits on (signal pipe, worker pipes, worker exits), dispatches
queued signals to one ``handle_<signame>`` method each, reads the workers' messages,
reaps the exited, and then reconciles: every ready worker is told to release the
partitions it should no longer own, and to acquire the ones it should own once no other
worker holds them. That one rule (release before acquire) serves start-up, crash
restarts, resizes and reloads. Process mechanics (spawn, send, receive, reap, abort,
kill) live on ``WorkerHandle`` (supervisor/worker_handle.py); the arbiter only decides.

The worker's entry function is injected (uvicorn's ``Multiprocess(config, target)``):
``target(slot, config, conn, heartbeat)``, by default ``workers.worker.main``. Tests
run the real arbiter with scripted targets, driving it with ``start()``, ``signal()``
and ``turn()`` instead of ``run()``.
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
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor import provision
from supervisor.admin import StatusServer, address_file
from supervisor.assignment import Partition, assign, rebalance
from supervisor.cluster import share
from supervisor.config import ConfigError, load_config
from supervisor.members import Membership, Solo, instances
from supervisor.profiler import ProfileScheduler
from supervisor.schemas import SchemaBook
from supervisor.snapshot import PoolView, member_info
from supervisor.status import summary
from supervisor.systemd import Notifier
from supervisor.worker_handle import Timings, WorkerHandle, WorkerTarget
from workers import exitcodes
from workers import worker as worker_main
from workers.observability import telemetry as otel
from workers.settings import Config, profiles_dir

log = logging.getLogger("jetsink.supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
SIGNAL_SPANS = {  # QUIT has none: nothing is sent to the workers
    signal.SIGTERM: "supervisor.shutdown", signal.SIGINT: "supervisor.shutdown",
    signal.SIGHUP: "supervisor.reload", signal.SIGTTIN: "supervisor.resize", signal.SIGTTOU: "supervisor.resize",
}
DEFAULT_TIMINGS = Timings()  # frozen, so one instance serves every Arbiter


class Arbiter:
    """Runs the worker pool for one Config until TERM/INT/QUIT; `run()` returns the exit code."""

    def __init__(self, config: Config, target: WorkerTarget = worker_main.main, timings: Timings = DEFAULT_TIMINGS,
                 membership: Any = None) -> None:
        self.config = config
        # The live instances that share the partitions (supervisor/members.py); run() joins
        # the members bucket unless one is given (tests give a Solo or their own).
        self._members: Any = membership if membership is not None else Solo(config.instance_id)
        self._own_members = membership is None
        self._members_seen: Any = None  # the view the desired assignment was computed from
        self._elsewhere: frozenset[Partition] = frozenset()  # held by other live instances
        self._target = target
        self._timings = timings
        self._ctx = multiprocessing.get_context("spawn")
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake_r: int | None = None  # the read end of signal.set_wakeup_fd's pipe, in run()
        self._workers: dict[int, WorkerHandle] = {}
        self._desired: dict[int, tuple[Partition, ...]] = {}
        self._size = config.workers
        self._servers: list[Any] = []
        self._draining_since: float | None = None
        self._halted = False  # QUIT or a second TERM/INT: the loop ends at once
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

    @property
    def exit_code(self) -> int:
        return self._exit_code

    @property
    def snapshot(self) -> dict | None:
        """The latest status snapshot (what /status serves)."""
        return self._snapshot

    @property
    def workers(self) -> dict[int, WorkerHandle]:
        """The slots by number (read-only use: status, tests)."""
        return self._workers

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        """Start servers, provision, spawn the workers and turn the loop until it ends."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in SIGNALS:
            signal.signal(sig, lambda signum, frame: self.signal(signum))
        try:
            self._start_observability()
            with self._telemetry.span("supervisor.start"):
                self._trace_cause = self._telemetry.capture()
                self._start_servers()
                self._provision(self.config)
                self._start_status_server()
                self._join()
                self.start()
            while self.turn():
                pass
        except (provision.ProvisionError, OSError, RuntimeError) as exc:
            # Unreachable servers, an embedded server that would not start, a table that
            # does not match, a taken admin port: one clear line naming it, and the
            # boot-failure exit code.
            log.error("cannot start: %s", exc)
            self._exit_code = exitcodes.BOOT
        finally:
            self.stop()
            self._members.stop()  # after the drain: the others take over at once
            self._stop_observability()
            for server in reversed(self._servers):
                server.stop()
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(wake_w)
            self._wake_r = None
        return self._exit_code

    def signal(self, sig: int) -> None:
        """Queue a signal for the loop (this is the signal handler: nothing else happens here)."""
        self._signals.put_nowait(sig)

    def start(self) -> None:
        """Assign this instance's share of the partitions to the configured slots and spawn their workers."""
        self._desired = assign(self._share(self.config), self._size)
        for slot in range(self._size):
            self._spawn(self._handle(slot))
        log.info("supervising %d workers over %d partitions", self._size, sum(map(len, self._desired.values())))

    def stop(self) -> None:
        """Kill whatever still runs and stop the admin endpoint (the end of run(), or a test)."""
        self._kill_all()
        if self._status_server is not None:
            self._status_server.stop()
            self._status_server = None

    def _start_observability(self) -> None:
        obs = self.config.observability
        self._telemetry = otel.setup(obs, role="supervisor")
        if obs.enabled and obs.profiling.cpu:
            self._profiler = ProfileScheduler(obs.profiling, profiles_dir(self.config))

    def _stop_observability(self) -> None:
        if self._profiler is not None:
            self._profiler.stop()
        self._telemetry.shutdown()

    def _start_servers(self) -> None:
        # Only embedded mode needs them (psutil, server binaries).
        from supervisor import embedded_clickhouse, embedded_nats

        cfg = self.config
        state = Path(cfg.state_dir)
        if cfg.nats.embedded:
            host, port = _host_port(cfg.nats.servers[0], 4222)
            # The embedded server carries the account mappings of stream_per_partition pipelines itself.
            self._servers.append(embedded_nats.start_nats(state / "nats", port=port, host=host,
                                                          mappings=provision.account_mappings(cfg)))
            log.info("started embedded nats-server on %s:%d (store %s)", host, port, state / "nats")
        if cfg.clickhouse.embedded:
            ch = cfg.clickhouse
            self._servers.append(embedded_clickhouse.start_clickhouse(state / "clickhouse", port=ch.port, host=ch.host))
            log.info("started embedded clickhouse-server on %s:%d (data %s)", ch.host, ch.port, state / "clickhouse")

    def _start_status_server(self) -> None:
        admin = self.config.admin
        if not admin.enabled:
            return
        self._status_server = StatusServer(admin.listen, lambda: self._snapshot,
                                           address_file=address_file(self.config))
        self._status_server.start()  # it logs its address

    def _join(self) -> None:
        if self._own_members:
            self._members = Membership(self.config)
            # A previous run of this instance that was killed still has a key until its TTL ends.
            self._members.start(wait_s=2 * self.config.instance_ttl_s)

    def _share(self, config: Config) -> list[Partition]:
        """This instance's partitions: sticky bounded rendezvous over the live instances (supervisor/cluster.py)."""
        view = self._members.view()
        me = self.config.instance_id
        holdings = {k: m.holds for k, m in view.items() if k != me}
        holdings[me] = frozenset(p for w in self._workers.values() for p in w.holds())
        self._members_seen = {k: m.holds for k, m in view.items() if k != me}
        self._elsewhere = frozenset(p for k, ps in self._members_seen.items() for p in ps)
        return list(share(self._partitions(config), [*view, me], holdings)[me])

    def _follow_members(self) -> None:
        """Recompute the desired assignment when an instance joined, left, took or gave up partitions."""
        if self._members.error is not None and self._draining_since is None:
            log.error("%s", self._members.error)
            self._exit_code = exitcodes.BOOT
            self._shutdown("membership lost")
            return
        view = self._members.view()
        me = self.config.instance_id
        if {k: m.holds for k, m in view.items() if k != me} == self._members_seen:
            return
        before = set(view) - {me}
        self._desired = rebalance(self._desired, self._share(self.config), self._size)
        log.info("instances %s: %d partitions here", ", ".join(sorted(before | {me})),
                 sum(map(len, self._desired.values())))

    @staticmethod
    def _provision(config: Config) -> None:
        provision.check_tables(config)
        asyncio.run(provision.provision_streams(config))

    @staticmethod
    def _partitions(config: Config) -> list[Partition]:
        return [Partition(name, i) for name, i in provision.partitions_of(config)]

    # -- the loop ---------------------------------------------------------------

    def turn(self, timeout: float = 1.0) -> bool:
        """One pass of the main loop; False once the arbiter is done (see exit_code)."""
        self._sleep(timeout)
        while not self._signals.empty():
            self._dispatch(self._signals.get_nowait())
        if self._halted:
            return False
        for w in list(self._workers.values()):
            self._read(w)
        self._reap()
        self._profile()
        self._report()
        self._follow_members()
        if self._draining_since is not None:
            return not self._drained()
        if self._exit_code != exitcodes.OK:
            return False
        self._murder_stalled()
        self._restart_due()
        self._reconcile()
        return True

    def _sleep(self, timeout: float) -> None:
        """Wait for a signal, a worker's message or exit, or the next restart that is due."""
        waitables: list[Any] = [] if self._wake_r is None else [self._wake_r]
        if self._members.fileno() is not None:
            waitables.append(self._members.fileno())
        for w in self._workers.values():
            waitables += w.waitables()
        due = [w.restart_at for w in self._workers.values() if w.restart_at is not None]
        if due:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        if not self._signals.empty():
            timeout = 0.0
        for ready in wait(waitables, timeout=timeout):
            if ready == self._wake_r:
                os.read(self._wake_r, 512)

    def _drained(self) -> bool:
        if not any(w.alive for w in self._workers.values()):
            log.info("all workers drained; exiting")
            return True
        if time.monotonic() - self._draining_since > self.config.shutdown_grace_s:
            log.error("drain took longer than shutdown_grace_s=%s; killing workers", self.config.shutdown_grace_s)
            self._kill_all()
            return True
        return False

    def _profile(self) -> None:
        """Let the CPU profiler start or collect windows (never blocks)."""
        if self._profiler is not None:
            ready = {w.slot: w.process.pid for w in self._workers.values() if w.alive and w.ready and not w.draining}
            self._profiler.tick(time.monotonic(), ready if self._draining_since is None else {})

    def _report(self) -> None:
        """Publish the status snapshot and talk to systemd (READY, STATUS, WATCHDOG)."""
        snapshot = self._view.snapshot(self._workers.values(), draining=self._draining_since is not None)
        address = self._status_server.address if self._status_server is not None else None
        self._members.publish((p for w in self._workers.values() for p in w.holds()), member_info(snapshot, address))
        snapshot["schemas"] = self._schemas.snapshot(s for s, w in self._workers.items() if w.alive)
        self._snapshot = {**snapshot, "instance_id": self.config.instance_id,
                          "instances": instances(self._members.view(), self.config.instance_id)}
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

    # -- signals: one handler each ------------------------------------------------

    def _dispatch(self, sig: int) -> None:
        """Run handle_<signame> in its own span; the control messages it causes carry that span."""
        name = signal.Signals(sig).name
        handler = getattr(self, f"handle_{name[3:].lower()}")
        span = SIGNAL_SPANS.get(sig)
        if span is None:
            return handler()
        with self._telemetry.span(span, {"jetsink.signal": name}):
            self._trace_cause = self._telemetry.capture()
            handler()

    def handle_term(self) -> None:
        """Drain: every worker releases what it holds and exits; a second TERM exits at once."""
        self._shutdown("SIGTERM")

    def handle_int(self) -> None:
        """As TERM (Ctrl-C in a terminal)."""
        self._shutdown("SIGINT")

    def handle_quit(self) -> None:
        """Stop now without draining; JetStream redelivers what was not acked."""
        log.warning("SIGQUIT: stopping now without draining")
        self._kill_all()
        self._halted = True

    def handle_hup(self) -> None:
        """Reload config.yaml: resize in place, or drain and restart the workers with it; read every table again."""
        if self._ignored_while_draining("SIGHUP"):
            return
        self._notifier.reloading()
        self._reload()
        self._refresh_schemas()
        # READY=1 again once every worker of the (possibly new) generation is ready.
        self._announced_ready = False

    def handle_ttin(self) -> None:
        """One worker more."""
        if not self._ignored_while_draining("SIGTTIN"):
            self._resize(self._size + 1, why="SIGTTIN")

    def handle_ttou(self) -> None:
        """One worker less, never below one."""
        if self._ignored_while_draining("SIGTTOU"):
            return
        if self._size > 1:
            self._resize(self._size - 1, why="SIGTTOU")
        else:
            log.warning("SIGTTOU: already at one worker")

    def _shutdown(self, name: str) -> None:
        if self._draining_since is not None:
            log.warning("second %s while draining: exiting now", name)
            self._kill_all()
            self._halted = True
            return
        log.info("%s: draining workers (grace %ss)", name, self.config.shutdown_grace_s)
        self._notifier.stopping()
        self._draining_since = time.monotonic()
        for w in self._workers.values():
            w.restart_at = None
            self._drain(w)

    def _ignored_while_draining(self, name: str) -> bool:
        if self._draining_since is not None:
            log.warning("%s ignored while draining", name)
        return self._draining_since is not None

    # -- what the workers say -----------------------------------------------------

    def _read(self, w: WorkerHandle) -> None:
        for msg in w.receive():
            self._on_message(w, msg)

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

    # -- decisions ----------------------------------------------------------------

    def _reconcile(self) -> None:
        """Release what a worker should not own; assign what it should, once free."""
        held: dict[Partition, int] = {p: w.slot for w in self._workers.values() if w.alive for p in w.holds()}
        # Release before acquire across instances too: not while another live instance holds it.
        held.update((p, -1) for p in self._elsewhere if p not in held)
        for w in self._workers.values():
            if not w.ready or w.draining:
                continue
            want = set(self._desired.get(w.slot, ()))
            release = (w.owned | w.acquiring) - want - w.releasing
            if release:
                w.releasing |= release
                self._tell(w, "supervisor.release", {"op": "release", "partitions": _wire(release)})
            acquire = {p for p in want - w.holds() if p not in held}
            if acquire:
                w.acquiring |= acquire
                held.update((p, w.slot) for p in acquire)
                self._tell(w, "supervisor.assign", {"op": "assign", "partitions": _wire(acquire)})
            if w.retiring and not w.holds():
                self._drain(w)

    def _drain(self, w: WorkerHandle) -> None:
        if w.alive and not w.draining:
            w.draining = True
            self._tell(w, "supervisor.drain", {"op": "drain"})

    def _reap(self) -> None:
        for w in list(self._workers.values()):
            if not w.exited():
                continue
            self._read(w)  # its last words, e.g. "fatal"
            was_ready, expected = w.ready, w.draining
            code = w.reap()
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
            self._after_crash(w, code, was_ready)

    def _after_crash(self, w: WorkerHandle, code: int | None, was_ready: bool) -> None:
        """Schedule the restart of a worker that exited unasked, or stop on a boot failure."""
        t = self._timings
        extra = {"slot": w.slot}
        if code == exitcodes.BOOT:
            log.error("worker %d could not boot; stopping (fix the cause and start again)", w.slot, extra=extra)
            self._exit_code = exitcodes.BOOT
            return
        if not was_ready:
            w.failed_boots += 1
            if w.failed_boots >= t.max_failed_boots:
                log.error("worker %d died %d times before it was ready (exit %s); stopping",
                          w.slot, w.failed_boots, code, extra=extra)
                self._exit_code = exitcodes.BOOT
                return
        if time.monotonic() - w.started_at > t.stable_run_s:
            w.backoff_s = t.backoff_start_s
        w.restart_at = time.monotonic() + w.backoff_s
        log.error("worker %d died (exit %s); restarting in %.1fs", w.slot, code, w.backoff_s, extra=extra)
        w.backoff_s = min(w.backoff_s * 2, t.backoff_max_s)

    def _murder_stalled(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            if not w.alive:
                continue
            if w.abort_sent_at is not None:
                if now - w.abort_sent_at > self._timings.abort_grace_s:
                    w.process.kill()
            elif now - w.heartbeat.value > self._timings.heartbeat_timeout_s:
                log.error("worker %d made no progress for %.0fs; aborting it", w.slot, now - w.heartbeat.value,
                          extra={"slot": w.slot})
                w.abort()

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
        self._desired = rebalance(self._desired, self._share(self.config), size)
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
            return
        self._remap_embedded_nats(new)
        try:
            self._provision(new)
        except (provision.ProvisionError, ConnectionError) as exc:
            log.error("SIGHUP: cannot apply %s, keeping the running config: %s", source, exc)
            return
        log.info("SIGHUP: config changed; restarting workers with it")
        self.config = new
        self._size = new.workers
        self._desired = rebalance(self._desired, self._share(new), new.workers)
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

    def _remap_embedded_nats(self, new: Config) -> None:
        """A reload that changes the subject mappings (stream_per_partition pipelines) reloads the embedded
        nats-server with them; provisioning then waits until its probes see them."""
        from supervisor import embedded_nats

        want = provision.account_mappings(new)
        if not new.nats.embedded or want == provision.account_mappings(self.config):
            return
        for server in self._servers:
            if server.name == "nats-server":
                embedded_nats.write_mappings(server.data_dir, want)
                embedded_nats.reload(server)
                log.info("SIGHUP: embedded nats-server reloaded with the subject mappings %s", want)

    def _refresh_schemas(self) -> None:
        """SIGHUP: every running worker reads its tables again now (config changed or not)."""
        running = [w for w in self._workers.values() if w.ready and not w.draining]
        if running:
            log.info("SIGHUP: workers read every table again")
        for w in running:
            self._tell(w, "supervisor.refresh_schema", {"op": "refresh_schema"})

    # -- workers ----------------------------------------------------------------

    def _handle(self, slot: int) -> WorkerHandle:
        if slot not in self._workers:
            self._workers[slot] = WorkerHandle(slot=slot, backoff_s=self._timings.backoff_start_s)
        return self._workers[slot]

    def _spawn(self, w: WorkerHandle) -> None:
        w.spawn(self._ctx, self._target, self.config)
        log.info("spawned worker %d (pid %d)", w.slot, w.process.pid, extra={"slot": w.slot})

    def _tell(self, w: WorkerHandle, span: str, msg: dict) -> None:
        """Send a control message inside its own span; the message carries the span's traceparent."""
        with self._telemetry.span(span, {"jetsink.worker.slot": w.slot}, parent=self._trace_cause):
            w.send(self._telemetry.inject(msg))

    def _kill_all(self) -> None:
        for w in self._workers.values():
            w.kill()


def _wire(parts: set[Partition]) -> list[list[Any]]:
    return [[p.pipeline, p.index] for p in sorted(parts)]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port
