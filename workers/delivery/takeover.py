"""Exactly once when a partition changes hands (issue 14): what its new owner does before its first pull.

A previous owner that died leaves two things behind in the partition's commit state
(workers/delivery/commits.py) and consumer:

- an in-doubt batch: a range it recorded as in flight and never recorded as stored.  When
  the consumer's ack floor is at or past its last message, the owner acked it, which it
  does only once ClickHouse and the DLQ confirmed the batch: it is stored, and nobody need
  be asked (the common case: an owner writes `stored` with the next batch's range, so
  between a batch's ack and that write the state names it in flight).  Otherwise its
  insert may or may not have landed; ClickHouse's query log tells (workers/clickhouse/indoubt.py),
  and when it cannot, the same batch is sent again under the same identity (query_id,
  dedup token).
- deliveries it held unacked. Rather than waiting ack_wait for their redelivery, the new
  owner reads them back from the stream and stores them, so that every message up to the
  consumer's last delivery is stored and acks flow per batch at once.

The steps that store a batch are the partition's own (`TableWriter.store`, workers/partition/writer.py):
this module only decides which batches, in which order, and what the commit state says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from workers import message
from workers.clickhouse import indoubt
from workers.delivery import commits
from workers.delivery.commits import CommitLog, Range
from workers.topology import consumer_name, partition_filter

log = logging.getLogger(__name__)

REPLY = message.REPLY


@dataclass
class Takeover:
    """A partition's new owner settling what its previous owner left (built by its Storer,
    workers/partition/storer.py)."""

    name: str  # pipeline/partition, for logs
    target: Any  # workers.partition.prepare.PartitionTarget
    nc: Any
    commits: CommitLog
    stats: Any  # workers.partition.runner.PartitionStats
    retrying: Callable[..., Awaitable[Any]]  # the partition's retry loop (backoff, faults, pauses)
    store: Callable[..., Awaitable[Any]]  # store(msgs, ident, range, keep_alive=None) -> Prepared
    identity: Callable[[Range], indoubt.InsertIdentity]
    # landed(query_id, began_at, wait_s, recorded replica) in the insert thread: True, False or None (cannot
    # tell); with several ClickHouse replicas it asks every one the insert may be on (workers/clickhouse/replicas.py).
    landed: Callable[[str, float, float, str], Awaitable[bool | None]] | None
    max_rows: int
    log_extra: dict

    async def run(self, ack_floor: int, unacked: tuple[int, int, int] | None) -> int | None:
        """Settle the in-doubt batch, then store `unacked` (ack floor, last delivered stream sequence,
        last consumer sequence: what the consumer's info said at start) from the stream.

        Returns the consumer sequence acks go on from once the dead owner's messages are
        stored, or None when there were none (the consumer had nothing unacked)."""
        c = self.commits
        if c.state.inflight is not None:
            await self.resolve_in_doubt(c.state.inflight, ack_floor)
        if unacked is None:
            return None
        floor, last, last_cseq = unacked
        first = max(c.state.stored, floor) + 1
        msgs = await self.retrying("stream read", self._read, first, last)
        held = len(msgs)
        if c.held:
            # Stored by that owner while it held acks (recorded): not stored again.
            msgs = [m for m in msgs if message.parse_ack_subject(m[REPLY]).stream_seq not in c.held]
        held -= len(msgs)
        for i in range(0, len(msgs), self.max_rows):
            chunk = msgs[i:i + self.max_rows]
            if held:
                r = commits.scattered(chunk, time.time())
            else:
                head, tail = message.parse_ack_subject(chunk[0][REPLY]), message.parse_ack_subject(chunk[-1][REPLY])
                r = Range(head.stream_seq, tail.stream_seq, len(chunk), head.timestamp_ns, time.time())
            await self.retrying("commit state", c.begin, r)
            prepared = await self.store(chunk, self.identity(r), r, keep_alive=None)
            await self.retrying("commit state", c.stored, r.last)
            self.stats.inserted += prepared.rows
            self.stats.dead_lettered += len(prepared.dead)
            if prepared.routes:
                self.stats.routed(prepared.routes)
        await self.retrying("commit state", c.stored, last)
        self.stats.taken_over += len(msgs)
        log.info(
            "partition %s: stored the %d messages up to %d a previous owner held unacked (read from the stream, "
            "%d..%d; %d it had stored while holding acks were not stored again); acking per batch", self.name,
            len(msgs), last, first, last, held, extra=self.log_extra,
        )
        return last_cseq

    async def resolve_in_doubt(self, r: Range, ack_floor: int = 0) -> None:
        """A previous owner recorded batch r and died before recording it stored: find out whether
        its insert landed; if that cannot be known, send the same batch again under the same identity."""
        c = self.commits
        ident = self.identity(r)
        where = f"partition {self.name}: in-doubt batch {r.first}..{r.last} ({r.count} messages)"
        if ack_floor >= r.last:
            log.info("%s: acked by its owner, so stored; nothing to ask", where, extra=self.log_extra)
            self.stats.in_doubt_acked += 1
            await self.retrying("commit state", c.stored, r.last)
            return
        if self.target.pipeline.routes:
            await self._resolve_by_part(r, where)
            return
        verdict = None
        if self.landed is not None:
            verdict = await self.retrying("in-doubt check", self.landed, ident.query_id, r.began_at, 60.0, r.host)
        if r.host:
            where += f" (sent while clickhouse {r.host} was in use)"
        if verdict is True:
            log.info("%s: its insert had landed; not stored again", where, extra=self.log_extra)
            self.stats.in_doubt_landed += 1
            await self.retrying("commit state", c.settled, r)
            return
        if verdict is False:
            self.stats.in_doubt_not_landed += 1
            log.info("%s: its insert never landed; stored when redelivered", where, extra=self.log_extra)
            await self.retrying("commit state", c.stored, c.state.stored)
            return
        msgs = await self._batch_messages(r, where)
        if msgs is None:
            return
        # In doubt: a batch inserted in parts (rows leaving columns to the server) has each part asked about.
        prepared = await self.store(msgs, ident, r, keep_alive=None, in_doubt=True)
        self.stats.in_doubt_resent += 1
        if ident.token:
            dedup = "deduplicated by its token where the table deduplicates"
        else:
            dedup = "dropped by block deduplication on a Replicated table, a duplicate elsewhere if it had landed"
        log.warning(
            "%s: cannot tell whether its insert landed (ClickHouse restarted, or a replica that may hold it does "
            "not answer); sent again as the same block "
            "(%d rows, %s)", where, prepared.rows, dedup,
            extra={**self.log_extra, "first_seq": r.first, "last_seq": r.last, "rows": prepared.rows},
        )
        await self.retrying("commit state", c.settled, r)

    async def _resolve_by_part(self, r: Range, where: str) -> None:
        """A routed batch is one insert per table: some may have landed and others not. Its messages are
        read back and stored again part by part, each part asked about first under its own identity
        (workers/partition/writer.py, in_doubt): a part that landed is not sent again."""
        c = self.commits
        msgs = await self._batch_messages(r, where)
        if msgs is None:
            return
        prepared = await self.store(msgs, self.identity(r), r, keep_alive=None, in_doubt=True)
        self.stats.in_doubt_resent += 1
        log.warning(
            "%s: a routed batch; each table's part asked about and sent again only where it had not landed "
            "(%d rows in all)", where, prepared.rows,
            extra={**self.log_extra, "first_seq": r.first, "last_seq": r.last, "rows": prepared.rows},
        )
        await self.retrying("commit state", c.settled, r)

    async def _batch_messages(self, r: Range, where: str) -> list[tuple] | None:
        """The in-doubt batch's messages read back from the stream; None (logged) when it no longer has them all."""
        c = self.commits
        msgs = await self.retrying("stream read", self._read, r.first, r.last)
        if r.seqs:
            members = set(r.seqs)
            msgs = [m for m in msgs if message.parse_ack_subject(m[REPLY]).stream_seq in members]
        if len(msgs) != r.count:
            log.warning(
                "%s: cannot tell whether its insert landed, and the stream now holds %d of its messages: stored "
                "when redelivered (duplicates possible)", where, len(msgs), extra=self.log_extra,
            )
            await self.retrying("commit state", c.stored, c.state.stored)
            return None
        return msgs

    async def _read(self, first: int, last: int) -> list[tuple]:
        """The partition's messages first..last (stream sequences), read back from the stream."""
        p, t = self.target.pipeline, self.target
        pattern = partition_filter(p.subject, t.index)
        return await commits.read_stream(self.nc, p.stream, pattern, t.consumer, first, last)


async def open_state(nc: Any, pipeline: str, stream: str, index: int, log_extra: dict) -> CommitLog:
    """The partition's commit state, bound to the stream incarnation it counts in (commits.bind).

    A state of another incarnation is set aside, and sequences the stream removed before
    they were stored are reported, each with one warning; a deleted bucket is created again
    (the partition then goes on from its consumer's ack floor: the takeover logs the range
    it may store twice).  `opened` on the log says what was found.
    """
    from nats.js.errors import BucketNotFoundError

    js = nc.jetstream(timeout=10.0)
    incarnation = await commits.incarnation(js, stream)
    created = incarnation.created
    name = f"{pipeline}/{index}"
    try:
        log_, bound = await CommitLog.open(js, pipeline, index, incarnation)
    except BucketNotFoundError:
        await _make_bucket(js, pipeline, stream)
        log_, bound = await CommitLog.open(js, pipeline, index, incarnation)
        bound = commits.Bound(bound.state, f"its KV bucket {commits.bucket_name(pipeline)} was missing (deleted?) "
                              "and was created again", bound.expired)
    log_.opened = bound

    bucket_stream = f"KV_{commits.bucket_name(pipeline)}"
    opened_bucket = (await js.stream_info(bucket_stream)).created

    async def recreate_bucket() -> bool:
        """After a write nobody took: True when the bucket is not the one opened (deleted, and made
        again now or by another partition), False when it is (the write met an election)."""
        from nats.js.errors import NotFoundError

        try:
            if (await js.stream_info(bucket_stream)).created == opened_bucket:
                return False
        except NotFoundError:
            await _make_bucket(js, pipeline, stream)
        log.warning(
            "partition %s: commit-state bucket %s was deleted under it; it exists again, and this partition's "
            "state goes into it as this owner holds it (stored %d): nothing is stored twice", name,
            commits.bucket_name(pipeline), log_.stored_through, extra=log_extra,
        )
        return True

    log_.recreate_bucket = recreate_bucket
    if bound.afresh is not None:
        log.warning(
            "partition %s: set aside its commit state: %s; starting afresh from what the consumer has not acked",
            name, bound.afresh, extra={**log_extra, "stream_created": created},
        )
    if bound.expired:
        log.warning(
            "partition %s: stream %s no longer holds sequences %d..%d (removed by its limits before this partition "
            "stored them): up to %d messages expired unread", name, stream, bound.state.stored + 1,
            incarnation.first_seq - 1, bound.expired, extra={**log_extra, "expired_unread": bound.expired},
        )
    return log_


async def _make_bucket(js: Any, pipeline: str, stream: str) -> None:
    """Create the commit-state bucket again, replicated like its stream; one that another partition
    made first is fine (whoever opens or writes it next finds it)."""
    try:
        await commits.create_bucket(js, pipeline, (await js.stream_info(stream)).config.num_replicas or 1)
    except Exception as exc:
        log.debug("creating %s: %s", commits.bucket_name(pipeline), exc)


async def restart_position(js: Any, pipeline: str, stream: str, index: int, log_extra: dict) -> int | None:
    """Where a missing consumer of an exactly_once partition starts: after what its commit state says is stored.

    A consumer deleted by an operator would otherwise start again at the stream's first
    message, and every message up to `stored` would be delivered again (and skipped as
    stored, at a cost). None: from the first message (no state, or one of another stream
    incarnation, which opening the state then reports).
    """
    from nats.js.errors import BucketNotFoundError

    try:
        _, bound = await CommitLog.open(js, pipeline, index, await commits.incarnation(js, stream))
    except BucketNotFoundError:
        return None
    if bound.afresh is not None or bound.state.stored == 0:
        return None
    log.warning(
        "partition %s/%d: consumer %s on stream %s was missing; created again from its commit state, delivering "
        "from stream sequence %d (everything up to %d is stored)", pipeline, index, consumer_name(pipeline, index),
        stream, bound.state.stored + 1, bound.state.stored, extra=log_extra,
    )
    return bound.state.stored + 1
