"""Each partition's commit state, kept in a JetStream KV bucket beside its stream.

One entry per (pipeline, partition), bucket `jetsink_commits_<pipeline>`, key the
partition index, value JSON:

    {"stored": S, "inflight": [first, last, count, first_ts_ns, began_at] | null, "stream": CREATED,
     "inflight_host": "host:port" (the ClickHouse replica in use when the batch began; optional)}

* `stored`: every message of the partition with stream sequence <= S is stored (in
  ClickHouse or the DLQ), written only when that is provably true: the batch continued a
  clean AckAll consumer (workers/delivery/acks.py), so every delivery below it was ours and
  stored, or a dirty partition's held messages were reconciled.  A delivery at or below S
  is acked without being stored again: redeliveries after a worker crash, and messages a
  hard-killed nats-server redelivers because it forgot their acks.
* `inflight`: written just before the insert of a batch whose messages are exactly the
  partition's messages from `first` to `last` (in stream order).

One write per batch: the write that records a batch as in flight also carries the
previous batch's `stored` (`begin`), and a batch is acked as soon as its insert and dead
letters are confirmed, with no write of its own (`inserted` only notes it here).  While
batches follow each other the state therefore always names the last one as in flight;
when none follows within STORED_FLUSH_S, `flush` writes `stored` alone, and a partition
released cleanly flushes before it lets go.  A new owner that finds a batch in flight
settles it (workers/delivery/takeover.py): when the consumer's ack floor is at or past its last
message, its owner acked it, which it does only after the insert was confirmed, so it
is stored; otherwise ClickHouse's query log tells (workers/clickhouse/indoubt.py).

* `stream`: the creation time of the stream incarnation the sequences count in (STREAM.INFO's
  `created`).  A stream deleted and created again numbers its messages from 1 again, so a
  state of another incarnation, or one whose `stored` is past the stream's last sequence,
  would skip every new message as "stored": `bind` finds that when the state is opened, and
  the partition starts afresh (logged, with both identities).  An entry without `stream`
  (written by a version before it) is adopted when its sequences fit the stream.

Every write is a compare-and-set on the entry's revision, so an owner whose view is stale
(the entry moved under it: a second owner, or a nats-server that lost the write) fails
instead of moving the state backwards; the partition then stops and its worker restarts.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Awaitable, Callable, Sequence

import orjson

from workers import message
from workers.message import REPLY

BUCKET_PREFIX = "jetsink_commits_"
# Set in a worker's environment (tests only): the worker exits after its N-th insert
# returns, before the batch's ack: the in-doubt batch on demand (see ExitHook).
EXIT_AFTER_INSERT_ENV = "JETSINK_TEST_EXIT_AFTER_INSERT"
# The same, after the batch's ack was sent: the state names it in flight, the consumer has it acked.
EXIT_AFTER_ACK_ENV = "JETSINK_TEST_EXIT_AFTER_ACK"
# ... after the first of a routed batch's parts was inserted, before the next (workers/partition/writer.py).
EXIT_AFTER_PART_ENV = "JETSINK_TEST_EXIT_AFTER_PART"
# With no next batch, a batch's `stored` is written alone this many seconds after its ack.
STORED_FLUSH_S = 1.0

_reply = itemgetter(REPLY)


def bucket_name(pipeline: str) -> str:
    """The KV bucket holding a pipeline's commit states (pipeline names are [A-Za-z0-9_-]+)."""
    return BUCKET_PREFIX + pipeline


async def create_bucket(js: Any, pipeline: str, replicas: int) -> None:
    """Create the pipeline's commit-state bucket (provision, and a worker that finds it deleted)."""
    from nats.js import api

    cfg = api.KeyValueConfig(bucket=bucket_name(pipeline), history=1, replicas=replicas, storage=api.StorageType.FILE)
    await js.create_key_value(cfg)


class StaleCommitState(Exception):
    """The entry moved since this owner last read or wrote it."""


@dataclass(frozen=True, slots=True)
class Range:
    """A batch being inserted: the partition's messages first..last, `count` of them; or, when the
    batch is not one run of them (stored while acks are held), exactly the stream sequences `seqs`."""

    first: int
    last: int
    count: int
    first_ts_ns: int  # the first message's stream timestamp (part of the insert's identity)
    began_at: float  # wall-clock time just before the insert was sent
    seqs: tuple[int, ...] = ()  # the batch's stream sequences when it is not first..last whole
    # The ClickHouse replica (host:port) in use when the batch began; "" in states of earlier
    # versions and with no replica hook.  The in-doubt question asks it first (workers/clickhouse/replicas.py).
    host: str = ""


def scattered(msgs: Sequence[tuple], began_at: float) -> Range:
    """The Range of a batch (in stream order) that is not one run of the partition's messages."""
    deliveries = [message.parse_ack_subject(m[REPLY]) for m in msgs]
    seqs = tuple(d.stream_seq for d in deliveries)
    return Range(seqs[0], seqs[-1], len(seqs), deliveries[0].timestamp_ns, began_at, seqs)


def _runs(seqs: Sequence[int]) -> list[list[int]]:
    """Sorted sequences as [first, last] runs of consecutive numbers (compact in the KV entry)."""
    runs: list[list[int]] = []
    for s in seqs:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return runs


def _unruns(runs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(s for a, b in runs for s in range(int(a), int(b) + 1))


@dataclass(frozen=True, slots=True)
class CommitState:
    stored: int = 0
    inflight: Range | None = None
    stream: str = ""  # the stream incarnation's creation time ("" in entries of earlier versions)
    held: tuple[int, ...] = ()  # stream sequences above `stored` that are stored (while acks were held)

    def encode(self) -> bytes:
        r = self.inflight
        inflight = None if r is None else [r.first, r.last, r.count, r.first_ts_ns, r.began_at]
        if r is not None and r.seqs:
            inflight.append(_runs(r.seqs))
        doc = {"stored": self.stored, "inflight": inflight, "stream": self.stream}
        if r is not None and r.host:
            doc["inflight_host"] = r.host  # a key of its own: earlier versions read the state as before
        if self.held:
            doc["held"] = _runs(self.held)
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, data: bytes | None) -> "CommitState":
        if not data:
            return cls()
        doc = orjson.loads(data)
        r = doc.get("inflight")
        return cls(
            int(doc.get("stored", 0)),
            Range(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4]), _unruns(r[5]) if len(r) > 5 else (),
                  str(doc.get("inflight_host") or ""))
            if r else None,
            str(doc.get("stream") or ""),
            _unruns(doc.get("held") or ()),
        )


@dataclass(frozen=True, slots=True)
class StreamIncarnation:
    """The stream a partition reads, as STREAM.INFO describes it when the partition opens its state."""

    name: str
    created: str  # its creation time: a stream deleted and created again has another
    first_seq: int
    last_seq: int


async def incarnation(js: Any, stream: str) -> StreamIncarnation:
    """The stream as it is now (one STREAM.INFO)."""
    info = await js.stream_info(stream)
    created = info.created.isoformat() if info.created is not None else ""
    return StreamIncarnation(stream, created, info.state.first_seq, info.state.last_seq)


@dataclass(frozen=True, slots=True)
class Bound:
    """A commit state bound to the stream incarnation it is read against (see `bind`)."""

    state: CommitState
    afresh: str | None = None  # why the entry found was set aside (another incarnation), or None
    expired: int = 0  # stream sequences after `stored` the stream no longer holds (removed by its limits)


def bind(state: CommitState, stream: StreamIncarnation | None) -> Bound:
    """The commit state to go on from, given the stream as it is now.

    A state of another incarnation (another creation time, or sequences past the stream's
    last one) is set aside: its sequences count in a stream that no longer exists, and
    going on from them would skip the new stream's messages as stored.  A state whose next
    sequence the stream has already removed (limits: max_age, max_msgs, ...) reports how
    many sequences were removed unread by this partition: all of them are this
    partition's when it has a stream of its own, some of them when partitions share one.
    """
    if stream is None:
        return Bound(state)
    if state.stream and state.stream != stream.created:
        return Bound(
            CommitState(stream=stream.created),
            f"it belongs to stream {stream.name} created {state.stream}, and the stream now is one created "
            f"{stream.created}",
        )
    newest = max(state.stored, state.inflight.last if state.inflight is not None else 0, *state.held)
    if newest > stream.last_seq:
        return Bound(
            CommitState(stream=stream.created),
            f"it names sequence {newest}, past the last sequence {stream.last_seq} of stream {stream.name} "
            f"(created {stream.created}): the stream was created again",
        )
    expired = stream.first_seq - state.stored - 1 if state.stored and stream.first_seq > state.stored + 1 else 0
    return Bound(CommitState(state.stored, state.inflight, stream.created, state.held), None, expired)


class CommitLog:
    """One partition's entry, read once by its owner and then only written (compare-and-set).

    `state` is what the entry holds; `stored_through` what this owner knows is stored,
    which runs ahead of `state.stored` between a batch's ack and the next write.
    """

    def __init__(self, kv: Any, key: str, state: CommitState, revision: int) -> None:
        self._kv = kv
        self._key = key
        self.state = state
        self._revision = revision
        self.stored_through = state.stored
        # Stored above `stored_through`: batches stored while acks were held (not one run after it).
        self.held: set[int] = set(state.held)
        self.found = revision != 0  # the entry existed when this owner opened it
        self.opened = Bound(state)  # what binding to the stream found (set by takeover.open_state)
        # Makes the bucket again when it is missing (True), or says it exists (False); set by open_state.
        self.recreate_bucket: Callable[[], Awaitable[bool]] | None = None
        # The ClickHouse replica in use (host:port), recorded with each batch's range; set by the storer.
        self.replica: Callable[[], str] | None = None

    @classmethod
    async def open(
        cls, js: Any, pipeline: str, partition: int, stream: StreamIncarnation | None = None,
    ) -> tuple["CommitLog", Bound]:
        """The partition's entry, bound to `stream` (see `bind`): the log to go on with, and what binding found."""
        from nats.js.errors import KeyNotFoundError

        kv = await js.key_value(bucket_name(pipeline))
        key = str(partition)
        deleted = None
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:
            # A key deleted or purged (`nats kv del`, migrate-layout) leaves a marker: the next
            # compare-and-set must name its revision, or it fails as if the entry had moved.
            deleted = getattr(exc, "entry", None)
            state, revision = CommitState(), deleted.revision if deleted is not None else 0
        else:
            state, revision = CommitState.decode(entry.value), entry.revision
        bound = bind(state, stream)
        opened = cls(kv, key, bound.state, revision)
        if deleted is not None:
            opened.found = False
        return opened, bound

    @property
    def unwritten(self) -> bool:
        """The entry lags behind what is known: a batch it names in flight is stored, or `stored` moved on."""
        return (
            self.state.inflight is not None
            or self.state.stored < self.stored_through
            or len(self.state.held) != len(self.held)
        )

    def _known(self, inflight: Range | None) -> CommitState:
        self.held = {s for s in self.held if s > self.stored_through}
        return CommitState(self.stored_through, inflight, self.state.stream, tuple(sorted(self.held)))

    async def begin(self, r: Range) -> None:
        """Record the batch about to be inserted (with the replica in use), and what is stored before it."""
        if self.replica is not None and not r.host:
            r = dataclasses.replace(r, host=self.replica())
        await self._write(self._known(r))

    def inserted(self, r: Range) -> None:
        """Batch r is stored (ClickHouse and the DLQ confirmed it); written with the next begin or flush."""
        if r.seqs:
            self.held.update(r.seqs)
        else:
            self.stored_through = max(self.stored_through, r.last)

    async def settled(self, r: Range) -> None:
        """In-doubt batch r turned out stored: written now, nothing in flight."""
        self.inserted(r)
        await self._write(self._known(None))

    async def flush(self) -> None:
        """Write what is known: what is stored, no batch in flight."""
        if self.unwritten:
            await self._write(self._known(None))

    async def stored(self, seq: int) -> None:
        """Everything up to `seq` is stored; no batch in flight (written now)."""
        self.stored_through = max(seq, self.stored_through)
        await self._write(self._known(None))

    async def _write(self, state: CommitState) -> None:
        from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError

        value = state.encode()
        try:
            # Revision 0 = the key must not exist yet (KV create semantics).
            self._revision = await self._kv.update(self._key, value, last=self._revision)
        except KeyWrongLastSequenceError as exc:
            # A retry of a write whose answer was lost (a leader election, a dropped connection)
            # finds the entry moved by that very write: then it is ours, and the log goes on.
            revision = await self._landed(value)
            if revision is None:
                raise StaleCommitState(f"commit state {self._key} moved under this owner: {exc}") from exc
            self._revision = revision
        except NoStreamResponseError:
            # Nobody took the write: a leader election (retried by the caller), or the bucket
            # was deleted under us. Then what this owner holds is the whole truth about its
            # partition: the bucket is made again and the state written into it as it is.
            if self.recreate_bucket is None or not await self.recreate_bucket():
                raise
            self._revision = await self._kv.update(self._key, value, last=0)
        self.state = state

    async def _landed(self, value: bytes) -> int | None:
        """The entry's revision when it holds exactly `value` (an unanswered write of ours that landed),
        else None (another owner wrote it, or the server lost our writes)."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv.get(self._key)
        except KeyNotFoundError:
            return None
        return entry.revision if entry.value == value and entry.revision > self._revision else None


@dataclass(frozen=True, slots=True)
class Unstored:
    """What of a batch is still to be stored, in stream order."""

    msgs: Sequence[tuple]
    skipped: int  # deliveries at or below the stored sequence (or repeated in the batch)
    first: int  # stream sequences of the first and last of `msgs` (0 when empty)
    last: int
    first_ts_ns: int
    ordered: bool  # the batch was one run of first deliveries: `msgs` is a slice of it


def unstored(
    msgs: Sequence[tuple], stored: int, redelivered: bool | None = None, held: set[int] | frozenset = frozenset()
) -> Unstored:
    """The messages of a batch (in delivery order) above the stored sequence, in stream order.

    First deliveries of one consumer come in stream order; when the batch is one run of
    them (no redelivery, consumer sequences without a gap or a repeat) two ack subjects
    are decoded and a bisection finds the cut.  Otherwise (after a crash or a server
    restart) every ack subject is decoded and the messages are sorted.  `redelivered`:
    whether the batch holds a redelivery, when the caller knows (the partition finds out
    at intake); None checks every ack subject.  `held`: sequences above `stored` that are
    stored too (while acks were held); they are skipped like those at or below it.
    """
    head, tail = message.parse_ack_subject(msgs[0][REPLY]), message.parse_ack_subject(msgs[-1][REPLY])
    if redelivered is None:
        prefix = message.first_delivery_prefix(msgs[0][REPLY])
        redelivered = not all(map(bytes.startswith, map(_reply, msgs), repeat(prefix)))
    ordered = not redelivered and tail.consumer_seq - head.consumer_seq + 1 == len(msgs)
    if ordered and not held:
        if head.stream_seq > stored:
            return Unstored(msgs, 0, head.stream_seq, tail.stream_seq, head.timestamp_ns, True)
        cut = bisect.bisect_right(msgs, stored, key=lambda m: message.parse_ack_subject(m[REPLY]).stream_seq)
        kept = msgs[cut:]
        if not kept:
            return Unstored(kept, len(msgs), 0, 0, 0, True)
        first = message.parse_ack_subject(kept[0][REPLY])
        return Unstored(kept, cut, first.stream_seq, tail.stream_seq, first.timestamp_ns, True)
    by_seq: dict[int, tuple] = {}
    stamps: dict[int, int] = {}
    for m in msgs:
        d = message.parse_ack_subject(m[REPLY])
        if d.stream_seq > stored and d.stream_seq not in by_seq and d.stream_seq not in held:
            by_seq[d.stream_seq] = m
            stamps[d.stream_seq] = d.timestamp_ns
    seqs = sorted(by_seq)
    kept = [by_seq[s] for s in seqs]
    if not kept:
        return Unstored(kept, len(msgs), 0, 0, 0, ordered)
    return Unstored(kept, len(msgs) - len(kept), seqs[0], seqs[-1], stamps[seqs[0]], ordered and len(kept) == len(msgs))


async def read_stream(nc: Any, stream: str, pattern: str, consumer: str, first: int, last: int) -> list[tuple]:
    """The partition's messages (subject `pattern`) with stream sequences first..last, read back from
    the stream (an ephemeral consumer), in stream order, as deliveries (workers/nats/wire.py tuples)
    whose stand-in ack subject carries their stream sequence and stream timestamp: they rebuild
    what a previous owner held and are never acked."""
    from nats import errors as nats_errors
    from nats.js import api

    if last < first:
        return []
    js = nc.jetstream(timeout=10.0)
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first, ack_policy=api.AckPolicy.NONE,
        filter_subject=pattern, inactive_threshold=60.0, mem_storage=True,
    )
    sub = await js.pull_subscribe(pattern, durable=None, stream=stream, config=config)
    out: list[tuple] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch=1000, timeout=2.0)
            except nats_errors.TimeoutError:
                return out  # the stream holds no more of them (deleted by its limits)
            for m in msgs:
                d = message.parse_ack_subject(m.reply)
                if d.stream_seq > last:
                    return out
                ack = f"$JS.ACK.{stream}.{consumer}.1.{d.stream_seq}.0.{d.timestamp_ns}.0".encode()
                out.append((m.subject.encode(), ack, m.data, _raw_headers(m.headers)))
                if d.stream_seq == last:
                    return out
    finally:
        await sub.unsubscribe()


def _raw_headers(headers: dict | None) -> bytes | None:
    if not headers:
        return None
    return b"NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"


class ExitHook:
    """Test hook: exit the process at a point of the N-th batch with a range this worker stores.

    Armed by EXIT_AFTER_INSERT_ENV (the insert returned; no ack, no state written) or
    EXIT_AFTER_ACK_ENV (the ack is out; the state still names the batch in flight).  The
    variable holds "N" or "N:PATH"; with a PATH the hook fires once over all worker
    generations (it creates the file, and a worker that finds it does not arm the hook).
    """

    POINTS = {"insert": (EXIT_AFTER_INSERT_ENV, "an insert, before its ack"),
              "ack": (EXIT_AFTER_ACK_ENV, "a batch's ack"),
              "part": (EXIT_AFTER_PART_ENV, "a routed batch's first part, before the next")}

    def __init__(self, point: str, n: int, marker: str | None) -> None:
        self.point = point
        self._left = n
        self._marker = marker

    @classmethod
    def from_env(cls) -> "ExitHook | None":
        for point, (var, _) in cls.POINTS.items():
            n, _, marker = os.environ.get(var, "").partition(":")
            if n and int(n) > 0 and not (marker and os.path.exists(marker)):
                return cls(point, int(n), marker or None)
        return None

    def reached(self, point: str, r: Range, log: Any) -> None:
        if point != self.point:
            return
        self._left -= 1
        if self._left != 0:
            return
        if self._marker:
            open(self._marker, "w").close()
        var, what = self.POINTS[point]
        log.error(
            "test hook %s: exiting after %s, before its commit state is written (range %s)",
            var, what, f"{r.first}..{r.last}",
        )
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(1)
