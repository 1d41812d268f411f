"""The storing side's retry loop: a step (commit state, DLQ publish, insert, stream read) is
tried until it succeeds, with capped, jittered exponential backoff, and a pause for faults
every batch would share (workers/clickhouse/faults.py sorts them).

With several ClickHouse replicas (`clickhouse.hosts`) the insert itself moves to another replica on a
replica-local failure (workers/clickhouse/replicas.py); the probe then asks whether any replica answers,
and a refusal by a replica that is up (read-only, ZooKeeper trouble) is retried at least every
REPLICA_RETRY_MAX_S.

A step that failed because its server could not be reached does not sit out the backoff:
with the worker's `ServerProbes`, the pause asks every PROBE_S whether the server answers
(ClickHouse: a TCP connect; NATS: the connection is up again) and the step is tried again
the moment it does, however long the outage was.  A NATS step is not sent while the
connection is down (nats-py would buffer it and send it late, beside its retry), and one
whose request went out on a connection that dropped is given up once the connection is
back and no answer came: its reply went with the old connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from workers.clickhouse import faults
from workers.delivery import commits
from workers.observability.telemetry import Telemetry
from workers.partition.handoff import Handoff
from workers.partition.stats import PartitionStats

log = logging.getLogger(__name__)

# Longer than a JetStream leader election (4-9 s measured, docs/operations.md): retries of the
# steps that only talk to JetStream log as warnings until their failure has lasted this long.
JETSTREAM_ELECTION_S = 30.0
_ON_JETSTREAM = ("commit state", "stream read", "consumer info")
# Steps that talk to ClickHouse; every other step talks to NATS.
_ON_CLICKHOUSE = ("insert", "in-doubt check")
# How often a paused step asks whether its server answers again (ClickHouse: a TCP connect;
# NATS: a look at the connection's state, which costs nothing).
PROBE_S = 0.5
NATS_PROBE_S = 0.1
# A replica-local refusal (read-only table, ZooKeeper session trouble: workers/clickhouse/faults.py) is
# answered by a server that is up, so no probe tells when it ends; the insert moved to another replica
# (workers/clickhouse/replicas.py), and it is tried again at least this often.
REPLICA_RETRY_MAX_S = 2.0
# After a reconnect, how long a request sent before the connection dropped may still be answered
# (one that waited in nats-py's buffer goes out on the new connection and is answered at once).
REPLY_GRACE_S = 1.0


@dataclass(frozen=True)
class ServerProbes:
    """How a paused step tells that its server answers again.

    `nats`: the worker's connection (``is_connected``, nats-py's ``stats["reconnects"]``);
    `clickhouse()`: whether a ClickHouse server (any configured replica) accepts a connection now
    (workers/clickhouse/connect.py, ``clickhouse_answers``).
    """

    nats: Any
    clickhouse: Callable[[], Awaitable[bool]]

    def reconnects(self) -> int:
        return self.nats.stats["reconnects"]

    async def nats_answers(self) -> bool:
        return self.nats.is_connected


class Retrying:
    """``await retrying(what, fn, *args, keep_alive=msgs)``: fn(*args) until it succeeds.

    Each attempt counts as the partition's progress.  Between attempts `while_failing(keep_alive)`
    keeps the messages in hand from redelivery (in-progress acks); the fetcher meanwhile
    stops pulling by itself, since the sealed-batch queue stays full (bounded memory).
    A StaleCommitState is not retried: another owner has the partition.  Without `probes`
    every pause is the backoff.
    """

    def __init__(
        self,
        name: str,
        pipeline: str,
        stats: PartitionStats,
        telemetry: Telemetry,
        handoff: Handoff,
        while_failing: Callable[[list[tuple] | None], Awaitable[None]],
        log_extra: dict,
        probes: ServerProbes | None = None,
    ) -> None:
        self.name = name
        self._pipeline = pipeline
        self._stats = stats
        self._telemetry = telemetry
        self._handoff = handoff
        self._while_failing = while_failing
        self._log_extra = log_extra
        self._probes = probes

    async def __call__(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, keep_alive: list[tuple] | None = None
    ) -> Any:
        delay = 0.2
        failing_since = 0.0
        probes = self._probes
        on_nats = probes is not None and what not in _ON_CLICKHOUSE
        while True:
            self._handoff.progress_at = time.monotonic()
            try:
                if on_nats:
                    await self._nats_up(keep_alive)
                    return await self._on_nats(what, fn, args)
                return await fn(*args)
            except Exception as exc:
                if isinstance(exc, commits.StaleCommitState):
                    raise  # another owner, or a server that lost our write: stop (the worker restarts)
                failing_since = failing_since or time.monotonic()
                self._stats.insert_retries += 1
                self._telemetry.retry(what, exc)
                fault = faults.classify(exc)
                # A server that cannot be reached is waited for (probed), not backed off from.
                answers = None
                if fault is not faults.Fault.PIPELINE and probes is not None:
                    if on_nats:
                        answers = probes.nats_answers
                    elif faults.unreachable(exc):
                        answers = probes.clickhouse
                if fault is faults.Fault.PIPELINE:
                    # Every batch would fail alike: pause, slowly, and say why once per try.
                    delay = max(delay, 5.0)
                    log.error(
                        "pipeline %s paused: %s; retrying in %.0fs (nothing is dead-lettered meanwhile)",
                        self._pipeline, faults.describe(exc), delay,
                        extra={**self._log_extra, "fault": fault.value},
                    )
                else:
                    # The commit state and the stream live in JetStream, whose leader elections (a
                    # NATS node lost) fail requests for seconds as a normal matter: an error once longer.
                    election = what in _ON_JETSTREAM and time.monotonic() - failing_since < JETSTREAM_ELECTION_S
                    when = f"in {delay:.1f}s" + ("" if answers is None else " or as soon as the server answers again")
                    log.log(
                        logging.WARNING if election else logging.ERROR,
                        "%s for %s failed, retrying %s: %s", what, self.name, when, faults.describe(exc),
                        extra={**self._log_extra, "fault": fault.value},
                    )
                await self._while_failing(keep_alive)
                if answers is None and what in _ON_CLICKHOUSE and faults.replica_local(exc):
                    delay = min(delay, REPLICA_RETRY_MAX_S)
                if answers is None:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                else:
                    every = NATS_PROBE_S if on_nats else PROBE_S
                    delay = await self._paused(answers, every, delay, keep_alive)
                delay = min(delay * 2, 30.0)

    async def _paused(
        self, answers: Callable[[], Awaitable[bool]], every: float, delay: float, keep_alive: list[tuple] | None
    ) -> float:
        """Until the server, having not answered, answers again (asked `every` seconds); if it answers
        all along, for `delay` (the backoff, jittered).  The in-progress acks go out at the backoff's
        pace, as between attempts.  Returns the backoff reached."""
        start = keep_alive_at = time.monotonic()
        backoff = delay * random.uniform(0.8, 1.2)
        silent = False
        while True:
            await asyncio.sleep(min(every, backoff))
            now = time.monotonic()
            self._handoff.progress_at = now  # probing is the partition's progress while the server is away
            if await answers():
                if silent or now - start >= backoff:
                    return delay
            else:
                silent = True
            if now - keep_alive_at >= delay:
                keep_alive_at = now
                delay = min(delay * 2, 30.0)
                await self._while_failing(keep_alive)

    async def _nats_up(self, keep_alive: list[tuple] | None) -> None:
        """Wait while the NATS connection is down (nats-py reconnects by itself)."""
        if not self._probes.nats.is_connected:
            await self._paused(self._probes.nats_answers, NATS_PROBE_S, 0.2, keep_alive)

    async def _on_nats(self, what: str, fn: Callable[..., Awaitable[Any]], args: tuple) -> Any:
        """fn(*args), given up (ConnectionError) when the connection it was sent on dropped and the
        new one brought no answer within REPLY_GRACE_S."""
        probes = self._probes
        reconnects = probes.reconnects()
        attempt = asyncio.ensure_future(fn(*args))
        back_at = 0.0
        try:
            while True:
                done, _ = await asyncio.wait((attempt,), timeout=NATS_PROBE_S)
                if done:
                    return attempt.result()
                if probes.reconnects() != reconnects and probes.nats.is_connected:
                    back_at = back_at or time.monotonic()
                    if time.monotonic() - back_at >= REPLY_GRACE_S:
                        raise ConnectionError(f"the NATS connection dropped with the {what} request unanswered")
        finally:
            if not attempt.done():
                attempt.cancel()
