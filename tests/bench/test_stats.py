"""Pure helpers of the bench: percentiles, accounting, compare ratios, the results schema."""

from __future__ import annotations

import pytest

from bench import stats
from bench.cli import _parse_sweep


def test_percentile_interpolates_between_ranks():
    values = [10, 20, 30, 40, 50]
    assert stats.percentile(values, 0) == 10
    assert stats.percentile(values, 50) == 30
    assert stats.percentile(values, 100) == 50
    assert stats.percentile(values, 25) == 20
    assert stats.percentile([1, 2], 50) == 1.5
    assert stats.percentile([8, 1, 4, 2], 95) == pytest.approx(7.4)  # rank 2.85: 4 + 0.85 x (8 - 4)
    assert stats.percentile([3.0], 99) == 3.0
    assert stats.percentile([], 99) is None
    with pytest.raises(ValueError):
        stats.percentile(values, 101)
    with pytest.raises(ValueError):
        stats.percentile(values, 99.5)


def test_latency_summary_and_histogram():
    lat = [float(i) for i in range(1, 101)]
    s = stats.latency_summary(lat)
    assert s["samples"] == 100 and s["p50"] == 50.5 and s["max"] == 100.0
    assert s["p99"] == pytest.approx(99.0, abs=0.1)
    assert stats.latency_summary([]) == {"p50": None, "p95": None, "p99": None, "max": None, "samples": 0}
    hist = stats.histogram(lat, bins=10)
    assert len(hist) == 10 and sum(h["count"] for h in hist) == 100


def test_accounting_counts_lost_and_duplicates():
    a = stats.accounting(published=100, dlq=3, rows=99, unique_ids=95)
    assert a == {"published": 100, "inserted": 99, "unique_inserted": 95, "dlq": 3, "duplicates": 4, "lost": 2}
    assert stats.accounting(10, 0, 10, 10)["lost"] == 0


def test_us_per_msg():
    assert stats.us_per_msg(2.0, 1_000_000) == 2.0
    assert stats.us_per_msg(None, 10) is None
    assert stats.us_per_msg(1.0, 0) is None


def test_ratios_walk_numbers_and_skip_the_rest():
    new = {"throughput_msgs_per_s": 200.0, "lost": 0, "latency_ms": {"p50": 10.0}, "workers": [{"cpu_s": 3.0}],
           "timeline": [{"t": 1}], "sink": "jetsink", "config": {"workers": 4}}
    old = {"throughput_msgs_per_s": 100.0, "lost": 0, "latency_ms": {"p50": 20.0}, "workers": [{"cpu_s": 2.0}],
           "timeline": [{"t": 2}], "sink": "jetsink", "config": {"workers": 2}}
    r = stats.ratios(new, old)
    assert r == {"throughput_msgs_per_s": 2.0, "lost": None, "latency_ms.p50": 0.5, "workers.0.cpu_s": 1.5}


def _figures(sink: str = "jetsink") -> dict:
    return {
        "sink": sink,
        "published": 10,
        "inserted": 10,
        "unique_inserted": 10,
        "dlq": 0,
        "duplicates": 0,
        "lost": 0,
        "throughput_msgs_per_s": 5.0,
        "window_s": 2.0,
        "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None, "samples": 0},
        "workers": [
            {
                "slot": 0,
                "pid": 1,
                "cpu_s": 1.0,
                "cpu_pct_avg": 50.0,
                "rss_peak_mb": 80.0,
                "profiles": {"cpu_svg": None, "cpu_speedscope": None, "memray_html": None, "memray_peak_mb": None},
            }
        ],
        "supervisor": {"cpu_s": 0.1, "rss_peak_mb": 50.0},
        "servers": {"nats_cpu_s": 0.5, "clickhouse_cpu_s": 0.4, "nats_profile": None},
        "cpu_us_per_msg": {
            "sink": 1.0,
            "workers": 1.0,
            "supervisor": 0.0,
            "nats": 1.0,
            "clickhouse": 1.0,
            "total": 3.0,
        },
        "timeline": [],
    }


def test_schema_accepts_a_complete_result_and_names_what_is_wrong():
    results = {"results_version": 1, "started_at": "x", "mode": "preload", **_figures(), "publisher": {}, "config": {},
               "versions": {}, "machine": {}, "settings": {}, "notes": []}
    assert stats.schema_problems(results) == []
    results["baseline"] = _figures("naive")
    results["speedup"] = 3.0
    assert stats.schema_problems(results) == []
    del results["lost"]
    results["latency_ms"]["p50"] = "fast"
    results["baseline"]["workers"][0]["cpu_s"] = None
    problems = stats.schema_problems(results)
    assert "lost: missing" in problems
    assert any(p.startswith("latency_ms.p50: str") for p in problems)
    assert any(p.startswith("baseline.workers[0].cpu_s") for p in problems)


def test_sweep_values_parse():
    assert _parse_sweep("workers=1,2,4") == ("workers", [1, 2, 4])
    assert _parse_sweep("rate=1000,2000.5") == ("rate", [1000.0, 2000.5])
    with pytest.raises(ValueError):
        _parse_sweep("partitions=1,2")
    with pytest.raises(ValueError):
        _parse_sweep("workers=a,b")
