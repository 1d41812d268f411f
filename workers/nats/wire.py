"""Bulk NATS protocol for the hot path, on top of a normal nats-py connection.

nats-py handles each incoming message with a regular expression, a Msg object, a
header parse, a queue put and a callback coroutine: about 10 us of Python per
message, more than everything else a worker does with it.  A worker receives
JetStream deliveries on a few pull inboxes only, and wants them as a list.

:class:`BulkParser` takes the place of nats-py's protocol parser on a client
(nats-py feeds every chunk read from the socket to ``client._ps.parse``).  It
speaks the same protocol; a MSG/HMSG for a subscription registered with
:func:`route` is cut out of the chunk as a plain tuple ``(subject, reply, data,
headers)`` (all bytes; headers raw or None) and handed, with the others of the
same chunk, to the route's function in one call.  Everything else (other
subscriptions, PING/PONG, INFO, errors) goes through nats-py exactly as before,
in order, so reconnects, TLS, auth and request/reply are nats-py's own.

:func:`send` writes pre-built protocol bytes (e.g. the acks of a whole batch) as one
command, with the checks `Client.publish` makes.

These use nats-py internals (``_ps``, ``_process_*``, ``_send_command``): the
dependency is pinned to the 2.x series, and tests/integration exercise both.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from nats import errors
from nats.aio.client import Client
from nats.protocol import parser as nats_parser

from workers.message import RawMsg

log = logging.getLogger(__name__)


_CRLF = b"\r\n"


class BulkParser(nats_parser.Parser):
    """nats-py's protocol parser, with MSG/HMSG of routed subscriptions delivered in bulk."""

    def __init__(self, nc: Any = None) -> None:
        self.routes: dict[bytes, Callable[[list[RawMsg]], None]] = {}
        super().__init__(nc)

    def reset(self) -> None:
        super().reset()
        self._want = 0  # bytes the unfinished message at the front of buf needs in all
        # Sizes as the control lines spell them -> ints: a dict lookup costs less than int(), and
        # a stream's messages come in few sizes (bounded: cleared when full).
        self._sizes: dict[bytes, int] = {}

    def _size(self, text: bytes) -> int:
        try:
            value = int(text)
        except ValueError:
            raise errors.ProtocolError("nats: malformed MSG") from None
        if value < 0:
            raise errors.ProtocolError("nats: malformed MSG")
        if len(self._sizes) >= 4096:
            self._sizes.clear()
        self._sizes[text] = value
        return value

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        if buf:
            buf.extend(data)
            if len(buf) < self._want:
                return  # a big message still arriving: no need to look again yet
            data = bytes(buf)
            buf.clear()
        self._want = 0
        nc = self.nc
        routes = self.routes
        pending: dict[bytes, list[RawMsg]] = {}  # routed messages of this chunk, per sid
        n = len(data)
        pos = 0
        find = data.find
        got_sid, got = None, []  # the routed subscription of the last message, and its list
        sizes = self._sizes
        while pos < n:
            eol = find(_CRLF, pos)
            if eol < 0:
                if n - pos > nats_parser.MAX_CONTROL_LINE_SIZE:
                    raise errors.ProtocolError("nats: control line too long")
                break
            args = data[pos:eol].split()
            # A JetStream delivery: an HMSG with a reply subject, cut out with as few Python
            # operations as it takes, as this runs once per message.
            if len(args) == 6 and args[0] == b"HMSG":
                _, subject, sid, reply, hsize, size = args
                start = eol + 2
                try:
                    body = start + sizes[hsize]
                    end = start + sizes[size]
                except KeyError:
                    body, end = start + self._size(hsize), start + self._size(size)
                if end + 2 > n:
                    self._want = end + 2 - pos
                    break
                headers = data[start:body] or None
            elif args and (args[0] == b"MSG" or args[0] == b"HMSG"):
                # A message without headers, or without a reply subject (a status reply).
                start = eol + 2
                try:
                    if args[0] == b"HMSG":
                        if len(args) == 6:
                            _, subject, sid, reply, hsize, size = args
                        else:
                            _, subject, sid, hsize, size = args
                            reply = b""
                        body = start + int(hsize)
                    else:
                        if len(args) == 5:
                            _, subject, sid, reply, size = args
                        else:
                            _, subject, sid, size = args
                            reply = b""
                        body = start
                    end = start + int(size)
                except ValueError:
                    raise errors.ProtocolError("nats: malformed MSG") from None
                if end + 2 > n:
                    self._want = end + 2 - pos
                    break
                headers = data[start:body] if body > start else None
            else:
                got_sid = None  # _dispatch below hands over (and forgets) the lists
                await self._non_message(pending, data[pos : eol + 2])
                pos = eol + 2
                continue
            payload = data[body:end]
            pos = end + 2
            if sid == got_sid:
                got.append((subject, reply, payload, headers))
            elif sid in routes:
                got = pending.get(sid)
                if got is None:
                    pending[sid] = got = []
                got_sid = sid
                got.append((subject, reply, payload, headers))
            else:
                self._dispatch(pending)
                got_sid = None
                await nc._process_msg(int(sid), subject, reply, payload, headers)
        self._dispatch(pending)
        if pos < n:
            self.buf.extend(data[pos:])

    async def _non_message(self, pending: dict[bytes, list[RawMsg]], line: bytes) -> None:
        """Anything but a message: deliver what came before it first, then let nats-py
        act on it exactly as its own parser would."""
        self._dispatch(pending)
        nc = self.nc
        if nats_parser.OK_RE.match(line):
            return
        if nats_parser.PING_RE.match(line):
            await nc._process_ping()
        elif nats_parser.PONG_RE.match(line):
            await nc._process_pong()
        elif m := nats_parser.ERR_RE.match(line):
            await nc._process_err((m.groups()[0] or b"").decode().lower())
        elif m := nats_parser.INFO_RE.match(line):
            await nc._process_info(json.loads(m.groups()[0].decode()))
        else:
            raise errors.ProtocolError("nats: unknown protocol")

    def _dispatch(self, pending: dict[bytes, list[RawMsg]]) -> None:
        if not pending:
            return
        stats = self.nc.stats
        for sid, msgs in pending.items():
            stats["in_msgs"] += len(msgs)
            fn = self.routes.get(sid)
            if fn is None:
                continue  # unrouted meanwhile (unsubscribed): like nats-py, drop
            try:
                fn(msgs)
            except Exception:
                # The read loop must survive a consumer's bug; the consumer sees its
                # own state go wrong (stall detection), the connection stays up.
                log.exception("bulk delivery to sid %s failed", sid.decode())
        pending.clear()


# nats-py reads the socket READ_SIZE bytes at a time, and its stream reader pauses the
# socket whenever twice that is buffered. At its default of 32 KiB a worker draining a
# backlog spent ~6 % of its CPU pausing and resuming the socket and turning the event
# loop for every ~80 messages. nats-py reads the module constant at each call.
READ_SIZE = 256 * 1024


def new_client() -> Client:
    """A nats-py client whose protocol parser is a :class:`BulkParser` (set before connecting)."""
    import nats.aio.client

    nats.aio.client.DEFAULT_BUFFER_SIZE = max(nats.aio.client.DEFAULT_BUFFER_SIZE, READ_SIZE)
    nc = Client()
    nc._ps = BulkParser(nc)
    return nc


def route(nc: Any, sub: Any, fn: Callable[[list[RawMsg]], None]) -> None:
    """Deliver the messages of subscription `sub` to `fn`, in bulk, as raw tuples."""
    parser = getattr(nc, "_ps", None)
    if not isinstance(parser, BulkParser):
        raise TypeError("bulk delivery needs a client made by workers.nats.wire.new_client()")
    parser.routes[str(sub._id).encode()] = fn


def unroute(nc: Any, sub: Any) -> None:
    parser = getattr(nc, "_ps", None)
    if isinstance(parser, BulkParser):
        parser.routes.pop(str(sub._id).encode(), None)


async def send(nc: Any, commands: bytes) -> None:
    """Write ready-made protocol commands (e.g. many PUBs) as one, like publish() would."""
    if nc.is_closed:
        raise errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise errors.ConnectionDrainingError
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or len(commands) + nc._pending_data_size > nc._max_pending_size
    ):
        raise errors.OutboundBufferLimitError
    await nc._send_command(commands)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def pubs(subjects: list[bytes], payload: bytes) -> bytes:
    """PUB commands sending the same small payload to each subject (acks of a batch)."""
    if not subjects:
        return b""
    tail = b" %d\r\n%b\r\n" % (len(payload), payload)
    return b"PUB " + (tail + b"PUB ").join(subjects) + tail
