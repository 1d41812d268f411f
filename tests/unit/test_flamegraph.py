"""supervisor/flamegraph.py: speedscope documents and SVG flame graphs from collapsed stacks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from supervisor import flamegraph

# -- traceparent ---------------------------------------------------------------------


COLLAPSED = (
    "main (app.py:10);work (app.py:20);parse (app.py:30) 30\n"
    "main (app.py:10);work (app.py:20) 10\n"
    "main (app.py:10);idle (<frozen x>:5) 5\n"
    "not a line\n"
)


def test_speedscope_document_follows_the_schema():
    stacks = flamegraph.parse_collapsed(COLLAPSED)
    assert len(stacks) == 3
    doc = flamegraph.to_speedscope(stacks, "w0", rate_hz=100)
    assert doc["$schema"] == flamegraph.SPEEDSCOPE_SCHEMA
    frames = doc["shared"]["frames"]
    assert frames[0] == {"name": "main", "file": "app.py", "line": 10}
    prof = doc["profiles"][0]
    assert prof["type"] == "sampled" and prof["unit"] == "seconds"
    assert prof["weights"] == [0.3, 0.1, 0.05] and prof["endValue"] == pytest.approx(0.45)
    assert [[frames[i]["name"] for i in s] for s in prof["samples"]][0] == ["main", "work", "parse"]


def test_svg_flame_graph_is_xml_with_a_box_per_frame():
    root = ET.fromstring(flamegraph.to_svg(flamegraph.parse_collapsed(COLLAPSED), "title <&>"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "all (45 samples, 100.00%)" in titles
    assert "work (app.py:20) (40 samples, 88.89%)" in titles


def test_svg_survives_a_torn_sample_with_control_characters():
    # py-spy in non-blocking mode can read a half-written frame: seen as " (\x01:-1101128832)".
    stacks = flamegraph.parse_collapsed("main (app.py:1);\x01bad\x1f (\x01:-1101128832) 1\nmain (app.py:1) 2\n")
    root = ET.fromstring(flamegraph.to_svg(stacks, "t"))
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any("\ufffdbad\ufffd" in t for t in titles)
