"""``comostream serve`` settings (:class:`ServerConfig`), the loopback rule they rest on, and
where the token comes from (:func:`resolve_token`: ``--token``, ``--token-file`` or
:data:`TOKEN_ENV`)."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TOKEN_ENV", "ServerConfig", "is_loopback", "resolve_token"]

TOKEN_ENV = "COMOSTREAM_TOKEN"  # environment variable holding the token (not in the cmdline)
MAX_TOKEN_BYTES = 4096  # a token file larger than this is refused (not a token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """``comostream serve`` settings. A token is required unless bound to loopback."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    token: str | None = None
    max_streams: int = 8
    idle_timeout_s: float = 30.0  # a session with no frame for this long is closed
    hello_timeout_s: float = 5.0  # a connection with no valid hello for this long is closed
    max_pending: int = 16  # connections still in their hello; more are refused (busy)
    max_queue_ms: float = 200.0  # audio queued per direction beyond this drops the oldest
    allow_origins: tuple[str, ...] = ()  # browser origins allowed besides the page's own

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"serving on {self.host} (not loopback) needs a token: pass "
                "--token SECRET (clients send it in their hello)"
            )
        if self.max_streams < 1 or self.idle_timeout_s <= 0 or self.max_queue_ms <= 0:
            raise ValueError("max_streams, idle_timeout_s and max_queue_ms must be positive")
        if self.max_pending < 1 or not (
            math.isfinite(self.hello_timeout_s) and self.hello_timeout_s > 0
        ):
            raise ValueError("max_pending and hello_timeout_s must be positive (and finite)")


def resolve_token(
    token: str | None, token_file: str | Path | None, env: Mapping[str, str] | None = None
) -> str | None:
    """The server's token: ``--token``, else ``--token-file`` (its first line, surrounding
    whitespace removed), else the :data:`TOKEN_ENV` environment variable; None when none is
    given. Giving both ``--token`` and ``--token-file``, an empty or unreadable file, or an
    empty token is a ValueError."""
    env = os.environ if env is None else env
    if token is not None and token_file is not None:
        raise ValueError("give --token or --token-file, not both")
    if token_file is not None:
        path = Path(token_file)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_TOKEN_BYTES:
            raise ValueError(f"token file {path} is over {MAX_TOKEN_BYTES} bytes: not a token")
        try:
            lines = data.decode("utf-8").strip().splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"token file {path} is not UTF-8 text") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token
    if token is not None:
        if not token.strip():
            raise ValueError("--token is empty")
        return token
    value = env.get(TOKEN_ENV)
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"the {TOKEN_ENV} environment variable is set but empty")
    return value.strip()
