"""bench --chaos: when it fires, how recovery is measured, how the report marks it."""

from __future__ import annotations

from bench import chaos, report


def _timeline(rates, published=None):
    points, inserted = [], 0
    for t, rate in enumerate(rates):
        inserted += int(rate)
        points.append(
            {
                "t": float(t),
                "rate": float(rate),
                "inserted": inserted,
                "dlq": 0,
                "lag": 0,
                "cpu_pct": {"worker0": 50.0},
                "rss_mb": {"worker0": 100.0},
                "published": published if published is not None else 10**9,
            }
        )
    return points


def test_fires_once_at_its_share_of_the_messages():
    c = chaos.Chaos("kill-worker", 0.3, 1000)
    assert not c.due(299) and c.due(300)
    c.kills[0].fired_at = 1.0
    assert not c.due(900)


def test_a_schedule_spreads_its_kills_and_waits_for_the_cluster_to_be_whole_again():
    c = chaos.Chaos("kill-stream-leader,kill-consumer-leader", 0.3, 1000)
    assert [(k.kind, k.at) for k in c.kills] == [("kill-stream-leader", 0.3), ("kill-consumer-leader", 0.65)]
    first = c.kills[0]
    first.fired_at = 1.0
    assert not c.due(649) and not c.due(700)  # the killed node is not back and caught up yet
    first.restarted_at, first.caught_up_at = 3.0, 4.0
    assert c.due(650)
    assert chaos.parse_kinds("kill-worker, kill-kv-leader") == ["kill-worker", "kill-kv-leader"]
    for bad in ("kill-everything", "", "kill-worker,,nope"):
        try:
            chaos.parse_kinds(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_the_longest_stall_is_the_longest_run_of_polls_without_a_new_row():
    polls = [(0.0, 0, 0), (1.0, 10, 10), (1.5, 10, 10), (2.0, 10, 10), (2.5, 20, 25), (3.0, 20, 30), (4.5, 20, 40),
             (5.0, 30, 40), (6.0, 40, 40), (7.0, 40, 40), (7.5, 40, 45), (8.0, 40, 45), (9.0, 50, 50)]
    # The sink stalled 0.5 s (7.5 .. 8.0) with 5 waiting; no row came for 2.0 s (6.0 .. 8.0).
    assert chaos.longest_stall(polls, 6.5, None) == (0.5, 2.0)
    # From the poll at 1.0 (before the kill) to 2.0 no row came, but nothing waited to be stored either.
    assert chaos.longest_stall(polls, 1.2, 2.2) == (0.0, 1.0)
    assert chaos.longest_stall(polls, 2.2, None) == (2.0, 2.0)  # 2.5 .. 4.5, while 5 to 20 waited
    assert chaos.longest_stall(polls, 2.2, 3.0) == (0.5, 0.5)  # ends at the next kill
    assert chaos.longest_stall(polls, 5.0, 6.0) == (0.0, 0.0)  # every poll saw new rows


def test_worker_deaths_from_the_supervisors_log():
    lines = [
        {"msg": "worker 0 died (exit 1); restarting in 1.0s"},
        {"msg": "worker 1 died 5 times before it was ready (exit 3); stopping"},
        {"msg": "partition bench/0: the worker died mid-batch"},
        {"msg": "worker 1 died (exit -9); restarting in 1.0s"},
    ]
    assert chaos.worker_deaths(lines) == 3


def test_recovery_is_the_first_second_back_at_80_percent_of_the_rate_before():
    tl = _timeline([0, 1000, 1000, 1000, 1000, 1000, 0, 0, 300, 700, 850, 1000])
    assert chaos.recovery_s(tl, 5.5) == 4.5  # t=10 is the first point >= 800/s
    # Rows already on their way when the kill came land in the first second after it.
    assert chaos.recovery_s(_timeline([1000] * 6 + [1000, 0, 0, 900]), 5.5) == 3.5
    assert chaos.recovery_s(_timeline([1000] * 10), 5.5) == 0.0  # no dip at all
    assert chaos.recovery_s(_timeline([1000] * 6 + [0] * 5), 5.5) is None  # never back, never done
    done = _timeline([1000] * 6 + [0, 500], published=6500)
    assert chaos.recovery_s(done, 5.5) == 1.5  # drained before the rate came back


def test_skipped_duplicates_from_the_workers_release_lines():
    lines = [
        {"msg": "released partition bench/0 (consumed 10, inserted 5, dead-lettered 0, skipped as stored 5)"},
        {"msg": "released partition bench/1 (consumed 3, inserted 3, dead-lettered 0, skipped as stored 0)"},
        {"msg": "acquired partition bench/0"},
    ]
    assert chaos.skipped_duplicates(lines) == 5


def test_figures_name_each_kill_its_node_stall_and_recovery():
    c = chaos.Chaos("kill-stream-leader,kill-kv-leader", 0.3, 10_000)
    a, b = c.kills
    a.fired_at, a.node, a.led, a.elected_at, a.restarted_at, a.caught_up_at = 105.5, "n1", ["stream"], 107.0, 107.0, 109
    b.fired_at, b.node = 108.5, "n2"
    tl = _timeline([1000] * 6 + [0, 0, 1000, 1000, 1000])
    polls = [(float(p["t"]), p["inserted"], p["published"]) for p in tl]
    f = c.figures(tl, polls, 100.0, 10.0)
    assert f["kind"] == "kill-stream-leader,kill-kv-leader" and f["node"] == "n1" and f["fired_at_s"] == 5.5
    first, second = f["kills"]
    assert (first["node"], first["elected_s"], first["restarted_s"], first["caught_up_s"]) == ("n1", 1.5, 1.5, 3.5)
    assert first["stall_s"] == 2.0 and first["recovery_s"] == 2.5  # rows stood still from t=5 to t=7
    assert second["fired_at_s"] == 8.5 and second["stall_s"] == 0.0
    assert f["recovery_s"] == max(first["recovery_s"], second["recovery_s"])


def test_a_repeat_summary_flags_the_runs_that_lost_or_duplicated():
    runs = [(1, {"lost": 0, "duplicates": 0, "worker_deaths": 0, "throughput_msgs_per_s": 100.0,
                 "chaos": {"kills": [{"kind": "kill-kv-leader", "node": "n0", "fired_at_s": 2.0, "stall_s": 1.5,
                                      "recovery_s": 3.0}]}}),
            (2, {"lost": 0, "duplicates": 12, "worker_deaths": 2, "throughput_msgs_per_s": 90.0,
                 "chaos": {"kills": [{"kind": "kill-kv-leader", "node": None, "fired_at_s": None, "stall_s": None,
                                      "recovery_s": None}]}})]
    rows = report.repeat_rows(runs)
    assert rows[1]["duplicates"] == 12 and rows[0]["kills"][0]["node"] == "n0"
    table = report.repeat_table(rows)
    assert "kill-kv-leader n0: 1.50 s, 3.00 s" in table and "did not fire" in table
    assert table.endswith("runs [2] lost or stored twice")


def test_the_report_marks_the_fault_and_the_recovery_on_its_charts():
    figures = {
        "timeline": _timeline([1000] * 10),
        "chaos": {"kind": "kill-nats", "at": 0.3, "fired_at_s": 3.0, "recovery_s": 2.5},
    }
    charts = "".join(report._charts_for(figures, "jetsink"))
    assert charts.count(">kill-nats</text>") == 4 and charts.count(">back in 2.5 s</text>") == 4
    assert "kill-nats" not in "".join(report._charts_for({"timeline": figures["timeline"]}, "jetsink"))
