"""Make the servers match the config: streams with their partition transform, DLQ streams,
one durable consumer per partition, and tables whose schema the mapper accepts.

Everything here is idempotent: the supervisor runs it at every start and reload.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from supervisor.config import Config, Pipeline
from supervisor.members import BUCKET as MEMBERS_BUCKET
from workers.clickhouse import sink
from workers.clickhouse.connect import clickhouse_client, clickhouse_where
from workers.clickhouse.schema import ServerFeatures
from workers.delivery.commits import bucket_name, create_bucket
from workers.nats.connect import connect_nats
from workers.topology import PRIORITY_GROUP, consumer_name, partition_filter, transform_destination

log = logging.getLogger("jetsink.provision")


class ProvisionError(Exception):
    """The servers cannot be made to match the config; the message names what and where."""


# The default ack_wait's floor (at_least_once recovers a crashed worker's messages after it).
ACK_WAIT_FLOOR_S = 30.0


@dataclass(frozen=True)
class ConsumerSettings:
    """Delivery settings of a partition's durable consumer, derived from the batch limits."""

    ack_wait_s: float
    max_ack_pending: int
    max_deliver: int


def consumer_settings(p: Pipeline) -> ConsumerSettings:
    """A worker holds up to three batches of a partition unacked (filling, queued,
    committing), so max_ack_pending must allow that or the server throttles the pull.
    ack_wait must outlast a batch's age plus a slow insert; a live worker keeps batches it
    holds longer than a third of it alive with in-progress acks (a slow insert, retries),
    so it need not cover outages.  With exactly_once a crashed worker's successor reads
    what it held from the stream, so recovery does not wait for it either.
    """
    ack_wait = p.ack_wait_s if p.ack_wait_s is not None else max(ACK_WAIT_FLOOR_S, 3 * p.batch.max_wait_ms / 1000.0)
    return ConsumerSettings(
        ack_wait_s=ack_wait,
        max_ack_pending=3 * p.batch.max_rows,
        max_deliver=p.max_deliver,
    )


# The members bucket's expiry markers live this long (watchers need only see them once).
MEMBERS_MARKER_TTL_S = 60.0


def replicas_of(config: Config, server_info: dict) -> int:
    """nats.replicas, else 3 when the server is in a cluster of 3 or more, else 1.

    A clustered server's INFO names the cluster and lists its servers' client URLs
    (connect_urls, itself included)."""
    if config.nats.replicas is not None:
        return config.nats.replicas
    if not server_info.get("cluster"):
        return 1
    return 3 if len(server_info.get("connect_urls") or ()) >= 3 else 1


async def provision_streams(config: Config) -> None:
    """Create or update every pipeline's stream, DLQ stream and partition consumers, and the members bucket."""
    nc = await connect_nats(config.nats, name="jetsink-supervisor")
    try:
        js = nc.jetstream(timeout=10.0)
        replicas = replicas_of(config, nc._server_info)
        await _ensure_members(js, replicas)
        for p in config.pipelines:
            await _ensure_stream(js, p, replicas)
            await _ensure_dlq(js, p, replicas)
            await _ensure_consumers(nc, p)
            if p.delivery == "exactly_once":
                await _ensure_commits(js, p)
    finally:
        await nc.close()


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


async def _scale(js: Any, cfg: Any, replicas: int) -> None:
    """A stream with fewer replicas than wanted is scaled up (never down: that is an operator's call)."""
    if (cfg.num_replicas or 1) < replicas:
        await js.update_stream(cfg.evolve(num_replicas=replicas))
        log.warning("stream %s: scaled from %d to %d replicas", cfg.name, cfg.num_replicas or 1, replicas)


async def _ensure_stream(js: Any, p: Pipeline, replicas: int = 1) -> None:
    transform = api.SubjectTransform(src=p.subject, dest=transform_destination(p.subject, p.partitions))
    try:
        info = await js.stream_info(p.stream)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(name=p.stream, subjects=[p.subject], subject_transform=transform,
                                             storage=api.StorageType.FILE, num_replicas=replicas))
        log.info("created stream %s for %s with %d partitions (%d replicas)", p.stream, p.subject, p.partitions,
                 replicas, extra={"pipeline": p.name})
        return
    cfg = info.config
    await _scale(js, cfg, replicas)
    if p.subject not in (cfg.subjects or []):
        raise ProvisionError(
            f"pipelines {p.name}: stream {p.stream} exists with subjects {cfg.subjects}, not {p.subject!r}; "
            "point the pipeline at another stream or change the stream's subjects"
        )
    current = cfg.subject_transform
    if current is None or current.src != transform.src or current.dest != transform.dest:
        await js.update_stream(cfg.evolve(subject_transform=transform))
        log.warning(
            "stream %s: subject transform set to %s -> %s (was %s); messages already stored keep their old partition",
            p.stream, transform.src, transform.dest, current and f"{current.src} -> {current.dest}",
            extra={"pipeline": p.name},
        )


async def _ensure_dlq(js: Any, p: Pipeline, replicas: int = 1) -> None:
    try:
        info = await js.stream_info(p.dlq_stream)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(name=p.dlq_stream, subjects=[p.dlq_subject], storage=api.StorageType.FILE,
                                             num_replicas=replicas))
        log.info("created dead-letter stream %s on %s", p.dlq_stream, p.dlq_subject, extra={"pipeline": p.name})
        return
    await _scale(js, info.config, replicas)
    if p.dlq_subject not in (info.config.subjects or []):
        raise ProvisionError(
            f"pipelines {p.name}: dlq stream {p.dlq_stream} exists but does not take subject {p.dlq_subject!r}"
        )


async def _ensure_commits(js: Any, p: Pipeline) -> None:
    """The KV bucket of the pipeline's commit states (workers/commits.py), replicated like its stream
    (as _ensure_stream left it: a commit state must survive whatever the messages survive)."""
    bucket = bucket_name(p.name)
    replicas = (await js.stream_info(p.stream)).config.num_replicas or 1
    try:
        kv = await js.key_value(bucket)
    except NotFoundError:
        kv = None
    if kv is not None:
        cfg = (await js.stream_info(f"KV_{bucket}")).config
        await _scale(js, cfg, replicas)
        if (cfg.num_replicas or 1) > replicas:
            log.warning(
                "commit-state bucket %s has %d replicas, stream %s has %d; change it with `nats kv edit`",
                bucket, cfg.num_replicas, p.stream, replicas, extra={"pipeline": p.name},
            )
        return
    try:
        await create_bucket(js, p.name, replicas)
    except Exception as exc:
        raise ProvisionError(f"pipelines {p.name}: cannot create the commit-state bucket {bucket}: {exc}") from exc
    log.info("created commit-state bucket %s (%d replicas)", bucket, replicas, extra={"pipeline": p.name})


async def _ensure_consumers(nc: Any, p: Pipeline) -> None:
    js = nc.jetstream(timeout=10.0)
    s = consumer_settings(p)
    for index in range(p.partitions):
        name = consumer_name(p.name, index)
        # AckAll: one ack per batch instead of one per message, half the server's CPU
        # per message; workers/acks.py decides when a batch's ack is safe. The policy
        # cannot be changed on an existing consumer, and workers follow whichever the
        # consumer has, so one made explicit by an earlier version keeps working.
        policy = api.AckPolicy.ALL
        try:
            existing = await js.consumer_info(p.stream, name)
        except NotFoundError:
            existing = None
        if existing is not None and existing.config.ack_policy == api.AckPolicy.EXPLICIT:
            policy = api.AckPolicy.EXPLICIT
            if index == 0:
                log.warning(
                    "pipeline %s: consumers ack each message (made by an earlier version), which costs the NATS "
                    "server ~2x the CPU per message; to move to per-batch acks, stop the sink when the stream is "
                    "drained and delete the consumers %s (they are recreated)",
                    p.name,
                    consumer_name(p.name, 0).rsplit("_", 1)[0] + "_*",
                    extra={"pipeline": p.name},
                )
        want = api.ConsumerConfig(
            durable_name=name,
            filter_subject=partition_filter(p.subject, index),
            ack_policy=policy,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s,
            max_ack_pending=s.max_ack_pending,
            max_deliver=s.max_deliver,
            # One pull request open per partition at a time, plus slack for a request
            # still expiring when the next is sent.
            max_waiting=16,
        )
        # CONSUMER.CREATE with an existing durable updates the editable fields and
        # fails clearly on the rest, which is the idempotence we want.
        try:
            await create_consumer(nc, p.stream, want)
        except Exception as exc:
            raise ProvisionError(
                f"pipelines {p.name}: cannot create or update consumer {name} on stream {p.stream}: {exc}"
            ) from exc


async def create_consumer(nc: Any, stream: str, config: api.ConsumerConfig) -> dict:
    """Create or update a durable consumer with a priority group whose policy is pinned_client.

    The server then admits one puller at a time (the one holding the group's pin), which
    is what keeps two instances that disagree for a moment from consuming a partition
    together. nats-py's add_consumer() drops the priority fields (and an update through
    it silently makes the consumer plain again), so the request is sent raw. Its
    replicas follow the stream's (num_replicas 0).
    """
    body = config.as_dict()
    body["priority_groups"] = [PRIORITY_GROUP]
    body["priority_policy"] = "pinned_client"
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{config.durable_name}"
    reply = await nc.request(subject, json.dumps({"stream_name": stream, "config": body}).encode(), timeout=10.0)
    answer = json.loads(reply.data)
    if "error" in answer:
        err = answer["error"]
        raise RuntimeError(f"{err.get('description')} (code {err.get('code')}, error {err.get('err_code')})")
    return answer


def check_tables(config: Config, create: bool = True) -> dict[str, Any]:
    """Create missing tables from `create_table` and compile every pipeline's mapper.

    Returns pipeline name -> ColumnMapper. Raises ProvisionError naming the pipeline and
    server for a missing table, an unsupported column type or a bad column override.
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
            try:
                mappers[p.name] = sink.build_mapper(
                    client, p.table, config.clickhouse.database, p.columns, features, p.unknown_keys
                )
            except LookupError as exc:
                raise ProvisionError(f"pipelines[{i}].table: {exc} on {where}") from exc
            except Exception as exc:
                if type(exc).__name__ == "SchemaError":
                    raise ProvisionError(f"pipelines[{i}] ({p.name}): {exc}") from exc
                raise
        return mappers
    finally:
        client.disconnect()


def partitions_of(config: Config) -> list[tuple[str, int]]:
    """Every (pipeline, index) the config defines."""
    return [(p.name, i) for p in config.pipelines for i in range(p.partitions)]

