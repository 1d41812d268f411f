"""One owned partition: pull -> batch -> map -> insert -> ack, with fetching never waiting on an insert.

Two tasks per partition, each the loop of one side.  The pull task is the fetcher's
(workers/partition/fetcher.py): it keeps a pull request open on the durable consumer and seals
batches (by rows, bytes or age).  The commit task is the storer's (workers/partition/storer.py):
it maps a sealed batch, dead-letters what cannot be mapped, inserts the rest into ClickHouse
and only then acks.  They meet in one hand-off (workers/partition/handoff.py): a queue of one
sealed batch, and the storer's answers about held acks.  At most one batch is being committed
and one waits, so memory is bounded by ~3 x max_rows messages and the consumer's
max_ack_pending is sized to match.

The runner owns both sides and is all the worker sees of a partition: start, stop, stats and
the health checks (failed, stalled_for, stacks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Sequence

from workers.clickhouse import indoubt
from workers.delivery import commits
from workers.observability.telemetry import Telemetry
from workers.partition.fetcher import Fetcher
from workers.partition.handoff import Handoff
from workers.partition.prepare import PartitionTarget
from workers.partition.retry import ServerProbes
from workers.partition.stats import PartitionStats
from workers.partition.storer import Storer
from workers.partition.writer import WriteTable

log = logging.getLogger(__name__)


class PartitionRunner:
    """Consumes one partition until stopped; stop() flushes, acks and returns."""

    def __init__(
        self,
        nc: Any,
        target: PartitionTarget,
        tables: Sequence[WriteTable],
        run_in_thread: Callable[..., Awaitable[Any]],
        telemetry: Telemetry | None = None,
        clickhouse: indoubt.QueryLog | None = None,
        tokens: bool = False,
        exit_hook: commits.ExitHook | None = None,
        probes: ServerProbes | None = None,
    ) -> None:
        self.target = target
        self.stats = PartitionStats()
        log_extra = {"pipeline": target.pipeline.name, "partition": target.index}  # on every log line
        self._log_extra = log_extra

        def sides() -> tuple[Handoff, Storer, Fetcher]:
            handoff = Handoff()
            storer = Storer(
                nc, target, tables, run_in_thread, telemetry or Telemetry(), handoff, self.stats, log_extra,
                clickhouse, tokens, exit_hook, probes,
            )
            return handoff, storer, Fetcher(nc, target, handoff, storer, self.stats, log_extra)

        # Both sides are made again when the consumer is found gone (see _pull).
        self._sides = sides
        self._handoff, self._storer, self._fetcher = sides()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._keepalive: asyncio.Task | None = None

    async def start(self) -> None:
        await self._storer.start()
        await self._fetcher.start()
        self._tasks = [
            asyncio.create_task(self._pull(), name=f"pull {self.name}"),
            asyncio.create_task(self._storer.run(), name=f"commit {self.name}"),
        ]
        self._keepalive = asyncio.create_task(self._storer.keep_in_hand_alive(), name=f"keepalive {self.name}")

    async def _pull(self) -> None:
        while True:
            # A partition taken from a dead owner is settled before its first pull (exactly_once).
            await self._storer.take_over()
            await self._fetcher.run()
            if self._fetcher.gone is None or self._stopping:
                return
            # The consumer (or its stream) was deleted under us: once the storer has stored what
            # it delivered (its acks go nowhere; the commit state holds what is stored), both
            # sides start again on a consumer created again (Storer.start).
            await self._tasks[1]
            await self._renew()

    async def _renew(self) -> None:
        old = self._fetcher
        await old.close()
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._handoff, self._storer, self._fetcher = self._sides()
        await self._storer.start()
        await self._fetcher.start()
        self._tasks[1] = asyncio.create_task(self._storer.run(), name=f"commit {self.name}")
        self._keepalive = asyncio.create_task(self._storer.keep_in_hand_alive(), name=f"keepalive {self.name}")
        if self._stopping:
            self._fetcher.stop()
        log.info("partition %s: pulling again after %s", self.name, old.gone, extra=self._log_extra)

    @property
    def name(self) -> str:
        return f"{self.target.pipeline.name}/{self.target.index}"

    @property
    def dirty(self) -> bool:
        """Holding stored messages unacked until the consumer's counts prove nothing is missing."""
        return self._storer.dirty

    def reconnected(self) -> None:
        """The worker's NATS connection was made again: pull at once (the open request went with the old one)."""
        self._fetcher.reconnected()

    async def stop(self) -> None:
        """Stop pulling, flush and ack what was received, then return."""
        self._stopping = True
        self._fetcher.stop()
        try:
            await asyncio.gather(*self._tasks)
            if not self._tasks[1].done():
                # The pull task renewed both sides during the stop (a consumer found gone, a
                # reconnect): the new storer stores what its fetcher sealed, then returns.
                await self._tasks[1]
            await self._fetcher.release_pin()
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()
            await self._fetcher.close()

    def stalled_for(self, now: float) -> float:
        """Seconds since the partition last made progress (a pull-loop turn, a finished
        batch or a retry attempt); a partition that stops turning would otherwise stall
        silently while the worker's heartbeat still beats."""
        return now - self._handoff.progress_at

    def stacks(self) -> str:
        """The partition tasks' current stacks, for the log of a stall."""
        import io

        out = io.StringIO()
        for t in self._tasks:
            t.print_stack(file=out)
        return out.getvalue()

    def failed(self) -> BaseException | None:
        """The exception that ended one of the partition's tasks, if any."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                return t.exception()
        return None
