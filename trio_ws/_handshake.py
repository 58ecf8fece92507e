"""Checks on the HTTP headers and status codes a caller hands to a handshake.

wsproto and h11 reject bad values too, but only while building the response,
sometimes after changing their own state.  Checking first gives the caller a
plain :exc:`ValueError` before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["Headers", "caller_headers", "check_reject_status"]

Headers = list[tuple[bytes, bytes]]

# RFC 9110: a field name is a token; a field value is visible characters
# separated by spaces or tabs, with no white space at either end.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?\Z")

# Headers that the WebSocket handshake itself sets.  A caller's copy would be
# sent twice or contradict ours, so it is dropped (trio-websocket documents
# that such headers "will be overwritten").
PROTOCOL_HEADERS = frozenset(
    {
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    }
)


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {what} {value!r} is not latin-1 text") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"header {what} must be bytes or str, not {type(value).__name__}")


def caller_headers(
    headers: Iterable[tuple[bytes | str, bytes | str]] | None,
    drop: frozenset[bytes] = PROTOCOL_HEADERS,
) -> Headers:
    """Validate ``(name, value)`` pairs from the caller; drop the ones in ``drop``.

    Raises :exc:`ValueError` for a name that is not an HTTP token or a value
    with control characters (which could split the response).
    """
    result: Headers = []
    for pair in headers or ():
        try:
            raw_name, raw_value = pair
        except (TypeError, ValueError):
            raise ValueError(f"a header must be a (name, value) pair, not {pair!r}") from None
        name = _as_bytes(raw_name, "name")
        value = _as_bytes(raw_value, "value")
        if not _TOKEN.match(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
        if not _VALUE.match(value):
            raise ValueError(f"invalid HTTP header value {value!r} for {name!r}")
        if name.lower() in drop:
            continue
        result.append((name, value))
    return result


def check_reject_status(status_code: int) -> None:
    """A rejection is a final HTTP response: 200 to 599, and never 101."""
    if not isinstance(status_code, int) or isinstance(status_code, bool):
        raise TypeError(f"status_code must be an int, not {type(status_code).__name__}")
    if not 200 <= status_code <= 599:
        raise ValueError(f"cannot reject a handshake with HTTP status {status_code}: use 200-599 (usually 4xx)")
