"""Which worker slot owns which partition.

Rendezvous (highest-random-weight) hashing with a load bound: every partition ranks
the slots by a stable hash of (partition, slot) and goes to the best-ranked slot that
still has room (at most ceil(P / N) partitions).  Plain rendezvous hashing moves only
~P/N partitions when a slot is added or removed, but with few partitions it can leave
one slot with twice the work of another; the bound keeps the pool balanced while the
ranking keeps most partitions where they were.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True, order=True)
class Partition:
    """One durable consumer: partition `index` of pipeline `pipeline`."""

    pipeline: str
    index: int

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.index}"


def _weight(partition: Partition, slot: int) -> int:
    digest = hashlib.blake2b(f"{partition}#{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: Iterable[Partition], slots: int) -> dict[int, tuple[Partition, ...]]:
    """Map each slot in range(slots) to the partitions it owns (every partition exactly once)."""
    if slots < 1:
        raise ValueError("slots must be >= 1")
    parts = sorted(set(partitions))
    cap = max(1, math.ceil(len(parts) / slots))
    owned: dict[int, list[Partition]] = {s: [] for s in range(slots)}
    # Deciding the partitions in a hash order (not name order) keeps the bound from
    # always pushing the same trailing partitions onto the leftover slots.
    for part in sorted(parts, key=lambda p: _weight(p, -1)):
        ranked = sorted(range(slots), key=lambda s: _weight(part, s), reverse=True)
        slot = next(s for s in ranked if len(owned[s]) < cap)
        owned[slot].append(part)
    return {s: tuple(sorted(ps)) for s, ps in owned.items()}


def rebalance(
    previous: Mapping[int, Iterable[Partition]], partitions: Iterable[Partition], slots: int
) -> dict[int, tuple[Partition, ...]]:
    """Resize an assignment to `slots` slots, moving as few partitions as the load bound allows.

    A partition stays with its owner while that slot still exists and is under
    ceil(P / N); only the overflow (and partitions of removed slots, and new ones) is
    placed again, by rendezvous rank.  Starting from scratch after a resize would
    cascade: the load bound can push a partition off a slot it did not need to leave.
    """
    if slots < 1:
        raise ValueError("slots must be >= 1")
    parts = sorted(set(partitions))
    wanted = set(parts)
    cap = max(1, math.ceil(len(parts) / slots))
    owned: dict[int, list[Partition]] = {s: [] for s in range(slots)}
    homeless: list[Partition] = []
    for slot, ps in sorted(previous.items()):
        for part in sorted(ps, key=lambda p: _weight(p, slot), reverse=True):
            if part not in wanted:
                continue
            wanted.discard(part)
            if slot in owned and len(owned[slot]) < cap:
                owned[slot].append(part)
            else:
                homeless.append(part)
    homeless.extend(wanted)
    for part in sorted(homeless, key=lambda p: _weight(p, -1)):
        ranked = sorted(range(slots), key=lambda s: (len(owned[s]) >= cap, -_weight(part, s)))
        owned[ranked[0]].append(part)
    return {s: tuple(sorted(ps)) for s, ps in owned.items()}


def owner_of(assignment: Mapping[int, Iterable[Partition]]) -> dict[Partition, int]:
    """Invert an assignment: partition -> slot."""
    return {p: s for s, ps in assignment.items() for p in ps}


def moves(
    old: Mapping[int, Iterable[Partition]], new: Mapping[int, Iterable[Partition]]
) -> list[tuple[Partition, int | None, int]]:
    """Partitions whose owner changes, as (partition, old slot or None, new slot)."""
    before, after = owner_of(old), owner_of(new)
    return [(p, before.get(p), s) for p, s in sorted(after.items()) if before.get(p) != s]
