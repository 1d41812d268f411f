"""Which instance owns which partition, when several supervisors share the pipelines.

Every instance computes the same answer from the same inputs: the partitions, the live
instances (the members KV bucket, supervisor/members.py) and what each of them says it
holds. Each then takes its own share and places it over its local worker slots as
before (supervisor/assignment.py).

Bounded and sticky rendezvous hashing. With P partitions over N instances every
instance gets ``lo = P // N`` partitions and ``P % N`` of them one more, so loads never
differ by more than one. An instance keeps what it holds, its best-ranked first, up to
that bound; when more instances hold ``lo + 1`` than may, the lowest-ranked of them
gives one back. What is left (partitions of a dead or departed instance, a bound that
went down) is placed in a fixed hash order, each on the best-ranked instance (highest
``weight(partition, instance)``) that still has room.

Why sticky rather than stateless: bounded rendezvous computed from scratch moves about
one partition in ten between instances that did not change, when one joins or leaves.
Starting from the holdings, a joining instance takes only partitions others give up, a
leaving one's partitions go only to those with room: adding or removing an instance
moves only its share (tests/unit/test_cluster.py). The holdings are those the members
publish, so the answer is a fixed point: once every instance has released and acquired
what it says, computing again gives the same answer, and halfway there it does too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from supervisor.assignment import Partition


def weight(partition: Partition, instance: str) -> int:
    """The rendezvous weight of a partition on an instance (a stable hash)."""
    digest = hashlib.blake2b(f"{partition}@{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _order(partition: Partition) -> int:
    return weight(partition, "")


def share(
    partitions: Iterable[Partition],
    instances: Iterable[str],
    holdings: Mapping[str, Iterable[Partition]] | None = None,
) -> dict[str, tuple[Partition, ...]]:
    """instance -> the partitions it should own; every partition exactly once.

    `holdings`: what each live instance holds now (others' entries are ignored). A
    partition listed by two instances (their views differed for a moment) stays with
    the one that ranks it higher.
    """
    live = sorted(set(instances))
    if not live:
        raise ValueError("no live instance")
    parts = sorted(set(partitions))
    wanted = set(parts)
    lo, extra = divmod(len(parts), len(live))
    hi = lo + 1 if extra else lo
    holdings = holdings or {}

    claimed: dict[Partition, str] = {}
    for inst in live:
        for p in holdings.get(inst, ()):
            if p in wanted and (p not in claimed or weight(p, inst) > weight(p, claimed[p])):
                claimed[p] = inst
    kept: dict[str, list[Partition]] = {inst: [] for inst in live}
    for p, inst in claimed.items():
        kept[inst].append(p)
    for inst in live:
        kept[inst] = sorted(kept[inst], key=lambda p: weight(p, inst), reverse=True)[:hi]

    # More instances at lo + 1 than may be: the lowest-ranked of them give one back.
    full = sorted((i for i in live if hi > lo and len(kept[i]) == hi), key=lambda i: weight(Partition("", 0), i),
                  reverse=True)
    for inst in full[extra:]:
        kept[inst].pop()
    load = {inst: len(ps) for inst, ps in kept.items()}
    spare = extra - sum(1 for n in load.values() if hi > lo and n == hi)  # lo + 1 places still free

    placed = {p for ps in kept.values() for p in ps}
    for p in sorted(wanted - placed, key=_order):
        room = [i for i in live if load[i] < lo or (load[i] == lo and spare > 0 and hi > lo)]
        inst = max(room, key=lambda i: weight(p, i))
        if load[inst] == lo:
            spare -= 1
        load[inst] += 1
        kept[inst].append(p)
    return {inst: tuple(sorted(ps)) for inst, ps in kept.items()}


def owners(assignment: Mapping[str, Iterable[Partition]]) -> dict[Partition, str]:
    """Invert a share: partition -> instance."""
    return {p: inst for inst, ps in assignment.items() for p in ps}
