"""supervisor/profiler.py: the periodic py-spy scheduler and its profile names."""

from __future__ import annotations

import json
import logging
import stat
import sys
import time
from pathlib import Path

from supervisor import profiles
from supervisor.config import parse_config
from supervisor.profiler import ProfileScheduler, profile_stem

PIPELINE = {"name": "a", "stream": "S", "subject": "e.*", "partitions": 1, "table": "t"}


def _config(**observability):
    return parse_config({"pipelines": [PIPELINE], "observability": observability}, Path("/tmp"))


# -- traceparent ---------------------------------------------------------------------


COLLAPSED = (
    "main (app.py:10);work (app.py:20);parse (app.py:30) 30\n"
    "main (app.py:10);work (app.py:20) 10\n"
    "main (app.py:10);idle (<frozen x>:5) 5\n"
    "not a line\n"
)


def _fake_py_spy(tmp_path: Path, body: str) -> str:
    script = tmp_path / "py-spy"
    script.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_scheduler_profiles_each_worker_on_its_interval(tmp_path, caplog):
    spy = _fake_py_spy(
        tmp_path,
        f"open(args[args.index('--output') + 1], 'w').write({COLLAPSED!r})\n"
        f"open({str(tmp_path / 'argv')!r}, 'a').write(' '.join(args) + '\\n')",
    )
    cfg = _config(
        enabled=True, profiling={"interval_s": 5, "duration_s": 1, "rate_hz": 7, "log_base64": True}
    ).observability.profiling
    out = tmp_path / "profiles"
    sched = ProfileScheduler(cfg, out, py_spy=spy)
    with caplog.at_level(logging.INFO):
        sched.tick(100.0, {0: 4242})
        assert not (tmp_path / "argv").exists()  # the first window waits min(interval, 30 s)
        sched.tick(105.0, {0: 4242})
        _wait_for(lambda: (tmp_path / "argv").exists() and sched._running[0].process.poll() is not None)
        sched.tick(105.5, {0: 4242})
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:3] == ["record", "--pid", "4242"] and "--nonblocking" in argv and argv[argv.index("--rate") + 1] == "7"
    assert argv[argv.index("--format") + 1] == "raw"
    files = sorted(p.name for p in out.iterdir())
    assert (
        len(files) == 2
        and files[0].startswith("cpu-worker0-")
        and files[0].endswith(".speedscope.json")
        and files[1].endswith(".svg")
    )
    # logged base64, extracted again byte for byte
    lines = [
        json.dumps(
            {"profile_name": r.profile_name, "profile_encoding": r.profile_encoding, "profile_b64": r.profile_b64}
        )
        for r in caplog.records
        if hasattr(r, "profile_b64")
    ]
    extracted = dict(profiles.logged_profiles(iter(lines + ["{not json", '{"msg": "other"}'])))
    assert extracted == {name: (out / name).read_bytes() for name in files}
    sched.tick(108.0, {0: 4242})
    assert 0 not in sched._running  # next window only at 110
    sched.stop()


def test_scheduler_warns_once_when_py_spy_fails_and_keeps_going(tmp_path, caplog):
    spy = _fake_py_spy(tmp_path, "sys.stderr.write('Error: Permission Denied\\n'); sys.exit(1)")
    cfg = _config(enabled=True, profiling={"interval_s": 1, "duration_s": 1}).observability.profiling
    sched = ProfileScheduler(cfg, tmp_path / "p", py_spy=spy)
    with caplog.at_level(logging.DEBUG, logger="jetsink.profiler"):
        for now in (0.0, 1.0, 2.5, 4.0):
            sched.tick(now, {1: 99})
            _wait_for(lambda: all(w.process.poll() is not None for w in sched._running.values()))
        sched.tick(5.0, {1: 99})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Permission Denied" in warnings[0].getMessage()
    assert not list((tmp_path / "p").glob("cpu-*"))
    sched.stop()


def test_profile_names_carry_slot_and_utc_time():
    assert profile_stem(3, 0.0) == "cpu-worker3-19700101T000000Z"
