"""A partition's storing side: commit state, map, dead letters, insert, ack.

The storer takes the sealed batches the fetcher (workers/partition/fetcher.py) puts into the
hand-off's queue of one (workers/partition/handoff.py), one at a time.  For each it drops what
the commit state says is stored already, records the batch's range (exactly_once), has it
mapped, dead-lettered where it cannot be, and inserted (workers/partition/writer.py), and
only then acks it: one AckAll when workers/delivery/acks.py says that is safe (explicit
per-message acks for consumers created with that policy by older versions), else the batch
is held until the consumer's counts agree (``reconcile``).  It keeps what is in its hands
from redelivery with in-progress acks, and a partition taken from a dead owner first settles
what that owner left (workers/delivery/takeover.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Awaitable, Callable, Sequence

from workers import message
from workers.clickhouse import indoubt
from workers.delivery import commits, takeover
from workers.delivery.acks import ACK_ALL, ACK_EXPLICIT, AckTracker
from workers.delivery.commits import CommitLog, Range
from workers.nats import intake, wire
from workers.observability.telemetry import Telemetry
from workers.partition import consumer
from workers.partition.batch import Batch
from workers.partition.handoff import STOP, Handoff
from workers.partition.prepare import PartitionTarget, Prepared
from workers.partition.retry import Retrying, ServerProbes
from workers.partition.stats import PartitionStats
from workers.partition.writer import TableWriter, WriteTable

log = logging.getLogger(__name__)

REPLY = message.REPLY


class Storer:
    """Stores one partition's sealed batches and acks them; the fetcher's ``HeldAcks``.

    Each table's `insert(names, columns)` runs in the insert thread (`run_in_thread`); `nc` publishes dead
    letters, acks and in-progress acks, reads the consumer's info and, with exactly_once, the
    commit state.  ``start`` reads the consumer; ``run`` stores until the fetcher puts ``STOP``.
    """

    def __init__(
        self,
        nc: Any,
        target: PartitionTarget,
        tables: Sequence[WriteTable],
        run_in_thread: Callable[..., Awaitable[Any]],
        telemetry: Telemetry,
        handoff: Handoff,
        stats: PartitionStats,
        log_extra: dict,
        clickhouse: indoubt.QueryLog | None = None,
        tokens: bool = False,
        exit_hook: commits.ExitHook | None = None,
        probes: ServerProbes | None = None,
    ) -> None:
        self._nc = nc
        self.target = target
        self.name = f"{target.pipeline.name}/{target.index}"
        self._telemetry = telemetry
        # With observability on, thread calls carry the batch span (see workers/observability/telemetry.py).
        self._run_in_thread = telemetry.carry_context(run_in_thread)
        self._handoff = handoff
        self.stats = stats
        self._log_extra = log_extra  # on every log line
        # Exactly once (workers/delivery/commits.py): the commit state, opened at start; `clickhouse`
        # asks ClickHouse about an in-doubt insert (workers/clickhouse/indoubt.py, in the insert thread).
        self._commits: CommitLog | None = None
        # At a takeover: the consumer's ack floor and last delivery (stream and consumer sequence).
        self._takeover: tuple[int, int, int] | None = None
        self._ack_floor = 0  # the consumer's ack floor (stream sequence) when this owner started
        self._taken_over = asyncio.Event()  # take_over is done: the commit loop may write the state
        self._query_log = clickhouse
        self._tokens = tokens
        self._exit_hook = exit_hook
        self._ack_policy = ACK_ALL
        self._tracker = AckTracker(0, 0)
        self.ack_wait_s = 30.0
        self._keepalive_at = 0.0  # when held messages last got an in-progress ack
        self._dirty_since = 0.0
        self._retrying = Retrying(
            self.name, target.pipeline.name, stats, telemetry, handoff, self._while_failing, log_extra, probes
        )
        self._writer = TableWriter(
            nc, target, tables, self._run_in_thread, telemetry, self._retrying, log_extra, clickhouse, exit_hook,
            stats,
        )
        self._store = self._writer.store  # map, dead-letter, insert: one call per batch

    async def start(self) -> None:
        """Read the consumer's ack policy, ack_wait and unacked deliveries; open the commit state."""
        info = await self._retrying("consumer info", self._consumer_or_again)
        policy = getattr(info.config.ack_policy, "value", info.config.ack_policy)
        self._ack_policy = ACK_EXPLICIT if policy == ACK_EXPLICIT else ACK_ALL
        self.ack_wait_s = float(info.config.ack_wait or 30.0)
        self._tracker = AckTracker(info.delivered.consumer_seq or 0, info.num_ack_pending or 0)
        self._ack_floor = (info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
        if self.target.pipeline.delivery == "exactly_once":
            if self._ack_policy == ACK_ALL:
                p = self.target.pipeline
                self._commits = c = await self._retrying(
                    "commit state", takeover.open_state, self._nc, p.name, p.stream, self.target.index, self._log_extra
                )
                c.replica = getattr(self._query_log, "replica", None)  # recorded with each range (issue 25)
                self.stats.expired_unread += c.opened.expired
                self.stats.state_resets += c.opened.afresh is not None
                if not c.found and self._ack_floor and self._tracker.dirty:
                    # No state although the consumer acked messages: the bucket was deleted (and made
                    # again by provision). What the consumer holds unacked is read back and stored,
                    # not knowing whether the last owner had stored it.
                    d = info.delivered
                    log.warning(
                        "partition %s: no commit state, although consumer %s acked up to stream sequence %d (its "
                        "bucket was deleted?): the %d messages it delivered and has not acked (%d..%d) are stored "
                        "again, twice where the previous owner had stored them", self.name, self.target.consumer,
                        self._ack_floor, info.num_ack_pending, self._ack_floor + 1, d.stream_seq or 0,
                        extra={**self._log_extra, "first_seq": self._ack_floor + 1, "last_seq": d.stream_seq or 0},
                    )
                if self._tracker.dirty:
                    # A previous owner died holding deliveries: read them back from the stream
                    # (take_over) instead of waiting ack_wait for their redelivery.
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

    async def _consumer_info(self) -> Any:
        return await consumer.info(self._nc, self.target)

    async def _consumer_or_again(self) -> Any:
        return await consumer.info_or_again(self._nc, self.target, self.stats, self._log_extra)

    @property
    def dirty(self) -> bool:
        """Holding stored messages unacked until the consumer's counts prove nothing is missing."""
        return self._ack_policy == ACK_ALL and self._tracker.dirty

    @property
    def last_seen(self) -> int:
        return self._tracker.last_seen

    async def take_over(self) -> None:
        """Before the first pull (exactly_once only): settle what a previous owner left
        (workers/delivery/takeover.py); once the messages it held unacked are stored from the
        stream, acks flow per batch at once."""
        try:
            if self._commits is None:
                return
            landed = None if self._query_log is None else partial(self._run_in_thread, self._query_log.landed)
            t = takeover.Takeover(
                self.name, self.target, self._nc, self._commits, self.stats, self._retrying, self._store,
                self._identity, landed, self.target.pipeline.batch.max_rows, self._log_extra,
            )
            last_cseq = await t.run(self._ack_floor, self._takeover)
            if last_cseq is not None:
                self._tracker = AckTracker(last_cseq, 0)
        finally:
            # Only now may the commit loop write the state (its flush of an idle partition would
            # race the takeover's writes: two compare-and-sets on one revision, one of them stale).
            self._taken_over.set()

    # -- acks -------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Dirty and idle: ask the consumer whether every unacked message is one we hold;
        if so, one AckAll settles them all and acks flow per batch again."""
        info = await self._retrying("consumer info", self._consumer_info)
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
        elif time.monotonic() - self._dirty_since > 2 * self.ack_wait_s + 30:
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

    async def keep_held_alive(self, now: float) -> None:
        """Stored-but-held messages get in-progress acks so JetStream does not redeliver them."""
        if self._tracker.held and now - self._keepalive_at > self.ack_wait_s / 3:
            self._keepalive_at = now
            await self._settle(self._tracker.held_subjects(), intake.IN_PROGRESS)

    async def _while_failing(self, keep_alive: list[tuple] | None) -> None:
        """Between retries: in-progress acks for the messages of the failing step and for those held."""
        if keep_alive:
            await self._settle([m[REPLY] for m in keep_alive], intake.IN_PROGRESS)
        if self._tracker.held:
            await self.keep_held_alive(time.monotonic())

    async def keep_in_hand_alive(self) -> None:
        """In-progress acks for batches in our hands longer than a third of ack_wait (a slow
        insert, a queue behind one), so that a short ack_wait (fast redelivery after a crash)
        never redelivers what a live owner is still storing.  Nothing is sent while batches
        move on in time, which is the normal case."""
        h = self._handoff
        while True:
            third = self.ack_wait_s / 3
            await asyncio.sleep(third / 2)
            now = time.monotonic()
            old = [b for b in (*h.in_hand, h.filling) if b and now - max(b.requested_at, b.kept_alive_at) > third]
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

    async def run(self) -> None:
        """Store each sealed batch; at ``STOP``, settle what is held if the consumer agrees, and return."""
        h = self._handoff
        await self._taken_over.wait()
        while True:
            item = await self._next_sealed()
            if item is STOP:
                if self.dirty:
                    await self.reconcile()
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
            h.committing = True
            try:
                if self._telemetry.enabled:
                    await self._commit_traced(item)
                else:
                    await self._commit(item)
            finally:
                h.committing = False
                h.in_hand.remove(item)
            h.progress_at = time.monotonic()
            h.wake.set()

    async def _next_sealed(self) -> Any:
        """The next sealed batch (or STOP).  With exactly_once, the last batch's `stored` is
        written with the next batch's range; when none comes within STORED_FLUSH_S it is
        written alone, so that an idle partition's state names nothing in flight."""
        c = self._commits
        sealed = self._handoff.sealed
        if c is None or not c.unwritten or not sealed.empty():
            return await sealed.get()
        try:
            return await asyncio.wait_for(sealed.get(), timeout=commits.STORED_FLUSH_S)
        except asyncio.TimeoutError:
            await self._retrying("commit state", c.flush)
            return await sealed.get()

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
            u = commits.unstored(msgs, c.stored_through, batch.redelivered, c.held)
            todo, skipped, redelivered = u.msgs, u.skipped, not u.ordered
            if todo:
                if u.ordered and self._tracker.continues(msgs):
                    # The batch is exactly the partition's messages first..last and all below are stored.
                    r = Range(u.first, u.last, len(todo), u.first_ts_ns, time.time())
                else:
                    # Not one run after what is stored (acks are held after missing deliveries):
                    # its exact sequences, stored above `stored` once it is in.
                    r = commits.scattered(todo, time.time())
                # Recorded (with what the previous batch stored) before the insert, so that a next
                # owner can settle it if we die before the next write.
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
        if prepared.routes:
            s.routed(prepared.routes)
        s.batches += 1
        s.last_batch_at = time.time()
        s.pending = last.pending
        self._telemetry.batch_committed(self.target, msgs, prepared)

    def _identity(self, r: Range) -> indoubt.InsertIdentity:
        t = self.target
        return indoubt.identity(t.pipeline.name, t.index, r.first, r.last, r.first_ts_ns, self._tokens, r.seqs)
