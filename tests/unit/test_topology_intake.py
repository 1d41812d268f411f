import re

import orjson
import pytest
from hypothesis import given, strategies as st

from workers.topology import consumer_name, partition_filter, stored_subjects, transform_destination
from workers import intake
from workers.batch import Batch
from workers.dlq import DeadLetter


def test_transform_and_filter_for_one_wildcard():
    assert transform_destination("events.*", 8) == "events.{{partition(8,1)}}.{{wildcard(1)}}"
    assert partition_filter("events.*", 3) == "events.3.*"
    assert stored_subjects("events.*") == "events.*.*"


def test_transform_keeps_literal_tokens_between_wildcards():
    dest = transform_destination("app.*.orders.*", 16)
    assert dest == "app.{{partition(16,1,2)}}.{{wildcard(1)}}.orders.{{wildcard(2)}}"
    assert partition_filter("app.*.orders.*", 15) == "app.15.*.orders.*"


@given(st.integers(1, 1024), st.data())
def test_filter_matches_the_transformed_subject(partitions, data):
    # Apply the transform by hand: a filter of partition p must match exactly the
    # subjects the stream stores for p.
    key = data.draw(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
    p = data.draw(st.integers(0, partitions - 1))
    dest = transform_destination("events.*", partitions)
    stored = re.sub(r"\{\{partition\([^)]*\)\}\}", str(p), dest).replace("{{wildcard(1)}}", key)
    pattern = partition_filter("events.*", p).replace(".", r"\.").replace("*", r"[^.]+")
    assert re.fullmatch(pattern, stored)
    other = partition_filter("events.*", (p + 1) % partitions).replace(".", r"\.").replace("*", r"[^.]+")
    assert partitions == 1 or not re.fullmatch(other, stored)


def test_consumer_names_are_per_pipeline_and_partition():
    assert consumer_name("events", 0) != consumer_name("events", 1) != consumer_name("other", 1)


def test_ack_subject_v1_and_v2():
    v1 = intake.parse_ack_subject("$JS.ACK.EVENTS.jetsink_events_3.2.1042.17.1764150000123456789.99")
    assert (v1.stream_seq, v1.delivered, v1.timestamp_ns, v1.pending) == (1042, 2, 1764150000123456789, 99)
    v2 = intake.parse_ack_subject("$JS.ACK.hub.ACCHASH.EVENTS.c.1.7.7.1764150000000000000.0.xyz")
    assert (v2.stream_seq, v2.delivered, v2.pending) == (7, 1, 0)
    with pytest.raises(ValueError):
        intake.parse_ack_subject("_INBOX.abc")


def test_pull_request_body():
    body = orjson.loads(intake.pull_request(500, 1.5, 4096))
    assert body == {"batch": 500, "expires": 1_500_000_000, "max_bytes": 4096}
    assert "max_bytes" not in orjson.loads(intake.pull_request(1, 1.0))


def _msg(data):
    """A delivery as workers/wire.py hands it over: (subject, reply, data, headers)."""
    return (b"events.0.k", b"$JS.ACK.EVENTS.c.1.1.1.1.0", data, None)


def test_batch_limits_rows_bytes_age():
    b = Batch(max_rows=3, max_bytes=10, max_wait_s=2.0)
    assert b.deadline() is None and not b.full and b.room() == 3
    b.extend([_msg(b"abc")])
    assert b.deadline() == pytest.approx(b.opened_at + 2.0)
    opened = b.opened_at
    b.extend([_msg(b"abc")])
    assert not b.full and b.room() == 1 and b.opened_at == opened
    b.extend([_msg(b"abcd")])
    assert b.full and b.nbytes == 10 and len(b) == 3
    by_bytes = Batch(max_rows=100, max_bytes=5, max_wait_s=1.0)
    by_bytes.extend([_msg(b"12"), _msg(b"3456")])
    assert by_bytes.full


def test_dead_letter_headers_keep_originals_and_flatten_errors():
    dl = DeadLetter(
        data=b"{", subject="events.3.k1", stream="EVENTS", stream_seq=42, reason="invalid_json",
        error="bad\r\nthing " + "x" * 5000, pipeline="events", worker=1,
        original_headers={"traceparent": "00-a-b-01", "X-Mine": "1"}, traceparent="00-a-b-01",
    )
    h = dl.headers()
    assert h["X-Mine"] == "1" and h["traceparent"] == "00-a-b-01"
    assert h["Jetsink-Reason"] == "invalid_json" and h["Jetsink-Stream-Seq"] == "42"
    assert "\n" not in h["Jetsink-Error"] and "\r" not in h["Jetsink-Error"]
    assert len(h["Jetsink-Error"]) <= 1000


@given(st.integers(1, 10_000), st.booleans())
def test_redelivered_agrees_with_the_full_decode(delivered, v2):
    reply = (
        f"$JS.ACK.hub.HASH.EVENTS.c.{delivered}.42.41.1764150000000000000.7.tok"
        if v2 else f"$JS.ACK.EVENTS.c.{delivered}.42.41.1764150000000000000.7"
    )
    full = intake.parse_ack_subject(reply).delivered
    assert intake.redelivered(reply) == (0 if full == 1 else full)
