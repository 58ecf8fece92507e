"""Endpoint: the address of one side of a connection or of a listener."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import trio

from ._url import default_port

__all__ = ["Endpoint", "TakenAddress", "listener_endpoint", "stream_endpoint"]


class Endpoint:
    """An IP address, a TCP port and whether TLS is in use."""

    def __init__(self, address: str | int, port: int, is_ssl: bool) -> None:
        #: The IP address, an :class:`ipaddress.IPv4Address` or ``IPv6Address``.
        self.address: IPv4Address | IPv6Address = ip_address(address)
        #: The TCP port.
        self.port = port
        #: Whether TLS is in use.
        self.is_ssl = is_ssl

    @property
    def url(self) -> str:
        """The endpoint as a URL, e.g. ``ws://127.0.0.1:8000`` or ``wss://[::1]``."""
        scheme = "wss" if self.is_ssl else "ws"
        host = str(self.address) if self.address.version == 4 else f"[{self.address}]"
        return f"{scheme}://{host}" if self.port == default_port(self.is_ssl) else f"{scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        return f'Endpoint(address="{self.address}", port={self.port}, is_ssl={self.is_ssl})'


def _socket_endpoint(sock: trio.socket.SocketType, is_ssl: bool, *, local: bool) -> Endpoint | None:
    try:
        name: Any = sock.getsockname() if local else sock.getpeername()
        return Endpoint(name[0], name[1], is_ssl)
    except (OSError, ValueError, TypeError, IndexError):
        # A closed socket, or not an IP socket (AF_UNIX names are strings).
        return None


class TakenAddress:
    """One side's socket address, taken from a stream before it closes; see stream_endpoint().

    Taking the address is a system call; making an :class:`Endpoint` of it
    parses the IP address, which costs ten times more.  A connection takes
    both addresses when it closes its socket (a closed socket no longer
    knows them) and makes Endpoints only if someone asks.
    """

    __slots__ = ("is_ssl", "name")

    def __init__(self, stream: object, *, local: bool) -> None:
        self.name: Any = None
        self.is_ssl = False
        inner = stream
        if isinstance(inner, trio.SSLStream):
            inner = inner.transport_stream
            self.is_ssl = True
        if isinstance(inner, trio.SocketStream):
            try:
                self.name = inner.socket.getsockname() if local else inner.socket.getpeername()
            except OSError:  # closed already, or never connected
                pass


def stream_endpoint(stream: object, *, local: bool, taken: TakenAddress | None = None) -> Endpoint | str:
    """The local or remote endpoint of a stream, or its ``repr()`` when it has none.

    ``taken``: the address as taken earlier, instead of asking the socket now.
    """
    address = taken if taken is not None else TakenAddress(stream, local=local)
    if address.name is not None:
        try:
            return Endpoint(address.name[0], address.name[1], address.is_ssl)
        except (ValueError, TypeError, IndexError):
            pass  # not an IP socket (AF_UNIX names are strings)
    return repr(stream)


def listener_endpoint(listener: object) -> Endpoint | str:
    """The address a listener is bound to, or its ``repr()`` when it has none."""
    is_ssl = False
    inner = listener
    if isinstance(inner, trio.SSLListener):
        inner = inner.transport_listener
        is_ssl = True
    if isinstance(inner, trio.SocketListener):
        endpoint = _socket_endpoint(inner.socket, is_ssl, local=True)
        if endpoint is not None:
            return endpoint
    return repr(listener)
