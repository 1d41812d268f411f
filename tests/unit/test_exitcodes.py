"""workers.exitcodes: docs/operations.md's exit-code table is the module, code for code and name for name."""

from __future__ import annotations

import re
from pathlib import Path

from workers import exitcodes

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented() -> dict[str, int]:
    """{name: code} from the table under "## Exit codes"."""
    section = OPERATIONS.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", section, re.M)}


def declared() -> dict[str, int]:
    return {name: value for name, value in vars(exitcodes).items() if name.isupper() and isinstance(value, int)}


def test_the_documented_table_is_the_module():
    assert documented() == declared()


def test_codes_are_distinct():
    assert len(set(declared().values())) == len(declared())
