"""What the bench watches while a run goes: rows in ClickHouse, consumers' ack floors, processes.

A `Probe` polls every `interval` seconds (100 ms):
  - rows: sum(rows) of the table's active parts in system.parts (metadata, ~2 ms of
    ClickHouse CPU; count() would scan a column and cost the server far more);
  - consumers: each durable consumer's ack floor and pending counts (JetStream API), so
    the publish-to-insert latency of a sampled message can be worked out afterwards (a
    message is acked only after its rows were inserted).  These requests wait on a busy
    nats-server (~140 ms for 8 consumers during a 2-core drain), so when no latency is
    measured (--preload) they are sent at most every `consumers_every` seconds, and the
    rows are still polled every 100 ms: the measured window's ends stay that sharp;
  - processes: psutil cpu_times and RSS of every watched process.
Every poll is kept as a `Sample`; the run picks its measured window from them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

NATS_POLL_TIMEOUT_S = 2.0


@dataclass
class Sample:
    t: float  # wall clock
    rows: int
    dlq: int
    ack_floors: dict[str, int]  # consumer -> ack_floor.stream_seq
    lag: int  # messages pending + unacked over all consumers
    cpu: dict[str, float]  # process name -> user+system seconds
    rss: dict[str, int]  # process name -> bytes
    published: int = 0  # the publisher's acked count when this sample was taken


class NatsThread:
    """An asyncio loop in a thread holding one NATS connection for the bench's own queries."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-nats", daemon=True)
        self._thread.start()
        self.nc = self.call(self._connect(url))
        self.js = self.nc.jetstream(timeout=10.0)

    @staticmethod
    async def _connect(url: str) -> Any:
        import nats

        return await nats.connect(url, name="jetsink-bench", max_reconnect_attempts=3)

    def submit(self, coro: Any) -> concurrent.futures.Future:
        """Start `coro` on the loop; its answer is the future's, read when done."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # not left waiting in the loop for an answer nobody reads
            raise

    def stream_messages(self, stream: str, timeout: float = 30.0) -> int:
        return self.call(self._stream_messages(stream), timeout)

    async def _stream_messages(self, stream: str) -> int:
        from nats.js.errors import NotFoundError

        try:
            return (await self.js.stream_info(stream)).state.messages
        except NotFoundError:
            return 0

    def consumer_states(self, stream: str, consumers: list[str], timeout: float = 30.0) -> tuple[dict[str, int], int]:
        """(consumer -> ack floor stream seq, total lag) for the given durables."""
        return self.call(self._consumer_states(stream, consumers), timeout)

    @staticmethod
    async def _cancel_questions() -> None:
        """Questions still unanswered at the end (a background poll's) are cancelled, not left pending."""
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _consumer_states(self, stream: str | list[str], consumers: list[str]) -> tuple[dict[str, int], int]:
        """`stream`: the consumers' stream, or each one's (stream_per_partition)."""
        streams = stream if isinstance(stream, list) else [stream] * len(consumers)
        infos = await asyncio.gather(*(self.js.consumer_info(s, c) for s, c in zip(streams, consumers, strict=True)),
                                     return_exceptions=True)
        floors, lag = {}, 0
        for name, info in zip(consumers, infos, strict=False):
            if isinstance(info, BaseException):
                continue
            floors[name] = info.ack_floor.stream_seq if info.ack_floor else 0
            lag += (info.num_pending or 0) + (info.num_ack_pending or 0)
        return floors, lag

    def close(self) -> None:
        try:
            self.call(self.nc.close(), timeout=5.0)
        except Exception:
            pass
        try:
            self.call(self._cancel_questions(), timeout=5.0)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)


@dataclass
class Watched:
    """Processes to sample, by name ("supervisor", "worker0", "nats", ...)."""

    procs: dict[str, psutil.Process] = field(default_factory=dict)
    gone: dict[str, tuple[float, int]] = field(default_factory=dict)  # last cpu/rss of exited ones

    def add(self, name: str, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            proc.cpu_times()
        except psutil.Error:
            return
        self.procs[name] = proc

    def sample(self) -> tuple[dict[str, float], dict[str, int]]:
        cpu, rss = {}, {}
        for name, proc in list(self.procs.items()):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu[name] = t.user + t.system
                    rss[name] = proc.memory_info().rss
                self.gone[name] = (cpu[name], rss[name])
            except psutil.Error:
                # Exited: keep its last figures, so a window's delta stays meaningful.
                if name in self.gone:
                    cpu[name], rss[name] = self.gone[name]
        return cpu, rss


class Probe:
    """Polls the table, the consumers and the processes; keeps every Sample."""

    def __init__(
        self,
        nats: NatsThread,
        client: Any,
        database: str,
        table: str,
        stream: str,
        dlq_stream: str | None,
        consumers: list[str],
        watched: Watched,
        interval: float = 0.1,
        consumers_every: float = 0.0,
        nats_in_background: bool = False,
        parts: tuple[str, str] | None = None,
    ) -> None:
        self.nats = nats
        # On a ClickHouse cluster (--clickhouse-cluster): rows are summed over one replica of each shard
        # (remote('a|b,c|d', system.parts)) for the local table, and `table` is the Distributed one.
        self._parts_from, self._parts_table = parts or ("system.parts", table)
        self.client = client
        self.database = database
        self.table = table
        self.stream = stream
        self.dlq_stream = dlq_stream
        self.consumers = consumers
        self.watched = watched
        self.interval = interval
        self.consumers_every = consumers_every
        self.samples: list[Sample] = []
        self._consumers: tuple[dict[str, int], int] = ({}, 0)
        self._consumers_at = 0.0
        self._dlq = 0
        self._dlq_at = 0.0
        # On a cluster whose nodes --chaos kills, a NATS answer can take seconds (an election): the
        # questions then run in the background and a poll takes the last answers, never waiting.
        self.nats_in_background = nats_in_background
        self._asking: dict[str, concurrent.futures.Future] = {}

    def rows(self) -> int:
        (n,), = self.client.execute(
            f"SELECT toUInt64(sum(rows)) FROM {self._parts_from} WHERE active AND database = %(d)s AND table = %(t)s",
            {"d": self.database, "t": self._parts_table},
        )
        return int(n or 0)

    def poll(self) -> Sample:
        now = time.time()
        # A NATS answer that does not come (a leader election, a server killed by --chaos) keeps the
        # last one: the rows still come from ClickHouse.
        if self.nats_in_background:
            self._take_answers()
        if self.dlq_stream and now - self._dlq_at >= 1.0 and "dlq" not in self._asking:
            self._dlq_at = now
            self._ask("dlq", self.nats._stream_messages(self.dlq_stream))
        if self.consumers and now - self._consumers_at >= self.consumers_every and "consumers" not in self._asking:
            self._consumers_at = now
            self._ask("consumers", self.nats._consumer_states(self.stream, self.consumers))
        floors, lag = self._consumers
        cpu, rss = self.watched.sample()
        sample = Sample(t=now, rows=self.rows(), dlq=self._dlq, ack_floors=floors, lag=lag, cpu=cpu, rss=rss)
        self.samples.append(sample)
        return sample

    def _ask(self, what: str, question: Any) -> None:
        if self.nats_in_background:
            self._asking[what] = self.nats.submit(question)
            return
        try:
            self._keep(what, self.nats.call(question, timeout=NATS_POLL_TIMEOUT_S))
        except Exception:
            pass

    def _take_answers(self) -> None:
        for what, future in list(self._asking.items()):
            if future.done():
                del self._asking[what]
                if not future.cancelled() and future.exception() is None:
                    self._keep(what, future.result())

    def _keep(self, what: str, answer: Any) -> None:
        if what == "dlq":
            self._dlq = answer
        else:
            self._consumers = answer

    def sleep_until_next(self, last: float) -> None:
        delay = last + self.interval - time.time()
        if delay > 0:
            time.sleep(delay)
