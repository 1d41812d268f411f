"""`python -m supervisor profiles extract LOGFILE -o DIR`: profiles logged base64 back into files.

With `observability.profiling.log_base64: true`, every CPU profile file is also logged
as one JSON line carrying `profile_name`, `profile_encoding` ("gzip+base64" or "base64")
and `profile_b64`, so a profile survives where only the logs are collected
(containers, journald). This command finds those lines and writes the files again.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
from pathlib import Path
from typing import Iterator


def add_parser(sub: argparse._SubParsersAction) -> None:
    profiles = sub.add_parser("profiles", help="work with CPU profiles written into the logs")
    actions = profiles.add_subparsers(dest="profiles_command", required=True)
    extract = actions.add_parser("extract", help="write the profiles logged base64 in LOGFILE into DIR")
    extract.add_argument("logfile", help="a JSON-lines log file, or - for stdin")
    extract.add_argument("-o", "--output", default=".", help="directory to write the profiles into (default: .)")
    extract.set_defaults(handler=run_extract)


def logged_profiles(lines: Iterator[str]) -> Iterator[tuple[str, bytes]]:
    """(file name, content) of every profile found in JSON log lines; other lines are skipped."""
    for line in lines:
        if '"profile_b64"' not in line:
            continue
        try:
            record = json.loads(line)
            name, data = record["profile_name"], base64.b64decode(record["profile_b64"], validate=True)
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("profile_encoding", "base64") == "gzip+base64":
            data = gzip.decompress(data)
        yield Path(name).name, data  # a name, never a path: the log must not choose where to write


def run_extract(args: argparse.Namespace) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        stream = sys.stdin if args.logfile == "-" else open(args.logfile, encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"jetsink: cannot read {args.logfile}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    count = 0
    with stream:
        for name, data in logged_profiles(stream):
            (out / name).write_bytes(data)
            print(out / name)
            count += 1
    if not count:
        print(
            f"jetsink: no logged profiles in {args.logfile} (is observability.profiling.log_base64 on?)",
            file=sys.stderr,
        )
        return 1
    return 0
