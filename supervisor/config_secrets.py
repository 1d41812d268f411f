"""Secrets in the config: the file names an environment variable or a file (`<name>_env`,
`<name>_file`), never the value; the value is read at load time into a ``Secret`` whose
repr shows only where it came from.
"""

from __future__ import annotations

import os
from typing import Any

from supervisor.config_problems import INVALID, At, Marker, ok
from workers.settings import Secret

__all__ = ["read_secret"]


def read_secret(values: dict[str, Any], at: At, name: str) -> Secret | None | Marker:
    """The secret `name` of a walked section (its `_env`/`_file` keys popped from `values`)."""
    env, path = values.pop(f"{name}_env"), values.pop(f"{name}_file")
    values.pop(name)
    if not ok(env, path):
        return INVALID
    if env is not None and path is not None:
        (at / f"{name}_env").fail(f"set either {name}_env or {name}_file, not both")
        return INVALID
    if env is not None:
        secret = os.environ.get(env)
        if secret is None:
            (at / f"{name}_env").fail(f"environment variable {env} is not set")
            return INVALID
        return Secret(f"env:{env}", secret)
    if path is not None:
        try:
            secret = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # ValueError: undecodable or NUL in path
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            (at / f"{name}_file").fail(f"cannot read {path}: {reason}")
            return INVALID
        return Secret(f"file:{path}", secret.rstrip("\r\n"))
    return None
