"""The sink a user writes in an afternoon: the baseline jetsink is measured against.

One process, one durable pull consumer over the whole stream (with a stream per
partition, one per stream, fetched in turn), nats-py's JetStream `fetch(1000)`, orjson,
one columnar clickhouse-driver insert per fetch, then an ack per message. Deliberately
plain (no partitions, no overlap of fetch and insert, no DLQ): it is what the bench
compares jetsink with, not something to run in production.

    python -m bench.naive --nats nats://127.0.0.1:4222 --stream EVENTS \
        --host 127.0.0.1 --port 9000 --database default --table events

Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal

import orjson

FETCH = 1000
COLUMNS = ("event_id", "ts", "user_id", "kind", "amount", "country", "tags", "session_id", "payload")


def to_columns(docs: list[dict]) -> list[list]:
    """The demo table's columns from parsed events (ts as epoch seconds, user_id from user.id)."""
    parse_ts = dt.datetime.fromisoformat
    return [
        [d["event_id"] for d in docs],
        [int(parse_ts(d["ts"]).timestamp()) for d in docs],
        [d["user"]["id"] for d in docs],
        [d["kind"] for d in docs],
        [d["amount"] for d in docs],
        [d["country"] for d in docs],
        [d.get("tags", []) for d in docs],
        [d["session_id"] for d in docs],
        [d.get("payload", "") for d in docs],
    ]


async def run(args: argparse.Namespace) -> None:
    import nats
    from clickhouse_driver import Client
    from nats.js import api

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    client = Client(host=args.host, port=args.port, database=args.database)
    insert = f"INSERT INTO {args.table} ({', '.join(COLUMNS)}) VALUES"
    nc = await nats.connect(args.nats, name="naive-sink")
    js = nc.jetstream()
    # One durable over each stream (no filter: nothing for the server to sort out).
    # The server's default max_ack_pending (1000) would cap every fetch; allow a few fetches.
    subs = []
    for stream, durable in zip(args.stream, durables(args.durable, len(args.stream)), strict=True):
        await js.add_consumer(stream, api.ConsumerConfig(
            durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=10 * FETCH, ack_wait=60,
        ))
        subs.append(await js.pull_subscribe_bind(durable, stream))
    wait = 1.0 if len(subs) == 1 else 0.1  # several streams: a drained one must not hold up the others
    while not stop.is_set():
        for sub in subs:
            try:
                msgs = await sub.fetch(FETCH, timeout=wait)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            docs = [orjson.loads(m.data) for m in msgs]
            client.execute(insert, to_columns(docs), columnar=True, types_check=False)
            for m in msgs:
                await m.ack()
    # Not nc.drain(): with a pull subscription it can wait out its 30 s drain_timeout,
    # longer than the bench gives a TERMed sink. The acks are written once flush returns.
    await nc.flush()
    await nc.close()
    client.disconnect()


def durables(durable: str, streams: int) -> list[str]:
    """The durable on each of `streams` streams: `durable` itself for one, `<durable>_<i>` for several."""
    return [durable] if streams == 1 else [f"{durable}_{i}" for i in range(streams)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__.split("\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", required=True, action="append",
                        help="the stream to drain; again for each partition's stream (stream_per_partition)")
    parser.add_argument("--durable", default="naive_sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--database", default="default")
    parser.add_argument("--table", default="events")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
