"""A client that reconnects: ``reconnecting_websocket_url()``, its backoff and its retry policy.

The shape is an ``async with`` around an ``async for``::

    async with trio_ws.reconnecting_websocket_url(url) as connections:
        async for ws in connections:
            try:
                async for message in ws:
                    ...
            except trio_ws.ConnectionClosed:
                pass  # lost: the next iteration reconnects

Why two statements and not a bare ``async for``: a connection's reader task
needs a nursery that encloses the code using the connection, and neither an
async generator nor an iterator can hold a nursery (or any cancel scope)
open across the loop body without corrupting trio's cancel-scope stack
when the body is left by ``break`` or by another scope's cancellation.
And a bare ``break`` calls nothing on the iterator, so nothing could close
the last connection.  Here the ``async with`` owns one nursery for the life
of the loop; ``__anext__`` only waits, connects and closes, entering no
scope that it leaves open.

Each connection is opened by :func:`open_websocket_url` itself, run by an
*owner* task in that nursery (started with ``nursery.start``, so that the
connect runs under the caller's cancel scopes): every keyword of
``open_websocket_url`` works as it does there, its errors are the ones the
retry policy sees, and a connection is closed as ``open_websocket_url``
closes it, with a closing handshake shielded from cancellation and bounded
by ``disconnect_timeout``.  Nothing of the loop runs after the ``async with``.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import math
import random
import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast

import trio

from ._client import open_websocket_url
from ._connection import WebSocketConnection
from ._errors import ConnectionClosed, ConnectionRejected, DisconnectionTimeout, HandshakeError
from ._url import parse_url

__all__ = ["Backoff", "Reconnector", "is_retryable", "reconnecting_websocket_url"]

# The source of the jitter (a module attribute, so that tests can seed it).
_RANDOM = random.Random()

# Statuses whose Retry-After header is honoured (RFC 9110 10.2.3, RFC 6585 4).
_RETRY_AFTER_STATUSES = frozenset({429, 503})

# TLS failures that say the connection was cut, not that the peers disagree.
_TLS_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)

_LOGGER = logging.getLogger("trio_ws.client")

_NOT_ENTERED = (
    "reconnecting_websocket_url() must be entered with `async with` before it is iterated:\n"
    "    async with trio_ws.reconnecting_websocket_url(url) as connections:\n"
    "        async for ws in connections:\n"
    "            ...\n"
    "Each connection's reader task runs in a nursery that the `async with` holds open around the "
    "loop; a bare `async for` could hold none safely, and could not close the last connection when "
    "the loop is left with `break`."
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long :func:`reconnecting_websocket_url` waits between connection attempts.

    The wait before retry number ``n`` (0 for the first) is drawn uniformly
    from ``[0, min(maximum, initial * factor ** n)]`` ("full jitter": clients
    that lost the same server at the same moment come back spread out).
    ``n`` grows with every failed attempt and with every connection that
    closed sooner than ``reset_after`` seconds after it opened; a
    connection that stayed open at least that long starts it again at 0.

    :param initial: the bound of the first wait, in seconds.
    :param maximum: no wait is longer, whatever ``n`` (nor a server's
        ``Retry-After``).
    :param factor: how much the bound grows from one wait to the next (>= 1).
    :param reset_after: how long a connection must have stayed open for the
        waits to start again from ``initial``.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "factor", "reset_after"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"Backoff.{name} must be a finite number >= 0, not {value!r}")
        if self.factor < 1:
            raise ValueError(f"Backoff.factor must be >= 1, not {self.factor!r}")
        if self.initial > self.maximum:
            raise ValueError(f"Backoff.initial ({self.initial!r}) must not exceed Backoff.maximum ({self.maximum!r})")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt`` (counted from 0)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt!r}")
        try:
            bound = self.initial * self.factor**attempt
        except OverflowError:  # factor ** attempt beyond a float: long past the maximum
            return self.maximum
        return min(self.maximum, bound)

    def delay(self, attempt: int, source: random.Random | None = None) -> float:
        """A wait before retry number ``attempt``: uniform in ``[0, ceiling(attempt)]``."""
        return (source or _RANDOM).uniform(0.0, self.ceiling(attempt))


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it, as a traceback shows the chain: the explicit
    ``__cause__``, else the implicit ``__context__`` unless suppressed."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def _retryable_status(status: int) -> bool:
    return status >= 500 or status == 429


# SOCKS replies that say the proxy will not do it, not that the target is down:
# not allowed by the ruleset, command and address type not supported (RFC 1928),
# identd unreachable or disagreeing (SOCKS4).
_SOCKS_REFUSALS = frozenset({0x02, 0x07, 0x08, 0x5C, 0x5D})


def _verdict(link: BaseException) -> bool | None:
    """What one error in the chain says: ``False`` (final), ``True`` (retry), ``None`` (nothing)."""
    if isinstance(link, HandshakeError):
        # ConnectionRejected, and a proxy's refusal (trio_ws.ProxyError), carry the HTTP status.
        status = getattr(link, "status_code", None)
        if isinstance(status, int):
            return _retryable_status(status)
        reply = getattr(link, "reply_code", None)
        if isinstance(reply, int) and reply in _SOCKS_REFUSALS:
            return False
        return None
    if isinstance(link, ssl.SSLError):
        return isinstance(link, _TLS_CUT)  # else a certificate, or a disagreement on TLS
    if isinstance(link, ValueError):
        return False  # a redirect to somewhere that is no WebSocket URL, say
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether :func:`reconnecting_websocket_url` tries again after ``error`` (its default policy).

    Retried (the server or the network may be back soon):

    - the TCP connection failed: refused, reset, unreachable, a DNS failure
      (:exc:`HandshakeError` caused by an :class:`OSError`);
    - :exc:`ConnectionTimeout`;
    - :exc:`ConnectionRejected` with a 5xx status, or 429 (Too Many Requests),
      and a proxy's refusal with one of those;
    - a TLS handshake cut short (EOF, reset);
    - any other :exc:`HandshakeError`: a response cut short or garbled looks
      the same, from here, as a server going away in the middle of a restart.

    Raised at once (trying again would fail the same way):

    - :exc:`ConnectionRejected` with any other status (401, 403, 404, a
      redirect not followed...), and a proxy's refusal with one (407...);
    - what such a rejection caused (too many redirects), and a redirect to
      a URL that is no WebSocket URL;
    - a TLS certificate that does not verify, and other TLS failures where
      the peers disagree (versions, ciphers, a plain-TCP server on a
      ``wss:`` port);
    - a SOCKS proxy's refusal by its rules, or of the command or address type;
    - anything that is not a connection failure: a bad URL or argument
      (:class:`ValueError`, :class:`TypeError`), a bug.

    The whole chain of causes is considered: a :exc:`HandshakeError` caused
    by an error that is not retried is not retried.  Pass ``retry=`` to
    replace this policy; it can build on this function::

        def retry(error: Exception) -> bool:
            if isinstance(error, trio_ws.ConnectionRejected) and error.status_code == 404:
                return True  # the route is being deployed
            return trio_ws.is_retryable(error)
    """
    if not isinstance(error, (HandshakeError, OSError)):
        return False
    return all(_verdict(link) is not False for link in _chain(error))


def _retry_after(headers: tuple[tuple[bytes, bytes], ...], now: datetime | None = None) -> float | None:
    """The delay a ``Retry-After`` header asks for, in seconds (``None``: no usable header).

    The header is either a number of seconds or an HTTP date (RFC 9110 10.2.3);
    a date in the past asks for no delay.
    """
    for name, value in headers:
        if name.lower() != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        if text.isascii() and text.isdigit():
            return float(text)  # a huge number becomes inf; the caller caps it
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, with no claim about local time
            when = when.replace(tzinfo=UTC)
        now = now or datetime.now(UTC)
        return max(0.0, (when - now).total_seconds())
    return None


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRejected):
        return f"the server answered HTTP {error.status_code}"
    return f"{type(error).__name__}: {error}"


def _describe_close(ws: WebSocketConnection) -> str:
    reason = ws.closed
    if reason is None:
        return "the loop body ended"
    text = f"{reason.code} {reason.name}"
    return f"{text}: {reason.reason}" if reason.reason else text


@dataclass(eq=False)
class _Slot:
    """One connection, and the owner task that holds it open until ``release`` is set."""

    ws: WebSocketConnection
    opened_at: float
    release: trio.Event
    finished: trio.Event = field(default_factory=trio.Event)


class _Phase(enum.Enum):
    """Where a Reconnector is: its ``async with`` not entered yet, running, or over."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Reconnector:
    """What :func:`reconnecting_websocket_url` returns: enter it, then iterate it.

    ``async with`` it to get the object back, and ``async for ws in it`` for
    one open connection after another.  At most one connection is open at a
    time: it is closed when the next iteration begins, or when the
    ``async with`` block is left.
    """

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext | None,
        keywords: dict[str, Any],
        backoff: Backoff,
        retry: Callable[[Exception], bool],
        max_attempts: int | None,
    ) -> None:
        self._url = url
        self._ssl_context = ssl_context
        self._keywords = keywords
        self._backoff = backoff
        self._retry = retry
        self._max_attempts = max_attempts
        logger = keywords.get("logger")
        self._logger: logging.Logger | logging.LoggerAdapter[Any] = logger if logger is not None else _LOGGER
        parsed = parse_url(url)
        # For the log: no user name, password or query (they may hold secrets).
        path = parsed.resource.partition("?")[0]
        self._where = f"{'wss' if parsed.secure else 'ws'}://{parsed.host_header}{path}"
        self._state = _Phase.NEW  # then OPEN, then CLOSED
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._slot: _Slot | None = None
        self._step = 0  # the number of the next wait (Backoff's ``attempt``)
        self._busy = False

    @property
    def connection(self) -> WebSocketConnection | None:
        """The connection the loop last gave, until the next iteration or the end of the block."""
        return self._slot.ws if self._slot is not None else None

    def __repr__(self) -> str:
        return f"<Reconnector {self._where} {self._state.value}>"

    # --- the async with ----------------------------------------------------------------------

    async def __aenter__(self) -> Reconnector:
        """Open the nursery the connections live in (no connection yet: the first ``async for``
        step connects).  A checkpoint; cancelled, it leaves nothing open."""
        if self._state is not _Phase.NEW:
            raise RuntimeError("a reconnecting_websocket_url() object can be entered only once")
        manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        self._nursery_manager = manager
        self._state = _Phase.OPEN
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:  # never suppresses: the body's exception leaves the block as itself
        """Close the current connection (its closing handshake, bounded by
        ``disconnect_timeout``) and wait for it.  If the block is left by
        cancellation, the close still runs (shielded, and bounded) and the
        ``Cancelled`` leaves the block as itself."""
        self._state = _Phase.CLOSED
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release.set()  # its owner closes it; the nursery waits for that
            if isinstance(exc, ConnectionClosed) and slot.ws.closed is not None:
                exc.add_note(
                    "trio_ws: ConnectionClosed left the body of `async for ws in connections`, which ends the "
                    "loop; to reconnect instead, catch it in the body (`except trio_ws.ConnectionClosed: pass`)"
                )
        manager = self._nursery_manager
        assert manager is not None
        try:
            # Nothing from the body goes into the nursery: it holds only our owner
            # tasks, each now closing or done, and the body's exception leaves
            # this block as itself, never inside an ExceptionGroup.
            await manager.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            _raise_internal(group, exc)

    # --- the async for -----------------------------------------------------------------------

    def __aiter__(self) -> Reconnector:
        if self._state is _Phase.NEW:
            raise TypeError(_NOT_ENTERED)
        if self._state is _Phase.CLOSED:
            raise RuntimeError("this reconnecting_websocket_url() block has ended; make a new one")
        return self

    async def __anext__(self) -> WebSocketConnection:
        if self._state is not _Phase.OPEN:
            raise TypeError(_NOT_ENTERED) if self._state is _Phase.NEW else RuntimeError("the block has ended")
        if self._busy:
            raise RuntimeError("another task is already waiting for the next connection")
        self._busy = True
        try:
            return await self._next()
        finally:
            self._busy = False

    async def _next(self) -> WebSocketConnection:
        slot = self._slot
        if slot is not None:
            self._slot = None
            lived = trio.current_time() - slot.opened_at
            why = _describe_close(slot.ws)
            slot.release.set()
            await slot.finished.wait()
            if lived >= self._backoff.reset_after:
                self._step = 0
            delay = self._next_delay()
            self._log(
                "%s: connection %s ended after %.1f s (%s); reconnecting in %.2f s",
                self._where, slot.ws, lived, why, delay, delay=delay,
            )  # fmt: skip
            await trio.sleep(delay)
        nursery = self._nursery
        assert nursery is not None
        failures = 0
        while True:
            try:
                slot = cast("_Slot", await nursery.start(self._own))
            except Exception as error:
                failures += 1
                if not self._retry(error):
                    raise
                if self._max_attempts is not None and failures >= self._max_attempts:
                    error.add_note(f"trio_ws: gave up after {failures} attempt(s) to connect to {self._where}")
                    raise
                delay, hint = self._delay_after(error)
                self._log(
                    "%s: attempt %d failed (%s); retrying in %.2f s%s",
                    self._where, failures, _describe(error), delay, hint, delay=delay,
                )  # fmt: skip
                await trio.sleep(delay)
                continue
            self._slot = slot
            return slot.ws

    def _next_delay(self) -> float:
        delay = self._backoff.delay(self._step)
        self._step += 1
        return delay

    def _delay_after(self, error: Exception) -> tuple[float, str]:
        """The wait after a failed attempt, and what the log adds about it."""
        delay = self._next_delay()
        status, headers = getattr(error, "status_code", None), getattr(error, "headers", None)
        if isinstance(error, HandshakeError) and status in _RETRY_AFTER_STATUSES and isinstance(headers, tuple):
            asked = _retry_after(headers)
            if asked is not None:
                # The server's delay is a floor, our maximum a ceiling.
                delay = min(self._backoff.maximum, max(delay, asked))
                return delay, f" (the server asked for {asked:g} s)"
        return delay, ""

    def _log(self, message: str, *args: object, delay: float) -> None:
        self._logger.info(message, *args, extra={"ws_url": self._where, "ws_delay": delay})

    async def _own(self, *, task_status: trio.TaskStatus[_Slot] = trio.TASK_STATUS_IGNORED) -> None:
        """Open a connection, hand it over, hold it open until released, then close it.

        Until ``started`` this task runs under the caller's cancel scopes, and
        whatever it raises is raised by ``nursery.start()``, as itself.
        """
        release = trio.Event()
        slot: _Slot | None = None
        try:
            async with open_websocket_url(self._url, self._ssl_context, **self._keywords) as ws:
                slot = _Slot(ws, trio.current_time(), release)
                task_status.started(slot)
                await release.wait()
        except DisconnectionTimeout as error:
            # The connection is gone either way (aborted); the loop goes on.
            self._logger.info("%s: %s; the connection was aborted", self._where, error, extra={"ws_url": self._where})
        except trio.Cancelled:
            if slot is None:
                raise  # the caller's cancellation, while connecting: start() raises it
            # Cancelled with the block, after a closing handshake shielded and
            # bounded: nothing is left to do, and nothing to report.
        finally:
            if slot is not None:
                slot.finished.set()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def _raise_internal(group: BaseExceptionGroup[BaseException], body_error: BaseException | None) -> None:
    """An owner task crashed (a bug in trio_ws, or KeyboardInterrupt delivered there): say so.

    The crash cancels the body, and closes the connection the body may be
    using: a Cancelled or a ConnectionClosed from the body is its consequence,
    and the crash is raised instead.  Any other exception of the body's wins,
    with the crash as its context.
    """
    internal = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in internal):
        raise KeyboardInterrupt from group
    if body_error is not None and not isinstance(body_error, (trio.Cancelled, ConnectionClosed)):
        raise body_error  # (called in the handler of ``group``: that becomes its context)
    if len(internal) == 1:
        raise internal[0]
    raise group


def reconnecting_websocket_url(
    url: str,
    ssl_context: ssl.SSLContext | None = None,
    *,
    backoff: Backoff | None = None,
    retry: Callable[[Exception], bool] | None = None,
    max_attempts: int | None = None,
    **keywords: Any,
) -> Reconnector:
    """Connect to ``url``, and again each time the connection ends: one connection per iteration.

    ::

        async with trio_ws.reconnecting_websocket_url(url) as connections:
            async for ws in connections:
                try:
                    async for message in ws:
                        print(message)
                except trio_ws.ConnectionClosed:
                    pass  # lost: the loop reconnects

    Each iteration opens a connection with :func:`open_websocket_url` (``ssl_context``
    and every keyword it takes, ``connect_timeout`` and ``disconnect_timeout``
    among them, are passed on) and gives it open.  When the body is done with
    it (it ends, or ``continue``), the connection is closed as
    ``open_websocket_url`` closes it, and after a wait (``backoff``) the next
    iteration reconnects.  However the server closes a connection, the loop
    reconnects; what ends the loop is ``break``, an exception, a cancellation,
    or a connection failure that is not retried.

    A :exc:`ConnectionClosed` raised by the body ends the loop too (``async
    for`` cannot see the body's exceptions): catch it in the body, as above,
    to reconnect instead.

    Leaving the ``async with`` block closes the current connection cleanly
    (1000, a closing handshake shielded from cancellation and bounded by
    ``disconnect_timeout``); nothing of the loop runs after it.  Cancellation
    ends the loop at once, during a wait or a connection attempt too.

    :param backoff: the waits between attempts (default: ``Backoff()``).
    :param retry: ``retry(error) -> bool``: whether to try again after an
        attempt failed with ``error``; replaces :func:`is_retryable`, the default.
    :param max_attempts: how many attempts in a row may fail before the last
        error is raised (each connection that opens starts the count again);
        ``None``, the default, for no limit.
    :raises ValueError: (at once) ``url`` is not a WebSocket URL, or an argument is invalid.
    :raises TypeError: (at once) a keyword that :func:`open_websocket_url` does not take.

    Each retry is logged at INFO on ``trio_ws.client`` (or the ``logger=``
    given) with its reason and its delay.  A ``Retry-After`` header on a 429
    or 503 answer is honoured: the wait is at least what it asks, and at most
    ``backoff.maximum``.
    """
    # Bad URLs and keywords fail here, not inside the loop: open_websocket_url
    # checks both when called (its connecting waits until it is entered).
    open_websocket_url(url, ssl_context, **keywords)
    if backoff is None:
        backoff = Backoff()
    elif not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a trio_ws.Backoff, not {type(backoff).__name__}")
    if retry is not None and not callable(retry):
        raise TypeError(f"retry must be a callable (error) -> bool, not {type(retry).__name__}")
    if max_attempts is not None and (
        not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
    ):
        raise ValueError(f"max_attempts must be None or an int >= 1, not {max_attempts!r}")
    return Reconnector(url, ssl_context, dict(keywords), backoff, retry or is_retryable, max_attempts)
