"""The Redis backend of open_pubsub(): coredis on Trio, one subscribing connection, reconnection.

coredis (6.0 and newer) does its I/O through anyio, so it runs on Trio.
Nothing of it leaves this module: its exceptions, and the ExceptionGroups its
task groups raise, become :exc:`PubSubError` or a reconnection.

One bus holds one subscribing connection (coredis's ``PubSub``), owned by
the *reader* task: it connects, subscribes to every topic some local
subscription wants, then hands each message to the bus.  When the connection
is lost it waits as ``backoff`` says and starts again; what is published in
between is lost (at most once).  Subscribing goes through that connection
under a lock, so that a topic added while the reader resubscribes is
subscribed once or twice (harmless in Redis) but never missed; unsubscribing
is left to the *unsubscriber* task, so that leaving a subscription's block
never waits.  Publishing takes a connection from coredis's pool.

On the wire a message is one marker byte, ``t`` (UTF-8 text follows) or
``b`` (bytes follow), so that str stays str and bytes stays bytes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ._errors import reraise
from ._pubsub import LOGGER, Deliver, Message, PubSubError, PubSubState, _hide_password
from ._reconnect import Backoff

if TYPE_CHECKING:
    import coredis
    import coredis.patterns.pubsub

__all__ = ["RedisBackend", "redis_backend"]

REDIS_EXTRA_HINT = "pip install 'trio-ws[redis]'"

_TEXT = b"t"
_BYTES = b"b"

# A malformed message (published by something else than a bus) is logged at
# most once per this many seconds, like a subscriber's drops.
_MALFORMED_LOG_INTERVAL = 10.0


def _coredis() -> Any:
    """The coredis module, or ImportError naming the ``redis`` extra."""
    try:
        import coredis
    except ImportError as exc:
        raise ImportError(f"redis:// pub/sub needs coredis: {REDIS_EXTRA_HINT}", name="coredis") from exc
    return coredis


def redis_backend(url: str, *, backoff: Backoff, connect_timeout: float) -> Callable[[Deliver], RedisBackend]:
    """A maker of the backend for ``url``, the bus's ``deliver`` to come (coredis is imported here)."""
    _coredis()

    def make(deliver: Deliver) -> RedisBackend:
        return RedisBackend(url, deliver, backoff=backoff, connect_timeout=connect_timeout)

    return make


def _closing_streams(connection_class: type[Any]) -> type[Any]:
    """``connection_class``, made to close its anyio memory streams when its ``run()`` ends.

    A coredis (6.9) connection makes its buffers, anyio memory streams, when it
    is created, and closes them only if it connected: each failed attempt (a
    reconnection, a publish while Redis is down) leaves six to the garbage
    collector, which warns (ResourceWarning) about each.  ``close()`` is
    idempotent, so closing them again after a connection that worked is harmless.
    """
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    class ClosingConnection(connection_class):  # type: ignore[misc]
        async def run(self, **options: Any) -> None:
            try:
                await super().run(**options)
            finally:
                for value in vars(self).values():
                    if isinstance(value, (MemoryObjectSendStream, MemoryObjectReceiveStream)):
                        value.close()

    ClosingConnection.__name__ = ClosingConnection.__qualname__ = connection_class.__name__
    return ClosingConnection


def _failures() -> tuple[type[BaseException], ...]:
    """What a lost or unreachable Redis raises through coredis (and anyio, under it)."""
    import anyio
    import coredis.exceptions

    return (
        coredis.exceptions.RedisError,
        OSError,  # (TimeoutError too)
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    )


def _is_failure(error: BaseException, failures: tuple[type[BaseException], ...]) -> bool:
    """``error`` says that Redis is lost or unreachable (a group: all its members do)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_is_failure(member, failures) for member in error.exceptions)
    return isinstance(error, failures)


def _describe(error: BaseException) -> str:
    """One line for a log record or an error message: the first member of a group, as ``Type: text``."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def encode(message: Message) -> bytes:
    return _TEXT + message.encode("utf-8") if isinstance(message, str) else _BYTES + message


def decode(payload: bytes) -> Message | None:
    """The message a bus published, or None if ``payload`` is not one."""
    marker, body = payload[:1], payload[1:]
    if marker == _BYTES:
        return body
    if marker == _TEXT:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


class RedisBackend:
    """Redis pub/sub for one bus (see the module docstring)."""

    def __init__(self, url: str, deliver: Deliver, *, backoff: Backoff, connect_timeout: float) -> None:
        library = _coredis()
        self._where = _hide_password(url)
        self._deliver = deliver
        self._backoff = backoff
        self._failures = _failures()
        try:
            self._client: coredis.Redis[bytes] = library.Redis.from_url(
                url, decode_responses=False, connect_timeout=connect_timeout
            )
        except (ValueError, TypeError, KeyError) as exc:  # coredis's own judgement of the URL
            raise ValueError(f"invalid Redis URL {self._where!r}: {exc}") from None
        pool = self._client.connection_pool
        pool.connection_class = _closing_streams(pool.connection_class)
        self._state = PubSubState.DISCONNECTED
        self._connected = trio.Event()
        self._wanted: set[str] = set()  # topics some local subscription wants
        self._subscribed: set[str] = set()  # topics SUBSCRIBE was sent for on the current connection
        self._pubsub: coredis.patterns.pubsub.PubSub[bytes] | None = None
        self._lock = trio.Lock()  # around SUBSCRIBE and UNSUBSCRIBE, and the reader's resubscription
        self._leaving_send, self._leaving = trio.open_memory_channel[str](math.inf)
        self._malformed = 0
        self._malformed_logged_at = -math.inf

    @property
    def state(self) -> PubSubState:
        return self._state

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Enter coredis's client, connect (PubSubError if Redis is unreachable), and run the reader and
        the unsubscriber in a nursery inside the client; on the way out, stop them, then close the client.

        Nothing from the body goes through coredis's task groups or our nursery
        (it would come out inside an ExceptionGroup): it is caught, and raised
        again as itself once everything is closed.
        """
        body_error: BaseException | None = None
        entered = False
        try:
            async with self._client, trio.open_nursery() as tasks:
                entered = True
                try:
                    await tasks.start(self._reader)
                    tasks.start_soon(self._unsubscriber)
                    yield
                except BaseException as exc:
                    body_error = exc
                finally:
                    self._state = PubSubState.CLOSED
                    self._leaving_send.close()
                    tasks.cancel_scope.cancel()
        except BaseException as exc:  # from coredis's client, or a crash of our tasks
            self._state = PubSubState.CLOSED
            self._raise_internal(exc, body_error, entered)
        if body_error is not None:
            reraise(body_error)

    def _raise_internal(self, error: BaseException, body_error: BaseException | None, entered: bool) -> None:
        """What to raise when something other than the body failed: a crash of ours (a bug, or
        KeyboardInterrupt) wins; coredis's trouble closing a lost connection is only logged; a failure
        to enter coredis's client is the PubSubError of an unreachable Redis."""
        leaves = _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            raise KeyboardInterrupt from error
        if not all(isinstance(leaf, (trio.Cancelled, *self._failures)) for leaf in leaves):
            if body_error is not None and not isinstance(body_error, trio.Cancelled):
                raise body_error  # (in the handler of ``error``: that becomes its context)
            crashes = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
            raise crashes[0] if len(crashes) == 1 else error
        if not entered:
            raise PubSubError(f"cannot reach Redis at {self._where}: {_describe(error)}") from error
        LOGGER.debug("closing the Redis client of %s: %s", self._where, _describe(error))
        cancelled = [leaf for leaf in leaves if isinstance(leaf, trio.Cancelled)]
        if body_error is None and cancelled:
            raise cancelled[0]  # the block was cancelled while it closed: the cancellation goes on

    async def publish(self, topic: str, message: Message) -> None:
        try:
            await self._client.publish(topic, encode(message))
        except Exception as exc:
            if not _is_failure(exc, self._failures):
                raise
            raise PubSubError(f"cannot publish to {topic!r}: Redis at {self._where}: {_describe(exc)}") from exc

    async def add_topic(self, topic: str) -> None:
        self._wanted.add(topic)
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None or topic in self._subscribed:
                return  # disconnected: the reader subscribes it on reconnect
            # Marked before the command goes (it is written at once, before the
            # first wait), so that a cancelled wait still leads to UNSUBSCRIBE.
            self._subscribed.add(topic)
            try:
                await pubsub.subscribe(topic)
            except Exception as exc:
                if not _is_failure(exc, self._failures):
                    raise
                # Lost meanwhile (the reader resubscribes), or the acknowledgement
                # is late: the command went, so Redis will subscribe.
                LOGGER.debug("subscribing to %r on %s: %s", topic, self._where, _describe(exc))

    def remove_topic(self, topic: str) -> None:
        self._wanted.discard(topic)
        try:
            self._leaving_send.send_nowait(topic)
        except trio.ClosedResourceError:
            pass  # the bus is closing: its connection goes with it

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # --- the tasks -------------------------------------------------------------------------

    async def _reader(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the subscribing connection: connect, subscribe, deliver; when lost, wait and again.

        The first attempt decides whether the bus opens: its failure is the
        PubSubError that ``open_pubsub`` raises.  Runs until cancelled.
        """
        attempt = 0
        first = True
        while True:
            opened_at: float | None = None
            error: Exception = PubSubError("the subscribing connection ended")
            try:
                async with self._client.pubsub(retry_policy=None) as pubsub:
                    async with self._lock:
                        self._subscribed = set(self._wanted)
                        if self._subscribed:
                            await pubsub.subscribe(*self._subscribed)
                        self._pubsub = pubsub
                    opened_at = trio.current_time()
                    self._set_connected(first)
                    if first:
                        first = False
                        task_status.started()
                    while True:
                        message = await pubsub.get_message()
                        if message is not None and message["type"] == "message":
                            self._receive(message["channel"], message["data"])
            except BaseException as exc:
                self._pubsub = None
                if self._state is PubSubState.CLOSED and _is_failure(exc, (trio.Cancelled, *self._failures)):
                    # Closing: coredis may fail to UNSUBSCRIBE on a connection
                    # cancelled under it.  Nothing is left to do.
                    return
                if not isinstance(exc, Exception) or not _is_failure(exc, self._failures):
                    raise
                error = exc
            if first:
                raise PubSubError(f"cannot reach Redis at {self._where}: {_describe(error)}") from error
            if opened_at is not None and trio.current_time() - opened_at >= self._backoff.reset_after:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            if opened_at is not None:
                self._state = PubSubState.DISCONNECTED
                self._connected = trio.Event()
                LOGGER.warning(
                    "lost Redis at %s (%s): subscriptions wait; reconnecting in %.2f s",
                    self._where,
                    _describe(error),
                    delay,
                )
            else:
                LOGGER.warning(
                    "cannot reach Redis at %s (attempt %d: %s); again in %.2f s",
                    self._where,
                    attempt,
                    _describe(error),
                    delay,
                )
            await trio.sleep(delay)

    def _set_connected(self, first: bool) -> None:
        self._state = PubSubState.OPEN
        self._connected.set()
        if not first:
            LOGGER.warning(
                "reconnected to Redis at %s: %d topic(s) subscribed again", self._where, len(self._subscribed)
            )

    def _receive(self, channel: object, data: object) -> None:
        message = decode(data) if isinstance(data, bytes) else None
        if message is None or not isinstance(channel, bytes):
            self._malformed += 1
            now = trio.current_time()
            if now - self._malformed_logged_at >= _MALFORMED_LOG_INTERVAL:
                self._malformed_logged_at = now
                LOGGER.warning(
                    "dropped a message on %r that no trio_ws bus published (%d in all): a bus's messages "
                    "start with b't' (UTF-8 text) or b'b' (bytes)",
                    channel,
                    self._malformed,
                )
            return
        try:
            topic = channel.decode("utf-8")
        except UnicodeDecodeError:
            return  # no local topic has that name: nobody wants it
        self._deliver(topic, message)

    async def _unsubscriber(self) -> None:
        """UNSUBSCRIBE the topics no local subscription wants any more (until the bus closes)."""
        async for topic in self._leaving:
            async with self._lock:
                pubsub = self._pubsub
                if pubsub is None or topic in self._wanted or topic not in self._subscribed:
                    continue
                self._subscribed.discard(topic)
                try:
                    await pubsub.unsubscribe(topic)
                except Exception as exc:
                    if not _is_failure(exc, self._failures):
                        raise
                    LOGGER.debug("unsubscribing from %r on %s: %s", topic, self._where, _describe(exc))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found
