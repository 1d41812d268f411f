"""AckAll safety: against a model of a JetStream consumer, no ack ever settles a message we did not store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers import message
from workers.delivery.acks import AckTracker


class _Consumer:
    """The parts of an AckAll consumer that matter: delivery numbering, pending set, ack floor."""

    def __init__(self) -> None:
        self.next_sseq = 1
        self.dseq = 0  # last delivery number
        self.pending: dict[int, int] = {}  # sseq -> times delivered
        self.floor = 0

    def deliver(self, sseq: int) -> tuple:
        self.dseq += 1
        self.pending[sseq] = self.pending.get(sseq, 0) + 1
        reply = f"$JS.ACK.S.c.{self.pending[sseq]}.{sseq}.{self.dseq}.1700000000000000000.0".encode()
        return (b"s.0.k", reply, b"{}", None)

    def new(self) -> tuple:
        # Stream sequences of one partition's filter have gaps (other partitions' messages).
        self.next_sseq += 2
        return self.deliver(self.next_sseq)

    def ack_all(self, reply: bytes) -> list[int]:
        sseq = message.parse_ack_subject(reply).stream_seq
        settled = [s for s in self.pending if s <= sseq]
        for s in settled:
            del self.pending[s]
        self.floor = max(self.floor, sseq)
        return settled


# Steps: ("new", k) k deliveries of new messages; ("lose", k) the same but lost on the way;
# ("redeliver",) the oldest pending message again (ack_wait ran out); ("commit",) our
# received messages form a batch and are stored; ("late_ack",) the previous owner, which
# had stored what it was delivered, sends its AckAll after all (pins do not fence acks).
_step = st.one_of(
    st.tuples(st.just("new"), st.integers(1, 5)),
    st.tuples(st.just("lose"), st.integers(1, 3)),
    st.tuples(st.just("redeliver")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("late_ack")),
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4), st.lists(_step, max_size=40))
def test_no_ack_ever_settles_an_unstored_message(previous_owner_left, steps):
    consumer = _Consumer()
    previous = [consumer.new() for _ in range(previous_owner_left)]  # delivered to an owner that lost them
    tracker = AckTracker(consumer.dseq, len(consumer.pending))
    stored: set[int] = set()
    received: list[tuple] = []

    def ack(reply):
        if reply is not None:
            settled = consumer.ack_all(reply)
            assert set(settled) <= stored, f"acked unstored {sorted(set(settled) - stored)}"

    def commit():
        if received:
            stored.update(message.parse_ack_subject(m[1]).stream_seq for m in received)
            redelivered = any(message.parse_ack_subject(m[1]).delivered > 1 for m in received)
            ack(tracker.stored(list(received), redelivered))
            received.clear()
        if tracker.dirty:  # idle now: what the partition does between requests while dirty
            ack(tracker.reconcile(len(consumer.pending), consumer.dseq, consumer.floor))

    for step in steps:
        if step[0] == "new":
            received.extend(consumer.new() for _ in range(step[1]))
        elif step[0] == "lose":
            for _ in range(step[1]):
                consumer.new()
        elif step[0] == "redeliver" and consumer.pending:
            received.append(consumer.deliver(min(consumer.pending)))
        elif step[0] == "late_ack":
            if previous:
                consumer.ack_all(previous[-1][1])
        else:
            commit()

    # Liveness: once every pending message has been redelivered to us and stored, the
    # tracker acks the lot and is clean again.
    commit()
    for sseq in sorted(consumer.pending):
        received.append(consumer.deliver(sseq))
    commit()
    assert tracker.clean and not consumer.pending


def test_clean_batches_ack_their_highest_sequence_without_decoding_each_subject():
    consumer = _Consumer()
    tracker = AckTracker(0, 0)
    batch = [consumer.new() for _ in range(5)]
    assert tracker.stored(batch, redelivered=False) == batch[-1][1]
    # A redelivery of an earlier (stored) message inside a later batch: still the highest.
    batch2 = [consumer.new()]
    batch2.append(consumer.deliver(3))
    assert tracker.stored(batch2, redelivered=True) == batch2[0][1] and tracker.clean


def test_a_gap_in_delivery_numbers_holds_acks_until_the_consumer_agrees():
    consumer = _Consumer()
    tracker = AckTracker(0, 0)
    consumer.new()  # lost in a reconnect
    batch = [consumer.new(), consumer.new()]
    assert tracker.stored(batch) is None and tracker.dirty
    assert tracker.reconcile(len(consumer.pending), consumer.dseq) is None  # 3 pending, we hold 2
    lost_again = consumer.deliver(3)
    assert tracker.stored([lost_again]) is None
    reply = tracker.reconcile(len(consumer.pending), consumer.dseq)
    assert reply == batch[-1][1] and tracker.clean
    assert consumer.ack_all(reply) == [3, 5, 7]


def test_reconcile_waits_for_deliveries_still_in_flight():
    consumer = _Consumer()
    consumer.new()  # the previous owner's, never acked
    tracker = AckTracker(consumer.dseq, len(consumer.pending))
    tracker.stored([consumer.deliver(3)])
    consumer.deliver(3)  # sent again by the server, not read by us yet
    assert len(consumer.pending) == len(tracker.held) == 1
    assert tracker.reconcile(len(consumer.pending), consumer.dseq) is None and tracker.dirty


def test_reconcile_drops_what_a_previous_owners_late_ack_settled():
    consumer = _Consumer()
    old = [consumer.new(), consumer.new()]  # the previous owner stored these, its ack is late
    tracker = AckTracker(consumer.dseq, len(consumer.pending))
    tracker.stored([consumer.deliver(3), consumer.deliver(5)])  # redelivered to us, stored again
    new = [consumer.new()]
    tracker.stored(new)
    consumer.ack_all(old[-1][1])  # the late AckAll: the consumer now waits for 1 message, we hold 3
    assert tracker.reconcile(len(consumer.pending), consumer.dseq) is None  # without the floor: never agrees
    reply = tracker.reconcile(len(consumer.pending), consumer.dseq, consumer.floor)
    assert reply == new[0][1] and tracker.clean and consumer.ack_all(reply) == [7]
