"""The replicas of one shard that a worker inserts into: which one, when to move, and who is asked
about an in-doubt insert.

`clickhouse.hosts` lists the replicas in order of preference; a worker prefers the one its
slot picks (slot modulo the number of hosts, so the workers spread over them) and holds one
clickhouse-driver client per replica, all used from its insert thread only.

- A replica-local failure of an insert (unreachable, read-only table, ZooKeeper/Keeper
  session trouble, a quorum insert of unknown status: `faults.replica_local`) marks the
  replica down and moves the worker to the next replica that is not, and the failure is
  raised: the partition's retry loop tries the batch again (workers/partition/retry.py),
  first asking whether the failed attempt landed (below).  A down replica is looked at again
  after a backoff (1 s doubling to 30 s); the preferred one is returned to once it answers
  and none of its Replicated tables is read-only.  Every move is logged and shown in
  `status` and /metrics (`view`).

- An in-doubt insert (its client died, or a retry after a failure) is asked about where it may
  have gone.  system.query_log is per server, and a server that never saw the insert answers
  "never landed" (workers/clickhouse/indoubt.py): asked alone, the wrong replica would turn a
  stored batch into a duplicate.  So:
    * the question goes to every replica the insert may have reached: the ones this process
      sent it to, when it sent it (it knows them exactly), else every configured replica
      (another owner sent it; the replica it recorded in the batch's range is asked first);
    * "landed" from any of them settles it; "never landed" only from all of them;
    * a replica that does not answer, or one that cannot tell: on a Replicated table (block
      deduplication on) the answer is "cannot tell", and the caller resends the identical
      block to the replica in use, whose shard drops it if a replica stored it already
      (tests/integration/test_clickhouse_replicas.py); on any other table the question is
      raised as a connection error and retried: the batch waits for that replica.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from workers.clickhouse import faults, indoubt, sink
from workers.clickhouse.connect import Address, address_text, clickhouse_client

log = logging.getLogger(__name__)

# A down replica is looked at again after this backoff, doubling per failed look.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
# Query ids this process sent, and to which replicas (for the in-doubt question); the oldest forgotten first.
SENT_REMEMBERED = 4096
# A Replicated table whose ZooKeeper session is gone refuses inserts (code 242): such a replica is not healthy.
_READ_ONLY = "SELECT count() FROM system.replicas WHERE is_readonly OR is_session_expired"


class ReplicaUnhealthy(Exception):
    """The replica answers, but some Replicated table of it is read-only."""


@dataclass
class Replica:
    """One configured replica as a worker sees it."""

    address: Address
    state: str = "unknown"  # "healthy" once an insert or a look succeeded, "down" after a replica-local failure
    error: str = ""  # the last replica-local failure
    down_since: float = 0.0  # wall clock, while down
    failures: int = 0  # consecutive replica-local failures
    retry_at: float = 0.0  # monotonic: when a down replica is looked at again
    inserts: int = 0


class ReplicaSet:
    """The replicas of one shard for one worker (insert thread only; `view` may be read from anywhere)."""

    def __init__(
        self, cfg: Any, preferred: int = 0, who: str = "worker", log_extra: dict | None = None,
        connect: Callable[..., Any] = clickhouse_client, clock: Callable[[], float] = time.monotonic,
        addresses: Sequence[Address] | None = None,
    ) -> None:
        self._cfg = cfg
        # `addresses`: one shard's replicas (workers/clickhouse/shards.py); by default the configured hosts.
        self.replicas = [Replica(a) for a in (addresses or cfg.addresses)]
        self.preferred = preferred % len(self.replicas)
        self.current = self.preferred
        self.switches = 0
        self._who = who
        self._log_extra = log_extra or {}
        self._connect = connect
        self._clock = clock
        self._clients: dict[int, Any] = {}
        self._sent: OrderedDict[str, set[int]] = OrderedDict()
        self._dedups: dict[tuple[str, str], bool] = {}

    # -- clients ------------------------------------------------------------------

    def client(self, i: int | None = None) -> Any:
        """The client of replica i (default: the one in use); connects lazily."""
        i = self.current if i is None else i
        if i not in self._clients:
            self._clients[i] = self._connect(self._cfg, self.replicas[i].address)
        return self._clients[i]

    @property
    def in_use(self) -> str:
        return address_text(self.replicas[self.current].address)

    def disconnect(self) -> None:
        for c in self._clients.values():
            c.disconnect()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """A query (not an insert) on the replica in use, or the next one when it cannot be reached:
        the worker's schema reads follow the inserts (TableSchema takes this object as its client)."""
        for _ in range(len(self.replicas)):
            i = self.current
            try:
                return self.client(i).execute(*args, **kwargs)
            except Exception as exc:
                if not faults.unreachable(exc) or len(self.replicas) == 1:
                    raise
                self._failed(i, exc)
        return self.client().execute(*args, **kwargs)

    # -- inserts ------------------------------------------------------------------

    def insert(self, send: Callable[[Any], int]) -> int:
        """send(client) on the replica in use (back on the preferred one first, when it is due and
        healthy).  A replica-local failure moves the worker to another replica and is raised: the
        caller retries the batch, asking first whether this attempt landed (`landed`)."""
        self._return_to_preferred()
        i = self.current
        ident = indoubt.current.get()
        if ident is not None:
            # Before sending: an attempt that fails may still have landed.
            self._sent.setdefault(ident.query_id, set()).add(i)
            self._sent.move_to_end(ident.query_id)
            while len(self._sent) > SENT_REMEMBERED:
                self._sent.popitem(last=False)
        try:
            rows = send(self.client(i))
        except Exception as exc:
            if faults.replica_local(exc):
                self._failed(i, exc)
            raise
        self._answered(i)
        self.replicas[i].inserts += 1
        return rows

    def _failed(self, i: int, exc: BaseException) -> None:
        r = self.replicas[i]
        first = r.state != "down"
        r.state, r.error, r.failures = "down", faults.describe(exc), r.failures + 1
        if first:
            r.down_since = time.time()
        r.retry_at = self._clock() + min(RETRY_MIN_S * 2 ** (r.failures - 1), RETRY_MAX_S)
        try:
            self._clients[i].disconnect()  # a connection cut mid-insert is not used again
        except Exception:
            pass
        if i != self.current or len(self.replicas) == 1:
            if first:
                log.warning("%s: clickhouse %s is down: %s", self._who, address_text(r.address), r.error,
                            extra={**self._log_extra, "replica": address_text(r.address)})
            return
        self.current = self._next_after(i)
        self.switches += 1
        log.warning(
            "%s: clickhouse %s failed (%s); inserting into %s now", self._who, address_text(r.address), r.error,
            self.in_use, extra={**self._log_extra, "replica": self.in_use, "failed_replica": address_text(r.address)},
        )

    def _next_after(self, i: int) -> int:
        """The next replica after i that is not down; when all are, the one due to be looked at first."""
        n = len(self.replicas)
        others = [(i + k) % n for k in range(1, n)]
        for j in others:
            if self.replicas[j].state != "down":
                return j
        return min(others, key=lambda j: self.replicas[j].retry_at)

    def _answered(self, i: int) -> None:
        r = self.replicas[i]
        if r.state == "down":
            log.info("%s: clickhouse %s answers again (down %.1fs)", self._who, address_text(r.address),
                     time.time() - r.down_since, extra={**self._log_extra, "replica": address_text(r.address)})
        r.state, r.failures, r.down_since = "healthy", 0, 0.0

    def return_due(self) -> bool:
        """Whether the worker is off its preferred replica and that one is due to be looked at again."""
        return self.current != self.preferred and self._clock() >= self.replicas[self.preferred].retry_at

    def tend(self) -> None:
        """Go back to the preferred replica if it is due and healthy (the worker calls it every second, in
        its insert thread, so that the return does not wait for traffic)."""
        self._return_to_preferred()

    def _return_to_preferred(self) -> None:
        if not self.return_due():
            return
        p = self.preferred
        try:
            self._look(p)
        except Exception as exc:
            self._failed(p, exc)  # looked at again after a longer backoff
            log.info("%s: its preferred clickhouse %s is not healthy yet (%s); next look in %.0fs", self._who,
                     address_text(self.replicas[p].address), faults.describe(exc),
                     self.replicas[p].retry_at - self._clock(), extra=self._log_extra)
            return
        self._answered(p)
        left = self.in_use
        self.current = p
        self.switches += 1
        log.info("%s: back on its preferred clickhouse %s (from %s)", self._who, self.in_use, left,
                 extra={**self._log_extra, "replica": self.in_use})

    def _look(self, i: int) -> None:
        """Raises unless replica i answers a query and none of its Replicated tables is read-only."""
        read_only = self.client(i).execute(_READ_ONLY)[0][0]
        if read_only:
            raise ReplicaUnhealthy(f"{read_only} Replicated table(s) read-only (ZooKeeper session lost)")

    # -- the in-doubt question ----------------------------------------------------

    def landed(
        self, table: str | Sequence[str], database: str, query_id: str, began_at: float, wait_s: float = 60.0,
        recorded: str | None = None, others_like: str | None = None,
    ) -> bool | None:
        """Did the insert `query_id` land on any replica?  True, False or None (cannot tell: resend the
        identical block).  See the module's docstring; `recorded`: the replica named in the batch's range;
        `others_like`: more query ids (a LIKE pattern) that are parts of it (indoubt.landed).  `table`: the
        table (or tables) the insert may be in, for whether they deduplicate blocks."""
        if len(self.replicas) == 1:
            return indoubt.landed(self.client(0), query_id, began_at, wait_s, others_like)
        sent = {i for q, hosts in self._sent.items() if q == query_id or q.startswith(query_id + "-") for i in hosts}
        order = sorted(sent) if sent else list(range(len(self.replicas)))
        texts = [address_text(r.address) for r in self.replicas]
        if recorded in texts and texts.index(recorded) in order:
            order.remove(texts.index(recorded))
            order.insert(0, texts.index(recorded))
        answers: list[bool | None] = []
        silent: list[str] = []
        for i in order:
            try:
                verdict = indoubt.landed(self.client(i), query_id, began_at, wait_s, others_like)
            except Exception as exc:
                if not faults.unreachable(exc):
                    raise
                self._failed(i, exc)
                silent.append(texts[i])
                continue
            if verdict is True:
                return True
            answers.append(verdict)
        if not silent and all(a is False for a in answers):
            return False
        tables = [table] if isinstance(table, str) else list(table)
        if not silent or all(self._deduplicates(t, database) for t in tables):
            return None  # resent as the same block: a Replicated table's shard drops a copy it has
        raise ConnectionError(
            f"the in-doubt insert {query_id} may be on clickhouse {', '.join(silent)}, which does not answer, and "
            f"table {', '.join(tables)} does not deduplicate blocks (not Replicated*): the batch waits for that replica"
        )

    def _deduplicates(self, table: str, database: str) -> bool:
        """Whether the table drops a block a replica of its shard already stored (Replicated*MergeTree,
        `insert_deduplicate` not turned off in the insert settings)."""
        if str(dict(self._cfg.settings).get("insert_deduplicate", 1)) in ("0", "False"):
            return False
        db, name = sink.split_table(table, database)
        if (db, name) not in self._dedups:
            engine = self.execute(
                "SELECT engine FROM system.tables WHERE database = %(d)s AND name = %(t)s", {"d": db, "t": name}
            )
            self._dedups[(db, name)] = bool(engine) and engine[0][0].startswith("Replicated")
        return self._dedups[(db, name)]

    def query_log(self, table: str, database: str) -> "ReplicaQueryLog":
        """The in-doubt question for one table (what a partition's writer and takeover ask)."""
        return ReplicaQueryLog(self, table, database)

    # -- status -------------------------------------------------------------------

    def view(self) -> dict:
        """What status and /metrics show: the replica in use, and each replica's health."""
        now = time.time()
        return {
            "in_use": self.in_use,
            "preferred": address_text(self.replicas[self.preferred].address),
            "switches": self.switches,
            "replicas": [
                {
                    "address": address_text(r.address),
                    "state": r.state,
                    "error": r.error,
                    "down_s": round(now - r.down_since, 1) if r.state == "down" else 0.0,
                    "inserts": r.inserts,
                }
                for r in self.replicas
            ],
        }


class ReplicaQueryLog:
    """indoubt.QueryLog's interface over a ReplicaSet, for one table (call it in the insert thread)."""

    def __init__(self, replicas: ReplicaSet, table: str, database: str) -> None:
        self._replicas = replicas
        self._table = table
        self._database = database

    def replica(self) -> str:
        """The replica in use (host:port): recorded with each batch's range (workers/delivery/commits.py)."""
        return self._replicas.in_use

    def landed(self, query_id: str, began_at: float, wait_s: float = 60.0, recorded: str | None = None) -> bool | None:
        return self._replicas.landed(self._table, self._database, query_id, began_at, wait_s, recorded)
