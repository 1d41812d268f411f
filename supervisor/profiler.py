"""Periodic CPU profiles of the workers, taken by py-spy from the supervisor's loop.

Every `profiling.interval_s` each worker gets one `profiling.duration_s` window of
`py-spy record --nonblocking` (it reads the worker's memory without pausing it, so the
worker never stalls). The supervisor runs py-spy: as the workers' ancestor it may
ptrace them even under Yama ptrace_scope=1. `tick()` only polls and starts child
processes, so the arbiter's loop never waits on a profile.

py-spy records collapsed stacks; a finished window becomes
`<dir>/cpu-worker<slot>-<UTC start>.speedscope.json` and `.svg` (supervisor/flamegraph.py)
and, with `log_base64`, one log line per file carrying it gzip+base64 encoded, which
`python -m supervisor profiles extract LOGFILE -o DIR` writes back out.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import flamegraph

log = logging.getLogger("jetsink.profiler")

FIRST_WINDOW_MAX_DELAY_S = 30.0  # a new worker's first profile comes early, not a full interval late
STOP_TIMEOUT_S = 5.0


def find_py_spy() -> str | None:
    """The py-spy executable: on PATH or beside this interpreter (a virtualenv's bin)."""
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / "py-spy"
    return str(candidate) if candidate.exists() else None


def profile_stem(slot: int, started: float) -> str:
    """`cpu-worker<slot>-<UTC YYYYmmddTHHMMSSZ>` for a window started at epoch `started`."""
    return f"cpu-worker{slot}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}"


@dataclass
class _Window:
    pid: int
    process: subprocess.Popen
    raw: Path
    stderr: Path
    started: float  # wall clock, for the file name


class ProfileScheduler:
    """Starts and collects py-spy windows; the arbiter calls tick() every loop iteration."""

    def __init__(self, profiling: Any, out_dir: Path, py_spy: str | None = None) -> None:
        self._cfg = profiling
        self._dir = Path(out_dir)
        self._py_spy = py_spy or find_py_spy()
        self._due: dict[int, float] = {}  # slot -> monotonic time of its next window
        self._pids: dict[int, int] = {}
        self._running: dict[int, _Window] = {}
        self._warned = False
        if self._py_spy is None:
            self._warn("py-spy not found (pip install py-spy); CPU profiles are off")

    def _warn(self, message: str, *args: Any) -> None:
        # One clear warning; repeats of a failure go to debug so logs stay readable.
        (log.debug if self._warned else log.warning)(message, *args)
        self._warned = True

    def tick(self, now: float, workers: dict[int, int]) -> None:
        """Collect finished windows; start due ones for `workers` ({slot: pid} of ready workers)."""
        for slot, window in list(self._running.items()):
            if window.process.poll() is not None:
                del self._running[slot]
                self._collect(slot, window)
        if self._py_spy is None:
            return
        for slot, pid in workers.items():
            if self._pids.get(slot) != pid:
                self._pids[slot] = pid
                self._due[slot] = now + min(self._cfg.interval_s, FIRST_WINDOW_MAX_DELAY_S)
            if slot not in self._running and now >= self._due[slot]:
                self._due[slot] = now + self._cfg.interval_s
                self._start(slot, pid)

    def _start(self, slot: int, pid: int) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        stem = profile_stem(slot, started)
        raw, stderr = self._dir / f".{stem}.collapsed", self._dir / f".{stem}.log"
        argv = [
            self._py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(self._cfg.duration_s))),
            "--rate", str(self._cfg.rate_hz), "--nonblocking", "--format", "raw", "--output", str(raw),
        ]
        try:
            with open(stderr, "wb") as err:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, start_new_session=True
                )
        except OSError as exc:
            self._warn("cannot run py-spy for worker %d: %s; CPU profiles are skipped", slot, exc)
            return
        self._running[slot] = _Window(pid, proc, raw, stderr, started)

    def _collect(self, slot: int, window: _Window) -> None:
        try:
            if window.process.returncode != 0 or not window.raw.exists():
                detail = (
                    window.stderr.read_text(errors="replace").strip().splitlines()[-1:]
                    if window.stderr.exists()
                    else []
                )
                self._warn(
                    "py-spy could not profile worker %d (pid %d, exit %s): %s; continuing without this profile",
                    slot, window.pid, window.process.returncode, detail[0] if detail else "no output",
                )
                return
            self.write_profiles(slot, window.pid, window.raw.read_text(errors="replace"), window.started)
        except Exception as exc:  # never let a profile take the supervisor down
            self._warn("CPU profile of worker %d failed: %s", slot, exc)
        finally:
            window.raw.unlink(missing_ok=True)
            window.stderr.unlink(missing_ok=True)

    def write_profiles(self, slot: int, pid: int, collapsed: str, started: float) -> list[Path]:
        """Write the speedscope JSON and SVG of one window (and log them when asked)."""
        stacks = flamegraph.parse_collapsed(collapsed)
        stem = profile_stem(slot, started)
        title = (
            f"jetsink worker {slot} (pid {pid}), {self._cfg.duration_s:g} s "
            f"from {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))} UTC"
        )
        speedscope = self._dir / f"{stem}.speedscope.json"
        svg = self._dir / f"{stem}.svg"
        speedscope.write_text(json.dumps(flamegraph.to_speedscope(stacks, title, self._cfg.rate_hz)))
        svg.write_text(flamegraph.to_svg(stacks, title))
        samples = sum(count for _, count in stacks)
        log.info(
            "cpu profile of worker %d: %s (%d samples)", slot, svg, samples, extra={"slot": slot, "profile": str(svg)}
        )
        if self._cfg.log_base64:
            for path in (speedscope, svg):
                log.info(
                    "cpu profile %s (base64)", path.name,
                    extra={"slot": slot, "profile_name": path.name, "profile_encoding": "gzip+base64",
                           "profile_b64": base64.b64encode(gzip.compress(path.read_bytes())).decode()},
                )
        return [speedscope, svg]

    def stop(self) -> None:
        """Stop running windows (their partial output is dropped)."""
        for window in list(self._running.values()):
            if window.process.poll() is None:
                window.process.terminate()
            try:
                window.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                window.process.kill()
                window.process.wait()
            window.raw.unlink(missing_ok=True)
            window.stderr.unlink(missing_ok=True)
        self._running.clear()

