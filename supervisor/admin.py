"""The admin HTTP endpoint: /healthz, /metrics and /status served from the published snapshot.

`StatusServer` serves them from a daemon thread and, while it listens, writes the
address it listens on to state_dir (`address_file`), where `admin_address` finds a
port picked at start; `fetch_status` is the client side (`status`, bench, tests).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from supervisor.config import Config
from supervisor.metrics import PROMETHEUS_CONTENT_TYPE, render_prometheus
from supervisor.snapshot import STALE_AFTER_S, health

log = logging.getLogger("jetsink.supervisor")

__all__ = ["StatusServer", "address_file", "admin_address", "fetch_status", "parse_listen"]

ADDRESS_FILE = "admin.address"  # in state_dir, while the admin endpoint listens


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9470" -> ("127.0.0.1", 9470); "[::1]:9470" -> ("::1", 9470)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, snapshot: Callable[[], Mapping | None],
                 stale_after_s: float) -> None:
        self.address_family = family
        self.snapshot = snapshot
        self.stale_after_s = stale_after_s
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "jetsink"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            snapshot = self.server.snapshot()
        except Exception as exc:  # a bug in the publisher must not kill the endpoint
            log.exception("status snapshot failed")
            self._send(500, "text/plain; charset=utf-8", f"snapshot failed: {type(exc).__name__}\n")
            return
        if path == "/healthz":
            problems = health(snapshot, stale_after_s=self.server.stale_after_s)
            if problems:
                self._send(503, "application/json", json.dumps({"ok": False, "problems": problems}) + "\n")
            else:
                self._send(200, "text/plain; charset=utf-8", "ok\n")
        elif path == "/metrics":
            self._send(200, PROMETHEUS_CONTENT_TYPE, render_prometheus(snapshot))
        elif path == "/status":
            problems = health(snapshot, stale_after_s=self.server.stale_after_s)
            body = {**(snapshot or {}), "now": time.time(), "healthy": not problems, "problems": problems}
            self._send(200, "application/json", json.dumps(body) + "\n")
        else:
            self._send(404, "text/plain; charset=utf-8", "not found; try /healthz, /metrics or /status\n")

    def _send(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("admin %s %s", self.address_string(), format % args)


class StatusServer:
    """/healthz, /metrics and /status on `listen`, served from a daemon thread."""

    def __init__(self, listen: str, snapshot: Callable[[], Mapping | None], stale_after_s: float = STALE_AFTER_S,
                 address_file: Path | None = None) -> None:
        self._listen = listen
        self._snapshot = snapshot
        self._stale_after_s = stale_after_s
        self._address_file = address_file
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and start serving; raises OSError naming the address if it cannot bind."""
        host, port = parse_listen(self._listen)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._server = _Server((host, port), family, self._snapshot, self._stale_after_s)
        except OSError as exc:
            raise OSError(exc.errno, f"admin endpoint cannot listen on {self._listen}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="jetsink-admin", daemon=True)
        self._thread.start()
        if self._address_file is not None:
            # Where `status` finds a port picked at start (listen port 0); renamed into place whole.
            self._address_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self._address_file.with_name(self._address_file.name + ".new")
            partial.write_text(self.address + "\n")
            partial.replace(self._address_file)
        log.info("admin endpoint on http://%s/ (/healthz, /metrics, /status)", self.address)

    @property
    def address(self) -> str:
        """host:port actually listened on (the real port when `listen` asked for port 0)."""
        if self._server is None:
            return self._listen
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._address_file is not None:
            self._address_file.unlink(missing_ok=True)


def address_file(config: Config) -> Path:
    """Where a running supervisor of `config` writes the admin address it listens on."""
    return Path(config.state_dir) / ADDRESS_FILE


def admin_address(config: Config) -> str | None:
    """host:port of the admin endpoint of `config`'s supervisor: admin.listen, or with port 0 the
    address the running supervisor wrote to its state_dir (None when it has not, or is not running)."""
    if parse_listen(config.admin.listen)[1] != 0:
        return config.admin.listen
    try:
        return address_file(config).read_text().strip() or None
    except FileNotFoundError:
        return None


def fetch_status(address: str, timeout: float = 5.0) -> dict:
    """GET /status from the admin endpoint at host:port; raises OSError or ValueError."""
    host, port = parse_listen(address)
    # A wildcard bind answers on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http only, built above
        return json.load(resp)
