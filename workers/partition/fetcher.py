"""A partition's fetching side: pull requests, flow control, the consumer's pin, sealing batches.

The fetcher keeps one pull request open on the partition's durable consumer, puts the
deliveries into the batch it is filling, and seals the batch (by rows, bytes or age) into
the hand-off's queue of one (workers/partition/handoff.py), where the storer
(workers/partition/storer.py) takes it.  It never waits on an insert except through that
queue: while it is full, no request is sent.

Deliveries arrive in bulk, one call per socket chunk, as raw ``(subject, reply, data,
headers)`` tuples (workers/nats/wire.py routes the partition's inbox to ``_on_msgs``);
status replies (no reply subject) end a request, or take the pin away (423).
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import repeat
from operator import itemgetter
from typing import Any

from workers import message
from workers.nats import intake, wire
from workers.partition import consumer
from workers.partition.batch import Batch
from workers.partition.handoff import STOP, Handoff, HeldAcks
from workers.partition.prepare import PartitionTarget
from workers.partition.stats import PartitionStats
from workers.topology import PRIORITY_GROUP

log = logging.getLogger(__name__)

MAX_UNANSWERED_PULLS = 3
# After this many 503s in a row, and at most this often, ask whether the consumer still exists.
UNAVAILABLE_CHECK_AFTER = 3
UNAVAILABLE_CHECK_S = 5.0
REPLY, HEADERS = message.REPLY, message.HEADERS
_reply = itemgetter(REPLY)


class Fetcher:
    """Pulls one partition's deliveries and seals them into batches for the storer.

    `nc` needs ``new_inbox()``, ``publish(subject, body, reply=)``, ``is_connected`` and, from
    ``start`` on, ``request``, ``subscribe`` and ``flush``.  `acks` is the storer's side of the
    hand-off (``HeldAcks``): while it holds acks, batches are sealed only once their request is
    over and the storer reconciles whenever the pipeline is idle.
    """

    def __init__(
        self, nc: Any, target: PartitionTarget, handoff: Handoff, acks: HeldAcks, stats: PartitionStats,
        log_extra: dict,
    ) -> None:
        self._nc = nc
        self.target = target
        self.name = f"{target.pipeline.name}/{target.index}"
        self._handoff = handoff
        self._acks = acks
        self.stats = stats
        self._log_extra = log_extra  # on every log line
        limits = target.pipeline.batch
        self._limits = (limits.max_rows, limits.max_bytes, limits.max_wait_ms / 1000.0)
        self._batch = handoff.filling = self._new_batch()
        self._sealed = handoff.sealed
        self._in_hand = handoff.in_hand
        self._wake = handoff.wake
        self._outstanding = 0  # messages the open pull request may still deliver
        self._request_deadline = 0.0
        self._requested_at = 0.0  # when the last pull request was sent
        self._unanswered = 0  # pull requests in a row that got no reply while connected
        self._received = 0  # replies seen on the inbox (a cheap activity counter)
        self._delivered = 0  # messages among them (not status replies)
        self._received_at_deadline = 0
        self._stopping = False
        # Expiring pull requests every few seconds bounds how long a release waits.
        self._expires_s = min(5.0, max(0.5, self._limits[2]))
        self._next_subject = intake.next_subject(target.pipeline.stream, target.consumer)
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        # The consumer's pin (priority group, pinned_client): the server admits one puller
        # at a time, so two owners can never pull together. None until the first pinned
        # delivery; a 423 takes it away.
        self._pin: str | None = None
        self._pinned_from = 0  # consumer sequence of the first delivery under the pin
        self._first_delivery: bytes | None = None  # how this consumer's first deliveries' ack subjects start
        # Why the consumer is gone (deleted, or its stream), once the fetcher found out; the
        # runner then creates it again and goes on (workers/partition/runner.py).
        self.gone: str | None = None
        self._unavailable = 0  # 503s (no responders: no consumer leader, or no consumer) since the last delivery
        self._checked_at = 0.0  # when the consumer's existence was last asked after 503s

    def _new_batch(self) -> Batch:
        return Batch(*self._limits)

    async def start(self) -> None:
        """Free the consumer's pin and route the inbox's deliveries to ``_on_msgs``."""
        # The supervisor hands a partition over only once its previous owner released it
        # or died: a pin still set is a dead puller's, and would park our pulls until the
        # priority timeout ran out.
        await self._unpin()
        self._sub = await self._nc.subscribe(self._inbox, cb=_unused, pending_msgs_limit=-1, pending_bytes_limit=-1)
        wire.route(self._nc, self._sub, self._on_msgs)

    def stop(self) -> None:
        """Pull no more; ``run`` seals what it holds once the open request is over, then returns."""
        self._stopping = True
        self._wake.set()

    def reconnected(self) -> None:
        """The connection was made again.  The open request and the deliveries in flight went with
        the old one, and the consumer would send those again only after ack_wait: end this run now,
        as for a consumer found gone, so that the runner starts both sides again and the new storer
        reads what the consumer holds unacked back from the stream (a takeover, exactly_once)."""
        if self.gone is None:
            self.gone = "a reconnect to NATS"
        self._stopping = True
        self._outstanding = self._unanswered = 0
        self._wake.set()

    async def release_pin(self) -> None:
        """After the last batch is acked: hand the pin back so that the next owner's first pull gets it."""
        if self._pin is not None:
            self._pin_ended("released")
            await self._nc.flush()
            await self._unpin()

    async def close(self) -> None:
        if self._sub is not None:
            wire.unroute(self._nc, self._sub)
            await self._sub.unsubscribe()

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
        self._unavailable = 0
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
        if status == intake.UNAVAILABLE:
            # No responders: during a leader election for a few seconds, for good when the
            # consumer is gone (`run` asks which after a few).
            self._unavailable += 1
        elif status == intake.CONFLICT and "Consumer Deleted" in (description or ""):
            self._consumer_gone("its consumer was deleted (409 Consumer Deleted)")
            return
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
            and not (self._acks.dirty and "MaxAckPending" in (description or ""))
        ):
            # "Batch Completed" is the normal end of a request capped by max_bytes, a
            # leadership change that of a failover; while acks are held, reaching
            # max_ack_pending is expected.
            log.warning("pull on %s ended: %s", self.name, description)
        self._outstanding = 0
        self._wake.set()

    def _consumer_gone(self, why: str) -> None:
        """Pull no more from this consumer: seal what is held, so that the storer stores it, and end."""
        if self.gone is None:
            self.gone = why
            log.warning("partition %s: %s; storing what it delivered, then creating it again", self.name, why,
                        extra=self._log_extra)
        self._stopping = True
        self._outstanding = 0
        self._wake.set()

    async def _check_consumer(self, now: float) -> None:
        """After repeated 503s: is the consumer (or its stream) gone, or is a leader being elected?"""
        self._checked_at = now
        why = await consumer.gone(self._nc, self.target)
        if why is not None:
            self._consumer_gone(why)

    # -- the pin ----------------------------------------------------------------

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
        last_seen = self._acks.last_seen
        log.info("partition %s unpinned (pin %s, %s) after consumer sequence %d", self.name, self._pin, why,
                 last_seen, extra={**self._log_extra, "pin": self._pin,
                                   "first_consumer_seq": self._pinned_from,
                                   "last_consumer_seq": last_seen})
        self._pin = None

    async def _unpin(self) -> None:
        await consumer.unpin(self._nc, self.target, self._log_extra)

    # -- pulling ----------------------------------------------------------------

    def _pipeline_idle(self) -> bool:
        """No request open, nothing received unstored: the moment to compare with the consumer."""
        h = self._handoff
        return self._outstanding == 0 and not self._batch and self._sealed.empty() and not h.committing

    async def run(self) -> None:
        """Pull and seal batches until stopped; the last thing put into the queue is ``STOP``."""
        h = self._handoff
        while True:
            now = time.monotonic()
            if not self._sealed.full():
                # Blocked on a full queue is the commit's progress to report, not ours.
                h.progress_at = now
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
            if self._unavailable >= UNAVAILABLE_CHECK_AFTER and now - self._checked_at > UNAVAILABLE_CHECK_S:
                await self._check_consumer(now)
            dirty = self._acks.dirty
            if dirty:
                await self._acks.keep_held_alive(now)
            batch = self._batch
            deadline = batch.deadline()
            # While acks are held, a batch is sealed only once its request is over, so
            # that when its commit ends nothing is in flight (see the storer's reconcile).
            if batch and (
                self._outstanding == 0
                if dirty
                else (batch.full or now >= deadline or (self._stopping and self._outstanding == 0))
            ):
                self._batch = h.filling = self._new_batch()
                self._in_hand.append(batch)
                await self._sealed.put(batch)  # waits while one batch is committing and one queued
                continue
            if self._stopping:
                if self._outstanding == 0:
                    break
            elif dirty and self._outstanding == 0:
                # One request at a time, each after the last one's batch is stored.
                if self._pipeline_idle():
                    await self._acks.reconcile()
                    if self._acks.dirty:
                        got = self._delivered
                        await self._request(batch.room(), batch.max_bytes - batch.nbytes)
                        await self._wait_for_request()
                        if self._delivered == got:
                            # Nothing came (max_ack_pending reached, or the lost messages'
                            # ack_wait has not run out yet): ask again a little later.
                            await self._wait(min(1.0, self._acks.ack_wait_s / 10))
                    continue
            elif self._outstanding == 0 and batch.room() > 0:
                if self._unavailable:
                    # No consumer leader (an election): ask again after a short, growing pause,
                    # not in a tight loop of 503s.
                    await self._wait(min(1.0, 0.05 * 2 ** min(self._unavailable, 5)))
                    if self._stopping:
                        continue
                await self._request(batch.room(), batch.max_bytes - batch.nbytes)
            waits = [self._request_deadline - now] if self._outstanding > 0 else []
            if deadline is not None:
                waits.append(deadline - now)
            await self._wait(max(0.0, min(waits, default=1.0)))
        await self._sealed.put(STOP)

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


async def _unused(msg: Any) -> None:
    """The inbox's messages are routed in bulk (workers/nats/wire.py); nats-py never calls this."""
