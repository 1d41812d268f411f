"""The map-and-insert step of a partition's batch: map its messages (workers/partition/prepare.py,
in the insert thread), dead-letter what cannot be mapped, insert the rest into ClickHouse and
dead-letter the rows it refuses; each step retried until it succeeds.

The storer (workers/partition/storer.py) calls it for each batch, and a takeover
(workers/delivery/takeover.py) for the batches a dead owner left.
"""

from __future__ import annotations

import logging
from functools import partial
from itertools import count
from typing import Any, Awaitable, Callable, Sequence

from workers.clickhouse import indoubt
from workers.clickhouse.schema import ColumnMapper
from workers.clickhouse.table_schema import TableSchema
from workers.delivery.commits import Range
from workers.nats.dlq import DeadLetter, publish_dead_letters
from workers.observability.telemetry import Telemetry
from workers.partition.prepare import PartitionTarget, Prepared, dead_letter, join_prepared, prepare
from workers.partition.retry import Retrying

log = logging.getLogger(__name__)


class TableWriter:
    """Writes a partition's messages into its table and its DLQ; returns once both confirmed them."""

    def __init__(
        self,
        nc: Any,
        target: PartitionTarget,
        schema: TableSchema,
        run_in_thread: Callable[..., Awaitable[Any]],
        insert: Callable[[Sequence[str], list[list]], int],
        telemetry: Telemetry,
        retrying: Retrying,
        log_extra: dict,
        clickhouse: indoubt.QueryLog | None = None,
    ) -> None:
        self._nc = nc
        self.target = target
        self.name = f"{target.pipeline.name}/{target.index}"
        self._schema = schema  # the table's current mapper; it follows changes of the table
        self._run_in_thread = run_in_thread  # carrying the batch span when observability is on
        self._insert = insert
        self._telemetry = telemetry
        self._retrying = retrying
        self._log_extra = log_extra  # on every log line
        # Asks ClickHouse about an in-doubt insert (workers/clickhouse/indoubt.py, in the insert thread).
        self._query_log = clickhouse

    async def store(
        self, msgs: list[tuple], ident: indoubt.InsertIdentity | None, r: Range | None, keep_alive: list[tuple] | None,
        first_deliveries: bool = False,
    ) -> Prepared:
        """Map `msgs`, dead-letter what cannot be mapped, insert the rest (under `ident`) and
        dead-letter the rows ClickHouse refuses; returns once all of it is confirmed.
        `first_deliveries`: none of `msgs` is a redelivery (known from intake)."""
        pipeline = self.target.pipeline
        prep = partial(self._prepare, first_deliveries=first_deliveries)
        prepared: Prepared = await self._run_in_thread(self._schema.prepare, prep, msgs, self.target)
        if prepared.dead:
            for dl in prepared.dead:
                log.warning(
                    "dead-lettered %s seq %d: %s: %s", dl.subject, dl.stream_seq, dl.reason, dl.error,
                    extra=self._log_extra,
                )
            await self._retrying(
                "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, prepared.dead
            )
        if prepared.rows:
            # A table changed under the batch has its rows mapped again (remapped: what the new mapping refused).
            attempts = count()
            refused, remapped = await self._retrying(
                "insert", self._insert_once, prep, ident, r, attempts, msgs, prepared, keep_alive=keep_alive
            )
            if refused or remapped:
                letters = remapped + [
                    dead_letter(msgs[i], self.target, "insert_rejected", error) for i, error in refused
                ]
                for dl in letters:
                    log.warning(
                        "%s %s seq %d, dead-lettered: %s", "ClickHouse refused" if dl.reason == "insert_rejected"
                        else f"the changed table refuses ({dl.reason})", dl.subject, dl.stream_seq, dl.error,
                        extra=self._log_extra,
                    )
                await self._retrying(
                    "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, letters,
                    keep_alive=keep_alive,
                )
                prepared.rows -= len(letters)
                prepared.dead.extend(letters)
        return prepared

    async def _insert_once(
        self, prep: Callable[..., Prepared], ident: indoubt.InsertIdentity | None, r: Range | None, attempts: Any,
        msgs: list[tuple], prepared: Prepared,
    ) -> tuple[list[tuple[int, str]], list[DeadLetter]]:
        """One attempt at the insert (through the table's schema, which maps the rows again if the
        table changed under them); a retry first asks ClickHouse whether the failed attempt landed."""
        if next(attempts) and ident is not None and self._query_log is not None:
            if await self._run_in_thread(self._query_log.landed, ident.query_id, r.began_at, 10.0):
                log.info(
                    "partition %s: the failed insert of %d..%d had landed; not sending it again",
                    self.name, r.first, r.last,
                    extra=self._log_extra,
                )
                return [], []
        return await self._run_in_thread(
            indoubt.run_as, ident, self._schema.store, prep, self._insert, msgs, prepared, self.target
        )

    def _prepare(
        self, msgs: list[tuple], mapper: ColumnMapper, target: PartitionTarget, first_deliveries: bool = False
    ) -> Prepared:
        """prepare() in the insert thread, under the telemetry's `map` span(s).

        The table's schema (workers/clickhouse/table_schema.py) calls it with its current mapper,
        and again with a new one when the table changed under the batch.
        """
        if not self._telemetry.per_message_spans:
            with self._telemetry.map(target, msgs) as mapped:
                prepared = prepare(msgs, mapper, target, first_deliveries)
                mapped(prepared)
                return prepared
        # Each message parsed and mapped on its own, so that each span times one message;
        # this costs, hence opt-in (observability.traces.per_message_spans).
        parts = []
        for msg in msgs:
            with self._telemetry.map_message(msg) as mapped:
                parts.append(prepare([msg], mapper, target, first_deliveries))
                mapped(parts[-1])
        return join_prepared(parts)
