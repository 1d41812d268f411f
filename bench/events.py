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


async def publish(nc: Any, messages: Iterable[tuple[str, bytes, dict[str, str] | None]], window: int = 2000, stream: str | None = None) -> PublishResult:
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


def event_messages(start: int, count: int, payload_bytes: int = 0, prefix: str = "events", keys: int = 16) -> Iterator[tuple[str, bytes, None]]:
    """(subject, body, headers) for events start..start+count-1."""
    for i in range(start, start + count):
        yield subject_for(i, prefix, keys), orjson.dumps(make_event(i, payload_bytes)), None
