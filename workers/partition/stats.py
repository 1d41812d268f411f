"""What a partition counts for the worker's stats reports (supervisor/status.py shows them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionStats:
    """Counters a partition keeps for the worker's stats reports."""

    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    insert_retries: int = 0
    last_batch_at: float = 0.0  # wall-clock time of the last committed batch
    pending: int = 0  # consumer's messages left, from the last delivery's ack subject
    skipped_duplicates: int = 0  # deliveries at or below the stored sequence: acked, not stored again
    # In-doubt batches a previous owner left (workers/delivery/takeover.py), by how they were settled:
    in_doubt_acked: int = 0  # acked by that owner (the consumer's ack floor): stored, nothing asked
    in_doubt_landed: int = 0  # its insert had landed (ClickHouse's query log): not sent again
    in_doubt_not_landed: int = 0  # its insert never landed (the query log): stored when redelivered
    # nobody could tell: sent again under the same identity (also this owner's own retried insert, when
    # ClickHouse restarted before it could say whether the failed attempt landed)
    in_doubt_resent: int = 0
    taken_over: int = 0  # messages a previous owner held unacked, stored from the stream at takeover
    # Stream sequences after `stored` the stream had removed (its limits) when this owner opened the state:
    # this partition's messages among them expired unread (all of them, with a stream per partition).
    expired_unread: int = 0
    state_resets: int = 0  # commit states set aside: another stream incarnation, or the bucket was deleted
    consumers_created: int = 0  # the partition's consumer (or stream) was missing and was created again
    pins_lost: int = 0  # 423s: the consumer's pin went to another puller (or a new consumer leader)
    # A routed pipeline: route name (or "unrouted") -> [rows inserted, messages skipped, dead-lettered].
    routes: dict[str, list[int]] = field(default_factory=dict)

    def routed(self, counts: dict[str, list[int]]) -> None:
        """Add a batch's per-route counts (workers/partition/prepare.Prepared.routes)."""
        for label, (inserted, skipped, dead) in counts.items():
            mine = self.routes.setdefault(label, [0, 0, 0])
            mine[0] += inserted
            mine[1] += skipped
            mine[2] += dead
