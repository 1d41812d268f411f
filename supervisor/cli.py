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


# How long `check --connect` waits for its mapping probes' answers (workers/nats/streams.py, mapped_streams).
MAPPING_PROBE_TIMEOUT_S = 1.0


async def _heard_probes(nc: Any, p: Any, probes: list[tuple[str, int]]) -> tuple[list[str | None], dict[str, int]]:
    """Provisioning's mapping probes (workers/nats/streams.py, mapped_streams: a publish no stream stores)
    for pipeline `p`, and where core NATS delivered each one: (the stream each landed in or None, probe
    subject -> the partition token it was heard with).  The second tells the mapping even where the
    partition streams do not exist yet (a check before the first start).  The subscriptions are on each
    probe's mapped subject alone (`events.*.jetsink-probe-0`), never on the pipeline's traffic."""
    from workers.nats import streams
    from workers.topology import partition_token_index

    index = partition_token_index(p.subject)
    heard: dict[str, int] = {}
    every_one = asyncio.Event()

    async def on_probe(msg: Any) -> None:
        tokens = msg.subject.split(".")
        token = tokens.pop(index)
        heard[".".join(tokens)] = int(token) if token.isdigit() else -1
        if len(heard) >= len(probes):
            every_one.set()

    subs = []
    for subject, _ in probes:
        tokens = subject.split(".")
        subs.append(await nc.subscribe(".".join(tokens[:index] + ["*"] + tokens[index:]), cb=on_probe))
    await nc.flush()

    async def hear() -> None:
        try:
            await asyncio.wait_for(every_one.wait(), MAPPING_PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass

    try:
        landed, _ = await asyncio.gather(
            streams.mapped_streams(nc, [s for s, _ in probes], timeout=MAPPING_PROBE_TIMEOUT_S), hear())
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return landed, heard


async def _check_mapping(nc: Any, p: Any) -> str:
    """A stream_per_partition pipeline's account mapping, checked by the probes provisioning sends
    (workers/nats/streams.py): the line `check` prints, or the ProvisionError provisioning would raise
    (naming the pipeline, its subject and the mapping to add)."""
    from workers.nats import streams
    from workers.topology import account_mapping, partition_view, probe_subjects

    probes = probe_subjects(p.subject, p.partitions)
    landed, heard = await _heard_probes(nc, p, probes)
    src, dest = account_mapping(p.subject, p.partitions)
    in_streams = all(got == partition_view(p, want).stream for (_, want), got in zip(probes, landed, strict=True))
    mapped = all(heard.get(s) == want and got in (None, partition_view(p, want).stream)
                 for (s, want), got in zip(probes, landed, strict=True))
    if in_streams or mapped:
        how = ("each landed in its partition's stream" if in_streams else
               "each delivered on its partition's subject; the partition streams the first start makes do not "
               "all exist yet")
        return f"pipeline {p.name}: the NATS account maps {src!r} to {dest!r}: mapping verified by " \
               f"{len(probes)} probes ({how})"
    try:
        # Provisioning's own verdict and problem: one round of its probes, no reload awaited.
        await streams.check_mapping(nc, p, wait_s=0.0)
    except streams.ProvisionError as exc:
        if any(landed):
            raise
        # No partition stream took a probe (none made yet, before the first start): what core NATS did with them.
        subject, want = next((s, want) for s, want in probes if heard.get(s) != want)
        got = heard.get(subject)
        raise streams.ProvisionError(
            f"{exc}; no partition stream takes the probes yet, and "
            + (f"the probe to {subject!r} was delivered in partition {got}, not {want}" if got is not None else
               "no probe was delivered on a partition's subject: the account does not map the subject")) from None
    # It let the pipeline start: every probe in the pipeline's single stream, a move to that layout under way.
    return (f"pipeline {p.name}: warning: the NATS account does not map {src!r} into partitions: new messages "
            f"go to stream {p.stream} (a move to layout single_stream under way?); the partition streams' "
            "messages are still stored")


def _check(config: Config, connect: bool) -> int:
    if not connect:
        print(f"{config.source}: ok ({len(config.pipelines)} pipeline(s), {config.workers} worker(s))")
        return exitcodes.OK
    from supervisor import provision
    from workers.nats.connect import connect_nats
    from workers.topology import STREAM_PER_PARTITION

    async def ping_nats() -> list[str]:
        from supervisor.members import BUCKET, live_member

        nc = await connect_nats(config.nats, name="jetsink-check")
        try:
            await nc.jetstream().account_info()
            if await live_member(nc, config.instance_id):
                raise provision.ProvisionError(
                    f"instance_id {config.instance_id!r} is live in the members bucket {BUCKET}: another supervisor "
                    "runs with it; give each instance its own instance_id")
            return [await _check_mapping(nc, p) for p in config.pipelines if p.layout == STREAM_PER_PARTITION]
        finally:
            await nc.close()

    try:
        mappings = asyncio.run(ping_nats())
        mappers = provision.check_tables(config, create=False)
    except (ConnectionError, provision.ProvisionError) as exc:
        print(f"jetsink: {exc}", file=sys.stderr)
        return exitcodes.BOOT
    except Exception as exc:  # e.g. JetStream disabled on the server
        print(f"jetsink: check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exitcodes.BOOT
    for line in mappings:
        print(line)
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
