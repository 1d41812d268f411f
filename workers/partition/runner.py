"""One owned partition: pull -> batch -> map -> insert -> ack, with fetching never waiting on an insert.

Two tasks per partition.  The pull task keeps a pull request open on the durable
consumer and seals batches (by rows, bytes or age).  The commit task maps a sealed
batch, dead-letters what cannot be mapped, inserts the rest into ClickHouse and only
then acks.  At most one batch is being committed and one waits, so memory is bounded
by ~3 x max_rows messages and the consumer's max_ack_pending is sized to match.

Messages arrive in bulk as raw tuples (workers/wire.py) and a batch is acked with
one AckAll when workers/acks.py says that is safe (explicit per-message acks for
consumers created with that policy by older versions).

The map step itself is workers/prepare.py. With exactly_once, each batch's range goes
to the partition's commit state (workers/commits.py) before its insert, carrying the
previous batch's `stored` (one write per batch), and a partition taken from a dead owner
first settles what that owner left (workers/takeover.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from itertools import count, repeat
from operator import itemgetter
from typing import Any, Awaitable, Callable, Sequence

import orjson

from workers import message
from workers.clickhouse import faults, indoubt
from workers.clickhouse.schema import ColumnMapper
from workers.clickhouse.table_schema import TableSchema
from workers.delivery import commits, takeover
from workers.delivery.acks import ACK_ALL, ACK_EXPLICIT, AckTracker
from workers.delivery.commits import CommitLog, Range
from workers.nats import intake, wire
from workers.nats.dlq import DeadLetter, publish_dead_letters
from workers.observability.telemetry import Telemetry
from workers.partition.batch import Batch
from workers.partition.prepare import PartitionTarget, Prepared, dead_letter, join_prepared, prepare
from workers.topology import PRIORITY_GROUP

log = logging.getLogger(__name__)

_STOP = object()
# Longer than a JetStream leader election (4-9 s measured, docs/operations.md): retries of the
# steps that only talk to JetStream log as warnings until their failure has lasted this long.
JETSTREAM_ELECTION_S = 30.0
_ON_JETSTREAM = ("commit state", "stream read")
MAX_UNANSWERED_PULLS = 3
REPLY, HEADERS = message.REPLY, message.HEADERS
_reply = itemgetter(REPLY)


@dataclass
class PartitionStats:
    """Counters a partition keeps for the worker's stats reports."""

    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    insert_retries: int = 0
    last_batch_at: float = 0.0  # wall-clock time of the last committed batch
    pending: int = 0  # consumer's messages left, from the last delivery's ack subject
    skipped_duplicates: int = 0  # deliveries at or below the stored sequence: acked, not stored again
    # In-doubt batches a previous owner left (workers/takeover.py), by how they were settled:
    in_doubt_acked: int = 0  # acked by that owner (the consumer's ack floor): stored, nothing asked
    in_doubt_landed: int = 0  # its insert had landed (ClickHouse's query log): not sent again
    in_doubt_not_landed: int = 0  # its insert never landed (the query log): stored when redelivered
    in_doubt_resent: int = 0  # nobody could tell: sent again under the same identity
    taken_over: int = 0  # messages a previous owner held unacked, stored from the stream at takeover
    pins_lost: int = 0  # 423s: the consumer's pin went to another puller (or a new consumer leader)


class PartitionRunner:
    """Consumes one partition until stopped; stop() flushes, acks and returns."""

    def __init__(
        self,
        nc: Any,
        target: PartitionTarget,
        schema: TableSchema,
        run_in_thread: Callable[..., Awaitable[Any]],
        insert: Callable[[Sequence[str], list[list]], int],
        telemetry: Telemetry | None = None,
        clickhouse: indoubt.QueryLog | None = None,
        tokens: bool = False,
        exit_hook: commits.ExitHook | None = None,
    ) -> None:
        self._nc = nc
        self.target = target
        self._schema = schema  # the table's current mapper; it follows changes of the table
        self._telemetry = telemetry or Telemetry()
        # With observability on, thread calls carry the batch span (see workers/telemetry.py).
        self._run_in_thread = self._telemetry.carry_context(run_in_thread)
        self._insert = insert
        # Exactly once (workers/commits.py): the commit state, opened at start; `clickhouse`
        # asks ClickHouse about an in-doubt insert (workers/indoubt.py, in the insert thread).
        self._commits: CommitLog | None = None
        # At a takeover: the consumer's ack floor and last delivery (stream and consumer sequence).
        self._takeover: tuple[int, int, int] | None = None
        self._ack_floor = 0  # the consumer's ack floor (stream sequence) when this owner started
        self._query_log = clickhouse
        self._tokens = tokens
        self._exit_hook = exit_hook
        limits = target.pipeline.batch
        self._limits = (limits.max_rows, limits.max_bytes, limits.max_wait_ms / 1000.0)
        self._batch = self._new_batch()
        self._sealed: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._committing = False
        self._in_hand: list[Batch] = []  # sealed batches not yet acked (queued or committing)
        self._keepalive: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._outstanding = 0  # messages the open pull request may still deliver
        self._request_deadline = 0.0
        self._requested_at = 0.0  # when the last pull request was sent
        self._unanswered = 0  # pull requests in a row that got no reply while connected
        self._received = 0  # replies seen on the inbox (a cheap activity counter)
        self._delivered = 0  # messages among them (not status replies)
        self._received_at_deadline = 0
        self._stopping = False
        self._last_progress = time.monotonic()
        # Expiring pull requests every few seconds bounds how long a release waits.
        self._expires_s = min(5.0, max(0.5, self._limits[2]))
        self._next_subject = intake.next_subject(target.pipeline.stream, target.consumer)
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._tasks: list[asyncio.Task] = []
        self._ack_policy = ACK_ALL
        self._tracker = AckTracker(0, 0)
        self._ack_wait_s = 30.0
        self._keepalive_at = 0.0  # when held messages last got an in-progress ack
        self._dirty_since = 0.0
        # The consumer's pin (priority group, pinned_client): the server admits one puller
        # at a time, so two owners can never pull together. None until the first pinned
        # delivery; a 423 takes it away.
        self._pin: str | None = None
        self._pinned_from = 0  # consumer sequence of the first delivery under the pin
        self._first_delivery: bytes | None = None  # how this consumer's first deliveries' ack subjects start
        self.stats = PartitionStats()
        self._log_extra = {"pipeline": target.pipeline.name, "partition": target.index}  # on every log line

    def _new_batch(self) -> Batch:
        return Batch(*self._limits)

    async def start(self) -> None:
        info = await self._consumer_info()
        policy = getattr(info.config.ack_policy, "value", info.config.ack_policy)
        self._ack_policy = ACK_EXPLICIT if policy == ACK_EXPLICIT else ACK_ALL
        self._ack_wait_s = float(info.config.ack_wait or 30.0)
        self._tracker = AckTracker(info.delivered.consumer_seq or 0, info.num_ack_pending or 0)
        self._ack_floor = (info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
        if self.target.pipeline.delivery == "exactly_once":
            if self._ack_policy == ACK_ALL:
                self._commits = await takeover.open_commits(self._nc, self.target.pipeline.name, self.target.index)
                if self._tracker.dirty:
                    # A previous owner died holding deliveries: read them back from the stream
                    # (_recover) instead of waiting ack_wait for their redelivery.
                    d = info.delivered
                    self._takeover = (info.ack_floor.stream_seq or 0, d.stream_seq or 0, d.consumer_seq or 0)
            else:
                log.warning(
                    "partition %s: exactly_once needs a consumer with per-batch acks; this one acks each message "
                    "(an earlier version made it), so delivery is at least once", self.name, extra=self._log_extra,
                )
        if self._ack_policy == ACK_ALL and self._tracker.dirty and self._takeover is None:
            self._dirty_since = time.monotonic()
            log.info(
                "partition %s: the consumer has %d messages delivered to a previous owner and not acked; "
                "holding acks until they are redelivered and stored", self.name, info.num_ack_pending,
                extra=self._log_extra,
            )
        # The supervisor hands a partition over only once its previous owner released it
        # or died: a pin still set is a dead puller's, and would park our pulls until the
        # priority timeout ran out.
        await self._unpin()
        self._sub = await self._nc.subscribe(self._inbox, cb=_unused, pending_msgs_limit=-1, pending_bytes_limit=-1)
        wire.route(self._nc, self._sub, self._on_msgs)
        self._tasks = [
            asyncio.create_task(self._pull_loop(), name=f"pull {self.name}"),
            asyncio.create_task(self._commit_loop(), name=f"commit {self.name}"),
        ]
        self._keepalive = asyncio.create_task(self._keep_in_hand_alive(), name=f"keepalive {self.name}")

    async def _consumer_info(self) -> Any:
        js = self._nc.jetstream(timeout=10.0)
        return await js.consumer_info(self.target.pipeline.stream, self.target.consumer)

    @property
    def name(self) -> str:
        return f"{self.target.pipeline.name}/{self.target.index}"

    @property
    def dirty(self) -> bool:
        """Holding stored messages unacked until the consumer's counts prove nothing is missing."""
        return self._ack_policy == ACK_ALL and self._tracker.dirty

    async def stop(self) -> None:
        """Stop pulling, flush and ack what was received, then return."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.gather(*self._tasks)
            if self._pin is not None:
                # Drained and acked: hand the pin back so that the next owner's first pull gets it.
                self._pin_ended("released")
                await self._nc.flush()
                await self._unpin()
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()
            if self._sub is not None:
                wire.unroute(self._nc, self._sub)
                await self._sub.unsubscribe()

    def stalled_for(self, now: float) -> float:
        """Seconds since the partition last made progress (a pull-loop turn, a finished
        batch or a retry attempt); a partition that stops turning would otherwise stall
        silently while the worker's heartbeat still beats."""
        return now - self._last_progress

    def stacks(self) -> str:
        """The partition tasks' current stacks, for the log of a stall."""
        import io

        out = io.StringIO()
        for t in self._tasks:
            t.print_stack(file=out)
        return out.getvalue()

    def failed(self) -> BaseException | None:
        """The exception that ended one of the partition's tasks, if any."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                return t.exception()
        return None

    # -- intake -----------------------------------------------------------------

    def _on_msgs(self, msgs: list[tuple]) -> None:
        """Deliveries and status replies read from one socket chunk, in order."""
        self._unanswered = 0
        self._received += len(msgs)
        deliveries = msgs
        prefix = self._first_delivery
        # One pass over the chunk in C: all first deliveries (no status reply, no redelivery)?
        if prefix is None or not all(map(bytes.startswith, map(_reply, msgs), repeat(prefix))):
            if not msgs[-1][REPLY] or not all(map(_reply, msgs)):
                deliveries = [m for m in msgs if m[REPLY]]
                for m in msgs:
                    if not m[REPLY]:
                        self._on_status(m)
            if not deliveries:
                return
            if prefix is None:
                prefix = self._first_delivery = message.first_delivery_prefix(deliveries[0][REPLY])
            if not all(map(bytes.startswith, map(_reply, deliveries), repeat(prefix))):
                self._batch.redelivered = True
        if self._pin is None:
            self._pinned(deliveries)
        self._delivered += len(deliveries)
        if not self._batch:
            # Its messages left the server after this request was sent: JetStream's ack_wait for
            # them runs from then, however long they spent in buffers before reaching us.
            self._batch.requested_at = self._requested_at
        self._batch.extend(deliveries)
        # Messages of a request we already counted as over (a 409 on server shutdown
        # arrives ahead of deliveries still in the socket) are kept, but must not drive
        # the count below zero: a negative count would never send another request.
        self._outstanding = max(0, self._outstanding - len(deliveries))
        if self._outstanding == 0 or self._batch.full:
            self._wake.set()

    def _on_status(self, msg: tuple) -> None:
        """A status reply: the pull request is over (404/408/409) or a heartbeat."""
        headers = message.parse_headers(msg[HEADERS])
        status = headers.get("Status")
        if status == intake.HEARTBEAT:
            return
        description = headers.get("Description")
        if status == intake.PIN_LOST:
            # Another puller holds the pin (an instance that took the partition while views
            # differed), or a new consumer leader forgot it: pull no more with this id. The
            # next request goes without one and waits until the pin is free.
            self.stats.pins_lost += 1
            if self._pin is not None:
                self._pin_ended(f"lost ({description})")
            self._outstanding = 0
            self._wake.set()
            return
        if (
            status == intake.CONFLICT
            and description != "Batch Completed"
            and "Leadership Change" not in (description or "")
            and not (self.dirty and "MaxAckPending" in (description or ""))
        ):
            # "Batch Completed" is the normal end of a request capped by max_bytes, a
            # leadership change that of a failover; while acks are held, reaching
            # max_ack_pending is expected.
            log.warning("pull on %s ended: %s", self.name, description)
        self._outstanding = 0
        self._wake.set()

    def _pinned(self, deliveries: list[tuple]) -> None:
        """The first pinned delivery carries the pin's id (Nats-Pin-Id)."""
        for m in deliveries:
            raw = m[HEADERS]
            if raw is not None and intake.PIN_HEADER in raw:
                self._pin = message.parse_headers(raw).get("Nats-Pin-Id") or None
                self._pinned_from = message.parse_ack_subject(m[REPLY]).consumer_seq
                # A record per pin (tests/integration/test_instances.py reads them): two owners
                # at once would show as overlapping consumer-sequence ranges.
                log.info("partition %s pinned (pin %s) from consumer sequence %d", self.name, self._pin,
                         self._pinned_from, extra={**self._log_extra, "pin": self._pin,
                                                   "first_consumer_seq": self._pinned_from})
                return

    def _pin_ended(self, why: str) -> None:
        log.info("partition %s unpinned (pin %s, %s) after consumer sequence %d", self.name, self._pin, why,
                 self._tracker.last_seen, extra={**self._log_extra, "pin": self._pin,
                                                 "first_consumer_seq": self._pinned_from,
                                                 "last_consumer_seq": self._tracker.last_seen})
        self._pin = None

    async def _unpin(self) -> None:
        """Release the consumer's pin (whoever holds it); an answer that it had none is fine."""
        subject = intake.unpin_subject(self.target.pipeline.stream, self.target.consumer)
        try:
            await self._nc.request(subject, orjson.dumps({"group": PRIORITY_GROUP}), timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - the pin then times out on the server by itself
            log.warning("partition %s: unpin failed: %s", self.name, exc or type(exc).__name__, extra=self._log_extra)

    def _pipeline_idle(self) -> bool:
        """No request open, nothing received unstored: the moment to compare with the consumer."""
        return self._outstanding == 0 and not self._batch and self._sealed.empty() and not self._committing

    async def _pull_loop(self) -> None:
        if self._commits is not None:
            await self._take_over()
        while True:
            now = time.monotonic()
            if not self._sealed.full():
                # Blocked on a full queue is the commit's progress to report, not ours.
                self._last_progress = now
            if self._outstanding > 0 and now > self._request_deadline and self._received != self._received_at_deadline:
                # Still delivering (a big batch to a busy process takes longer than the
                # request's expiry): the request is alive, give it more time rather than
                # open a second one beside it.
                self._received_at_deadline = self._received
                self._request_deadline = now + self._expires_s + 2.0
            if self._outstanding > 0 and now > self._request_deadline:
                # The reply to this request was lost (e.g. a reconnect): ask again.
                self._outstanding = 0
                # The server answers every pull request, at the latest with a 408 when
                # it expires. Several unanswered in a row on a connection that says it
                # is up means the client itself stopped writing or reading (seen with
                # nats-py after reconnects): fail, so the supervisor restarts the worker
                # and JetStream redelivers, instead of stalling silently.
                self._unanswered = self._unanswered + 1 if self._nc.is_connected else 0
                if self._unanswered >= MAX_UNANSWERED_PULLS:
                    raise ConnectionError(
                        f"partition {self.name}: {self._unanswered} pull requests unanswered on a connected NATS client"
                    )
            dirty = self.dirty
            if dirty:
                await self._keep_held_alive(now)
            batch = self._batch
            deadline = batch.deadline()
            # While acks are held, a batch is sealed only once its request is over, so
            # that when its commit ends nothing is in flight (see _reconcile).
            if batch and (
                self._outstanding == 0
                if dirty
                else (batch.full or now >= deadline or (self._stopping and self._outstanding == 0))
            ):
                self._batch = self._new_batch()
                self._in_hand.append(batch)
                await self._sealed.put(batch)  # waits while one batch is committing and one queued
                continue
            if self._stopping:
                if self._outstanding == 0:
                    break
            elif dirty and self._outstanding == 0:
                # One request at a time, each after the last one's batch is stored.
                if self._pipeline_idle():
                    await self._reconcile()
                    if self.dirty:
                        got = self._delivered
                        await self._request(batch.room(), batch.max_bytes - batch.nbytes)
                        await self._wait_for_request()
                        if self._delivered == got:
                            # Nothing came (max_ack_pending reached, or the lost messages'
                            # ack_wait has not run out yet): ask again a little later.
                            await self._wait(min(1.0, self._ack_wait_s / 10))
                    continue
            elif self._outstanding == 0 and batch.room() > 0:
                await self._request(batch.room(), batch.max_bytes - batch.nbytes)
            waits = [self._request_deadline - now] if self._outstanding > 0 else []
            if deadline is not None:
                waits.append(deadline - now)
            await self._wait(max(0.0, min(waits, default=1.0)))
        await self._sealed.put(_STOP)

    async def _wait(self, timeout: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_request(self) -> None:
        while self._outstanding > 0 and not self._stopping and time.monotonic() < self._request_deadline:
            await self._wait(max(0.0, self._request_deadline - time.monotonic()))

    async def _request(self, n: int, max_bytes: int) -> None:
        self._outstanding = n
        self._requested_at = time.monotonic()
        self._request_deadline = time.monotonic() + self._expires_s + 2.0
        body = intake.pull_request(n, self._expires_s, max_bytes if max_bytes > 0 else None, PRIORITY_GROUP, self._pin)
        await self._nc.publish(self._next_subject, body, reply=self._inbox)

    # -- acks -------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Dirty and idle: ask the consumer whether every unacked message is one we hold;
        if so, one AckAll settles them all and acks flow per batch again."""
        info = await self._consumer_info()
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        reply = self._tracker.reconcile(info.num_ack_pending or 0, info.delivered.consumer_seq or 0, floor or 0)
        if not self._tracker.dirty:
            log.info(
                "partition %s: every unacked message is stored; acking per batch again", self.name,
                extra=self._log_extra,
            )
            if reply is not None:
                if self._commits is not None:
                    # Everything the consumer delivered is stored now: the held messages'
                    # highest sequence is a watermark.
                    highest = message.parse_ack_subject(reply).stream_seq
                    await self._retrying("commit state", self._commits.stored, highest)
                await self._settle([reply], intake.ACK)
        elif time.monotonic() - self._dirty_since > 2 * self._ack_wait_s + 30:
            self._dirty_since = time.monotonic()
            log.warning(
                "partition %s: still holding %d stored messages unacked; the consumer reports %d unacked "
                "(last delivery %d, ours %d)", self.name, len(self._tracker.held), info.num_ack_pending,
                info.delivered.consumer_seq, self._tracker.last_seen,
                extra=self._log_extra,
            )

    async def _settle(self, ack_subjects: list[bytes], verb: bytes) -> None:
        """Send `verb` (+ACK, +WPI) to each ack subject, as one write."""
        await wire.send(self._nc, wire.pubs(ack_subjects, verb))

    async def _keep_held_alive(self, now: float) -> None:
        """Stored-but-held messages get in-progress acks so JetStream does not redeliver them."""
        if self._tracker.held and now - self._keepalive_at > self._ack_wait_s / 3:
            self._keepalive_at = now
            await self._settle(self._tracker.held_subjects(), intake.IN_PROGRESS)

    async def _keep_in_hand_alive(self) -> None:
        """In-progress acks for batches in our hands longer than a third of ack_wait (a slow
        insert, a queue behind one), so that a short ack_wait (fast redelivery after a crash)
        never redelivers what a live owner is still storing.  Nothing is sent while batches
        move on in time, which is the normal case."""
        while True:
            third = self._ack_wait_s / 3
            await asyncio.sleep(third / 2)
            now = time.monotonic()
            old = [b for b in (*self._in_hand, self._batch) if b and now - max(b.requested_at, b.kept_alive_at) > third]
            if old and self._nc.is_connected:
                await self._settle([m[REPLY] for b in old for m in b.messages], intake.IN_PROGRESS)
                for b in old:
                    b.kept_alive_at = now

    async def _ack(self, msgs: list[tuple], redelivered: bool) -> None:
        with self._telemetry.ack(len(msgs)):
            if self._ack_policy == ACK_EXPLICIT:
                await self._settle([m[REPLY] for m in msgs], intake.ACK)
                return
            was_clean = self._tracker.clean
            reply = self._tracker.stored(msgs, redelivered)
            if reply is not None:
                await self._settle([reply], intake.ACK)
            elif was_clean:
                self._dirty_since = time.monotonic()
                log.warning(
                    "partition %s: deliveries missing before consumer sequence %d (a reconnect or a "
                    "previous owner); holding acks until they are redelivered and stored",
                    self.name, message.parse_ack_subject(msgs[-1][REPLY]).consumer_seq,
                    extra=self._log_extra,
                )

    # -- commit -----------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            item = await self._next_sealed()
            if item is _STOP:
                if self.dirty:
                    await self._reconcile()
                    if self.dirty:
                        log.warning(
                            "partition %s released with %d stored messages unacked: JetStream redelivers them "
                            "(duplicates in the table, nothing lost)", self.name, len(self._tracker.held),
                            extra=self._log_extra,
                        )
                if self._commits is not None:
                    # Released cleanly: the next owner finds no batch in flight to settle.
                    await self._retrying("commit state", self._commits.flush)
                return
            self._committing = True
            try:
                if self._telemetry.enabled:
                    await self._commit_traced(item)
                else:
                    await self._commit(item)
            finally:
                self._committing = False
                self._in_hand.remove(item)
            self._last_progress = time.monotonic()
            self._wake.set()

    async def _next_sealed(self) -> Any:
        """The next sealed batch (or _STOP).  With exactly_once, the last batch's `stored` is
        written with the next batch's range; when none comes within STORED_FLUSH_S it is
        written alone, so that an idle partition's state names nothing in flight."""
        c = self._commits
        if c is None or not c.unwritten or not self._sealed.empty():
            return await self._sealed.get()
        try:
            return await asyncio.wait_for(self._sealed.get(), timeout=commits.STORED_FLUSH_S)
        except asyncio.TimeoutError:
            await self._retrying("commit state", c.flush)
            return await self._sealed.get()

    async def _commit_traced(self, batch: Batch) -> None:
        with self._telemetry.batch(self.target, batch.messages):
            await self._commit(batch)

    async def _commit(self, batch: Batch) -> None:
        msgs = batch.messages
        todo: Any = msgs
        r: Range | None = None
        redelivered: bool | None = None
        skipped = 0
        c = self._commits
        if c is not None:
            u = commits.unstored(msgs, c.stored_through, batch.redelivered)
            todo, skipped, redelivered = u.msgs, u.skipped, not u.ordered
            if todo and u.ordered and self._tracker.continues(msgs):
                # The batch is exactly the partition's messages first..last and all below are
                # stored: record it (with the previous batch's `stored`), so that a next owner
                # can settle it if we die before the next write.
                r = Range(u.first, u.last, len(todo), u.first_ts_ns, time.time())
                await self._retrying("commit state", c.begin, r)
        ident = self._identity(r) if r is not None else None
        if todo:
            prepared = await self._store(todo, ident, r, keep_alive=msgs, first_deliveries=not batch.redelivered)
        else:
            prepared = Prepared(columns=[], rows=0, row_msgs=[])
        hook = self._exit_hook if r is not None else None
        if hook is not None:
            hook.reached("insert", r, log)
        if r is not None:
            c.inserted(r)  # written with the next batch's range (or by _next_sealed's flush)
        await self._ack(msgs, prepared.redelivered if redelivered is None else redelivered)
        if hook is not None and hook.point == "ack":
            await self._nc.flush()
            hook.reached("ack", r, log)
        last = message.parse_ack_subject(msgs[-1][REPLY])
        s = self.stats
        s.consumed += len(msgs)
        s.skipped_duplicates += skipped
        s.inserted += prepared.rows
        s.dead_lettered += len(prepared.dead)
        s.batches += 1
        s.last_batch_at = time.time()
        s.pending = last.pending
        self._telemetry.batch_committed(self.target, msgs, prepared)

    async def _take_over(self) -> None:
        """Before the first pull: settle what a previous owner left (workers/takeover.py); once the
        messages it held unacked are stored from the stream, acks flow per batch at once."""
        landed = None if self._query_log is None else partial(self._run_in_thread, self._query_log.landed)
        t = takeover.Takeover(
            self.name, self.target, self._nc, self._commits, self.stats, self._retrying, self._store, self._identity,
            landed, self._limits[0], self._log_extra,
        )
        last_cseq = await t.run(self._ack_floor, self._takeover)
        if last_cseq is not None:
            self._tracker = AckTracker(last_cseq, 0)

    def _identity(self, r: Range) -> indoubt.InsertIdentity:
        t = self.target
        return indoubt.identity(t.pipeline.name, t.index, r.first, r.last, r.first_ts_ns, self._tokens)

    async def _store(
        self, msgs: list[tuple], ident: indoubt.InsertIdentity | None, r: Range | None, keep_alive: list[tuple] | None,
        first_deliveries: bool = False,
    ) -> Prepared:
        """Map `msgs`, dead-letter what cannot be mapped, insert the rest (under `ident`) and
        dead-letter the rows ClickHouse refuses; returns once all of it is confirmed.
        `first_deliveries`: none of `msgs` is a redelivery (known from intake)."""
        pipeline = self.target.pipeline
        prep = partial(self._prepare, first_deliveries=first_deliveries)
        prepared: Prepared = await self._run_in_thread(self._schema.prepare, prep, msgs, self.target)
        if prepared.dead:
            for dl in prepared.dead:
                log.warning(
                    "dead-lettered %s seq %d: %s: %s", dl.subject, dl.stream_seq, dl.reason, dl.error,
                    extra=self._log_extra,
                )
            await self._retrying(
                "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, prepared.dead
            )
        if prepared.rows:
            # A table changed under the batch has its rows mapped again (remapped: what the new mapping refused).
            attempts = count()
            refused, remapped = await self._retrying(
                "insert", self._insert_once, prep, ident, r, attempts, msgs, prepared, keep_alive=keep_alive
            )
            if refused or remapped:
                letters = remapped + [
                    dead_letter(msgs[i], self.target, "insert_rejected", error) for i, error in refused
                ]
                for dl in letters:
                    log.warning(
                        "%s %s seq %d, dead-lettered: %s", "ClickHouse refused" if dl.reason == "insert_rejected"
                        else f"the changed table refuses ({dl.reason})", dl.subject, dl.stream_seq, dl.error,
                        extra=self._log_extra,
                    )
                await self._retrying(
                    "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, letters,
                    keep_alive=keep_alive,
                )
                prepared.rows -= len(letters)
                prepared.dead.extend(letters)
        return prepared

    async def _insert_once(
        self, prep: Callable[..., Prepared], ident: indoubt.InsertIdentity | None, r: Range | None, attempts: Any,
        msgs: list[tuple], prepared: Prepared,
    ) -> tuple[list[tuple[int, str]], list[DeadLetter]]:
        """One attempt at the insert (through the table's schema, which maps the rows again if the
        table changed under them); a retry first asks ClickHouse whether the failed attempt landed."""
        if next(attempts) and ident is not None and self._query_log is not None:
            if await self._run_in_thread(self._query_log.landed, ident.query_id, r.began_at, 10.0):
                log.info(
                    "partition %s: the failed insert of %d..%d had landed; not sending it again",
                    self.name, r.first, r.last,
                    extra=self._log_extra,
                )
                return [], []
        return await self._run_in_thread(
            indoubt.run_as, ident, self._schema.store, prep, self._insert, msgs, prepared, self.target
        )

    def _prepare(
        self, msgs: list[tuple], mapper: ColumnMapper, target: PartitionTarget, first_deliveries: bool = False
    ) -> Prepared:
        """prepare() in the insert thread, under the telemetry's `map` span(s).

        The table's schema (workers/table_schema.py) calls it with its current mapper,
        and again with a new one when the table changed under the batch.
        """
        if not self._telemetry.per_message_spans:
            with self._telemetry.map(target, msgs) as mapped:
                prepared = prepare(msgs, mapper, target, first_deliveries)
                mapped(prepared)
                return prepared
        # Each message parsed and mapped on its own, so that each span times one message;
        # this costs, hence opt-in (observability.traces.per_message_spans).
        parts = []
        for msg in msgs:
            with self._telemetry.map_message(msg) as mapped:
                parts.append(prepare([msg], mapper, target, first_deliveries))
                mapped(parts[-1])
        return join_prepared(parts)

    async def _retrying(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, keep_alive: list[tuple] | None = None
    ) -> Any:
        """Await fn(*args) until it succeeds, backing off (capped, jittered) between tries.

        While it fails the partition stops pulling (its queue is full), and the
        messages are kept from redelivery with in-progress acks.
        """
        delay = 0.2
        failing_since = 0.0
        while True:
            self._last_progress = time.monotonic()
            try:
                return await fn(*args)
            except Exception as exc:
                if isinstance(exc, commits.StaleCommitState):
                    raise  # another owner, or a server that lost our write: stop (the worker restarts)
                failing_since = failing_since or time.monotonic()
                self.stats.insert_retries += 1
                self._telemetry.retry(what, exc)
                fault = faults.classify(exc)
                if fault is faults.Fault.PIPELINE:
                    # Every batch would fail alike: pause, slowly, and say why once per try.
                    delay = max(delay, 5.0)
                    log.error(
                        "pipeline %s paused: %s; retrying in %.0fs (nothing is dead-lettered meanwhile)",
                        self.target.pipeline.name, faults.describe(exc), delay,
                        extra={**self._log_extra, "fault": fault.value},
                    )
                else:
                    # The commit state and the stream live in JetStream, whose leader elections (a
                    # NATS node lost) fail requests for seconds as a normal matter: an error once longer.
                    election = what in _ON_JETSTREAM and time.monotonic() - failing_since < JETSTREAM_ELECTION_S
                    log.log(
                        logging.WARNING if election else logging.ERROR,
                        "%s for %s failed, retrying in %.1fs: %s", what, self.name, delay, faults.describe(exc),
                        extra={**self._log_extra, "fault": fault.value},
                    )
                if keep_alive:
                    await self._settle([m[REPLY] for m in keep_alive], intake.IN_PROGRESS)
                if self._tracker.held:
                    await self._keep_held_alive(time.monotonic())
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)


async def _unused(msg: Any) -> None:
    """The inbox's messages are routed in bulk (workers/wire.py); nats-py never calls this."""
