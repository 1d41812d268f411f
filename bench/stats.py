"""Pure arithmetic of a bench run: percentiles, per-message CPU, ratios, the results schema.

Nothing here touches a server or a process, so it is unit-tested directly.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping

RESULTS_VERSION = 1


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (a whole number 0..100), linear interpolation between closest ranks; None if empty.

    statistics.quantiles' "inclusive" method is that interpolation (numpy's default, R's type 7):
    the minimum is the 0th percentile and the maximum the 100th.
    """
    data = sorted(values)
    if not data:
        return None
    if not 0 <= q <= 100 or q != int(q):
        raise ValueError(f"percentile must be a whole number within 0..100, got {q}")
    if q == 0 or len(data) == 1:  # quantiles() gives the 99 cut points between, and needs two values
        return data[0]
    if q == 100:
        return data[-1]
    return statistics.quantiles(data, n=100, method="inclusive")[int(q) - 1]


def latency_summary(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max and the sample count of publish-to-insert latencies."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "p50": r(percentile(latencies_ms, 50)),
        "p95": r(percentile(latencies_ms, 95)),
        "p99": r(percentile(latencies_ms, 99)),
        "max": r(max(latencies_ms) if latencies_ms else None),
        "samples": len(latencies_ms),
    }


def histogram(values: list[float], bins: int = 30) -> list[dict[str, float]]:
    """Equal-width bins [{lo, hi, count}] over the values' range; [] if no values."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [{"lo": lo, "hi": hi, "count": len(values)}]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [
        {"lo": round(lo + i * width, 2), "hi": round(lo + (i + 1) * width, 2), "count": c} for i, c in enumerate(counts)
    ]


def us_per_msg(cpu_s: float | None, messages: int) -> float | None:
    """CPU microseconds per message; None when there is nothing to divide."""
    if cpu_s is None or messages <= 0:
        return None
    return round(cpu_s * 1e6 / messages, 2)


def accounting(published: int, dlq: int, rows: int, unique_ids: int) -> dict[str, int]:
    """Where every published message went.

    rows: count() of the table; unique_ids: uniqExact(event_id). A message is lost when it
    is neither in the table nor dead-lettered; duplicates are extra rows of an event id.
    """
    return {
        "published": published,
        "inserted": rows,
        "unique_inserted": unique_ids,
        "dlq": dlq,
        "duplicates": rows - unique_ids,
        "lost": max(0, published - dlq - unique_ids),
    }


def ratios(new: Mapping[str, Any], old: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """new/old for every numeric leaf both have (dotted keys); None where old is 0.

    Lists of per-worker objects are compared by position ("workers.0.cpu_s"); the
    timeline and the config are left out: they are not figures.
    """
    out: dict[str, float | None] = {}
    for key, value in new.items():
        if key in (
            "timeline",
            "config",
            "versions",
            "machine",
            "histogram",
            "top_functions",
            "notes",
            "profiles",
            "nats_profile",
        ):
            continue
        name = f"{prefix}{key}"
        other = old.get(key) if isinstance(old, Mapping) else None
        if isinstance(value, bool) or isinstance(other, bool):
            continue
        if isinstance(value, (int, float)) and isinstance(other, (int, float)):
            out[name] = None if other == 0 else round(value / other, 3)
        elif isinstance(value, Mapping) and isinstance(other, Mapping):
            out.update(ratios(value, other, name + "."))
        elif isinstance(value, list) and isinstance(other, list):
            for i, (a, b) in enumerate(zip(value, other, strict=False)):
                if isinstance(a, Mapping) and isinstance(b, Mapping):
                    out.update(ratios(a, b, f"{name}.{i}."))
    return out


# ------------------------------------------------------------------ results schema

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))

# field -> allowed types; nested dicts are specs of their own. The documented contract of
# results.json (docs/benchmarks.md); a run that writes anything else fails its own check.
FIGURES_SCHEMA: dict[str, Any] = {
    "sink": str,
    "published": int,
    "inserted": int,
    "unique_inserted": int,
    "dlq": int,
    "duplicates": int,
    "lost": int,
    "throughput_msgs_per_s": _OPT_NUM,
    "window_s": _OPT_NUM,
    "latency_ms": {"p50": _OPT_NUM, "p95": _OPT_NUM, "p99": _OPT_NUM, "max": _OPT_NUM, "samples": int},
    "workers": list,
    "supervisor": {"cpu_s": _OPT_NUM, "rss_peak_mb": _OPT_NUM},
    "servers": {"nats_cpu_s": _OPT_NUM, "clickhouse_cpu_s": _OPT_NUM, "nats_profile": (dict, type(None))},
    "cpu_us_per_msg": {
        "sink": _OPT_NUM,
        "workers": _OPT_NUM,
        "supervisor": _OPT_NUM,
        "nats": _OPT_NUM,
        "clickhouse": _OPT_NUM,
        "total": _OPT_NUM,
    },
    "timeline": list,
}

WORKER_SCHEMA: dict[str, Any] = {
    "slot": int,
    "pid": int,
    "cpu_s": _NUM,
    "cpu_pct_avg": _OPT_NUM,
    "rss_peak_mb": _NUM,
    "profiles": {
        "cpu_svg": (str, type(None)),
        "cpu_speedscope": (str, type(None)),
        "memray_html": (str, type(None)),
        "memray_peak_mb": _OPT_NUM,
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "results_version": int,
    "started_at": str,
    "mode": str,
    **FIGURES_SCHEMA,
    "publisher": dict,
    "config": dict,
    "versions": dict,
    "machine": dict,
    "settings": dict,
    "notes": list,
}


def schema_problems(results: Mapping[str, Any]) -> list[str]:
    """Every way `results` departs from the documented schema ([] when it conforms)."""
    problems = _check(results, RESULTS_SCHEMA, "")
    for i, w in enumerate(results.get("workers") or []):
        problems += _check(w, WORKER_SCHEMA, f"workers[{i}].")
    if "baseline" in results:
        base = results["baseline"]
        problems += _check(base, FIGURES_SCHEMA, "baseline.")
        for i, w in enumerate(base.get("workers") or []):
            problems += _check(w, WORKER_SCHEMA, f"baseline.workers[{i}].")
        if not isinstance(results.get("speedup"), _OPT_NUM):
            problems.append("speedup: missing or not a number")
    return problems


def _check(value: Any, spec: Mapping[str, Any], at: str) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"{at.rstrip('.') or 'results'}: expected an object"]
    problems = []
    for key, want in spec.items():
        if key not in value:
            problems.append(f"{at}{key}: missing")
        elif isinstance(want, dict):
            problems += _check(value[key], want, f"{at}{key}.")
        else:
            v = value[key]
            bad = isinstance(v, bool) or not isinstance(v, want)
            if bad:
                problems.append(f"{at}{key}: {type(v).__name__} is not {_names(want)}")
    return problems


def _names(want: Any) -> str:
    kinds = want if isinstance(want, tuple) else (want,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
