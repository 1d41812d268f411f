"""Which ack a partition may send after a batch is stored, so that no message is ever acked unstored.

Consumers are created with AckPolicy.ALL: one ack per batch ("everything up to this
message's stream sequence is done") instead of one per message.  That halves the
NATS server's CPU per message (measured: ~5 us instead of ~10 us, see
docs/benchmarks.md), but an AckAll also settles every *other* message below that
sequence the consumer has delivered, so it is only safe when each of those was
delivered to us and stored.  Two things can break that:

* a delivery we never saw: one made to a previous owner of the partition that died
  holding it, or one lost in the socket when the connection dropped;
* a message whose earlier delivery we stored but whose redelivery we hold unstored
  is harmless; a message we hold unstored with a lower sequence than the one we ack
  is not (it can only be such a lost message coming back).

The tracker knows when that cannot have happened.  JetStream numbers a consumer's
deliveries consecutively (the ack subject's consumer sequence), and one partition
has one owner, so while every batch continues the numbering exactly where the last
one ended and the consumer had nothing unacked when we took it, every delivery was
ours and arrived: the batch's highest stream sequence may be acked ("clean").

Otherwise ("dirty") batches are stored but not acked.  Their messages are held
(and kept alive with in-progress acks) until, with nothing in flight, the consumer
itself says that the messages it waits acks for are exactly the ones we hold
(num_ack_pending == len(held) and its last delivery is the last we saw).  Lost
deliveries come back after ack_wait, are stored, and the check passes; then one
AckAll settles the lot and the tracker is clean again.  If it never passes (a
release while dirty) nothing is acked and JetStream redelivers: duplicates, never
a loss.
"""

from __future__ import annotations

from typing import Sequence

from workers import message
from workers.message import REPLY

ACK_ALL = "all"
ACK_EXPLICIT = "explicit"


class AckTracker:
    """Ack decisions for one partition's AckAll consumer (see module docstring)."""

    def __init__(self, delivered_consumer_seq: int, num_ack_pending: int) -> None:
        # The consumer's state when we took the partition, from its info.
        self.last_seen = delivered_consumer_seq  # consumer sequence of the last delivery we saw
        self.clean = num_ack_pending == 0
        self.held: dict[int, bytes] = {}  # stream seq -> ack subject, stored but unacked (dirty)

    @property
    def dirty(self) -> bool:
        return not self.clean

    def stored(self, msgs: Sequence[tuple], redelivered: bool = True) -> bytes | None:
        """A batch (in delivery order) is stored: the ack subject to AckAll, or None to hold it.

        `redelivered`: the batch may hold redeliveries (the partition knows from parsing
        it, workers/partition/prepare.py `prepare`); without any, the highest stream sequence is
        the last message's and no subject is decoded.
        """
        first = message.parse_ack_subject(msgs[0][REPLY])
        last = message.parse_ack_subject(msgs[-1][REPLY])
        contiguous = first.consumer_seq == self.last_seen + 1 and last.consumer_seq - first.consumer_seq + 1 == len(
            msgs
        )
        self.last_seen = last.consumer_seq
        if self.clean and contiguous:
            return self._highest(msgs) if redelivered else msgs[-1][REPLY]
        self.clean = False
        held = self.held
        for m in msgs:
            held[message.parse_ack_subject(m[REPLY]).stream_seq] = m[REPLY]
        return None

    def continues(self, msgs: Sequence[tuple]) -> bool:
        """Clean, and the batch continues the delivery numbering without a gap: once stored,
        every message the consumer delivered up to the batch's last one is stored."""
        if not self.clean:
            return False
        first = message.parse_ack_subject(msgs[0][REPLY])
        last = message.parse_ack_subject(msgs[-1][REPLY])
        return first.consumer_seq == self.last_seen + 1 and last.consumer_seq - first.consumer_seq + 1 == len(msgs)

    def _highest(self, msgs: Sequence[tuple]) -> bytes:
        """The ack subject of the batch's highest stream sequence.

        New deliveries come in stream order, but a redelivery (of a message we stored
        before: the tracker is clean) may come after a higher one.
        """
        return max((m[REPLY] for m in msgs), key=lambda r: message.parse_ack_subject(r).stream_seq)

    def reconcile(
        self, num_ack_pending: int, delivered_consumer_seq: int, ack_floor_stream_seq: int = 0
    ) -> bytes | None:
        """Dirty, with no pull request open and every received batch stored: compare with the
        consumer's info.  Returns the ack subject that settles everything held (and the
        tracker is clean again), or None while some unacked delivery is not in our hands.

        Held messages at or below the consumer's ack floor are settled already: a previous
        owner's late AckAll (pins do not fence acks) acked them after we stored their
        redelivery.  They are dropped first, or the counts would never agree again.
        """
        if self.clean:
            return None
        if ack_floor_stream_seq and self.held and min(self.held) <= ack_floor_stream_seq:
            self.held = {s: r for s, r in self.held.items() if s > ack_floor_stream_seq}
        if delivered_consumer_seq != self.last_seen or num_ack_pending != len(self.held):
            return None
        self.clean = True
        if not self.held:
            return None
        reply = self.held[max(self.held)]
        self.held.clear()
        return reply

    def held_subjects(self) -> list[bytes]:
        """Ack subjects of the held messages (for in-progress acks that keep them from redelivery)."""
        return list(self.held.values())
