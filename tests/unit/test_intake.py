"""workers/nats/intake.py: ack subjects, pull request bodies and the redelivery count."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import message
from workers.nats import intake


def test_ack_subject_v1_and_v2():
    v1 = message.parse_ack_subject("$JS.ACK.EVENTS.jetsink_events_3.2.1042.17.1764150000123456789.99")
    assert (v1.stream_seq, v1.delivered, v1.timestamp_ns, v1.pending) == (1042, 2, 1764150000123456789, 99)
    v2 = message.parse_ack_subject("$JS.ACK.hub.ACCHASH.EVENTS.c.1.7.7.1764150000000000000.0.xyz")
    assert (v2.stream_seq, v2.delivered, v2.pending) == (7, 1, 0)
    with pytest.raises(ValueError):
        message.parse_ack_subject("_INBOX.abc")


def test_pull_request_body():
    body = orjson.loads(intake.pull_request(500, 1.5, 4096))
    assert body == {"batch": 500, "expires": 1_500_000_000, "max_bytes": 4096}
    assert "max_bytes" not in orjson.loads(intake.pull_request(1, 1.0))


@given(st.integers(1, 10_000), st.booleans())
def test_redelivered_agrees_with_the_full_decode(delivered, v2):
    reply = (
        f"$JS.ACK.hub.HASH.EVENTS.c.{delivered}.42.41.1764150000000000000.7.tok"
        if v2 else f"$JS.ACK.EVENTS.c.{delivered}.42.41.1764150000000000000.7"
    )
    full = message.parse_ack_subject(reply).delivered
    assert message.redelivered(reply) == (0 if full == 1 else full)
