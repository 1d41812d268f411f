"""The JetStream objects a pipeline reads from: its stream (with the partition transform) or its
partition streams (workers/topology.py, the layouts), its dead-letter stream, and one durable pull
consumer per partition.

The supervisor makes them all at start and reload (supervisor/provision.py); a worker whose
partition finds its consumer or stream gone while it runs makes that partition's again here
(workers/partition/storer.py), so that a running jetsink goes on without a restart.  Every
function is idempotent: what exists and matches is left as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from workers.topology import (
    PRIORITY_GROUP,
    STREAM_PER_PARTITION,
    account_mapping,
    consumer_name,
    partition_filter,
    partition_view,
    probe_subjects,
    transform_destination,
)

log = logging.getLogger("jetsink.provision")

# The default ack_wait's floor (at_least_once recovers a crashed worker's messages after it).
ACK_WAIT_FLOOR_S = 30.0
# nats-server's error codes for a missing stream and a missing consumer (JSStreamNotFoundErr,
# JSConsumerNotFoundErr).
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


class ProvisionError(Exception):
    """The servers cannot be made to match the config; the message names what and where."""


@dataclass(frozen=True)
class ConsumerSettings:
    """Delivery settings of a partition's durable consumer, derived from the batch limits."""

    ack_wait_s: float
    max_ack_pending: int
    max_deliver: int


def consumer_settings(p: Any) -> ConsumerSettings:
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


def replicas_of(configured: int | None, server_info: dict) -> int:
    """nats.replicas, else 3 when the server is in a cluster of 3 or more, else 1.

    A clustered server's INFO names the cluster and lists its servers' client URLs
    (connect_urls, itself included)."""
    if configured is not None:
        return configured
    if not server_info.get("cluster"):
        return 1
    return 3 if len(server_info.get("connect_urls") or ()) >= 3 else 1


def missing(exc: BaseException) -> str | None:
    """"stream" or "consumer" when `exc` is JetStream saying that one does not exist, else None."""
    if isinstance(exc, NotFoundError):
        code = getattr(exc, "err_code", None)
        if code == STREAM_NOT_FOUND:
            return "stream"
        if code == CONSUMER_NOT_FOUND:
            return "consumer"
    return None


async def scale(js: Any, cfg: Any, replicas: int) -> None:
    """A stream with fewer replicas than wanted is scaled up (never down: that is an operator's call)."""
    if (cfg.num_replicas or 1) < replicas:
        await js.update_stream(cfg.evolve(num_replicas=replicas))
        log.warning("stream %s: scaled from %d to %d replicas", cfg.name, cfg.num_replicas or 1, replicas)


async def ensure_stream(js: Any, p: Any, replicas: int = 1) -> bool:
    """The pipeline's streams as its layout has them; True when one was created now."""
    if p.layout == STREAM_PER_PARTITION:
        made = False
        for index in range(p.partitions):
            made |= await ensure_partition_stream(js, partition_view(p, index), index, replicas)
        return made
    return await _ensure_single_stream(js, p, replicas)


async def ensure_partition_stream(js: Any, view: Any, index: int, replicas: int = 1) -> bool:
    """Partition `index`'s stream (stream_per_partition; `view` is workers.topology.partition_view's),
    capturing what the account's mapping sends to the partition; True when it was created now."""
    subject = partition_filter(view.subject, index)
    try:
        info = await js.stream_info(view.stream)
    except NotFoundError:
        try:
            await js.add_stream(api.StreamConfig(name=view.stream, subjects=[subject], storage=api.StorageType.FILE,
                                                 num_replicas=replicas))
        except Exception:
            info = await js.stream_info(view.stream)  # made by another process first
        else:
            log.info("created stream %s for partition %d (%s, %d replicas)", view.stream, index, subject, replicas,
                     extra={"pipeline": view.name})
            return True
    cfg = info.config
    await scale(js, cfg, replicas)
    if (cfg.subjects or []) != [subject] or cfg.subject_transform is not None:
        raise ProvisionError(
            f"pipelines {view.name}: stream {view.stream} exists with subjects {cfg.subjects}"
            + (" and a subject transform" if cfg.subject_transform is not None else "")
            + f"; partition {index}'s stream (layout stream_per_partition) takes {subject!r} alone"
        )
    return False


# A probe publish's answer: the stream refuses it (the expected stream does not exist) and names itself.
_PROBE_HEADER = {"Nats-Expected-Stream": "jetsink-mapping-probe"}


async def mapped_streams(nc: Any, subjects: list[str], timeout: float = 5.0) -> list[str | None]:
    """For each subject, the stream a publish to it would land in, or None (no stream takes it).

    Nothing is stored: the publish expects a stream that does not exist, so the stream that
    takes the subject answers with an error naming itself, and no consumer ever sees it."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    async def one(subject: str) -> str | None:
        try:
            reply = await nc.request(subject, b"", timeout=timeout, headers=_PROBE_HEADER)
        except (NoRespondersError, NatsTimeout, asyncio.TimeoutError):
            return None
        try:
            return json.loads(reply.data).get("stream")
        except ValueError:
            return None

    return list(await asyncio.gather(*(one(s) for s in subjects)))


async def check_mapping(nc: Any, p: Any, wait_s: float = 5.0) -> None:
    """Refuse a stream_per_partition pipeline whose account does not map its subject into partitions
    as its partition streams expect (ProvisionError naming the pipeline and the mapping to add).

    Every partition gets a probe.  Wrong answers are asked again for up to `wait_s` (a config
    reload that adds the mapping may be under way)."""
    probes = probe_subjects(p.subject, p.partitions)
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        landed = await mapped_streams(nc, [s for s, _ in probes])
        wrong = [(s, want, got) for (s, want), got in zip(probes, landed, strict=True)
                 if got != partition_view(p, want).stream]
        if not wrong:
            return
        if {got for _, _, got in wrong} == {p.stream} and len(wrong) == len(probes):
            # Every publish lands in the pipeline's single stream: a move to single_stream is under way
            # (supervisor/migrate.py); this layout goes on storing what its partition streams hold.
            log.warning("pipelines %s: the account no longer maps %s into partitions: new messages go to stream %s "
                        "(moving to layout single_stream?); storing what the partition streams hold",
                        p.name, p.subject, p.stream, extra={"pipeline": p.name})
            return
        if asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.2)  # polling the server's answer until the deadline
    src, dest = account_mapping(p.subject, p.partitions)
    subject, want, got = wrong[0]
    raise ProvisionError(
        f"pipelines {p.name}: layout stream_per_partition needs the NATS account to map {src!r} to {dest!r}; "
        f"a probe published to {subject!r} {'landed in stream ' + got if got else 'landed in no stream'}, not in "
        f"{partition_view(p, want).stream} ({len(wrong)} of {len(probes)} probes wrong). Add to the server config "
        f"`mappings {{ \"{src}\": \"{dest}\" }}` and reload it (`nats-server --signal reload`), or with JWTs "
        f"`nsc add mapping --from \"{src}\" --to \"{dest}\"` and push the account "
        "(docs/operations.md, \"Stream per partition\")"
    )


async def _ensure_single_stream(js: Any, p: Any, replicas: int = 1) -> bool:
    """The pipeline's stream with its partition transform; True when it was created now."""
    transform = api.SubjectTransform(src=p.subject, dest=transform_destination(p.subject, p.partitions))
    try:
        info = await js.stream_info(p.stream)
    except NotFoundError:
        try:
            await js.add_stream(api.StreamConfig(name=p.stream, subjects=[p.subject], subject_transform=transform,
                                                 storage=api.StorageType.FILE, num_replicas=replicas))
        except Exception:
            # Another process (a worker whose partition found it gone too) may have made it first.
            info = await js.stream_info(p.stream)
        else:
            log.info("created stream %s for %s with %d partitions (%d replicas)", p.stream, p.subject, p.partitions,
                     replicas, extra={"pipeline": p.name})
            return True
    cfg = info.config
    await scale(js, cfg, replicas)
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
    return False


async def ensure_dlq(js: Any, p: Any, replicas: int = 1) -> None:
    try:
        info = await js.stream_info(p.dlq_stream)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(name=p.dlq_stream, subjects=[p.dlq_subject], storage=api.StorageType.FILE,
                                             num_replicas=replicas))
        log.info("created dead-letter stream %s on %s", p.dlq_stream, p.dlq_subject, extra={"pipeline": p.name})
        return
    await scale(js, info.config, replicas)
    if p.dlq_subject not in (info.config.subjects or []):
        raise ProvisionError(
            f"pipelines {p.name}: dlq stream {p.dlq_stream} exists but does not take subject {p.dlq_subject!r}"
        )


async def consumer_exists(js: Any, p: Any, index: int) -> Any:
    """The partition's consumer's info, or None when it does not exist (`p`: the partition's view,
    workers.topology.partition_view, whose `stream` holds the partition)."""
    try:
        return await js.consumer_info(p.stream, consumer_name(p.name, index))
    except NotFoundError:
        return None


async def ensure_consumer(nc: Any, p: Any, index: int, existing: Any, start_seq: int | None = None) -> None:
    """Create the partition's durable consumer, or update the editable fields of `existing` (its info);
    `p` is the partition's view (workers.topology.partition_view).

    A new consumer delivers from `start_seq` (the one after what the partition's commit state
    says is stored), or from the stream's first message.
    """
    s = consumer_settings(p)
    name = consumer_name(p.name, index)
    # AckAll: one ack per batch instead of one per message, half the server's CPU
    # per message; workers/delivery/acks.py decides when a batch's ack is safe. The policy
    # cannot be changed on an existing consumer, and workers follow whichever the
    # consumer has, so one made explicit by an earlier version keeps working.
    policy = api.AckPolicy.ALL
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
        # A partition stream holds the partition alone: no filter (nats-server then reads it straight through).
        filter_subject=None if p.layout == STREAM_PER_PARTITION else partition_filter(p.subject, index),
        ack_policy=policy,
        deliver_policy=api.DeliverPolicy.ALL if start_seq is None else api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
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
