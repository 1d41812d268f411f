"""supervisor/embedded_nats.py: the config file that carries the account's subject mappings."""

from __future__ import annotations

from supervisor import embedded_nats


def test_written_mappings_read_back_what_was_written(tmp_path):
    assert embedded_nats.written_mappings(tmp_path) is None  # no file: a server started without one
    mappings = {"events.*": "events.{{partition(8,1)}}.{{wildcard(1)}}", "a.*.*": "a.{{wildcard(2)}}.{{wildcard(1)}}"}
    cluster = 'server_name: "n0"\ncluster {\n  name: "c"\n  listen: "127.0.0.1:4248"\n  routes: ["nats://x:1"]\n}\n'
    path = embedded_nats.write_mappings(tmp_path, mappings, cluster)
    text = path.read_text()
    assert text.index("server_name") < text.index("mappings {")  # the node's settings, then its mappings
    assert embedded_nats.written_mappings(tmp_path) == mappings  # not the cluster block's lines
    embedded_nats.write_mappings(tmp_path, {})
    assert embedded_nats.written_mappings(tmp_path) == {}
