"""What a person looks at: the summary table on the terminal and report.html.

report.html is self-contained (no scripts, no network): the charts are SVG drawn here,
the CPU flame graphs are inlined, memray's HTML flame graphs are linked (they are large).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Iterable

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


# ----------------------------------------------------------------- terminal table


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, jetsink, naive) rows of the summary table; naive is '' without a baseline."""
    base = results.get("baseline") or {}

    def fmt(v: Any, unit: str = "") -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.1f}{unit}"
        if isinstance(v, int):
            return f"{v:,}{unit}"
        return f"{v}{unit}"

    def row(label: str, get: Any, unit: str = "") -> tuple[str, str, str]:
        return label, fmt(get(results), unit), fmt(get(base), unit) if base else ""

    lat = lambda q: (lambda r: (r.get("latency_ms") or {}).get(q))  # noqa: E731
    cpu = lambda k: (lambda r: (r.get("cpu_us_per_msg") or {}).get(k))  # noqa: E731
    rows = [
        row("published", lambda r: r.get("published")),
        row("inserted (rows)", lambda r: r.get("inserted")),
        row("dead-lettered", lambda r: r.get("dlq")),
        row("duplicates", lambda r: r.get("duplicates")),
        row("lost", lambda r: r.get("lost")),
        row("throughput", lambda r: r.get("throughput_msgs_per_s"), " msg/s"),
        row("measured window", lambda r: r.get("window_s"), " s"),
        row("latency p50", lat("p50"), " ms"),
        row("latency p95", lat("p95"), " ms"),
        row("latency p99", lat("p99"), " ms"),
        row("cpu/msg sink", cpu("sink"), " us"),
        row("cpu/msg workers", cpu("workers"), " us"),
        row("cpu/msg supervisor", cpu("supervisor"), " us"),
        row("cpu/msg nats-server", cpu("nats"), " us"),
        row("cpu/msg clickhouse", cpu("clickhouse"), " us"),
        row("cpu/msg all", cpu("total"), " us"),
    ]
    for w in results.get("workers") or []:
        rows.append((f"worker {w['slot']} cpu / rss peak", f"{w['cpu_s']:.1f} s / {w['rss_peak_mb']:.0f} MB", ""))
    for w in base.get("workers") or []:
        rows.append(("naive cpu / rss peak", "", f"{w['cpu_s']:.1f} s / {w['rss_peak_mb']:.0f} MB"))
    if results.get("chaos"):
        c = results["chaos"]
        kills = c.get("kills") or [c]
        for k in kills:
            node = f" of {k['node']}" if k.get("node") else ""
            rows.append(("chaos", f"{k['kind']}{node} at {k['at']:.0%} (t={fmt(k.get('fired_at_s'))} s)", ""))
            if "stall_s" in k:
                rows.append(("  longest stall / recovery", f"{fmt(k['stall_s'], ' s')} / {fmt(k['recovery_s'], ' s')}",
                             ""))
        rows.append(("recovery (rate back to 80%)", fmt(results.get("recovery_s"), " s"), ""))
        rows.append(("skipped as already stored", fmt(results.get("skipped_duplicates")), ""))
    if "worker_deaths" in results:
        rows.append(("worker deaths", fmt(results["worker_deaths"]), ""))
    if results.get("speedup") is not None:
        rows.append(("speedup (jetsink / naive)", f"{results['speedup']:.2f}x", ""))
    return rows


def clickhouse_cluster_lines(results: dict[str, Any]) -> list[str]:
    """Rows per shard and per replica of a --clickhouse-cluster run (nothing otherwise)."""
    c = results.get("clickhouse_cluster")
    if not c:
        return []
    shards = ", ".join(f"{k} {v}" for k, v in c["rows_per_shard"].items())
    replicas = ", ".join(f"{k} {v}" for k, v in c["rows_per_replica"].items())
    return [f"clickhouse cluster {c['layout']}: rows per shard {shards}; per replica {replicas}"]


def summary_table(results: dict[str, Any]) -> str:
    rows = summary_rows(results)
    has_base = bool(results.get("baseline"))
    head = ("metric", results.get("sink", "jetsink"), "naive" if has_base else "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = []
    for i, r in enumerate([head, *rows]):
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1])] + ([r[2].rjust(widths[2])] if has_base else [])
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths[: 3 if has_base else 2]))
    return "\n".join(lines)


def where_cpu_went(figures: dict[str, Any], top: int = 5) -> list[str]:
    """Lines naming the largest parts of the workers' and nats-server's CPU per message,
    from the run's profiles ([] when it recorded none)."""
    lines = []
    cpu = figures.get("cpu_us_per_msg") or {}
    weighted: dict[str, float] = {}
    samples = 0
    for w in figures.get("workers") or []:
        prof = w.get("profiles") or {}
        n = prof.get("samples") or 0
        samples += n
        for p in prof.get("parts") or []:
            weighted[p["part"]] = weighted.get(p["part"], 0.0) + p["pct"] * n
    parts = sorted(((k, v / samples) for k, v in weighted.items()), key=lambda kv: -kv[1]) if samples else []
    nats = ((figures.get("servers") or {}).get("nats_profile") or {}).get("parts") or []
    for label, us, shares in (
        ("workers", cpu.get("workers"), parts),
        ("nats-server", cpu.get("nats"), [(p["part"], p["pct"]) for p in nats]),
    ):
        if not shares:
            continue
        text = ", ".join(
            f"{name} {pct:.0f}%" + (f" ({us * pct / 100:.1f} us)" if us else "") for name, pct in shares[:top]
        )
        lines.append(f"{label}" + (f" ({us:.1f} us/msg)" if us else "") + f": {text}")
    return lines


def repeat_rows(done: list[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """repeat.json: per run of `--repeat`, what it lost and stored twice, its worker deaths and each kill."""
    return [{
        "run": run,
        "lost": r.get("lost"),
        "duplicates": r.get("duplicates"),
        "worker_deaths": r.get("worker_deaths"),
        "throughput_msgs_per_s": r.get("throughput_msgs_per_s"),
        "kills": [{key: k.get(key) for key in ("kind", "node", "fired_at_s", "stall_s", "no_rows_s", "recovery_s")}
                  for k in (r.get("chaos") or {}).get("kills") or []],
        "results": f"run-{run}/results.json",
    } for run, r in done]


def repeat_table(rows: list[dict[str, Any]]) -> str:
    """The summary of a `--repeat` series, one line per run."""
    lines = [f"{'run':>3} {'lost':>6} {'dup':>8} {'deaths':>6} {'msg/s':>9}  kills (node: longest stall, recovery)"]
    for r in rows:
        kills = "; ".join(f"{k['kind']} {k['node'] or '?'}: {_num(k['stall_s'])} s, {_num(k['recovery_s'])} s"
                          if k["fired_at_s"] is not None else f"{k['kind']}: did not fire" for k in r["kills"])
        lines.append(f"{r['run']:>3} {_num(r['lost']):>6} {_num(r['duplicates']):>8} {_num(r['worker_deaths']):>6} "
                     f"{_num(r['throughput_msgs_per_s']):>9}  {kills or '-'}")
    bad = [r["run"] for r in rows if r["lost"] or r["duplicates"]]
    lines.append(f"{len(rows)} runs: " + (f"runs {bad} lost or stored twice" if bad else "nothing lost, nothing twice"))
    return "\n".join(lines)


def compare_table(ratios: dict[str, float | None], new: dict[str, Any], old: dict[str, Any]) -> str:
    lines = [f"{'metric':<48} {'old':>14} {'new':>14} {'new/old':>9}"]
    for key, ratio in ratios.items():
        a, b = _dig(new, key), _dig(old, key)
        lines.append(f"{key:<48} {_num(b):>14} {_num(a):>14} {('-' if ratio is None else f'{ratio:.3f}'):>9}")
    return "\n".join(lines)


def _dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(data, list):
            data = data[int(part)] if part.isdigit() and int(part) < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-"


# --------------------------------------------------------------------- SVG charts


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               width: int = 760, height: int = 260, marks: Iterable[float] = (),
               events: Iterable[tuple[float, str]] = ()) -> str:
    """A multi-series line chart as inline SVG; `events` are labelled red marks (a chaos fault)."""
    left, right, top, bottom = 64, 140, 28, 36
    pts = [p for s in series.values() for p in s]
    if not pts:
        return f"<p><em>{escape(title)}: no data</em></p>"
    x_max = max(max(p[0] for p in pts), 1e-9)
    y_max = max(max(p[1] for p in pts), 1e-9) * 1.08
    pw, ph = width - left - right, height - top - bottom

    def X(x: float) -> float:
        return left + pw * x / x_max

    def Y(y: float) -> float:
        return top + ph * (1 - y / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(5):
        yv = y_max * i / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(yv):.1f}" y2="{Y(yv):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{Y(yv) + 4:.1f}" text-anchor="end">{_short(yv)}</text>')
    for i in range(6):
        xv = x_max * i / 5
        out.append(f'<text x="{X(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{_short(xv)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for m in marks:
        out.append(
            f'<line x1="{X(m):.1f}" x2="{X(m):.1f}" y1="{top}" y2="{top + ph}" stroke="#aaa" stroke-dasharray="4 3"/>'
        )
    for x, text in events:
        out.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{top}" y2="{top + ph}" '
                   'stroke="#d62728" stroke-width="1.4"/>')
        out.append(f'<text x="{X(x) + 3:.1f}" y="{top + 11}" fill="#d62728">{escape(text)}</text>')
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        out.append(f'<rect x="{left + pw + 10}" y="{top + 14 * n}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 24}" y="{top + 14 * n + 9}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(title: str, bars: list[tuple[str, float]], y_label: str, width: int = 760, height: int = 240) -> str:
    left, right, top, bottom = 64, 20, 28, 40
    if not bars:
        return f"<p><em>{escape(title)}: no data</em></p>"
    y_max = max(max(v for _, v in bars), 1e-9) * 1.1
    pw, ph = width - left - right, height - top - bottom
    bw = pw / len(bars)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
        f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    for i in range(5):
        yv = y_max * i / 4
        y = top + ph * (1 - yv / y_max)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_short(yv)}</text>')
    for i, (label, v) in enumerate(bars):
        h = ph * v / y_max
        x = left + i * bw
        out.append(
            f'<rect x="{x + bw * 0.1:.1f}" y="{top + ph - h:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {v:,.1f}</title></rect>'
        )
        if len(bars) <= 16 or i % max(1, len(bars) // 8) == 0:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph + 14}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _short(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


# -------------------------------------------------------------------- report.html


def _chaos_events(figures: dict[str, Any]) -> list[tuple[float, str]]:
    """The fault of a --chaos run and when throughput was back, as chart marks."""
    c = figures.get("chaos") or {}
    events = []
    for k in c.get("kills") or [c]:
        if k.get("fired_at_s") is None:
            continue
        events.append((k["fired_at_s"], k["kind"]))
        if k.get("recovery_s") is not None:
            events.append((k["fired_at_s"] + k["recovery_s"], f"back in {k['recovery_s']:.1f} s"))
    return events


def _charts_for(figures: dict[str, Any], label: str) -> list[str]:
    tl = figures.get("timeline") or []
    parts = []
    win = [p["t"] for p in tl if p.get("in_window")]
    marks = (win[0], win[-1]) if win else ()
    events = _chaos_events(figures)
    parts.append(line_chart(f"{label}: throughput over time", {
        "inserted/s": [(p["t"], p.get("rate", 0.0)) for p in tl],
    }, "seconds", "rows/s", marks=marks, events=events))
    parts.append(line_chart(f"{label}: published, inserted, lag", {
        "published": [(p["t"], p["published"]) for p in tl],
        "inserted": [(p["t"], p["inserted"]) for p in tl],
        "lag": [(p["t"], p["lag"]) for p in tl],
    }, "seconds", "messages", marks=marks, events=events))
    names = sorted({n for p in tl for n in p.get("cpu_pct", {})})
    parts.append(line_chart(f"{label}: CPU % per process (100% = one core)", {
        n: [(p["t"], p["cpu_pct"].get(n, 0.0)) for p in tl if n in p.get("cpu_pct", {})] for n in names
    }, "seconds", "CPU %", marks=marks, events=events))
    parts.append(
        line_chart(
            f"{label}: RSS per process",
            {
                n: [(p["t"], p["rss_mb"].get(n, 0.0)) for p in tl if n in p.get("rss_mb", {})]
                for n in names
                if n not in ("clickhouse",)
            },
            "seconds",
            "MB",
            marks=marks,
            events=events,
        )
    )
    hist = (figures.get("latency_ms") or {}).get("histogram") or []
    if hist:
        parts.append(bar_chart(f"{label}: publish-to-insert latency (sampled messages)",
                               [(f"{h['lo']:.0f}", float(h["count"])) for h in hist], "messages"))
    else:
        method = (figures.get("latency_ms") or {}).get("method")
        parts.append(f"<p>Latency: {escape(str(method or 'not measured'))}.</p>")
    return parts


def _flames(figures: dict[str, Any], out_dir: Path) -> list[str]:
    parts = []
    for w in figures.get("workers") or []:
        prof = w.get("profiles") or {}
        name = (
            f"{figures.get('sink', 'jetsink')} "
            f"{'worker ' + str(w['slot']) if figures.get('sink') != 'naive' else 'process'}"
        )
        links = []
        if prof.get("cpu_speedscope"):
            links.append(f'<a href="{escape(prof["cpu_speedscope"])}">speedscope JSON</a> (open at speedscope.app)')
        if prof.get("memray_html"):
            peak = prof.get("memray_peak_mb")
            links.append(
                f'<a href="{escape(prof["memray_html"])}">memray flame graph</a>'
                + (f" (peak {peak} MB)" if peak is not None else "")
            )
        parts.append(f"<h3>{escape(name)} (pid {w['pid']}): {w['cpu_s']} CPU s, RSS peak {w['rss_peak_mb']} MB</h3>")
        parts.append("<p>" + " &middot; ".join(links) + "</p>" if links else "<p>no profiles</p>")
        svg_rel = prof.get("cpu_svg")
        if svg_rel and (out_dir / svg_rel).exists():
            svg = (out_dir / svg_rel).read_text()
            parts.append(f'<div class="flame">{svg}</div>')
        if prof.get("parts"):
            parts.append(_parts_table("where the worker's CPU went", prof["parts"]))
        top = prof.get("top") or []
        if top:
            parts.append(
                "<table><tr><th>frame (self time)</th><th>self %</th><th>total %</th></tr>"
                + "".join(
                    f"<tr><td><code>{escape(t['frame'])}</code></td><td>{t['self_pct']}</td><td>{t['total_pct']}</td></tr>"
                    for t in top[:10]
                )
                + "</table>"
            )
    servers = figures.get("servers") or {}
    nats = servers.get("nats_profile")
    if nats:
        parts.append(
            f"<h3>nats-server (Go CPU profile, {nats.get('samples', 0)} samples): "
            f"{servers.get('nats_cpu_s')} CPU s</h3>"
        )
        if nats.get("error"):
            parts.append(f"<p>{escape(str(nats['error']))}</p>")
        if nats.get("parts"):
            parts.append(_parts_table("where nats-server's CPU went", nats["parts"]))
        svg_rel = nats.get("cpu_svg")
        if svg_rel and (out_dir / svg_rel).exists():
            parts.append(f'<div class="flame">{(out_dir / svg_rel).read_text()}</div>')
        if nats.get("cpu_speedscope"):
            parts.append(f'<p><a href="{escape(nats["cpu_speedscope"])}">speedscope JSON</a></p>')
    return parts


def _parts_table(title: str, shares: list[dict]) -> str:
    return f"<table><tr><th>{escape(title)}</th><th>%</th></tr>" + "".join(
        f"<tr><td>{escape(p['part'])}</td><td>{p['pct']}</td></tr>" for p in shares
    ) + "</table>"


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """report.html beside results.json."""
    rows = summary_rows(results)
    has_base = bool(results.get("baseline"))
    table = "<table><tr><th>metric</th><th>%s</th>%s</tr>%s</table>" % (
        escape(results.get("sink", "jetsink")),
        "<th>naive</th>" if has_base else "",
        "".join(
            f"<tr><td>{escape(a)}</td><td>{escape(b)}</td>{f'<td>{escape(c)}</td>' if has_base else ''}</tr>"
            for a, b, c in rows
        ),
    )
    v, m = results.get("versions", {}), results.get("machine", {})
    body = [
        f"<h1>jetsink bench {escape(results.get('started_at', ''))}</h1>",
        f"<p>mode <b>{escape(results.get('mode', ''))}</b>; {results.get('published', 0):,} messages of "
        f"~{results.get('publisher', {}).get('payload_bytes')} bytes; {len(results.get('workers') or [])} worker(s). "
        f"Machine: {m.get('cores')} cores, {escape(str(m.get('cpu_model')))}, {m.get('memory_gb')} GB. "
        f"Python {escape(str(v.get('python')))}, nats-server {escape(str(v.get('nats_server')))}, "
        f"ClickHouse {escape(str(v.get('clickhouse')))}, jetsink {escape(str(v.get('jetsink')))}.</p>",
        table,
    ]
    for note in results.get("notes") or []:
        body.append(f"<p class=note>{escape(note)}</p>")
    body.append("<h2>Charts</h2><p>Dashed lines: the measured window.</p>")
    body += _charts_for(results, results.get("sink", "jetsink"))
    if has_base:
        body += _charts_for(results["baseline"], "naive (baseline)")
    body.append("<h2>CPU flame graphs</h2><p>Width is the share of CPU samples (py-spy, 100 Hz, per thread; "
                "idle time excluded). Hover a frame for its sample count.</p>")
    body += _flames(results, out_dir)
    if has_base:
        body += _flames(results["baseline"], out_dir)
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>jetsink bench {escape(results.get('started_at', ''))}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; max-width: 1260px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.flame {{ overflow-x: auto; border: 1px solid #ddd; }}
.note {{ color: #a40; }}
</style></head><body>
{chr(10).join(body)}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(html)
    return path


def write_sweep_report(param: str, runs: list[tuple[Any, dict[str, Any]]], out_dir: Path) -> Path:
    """sweep.html: throughput (and sink CPU/msg) against the swept parameter."""
    bars = [(f"{param}={value}", float(r.get("throughput_msgs_per_s") or 0.0)) for value, r in runs]
    cpu = [(f"{param}={value}", float((r.get("cpu_us_per_msg") or {}).get("sink") or 0.0)) for value, r in runs]
    rows = "".join(
        f"<tr><td>{escape(str(value))}</td><td>{(r.get('throughput_msgs_per_s') or 0):,.0f}</td>"
        f"<td>{(r.get('cpu_us_per_msg') or {}).get('sink')}</td><td>{r.get('lost')}</td>"
        f"<td><a href=\"{escape(param)}-{escape(str(value))}/report.html\">report</a></td></tr>"
        for value, r in runs
    )
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>jetsink bench sweep</title>
<style>body {{ font-family: sans-serif; margin: 24px; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
table {{ border-collapse: collapse; }}</style></head><body>
<h1>Sweep over {escape(param)}</h1>
{bar_chart(f"throughput against {param}", bars, "msgs/s")}
{bar_chart(f"sink CPU per message against {param}", cpu, "us/msg")}
<table><tr><th>{escape(param)}</th><th>msgs/s</th><th>sink us/msg</th><th>lost</th><th></th></tr>{rows}</table>
</body></html>
"""
    path = out_dir / "sweep.html"
    path.write_text(html)
    return path
