"""ruff (configured in pyproject.toml: line length, pyflakes, pycodestyle, import order, bugbear)
passes on the whole tree; it runs here so that the README's one test command runs it too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
