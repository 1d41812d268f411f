"""Pinned consumers on a real nats-server: provision makes them (on both stream layouts), workers' pull requests
speak the group and pin."""

from __future__ import annotations

import asyncio
import json

import nats

from supervisor import provision
from supervisor.config import load_config
from tests.integration.harness import pipeline_names, publish_events, run, sink_config
from workers import message
from workers.nats import intake
from workers.topology import PRIORITY_GROUP, consumer_name, partition_filter, partition_of

PARTITIONS = 2


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


def _config(tmp_path, layout_nats, ch_port, names, ack_wait_s):
    cfg = sink_config(tmp_path, layout_nats.url, ch_port, "pins", partitions=PARTITIONS, ack_wait_s=ack_wait_s,
                      pipeline={"layout": layout_nats.layout}, **names)
    return load_config(cfg)


def test_provisioned_partition_consumers_admit_one_puller_and_unpin_moves_it(tmp_path, layout_nats,
                                                                             clickhouse_server):
    """On both layouts (tests/conftest.py): each partition's consumer, on the pipeline's stream or its own."""
    names, prefix = pipeline_names("pin")
    layout_nats.pipeline(names["subject"], PARTITIONS)  # stream_per_partition: the account maps the subject
    run(provision.provision_streams(_config(tmp_path, layout_nats, clickhouse_server.port, names, 30.0)))
    key = "k1"
    index = partition_of([key], PARTITIONS)
    stream, consumer = layout_nats.stream_of(names["stream"], index), consumer_name(names["name"], index)
    publish_events(layout_nats.url, [(f"{prefix}.{key}", json.dumps({"i": i}).encode(), None) for i in range(20)],
                   layout_nats.expected(names["stream"]))
    stored_subject = partition_filter(names["subject"], index).replace("*", key)

    async def info(nc, i):
        return json.loads((await nc.request(
            f"$JS.API.CONSUMER.INFO.{layout_nats.stream_of(names['stream'], i)}.{consumer_name(names['name'], i)}",
            b"")).data)

    async def go():
        nc = await nats.connect(layout_nats.url)
        try:
            for i in range(PARTITIONS):
                config = (await info(nc, i))["config"]
                assert config["priority_groups"] == [PRIORITY_GROUP]
                assert config["priority_policy"] == "pinned_client"
                # A partition stream holds its partition alone; the single stream's consumer filters its subjects.
                assert config.get("filter_subject") == (
                    None if layout_nats.per_partition else partition_filter(names["subject"], i))

            first = await _pull(nc, stream, consumer)
            pin = first[0].headers.get("Nats-Pin-Id")
            assert pin and len([m for m in first if m.reply]) == 5
            assert {m.subject for m in first if m.reply} == {stored_subject}
            # A pull with another id is refused at once; one with the pin's id is served.
            refused = await _pull(nc, stream, consumer, pin_id="not-the-pin")
            assert [m.headers.get("Status") for m in refused] == [intake.PIN_LOST]
            served = await _pull(nc, stream, consumer, pin_id=pin)
            assert len([m for m in served if m.reply]) == 5
            # Without an id, a pull waits for the pin and ends with a 408.
            parked = await _pull(nc, stream, consumer)
            assert [m.headers.get("Status") for m in parked] == ["408"]
            # Unpinned, the next pull without an id gets a new pin; the old id is refused.
            await nc.request(intake.unpin_subject(stream, consumer), json.dumps({"group": PRIORITY_GROUP}).encode())
            moved = await _pull(nc, stream, consumer)
            new_pin = moved[0].headers.get("Nats-Pin-Id")
            assert new_pin and new_pin != pin
            old = await _pull(nc, stream, consumer, pin_id=pin)
            assert [m.headers.get("Status") for m in old] == [intake.PIN_LOST]
            # Provisioning again (every start) with another ack_wait updates the consumers and keeps them pinned.
            await provision.provision_streams(_config(tmp_path, layout_nats, clickhouse_server.port, names, 31.0))
            for i in range(PARTITIONS):
                config = (await info(nc, i))["config"]
                assert config["priority_policy"] == "pinned_client" and config["ack_wait"] == 31 * 10**9
        finally:
            await nc.close()

    asyncio.run(go())


def test_a_status_reply_arrives_at_the_bulk_parser_as_headers_only():
    """The 423 reaches Fetcher._on_status as a message without a reply subject."""
    raw = b"NATS/1.0 423 Nats-Pin-Id mismatch\r\n\r\n"
    headers = message.parse_headers(raw)
    assert headers["Status"] == intake.PIN_LOST and headers["Description"] == "Nats-Pin-Id mismatch"
