"""Opening a ClickHouse connection from typed config (supervisor and workers alike)."""

from __future__ import annotations

import asyncio
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


async def clickhouse_answers(cfg: Any, timeout: float = 1.0) -> bool:
    """Whether the ClickHouse server of `cfg` accepts a TCP connection now (a cheap probe while an
    outage lasts: no query, no thread; clickhouse-server listens only once it can serve)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(cfg.host, cfg.port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
