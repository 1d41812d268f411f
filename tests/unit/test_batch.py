"""workers/partition/batch.py: a batch closes on rows, bytes or age."""

import pytest

from workers.partition.batch import Batch


def _msg(data):
    """A delivery as workers/nats/wire.py hands it over: (subject, reply, data, headers)."""
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
