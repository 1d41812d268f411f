"""The commit state's watermark never covers an unstored message, and what is below it is never stored again."""

from __future__ import annotations

import asyncio

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyWrongLastSequenceError

from tests.unit.test_acks import _Consumer
from workers import message
from workers.delivery import commits
from workers.delivery.acks import AckTracker
from workers.delivery.commits import CommitLog, CommitState, Range, StreamIncarnation, bind, unstored


def _seq(m: tuple) -> int:
    return message.parse_ack_subject(m[1]).stream_seq


class _Partition:
    """What the partition's storer (workers/partition/storer.py) does per batch, on the model consumer: skip,
    store, move the watermark, ack."""

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
        redelivered = any(message.parse_ack_subject(m[1]).delivered > 1 for m in batch)
        self._ack(self.tracker.stored(batch, redelivered))

    def idle(self) -> None:
        if self.tracker.dirty:
            reply = self.tracker.reconcile(len(self.consumer.pending), self.consumer.dseq)
            if reply is not None:
                self.watermark = max(self.watermark, message.parse_ack_subject(reply).stream_seq)
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
    assert u.first_ts_ns == message.parse_ack_subject(a[1]).timestamp_ns


def test_commit_state_round_trips():
    for state in (
        CommitState(),
        CommitState(41, Range(42, 99, 17, 1_700_000_000_000_000_000, 1_700_000_000.5)),
        CommitState(41, None, "2026-12-06T06:00:00.123456+00:00"),
    ):
        assert CommitState.decode(state.encode()) == state
    # A batch stored while acks were held names its exact sequences; what such batches stored is `held`.
    scattered = CommitState(41, Range(45, 60, 3, 7, 1.5, (45, 46, 60)), "s", (43, 44, 50))
    assert CommitState.decode(scattered.encode()) == scattered
    assert orjson.loads(scattered.encode())["held"] == [[43, 44], [50, 50]]
    # An entry written before states named their stream incarnation.
    assert CommitState.decode(b'{"stored": 7, "inflight": null}') == CommitState(7)
    assert CommitState.decode(None) == CommitState()
    assert commits.bucket_name("events-1") == "jetsink_commits_events-1"


class _KV:
    """The commit state's KV entry as nats-py's KeyValue.update sees it: compare-and-set on the revision."""

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.revision = 0

    async def update(self, key: str, value: bytes, last: int) -> int:
        if last != self.revision:
            raise KeyWrongLastSequenceError(f"wrong last sequence: {self.revision}")
        self.value, self.revision = value, self.revision + 1
        return self.revision


class _Crash(Exception):
    pass


class _Owner:
    """One owner of the partition: what workers/delivery/takeover.py does when it starts, then what
    Storer._commit (workers/partition/storer.py) does per batch, with the real CommitLog on the model KV
    and consumer; `crash_at` stops it after the range is written, after the insert, or after
    the ack (the three moments the entry may name a batch in flight)."""

    def __init__(self, consumer: _Consumer, kv: _KV, world: "_World") -> None:
        self.consumer, self.world = consumer, world
        self.log = CommitLog(kv, "0", CommitState.decode(kv.value), kv.revision)
        self.tracker = AckTracker(consumer.dseq, len(consumer.pending))
        r = self.log.state.inflight
        if r is not None:
            batch = list(r.seqs) if r.seqs else [s for s in world.produced if r.first <= s <= r.last]
            if consumer.floor >= r.last:
                # The rule under test: acked means stored, without asking ClickHouse.
                assert all(world.table.get(s) for s in batch), f"acked in-doubt batch {r} is not stored"
                asyncio.run(self.log.stored(r.last))
            elif all(world.table.get(s) for s in batch):  # the query log: its insert landed
                asyncio.run(self.log.settled(r))
            else:  # never landed: stored when redelivered or read back below
                asyncio.run(self.log.stored(self.log.state.stored))
        if consumer.pending:
            # What the previous owner held unacked, read back from the stream and stored, but for
            # what it had stored while holding acks (recorded in the state).
            first = max(self.log.state.stored, consumer.floor) + 1
            last = max(consumer.pending)
            for s in (s for s in world.produced if first <= s <= last and s not in self.log.held):
                world.store(s)
            asyncio.run(self.log.stored(last))
            self.tracker = AckTracker(consumer.dseq, 0)

    def commit(self, batch: list[tuple], crash_at: str | None) -> None:
        u = unstored(batch, self.log.stored_through, None, self.log.held)
        r = None
        if u.msgs:
            if u.ordered and self.tracker.continues(batch):
                r = Range(u.first, u.last, len(u.msgs), u.first_ts_ns, 0.0)
            else:
                r = commits.scattered(u.msgs, 0.0)
            asyncio.run(self.log.begin(r))
        if crash_at == "begin":
            raise _Crash
        for m in u.msgs:
            self.world.store(_seq(m))
        if crash_at == "insert":
            raise _Crash
        if r is not None:
            self.log.inserted(r)
        redelivered = any(message.parse_ack_subject(m[1]).delivered > 1 for m in batch)
        reply = self.tracker.stored(batch, redelivered)
        if reply is not None:
            self.consumer.ack_all(reply)
        if crash_at == "ack":
            raise _Crash


class _World:
    def __init__(self) -> None:
        self.produced: list[int] = []
        self.table: dict[int, int] = {}  # sseq -> times stored

    def store(self, s: int) -> None:
        self.table[s] = self.table.get(s, 0) + 1


_crash_step = st.one_of(
    st.tuples(st.just("new"), st.integers(1, 5)),
    st.tuples(st.just("lose"), st.integers(1, 2)),
    st.tuples(st.just("commit"), st.sampled_from([None, None, "begin", "insert", "ack"])),
    st.tuples(st.just("idle")),
    # nats-server kill -9 forgets recent consumer acks. A KV write is a stream message: it
    # survives a process kill, and is lost only with a machine crash within nats-server's
    # sync_interval, which loses acknowledged writes of every kind (no write order survives
    # that; the CAS then stops the owner instead of moving the state backwards).
    st.tuples(st.just("forget")),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_crash_step, max_size=50))
def test_one_write_per_batch_and_the_ack_floor_rule_lose_nothing_and_store_nothing_twice(steps):
    """Crashes at every moment a batch can be in flight, and forgotten acks: nothing is lost, a
    batch found acked is always stored, and nothing is stored twice, batches stored while acks
    were held (after lost deliveries) included: each has a recorded range of its exact sequences."""
    consumer, kv, world = _Consumer(), _KV(), _World()
    owner = _Owner(consumer, kv, world)
    received: list[tuple] = []

    def restart() -> None:
        nonlocal owner
        received.clear()  # the dead owner's deliveries: the consumer still counts them unacked
        owner = _Owner(consumer, kv, world)

    for step in steps:
        if step[0] in ("new", "lose"):
            for _ in range(step[1]):
                m = consumer.new()
                world.produced.append(consumer.next_sseq)
                if step[0] == "new":
                    received.append(m)
        elif step[0] == "commit" and received:
            batch = list(received)
            received.clear()
            try:
                owner.commit(batch, step[1])
            except _Crash:
                restart()
        elif step[0] == "idle":
            asyncio.run(owner.log.flush())
        elif step[0] == "forget":
            # It remembers having delivered them, not their acks: they come again as redeliveries.
            acked = [s for s in world.produced if s <= consumer.floor and s not in consumer.pending]
            if acked:
                consumer.floor = acked[0] - 1
                for s in acked:
                    consumer.pending[s] = 1
                    received.append(consumer.deliver(s))
    # Drain: what is still pending is redelivered until everything is acked.
    for _ in range(3):
        received.extend(consumer.deliver(s) for s in sorted(consumer.pending) if all(
            _seq(m) != s for m in received))
        if received:
            batch = list(received)
            received.clear()
            owner.commit(batch, None)
    lost = [s for s in world.produced if not world.table.get(s)]
    assert not lost, f"lost {lost}"
    twice = {s for s, n in world.table.items() if n > 1}
    assert not twice, f"stored twice: {sorted(twice)}"


# -- the stream incarnation a state counts in (commits.bind) ---------------------------------

NOW = StreamIncarnation("EVENTS", "2026-12-06T06:00:00.123456+00:00", 1, 1000)


def test_a_state_of_another_stream_incarnation_is_set_aside():
    old = CommitState(900, Range(901, 950, 50, 1, 1.0), "2026-12-01T00:00:00+00:00")
    bound = bind(old, NOW)
    assert bound.state == CommitState(0, None, NOW.created)
    assert "created 2026-12-01T00:00:00+00:00" in bound.afresh and NOW.created in bound.afresh


def test_a_state_past_the_streams_last_sequence_is_set_aside_even_without_an_identity():
    # An entry of an earlier version (no "stream"), and the stream was created again and is shorter.
    for old in (CommitState(1200), CommitState(700, Range(701, 1200, 500, 1, 1.0))):
        bound = bind(old, NOW)
        assert bound.state == CommitState(0, None, NOW.created)
        assert "past the last sequence 1000" in bound.afresh


def test_a_state_of_this_incarnation_or_an_earlier_version_goes_on_bound_to_it():
    r = Range(401, 450, 50, 1, 1.0)
    for old in (CommitState(400, r), CommitState(400, r, NOW.created), CommitState(1000, None, NOW.created)):
        bound = bind(old, NOW)
        assert bound.afresh is None and bound.expired == 0
        assert bound.state == CommitState(old.stored, old.inflight, NOW.created)


def test_sequences_the_stream_removed_before_they_were_stored_are_counted():
    later = StreamIncarnation("EVENTS", NOW.created, 601, 1000)
    assert bind(CommitState(400, None, NOW.created), later).expired == 200  # 401..600
    assert bind(CommitState(600, None, NOW.created), later).expired == 0  # the next one is still there
    # A partition that never stored anything has nothing to lose to the limits (its consumer starts at the first).
    assert bind(CommitState(0), later).expired == 0


def test_writes_carry_the_incarnation_they_were_bound_to():
    kv = _KV()
    log_ = CommitLog(kv, "0", bind(CommitState(), NOW).state, kv.revision)

    async def run():
        await log_.begin(Range(1, 10, 10, 1, 1.0))
        log_.inserted(Range(1, 10, 10, 1, 1.0))
        await log_.flush()

    asyncio.run(run())
    assert CommitState.decode(kv.value) == CommitState(10, None, NOW.created)


class _LosingKV(_KV):
    """A KV whose next update lands but whose answer is lost (a leader election, a dropped connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next = False

    async def update(self, key: str, value: bytes, last: int) -> int:
        revision = await super().update(key, value, last)
        if self.lose_next:
            self.lose_next = False
            raise asyncio.TimeoutError
        return revision

    async def get(self, key: str):
        from types import SimpleNamespace

        return SimpleNamespace(value=self.value, revision=self.revision)


def test_a_retried_write_whose_answer_was_lost_finds_its_own_write_and_goes_on():
    kv = _LosingKV()
    log_ = CommitLog(kv, "0", CommitState(), kv.revision)

    async def run():
        await log_.begin(Range(1, 10, 10, 1, 1.0))
        kv.lose_next = True
        r = Range(11, 20, 10, 11, 2.0)
        log_.inserted(Range(1, 10, 10, 1, 1.0))
        try:
            await log_.begin(r)
        except asyncio.TimeoutError:
            await log_.begin(r)  # the caller's retry: the entry already holds exactly this
        log_.inserted(r)
        await log_.flush()

    asyncio.run(run())
    assert CommitState.decode(kv.value) == CommitState(20, None)
    assert kv.revision == 3


def test_a_write_that_finds_another_writers_entry_is_stale():
    kv = _LosingKV()
    log_ = CommitLog(kv, "0", CommitState(), kv.revision)
    asyncio.run(log_.begin(Range(1, 10, 10, 1, 1.0)))
    asyncio.run(kv.update("0", CommitState(99).encode(), kv.revision))  # another owner's write
    try:
        asyncio.run(log_.stored(10))
    except commits.StaleCommitState:
        pass
    else:
        raise AssertionError("a write over another owner's entry must stop this owner")
