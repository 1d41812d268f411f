"""Opening a NATS connection from typed config (supervisor and workers alike)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import nats

from workers.nats import wire

log = logging.getLogger(__name__)


def _ssl_context(tls: Any) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


async def connect_nats(
    cfg: Any, name: str, initial_attempts: int = 2, reconnected: Callable[[], Awaitable[None]] | None = None,
    **overrides: Any,
) -> nats.NATS:
    """Connect to the NATS servers of `cfg` (a NatsConfig); errors name the servers.

    The first connection gives up after `initial_attempts` tries per server (the caller
    decides whether to wait longer); once connected, it reconnects forever, every
    reconnect_time_wait, and `reconnected()` is awaited after each reconnect.
    """

    connected = False
    # A client whose parser can hand pull inboxes' deliveries over in bulk.
    nc = wire.new_client()

    async def on_error(exc: Exception) -> None:
        # Failed first attempts end in one ConnectionError below; only later errors are news.
        if connected:
            log.warning("nats error on %s: %s", ",".join(cfg.servers), exc)

    async def on_disconnect() -> None:
        # nats-py calls this on close() and drain() too, with the client already closed:
        # that is the end of a clean run, not news (a command-line tool prints only its result).
        if nc.is_closed:
            log.debug("closed the connection to nats %s", ",".join(cfg.servers))
        else:
            log.warning("disconnected from nats %s", ",".join(cfg.servers))

    async def on_reconnect() -> None:
        log.info("reconnected to nats %s", ",".join(cfg.servers))
        if reconnected is not None:
            await reconnected()

    opts: dict[str, Any] = dict(
        servers=list(cfg.servers),
        name=name,
        connect_timeout=cfg.connect_timeout_s,
        allow_reconnect=True,
        # nats-py retries the *initial* connect forever when this is -1, so it is
        # bounded here and lifted once connected.
        max_reconnect_attempts=initial_attempts,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        # A pull inbox can receive a whole batch at once; nats-py's default limits
        # would call that a slow consumer and drop messages.
        pending_size=64 * 1024 * 1024,
    )
    if cfg.user:
        opts["user"] = cfg.user
    if cfg.password is not None:
        opts["password"] = cfg.password.value
    if cfg.token is not None:
        opts["token"] = cfg.token.value
    if cfg.creds_file:
        opts["user_credentials"] = str(cfg.creds_file)
    if cfg.nkey_seed_file:
        opts["nkeys_seed"] = str(cfg.nkey_seed_file)
    if cfg.tls is not None:
        opts["tls"] = _ssl_context(cfg.tls)
    opts.update(overrides)
    try:
        await nc.connect(**opts)
    except Exception as exc:  # nats-py raises a zoo of types here; the user needs one message
        hint = " (embedded: true - is the supervisor running?)" if cfg.embedded else ""
        raise ConnectionError(
            f"cannot connect to nats {','.join(cfg.servers)}{hint}: {exc or type(exc).__name__}"
        ) from exc
    connected = True
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def nats_answers(cfg: Any, timeout: float = 1.0) -> bool:
    """Whether some NATS server of `cfg` accepts a TCP connection now (no protocol spoken)."""
    for url in cfg.servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222), timeout)
        except (OSError, asyncio.TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False
