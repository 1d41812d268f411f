"""The commit state's watermark never covers an unstored message, and what is below it is never stored again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_acks import _Consumer
from workers import commits, intake
from workers.acks import AckTracker
from workers.commits import CommitState, Range, unstored


def _seq(m: tuple) -> int:
    return intake.parse_ack_subject(m[1]).stream_seq


class _Partition:
    """What workers/partition.py does per batch, on the model consumer: skip, store, move the watermark, ack."""

    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer
        self.tracker = AckTracker(consumer.dseq, len(consumer.pending))
        self.watermark = 0
        self.table: dict[int, int] = {}  # sseq -> times stored
        self.skipped = 0

    def commit(self, batch: list[tuple]) -> None:
        u = unstored(batch, self.watermark)
        exact = bool(u.msgs) and u.ordered and self.tracker.continues(batch)
        for m in u.msgs:
            self.table[_seq(m)] = self.table.get(_seq(m), 0) + 1
        self.skipped += u.skipped
        if exact:
            self.watermark = max(self.watermark, u.last)
        redelivered = any(intake.parse_ack_subject(m[1]).delivered > 1 for m in batch)
        self._ack(self.tracker.stored(batch, redelivered))

    def idle(self) -> None:
        if self.tracker.dirty:
            reply = self.tracker.reconcile(len(self.consumer.pending), self.consumer.dseq)
            if reply is not None:
                self.watermark = max(self.watermark, intake.parse_ack_subject(reply).stream_seq)
            self._ack(reply)

    def _ack(self, reply: bytes | None) -> None:
        if reply is not None:
            self.consumer.ack_all(reply)

    def check(self, produced: set[int]) -> None:
        missing = [s for s in produced if s <= self.watermark and s not in self.table]
        assert not missing, f"watermark {self.watermark} covers unstored {missing}"


_step = st.one_of(
    st.tuples(st.just("new"), st.integers(1, 5)),
    st.tuples(st.just("lose"), st.integers(1, 3)),
    st.tuples(st.just("redeliver")),
    st.tuples(st.just("forget")),  # a hard-killed nats-server forgot the acks of what it delivered
    st.tuples(st.just("commit")),
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4), st.lists(_step, max_size=40))
def test_the_watermark_only_covers_stored_messages(previous_owner_left, steps):
    consumer = _Consumer()
    for _ in range(previous_owner_left):
        consumer.new()
    part = _Partition(consumer)
    produced = {s for s in consumer.pending}
    received: list[tuple] = []
    acked: set[int] = set()

    def commit():
        if received:
            part.commit(list(received))
            received.clear()
        part.idle()
        part.check(produced)

    for step in steps:
        if step[0] == "new":
            for _ in range(step[1]):
                received.append(consumer.new())
                produced.add(consumer.next_sseq)
        elif step[0] == "lose":
            for _ in range(step[1]):
                consumer.new()
                produced.add(consumer.next_sseq)
        elif step[0] == "redeliver" and consumer.pending:
            received.append(consumer.deliver(min(consumer.pending)))
        elif step[0] == "forget":
            # Everything acked comes back as pending and is redelivered.
            acked = {s for s in produced if s <= consumer.floor and s not in consumer.pending}
            for s in sorted(acked):
                received.append(consumer.deliver(s))
        else:
            commit()
    commit()
    for sseq in sorted(consumer.pending):
        received.append(consumer.deliver(sseq))
    commit()
    part.check(produced)
    # Nothing lost: every message produced is stored.
    assert produced <= set(part.table)


def test_redeliveries_of_acked_messages_are_skipped_not_stored_again():
    consumer = _Consumer()
    part = _Partition(consumer)
    first = [consumer.new() for _ in range(4)]
    part.commit(first)
    assert part.watermark == _seq(first[-1]) and not consumer.pending
    # nats-server restarted having forgotten those acks: it delivers them again.
    again = [consumer.deliver(_seq(m)) for m in first] + [consumer.new()]
    part.commit(again)
    assert part.skipped == 4
    assert all(n == 1 for n in part.table.values()) and len(part.table) == 5


def test_unstored_cuts_an_ordered_batch_without_decoding_every_subject():
    consumer = _Consumer()
    batch = [consumer.new() for _ in range(6)]
    seqs = [_seq(m) for m in batch]
    u = unstored(batch, seqs[2])
    assert u.ordered and u.skipped == 3 and [_seq(m) for m in u.msgs] == seqs[3:]
    assert (u.first, u.last) == (seqs[3], seqs[-1])
    assert unstored(batch, 0).msgs is batch
    assert unstored(batch, seqs[-1]).msgs == [] and unstored(batch, seqs[-1]).skipped == 6


def test_unstored_sorts_and_dedups_a_batch_with_redeliveries():
    consumer = _Consumer()
    a, b, c = consumer.new(), consumer.new(), consumer.new()
    batch = [c, consumer.deliver(_seq(a)), b, consumer.deliver(_seq(b))]
    u = unstored(batch, 0)
    assert not u.ordered
    assert [_seq(m) for m in u.msgs] == [_seq(a), _seq(b), _seq(c)] and u.skipped == 1
    assert u.first_ts_ns == intake.parse_ack_subject(a[1]).timestamp_ns


def test_commit_state_round_trips():
    for state in (CommitState(), CommitState(41, Range(42, 99, 17, 1_700_000_000_000_000_000, 1_700_000_000.5))):
        assert CommitState.decode(state.encode()) == state
    assert CommitState.decode(None) == CommitState()
    assert commits.bucket_name("events-1") == "jetsink_commits_events-1"
