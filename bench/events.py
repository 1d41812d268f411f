"""Realistic demo events and a fast JetStream publisher (used by bench and the tests).

An event matches the shipped demo table (config.yaml): event_id, ts, user.id, kind,
amount, country, tags, session_id, payload.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import orjson
from opentelemetry import trace

from workers.observability.telemetry import traceparent_of

KINDS = ("click", "view", "purchase", "signup", "logout")
COUNTRIES = ("DE", "FR", "US", "BR", "JP", "IN", "NG", "SE")
BASE_TS = 1_790_000_000  # 2026-09-21, whole seconds: the demo column is DateTime


def make_event(i: int, payload_bytes: int = 0, rng: random.Random | None = None) -> dict[str, Any]:
    """Event number i; deterministic for a given i so tests can recompute what was sent."""
    r = rng or random.Random(i)
    ts = BASE_TS + i % 86_400
    event = {
        "event_id": f"e{i:012d}",
        "ts": f"{_iso(ts)}Z",
        "user": {"id": r.randrange(1, 10_000_000)},
        "kind": KINDS[i % len(KINDS)],
        "amount": round(r.uniform(0, 500), 2),
        "country": COUNTRIES[i % len(COUNTRIES)],
        "tags": [f"t{r.randrange(20)}" for _ in range(i % 3)],
        "session_id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
        "payload": "",
    }
    if payload_bytes:
        base = len(orjson.dumps(event))
        event["payload"] = "x" * max(0, payload_bytes - base)
    return event


def _iso(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def subject_for(i: int, prefix: str = "events", keys: int = 16) -> str:
    """Spread events over `keys` subjects (partition keys)."""
    return f"{prefix}.k{i % keys}"


@dataclass
class PublishResult:
    published: int
    first_seq: int
    last_seq: int


async def publish(
    nc: Any, messages: Iterable[tuple[str, bytes, dict[str, str] | None]], window: int = 2000, stream: str | None = None
) -> PublishResult:
    """Publish to JetStream with up to `window` acks outstanding; raises if any is refused.

    Every message counts as published only when JetStream acked it.
    """
    inflight: list[asyncio.Future] = []
    count, first, last = 0, 0, 0

    async def settle(futs: list[asyncio.Future]) -> None:
        nonlocal count, first, last
        for reply in await asyncio.gather(*futs):
            body = orjson.loads(reply.data)
            if "error" in body:
                raise RuntimeError(f"publish refused: {body['error']}")
            seq = body["seq"]
            first = seq if not first else min(first, seq)
            last = max(last, seq)
            count += 1

    for subject, data, headers in messages:
        if stream:
            headers = {**(headers or {}), "Nats-Expected-Stream": stream}
        inflight.append(asyncio.ensure_future(nc.request(subject, data, timeout=30.0, headers=headers)))
        if len(inflight) >= window:
            await settle(inflight)
            inflight = []
    if inflight:
        await settle(inflight)
    return PublishResult(count, first, last)


def event_messages(
    start: int, count: int, payload_bytes: int = 0, prefix: str = "events", keys: int = 16
) -> Iterator[tuple[str, bytes, None]]:
    """(subject, body, headers) for events start..start+count-1."""
    for i in range(start, start + count):
        yield subject_for(i, prefix, keys), orjson.dumps(make_event(i, payload_bytes)), None


# ------------------------------------------------------------------ bench traffic

EVENT_ID_WIDTH = 12  # digits after the "e" of make_event's event_id


class EventTemplates:
    """Fast bodies for load tests: event i is make_event(i % size) with event i's own event_id.

    Rendering a fresh event costs ~20 us of Python; a load test must not measure its own
    generator, so `size` distinct events are rendered once and only the event_id is spliced
    in per message (a bytes concatenation, well under a microsecond).
    """

    def __init__(self, payload_bytes: int = 0, size: int = 10_000) -> None:
        self.size = size
        self._parts: list[tuple[bytes, bytes]] = []
        marker = b'"e' + b"0" * EVENT_ID_WIDTH + b'"'
        for j in range(size):
            event = make_event(j, payload_bytes)
            event["event_id"] = "e" + "0" * EVENT_ID_WIDTH
            body = orjson.dumps(event)
            at = body.index(marker)
            self._parts.append((body[: at + 1], body[at + 1 + len(marker) - 2 :]))

    def body(self, i: int) -> bytes:
        """The JSON body of event i."""
        head, tail = self._parts[i % self.size]
        return head + b"e%012d" % i + tail

    def kind_and_ts(self, i: int) -> tuple[str, int]:
        """Event i's `kind` and `ts` (epoch seconds): its place in the demo table's ORDER BY."""
        j = i % self.size
        return KINDS[j % len(KINDS)], BASE_TS + j % 86_400


def event_id(i: int) -> str:
    """The event_id of event i (as make_event and EventTemplates write it)."""
    return f"e{i:0{EVENT_ID_WIDTH}d}"


def traceparent_for(i: int) -> str:
    """A valid W3C traceparent for event i, as a producer's propagator writes it for a sampled span."""
    ctx = trace.SpanContext(i + 1, i + 1, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return traceparent_of(trace.set_span_in_context(trace.NonRecordingSpan(ctx)))
