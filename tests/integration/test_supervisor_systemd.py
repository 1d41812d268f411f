"""The real supervisor under a pretend systemd: a unix datagram socket as NOTIFY_SOCKET,
and its status endpoint and `status` command while it runs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.integration.harness import REPO, Supervisor, pipeline_names, sink_config, wait_until


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def has(self, prefix):
        return [m for _, m in self.drain() if m.startswith(prefix)]


def test_ready_watchdog_status_reload_stopping(tmp_path, nats_url, clickhouse_server, ch_database, monkeypatch):
    names, _ = pipeline_names("sd")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=4, workers=2, **names)
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # pet every ~1 s
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        wait_until(lambda: notify.has("READY=1"), 60, "READY=1")
        # READY only after every worker said it was ready.
        assert len(sup.logged("ready (pid")) == 2
        wait_until(lambda: len(notify.has("WATCHDOG=1")) >= 2, 30, "two watchdog pings")
        status = wait_until(lambda: notify.has("STATUS="), 30, "STATUS")
        assert "workers" in status[-1]

        # Status endpoint and command while it runs.
        addr = sup.address()
        sup.wait(lambda: urllib.request.urlopen(f"http://{addr}/healthz").status == 200, 30, "/healthz 200")
        body = json.loads(urllib.request.urlopen(f"http://{addr}/status").read())
        owned = sorted(p for w in body["workers"] for p in w["partitions"])
        assert owned == sorted(f"{names['name']}/{i}" for i in range(4))
        metrics = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
        assert "jetsink_worker_up" in metrics
        out = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--listen", addr],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert str(sup.worker_pids()[0]) in out.stdout

        sup.proc.send_signal(signal.SIGHUP)
        reloading = wait_until(lambda: notify.has("RELOADING=1"), 30, "RELOADING=1")
        usec = int(reloading[0].split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000
        wait_until(lambda: len(notify.has("READY=1")) >= 2, 30, "READY=1 after reload")

        assert sup.terminate() == 0
        assert notify.has("STOPPING=1")
    finally:
        sup.close()
