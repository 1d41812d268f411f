"""supervisor.config: the shipped file loads, and every bad value names its key path."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import config_reference
from supervisor.config import (
    AdminConfig,
    BatchLimits,
    ClickHouseConfig,
    ColumnOverride,
    Config,
    ConfigError,
    NatsConfig,
    ObservabilityConfig,
    Secret,
    load_config,
    parse_config,
    redacted,
)
from workers.settings import declared_key

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Value-42"


def minimal() -> dict[str, Any]:
    return {"pipelines": [{"name": "events", "stream": "EVENTS", "subject": "events.*",
                           "partitions": 4, "table": "events"}]}


def problems(data: Any, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir or REPO)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(data: Any, base_dir: Path | None = None) -> str:
    found = problems(data, base_dir)
    assert len(found) == 1, found
    return found[0]


def with_(path: str, value: Any, data: dict | None = None) -> dict:
    """`minimal()` with the dotted `path` (list indexes as digits) set to `value`."""
    data = copy.deepcopy(data or minimal())
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[int(last) if isinstance(node, list) else last] = value
    return data


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- happy paths


def test_shipped_config_loads():
    config = load_config(REPO / "config.yaml")
    assert config.workers == 2
    assert config.source == REPO / "config.yaml"
    assert config.state_dir == REPO / "var"
    assert config.nats.embedded and config.nats.servers == ("nats://127.0.0.1:4222",)
    assert config.clickhouse.embedded and (config.clickhouse.host, config.clickhouse.port) == ("127.0.0.1", 9000)
    (p,) = config.pipelines
    assert (p.name, p.stream, p.subject, p.partitions, p.table) == ("events", "EVENTS", "events.*", 8, "events")
    assert p.batch == BatchLimits(max_rows=10_000, max_bytes=8 * 2**20, max_wait_ms=1000)
    assert p.create_table and "CREATE TABLE IF NOT EXISTS events" in p.create_table
    assert (p.dlq_stream, p.dlq_subject) == ("EVENTS_DLQ", "dlq.events")
    columns = {c.column: c for c in p.columns}
    assert columns["user_id"] == ColumnOverride("user_id", path=("user", "id"), required=True)
    assert columns["event_id"].required and columns["event_id"].path is None


def test_defaults_fill_a_minimal_config():
    config = parse_config(minimal(), REPO)
    assert config.workers == 1 and config.log_level == "info" and config.shutdown_grace_s == 30.0
    assert config.state_dir == REPO / "var"
    assert config.nats.servers == ("nats://127.0.0.1:4222",) and not config.nats.embedded
    assert config.clickhouse == ClickHouseConfig()
    assert config.observability.enabled is False
    p = config.pipelines[0]
    assert p.batch == BatchLimits() and p.columns == () and p.create_table is None
    assert (p.max_deliver, p.ack_wait_s) == (10, None)
    assert (p.dlq_stream, p.dlq_subject) == ("EVENTS_DLQ", "dlq.events")


def test_config_is_frozen_typed_and_picklable():
    data = with_("clickhouse.settings", {"insert_quorum": 2, "async_insert": True})
    data["pipelines"][0]["columns"] = {"ts": {"epoch_unit": "ms"}}
    config = parse_config(data, REPO)
    with pytest.raises(AttributeError):
        config.workers = 3  # type: ignore[misc]
    assert isinstance(config.clickhouse.settings, MappingProxyType)
    assert dict(config.clickhouse.settings) == {"insert_quorum": 2, "async_insert": 1}
    with pytest.raises(TypeError):
        config.clickhouse.settings["x"] = 1  # type: ignore[index]
    # Workers are spawned, so the config must survive pickling.
    assert pickle.loads(pickle.dumps(config)) == config


def test_ints_are_fine_where_floats_are_expected():
    config = parse_config(with_("shutdown_grace_s", 5), REPO)
    assert config.shutdown_grace_s == 5.0 and isinstance(config.shutdown_grace_s, float)


def test_urls_paths_and_overrides(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    data = minimal()
    data["state_dir"] = "state"
    data["nats"] = {"url": ["nats://a:4222", "tls://b:4443", "ws://c", "wss://d"], "tls": {"ca_file": "ca.pem"}}
    data["pipelines"][0].update(dlq={"stream": "DEAD", "subject": "dead.events"}, ack_wait_s=60)
    data["pipelines"][0]["columns"] = {"user_id": "user.id", "note": {"default": None}}
    config = parse_config(data, tmp_path)
    assert config.state_dir == tmp_path / "state"
    assert config.nats.servers == ("nats://a:4222", "tls://b:4443", "ws://c", "wss://d")
    assert config.nats.tls is not None and config.nats.tls.ca_file == tmp_path / "ca.pem"
    p = config.pipelines[0]
    assert (p.dlq_stream, p.dlq_subject, p.ack_wait_s) == ("DEAD", "dead.events", 60.0)
    assert p.columns[0] == ColumnOverride("user_id", path=("user", "id"))
    # An explicit `default: null` is a default (NULL), not "no default".
    assert p.columns[1] == ColumnOverride("note", has_default=True, default=None)


def test_two_pipelines_with_their_own_streams():
    data = minimal()
    data["pipelines"].append({"name": "clicks", "stream": "CLICKS", "subject": "clicks.*.*", "partitions": 16,
                              "table": "web.clicks", "dlq": {"stream": "CLICKS_DEAD"}})
    config = parse_config(data, REPO)
    assert [(p.table, p.dlq_stream, p.dlq_subject) for p in config.pipelines] == [
        ("events", "EVENTS_DLQ", "dlq.events"), ("web.clicks", "CLICKS_DEAD", "dlq.clicks")]


# --------------------------------------------------------------------------- value errors


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("pipelines.0.batch.max_rows", "ten", "pipelines[0].batch.max_rows: expected a positive integer, got 'ten'"),
        ("pipelines.0.batch.max_rows", 0, "pipelines[0].batch.max_rows: expected a positive integer, got 0"),
        ("pipelines.0.batch.max_wait_ms", 2.5, "pipelines[0].batch.max_wait_ms: expected a positive integer, got 2.5"),
        ("pipelines.0.batch.max_bytes", "8 parsecs", "pipelines[0].batch.max_bytes: expected a positive byte count"),
        ("pipelines.0.batch.max_bytes", "0.5B", "pipelines[0].batch.max_bytes: expected a whole, positive number"),
        ("workers", True, "workers: expected an integer from 1 to 256, got true"),
        ("workers", 257, "workers: expected an integer from 1 to 256, got 257"),
        ("shutdown_grace_s", "30s", "shutdown_grace_s: expected a number of seconds >= 0, got '30s'"),
        ("shutdown_grace_s", float("inf"), "shutdown_grace_s: expected a number of seconds >= 0"),
        ("log_level", "verbose", "log_level: expected one of debug, info, warning, error, got 'verbose'"),
        ("nats", [], "nats: expected a mapping, got list"),
        ("nats.url", "http://x:4222", "nats.url: expected a nats://, tls://, ws:// or wss:// URL"),
        ("nats.url", ["nats://a", 7], "nats.url[1]: expected a URL string, got 7"),
        ("nats.url", "nats://me:pw@host:4222", "nats.url: credentials in the URL are not allowed"),
        ("nats.connect_timeout_s", 0, "nats.connect_timeout_s: expected a positive number of seconds, got 0"),
        ("clickhouse.port", 70000, "clickhouse.port: expected an integer from 1 to 65535, got 70000"),
        ("clickhouse.database", "db; DROP", "clickhouse.database: expected an identifier"),
        ("clickhouse.secure", "yes", "clickhouse.secure: expected true or false, got 'yes'"),
        ("clickhouse.settings", ["a"], "clickhouse.settings: expected a mapping of ClickHouse settings, got list"),
        ("clickhouse.settings", {"max threads": 1}, "clickhouse.settings.max threads: expected an identifier"),
        ("pipelines", {}, "pipelines: expected a list of pipelines, got mapping"),
        ("pipelines", [], "pipelines: at least one pipeline is required"),
        ("pipelines.0", "events", "pipelines[0]: expected a mapping, got 'events'"),
        ("pipelines.0.name", "my events", "pipelines[0].name: expected a name of letters, digits, '_' and '-'"),
        ("pipelines.0.stream", "EV.ENTS", "pipelines[0].stream: expected a stream name without spaces"),
        ("pipelines.0.stream", "EV ENTS", "pipelines[0].stream: expected a stream name without spaces"),
        ("pipelines.0.stream", "EV*", "pipelines[0].stream: expected a stream name without spaces"),
        (
            "pipelines.0.subject",
            "events.created",
            "pipelines[0].subject: subject 'events.created' needs at least one '*'",
        ),
        ("pipelines.0.subject", "events.>", "pipelines[0].subject: '>' is not allowed"),
        ("pipelines.0.subject", "events..*", "pipelines[0].subject: empty token"),
        ("pipelines.0.subject", "events.*.", "pipelines[0].subject: empty token"),
        ("pipelines.0.subject", "ev*nts.*", "pipelines[0].subject: wildcards must be whole tokens"),
        ("pipelines.0.partitions", 0, "pipelines[0].partitions: expected an integer from 1 to 1024, got 0"),
        ("pipelines.0.partitions", 1025, "pipelines[0].partitions: expected an integer from 1 to 1024, got 1025"),
        ("pipelines.0.table", "events; DROP TABLE x", "pipelines[0].table: expected 'table' or 'database.table'"),
        ("pipelines.0.table", "a.b.c", "pipelines[0].table: expected 'table' or 'database.table'"),
        ("pipelines.0.table", "`events`", "pipelines[0].table: expected 'table' or 'database.table'"),
        ("pipelines.0.create_table", 5, "pipelines[0].create_table: expected a non-empty string, got 5"),
        ("pipelines.0.max_deliver", 0, "pipelines[0].max_deliver: expected a positive integer, got 0"),
        ("pipelines.0.dlq", {"subject": "dlq.*"}, "pipelines[0].dlq.subject: expected a subject without wildcards"),
        ("pipelines.0.dlq", {"stream": "EVENTS"}, "pipelines[0].dlq.stream: must differ from the pipeline's stream"),
        ("pipelines.0.columns", ["a"], "pipelines[0].columns: expected a mapping of column name"),
        ("pipelines.0.columns", {"user-id": "user.id"}, "pipelines[0].columns.user-id: expected an identifier"),
        ("pipelines.0.columns", {"u": "user..id"}, "pipelines[0].columns.u: empty segment in path 'user..id'"),
        ("pipelines.0.columns", {"u": {"path": ".id"}}, "pipelines[0].columns.u.path: empty segment"),
        (
            "pipelines.0.columns",
            {"u": {"epoch_unit": "us"}},
            "pipelines[0].columns.u.epoch_unit: expected one of s, ms",
        ),
        (
            "pipelines.0.columns",
            {"u": {"required": 1}},
            "pipelines[0].columns.u.required: expected true or false, got 1",
        ),
        ("pipelines.0.columns", {"u": {"default": {1: "x"}}}, "pipelines[0].columns.u.default: expected a JSON value"),
        (
            "pipelines.0.columns",
            {"u": {"required": True, "default": 0}},
            "pipelines[0].columns.u: required: true and a default",
        ),
        ("pipelines.0.columns", {"u": 5}, "pipelines[0].columns.u: expected a mapping, got 5"),
        ("observability.enabled", "on", "observability.enabled: expected true or false, got 'on'"),
    ],
)
def test_bad_value_names_its_key_path(path, value, expected):
    assert only_problem(with_(path, value)).startswith(expected)


def test_top_level_must_be_a_mapping():
    assert only_problem(["workers", 2]) == "config: expected a mapping, got list"
    assert only_problem(None).startswith("config: the file is empty")


@pytest.mark.parametrize("key", ["name", "stream", "subject", "partitions", "table"])
def test_missing_required_pipeline_key(key):
    data = minimal()
    del data["pipelines"][0][key]
    assert only_problem(data) == f"pipelines[0].{key}: required" + (" (or give routes)" if key == "table" else "")


def test_missing_pipelines():
    assert only_problem({"workers": 2}) == "pipelines: required"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("pipelines.0.batch.max_row", 5, "pipelines[0].batch.max_row: unknown key; did you mean 'max_rows'?"),
        ("worker", 2, "worker: unknown key; did you mean 'workers'?"),
        ("nats.urls", "nats://x", "nats.urls: unknown key; did you mean 'url'?"),
        ("clickhouse.databse", "x", "clickhouse.databse: unknown key; did you mean 'database'?"),
        ("pipelines.0.partition", 2, "pipelines[0].partition: unknown key; did you mean 'partitions'?"),
        ("observability.enable", True, "observability.enable: unknown key; did you mean 'enabled'?"),
        ("pipelines.0.dlq.subjet", "d.x", "pipelines[0].dlq.subjet: unknown key; did you mean 'subject'?"),
        (
            "pipelines.0.columns",
            {"u": {"requried": True}},
            "pipelines[0].columns.u.requried: unknown key; did you mean 'required'?",
        ),
        ("zzz", 1, "zzz: unknown key; expected one of: workers, shutdown_grace_s,"),
    ],
)
def test_unknown_keys_suggest_the_closest(path, value, expected):
    assert only_problem(with_(path, value)).startswith(expected)


def test_all_problems_are_reported_in_one_pass():
    data = minimal()
    data["workers"] = 0
    data["log_level"] = "loud"
    data["nats"] = {"embeded": True}
    data["pipelines"][0]["batch"] = {"max_rows": "ten", "max_bytes": "lots"}
    del data["pipelines"][0]["table"]
    data["pipelines"].append({"name": "bad name", "stream": "B", "subject": "b.*", "partitions": 2000, "table": "t"})
    found = problems(data)
    assert [p.split(":")[0] for p in found] == [
        "workers", "log_level", "nats.embeded", "pipelines[0].batch.max_rows",
        "pipelines[0].batch.max_bytes", "pipelines[0].table", "pipelines[1].name", "pipelines[1].partitions",
    ]


# --------------------------------------------------------------------------- cross-field rules


def test_pipeline_names_must_be_unique():
    data = minimal()
    data["pipelines"].append(dict(data["pipelines"][0], stream="OTHER", subject="other.*"))
    assert only_problem(data) == "pipelines[1].name: 'events' is already used by pipelines[0]"


@pytest.mark.parametrize("subject", ["more.*", "events.*"])
def test_each_pipeline_owns_its_stream(subject):
    data = minimal()
    data["pipelines"].append(dict(data["pipelines"][0], name="two", subject=subject))
    assert only_problem(data) == (
        "pipelines[1].stream: stream 'EVENTS' is already used by pipelines[0].stream; each pipeline owns its streams")


def test_dlq_streams_are_not_shared_either():
    data = minimal()
    data["pipelines"].append({"name": "b", "stream": "B", "subject": "b.*", "partitions": 1, "table": "t",
                              "dlq": {"stream": "EVENTS_DLQ"}})
    assert only_problem(data) == (
        "pipelines[1].dlq.stream: stream 'EVENTS_DLQ' is already used by pipelines[0].dlq.stream; "
        "each pipeline owns its streams")


def test_a_partition_stream_may_not_be_another_pipelines_stream():
    data = minimal()
    data["pipelines"][0]["layout"] = "stream_per_partition"
    data["pipelines"].append({"name": "b", "stream": "EVENTS_1", "subject": "b.*", "partitions": 1, "table": "t"})
    assert only_problem(data) == (
        "pipelines[0].stream: with layout stream_per_partition, partition 1 is stream 'EVENTS_1', which is "
        "pipelines[1].stream; each pipeline owns its streams")


def test_overlapping_subjects_across_streams_are_rejected():
    data = minimal()
    data["pipelines"].append(dict(data["pipelines"][0], name="two", stream="TWO", subject="*.x"))
    assert only_problem(data).startswith("pipelines[1].subject: '*.x' overlaps pipelines[0].subject 'events.*'")


def test_dlq_subject_matched_by_own_subject_is_rejected():
    data = with_("pipelines.0.subject", "dlq.*")
    assert only_problem(data) == (
        "pipelines[0].dlq.subject: 'dlq.events' is matched by this pipeline's subject 'dlq.*'; "
        "the sink would consume its own dead letters")


def test_dlq_subject_matched_by_another_pipeline_is_rejected():
    data = minimal()
    data["pipelines"].append({"name": "dl", "stream": "DL", "subject": "dlq.*", "partitions": 1, "table": "t",
                              "dlq": {"subject": "dead.dl"}})
    assert only_problem(data).startswith("pipelines[1].subject: 'dlq.*' overlaps pipelines[0].dlq.subject 'dlq.events'")


def test_dlq_stream_cannot_be_another_pipelines_input_stream():
    data = minimal()
    data["pipelines"].append({"name": "b", "stream": "B", "subject": "b.*", "partitions": 1, "table": "t",
                              "dlq": {"stream": "EVENTS"}})
    assert only_problem(data) == (
        "pipelines[1].dlq.stream: stream 'EVENTS' is already used by pipelines[0].stream; "
        "each pipeline owns its streams"
    )


def test_ack_wait_must_outlast_a_batch():
    data = with_("pipelines.0.ack_wait_s", 0.5)
    assert only_problem(data).startswith("pipelines[0].ack_wait_s: must be longer than batch.max_wait_ms (1000 ms)")


@pytest.mark.parametrize(
    ("nats", "expected"),
    [
        ({"embedded": True, "url": "nats://10.0.0.5:4222"}, "nats.url: embedded: true needs a nats://127.0.0.1"),
        ({"embedded": True, "url": "tls://127.0.0.1:4222"}, "nats.url: embedded: true needs a nats://127.0.0.1"),
        ({"embedded": True, "url": ["nats://127.0.0.1:4222", "nats://localhost:4223"]},
         "nats.url: embedded: true needs exactly one url"),
    ],
)
def test_embedded_nats_must_be_local(nats, expected):
    assert only_problem(with_("nats", nats)).startswith(expected)


def test_embedded_nats_accepts_localhost():
    assert parse_config(with_("nats", {"embedded": True, "url": ["nats://localhost:5222"]}), REPO).nats.embedded


def test_embedded_clickhouse_must_be_local():
    data = with_("clickhouse", {"embedded": True, "host": "ch.example.com"})
    assert (
        only_problem(data) == "clickhouse.host: embedded: true needs host 127.0.0.1 or localhost, got 'ch.example.com'"
    )
    assert parse_config(with_("clickhouse", {"embedded": True, "host": "localhost"}), REPO).clickhouse.embedded


def test_tls_files_resolve_and_must_exist(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    found = problems(with_("clickhouse", {"secure": True, "tls": {"cert_file": "c.pem", "ca_file": "nope.pem"}}),
                     tmp_path)
    assert found == [f"clickhouse.tls.ca_file: file not found: {tmp_path / 'nope.pem'}",
                     "clickhouse.tls: cert_file and key_file must be given together"]
    assert only_problem(with_("clickhouse.tls", {}), tmp_path) == "clickhouse.tls: only used with secure: true"


# --------------------------------------------------------------------------- secrets


def test_literal_password_is_rejected_without_echoing_it():
    for section, key in (("clickhouse", "password"), ("nats", "password"), ("nats", "token")):
        problem = only_problem(with_(f"{section}.{key}", SECRET))
        assert problem.startswith(
            f"{section}.{key}: secrets are never written in the config; use {key}_env or {key}_file"
        )
        assert SECRET not in problem


def test_secret_from_env(monkeypatch):
    monkeypatch.setenv("CH_PASSWORD", SECRET)
    config = parse_config(with_("clickhouse.password_env", "CH_PASSWORD"), REPO)
    assert config.clickhouse.password == Secret("env:CH_PASSWORD", SECRET)
    assert config.clickhouse.password.value == SECRET


def test_unset_env_var_names_key_and_variable(monkeypatch):
    monkeypatch.delenv("CH_PASSWORD", raising=False)
    assert only_problem(with_("clickhouse.password_env", "CH_PASSWORD")) == (
        "clickhouse.password_env: environment variable CH_PASSWORD is not set")


def test_secret_from_file_strips_trailing_newline(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(SECRET + "\n")
    config = parse_config(with_("nats.token_file", "secrets/token"), tmp_path)
    assert config.nats.token == Secret(f"file:{tmp_path / 'secrets' / 'token'}", SECRET)


def test_unreadable_secret_file_names_key_and_path(tmp_path):
    assert only_problem(with_("clickhouse.password_file", "missing"), tmp_path) == (
        f"clickhouse.password_file: cannot read {tmp_path / 'missing'}: No such file or directory")


def test_env_and_file_together_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.setenv("P", "x")
    (tmp_path / "p").write_text("y")
    data = with_("clickhouse", {"password_env": "P", "password_file": "p"})
    assert only_problem(data, tmp_path) == "clickhouse.password_env: set either password_env or password_file, not both"


def test_nats_password_needs_user(monkeypatch):
    monkeypatch.setenv("NP", "x")
    assert only_problem(with_("nats.password_env", "NP")) == (
        "nats.user: required when password_env or password_file is set")


def test_secrets_never_show_in_repr_or_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("CH_PASSWORD", SECRET)
    (tmp_path / "nats_pw").write_text(SECRET + "-file\n")
    data = minimal()
    data["clickhouse"] = {"password_env": "CH_PASSWORD"}
    data["nats"] = {"user": "sink", "password_file": "nats_pw"}
    config = parse_config(data, tmp_path)
    assert config.nats.password is not None and config.nats.password.value == SECRET + "-file"
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert repr(config.clickhouse.password) == "Secret(env:CH_PASSWORD)" == str(config.clickhouse.password)
    dump = redacted(config)
    assert SECRET not in repr(dump) and SECRET not in yaml.safe_dump(dump)
    assert dump["clickhouse"]["password"] == "<env:CH_PASSWORD>"
    assert dump["nats"]["password"] == f"<file:{tmp_path / 'nats_pw'}>"


def test_redacted_is_plain_data():
    dump = redacted(load_config(REPO / "config.yaml"))
    # safe_dump only accepts plain dicts/lists/scalars, so this proves there is nothing exotic left.
    again = yaml.safe_load(yaml.safe_dump(dump))
    assert again["pipelines"][0]["batch"]["max_bytes"] == 8 * 2**20
    assert again["state_dir"] == str(REPO / "var")
    assert again["nats"]["servers"] == ["nats://127.0.0.1:4222"]


# --------------------------------------------------------------------------- files


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, """\
        workers: 2
        nats:
          url: [nats://x
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:4:1: invalid YAML: ")


def test_yaml_tab_indentation_error(tmp_path):
    path = write(tmp_path, "workers: 2\nnats:\n\turl: nats://x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:3:1: invalid YAML: ")


def test_duplicate_keys_are_an_error(tmp_path):
    path = write(tmp_path, """\
        workers: 2
        log_level: info
        workers: 3
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:3:1: invalid YAML: duplicate key 'workers'"]


def test_load_resolves_paths_against_the_files_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pw").write_text(SECRET)
    path = tmp_path / "conf" / "jetsink.yaml"
    path.write_text(yaml.safe_dump(minimal() | {"state_dir": "../state", "clickhouse": {"password_file": "pw"}}))
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/jetsink.yaml")
    assert config.source == path
    assert config.state_dir == tmp_path / "state"
    assert config.clickhouse.password is not None and config.clickhouse.password.value == SECRET


# --------------------------------------------------------------------------- properties


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_workers_accepted_iff_in_range(n):
    data = with_("workers", n)
    if 1 <= n <= 256:
        assert parse_config(data, REPO).workers == n
    else:
        assert only_problem(data).startswith("workers: expected an integer from 1 to 256")


UNITS = {"": 1, "B": 1, "kB": 1000, "KB": 1000, "MB": 10**6, "GB": 10**9,
         "KiB": 1024, "MiB": 2**20, "GiB": 2**30}


@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_size_strings_round_trip(n, unit, space):
    data = with_("pipelines.0.batch.max_bytes", f"{n}{space}{unit}")
    assert parse_config(data, REPO).pipelines[0].batch.max_bytes == n * UNITS[unit]


@given(st.integers(min_value=1, max_value=10**6))
def test_kib_strings(n):
    assert parse_config(with_("pipelines.0.batch.max_bytes", f"{n}KiB"), REPO).pipelines[0].batch.max_bytes == n * 1024


@given(st.sampled_from(["kib", "mib", "Mb", "k", "M", "bytes", "KIB"]))
def test_unknown_size_units_are_rejected(unit):
    assert only_problem(with_("pipelines.0.batch.max_bytes", f"8{unit}")).startswith(
        "pipelines[0].batch.max_bytes: expected a positive byte count")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
SECTION_PATHS = ["workers", "nats", "nats.url", "nats.tls", "clickhouse", "clickhouse.settings", "pipelines",
                 "pipelines.0", "pipelines.0.batch", "pipelines.0.columns", "pipelines.0.dlq", "observability",
                 "pipelines.0.subject", "pipelines.0.columns.c"]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SECTION_PATHS), yaml_values)
def test_arbitrary_values_give_config_or_config_error(path, value):
    # Whatever lands in the file, the answer is a Config or a ConfigError, never a crash.
    data = minimal()
    data["pipelines"][0]["columns"] = {}
    try:
        result = parse_config(with_(path, value, data), REPO)
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)
    else:
        assert isinstance(result, Config)


# --------------------------------------------------------------------------- one declaration per key


def test_shipped_config_round_trips_through_pickle():
    # The Config object itself crosses the spawn boundary to every worker.
    config = load_config(REPO / "config.yaml")
    again = pickle.loads(pickle.dumps(config))
    assert again == config
    assert redacted(again) == redacted(config)
    assert "__reduce__" not in vars(ClickHouseConfig)  # pickles as a plain frozen dataclass


def test_absent_sections_are_the_declared_defaults():
    config = parse_config(minimal(), REPO)
    assert (config.nats, config.clickhouse, config.admin) == (NatsConfig(), ClickHouseConfig(), AdminConfig())
    assert config.observability == ObservabilityConfig()
    # An empty mapping walks every key's declaration and must land on the same values.
    empty = parse_config(minimal() | {"nats": {}, "clickhouse": {}, "observability": {"traces": {}, "metrics": {},
                                                                                       "profiling": {}}}, REPO)
    assert (empty.nats, empty.clickhouse, empty.observability) == (NatsConfig(), ClickHouseConfig(),
                                                                    ObservabilityConfig())


def test_every_key_has_a_doc_and_a_type():
    for cls in settings_classes(Config):
        for f in dataclasses.fields(cls):
            key = declared_key(f)
            if key is not None:
                assert key.doc.strip() and key.check.doc, f"{cls.__name__}.{f.name}"


def test_docs_key_reference_is_generated_from_the_declarations():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert sorted(config_reference.blocks_in(text)) == sorted(name for name, _ in config_reference.TABLES)
    # On failure: python -m supervisor.config reference --write docs/configuration.md
    assert config_reference.update(text) == text


def test_reference_states_the_declared_bounds_and_defaults():
    rows = {line.split(" | ")[0]: line for line in config_reference.table(BatchLimits).splitlines()}
    assert rows["| `max_rows`"] == "| `max_rows` | int, >= 1 | `10000` | Rows per insert. |"
    assert "| size, > 0 | `8MiB` |" in rows["| `max_bytes`"]
    assert "| `workers` | int, 1..256 | `1` |" in config_reference.table(Config)


SHIPPED = (REPO / "config.yaml").read_text(encoding="utf-8")


def comments(text: str) -> list[str]:
    """The comment text of each line of a YAML file (full-line and trailing comments)."""
    found = []
    for line in text.splitlines():
        in_quote = None
        for i, char in enumerate(line):
            if char in "'\"" and in_quote in (None, char):
                in_quote = None if in_quote else char
            elif char == "#" and in_quote is None and (i == 0 or line[i - 1].isspace()):
                found.append(line[i + 1:])
                break
    return found


def test_config_yaml_comments_state_no_defaults_or_bounds():
    # Defaults and bounds live in the declarations (and the generated reference); a comment
    # restating one would drift. "default:" as a key name and ClickHouse's DEFAULT are fine.
    stated = [c for c in comments(SHIPPED)
              if re.search(r"\b[Dd]efaults?\b(?!:)|\d\s*\.\.\s*\d|[<>]=|\bat (least|most) \d", c)]
    assert stated == []


def test_commented_out_examples_in_config_yaml_are_the_declared_defaults():
    # A reader takes a commented-out `key: value` for the default, so where a key has a plain
    # default, the example must be it; keys whose default is none or derived may show any valid value.
    yaml_keys = {name for cls in settings_classes(Config) for f in dataclasses.fields(cls)
                 if (k := declared_key(f)) is not None
                 for name in ((f"{f.name}_env", f"{f.name}_file") if k.secret else ((k.name or f.name).split(".")))}
    example = re.compile(r"^(\s*)# (\s*([a-z_]+):.*)$")
    uncommented = "\n".join(
        m[1] + m[2] if (m := example.match(line)) and m[3] in yaml_keys else line for line in SHIPPED.splitlines())
    shipped, with_examples = yaml.safe_load(SHIPPED), yaml.safe_load(uncommented)
    checked = []
    for path, value in leaves(with_examples):
        if lookup(shipped, path) is not _ABSENT:
            continue
        cls, f = declaration_at(path)
        key = declared_key(f)
        if key.default_doc is None and f.default is not None:
            assert key.check(value, REPO) == f.default, (path, value, f.default)
            checked.append(".".join(map(str, path)))
    assert "admin.listen" in checked and "observability.traces.sample_ratio" in checked, checked


_ABSENT = object()


def settings_classes(cls: type) -> set[type]:
    """`cls` and every settings class nested in it."""
    found = {cls}
    for f in dataclasses.fields(cls):
        nested = getattr(declared_key(f) and declared_key(f).check, "cls", None)
        if nested is not None:
            found |= settings_classes(nested)
    return found


def leaves(data: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(data, dict) and data:
        return [leaf for k, v in data.items() for leaf in leaves(v, path + (k,))]
    if isinstance(data, list) and path == ("pipelines",):
        return [leaf for i, v in enumerate(data) for leaf in leaves(v, path + (i,))]
    return [(path, data)]


def lookup(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
    return data


def declaration_at(path: tuple) -> tuple[type, Any]:
    """The settings class and field that declare the YAML key at `path` (list indexes skipped)."""
    cls: type = Config
    parts = [p for p in path if not isinstance(p, int)]
    while parts:
        by_name = {(declared_key(f).name or f.name): f for f in dataclasses.fields(cls) if declared_key(f)}
        by_name |= {f"{name}{end}": f for name, f in by_name.items()
                    if declared_key(f).secret for end in ("_env", "_file")}
        name = parts.pop(0)
        if name == "dlq":
            name = f"dlq.{parts.pop(0)}"
        f = by_name[name]
        check = declared_key(f).check
        if not parts:
            return cls, f
        cls = check.cls
    raise AssertionError(path)


def test_instance_id_defaults_to_the_host_name():
    import socket

    assert parse_config(minimal(), REPO).instance_id == socket.gethostname()
    assert parse_config(with_("instance_id", "host-a.example"), REPO).instance_id == "host-a.example"


@pytest.mark.parametrize("bad", ["a b", ".a", "a.", "a*", "a>b", ""])
def test_instance_id_must_be_a_members_key(bad):
    assert only_problem(with_("instance_id", bad)).startswith("instance_id: expected a name")
