"""WebSocket URLs (RFC 6455, section 3) to the pieces a client connects with."""

from __future__ import annotations

import urllib.parse
from typing import NamedTuple

__all__ = ["WebSocketURL", "default_port", "parse_url", "resolve_redirect", "url_credentials"]

# Characters that may stay as they are in a request target.  Everything else
# (spaces, non-ASCII text) is percent-encoded, as a browser does, because the
# request line must be ASCII.  "%" is kept so that an already encoded URL is
# not encoded twice.
_TARGET_SAFE = "/?&=%:@!$'()*+,;~-._[]"


def default_port(secure: bool) -> int:
    """RFC 6455 3: 443 for ``wss://``, 80 for ``ws://``."""
    return 443 if secure else 80


class WebSocketURL(NamedTuple):
    """A parsed ``ws://`` or ``wss://`` URL."""

    secure: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        """The value of the ``Host`` header: the port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port(self.secure) else f"{host}:{self.port}"

    def geturl(self) -> str:
        """The normalised absolute URL (lower-case scheme and host, default port omitted)."""
        scheme = "wss" if self.secure else "ws"
        return f"{scheme}://{self.host_header}{self.resource}"


def parse_url(url: str) -> WebSocketURL:
    """Split a WebSocket URL, or raise :exc:`ValueError` saying what is wrong with it.

    The resource is the path (``/`` when empty) and the query; a fragment is
    dropped, as trio-websocket did.  Non-ASCII characters and spaces in the
    resource are percent-encoded.
    """
    text = str(url)  # trio-websocket accepted yarl.URL and other str-like objects
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        given = f"{parts.scheme}:" if parts.scheme else "missing"
        raise ValueError(f'WebSocket URL scheme must be "ws:" or "wss:", not {given} in {text!r}')
    host = parts.hostname
    if not host:
        raise ValueError(f"WebSocket URL has no host: {text!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"WebSocket URL has an invalid port: {text!r} ({exc})") from None
    secure = scheme == "wss"
    if port is None:
        port = default_port(secure)
    elif port == 0:
        raise ValueError(f"WebSocket URL has an invalid port: {text!r} (port 0)")
    resource = parts.path or "/"
    if parts.query or text.split("#", 1)[0].endswith("?"):
        resource += "?" + parts.query
    resource = urllib.parse.quote(resource, safe=_TARGET_SAFE)
    return WebSocketURL(secure, host, port, resource)


def url_credentials(url: str) -> tuple[str, str] | None:
    """``(user, password)`` from ``ws://user:password@host/``, percent-decoded; ``None`` without.

    Kept apart from :class:`WebSocketURL`, so that no ``repr()`` of a parsed URL
    and no log line can show a password.
    """
    parts = urllib.parse.urlsplit(str(url))
    if parts.username is None:
        return None
    return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")


def resolve_redirect(url: WebSocketURL, location: str) -> WebSocketURL:
    """Where a redirect's ``Location`` (absolute or relative; ``http(s)://`` meaning
    ``ws(s)://``) sends a client that asked for ``url``.

    :raises ValueError: it is no WebSocket URL.
    """
    # urljoin only joins the schemes it knows: join as http(s), then map back.
    base = ("https" if url.secure else "http") + url.geturl()[len("wss" if url.secure else "ws") :]
    joined = urllib.parse.urljoin(base, location.strip())
    scheme, sep, rest = joined.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
    return parse_url(f"{scheme}{sep}{rest}")
