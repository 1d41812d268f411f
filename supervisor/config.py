"""Load and validate config.yaml into frozen, typed dataclasses.

The file is parsed once; everything downstream receives typed values and never looks at
raw YAML again. Each key is declared once, on its settings field in workers/settings.py
(check, bounds, default, doc); this module walks the file with those declarations, adds
what no single key can say (secrets, cross-field rules), and collects every problem
before raising a single ConfigError, so a broken file is fixed in one round instead of
one error per restart.

Secrets never appear in the file: the config names an environment variable or a file, the
value is read at load time and kept in a ``Secret`` whose repr shows only where it came from.

``python -m supervisor.config reference`` prints the key reference of docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from workers.setting_types import (
    ENV_NAME,
    IDENTIFIER,
    Check,
    FilePath,
    Invalid,
    ListOf,
    MapOf,
    Section,
    show,
    subjects_overlap,
)
from workers.settings import (
    AdminConfig,
    BatchLimits,
    ClickHouseConfig,
    ColumnOverride,
    Config,
    ConfigError,
    MetricsConfig,
    NatsConfig,
    ObservabilityConfig,
    Pipeline,
    ProfilingConfig,
    Secret,
    TLSConfig,
    TracesConfig,
    declared_key,
)

__all__ = [
    "AdminConfig",
    "BatchLimits",
    "ClickHouseConfig",
    "ColumnOverride",
    "Config",
    "ConfigError",
    "NatsConfig",
    "MetricsConfig",
    "ObservabilityConfig",
    "ProfilingConfig",
    "TracesConfig",
    "Pipeline",
    "Secret",
    "TLSConfig",
    "load_config",
    "parse_config",
    "redacted",
]


# --------------------------------------------------------------------------- entry points


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the YAML file at `path`; raise ConfigError on any problem."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from None
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(path, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return parse_config(data, path.parent, source=path)


def parse_config(data: Any, base_dir: Path, source: Path | None = None) -> Config:
    """Validate already-loaded YAML data; relative paths resolve against `base_dir`.

    Raises ConfigError listing every problem found, not just the first.
    """
    at = _At("", [], Path(os.path.abspath(Path(base_dir).expanduser())))
    if data is None:
        at.problems.append("config: the file is empty; expected a mapping of settings")
        raise ConfigError(at.problems)
    config = _section(Config, data, at)
    if at.problems:
        raise ConfigError(at.problems)
    return dataclasses.replace(config, source=source)


def redacted(config: Config) -> dict:
    """The whole config as plain, JSON-friendly data; secrets appear as "<env:NAME>"/"<file:PATH>"."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return f"<{value.source}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, ClickHouseConfig):  # stored as pairs so that it pickles; shown as the mapping it is
            del plain["settings_items"]
            plain["settings"] = dict(value.settings)
        return plain
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- YAML loading


class _StrictSafeLoader(yaml.SafeLoader):
    """safe_load semantics, but a repeated key is an error instead of silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key_node.value!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = exc.problem or exc.context or "syntax error"
    return f"{where}: invalid YAML: {what}"


# --------------------------------------------------------------------------- the walker


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_REQUIRED = _Marker("REQUIRED")
_INVALID = _Marker("INVALID")  # stands in for a value that already produced a problem


@dataclass(frozen=True, slots=True)
class _At:
    """A position in the document: its key path, the shared problem list and the base dir."""

    path: str
    problems: list[str]
    base_dir: Path

    def __truediv__(self, key: Any) -> _At:
        return _At(f"{self.path}.{key}" if self.path else str(key), self.problems, self.base_dir)

    def item(self, index: int) -> _At:
        return _At(f"{self.path}[{index}]", self.problems, self.base_dir)

    def fail(self, message: str, where: str = "") -> None:
        path = f"{self.path}{where}" if self.path else where.lstrip(".")
        self.problems.append(f"{path or 'config'}: {message}")


@dataclass(frozen=True, slots=True)
class _Raw:
    """A default written as in the file (a path relative to the config's folder): checked like a value."""

    value: Any


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One YAML key of a section: the field it fills, its check, and what an absent or null key becomes."""

    field: str
    check: Check
    absent: Any  # _REQUIRED, a _Raw, or the typed default


@dataclass(frozen=True, slots=True)
class _Refused(Check):
    message: str

    def __call__(self, value: Any, base_dir: Path) -> Any:
        raise Invalid(self.message)  # never echo `value`: it may be a secret


def _spec(cls: type) -> dict[str, Any]:
    """YAML key -> _Leaf (or a nested dict for dotted names such as "dlq.stream"), in field order."""
    spec: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = declared_key(f)
        if key is None:
            continue
        if key.secret:
            spec[f"{f.name}_env"] = _Leaf(f"{f.name}_env", ENV_NAME, None)
            spec[f"{f.name}_file"] = _Leaf(f"{f.name}_file", FilePath(), None)
            spec[f.name] = _Leaf(f.name, _Refused(
                f"secrets are never written in the config; use {f.name}_env or {f.name}_file"), None)
            continue
        if key.required:
            absent: Any = _REQUIRED
        elif key.yaml_default is not None:
            absent = _Raw(key.yaml_default)
        elif f.default is not dataclasses.MISSING:
            absent = f.default
        elif f.default_factory is not dataclasses.MISSING:
            absent = f.default_factory()
        else:
            absent = None  # derived from other keys after the walk
        *groups, last = (key.name or f.name).split(".")
        node = spec
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = _Leaf(f.name, key.check, absent)
    return spec


def _walk(value: Any, at: _At, spec: Mapping[str, Any], out: dict[str, Any]) -> bool:
    """Check `value` is a mapping with only `spec`'s keys and parse each into `out`; absent keys get defaults."""
    if value is None:
        value = {}  # "nats:" with nothing under it means "all defaults"
    if not isinstance(value, dict):
        at.fail(f"expected a mapping, got {show(value)}")
        out.update((leaf.field, _INVALID) for leaf in _leaves(spec))
        return False
    for key in value:
        if key not in spec:
            (at / key).fail(_unknown_key(key, spec))
    for key, entry in spec.items():
        raw = value.get(key)
        if isinstance(entry, dict):
            _walk(raw, at / key, entry, out)
        elif raw is not None:
            out[entry.field] = _check(entry.check, raw, at / key)
        elif entry.absent is _REQUIRED:
            (at / key).fail("required")
            out[entry.field] = _INVALID
        elif isinstance(entry.absent, _Raw):
            out[entry.field] = _check(entry.check, entry.absent.value, at / key)
        else:
            out[entry.field] = entry.absent
    return True


def _leaves(spec: Mapping[str, Any]) -> list[_Leaf]:
    return [leaf for entry in spec.values() for leaf in (_leaves(entry) if isinstance(entry, dict) else [entry])]


def _check(check: Check, raw: Any, at: _At) -> Any:
    if isinstance(check, Section):
        return _section(check.cls, raw, at)
    if isinstance(check, ListOf):
        return _list(check, raw, at)
    if isinstance(check, MapOf):
        return _mapping(check, raw, at)
    try:
        return check(raw, at.base_dir)
    except Invalid as exc:
        for where, message in exc.problems:
            at.fail(message, where)
        return _INVALID


def _unknown_key(key: Any, spec: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(spec), n=1) if isinstance(key, str) else []
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of: {', '.join(spec)}"


def _ok(*values: Any) -> bool:
    """True when none of `values` already failed, so a cross-field check can run."""
    return all(v is not _INVALID for v in values)


def _section(cls: type, value: Any, at: _At, given: Mapping[str, Any] | None = None) -> Any:
    """Walk one mapping into `cls`: its declared keys, then its secrets, then its cross-field rules.

    `given` fills fields that are no key of the mapping (a column's name).
    """
    values: dict[str, Any] = dict(given or {})
    if not _walk(value, at, _spec(cls), values):
        return _INVALID
    for f in dataclasses.fields(cls):
        key = declared_key(f)
        if key is not None and key.secret:
            values[f.name] = _secret(values, at, f.name)
    rules = _RULES.get(cls)
    if rules is not None and rules(values, at, value) is _INVALID:
        return _INVALID
    return cls(**values)


def _list(check: ListOf, value: Any, at: _At) -> tuple[Any, ...] | _Marker:
    if not isinstance(value, list):
        at.fail(f"expected a list of {check.what}, got {show(value)}")
        return _INVALID
    if not value:
        at.fail(f"at least one {check.what.removesuffix('s')} is required")
        return _INVALID
    items = [_section(check.cls, item, at.item(i)) for i, item in enumerate(value)]
    if check.cls is Pipeline:
        _check_pipelines_together(items, at)
    return tuple(items)


def _mapping(check: MapOf, value: Any, at: _At) -> tuple[Any, ...] | _Marker:
    """`name: settings` entries; the name fills the class's first field, a plain value its `shorthand` key."""
    if not isinstance(value, dict):
        at.fail(f"expected a mapping of {check.what}, got {show(value)}")
        return _INVALID
    name_field = dataclasses.fields(check.cls)[0].name
    shorthand = next(f for f in dataclasses.fields(check.cls) if f.name == check.shorthand)
    out = []
    for name, item in value.items():
        where = at / name
        _check(IDENTIFIER, name, where)
        if isinstance(item, str):  # shorthand, e.g. `user_id: user.id`
            value = _check(declared_key(shorthand).check, item, where)
            out.append(check.cls(**{name_field: name, check.shorthand: value}))
        else:
            out.append(_section(check.cls, item, where, given={name_field: name}))
    return tuple(out)


# --------------------------------------------------------------------------- secrets


def _secret(values: dict[str, Any], at: _At, name: str) -> Secret | None | _Marker:
    env, path = values.pop(f"{name}_env"), values.pop(f"{name}_file")
    values.pop(name)
    if not _ok(env, path):
        return _INVALID
    if env is not None and path is not None:
        (at / f"{name}_env").fail(f"set either {name}_env or {name}_file, not both")
        return _INVALID
    if env is not None:
        secret = os.environ.get(env)
        if secret is None:
            (at / f"{name}_env").fail(f"environment variable {env} is not set")
            return _INVALID
        return Secret(f"env:{env}", secret)
    if path is not None:
        try:
            secret = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # ValueError: undecodable or NUL in path
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            (at / f"{name}_file").fail(f"cannot read {path}: {reason}")
            return _INVALID
        return Secret(f"file:{path}", secret.rstrip("\r\n"))
    return None


# --------------------------------------------------------------------------- cross-field rules
# What no single key can say. Each runs after its section's keys were walked, on the values
# that passed (see _ok), and reports at the key a user would change.

_LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _tls_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    if _ok(v["cert_file"], v["key_file"]) and (v["cert_file"] is None) != (v["key_file"] is None):
        at.fail("cert_file and key_file must be given together")


def _nats_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    servers = v["servers"]
    if v["password"] is not None and v["user"] is None:
        (at / "user").fail("required when password_env or password_file is set")
    if v["embedded"] is True and _ok(servers):
        # We start nats-server ourselves: one plain listener on this host.
        if len(servers) != 1:
            (at / "url").fail("embedded: true needs exactly one url (the local server to start)")
        elif urlsplit(servers[0]).scheme != "nats" or urlsplit(servers[0]).hostname not in _LOCAL_HOSTS:
            (at / "url").fail(f"embedded: true needs a nats://127.0.0.1 or nats://localhost url, got {servers[0]!r}")


def _clickhouse_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    if v["embedded"] is True and _ok(v["host"]) and v["host"] not in _LOCAL_HOSTS:
        (at / "host").fail(f"embedded: true needs host 127.0.0.1 or localhost, got {v['host']!r}")
    if v["tls"] is not None and v["secure"] is False:
        (at / "tls").fail("only used with secure: true")


def _column_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    v["has_default"] = isinstance(raw, dict) and "default" in raw  # `default: null` is a default too
    if v["has_default"] and v["required"] is True:
        at.fail("required: true and a default contradict each other; keep one")


def _pipeline_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    name, stream = v["name"], v["stream"]
    if v["dlq_stream"] is None:
        v["dlq_stream"] = f"{stream}_DLQ" if _ok(stream) else _INVALID
    if v["dlq_subject"] is None:
        v["dlq_subject"] = f"dlq.{name}" if _ok(name) else _INVALID
    if _ok(v["subject"], v["dlq_subject"]) and subjects_overlap(v["subject"], v["dlq_subject"]):
        (at / "dlq.subject").fail(
            f"{v['dlq_subject']!r} is matched by this pipeline's subject {v['subject']!r}; "
            "the sink would consume its own dead letters")
    batch, ack_wait = v["batch"], v["ack_wait_s"]
    if _ok(batch, ack_wait) and ack_wait is not None and _ok(batch.max_wait_ms) \
            and ack_wait * 1000 <= batch.max_wait_ms:
        (at / "ack_wait_s").fail(
            f"must be longer than batch.max_wait_ms ({batch.max_wait_ms} ms), "
            "or messages are redelivered while still being batched")


def _check_pipelines_together(pipelines: list[Any], at: _At) -> None:
    """Names are unique, every stream has one owner, and no two streams share subjects."""
    names: dict[str, int] = {}
    owners: dict[str, str] = {}  # stream name -> "pipelines[i].stream" or "pipelines[i].dlq.stream"
    claims: list[tuple[str, _At, str, int]] = []  # (subject pattern, where, label, pipeline index)
    for i, p in enumerate(pipelines):
        if p is _INVALID:
            continue
        here = at.item(i)
        if _ok(p.name) and p.name in names:
            (here / "name").fail(f"{p.name!r} is already used by pipelines[{names[p.name]}]")
            continue  # its default DLQ names would only repeat the clash
        if _ok(p.name):
            names[p.name] = i
        for key, stream, subject in (("stream", p.stream, p.subject), ("dlq.stream", p.dlq_stream, p.dlq_subject)):
            if not _ok(stream):
                continue
            owner = owners.setdefault(stream, f"pipelines[{i}].{key}")
            if owner == f"pipelines[{i}].stream" and key == "dlq.stream":
                (here / key).fail(f"must differ from the pipeline's stream {stream!r}")
                break
            if owner != f"pipelines[{i}].{key}":
                # The provisioner creates each stream from one pipeline's settings.
                (here / key).fail(f"stream {stream!r} is already used by {owner}; each pipeline owns its streams")
                break  # checking its subjects would only add noise
            if _ok(subject):
                subject_key = key.replace("stream", "subject")
                claims.append((subject, here / subject_key, f"pipelines[{i}].{subject_key}", i))
    for n, (subject, where, _, owner) in enumerate(claims):
        for other_subject, _, other_label, other_owner in claims[:n]:
            # A pipeline matching its own DLQ subject is reported by _pipeline, more specifically.
            if owner != other_owner and subjects_overlap(subject, other_subject):
                where.fail(f"{subject!r} overlaps {other_label} {other_subject!r}; JetStream streams cannot "
                           "share subjects, and a sink must never consume dead letters")




def _profiling_rules(v: dict[str, Any], at: _At, raw: Any) -> None:
    if _ok(v["interval_s"], v["duration_s"]) and v["duration_s"] > v["interval_s"]:
        (at / "duration_s").fail(f"must not be longer than interval_s ({v['interval_s']:g} s); windows would overlap")


def _admin_rules(v: dict[str, Any], at: _At, raw: Any) -> _Marker | None:
    if _ok(v["listen"], v["allow_remote"]) and v["allow_remote"] is not True and not _is_loopback(v["listen"]):
        # /status and /metrics show the pipeline's topology and the workers' pids.
        (at / "listen").fail(f"{v['listen']!r} is not a loopback address; the admin endpoint has no "
                             "authentication, so set admin.allow_remote: true to expose it deliberately")
        return _INVALID
    return None if _ok(*v.values()) else _INVALID


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything



_RULES: Mapping[type, Callable[[dict[str, Any], _At, Any], _Marker | None]] = {
    TLSConfig: _tls_rules,
    NatsConfig: _nats_rules,
    ClickHouseConfig: _clickhouse_rules,
    ColumnOverride: _column_rules,
    Pipeline: _pipeline_rules,
    ProfilingConfig: _profiling_rules,
    AdminConfig: _admin_rules,
}


if __name__ == "__main__":
    from supervisor.config_reference import main

    raise SystemExit(main(sys.argv[1:]))
