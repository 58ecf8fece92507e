"""The settings every entry point takes, in one frozen object, validated once.

``open_websocket``, ``serve_websocket`` and the other entry points keep
trio-websocket's signatures (and add keywords of their own); each builds an
:class:`Options` from its arguments, so that a bad value fails with the same
error wherever it is given, before any socket is opened, and so that a
server's connections all share one object instead of each keeping a copy of
eight settings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ._deflate import Deflate, to_deflate
from ._version import __version__

__all__ = [
    "CONN_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BYTES",
    "SERVER_HEADER",
    "WRITE_LIMIT",
    "Options",
]

# trio-websocket 0.12's defaults, kept for drop-in compatibility.
CONN_TIMEOUT = 60
MESSAGE_QUEUE_SIZE = 1
MAX_MESSAGE_SIZE = 2**20
RECEIVE_BYTES = 4 * 2**10
# New in trio_ws: how many bytes broadcast() may queue for a connection that
# is not taking them (see docs/broadcast.md for how this was chosen).
WRITE_LIMIT = 2**16
SERVER_HEADER = f"trio_ws/{__version__}"  # the Server header of every HTTP answer


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True, slots=True)
class Options:
    """Settings of a connection, or of every connection a server accepts."""

    message_queue_size: int = MESSAGE_QUEUE_SIZE
    max_message_size: int = MAX_MESSAGE_SIZE
    receive_buffer_size: int | None = RECEIVE_BYTES
    connect_timeout: float = CONN_TIMEOUT
    disconnect_timeout: float = CONN_TIMEOUT
    compression: str | Deflate | None = None  # None, "deflate" (Deflate()'s defaults) or a Deflate
    ping_interval: float | None = None
    ping_timeout: float | None = None
    write_limit: int = WRITE_LIMIT
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None  # None: trio_ws.server or trio_ws.client
    server_header: str | None = SERVER_HEADER

    def __post_init__(self) -> None:
        size = self.message_queue_size
        if not (isinstance(size, int) or size == math.inf) or isinstance(size, bool) or size < 0:
            # as trio.open_memory_channel, which trio-websocket used
            raise ValueError("message_queue_size must be >= 0")
        if not _is_number(self.max_message_size) or self.max_message_size < 0:
            raise ValueError(f"max_message_size must be a number of bytes >= 0, not {self.max_message_size!r}")
        size = self.receive_buffer_size  # type: ignore[assignment]
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"receive_buffer_size must be a positive int or None, not {size!r}")
        for name in ("connect_timeout", "disconnect_timeout"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a number of seconds, not {getattr(self, name)!r}")
        to_deflate(self.compression)  # raises ValueError for anything else
        limit = self.write_limit
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"write_limit must be a number of bytes >= 0, not {limit!r}")
        if self.logger is not None and not isinstance(self.logger, (logging.Logger, logging.LoggerAdapter)):
            raise TypeError(f"logger must be a logging.Logger or LoggerAdapter, not {type(self.logger).__name__}")
        if self.server_header is not None and not (
            isinstance(self.server_header, str) and self.server_header.isprintable() and self.server_header.isascii()
        ):
            raise ValueError(f"server_header must be printable ASCII text or None, not {self.server_header!r}")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")

    @property
    def keepalive_timeout(self) -> float:
        """How long keepalive waits for a pong: ``ping_timeout``, else ``ping_interval``."""
        return self.ping_timeout if self.ping_timeout is not None else (self.ping_interval or 0)
