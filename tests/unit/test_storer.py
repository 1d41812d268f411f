"""workers/partition/storer.py alone: sealed batches in, inserts, dead letters, commit states and acks out.

No fetcher and no servers: the test seals batches into the hand-off as the fetcher would, the
insert is a stand-in table that records rows or fails on command, and a fake NATS client
records what the storer writes (acks and in-progress acks as the PUB commands it sends, dead
letters as requests, the consumer's info and the commit state's KV entry as scripted).  The
retry loop's backoff is recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from clickhouse_driver import errors as ch
from nats.js.errors import KeyNotFoundError

from supervisor.config import parse_config
from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
from workers.clickhouse.table_schema import TableSchema
from workers.delivery import commits
from workers.delivery.commits import CommitState
from workers.nats import dlq
from workers.observability.telemetry import Telemetry
from workers.partition import retry
from workers.partition.batch import Batch
from workers.partition.handoff import STOP, Handoff
from workers.partition.prepare import PartitionTarget
from workers.partition.stats import PartitionStats
from workers.partition.storer import Storer
from workers.partition.writer import WriteTable

FEATURES = ServerFeatures.from_version((18, 16, 1))
COLUMNS = [TableColumn("id", "String"), TableColumn("n", "UInt8")]
_PUB = re.compile(rb"PUB (\S+) (\d+)\r\n")


def _msg(cseq: int, ident: str, *, sseq: int | None = None, delivered: int = 1, body: bytes | None = None) -> tuple:
    sseq = cseq * 2 if sseq is None else sseq  # one partition's stream sequences have gaps
    reply = b"$JS.ACK.EVENTS.c.%d.%d.%d.1700000000000000000.%d" % (delivered, sseq, cseq, 50 - cseq)
    data = body if body is not None else b'{"id": "%s", "n": %d}' % (ident.encode(), cseq)
    return (b"events.0.k%d" % cseq, reply, data, None)


def _batch(*msgs: tuple) -> Batch:
    """A batch as the fetcher seals it (marked when it holds a redelivery)."""
    b = Batch(100, 1 << 20, 60.0)
    b.extend(list(msgs))
    b.redelivered = any(b".EVENTS.c.1." not in m[1] for m in msgs)
    return b


class _Table:
    """The insert (names, columns): records the rows it stores; fails on command."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.failures: list[BaseException] = []  # raised one per call, before anything is stored
        self.refuse: set[str] = set()  # ids ClickHouse refuses as a row-specific error
        self.ids: list[str] = []

    def insert(self, names, columns) -> int:
        if self.failures:
            self.events.append(("insert failed",))
            raise self.failures.pop(0)
        rows = [dict(zip(names, r, strict=True)) for r in zip(*columns, strict=True)]
        if any(r["id"] in self.refuse for r in rows):
            raise ch.ServerException("Cannot parse input: expected ( before: x", code=27)
        self.events.append(("insert", [r["id"] for r in rows]))
        self.ids += [r["id"] for r in rows]
        return len(rows)


STREAM_CREATED = datetime.datetime(2026, 12, 6, 6, 0, 0, 123456, tzinfo=datetime.timezone.utc)


class _KV:
    """The commit state's KV entry: compare-and-set updates, each recorded decoded."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.revision = 0
        self.written: asyncio.Queue = asyncio.Queue()

    async def get(self, key: str):
        raise KeyNotFoundError

    async def update(self, key: str, value: bytes, last: int) -> int:
        assert (key, last) == ("0", self.revision)
        self.events.append(("commit state", CommitState.decode(value)))
        self.written.put_nowait(None)
        self.revision += 1
        return self.revision


class _Nats:
    """What the storer asks of its NATS client: the consumer's info, the KV bucket, DLQ requests,
    and raw writes (wire.send), which are parsed back into (verb, ack subjects)."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.info = _info()
        self.kv = _KV(events)
        self.is_connected, self.is_closed, self.is_draining_pubs, self._flush_queue = True, False, False, None
        self.writes: asyncio.Queue = asyncio.Queue()

    def jetstream(self, timeout: float):
        async def consumer_info(stream: str, consumer: str):
            assert (stream, consumer) == ("EVENTS", "c")
            return self.info

        async def key_value(bucket: str):
            assert bucket == commits.bucket_name("events")
            return self.kv

        async def stream_info(stream: str):
            assert stream in ("EVENTS", "KV_" + commits.bucket_name("events"))
            return SimpleNamespace(created=STREAM_CREATED, state=SimpleNamespace(first_seq=1, last_seq=10**6),
                                   config=SimpleNamespace(num_replicas=1))

        return SimpleNamespace(consumer_info=consumer_info, key_value=key_value, stream_info=stream_info)

    async def _send_command(self, commands: bytes) -> None:
        subjects, verbs = [], set()
        for m in _PUB.finditer(commands):
            subjects.append(m.group(1))
            start = m.end()
            verbs.add(commands[start:start + int(m.group(2))])
        (verb,) = verbs
        event = ({b"+ACK": "ack", b"+WPI": "in progress"}[verb], subjects)
        self.events.append(event)
        self.writes.put_nowait(event)

    async def request(self, subject: str, data: bytes, timeout: float, headers: dict):
        self.events.append(("dlq", subject, data, headers))
        return SimpleNamespace(data=b'{"stream": "EVENTS_DLQ", "seq": 1}')

    async def flush(self) -> None:
        pass


def _info(delivered_cseq: int = 0, delivered_sseq: int = 0, pending: int = 0, floor: int = 0, ack_wait: float = 30.0):
    return SimpleNamespace(
        config=SimpleNamespace(ack_policy="all", ack_wait=ack_wait),
        delivered=SimpleNamespace(consumer_seq=delivered_cseq, stream_seq=delivered_sseq),
        ack_floor=SimpleNamespace(stream_seq=floor),
        num_ack_pending=pending,
    )


def _compile(columns):
    return compile_mapper("t", columns, (), FEATURES)


async def _inline(fn, *args):
    return fn(*args)  # the insert thread, without the thread


class _Partition:
    """A storer with its stand-ins, and the fetcher's half of the hand-off played by the test."""

    def __init__(self, delivery: str = "at_least_once", info=None) -> None:
        config = parse_config({"pipelines": [{
            "name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 1, "table": "t",
            "delivery": delivery,
        }]}, Path("/tmp"))
        self.target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
        self.events: list = []
        self.nc = _Nats(self.events)
        if info is not None:
            self.nc.info = info
        self.table = _Table(self.events)
        schema = TableSchema("events", "default.t", 0.0, lambda: COLUMNS, _compile)
        schema.read("start")
        self.h = Handoff()
        self.stats = PartitionStats()
        self.storer = Storer(
            self.nc, self.target, [WriteTable(schema, self.table.insert)], _inline, Telemetry(), self.h, self.stats,
            {"pipeline": "events", "partition": 0},
        )
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.storer.start()
        self.task = asyncio.create_task(self.storer.run())
        await self.storer.take_over()  # as the runner's pull task does before its first pull

    async def store(self, batch: Batch) -> None:
        """Seal `batch` as the fetcher does, and return once the storer reports it done (wake)."""
        self.h.wake.clear()
        self.h.in_hand.append(batch)
        await self.h.sealed.put(batch)
        await asyncio.wait_for(self.h.wake.wait(), 10)  # a guard against a hang, not a timing
        assert all(b is not batch for b in self.h.in_hand) and not self.h.committing

    async def release(self) -> None:
        await self.h.sealed.put(STOP)
        await asyncio.wait_for(self.task, 10)

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def _records(caplog, module: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == f"workers.partition.{module}"]


@pytest.fixture
def backoff(monkeypatch):
    """The retry loop's sleeps, recorded and not slept."""
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(sleep=sleep))
    return delays


def test_a_batch_is_inserted_then_acked_with_one_ack_all_and_counted():
    async def go():
        p = _Partition()
        await p.start()
        msgs = [_msg(1, "a"), _msg(2, "b"), _msg(3, "c")]
        await p.store(_batch(*msgs))
        await p.release()
        assert p.events == [("insert", ["a", "b", "c"]), ("ack", [msgs[-1][1]])]
        s = p.stats
        assert (s.consumed, s.inserted, s.dead_lettered, s.batches, s.insert_retries, s.pending) == (3, 3, 0, 1, 0, 47)
        assert s.last_batch_at > 0 and not p.storer.dirty

    asyncio.run(go())


def test_what_cannot_be_mapped_is_dead_lettered_and_confirmed_before_the_rest_is_inserted_and_acked(caplog):
    async def go():
        p = _Partition()
        await p.start()
        msgs = [_msg(1, "a"), _msg(2, "", body=b"{nope"), _msg(3, "c")]
        await p.store(_batch(*msgs))
        await p.release()
        assert p.kinds() == ["dlq", "insert", "ack"]
        _, subject, data, headers = p.events[0]
        assert (subject, data) == ("dlq.events", b"{nope")
        assert (headers[dlq.H_REASON], headers[dlq.H_STREAM_SEQ], headers[dlq.H_MSG_ID]) == ("invalid_json", "4",
                                                                                              "EVENTS:4")
        assert p.events[1:] == [("insert", ["a", "c"]), ("ack", [msgs[-1][1]])]
        assert (p.stats.inserted, p.stats.dead_lettered, p.stats.consumed) == (2, 1, 3)

    with caplog.at_level(logging.WARNING, logger="workers.partition.writer"):
        asyncio.run(go())
    (record,) = _records(caplog, "writer")
    assert record.getMessage().startswith("dead-lettered events.0.k2 seq 4: invalid_json: ")
    assert (record.pipeline, record.partition) == ("events", 0)


def test_a_failing_insert_is_retried_with_backoff_its_messages_kept_alive_and_acked_once_stored(backoff, caplog):
    async def go():
        p = _Partition()
        await p.start()
        msgs = [_msg(1, "a"), _msg(2, "b")]
        p.table.failures = [ConnectionError("connection refused"), ch.NetworkError("Code: 210. reset")]
        await p.store(_batch(*msgs))
        await p.release()
        keep = ("in progress", [m[1] for m in msgs])
        assert p.events == [("insert failed",), keep, ("insert failed",), keep, ("insert", ["a", "b"]),
                            ("ack", [msgs[-1][1]])]
        assert (p.stats.insert_retries, p.stats.inserted, p.stats.batches) == (2, 2, 1)

    with caplog.at_level(logging.WARNING, logger="workers.partition.retry"):
        asyncio.run(go())
    assert len(backoff) == 2 and 0.16 <= backoff[0] <= 0.24 and 0.32 <= backoff[1] <= 0.48  # doubling, jittered
    assert [(r.levelno, r.getMessage().split(":")[0], r.fault) for r in _records(caplog, "retry")] == [
        (logging.ERROR, "insert for events/0 failed, retrying in 0.2s", "retryable"),
        (logging.ERROR, "insert for events/0 failed, retrying in 0.4s", "retryable"),
    ]


def test_a_pipeline_fault_pauses_slowly_and_dead_letters_nothing(backoff, caplog):
    async def go():
        p = _Partition()
        await p.start()
        p.table.failures = [ch.ServerException("Table default.t doesn't exist.", code=60)]
        await p.store(_batch(_msg(1, "a")))
        await p.release()
        assert p.kinds() == ["insert failed", "in progress", "insert", "ack"]

    with caplog.at_level(logging.ERROR, logger="workers.partition.retry"):
        asyncio.run(go())
    assert len(backoff) == 1 and 4.0 <= backoff[0] <= 6.0
    (record,) = _records(caplog, "retry")
    assert record.getMessage().startswith("pipeline events paused: ") and record.getMessage().endswith(
        "; retrying in 5s (nothing is dead-lettered meanwhile)")
    assert record.fault == "pipeline"


def test_rows_clickhouse_refuses_are_dead_lettered_as_insert_rejected_and_the_others_stored_once(backoff):
    async def go():
        p = _Partition()
        await p.start()
        msgs = [_msg(1, "a"), _msg(2, "b"), _msg(3, "c"), _msg(4, "d")]
        p.table.refuse = {"c"}
        await p.store(_batch(*msgs))
        await p.release()
        assert sorted(p.table.ids) == ["a", "b", "d"]
        (letter,) = [e for e in p.events if e[0] == "dlq"]
        assert letter[2] == msgs[2][2] and letter[3][dlq.H_REASON] == "insert_rejected"
        assert p.events[-1] == ("ack", [msgs[-1][1]]) and p.kinds().index("dlq") < p.kinds().index("ack")
        assert (p.stats.inserted, p.stats.dead_lettered, p.stats.insert_retries) == (3, 1, 0)
        assert backoff == []

    asyncio.run(go())


def test_acks_are_held_while_a_previous_owners_deliveries_are_out_and_one_ack_all_settles_them_when_idle(caplog):
    async def go():
        # A previous owner died holding two deliveries (stream sequences 2 and 4, consumer sequences 1 and 2).
        p = _Partition(info=_info(delivered_cseq=2, delivered_sseq=4, pending=2))
        await p.start()
        assert p.storer.dirty
        msgs = [_msg(3, "a", sseq=2, delivered=2), _msg(4, "b", sseq=4, delivered=2), _msg(5, "c", sseq=6)]
        await p.store(_batch(*msgs))
        assert p.events == [("insert", ["a", "b", "c"])]  # stored, not acked
        await p.storer.keep_held_alive(time.monotonic())
        assert p.events[-1] == ("in progress", [m[1] for m in msgs])
        # The consumer still waits for an ack of a delivery we do not hold: keep holding.
        p.nc.info = _info(delivered_cseq=5, delivered_sseq=6, pending=4)
        await p.storer.reconcile()
        assert p.storer.dirty and p.kinds()[-1] == "in progress"
        # Its unacked deliveries are exactly ours: one AckAll on the highest.
        p.nc.info = _info(delivered_cseq=5, delivered_sseq=6, pending=3)
        await p.storer.reconcile()
        assert not p.storer.dirty and p.events[-1] == ("ack", [msgs[-1][1]])
        await p.release()
        assert p.kinds() == ["insert", "in progress", "ack"]

    with caplog.at_level(logging.INFO, logger="workers.partition.storer"):
        asyncio.run(go())
    assert [r.getMessage() for r in _records(caplog, "storer")] == [
        "partition events/0: the consumer has 2 messages delivered to a previous owner and not acked; "
        "holding acks until they are redelivered and stored",
        "partition events/0: every unacked message is stored; acking per batch again",
    ]


def test_a_gap_in_the_deliveries_holds_the_batch_and_a_release_leaves_it_to_redelivery(caplog):
    async def go():
        p = _Partition()
        await p.start()
        first = [_msg(1, "a"), _msg(2, "b")]
        await p.store(_batch(*first))
        await p.store(_batch(_msg(4, "d"), _msg(5, "e")))  # consumer sequence 3 never arrived
        assert p.storer.dirty
        p.nc.info = _info(delivered_cseq=5, delivered_sseq=10, pending=3)  # the lost one is still out
        await p.release()
        assert p.events == [("insert", ["a", "b"]), ("ack", [first[-1][1]]), ("insert", ["d", "e"])]

    with caplog.at_level(logging.WARNING, logger="workers.partition.storer"):
        asyncio.run(go())
    assert [r.getMessage() for r in _records(caplog, "storer")] == [
        "partition events/0: deliveries missing before consumer sequence 5 (a reconnect or a previous owner); "
        "holding acks until they are redelivered and stored",
        "partition events/0 released with 2 stored messages unacked: JetStream redelivers them "
        "(duplicates in the table, nothing lost)",
    ]


def _states(p: _Partition) -> list[tuple]:
    return [(s.stored, s.inflight and (s.inflight.first, s.inflight.last, s.inflight.count))
            for kind, *rest in p.events if kind == "commit state" for s in rest]


def test_exactly_once_records_each_range_before_its_insert_with_the_previous_batchs_stored(monkeypatch):
    monkeypatch.setattr(commits, "STORED_FLUSH_S", 3600.0)  # batches follow each other: no write alone

    async def go():
        p = _Partition(delivery="exactly_once")
        await p.start()
        one, two = [_msg(1, "a"), _msg(2, "b"), _msg(3, "c")], [_msg(4, "d"), _msg(5, "e")]
        await p.store(_batch(*one))
        await p.store(_batch(*two))
        await p.release()
        assert p.kinds() == ["commit state", "insert", "ack", "commit state", "insert", "ack", "commit state"]
        # One write per batch: its range, with the previous one's `stored`; the release writes the last.
        assert _states(p) == [(0, (2, 6, 3)), (6, (8, 10, 2)), (10, None)]
        # Each write names the stream incarnation its sequences count in (read when the state was opened).
        assert {s.stream for kind, *rest in p.events if kind == "commit state" for s in rest} == {
            STREAM_CREATED.isoformat()
        }

    asyncio.run(go())


def test_exactly_once_acks_and_counts_deliveries_at_or_below_the_stored_sequence_without_storing_them(monkeypatch):
    monkeypatch.setattr(commits, "STORED_FLUSH_S", 3600.0)

    async def go():
        p = _Partition(delivery="exactly_once")
        await p.start()
        await p.store(_batch(_msg(1, "a"), _msg(2, "b")))
        again = _msg(3, "b", sseq=4, delivered=2)  # its ack was lost: redelivered, stored already
        await p.store(_batch(again, _msg(4, "c", sseq=6)))
        await p.release()
        assert p.table.ids == ["a", "b", "c"]
        assert (p.stats.skipped_duplicates, p.stats.inserted, p.stats.consumed) == (1, 3, 4)
        assert p.events[-2] == ("ack", [_msg(4, "c", sseq=6)[1]])
        # A batch holding a redelivery is no run of first deliveries: its range names its exact sequences,
        # which are then stored above `stored` (held); the release writes what is known.
        assert _states(p) == [(0, (2, 4, 2)), (4, (6, 6, 1)), (4, None)]
        final = [s for kind, *rest in p.events if kind == "commit state" for s in rest][-1]
        assert final.held == (6,)

    asyncio.run(go())


def test_exactly_once_an_idle_partition_writes_the_last_stored_alone(monkeypatch):
    monkeypatch.setattr(commits, "STORED_FLUSH_S", 0.0)  # no next batch in time

    async def go():
        p = _Partition(delivery="exactly_once")
        await p.start()
        await p.store(_batch(_msg(1, "a"), _msg(2, "b")))
        await asyncio.wait_for(p.nc.kv.written.get(), 10)  # the batch's range
        await asyncio.wait_for(p.nc.kv.written.get(), 10)  # then, no batch coming, its `stored` alone
        assert _states(p) == [(0, (2, 4, 2)), (4, None)]
        await p.store(_batch(_msg(3, "c")))
        await p.release()
        assert _states(p) == [(0, (2, 4, 2)), (4, None), (4, (6, 6, 1)), (6, None)]

    asyncio.run(go())


def test_batches_held_longer_than_a_third_of_ack_wait_get_in_progress_acks():
    async def go():
        p = _Partition(info=_info(ack_wait=0.03))
        await p.start()
        old, young = _batch(_msg(1, "a"), _msg(2, "b")), _batch(_msg(3, "c"))
        old.requested_at = 0.0  # requested long ago, never kept alive
        young.requested_at = time.monotonic() + 3600.0  # requested "now", whatever the clock says later
        p.h.in_hand.append(old)
        p.h.filling = young
        keeper = asyncio.create_task(p.storer.keep_in_hand_alive())
        try:
            assert await asyncio.wait_for(p.nc.writes.get(), 10) == ("in progress", [old.messages[0][1],
                                                                                    old.messages[1][1]])
            assert old.kept_alive_at > 0.0 and young.kept_alive_at == 0.0
        finally:
            keeper.cancel()
        p.h.in_hand.clear()
        await p.release()

    asyncio.run(go())


def test_exactly_once_records_the_exact_sequences_of_a_batch_after_a_gap_in_the_deliveries(monkeypatch):
    monkeypatch.setattr(commits, "STORED_FLUSH_S", 3600.0)

    async def go():
        p = _Partition(delivery="exactly_once")
        await p.start()
        await p.store(_batch(_msg(1, "a"), _msg(2, "b")))
        await p.store(_batch(_msg(4, "d"), _msg(5, "e")))  # consumer sequence 3 never arrived
        await p.release()
        # Stored, but not provably everything up to its end: no ack, and `stored` stays where the last
        # proven batch ended; the batch's range names its exact sequences (a next owner settles it by
        # them), and once in they are `held`: a next owner reading the unacked back skips them.
        assert p.table.ids == ["a", "b", "d", "e"]
        assert _states(p) == [(0, (2, 4, 2)), (4, (8, 10, 2)), (4, None)]
        states = [s for kind, *rest in p.events if kind == "commit state" for s in rest]
        assert states[1].inflight.seqs == (8, 10) and states[-1].held == (8, 10)
        assert [e for e in p.events if e[0] == "ack"] == [("ack", [_msg(2, "b")[1]])]

    asyncio.run(go())


def test_the_commit_loop_writes_nothing_until_the_takeover_is_done(monkeypatch):
    """A takeover writes the commit state batch by batch; an idle commit loop's flush beside it
    would race those writes (two compare-and-sets on one revision: StaleCommitState)."""
    monkeypatch.setattr(commits, "STORED_FLUSH_S", 0.0)

    async def go():
        p = _Partition(delivery="exactly_once")
        await p.storer.start()
        p.storer._commits.state = commits.CommitState(0, commits.Range(1, 2, 2, 1, 1.0))  # names a batch in flight
        task = asyncio.create_task(p.storer.run())
        for _ in range(20):
            await asyncio.sleep(0)  # the loop gets every chance to run
        assert [e for e in p.events if e[0] == "commit state"] == []
        p.storer._taken_over.set()
        await asyncio.wait_for(p.nc.kv.written.get(), 10)  # now the idle partition's state is written
        task.cancel()

    asyncio.run(go())
