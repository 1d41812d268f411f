"""Membership: the live instances, kept in a JetStream KV bucket with per-key TTL heartbeats.

Each supervisor owns one key, its ``instance_id``, in the bucket ``jetsink_members``.
Its value (JSON) says what the instance holds (the partitions its workers own, acquire
or release) and a summary for ``status`` (admin address, rows/s, lag). Every put
carries a ``Nats-TTL`` header of ``instance_ttl_s`` and is a compare-and-set on the
key's last revision, so a second supervisor with the same id cannot beat for it. The
bucket is made with ``limit_marker_ttl``: when a key's TTL runs out the server writes
a PURGE marker that watchers see, so survivors learn of a dead instance about TTL
seconds after its last beat. A member whose beats stop is also dropped locally once
its TTL plus half a second has passed without a put (the marker may come late on a
busy server); while this instance cannot beat itself (NATS unreachable) it drops no
one, since then the silence is its own. A clean stop deletes the key at once.

nats-py is asyncio and the arbiter's loop is not: the NATS side runs on a thread of
its own with its own event loop. The arbiter reads ``view()``, an immutable snapshot
that the thread replaces whole, and ``fileno()`` becomes readable when it changed
(the loop waits on it with the workers' pipes). ``publish()`` hands the thread the
next value; a change of holdings is put at once (a release must reach the instance
waiting to acquire), anything else rides on the next beat.

``Solo`` has the same interface without NATS: one instance, no one else (tests of the
arbiter, and a supervisor that is told to run alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.assignment import Partition
from workers.settings import Config

log = logging.getLogger("jetsink.members")

BUCKET = "jetsink_members"
EXPIRY_SLACK_S = 0.5  # past a member's TTL without a put: gone, even before the server's marker


class MembershipError(RuntimeError):
    """This instance cannot be a member: its instance_id is live elsewhere, or the bucket is missing."""


@dataclass(frozen=True)
class Member:
    """One live instance as it last said."""

    instance_id: str
    holds: frozenset[Partition] = frozenset()
    info: Mapping[str, Any] = field(default_factory=dict)  # summary for `status`: admin, rows/s, lag...
    seen_at: float = 0.0  # time.monotonic() of its last put, here


def encode(instance_id: str, incarnation: str, ttl_s: int, holds: Iterable[Partition], info: Mapping) -> bytes:
    """A member's value."""
    body = {"instance_id": instance_id, "incarnation": incarnation, "ttl_s": ttl_s,
            "holds": [[p.pipeline, p.index] for p in sorted(holds)], "info": dict(info)}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(key: str, value: bytes | None, seen_at: float) -> tuple[Member, str, int] | None:
    """(member, incarnation, ttl) from a value; None for a marker, a delete or garbage."""
    if not value:
        return None
    try:
        body = json.loads(value)
        holds = frozenset(Partition(str(p), int(i)) for p, i in body.get("holds", ()))
        return Member(key, holds, body.get("info") or {}, seen_at), str(body.get("incarnation")), int(body["ttl_s"])
    except (ValueError, KeyError, TypeError):
        log.warning("members bucket: key %s has a value that is not a member's; ignoring it", key)
        return None


def instances(view: Mapping[str, Member], me: str, now: float | None = None) -> list[dict]:
    """The live instances for /status: id, what it holds and its published summary, this one first."""
    now = time.monotonic() if now is None else now
    out = []
    for key in sorted(view, key=lambda k: (k != me, k)):
        m = view[key]
        out.append({**m.info, "instance_id": key, "self": key == me,
                    "holds": [f"{p.pipeline}/{p.index}" for p in sorted(m.holds)],
                    "seen_s_ago": round(max(0.0, now - m.seen_at), 1) if m.seen_at else None})
    return out


async def live_member(nc: Any, instance_id: str) -> bool:
    """Whether `instance_id` has a live key in the members bucket (for `check --connect`)."""
    import nats.js.errors

    js = nc.jetstream(timeout=5.0)
    try:
        kv = await js.key_value(BUCKET)
        entry = await kv.get(instance_id)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return False
    return decode(instance_id, entry.value, 0.0) is not None


def _revision(exc: Exception) -> int:
    """The revision of a deleted key's marker (nats-py's get() raises KeyNotFoundError carrying it), else 0."""
    entry = getattr(exc, "entry", None)
    return int(entry.revision or 0) if entry is not None else 0


class Solo:
    """Membership of an instance that shares with no one (no NATS)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._me = Member(instance_id)
        self.error: str | None = None

    def start(self, wait_s: float = 0.0) -> None:
        pass

    def fileno(self) -> int | None:
        return None

    def view(self) -> Mapping[str, Member]:
        return {self.instance_id: self._me}

    def publish(self, holds: Iterable[Partition], info: Mapping[str, Any]) -> None:
        self._me = Member(self.instance_id, frozenset(holds), dict(info), time.monotonic())

    def stop(self) -> None:
        pass


class Membership:
    """This instance's key in the members bucket, beaten from a thread, and the live members' view."""

    def __init__(self, config: Config) -> None:
        self.instance_id = config.instance_id
        self._config = config
        self._ttl = int(config.instance_ttl_s)
        self._incarnation = uuid.uuid4().hex
        self._holds: frozenset[Partition] = frozenset()
        self._info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
        self._view: Mapping[str, Member] = {self.instance_id: Member(self.instance_id, seen_at=time.monotonic())}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._joined = threading.Event()
        self._beat_now: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._ttls: dict[str, int] = {}  # other members' TTLs, from their values
        self.error: str | None = None  # set when the instance lost its key to another (the arbiter stops)

    # -- the arbiter's side --------------------------------------------------------

    def start(self, wait_s: float = 0.0) -> None:
        """Join: connect, take the key (waiting up to `wait_s` for a previous holder's to expire), start
        beating and watching. Raises MembershipError or ConnectionError."""
        self._thread = threading.Thread(target=self._run, args=(wait_s,), name="jetsink-members", daemon=True)
        self._thread.start()
        self._joined.wait()
        if self.error is not None:
            self._thread.join()
            raise MembershipError(self.error)

    def fileno(self) -> int:
        return self._wake_r

    def view(self) -> Mapping[str, Member]:
        """The live members by instance_id (this one included), as last seen."""
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        return self._view

    def publish(self, holds: Iterable[Partition], info: Mapping[str, Any]) -> None:
        """What the next put says; a change of holdings is put at once."""
        holds = frozenset(holds)
        changed = holds != self._holds
        self._holds = holds
        self._info = {**self._info, **info}
        if changed and self._loop is not None and self._beat_now is not None:
            self._loop.call_soon_threadsafe(self._beat_now.set)

    def stop(self) -> None:
        """Delete the key (the others take over at once) and end the thread."""
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the thread -----------------------------------------------------------------

    def _run(self, wait_s: float) -> None:
        try:
            asyncio.run(self._main(wait_s))
        except BaseException as exc:  # noqa: BLE001 - reported to the arbiter, never lost
            if not self._joined.is_set():
                self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MembershipError) else str(exc)
            else:
                log.exception("members thread failed")
                self.error = f"members thread failed: {exc}"
                self._wake()
        finally:
            self._joined.set()

    async def _main(self, wait_s: float) -> None:
        import nats.js.errors

        from workers.nats.connect import connect_nats

        self._loop = asyncio.get_running_loop()
        self._beat_now = asyncio.Event()
        self._stopping = asyncio.Event()
        nc = await connect_nats(self._config.nats, name=f"jetsink-members-{self.instance_id}")
        try:
            js = nc.jetstream(timeout=5.0)
            try:
                self._kv = await js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                raise MembershipError(
                    f"KV bucket {BUCKET} is missing (the supervisor's provision creates it)"
                ) from None
            self._js = js
            self._revision = await self._join(wait_s)
            self._last_beat_ok = time.monotonic()
            log.info("joined the members bucket %s as %s (ttl %ds)", BUCKET, self.instance_id, self._ttl)
            self._joined.set()
            watch = asyncio.create_task(self._watch())
            try:
                await self._beat_loop()
            finally:
                watch.cancel()
            await self._leave()
        finally:
            await nc.close()

    def _value(self) -> bytes:
        return encode(self.instance_id, self._incarnation, self._ttl, self._holds, self._info)

    async def _join(self, wait_s: float) -> int:
        """Take the key: create it, or put over an expiry marker or a delete; a live value is another instance."""
        import nats.js.errors

        deadline = time.monotonic() + wait_s
        while True:
            try:
                entry = await self._kv.get(self.instance_id)
                last = entry.revision if decode(self.instance_id, entry.value, 0.0) is None else None
            except nats.js.errors.KeyNotFoundError as exc:  # get() raises it for a deleted key too
                last = _revision(exc)
            if last is not None:
                try:
                    return await self._put(last)
                except nats.js.errors.KeyWrongLastSequenceError:
                    await asyncio.sleep(0.05)  # someone was quicker: look again
            elif time.monotonic() >= deadline:
                raise MembershipError(
                    f"instance_id {self.instance_id!r} is live in the members bucket {BUCKET} (another supervisor "
                    "runs with it); give each instance its own instance_id")
            else:
                log.warning("instance_id %s is still live in %s (a previous run?); waiting for it to expire",
                            self.instance_id, BUCKET)
                await asyncio.sleep(min(1.0, self._ttl / 3))  # waiting out the other's TTL

    async def _put(self, last: int) -> int:
        import nats.js.errors
        from nats.js import api

        try:
            ack = await self._js.publish(f"$KV.{BUCKET}.{self.instance_id}", self._value(),
                                         headers={api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)},
                                         msg_ttl=self._ttl)
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):
                raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from None
            raise
        return ack.seq

    async def _beat_loop(self) -> None:
        import nats.errors
        import nats.js.errors

        interval = self._ttl / 3
        while not self._stopping.is_set():
            self._beat_now.clear()
            waiters = [asyncio.create_task(self._beat_now.wait()), asyncio.create_task(self._stopping.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for t in waiters:
                t.cancel()
            if self._stopping.is_set():
                return
            try:
                self._revision = await self._put(self._revision)
                self._last_beat_ok = time.monotonic()
                self._see(self.instance_id, Member(self.instance_id, self._holds, dict(self._info), time.monotonic()))
            except nats.js.errors.KeyWrongLastSequenceError:
                await self._lost_key()
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                # A beat missed is not fatal: the TTL is three beats long.
                log.warning("members: heartbeat of %s failed: %s", self.instance_id, exc or type(exc).__name__)

    async def _lost_key(self) -> None:
        """The key changed under us: expired (we were too slow: take it again) or taken by another."""
        import nats.js.errors

        try:
            entry = await self._kv.get(self.instance_id)
            found = decode(self.instance_id, entry.value, 0.0)
            revision = entry.revision
        except nats.js.errors.KeyNotFoundError as exc:
            found, revision = None, _revision(exc)
        if found is not None and found[1] != self._incarnation:
            self.error = (f"instance_id {self.instance_id!r} was taken by another supervisor "
                          f"({found[0].info.get('host')}, pid {found[0].info.get('pid')}); stopping")
            log.error("members: %s", self.error)
            self._stopping.set()
            self._wake()
            return
        log.warning("members: the key of %s expired before its heartbeat (a stall of over %ds); taking it again",
                    self.instance_id, self._ttl)
        self._revision = await self._put(revision)
        self._last_beat_ok = time.monotonic()

    async def _leave(self) -> None:
        if self.error is not None:
            return  # the key is another's now
        try:
            await self._kv.delete(self.instance_id, last=self._revision)
            log.info("left the members bucket %s", BUCKET)
        except Exception as exc:  # noqa: BLE001 - its TTL removes it anyway
            log.warning("members: could not delete %s (its TTL removes it): %s", self.instance_id, exc)

    async def _watch(self) -> None:
        from nats.js.kv import KV_DEL, KV_PURGE

        watcher = await self._kv.watch(">")
        expiry = asyncio.create_task(self._expire_loop())
        try:
            async for entry in watcher:
                if entry is None or entry.key == self.instance_id:
                    continue  # the end of the initial values; our own key is known here
                found = None if entry.operation in (KV_DEL, KV_PURGE) else decode(entry.key, entry.value,
                                                                                   time.monotonic())
                if found is None:
                    if entry.key in self._view:
                        log.info("instance %s left or expired", entry.key)
                    self._drop(entry.key)
                else:
                    member, _, ttl = found
                    self._ttls[entry.key] = ttl
                    if entry.key not in self._view:
                        log.info("instance %s joined", entry.key)
                    self._see(entry.key, member)
        finally:
            expiry.cancel()
            await watcher.stop()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - self._last_beat_ok > self._ttl:
                continue  # we cannot beat either: the silence may be ours
            for key, member in list(self._view.items()):
                if key != self.instance_id and now - member.seen_at > self._ttls.get(key, self._ttl) + EXPIRY_SLACK_S:
                    log.info("instance %s stopped beating", key)
                    self._drop(key)

    def _see(self, key: str, member: Member) -> None:
        old = self._view.get(key)
        self._view = {**self._view, key: member}
        if old is None or old.holds != member.holds:
            self._wake()

    def _drop(self, key: str) -> None:
        if key in self._view:
            self._view = {k: m for k, m in self._view.items() if k != key}
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"m")
        except (BlockingIOError, OSError):
            pass  # already readable, or closed at stop
