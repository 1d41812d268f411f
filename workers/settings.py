"""jetsink's configuration as frozen, typed dataclasses: the leaf both sides share.

supervisor/config.py reads and validates config.yaml into these; the supervisor hands the
resulting ``Config`` object itself to each worker process (it pickles), and nothing
downstream ever sees raw YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

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


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class NatsConfig:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    embedded: bool = False
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls: TLSConfig | None = None
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ClickHouseConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    database: str = "default"
    user: str = "default"
    password: Secret | None = None
    secure: bool = False
    tls: TLSConfig | None = None
    embedded: bool = False
    connect_timeout_s: float = 5.0
    send_receive_timeout_s: float = 60.0
    settings: Mapping[str, str | int | float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Copy, so a caller mutating its dict cannot change a "frozen" config.
        if isinstance(self.settings, Mapping):
            object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # MappingProxyType cannot be pickled, and configs cross the spawn boundary to workers.
        values = tuple(getattr(self, f.name) for f in dataclasses.fields(self))
        return (ClickHouseConfig, values[:-1] + (dict(self.settings),))


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_rows: int = 10_000
    max_bytes: int = 8 * 1024 * 1024
    max_wait_ms: int = 1000


@dataclass(frozen=True, slots=True)
class ColumnOverride:
    column: str
    path: tuple[str, ...] | None = None  # None = the same-named top-level key
    required: bool = False
    has_default: bool = False
    default: Any = None  # JSON-ish value (str/int/float/bool/None/list/dict)
    epoch_unit: str = "s"
    timezone: str | None = None  # IANA name; None = the column's own, else the server's


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    stream: str
    subject: str
    partitions: int
    table: str
    create_table: str | None
    batch: BatchLimits
    columns: tuple[ColumnOverride, ...]
    dlq_stream: str
    dlq_subject: str
    max_deliver: int = 10
    ack_wait_s: float | None = None  # None = derived from the batch limits by the provisioner
    unknown_keys: str = "ignore"  # "ignore" | "dead_letter": JSON keys that match no column
    delivery: str = "exactly_once"  # "exactly_once" | "at_least_once"
    schema_refresh_s: float = 30.0  # how often each worker reads the table's columns again; 0 = never


@dataclass(frozen=True, slots=True)
class TracesConfig:
    sample_ratio: float = 0.1  # parent-based; OTEL_TRACES_SAMPLER[_ARG] win when set
    per_message_spans: bool = False
    max_links: int = 32  # producer span contexts linked per batch span


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ProfilingConfig:
    cpu: bool = True  # only with observability.enabled
    interval_s: float = 300.0  # a CPU profile window starts this often per worker
    duration_s: float = 30.0
    rate_hz: int = 100
    log_base64: bool = False
    memory: bool = False  # memray; independent of observability.enabled
    dir: Path | None = None  # None = <state_dir>/profiles


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    enabled: bool = False
    traces: TracesConfig = field(default_factory=TracesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The supervisor's local HTTP endpoint (/healthz, /metrics, /status)."""

    enabled: bool = True
    listen: str = "127.0.0.1:9470"  # host:port, [v6]:port; port 0 = any free port
    allow_remote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    workers: int
    shutdown_grace_s: float = 30.0
    state_dir: Path
    log_level: str = "info"
    nats: NatsConfig = field(default_factory=NatsConfig)
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)
    pipelines: tuple[Pipeline, ...]
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    source: Path | None = None


def profiles_dir(config: Config) -> Path:
    """Where CPU and memory profiles are written: profiling.dir, else <state_dir>/profiles."""
    return config.observability.profiling.dir or Path(config.state_dir) / "profiles"
