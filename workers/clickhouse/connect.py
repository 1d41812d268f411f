"""Opening a ClickHouse connection from typed config (supervisor and workers alike)."""

from __future__ import annotations

from typing import Any

from clickhouse_driver import Client


def clickhouse_client(cfg: Any, **settings: Any) -> Client:
    """A clickhouse-driver Client for `cfg` (a ClickHouseConfig). It connects lazily."""
    kwargs: dict[str, Any] = dict(
        host=cfg.host,
        port=cfg.port,
        database=cfg.database,
        user=cfg.user,
        password=cfg.password.value if cfg.password is not None else "",
        connect_timeout=cfg.connect_timeout_s,
        send_receive_timeout=cfg.send_receive_timeout_s,
        client_name="jetsink",
        settings={**dict(cfg.settings), **settings},
    )
    if cfg.secure:
        kwargs["secure"] = True
        if cfg.tls is not None:
            if cfg.tls.ca_file:
                kwargs["ca_certs"] = str(cfg.tls.ca_file)
            if cfg.tls.cert_file:
                kwargs["certfile"] = str(cfg.tls.cert_file)
            if cfg.tls.key_file:
                kwargs["keyfile"] = str(cfg.tls.key_file)
    return Client(**kwargs)


def clickhouse_where(cfg: Any) -> str:
    """How to name the ClickHouse server in an error message."""
    return f"clickhouse {cfg.host}:{cfg.port}/{cfg.database}"
