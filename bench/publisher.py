"""The load generator: its own process, so its CPU is never counted with the sink's.

Publishes demo events (bench.events.EventTemplates) to JetStream at a target rate (a
token bucket) or as fast as the server acks, for a number of messages or a duration.
A message counts as published only once JetStream acked it. Acks come back on one
wildcard inbox subscription (cheaper than a future per request), and at most `window`
publishes are unacknowledged at any time.  A publish whose ack does not come within
`ack_timeout_s` (its server was killed, an election lost it) stops holding the window: it
counts as unconfirmed unless its ack comes later, and is never sent again (the bench
counts a message as published only once JetStream acked it).  A refused publish (an error
answer, or a 503 "no responders" status while the stream has no leader) was not stored: it
is sent again with backoff, before any new message, for up to `retry_for_s`.

Every `sample_every`-th event's send time is recorded for the publish-to-insert
latency; every `traceparent_every`-th event carries a W3C traceparent header.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.events import EventTemplates, traceparent_for

RETRY_FIRST_S = 0.1  # a refused publish is sent again after this, doubling up to RETRY_MAX_S
RETRY_MAX_S = 2.0


@dataclass(frozen=True)
class PublishPlan:
    """What to publish, where, and how fast."""

    config_path: str  # the run's generated config.yaml: its nats section says where and how
    subject_prefix: str  # events go to "<prefix>.k<i % keys>"
    messages: int | None  # stop after this many...
    duration_s: float | None  # ...or after this long (one of the two)
    rate: float | None  # messages/s; None = as fast as JetStream acks
    payload_bytes: int
    keys: int
    sample_every: int
    traceparent_every: int  # 0 = no traceparent headers
    result_path: str
    window: int = 4000
    ack_timeout_s: float = 5.0
    retry_for_s: float = 60.0  # a refused publish is sent again for this long


@dataclass
class PublishOutcome:
    """What the publisher reports when done (written as JSON to plan.result_path)."""

    published: int = 0  # acked by JetStream
    refused: int = 0  # answered with an error every time for retry_for_s
    unconfirmed: int = 0  # sent, no answer within the timeout
    sent: int = 0
    resent: int = 0  # refused publishes sent again
    started_at: float = 0.0  # wall clock (time.time())
    ended_at: float = 0.0
    # event index -> [wall-clock send time, stream sequence] of the sampled events
    samples: dict[str, list] | None = None
    first_error: str | None = None


def main(plan: PublishPlan, counter: Any) -> None:
    """Process entry point: publish, then write the outcome. `counter` is a shared int."""
    logging.getLogger("workers").setLevel(logging.ERROR)  # "disconnected" when we close
    outcome = asyncio.run(publish(plan, counter))
    Path(plan.result_path).write_bytes(orjson.dumps(asdict(outcome)))


async def publish(plan: PublishPlan, counter: Any = None) -> PublishOutcome:
    from supervisor.config import load_config
    from workers.nats.connect import connect_nats

    templates = EventTemplates(plan.payload_bytes)
    subjects = [f"{plan.subject_prefix}.k{k}" for k in range(plan.keys)]
    out = PublishOutcome(samples={})
    samples = out.samples
    answered = asyncio.Event()  # set on every answer: the window may have room again
    waiting: dict[int, float] = {}  # index -> monotonic send time of each publish not yet answered
    refused: dict[int, tuple[float, int]] = {}  # index -> (first refusal, refusals) of a publish to send again
    again: list[tuple[float, int]] = []  # heap of (when, index) of refused publishes to send again

    async def on_ack(msg: Any) -> None:
        data = msg.data
        index = msg.subject.rpartition(".")[2]
        i = int(index)
        waiting.pop(i, None)
        answered.set()
        # A PubAck names the sequence; anything else is a refusal: an {"error": ...} answer, or a
        # header-only status (503 "no responders" while a stream has no leader) with no data at all.
        # A refused message was not stored: it is sent again, as a producer would.
        if b'"seq"' in data and b'"error"' not in data:
            refused.pop(i, None)
            sample = samples.get(index)
            if sample is not None:
                sample.append(orjson.loads(data)["seq"])
            out.published += 1
            if counter is not None:
                counter.value = out.published
            return
        if out.first_error is None:
            status = (msg.headers or {}).get("Status") if data == b"" else None
            out.first_error = f"status {status} {(msg.headers or {}).get('Description', '')}".strip() \
                if status else data.decode(errors="replace")
        now = time.monotonic()
        first, times = refused.get(i, (now, 0))
        if now - first >= plan.retry_for_s:
            refused.pop(i, None)
            out.refused += 1
            return
        refused[i] = (first, times + 1)
        heapq.heappush(again, (now + min(RETRY_MAX_S, RETRY_FIRST_S * 2**times), i))

    def give_up_unanswered() -> None:
        """Publishes unanswered for ack_timeout_s no longer hold the window."""
        old = time.monotonic() - plan.ack_timeout_s
        for i in [i for i, t in waiting.items() if t < old]:
            del waiting[i]

    async def room() -> None:
        while len(waiting) >= plan.window:
            answered.clear()
            try:
                await asyncio.wait_for(answered.wait(), timeout=plan.ack_timeout_s)
            except asyncio.TimeoutError:
                give_up_unanswered()

    async def send(i: int) -> None:
        headers = None
        if plan.traceparent_every and i % plan.traceparent_every == 0:
            headers = {"traceparent": traceparent_for(i)}
        if i % plan.sample_every == 0:
            samples[str(i)] = [time.time()]
        waiting[i] = time.monotonic()
        await nc.publish(subjects[i % plan.keys], body(i), reply=f"{inbox}.{i}", headers=headers)

    async def send_again() -> None:
        """Refused publishes whose backoff is over, before any new one; waits for the first one due."""
        if again[0][0] > time.monotonic():
            await asyncio.sleep(min(0.05, again[0][0] - time.monotonic()))
        while again and again[0][0] <= time.monotonic():
            _, i = heapq.heappop(again)
            await room()
            await send(i)
            out.resent += 1

    nc = await connect_nats(
        load_config(plan.config_path).nats, name="jetsink-bench-publisher", pending_size=64 * 1024 * 1024
    )
    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=on_ack, pending_msgs_limit=10 * plan.window)
    body = templates.body
    limit = plan.messages
    deadline = None if plan.duration_s is None else time.monotonic() + plan.duration_s
    start = time.monotonic()
    out.started_at = time.time()
    i = 0
    while (limit is None or i < limit) and (deadline is None or time.monotonic() < deadline):
        if again:
            await send_again()
            continue
        if plan.rate:
            ahead = start + i / plan.rate - time.monotonic()
            if ahead > 0.002:
                await asyncio.sleep(ahead)
        await room()
        await send(i)
        out.sent += 1
        i += 1
    await nc.flush()
    while waiting or again:  # the last answers, as long as some keep coming within ack_timeout_s
        if again:
            await send_again()
            continue
        answered.clear()
        try:
            await asyncio.wait_for(answered.wait(), timeout=plan.ack_timeout_s)
        except asyncio.TimeoutError:
            give_up_unanswered()
    out.unconfirmed = out.sent - out.published - out.refused
    out.samples = {k: v for k, v in samples.items() if len(v) == 2}  # only acked ones
    out.ended_at = time.time()
    await nc.close()
    return out
