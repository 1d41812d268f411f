"""Where in config.yaml a value sits, and the problems found there: what the walker
(supervisor/config.py), the secrets (config_secrets.py) and the cross-key rules
(config_rules.py) report through.

A value that already produced a problem is replaced by ``INVALID``, so a later check on
it (``ok``) stays quiet instead of piling a second problem on the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["INVALID", "At", "Marker", "ok"]


class Marker:
    """A named stand-in where the walker has no value (its repr is the name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INVALID = Marker("INVALID")  # stands in for a value that already produced a problem


@dataclass(frozen=True, slots=True)
class At:
    """A position in the document: its key path, the shared problem list and the base dir."""

    path: str
    problems: list[str]
    base_dir: Path

    def __truediv__(self, key: Any) -> At:
        return At(f"{self.path}.{key}" if self.path else str(key), self.problems, self.base_dir)

    def item(self, index: int) -> At:
        return At(f"{self.path}[{index}]", self.problems, self.base_dir)

    def fail(self, message: str, where: str = "") -> None:
        path = f"{self.path}{where}" if self.path else where.lstrip(".")
        self.problems.append(f"{path or 'config'}: {message}")


def ok(*values: Any) -> bool:
    """True when none of `values` already failed, so a cross-field check can run."""
    return all(v is not INVALID for v in values)
