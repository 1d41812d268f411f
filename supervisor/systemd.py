"""Talking to systemd: sd_notify over $NOTIFY_SOCKET with the standard library only.

Modelled on gunicorn's systemd.py: one AF_UNIX datagram per notification, an address
starting with '@' is in the abstract namespace. Without NOTIFY_SOCKET (not run by
systemd, or Type= is not notify) every call is a no-op, so the arbiter can call it
unconditionally. A failed send is logged once and otherwise ignored: systemd going
away must never take the sink down with it.

Used by the arbiter (see docs/operations.md, "Running under systemd"):

    notifier = Notifier()
    notifier.ready()                        # every worker reported ready
    notifier.status("2 workers, 8 partitions, 15230 rows/s")
    notifier.watchdog()                     # from the loop, every watchdog_interval() s
    notifier.reloading(); ...; notifier.ready()   # SIGHUP
    notifier.stopping()                     # SIGTERM
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("jetsink.supervisor")

__all__ = ["Notifier"]


class Notifier:
    """sd_notify for one process; a no-op unless systemd gave us NOTIFY_SOCKET."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        address = env.get("NOTIFY_SOCKET") or ""
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when systemd is listening (NOTIFY_SOCKET is set)."""
        return self._address is not None

    def ready(self) -> None:
        """Start-up (or a reload) is complete: systemd marks the unit active."""
        self.notify("READY=1")

    def reloading(self) -> None:
        """A reload began; systemd (>= 253) expects READY=1 when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown began (a drain)."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """One line for `systemctl status`."""
        # A line break would start another assignment: STATUS must stay one line.
        self.notify("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> None:
        """The main loop is alive; must come every watchdog_interval() seconds."""
        self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before a start, reload or stop times out."""
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls (half of WatchdogSec), or None if no watchdog is asked of us."""
        try:
            usec = int(self._watchdog_usec or 0)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # the watchdog is meant for another process (we were forked)
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    def notify(self, *lines: str) -> None:
        """Send `lines` (KEY=VALUE) as one notification; never raises."""
        if self._address is None or not lines:
            return
        try:
            if self._sock is None:
                # CLOEXEC: the workers must not inherit systemd's socket.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify systemd at %s: %s (further failures are not logged)",
                    self._address.replace("\0", "@"),
                    exc,
                )

    def close(self) -> None:
        """Close the socket (notifications after this reopen it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
