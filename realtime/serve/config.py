"""``comostream serve`` settings (:class:`ServerConfig`) and the loopback rule they rest on."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["ServerConfig", "is_loopback"]


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
