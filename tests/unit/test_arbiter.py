"""supervisor.arbiter with real worker processes and no servers (uvicorn's test_multiprocess).

The workers are scripted entries (tests/unit/arbiter_targets.py) that speak the control
protocol. Each test drives the real arbiter turn by turn: `turn()` waits on the workers'
pipes and exits, so the tests wait on events and state, never on the clock.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arbiter_targets
import pytest
import yaml

from supervisor.arbiter import Arbiter
from supervisor.assignment import Partition
from supervisor.config import load_config
from supervisor.worker_handle import Timings
from workers import exitcodes

FAST = Timings(backoff_start_s=0.02, backoff_max_s=0.08, stable_run_s=60.0)
PATIENCE_S = 60.0  # a stuck test fails after this long instead of hanging


def write_config(tmp_path: Path, workers: int, partitions: int = 6) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "workers": workers,
        "state_dir": str(tmp_path),
        "admin": {"enabled": False},
        "pipelines": [{"name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": partitions,
                       "table": "events"}],
    }))
    return path


@pytest.fixture
def arbiters():
    """Builds arbiters over a config file; kills whatever they still run afterwards."""
    made: list[Arbiter] = []

    def make(tmp_path: Path, target: Callable, workers: int = 2, partitions: int = 6,
             timings: Timings = FAST) -> Arbiter:
        arb = Arbiter(load_config(write_config(tmp_path, workers, partitions)), target=target, timings=timings)
        made.append(arb)
        arb.start()
        return arb

    yield make
    for arb in made:
        arb.stop()


def no_partition_held_twice(arb: Arbiter) -> None:
    held = [p for w in arb.workers.values() if w.alive for p in w.holds()]
    assert len(held) == len(set(held)), f"a partition held by two workers: {sorted(held)}"


def turn_until(arb: Arbiter, cond: Callable[[], Any], what: str) -> Any:
    """Turn the loop until `cond()` holds, checking release-before-acquire after every turn."""
    deadline = time.monotonic() + PATIENCE_S
    while not (value := cond()):
        assert time.monotonic() < deadline, f"no {what} after {PATIENCE_S}s"
        assert arb.turn(timeout=0.5), f"the arbiter stopped (exit {arb.exit_code}) waiting for {what}"
        no_partition_held_twice(arb)
    return value


def run_to_end(arb: Arbiter) -> int:
    deadline = time.monotonic() + PATIENCE_S
    while arb.turn(timeout=0.5):
        assert time.monotonic() < deadline, "the arbiter did not stop"
    return arb.exit_code


def desired(arb: Arbiter, slot: int) -> set[Partition]:
    return set(arb._desired.get(slot, ()))


def settled(arb: Arbiter) -> bool:
    """Every worker ready and owning exactly what it should; nothing moving."""
    return all(w.alive and w.ready and w.owned == desired(arb, s) and not w.acquiring and not w.releasing
               for s, w in arb.workers.items())


def ownership_log(tmp_path: Path) -> list[tuple[int, str, str]]:
    """The workers' own record of acquisitions and releases, checked to never overlap."""
    owner: dict[str, int] = {}
    events = []
    for line in (tmp_path / "ownership.log").read_text().splitlines():
        slot, what, partition = line.split()
        if what == "died":
            owner = {p: s for p, s in owner.items() if s != int(slot)}
        elif what == "acquire":
            assert partition not in owner, f"worker {slot} acquired {partition} while {owner.get(partition)} held it"
            owner[partition] = int(slot)
        else:
            assert owner.pop(partition) == int(slot)
        events.append((int(slot), what, partition))
    return events


def record_death(tmp_path: Path, slot: int) -> None:
    """A killed worker released nothing, yet holds nothing: say so in the ownership log."""
    with open(tmp_path / "ownership.log", "a") as log:
        log.write(f"{slot} died -\n")


def test_start_gives_each_partition_to_one_worker(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    owned = [p for w in arb.workers.values() for p in w.owned]
    assert sorted(owned) == [Partition("events", i) for i in range(6)]
    assert all(w.owned for w in arb.workers.values())
    assert len(ownership_log(tmp_path)) == 6


def test_a_resize_releases_before_it_acquires(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.slow_to_release)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    arb.signal(signal.SIGTTIN)
    turn_until(arb, lambda: 2 in arb.workers and arb.workers[2].ready, "worker 2 ready")
    moving = desired(arb, 2)
    assert moving, "a third worker takes some partitions"
    releasing = set().union(*(w.releasing for w in arb.workers.values()))
    assert releasing == moving
    # The old owners have not confirmed yet: the new worker must not have been told to take them.
    assert not arb.workers[2].holds()
    for slot in (0, 1):
        arb.workers[slot].send({"op": "finish_releases"})
    turn_until(arb, lambda: settled(arb), "the moved partitions owned by worker 2")
    assert arb.workers[2].owned == moving
    events = ownership_log(tmp_path)
    assert len([e for e in events if e[1] == "acquire"]) == 6 + len(moving)  # only the moved ones moved

    arb.signal(signal.SIGTTOU)
    turn_until(arb, lambda: arb.workers[2].releasing, "worker 2 told to release")
    retiring = arb.workers[2].process
    arb.workers[2].send({"op": "finish_releases"})
    turn_until(arb, lambda: 2 not in arb.workers and settled(arb), "worker 2 retired, its partitions back")
    assert retiring.exitcode == exitcodes.OK
    assert sorted(p for w in arb.workers.values() for p in w.owned) == [Partition("events", i) for i in range(6)]
    ownership_log(tmp_path)


def test_a_crashed_worker_is_restarted_with_capped_backoff(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient, workers=1, partitions=2)
    w = arb.workers[0]
    turn_until(arb, lambda: settled(arb), "the worker ready")
    backoffs = []
    for crash in range(1, 5):
        pid = w.process.pid
        os.kill(pid, signal.SIGKILL)
        restart_at = turn_until(arb, lambda: w.restart_at, "the restart to be scheduled")
        assert not w.alive and not w.owned  # a dead worker holds nothing
        record_death(tmp_path, 0)
        backoffs.append(w.backoff_s)
        turn_until(arb, lambda pid=pid: w.alive and w.process.pid != pid, "the worker restarted")
        assert w.started_at >= restart_at, "restarted before its backoff ran out"
        assert w.restarts == crash
        turn_until(arb, lambda: settled(arb), "its partitions owned again")
    # The delay doubles from backoff_start_s and stays at backoff_max_s (the next delay is kept).
    assert backoffs == [0.04, 0.08, 0.08, 0.08]

    # A worker that ran longer than stable_run_s starts over from backoff_start_s.
    w.started_at -= FAST.stable_run_s + 1
    os.kill(w.process.pid, signal.SIGKILL)
    turn_until(arb, lambda: w.restart_at, "the restart to be scheduled")
    record_death(tmp_path, 0)
    assert w.backoff_s == 2 * FAST.backoff_start_s
    turn_until(arb, lambda: settled(arb), "the worker back")
    ownership_log(tmp_path)


def test_a_worker_that_cannot_boot_stops_the_supervisor(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.cannot_boot)
    assert run_to_end(arb) == exitcodes.BOOT
    assert all(w.restarts == 0 for w in arb.workers.values())


def test_dying_before_ready_again_and_again_is_a_boot_failure(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.dies_at_import, workers=1)
    assert run_to_end(arb) == exitcodes.BOOT
    assert arb.workers[0].restarts == FAST.max_failed_boots - 1


def test_term_drains_every_worker_and_exits_zero(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    procs = [w.process for w in arb.workers.values()]
    arb.signal(signal.SIGTERM)
    assert run_to_end(arb) == exitcodes.OK
    assert [p.exitcode for p in procs] == [exitcodes.OK, exitcodes.OK]
    events = ownership_log(tmp_path)
    assert sorted(e[2] for e in events if e[1] == "release") == [f"events/{i}" for i in range(6)]


def test_quit_stops_at_once_without_draining(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    procs = [w.process for w in arb.workers.values()]
    arb.signal(signal.SIGQUIT)
    assert not arb.turn(timeout=0.5)
    assert arb.exit_code == exitcodes.OK
    assert [p.exitcode for p in procs] == [-signal.SIGKILL, -signal.SIGKILL]
    assert not any(e[1] == "release" for e in ownership_log(tmp_path))


def test_hup_with_only_workers_changed_resizes_in_place(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    pids = {s: w.process.pid for s, w in arb.workers.items()}
    write_config(tmp_path, workers=3)
    arb.signal(signal.SIGHUP)
    turn_until(arb, lambda: len(arb.workers) == 3 and settled(arb), "three workers owning their partitions")
    assert {s: arb.workers[s].process.pid for s in pids} == pids  # resized, not restarted
    assert arb.config.workers == 3
    ownership_log(tmp_path)


def test_hup_with_config_unchanged_has_every_worker_read_its_tables_again(tmp_path, arbiters):
    arb = arbiters(tmp_path, arbiter_targets.obedient)
    turn_until(arb, lambda: settled(arb), "every partition owned")
    pids = {s: w.process.pid for s, w in arb.workers.items()}
    assert not (arb.snapshot or {}).get("schemas")
    arb.signal(signal.SIGHUP)

    def reports() -> dict:
        return ((arb.snapshot or {}).get("schemas") or {}).get("events", {}).get("slots", {})
    assert turn_until(arb, lambda: len(reports()) == 2 and reports(), "both workers' schema reports") == {
        "0": "d1", "1": "d1"}
    assert {s: w.process.pid for s, w in arb.workers.items()} == pids  # nothing restarted
    assert arb.snapshot["schemas"]["events"]["digest"] == "d1"
