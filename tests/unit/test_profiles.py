"""supervisor/profiles.py: base64 profiles extracted from logs, never outside the target folder."""

from __future__ import annotations

import base64
import gzip
import json

from supervisor import profiles

# -- traceparent ---------------------------------------------------------------------


def test_extract_decodes_plain_base64_and_never_writes_outside_the_directory(tmp_path):
    line = json.dumps({"profile_name": "../../etc/x.svg", "profile_b64": base64.b64encode(b"<svg/>").decode()})
    gz = json.dumps(
        {
            "profile_name": "a.json",
            "profile_encoding": "gzip+base64",
            "profile_b64": base64.b64encode(gzip.compress(b"{}")).decode(),
        }
    )
    assert list(profiles.logged_profiles(iter([line, gz]))) == [("x.svg", b"<svg/>"), ("a.json", b"{}")]
