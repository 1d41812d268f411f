"""`python -m supervisor migrate-layout prepare|finish`: move a pipeline between the single_stream and
stream_per_partition layouts (workers/topology.py), losing and duplicating nothing.

Nothing is copied: every message is in exactly one stream, and each stream is read to its end
by one layout.  `--config` is the config with the layout to move to; the other layout is the
one moved from.

1. `prepare` (jetsink may go on running in the old layout): the new layout's streams are made.
   They take nothing yet: the partition streams take `events.<p>.*`, which only the account's
   mapping produces, and the single stream takes `events.*`, which the mapping rewrites.
2. The operator adds the account's mapping (to stream_per_partition) or removes it (to
   single_stream) on every server.  From then on new messages land in the new streams; the
   running jetsink stores what the old ones still hold.
3. Once the old streams are drained, the operator stops jetsink and runs `finish`: it refuses
   while a jetsink instance is live, while the mapping is not what the new layout needs, or
   while an old consumer has messages pending or unacked (start the old layout again until it
   has none).  It then deletes the pipeline's commit states (their sequences count in the old
   streams) and the old consumers.  jetsink is started with the new config: its consumers read
   the new streams from their first message.

docs/operations.md, "Changing a pipeline's layout", has the procedure for operators.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from supervisor.config import ConfigError, load_config
from workers import exitcodes
from workers.topology import (
    SINGLE_STREAM,
    STREAM_PER_PARTITION,
    account_mapping,
    consumer_name,
    data_streams,
    partition_view,
    probe_subjects,
)


class MigrationRefused(Exception):
    """The step cannot be taken now; the message says why and what to do."""


def add_parser(sub: Any) -> None:
    """Register `migrate-layout prepare|finish` on the CLI's subparsers."""
    p = sub.add_parser("migrate-layout", help="move a pipeline between stream layouts (single_stream, "
                       "stream_per_partition) without losing or duplicating a message")
    p.add_argument("step", choices=("prepare", "finish"),
                   help="prepare: make the new layout's streams; finish: after the mapping changed and the old "
                   "streams were drained, with jetsink stopped")
    p.add_argument("--config", default="config.yaml", help="the config with the layout to move to")
    p.add_argument("--pipeline", help="the pipeline to move (needed when the config has several)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"jetsink: invalid config {args.config}:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG
    names = [p.name for p in config.pipelines]
    if args.pipeline is None and len(names) != 1:
        print(f"jetsink: --pipeline is needed: the config has {', '.join(names)}", file=sys.stderr)
        return exitcodes.CONFIG
    pipeline = next((p for p in config.pipelines if p.name == (args.pipeline or names[0])), None)
    if pipeline is None:
        print(f"jetsink: no pipeline {args.pipeline!r} in {args.config} (it has {', '.join(names)})", file=sys.stderr)
        return exitcodes.CONFIG
    step = prepare if args.step == "prepare" else finish
    try:
        for line in asyncio.run(_with_nats(config, step, pipeline)):
            print(line)
    except MigrationRefused as exc:
        print(f"jetsink: migrate-layout {args.step}: {exc}", file=sys.stderr)
        return exitcodes.NOT_DONE
    except ConnectionError as exc:
        print(f"jetsink: {exc}", file=sys.stderr)
        return exitcodes.BOOT
    return exitcodes.OK


async def _with_nats(config: Any, step: Any, pipeline: Any) -> list[str]:
    """Run `step(nc, pipeline, config)` on a connection to the config's NATS; with `nats.embedded`, on the
    embedded server (started here with the new layout's mappings while jetsink is stopped)."""
    from workers.nats.connect import connect_nats

    server = None
    if config.nats.embedded:
        server = await asyncio.to_thread(_start_embedded, config)
    try:
        nc = await connect_nats(config.nats, name="jetsink-migrate-layout")
        try:
            return await step(nc, pipeline, config)
        finally:
            await nc.close()
    finally:
        if server is not None:
            server.stop()


def _start_embedded(config: Any) -> Any:
    from pathlib import Path
    from urllib.parse import urlsplit

    from supervisor import embedded_nats, provision

    url = urlsplit(config.nats.servers[0])
    try:
        return embedded_nats.start_nats(Path(config.state_dir) / "nats", url.port or 4222, url.hostname or "127.0.0.1",
                                        mappings=provision.account_mappings(config))
    except Exception as exc:
        raise MigrationRefused(f"cannot start the embedded nats-server (is jetsink still running?): {exc}") from exc


def old_layout(p: Any) -> Any:
    """The pipeline as it is in the layout moved from."""
    return dataclasses.replace(p, layout=SINGLE_STREAM if p.layout == STREAM_PER_PARTITION else STREAM_PER_PARTITION)


async def prepare(nc: Any, p: Any, config: Any) -> list[str]:
    """Make the new layout's streams (refusing ones that exist holding messages: left by an earlier move)."""
    from workers.nats import streams

    js = nc.jetstream(timeout=10.0)
    old = old_layout(p)
    replicas = await _replicas(js, old, config, nc)
    for name in data_streams(p):
        info = await _stream_info(js, name)
        if info is not None and info.state.messages:
            raise MigrationRefused(
                f"pipelines {p.name}: stream {name} exists and holds {info.state.messages} messages (left from an "
                f"earlier layout?); its new consumer would read them all again. Delete it first "
                f"(`nats stream rm {name}`) once nothing in it is needed")
    await streams.ensure_stream(js, p, replicas)
    src, dest = account_mapping(p.subject, p.partitions)
    change = (f'add the account mapping "{src}" -> "{dest}" on every server (server config `mappings {{ "{src}": '
              f'"{dest}" }}` and a reload, or `nsc add mapping --from "{src}" --to "{dest}"` and a push)'
              if p.layout == STREAM_PER_PARTITION else
              f'remove the account mapping of "{src}" on every server (and reload, or `nsc delete mapping --from '
              f'"{src}"` and a push)')
    return [
        f"pipeline {p.name}: made the {p.layout} streams {', '.join(data_streams(p))}",
        f"next: {change}; let jetsink ({old.layout}) run until it has stored what {', '.join(data_streams(old))} "
        "hold, stop it, and run `migrate-layout finish` with this config",
    ]


async def finish(nc: Any, p: Any, config: Any) -> list[str]:
    """Check jetsink is stopped, the mapping is the new layout's and the old streams are drained; then
    delete the commit states and the old consumers."""
    from nats.js.errors import NotFoundError

    from supervisor.members import BUCKET
    from workers.delivery.commits import bucket_name
    from workers.nats import streams

    js = nc.jetstream(timeout=10.0)
    live = await _live_instances(js)
    if live:
        raise MigrationRefused(f"jetsink instances {', '.join(live)} are live in the members bucket {BUCKET}: "
                               "stop every instance first")
    for name in data_streams(p):
        if await _stream_info(js, name) is None:
            raise MigrationRefused(f"pipelines {p.name}: stream {name} does not exist: run `migrate-layout prepare` "
                                   "with this config first")
    if p.layout == STREAM_PER_PARTITION:
        try:
            await streams.check_mapping(nc, p)
        except streams.ProvisionError as exc:
            raise MigrationRefused(str(exc)) from exc
    else:
        probes = [s for s, _ in probe_subjects(p.subject, p.partitions)]
        landed = set(await streams.mapped_streams(nc, probes))
        if landed != {p.stream}:
            raise MigrationRefused(
                f"pipelines {p.name}: publishes to {p.subject} land in {sorted(map(str, landed))}, not in stream "
                f"{p.stream} alone: remove the account's mapping of {p.subject!r} on every server first")
    old = old_layout(p)
    left = []
    for index in range(p.partitions):
        view = partition_view(old, index)
        try:
            info = await js.consumer_info(view.stream, consumer_name(p.name, index))
        except NotFoundError:
            continue  # never made, or its stream is gone: nothing of it to store
        if info.num_pending or info.num_ack_pending:
            left.append(f"{view.stream}/{consumer_name(p.name, index)}: {info.num_pending} pending, "
                        f"{info.num_ack_pending} unacked")
    if left:
        raise MigrationRefused(
            f"pipelines {p.name}: the old layout's consumers have messages jetsink has not stored ({'; '.join(left)}): "
            f"start jetsink with layout {old.layout} again until they have none, stop it, and run finish again")
    done = []
    if p.delivery == "exactly_once":
        try:
            kv = await js.key_value(bucket_name(p.name))
        except NotFoundError:
            kv = None
        if kv is not None:
            for index in range(p.partitions):
                await kv.purge(str(index))
            done.append(f"pipeline {p.name}: commit states of partitions 0..{p.partitions - 1} purged (they counted "
                        f"in {', '.join(data_streams(old))})")
    for index in range(p.partitions):
        view = partition_view(old, index)
        try:
            await js.delete_consumer(view.stream, consumer_name(p.name, index))
        except NotFoundError:
            pass
    done.append(f"pipeline {p.name}: deleted the {old.layout} consumers; start jetsink with layout {p.layout}. "
                f"The drained streams {', '.join(data_streams(old))} are no longer read: delete them "
                "(`nats stream rm`) when their messages are no longer needed")
    return done


async def _replicas(js: Any, old: Any, config: Any, nc: Any) -> int:
    """Replicas of the new streams: the old layout's, else as provision derives them."""
    from workers.nats import streams

    info = await _stream_info(js, data_streams(old)[0])
    if info is not None:
        return info.config.num_replicas or 1
    return streams.replicas_of(config.nats.replicas, nc._server_info)


async def _stream_info(js: Any, name: str) -> Any:
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(name)
    except NotFoundError:
        return None


async def _live_instances(js: Any) -> list[str]:
    """The instance ids with a live key in the members bucket."""
    import time

    from nats.js.errors import BucketNotFoundError, NoKeysError

    from supervisor.members import BUCKET, decode

    try:
        kv = await js.key_value(BUCKET)
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    live = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except Exception:  # noqa: BLE001 - deleted or expired between keys() and get()
            continue
        if decode(key, entry.value, time.monotonic()) is not None:
            live.append(key)
    return live
