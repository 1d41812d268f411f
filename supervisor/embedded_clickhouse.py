"""clickhouse-server as a child process: its binary, a minimal config written for it, its readiness.

`start_clickhouse` returns once HTTP /ping and `SELECT version()` answer on the ports it
was given; the config it writes is valid for 18.16 and 23+. The process mechanics are
embedded.py's.
"""

from __future__ import annotations

import http.client
import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

from supervisor.embedded import ServerNotFoundError, ServerProcess, free_port, spawn, wait_ready

__all__ = ["find_clickhouse_server", "start_clickhouse", "write_clickhouse_config"]

_CLICKHOUSE_INSTALL_HINT = (
    "install it with: apt-get install -y clickhouse-server clickhouse-client "
    "(or point JETSINK_CLICKHOUSE_BIN at a clickhouse or clickhouse-server binary)"
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
    server = spawn(
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
    wait_ready(
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
