"""The value types of config keys: each checks one raw YAML value and says what it accepts.

A key's declaration (workers/settings.py) names one of these; the same object checks the
user's value (supervisor/config.py walks the file with them) and writes the "Type" column
of the key reference in docs/configuration.md, so a bound is stated once. They are pure:
a value in, a typed value or ``Invalid`` out; the config's folder is passed in for paths.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Invalid(Exception):
    """A value failed its check. ``problems`` are (where, message); ``where`` extends the key's path."""

    def __init__(self, message: str = "", problems: list[tuple[str, str]] | None = None) -> None:
        self.problems = problems if problems is not None else [("", message)]
        super().__init__(message or "; ".join(m for _, m in self.problems))


def show(value: Any) -> str:
    """A raw value as a problem message quotes it: short, YAML words for null and booleans."""
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


def yaml_text(value: Any) -> str:
    """A typed default as it would be written in config.yaml (for the key reference)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple) and len(value) == 1:
        return yaml_text(value[0])
    if value == ():
        return "{}"
    return str(value)


class Check:
    """Base of the value types: ``doc`` is the reference's "Type" column."""

    doc = ""

    def __call__(self, value: Any, base_dir: Path) -> Any:
        raise NotImplementedError

    def show_default(self, value: Any) -> str:
        return yaml_text(value)


@dataclass(frozen=True)
class Bool(Check):
    doc = "bool"

    def __call__(self, value: Any, base_dir: Path) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {show(value)}")
        return value


@dataclass(frozen=True)
class Int(Check):
    lo: int = 1
    hi: int | None = None
    unit: str = ""  # "milliseconds": only for the reference

    @property
    def doc(self) -> str:  # type: ignore[override]
        kind = f"int {self.unit}" if self.unit else "int"
        return f"{kind}, {self.lo}..{self.hi}" if self.hi is not None else f"{kind}, >= {self.lo}"

    def __call__(self, value: Any, base_dir: Path) -> int:
        # bool is an int subclass; "workers: true" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < self.lo \
                or (self.hi is not None and value > self.hi):
            want = f"an integer from {self.lo} to {self.hi}" if self.hi is not None else (
                "a positive integer" if self.lo == 1 else f"an integer >= {self.lo}")
            raise Invalid(f"expected {want}, got {show(value)}")
        return value


@dataclass(frozen=True)
class Seconds(Check):
    allow_zero: bool = False
    at_least: float | None = None  # a floor above zero, e.g. 1 s for export intervals

    @property
    def doc(self) -> str:  # type: ignore[override]
        if self.at_least is not None:
            return f"seconds, >= {yaml_text(self.at_least)}"
        return "seconds, >= 0" if self.allow_zero else "seconds, > 0"

    def __call__(self, value: Any, base_dir: Path) -> float:
        want = "a number of seconds >= 0" if self.allow_zero else "a positive number of seconds"
        try:
            seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        except OverflowError:  # an int too large for a float
            seconds = None
        if seconds is None or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.allow_zero):
            raise Invalid(f"expected {want}, got {show(value)}")
        if self.at_least is not None and seconds < self.at_least:
            raise Invalid(f"expected at least {yaml_text(self.at_least)} second, got {show(value)}")
        return seconds


@dataclass(frozen=True)
class Ratio(Check):
    doc = "number 0..1"

    def __call__(self, value: Any, base_dir: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise Invalid(f"expected a number from 0 to 1, got {show(value)}")
        return float(value)


@dataclass(frozen=True)
class Text(Check):
    doc = "string"

    def __call__(self, value: Any, base_dir: Path) -> str:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"expected a non-empty string, got {show(value)}")
        return value


@dataclass(frozen=True)
class Pattern(Check):
    regex: str
    want: str  # for the problem message
    doc: str = ""  # type: ignore[misc]

    def __call__(self, value: Any, base_dir: Path) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.regex, value, re.ASCII):
            raise Invalid(f"expected {self.want}, got {show(value)}")
        return value


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# Table and column names are spliced into SQL, so only plain identifiers get through.
IDENTIFIER = Pattern(_IDENT, "an identifier (letters, digits, underscore; not starting with a digit)", "identifier")
TABLE_NAME = Pattern(rf"{_IDENT}(\.{_IDENT})?", "'table' or 'database.table' made of identifiers",
                     "`table` or `database.table` (identifiers)")
PIPELINE_NAME = Pattern(r"[A-Za-z0-9_-]+", "a name of letters, digits, '_' and '-'", "`[A-Za-z0-9_-]+`")
ENV_NAME = Pattern(_IDENT, "an environment variable name", "environment variable name")
# JetStream forbids these in stream names (they become subjects and file names).
STREAM_NAME = Pattern(r"[^\s.*>/\\\x00-\x1f\x7f]+", "a stream name without spaces, '.', '*', '>' or slashes",
                      "stream name")
HOSTNAME = Pattern(r"\S+", "a host name or address", "string")
# A key of the members KV bucket (letters, digits, '-', '_', '='; dots inside, as in host names).
INSTANCE_ID = Pattern(r"[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*", "a name of letters, digits, '-', '_' and inner dots",
                      "`[A-Za-z0-9_=-]+`, dots inside")


@dataclass(frozen=True, init=False)
class Choice(Check):
    options: tuple[str, ...]

    def __init__(self, *options: str) -> None:
        object.__setattr__(self, "options", options)

    @property
    def doc(self) -> str:  # type: ignore[override]
        return " \\| ".join(f"`{o}`" for o in self.options)

    def __call__(self, value: Any, base_dir: Path) -> str:
        if isinstance(value, str) and value.lower() in self.options:
            return value.lower()
        raise Invalid(f"expected one of {', '.join(self.options)}, got {show(value)}")


_SIZE_UNITS = {
    "": 1, "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", re.ASCII)


@dataclass(frozen=True)
class Size(Check):
    doc = "size, > 0"

    def __call__(self, value: Any, base_dir: Path) -> int:
        want = "a positive byte count or a size like '8MiB', '512KiB', '64kB'"
        if isinstance(value, int) and not isinstance(value, bool):
            if value > 0:
                return value
            raise Invalid(f"expected {want}, got {show(value)}")
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if not match or match[2] not in _SIZE_UNITS:
            raise Invalid(f"expected {want}, got {show(value)}")
        try:
            size = Decimal(match[1]) * _SIZE_UNITS[match[2]]
        except InvalidOperation:  # pragma: no cover - the regex only admits decimals
            raise Invalid(f"expected {want}, got {show(value)}") from None
        if size <= 0 or size != size.to_integral_value():
            raise Invalid(f"expected a whole, positive number of bytes, got {show(value)}")
        return int(size)

    def show_default(self, value: Any) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if value % _SIZE_UNITS[unit] == 0:
                return f"{value // _SIZE_UNITS[unit]}{unit}"
        return str(value)


@dataclass(frozen=True)
class FilePath(Check):
    """A path relative to the config's folder; ``must_exist`` for files that are read at start."""

    must_exist: bool = False

    @property
    def doc(self) -> str:  # type: ignore[override]
        return "path, must exist" if self.must_exist else "path"

    def __call__(self, value: Any, base_dir: Path) -> Path:
        if not isinstance(value, str) or not value:
            raise Invalid(f"expected a path, got {show(value)}")
        path = Path(os.path.abspath(base_dir / Path(value).expanduser()))
        if self.must_exist and not path.is_file():
            raise Invalid(f"file not found: {path}")
        return path


@dataclass(frozen=True)
class JsonValue(Check):
    """Column defaults are converted like JSON input, so only JSON types are allowed."""

    doc = "any JSON value (`null`, number, string, bool, list, mapping)"

    def __call__(self, value: Any, base_dir: Path, depth: int = 0) -> Any:
        if depth > 32:  # also stops self-referencing YAML anchors
            raise Invalid("default is nested too deeply")
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid(f"expected a JSON value, got {show(value)}")
            return value
        if isinstance(value, list):
            return [self(v, base_dir, depth + 1) for v in value]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise Invalid("expected a JSON value; mapping keys must be strings")
            return {k: self(v, base_dir, depth + 1) for k, v in value.items()}
        # YAML turns 2024-01-01 into a date object; JSON input would carry a string.
        raise Invalid(f"expected a JSON value (quote dates and times), got {show(value)}")


@dataclass(frozen=True)
class JsonValues(Check):
    """A non-empty list of JSON values (a route's `in`)."""

    doc = "list of JSON values"

    def __call__(self, value: Any, base_dir: Path) -> tuple[Any, ...]:
        if not isinstance(value, list) or not value:
            raise Invalid(f"expected a non-empty list of values, got {show(value)}")
        return tuple(JsonValue()(v, base_dir) for v in value)


@dataclass(frozen=True)
class Timezone(Check):
    doc = "IANA time zone name"

    def __call__(self, value: Any, base_dir: Path) -> str:
        if not isinstance(value, str) or not value:
            raise Invalid(f"expected an IANA time zone name like 'Europe/Berlin', got {show(value)}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise Invalid(f"unknown time zone {value!r}; expected an IANA name like 'Europe/Berlin' or 'UTC'") from None
        return value


@dataclass(frozen=True)
class DottedPath(Check):
    doc = "dotted string"

    def __call__(self, value: Any, base_dir: Path) -> tuple[str, ...]:
        if not isinstance(value, str) or not value:
            raise Invalid(f"expected a dotted path like 'user.id', got {show(value)}")
        parts = tuple(value.split("."))
        if not all(parts):
            raise Invalid(f"empty segment in path {value!r}")
        return parts


def subject_tokens(value: Any) -> list[str]:
    """The tokens of a subject pattern; '*' only as a whole token, '>' never."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a NATS subject, got {show(value)}")
    tokens = value.split(".")
    if any(not t for t in tokens):
        raise Invalid(f"empty token in subject {value!r}")
    if any(re.search(r"[\s\x00-\x1f\x7f]", t) for t in tokens):
        raise Invalid(f"whitespace in subject {value!r}")
    if ">" in tokens:
        raise Invalid(f"'>' is not allowed in {value!r}; use '*' tokens (each one is part of the partition key)")
    if any(t != "*" and ("*" in t or ">" in t) for t in tokens):
        raise Invalid(f"wildcards must be whole tokens in {value!r}")
    return tokens


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns ('*' wildcards only; '>' is rejected earlier)."""
    ta, tb = a.split("."), b.split(".")
    return len(ta) == len(tb) and all(x == y or "*" in (x, y) for x, y in zip(ta, tb, strict=True))


@dataclass(frozen=True)
class Subject(Check):
    """An input pattern (``wildcards``: at least one '*' token), a concrete subject, or (None) either."""

    wildcards: bool | None  # None: either

    @property
    def doc(self) -> str:  # type: ignore[override]
        if self.wildcards is None:
            return "subject or subject pattern"
        return "subject pattern" if self.wildcards else "subject without wildcards"

    def __call__(self, value: Any, base_dir: Path) -> str:
        has_wildcard = "*" in subject_tokens(value)
        if self.wildcards is None:
            return value
        if self.wildcards and not has_wildcard:
            raise Invalid(f"subject {value!r} needs at least one '*' token to partition on")
        if not self.wildcards and has_wildcard:
            raise Invalid(f"expected a subject without wildcards, got {value!r}")
        return value


@dataclass(frozen=True)
class NatsUrls(Check):
    doc = "string or list of strings"

    def __call__(self, value: Any, base_dir: Path) -> tuple[str, ...]:
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list) or not urls:
            raise Invalid(f"expected a URL or a non-empty list of URLs, got {show(value)}")
        found = [(f"[{i}]" if isinstance(value, list) else "", problem)
                 for i, url in enumerate(urls) if (problem := _nats_url_problem(url))]
        if found:
            raise Invalid(problems=found)
        return tuple(urls)


def _nats_url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return f"expected a URL string, got {show(url)}"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return f"invalid URL {url!r}"
    if parts.scheme not in ("nats", "tls", "ws", "wss") or "://" not in url:
        return f"expected a nats://, tls://, ws:// or wss:// URL, got {url!r}"
    if parts.username or parts.password:
        return "credentials in the URL are not allowed; use user with password_env/password_file, or token_env"
    try:
        _ = parts.port  # raises on a bad port
    except ValueError:
        return f"invalid port in {url!r}"
    if not parts.hostname:
        return f"no host in {url!r}"
    return None


@dataclass(frozen=True)
class HostPorts(Check):
    """`host:port` addresses (ClickHouse's native protocol); a single string is a list of one."""

    doc = "`host:port` or list of them"

    def __call__(self, value: Any, base_dir: Path) -> tuple[str, ...]:
        hosts = [value] if isinstance(value, str) else value
        if not isinstance(hosts, list) or not hosts:
            raise Invalid(f"expected host:port or a non-empty list of them, got {show(value)}")
        out: list[str] = []
        found: list[tuple[str, str]] = []
        for i, item in enumerate(hosts):
            where = f"[{i}]" if isinstance(value, list) else ""
            text = item if isinstance(item, str) else ""
            host, sep, port = text.strip().rpartition(":")
            if not sep or not host or any(c.isspace() or c in "/@[]" for c in host) or not port.isdigit() \
                    or not 0 < int(port) < 65536:
                found.append((where, f"expected host:port (e.g. ch-1:9000), got {show(item)}"))
            elif f"{host}:{int(port)}" in out:
                found.append((where, f"{host}:{int(port)} is listed twice"))
            else:
                out.append(f"{host}:{int(port)}")
        if found:
            raise Invalid(problems=found)
        return tuple(out)


@dataclass(frozen=True)
class InsertSettings(Check):
    """ClickHouse settings by name; the value is a tuple of pairs, which pickles and cannot change."""

    doc = "mapping identifier -> string/number/bool"

    def __call__(self, value: Any, base_dir: Path) -> tuple[tuple[str, str | int | float], ...]:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping of ClickHouse settings, got {show(value)}")
        out: dict[str, str | int | float] = {}
        found: list[tuple[str, str]] = []
        for key, setting in value.items():
            try:
                name = IDENTIFIER(key, base_dir)
            except Invalid as exc:
                found.append((f".{key}", str(exc)))
                name = None
            if isinstance(setting, bool):
                setting = int(setting)  # ClickHouse boolean settings are 0/1
            if not isinstance(setting, (str, int, float)):
                found.append((f".{key}", f"expected a string or number, got {show(setting)}"))
            elif name is not None:
                out[name] = setting
        if found:
            raise Invalid(problems=found)
        return tuple(out.items())

    def show_default(self, value: Any) -> str:
        return "{}" if not value else str(dict(value))


@dataclass(frozen=True)
class Listen(Check):
    doc = "`host:port` or `[v6addr]:port`"

    def __call__(self, value: Any, base_dir: Path) -> str:
        want = "host:port, e.g. 127.0.0.1:9470 or [::1]:9470"
        if not isinstance(value, str):
            raise Invalid(f"expected {want}, got {show(value)}")
        host, sep, port = value.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        bad_host = not host or any(c.isspace() or c in "[]/@" for c in host) or (":" in host and not bracketed)
        if not sep or bad_host or not port.isdigit() or int(port) > 65535:
            raise Invalid(f"expected {want}, got {show(value)}")
        return value


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Section(Check):
    """A nested mapping parsed into the settings class ``cls``; ``optional``: absent means None."""

    cls: type
    optional: bool = False
    doc = "mapping"


@dataclass(frozen=True)
class ListOf(Check):
    """A non-empty list of mappings, each parsed into ``cls``."""

    cls: type
    what: str  # "pipelines", for "expected a list of pipelines"
    doc = "list of mappings"


@dataclass(frozen=True)
class MapOf(Check):
    """A mapping of identifier -> settings of ``cls`` (or the shorthand: a value for ``shorthand``).

    The mapping key goes into ``cls``'s first field.
    """

    cls: type
    shorthand: str
    what: str  # "column name -> path or settings"
    doc = "mapping"


@dataclass(frozen=True)
class Key:
    """One config key, declared once: how its value is checked, what it means, its default.

    The declaration rides on the settings field's metadata, so the dataclass default and
    the key's default are one value.
    """

    check: Check
    doc: str
    name: str | None = None  # the YAML key when it differs from the field's name: "url", "dlq.stream"
    required: bool = False
    yaml_default: Any = None  # a default written as in the file, e.g. a path relative to the config's folder
    default_doc: str | None = None  # the reference's "Default" where the value is derived, not stated
    secret: bool = False  # read from <name>_env or <name>_file; a literal <name> key is refused
