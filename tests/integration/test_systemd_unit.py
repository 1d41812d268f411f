"""deploy/jetsink.service: `systemd-analyze verify` accepts every directive, and the values fit the code.

systemd-analyze verify exits 0 even for an unknown key or an unparsable value (it logs
"..., ignoring" and moves on), so the test also fails on any line it prints about the
unit. It does check that ExecStart's binary exists: the installed path
/opt/jetsink/venv/bin/python is swapped for this interpreter in a copy of the unit,
and nothing else is changed (User=jetsink need not exist for verify).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import Config
from workers import exitcodes

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "jetsink.service"
VENV_PYTHON = "/opt/jetsink/venv/bin/python"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed: apt-get install systemd (deploy/setup.sh does)", pytrace=False)
    return path


def verify(unit_text: str, tmp_path: Path) -> list[str]:
    """Problems systemd-analyze reports for `unit_text` (installed paths swapped for test ones)."""
    assert VENV_PYTHON in unit_text
    unit = tmp_path / "jetsink.service"
    unit.write_text(unit_text.replace(VENV_PYTHON, sys.executable))
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "jetsink.service" in line]
    if result.returncode != 0:
        problems.append(f"systemd-analyze verify exited {result.returncode}: {result.stderr.strip()}")
    return problems


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_verifies_cleanly(tmp_path):
    assert verify(UNIT.read_text(), tmp_path) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("KillMode=mixed", "KillMode=mixd"),  # a bad value
        ("NoNewPrivileges=yes", "NoNewPrivilegs=yes"),  # an unknown key
        ("ExecReload=", "ExecStartPre=/nonexistent/python\nExecReload="),  # a missing binary
    ],
)
def test_verify_catches_a_broken_unit(tmp_path, old, new):
    text = UNIT.read_text()
    line = f"\n{old}"  # the directive, not a comment mentioning it
    assert line in text
    assert verify(text.replace(line, f"\n{new}", 1), tmp_path) != []


def test_unit_matches_the_supervisor():
    d = directives(UNIT.read_text())
    one = {key: values[-1] for key, values in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{VENV_PYTHON} -m supervisor --config /etc/jetsink/config.yaml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # TERM reaches only the supervisor, which drains its workers; the stop timeout
    # must outlast the default drain grace.
    assert one["KillMode"] == "mixed"
    grace = Config.__dataclass_fields__["shutdown_grace_s"].default
    assert float(one["TimeoutStopSec"]) > grace
    assert one["Restart"] == "on-failure"
    assert {int(code) for code in one["RestartPreventExitStatus"].split()} == {exitcodes.CONFIG, exitcodes.BOOT}
    assert one["EnvironmentFile"].startswith("-")
    assert one["User"] == "jetsink" and one["DynamicUser"] == "no"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["ReadWritePaths"] == "/var/lib/jetsink" and one["StateDirectory"] == "jetsink"
    assert int(one["WatchdogSec"]) > 0
