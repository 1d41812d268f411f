"""`python -m supervisor status` and the snapshot as people read it: the status table, systemd's STATUS= line.

`run` asks the running supervisor's admin endpoint (supervisor/admin.py) for /status;
`render_status_table` and `summary` are pure functions of a snapshot (supervisor/snapshot.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
from collections.abc import Iterable, Mapping
from typing import Any

from supervisor.admin import address_file, admin_address, fetch_status, parse_listen
from supervisor.config import ConfigError, load_config
from supervisor.snapshot import health
from workers import exitcodes

__all__ = ["add_parser", "render_status_table", "run", "summary"]


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _partition_list(names: Iterable[str]) -> str:
    """events/0, events/3, orders/1 -> "events:0,3 orders:1"."""
    by_pipeline: dict[str, list[str]] = {}
    for name in names:
        pipeline, _, index = name.rpartition("/")
        by_pipeline.setdefault(pipeline, []).append(index)
    # (length, text) orders decimal indices numerically.
    return " ".join(f"{p}:{','.join(sorted(idx, key=lambda i: (len(i), i)))}" for p, idx in by_pipeline.items()) or "-"


def summary(snapshot: Mapping | None) -> str:
    """One line, e.g. for systemd's STATUS=: "2/2 workers ready, 8 partitions, 15230 rows/s"."""
    workers = (snapshot or {}).get("workers") or []
    ready = sum(1 for w in workers if w.get("ready"))
    partitions = sum(len(w.get("partitions") or ()) for w in workers)
    rate = sum(float(w.get("rows_per_s", 0.0)) for w in workers)
    draining = ", draining" if (snapshot or {}).get("draining") else ""
    return f"{ready}/{len(workers)} workers ready, {partitions} partitions, {rate:.0f} rows/s{draining}"


def render_status_table(snapshot: Mapping | None, now: float | None = None) -> str:
    """A table per worker slot: pid, partitions, rows/s, lag, last batch age, restarts."""
    if not snapshot:
        return "supervisor is starting (no status yet)\n"
    now = snapshot.get("now", time.time()) if now is None else now
    workers = snapshot.get("workers") or []
    total_rate = sum(float(w.get("rows_per_s", 0.0)) for w in workers)
    partitions = sum(len(w.get("partitions") or ()) for w in workers)
    state = "draining" if snapshot.get("draining") else "running"
    head = (f"jetsink supervisor {state}, up {_age(max(0.0, now - snapshot.get('started_at', now)))}: "
            f"{len(workers)} worker(s), {partitions} partition(s), {total_rate:.0f} rows/s")
    header = ("SLOT", "PID", "READY", "PARTITIONS", "ROWS/S", "LAG", "LAST BATCH", "RESTARTS")
    rows = [header]
    for w in workers:
        stats = w.get("stats") or {}
        lag = sum(int(s.get("pending", 0)) for s in stats.values())
        last = float(w.get("last_batch_at") or 0.0)
        rows.append((
            str(w.get("slot")),
            str(w["pid"]) if w.get("pid") is not None else "-",
            "yes" if w.get("ready") else "no",
            _partition_list(w.get("partitions") or ()),
            f"{float(w.get('rows_per_s', 0.0)):.1f}",
            str(lag),
            f"{_age(max(0.0, now - last))} ago" if last else "never",
            str(w.get("restarts", 0)),
        ))
    lines = [head, "", *_aligned(rows)]
    members = snapshot.get("instances") or []
    if members:
        lines += ["", f"instances ({len(members)} live, this one is {snapshot.get('instance_id')}):", ""]
        table = [("INSTANCE", "ADMIN", "WORKERS", "PARTITIONS", "ROWS/S", "LAG")]
        for m in members:
            table.append((
                m["instance_id"] + (" *" if m.get("self") else ""),
                str(m.get("admin") or "-"),
                f"{m.get('ready', 0)}/{m.get('workers', 0)}",
                _partition_list(m.get("partitions") or m.get("holds") or ()),
                f"{float(m.get('rows_per_s', 0.0)):.1f}",
                str(m.get("lag", 0)),
            ))
        lines += _aligned(table)
    lines += _schema_table(snapshot.get("schemas") or {}, now)
    lines += _route_table(workers)
    lines += _replica_table(workers)
    dropped: dict[str, int] = {}
    for w in workers:
        for signal, n in (w.get("telemetry_dropped") or {}).items():
            dropped[signal] = dropped.get(signal, 0) + int(n)
    if any(dropped.values()):
        counts = ", ".join(f"{signal} {n}" for signal, n in dropped.items())
        lines += ["", f"telemetry dropped while its OTLP endpoint was unreachable: {counts}"]
    lines += _stream_notes(workers)
    problems = health(snapshot, now=now)
    if problems and not snapshot.get("draining"):
        lines += ["", "unhealthy:"] + [f"  {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _stream_notes(workers: list) -> list[str]:
    """What the partitions found changed in JetStream under them, each a line; nothing when nothing did."""
    notes = []
    for w in workers:
        for name, s in sorted((w.get("stats") or {}).items()):
            if s.get("expired_unread"):
                notes.append(f"  {name}: {s['expired_unread']} stream sequences expired unread (the stream's limits "
                             "removed them before they were stored)")
            if s.get("state_resets"):
                notes.append(f"  {name}: commit state set aside {s['state_resets']} time(s) (stream created again "
                             "or bucket deleted)")
            if s.get("consumers_created"):
                notes.append(f"  {name}: consumer created again {s['consumers_created']} time(s) (it was missing)")
    return ["", "JetStream changes found:", *notes] if notes else []


def _route_table(workers: list) -> list[str]:
    """Per routed pipeline and route: rows inserted, messages skipped, dead-lettered (over the live workers)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for w in workers:
        for name, s in (w.get("stats") or {}).items():
            for route, counts in (s.get("routes") or {}).items():
                total = totals.setdefault((name.rpartition("/")[0], route), [0, 0, 0])
                for i, n in enumerate(counts[:3]):
                    total[i] += n
    if not totals:
        return []
    rows = [("PIPELINE", "ROUTE", "INSERTED", "SKIPPED", "DEAD-LETTERED")]
    rows += [(p, r, *map(str, c)) for (p, r), c in sorted(totals.items())]
    return ["", *_aligned(rows)]


def _replica_table(workers: list) -> list[str]:
    """Per worker slot and ClickHouse replica: its shard, in use, health, inserts, the shard's waiting parts;
    only with more than one replica."""
    rows = [("SLOT", "SHARD", "CLICKHOUSE", "IN USE", "STATE", "INSERTS", "WAITING", "LAST ERROR")]
    for w in workers:
        ch = w.get("clickhouse") or {}
        replicas = ch.get("replicas") or []
        if len(replicas) < 2:
            continue
        in_use = ch.get("in_use_list") or [ch.get("in_use")]
        preferred = str(ch.get("preferred", "")).split(",")
        waiting = ch.get("waiting") or []
        for r in replicas:
            state = r.get("state", "unknown")
            if state == "down":
                state = f"down {_age(float(r.get('down_s', 0.0)))}"
            mark = "yes" if r["address"] in in_use else ""
            if r["address"] in preferred:
                mark += " (preferred)" if mark else "(preferred)"
            shard = int(r.get("shard", 1))
            parts = str(waiting[shard - 1]) if shard <= len(waiting) else "-"
            rows.append((str(w.get("slot")), str(shard), r["address"], mark, state, str(r.get("inserts", 0)),
                         parts, (r.get("error") or "")[:80]))
    return ["", *_aligned(rows)] if len(rows) > 1 else []


def _schema_table(schemas: Mapping, now: float) -> list[str]:
    """Per pipeline: its table, schema version (hash), when it was read, changes; workers still on another version."""
    if not schemas:
        return []
    header = ("PIPELINE", "TABLE", "SCHEMA", "SINCE", "READ", "CHANGES")
    rows = [header]
    notes = []
    for pipeline, t in sorted(schemas.items()):
        since, read_at = float(t.get("since") or 0.0), float(t.get("read_at") or 0.0)
        rows.append((
            pipeline, str(t.get("table", "")), str(t.get("digest") or "-"),
            f"{_age(max(0.0, now - since))} ago" if since else "-",
            f"{_age(max(0.0, now - read_at))} ago" if read_at else "never",
            str(t.get("changes", 0)),
        ))
        behind = sorted(s for s, d in (t.get("slots") or {}).items() if d != t.get("digest"))
        if behind:
            notes.append(f"  {pipeline}: worker(s) {', '.join(behind)} still on an older schema")
        if t.get("problem"):
            notes.append(f"  {pipeline}: {t['problem']}")
    return ["", *_aligned(rows), *notes]


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells (the first one the header) as lines, each column padded to its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]



def add_parser(sub: Any) -> None:
    """Register `status` on the CLI's subparsers."""
    p = sub.add_parser("status", help="per worker: pid, partitions, rows/s, lag, last batch, restarts")
    p.add_argument("--config", default="config.yaml",
                   help="config.yaml whose admin.listen to ask (default: ./config.yaml)")
    p.add_argument("--listen", help="ask this host:port instead of the config's admin.listen")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(handler=run)



def run(args: argparse.Namespace) -> int:
    """`python -m supervisor status`: fetch /status from the running supervisor and print it."""
    listen, where = args.listen, "--listen"
    if listen is None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"jetsink: invalid config {args.config}:\n{exc}", file=sys.stderr)
            return exitcodes.CONFIG
        if not config.admin.enabled:
            print(f"jetsink: the admin endpoint is disabled in {args.config} (admin.enabled: false)", file=sys.stderr)
            return exitcodes.CONFIG
        listen, where = admin_address(config), f"admin.listen in {args.config}"
        if listen is None:
            print(f"jetsink: {where} is {config.admin.listen!r} (a free port chosen at start) and "
                  f"{address_file(config)} does not exist; is the supervisor running?", file=sys.stderr)
            return exitcodes.BOOT
    try:
        port = parse_listen(listen)[1]
    except ValueError as exc:
        print(f"jetsink: {where}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if port == 0:
        print(f"jetsink: {where} is {listen!r}: give the port the supervisor listens on", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        body = fetch_status(listen, timeout=args.timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"jetsink: no status from {listen} ({where}): {reason}; is the supervisor running?", file=sys.stderr)
        return exitcodes.BOOT
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        sys.stdout.write(render_status_table(body))
    return exitcodes.OK
