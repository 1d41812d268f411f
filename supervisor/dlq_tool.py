"""`python -m supervisor dlq list|show|replay`: inspect dead letters and send them back once the cause is fixed.

Dead letters are read straight from the DLQ stream by sequence (the JetStream
STREAM.MSG.GET API), so no consumer is created and nothing is acked. A replay
republishes the original bytes to the subject the producer used, with the producer's
headers (everything but the ``Jetsink-*`` headers the worker added), waits for the
PubAck, and only then deletes the dead letter, so a letter is never lost and a replay
is not repeated by accident.

The stored subject (``Jetsink-Subject``) is the transformed one, ``events.<p>.<key>``;
``original_subject`` removes the partition token again: ``events.<key>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from workers import exitcodes
from workers.nats import dlq
from workers.topology import data_streams

__all__ = ["StoredLetter", "original_subject", "replay_headers"]

_DROPPED_PREFIXES = (
    "jetsink-",  # ours: why and where it was dead-lettered
    # Publish preconditions: those of the DLQ write, or of the producer's original
    # publish, which held then and would fail or mislead now.
    "nats-expected-",
)


def original_subject(pattern: str, stored: str) -> str:
    """The subject a producer published to, from the stream's stored (transformed) subject.

    >>> original_subject("events.*", "events.3.user42")
    'events.user42'

    Raises ValueError if `stored` is not a transformed subject of `pattern`.
    """
    tokens = pattern.split(".")
    first = tokens.index("*")
    got = stored.split(".")
    if len(got) != len(tokens) + 1 or not got[first].isdigit():
        raise ValueError(f"subject {stored!r} is not a partitioned subject of {pattern!r}")
    original = got[:first] + got[first + 1:]
    for want, have in zip(tokens, original, strict=False):
        if want != "*" and want != have:
            raise ValueError(f"subject {stored!r} is not a partitioned subject of {pattern!r}")
    return ".".join(original)


def replay_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The producer's headers of a dead letter: all but Jetsink-* and Nats-Expected-*, and the
    producer's own Nats-Msg-Id in place of the one the DLQ de-duplicated by."""
    headers = headers or {}
    out = {k: v for k, v in headers.items() if not k.lower().startswith(_DROPPED_PREFIXES)}
    ours = f"{headers.get(dlq.H_STREAM)}:{headers.get(dlq.H_STREAM_SEQ)}"
    if out.get(dlq.H_MSG_ID) == ours:
        del out[dlq.H_MSG_ID]
    if dlq.H_PRODUCER_MSG_ID in headers:
        out[dlq.H_MSG_ID] = headers[dlq.H_PRODUCER_MSG_ID]
    return out


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """One dead letter as stored in the DLQ stream."""

    seq: int  # in the DLQ stream
    time: dt.datetime | None
    headers: Mapping[str, str]
    data: bytes

    @property
    def reason(self) -> str:
        return self.headers.get(dlq.H_REASON, "?")

    @property
    def error(self) -> str:
        return self.headers.get(dlq.H_ERROR, "")

    @property
    def subject(self) -> str:
        """The subject as stored in the source stream (events.<p>.<key>)."""
        return self.headers.get(dlq.H_SUBJECT, "")

    @property
    def source(self) -> str:
        """Where the original is: STREAM:SEQ."""
        return f"{self.headers.get(dlq.H_STREAM, '?')}:{self.headers.get(dlq.H_STREAM_SEQ, '?')}"


def _letter(raw: Any) -> StoredLetter:
    return StoredLetter(seq=raw.seq, time=raw.time, headers=dict(raw.headers or {}), data=raw.data or b"")


async def read_letters(js: Any, stream: str, after: int = 0) -> AsyncIterator[StoredLetter]:
    """Every dead letter in `stream` with a sequence above `after`, in order (deleted ones skipped)."""
    from nats.js.errors import NotFoundError

    seq = after + 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=">", next=True)
        except NotFoundError:
            return
        yield _letter(raw)
        seq = raw.seq + 1


async def fetch_letter(js: Any, stream: str, seq: int) -> StoredLetter | None:
    """The dead letter with sequence `seq`, or None if there is none (never was, or deleted)."""
    from nats.js.errors import NotFoundError

    try:
        return _letter(await js.get_msg(stream, seq=seq))
    except NotFoundError:
        return None


# --------------------------------------------------------------------------- output


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def _list_line(pipeline: str, letter: StoredLetter) -> str:
    error = " ".join(letter.error.split())
    error = error if len(error) <= 80 else error[:77] + "..."
    return (
        f"{pipeline}  {letter.seq:>6}  {_when(letter.time)}  {letter.reason:<16}  "
        f"{letter.subject}  {letter.source}  {error}"
    )


def _show(pipeline: Any, letter: StoredLetter) -> str:
    lines = [
        f"dead letter {letter.seq} of pipeline {pipeline.name} in stream {pipeline.dlq_stream}, "
        f"stored {_when(letter.time)}",
        "headers:",
    ]
    lines += [f"  {k}: {v}" for k, v in letter.headers.items()]
    try:
        body = orjson.dumps(orjson.loads(letter.data), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        body = repr(letter.data)
    lines += [f"body ({len(letter.data)} bytes):", body]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- commands


def add_parser(sub: Any) -> None:
    """Register `dlq list|show|replay` on the CLI's subparsers."""
    p = sub.add_parser("dlq", help="inspect and replay dead letters")
    actions = p.add_subparsers(dest="action", required=True)

    def common(a: argparse.ArgumentParser) -> None:
        a.add_argument("--config", default="config.yaml", help="path to config.yaml (default: ./config.yaml)")
        a.add_argument(
            "--pipeline", help="pipeline name (needed when the config has several, for show and replay by SEQ)"
        )

    ls = actions.add_parser(
        "list", help="one line per dead letter: seq, time, reason, subject, source stream:seq, error"
    )
    common(ls)
    ls.add_argument("--reason", help="only dead letters with this Jetsink-Reason, e.g. invalid_json")
    ls.add_argument("--limit", type=int, help="at most this many lines per pipeline")
    show = actions.add_parser("show", help="all headers and the body of one dead letter")
    common(show)
    show.add_argument("seq", type=int, help="sequence of the dead letter in the DLQ stream (see `dlq list`)")
    replay = actions.add_parser(
        "replay", help="republish dead letters to their original subject, then delete them from the DLQ"
    )
    common(replay)
    replay.add_argument("seqs", type=int, nargs="*", metavar="SEQ", help="sequences to replay (see `dlq list`)")
    replay.add_argument("--all", action="store_true", help="every dead letter (of --pipeline, or of all pipelines)")
    replay.add_argument("--reason", help="only dead letters with this reason")
    replay.add_argument("--dry-run", action="store_true", help="print what would be republished; change nothing")
    replay.add_argument("--keep", action="store_true", help="keep the dead letters in the DLQ after replaying them")
    p.set_defaults(handler=run)


class _Usage(Exception):
    """A mistake on the command line; exit 2."""


class _Unavailable(Exception):
    """A DLQ stream cannot be read; exit 3."""


def run(args: argparse.Namespace) -> int:
    """`python -m supervisor dlq ...`: returns the exit code."""
    from supervisor.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"jetsink: invalid config {args.config}:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        pipelines = _pipelines(config, args)
        if args.action == "replay" and bool(args.seqs) == bool(args.all):
            raise _Usage("dlq replay: give the sequences to replay, or --all (not both)")
        if args.action == "list" and args.limit is not None and args.limit < 1:
            raise _Usage("dlq list: --limit must be at least 1")
    except _Usage as exc:
        print(f"jetsink: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        return asyncio.run(_run(config, pipelines, args))
    except (ConnectionError, _Unavailable) as exc:
        print(f"jetsink: {exc}", file=sys.stderr)
        return exitcodes.BOOT


def _pipelines(config: Any, args: argparse.Namespace) -> list[Any]:
    by_name = {p.name: p for p in config.pipelines}
    if args.pipeline is not None:
        if args.pipeline not in by_name:
            raise _Usage(
                f"--pipeline {args.pipeline!r}: no such pipeline in {config.source}; it has {', '.join(by_name)}"
            )
        return [by_name[args.pipeline]]
    by_seq = args.action == "show" or (args.action == "replay" and args.seqs)
    if by_seq and len(by_name) > 1:
        raise _Usage(
            f"dlq {args.action}: sequences are per DLQ stream; name the pipeline with --pipeline ({', '.join(by_name)})"
        )
    return list(config.pipelines)


async def _run(config: Any, pipelines: list[Any], args: argparse.Namespace) -> int:
    from nats.js.errors import NotFoundError

    from workers.nats.connect import connect_nats

    nc = await connect_nats(config.nats, name="jetsink-dlq")
    try:
        js = nc.jetstream()
        for p in pipelines:
            try:
                await js.stream_info(p.dlq_stream)
            except NotFoundError:
                raise _Unavailable(
                    f"pipeline {p.name}: DLQ stream {p.dlq_stream} does not exist on {', '.join(config.nats.servers)} "
                    "(the supervisor creates it at start)"
                ) from None
        if args.action == "list":
            return await _list(js, pipelines, args.reason, args.limit)
        if args.action == "show":
            return await _show_one(js, pipelines[0], args.seq)
        return await _replay(js, pipelines, args)
    finally:
        await nc.close()


async def _list(js: Any, pipelines: list[Any], reason: str | None, limit: int | None) -> int:
    for p in pipelines:
        shown = 0
        async for letter in read_letters(js, p.dlq_stream):
            if reason is not None and letter.reason != reason:
                continue
            print(_list_line(p.name, letter))
            shown += 1
            if limit is not None and shown >= limit:
                break
    return 0


async def _show_one(js: Any, pipeline: Any, seq: int) -> int:
    letter = await fetch_letter(js, pipeline.dlq_stream, seq)
    if letter is None:
        print(
            f"jetsink: no dead letter {seq} in {pipeline.dlq_stream} (never stored, or deleted after a replay)",
            file=sys.stderr,
        )
        return exitcodes.NOT_DONE
    sys.stdout.write(_show(pipeline, letter))
    return 0


async def _selected(js: Any, pipeline: Any, args: argparse.Namespace) -> AsyncIterator[StoredLetter | int]:
    """The letters a replay asked for; a requested sequence that is not there comes as its number."""
    if args.all:
        async for letter in read_letters(js, pipeline.dlq_stream):
            yield letter
        return
    for seq in sorted(set(args.seqs)):
        letter = await fetch_letter(js, pipeline.dlq_stream, seq)
        yield seq if letter is None else letter


async def _replay(js: Any, pipelines: list[Any], args: argparse.Namespace) -> int:
    failed = replayed = 0
    for p in pipelines:
        async for item in _selected(js, p, args):
            if isinstance(item, int):
                print(f"jetsink: no dead letter {item} in {p.dlq_stream}", file=sys.stderr)
                failed += 1
                continue
            letter = item
            if args.reason is not None and letter.reason != args.reason:
                continue
            try:
                subject = original_subject(p.subject, letter.subject)
            except ValueError as exc:
                print(f"jetsink: dead letter {letter.seq} in {p.dlq_stream}: cannot replay: {exc}", file=sys.stderr)
                failed += 1
                continue
            headers = replay_headers(letter.headers)
            if args.dry_run:
                print(f"would replay {p.dlq_stream}:{letter.seq} ({letter.reason}) -> {subject} "
                      f"({len(letter.data)} bytes, headers: {', '.join(headers) or 'none'})")
                continue
            if not await _republish(js, p, letter, subject, headers, args.keep):
                failed += 1
                continue
            replayed += 1
    if not args.dry_run:
        print(f"replayed {replayed} dead letter(s)" + (f"; {failed} not replayed (see above)" if failed else ""))
    return exitcodes.NOT_DONE if failed else 0


async def _republish(js: Any, p: Any, letter: StoredLetter, subject: str, headers: dict[str, str], keep: bool) -> bool:
    from nats.errors import Error as NatsError

    try:
        # No Nats-Expected-Stream header: JetStream would store it with the message, and
        # the replayed message is to carry the producer's headers only. The PubAck names
        # the stream instead (JetStream streams never share a subject).
        ack = await js.publish(subject, letter.data, headers=headers or None)
    except (NatsError, asyncio.TimeoutError) as exc:
        print(
            f"jetsink: dead letter {letter.seq} in {p.dlq_stream}: publish to {subject} failed: {exc}; kept",
            file=sys.stderr,
        )
        return False
    if ack.stream not in data_streams(p):
        print(
            f"jetsink: dead letter {letter.seq} in {p.dlq_stream}: {subject} was stored by stream {ack.stream} "
            f"(seq {ack.seq}), "
            f"not {' or '.join(data_streams(p)[:3])}{' ...' if p.partitions > 3 else ''}; kept",
            file=sys.stderr,
        )
        return False
    if ack.duplicate:
        # The producer's Nats-Msg-Id is still within the stream's duplicate window:
        # JetStream dropped the copy. Deleting the letter now would lose the message.
        print(
            f"jetsink: dead letter {letter.seq} in {p.dlq_stream}: {ack.stream} dropped it as a duplicate "
            f"(Nats-Msg-Id {headers.get('Nats-Msg-Id')!r} within the duplicate window); kept, try again later",
            file=sys.stderr,
        )
        return False
    done = f"replayed {p.dlq_stream}:{letter.seq} -> {subject} ({ack.stream} seq {ack.seq})"
    if keep:
        print(done + "; kept in the DLQ (--keep)")
        return True
    try:
        await js.delete_msg(p.dlq_stream, letter.seq)
    except NatsError as exc:
        print(
            f"jetsink: {done}, but deleting it from {p.dlq_stream} failed: {exc}; "
            "delete it or it may be replayed twice",
            file=sys.stderr,
        )
        return False
    print(done + "; deleted from the DLQ")
    return True
