"""The JetStream pull protocol, spoken over a plain NATS connection.

nats-py's `fetch()` costs ~40 us of Python per message; asking the consumer for
messages ourselves (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with a reply
inbox) and reading the replies off one subscription costs a fraction of that.  This
module holds the wire details: the request, the status replies, the ack subject.
"""

from __future__ import annotations

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
