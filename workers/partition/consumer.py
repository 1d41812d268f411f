"""The partition's durable consumer: its info, its pin, and making it again when it is gone.

An operator may delete a consumer, or its whole stream (a reset, a restore, new stream
settings), while jetsink runs or while it is stopped.  A partition that finds its consumer
missing makes it again (and the stream, if that is gone too: workers/nats/streams.py) rather
than failing: an exactly_once partition's new consumer delivers from after what its commit
state says is stored (workers/delivery/takeover.py, restart_position); a stream made again is
another incarnation, so the commit state is set aside when it is opened and the consumer
starts at the new stream's first message.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from workers.delivery import takeover
from workers.nats import intake, streams
from workers.partition.prepare import PartitionTarget
from workers.partition.stats import PartitionStats
from workers.topology import PRIORITY_GROUP, STREAM_PER_PARTITION

log = logging.getLogger(__name__)


async def info(nc: Any, target: PartitionTarget) -> Any:
    """CONSUMER.INFO of the partition's consumer."""
    return await nc.jetstream(timeout=10.0).consumer_info(target.pipeline.stream, target.consumer)


async def info_or_again(nc: Any, target: PartitionTarget, stats: PartitionStats, log_extra: dict) -> Any:
    """The consumer's info; a consumer (or stream) deleted under jetsink is made again first."""
    try:
        return await info(nc, target)
    except Exception as exc:
        gone = streams.missing(exc)
        if gone is None:
            raise
    p, index = target.pipeline, target.index  # p: the partition's view (its stream: the partition's own, or all's)
    name = f"{p.name}/{index}"
    js = nc.jetstream(timeout=10.0)
    if gone == "stream" and await _ensure_stream(js, target):
        log.warning("partition %s: stream %s was missing; created it again", name, p.stream, extra=log_extra)
    start = None
    if p.delivery == "exactly_once":
        start = await takeover.restart_position(js, p.name, p.stream, index, log_extra)
    if start is None:
        log.warning("partition %s: consumer %s was missing; created it again, delivering from the stream's first "
                    "message", name, target.consumer, extra=log_extra)
    await streams.ensure_consumer(nc, p, index, None, start)
    stats.consumers_created += 1
    return await info(nc, target)


async def _ensure_stream(js: Any, target: PartitionTarget) -> bool:
    """The stream the partition reads, made again: the pipeline's, or the partition's own."""
    if target.pipeline.layout == STREAM_PER_PARTITION:
        return await streams.ensure_partition_stream(js, target.pipeline, target.index, target.replicas)
    return await streams.ensure_stream(js, target.pipeline, target.replicas)


async def gone(nc: Any, target: PartitionTarget) -> str | None:
    """Why the consumer no longer exists ("its consumer is gone (...)", or its stream), or None while it
    does, or while no leader answers (an election: pulls go on being retried)."""
    try:
        await nc.jetstream(timeout=5.0).consumer_info(target.pipeline.stream, target.consumer)
    except Exception as exc:
        what = streams.missing(exc)
        if what is not None:
            return f"its {what} is gone ({exc})"
    return None


async def unpin(nc: Any, target: PartitionTarget, log_extra: dict) -> None:
    """Release the consumer's pin (whoever holds it); an answer that it had none is fine."""
    subject = intake.unpin_subject(target.pipeline.stream, target.consumer)
    try:
        await nc.request(subject, orjson.dumps({"group": PRIORITY_GROUP}), timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - the pin then times out on the server by itself
        log.warning("partition %s/%d: unpin failed: %s", target.pipeline.name, target.index,
                    exc or type(exc).__name__, extra=log_extra)
