"""Real servers as child processes: the mechanics nats-server and clickhouse-server share.

Used by the supervisor's embedded dev mode and by the test fixtures, through
embedded_nats.py and embedded_clickhouse.py. Each server gets its own data directory,
listens on the ports it is given, and is only reported ready once it answers its own
protocol on those ports (`wait_ready`, on sockets the process itself holds).

Children are tied to the lifetime of the thread that starts them through
PR_SET_PDEATHSIG (Linux): a supervisor that is kill -9'd gets no chance to stop
its children, and a clickhouse-server left behind would keep holding the ports
and the data directory, so the next start fails in confusing ways. The kernel
sends the signal when the *thread* that forked the child exits, so start servers
from the main thread (or a thread that lives as long as the servers should).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 20


class ServerNotFoundError(FileNotFoundError):
    """A server binary is not installed where we look for it."""


class ServerStartError(RuntimeError):
    """A server was started but did not become ready (or exited)."""


@dataclass(frozen=True)
class ServerProcess:
    """A started server: its process, where it listens and where it logs."""

    name: str
    proc: subprocess.Popen
    host: str
    port: int
    data_dir: Path
    log_path: Path
    # Further logs worth showing when something goes wrong (e.g. the child's
    # stderr when the server has its own log file).
    extra_logs: tuple[Path, ...] = field(default=())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        terminate(self.proc, timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of each log, labelled, for error messages."""
        return _log_tails((self.log_path, *self.extra_logs), lines)


def terminate(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """TERM, wait up to `timeout`, then KILL; the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_all(*servers: ServerProcess, timeout: float = 10.0) -> None:
    """Stop servers in reverse start order; stop all of them even if one fails."""
    errors = []
    for server in reversed(servers):
        try:
            server.stop(timeout=timeout)
        except Exception as exc:  # keep stopping the others
            errors.append(f"{server.name} (pid {server.pid}): {exc}")
    if errors:
        raise RuntimeError("could not stop: " + "; ".join(errors))


def spawn(
    name: str,
    argv: list[str],
    host: str,
    port: int,
    data_dir: Path,
    log_path: Path,
    stderr_path: Path,
    extra_logs: tuple[Path, ...] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start `argv` as a child that dies with this thread, its output appended to `stderr_path`."""
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr_path, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(),
                close_fds=True,
                env=env,
                cwd=cwd,
                preexec_fn=_die_with_parent_preexec(),
            )
        except OSError as exc:
            raise ServerStartError(f"{name}: cannot run {argv[0]}: {exc}") from exc
    return ServerProcess(name, proc, host, port, data_dir, log_path, extra_logs)


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when its parent dies.

    prctl is looked up here, in the parent: loading libraries between fork and
    exec is not safe when the parent has threads.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = libc.prctl
    parent_pid = os.getpid()

    def preexec() -> None:
        # Its own session: a Ctrl-C in the terminal reaches the supervisor, which
        # drains its workers while the servers stay up, then stops them itself.
        os.setsid()
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would
        # ever send the signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def wait_ready(
    server: ServerProcess,
    timeout: float,
    answers: Callable[[], bool],
    extra_ports: Sequence[int] = (),
) -> None:
    """Poll until the server answers on sockets it owns; stop it and raise if not."""
    deadline = time.monotonic() + timeout
    ports = (server.port, *extra_ports)
    delay = 0.02
    try:
        while True:
            if not server.alive():
                code = server.proc.returncode
                _fail(server, ports, f"exited with code {code} before it was ready")
            # Another process on the same port would answer too: insist that
            # the listening sockets are this process's own.
            if _listens_on(server.pid, ports) and answers() and server.alive():
                return
            if time.monotonic() > deadline:
                _fail(server, ports, f"did not become ready within {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
    except BaseException:
        server.stop()  # a half-started server must not linger (also on Ctrl-C)
        raise


def _listens_on(pid: int, ports: Sequence[int]) -> bool:
    try:
        process = psutil.Process(pid)
        connections = (
            process.net_connections(kind="tcp")
            if hasattr(process, "net_connections")
            else process.connections(kind="tcp")
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    return all(port in listening for port in ports)


def _fail(server: ServerProcess, ports: Sequence[int], what: str) -> None:
    argv = " ".join(server.proc.args) if isinstance(server.proc.args, list) else server.proc.args
    where = f"{server.host}:{server.port}"
    if len(ports) > 1:
        where += " (also port " + ", ".join(str(p) for p in ports[1:]) + ")"
    raise ServerStartError(
        f"{server.name} on {where} {what}\n"
        f"command: {argv}\n{server.log_tail()}"
    )


def _log_tails(paths: Sequence[Path], lines: int) -> str:
    chunks = []
    for path in dict.fromkeys(paths):  # dedupe, keep order
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        tail = text.splitlines()[-lines:]
        if tail:
            chunks.append(f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail))
    return "\n".join(chunks) if chunks else "(no log output)"
