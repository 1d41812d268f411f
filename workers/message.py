"""A JetStream message as the hot path holds it, and what its ack subject and headers say.

Leaf module: both NATS-side and ClickHouse-side code (and the supervisor) read messages,
so their shape lives here rather than in the protocol reader that makes them
(workers/nats/wire.py cuts them out of socket reads).
"""

from __future__ import annotations

from dataclasses import dataclass

# The fields of a routed message.
SUBJECT, REPLY, DATA, HEADERS = 0, 1, 2, 3
RawMsg = tuple  # (subject: bytes, reply: bytes, data: bytes, headers: bytes | None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the ack subject of a JetStream message tells about it."""

    stream_seq: int
    consumer_seq: int  # the consumer's delivery number: consecutive over all its deliveries
    delivered: int  # how many times this message has been delivered, this one included
    timestamp_ns: int  # when the stream stored it
    pending: int  # messages left in the consumer after this one


def first_delivery_prefix(reply: bytes) -> bytes:
    """The start every first delivery's ack subject of this consumer has.

    ``$JS.ACK.[domain.hash.]<stream>.<consumer>.1.``: a message whose ack subject
    starts so was delivered once. The hot path checks every message with one
    ``startswith`` instead of decoding its subject.
    """
    tokens = reply.split(b".")
    if len(tokens) < 9 or tokens[0] != b"$JS" or tokens[1] != b"ACK":
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    base = 2 if len(tokens) == 9 else 4
    return b".".join(tokens[: base + 2]) + b".1."


def redelivered(reply: bytes) -> int:
    """How many times the message was delivered, or 0 on its first delivery."""
    d = parse_ack_subject(reply)
    return 0 if d.delivered == 1 else d.delivered


def parse_ack_subject(reply: bytes | str) -> Delivery:
    """Decode `$JS.ACK.[domain.hash.]<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]`."""
    if isinstance(reply, (bytes, bytearray)):
        reply = reply.decode("ascii", "replace")
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    # The v1 form has 9 tokens; v2 inserts domain and account hash after ACK and may
    # append a random token.
    base = 2 if len(tokens) == 9 else 4
    return Delivery(
        stream_seq=int(tokens[base + 3]),
        consumer_seq=int(tokens[base + 4]),
        delivered=int(tokens[base + 2]),
        timestamp_ns=int(tokens[base + 5]),
        pending=int(tokens[base + 6]),
    )


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """NATS headers (``NATS/1.0[ <status>[ <description>]]\\r\\nK: V\\r\\n...``) as a dict.

    An inline status becomes "Status" and "Description", as nats-py reports them.
    """
    if not raw:
        return {}
    lines = raw.decode("utf-8", "replace").split("\r\n")
    out: dict[str, str] = {}
    first = lines[0]
    if first.startswith("NATS/1.0 "):
        status, _, description = first[9:].strip().partition(" ")
        if status.isdigit():
            out["Status"] = status
        if description:
            out["Description"] = description
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def header_lists(raw: bytes | None) -> dict[str, list[str]]:
    """Every header of a message with all its values, in the order sent (a name may repeat).

    Unlike parse_headers, the status line is not a header here: stored messages have none.
    """
    out: dict[str, list[str]] = {}
    if not raw:
        return out
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out.setdefault(key.strip(), []).append(value.strip())
    return out


# Token positions in an ack subject after its base (2 in the v1 form, 4 in v2), as parse_ack_subject reads them.
DELIVERED, STREAM_SEQ, TIMESTAMP = 2, 3, 5


def ack_field(msgs: list[tuple], field: int) -> list[int]:
    """One number of every message's ack subject (DELIVERED, STREAM_SEQ or TIMESTAMP), in bulk:
    what parse_ack_subject would give, without a Delivery per message (the metadata columns' path)."""
    if not msgs:
        return []
    index = (2 if msgs[0][REPLY].count(b".") == 8 else 4) + field
    out = [int(m[REPLY].split(b".", index + 1)[index]) for m in msgs]
    if index == 2 + field and any(m[REPLY].count(b".") != 8 for m in msgs):  # forms mixed: read each alone
        attr = {DELIVERED: "delivered", STREAM_SEQ: "stream_seq", TIMESTAMP: "timestamp_ns"}[field]
        out = [getattr(parse_ack_subject(m[REPLY]), attr) for m in msgs]
    return out


def header_values(raw: bytes | None, name: bytes) -> list[str]:
    """The values of header `name` (exact, as bytes) in a message's header block, in order: a byte search,
    not a parse of every header (the metadata columns' path)."""
    if not raw:
        return []
    needle = b"\r\n" + name + b":"
    out = []
    at = raw.find(needle)
    while at >= 0:
        start = at + len(needle)
        end = raw.find(b"\r\n", start)
        out.append(raw[start:end if end >= 0 else len(raw)].strip().decode("utf-8", "replace"))
        at = raw.find(needle, start)
    return out
