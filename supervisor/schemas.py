"""The tables' schema versions as the workers read them: each change logged once, counted, shown by `status`.

Every worker reads its pipelines' tables on its own (workers/clickhouse/table_schema.py) and
reports each read: {"op": "schema", "pipeline", "table", "digest", "read_at", "problem",
and "columns" the first time it reports a digest}. Several workers see the same change,
at slightly different times; the book keeps one version per pipeline and logs a
change when a read newer than the version's first sighting reports another digest,
so a worker that read the table just before the change cannot flip it back.

The snapshot (under "schemas" in /status) per pipeline (per "pipeline/route" for a routed one's tables):

    {"table": "db.events", "digest": "3f2a...", "since": float,   # wall clock it was first read
     "read_at": float,           # the latest read by any worker
     "changes": int,             # versions seen after the first, since the supervisor started
     "columns": int, "problem": str | None,                        # the latest read's problem
     "slots": {"0": "3f2a..."}}  # the version each live worker last reported
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from workers.clickhouse.table_schema import column_changes

log = logging.getLogger("jetsink.supervisor")


@dataclass
class _Table:
    table: str
    digest: str | None = None
    since: float = 0.0
    read_at: float = 0.0
    changes: int = 0
    columns: list = field(default_factory=list)
    known: dict[str, list] = field(default_factory=dict)  # digest -> its columns, as reported
    problem: str | None = None
    slots: dict[int, str] = field(default_factory=dict)


class SchemaBook:
    """Collects the workers' schema reports; only the arbiter's loop thread calls it."""

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {}

    def seen(self, slot: int, msg: dict) -> None:
        """A worker's {"op": "schema", ...} report."""
        pipeline, digest, read_at = msg.get("pipeline"), msg.get("digest"), float(msg.get("read_at") or 0.0)
        if not isinstance(pipeline, str):
            return
        if msg.get("route"):  # a routed pipeline's tables are one version each: "pipeline/route"
            pipeline = f"{pipeline}/{msg['route']}"
        t = self._tables.setdefault(pipeline, _Table(str(msg.get("table", pipeline))))
        if msg.get("columns") is not None and digest is not None:
            t.known[digest] = msg["columns"]
        if digest is not None:
            t.slots[slot] = digest
        problem = msg.get("problem")
        if problem != t.problem and read_at >= t.read_at:
            if problem:
                log.error("pipeline %s: table %s: %s", pipeline, t.table, problem, extra={"pipeline": pipeline})
            elif t.problem:
                log.info(
                    "pipeline %s: table %s can be read and mapped again", pipeline, t.table,
                    extra={"pipeline": pipeline},
                )
            t.problem = problem
        t.read_at = max(t.read_at, read_at)
        if digest is None or digest == t.digest or read_at < t.since:
            return
        columns = t.known.get(digest, [])
        if t.digest is None:
            log.info(
                "pipeline %s: table %s has schema %s (%d columns)", pipeline, t.table, digest, len(columns),
                extra={"pipeline": pipeline},
            )
        else:
            t.changes += 1
            log.warning(
                "pipeline %s: table %s changed, schema %s -> %s: %s", pipeline, t.table, t.digest, digest,
                column_changes(t.columns, columns), extra={"pipeline": pipeline, "schema": digest},
            )
        t.digest, t.since, t.columns = digest, read_at, columns

    def snapshot(self, live_slots: Iterable[int]) -> dict:
        """Per pipeline: its version, when first and last read, changes, and each live worker's version."""
        live = set(live_slots)
        return {
            pipeline: {
                "table": t.table, "digest": t.digest, "since": t.since, "read_at": t.read_at,
                "changes": t.changes, "columns": len(t.columns), "problem": t.problem,
                "slots": {str(s): d for s, d in sorted(t.slots.items()) if s in live},
            }
            for pipeline, t in sorted(self._tables.items())
        }
