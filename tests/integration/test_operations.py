"""Running it for real: pipeline-wide faults pause instead of dead-lettering, boot
failures stop instead of looping, workers die with their supervisor, NATS auth."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from supervisor import embedded, embedded_clickhouse, embedded_nats
from tests.integration.harness import DEMO_TABLE, REPO, Load, Supervisor, pipeline_names, sink_config, wait_until


def test_dropped_table_pauses_the_pipeline_and_loses_nothing(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("op")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=2, workers=1, **names)
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(2)
        first = Load(nats_url, prefix, 0, 1000, 5000.0)
        first.start()
        assert first.join_checked(60) == 1000
        sup.wait(
            lambda: clickhouse_client.execute(f"SELECT count() FROM {ch_database}.events")[0][0] >= 1000,
            60,
            "first rows",
        )
        clickhouse_client.execute(f"DROP TABLE {ch_database}.events")
        second = Load(nats_url, prefix, 1000, 1000, 5000.0)
        second.start()
        assert second.join_checked(60) == 1000
        line = sup.wait(lambda: sup.logged("paused"), 60, "the pipeline to pause")[0]
        assert "UNKNOWN_TABLE" in line["msg"] or "code 60" in line["msg"]
        clickhouse_client.execute(DEMO_TABLE.format(table=f"{ch_database}.events"))
        sup.wait(
            lambda: clickhouse_client.execute(f"SELECT uniqExact(event_id) FROM {ch_database}.events")[0][0] >= 1000,
            90,
            "rows after the table is back",
        )
        ids = clickhouse_client.execute(
            f"SELECT min(event_id), max(event_id), uniqExact(event_id) FROM {ch_database}.events"
        )[0]
        assert ids == ("e000000001000", "e000000001999", 1000)
        assert not [e for e in sup.lines() if str(e.get("msg", "")).startswith(("dead-lettered", "ClickHouse refused"))]
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_an_unsupported_column_type_stops_start_up_with_exit_3(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("op")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=1, workers=1, **names)
    clickhouse_client.execute(
        f"CREATE TABLE {ch_database}.events (event_id String, u AggregateFunction(uniq, String)) "
        "ENGINE = MergeTree() ORDER BY event_id"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "AggregateFunction" in proc.stdout and "column u" in proc.stdout
    assert "spawned worker" not in proc.stdout  # nothing started, nothing to loop


def test_workers_exit_when_the_supervisor_is_killed(tmp_path, nats_url, clickhouse_server, ch_database):
    names, _ = pipeline_names("op")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=2, workers=2, **names)
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(2)
        pids = list(sup.worker_pids().values())
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        sup.proc.kill()
        sup.proc.wait()
        wait_until(
            lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids),
            30,
            "orphaned workers to exit",
        )
    finally:
        sup.close()


def test_nats_user_password_and_token_from_env(
    tmp_path, clickhouse_server, clickhouse_client, ch_database, monkeypatch
):
    for auth, env, credentials in (
        (
            ["--user", "sink", "--pass", "s3cret-pw"], {"NATS_PW": "s3cret-pw"},
            {"user": "sink", "password_env": "NATS_PW"},
        ),
        (["--auth", "t0ken-xyz"], {"NATS_TOKEN": "t0ken-xyz"}, {"token_env": "NATS_TOKEN"}),
    ):
        port = embedded.free_port()
        server = embedded_nats.start_nats(tmp_path / f"nats{port}", port, extra_args=auth)
        try:
            names, prefix = pipeline_names("au")
            url = f"nats://127.0.0.1:{port}"
            cfg = sink_config(
                tmp_path, url, clickhouse_server.port, ch_database, partitions=1, workers=1, nats=credentials, **names
            )
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            clickhouse_client.execute(f"DROP TABLE IF EXISTS {ch_database}.events")
            sup = Supervisor(cfg, tmp_path / f"sink{port}.log")
            try:
                sup.wait_acquired(1)
                import nats
                import orjson

                from bench.events import make_event
                from tests.integration.harness import run

                async def pub(env=env, url=url, prefix=prefix):
                    kw = {"user": "sink", "password": "s3cret-pw"} if "NATS_PW" in env else {"token": "t0ken-xyz"}
                    nc = await nats.connect(url, **kw)
                    for i in range(100):
                        await nc.jetstream().publish(f"{prefix}.k{i % 4}", orjson.dumps(make_event(i)))
                    await nc.close()

                run(pub())
                sup.wait(
                    lambda: clickhouse_client.execute(f"SELECT count() FROM {ch_database}.events")[0][0] >= 100,
                    60,
                    "rows through an authenticated connection",
                )
                log_text = sup.log_path.read_text()
                assert list(env.values())[0] not in log_text  # the secret never reaches the log
                assert sup.terminate() == 0
            finally:
                sup.close()
            for k in env:
                monkeypatch.delenv(k)
        finally:
            server.stop()


def test_wrong_nats_password_is_a_clear_boot_error(tmp_path, clickhouse_server, ch_database, monkeypatch):
    port = embedded.free_port()
    server = embedded_nats.start_nats(tmp_path / "nats", port, extra_args=["--user", "sink", "--pass", "right"])
    try:
        names, _ = pipeline_names("au")
        cfg = sink_config(
            tmp_path, f"nats://127.0.0.1:{port}", clickhouse_server.port, ch_database, partitions=1, workers=1,
            nats={"user": "sink", "password_env": "NATS_PW"}, **names,
        )
        monkeypatch.setenv("NATS_PW", "wrong-one")
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor", "--config", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 3
        assert f"127.0.0.1:{port}" in proc.stdout and "wrong-one" not in proc.stdout
    finally:
        server.stop()


def _make_certs(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=jetsink test CA",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        ossl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        ossl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        )
    return d


def test_nats_tls_with_client_certificate_and_clickhouse_password(tmp_path, clickhouse_server, monkeypatch):
    import ssl

    import nats
    import orjson
    from clickhouse_driver import Client

    from bench.events import make_event
    from tests.integration.harness import run

    certs = _make_certs(tmp_path / "certs")
    port = embedded.free_port()
    server = embedded_nats.start_nats(
        tmp_path / "nats", port,
        extra_args=["--tls", "--tlscert", str(certs / "server.pem"), "--tlskey", str(certs / "server-key.pem"),
                    "--tlsverify", "--tlscacert", str(certs / "ca.pem")],
    )
    ch_dir, ch_port = tmp_path / "ch", embedded.free_port()
    ch = embedded_clickhouse.start_clickhouse(ch_dir, ch_port, users={"sink": "ch-s3cret"})

    admin = Client(host="127.0.0.1", port=ch_port)
    try:
        assert Client(host="127.0.0.1", port=ch_port, user="sink", password="ch-s3cret").execute("SELECT 1") == [(1,)]
        with pytest.raises(Exception, match="(?i)password|authentication"):
            Client(host="127.0.0.1", port=ch_port, user="sink", password="wrong").execute("SELECT 1")
        admin.execute("CREATE DATABASE tlsdb")
        names, prefix = pipeline_names("tl")
        tls = {
            "ca_file": str(certs / "ca.pem"),
            "cert_file": str(certs / "client.pem"),
            "key_file": str(certs / "client-key.pem"),
        }
        cfg = sink_config(
            tmp_path, f"tls://127.0.0.1:{port}", ch_port, "tlsdb", partitions=1, workers=1, nats={"tls": tls},
            clickhouse={"user": "sink", "password_env": "CH_PW"}, **names,
        )
        monkeypatch.setenv("CH_PW", "ch-s3cret")
        sup = Supervisor(cfg, tmp_path / "sink.log")
        try:
            sup.wait_acquired(1)
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))

            async def pub():
                nc = await nats.connect(f"tls://127.0.0.1:{port}", tls=ctx)
                for i in range(200):
                    await nc.jetstream().publish(f"{prefix}.k{i % 4}", orjson.dumps(make_event(i)))
                await nc.close()

            run(pub())
            sup.wait(
                lambda: admin.execute("SELECT count() FROM tlsdb.events")[0][0] >= 200,
                60,
                "rows over TLS with a password user",
            )
            assert "ch-s3cret" not in sup.log_path.read_text()
            assert sup.terminate() == 0
        finally:
            sup.close()
    finally:
        admin.disconnect()
        ch.stop()
        server.stop()
