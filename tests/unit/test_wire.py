"""The bulk protocol reader: same protocol as nats-py's parser, routed messages in bulk, order kept."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import message
from workers.nats import wire


class _Client:
    """Records what the parser hands to nats-py, in one log with the routed deliveries."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.stats = {"in_msgs": 0}

    async def _process_msg(self, sid, subject, reply, data, headers):
        self.log.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self):
        self.log.append(("ping",))

    async def _process_pong(self):
        self.log.append(("pong",))

    async def _process_err(self, text):
        self.log.append(("err", text))

    async def _process_info(self, info):
        self.log.append(("info", info))


def _encode(item) -> bytes:
    kind = item[0]
    if kind == "msg":
        _, sid, subject, reply, data, headers = item
        parts = [subject, str(sid).encode()] + ([reply] if reply else [])
        if headers is None:
            return b"MSG " + b" ".join(parts) + b" %d\r\n" % len(data) + data + b"\r\n"
        return (
            b"HMSG "
            + b" ".join(parts)
            + b" %d %d\r\n" % (len(headers), len(headers) + len(data))
            + headers
            + data
            + b"\r\n"
        )
    return {
        "ping": b"PING\r\n",
        "pong": b"PONG\r\n",
        "ok": b"+OK\r\n",
        "err": b"-ERR 'Stale Connection'\r\n",
        "info": b'INFO {"server_id":"x","max_payload":1048576}\r\n',
    }[kind]


_expected_other = {"err": ("err", "'stale connection'"), "info": ("info", {"server_id": "x", "max_payload": 1048576})}

_payload = st.binary(max_size=300)
_headers = st.one_of(
    st.none(), st.just(b"NATS/1.0\r\nNats-Msg-Id: a1\r\n\r\n"), st.just(b"NATS/1.0 408 Request Timeout\r\n\r\n")
)
_message = st.tuples(
    st.just("msg"), st.sampled_from([1, 2, 7]), st.sampled_from([b"_INBOX.a", b"events.3.k1"]),
    st.sampled_from([b"", b"$JS.ACK.EVENTS.c.1.5.5.1700000000000000000.0"]), _payload, _headers,
)
_item = st.one_of(_message, st.sampled_from([("ping",), ("pong",), ("ok",), ("err",), ("info",)]))


def _segments(events: list) -> list:
    """Events cut at each one nats-py handled; within a cut, routed messages grouped by
    route (stable). Order is promised per route and against everything else on the wire,
    not between two routes of the same chunk."""
    out: list = [[]]
    for e in events:
        if e[0] == "routed":
            out[-1].append(e)
        else:
            out.append([e])
    return [sorted(seg, key=lambda e: (e[0] != "routed", e[1] if e[0] == "routed" else 0)) for seg in out]


@settings(max_examples=300, deadline=None)
@given(st.lists(_item, max_size=40), st.lists(st.integers(1, 200), max_size=30))
def test_any_chunking_gives_the_same_events_in_order(items, cuts):
    """Routed sids (1 and 7) arrive as raw tuples via the route, others through nats-py, all in wire order."""
    log: list = []
    nc = _Client(log)
    parser = wire.BulkParser(nc)
    parser.routes[b"1"] = lambda msgs: log.extend(("routed", 1) + m for m in msgs)
    parser.routes[b"7"] = lambda msgs: log.extend(("routed", 7) + m for m in msgs)
    data = b"".join(_encode(i) for i in items)
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(data[pos : pos + c])
        pos += c
    chunks.append(data[pos:])

    async def feed():
        for c in chunks:
            await parser.parse(c)

    asyncio.run(feed())
    expected = []
    for item in items:
        if item[0] == "msg":
            _, sid, subject, reply, payload, headers = item
            expected.append(
                ("routed", sid, subject, reply, payload, headers)
                if sid in (1, 7)
                else ("msg", sid, subject, reply, payload, headers)
            )
        elif item[0] != "ok":
            expected.append(_expected_other.get(item[0], item))
    assert _segments(log) == _segments(expected)
    assert not parser.buf
    assert nc.stats["in_msgs"] == sum(1 for e in expected if e[0] == "routed")


def test_a_big_message_arriving_in_small_reads_is_not_rescanned_each_time():
    log: list = []
    parser = wire.BulkParser(_Client(log))
    parser.routes[b"1"] = lambda msgs: log.extend(msgs)
    body = b"x" * 100_000
    data = b"MSG s 1 r %d\r\n" % len(body) + body + b"\r\n"

    async def feed():
        for i in range(0, len(data), 1000):
            await parser.parse(data[i : i + 1000])

    asyncio.run(feed())
    assert log == [(b"s", b"r", body, None)]


def test_garbage_is_a_protocol_error():
    from nats import errors

    parser = wire.BulkParser(_Client([]))
    with pytest.raises(errors.ProtocolError):
        asyncio.run(parser.parse(b"WHAT is this\r\n"))
    with pytest.raises(errors.ProtocolError):
        asyncio.run(wire.BulkParser(_Client([])).parse(b"MSG s 1 notanumber\r\n"))
    # A JetStream delivery's sizes (an HMSG with a reply subject: the reader's fastest path).
    for line in (b"HMSG s 1 r x 5\r\n", b"HMSG s 1 r 2 five\r\n", b"HMSG s 1 r -3 5\r\n", b"HMSG s 1 r 3 -5\r\n"):
        parser = wire.BulkParser(_Client([]))
        parser.routes[b"1"] = lambda msgs: None
        asyncio.run(parser.parse(b"HMSG s 1 r 2 3\r\n..x\r\n"))  # a good one first: its sizes are known
        with pytest.raises(errors.ProtocolError):
            asyncio.run(parser.parse(line + b"NATS/1.0\r\n\r\n\r\n"))


def test_a_failing_route_does_not_stop_the_reader():
    log: list = []
    parser = wire.BulkParser(_Client(log))

    def boom(msgs):
        raise RuntimeError("bug")

    parser.routes[b"1"] = boom
    asyncio.run(parser.parse(b"MSG s 1 2\r\nhi\r\nPING\r\n"))
    assert log == [("ping",)]


def test_pubs_builds_one_command_per_subject():
    assert wire.pubs([b"a.1", b"b.2"], b"+ACK") == b"PUB a.1 4\r\n+ACK\r\nPUB b.2 4\r\n+ACK\r\n"
    assert wire.pubs([], b"+ACK") == b""


def test_parse_headers_with_and_without_inline_status():
    assert message.parse_headers(b"NATS/1.0\r\nNats-Msg-Id: 7\r\ntraceparent: 00-ab-cd-01\r\n\r\n") == {
        "Nats-Msg-Id": "7",
        "traceparent": "00-ab-cd-01",
    }
    assert message.parse_headers(b"NATS/1.0 409 Exceeded MaxAckPending\r\n\r\n") == {
        "Status": "409",
        "Description": "Exceeded MaxAckPending",
    }
    assert message.parse_headers(b"NATS/1.0 408\r\n\r\n") == {"Status": "408"}
    assert message.parse_headers(None) == {}


def test_route_needs_a_client_made_for_it():
    class Plain:
        _ps = object()

    class Sub:
        _id = 3

    with pytest.raises(TypeError, match="new_client"):
        wire.route(Plain(), Sub(), print)
    nc = wire.new_client()
    wire.route(nc, Sub(), print)
    assert nc._ps.routes == {b"3": print}
    wire.unroute(nc, Sub())
    assert nc._ps.routes == {}
