"""workers/nats/dlq.py: dead-letter headers keep the originals and flatten errors."""

from workers.nats.dlq import DeadLetter


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
