"""A bench CPU profile: py-spy's collapsed stacks -> speedscope JSON, SVG and a top-frames table.

The conversion itself is the supervisor's (supervisor/flamegraph.py, also used for the
periodic profiles), so a bench flame graph and a production one look the same. What is
bench's own is the table of the frames with the most self time, which results.json
carries so that two runs can be compared without opening a browser.
"""

from __future__ import annotations

import orjson

from supervisor import flamegraph


def convert(raw_text: str, name: str, rate_hz: int) -> tuple[bytes, str, int]:
    """Collapsed text -> (speedscope JSON bytes, SVG text, sample count)."""
    stacks = flamegraph.parse_collapsed(raw_text)
    speedscope = flamegraph.to_speedscope(stacks, name, rate_hz)
    return orjson.dumps(speedscope), flamegraph.to_svg(stacks, name), sum(c for _, c in stacks)


def top_functions(raw_text: str, limit: int = 15) -> list[dict]:
    """The frames with the most self time: [{frame, self_pct, total_pct}], largest first.

    self_pct: share of samples in which the frame was the innermost one (where the CPU
    was); total_pct: share of samples in which it was anywhere on the stack.
    """
    stacks = flamegraph.parse_collapsed(raw_text)
    total = sum(c for _, c in stacks) or 1
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    for stack, count in stacks:
        if stack:
            self_counts[stack[-1]] = self_counts.get(stack[-1], 0) + count
        for frame in set(stack):
            total_counts[frame] = total_counts.get(frame, 0) + count
    ranked = sorted(self_counts.items(), key=lambda kv: -kv[1])[:limit]
    return [
        {"frame": f, "self_pct": round(100.0 * c / total, 2), "total_pct": round(100.0 * total_counts[f] / total, 2)}
        for f, c in ranked
    ]
