"""workers/partition/fetcher.py alone: scripted deliveries in, pull requests and sealed batches out.

No storer and no NATS server: deliveries are fed to ``_on_msgs`` as the bulk reader hands them
over (``(subject, reply, data, headers)`` tuples), pull requests are captured from a fake
client's ``publish``, and the storer's side of the hand-off is a scripted ``HeldAcks``.  The
tests wait for what the fetcher does (a request, a sealed batch, the moment it parks), never
for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from supervisor.config import parse_config
from workers.partition.fetcher import MAX_UNANSWERED_PULLS, Fetcher
from workers.partition.handoff import STOP, Handoff
from workers.partition.prepare import PartitionTarget
from workers.partition.stats import PartitionStats
from workers.topology import PRIORITY_GROUP

INBOX = "_INBOX.fetcher"
NEXT = "$JS.API.CONSUMER.MSG.NEXT.EVENTS.c"
EXPIRES_NS = 5_000_000_000  # max_wait_ms is long, so requests expire after the 5 s cap


def _msg(cseq: int, *, sseq: int | None = None, delivered: int = 1, pin: str | None = None, data: bytes = b"{}"):
    sseq = cseq * 2 if sseq is None else sseq  # one partition's stream sequences have gaps
    reply = b"$JS.ACK.EVENTS.c.%d.%d.%d.1700000000000000000.%d" % (delivered, sseq, cseq, 100 - cseq)
    headers = b"NATS/1.0\r\nNats-Pin-Id: %s\r\n\r\n" % pin.encode() if pin else None
    return (b"events.0.k%d" % cseq, reply, data, headers)


def _status(code: int, description: str = "") -> tuple:
    return (INBOX.encode(), b"", b"", b"NATS/1.0 %d %s\r\n\r\n" % (code, description.encode()))


class _Nats:
    """What the fetcher asks of its NATS client: an inbox, publish (pull requests), request (unpin), flush."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.is_connected = True
        self.pulls: asyncio.Queue = asyncio.Queue()

    def new_inbox(self) -> str:
        return INBOX

    async def publish(self, subject: str, body: bytes, reply: str = "") -> None:
        assert (subject, reply) == (NEXT, INBOX)
        self.events.append(("pull", orjson.loads(body)))
        self.pulls.put_nowait(orjson.loads(body))

    async def request(self, subject: str, body: bytes, timeout: float) -> None:
        self.events.append(("request", subject, orjson.loads(body)))

    async def flush(self) -> None:
        self.events.append(("flush",))


class _Acks:
    """The storer's side of the hand-off (HeldAcks), scripted: `dirty` is set by the test;
    `reconcile` runs `on_reconcile` (e.g. the consumer agreeing) and says it ran."""

    def __init__(self, events: list, dirty: bool = False) -> None:
        self.events = events
        self.dirty = dirty
        self.last_seen = 0
        self.ack_wait_s = 30.0
        self.on_reconcile = lambda: None
        self.reconciled: asyncio.Queue = asyncio.Queue()

    async def keep_held_alive(self, now: float) -> None:
        self.events.append(("keep_held_alive",))

    async def reconcile(self) -> None:
        self.events.append(("reconcile",))
        self.on_reconcile()
        self.reconciled.put_nowait(None)


class _Sealed(asyncio.Queue):
    """The queue of one, noting each batch the fetcher offers (before put() may wait for room)."""

    def __init__(self, events: list) -> None:
        super().__init__(maxsize=1)
        self.events = events
        self.offered: asyncio.Queue = asyncio.Queue()

    async def put(self, item) -> None:
        self.events.append(("seal", item))
        self.offered.put_nowait(item)
        await super().put(item)


class _Wake(asyncio.Event):
    """The fetcher's wake-up event; clear() is where the fetcher parks, so the test can wait for that."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: asyncio.Queue = asyncio.Queue()

    def clear(self) -> None:
        super().clear()
        self.parked.put_nowait(None)


async def _next(q: asyncio.Queue):
    return await asyncio.wait_for(q.get(), 10)  # a guard against a hang, not a timing


async def _looked(h: Handoff) -> None:
    """Make the fetcher look at its state once more (a spurious wake-up, which it must take in its
    stride) and return once it has acted on it and parked again."""
    parked = h.wake.parked
    while not parked.empty():
        parked.get_nowait()
    h.wake.set()
    await _next(parked)


def _setup(max_rows: int = 3, max_bytes: int = 1_000_000, dirty: bool = False):
    config = parse_config({"pipelines": [{
        "name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 1, "table": "t",
        "batch": {"max_rows": max_rows, "max_bytes": max_bytes, "max_wait_ms": 60_000},
    }]}, Path("/tmp"))
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
    events: list = []
    h = Handoff()
    h.sealed, h.wake = _Sealed(events), _Wake()
    nc, acks, stats = _Nats(events), _Acks(events, dirty), PartitionStats()
    f = Fetcher(nc, target, h, acks, stats, {"pipeline": "events", "partition": 0})
    return f, h, nc, acks, stats, events


def _kinds(events: list) -> list[str]:
    return [e[0] for e in events if e[0] != "keep_held_alive"]


async def _finish(f: Fetcher, h: Handoff, task: asyncio.Task) -> list:
    """Stop, end the open request (a 408), and see the fetcher put STOP and return; the batches
    it sealed on the way out."""
    f.stop()
    f._on_msgs([_status(408, "Request Timeout")])
    sealed = []
    while (item := await _next(h.sealed)) is not STOP:
        sealed.append(item)
    await asyncio.wait_for(task, 10)
    return sealed


def test_a_full_batch_is_sealed_and_the_next_pull_carries_the_pin(caplog):
    async def go():
        f, h, nc, _, _, events = _setup(max_rows=3)
        task = asyncio.create_task(f.run())
        assert await _next(nc.pulls) == {"batch": 3, "expires": EXPIRES_NS, "max_bytes": 1_000_000,
                                         "group": PRIORITY_GROUP}
        msgs = [_msg(1, pin="p-1"), _msg(2), _msg(3)]
        f._on_msgs(msgs[:2])  # two socket chunks make one batch
        f._on_msgs(msgs[2:])
        batch = await _next(h.sealed)
        assert batch.messages == msgs and h.in_hand == [batch]
        assert h.filling is f._batch and h.filling is not batch and not h.filling
        # The first delivery carried the consumer's pin: every request from now on names it.
        assert await _next(nc.pulls) == {"batch": 3, "expires": EXPIRES_NS, "max_bytes": 1_000_000,
                                         "group": PRIORITY_GROUP, "id": "p-1"}
        assert _kinds(events) == ["pull", "seal", "pull"]
        assert await _finish(f, h, task) == []

    with caplog.at_level(logging.INFO, logger="workers.partition.fetcher"):
        asyncio.run(go())
    (pinned,) = [r for r in caplog.records if "pinned" in r.getMessage()]
    assert pinned.getMessage() == "partition events/0 pinned (pin p-1) from consumer sequence 1"
    assert (pinned.pin, pinned.first_consumer_seq, pinned.pipeline, pinned.partition) == ("p-1", 1, "events", 0)


def test_a_request_that_ends_short_is_followed_by_one_for_the_room_left_in_rows_and_bytes():
    async def go():
        f, h, nc, _, _, _ = _setup(max_rows=3, max_bytes=1000)
        task = asyncio.create_task(f.run())
        assert (await _next(nc.pulls))["batch"] == 3
        f._on_msgs([_msg(1, data=b"x" * 100)])
        await _looked(h)
        assert nc.pulls.empty()  # one message of three came: the request is still open
        f._on_msgs([_status(404, "No Messages")])
        assert await _next(nc.pulls) == {"batch": 2, "expires": EXPIRES_NS, "max_bytes": 900, "group": PRIORITY_GROUP}
        assert h.sealed.empty() and len(f._batch) == 1
        (last,) = await _finish(f, h, task)  # a stop seals what it holds
        assert last.messages == [_msg(1, data=b"x" * 100)] and h.in_hand == [last]

    asyncio.run(go())


def test_a_batch_full_by_bytes_is_sealed_while_its_request_still_delivers():
    async def go():
        f, h, nc, _, _, events = _setup(max_rows=10, max_bytes=100)
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)
        f._on_msgs([_msg(1, data=b"x" * 60), _msg(2, data=b"y" * 60)])
        batch = await _next(h.sealed)
        assert [m[2] for m in batch.messages] == [b"x" * 60, b"y" * 60]
        # Eight more may come on the open request: they fill the next batch, no second request meanwhile.
        f._on_msgs([_msg(3)])
        assert not h.wake.is_set()  # seven more may come: nothing to do
        await _looked(h)
        assert _kinds(events) == ["pull", "seal"] and len(f._batch) == 1
        # The request is used up by deliveries (8 in a batch of room 10): wake up and ask for the rest.
        rest = [_msg(i) for i in range(4, 11)]
        f._on_msgs(rest)
        assert h.wake.is_set()
        assert await _next(nc.pulls) == {"batch": 2, "expires": EXPIRES_NS, "max_bytes": 100 - 16,
                                         "group": PRIORITY_GROUP}
        (last,) = await _finish(f, h, task)
        assert last.messages == [_msg(3), *rest]

    asyncio.run(go())


def test_the_fetcher_waits_for_room_in_the_queue_before_its_next_request():
    async def go():
        f, h, nc, _, _, events = _setup(max_rows=1)
        offered = h.sealed.offered
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)
        f._on_msgs([_msg(1)])
        first = await _next(offered)
        await _next(nc.pulls)
        f._on_msgs([_msg(2)])
        second = await _next(offered)  # offered while the first still fills the queue: put() waits
        assert h.in_hand == [first, second] and h.sealed.full()
        assert nc.pulls.empty()  # nor did a request go out before the seal
        assert await _next(h.sealed) is first  # the storer takes the first: room for the second
        assert await _next(nc.pulls) == {"batch": 1, "expires": EXPIRES_NS, "max_bytes": 1_000_000,
                                         "group": PRIORITY_GROUP}
        assert _kinds(events) == ["pull", "seal", "pull", "seal", "pull"]
        assert await _next(h.sealed) is second
        assert await _finish(f, h, task) == []

    asyncio.run(go())


def test_status_replies_end_the_request_and_only_unexpected_conflicts_are_logged(caplog):
    f, h, _, acks, stats, _ = _setup()
    acks.last_seen = 7
    with caplog.at_level(logging.INFO, logger="workers.partition.fetcher"):
        f._on_msgs([_msg(1, pin="p-1")])
        for status, dirty, ends in [
            (_status(100, "Idle Heartbeat"), False, False),
            (_status(404, "No Messages"), False, True),
            (_status(408, "Request Timeout"), False, True),
            (_status(409, "Batch Completed"), False, True),
            (_status(409, "Leadership Change"), False, True),
            (_status(409, "Exceeded MaxAckPending"), True, True),  # expected while acks are held
            (_status(409, "Exceeded MaxAckPending"), False, True),  # logged
        ]:
            f._outstanding, acks.dirty = 5, dirty
            f._on_msgs([status])
            assert f._outstanding == (0 if ends else 5), status
        assert f._pin == "p-1" and stats.pins_lost == 0
        f._outstanding = 5
        f._on_msgs([_status(423, "Nats-Pin-Id mismatch")])
    assert f._outstanding == 0 and f._pin is None and stats.pins_lost == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["pull on events/0 ended: Exceeded MaxAckPending"]
    (unpinned,) = [r for r in caplog.records if "unpinned" in r.getMessage()]
    assert unpinned.getMessage() == (
        "partition events/0 unpinned (pin p-1, lost (Nats-Pin-Id mismatch)) after consumer sequence 7"
    )
    assert (unpinned.pin, unpinned.first_consumer_seq, unpinned.last_consumer_seq) == ("p-1", 1, 7)
    # The next request goes without the lost pin's id.
    asyncio.run(f._request(3, 100))
    assert "id" not in f._nc.pulls.get_nowait()


def test_while_acks_are_held_one_request_at_a_time_each_sealed_when_over_and_reconciled_when_idle():
    async def go():
        f, h, nc, acks, _, events = _setup(max_rows=3, dirty=True)
        task = asyncio.create_task(f.run())
        # Idle from the start: compare with the consumer first; it does not agree, so one request.
        await _next(acks.reconciled)
        assert await _next(nc.pulls) == {"batch": 3, "expires": EXPIRES_NS, "max_bytes": 1_000_000,
                                         "group": PRIORITY_GROUP}
        f._on_msgs([_msg(1), _msg(2)])
        await _looked(h)
        assert h.sealed.empty()  # its request is open: nothing is sealed while acks are held
        f._on_msgs([_status(408, "Request Timeout")])
        batch = await _next(h.sealed)
        h.committing = True  # taken by the storer, as Storer.run does
        assert len(batch) == 2 and h.in_hand == [batch]
        # Not idle while the batch is in the storer's hands: neither reconcile nor request.
        await _looked(h)
        assert _kinds(events) == ["reconcile", "pull", "seal"]
        # The storer is done with it (as Storer.run reports it) and the consumer now agrees.
        acks.on_reconcile = lambda: setattr(acks, "dirty", False)
        h.committing = False
        h.in_hand.remove(batch)
        h.wake.set()
        await _next(acks.reconciled)
        assert await _next(nc.pulls) == {"batch": 3, "expires": EXPIRES_NS, "max_bytes": 1_000_000,
                                         "group": PRIORITY_GROUP}
        assert _kinds(events) == ["reconcile", "pull", "seal", "reconcile", "pull"]
        assert ("keep_held_alive",) in events  # the held messages are kept alive every turn
        assert await _finish(f, h, task) == []

    asyncio.run(go())


def test_a_stop_seals_what_came_once_the_request_is_over_and_hands_the_pin_back(caplog):
    async def go():
        f, h, nc, acks, _, events = _setup(max_rows=3)
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)
        f._on_msgs([_msg(1, pin="p-9")])
        f.stop()
        await _looked(h)
        assert h.sealed.empty()  # the request may still deliver: nothing sealed yet
        f._on_msgs([_msg(2), _status(409, "Batch Completed")])
        batch = await _next(h.sealed)
        assert [m[1] for m in batch.messages] == [_msg(1)[1], _msg(2)[1]]
        assert await _next(h.sealed) is STOP
        await asyncio.wait_for(task, 10)
        acks.last_seen = 2
        before = len(events)
        await f.release_pin()
        assert events[before:] == [
            ("flush",), ("request", "$JS.API.CONSUMER.UNPIN.EVENTS.c", {"group": PRIORITY_GROUP}),
        ]
        assert f._pin is None
        await f.release_pin()  # no pin: nothing to hand back
        assert len(events) == before + 2

    with caplog.at_level(logging.INFO, logger="workers.partition.fetcher"):
        asyncio.run(go())
    (released,) = [r.getMessage() for r in caplog.records if "unpinned" in r.getMessage()]
    assert released == "partition events/0 unpinned (pin p-9, released) after consumer sequence 2"


def test_unanswered_requests_on_a_connected_client_fail_the_partition_but_a_delivering_one_gets_time():
    async def go():
        f, h, nc, _, _, events = _setup(max_rows=3)
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)
        # Deliveries came since the request's deadline was set: it is alive, give it more time.
        f._on_msgs([_msg(1)])
        f._request_deadline = 0.0  # its deadline passes
        await _looked(h)
        assert nc.pulls.empty() and f._request_deadline > 0.0 and not task.done()
        # Now nothing comes any more: each expiry sends a new request, and the third in a row fails.
        for i in range(MAX_UNANSWERED_PULLS):
            f._request_deadline = 0.0
            h.wake.set()
            if i < MAX_UNANSWERED_PULLS - 1:
                assert (await _next(nc.pulls))["batch"] == 2
        with pytest.raises(ConnectionError, match="3 pull requests unanswered on a connected NATS client"):
            await asyncio.wait_for(task, 10)
        assert _kinds(events) == ["pull"] * MAX_UNANSWERED_PULLS

    asyncio.run(go())


def test_acks_held_in_the_middle_of_a_request_keep_its_batch_open_until_the_request_is_over():
    async def go():
        f, h, nc, acks, _, events = _setup(max_rows=3)
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)
        f._on_msgs([_msg(1)])
        acks.dirty = True  # the storer found a gap in the deliveries: acks are held from now on
        await _looked(h)
        assert h.sealed.empty() and _kinds(events) == ["pull"] and ("keep_held_alive",) in events
        f._on_msgs([_status(408, "Request Timeout")])
        batch = await _next(h.sealed)
        h.committing = True  # taken by the storer
        assert batch.messages == [_msg(1)]
        assert await _finish(f, h, task) == []

    asyncio.run(go())


def test_a_deleted_consumer_ends_the_pull_with_what_it_delivered_sealed_for_the_storer(caplog):
    f, h, _, _, _, events = _setup(max_rows=10)

    async def go():
        f._on_msgs([_msg(1), _msg(2)])
        with caplog.at_level(logging.WARNING, logger="workers.partition.fetcher"):
            f._outstanding = 8
            f._on_msgs([_status(409, "Consumer Deleted")])
        # The storer's side takes what is sealed; run() returns by itself, pulling nothing more.
        storer = asyncio.ensure_future(asyncio.gather(h.sealed.get(), h.sealed.get()))
        await f.run()
        await storer

    asyncio.run(go())
    assert f.gone == "its consumer was deleted (409 Consumer Deleted)"
    sealed = [item for kind, item in events if kind == "seal"]
    assert len(sealed) == 2 and sealed[-1] is STOP and len(sealed[0].messages) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "partition events/0: its consumer was deleted (409 Consumer Deleted); storing what it delivered, then "
        "creating it again"
    ]


def test_repeated_503s_ask_whether_the_consumer_still_exists_and_an_election_is_not_a_deletion():
    from nats.js.errors import NotFoundError

    answers = []

    def jetstream(timeout):
        async def consumer_info(stream, consumer):
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return SimpleNamespace(consumer_info=consumer_info)

    for answer, gone in [
        (asyncio.TimeoutError(), None),  # no leader yet: an election, pulls go on
        (NotFoundError(code=404, err_code=10014, description="consumer not found"), "consumer"),
        (NotFoundError(code=404, err_code=10059, description="stream not found"), "stream"),
    ]:
        f, _, nc, _, _, _ = _setup()
        nc.jetstream = jetstream
        answers.append(answer)
        for _ in range(3):
            f._on_msgs([_status(503)])
        assert f._unavailable == 3
        asyncio.run(f._check_consumer(1.0))
        assert (f.gone is not None and gone in f.gone) if gone else f.gone is None
        f._on_msgs([_msg(1)])  # a delivery: the consumer answers again
        assert f._unavailable == 0


def test_a_reconnect_ends_the_pull_at_once_with_what_came_sealed_for_the_storer():
    """The open request went with the old connection: no waiting for its deadline; the runner
    starts both sides again (the storer reads what the consumer holds unacked back from the stream)."""
    f, h, nc, _, _, events = _setup(max_rows=10)

    async def go():
        task = asyncio.create_task(f.run())
        await _next(nc.pulls)  # a request open, its deadline seconds away
        f._on_msgs([_msg(1), _msg(2)])
        f.reconnected()
        storer = asyncio.ensure_future(asyncio.gather(h.sealed.get(), h.sealed.get()))
        await asyncio.wait_for(task, 10)
        await storer

    asyncio.run(go())
    assert f.gone == "a reconnect to NATS"
    sealed = [item for kind, item in events if kind == "seal"]
    assert len(sealed) == 2 and sealed[-1] is STOP and len(sealed[0].messages) == 2
    assert _kinds(events).count("pull") == 1
