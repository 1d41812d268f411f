"""supervisor.dlq_tool: the inverse of the partition transform, and which headers a replay keeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.dlq_tool import original_subject, replay_headers
from workers.topology import partition_filter

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@given(
    pattern=st.lists(st.one_of(token, st.just("*")), min_size=1, max_size=5).filter(lambda t: "*" in t),
    keys=st.lists(token, min_size=5, max_size=5),
    partition=st.integers(0, 1023),
)
def test_original_subject_inverts_the_transform(pattern, keys, partition):
    pattern_subject = ".".join(pattern)
    it = iter(keys)
    # What the stream stores: the partition filter with each '*' filled by a key token.
    stored = ".".join(next(it) if t == "*" else t for t in partition_filter(pattern_subject, partition).split("."))
    it = iter(keys)
    published = ".".join(next(it) if t == "*" else t for t in pattern)
    assert original_subject(pattern_subject, stored) == published


@pytest.mark.parametrize(
    ("pattern", "stored"),
    [
        ("events.*", "events.user42"),  # no partition token
        ("events.*", "events.x.user42"),  # partition token not a number
        ("events.*", "orders.3.user42"),  # another prefix
        ("events.*.v1", "events.3.user42.v2"),
        ("events.*", ""),
    ],
)
def test_original_subject_rejects_foreign_subjects(pattern, stored):
    with pytest.raises(ValueError, match="not a partitioned subject"):
        original_subject(pattern, stored)


def test_replay_keeps_the_producers_headers_only():
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Tenant": "acme",
        "Nats-Msg-Id": "evt-1",
        "Jetsink-Reason": "invalid_json",
        "jetsink-error": "lower case too",
        "Nats-Expected-Stream": "EVENTS_DLQ",
        "Nats-Expected-Last-Sequence": "41",
    }
    assert replay_headers(headers) == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Tenant": "acme",
        "Nats-Msg-Id": "evt-1",
    }
    assert replay_headers(None) == {}


def test_replay_restores_the_producers_msg_id_not_the_dlq_one():
    from workers.nats.dlq import DeadLetter

    def letter(original):
        letter = DeadLetter(b"{", "ev.0.k", "EVENTS", 42, "invalid_json", "bad", "p", 0, original_headers=original)
        return letter.headers()

    with_id = letter({"Nats-Msg-Id": "evt-1", "X-Tenant": "acme"})
    assert with_id["Nats-Msg-Id"] == "EVENTS:42"  # what the DLQ stream de-duplicates by
    assert replay_headers(with_id) == {"Nats-Msg-Id": "evt-1", "X-Tenant": "acme"}
    assert replay_headers(letter({"X-Tenant": "acme"})) == {"X-Tenant": "acme"}
