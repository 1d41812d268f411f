"""The key reference of docs/configuration.md, generated from the key declarations.

Each table sits between a pair of marker comments, so the prose around it stays hand-written
while every key's type, bounds, default and meaning come from workers/settings.py:

    python -m supervisor.config reference                    # print the tables
    python -m supervisor.config reference --write docs/configuration.md

tests/unit/test_config.py fails when the file differs from what this generates.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from workers.setting_types import ENV_NAME, FilePath, Key, Section
from workers.settings import (
    AdminConfig,
    BatchLimits,
    ClickHouseConfig,
    ColumnOverride,
    Config,
    NatsConfig,
    ObservabilityConfig,
    Pipeline,
    Route,
    ShardConfig,
    TLSConfig,
    declared_key,
)

# One table per section, in the order of the document; a nested section without its own
# table (observability.traces, ...) is listed in its parent's table with a dotted prefix.
TABLES: tuple[tuple[str, type], ...] = (
    ("top", Config),
    ("nats", NatsConfig),
    ("clickhouse", ClickHouseConfig),
    ("shards", ShardConfig),
    ("tls", TLSConfig),
    ("pipelines", Pipeline),
    ("batch", BatchLimits),
    ("columns", ColumnOverride),
    ("routes", Route),
    ("observability", ObservabilityConfig),
    ("admin", AdminConfig),
)

_BLOCK = re.compile(r"<!-- BEGIN reference (\w+)[^>]*-->\n.*?<!-- END reference \1 -->", re.DOTALL)


def begin_marker(name: str) -> str:
    source = "generated from workers/settings.py by `python -m supervisor.config reference`"
    return f"<!-- BEGIN reference {name}: {source} -->"


def table(cls: type) -> str:
    """The markdown table of `cls`'s keys."""
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    lines += [f"| {key} | {kind} | {default} | {doc} |" for key, kind, default, doc in _rows(cls, "")]
    return "\n".join(lines)


def block(name: str, cls: type) -> str:
    return f"{begin_marker(name)}\n{table(cls)}\n<!-- END reference {name} -->"


def reference() -> str:
    """Every table with its markers, as they stand in docs/configuration.md."""
    return "\n\n".join(block(name, cls) for name, cls in TABLES) + "\n"


def update(text: str) -> str:
    """`text` (docs/configuration.md) with each marked table regenerated."""
    tables = dict(TABLES)
    return _BLOCK.sub(lambda m: block(m[1], tables[m[1]]) if m[1] in tables else m[0], text)


def blocks_in(text: str) -> list[str]:
    return [m[1] for m in _BLOCK.finditer(text)]


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    own_table = {c for _, c in TABLES}
    rows = []
    for f in dataclasses.fields(cls):
        key = declared_key(f)
        if key is None:
            continue
        name = prefix + (key.name or f.name)
        if isinstance(key.check, Section) and key.check.cls not in own_table:
            rows += _rows(key.check.cls, f"{name}.")
        elif key.secret:
            rows.append((f"`{name}_env` / `{name}_file`", f"{ENV_NAME.doc} / {FilePath().doc}",
                         _default(f, key), key.doc))
        else:
            rows.append((f"`{name}`", key.check.doc, _default(f, key), key.doc))
    return rows


def _default(f: Any, key: Key) -> str:
    if key.default_doc is not None:
        return key.default_doc
    if key.required:
        return "**required**"
    if f.default is None:
        return "none"
    return f"`{key.check.show_default(f.default)}`"


def main(argv: list[str]) -> int:
    """`reference [--write PATH]`: print the tables, or regenerate them inside PATH."""
    if argv == ["reference"]:
        print(reference(), end="")
        return 0
    if len(argv) == 3 and argv[:2] == ["reference", "--write"]:
        path = Path(argv[2])
        path.write_text(update(path.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print("usage: python -m supervisor.config reference [--write docs/configuration.md]")
    return 2
