"""The cross-key checks of config.yaml: what no single key can say (TLS pairs, embedded servers
on this host, a DLQ subject the pipeline would consume, streams owned once, a loopback admin
address). The walker (supervisor/config.py) runs `RULES[cls]` after a section's keys, and
`check_pipelines_together` over the list of pipelines.
"""

from __future__ import annotations

import dataclasses
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
    Config,
    NatsConfig,
    Pipeline,
    ProfilingConfig,
    Route,
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
    if "shards" in given:
        for single in ("hosts", "host", "port"):
            if single in given:
                (at / single).fail("give either shards or hosts (host/port), not both (hosts is a one-shard cluster)")
        if v["embedded"] is True:
            (at / "shards").fail("embedded: true starts one local server on host:port; shards lists servers you run")
        shards = v["shards_items"]
        if ok(shards) and all(ok(s) and ok(s.weight) for s in shards) and not any(s.weight > 0 for s in shards):
            (at / "shards").fail("at least one shard needs a weight above 0")


def _sharding_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    """pipelines[].sharding_key goes with clickhouse.shards: required with several shards, unused without."""
    ch, pipelines = v.get("clickhouse"), v.get("pipelines")
    if not ok(ch, pipelines) or not ok(ch.hosts_items, ch.shards_items) \
            or not all(ok(s) and ok(s.hosts_items) for s in ch.shards_items):
        return  # the bad key is reported where it is
    sharded = len(ch.shard_addresses) > 1
    for i, p in enumerate(pipelines):
        if not ok(p):
            continue
        where = at / "pipelines"
        if sharded and p.sharding_key is None:
            (where.item(i) / "sharding_key").fail(
                f"required with clickhouse.shards ({len(ch.shard_addresses)} shards): the sharding key of the "
                "cluster's Distributed table, e.g. cityHash64(user_id) or rand()")
        elif not sharded and p.sharding_key is not None:
            (where.item(i) / "sharding_key").fail("only used with clickhouse.shards (more than one shard)")


def _column_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    v["has_default"] = isinstance(raw, dict) and "default" in raw  # `default: null` is a default too
    if v["has_default"] and v["required"] is True:
        at.fail("required: true and a default contradict each other; keep one")
    given = raw if isinstance(raw, dict) else {}
    if "source" not in given:  # `header: X-Tenant` alone says where the value comes from
        if v["header"] is not None:
            v["source"] = "header"
        elif v["subject_token"] is not None:
            v["source"] = "subject_token"
    source = v["source"]
    if not ok(source):
        return
    if v["header"] is not None and source != "header":
        (at / "header").fail(f"only used with source: header (this column's source is {source})")
    if source == "header" and v["header"] is None:
        (at / "header").fail("required with source: header (the header's name)")
    if v["subject_token"] is not None and source != "subject_token":
        (at / "subject_token").fail(f"only used with source: subject_token (this column's source is {source})")
    if source == "subject_token" and v["subject_token"] is None:
        (at / "subject_token").fail("required with source: subject_token (1 = the first token, -1 the last)")
    if v["subject_token"] == 0:
        (at / "subject_token").fail("tokens count from 1 (the first) or from -1 (the last); 0 names none")
    if source != "json":
        for name in ("path", "epoch_unit"):
            if name in given:
                (at / name).fail(f"only used with source: json (this column's source is {source})")


def _route_rules(v: dict[str, Any], at: At, raw: Any) -> None:
    if v["subject"] is None and v["field"] is None:
        at.fail("a route needs a condition: subject (a subject pattern) or field (a dotted path)")
    tests = [k for k, name in (("equals", "equals"), ("in_values", "in"), ("exists", "exists"))
             if isinstance(raw, dict) and name in raw]
    if v["field"] is not None and len(tests) != 1:
        (at / "field").fail("needs exactly one of equals, in, exists" + (f" (got {', '.join(tests)})" if tests else ""))
    if v["field"] is None and tests:
        at.fail(f"{', '.join('in' if t == 'in_values' else t for t in tests)} only used with field")
    if isinstance(raw, dict) and "equals" in raw and raw["equals"] is None:
        (at / "equals").fail("equals: null is not a test; use exists: false for an absent field")
    if (v["table"] is None) == (v["skip"] is not True):
        at.fail("a route needs exactly one target: table, or skip: true")
    if v["skip"] is True and v["columns"]:
        (at / "columns").fail("only used with a table (this route skips its messages)")


def _name_routes(routes: tuple[Any, ...], at: At) -> tuple[Any, ...]:
    """Every route with its label: the given name, else its table (numbered when two routes name one), else skip_<n>."""
    tables = [r.table for r in routes if ok(r) and r.table is not None]
    named, seen = [], {}
    for i, r in enumerate(routes):
        if not ok(r):
            named.append(r)
            continue
        name = r.name
        if name is None:
            table = (r.table or "").rpartition(".")[2]
            name = f"skip_{i}" if r.skip else (table if tables.count(r.table) == 1 else f"{table}_{i}")
        if name in seen:
            (at.item(i) / "name").fail(f"{name!r} is already the name of routes[{seen[name]}]")
        seen.setdefault(name, i)
        named.append(dataclasses.replace(r, name=name))
    return tuple(named)


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
    routes, given = v["routes"], raw if isinstance(raw, dict) else {}
    if ok(routes) and routes:
        for key in ("table", "create_table"):
            if v[key] is not None:
                (at / key).fail("a pipeline with routes has no table of its own; each route names its table")
        v["routes"] = routes = _name_routes(routes, at / "routes")
        if ok(v["subject"]):
            for i, r in enumerate(routes):
                if ok(r) and r.subject is not None and not subjects_overlap(r.subject, v["subject"]):
                    ((at / "routes").item(i) / "subject").fail(
                        f"{r.subject!r} never matches: the pipeline's messages are published to {v['subject']!r}")
    else:
        if v["table"] is None and ok(v["table"]):
            (at / "table").fail("required (or give routes)")
        if "unrouted" in given:
            (at / "unrouted").fail("only used with routes")
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
    for i, p in enumerate(pipelines):
        # stream_per_partition makes a stream per partition, <stream>_<p> (workers/topology.py).
        if p is INVALID or not ok(p.stream, p.partitions, p.layout) or p.layout != "stream_per_partition":
            continue
        for k in range(p.partitions):
            name = f"{p.stream}_{k}"
            if name in owners:
                (at.item(i) / "stream").fail(f"with layout stream_per_partition, partition {k} is stream {name!r}, "
                                             f"which is {owners[name]}; each pipeline owns its streams")
                break
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
    Config: _sharding_rules,
    ColumnOverride: _column_rules,
    Pipeline: _pipeline_rules,
    Route: _route_rules,
    ProfilingConfig: _profiling_rules,
    AdminConfig: _admin_rules,
}
