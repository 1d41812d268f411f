"""Parse + map of a batch of raw deliveries: every message ends as a row or a dead letter, never both."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config import parse_config
from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
from workers.partition.prepare import PartitionTarget, prepare

PIPELINE = {
    "name": "events",
    "stream": "EVENTS",
    "subject": "events.*",
    "partitions": 1,
    "table": "t",
    "max_deliver": 3,
}
MAPPER = compile_mapper(
    "t", [TableColumn("id", "String"), TableColumn("n", "UInt8")], (), ServerFeatures.from_version((18, 16))
)

# What a message is: fine, bad JSON, a value out of range, or on its last allowed delivery.
_kind = st.sampled_from(["ok", "json", "range", "last"])


def _msg(i: int, kind: str) -> tuple:
    delivered = 3 if kind == "last" else 1
    body = {"json": b"{nope", "range": b'{"id": "x%d", "n": 300}' % i}.get(kind, b'{"id": "x%d", "n": 7}' % i)
    headers = (
        b"NATS/1.0\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n" if i % 2 else None
    )
    return (
        b"events.0.k%d" % i,
        b"$JS.ACK.EVENTS.c.%d.%d.%d.1700000000000000000.0" % (delivered, 100 + i, i + 1),
        body,
        headers,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(_kind, max_size=30))
def test_every_message_is_a_row_or_a_dead_letter(kinds):
    config = parse_config({"pipelines": [PIPELINE]}, Path("/tmp"))
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
    msgs = [_msg(i, k) for i, k in enumerate(kinds)]
    p = prepare(msgs, MAPPER, target)
    ok = [i for i, k in enumerate(kinds) if k == "ok"]
    assert p.row_msgs == ok and p.rows == len(ok)
    assert p.columns == [[f"x{i}" for i in ok], [7] * len(ok)]  # no valid row: two empty columns
    reasons = {d.stream_seq - 100: d.reason for d in p.dead}
    assert reasons == {
        i: {"json": "invalid_json", "range": "out_of_range", "last": "max_deliver"}[k]
        for i, k in enumerate(kinds)
        if k != "ok"
    }
    for d in p.dead:
        i = d.stream_seq - 100
        assert d.data == msgs[i][2] and d.subject == f"events.0.k{i}" and d.worker == 1
        assert (d.traceparent is not None) == bool(i % 2)
    # The ack decision is told whether any message was a redelivery (workers/delivery/acks.py).
    assert p.redelivered == ("last" in kinds)


class _Inboxes:
    """All a Fetcher asks of its NATS client before it starts: an inbox name."""

    def new_inbox(self) -> str:
        return "_INBOX.test"


def _fetcher(target):
    from workers.partition.fetcher import Fetcher
    from workers.partition.handoff import Handoff
    from workers.partition.stats import PartitionStats

    return Fetcher(_Inboxes(), target, Handoff(), acks=None, stats=PartitionStats(), log_extra={})


def test_intake_marks_a_batch_that_holds_a_redelivery_and_prepare_then_checks_each_message():
    """A batch is marked at intake, chunk by chunk, when any delivery is not a first one; unmarked,
    prepare skips its own check (workers/partition/writer.py passes first_deliveries=not batch.redelivered),
    so a mark missed here would let a message on its last delivery through undead-lettered."""
    config = parse_config({"pipelines": [PIPELINE]}, Path("/tmp"))
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
    status = (b"_INBOX.test", b"", b"", b"NATS/1.0 100 Idle Heartbeat\r\n\r\n")
    fetcher = _fetcher(target)
    fetcher._on_msgs([_msg(0, "ok"), status, _msg(1, "ok")])  # a heartbeat among first deliveries
    fetcher._on_msgs([_msg(2, "ok"), _msg(3, "ok")])  # the fast path: one startswith pass
    batch = fetcher._batch
    assert len(batch) == 4 and not batch.redelivered
    p = prepare(batch.messages, MAPPER, target, first_deliveries=not batch.redelivered)
    assert p.rows == 4 and not p.dead and not p.redelivered

    fetcher._on_msgs([_msg(4, "ok"), _msg(5, "last")])  # a third delivery (max_deliver 3) in a later chunk
    assert batch.redelivered
    p = prepare(batch.messages, MAPPER, target, first_deliveries=not batch.redelivered)
    assert [d.reason for d in p.dead] == ["max_deliver"] and p.redelivered

    # A fetcher whose very first chunk starts with a redelivery still learns the first-delivery prefix.
    other = _fetcher(target)
    other._on_msgs([_msg(6, "last"), _msg(7, "ok")])
    assert other._batch.redelivered


def _as_whole(p) -> tuple:
    return (p.columns, p.rows, p.row_msgs, [(d.reason, d.stream_seq, d.error) for d in p.dead], p.redelivered,
            p.new_keys)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["ok", "json", "range", "last", "newkey"]), max_size=30), st.integers(1, 8))
def test_a_batch_prepared_in_slices_is_the_batch_prepared_whole(kinds, chunk):
    """prepare() parses and maps CHUNK messages at a time (cache locality); the result is the same
    columns, rows, dead letters (in the same order) and flags as one pass over the whole batch."""
    import workers.partition.prepare as prep

    config = parse_config({"pipelines": [PIPELINE]}, Path("/tmp"))
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
    msgs = [_msg(i, k) if k != "newkey" else (*_msg(i, "ok")[:2], b'{"id": "y%d", "n": 1, "new": %d}' % (i, i), None)
            for i, k in enumerate(kinds)]
    saved = prep.CHUNK
    try:
        prep.CHUNK = 10_000
        whole = _as_whole(prepare(msgs, MAPPER, target))
        prep.CHUNK = chunk
        sliced = _as_whole(prepare(msgs, MAPPER, target))
    finally:
        prep.CHUNK = saved
    assert sliced == whole
    assert whole[5] == ({"new"} if "newkey" in kinds else set())


def test_messages_that_are_json_only_together_are_dead_lettered_each():
    """_loads_all parses a slice as one array: three messages that are not JSON by themselves but make
    three objects when joined with commas (the first is two objects, the last two halves of one) must
    not become three rows of somebody else's values; each is dead-lettered as invalid JSON."""
    import orjson

    config = parse_config({"pipelines": [PIPELINE]}, Path("/tmp"))
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=1)
    bodies = [b'{"id": "a", "n": 1}, {"id": "b", "n": 2}', b'{"id": "c", "n": 3, "x": [0', b"1]}"]
    assert [d["id"] for d in orjson.loads(b"[%b]" % b",".join(bodies))] == ["a", "b", "c"]  # the trap
    msgs = [(*_msg(i, "ok")[:2], body, None) for i, body in enumerate(bodies)]
    p = prepare(msgs, MAPPER, target)
    assert p.rows == 0 and [(d.reason, d.data) for d in p.dead] == [("invalid_json", b) for b in bodies]


_FRAGMENT = st.sampled_from(['{"id": "x", "n": 1}', "{", "}", "[", "]", '"', '"a"', ":", ",", "1", " ", "null"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_FRAGMENT, max_size=6).map("".join), max_size=8))
def test_a_slice_parses_as_its_messages_one_by_one(texts):
    """One orjson call for a slice gives exactly what one call per message gives: the same values, or
    an error when any message is not JSON by itself (prepare then finds which, one by one)."""
    import orjson
    import pytest

    from workers.partition.prepare import _loads_all

    msgs = [(b"s", b"r", t.encode(), None) for t in texts]
    try:
        expected = [orjson.loads(m[2]) for m in msgs]
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            _loads_all(msgs)
    else:
        assert _loads_all(msgs) == expected
