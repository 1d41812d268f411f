"""The map step of a partition's batch: parse the messages' JSON, map them to columns, and
the dead letters for what cannot be stored (invalid JSON, a refused document, a message on
its last delivery).  Pure functions of the batch, run in the insert thread
(workers/partition/writer.py calls them under the telemetry's map hook;
workers/clickhouse/table_schema.py with the table's current mapper).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from itertools import chain, compress, count, repeat
from operator import add, itemgetter, not_
from typing import Any, Sequence

import orjson

from workers import message
from workers.clickhouse.schema import ColumnMapper
from workers.nats.dlq import DeadLetter

SUBJECT, REPLY, DATA, HEADERS = message.SUBJECT, message.REPLY, message.DATA, message.HEADERS
_reply, _data = itemgetter(REPLY), itemgetter(DATA)


@dataclass(frozen=True)
class PartitionTarget:
    """Where a partition's messages come from and go to."""

    pipeline: Any  # supervisor.config.Pipeline
    index: int
    consumer: str
    worker: int
    replicas: int = 1  # of the pipeline's stream, should the partition have to create it again


@dataclass
class Prepared:
    """A batch after parse and map: the columns to insert and the letters for the DLQ."""

    columns: list[list]
    rows: int
    row_msgs: list[int]  # for each row, the index of its message in the batch
    dead: list[DeadLetter] = field(default_factory=list)
    redelivered: bool = False  # the batch holds redeliveries (its ack then needs the highest sequence)
    mapper: Any = None  # the ColumnMapper that mapped it (set by workers/clickhouse/table_schema.py)
    new_keys: set[str] = field(default_factory=set)  # top-level keys no column reads (ColumnMapper.new_keys)
    # Per route of a routed pipeline (workers/partition/writer.py): label -> [inserted, skipped, dead-lettered].
    routes: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Parsed:
    """A batch after the parse: its documents, and the letters for what could not be parsed."""

    msgs: list[tuple]  # the batch
    docs: list  # the parsed documents
    keep: list[int]  # for each document, the index of its message in the batch
    dead: list[DeadLetter]
    redelivered: bool


def prepare(
    batch_msgs: list[tuple], mapper: ColumnMapper, target: PartitionTarget, first_deliveries: bool = False
) -> Prepared:
    """Parse and map a batch (runs in the insert thread, off the event loop).

    `first_deliveries`: the caller knows that no message is a redelivery (the partition
    checks each socket chunk's ack subjects at intake), so they are not checked again.

    A batch is parsed and mapped CHUNK messages at a time, and the parts joined: its documents
    all at once (10,000 of ~1 KB of objects each) are far larger than a core's cache, which
    every column's pass over them then missed."""
    n = len(batch_msgs)
    if n <= CHUNK:
        return map_parsed(parse(batch_msgs, target, first_deliveries), mapper, target)
    starts = range(0, n, CHUNK)
    return _joined([map_parsed(parse(batch_msgs[i : i + CHUNK], target, first_deliveries), mapper, target)
                    for i in starts], starts, n)


# Messages parsed and mapped at a time (see prepare): 500 documents' objects stay in a core's
# cache. bench.micro's loads+map of 10,000 demo events: ~18 % less CPU per row than all at once.
CHUNK = 500
# The order of a batch's dead letters by reason, as one parse and map of the whole batch makes them.
_DEAD_ORDER = {"max_deliver": 0, "invalid_json": 1}


def _joined(parts: list[Prepared], starts: Sequence[int], n: int) -> Prepared:
    """One Prepared from those of consecutive slices of a batch beginning at `starts`: columns
    concatenated, rows' message indices shifted, dead letters in the whole batch's order."""
    columns = []
    for c in range(len(parts[0].columns)):
        column: list = []
        for p in parts:
            column += p.columns[c]  # a list's extend, in C (chain.from_iterable takes an element at a time)
        columns.append(column)
    rows = sum(p.rows for p in parts)
    if rows == n:
        row_msgs = list(range(n))  # every message a row
    else:
        shifted = (map(add, p.row_msgs, repeat(s)) for p, s in zip(parts, starts, strict=True))
        row_msgs = list(chain.from_iterable(shifted))
    dead = [d for p in parts for d in p.dead]
    if dead:
        dead.sort(key=lambda d: _DEAD_ORDER.get(d.reason, 2))  # stable: slice order within a reason
    return Prepared(columns=columns, rows=rows, row_msgs=row_msgs, dead=dead,
                    redelivered=any(p.redelivered for p in parts), new_keys=set().union(*(p.new_keys for p in parts)))


def parse(batch_msgs: list[tuple], target: PartitionTarget, first_deliveries: bool = False) -> Parsed:
    """The batch's documents; dead letters for invalid JSON and for messages on their last delivery."""
    dead: list[DeadLetter] = []
    msgs = batch_msgs
    keep: list[int] | None = None  # batch index of each doc, when not all are kept
    max_deliver = target.pipeline.max_deliver
    again: list[int] = []  # batch index of each redelivery, found in C (no frame per message)
    if msgs and not first_deliveries:
        prefix = message.first_delivery_prefix(msgs[0][REPLY])
        again = list(compress(count(), map(not_, map(bytes.startswith, map(_reply, msgs), repeat(prefix)))))
    if max_deliver > 0 and again:
        last = {i for i in again if message.redelivered(msgs[i][REPLY]) >= max_deliver}
        if last:
            # JetStream will not deliver these again: if this attempt died too, they would
            # be stranded in the stream. Each has already been part of max_deliver - 1
            # failed batches (worker crashes), so it is kept in the DLQ for a replay instead.
            for i in sorted(last):
                dead.append(dead_letter(
                    msgs[i], target, "max_deliver", f"delivered {max_deliver} times without being stored"))
            keep = [i for i in range(len(msgs)) if i not in last]
            msgs = [msgs[i] for i in keep]
    loads = orjson.loads
    try:
        docs = _loads_all(msgs)
    except orjson.JSONDecodeError:
        # Rare: find the bad ones one by one.
        docs, kept = [], []
        for j, m in enumerate(msgs):
            try:
                docs.append(loads(m[DATA]))
                kept.append(keep[j] if keep is not None else j)
            except orjson.JSONDecodeError as exc:
                dead.append(dead_letter(m, target, "invalid_json", f"invalid JSON: {exc}"))
        keep = kept
    if keep is None:
        keep = list(range(len(docs)))
    return Parsed(batch_msgs, docs, keep, dead, bool(again))


def map_parsed(parsed: Parsed, mapper: ColumnMapper, target: PartitionTarget) -> Prepared:
    """Map a parsed batch's documents (its dead letters carried over, refused documents added)."""
    batch_msgs, docs, keep, dead = parsed.msgs, parsed.docs, parsed.keep, list(parsed.dead)
    if mapper.sources:  # columns filled from the messages themselves
        columns, failures, new_keys = mapper.map_batch(docs, [batch_msgs[k] for k in keep])
    else:
        columns, failures, new_keys = mapper.map_batch(docs)
    failed = set()
    for doc_index, err in failures:
        failed.add(doc_index)
        dead.append(dead_letter(batch_msgs[keep[doc_index]], target, err.reason, err.detail))
    row_msgs = [m for d, m in enumerate(keep) if d not in failed] if failed else keep
    return Prepared(columns=columns, rows=len(row_msgs), row_msgs=row_msgs, dead=dead, redelivered=parsed.redelivered,
                    new_keys=new_keys)


def join_prepared(parts: list[Prepared]) -> Prepared:
    """One Prepared from per-message ones (as _joined: the batch's order of dead letters, its new keys)."""
    return _joined(parts, range(len(parts)), len(parts))


def _loads_all(msgs: list[tuple]) -> list:
    """Every message's JSON (raises at the first invalid one).  A function of its own so
    that CPU profiles show the time orjson takes apart from the rest of prepare().

    The messages are parsed as one JSON array, ``[m1,MARK,m2,MARK,...,mn]``: one orjson call
    for a slice costs ~10 % less than one per message.  MARK is this process's secret
    number, so the array parses into exactly the messages' own values, each from its own
    bytes, only when every message is a JSON text of its own: the n - 1 MARKs found at the
    top level, one between each two values, are all of ours, each between the same two
    messages as we put it.  A message that is not JSON by itself (``{"a": 1}, {"b": 2}``,
    or half an object that its neighbour completes) either breaks the array or moves a
    MARK, and the messages are then parsed one by one, as before."""
    n = len(msgs)
    if n > 1:
        try:
            values = orjson.loads(b"[%b]" % _JOINER.join(map(_data, msgs)))
        except orjson.JSONDecodeError:
            pass
        else:
            if len(values) == 2 * n - 1 and values[1::2].count(_MARK) == n - 1:
                return values[::2]
    return list(map(orjson.loads, map(_data, msgs)))


# Between two messages in _loads_all's array: a number nobody sending us messages can know.
_MARK = secrets.randbits(62) | 1 << 62
_JOINER = b",%d," % _MARK


def dead_letter(msg: tuple, target: PartitionTarget, reason: str, error: str) -> DeadLetter:
    delivery = message.parse_ack_subject(msg[REPLY])
    headers = message.parse_headers(msg[HEADERS]) or None
    return DeadLetter(
        data=msg[DATA],
        subject=msg[SUBJECT].decode("utf-8", "replace"),
        stream=target.pipeline.stream,
        stream_seq=delivery.stream_seq,
        reason=reason,
        error=error,
        pipeline=target.pipeline.name,
        worker=target.worker,
        original_headers=headers,
        traceparent=(headers or {}).get("traceparent"),
    )
