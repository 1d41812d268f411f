"""Load and validate config.yaml into frozen, typed dataclasses.

The file is parsed once; everything downstream receives typed values and never looks at
raw YAML again. Each key is declared once, on its settings field in workers/settings.py
(check, bounds, default, doc); this module walks the file with those declarations, adds
what no single key can say (secrets, cross-field rules), and collects every problem
before raising a single ConfigError, so a broken file is fixed in one round instead of
one error per restart.

The file is read as strict YAML by config_yaml.py; the secrets of a section are read by
config_secrets.py and its cross-key rules live in config_rules.py, both reporting at a
position of the document (config_problems.py). Secrets never appear in the file: the config
names an environment variable or a file, the value is read at load time and kept in a
``Secret`` whose repr shows only where it came from.

``python -m supervisor.config reference`` prints the key reference of docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config_problems import INVALID, At, Marker
from supervisor.config_rules import RULES, check_pipelines_together
from supervisor.config_secrets import read_secret
from supervisor.config_yaml import read_yaml
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
    return parse_config(read_yaml(path), path.parent, source=path)


def parse_config(data: Any, base_dir: Path, source: Path | None = None) -> Config:
    """Validate already-loaded YAML data; relative paths resolve against `base_dir`.

    Raises ConfigError listing every problem found, not just the first.
    """
    at = At("", [], Path(os.path.abspath(Path(base_dir).expanduser())))
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


# --------------------------------------------------------------------------- the walker


_REQUIRED = Marker("REQUIRED")


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


def _walk(value: Any, at: At, spec: Mapping[str, Any], out: dict[str, Any]) -> bool:
    """Check `value` is a mapping with only `spec`'s keys and parse each into `out`; absent keys get defaults."""
    if value is None:
        value = {}  # "nats:" with nothing under it means "all defaults"
    if not isinstance(value, dict):
        at.fail(f"expected a mapping, got {show(value)}")
        out.update((leaf.field, INVALID) for leaf in _leaves(spec))
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
            out[entry.field] = INVALID
        elif isinstance(entry.absent, _Raw):
            out[entry.field] = _check(entry.check, entry.absent.value, at / key)
        else:
            out[entry.field] = entry.absent
    return True


def _leaves(spec: Mapping[str, Any]) -> list[_Leaf]:
    return [leaf for entry in spec.values() for leaf in (_leaves(entry) if isinstance(entry, dict) else [entry])]


def _check(check: Check, raw: Any, at: At) -> Any:
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
        return INVALID


def _unknown_key(key: Any, spec: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(spec), n=1) if isinstance(key, str) else []
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of: {', '.join(spec)}"


def _section(cls: type, value: Any, at: At, given: Mapping[str, Any] | None = None) -> Any:
    """Walk one mapping into `cls`: its declared keys, then its secrets, then its cross-field rules.

    `given` fills fields that are no key of the mapping (a column's name).
    """
    values: dict[str, Any] = dict(given or {})
    if not _walk(value, at, _spec(cls), values):
        return INVALID
    for f in dataclasses.fields(cls):
        key = declared_key(f)
        if key is not None and key.secret:
            values[f.name] = read_secret(values, at, f.name)
    rules = RULES.get(cls)
    if rules is not None and rules(values, at, value) is INVALID:
        return INVALID
    return cls(**values)


def _list(check: ListOf, value: Any, at: At) -> tuple[Any, ...] | Marker:
    if not isinstance(value, list):
        at.fail(f"expected a list of {check.what}, got {show(value)}")
        return INVALID
    if not value:
        at.fail(f"at least one {check.what.removesuffix('s')} is required")
        return INVALID
    items = [_section(check.cls, item, at.item(i)) for i, item in enumerate(value)]
    if check.cls is Pipeline:
        check_pipelines_together(items, at)
    return tuple(items)


def _mapping(check: MapOf, value: Any, at: At) -> tuple[Any, ...] | Marker:
    """`name: settings` entries; the name fills the class's first field, a plain value its `shorthand` key."""
    if not isinstance(value, dict):
        at.fail(f"expected a mapping of {check.what}, got {show(value)}")
        return INVALID
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


if __name__ == "__main__":
    from supervisor.config_reference import main

    raise SystemExit(main(sys.argv[1:]))
