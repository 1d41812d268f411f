"""`python -m supervisor`: run the pool, or check a config.

    python -m supervisor --config config.yaml            run (foreground; systemd runs this)
    python -m supervisor check --config FILE [--connect] validate; non-zero exit names the key
    python -m supervisor status [--config FILE] [--json] per worker: pid, partitions, rows/s, lag, restarts
    python -m supervisor dlq list|show|replay ...        inspect and replay dead letters
    python -m supervisor profiles extract LOGFILE -o DIR write out CPU profiles logged base64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from supervisor import dlq_tool, migrate, profiles, status
from supervisor.arbiter import Arbiter
from supervisor.config import Config, ConfigError, load_config
from workers import exitcodes
from workers.observability.logs import setup_logging

log = logging.getLogger("jetsink.supervisor")

COMMANDS = ("run", "check", "status", "dlq", "profiles", "migrate-layout")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m supervisor",
                                     description="jetsink: NATS JetStream -> ClickHouse worker pool")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the supervisor and its workers in the foreground (the default)")
    run.add_argument("--config", default="config.yaml", help="path to config.yaml (default: ./config.yaml)")
    check = sub.add_parser("check", help="validate a config file; with --connect also the servers and tables")
    check.add_argument("--config", default="config.yaml")
    check.add_argument("--connect", action="store_true",
                       help="also connect to NATS and ClickHouse and check the tables")
    status.add_parser(sub)
    dlq_tool.add_parser(sub)
    profiles.add_parser(sub)
    migrate.add_parser(sub)
    return parser


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exitcodes.CONFIG if exc.code else exitcodes.OK
    if getattr(args, "handler", None) is not None:  # status, dlq: they load what they need
        return args.handler(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"jetsink: invalid config {args.config}:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.command == "check":
        return _check(config, args.connect)
    setup_logging(config.log_level, role="supervisor")
    return Arbiter(config).run()


def _condition(route: Any) -> str:
    """A route's condition in words, as `check` prints it."""
    parts = []
    if route.subject is not None:
        parts.append(f"subject {route.subject}")
    if route.field is not None:
        path = ".".join(route.field)
        if route.exists is not None:
            parts.append(f"field {path} {'exists' if route.exists else 'is absent'}")
        elif route.in_values is not None:
            parts.append(f"field {path} in {json.dumps(list(route.in_values))}")
        else:
            parts.append(f"field {path} = {json.dumps(route.equals)}")
    return " and ".join(parts)


def _check(config: Config, connect: bool) -> int:
    if not connect:
        print(f"{config.source}: ok ({len(config.pipelines)} pipeline(s), {config.workers} worker(s))")
        return exitcodes.OK
    from supervisor import provision
    from workers.nats.connect import connect_nats

    async def ping_nats() -> None:
        from supervisor.members import BUCKET, live_member

        nc = await connect_nats(config.nats, name="jetsink-check")
        try:
            await nc.jetstream().account_info()
            if await live_member(nc, config.instance_id):
                raise provision.ProvisionError(
                    f"instance_id {config.instance_id!r} is live in the members bucket {BUCKET}: another supervisor "
                    "runs with it; give each instance its own instance_id")
        finally:
            await nc.close()

    try:
        asyncio.run(ping_nats())
        mappers = provision.check_tables(config, create=False)
    except (ConnectionError, provision.ProvisionError) as exc:
        print(f"jetsink: {exc}", file=sys.stderr)
        return exitcodes.BOOT
    except Exception as exc:  # e.g. JetStream disabled on the server
        print(f"jetsink: check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exitcodes.BOOT
    for p in config.pipelines:
        for i, r in enumerate(p.routes):
            print(f"pipeline {p.name}: route {i} {r.name}: {_condition(r)} -> "
                  + ("skip" if r.skip else f"table {r.table}"))
        if p.routes:
            print(f"pipeline {p.name}: unrouted messages: {p.unrouted.replace('_', ' ')}")
    for name, mapper in mappers.items():
        sources = "".join(f"; {c} from the message's {s}" for c, s in mapper.sources.items())
        print(f"pipeline {name}: inserts columns {', '.join(mapper.column_names)} into {mapper.table}{sources}")
        for u in mapper.unsupported:
            # Left to the server (its DEFAULT or NULL); a message carrying the field is dead-lettered.
            print(f"pipeline {name}: column {u.name} ({u.type}) is left to the server: {u.why}")
    print(f"{config.source}: ok, servers answer and tables match")
    return exitcodes.OK
