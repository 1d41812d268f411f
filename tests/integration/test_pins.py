"""Pinned consumers on a real nats-server: provision makes them, workers' pull requests speak the group and pin."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
from nats.js import api

from workers import message
from workers.nats import intake
from workers.nats.streams import create_consumer
from workers.topology import PRIORITY_GROUP


async def _pull(nc, stream, consumer, pin_id=None, batch=5, expires_s=0.5):
    """One pull request: the replies (deliveries and status) until it ends."""
    inbox = nc.new_inbox()
    got: list = []
    done = asyncio.Event()

    async def cb(msg):
        got.append(msg)
        status = (msg.headers or {}).get("Status") if msg.headers else None
        if status is not None or len([m for m in got if m.reply]) >= batch:
            done.set()

    sub = await nc.subscribe(inbox, cb=cb)
    await nc.publish(intake.next_subject(stream, consumer), intake.pull_request(batch, expires_s, None, PRIORITY_GROUP,
                                                                                   pin_id), reply=inbox)
    try:
        await asyncio.wait_for(done.wait(), expires_s + 5)
    finally:
        await sub.unsubscribe()
    return got


def test_pinned_consumer_admits_one_puller_and_unpin_moves_it(nats_url):
    async def go():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            stream = f"PIN{uuid.uuid4().hex[:8]}"
            await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"]))
            for i in range(20):
                await js.publish(f"{stream.lower()}.x", json.dumps({"i": i}).encode())
            await create_consumer(nc, stream, api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL,
                                                                 ack_wait=30))
            info = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.c", b"")).data)
            assert info["config"]["priority_groups"] == [PRIORITY_GROUP]
            assert info["config"]["priority_policy"] == "pinned_client"

            first = await _pull(nc, stream, "c")
            pin = first[0].headers.get("Nats-Pin-Id")
            assert pin and len([m for m in first if m.reply]) == 5
            # A pull with another id is refused at once; one with the pin's id is served.
            refused = await _pull(nc, stream, "c", pin_id="not-the-pin")
            assert [m.headers.get("Status") for m in refused] == [intake.PIN_LOST]
            served = await _pull(nc, stream, "c", pin_id=pin)
            assert len([m for m in served if m.reply]) == 5
            # Without an id, a pull waits for the pin and ends with a 408.
            parked = await _pull(nc, stream, "c")
            assert [m.headers.get("Status") for m in parked] == ["408"]
            # Unpinned, the next pull without an id gets a new pin; the old id is refused.
            await nc.request(intake.unpin_subject(stream, "c"), json.dumps({"group": PRIORITY_GROUP}).encode())
            moved = await _pull(nc, stream, "c")
            new_pin = moved[0].headers.get("Nats-Pin-Id")
            assert new_pin and new_pin != pin
            old = await _pull(nc, stream, "c", pin_id=pin)
            assert [m.headers.get("Status") for m in old] == [intake.PIN_LOST]
            # Updating the consumer keeps it pinned (provision runs at every start).
            await create_consumer(nc, stream, api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL,
                                                                 ack_wait=31))
            info = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.c", b"")).data)
            assert info["config"]["priority_policy"] == "pinned_client" and info["config"]["ack_wait"] == 31 * 10**9
        finally:
            await nc.close()

    asyncio.run(go())


def test_a_status_reply_arrives_at_the_bulk_parser_as_headers_only():
    """The 423 reaches Fetcher._on_status as a message without a reply subject."""
    raw = b"NATS/1.0 423 Nats-Pin-Id mismatch\r\n\r\n"
    headers = message.parse_headers(raw)
    assert headers["Status"] == intake.PIN_LOST and headers["Description"] == "Nats-Pin-Id mismatch"
