"""The in-doubt insert: whether a batch whose insert was sent before its owner died is in ClickHouse.

Every batch with a recorded range (workers/commits.py) is inserted under an identity derived
from (pipeline, partition, first, last): a `query_id` and, on servers that have it (22.2+),
an `insert_deduplication_token`.  The next owner of the partition asks the server's
query log what became of that query_id (`landed`), which ClickHouse 18.16 already answers:

* the insert is logged (`log_queries=1` on the insert itself, whatever the profile says)
  when it starts and when it ends, QueryFinish or ExceptionWhileProcessing, each with
  `written_rows`.  A block is committed to the table as soon as the server has read it,
  so an insert whose client died after sending its block ends as QueryFinish with all
  its rows written, one cut mid-block ends with 0 rows written (checked against 18.16:
  tests/integration/test_exactly_once.py);
* a query leaves system.processes only after its end was queued for the log, and
  `SYSTEM FLUSH LOGS` writes that queue, so once the query is not running its end is
  either in system.query_log or was never going to be;
* the log queue lives in the server's memory: a clickhouse-server killed before flushing
  forgets it.  So "nothing logged" only means "never started" when the server has been up
  since before the insert began; otherwise the answer is "unknown" and the caller resends
  the exact batch under the same identity (a duplicate only where the server can neither
  deduplicate by token nor by block hash: plain MergeTree before 22.2).
"""

from __future__ import annotations

import contextvars
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

QUERY_START = 1  # system.query_log type; the others (finish, exceptions) end a query
# Slack for clock differences between the worker's host and ClickHouse's: a server that
# started less than this before the insert counts as restarted since (answer "unknown").
CLOCK_SLACK_S = 300.0


@dataclass(frozen=True, slots=True)
class InsertIdentity:
    """Names one batch's insert, the same every time the batch is sent."""

    query_id: str
    token: str | None  # insert_deduplication_token, when the server has it

    def part(self, lo: int, hi: int) -> "InsertIdentity":
        """The identity of rows lo..hi of the batch (a split around refused rows)."""
        return InsertIdentity(f"{self.query_id}-{lo}-{hi}", self.token and f"{self.token}:{lo}-{hi}")

    def settings(self) -> dict[str, Any]:
        """Settings the insert carries: always logged, deduplicated by token where possible."""
        out: dict[str, Any] = {"log_queries": 1}
        if self.token:
            out["insert_deduplication_token"] = self.token
        return out


def identity(pipeline: str, partition: int, first: int, last: int, first_ts_ns: int, tokens: bool) -> InsertIdentity:
    """The identity of the batch of stream sequences first..last of a partition.

    The first message's stream timestamp is part of it so that a stream deleted and
    recreated (sequences start over) never reuses an identity the query log knows.
    """
    name = f"{pipeline}/{partition}/{first}-{last}/{first_ts_ns}"
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    query_id = f"jetsink-{digest}-{first}-{last}"
    return InsertIdentity(query_id, f"jetsink:{name}" if tokens else None)


# The identity of the insert the current thread is sending (see send_insert in workers/sink.py).
current: contextvars.ContextVar[InsertIdentity | None] = contextvars.ContextVar("jetsink_insert_identity", default=None)


def run_as(ident: InsertIdentity | None, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) with `ident` as the identity of the inserts it sends (call it in the insert thread)."""
    token = current.set(ident)
    try:
        return fn(*args)
    finally:
        current.reset(token)


def landed(client: Any, query_id: str, began_at: float, wait_s: float = 60.0) -> bool | None:
    """Is the insert `query_id` in the table?  True, False, or None (cannot tell).

    `began_at`: wall-clock time the insert's range was recorded, just before it was sent.
    A batch is sent as one block, so its insert wrote either all its rows or none; a batch
    split around refused rows was sent as parts (`InsertIdentity.part`), and when some part
    wrote rows the answer is None.
    """
    deadline = time.monotonic() + wait_s
    params = {"q": query_id, "parts": query_id + "-%"}
    while client.execute("SELECT count() FROM system.processes WHERE query_id = %(q)s OR query_id LIKE %(parts)s", params)[0][0]:
        # Still running (its client just died): it ends by itself, then it is logged.
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    client.execute("SYSTEM FLUSH LOGS")
    if not client.execute("SELECT count() FROM system.tables WHERE database = 'system' AND name = 'query_log'")[0][0]:
        return None  # the server keeps no query log (config): cannot tell
    params["d"] = time.strftime("%Y-%m-%d", time.gmtime(began_at - 86400))
    logged = client.execute(
        "SELECT query_id = %(q)s, type, written_rows FROM system.query_log "
        "WHERE event_date >= %(d)s AND (query_id = %(q)s OR query_id LIKE %(parts)s)",
        params,
    )
    if any(not whole and kind != QUERY_START and written for whole, kind, written in logged):
        return None  # parts of a split batch wrote rows: some of it is there
    ends = [written for whole, kind, written in logged if whole and kind != QUERY_START]
    if ends:
        return any(ends)
    if logged:
        return None  # started, its end not logged: the server restarted meanwhile
    started = client.execute("SELECT toUnixTimestamp(now()) - uptime()")[0][0]
    if started < began_at - CLOCK_SLACK_S:
        return False  # up since before the insert and nothing logged: it never reached the server
    return None
