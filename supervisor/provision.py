"""Make the servers match the config: streams with their partition transform (or one stream per
partition, fed by the account's mapping, which is checked), DLQ streams, one durable consumer per
partition (workers/nats/streams.py makes each), the commit-state and members buckets, and tables
whose schema the mapper accepts.

Everything here is idempotent: the supervisor runs it at every start and reload.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from supervisor.config import Config, Pipeline
from supervisor.members import BUCKET as MEMBERS_BUCKET
from workers import settings
from workers.clickhouse import sink
from workers.clickhouse.connect import clickhouse_client, clickhouse_where
from workers.clickhouse.schema import ServerFeatures
from workers.clickhouse.table_schema import unused_overrides
from workers.delivery.commits import bucket_name, create_bucket
from workers.delivery.takeover import restart_position
from workers.nats import streams
from workers.nats.connect import connect_nats
from workers.nats.streams import ProvisionError
from workers.topology import (
    SINGLE_STREAM,
    STREAM_PER_PARTITION,
    account_mapping,
    consumer_name,
    data_streams,
    partition_view,
    probe_subjects,
)

log = logging.getLogger("jetsink.provision")


# The members bucket's expiry markers live this long (watchers need only see them once).
MEMBERS_MARKER_TTL_S = 60.0


async def provision_streams(config: Config) -> None:
    """Create or update every pipeline's stream, DLQ stream and partition consumers, and the members bucket."""
    nc = await connect_nats(config.nats, name="jetsink-supervisor")
    try:
        js = nc.jetstream(timeout=10.0)
        replicas = streams.replicas_of(config.nats.replicas, nc._server_info)
        await _ensure_members(js, replicas)
        for p in config.pipelines:
            await streams.ensure_stream(js, p, replicas)
            if p.layout == STREAM_PER_PARTITION:
                await streams.check_mapping(nc, p)
            await _check_other_layout(nc, js, p)
            await streams.ensure_dlq(js, p, replicas)
            if p.delivery == "exactly_once":
                await _ensure_commits(js, p)
            await _ensure_consumers(nc, p)
    finally:
        await nc.close()


async def _check_other_layout(nc: Any, js: Any, p: Pipeline) -> None:
    """Refuse a pipeline whose other layout's streams hold messages its consumers have not stored, unless
    the account's mapping says a move to that layout is under way (supervisor/migrate.py): those
    messages would otherwise never be read."""
    other = dataclasses.replace(p, layout=SINGLE_STREAM if p.layout == STREAM_PER_PARTITION else STREAM_PER_PARTITION)
    held = await _unstored(js, other)
    if not held:
        return
    probes = [s for s, _ in probe_subjects(p.subject, p.partitions)]
    landed = set(await streams.mapped_streams(nc, probes))
    if landed <= set(data_streams(other)):
        log.warning("pipelines %s: the account sends new messages to %s (layout %s): a move to it is under way; "
                    "this layout stores what %s hold", p.name, ", ".join(sorted(map(str, landed))), other.layout,
                    ", ".join(data_streams(p)), extra={"pipeline": p.name})
        return
    raise ProvisionError(
        f"pipelines {p.name}: the {other.layout} streams {', '.join(data_streams(other))} hold {held} messages "
        f"jetsink has not stored, and this config has layout {p.layout}: move the pipeline with `python -m "
        "supervisor migrate-layout` (docs/operations.md, \"Changing a pipeline's layout\"), or delete those "
        "streams if their messages are not needed")


async def _unstored(js: Any, p: Pipeline) -> int:
    """Messages pending or unacked on the pipeline's consumers in the layout of `p` (0 when it has no streams)."""
    if p.layout == STREAM_PER_PARTITION:
        try:
            await js.stream_info(partition_view(p, 0).stream)
        except NotFoundError:
            return 0  # no partition streams: the usual single_stream pipeline, one question
    held = 0
    for index in range(p.partitions):
        view = partition_view(p, index)
        try:
            info = await js.consumer_info(view.stream, consumer_name(p.name, index))
        except NotFoundError:
            continue
        held += (info.num_pending or 0) + (info.num_ack_pending or 0)
    return held


async def _ensure_members(js: Any, replicas: int) -> None:
    """The KV bucket of live instances (supervisor/members.py): per-key TTLs, expiry markers watchers see."""
    try:
        await js.key_value(MEMBERS_BUCKET)
        return
    except NotFoundError:
        pass
    try:
        await js.create_key_value(api.KeyValueConfig(
            bucket=MEMBERS_BUCKET, history=1, replicas=replicas, storage=api.StorageType.FILE,
            limit_marker_ttl=MEMBERS_MARKER_TTL_S))
    except Exception as exc:
        raise ProvisionError(
            f"cannot create the members bucket {MEMBERS_BUCKET} (needs nats-server 2.11+): {exc}"
        ) from exc
    log.info("created the members bucket %s (%d replicas)", MEMBERS_BUCKET, replicas)


async def _ensure_commits(js: Any, p: Pipeline) -> None:
    """The KV bucket of the pipeline's commit states (workers/delivery/commits.py), replicated like its stream
    (as _ensure_stream left it: a commit state must survive whatever the messages survive)."""
    bucket = bucket_name(p.name)
    first = partition_view(p, 0)  # its stream (partition 0's, stream_per_partition)
    replicas = (await js.stream_info(first.stream)).config.num_replicas or 1
    try:
        kv = await js.key_value(bucket)
    except NotFoundError:
        kv = None
    if kv is not None:
        cfg = (await js.stream_info(f"KV_{bucket}")).config
        await streams.scale(js, cfg, replicas)
        if (cfg.num_replicas or 1) > replicas:
            log.warning(
                "commit-state bucket %s has %d replicas, stream %s has %d; change it with `nats kv edit`",
                bucket, cfg.num_replicas, first.stream, replicas, extra={"pipeline": p.name},
            )
        return
    try:
        await create_bucket(js, p.name, replicas)
    except Exception as exc:
        raise ProvisionError(f"pipelines {p.name}: cannot create the commit-state bucket {bucket}: {exc}") from exc
    if await streams.consumer_exists(js, first, 0):
        # The bucket is made with the consumers: they exist, it does not, so it was deleted.
        log.warning(
            "commit-state bucket %s was missing although the consumers of stream %s exist (deleted?); created "
            "it again: each partition goes on from its consumer's ack floor, and a partition whose consumer "
            "holds unacked messages logs the range it may store twice", bucket, first.stream,
            extra={"pipeline": p.name},
        )
    else:
        log.info("created commit-state bucket %s (%d replicas)", bucket, replicas, extra={"pipeline": p.name})


async def _ensure_consumers(nc: Any, p: Pipeline) -> None:
    """One durable consumer per partition; one that is missing starts after what its commit state says is stored."""
    js = nc.jetstream(timeout=10.0)
    for index in range(p.partitions):
        view = partition_view(p, index)
        existing = await streams.consumer_exists(js, view, index)
        start = None
        if existing is None and p.delivery == "exactly_once":
            start = await restart_position(js, p.name, view.stream, index, {"pipeline": p.name, "partition": index})
        await streams.ensure_consumer(nc, view, index, existing, start)


def check_tables(config: Config, create: bool = True) -> dict[str, Any]:
    """Create missing tables from `create_table` and compile every pipeline's mappers.

    Returns "pipeline" (or "pipeline/route" for a route's table) -> ColumnMapper. Raises
    ProvisionError naming the pipeline and server for a missing table, an unsupported column
    type, a bad column override or a pipeline-wide override that no route's table has.
    """
    where = clickhouse_where(config.clickhouse)
    client = clickhouse_client(config.clickhouse)
    try:
        try:
            version = sink.server_version(client)
        except Exception as exc:
            raise ProvisionError(f"cannot reach {where}: {exc}") from exc
        features = ServerFeatures.from_version(version)
        mappers = {}
        for i, p in enumerate(config.pipelines):
            if p.create_table and not sink.table_columns(client, p.table, config.clickhouse.database):
                if not create:
                    log.info("table %s is missing; create_table will create it at start", p.table)
                    continue
                try:
                    client.execute(p.create_table)
                except Exception as exc:
                    raise ProvisionError(f"pipelines[{i}].create_table failed on {where}: {exc}") from exc
                log.info("created table %s", p.table, extra={"pipeline": p.name})
            for t in settings.targets(p):
                key = p.name if t.label is None else f"{p.name}/{t.label}"
                at = f"pipelines[{i}].table" if t.label is None else f"pipelines[{i}] ({p.name}) route {t.label}"
                try:
                    mappers[key] = sink.build_mapper(
                        client, t.table, config.clickhouse.database, features=features,
                        **sink.pipeline_mapping(p, t),
                    )
                except LookupError as exc:
                    raise ProvisionError(f"{at}: {exc} on {where}") from exc
                except Exception as exc:
                    if type(exc).__name__ == "SchemaError":
                        raise ProvisionError(f"{at}: {exc}") from exc
                    raise
            problem = unused_overrides(p, [mappers.get(f"{p.name}/{t.label}") for t in settings.targets(p)])
            if problem:
                raise ProvisionError(f"pipelines[{i}] ({p.name}): {problem}")
        return mappers
    finally:
        client.disconnect()


def account_mappings(config: Config) -> dict[str, str]:
    """The NATS account's subject mappings the config's stream_per_partition pipelines need (source -> destination)."""
    return dict(account_mapping(p.subject, p.partitions) for p in config.pipelines if p.layout == STREAM_PER_PARTITION)


def partitions_of(config: Config) -> list[tuple[str, int]]:
    """Every (pipeline, index) the config defines."""
    return [(p.name, i) for p in config.pipelines for i in range(p.partitions)]

