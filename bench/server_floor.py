"""What nats-server alone costs per message, for jetsink's stream layout and for others.

    python -m bench.server_floor [--messages 400000] [--partitions 8] [--keys 256]

jetsink's sink costs CPU per message, and so do the servers it reads from and writes
to. This tool takes the sink out: it starts a nats-server of its own (JetStream on, in
a temporary folder), stores the bench's events with their `Nats-Msg-Id` headers, and
drains them with a minimal client that does nothing with the messages (no parsing, one
AckAll per pull of up to 10,000) over three layouts of the same messages:

* ``one stream, P filtered consumers``: jetsink's (docs/architecture.md): one stream
  with a subject transform adding the partition token, one durable consumer per
  partition filtered on it;
* ``P streams, 1 consumer each``: the same partitions as separate streams;
* ``one stream, 1 consumer``: no partitions at all.

For each it prints nats-server's CPU per message over the drain (psutil, user+system).
The difference between the first and the others is what the partition design costs the
server, whatever the sink does.  Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.events import EventTemplates
from supervisor import embedded, embedded_nats
from workers import message, topology
from workers.nats import intake, wire

PULL = 10_000
WINDOW = 4_000  # publishes awaiting their PubAck
LAYOUTS = ("one stream, P filtered consumers", "P streams, 1 consumer each", "one stream, 1 consumer")


@dataclass
class Drained:
    layout: str
    messages: int  # delivered (each message once)
    acks: int  # AckAll commands sent
    pending_after: int  # num_ack_pending + num_pending over the layout's consumers afterwards
    nats_cpu_s: float
    seconds: float

    @property
    def us_per_msg(self) -> float:
        return 1e6 * self.nats_cpu_s / self.messages if self.messages else float("nan")


async def _stream(js: Any, name: str, subjects: list[str], transform: tuple[str, str] | None = None) -> None:
    from nats.js import api

    await js.add_stream(api.StreamConfig(
        name=name, subjects=subjects, storage=api.StorageType.FILE,
        subject_transform=api.SubjectTransform(src=transform[0], dest=transform[1]) if transform else None,
    ))


async def _consumer(js: Any, stream: str, name: str, filter_subject: str | None) -> None:
    from nats.js import api

    await js.add_consumer(stream, api.ConsumerConfig(
        durable_name=name, ack_policy=api.AckPolicy.ALL, deliver_policy=api.DeliverPolicy.ALL,
        max_ack_pending=3 * PULL, ack_wait=60, filter_subject=filter_subject,
    ))


async def _publish(nc: Any, subjects: list[str], messages: int, payload_bytes: int, keys: int) -> None:
    """JetStream publishes, at most WINDOW awaiting their PubAck (core publishes with no
    flow control outrun the stream and the server drops them)."""
    templates = EventTemplates(payload_bytes=payload_bytes)
    inbox = nc.new_inbox()
    acked = 0
    refused: list[bytes] = []
    room = asyncio.Event()

    def on_acks(msgs: list) -> None:
        nonlocal acked
        acked += len(msgs)
        refused.extend(m[message.DATA] for m in msgs if b'"error"' in m[message.DATA])
        room.set()

    sub = await nc.subscribe(inbox + ".*")
    wire.route(nc, sub, on_acks)
    try:
        for i in range(messages):
            while i - acked >= WINDOW:
                room.clear()
                await asyncio.wait_for(room.wait(), 30)
            await nc.publish(
                subjects[i % keys], templates.body(i), reply=f"{inbox}.{i}", headers={"Nats-Msg-Id": f"m{i}"}
            )
        while acked < messages:
            room.clear()
            await asyncio.wait_for(room.wait(), 30)
    finally:
        wire.unroute(nc, sub)
        await sub.unsubscribe()
    if refused:
        raise RuntimeError(f"{len(refused)} publishes refused, e.g. {refused[0][:200]!r}")


async def _drain(nc: Any, consumers: list[tuple[str, str]], expect: int) -> tuple[int, int]:
    """Pull every consumer dry with one AckAll per pull; returns (delivered, acks)."""
    delivered = acks = 0

    async def one(stream: str, name: str) -> None:
        nonlocal delivered, acks
        inbox = nc.new_inbox()
        got: list[list] = []
        arrived = asyncio.Event()
        sub = await nc.subscribe(inbox)
        wire.route(nc, sub, lambda msgs: (got.append(msgs), arrived.set()))
        try:
            while delivered < expect:
                await nc.publish(intake.next_subject(stream, name), intake.pull_request(PULL, 1.0), reply=inbox)
                last, n, done = None, 0, False
                while not done:
                    await arrived.wait()
                    arrived.clear()
                    batches, got[:] = list(got), []
                    for msgs in batches:
                        for m in msgs:
                            if m[message.REPLY]:
                                last = m[message.REPLY]
                                n += 1
                            else:  # a status (404/408: nothing more for this pull)
                                done = True
                    if n >= PULL:
                        done = True
                if last is not None:
                    await wire.send(nc, wire.pubs([last], intake.ACK))
                    acks += 1
                delivered += n
                if n == 0:
                    return
        finally:
            wire.unroute(nc, sub)
            await sub.unsubscribe()

    await asyncio.gather(*(one(s, c) for s, c in consumers))
    await nc.flush()
    return delivered, acks


async def _layout(
    url: str,
    layout: str,
    run: str,
    messages: int,
    partitions: int,
    keys: int,
    payload_bytes: int,
    server: psutil.Process,
) -> Drained:
    nc = wire.new_client()
    await nc.connect(url, name="server-floor")
    js = nc.jetstream(timeout=10.0)
    try:
        prefix = f"f{run}"
        if layout == LAYOUTS[0]:
            pattern = f"{prefix}.*"
            await _stream(js, f"F{run}", [pattern], (pattern, topology.transform_destination(pattern, partitions)))
            consumers = [(f"F{run}", f"c{p}") for p in range(partitions)]
            for p in range(partitions):
                await _consumer(js, f"F{run}", f"c{p}", topology.partition_filter(pattern, p))
            streams = [f"F{run}"]
            subjects = [f"{prefix}.k{k}" for k in range(keys)]
        elif layout == LAYOUTS[1]:
            streams = [f"F{run}_{p}" for p in range(partitions)]
            for p, name in enumerate(streams):
                await _stream(js, name, [f"{prefix}.{p}.*"])
                await _consumer(js, name, "c", None)
            consumers = [(name, "c") for name in streams]
            subjects = [f"{prefix}.{k % partitions}.k{k}" for k in range(keys)]
        else:
            streams = [f"F{run}"]
            await _stream(js, streams[0], [f"{prefix}.*"])
            await _consumer(js, streams[0], "c", None)
            consumers = [(streams[0], "c")]
            subjects = [f"{prefix}.k{k}" for k in range(keys)]
        await _publish(nc, subjects, messages, payload_bytes, keys)
        cpu0, t0 = sum(server.cpu_times()[:2]), time.monotonic()
        delivered, acks = await _drain(nc, consumers, messages)
        cpu1, t1 = sum(server.cpu_times()[:2]), time.monotonic()
        pending = 0
        for stream, name in consumers:
            info = await js.consumer_info(stream, name)
            pending += info.num_ack_pending + info.num_pending
        for name in streams:
            await js.delete_stream(name)
        return Drained(layout.replace("P", str(partitions)), delivered, acks, pending, cpu1 - cpu0, t1 - t0)
    finally:
        await nc.close()


async def measure(
    messages: int,
    partitions: int,
    keys: int,
    payload_bytes: int,
    rounds: int,
    url: str | None = None,
    pid: int | None = None,
) -> list[Drained]:
    """Every layout `rounds` times, interleaved, against the server at url (pid for its CPU)."""
    server = psutil.Process(pid)
    out = []
    for r in range(rounds):
        for i, layout in enumerate(LAYOUTS):
            out.append(await _layout(url, layout, f"{r}{i}", messages, partitions, keys, payload_bytes, server))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--payload-bytes", type=int, default=350)
    parser.add_argument("--rounds", type=int, default=3, help="each layout this many times, interleaved")
    args = parser.parse_args(argv)
    if args.keys < args.partitions:
        parser.error("--keys must be at least --partitions (every partition needs a key)")
    with tempfile.TemporaryDirectory(prefix="jetsink-floor-") as tmp:
        server = embedded_nats.start_nats(Path(tmp) / "nats", embedded.free_port())
        try:
            results = asyncio.run(measure(args.messages, args.partitions, args.keys, args.payload_bytes, args.rounds,
                                          f"nats://{server.host}:{server.port}", server.pid))
        finally:
            embedded.stop_all(server)
    print(
        f"nats-server CPU per message, {args.messages:,} messages of ~{args.payload_bytes} bytes "
        f"over {args.keys} keys, "
        f"one AckAll per pull of up to {PULL:,}:"
    )
    for r in results:
        print(f"  {r.layout:<34} {r.us_per_msg:6.2f} us/msg  ({r.messages:,} delivered, {r.acks} acks, "
              f"{r.pending_after} left, {r.seconds:.1f} s)")
    lost = [r for r in results if r.messages != args.messages or r.pending_after]
    if lost:
        print("server_floor: some layout did not deliver every message exactly once", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
