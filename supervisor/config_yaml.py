"""config.yaml read as YAML, strictly: safe_load semantics, a repeated key an error, and every
problem (unreadable file, bad syntax) one ConfigError naming the file, with line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workers.settings import ConfigError

__all__ = ["read_yaml"]


def read_yaml(path: Path) -> Any:
    """The YAML document in the file at `path`; raise ConfigError if it cannot be read or parsed."""
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
    return data


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
