"""nats-server's own CPU profile: Go's pprof format -> collapsed stacks and a breakdown.

nats-server started with ``--profile <port>`` serves Go's ``/debug/pprof/profile``: a
gzipped protobuf (profile.proto) of stack samples.  The bench reads it here, so a run
shows where the server's time goes beside the workers' py-spy flame graphs: the same
collapsed-stack text feeds the same SVG and speedscope views (supervisor/flamegraph.py).

The reader decodes only what that needs (samples, locations, functions, strings); the
protobuf wire format is read by hand because the message is small and fixed, and the
alternative (compiling profile.proto) would add a build step for one file.
"""

from __future__ import annotations

import gzip
import re
from typing import Iterator

# profile.proto field numbers
_SAMPLE_TYPE, _SAMPLE, _LOCATION, _FUNCTION, _STRING_TABLE, _PERIOD = 1, 2, 4, 5, 6, 12
_SAMPLE_LOCATION_ID, _SAMPLE_VALUE = 1, 2
_LOCATION_ID, _LOCATION_LINE = 1, 4
_LINE_FUNCTION_ID = 1
_FUNCTION_ID, _FUNCTION_NAME = 1, 2
_VALUE_TYPE_TYPE = 1


class ProfileError(ValueError):
    """The bytes are not a pprof profile this reader understands."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf):
            raise ProfileError("truncated varint")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, wire, value
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > n:
                raise ProfileError("truncated field")
            yield number, wire, buf[i : i + size]
            i += size
        elif wire == 1:
            yield number, wire, buf[i : i + 8]
            i += 8
        elif wire == 5:
            yield number, wire, buf[i : i + 4]
            i += 4
        else:
            raise ProfileError(f"unsupported wire type {wire}")


def _ints(wire: int, value: int | bytes) -> list[int]:
    """A repeated integer field: one varint, or a packed run of them."""
    if wire == 0:
        return [value]  # type: ignore[list-item]
    out, i = [], 0
    while i < len(value):  # type: ignore[arg-type]
        v, i = _varint(value, i)  # type: ignore[arg-type]
        out.append(v)
    return out


_MODULE = re.compile(r"^github\.com/nats-io/nats-server/v2/")
_GENERIC = re.compile(r"\[[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*\]")


def short_name(name: str) -> str:
    """A Go function name as a flame-graph frame: the server's module path and generic
    type arguments (which hold ';' and spaces) left out."""
    name = _MODULE.sub("", name)
    if "[" in name:
        name = _GENERIC.sub("[...]", name)
    return name.replace(";", ",")


def read(data: bytes) -> tuple[list[tuple[list[str], int]], int]:
    """(stacks outermost frame first with their sample counts, sampling period in ns).

    `data` is what /debug/pprof/profile returns (gzipped or not).
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ProfileError(f"not a gzipped profile: {exc}") from None
    strings: list[str] = []
    sample_types: list[int] = []
    raw_samples: list[tuple[list[int], list[int]]] = []
    locations: dict[int, list[int]] = {}  # location id -> function ids, innermost (inlined) first
    functions: dict[int, int] = {}  # function id -> name string index
    period = 0
    for number, wire, value in _fields(data):
        if number == _STRING_TABLE:
            strings.append(value.decode("utf-8", "replace"))  # type: ignore[union-attr]
        elif number == _SAMPLE_TYPE:
            sample_types.append(next((v for f, _, v in _fields(value) if f == _VALUE_TYPE_TYPE), 0))  # type: ignore[arg-type, misc]
        elif number == _SAMPLE:
            loc_ids: list[int] = []
            values: list[int] = []
            for f, w, v in _fields(value):  # type: ignore[arg-type]
                if f == _SAMPLE_LOCATION_ID:
                    loc_ids += _ints(w, v)
                elif f == _SAMPLE_VALUE:
                    values += _ints(w, v)
            raw_samples.append((loc_ids, values))
        elif number == _LOCATION:
            loc_id, funcs = 0, []
            for f, _, v in _fields(value):  # type: ignore[arg-type]
                if f == _LOCATION_ID:
                    loc_id = v  # type: ignore[assignment]
                elif f == _LOCATION_LINE:
                    funcs.append(next((x for g, _, x in _fields(v) if g == _LINE_FUNCTION_ID), 0))  # type: ignore[arg-type, misc]
            locations[loc_id] = funcs
        elif number == _FUNCTION:
            fields = {f: v for f, _, v in _fields(value)}  # type: ignore[arg-type]
            functions[fields.get(_FUNCTION_ID, 0)] = fields.get(_FUNCTION_NAME, 0)  # type: ignore[assignment]
        elif number == _PERIOD and wire == 0:
            period = value  # type: ignore[assignment]
    if not strings:
        raise ProfileError("no string table: not a pprof profile")
    # The "samples" value (count), not "cpu" (nanoseconds): counts are what a collapsed
    # stack carries.  Go's CPU profile lists [samples/count, cpu/nanoseconds].
    which = next((k for k, t in enumerate(sample_types) if 0 <= t < len(strings) and strings[t] == "samples"), 0)
    merged: dict[tuple[str, ...], int] = {}
    for loc_ids, values in raw_samples:
        if which >= len(values) or values[which] <= 0:
            continue
        frames: list[str] = []
        for loc in loc_ids:  # innermost first, and within a location inlined callee first
            for fid in locations.get(loc, ()):
                idx = functions.get(fid)
                frames.append(short_name(strings[idx]) if idx is not None and idx < len(strings) else "?")
        key = tuple(reversed(frames)) or ("?",)
        merged[key] = merged.get(key, 0) + values[which]
    return [(list(k), c) for k, c in merged.items()], period


def to_collapsed(stacks: list[tuple[list[str], int]]) -> str:
    """Collapsed-stack text ("outer;...;inner count" lines), as py-spy writes."""
    return "".join(f"{';'.join(frames)} {count}\n" for frames, count in stacks)


# Where nats-server's time goes, by the first rule with a marker in a frame of the sample's
# stack (a substring: "LoadNextMsg" also matches LoadNextMsgMulti). Order matters: the
# consumer loop both looks messages up and delivers them.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("message lookup (file store, subject filter)", ("(*fileStore).LoadNextMsg", "(*memStore).LoadNextMsg")),
    (
        "consumer state writes",
        ("(*consumerFileStore).flushLoop", "(*consumerFileStore).writeState", "(*consumerFileStore).encodeState"),
    ),
    # A pull consumer's deliveries go out through its stream's internal client.
    ("delivery to the client", ("(*consumer).deliverMsg", "(*stream).internalLoop")),
    ("acks", ("(*consumer).processAck", "(*consumer).ackMsg")),
    ("pull requests", ("(*consumer).processNextMsgReq", "(*consumer).processWaiting")),
    (
        "stream writes (publish)",
        ("(*stream).processJetStreamMsg", "(*stream).processInboundJetStreamMsg", "(*fileStore).StoreMsg"),
    ),
    ("consumer loop, other", ("(*consumer).loopAndGatherMsgs",)),
    (
        "client connections (read, route, write)",
        ("(*client).readLoop", "(*client).writeLoop", "(*client).flushOutbound"),
    ),
    ("Go runtime (GC, scheduler)", ("runtime.",)),
)
OTHER = "other"


def breakdown(stacks: list[tuple[list[str], int]]) -> list[dict]:
    """[{part, pct}] over PARTS (and "other"), largest first; shares of all samples."""
    from bench.flame import part_shares

    return part_shares(stacks, _part)


def _part(frames: list[str]) -> str:
    for part, markers in PARTS:
        for marker in markers:
            if marker.endswith("."):
                # A package prefix ("runtime."): only for stacks that are the runtime's alone.
                if all(f.startswith(marker) for f in frames):
                    return part
            elif any(marker in f for f in frames):
                return part
    return OTHER
