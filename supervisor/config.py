"""Load and validate config.yaml into frozen, typed dataclasses.

The file is parsed once; everything downstream receives typed values and never looks at
raw YAML again. Validation walks small per-section field tables (``_Field`` specs) and
collects every problem before raising a single ConfigError, so a broken file is fixed in
one round instead of one error per restart.

Secrets never appear in the file: the config names an environment variable or a file, the
value is read at load time and kept in a ``Secret`` whose repr shows only where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

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
    config = _config(data, at, source)
    if at.problems:
        raise ConfigError(at.problems)
    return config


def redacted(config: Config) -> dict:
    """The whole config as plain, JSON-friendly data; secrets appear as "<env:NAME>"/"<file:PATH>"."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return f"<{value.source}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
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


class _Bad(Exception):
    """A value failed a check; the walker prefixes the key path."""


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

    def fail(self, message: str) -> None:
        self.problems.append(f"{self.path or 'config'}: {message}")


_Parser = Callable[[Any, _At], Any]


@dataclass(frozen=True, slots=True)
class _Field:
    parse: _Parser
    # A raw YAML value fed through `parse` when the key is absent or null, _REQUIRED,
    # or None for "stays None".
    default: Any = None


def _walk(value: Any, at: _At, spec: Mapping[str, _Field]) -> dict[str, Any] | _Marker:
    """Check `value` is a mapping with only `spec`'s keys and parse each; absent keys get defaults."""
    if value is None:
        value = {}  # "nats:" with nothing under it means "all defaults"
    if not isinstance(value, dict):
        at.fail(f"expected a mapping, got {_show(value)}")
        return _INVALID
    for key in value:
        if key not in spec:
            (at / key).fail(_unknown_key(key, spec))
    out: dict[str, Any] = {}
    for key, fld in spec.items():
        raw = value.get(key)
        if raw is None:
            if fld.default is _REQUIRED:
                (at / key).fail("required")
                out[key] = _INVALID
                continue
            if fld.default is None:
                out[key] = None
                continue
            raw = fld.default
        out[key] = _parse(fld.parse, raw, at / key)
    return out


def _parse(parse: _Parser, raw: Any, at: _At) -> Any:
    try:
        return parse(raw, at)
    except _Bad as exc:
        at.fail(str(exc))
        return _INVALID


def _unknown_key(key: Any, spec: Mapping[str, _Field]) -> str:
    close = difflib.get_close_matches(key, list(spec), n=1) if isinstance(key, str) else []
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of: {', '.join(spec)}"


def _ok(*values: Any) -> bool:
    """True when none of `values` already failed, so a cross-field check can run."""
    return all(v is not _INVALID for v in values)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- scalar parsers


def _bool(value: Any, at: _At) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


def _int(lo: int = 1, hi: int | None = None) -> _Parser:
    want = f"an integer from {lo} to {hi}" if hi is not None else (
        "a positive integer" if lo == 1 else f"an integer >= {lo}")

    def parse(value: Any, at: _At) -> int:
        # bool is an int subclass; "workers: true" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            raise _Bad(f"expected {want}, got {_show(value)}")
        return value

    return parse


def _seconds(allow_zero: bool = False) -> _Parser:
    want = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"

    def parse(value: Any, at: _At) -> float:
        try:
            seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        except OverflowError:  # an int too large for a float
            seconds = None
        if seconds is None or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
            raise _Bad(f"expected {want}, got {_show(value)}")
        return seconds

    return parse


def _text(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_show(value)}")
    return value


def _matching(regex: str, want: str) -> _Parser:
    pattern = re.compile(regex, re.ASCII)

    def parse(value: Any, at: _At) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _Bad(f"expected {want}, got {_show(value)}")
        return value

    return parse


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# Table and column names are spliced into SQL, so only plain identifiers get through.
_identifier = _matching(_IDENT, "an identifier (letters, digits, underscore; not starting with a digit)")
_table_name = _matching(rf"{_IDENT}(\.{_IDENT})?", "'table' or 'database.table' made of identifiers")
_pipeline_name = _matching(r"[A-Za-z0-9_-]+", "a name of letters, digits, '_' and '-'")
_env_name = _matching(_IDENT, "an environment variable name")
# JetStream forbids these in stream names (they become subjects and file names).
_stream_name = _matching(r"[^\s.*>/\\\x00-\x1f\x7f]+", "a stream name without spaces, '.', '*', '>' or slashes")
_hostname = _matching(r"\S+", "a host name or address")


def _choice(*options: str) -> _Parser:
    def parse(value: Any, at: _At) -> str:
        if isinstance(value, str) and value.lower() in options:
            return value.lower()
        raise _Bad(f"expected one of {', '.join(options)}, got {_show(value)}")

    return parse


_SIZE_UNITS = {
    "": 1, "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", re.ASCII)


def _size(value: Any, at: _At) -> int:
    want = "a positive byte count or a size like '8MiB', '512KiB', '64kB'"
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return value
        raise _Bad(f"expected {want}, got {_show(value)}")
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match or match[2] not in _SIZE_UNITS:
        raise _Bad(f"expected {want}, got {_show(value)}")
    try:
        size = Decimal(match[1]) * _SIZE_UNITS[match[2]]
    except InvalidOperation:  # pragma: no cover - the regex only admits decimals
        raise _Bad(f"expected {want}, got {_show(value)}") from None
    if size <= 0 or size != size.to_integral_value():
        raise _Bad(f"expected a whole, positive number of bytes, got {_show(value)}")
    return int(size)


def _file(value: Any, at: _At) -> Path:
    """A path relative to the config's folder that must name an existing file."""
    path = _path(value, at)
    if not path.is_file():
        raise _Bad(f"file not found: {path}")
    return path


def _path(value: Any, at: _At) -> Path:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a path, got {_show(value)}")
    return Path(os.path.abspath(at.base_dir / Path(value).expanduser()))


def _reject(message: str) -> _Parser:
    def parse(value: Any, at: _At) -> Any:
        raise _Bad(message)  # never echo `value`: it may be a secret

    return parse


def _json_value(value: Any, at: _At, depth: int = 0) -> Any:
    """Column defaults are converted like JSON input, so only JSON types are allowed."""
    if depth > 32:  # also stops self-referencing YAML anchors
        raise _Bad("default is nested too deeply")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"expected a JSON value, got {_show(value)}")
        return value
    if isinstance(value, list):
        return [_json_value(v, at, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _Bad("expected a JSON value; mapping keys must be strings")
        return {k: _json_value(v, at, depth + 1) for k, v in value.items()}
    # YAML turns 2024-01-01 into a date object; JSON input would carry a string.
    raise _Bad(f"expected a JSON value (quote dates and times), got {_show(value)}")


# --------------------------------------------------------------------------- subjects


def _subject_tokens(value: Any) -> list[str]:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a NATS subject, got {_show(value)}")
    tokens = value.split(".")
    if any(not t for t in tokens):
        raise _Bad(f"empty token in subject {value!r}")
    if any(re.search(r"[\s\x00-\x1f\x7f]", t) for t in tokens):
        raise _Bad(f"whitespace in subject {value!r}")
    if ">" in tokens:
        raise _Bad(f"'>' is not allowed in {value!r}; use '*' tokens (each one is part of the partition key)")
    if any(t != "*" and ("*" in t or ">" in t) for t in tokens):
        raise _Bad(f"wildcards must be whole tokens in {value!r}")
    return tokens


def _input_subject(value: Any, at: _At) -> str:
    if "*" not in _subject_tokens(value):
        raise _Bad(f"subject {value!r} needs at least one '*' token to partition on")
    return value


def _concrete_subject(value: Any, at: _At) -> str:
    if "*" in _subject_tokens(value):
        raise _Bad(f"expected a subject without wildcards, got {value!r}")
    return value


def _subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns ('*' wildcards only; '>' is rejected earlier)."""
    ta, tb = a.split("."), b.split(".")
    return len(ta) == len(tb) and all(x == y or "*" in (x, y) for x, y in zip(ta, tb))


def _nats_urls(value: Any, at: _At) -> tuple[str, ...]:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls:
        raise _Bad(f"expected a URL or a non-empty list of URLs, got {_show(value)}")
    valid = True
    for index, url in enumerate(urls):
        problem = _nats_url_problem(url)
        if problem:
            (at.item(index) if isinstance(value, list) else at).fail(problem)
            valid = False
    return tuple(urls) if valid else _INVALID


def _nats_url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return f"expected a URL string, got {_show(url)}"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return f"invalid URL {url!r}"
    if parts.scheme not in ("nats", "tls", "ws", "wss") or "://" not in url:
        return f"expected a nats://, tls://, ws:// or wss:// URL, got {url!r}"
    if parts.username or parts.password:
        return "credentials in the URL are not allowed; use user with password_env/password_file, or token_env"
    try:
        parts.port
    except ValueError:
        return f"invalid port in {url!r}"
    if not parts.hostname:
        return f"no host in {url!r}"
    return None


_LOCAL_HOSTS = ("127.0.0.1", "localhost")


# --------------------------------------------------------------------------- sections


def _secret_fields(name: str) -> dict[str, _Field]:
    """`<name>_env` / `<name>_file` keys, and a literal `<name>:` that is always refused."""
    return {
        f"{name}_env": _Field(_env_name),
        f"{name}_file": _Field(_path),
        name: _Field(_reject(f"secrets are never written in the config; use {name}_env or {name}_file")),
    }


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


def _tls(value: Any, at: _At) -> TLSConfig | _Marker:
    v = _walk(value, at, {"ca_file": _Field(_file), "cert_file": _Field(_file), "key_file": _Field(_file)})
    if v is _INVALID:
        return _INVALID
    if _ok(v["cert_file"], v["key_file"]) and (v["cert_file"] is None) != (v["key_file"] is None):
        at.fail("cert_file and key_file must be given together")
    return TLSConfig(**v)


_NATS = {
    "url": _Field(_nats_urls, "nats://127.0.0.1:4222"),
    "embedded": _Field(_bool, False),
    "user": _Field(_text),
    **_secret_fields("password"),
    **_secret_fields("token"),
    "creds_file": _Field(_file),
    "nkey_seed_file": _Field(_file),
    "tls": _Field(_tls),
    "connect_timeout_s": _Field(_seconds(), 5.0),
}


def _nats(value: Any, at: _At) -> NatsConfig | _Marker:
    v = _walk(value, at, _NATS)
    if v is _INVALID:
        return _INVALID
    v["password"] = _secret(v, at, "password")
    v["token"] = _secret(v, at, "token")
    servers = v.pop("url")
    if v["password"] is not None and v["user"] is None:
        (at / "user").fail("required when password_env or password_file is set")
    if v["embedded"] is True and _ok(servers):
        # We start nats-server ourselves: one plain listener on this host.
        if len(servers) != 1:
            (at / "url").fail("embedded: true needs exactly one url (the local server to start)")
        elif urlsplit(servers[0]).scheme != "nats" or urlsplit(servers[0]).hostname not in _LOCAL_HOSTS:
            (at / "url").fail(f"embedded: true needs a nats://127.0.0.1 or nats://localhost url, got {servers[0]!r}")
    return NatsConfig(servers=servers, **v)


def _settings(value: Any, at: _At) -> Mapping[str, str | int | float] | _Marker:
    if not isinstance(value, dict):
        raise _Bad(f"expected a mapping of ClickHouse settings, got {_show(value)}")
    out: dict[str, str | int | float] = {}
    for key, setting in value.items():
        name = _parse(_identifier, key, at / key)
        if isinstance(setting, bool):
            setting = int(setting)  # ClickHouse boolean settings are 0/1
        if not isinstance(setting, (str, int, float)):
            (at / key).fail(f"expected a string or number, got {_show(setting)}")
        elif _ok(name):
            out[name] = setting
    return MappingProxyType(out)


_CLICKHOUSE = {
    "host": _Field(_hostname, "127.0.0.1"),
    "port": _Field(_int(1, 65535), 9000),
    "database": _Field(_identifier, "default"),
    "user": _Field(_text, "default"),
    **_secret_fields("password"),
    "secure": _Field(_bool, False),
    "tls": _Field(_tls),
    "embedded": _Field(_bool, False),
    "connect_timeout_s": _Field(_seconds(), 5.0),
    "send_receive_timeout_s": _Field(_seconds(), 60.0),
    "settings": _Field(_settings, {}),
}


def _clickhouse(value: Any, at: _At) -> ClickHouseConfig | _Marker:
    v = _walk(value, at, _CLICKHOUSE)
    if v is _INVALID:
        return _INVALID
    v["password"] = _secret(v, at, "password")
    if v["embedded"] is True and _ok(v["host"]) and v["host"] not in _LOCAL_HOSTS:
        (at / "host").fail(f"embedded: true needs host 127.0.0.1 or localhost, got {v['host']!r}")
    if v["tls"] is not None and v["secure"] is False:
        (at / "tls").fail("only used with secure: true")
    return ClickHouseConfig(**v)


_BATCH = {
    "max_rows": _Field(_int(1), 10_000),
    "max_bytes": _Field(_size, 8 * 1024 * 1024),
    "max_wait_ms": _Field(_int(1), 1000),
}


def _batch(value: Any, at: _At) -> BatchLimits | _Marker:
    v = _walk(value, at, _BATCH)
    return _INVALID if v is _INVALID else BatchLimits(**v)


def _timezone(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected an IANA time zone name like 'Europe/Berlin', got {_show(value)}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Bad(f"unknown time zone {value!r}; expected an IANA name like 'Europe/Berlin' or 'UTC'") from None
    return value


def _dotted_path(value: Any, at: _At) -> tuple[str, ...]:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a dotted path like 'user.id', got {_show(value)}")
    parts = tuple(value.split("."))
    if not all(parts):
        raise _Bad(f"empty segment in path {value!r}")
    return parts


_COLUMN = {
    "path": _Field(_dotted_path),
    "required": _Field(_bool, False),
    "default": _Field(_json_value),
    "epoch_unit": _Field(_choice("s", "ms"), "s"),
    "timezone": _Field(_timezone),
}


def _column(name: str, value: Any, at: _At) -> ColumnOverride | _Marker:
    if isinstance(value, str):  # shorthand: `user_id: user.id`
        path = _parse(_dotted_path, value, at)
        return ColumnOverride(name, path=path)
    v = _walk(value, at, _COLUMN)
    if v is _INVALID:
        return _INVALID
    has_default = isinstance(value, dict) and "default" in value  # `default: null` is a default too
    if has_default and v["required"] is True:
        at.fail("required: true and a default contradict each other; keep one")
    return ColumnOverride(name, v["path"], v["required"], has_default, v["default"], v["epoch_unit"], v["timezone"])


def _columns(value: Any, at: _At) -> tuple[ColumnOverride, ...] | _Marker:
    if not isinstance(value, dict):
        raise _Bad(f"expected a mapping of column name -> path or settings, got {_show(value)}")
    out = []
    for name, spec in value.items():
        where = at / name
        _parse(_identifier, name, where)
        out.append(_column(name, spec, where))
    return tuple(out)


def _dlq(value: Any, at: _At) -> dict[str, Any] | _Marker:
    return _walk(value, at, {"stream": _Field(_stream_name), "subject": _Field(_concrete_subject)})


_PIPELINE = {
    "name": _Field(_pipeline_name, _REQUIRED),
    "stream": _Field(_stream_name, _REQUIRED),
    "subject": _Field(_input_subject, _REQUIRED),
    # Required: changing it later remaps keys to partitions, so it should be a decision.
    "partitions": _Field(_int(1, 1024), _REQUIRED),
    "table": _Field(_table_name, _REQUIRED),
    "create_table": _Field(_text),
    "batch": _Field(_batch, {}),
    "columns": _Field(_columns, {}),
    "dlq": _Field(_dlq, {}),
    "max_deliver": _Field(_int(1), 10),
    "ack_wait_s": _Field(_seconds()),
    "unknown_keys": _Field(_choice("ignore", "dead_letter"), "ignore"),
    "delivery": _Field(_choice("exactly_once", "at_least_once"), "exactly_once"),
    "schema_refresh_s": _Field(_seconds(allow_zero=True), 30.0),
}


def _pipeline(value: Any, at: _At) -> Pipeline | _Marker:
    v = _walk(value, at, _PIPELINE)
    if v is _INVALID:
        return _INVALID
    dlq = v.pop("dlq")
    dlq = dlq if dlq is not _INVALID else {"stream": _INVALID, "subject": _INVALID}
    name, stream = v["name"], v["stream"]
    v["dlq_stream"] = dlq["stream"] or (f"{stream}_DLQ" if _ok(stream) else _INVALID)
    v["dlq_subject"] = dlq["subject"] or (f"dlq.{name}" if _ok(name) else _INVALID)
    if _ok(v["subject"], v["dlq_subject"]) and _subjects_overlap(v["subject"], v["dlq_subject"]):
        (at / "dlq.subject").fail(
            f"{v['dlq_subject']!r} is matched by this pipeline's subject {v['subject']!r}; "
            "the sink would consume its own dead letters")
    batch, ack_wait = v["batch"], v["ack_wait_s"]
    if _ok(batch, ack_wait) and ack_wait is not None and _ok(batch.max_wait_ms) \
            and ack_wait * 1000 <= batch.max_wait_ms:
        (at / "ack_wait_s").fail(
            f"must be longer than batch.max_wait_ms ({batch.max_wait_ms} ms), "
            "or messages are redelivered while still being batched")
    return Pipeline(**v)


def _pipelines(value: Any, at: _At) -> tuple[Pipeline, ...] | _Marker:
    if not isinstance(value, list):
        raise _Bad(f"expected a list of pipelines, got {_show(value)}")
    if not value:
        raise _Bad("at least one pipeline is required")
    pipelines = [_pipeline(item, at.item(i)) for i, item in enumerate(value)]
    _check_pipelines_together(pipelines, at)
    return tuple(pipelines)


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
            if owner != other_owner and _subjects_overlap(subject, other_subject):
                where.fail(f"{subject!r} overlaps {other_label} {other_subject!r}; JetStream streams cannot "
                           "share subjects, and a sink must never consume dead letters")


def _ratio(value: Any, at: _At) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise _Bad(f"expected a number from 0 to 1, got {_show(value)}")
    return float(value)


def _at_least_one_second(value: Any, at: _At) -> float:
    seconds = _seconds()(value, at)
    if seconds < 1.0:
        raise _Bad(f"expected at least 1 second, got {_show(value)}")
    return seconds


_TRACES = {
    "sample_ratio": _Field(_ratio, 0.1),
    "per_message_spans": _Field(_bool, False),
    "max_links": _Field(_int(0, 10_000), 32),
}

_METRICS = {
    "interval_s": _Field(_at_least_one_second, 10.0),
}

_PROFILING = {
    "cpu": _Field(_bool, True),
    "interval_s": _Field(_at_least_one_second, 300.0),
    "duration_s": _Field(_at_least_one_second, 30.0),
    "rate_hz": _Field(_int(1, 1000), 100),
    "log_base64": _Field(_bool, False),
    "memory": _Field(_bool, False),
    "dir": _Field(_path),
}


def _traces(value: Any, at: _At) -> TracesConfig | _Marker:
    v = _walk(value, at, _TRACES)
    return _INVALID if v is _INVALID else TracesConfig(**v)


def _metrics(value: Any, at: _At) -> MetricsConfig | _Marker:
    v = _walk(value, at, _METRICS)
    return _INVALID if v is _INVALID else MetricsConfig(**v)


def _profiling(value: Any, at: _At) -> ProfilingConfig | _Marker:
    v = _walk(value, at, _PROFILING)
    if v is _INVALID:
        return _INVALID
    if _ok(v["interval_s"], v["duration_s"]) and v["duration_s"] > v["interval_s"]:
        (at / "duration_s").fail(f"must not be longer than interval_s ({v['interval_s']:g} s); windows would overlap")
    return ProfilingConfig(**v)


_OBSERVABILITY = {
    "enabled": _Field(_bool, False),
    "traces": _Field(_traces, {}),
    "metrics": _Field(_metrics, {}),
    "profiling": _Field(_profiling, {}),
}


def _observability(value: Any, at: _At) -> ObservabilityConfig | _Marker:
    v = _walk(value, at, _OBSERVABILITY)
    return _INVALID if v is _INVALID else ObservabilityConfig(**v)


def _listen(value: Any, at: _At) -> str:
    want = "host:port, e.g. 127.0.0.1:9470 or [::1]:9470"
    if not isinstance(value, str):
        raise _Bad(f"expected {want}, got {_show(value)}")
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    bad_host = not host or any(c.isspace() or c in "[]/@" for c in host) or (":" in host and not bracketed)
    if not sep or bad_host or not port.isdigit() or int(port) > 65535:
        raise _Bad(f"expected {want}, got {_show(value)}")
    return value


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


_ADMIN = {
    "enabled": _Field(_bool, True),
    "listen": _Field(_listen, "127.0.0.1:9470"),
    "allow_remote": _Field(_bool, False),
}


def _admin(value: Any, at: _At) -> AdminConfig | _Marker:
    v = _walk(value, at, _ADMIN)
    if v is _INVALID:
        return _INVALID
    if _ok(v["listen"], v["allow_remote"]) and v["allow_remote"] is not True and not _is_loopback(v["listen"]):
        # /status and /metrics show the pipeline's topology and the workers' pids.
        (at / "listen").fail(f"{v['listen']!r} is not a loopback address; the admin endpoint has no "
                             "authentication, so set admin.allow_remote: true to expose it deliberately")
        return _INVALID
    return AdminConfig(**v) if _ok(*v.values()) else _INVALID


_TOP = {
    "workers": _Field(_int(1, 256), 1),
    "shutdown_grace_s": _Field(_seconds(allow_zero=True), 30.0),
    "state_dir": _Field(_path, "./var"),
    "log_level": _Field(_choice("debug", "info", "warning", "error"), "info"),
    "nats": _Field(_nats, {}),
    "clickhouse": _Field(_clickhouse, {}),
    "pipelines": _Field(_pipelines, _REQUIRED),
    "observability": _Field(_observability, {}),
    "admin": _Field(_admin, {}),
}


def _config(value: Any, at: _At, source: Path | None) -> Config | _Marker:
    v = _walk(value, at, _TOP)
    return _INVALID if v is _INVALID else Config(**v, source=source)
