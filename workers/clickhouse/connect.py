"""Opening a ClickHouse connection from typed config (supervisor and workers alike).

`clickhouse.hosts` lists the replicas of one shard; `host`/`port` are a list of one
(ClickHouseConfig.addresses).  The supervisor's own questions (provision, checks) take
the first replica that answers (clickhouse-driver's `alt_hosts`); a worker holds one
client per replica and chooses among them itself (workers/clickhouse/replicas.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from clickhouse_driver import Client

Address = tuple[str, int]


def address_text(address: Address) -> str:
    """host:port, as logs, status and the commit state name a replica."""
    return f"{address[0]}:{address[1]}"


def clickhouse_client(cfg: Any, address: Address | None = None, **settings: Any) -> Client:
    """A clickhouse-driver Client for `cfg` (a ClickHouseConfig): to `address`, or to the first of
    the configured replicas that accepts a connection. It connects lazily."""
    addresses = cfg.addresses
    host, port = address or addresses[0]
    kwargs: dict[str, Any] = dict(
        host=host,
        port=port,
        database=cfg.database,
        user=cfg.user,
        password=cfg.password.value if cfg.password is not None else "",
        connect_timeout=cfg.connect_timeout_s,
        send_receive_timeout=cfg.send_receive_timeout_s,
        client_name="jetsink",
        settings={**dict(cfg.settings), **settings},
    )
    if address is None and len(addresses) > 1:
        kwargs["alt_hosts"] = ",".join(address_text(a) for a in addresses[1:])
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


def clickhouse_where(cfg: Any, address: Address | None = None) -> str:
    """How to name the ClickHouse server (or the configured replicas) in an error message."""
    if address is None:
        return f"clickhouse {','.join(address_text(a) for a in cfg.addresses)}/{cfg.database}"
    return f"clickhouse {address_text(address)}/{cfg.database}"


async def clickhouse_answers(cfg: Any, timeout: float = 1.0, address: Address | None = None) -> bool:
    """Whether a ClickHouse server of `cfg` (`address`, or any configured replica) accepts a TCP
    connection now (a cheap probe while an outage lasts: no query, no thread; clickhouse-server
    listens only once it can serve)."""
    for host, port in [address] if address is not None else cfg.addresses:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            continue
        writer.close()
        return True
    return False
