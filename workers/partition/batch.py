"""A batch: messages of one partition collected until a row, byte or age limit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from workers.message import DATA

_data = itemgetter(DATA)


@dataclass(slots=True)
class Batch:
    """Messages gathered for one insert, in delivery order."""

    max_rows: int
    max_bytes: int
    max_wait_s: float
    messages: list[Any] = field(default_factory=list)
    nbytes: int = 0
    opened_at: float = 0.0  # monotonic time of the first message
    requested_at: float = 0.0  # monotonic time the pull request its first message answered was sent
    kept_alive_at: float = 0.0  # monotonic time of the last in-progress ack for its messages
    redelivered: bool = False  # holds a delivery that is not a first one (found at intake)

    def extend(self, msgs: list[tuple]) -> None:
        """Add deliveries (raw tuples, workers/nats/wire.py)."""
        if not self.messages:
            self.opened_at = time.monotonic()
        self.messages.extend(msgs)
        self.nbytes += sum(map(len, map(_data, msgs)))

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def full(self) -> bool:
        return len(self.messages) >= self.max_rows or self.nbytes >= self.max_bytes

    def deadline(self) -> float | None:
        """Monotonic time at which this batch must be flushed however small, or None if empty."""
        return self.opened_at + self.max_wait_s if self.messages else None

    def room(self) -> int:
        """How many more messages fit by count."""
        return max(0, self.max_rows - len(self.messages))
