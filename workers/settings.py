"""jetsink's configuration as frozen, typed dataclasses: the leaf both sides share.

Each field declares its config key once (``key(...)``): the check and bounds of its value
(workers/setting_types.py), its default (the dataclass default) and its doc. supervisor/config.py
walks config.yaml with these declarations, and the key reference in docs/configuration.md is
generated from them (``python -m supervisor.config reference``). The supervisor hands the
resulting ``Config`` object itself to each worker process (it pickles), and nothing
downstream ever sees raw YAML.
"""

from __future__ import annotations

import socket
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from workers.setting_types import (
    HOSTNAME,
    IDENTIFIER,
    INSTANCE_ID,
    PIPELINE_NAME,
    STREAM_NAME,
    TABLE_NAME,
    Bool,
    Check,
    Choice,
    DottedPath,
    FilePath,
    HostPorts,
    InsertSettings,
    Int,
    JsonValue,
    JsonValues,
    Key,
    Listen,
    ListOf,
    MapOf,
    NatsUrls,
    Pattern,
    Ratio,
    Seconds,
    Section,
    Size,
    Subject,
    Text,
    Timezone,
)

# --------------------------------------------------------------------------- public types


class ConfigError(Exception):
    """The config is unusable. ``problems`` lists every issue as "key.path: message"."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A password or token read from an env var or a file; repr/str show only the source."""

    source: str  # "env:NAME" or "file:/abs/path"
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__



def key(check: Check, doc: str, default: Any = MISSING, *, factory: Any = MISSING, **how: Any) -> Any:
    """A settings field that declares its config key: check, doc and default, once."""
    return field(default=default, default_factory=factory, metadata={"key": Key(check, doc, **how)})


def section(cls: type, doc: str, *, optional: bool = False) -> Any:
    """A nested mapping; absent means all defaults, or None when ``optional``."""
    if optional:
        return key(Section(cls, optional=True), doc, None)
    return key(Section(cls), doc, factory=cls, default_doc="all defaults")


def declared_key(f: Any) -> Key | None:
    """The key a dataclass field declares, or None for a field the parser fills itself."""
    return f.metadata.get("key")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Used by `nats.tls` and `clickhouse.tls`. An empty mapping (`tls: {}`) means "TLS with the
    system's CA certificates"."""

    ca_file: Path | None = key(FilePath(must_exist=True), "CA bundle to verify the server.", None)
    cert_file: Path | None = key(FilePath(must_exist=True), "Client certificate; needs `key_file`.", None)
    key_file: Path | None = key(FilePath(must_exist=True), "Client key; needs `cert_file`.", None)


_SECRET_DOC = "Where the {} comes from; see [secrets](#secrets)."


@dataclass(frozen=True, slots=True)
class NatsConfig:
    servers: tuple[str, ...] = key(
        NatsUrls(), "Servers to connect to. Each must start with `nats://`, `tls://`, `ws://` or `wss://` and have "
        "a host. Credentials inside the URL (`nats://user:pw@host`) are rejected; see [secrets](#secrets).",
        ("nats://127.0.0.1:4222",), name="url")
    embedded: bool = key(
        Bool(), "The supervisor starts `nats-server` (with JetStream) itself, listening on the port of `url`. "
        "Requires exactly one `nats://127.0.0.1:PORT` or `nats://localhost:PORT` URL.", False)
    user: str | None = key(Text(), "User name for user/password auth. Required when a password is set.", None)
    password: Secret | None = key(Text(), _SECRET_DOC.format("password"), None, secret=True)
    token: Secret | None = key(Text(), "Token auth; see [secrets](#secrets).", None, secret=True)
    creds_file: Path | None = key(FilePath(must_exist=True), "A `.creds` file (JWT + nkey seed).", None)
    nkey_seed_file: Path | None = key(FilePath(must_exist=True), "An nkey seed file.", None)
    tls: TLSConfig | None = section(TLSConfig, "See [tls](#tls).", optional=True)
    connect_timeout_s: float = key(Seconds(), "Connection timeout.", 5.0)
    replicas: int | None = key(
        Int(1, 5), "Replicas of the streams, KV buckets and consumers the supervisor creates (an existing stream "
        "with fewer is scaled up). Without it: 3 when the server it connects to is in a cluster of 3 or more "
        "(its INFO lists the cluster's servers), else 1.", None, default_doc="derived")


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """One entry of `clickhouse.shards`: a shard's replicas and its weight, in the cluster's order."""

    hosts_items: tuple[str, ...] = key(
        HostPorts(), "The shard's replicas, as `host:port`, in order of preference (as `clickhouse.hosts`).", (),
        name="hosts", required=True)
    weight: int = key(
        Int(0, 1000), "The shard's weight, as in the cluster's `remote_servers` (`<weight>`): its share of the rows "
        "is weight / total weight.", 1)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple((h, int(p)) for h, _, p in (a.rpartition(":") for a in self.hosts_items))


@dataclass(frozen=True, slots=True)
class ClickHouseConfig:
    host: str = key(HOSTNAME, "Server host (native protocol). A one-host `hosts` list; not with `hosts`.",
                    "127.0.0.1")
    port: int = key(Int(1, 65535), "Native-protocol port (usually 9440 with `secure: true`); not with `hosts`.",
                    9000)
    hosts_items: tuple[str, ...] = key(
        HostPorts(), "The replicas of one shard, as `host:port`, in order of preference. Each worker inserts into "
        "one (the worker's slot picks which, so the workers spread over them) and moves to the next on connection "
        "errors and replica-local errors (read-only table, ZooKeeper/Keeper session lost, unknown quorum status), "
        "going back once its own answers healthily again. See [ClickHouse clusters]"
        "(operations.md#clickhouse-clusters).", (), name="hosts", default_doc="`[host:port]`")
    shards_items: tuple[ShardConfig, ...] = key(
        ListOf(ShardConfig, "shards"), "The shards of a cluster, in the order of its `remote_servers` entry. Each "
        "batch is split by `pipelines[].sharding_key` as the cluster's Distributed table splits rows, and each "
        "shard's part is inserted into that shard's local table (the pipeline's `table`) directly. Not with "
        "`hosts`, `host` or `port`. See [ClickHouse clusters](operations.md#clickhouse-clusters).", (),
        name="shards", default_doc="one shard: `hosts`")
    database: str = key(IDENTIFIER, "Database for table names given without a database.", "default")
    user: str = key(Text(), "User name.", "default")
    password: Secret | None = key(Text(), "See [secrets](#secrets).", None, secret=True,
                                  default_doc="none (empty password)")
    secure: bool = key(Bool(), "Use TLS.", False)
    tls: TLSConfig | None = section(TLSConfig, "See [tls](#tls); only allowed with `secure: true`.", optional=True)
    embedded: bool = key(
        Bool(), "The supervisor starts `clickhouse-server` itself on `host:port`. Requires `host` `127.0.0.1` or "
        "`localhost`.", False)
    connect_timeout_s: float = key(Seconds(), "Connection timeout.", 5.0)
    send_receive_timeout_s: float = key(Seconds(), "Per query/insert socket timeout.", 60.0)
    # Pairs rather than a dict: they pickle (the Config crosses the spawn boundary) and cannot change.
    settings_items: tuple[tuple[str, str | int | float], ...] = key(
        InsertSettings(), "Extra ClickHouse settings sent with every insert (e.g. `insert_quorum: 2`). "
        "Booleans become `1`/`0`.", (), name="settings")

    @property
    def settings(self) -> Mapping[str, str | int | float]:
        """The insert settings as a read-only mapping."""
        return MappingProxyType(dict(self.settings_items))

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every configured server, as (host, port): the shards' replicas, else `hosts`, else `host` and `port`."""
        return tuple(a for shard in self.shard_addresses for a in shard)

    @property
    def shard_addresses(self) -> tuple[tuple[tuple[str, int], ...], ...]:
        """Each shard's replicas, in the cluster's order (one shard unless `shards` is given)."""
        if self.shards_items:
            return tuple(s.addresses for s in self.shards_items)
        if not self.hosts_items:
            return (((self.host, self.port),),)
        return (tuple((h, int(p)) for h, _, p in (a.rpartition(":") for a in self.hosts_items)),)

    @property
    def shard_weights(self) -> tuple[int, ...]:
        return tuple(s.weight for s in self.shards_items) or (1,)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """A partition's batch is inserted when the first of these limits is reached."""

    max_rows: int = key(Int(1), "Rows per insert.", 10_000)
    max_bytes: int = key(Size(), "Raw message bytes per insert.", 8 * 1024 * 1024)
    max_wait_ms: int = key(Int(1, unit="milliseconds"), "Age of the oldest message in the batch.", 1000)


# Where a column's value can come from (ColumnOverride.source); workers/clickhouse/schema/sources.py reads them.
SOURCES = ("json", "subject", "subject_token", "stream_sequence", "timestamp", "delivered", "partition", "header",
           "headers", "message")


@dataclass(frozen=True, slots=True)
class ColumnOverride:
    column: str  # the key of the `columns:` mapping
    path: tuple[str, ...] | None = key(
        DottedPath(), "Where the value sits in the JSON document: `user.id` reads `{\"user\": {\"id\": ...}}`. "
        "No empty segments.", None, default_doc="the column name")
    required: bool = key(Bool(), "A message without the value is dead-lettered (reason `missing_required`).", False)
    has_default: bool = False  # `default: null` is a default (NULL), so None alone cannot say "no default"
    default: Any = key(
        JsonValue(), "Used when the value is missing; converted like an input value. `default: null` is a default "
        "(NULL). Cannot be combined with `required: true`. Quote dates (`'2024-01-01'`): YAML would otherwise turn "
        "them into date objects.", None)
    epoch_unit: str = key(Choice("s", "ms"), "Unit of numeric timestamps for `DateTime`/`DateTime64` columns.", "s")
    timezone: str | None = key(
        Timezone(), "Time zone for date-times sent without an offset (DateTime/DateTime64 columns); else the "
        "column's own, else the server's.", None)
    source: str = key(
        Choice(*SOURCES), "Where the value comes from: `json` (the document, at `path`), `subject` (the subject "
        "the producer published to, without the partition token), `subject_token` (one token of it, see "
        "`subject_token`), `stream_sequence`, `timestamp` (when JetStream stored the message, ns), `delivered` "
        "(delivery count), `partition`, `header` (one header, see `header`), `headers` (all of them) or "
        "`message` (the raw message bytes). See [column sources](#column-sources).", "json",
        default_doc="`json`; `header` when `header` is set, `subject_token` when `subject_token` is set")
    header: str | None = key(
        Text(), "The header a `source: header` column takes (exact name; a message without it gets the "
        "column's default, or is dead-lettered when `required`).", None)
    subject_token: int | None = key(
        Int(-64, 64), "The token a `source: subject_token` column takes: 1 is the first token of the subject "
        "the producer published to, -1 the last; 0 is refused.", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One entry of `pipelines[].routes`: a condition on the message and where it goes."""

    name: str | None = key(
        IDENTIFIER, "The route's label in `status`, /metrics and logs.", None,
        default_doc="the table's name (`<table>_<n>` when two routes name one table); `skip_<n>` for a skip")
    subject: str | None = key(
        Subject(wildcards=None), "Matches when the subject the producer published to (without the partition "
        "token) matches this subject or pattern (`*` wildcards).", None)
    field: tuple[str, ...] | None = key(
        DottedPath(), "Matches on the document's value at this dotted path, with `equals`, `in` or `exists`.", None)
    equals: Any = key(JsonValue(), "With `field`: the value equals this one (JSON equality; `1` does not equal "
                      "`\"1\"` or `true`).", None)
    in_values: tuple[Any, ...] | None = key(
        JsonValues(), "With `field`: the value is one of these.", None, name="in")
    exists: bool | None = key(Bool(), "With `field`: the path is present (`true`) or absent (`false`).", None)
    table: str | None = key(TABLE_NAME, "Where matching messages are inserted.", None)
    columns: tuple[ColumnOverride, ...] = key(
        MapOf(ColumnOverride, "path", "column name -> path or settings"),
        "This table's column overrides, merged over the pipeline's (a column named in both takes the route's).", ())
    skip: bool = key(Bool(), "Matching messages are acked and counted (`jetsink_skipped_total`), never stored or "
                     "dead-lettered. Instead of `table`.", False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """Each pipeline moves one JetStream stream into one ClickHouse table."""

    name: str = key(PIPELINE_NAME, "Unique among pipelines. Used in consumer names and the default DLQ subject.",
                    required=True)
    stream: str = key(
        STREAM_NAME, "The JetStream stream this pipeline owns (provisioned if missing). No whitespace, `.`, `*`, "
        "`>`, `/` or `\\`. No two pipelines may use the same stream, input or DLQ.", required=True)
    subject: str = key(
        Subject(wildcards=True), "What producers publish to, e.g. `events.*`. At least one `*` token (the `*` tokens "
        "form the partition key), no `>` token, no empty tokens, wildcards only as whole tokens. Must not overlap "
        "another pipeline's subject or any DLQ subject (JetStream streams cannot share subjects).", required=True)
    # Required: changing it later remaps keys to partitions, so it should be a decision.
    partitions: int = key(
        Int(1, 1024), "The stream maps `events.<key>` to `events.<p>.<key>`, `p = partition(partitions, key)`; each "
        "partition is a durable consumer owned by one worker. Changing it later remaps keys to partitions, so it is "
        "a deliberate choice, not a default. At least `workers` (a worker without a partition idles); beyond that, "
        "2, 4 and 8 partitions cost nats-server the same per message (at 256 keys, within the measurements' noise), "
        "while its cost grows with the number of distinct keys: each filtered consumer's lookup matches its keys "
        "and scans past the other partitions' messages (docs/benchmarks.md, \"Where nats-server's time goes\").",
        required=True)
    layout: str = key(
        Choice("single_stream", "stream_per_partition"), "Where the partitions are stored. `single_stream`: one "
        "stream whose subject transform maps `events.<key>` to `events.<p>.<key>`, one filtered consumer per "
        "partition. `stream_per_partition`: the NATS account maps the subject (a core `mappings` entry in the "
        "server config, or `nsc add mapping`; the embedded server gets it from jetsink), and each partition is a "
        "stream of its own, `<stream>_<p>`, with one consumer, which costs nats-server less CPU per message "
        "([benchmarks](benchmarks.md#stream-layouts)). "
        "Provisioning checks the mapping and refuses to start without it. Changing it on an existing pipeline: "
        "`python -m supervisor migrate-layout` ([Changing a pipeline's layout]"
        "(operations.md#changing-a-pipelines-layout)).", "single_stream")
    table: str | None = key(
        TABLE_NAME, "Target table. Without a database, `clickhouse.database` is used. Required unless `routes` is "
        "given (then each route names its table, and the pipeline has none).", None, default_doc="none")
    create_table: str | None = key(
        Text(), "DDL run when the table does not exist (the embedded demo uses it).", None)
    batch: BatchLimits = section(BatchLimits, "See [batch](#batch).")
    columns: tuple[ColumnOverride, ...] = key(
        MapOf(ColumnOverride, "path", "column name -> path or settings"),
        "Per-column overrides; see [columns](#columns). With `routes`, they apply to every route table that has "
        "the column (one that no route table has is an error at start-up).", ())
    routes: tuple[Route, ...] = key(
        ListOf(Route, "routes"), "An ordered list of conditions and targets: each message goes to the first route "
        "it matches. See [routes](#routes).", ())
    unrouted: str = key(
        Choice("dead_letter", "skip"), "With `routes`: what happens to a message no route matches: dead-lettered "
        "(reason `unrouted`) or skipped (acked and counted, never stored).", "dead_letter")
    dlq_stream: str = key(
        STREAM_NAME, "Dead letters go to this stream. Must differ from every pipeline's stream and other pipelines' "
        "DLQ streams.", name="dlq.stream", default_doc="`<stream>_DLQ`")
    dlq_subject: str = key(
        Subject(wildcards=False), "Dead letters are published here. Must not be matched by this or any pipeline's "
        "`subject`, or the sink would consume its own dead letters.", name="dlq.subject", default_doc="`dlq.<name>`")
    max_deliver: int = key(Int(1), "Deliveries of one message before it is dead-lettered.", 10)
    ack_wait_s: float | None = key(
        Seconds(), "How long JetStream waits for an ack before redelivering. Must be longer than `batch.max_wait_ms`. "
        "See [derived consumer settings](#derived-consumer-settings).", None, default_doc="derived")
    unknown_keys: str = key(
        Choice("ignore", "dead_letter"), "JSON keys that match no column: `ignore` them, or dead-letter the message "
        "(reason `unknown_key`, naming the key).", "ignore")
    objects_as_strings: bool = key(
        Bool(), "A JSON object or array sent for a `String` column (also inside Array, Map, Tuple, Nullable) is "
        "stored as its compact JSON text, as ClickHouse's own `input_format_json_read_objects_as_strings` does; "
        "`false` dead-letters it (`wrong_type`).", True)
    delivery: str = key(
        Choice("exactly_once", "at_least_once"), "What a crash may leave behind: nothing twice (a per-partition "
        "commit state in a KV bucket), or duplicates of what was inserted but not acked. See [delivery](#delivery).",
        "exactly_once")
    sharding_key: str | None = key(
        Pattern(r"\s*(rand\(\)|rand|cityHash64\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)|[A-Za-z_][A-Za-z0-9_]*)\s*",
                "cityHash64(column), an integer column or rand()", "`cityHash64(<column>)`, `<column>` or `rand()`"),
        "With `clickhouse.shards`: the sharding key of the cluster's Distributed table over `table`, as written "
        "there: `cityHash64(<column>)` (String, FixedString, integer, Date or DateTime column), a bare integer "
        "`<column>`, or `rand()` (jetsink's split is then deterministic per batch, so a resend is the same block). "
        "Required with more than one shard.", None)
    schema_refresh_s: float = key(
        Seconds(allow_zero=True), "How often each worker reads the table's columns again, so that an added or "
        "widened column is used without a restart (0 = never; SIGHUP and a failed insert still read it). See "
        "[Changing a table while jetsink runs](operations.md#changing-a-table-while-jetsink-runs).", 30.0)


@dataclass(frozen=True, slots=True)
class TableTarget:
    """A table a pipeline inserts into: its own, or a route's (Pipeline.targets)."""

    label: str | None  # the route's name; None for a pipeline without routes
    table: str
    columns: tuple[ColumnOverride, ...]  # the route's overrides (the pipeline's, without routes)
    shared: tuple[ColumnOverride, ...]  # the pipeline's, for a route table that has the column


def targets(p: Pipeline) -> tuple[TableTarget, ...]:
    """The tables `p` inserts into: its `table`, or each route's that is no skip, in route order."""
    if not p.routes:
        return (TableTarget(None, p.table, p.columns, ()),)
    return tuple(TableTarget(r.name, r.table, r.columns, p.columns) for r in p.routes if not r.skip)


@dataclass(frozen=True, slots=True)
class TracesConfig:
    sample_ratio: float = key(
        Ratio(), "Share of batch traces kept (parent-based ratio sampler: a worker's control spans follow the "
        "supervisor's decision). `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, when set, replace it.", 0.1)
    per_message_spans: bool = key(
        Bool(), "One `map` span per message instead of one per batch. Each message is then parsed and mapped on its "
        "own, which costs CPU; for debugging.", False)
    max_links: int = key(
        Int(0, 10_000), "At most this many producer span contexts (from the messages' `traceparent` headers, "
        "de-duplicated) are linked to a batch span.", 32)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    interval_s: float = key(Seconds(at_least=1.0), "How often metrics are exported.", 10.0)


@dataclass(frozen=True, slots=True)
class ProfilingConfig:
    cpu: bool = key(Bool(), "Periodic py-spy CPU profiles of each worker (only with `enabled: true`).", True)
    interval_s: float = key(
        Seconds(at_least=1.0), "A profile window starts this often per worker (the first one `min(interval_s, 30 s)` "
        "after the worker is ready).", 300.0)
    duration_s: float = key(Seconds(at_least=1.0), "Length of a window; at most `interval_s`.", 30.0)
    rate_hz: int = key(Int(1, 1000), "Samples per second.", 100)
    log_base64: bool = key(
        Bool(), "Also log every profile file, gzip+base64 encoded, as a JSON line; "
        "`python -m supervisor profiles extract LOGFILE -o DIR` writes them back out.", False)
    memory: bool = key(
        Bool(), "Run every worker under memray and leave `memray-worker<slot>-<pid>.bin`, `.html` and "
        "`.summary.json`. Independent of `enabled`. Slows the workers; for load tests and investigations.", False)
    dir: Path | None = key(FilePath(), "Where profiles are written.", None, default_doc="`<state_dir>/profiles`")


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    enabled: bool = key(
        Bool(), "The one switch: OTLP traces and metrics, `trace_id`/`span_id` in the JSON logs (and the logs over "
        "OTLP), periodic CPU profiles of every worker. The exporter is configured by the standard `OTEL_*` "
        "environment variables; see [observability](observability.md). Off means no OpenTelemetry SDK objects, no "
        "exporter threads and no profiler.", False)
    traces: TracesConfig = section(TracesConfig, "Batch traces.")
    metrics: MetricsConfig = section(MetricsConfig, "OTLP metrics.")
    profiling: ProfilingConfig = section(ProfilingConfig, "Per-worker CPU and memory profiles.")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The supervisor's local HTTP endpoint (/healthz, /metrics, /status)."""

    enabled: bool = key(Bool(), "Serve the endpoint.", True)
    listen: str = key(
        Listen(), "Where it listens. Port `0` picks a free port (tests). The endpoint has no authentication, so the "
        "host must be a loopback address (`127.0.0.0/8`, `::1`, `localhost`) unless `allow_remote` is set.",
        "127.0.0.1:9470")
    allow_remote: bool = key(
        Bool(), "Allow a non-loopback `listen` address (e.g. `0.0.0.0:9470` for a Prometheus server on another "
        "host); protect it by network policy.", False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    workers: int = key(
        Int(1, 256), "Worker processes. Work is CPU-bound: about one per core. Partitions of all pipelines are "
        "spread over them.", 1)
    shutdown_grace_s: float = key(
        Seconds(allow_zero=True), "On shutdown, how long a worker may take to finish and ack its in-flight batch "
        "before it is killed (its unacked messages are then redelivered).", 30.0)
    state_dir: Path = key(
        FilePath(), "Runtime state: embedded servers' data, profiles. Created by the supervisor.",
        yaml_default="./var", default_doc="`./var`")
    instance_id: str = key(
        INSTANCE_ID, "This supervisor's name among the instances that share the pipelines' partitions (one per "
        "host; two on one host need distinct `instance_id`, `state_dir` and `admin.listen`). It is the instance's "
        "key in the members KV bucket: a second supervisor with the id of a live one does not start, and `check "
        "--connect` rejects it. See [many hosts](operations.md#many-hosts).", factory=socket.gethostname,
        default_doc="the host name")
    instance_ttl_s: int = key(
        Int(1, 600, unit="seconds"), "How long the instance's membership outlives its last heartbeat (it beats "
        "every third of it): the other instances take a dead one's partitions about this long after it died.", 5)
    log_level: str = key(Choice("debug", "info", "warning", "error"), "Case-insensitive.", "info")
    nats: NatsConfig = section(NatsConfig, "See [nats](#nats).")
    clickhouse: ClickHouseConfig = section(ClickHouseConfig, "See [clickhouse](#clickhouse).")
    pipelines: tuple[Pipeline, ...] = key(ListOf(Pipeline, "pipelines"), "See [pipelines](#pipelines).",
                                          required=True, default_doc="**required**, at least one")
    observability: ObservabilityConfig = section(ObservabilityConfig, "See [observability](#observability).")
    admin: AdminConfig = section(AdminConfig, "See [admin](#admin).")
    source: Path | None = None  # the file it was read from; not a key


def profiles_dir(config: Config) -> Path:
    """Where CPU and memory profiles are written: profiling.dir, else <state_dir>/profiles."""
    return config.observability.profiling.dir or Path(config.state_dir) / "profiles"
