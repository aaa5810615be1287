"""``comostream serve`` settings (:class:`ServerConfig`), the loopback rule they rest on, where
the token comes from (:func:`resolve_token`: ``--token``, ``--token-file`` or :data:`TOKEN_ENV`)
and the TLS context of ``--tls-cert``/``--tls-key`` (:meth:`ServerConfig.ssl_context`)."""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from collections.abc import Callable, Mapping
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
    tls_cert: str | None = None  # PEM certificate (chain): serve HTTPS/WSS (with tls_key)
    tls_key: str | None = None  # PEM private key of tls_cert
    process: int | None = None  # this server's index among `serve --processes N` (None: alone)

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
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key (or neither)")

    @property
    def scheme(self) -> str:
        """``https`` with a TLS pair, else ``http`` (the page's; WebSockets: ``wss``/``ws``)."""
        return "https" if self.tls_cert else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None without a TLS pair). A file that cannot be read, is not
        PEM, or a key that does not match the certificate is a ValueError naming the files."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        for path in (self.tls_cert, self.tls_key):
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key, password=_no_password(self.tls_key))
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None)
            why = (
                "the key does not belong to the certificate"
                if reason == "KEY_VALUES_MISMATCH"
                else f"not a PEM certificate and private key ({reason or exc})"
            )
            raise ValueError(
                f"cannot use --tls-cert {self.tls_cert} --tls-key {self.tls_key}: {why}"
            ) from None
        return ctx


def _no_password(key: str) -> Callable[[], bytes]:
    """The password callback of an encrypted key: a clear error, never a terminal prompt."""

    def refuse() -> bytes:
        raise ValueError(
            f"the TLS key {key} is encrypted; serve needs an unencrypted key (openssl req "
            "... -nodes, or: openssl pkey -in KEY -out PLAIN)"
        )

    return refuse


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
