"""The load generator: its own process, so its CPU is never counted with the sink's.

Publishes demo events (bench.events.EventTemplates) to JetStream at a target rate (a
token bucket) or as fast as the server acks, for a number of messages or a duration.
A message counts as published only once JetStream acked it. Acks come back on one
wildcard inbox subscription (cheaper than a future per request), and at most `window`
publishes are unacknowledged at any time.  A publish whose ack does not come within
`ack_timeout_s` (its server was killed, an election lost it) stops holding the window: it
counts as unconfirmed unless its ack comes later, and is never sent again (the bench
counts a message as published only once JetStream acked it).

Every `sample_every`-th event's send time is recorded for the publish-to-insert
latency; every `traceparent_every`-th event carries a W3C traceparent header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.events import EventTemplates, traceparent_for


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


@dataclass
class PublishOutcome:
    """What the publisher reports when done (written as JSON to plan.result_path)."""

    published: int = 0  # acked by JetStream
    refused: int = 0  # answered with an error
    unconfirmed: int = 0  # sent, no answer within the timeout
    sent: int = 0
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
    room = asyncio.Event()
    room.set()
    all_answered = asyncio.Event()
    done_sending = False
    waiting: dict[int, float] = {}  # index -> monotonic send time of each publish not yet answered

    async def on_ack(msg: Any) -> None:
        data = msg.data
        index = msg.subject.rpartition(".")[2]
        waiting.pop(int(index), None)
        sample = samples.get(index)
        # A PubAck names the sequence; anything else is a refusal: an {"error": ...} answer, or a
        # header-only status (503 "no responders" while a stream has no leader) with no data at all.
        acked = b'"seq"' in data and b'"error"' not in data
        if sample is not None and acked:
            sample.append(orjson.loads(data)["seq"])
        if not acked:
            out.refused += 1
            if out.first_error is None:
                status = (msg.headers or {}).get("Status") if data == b"" else None
                out.first_error = f"status {status} {(msg.headers or {}).get('Description', '')}".strip() \
                    if status else data.decode(errors="replace")
        else:
            out.published += 1
            if counter is not None:
                counter.value = out.published
        if len(waiting) <= plan.window // 2:
            room.set()
        if done_sending and not waiting:
            all_answered.set()

    def give_up_unanswered() -> None:
        """Publishes unanswered for ack_timeout_s no longer hold the window."""
        old = time.monotonic() - plan.ack_timeout_s
        for i in [i for i, t in waiting.items() if t < old]:
            del waiting[i]

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
        if plan.rate:
            ahead = start + i / plan.rate - time.monotonic()
            if ahead > 0.002:
                await asyncio.sleep(ahead)
        while len(waiting) >= plan.window:
            room.clear()
            try:
                await asyncio.wait_for(room.wait(), timeout=plan.ack_timeout_s)
            except asyncio.TimeoutError:
                give_up_unanswered()
        headers = None
        if plan.traceparent_every and i % plan.traceparent_every == 0:
            headers = {"traceparent": traceparent_for(i)}
        if i % plan.sample_every == 0:
            samples[str(i)] = [time.time()]
        waiting[i] = time.monotonic()
        await nc.publish(subjects[i % plan.keys], body(i), reply=f"{inbox}.{i}", headers=headers)
        out.sent += 1
        i += 1
    done_sending = True
    await nc.flush()
    give_up_unanswered()
    while waiting:  # the last answers, as long as some keep coming within ack_timeout_s
        try:
            await asyncio.wait_for(all_answered.wait(), timeout=plan.ack_timeout_s)
        except asyncio.TimeoutError:
            give_up_unanswered()
    out.unconfirmed = out.sent - out.published - out.refused
    out.samples = {k: v for k, v in samples.items() if len(v) == 2}  # only acked ones
    out.ended_at = time.time()
    await nc.close()
    return out
