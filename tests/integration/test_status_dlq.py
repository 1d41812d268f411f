"""`python -m supervisor status` and `dlq list|show|replay` as a user runs them, against real servers.

The DLQ tests put dead letters into a real DLQ stream exactly as a worker does
(workers.nats.dlq.DeadLetter + publish_dead_letters, from a message really stored in a
partitioned stream), then run the CLI as a subprocess. The status tests serve a fake
snapshot over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nats
import pytest
import yaml
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from supervisor import provision
from supervisor.admin import StatusServer, address_file
from supervisor.config import load_config
from workers.nats.dlq import DeadLetter, publish_dead_letters

REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, nats_url: str = "nats://127.0.0.1:4222", **top) -> tuple[Path, str]:
    """A config with one pipeline of unique names (the nats-server is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    data = {
        "state_dir": str(tmp_path / "var"),
        "nats": {"url": nats_url},
        "pipelines": [
            {"name": f"p{tag}", "stream": f"S{tag}", "subject": f"ev{tag}.*", "partitions": 4, "table": "events"}
        ],
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, tag


# --------------------------------------------------------------------------- dlq


@pytest.fixture
def dead_letters(tmp_path, nats_url):
    """Provisioned streams and three dead letters made from really stored messages."""
    path, tag = write_config(tmp_path, nats_url)
    config = load_config(path)
    p = config.pipelines[0]

    async def setup() -> list[dict]:
        await provision.provision_streams(config)
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        sent = [
            (
                f"ev{tag}.user42",
                b'{"event_id": "a", "amount": "ten"}',
                {"traceparent": TRACEPARENT, "X-Tenant": "acme"},
                "wrong_type",
            ),
            (f"ev{tag}.user7", b"{not json", {"X-Tenant": "globex"}, "invalid_json"),
            (f"ev{tag}.user9", b'{"event_id": "c"}', None, "missing_required"),
        ]
        letters, originals = [], []
        for subject, body, headers, reason in sent:
            ack = await js.publish(subject, body, headers=headers)  # as a producer does
            stored = await js.get_msg(p.stream, seq=ack.seq)
            assert stored.subject != subject and stored.subject.startswith(f"ev{tag}.")  # transformed
            letters.append(
                DeadLetter(
                    data=stored.data,
                    subject=stored.subject,
                    stream=p.stream,
                    stream_seq=ack.seq,
                    reason=reason,
                    error=f"{reason}: detail " + "x" * 200,
                    pipeline=p.name,
                    worker=1,
                    original_headers=stored.headers,
                    traceparent=(stored.headers or {}).get("traceparent"),
                )
            )
            originals.append({"subject": subject, "stored": stored.subject, "data": body, "headers": headers or {},
                              "seq": ack.seq, "reason": reason})
        await publish_dead_letters(nc, p.dlq_stream, p.dlq_subject, letters)
        await nc.close()
        return originals

    originals = asyncio.run(setup())
    return path, config, originals


def dlq_seqs(url: str, stream: str) -> list[int]:
    async def read() -> list[int]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        seqs, seq = [], 0
        try:
            while True:
                try:
                    msg = await js.get_msg(stream, seq=seq + 1, subject=">", next=True)
                except NotFoundError:
                    return seqs
                seqs.append(msg.seq)
                seq = msg.seq
        finally:
            await nc.close()

    return asyncio.run(read())


def test_dlq_list(dead_letters):
    path, config, originals = dead_letters
    result = cli("dlq", "list", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for seq, (line, original) in enumerate(zip(lines, originals, strict=False), start=1):
        fields = line.split()
        assert fields[0] == config.pipelines[0].name
        assert fields[1] == str(seq)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields[2])
        assert fields[3] == original["reason"]
        assert fields[4] == original["stored"]
        assert fields[5] == f"{config.pipelines[0].stream}:{original['seq']}"
        error = line.split(fields[5], 1)[1].strip()
        assert error.startswith(original["reason"] + ": detail x") and len(error) == 80

    only = cli("dlq", "list", "--config", str(path), "--reason", "invalid_json")
    assert [line.split()[3] for line in only.stdout.splitlines()] == ["invalid_json"]
    limited = cli("dlq", "list", "--config", str(path), "--limit", "2")
    assert len(limited.stdout.splitlines()) == 2


def test_command_line_tools_print_only_their_result(dead_letters):
    # A clean close of the NATS connection is the end of a normal run, not a warning.
    path, _, originals = dead_letters
    for args in (("dlq", "list"), ("dlq", "show", "1"), ("check", "--connect")):
        result = cli(*args, "--config", str(path))
        assert "disconnected from nats" not in result.stderr + result.stdout, args
    listed = cli("dlq", "list", "--config", str(path))
    assert (listed.returncode, listed.stderr) == (0, "")
    assert len(listed.stdout.splitlines()) == len(originals)


def test_dlq_show(dead_letters):
    path, config, originals = dead_letters
    result = cli("dlq", "show", "1", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    p = config.pipelines[0]
    for header in (
        "Jetsink-Reason: wrong_type",
        f"Jetsink-Subject: {originals[0]['stored']}",
        f"Jetsink-Stream: {p.stream}",
        f"Jetsink-Stream-Seq: {originals[0]['seq']}",
        f"Jetsink-Pipeline: {p.name}",
        "Jetsink-Worker: 1",
        f"traceparent: {TRACEPARENT}",
        "X-Tenant: acme",
    ):
        assert f"  {header}\n" in out, header
    assert '"amount": "ten"' in out  # pretty JSON
    body = cli("dlq", "show", "2", "--config", str(path))
    assert "b'{not json'" in body.stdout  # not JSON: the bytes as they are

    missing = cli("dlq", "show", "99", "--config", str(path))
    assert missing.returncode == 5 and "no dead letter 99" in missing.stderr


def test_dlq_replay(dead_letters, nats_url):
    path, config, originals = dead_letters
    p = config.pipelines[0]

    dry = cli("dlq", "replay", "--all", "--dry-run", "--config", str(path))
    assert dry.returncode == 0, dry.stderr
    assert f"-> {originals[0]['subject']} " in dry.stdout and len(dry.stdout.splitlines()) == 3
    assert dlq_seqs(nats_url, p.dlq_stream) == [1, 2, 3]

    result = cli("dlq", "replay", "1", "3", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "replayed 2 dead letter(s)" in result.stdout
    assert dlq_seqs(nats_url, p.dlq_stream) == [2]

    async def replayed() -> list:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        info = await js.stream_info(p.stream)
        msgs = [await js.get_msg(p.stream, seq=s) for s in range(4, info.state.last_seq + 1)]
        await nc.close()
        return msgs

    msgs = asyncio.run(replayed())
    assert len(msgs) == 2
    for msg, original in zip(msgs, (originals[0], originals[2]), strict=False):
        # Published to the producer's subject, the stream's transform put it in the same partition again.
        assert msg.subject == original["stored"]
        assert msg.data == original["data"]
        assert (msg.headers or {}) == original["headers"]  # traceparent kept, no Jetsink-* or Nats-Expected-*

    again = cli("dlq", "replay", "1", "--config", str(path))
    assert again.returncode == 5 and "no dead letter 1" in again.stderr

    kept = cli("dlq", "replay", "--all", "--reason", "invalid_json", "--keep", "--config", str(path))
    assert kept.returncode == 0 and "kept in the DLQ" in kept.stdout
    assert dlq_seqs(nats_url, p.dlq_stream) == [2]


def test_dlq_usage_errors(dead_letters, tmp_path):
    path, config, _ = dead_letters
    assert cli("dlq", "replay", "--config", str(path)).returncode == 2
    wrong = cli("dlq", "list", "--config", str(path), "--pipeline", "nope")
    assert wrong.returncode == 2 and "no such pipeline" in wrong.stderr


def test_dlq_without_nats(tmp_path):
    path, _ = write_config(tmp_path, "nats://127.0.0.1:1")
    result = cli("dlq", "list", "--config", str(path))
    assert result.returncode == 3 and "127.0.0.1:1" in result.stderr


# --------------------------------------------------------------------------- status


NOW = time.time()


def fake_snapshot(**worker) -> dict:
    w = {
        "slot": 0,
        "pid": 4242,
        "ready": True,
        "restarts": 1,
        "partitions": ["events/0", "events/2"],
        "rows_per_s": 1234.5,
        "last_batch_at": NOW,
        "heartbeat_age_s": 0.3,
        "stats": {
            "events/0": {
                "consumed": 10,
                "inserted": 9,
                "dead_lettered": 1,
                "batches": 2,
                "insert_retries": 0,
                "last_batch_at": NOW,
                "pending": 17,
            },
            "events/2": {
                "consumed": 5,
                "inserted": 5,
                "dead_lettered": 0,
                "batches": 1,
                "insert_retries": 0,
                "last_batch_at": 0.0,
                "pending": 3,
            },
        },
    }
    w.update(worker)
    return {"started_at": NOW - 10, "taken_at": time.time(), "draining": False, "workers": [w]}


@pytest.fixture
def status_server():
    box = {"snapshot": fake_snapshot()}
    server = StatusServer("127.0.0.1:0", lambda: box["snapshot"])
    server.start()
    yield server, box
    server.stop()


def get(server: StatusServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{server.address}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_healthz(status_server):
    server, box = status_server
    assert get(server, "/healthz")[0::2] == (200, "ok\n")
    box["snapshot"] = fake_snapshot(ready=False)
    code, content_type, body = get(server, "/healthz")
    assert code == 503 and content_type == "application/json"
    assert json.loads(body) == {"ok": False, "problems": ["worker 0 (pid 4242) is not ready"]}
    box["snapshot"] = fake_snapshot(heartbeat_age_s=45.0)
    assert get(server, "/healthz")[0] == 503
    box["snapshot"] = None  # the arbiter has not published yet
    assert json.loads(get(server, "/healthz")[2])["problems"] == ["supervisor is starting"]
    assert get(server, "/nope")[0] == 404


def test_metrics(status_server):
    server, _ = status_server
    code, content_type, body = get(server, "/metrics")
    assert code == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body)}
    for name in ("jetsink_worker_up", "jetsink_worker_pid", "jetsink_worker_partitions", "jetsink_rows_per_second",
                 "jetsink_last_batch_timestamp_seconds", "jetsink_consumer_pending"):
        assert families[name].type == "gauge"
    # The parser names counter families without _total; their samples keep it.
    for name in ("jetsink_worker_restarts", "jetsink_rows_inserted", "jetsink_messages_consumed",
                 "jetsink_dead_letters"):
        assert families[name].type == "counter"
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("jetsink_worker_pid", (("slot", "0"),))] == 4242
    assert values[("jetsink_consumer_pending", (("partition", "0"), ("pipeline", "events")))] == 17
    assert values[("jetsink_rows_inserted_total", (("partition", "0"), ("pipeline", "events"), ("slot", "0")))] == 9


def test_status_json(status_server):
    server, _ = status_server
    code, content_type, body = get(server, "/status")
    data = json.loads(body)
    assert code == 200 and content_type == "application/json"
    assert data["healthy"] is True and data["problems"] == []
    assert data["workers"][0]["pid"] == 4242 and data["workers"][0]["partitions"] == ["events/0", "events/2"]


def test_status_command(status_server, tmp_path):
    server, box = status_server
    path, _ = write_config(tmp_path, admin={"listen": server.address})
    result = cli("status", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("jetsink supervisor running, up ") and "1 worker(s), 2 partition(s)" in lines[0]
    assert lines[2].split()[:4] == ["SLOT", "PID", "READY", "PARTITIONS"]
    row = lines[3].split()
    assert row[:6] == ["0", "4242", "yes", "events:0,2", "1234.5", "20"]  # lag = 17 + 3
    assert row[-1] == "1" and row[-2] == "ago"

    as_json = cli("status", "--json", "--listen", server.address)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["workers"][0]["slot"] == 0

    box["snapshot"] = fake_snapshot(pid=None, ready=False)
    down = cli("status", "--listen", server.address)
    assert "unhealthy:" in down.stdout and "worker 0 is not running" in down.stdout


def test_status_command_when_nothing_listens(tmp_path):
    server = StatusServer("127.0.0.1:0", dict)
    server.start()
    address = server.address
    server.stop()  # the port is now (almost certainly) free
    path, _ = write_config(tmp_path, admin={"listen": address})
    result = cli("status", "--config", str(path))
    assert result.returncode == 3
    assert address in result.stderr and "is the supervisor running?" in result.stderr


def test_status_command_finds_a_port_chosen_at_start(tmp_path):
    path, _ = write_config(tmp_path, admin={"listen": "127.0.0.1:0"})
    config = load_config(path)
    assert cli("status", "--config", str(path)).returncode == 3  # nothing runs: no address written
    server = StatusServer(config.admin.listen, fake_snapshot, address_file=address_file(config))
    server.start()
    try:
        assert address_file(config).read_text().strip() == server.address
        result = cli("status", "--config", str(path), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["workers"][0]["pid"] == 4242
    finally:
        server.stop()
    assert not address_file(config).exists()
