"""A bench CPU profile: py-spy's collapsed stacks -> speedscope JSON, SVG and a top-frames table.

The conversion itself is the supervisor's (supervisor/flamegraph.py, also used for the
periodic profiles), so a bench flame graph and a production one look the same. What is
bench's own is the table of the frames with the most self time, which results.json
carries so that two runs can be compared without opening a browser.
"""

from __future__ import annotations

from typing import Callable

import orjson

from supervisor import flamegraph


def convert(raw_text: str, name: str, rate_hz: int) -> tuple[bytes, str, int]:
    """Collapsed text -> (speedscope JSON bytes, SVG text, sample count)."""
    stacks = flamegraph.parse_collapsed(raw_text)
    speedscope = flamegraph.to_speedscope(stacks, name, rate_hz)
    return orjson.dumps(speedscope), flamegraph.to_svg(stacks, name), sum(c for _, c in stacks)


def top_functions(raw_text: str, limit: int = 15) -> list[dict]:
    """The frames with the most self time: [{frame, self_pct, total_pct}], largest first.

    self_pct: share of samples in which the frame was the innermost one (where the CPU
    was); total_pct: share of samples in which it was anywhere on the stack.
    """
    stacks = flamegraph.parse_collapsed(raw_text)
    total = sum(c for _, c in stacks) or 1
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    for stack, count in stacks:
        if stack:
            self_counts[stack[-1]] = self_counts.get(stack[-1], 0) + count
        for frame in set(stack):
            total_counts[frame] = total_counts.get(frame, 0) + count
    ranked = sorted(self_counts.items(), key=lambda kv: -kv[1])[:limit]
    return [
        {"frame": f, "self_pct": round(100.0 * c / total, 2), "total_pct": round(100.0 * total_counts[f] / total, 2)}
        for f, c in ranked
    ]


# Where a worker's CPU goes, by the first rule (in this order) with a frame on the sample's
# stack: a frame is "function (file:line)" as py-spy writes it.  The serialisation runs
# inside the insert call and the batching inside the protocol read, so those come first.
WORKER_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("serialise (clickhouse-driver, workers/clickhouse/native.py)", ("BlockOutputStream.write (", "write_column (")),
    ("insert: send and wait for ClickHouse", ("Client.execute (", "send_insert (")),
    ("map (ColumnMapper)", ("ColumnMapper.map_rows (",)),
    ("parse JSON (orjson.loads)", ("_loads_all (",)),
    ("prepare, other (redelivery scan, dead letters)", ("prepare (workers/partition/prepare.py",)),
    ("batching", ("Fetcher._on_msgs (", "Batch.extend (")),
    ("intake: NATS protocol read (workers/nats/wire.py)", ("BulkParser.parse (",)),
    ("intake: socket reads", ("_read_ready (", "_read_ready__data_received (", "StreamReader.read (")),
    ("ack", ("Storer._ack (", "Storer._settle (")),
    # On loopback the kernel delivers what a send() carries, and may process arriving
    # packets, in the sender's time slice: this grows with the bytes received, not sent.
    (
        "socket writes (pull requests, acks; kernel)",
        ("_SelectorSocketTransport.write (", "WriteTransport.writelines ("),
    ),
    ("epoll (waking up for sockets and the insert thread)", ("EpollSelector.select (",)),
    ("telemetry", ("(workers/observability/telemetry.py:",)),
    # What is left in the insert thread: taking work, handing results back, freeing batches.
    ("insert thread: hand-offs, freeing batches", ("_WorkItem.run (", "_worker (", "call_soon_threadsafe (")),
    ("event loop, other", ("BaseEventLoop._run_once (",)),
)


def part_shares(stacks: list[tuple[list[str], int]], part_of: Callable[[list[str]], str]) -> list[dict]:
    """[{part, pct}]: each part's share of all samples, largest first; part_of names a stack's part."""
    total = sum(c for _, c in stacks if c > 0)
    if not total:
        return []
    counts: dict[str, int] = {}
    for frames, count in stacks:
        if count > 0:
            part = part_of(frames)
            counts[part] = counts.get(part, 0) + count
    return [{"part": p, "pct": round(100.0 * c / total, 1)} for p, c in sorted(counts.items(), key=lambda kv: -kv[1])]


def worker_parts(raw_text: str) -> list[dict]:
    """[{part, pct}] of a worker's py-spy samples over WORKER_PARTS (and "other"), largest first."""
    return part_shares(flamegraph.parse_collapsed(raw_text), _worker_part)


def _worker_part(frames: list[str]) -> str:
    return next((name for name, markers in WORKER_PARTS if any(m in f for f in frames for m in markers)), "other")
