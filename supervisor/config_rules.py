"""The cross-key checks of config.yaml: what no single key can say (TLS pairs, embedded servers
on this host, a DLQ subject the pipeline would consume, streams owned once, a loopback admin
address). The walker (supervisor/config.py) runs `RULES[cls]` after a section's keys, and
`check_pipelines_together` over the list of pipelines.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from supervisor.config_problems import INVALID, At, Marker, ok
from workers.setting_types import subjects_overlap
from workers.settings import (
    AdminConfig,
    ClickHouseConfig,
    ColumnOverride,
    NatsConfig,
    Pipeline,
    ProfilingConfig,
    TLSConfig,
)

__all__ = ["RULES", "check_pipelines_together"]

# What no single key can say. Each runs after its section's keys were walked, on the values
# that passed (see ok), and reports at the key a user would change.

_LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _tls_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    if ok(v["cert_file"], v["key_file"]) and (v["cert_file"] is None) != (v["key_file"] is None):
        at.fail("cert_file and key_file must be given together")


def _nats_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    servers = v["servers"]
    if v["password"] is not None and v["user"] is None:
        (at / "user").fail("required when password_env or password_file is set")
    if v["embedded"] is True and ok(servers):
        # We start nats-server ourselves: one plain listener on this host.
        if len(servers) != 1:
            (at / "url").fail("embedded: true needs exactly one url (the local server to start)")
        elif urlsplit(servers[0]).scheme != "nats" or urlsplit(servers[0]).hostname not in _LOCAL_HOSTS:
            (at / "url").fail(f"embedded: true needs a nats://127.0.0.1 or nats://localhost url, got {servers[0]!r}")


def _clickhouse_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    if v["embedded"] is True and ok(v["host"]) and v["host"] not in _LOCAL_HOSTS:
        (at / "host").fail(f"embedded: true needs host 127.0.0.1 or localhost, got {v['host']!r}")
    if v["tls"] is not None and v["secure"] is False:
        (at / "tls").fail("only used with secure: true")
    given = raw if isinstance(raw, dict) else {}
    if "hosts" in given:
        for single in ("host", "port"):
            if single in given:
                (at / single).fail("give either hosts or host/port, not both (host/port is a one-host hosts list)")
        if v["embedded"] is True:
            (at / "hosts").fail("embedded: true starts one local server on host:port; hosts lists servers you run")


def _column_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    v["has_default"] = isinstance(raw, dict) and "default" in raw  # `default: null` is a default too
    if v["has_default"] and v["required"] is True:
        at.fail("required: true and a default contradict each other; keep one")


def _pipeline_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    name, stream = v["name"], v["stream"]
    if v["dlq_stream"] is None:
        v["dlq_stream"] = f"{stream}_DLQ" if ok(stream) else INVALID
    if v["dlq_subject"] is None:
        v["dlq_subject"] = f"dlq.{name}" if ok(name) else INVALID
    if ok(v["subject"], v["dlq_subject"]) and subjects_overlap(v["subject"], v["dlq_subject"]):
        (at / "dlq.subject").fail(
            f"{v['dlq_subject']!r} is matched by this pipeline's subject {v['subject']!r}; "
            "the sink would consume its own dead letters")
    batch, ack_wait = v["batch"], v["ack_wait_s"]
    if ok(batch, ack_wait) and ack_wait is not None and ok(batch.max_wait_ms) \
            and ack_wait * 1000 <= batch.max_wait_ms:
        (at / "ack_wait_s").fail(
            f"must be longer than batch.max_wait_ms ({batch.max_wait_ms} ms), "
            "or messages are redelivered while still being batched")


def check_pipelines_together(pipelines: list[Any], at: At) -> None:
    """Names are unique, every stream has one owner, and no two streams share subjects."""
    names: dict[str, int] = {}
    owners: dict[str, str] = {}  # stream name -> "pipelines[i].stream" or "pipelines[i].dlq.stream"
    claims: list[tuple[str, At, str, int]] = []  # (subject pattern, where, label, pipeline index)
    for i, p in enumerate(pipelines):
        if p is INVALID:
            continue
        here = at.item(i)
        if ok(p.name) and p.name in names:
            (here / "name").fail(f"{p.name!r} is already used by pipelines[{names[p.name]}]")
            continue  # its default DLQ names would only repeat the clash
        if ok(p.name):
            names[p.name] = i
        for key, stream, subject in (("stream", p.stream, p.subject), ("dlq.stream", p.dlq_stream, p.dlq_subject)):
            if not ok(stream):
                continue
            owner = owners.setdefault(stream, f"pipelines[{i}].{key}")
            if owner == f"pipelines[{i}].stream" and key == "dlq.stream":
                (here / key).fail(f"must differ from the pipeline's stream {stream!r}")
                break
            if owner != f"pipelines[{i}].{key}":
                # The provisioner creates each stream from one pipeline's settings.
                (here / key).fail(f"stream {stream!r} is already used by {owner}; each pipeline owns its streams")
                break  # checking its subjects would only add noise
            if ok(subject):
                subject_key = key.replace("stream", "subject")
                claims.append((subject, here / subject_key, f"pipelines[{i}].{subject_key}", i))
    for n, (subject, where, _, owner) in enumerate(claims):
        for other_subject, _, other_label, other_owner in claims[:n]:
            # A pipeline matching its own DLQ subject is reported by _pipeline, more specifically.
            if owner != other_owner and subjects_overlap(subject, other_subject):
                where.fail(f"{subject!r} overlaps {other_label} {other_subject!r}; JetStream streams cannot "
                           "share subjects, and a sink must never consume dead letters")


def _profiling_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    if ok(v["interval_s"], v["duration_s"]) and v["duration_s"] > v["interval_s"]:
        (at / "duration_s").fail(f"must not be longer than interval_s ({v['interval_s']:g} s); windows would overlap")


def _admin_rules(v: dict[str, Any], at: At, raw: Any) -> Marker | None:
    if ok(v["listen"], v["allow_remote"]) and v["allow_remote"] is not True and not _is_loopback(v["listen"]):
        # /status and /metrics show the pipeline's topology and the workers' pids.
        (at / "listen").fail(f"{v['listen']!r} is not a loopback address; the admin endpoint has no "
                             "authentication, so set admin.allow_remote: true to expose it deliberately")
        return INVALID
    return None if ok(*v.values()) else INVALID


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


RULES: Mapping[type, Callable[[dict[str, Any], At, Any], Marker | None]] = {
    TLSConfig: _tls_rules,
    NatsConfig: _nats_rules,
    ClickHouseConfig: _clickhouse_rules,
    ColumnOverride: _column_rules,
    Pipeline: _pipeline_rules,
    ProfilingConfig: _profiling_rules,
    AdminConfig: _admin_rules,
}
