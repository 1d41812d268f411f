"""Which shard a Distributed table sends a row to, computed in Python.

A Distributed table with sharding key `cityHash64(col)` (or a bare integer column)
sends a row to shard `slots[key % total_weight]`, where `slots` lists each shard's
0-based index (in the cluster's order) repeated `weight` times. Inserting each
shard's part of a batch directly into that shard keeps the rows where a
Distributed table would put them, so reads through it (and a later switch back to
inserting through it) agree.

cityHash64 in ClickHouse 18.16 depends on the column's type, not only on the value:
  - String: CityHash64 (v1.0.2) of the UTF-8 bytes; FixedString(N): of all N bytes,
    the zero padding included.
  - integers, Date, DateTime: not the bytes. The value, zero-extended to 64 bits (an
    Int8 -1 is 0xFF, no sign extension), xor 0x4CF2D2BAAE6DA887, then Murmur3's
    64-bit finaliser (ClickHouse's intHash64).
A bare integer key is the value itself, taken as unsigned of its own width.
tests/integration/test_clickhouse_cluster.py checks both rules against a server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clickhouse_cityhash.cityhash import CityHash64

_M64 = (1 << 64) - 1
_INT_BYTES = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4,
              "Int64": 8, "UInt64": 8, "Date": 2, "DateTime": 4}
_EPOCH = dt.date(1970, 1, 1)


def int_hash64(value: int, nbytes: int = 8) -> int:
    """cityHash64 of an integer column of `nbytes` bytes, as ClickHouse 18.16 computes it."""
    x = (value & ((1 << (8 * nbytes)) - 1)) ^ 0x4CF2D2BAAE6DA887
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def slots_for(weights: Sequence[int]) -> tuple[int, ...]:
    """Each shard's 0-based index repeated `weight` times, in the cluster's order."""
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError(f"shard weights {list(weights)} need at least one positive weight and no negative one")
    return tuple(i for i, w in enumerate(weights) for _ in range(w))


def key_function(column_type: str, hashed: bool = True) -> Callable[[object], int]:
    """The function from a column's value to the number a Distributed table takes modulo.

    `hashed` is the key `cityHash64(col)`; otherwise the key is the bare column, which
    ClickHouse allows for integer columns only. Chosen once per column, so the per-row
    call does no type dispatch. Raises ValueError for a type this module cannot follow.
    """
    base = column_type.strip()
    if base.startswith("LowCardinality(") and base.endswith(")"):
        # cityHash64 runs on the dictionary's values: the same as on the plain type.
        base = base[len("LowCardinality("):-1].strip()
    if base == "String" and hashed:
        return _string_hash
    if base.startswith("FixedString(") and base.endswith(")") and hashed:
        return _fixed_string_hash(int(base[len("FixedString("):-1]))
    nbytes = _INT_BYTES.get(base)
    if nbytes is None or (not hashed and base in ("Date", "DateTime")):
        how = "cityHash64(column)" if hashed else "a bare column"
        raise ValueError(f"cannot compute a sharding key of {how} for type {column_type!r}: "
                         "use a String, FixedString, integer, Date or DateTime column")
    to_int = _temporal_to_int(base)
    if not hashed:
        mask = (1 << (8 * nbytes)) - 1
        return lambda value: value & mask  # a signed key is read as unsigned of its width
    return lambda value: int_hash64(to_int(value), nbytes)


def shard_of(value: object, column_type: str, slots: Sequence[int], hashed: bool = True) -> int:
    """0-based index of the shard a Distributed table sends a row with this key to."""
    return slots[key_function(column_type, hashed)(value) % len(slots)]


@dataclass(frozen=True)
class ShardRule:
    """A pipeline's sharding: the key column's type, the slots, hashed or bare."""

    column_type: str
    slots: tuple[int, ...]
    hashed: bool = True

    def __post_init__(self) -> None:
        key_function(self.column_type, self.hashed)  # fail at config time, not per row

    def selector(self) -> Callable[[object], int]:
        """value -> 0-based shard index; build it once per batch and call it per row."""
        key, slots, total = key_function(self.column_type, self.hashed), self.slots, len(self.slots)
        return lambda value: slots[key(value) % total]


def _string_hash(value: object) -> int:
    return CityHash64(value.encode() if isinstance(value, str) else bytes(value))


def _fixed_string_hash(size: int) -> Callable[[object], int]:
    def fixed(value: object) -> int:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        # The server stores (and hashes) exactly `size` bytes: shorter values are zero-padded.
        return CityHash64(raw.ljust(size, b"\0"))
    return fixed


def _temporal_to_int(base: str) -> Callable[[object], int]:
    if base == "Date":
        return lambda v: (v - _EPOCH).days if isinstance(v, dt.date) else int(v)
    if base == "DateTime":
        # A naive datetime is taken as UTC (how the cluster fixtures run their servers).
        def seconds(v: object) -> int:
            if isinstance(v, dt.datetime):
                return int((v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)).timestamp())
            return int(v)
        return seconds
    return int
