"""The in-doubt insert: whether a batch whose insert was sent before its owner died is in ClickHouse.

Every batch with a recorded range (workers/delivery/commits.py) is inserted under an identity derived
from (pipeline, partition, first, last): a `query_id` and, on servers that have it (22.2+),
an `insert_deduplication_token`.  The next owner of the partition asks the server's
query log what became of that query_id (`landed`), which ClickHouse 18.16 already answers:

* the insert is logged (`log_queries=1` on the insert itself, whatever the profile says)
  when it starts and when it ends, QueryFinish or ExceptionWhileProcessing, each with
  `written_rows`.  A block is committed to the table as soon as the server has read it,
  so an insert whose client died after sending its block ends as QueryFinish with all
  its rows written, one cut mid-block ends with 0 rows written (checked against 18.16:
  tests/integration/test_exactly_once.py);
* a query leaves system.processes only after its end was queued for the log, and the
  log is written in queue order: once a probe query run after it is in system.query_log
  (`SYSTEM FLUSH LOGS`, asked again until it is: on 18.16 a flush may miss the newest
  entries), the insert's end is either there or was never going to be;
* the log queue lives in the server's memory: a clickhouse-server killed before flushing
  forgets it.  So "nothing logged" only means "never started" when the server process
  answering now is the one the insert went to: its uptime is longer than the time since
  the insert began (both durations, so the two hosts' clocks need not agree), and it logs
  queries (a probe query of its own is in the log after the flush).  Otherwise the answer
  is "unknown" and the caller resends the exact batch under the same identity (a
  duplicate only where the server can neither deduplicate by token nor by block hash:
  plain MergeTree before 22.2).

All of this is about one server.  With several replicas (`clickhouse.hosts`), a server that
never saw the insert would answer "never landed" as truthfully as the one that lost it did
not: workers/clickhouse/replicas.py decides which replicas are asked and what their answers
together mean.
"""

from __future__ import annotations

import contextvars
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from clickhouse_driver.errors import ServerException

QUERY_START = 1  # system.query_log type; the others (finish, exceptions) end a query
# Uptime is whole seconds and the insert's start is the owner's: a margin for both.
UPTIME_MARGIN_S = 3.0
# How long the probe may take to reach system.query_log; longer than its flush interval (7.5 s by default).
PROBE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class InsertIdentity:
    """Names one batch's insert, the same every time the batch is sent."""

    query_id: str
    token: str | None  # insert_deduplication_token, when the server has it
    # A part's whole block (its query_id) and where the part's rows start in it (-1: its rows are
    # numbered anew, mapped again after a table change): a shard's split (workers/clickhouse/shards.py)
    # remembers which of the block's rows and shard parts are stored across its parts.
    base: str | None = None
    offset: int = 0

    def part(self, lo: int, hi: int) -> "InsertIdentity":
        """The identity of rows lo..hi of the batch (a split around refused rows)."""
        return InsertIdentity(f"{self.query_id}-{lo}-{hi}", self.token and f"{self.token}:{lo}-{hi}",
                              self.base or self.query_id, -1 if self.offset < 0 else self.offset + lo)

    def shard(self, n: int) -> "InsertIdentity":
        """The identity of the rows of this insert that go to shard n (0-based): the same on every resend,
        since the split is (workers/clickhouse/shards.py)."""
        return InsertIdentity(f"{self.query_id}-s{n}", self.token and f"{self.token}:s{n}")

    def remapped(self, n: int) -> "InsertIdentity":
        """The identity of the batch's rows mapped again (the n-th time) after its table changed
        under it: other rows than the first mapping's, so never the same names or tokens (a
        token the server saw would make it drop them).  A next owner that finds any of them
        logged with rows cannot tell what landed and resends the batch (workers/delivery/takeover.py)."""
        return InsertIdentity(f"{self.query_id}-r{n}", self.token and f"{self.token}:r{n}",
                              self.base or self.query_id, -1)

    def routed(self, route: str) -> "InsertIdentity":
        """The identity of the batch's part for one route's table (workers/partition/writer.py): each
        part is asked about on its own (`landed` of this query_id sees only its own splits)."""
        tag = "t" + hashlib.sha1(route.encode()).hexdigest()[:8]
        return InsertIdentity(f"{self.query_id}-{tag}", self.token and f"{self.token}:{tag}")

    def settings(self) -> dict[str, Any]:
        """Settings the insert carries: always logged, deduplicated by token where possible."""
        out: dict[str, Any] = {"log_queries": 1}
        if self.token:
            out["insert_deduplication_token"] = self.token
        return out


def identity(
    pipeline: str, partition: int, first: int, last: int, first_ts_ns: int, tokens: bool, seqs: Sequence[int] = (),
) -> InsertIdentity:
    """The identity of the batch of stream sequences first..last of a partition (exactly `seqs`, when given).

    The first message's stream timestamp is part of it so that a stream deleted and
    recreated (sequences start over) never reuses an identity the query log knows.
    """
    name = f"{pipeline}/{partition}/{first}-{last}/{first_ts_ns}"
    if seqs:
        name += "/" + hashlib.sha1(",".join(map(str, seqs)).encode()).hexdigest()[:12]
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    query_id = f"jetsink-{digest}-{first}-{last}"
    return InsertIdentity(query_id, f"jetsink:{name}" if tokens else None)


# The identity of the insert the current thread is sending (see send_insert in workers/clickhouse/sink.py).
current: contextvars.ContextVar[InsertIdentity | None] = contextvars.ContextVar("jetsink_insert_identity", default=None)


def run_as(ident: InsertIdentity | None, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) with `ident` as the identity of the inserts it sends (call it in the insert thread)."""
    token = current.set(ident)
    try:
        return fn(*args)
    finally:
        current.reset(token)


def landed(
    client: Any, query_id: str, began_at: float, wait_s: float = 60.0, others_like: str | None = None,
) -> bool | None:
    """Is the insert `query_id` in the table?  True, False, or None (cannot tell).

    `began_at`: the owner's wall-clock time just before it sent the insert.  A batch is sent
    as one block, so its insert wrote either all its rows or none; a batch split around
    refused rows was sent as parts (`InsertIdentity.part`), and when some part wrote rows
    the answer is None.

    A server that refuses the questions (no right to SYSTEM FLUSH LOGS or to read
    system.query_log) gives None; a network error is raised, for the caller to retry.
    `others_like`: a LIKE pattern of more query ids that are parts of this insert (a shard's parts of
    a batch split around refused rows, workers/clickhouse/shards.py), counted like its own parts.
    """
    try:
        return _landed(client, query_id, began_at, wait_s, others_like)
    except ServerException:
        return None


def _landed(client: Any, query_id: str, began_at: float, wait_s: float, others_like: str | None) -> bool | None:
    deadline = time.monotonic() + wait_s
    params = {"q": query_id, "parts": query_id + "-%", "probe": f"jetsink-probe-{uuid.uuid4().hex}",
              "others": others_like or query_id + "-%"}
    while client.execute(
        "SELECT count() FROM system.processes WHERE query_id = %(q)s OR query_id LIKE %(parts)s "
        "OR query_id LIKE %(others)s", params
    )[0][0]:
        # Still running (its client just died): it ends by itself, then it is logged.
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    uptime = client.execute("SELECT uptime()", settings={"log_queries": 1}, query_id=params["probe"])[0][0]
    same_process = uptime > time.time() - began_at + UPTIME_MARGIN_S
    params["d"] = time.strftime("%Y-%m-%d", time.gmtime(began_at - 2 * 86400))
    flush_deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        client.execute("SYSTEM FLUSH LOGS")
        has_log = "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'query_log'"
        if not client.execute(has_log)[0][0]:
            return None  # the server keeps no query log
        logged = client.execute(
            "SELECT query_id, type, written_rows FROM system.query_log "
            "WHERE event_date >= %(d)s AND (query_id IN (%(q)s, %(probe)s) OR query_id LIKE %(parts)s "
            "OR query_id LIKE %(others)s)",
            params,
        )
        if any(q == params["probe"] for q, _, _ in logged):
            break  # the log is written up to the probe, so up to the insert's end, queued before it
        if time.monotonic() > flush_deadline:
            return None  # this server process does not log queries (config): its silence proves nothing
        # 18.16's flush writes what the log's thread has taken from its queue, which on a
        # busy server may not yet hold the probe (seen 1 in 7 under load): ask again.
        time.sleep(0.2)
    if any(q not in (query_id, params["probe"]) and kind != QUERY_START and written for q, kind, written in logged):
        return None  # parts of a split batch wrote rows: some of it is there
    ends = [written for q, kind, written in logged if q == query_id and kind != QUERY_START]
    if ends:
        return any(ends)
    if any(q == query_id for q, _, _ in logged):
        return None  # started, its end not logged: the server restarted meanwhile
    return False if same_process else None  # nothing logged by the process it went to: never reached it


class QueryLog:
    """landed() bound to the worker's client (call it in the worker's insert thread, which owns that client)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def landed(self, query_id: str, began_at: float, wait_s: float = 60.0, recorded: str | None = None) -> bool | None:
        """`recorded` (the replica a batch's range names) does not matter with one server; with
        several, workers/clickhouse/replicas.py asks the right ones."""
        return landed(self._client, query_id, began_at, wait_s)
