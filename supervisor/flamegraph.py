"""CPU profiles from collapsed stacks: a speedscope JSON file and an SVG flame graph.

py-spy writes one output format per run; it records `--format raw` (collapsed stacks:
`outer (file:line);inner (file:line) <count>` per line) and both files are made from
that here, so one 30 s window gives both:

- speedscope JSON (https://www.speedscope.app/file-format-schema.json), a "sampled"
  profile whose weights are seconds; opens in speedscope.app and other tools;
- an SVG flame graph in the classic layout (callers below, callees above, width =
  share of samples), each box titled with its frame and sample count; any browser.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html import escape as _html_escape

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*):(?P<line>\d+)\)$")
# Characters XML 1.0 does not allow even escaped; a torn py-spy sample (non-blocking
# mode reads a running process) can put them in a frame name.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape(text: str) -> str:
    """Text for an SVG: markup escaped, characters XML cannot hold shown as U+FFFD."""
    return _html_escape(_NOT_XML.sub("\ufffd", text))


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """[(frames outermost first, sample count)] from collapsed-stack text; bad lines are skipped."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def _frame(text: str) -> dict:
    m = _FRAME.match(text)
    if not m:
        return {"name": text}
    return {"name": m["name"], "file": m["file"], "line": int(m["line"])}


def to_speedscope(stacks: list[tuple[list[str], int]], name: str, rate_hz: int) -> dict:
    """A speedscope document with one sampled profile (weights in seconds)."""
    index: dict[str, int] = {}
    frames: list[dict] = []
    samples: list[list[int]] = []
    weights: list[float] = []
    for stack, count in stacks:
        ids = []
        for f in stack:
            if f not in index:
                index[f] = len(frames)
                frames.append(_frame(f))
            ids.append(index[f])
        samples.append(ids)
        weights.append(count / rate_hz)
    total = sum(weights)
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": [{
            "type": "sampled", "name": name, "unit": "seconds",
            "startValue": 0, "endValue": total, "samples": samples, "weights": weights,
        }],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "jetsink",
    }


@dataclass
class _Node:
    name: str
    value: int = 0
    children: dict[str, "_Node"] = field(default_factory=dict)


def _tree(stacks: list[tuple[list[str], int]]) -> _Node:
    root = _Node("all")
    for stack, count in stacks:
        node = root
        node.value += count
        for f in stack:
            node = node.children.setdefault(f, _Node(f))
            node.value += count
    return root


def _color(name: str) -> str:
    # Stable warm colours, as in flamegraph.pl: the same frame gets the same colour.
    h = hashlib.md5(name.encode()).digest()
    return f"rgb({205 + h[0] % 50},{h[1] % 230},{h[2] % 55})"


def to_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1200, row: int = 16) -> str:
    """An SVG flame graph of `stacks`."""
    root = _tree(stacks)
    depth = _depth(root)
    top = 36
    height = top + (depth + 1) * row + 10
    total = max(root.value, 1)
    scale = (width - 20) / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="Verdana, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="{width // 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.value * scale
        if w < 0.3:
            return  # too thin to see; its share is still in the parent's width
        y = height - 10 - (level + 1) * row
        label = f"{node.name} ({node.value} samples, {100.0 * node.value / total:.2f}%)"
        out.append(f'<g><title>{escape(label)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 1}" fill="{_color(node.name)}" rx="2"/>')
        chars = int(w / 7)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + row - 4}">{escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.value * scale

    draw(root, 10.0, 0)
    out.append("</svg>")
    return "\n".join(out)


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0) if node.children else 0
