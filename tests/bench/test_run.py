"""`python -m bench` end to end: a small preloaded run with the naive baseline, on real servers
the bench starts itself. Asserts the accounting, the results.json schema and that the profiles
and the report exist and parse. No timing assertions: speed lives in the bench's own figures.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from bench import flame, stats
from supervisor import flamegraph

# Real servers and the real supervisor, like tests/integration/.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MESSAGES = 20_000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--messages", str(MESSAGES), "--preload", "--baseline", "--workers", "2",
         "--quiet", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    return proc, out


def test_exits_zero_and_prints_a_summary(run):
    proc, out = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "throughput" in proc.stdout and "speedup" in proc.stdout


def test_every_message_is_accounted_for(run):
    _, out = run
    r = orjson.loads((out / "results.json").read_bytes())
    for figures in (r, r["baseline"]):
        assert figures["published"] == MESSAGES
        assert figures["lost"] == 0
        assert figures["unique_inserted"] + figures["dlq"] == figures["published"]
        assert figures["inserted"] == figures["unique_inserted"] + figures["duplicates"]
    assert r["publisher"]["published"] == MESSAGES and r["publisher"]["refused"] == 0


def test_results_follow_the_documented_schema(run):
    _, out = run
    r = orjson.loads((out / "results.json").read_bytes())
    assert stats.schema_problems(r) == []
    assert [w["slot"] for w in r["workers"]] == [0, 1]
    assert r["throughput_msgs_per_s"] > 0 and r["baseline"]["throughput_msgs_per_s"] > 0
    assert r["speedup"] > 0
    assert r["cpu_us_per_msg"]["sink"] > 0 and r["cpu_us_per_msg"]["nats"] > 0 and r["cpu_us_per_msg"]["clickhouse"] > 0
    assert r["servers"]["nats_cpu_s"] > 0 and r["servers"]["clickhouse_cpu_s"] > 0
    assert r["versions"]["clickhouse"] and r["versions"]["nats_server"] and r["machine"]["cores"] >= 1
    assert r["config"]["workers"] == 2
    assert r["timeline"] and {"t", "inserted", "rate", "cpu_pct", "rss_mb"} <= set(r["timeline"][-1])


def test_profiles_exist_and_parse(run):
    _, out = run
    r = orjson.loads((out / "results.json").read_bytes())
    for w in r["workers"] + r["baseline"]["workers"]:
        prof = w["profiles"]
        doc = orjson.loads((out / prof["cpu_speedscope"]).read_bytes())
        assert doc["profiles"] and doc["shared"]["frames"]
        ET.parse(out / prof["cpu_svg"])
        assert abs(sum(p["pct"] for p in prof["parts"]) - 100) < 1
    # (A 20,000-message run gives each worker a few dozen samples: which parts show is chance.)
    known = {name for name, _ in flame.WORKER_PARTS} | {"other"}
    seen = {p["part"] for w in r["workers"] for p in w["profiles"]["parts"]}
    assert seen <= known and seen - {"other"}
    # nats-server's own CPU profile (Go's pprof), for both sinks' drains.
    for figures in (r, r["baseline"]):
        nats = figures["servers"]["nats_profile"]
        assert nats["error"] is None and nats["samples"] > 0
        assert abs(sum(p["pct"] for p in nats["parts"]) - 100) < 1
        stacks = flamegraph.parse_collapsed(
            (out / "profiles" / Path(nats["cpu_svg"]).name.replace(".svg", ".collapsed.txt")).read_text()
        )
        assert sum(c for _, c in stacks) == nats["samples"]
        assert any("(*consumer)." in f for frames, _ in stacks for f in frames)  # the server delivered to a consumer
        ET.parse(out / nats["cpu_svg"])
        assert orjson.loads((out / nats["cpu_speedscope"]).read_bytes())["profiles"]
    for w in r["workers"]:
        prof = w["profiles"]
        if prof["memray_html"] is None:  # only when this jetsink cannot make memory profiles
            assert any("memory profiles skipped" in n for n in r["notes"])
            continue
        assert (out / prof["memray_html"]).stat().st_size > 0
        assert prof["memray_peak_mb"] > 0


def test_report_has_charts_and_flame_graphs(run):
    _, out = run
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 6  # charts for both sinks + flame graphs
    assert "nats-server (Go CPU profile" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from the network


def test_compare_prints_ratios(run):
    _, out = run
    proc = subprocess.run([sys.executable, "-m", "bench", "--compare", str(out / "results.json"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "throughput_msgs_per_s" in proc.stdout and "1.000" in proc.stdout


@pytest.mark.parametrize("kind", ["kill-supervisor", "kill-nats"])
def test_chaos_kills_then_accounts_for_every_message(tmp_path, kind):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--messages", "60000", "--preload", "--workers", "2", "--no-profiles",
         "--chaos", kind, "--chaos-at", "0.3", "--quiet", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = orjson.loads((tmp_path / "results.json").read_bytes())
    assert r["chaos"]["kind"] == kind and r["chaos"]["fired_at_s"] is not None
    assert (r["lost"], r["duplicates"]) == (0, 0)
    assert isinstance(r["skipped_duplicates"], int) and "recovery_s" in r
    assert any(n.startswith("chaos: kill -9 of") for n in r["notes"])
    assert f">{kind}</text>" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("argv, says", [
    (["--chaos", "kill-stream-leader"], "needs --cluster 3"),
    (["--chaos", "kill-worker,kill-kv-leader"], "needs --cluster 3"),
    (["--cluster", "3", "--chaos", "kill-nats"], "kill-nats kills the bench's one nats-server"),
    (["--cluster", "3", "--chaos", "kill-stream-leader,kill-leaders"], "unknown kind 'kill-leaders'"),
    (["--cluster", "2"], "at least 3 nodes"),
    (["--repeat", "0"], "--repeat must be >= 1"),
])
def test_cluster_chaos_usage_errors_exit_2(argv, says):
    proc = subprocess.run([sys.executable, "-m", "bench", "--messages", "1000", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


def test_cluster_chaos_kills_the_stream_leader_and_accounts(tmp_path):
    # A fixed publish rate spreads the 20,000 events over ~10 s, so the kill comes mid-drain.
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--cluster", "3", "--chaos", "kill-stream-leader", "--messages", "20000",
         "--rate", "2000", "--workers", "2", "--no-profiles", "--quiet", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = orjson.loads((tmp_path / "results.json").read_bytes())
    assert stats.schema_problems(r) == []
    assert r["lost"] == 0
    # The lead is closing the causes of duplicates after elections (issue 22): reported, not yet asserted.
    assert isinstance(r["duplicates"], int) and isinstance(r["worker_deaths"], int)
    print(f"cluster kill-stream-leader: duplicates {r['duplicates']}, worker deaths {r['worker_deaths']}, "
          f"chaos {r['chaos']['kills']}")
    kill = r["chaos"]["kills"][0]
    assert kill["kind"] == "kill-stream-leader" and kill["node"] in {"n0", "n1", "n2"} and "stream" in kill["led"]
    assert kill["fired_at_s"] is not None and kill["restarted_s"] is not None and isinstance(kill["stall_s"], float)
    assert "recovery_s" in r and isinstance(r["skipped_duplicates"], int)
    assert r["versions"]["nats_cluster"]["replicas"] == {"stream": 3, "kv": 3, "consumers": 3}
    nodes = r["servers"]["nats_nodes"]
    assert [n["name"] for n in nodes] == ["n0", "n1", "n2"] and sum(n["restarts"] for n in nodes) == 1
    assert r["servers"]["nats_cpu_s"] == pytest.approx(sum(n["cpu_s"] for n in nodes), abs=0.01)
    assert len(r["config"]["nats"]["servers"]) == 3
