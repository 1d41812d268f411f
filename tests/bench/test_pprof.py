"""bench/pprof.py on a real nats-server CPU profile (a 4 s window of a 1M-message drain,
taken from /debug/pprof/profile of nats-server 2.15 during `python -m bench --preload`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bench import flame, pprof
from supervisor import flamegraph

DATA = Path(__file__).parent / "data" / "nats-server-drain.pprof.gz"


@pytest.fixture(scope="module")
def profile():
    return pprof.read(DATA.read_bytes())


def test_reads_the_samples_of_a_real_profile(profile):
    stacks, period = profile
    assert period == 10_000_000  # Go's CPU profiler: 100 Hz
    assert len(stacks) > 50
    assert all(count > 0 and frames for frames, count in stacks)
    # A 4 s window of a busy server: between one and ~2 cores' worth of 100 Hz samples.
    assert 100 <= sum(c for _, c in stacks) <= 800


def test_the_same_bytes_read_alike_gzipped_or_not(profile):
    assert pprof.read(gzip.decompress(DATA.read_bytes())) == profile


def test_stacks_run_from_the_outermost_frame_inwards(profile):
    stacks, _ = profile
    lookups = [frames for frames, _ in stacks if "server.(*fileStore).LoadNextMsg" in frames]
    assert lookups
    for frames in lookups:
        assert frames.index("server.(*consumer).getNextMsg") < frames.index("server.(*fileStore).LoadNextMsg")


def test_frames_are_fit_for_collapsed_stacks(profile):
    stacks, _ = profile
    frames = {f for fs, _ in stacks for f in fs}
    assert not any(";" in f or "github.com/nats-io/nats-server" in f for f in frames)
    assert "server/stree.(*SubjectTree[...]).Match" in frames  # generic type arguments left out
    text = pprof.to_collapsed(stacks)
    assert flamegraph.parse_collapsed(text) == stacks
    top = flame.top_functions(text)
    assert top and all(t["self_pct"] <= t["total_pct"] for t in top)


def test_breakdown_covers_every_sample_once(profile):
    stacks, _ = profile
    parts = pprof.breakdown(stacks)
    assert abs(sum(p["pct"] for p in parts) - 100) < 0.6
    assert len({p["part"] for p in parts}) == len(parts)
    names = [p["part"] for p in parts]
    # In a filtered consumer's drain the file store's subject-filtered lookup leads.
    assert names[0] == "message lookup (file store, subject filter)"
    assert "consumer state writes" in names


def test_the_first_matching_rule_wins():
    lookup = [
        "server.(*consumer).loopAndGatherMsgs",
        "server.(*consumer).getNextMsg",
        "server.(*fileStore).LoadNextMsg",
    ]
    deliver = ["server.(*consumer).loopAndGatherMsgs", "server.(*consumer).deliverMsg"]
    gc = ["runtime.gcBgMarkWorker", "runtime.gcDrain"]
    mixed = ["server.(*client).readLoop", "runtime.mallocgc"]
    assert pprof.breakdown([(lookup, 3), (deliver, 1), (gc, 4), (mixed, 2), (["main.main"], 0)]) == [
        {"part": "Go runtime (GC, scheduler)", "pct": 40.0},
        {"part": "message lookup (file store, subject filter)", "pct": 30.0},
        {"part": "client connections (read, route, write)", "pct": 20.0},
        {"part": "delivery to the client", "pct": 10.0},
    ]


def test_short_names():
    assert (
        pprof.short_name("github.com/nats-io/nats-server/v2/server.(*client).readLoop") == "server.(*client).readLoop"
    )
    assert pprof.short_name('x.(*T[go.shape.struct { A uint64 "j:\\"a\\""; B []int }]).M') == "x.(*T[...]).M"
    assert pprof.short_name("runtime.memmove") == "runtime.memmove"


@pytest.mark.parametrize("data", [b"", b"\x1f\x8b\x08\x00garbage", b"\x0a\xff", bytes([0x0F])])
def test_what_is_not_a_profile_is_refused(data):
    with pytest.raises(pprof.ProfileError):
        pprof.read(data)
