"""Dead letters: a message that cannot be stored goes, byte for byte, to the DLQ stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from workers.observability.telemetry import current_traceparent

# Header names on a dead letter. The message's own headers are kept beside them so
# that a replay can republish exactly what the producer sent.
H_ERROR = "Jetsink-Error"
H_REASON = "Jetsink-Reason"
H_SUBJECT = "Jetsink-Subject"
H_STREAM = "Jetsink-Stream"
H_STREAM_SEQ = "Jetsink-Stream-Seq"
H_PIPELINE = "Jetsink-Pipeline"
H_WORKER = "Jetsink-Worker"
H_TRACEPARENT = "traceparent"  # the producer's, unchanged
H_BATCH_TRACEPARENT = "Jetsink-Traceparent"  # the batch span that dead-lettered it (observability on)
# JetStream's de-duplication id: one per source message, so a message dead-lettered again
# (its batch redelivered after a crash) is dropped by the DLQ stream's duplicate window.
H_MSG_ID = "Nats-Msg-Id"
H_PRODUCER_MSG_ID = "Jetsink-Producer-Msg-Id"  # the producer's own Nats-Msg-Id, restored by a replay

_MAX_ERROR_CHARS = 1000


def _header_safe(text: str) -> str:
    # A header value cannot hold line breaks; a long error is cut so the letter fits.
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_ERROR_CHARS else flat[: _MAX_ERROR_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that could not be stored, and why."""

    data: bytes
    subject: str
    stream: str
    stream_seq: int
    reason: str  # short code: invalid_json, wrong_type, missing_required, out_of_range, lost_precision, ...
    error: str  # human-readable detail
    pipeline: str
    worker: int
    original_headers: Mapping[str, str] | None = None
    traceparent: str | None = None

    @property
    def msg_id(self) -> str:
        """Source stream and sequence: the same for every attempt to dead-letter this message."""
        return f"{self.stream}:{self.stream_seq}"

    def headers(self) -> dict[str, str]:
        """The NATS headers the dead letter carries."""
        hdrs = dict(self.original_headers or {})
        if H_MSG_ID in hdrs:
            hdrs[H_PRODUCER_MSG_ID] = hdrs[H_MSG_ID]
        hdrs.update(
            {
                H_ERROR: _header_safe(self.error),
                H_REASON: self.reason,
                H_SUBJECT: self.subject,
                H_STREAM: self.stream,
                H_STREAM_SEQ: str(self.stream_seq),
                H_PIPELINE: self.pipeline,
                H_WORKER: str(self.worker),
                H_MSG_ID: self.msg_id,
            }
        )
        if self.traceparent:
            hdrs[H_TRACEPARENT] = self.traceparent
        return hdrs


async def publish_dead_letters(
    nc: Any, stream: str, subject: str, letters: list[DeadLetter], timeout: float = 10.0
) -> None:
    """Publish `letters` to the DLQ and wait until JetStream has stored every one.

    Raises if any is not stored: the caller must then not ack the originals.
    """
    if not letters:
        return
    # The batch span current in the caller's task, so a dead letter leads to its trace.
    batch_span = current_traceparent()
    extra = (
        {H_BATCH_TRACEPARENT: batch_span, "Nats-Expected-Stream": stream}
        if batch_span
        else {"Nats-Expected-Stream": stream}
    )
    # Publish all, then await the acks together: one round trip for the lot.
    futures = [nc.request(subject, dl.data, timeout=timeout, headers={**dl.headers(), **extra}) for dl in letters]
    replies = await asyncio.gather(*futures)
    for dl, reply in zip(letters, replies, strict=False):
        body = orjson.loads(reply.data)
        if "error" in body:
            raise RuntimeError(
                f"dlq stream {stream} refused dead letter of {dl.subject} seq {dl.stream_seq}: {body['error']}"
            )
