"""Memory profiles of a worker with memray (`observability.profiling.memory`).

The worker's whole life runs inside `memray.Tracker`, writing
`<profiles dir>/memray-worker<slot>-<pid>.bin`. When the worker exits normally, the
capture is turned into `memray-worker<slot>-<pid>.html` (a flame graph of the
allocations live at the peak) and `memray-worker<slot>-<pid>.summary.json`
({"peak_memory_bytes", "total_allocations", "top_allocations": [{"location", "bytes", "count"}],
"heap_mb_by_minute"}).
A worker that was killed leaves only the .bin; `finalize_memray` (used by bench too)
makes the rest from it later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

TOP_ALLOCATIONS = 15
FLAMEGRAPH_TIMEOUT_S = 120.0


def memray_paths(profiles_dir: Path, slot: int, pid: int) -> tuple[Path, Path, Path]:
    """(capture, flame graph html, summary json) of worker `slot` running as `pid`."""
    stem = f"memray-worker{slot}-{pid}"
    return profiles_dir / f"{stem}.bin", profiles_dir / f"{stem}.html", profiles_dir / f"{stem}.summary.json"


@contextlib.contextmanager
def memory_profile(profiles_dir: Path, slot: int, enabled: bool) -> Iterator[Path | None]:
    """Run the body under memray when `enabled`; afterwards write the flame graph and summary."""
    if not enabled:
        yield None
        return
    import memray

    bin_path, _, _ = memray_paths(Path(profiles_dir), slot, os.getpid())
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    bin_path.unlink(missing_ok=True)  # memray refuses to overwrite; a reused pid is a new capture
    log.info("memory profile: tracking allocations into %s", bin_path, extra={"profile": str(bin_path)})
    with memray.Tracker(str(bin_path), native_traces=False, follow_fork=False):
        yield bin_path
    try:
        html, summary = finalize_memray(bin_path)
        log.info("memory profile written: %s, %s", html, summary, extra={"profile": str(html)})
    except Exception as exc:  # a report that cannot be made must not turn an exit into a crash
        log.warning("memory profile %s: could not write the reports: %s", bin_path, exc)


def finalize_memray(bin_path: str | Path) -> tuple[Path, Path]:
    """From a memray capture, write `<stem>.html` (flame graph) and `<stem>.summary.json`; return both paths."""
    bin_path = Path(bin_path)
    stem = bin_path.name[: -len(".bin")] if bin_path.name.endswith(".bin") else bin_path.name
    html = bin_path.with_name(stem + ".html")
    summary_path = bin_path.with_name(stem + ".summary.json")
    summary_path.write_text(json.dumps(memray_summary(bin_path), indent=2))
    # memray's own CLI renders the flame graph; its reporter classes are not a stable API.
    subprocess.run(
        [sys.executable, "-m", "memray", "flamegraph", "--force", "--output", str(html), str(bin_path)],
        check=True, capture_output=True, timeout=FLAMEGRAPH_TIMEOUT_S,
    )
    return html, summary_path


def memray_summary(bin_path: str | Path, top: int = TOP_ALLOCATIONS) -> dict:
    """Peak memory and the allocation sites holding the most memory at the peak."""
    import memray

    with contextlib.closing(memray.FileReader(str(bin_path))) as reader:
        meta = reader.metadata
        sites: dict[str, list[int]] = {}
        for record in reader.get_high_watermark_allocation_records(merge_threads=True):
            stack = record.stack_trace(max_stacks=1)
            location = f"{stack[0][0]} ({stack[0][1]}:{stack[0][2]})" if stack else "<unknown>"
            entry = sites.setdefault(location, [0, 0])
            entry[0] += record.size
            entry[1] += record.n_allocations
        ranked = sorted(sites.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
        return {
            "peak_memory_bytes": int(meta.peak_memory),
            "total_allocations": int(meta.total_allocations),
            "duration_s": (meta.end_time - meta.start_time).total_seconds(),
            "pid": meta.pid,
            "top_allocations": [{"location": loc, "bytes": size, "count": count} for loc, (size, count) in ranked],
            "heap_mb_by_minute": _heap_by_minute(reader),
        }


def _heap_by_minute(reader: Any) -> list[float]:
    """memray's heap size over the capture: the median of each minute's snapshots, in MB
    (a leak shows as a rising series; the peak alone cannot tell)."""
    minutes: dict[int, list[int]] = {}
    start = None
    for snap in reader.get_memory_snapshots():
        start = snap.time if start is None else start
        minutes.setdefault(int((snap.time - start) // 60_000), []).append(snap.heap)
    return [round(statistics.median(minutes[m]) / 2**20, 1) for m in sorted(minutes)]
