"""The retry loop with server probes (workers/partition/retry.py): a step that failed because its
server was away is tried again the moment the server answers, not after the backoff; a NATS step
waits for the connection and gives up a request the dropped connection took with it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from clickhouse_driver import errors as ch

from workers.observability.telemetry import Telemetry
from workers.partition import retry
from workers.partition.handoff import Handoff
from workers.partition.retry import Retrying, ServerProbes
from workers.partition.stats import PartitionStats


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch):
    monkeypatch.setattr(retry, "PROBE_S", 0.001)
    monkeypatch.setattr(retry, "NATS_PROBE_S", 0.001)
    monkeypatch.setattr(retry, "REPLY_GRACE_S", 0.01)


class _Nats:
    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}


class _ClickHouse:
    """A probe that says no `silent` times, then yes."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.probes = 0

    async def __call__(self) -> bool:
        self.probes += 1
        return self.probes > self.silent


def _retrying(nats: _Nats, clickhouse: _ClickHouse) -> tuple[Retrying, PartitionStats, list]:
    stats, kept = PartitionStats(), []

    async def while_failing(keep_alive):
        kept.append(keep_alive)

    r = Retrying("events/0", "events", stats, Telemetry(), Handoff(), while_failing, {}, ServerProbes(nats, clickhouse))
    return r, stats, kept


def _failing(*errors):
    calls = []

    async def step():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return step, calls


def test_an_insert_the_server_was_away_for_is_tried_again_once_it_answers_however_long():
    clickhouse = _ClickHouse(silent=5000)  # far longer than any backoff: the probe decides, not the backoff
    r, stats, kept = _retrying(_Nats(), clickhouse)
    step, calls = _failing(ch.NetworkError("Connection refused"))
    assert asyncio.run(r("insert", step, keep_alive=[("m",)])) == "done"
    assert len(calls) == 2  # one failed attempt, then the one after the server answered: none while it was away
    assert clickhouse.probes == 5001
    assert stats.insert_retries == 1
    assert kept and kept[0] == [("m",)]  # in-progress acks while paused


def test_an_insert_failing_while_the_server_answers_keeps_its_backoff():
    clickhouse = _ClickHouse(silent=0)
    r, _, _ = _retrying(_Nats(), clickhouse)
    step, calls = _failing(ch.SocketTimeoutError("timed out"))
    assert asyncio.run(r("insert", step)) == "done"
    assert len(calls) == 2
    assert clickhouse.probes > 10  # it waited out the backoff (0.2 s at 0.001 s a probe), probing meanwhile


def test_a_server_error_is_not_probed(monkeypatch):
    clickhouse = _ClickHouse(silent=0)
    r, _, _ = _retrying(_Nats(), clickhouse)
    step, calls = _failing(ch.ServerException("Too many parts", code=252))
    slept = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(sleep=sleep))
    assert asyncio.run(r("insert", step)) == "done"
    assert len(calls) == 2 and clickhouse.probes == 0 and len(slept) == 1  # the backoff, as before


def test_a_nats_step_waits_for_the_connection_before_it_is_sent():
    nats = _Nats()
    nats.is_connected = False
    r, _, _ = _retrying(nats, _ClickHouse(0))
    step, calls = _failing()

    async def go():
        task = asyncio.ensure_future(r("commit state", step))
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert calls == []  # nothing sent (nor buffered) while the connection is down
        nats.is_connected = True
        return await task

    assert asyncio.run(go()) == "done"
    assert len(calls) == 1


def test_a_request_the_dropped_connection_took_is_given_up_once_connected_again_and_sent_again():
    nats = _Nats()
    r, stats, _ = _retrying(nats, _ClickHouse(0))
    sent = []

    async def step():
        sent.append(1)
        if len(sent) == 1:
            # The server is killed with the request in it: the connection drops and comes back,
            # and no reply ever comes.
            nats.stats["reconnects"] += 1
            await asyncio.Event().wait()
        return "done"

    assert asyncio.run(r("commit state", step)) == "done"
    assert len(sent) == 2 and stats.insert_retries == 1
