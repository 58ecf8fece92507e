"""Connecting through a proxy: HTTP CONNECT (written here) and SOCKS (python-socks, the ``socks`` extra).

The pieces, in the order a client uses them:

- :func:`resolve_proxy` turns the ``proxy=`` argument (``None``, ``True``, a
  URL or a :class:`Proxy`) into a :class:`Proxy` or ``None``;
  :func:`parse_proxy` reads a proxy URL and :func:`proxy_from_environment`
  reads ``wss_proxy``, ``https_proxy``, ``no_proxy`` and the rest;
- :func:`connect_through` opens a stream to ``host``:``port`` through the
  proxy.  The caller puts TLS for ``wss://`` on top of it (``server_hostname``
  is the target's name: SNI and the certificate check are for the target,
  end to end, and the proxy sees only ciphertext).

Failures are :exc:`ProxyError`, a :exc:`HandshakeError`.  Nothing here has a
timeout of its own: the caller's ``connect_timeout`` (a cancel scope) covers
the proxy step, and every socket opened here is closed when it is cancelled.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

import h11
import trio

from ._errors import HandshakeError

__all__ = [
    "DEFAULT_PORTS",
    "MAX_RESPONSE_HEAD",
    "SCHEMES",
    "Proxy",
    "ProxyError",
    "ProxySetting",
    "check_proxy_support",
    "connect_through",
    "no_proxy_matches",
    "parse_proxy",
    "proxy_from_environment",
    "resolve_proxy",
]

SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")

# A proxy URL without a port: the URL scheme's own port for http and https
# (as Python's HTTP clients read $https_proxy; curl would use 1080), and
# 1080, the port IANA assigns to SOCKS, for the SOCKS schemes.
DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}

MAX_RESPONSE_HEAD = 16 * 1024  # the proxy's answer to CONNECT (status line and headers), at most
_RECEIVE_BYTES = 4096  # per read while waiting for that answer: it is small
_SOCKS_EXTRA_HINT = "pip install 'trio-ws[socks]'"
_REDACTED = "***"

# Environment variables, most specific first, for each kind of target.
_ENVIRONMENT = {
    "ws": ("ws_proxy", "http_proxy", "all_proxy"),
    "wss": ("wss_proxy", "https_proxy", "all_proxy"),
}
_ENVIRONMENT["http"] = _ENVIRONMENT["ws"]
_ENVIRONMENT["https"] = _ENVIRONMENT["wss"]

_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_NO_PROXY_SEPARATORS = re.compile(r"[,\s]+")


# --- the proxy and its URL --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to connect through.

    ``scheme`` is one of :data:`SCHEMES`; ``host`` a name or an IP address
    (an IPv6 address without brackets); ``username`` and ``password`` the
    credentials, or ``None``.  The password never appears in ``repr()``,
    ``str()`` or :attr:`url`; use :attr:`password` itself where it is needed.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unsupported proxy scheme {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if not self.host or not _is_host(self.host):
            raise ValueError(f"not a proxy host name or IP address: {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"proxy port must be an integer from 1 to 65535, not {self.port!r}")
        if self.password is not None and self.username is None:
            raise ValueError("a proxy password needs a user name (user:password@)")
        if self.username is not None:
            _check_credentials(self.scheme, self.username, self.password)

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 address in brackets."""
        return f"{_bracketed(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's URL with the password replaced by ``***``: for messages and logs."""
        userinfo = ""
        if self.username is not None:
            userinfo = urllib.parse.quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":" + _REDACTED
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{self.address}"

    def __str__(self) -> str:
        return self.url


def _check_credentials(scheme: str, username: str, password: str | None) -> None:
    """What each protocol can carry (raise ValueError otherwise)."""
    if scheme in ("http", "https"):
        if ":" in username:
            raise ValueError("an HTTP proxy user name cannot contain ':' (Basic authentication splits there)")
        return
    if not username.isascii() or (password is not None and not password.isascii()):
        raise ValueError(f"{scheme} proxy credentials must be ASCII")
    if scheme in ("socks4", "socks4a"):
        if password is not None:
            raise ValueError(f"a {scheme} proxy takes a user ID only ({scheme}://userid@host), not a password")
        if "\0" in username:
            raise ValueError("a SOCKS4 user ID cannot contain NUL")
        return
    if not username or not password:  # socks5, socks5h (RFC 1929)
        raise ValueError(f"{scheme} proxy authentication needs both a user name and a password")
    if len(username) > 255 or len(password) > 255:
        raise ValueError(f"{scheme} proxy user names and passwords are at most 255 characters (RFC 1929)")


def parse_proxy(url: str) -> Proxy:
    """Read a proxy URL: ``scheme://[user[:password]@]host[:port][/]``.

    The schemes are those of :data:`SCHEMES` (any case); the port defaults to
    :data:`DEFAULT_PORTS`; the user name and password are percent-decoded.
    Raise :exc:`ValueError`, saying what is wrong (with the password hidden),
    for anything else.
    """
    text = str(url)
    shown = _redact_url_text(text)
    if "://" not in text:
        raise ValueError(f"proxy URL {shown!r} has no scheme: write http://{shown}, socks5://{shown}, ...")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bad port, or unbalanced brackets
        raise ValueError(f"invalid proxy URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported proxy scheme {parts.scheme + ':'!r} in {shown!r}: use one of {', '.join(SCHEMES)}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"a proxy URL is scheme://host:port, without a path, query or fragment: {shown!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"proxy URL has no host: {shown!r}")
    if port == 0:
        raise ValueError(f"invalid proxy URL {shown!r}: port 0")
    username = None if parts.username is None else urllib.parse.unquote(parts.username)
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    if username == "" and password is None:  # "http://@host"
        username = None
    try:
        return Proxy(scheme, host, DEFAULT_PORTS[scheme] if port is None else port, username, password)
    except ValueError as exc:
        raise ValueError(f"invalid proxy URL {shown!r}: {exc}") from None


def _redact_url_text(text: str) -> str:
    """``text`` (a URL, maybe malformed) with any password in it replaced by ``***``."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        return text
    userinfo, hostport = authority.rsplit("@", 1)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _REDACTED
    return f"{scheme}{separator}{userinfo}@{hostport}{tail}"


def _is_host(host: str) -> bool:
    """A host name (ASCII or not: IDNA-encoded later) or an IP address, nothing that could break a request line."""
    if _ip_address(host) is not None:
        return True
    try:
        _ascii_host(host)
    except ValueError:
        return False
    return True


def _ascii_host(host: str) -> str:
    """The ASCII form of a host name (IDNA for a non-ASCII one), checked; ValueError if it is not one."""
    try:
        name = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"not a valid host name: {host!r}") from None
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"not a valid host name: {host!r}")
    return name


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unbracketed(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


# --- the environment ---------------------------------------------------------------


ProxySetting: TypeAlias = str | Proxy | bool | None
"""What the ``proxy=`` keyword takes: a URL, a :class:`Proxy`, ``True`` (the environment) or ``None``/``False``."""


def resolve_proxy(
    proxy: ProxySetting,
    scheme: str,
    host: str,
    port: int,
    environ: Mapping[str, str] = os.environ,
) -> Proxy | None:
    """The proxy to use for a connection to ``scheme://host:port`` (``scheme``: ``ws`` or ``wss``), or ``None``.

    ``None`` or ``False``: no proxy.  ``True``: :func:`proxy_from_environment`
    (reading ``environ``, :data:`os.environ` by default).  A string: :func:`parse_proxy`
    (an explicit proxy is used for every host: ``no_proxy`` does not apply).  A
    :class:`Proxy`: itself.  Raise :exc:`ValueError` for a bad URL,
    :exc:`TypeError` for anything else.
    """
    if proxy is None or proxy is False:
        return None
    if proxy is True:
        return proxy_from_environment(scheme, host, port, environ)
    if isinstance(proxy, Proxy):
        return proxy
    if isinstance(proxy, str):
        return parse_proxy(proxy)
    raise TypeError(f"proxy must be a URL (str), a trio_ws Proxy, True or None, not {type(proxy).__name__}")


def proxy_from_environment(
    scheme: str,
    host: str,
    port: int,
    environ: Mapping[str, str] = os.environ,
) -> Proxy | None:
    """The proxy the environment gives for ``scheme://host:port``, or ``None``.

    For ``wss``: ``wss_proxy``, else ``https_proxy``, else ``all_proxy``; for
    ``ws``: ``ws_proxy``, else ``http_proxy``, else ``all_proxy`` (``http``
    and ``https`` are taken as ``ws`` and ``wss``).  Each name is read in
    lower case first, then in upper case; a variable set to an empty string
    counts as unset.  ``HTTP_PROXY`` in upper case is ignored when
    ``REQUEST_METHOD`` is set: a CGI program gets ``HTTP_PROXY`` from the
    request's ``Proxy:`` header ("httpoxy").  A value without a scheme is an
    ``http://`` proxy.  ``None`` when ``no_proxy`` (or ``NO_PROXY``) matches
    the host and port (see :func:`no_proxy_matches`).

    Raise :exc:`ValueError`, naming the variable, if its value is not a proxy URL.
    """
    names = _ENVIRONMENT.get(scheme.lower())
    if names is None:
        raise ValueError(f"scheme must be 'ws' or 'wss', not {scheme!r}")
    for name in names:
        found = _environment_value(name, environ)
        if found is not None:
            break
    else:
        return None
    variable, value = found
    no_proxy = _environment_value("no_proxy", environ)
    if no_proxy is not None and no_proxy_matches(no_proxy[1], host, port):
        return None
    text = value if "://" in value else "http://" + value
    try:
        return parse_proxy(text)
    except ValueError as exc:
        raise ValueError(f"${variable}: {exc}") from None


def _environment_value(name: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(the variable's name as set, its value, stripped) for ``name`` in lower case, then upper case."""
    candidates = [name, name.upper()]
    if name == "http_proxy" and "REQUEST_METHOD" in environ:
        candidates.pop()  # httpoxy: under CGI, HTTP_PROXY comes from the client
    for candidate in candidates:
        value = environ.get(candidate, "").strip()
        if value:
            return candidate, value
    return None


def no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``no_proxy`` (the variable's value) exempts ``host``:``port`` from the proxy.

    Entries are separated by commas and/or white space, and compared without
    regard to case:

    - ``*`` matches every host;
    - a host name matches itself and its subdomains: ``example.com``,
      ``.example.com`` and ``*.example.com`` all match ``example.com`` and
      ``ws.example.com`` (never ``badexample.com``);
    - an IPv4 or IPv6 address (``127.0.0.1``, ``::1``, ``[::1]``) matches that
      address, a CIDR range (``10.0.0.0/8``, ``fd00::/8``) the addresses in it;
      only when the target is given as an address: no name is resolved;
    - any of these followed by ``:port`` (``example.com:8443``, ``[::1]:8080``)
      matches that port only.

    Malformed entries match nothing.
    """
    target = _unbracketed(host.strip()).lower().rstrip(".")
    address = _ip_address(target)
    return any(
        _entry_matches(entry.lower(), target, address, port) for entry in _NO_PROXY_SEPARATORS.split(no_proxy) if entry
    )


def _entry_matches(
    entry: str, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int
) -> bool:
    if entry == "*":
        return True
    split = _split_entry_port(entry)
    if split is None:
        return False
    pattern, entry_port = split
    if entry_port is not None and entry_port != port:
        return False
    if "/" in pattern:
        try:
            network = ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
        return address is not None and address.version == network.version and address in network
    pattern_address = _ip_address(pattern)
    if pattern_address is not None or address is not None:
        return address == pattern_address
    domain = pattern.removeprefix("*").lstrip(".").rstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def _split_entry_port(entry: str) -> tuple[str, int | None] | None:
    """A ``no_proxy`` entry as (pattern, port or None); None if malformed."""
    if entry.startswith("["):
        close = entry.find("]")
        if close == -1:
            return None
        inside, rest = entry[1:close], entry[close + 1 :]
        if not rest:
            return inside, None
        if rest.startswith("/"):  # [fd00::]/8
            return inside + rest, None
        if rest.startswith(":"):
            port = _entry_port(rest[1:])
            return None if port is None else (inside, port)
        return None
    if entry.count(":") == 1:
        pattern, _, text = entry.partition(":")
        port = _entry_port(text)
        return None if port is None or not pattern else (pattern, port)
    return entry, None  # a name, an IPv4 address, or an IPv6 address (two colons or more), maybe with /prefix


def _entry_port(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


# --- errors ------------------------------------------------------------------------


class ProxyError(HandshakeError):
    """Connecting through the proxy failed.

    ``proxy`` is the proxy's URL (password hidden).  ``status_code`` is the
    HTTP status the proxy answered ``CONNECT`` with (407, 403, 502, ...), and
    ``headers`` that answer's headers as ``(name, value)`` byte pairs;
    ``reply_code`` is the SOCKS reply code when a SOCKS proxy refused (for
    example 5, connection refused, or 0x5B, SOCKS4 request rejected).  Each is
    ``None`` (``headers``: empty) when it does not apply: a TCP or TLS failure
    reaching the proxy, a malformed answer.  ``__cause__`` is the underlying
    error, if any.
    """

    def __init__(
        self,
        message: str,
        proxy: str,
        status_code: int | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        reply_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status_code = status_code
        self.headers = headers
        self.reply_code = reply_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.proxy, self.status_code, self.headers, self.reply_code))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}<proxy={self.proxy}, status_code={self.status_code}>"


# --- connecting --------------------------------------------------------------------


def check_proxy_support(proxy: Proxy) -> None:
    """Raise :exc:`ImportError`, naming the ``socks`` extra, if ``proxy`` needs python-socks and it is missing.

    :func:`connect_through` calls it before opening anything; a client may call
    it earlier, to fail before it starts connecting.
    """
    if proxy.scheme.startswith("socks"):
        _socks_backend(proxy)


def _socks_backend(proxy: Proxy) -> Any:
    """python-socks's trio (v2) module, or ImportError saying how to install it."""
    try:
        from python_socks.async_.trio import v2
    except ImportError as exc:
        raise ImportError(
            f"{proxy.scheme}:// proxies need python-socks with its trio backend: {_SOCKS_EXTRA_HINT}",
            name="python_socks",
        ) from exc
    return v2


async def connect_through(
    proxy: Proxy,
    host: str,
    port: int,
    *,
    ssl_context_for_proxy: ssl.SSLContext | None = None,
) -> trio.abc.Stream:
    """Open a stream to ``host``:``port`` through ``proxy``.

    ``http``/``https``: TCP to the proxy (then TLS, for ``https``, checked
    against ``ssl_context_for_proxy``, by default :func:`ssl.create_default_context`,
    for the proxy's name) and ``CONNECT host:port``, with Basic
    authentication if the proxy has credentials; any 2xx answer opens the
    tunnel.  ``socks4``/``socks5`` resolve ``host`` here, ``socks4a``/``socks5h``
    let the proxy resolve it (python-socks does the SOCKS exchange).

    The stream is the proxy connection itself, now a tunnel: a plain
    :class:`trio.SocketStream` (or the :class:`trio.SSLStream` to an https
    proxy), unless the proxy sent bytes after its answer; they are then read
    first.  For ``wss://``, put TLS for ``host`` on top of it.

    Everything opened is closed if this raises or is cancelled; it has no
    timeout of its own (put it in a cancel scope).

    :raises ProxyError: the proxy could not be reached, refused, or answered
        with something that is not the protocol.
    :raises ImportError: a SOCKS proxy, and python-socks is not installed
        (before anything is opened).
    :raises ValueError: ``host`` or ``port`` cannot be sent to the proxy.
    """
    check_proxy_support(proxy)
    authority = _authority(host, port)
    if proxy.scheme in ("http", "https"):
        return await _connect_http(proxy, authority, ssl_context_for_proxy)
    return await _connect_socks(proxy, host, port)


def _authority(host: str, port: int) -> str:
    """``host:port`` as the request target of CONNECT; ValueError if it is not one."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
    bare = _unbracketed(host)
    address = _ip_address(bare)
    if address is not None:
        return f"{_bracketed(bare)}:{port}"
    return f"{_ascii_host(bare)}:{port}"


def _raise_one_cancelled(group: BaseExceptionGroup[BaseException]) -> None:
    """trio tries addresses concurrently: cancelled meanwhile, it raises a group of Cancelled.  Raise one."""
    rest = group.split(trio.Cancelled)[1]
    if rest is None:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


async def _open_tcp(proxy: Proxy) -> trio.SocketStream:
    try:
        return await trio.open_tcp_stream(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"could not connect to the proxy {proxy.url}: {exc}", proxy.url) from exc
    except BaseExceptionGroup as group:
        _raise_one_cancelled(group)
        raise


async def _connect_http(proxy: Proxy, authority: str, context: ssl.SSLContext | None) -> trio.abc.Stream:
    stream: trio.abc.Stream = await _open_tcp(proxy)
    try:
        if proxy.scheme == "https":
            stream = tls = trio.SSLStream(
                stream,
                context if context is not None else ssl.create_default_context(),
                server_hostname=proxy.host,
                https_compatible=True,
            )
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                reason = exc.__cause__ if exc.__cause__ is not None else exc
                raise ProxyError(f"the TLS handshake with the proxy {proxy.url} failed: {reason}", proxy.url) from exc
        extra = await _tunnel(stream, proxy, authority)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if not extra:
        return stream
    if isinstance(stream, trio.abc.HalfCloseableStream):
        return _PrefixedHalfCloseableStream(stream, extra)
    return _PrefixedStream(stream, extra)


def _connect_headers(proxy: Proxy, authority: str) -> list[tuple[str, str]]:
    headers = [("Host", authority)]
    if proxy.username is not None:
        credentials = f"{proxy.username}:{proxy.password or ''}".encode()  # RFC 7617: UTF-8
        headers.append(("Proxy-Authorization", "Basic " + base64.b64encode(credentials).decode("ascii")))
    return headers


async def _tunnel(stream: trio.abc.Stream, proxy: Proxy, authority: str) -> bytes:
    """Send CONNECT, read the answer; return the bytes that came after it (the tunnel's first)."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    request = connection.send(
        h11.Request(method="CONNECT", target=authority, headers=_connect_headers(proxy, authority))
    )
    try:
        await stream.send_all(request or b"")
        response = await _read_response(stream, connection, proxy)
    except trio.BrokenResourceError as exc:
        raise ProxyError(f"the connection to the proxy {proxy.url} broke: {exc.__cause__ or exc}", proxy.url) from exc
    except h11.RemoteProtocolError as exc:
        what = f"more than {MAX_RESPONSE_HEAD} bytes of head" if exc.error_status_hint == 431 else str(exc)
        raise ProxyError(f"the proxy {proxy.url} did not answer CONNECT with HTTP: {what}", proxy.url) from exc
    if not 200 <= response.status_code < 300:
        _refused(proxy, authority, response)
    extra, _ = connection.trailing_data
    return bytes(extra)


async def _read_response(stream: trio.abc.Stream, connection: h11.Connection, proxy: Proxy) -> h11.Response:
    """The final response (informational ones skipped)."""
    received = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(_RECEIVE_BYTES))
            if not data:
                when = "without answering" if received == 0 else "in the middle of its answer to"
                raise ProxyError(f"the proxy {proxy.url} closed the connection {when} CONNECT", proxy.url)
            received += len(data)
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            return event
        # else h11.InformationalResponse (1xx): the final answer follows


def _refused(proxy: Proxy, authority: str, response: h11.Response) -> NoReturn:
    status = response.status_code
    reason = response.reason.decode("latin-1", "replace")
    message = f"the proxy {proxy.url} refused CONNECT {authority}: {status} {reason}".rstrip()
    if status == 407 and proxy.username is None:
        message += " (it wants credentials: put user:password@ in the proxy URL)"
    elif status in (401, 407):
        message += " (it did not accept the credentials)"
    raise ProxyError(message, proxy.url, status, tuple((name, value) for name, value in response.headers))


async def _connect_socks(proxy: Proxy, host: str, port: int) -> trio.abc.Stream:
    v2 = _socks_backend(proxy)
    import python_socks

    kind = python_socks.ProxyType.SOCKS4 if proxy.scheme.startswith("socks4") else python_socks.ProxyType.SOCKS5
    remote_dns = proxy.scheme in ("socks4a", "socks5h")
    bare = _unbracketed(host)
    target = bare if _ip_address(bare) is not None else _ascii_host(bare)
    if kind is python_socks.ProxyType.SOCKS4 and isinstance(_ip_address(target), ipaddress.IPv6Address):
        raise ValueError(f"a {proxy.scheme} proxy cannot reach an IPv6 address ({host}): use socks5")
    client = v2.Proxy(kind, proxy.host, proxy.port, proxy.username, proxy.password, rdns=remote_dns)
    try:
        # No timeout of python-socks's own (it would be 60 s): the caller's cancel scope bounds this.
        wrapped = await client.connect(target, port, timeout=math.inf)
    except python_socks.ProxyConnectionError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ProxyError(f"could not connect to the proxy {proxy.url}: {cause}", proxy.url) from exc
    except python_socks.ProxyError as exc:
        raise ProxyError(
            f"the proxy {proxy.url} refused the connection to {_bracketed(bare)}:{port}: {exc}",
            proxy.url,
            reply_code=exc.error_code,
        ) from exc
    except (trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ProxyError(
            f"connecting to {_bracketed(bare)}:{port} through the proxy {proxy.url} failed: {cause}", proxy.url
        ) from exc
    except BaseExceptionGroup as group:
        _raise_one_cancelled(group)
        raise
    stream: trio.abc.Stream = wrapped.trio_stream
    return stream


class _PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were read already (they came with the proxy's answer)."""

    def __init__(self, transport_stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = transport_stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._prefix:
            return await self.transport_stream.receive_some(max_bytes)
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint()
        size = len(self._prefix) if max_bytes is None else max_bytes
        chunk, self._prefix = self._prefix[:size], self._prefix[size:]
        return chunk

    async def aclose(self) -> None:
        self._prefix = b""
        await self.transport_stream.aclose()


class _PrefixedHalfCloseableStream(_PrefixedStream, trio.abc.HalfCloseableStream):
    """The same, over a stream that can send EOF (TCP to an http:// proxy)."""

    transport_stream: trio.abc.HalfCloseableStream

    def __init__(self, transport_stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        super().__init__(transport_stream, prefix)

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()
