"""The JetStream pull protocol, spoken over a plain NATS connection.

nats-py's `fetch()` costs ~40 us of Python per message; asking the consumer for
messages ourselves (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with a reply
inbox) and reading the replies off one subscription costs a fraction of that.  This
module holds the wire details: the request, the status replies, the ack subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# Status codes the server sends on the pull inbox (as NATS/1.0 <code> headers) that the
# partition tells apart; any other (404 no messages, 408 request expired) ends the request.
CONFLICT = "409"  # max ack pending reached, consumer deleted, leadership change...
PIN_LOST = "423"  # the priority group's pin is another puller's (Nats-Pin-Id mismatch, Nats-Wrong-Pin-Id)
UNAVAILABLE = "503"  # no responders: the stream or consumer has no leader right now (failover)
HEARTBEAT = "100"
PIN_HEADER = b"Nats-Pin-Id"

# Acks the partition sends (no NAK or TERM: what cannot be stored goes to the DLQ, a failed insert is retried).
ACK = b"+ACK"
IN_PROGRESS = b"+WPI"


def next_subject(stream: str, consumer: str) -> str:
    """Subject a pull request for `consumer` is published to."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def pull_request(batch: int, expires_s: float, max_bytes: int | None = None, group: str | None = None,
                 pin_id: str | None = None) -> bytes:
    """Body of a pull request: up to `batch` messages, expiring after `expires_s`.

    `group`: the consumer's priority group; `pin_id`: the pin this puller holds. A pull
    without an id gets the pin if no one holds it, else it waits (and ends with 408).
    """
    req: dict[str, int | str] = {"batch": batch, "expires": int(expires_s * 1e9)}
    if max_bytes:
        req["max_bytes"] = max_bytes
    if group:
        req["group"] = group
        if pin_id:
            req["id"] = pin_id
    return orjson.dumps(req)


def unpin_subject(stream: str, consumer: str) -> str:
    """Where a consumer's pin is released (the next pull without an id gets it)."""
    return f"$JS.API.CONSUMER.UNPIN.{stream}.{consumer}"


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
