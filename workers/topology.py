"""How a pipeline's subjects become partitions: the stream's subject transform and consumer names.

A producer publishes to `events.<key>`; the stream rewrites the subject on the way
in to `events.<p>.<key>` with p = partition(P, key), so every key always lands in
the same partition and each partition is one durable consumer filtering `events.<p>.*`.
"""

from __future__ import annotations

# The priority group every partition consumer has (policy pinned_client: one puller at a
# time); pull requests name it. At most 16 characters.
PRIORITY_GROUP = "jetsink"


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
