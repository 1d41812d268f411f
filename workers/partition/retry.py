"""The storing side's retry loop: a step (commit state, DLQ publish, insert, stream read) is
tried until it succeeds, with capped, jittered exponential backoff, and a pause for faults
every batch would share (workers/clickhouse/faults.py sorts them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
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
_ON_JETSTREAM = ("commit state", "stream read")


class Retrying:
    """``await retrying(what, fn, *args, keep_alive=msgs)``: fn(*args) until it succeeds.

    Each attempt counts as the partition's progress.  Between attempts `while_failing(keep_alive)`
    keeps the messages in hand from redelivery (in-progress acks); the fetcher meanwhile
    stops pulling by itself, since the sealed-batch queue stays full (bounded memory).
    A StaleCommitState is not retried: another owner has the partition.
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
    ) -> None:
        self.name = name
        self._pipeline = pipeline
        self._stats = stats
        self._telemetry = telemetry
        self._handoff = handoff
        self._while_failing = while_failing
        self._log_extra = log_extra

    async def __call__(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, keep_alive: list[tuple] | None = None
    ) -> Any:
        delay = 0.2
        failing_since = 0.0
        while True:
            self._handoff.progress_at = time.monotonic()
            try:
                return await fn(*args)
            except Exception as exc:
                if isinstance(exc, commits.StaleCommitState):
                    raise  # another owner, or a server that lost our write: stop (the worker restarts)
                failing_since = failing_since or time.monotonic()
                self._stats.insert_retries += 1
                self._telemetry.retry(what, exc)
                fault = faults.classify(exc)
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
                    log.log(
                        logging.WARNING if election else logging.ERROR,
                        "%s for %s failed, retrying in %.1fs: %s", what, self.name, delay, faults.describe(exc),
                        extra={**self._log_extra, "fault": fault.value},
                    )
                await self._while_failing(keep_alive)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)
