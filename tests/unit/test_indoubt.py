"""An in-doubt batch's insert carries the same identity every time it is sent."""

from __future__ import annotations

from workers.clickhouse import faults, indoubt, sink
from workers.clickhouse.schema import ServerFeatures


class _RecordingClient:
    """Stands in for clickhouse_driver.Client.execute to see what an insert passes to the driver."""

    def __init__(self, refuse_rows: set[int] | None = None) -> None:
        self.calls: list[dict] = []
        self._refuse = refuse_rows or set()

    def execute(self, statement, columns, **kwargs):
        self.calls.append({"statement": statement, "rows": list(columns[0]), **kwargs})
        if self._refuse & set(columns[0]):
            raise ValueError("refused")  # faults.classify: a row problem
        return len(columns[0])


def _identity(version):
    tokens = ServerFeatures.from_version(version).insert_deduplication_token
    return indoubt.identity("events", 3, 100, 250, 1_700_000_000_000_000_000, tokens)


def test_identity_is_a_function_of_the_batch_range():
    assert _identity((23, 8)) == _identity((23, 8))
    other = indoubt.identity("events", 3, 100, 251, 1_700_000_000_000_000_000, True)
    assert other.query_id != _identity((23, 8)).query_id and other.token != _identity((23, 8)).token
    # A stream recreated from sequence 1 has other timestamps: no identity is reused.
    again = indoubt.identity("events", 3, 100, 250, 1_800_000_000_000_000_000, True)
    assert again.query_id != _identity((23, 8)).query_id


def test_tokens_only_where_the_server_has_the_setting():
    assert _identity((18, 16, 1)).token is None
    assert _identity((18, 16, 1)).settings() == {"log_queries": 1}
    assert _identity((22, 1)).token is None
    modern = _identity((24, 3))
    assert modern.settings() == {"log_queries": 1, "insert_deduplication_token": modern.token}


def test_the_resent_batch_passes_the_same_query_id_and_token_to_the_driver():
    ident = _identity((25, 1))
    client = _RecordingClient()
    statement = sink.insert_statement("events", "db", ("n",))
    for _ in range(2):  # the original insert and the next owner's resend
        indoubt.run_as(
            ident, sink.send_insert, client, statement, [[1, 2, 3]], {"opentelemetry_traceparent": "00-ab-cd-01"}
        )
    first, second = client.calls
    assert first["query_id"] == second["query_id"] == ident.query_id
    assert (
        first["settings"]
        == second["settings"]
        == {
            "opentelemetry_traceparent": "00-ab-cd-01",
            "log_queries": 1,
            "insert_deduplication_token": ident.token,
        }
    )
    # Without an identity (at_least_once, or a batch with no recorded range) nothing is added.
    sink.send_insert(client, statement, [[4]], None)
    assert client.calls[-1]["settings"] is None and "query_id" not in client.calls[-1]


def test_parts_of_a_split_batch_get_identities_of_their_own():
    ident = _identity((25, 1))
    client = _RecordingClient(refuse_rows={2})
    statement = sink.insert_statement("events", "db", ("n",))

    def insert(columns):
        return sink.send_insert(client, statement, columns)

    refused = indoubt.run_as(ident, faults.isolate_bad_rows, insert, [[0, 1, 2, 3]], 4)
    assert [i for i, _ in refused] == [2]
    by_rows = {tuple(c["rows"]): (c["query_id"], c["settings"]["insert_deduplication_token"]) for c in client.calls}
    assert by_rows[(0, 1, 2, 3)] == (ident.query_id, ident.token)
    assert by_rows[(0, 1)] == (ident.part(0, 2).query_id, ident.part(0, 2).token)
    assert by_rows[(3,)] == (ident.part(3, 4).query_id, ident.part(3, 4).token)
    assert len({q for q, _ in by_rows.values()}) == len(by_rows)
