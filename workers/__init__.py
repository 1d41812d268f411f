"""jetsink's worker process: moves one slot's partitions from JetStream into ClickHouse.

Read it by folder (docs/architecture.md has the same map):

- ``worker.py``: the process itself (connections, control pipe, heartbeat, its partitions);
- ``partition/``: one partition's data path, a fetching side and a storing side;
- ``nats/``: everything that speaks NATS (bulk protocol reader, pull protocol, connection, DLQ);
- ``clickhouse/``: everything that speaks ClickHouse (schema and mapping, insert, native
  column writers, insert faults, the query log's word on an in-doubt insert);
- ``delivery/``: the guarantees on top of both (ack safety, commit state, takeover);
- ``observability/``: traces, metrics, logs and memory profiles of the process;
- leaf modules both the supervisor and the workers import, which import nothing of the
  project's: ``settings``, ``setting_types``, ``topology``, ``message``, ``exitcodes``.

tests/unit/test_imports.py holds the rules of who may import whom.
"""
