"""`python -m bench` live (no --preload) measures publish-to-insert latency on both stream layouts.

With stream_per_partition the sequence a PubAck names is the partition stream's: the bench finds each
sampled event in the partition stream the account's mapping sent its key to and times it against that
partition's consumer's ack floor. Real servers, started by the bench itself. No timing assertions: the
latency is there, its figures are the bench's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MESSAGES = 20_000


@pytest.mark.parametrize("layout", ["single_stream", "stream_per_partition"])
def test_a_live_run_measures_latency(layout, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--messages", str(MESSAGES), "--layout", layout, "--no-profiles", "--quiet",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = orjson.loads((tmp_path / "results.json").read_bytes())
    assert r["mode"] == "live" and r["config"]["pipelines"][0]["layout"] == layout
    assert r["published"] == MESSAGES and r["lost"] == 0
    latency = r["latency_ms"]
    sampled = MESSAGES // r["publisher"]["latency_sample_every"]
    # Each sampled event found where it was stored and seen acked (the bench polls the consumers on until
    # the last batches' acks are in).
    assert latency["samples"] == sampled, latency
    assert latency["method"] == "consumer ack floor polled after publish"
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert sum(b["count"] for b in latency["histogram"]) == latency["samples"]
