"""Logging: which logger, the connection in every record, and the trace of frames.

Records go to ``trio_ws.server`` for what a server does and ``trio_ws.client``
for a client (both children of ``trio_ws``), or to the logger given as
``logger=`` to an entry point.  Every record about a connection starts with
its name (``server-12``) and carries ``extra`` fields: ``ws_connection``
(that name) and ``ws_id`` (its number), for formatters and filters.

Levels: what the peer does wrong (a bad handshake, a protocol violation, a
refused origin) is INFO or DEBUG; what the application does wrong (a handler
that raises) is ERROR with its traceback; the server's own trouble (out of
file descriptors, ``max_connections`` reached) is WARNING or ERROR.  At
DEBUG, every frame out and every event in is traced: its type, its length
and the start of its payload.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

__all__ = ["CLIENT_LOGGER", "SERVER_LOGGER", "Logger", "describe_event", "describe_frames", "log"]

SERVER_LOGGER = logging.getLogger("trio_ws.server")
CLIENT_LOGGER = logging.getLogger("trio_ws.client")

_OPCODES = {0x0: "CONTINUATION", 0x1: "TEXT", 0x2: "BINARY", 0x8: "CLOSE", 0x9: "PING", 0xA: "PONG"}
_SHOWN = 32  # payload bytes shown in a trace line


Logger = logging.Logger | logging.LoggerAdapter[Any]


def log(logger: Logger, level: int, connection: object, message: str, *args: object, exc_info: Any = None) -> None:
    """One record about ``connection`` (its name first, and in ``extra``)."""
    if logger.isEnabledFor(level):
        name = str(connection)
        extra = {"ws_connection": name, "ws_id": getattr(connection, "_id", None)}
        logger.log(level, "%s: " + message, name, *args, exc_info=exc_info, extra=extra)


def _shown(payload: bytes | str) -> str:
    text = repr(payload[:_SHOWN])
    return text + ("..." if len(payload) > _SHOWN else "")


def describe_frames(data: bytes) -> list[str]:
    """The frames in ``data`` (bytes we write), one line each; a masked payload is shown masked."""
    lines: list[str] = []
    position = 0
    while position + 2 <= len(data):
        first, second = data[position], data[position + 1]
        length, head = second & 0x7F, 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, position + 2)
            head = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, position + 2)
            head = 10
        if second & 0x80:
            head += 4
        payload = data[position + head : position + head + length]
        opcode = _OPCODES.get(first & 0x0F, hex(first & 0x0F))
        flags = ("" if first & 0x80 else " (more to come)") + (" (compressed)" if first & 0x40 else "")
        lines.append(f"> {opcode}{flags} {length} bytes {_shown(payload)}")
        position += head + length
    if position < len(data) and not lines:  # not a frame: an HTTP answer
        lines.append(f"> {len(data)} bytes {_shown(data)}")
    return lines


def describe_event(kind: str, payload: object) -> str:
    """An event received, as a trace line."""
    if isinstance(payload, (bytes, str)):
        return f"< {kind} {len(payload)} {'characters' if isinstance(payload, str) else 'bytes'} {_shown(payload)}"
    return f"< {kind} {payload!r}"
