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
    c.fired_at = 1.0
    assert not c.due(900)


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


def test_the_report_marks_the_fault_and_the_recovery_on_its_charts():
    figures = {
        "timeline": _timeline([1000] * 10),
        "chaos": {"kind": "kill-nats", "at": 0.3, "fired_at_s": 3.0, "recovery_s": 2.5},
    }
    charts = "".join(report._charts_for(figures, "jetsink"))
    assert charts.count(">kill-nats</text>") == 4 and charts.count(">back in 2.5 s</text>") == 4
    assert "kill-nats" not in "".join(report._charts_for({"timeline": figures["timeline"]}, "jetsink"))
