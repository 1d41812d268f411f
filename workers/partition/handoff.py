"""Where a partition's two sides meet: the fetcher (workers/partition/fetcher.py) hands sealed
batches to the storer (workers/partition/storer.py), and asks it the few things about its acks
that decide when to pull.

Nothing else passes between them (as in dramatiq, whose ConsumerThread and WorkerThread share
only a work queue, and aiokafka, whose Fetcher knows nothing of commits).  Everything here is
touched once per batch or per pull-loop turn, never per message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from workers.partition.batch import Batch

# Put into the queue after the last sealed batch: the fetcher is done, the storer finishes up.
STOP = object()


class Handoff:
    """The state the fetcher and the storer share.

    Fetcher -> storer:
      ``sealed``: a queue of one; each sealed batch, then ``STOP``.  While it is full the
        fetcher waits, so a partition holds at most three batches (filling, queued, committing).
      ``in_hand``: sealed batches not yet acked (queued or committing); the fetcher appends a
        batch as it seals it, the storer removes it once the batch is acked.
      ``filling``: the batch the fetcher is filling (the storer keeps it alive with the rest).
    Storer -> fetcher:
      ``committing``: a batch is being stored (the pipeline is not idle).
      ``wake``: set when a batch is done, so that the fetcher looks again at once.
    Both:
      ``progress_at``: monotonic time of the last progress, a pull-loop turn, a stored batch
        or a retry attempt (the runner's ``stalled_for``).
    """

    def __init__(self) -> None:
        self.sealed: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self.in_hand: list[Batch] = []
        self.filling: Batch | None = None
        self.committing = False
        self.wake = asyncio.Event()
        self.progress_at = time.monotonic()


class HeldAcks(Protocol):
    """What the fetcher asks of the storer's acks (workers/delivery/acks.py says when they are held).

    While acks are held ("dirty"), the fetcher seals a batch only once its request is over and
    sends one request at a time, so that the storer can ``reconcile`` with the consumer whenever
    nothing is in flight.
    """

    ack_wait_s: float  # the consumer's ack_wait

    @property
    def dirty(self) -> bool:
        """Stored messages are held unacked until the consumer's counts prove nothing is missing."""
        ...

    @property
    def last_seen(self) -> int:
        """Consumer sequence of the last delivery stored (for the record of a pin's end)."""
        ...

    async def keep_held_alive(self, now: float) -> None:
        """In-progress acks for held messages, at most every third of ack_wait."""
        ...

    async def reconcile(self) -> None:
        """Nothing in flight: compare with the consumer, and ack everything held if it agrees."""
        ...
