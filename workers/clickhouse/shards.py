"""The shards of a ClickHouse cluster that a worker inserts into: a batch split as the cluster's
Distributed table splits rows, each shard's part inserted into that shard's local table directly.

`clickhouse.shards` lists the shards in the cluster's order (each its replicas, a ReplicaSet, and
its weight); `pipelines[].sharding_key` is the Distributed table's key as written there:
`cityHash64(col)`, a bare integer `col`, or `rand()`.  Row r goes to shard `slots[key % total]`
(workers/clickhouse/sharding.py).  Without `shards` there is one shard and nothing is split.

- Each shard's part of an insert is a block of its own, with an identity of its own
  (`InsertIdentity.shard`: the insert's query_id + `-s<n>`), the same on every resend: the split
  depends only on the rows (and, for `rand()`, on the insert's identity and the row's place).
- A shard that refuses or cannot be reached does not stop the others: every shard's part is
  tried, the ones that fail are raised together afterwards (the partition retries the batch,
  holding its acks; bounded memory, since a partition holds at most three batches), and the parts
  already stored are remembered per insert and not sent again when the batch is retried (also
  across a split around refused rows: `InsertIdentity.base`/`offset` place a part's rows in the
  whole block).  A waiting part is logged once and shown in `status` (`view`: `waiting`).
- The in-doubt question (`landed`) goes to each shard about its own part: all landed, landed;
  none landed, not landed; otherwise "cannot tell", and the parts known landed are remembered as
  stored, so that the resend sends only the others (a Replicated shard drops a copy of a part it has).
"""

from __future__ import annotations

import logging
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from clickhouse_cityhash.cityhash import CityHash64

from workers.clickhouse import faults, indoubt, sink
from workers.clickhouse.replicas import ReplicaSet
from workers.clickhouse.sharding import ShardRule, slots_for

log = logging.getLogger(__name__)

# Inserts whose shard parts are remembered (stored or waiting); an insert that stored all its parts is forgotten.
REMEMBERED = 1024
_HASHED = re.compile(r"\s*cityHash64\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*")


@dataclass
class _Progress:
    """What of one insert (its whole block, by query_id) is stored, shard by shard."""

    shards: set[int] = field(default_factory=set)  # shards whose whole part is stored
    rows: set[int] = field(default_factory=set)  # rows (of the whole block) stored by parts of parts
    waiting: set[int] = field(default_factory=set)  # shards whose part failed and waits


def parse_key(expression: str) -> tuple[str | None, bool]:
    """`cityHash64(col)` -> (col, True); `col` -> (col, False); `rand()` -> (None, False)."""
    text = expression.strip()
    if text in ("rand", "rand()"):
        return None, False
    m = _HASHED.fullmatch(text)
    return (m.group(1), True) if m else (text, False)


class Shards:
    """One ReplicaSet per shard, and the split of each insert over them (insert thread only)."""

    def __init__(self, cfg: Any, preferred: int = 0, who: str = "worker", log_extra: dict | None = None) -> None:
        self._cfg = cfg
        shards = cfg.shard_addresses
        self.sets = [
            ReplicaSet(cfg, preferred, who if len(shards) == 1 else f"{who} shard {n + 1}", log_extra,
                       addresses=addresses)
            for n, addresses in enumerate(shards)
        ]
        self.slots = slots_for(cfg.shard_weights)
        self._who = who
        self._log_extra = log_extra or {}
        self._types: dict[tuple[str, str, str], str] = {}
        self._progress: OrderedDict[str, _Progress] = OrderedDict()

    # -- what the worker asks of its ClickHouse side ---------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """A query (schema reads): on the first shard (every shard holds the local table)."""
        return self.sets[0].execute(*args, **kwargs)

    def return_due(self) -> bool:
        return any(s.return_due() for s in self.sets)

    def tend(self) -> None:
        for s in self.sets:
            s.tend()

    def disconnect(self) -> None:
        for s in self.sets:
            s.disconnect()

    async def answers(self) -> bool:
        """Whether every shard has a replica that accepts a connection (the retry loop's probe)."""
        from workers.clickhouse.connect import clickhouse_answers

        for s in self.sets:
            if not any([await clickhouse_answers(self._cfg, 1.0, r.address) for r in s.replicas]):
                return False
        return True

    def query_log(self, table: str | Sequence[str], database: str) -> "ShardedQueryLog":
        return ShardedQueryLog(self, table, database)

    # -- inserts ---------------------------------------------------------------------

    def insert(
        self, table: str, database: str, sharding_key: str | None, names: Sequence[str], columns: list[list],
        send: Callable[[Any, list[list]], int],
    ) -> int:
        """send(client, part) for each shard's part of `columns` (the whole insert with one shard)."""
        if len(self.sets) == 1:
            return self.sets[0].insert(lambda client: send(client, columns))
        ident = indoubt.current.get()
        n = len(columns[0]) if columns else 0
        if ident is None:
            progress, offset, whole = _Progress(), 0, None
        else:
            whole = ident.base or ident.query_id
            offset = ident.offset
            progress = self._progress.setdefault(whole, _Progress())
            self._progress.move_to_end(whole)
            while len(self._progress) > REMEMBERED:
                self._progress.popitem(last=False)
        shard_of = self._splitter(table, database, sharding_key, names, columns, whole, offset)
        rows_of: dict[int, list[int]] = {}
        for r in range(n):
            rows_of.setdefault(shard_of(r), []).append(r)
        stored = 0
        failed: list[tuple[int, BaseException]] = []
        # Rows mapped again after a table change are numbered anew: only whole shard parts are known
        # stored (and with rand() not even those: the new numbers split them otherwise).
        renumbered = offset < 0
        known = not (renumbered and parse_key(sharding_key or "")[0] is None)
        for i, rows in sorted(rows_of.items()):
            if i in progress.shards and known:
                continue
            todo = rows if renumbered else [r for r in rows if offset + r not in progress.rows]
            if not todo:
                continue
            part = columns if len(todo) == n else [[col[r] for r in todo] for col in columns]
            try:
                stored += indoubt.run_as(ident and ident.shard(i), self.sets[i].insert,
                                         lambda client, part=part: send(client, part)) or 0
            except Exception as exc:
                failed.append((i, exc))
                if i not in progress.waiting:
                    progress.waiting.add(i)
                    log.warning(
                        "%s: the part of %s for shard %d (%d rows) waits: %s; the other shards' parts go on",
                        self._who, ident.query_id if ident else "an insert", i + 1, len(todo), faults.describe(exc),
                        extra={**self._log_extra, "shard": i + 1},
                    )
                continue
            if i in progress.waiting:
                progress.waiting.discard(i)
                log.info("%s: the part of %s for shard %d is stored", self._who,
                         ident.query_id if ident else "an insert", i + 1, extra={**self._log_extra, "shard": i + 1})
            if ident is not None and (ident.base is None or renumbered) and len(todo) == len(rows):
                progress.shards.add(i)  # every row of the insert for shard i (a remap holds those not yet stored)
            elif not renumbered:
                progress.rows.update(offset + r for r in todo)
        if failed:
            # Row faults first: the caller bisects them (stored parts are not sent again); then the rest.
            failed.sort(key=lambda f: faults.classify(f[1]) is not faults.Fault.ROWS)
            raise failed[0][1]
        if whole is not None and ident.base is None:
            self._progress.pop(whole, None)  # all of it is stored
        return stored

    def _splitter(
        self, table: str, database: str, sharding_key: str | None, names: Sequence[str], columns: list[list],
        whole: str | None, offset: int,
    ) -> Callable[[int], int]:
        """row index -> 0-based shard, by the pipeline's sharding key."""
        slots, total = self.slots, len(self.slots)
        if sharding_key is None:  # never a silent guess: the config requires one with several shards
            raise faults.TableUnusable(f"table {table} has no sharding_key (pipelines[].sharding_key) to split "
                                       f"its rows over {len(self.sets)} shards")
        column, hashed = parse_key(sharding_key)
        if column is None:
            if whole is None:
                return lambda r: slots[random.randrange(total)]
            # Deterministic per insert, so that a resend is the same split and the same blocks.
            # A row's place in the whole block (a remap's rows are numbered anew: a split of their own).
            prefix, base = (f"{whole}:".encode(), offset) if offset >= 0 else (f"{whole}:remap:".encode(), 0)
            return lambda r: slots[CityHash64(prefix + str(base + r).encode()) % total]
        if column not in names:
            raise faults.TableUnusable(
                f"sharding_key {sharding_key}: column {column} is not among the columns jetsink writes into "
                f"{table} (it is left to the server); shard by a column the messages carry")
        values = columns[list(names).index(column)]
        try:
            select = ShardRule(self._type_of(table, database, column), tuple(slots), hashed).selector()
        except ValueError as exc:
            raise faults.TableUnusable(f"sharding_key {sharding_key} of table {table}: {exc}") from None
        return lambda r: select(values[r])

    def _type_of(self, table: str, database: str, column: str) -> str:
        db, name = sink.split_table(table, database)
        if (db, name, column) not in self._types:
            found = self.execute(
                "SELECT type FROM system.columns WHERE database = %(d)s AND table = %(t)s AND name = %(c)s",
                {"d": db, "t": name, "c": column},
            )
            if not found:
                raise faults.TableUnusable(f"table {db}.{name} has no column {column} (its sharding_key)")
            self._types[(db, name, column)] = found[0][0]
        return self._types[(db, name, column)]

    # -- the in-doubt question ------------------------------------------------------

    def landed(
        self, table: str | Sequence[str], database: str, query_id: str, began_at: float, wait_s: float = 60.0,
        recorded: str | None = None,
    ) -> bool | None:
        """Did the insert `query_id` land?  With one shard, its replicas tell; with several, each shard
        about its own part (see the module's docstring)."""
        if len(self.sets) == 1:
            return self.sets[0].landed(table, database, query_id, began_at, wait_s, recorded)
        recorded_each = (recorded or "").split(",")
        if len(recorded_each) != len(self.sets):
            recorded_each = [""] * len(self.sets)
        verdicts = [
            s.landed(table, database, f"{query_id}-s{i}", began_at, wait_s, recorded_each[i],
                     others_like=f"{query_id}-%-s{i}")
            for i, s in enumerate(self.sets)
        ]
        if all(v is True for v in verdicts):
            return True
        if all(v is False for v in verdicts):
            return False
        progress = self._progress.setdefault(query_id, _Progress())
        progress.shards.update(i for i, v in enumerate(verdicts) if v is True)
        return None

    # -- status ----------------------------------------------------------------------

    def view(self) -> dict:
        """The replica in use per shard, each replica's health (with its shard), the parts waiting per shard."""
        views = [s.view() for s in self.sets]
        waiting = [0] * len(self.sets)
        for p in list(self._progress.values()):
            for i in list(p.waiting):
                waiting[i] += 1
        out = {
            "in_use": ",".join(v["in_use"] for v in views),
            "in_use_list": [v["in_use"] for v in views],
            "preferred": ",".join(v["preferred"] for v in views),
            "switches": sum(v["switches"] for v in views),
            "replicas": [{**r, "shard": i + 1} for i, v in enumerate(views) for r in v["replicas"]],
        }
        if len(self.sets) > 1:
            out["waiting"] = waiting
        return out


class ShardedQueryLog:
    """indoubt.QueryLog's interface over Shards, for one table (or a routed pipeline's tables)."""

    def __init__(self, shards: Shards, table: str | Sequence[str], database: str) -> None:
        self._shards = shards
        self._table = table
        self._database = database

    def replica(self) -> str:
        """The replica(s) in use (host:port, one per shard): recorded with each batch's range."""
        return ",".join(s.in_use for s in self._shards.sets)

    def landed(self, query_id: str, began_at: float, wait_s: float = 60.0, recorded: str | None = None) -> bool | None:
        return self._shards.landed(self._table, self._database, query_id, began_at, wait_s, recorded)
