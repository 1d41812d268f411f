"""bench/server_floor.py against the session's real nats-server: every layout delivers each
message exactly once to the minimal client and is left fully acked. (Its CPU figures are
the tool's output, not asserted.)"""

from __future__ import annotations

import asyncio

import pytest

from bench import server_floor

# A real nats-server, like tests/integration/.
pytestmark = pytest.mark.integration


def test_every_layout_delivers_each_message_once_and_acks_it(nats_server, nats_url):
    messages, partitions = 3_000, 4
    results = asyncio.run(server_floor.measure(messages, partitions, keys=16, payload_bytes=200, rounds=1,
                                               url=nats_url, pid=nats_server.pid))
    assert [r.layout for r in results] == [layout.replace("P", str(partitions)) for layout in server_floor.LAYOUTS]
    for r, consumers in zip(results, (partitions, partitions, 1), strict=False):
        assert r.messages == messages, r
        assert r.pending_after == 0, r
        assert r.acks >= consumers, r  # every consumer was pulled from and acked
