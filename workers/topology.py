"""How a pipeline's subjects become partitions: the partition mapping, the streams, consumer names.

A producer publishes to `events.<key>`; the subject becomes `events.<p>.<key>` with
p = partition(P, key), so every key always lands in the same partition.  Two layouts
(`pipelines[].layout`) differ in who rewrites the subject and where it is stored:

* ``single_stream``: the stream's subject transform rewrites it on the way in; one stream
  holds every partition, and each partition is one durable consumer filtering `events.<p>.*`.
* ``stream_per_partition``: the account's subject mapping (core NATS server config, the
  same destination) rewrites it at publish; partition p is a stream of its own,
  `<stream>_<p>`, capturing `events.<p>.*`, with one durable consumer.  nats-server then
  finds a consumer's next message without reading past the other partitions'.

The stored subjects are the same in both, so everything that reads them (column sources,
routes, dead letters' replay) does not know the layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The priority group every partition consumer has (policy pinned_client: one puller at a
# time); pull requests name it. At most 16 characters.
PRIORITY_GROUP = "jetsink"


SINGLE_STREAM = "single_stream"
STREAM_PER_PARTITION = "stream_per_partition"
LAYOUTS = (SINGLE_STREAM, STREAM_PER_PARTITION)

# The token the mapping probe publishes under (supervisor/provision.py): `events.<token>-<n>`.
PROBE_TOKEN = "jetsink-probe"


def _split(subject: str) -> tuple[list[str], int]:
    tokens = subject.split(".")
    first = tokens.index("*")
    return tokens, first


def transform_destination(subject: str, partitions: int) -> str:
    """The subject-transform destination inserting the partition token before the first '*'.

    >>> transform_destination("events.*", 8)
    'events.{{partition(8,1)}}.{{wildcard(1)}}'
    """
    tokens, first = _split(subject)
    wildcards = tokens.count("*")
    out = tokens[:first] + ["{{partition(%d,%s)}}" % (partitions, ",".join(str(i) for i in range(1, wildcards + 1)))]
    n = 0
    for tok in tokens[first:]:
        if tok == "*":
            n += 1
            out.append("{{wildcard(%d)}}" % n)
        else:
            out.append(tok)
    return ".".join(out)


def partition_filter(subject: str, index: int) -> str:
    """The filter subject of partition `index`'s consumer.

    >>> partition_filter("events.*", 3)
    'events.3.*'
    """
    tokens, first = _split(subject)
    return ".".join(tokens[:first] + [str(index)] + tokens[first:])


def stored_subjects(subject: str) -> str:
    """The pattern matching every transformed (stored) subject of the stream."""
    tokens, first = _split(subject)
    return ".".join(tokens[:first] + ["*"] + tokens[first:])


def partition_token_index(subject: str) -> int:
    """Where the partition token sits in the stored subjects of a pipeline subscribed to `subject`.

    >>> partition_token_index("events.*.*")
    1
    """
    return _split(subject)[1]


def original_subject_of(stored: bytes, index: int) -> str:
    """The subject a producer published to, from the stored one (the partition token at `index` removed).

    >>> original_subject_of(b"events.3.click.42", 1)
    'events.click.42'
    """
    tokens = stored.split(b".")
    del tokens[index]
    return b".".join(tokens).decode("utf-8", "replace")


def consumer_name(pipeline: str, index: int) -> str:
    """Durable consumer name of a partition."""
    return f"jetsink_{pipeline}_{index}"


def partition_stream(stream: str, index: int) -> str:
    """The name of partition `index`'s stream in the stream_per_partition layout.

    >>> partition_stream("EVENTS", 3)
    'EVENTS_3'
    """
    return f"{stream}_{index}"


def data_streams(p: Any) -> list[str]:
    """Every stream holding a pipeline's messages: its `stream`, or one per partition."""
    if p.layout == STREAM_PER_PARTITION:
        return [partition_stream(p.stream, i) for i in range(p.partitions)]
    return [p.stream]


def partition_view(p: Any, index: int) -> Any:
    """The pipeline as partition `index` reads it: `stream` is the stream that holds the partition.

    With stream_per_partition that is `<stream>_<index>`; everything a partition does with
    its stream (pull, consumer, commit state, read-back, dead letters' source) then names the
    right one.  Only for a pipeline from the config (a view's `stream` is a partition's already).
    """
    if p.layout == STREAM_PER_PARTITION:
        return dataclasses.replace(p, stream=partition_stream(p.stream, index))
    return p


def account_mapping(subject: str, partitions: int) -> tuple[str, str]:
    """The core NATS subject mapping (source, destination) stream_per_partition needs in the account.

    >>> account_mapping("events.*", 8)
    ('events.*', 'events.{{partition(8,1)}}.{{wildcard(1)}}')
    """
    return subject, transform_destination(subject, partitions)


def partition_of(tokens: list[str], partitions: int) -> int:
    """The partition nats-server's `partition(P, ...)` gives the wildcard tokens `tokens`:
    FNV-1a (32 bits) of their concatenation, modulo P.

    >>> partition_of(["user42"], 8)
    0
    """
    h = 0x811C9DC5
    for b in "".join(tokens).encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def probe_subjects(subject: str, partitions: int) -> list[tuple[str, int]]:
    """Subjects matching `subject` (each `*` a probe token of its own), with the partition each must
    land in, enough of them that every partition is expected once at least."""
    tokens, _ = _split(subject)
    out: list[tuple[str, int]] = []
    seen: set[int] = set()
    n = 0
    # The counter in the first token only: FNV-1a's low bit is the parity of the bytes' low bits, so
    # tokens that repeat it would cancel out and, with an even count, reach half the partitions.
    while len(seen) < partitions and n < 64 * partitions + 64:
        keys = [f"{PROBE_TOKEN}-{n}"] + [f"{PROBE_TOKEN}{w}" for w in range(1, tokens.count("*"))]
        n += 1
        p = partition_of(keys, partitions)
        if p in seen and n > partitions:
            continue
        seen.add(p)
        it = iter(keys)
        out.append((".".join(next(it) if t == "*" else t for t in tokens), p))
    return out
