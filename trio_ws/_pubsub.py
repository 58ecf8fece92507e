"""open_pubsub(): a message bus between processes, for rooms that span several workers or machines.

``broadcast()`` reaches the connections of one process.  When a service runs
as several worker processes (``SO_REUSEPORT``) or on several machines, a
message for a room must reach the peers of every process: each process
subscribes to the room's topic on a shared bus, and broadcasts what comes
from it to its own peers.  The bus is Redis pub/sub (``redis://``, through
coredis, the ``redis`` extra) or, for tests and single-process programs,
this process's memory (``memory://``).

The bus has two layers.  The *local fan-out* (here) keeps each topic's
subscriptions, each a bounded Trio channel, and offers every message to
each without waiting: a subscriber that falls behind loses messages, which
are counted and logged, rather than holding up the others or growing
memory.  The *backend* carries messages between buses: in memory, a table
of the process's buses by name; over Redis, one connection that subscribes
to the topics some local subscription wants (``_pubsub_redis.py``), and a
pool that publishes.  Delivery is at most once: nothing is stored, resent
or acknowledged.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Protocol

import trio

from ._reconnect import Backoff

__all__ = [
    "MAX_BACKLOG",
    "PubSub",
    "PubSubError",
    "PubSubState",
    "Subscription",
    "SubscriptionStatistics",
    "open_pubsub",
]

LOGGER = logging.getLogger("trio_ws.pubsub")

MAX_BACKLOG = 100  # messages a subscription holds for its reader before it drops new ones

# A subscriber that falls behind logs its first loss at once, then at most one
# record per this many seconds: one record per lost message would turn a slow
# reader into a flood of logs, which makes it slower still.
DROP_LOG_INTERVAL = 10.0

# The default waits between attempts to reach Redis again: a worker's bus
# should come back within seconds of Redis, without hammering a server that
# is restarting.
DEFAULT_BACKOFF = Backoff(initial=0.1, maximum=5.0, factor=2.0, reset_after=10.0)

Message = str | bytes
Deliver = Callable[[str, Message], None]  # how a backend hands a message to its bus; never waits


class PubSubError(Exception):
    """The bus cannot do what was asked: Redis is unreachable (``__cause__`` says why), or the bus is closed."""


class PubSubState(enum.Enum):
    """Where a bus is: ``OPEN`` (connected: subscriptions receive), ``DISCONNECTED`` (Redis was lost
    and is being reached again: subscriptions wait, publishing fails), ``CLOSED`` (its block has ended)."""

    OPEN = "open"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A subscription's counts: ``backlog`` messages wait for its reader, at most ``max_backlog``;
    ``received`` were queued for it in all, and ``dropped`` were lost because the backlog was full."""

    topic: str
    backlog: int
    max_backlog: int
    received: int
    dropped: int


class Subscription(trio.abc.ReceiveChannel[Message]):
    """The messages of one topic, as a Trio receive channel: what ``async with bus.subscribe(topic)`` gives.

    ``async for message in subscription`` (or ``await receive()``) takes them in
    the order the bus delivered them, str as str and bytes as bytes.  At most
    ``max_backlog`` wait for the reader; a message that finds the backlog full
    is dropped, counted in :attr:`dropped` and logged (a WARNING on the
    ``trio_ws.pubsub`` logger, at most one per ``DROP_LOG_INTERVAL`` seconds).
    When the bus closes, the messages already queued are still delivered, then
    the iteration ends (:exc:`trio.EndOfChannel` from ``receive()``).
    """

    def __init__(self, topic: str, max_backlog: int) -> None:
        self._topic = topic
        self._max_backlog = max_backlog
        self._send, self._receive = trio.open_memory_channel[Message](max_backlog)
        self._received = 0
        self._dropped = 0
        self._logged = 0  # drops already reported in a log record
        self._logged_at = -math.inf  # trio time of the last drop record

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def dropped(self) -> int:
        """How many messages this subscription lost because its backlog was full."""
        return self._dropped

    def statistics(self) -> SubscriptionStatistics:
        """The topic, the backlog and its bound, and the messages received and dropped so far."""
        backlog = self._receive.statistics().current_buffer_used
        return SubscriptionStatistics(self._topic, backlog, self._max_backlog, self._received, self._dropped)

    async def receive(self) -> Message:
        """The next message, waiting for one.

        Cancellation takes nothing: the message stays queued for the next call.

        :raises trio.EndOfChannel: the bus closed and every queued message was taken.
        :raises trio.ClosedResourceError: the subscription's block has ended (or ``aclose()`` was called).
        """
        return await self._receive.receive()

    async def aclose(self) -> None:
        """Stop taking messages (the subscription ends when its ``async with`` block does).

        Never blocks; as every trio ``aclose()``, it is a checkpoint, and if it is
        cancelled the subscription is closed all the same."""
        await self._receive.aclose()

    def __repr__(self) -> str:
        return f"<Subscription {self._topic!r} dropped={self._dropped}>"

    # --- the bus's side --------------------------------------------------------------------

    def _offer(self, message: Message) -> None:
        """Queue ``message`` without waiting; drop it (counted, logged) if the backlog is full."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._dropped += 1
            now = trio.current_time()
            if now - self._logged_at >= DROP_LOG_INTERVAL:
                self._log_drops(now)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader called aclose(): nobody takes messages any more
        else:
            self._received += 1

    def _log_drops(self, now: float) -> None:
        LOGGER.warning(
            "subscription to %r is behind its messages (max_backlog=%d): dropped %d message(s) (%d in all)",
            self._topic,
            self._max_backlog,
            self._dropped - self._logged,
            self._dropped,
        )
        self._logged = self._dropped
        self._logged_at = now

    def _end(self) -> None:
        """The bus closed: the reader takes what is queued, then sees the end."""
        self._send.close()

    def _leave(self) -> None:
        """The subscription's block ended: report drops not yet logged, and close both ends."""
        if self._dropped > self._logged:
            self._log_drops(trio.current_time())
        self._send.close()
        self._receive.close()


class _Backend(Protocol):
    """What carries messages between buses: memory, or Redis (``_pubsub_redis.RedisBackend``).

    A backend hands every message published on a topic that some local
    subscription wants to ``deliver(topic, message)``, a plain function that
    never waits.
    """

    @property
    def state(self) -> PubSubState: ...

    def running(self) -> AbstractAsyncContextManager[None]:
        """Connect, run the backend's tasks (in a nursery of its own, inside this block) until the block
        ends, then stop them and release everything.  An exception from the body leaves as itself."""
        ...

    async def publish(self, topic: str, message: Message) -> None: ...

    async def add_topic(self, topic: str) -> None:
        """A local subscription wants ``topic``: return once its messages are delivered (or, while
        disconnected, at once: the topic is subscribed again on reconnect)."""
        ...

    def remove_topic(self, topic: str) -> None:
        """No local subscription wants ``topic`` any more (never waits)."""
        ...

    async def wait_connected(self) -> None: ...


class _MemoryBackend:
    """Buses of one process that share a name (``memory://name``) deliver to each other."""

    _buses: ClassVar[dict[str, list[Deliver]]] = {}  # name -> the deliver() of each open bus

    def __init__(self, name: str, deliver: Deliver) -> None:
        self._name = name
        self._deliver = deliver
        self._state = PubSubState.OPEN

    @property
    def state(self) -> PubSubState:
        return self._state

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        buses = self._buses.setdefault(self._name, [])
        buses.append(self._deliver)
        try:
            yield
        finally:
            self._state = PubSubState.CLOSED
            buses.remove(self._deliver)
            if not buses:  # the table keeps no name that no bus uses
                del self._buses[self._name]

    async def publish(self, topic: str, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        for deliver in list(self._buses.get(self._name, ())):
            deliver(topic, message)

    async def add_topic(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    def remove_topic(self, topic: str) -> None:
        pass

    async def wait_connected(self) -> None:
        await trio.lowlevel.checkpoint()


class PubSub:
    """A message bus: what ``async with open_pubsub(url)`` gives.  See :func:`open_pubsub`."""

    def __init__(self, url: str, max_backlog: int, backend: Callable[[Deliver], _Backend]) -> None:
        self._url = url
        self._max_backlog = max_backlog
        self._topics: dict[str, set[Subscription]] = {}
        self._closed = False
        self._backend = backend(self._deliver)

    @property
    def url(self) -> str:
        """The URL the bus was opened with, with any password hidden."""
        return self._url

    @property
    def state(self) -> PubSubState:
        return PubSubState.CLOSED if self._closed else self._backend.state

    @property
    def topics(self) -> frozenset[str]:
        """The topics some subscription of this bus wants."""
        return frozenset(self._topics)

    def __repr__(self) -> str:
        return f"<PubSub {self._url} {self.state.value}>"

    async def publish(self, topic: str, message: str | bytes | bytearray | memoryview) -> None:
        """Send ``message`` to every subscription to ``topic``, on every bus of the same URL.

        Returns once the message is handed to the backend: delivered to the
        local subscriptions (memory), or taken by Redis.  Nobody waiting for the
        topic is not an error: the message goes nowhere.  Cancellation may come
        before or after Redis took the message (at most once: never twice).

        :raises ValueError: ``topic`` is not a str, or ``message`` is not str or bytes-like.
        :raises PubSubError: Redis is unreachable, or the bus is closed.
        """
        _check_topic(topic)
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        elif not isinstance(message, (str, bytes)):
            raise ValueError(f"message must be str, bytes, bytearray or memoryview, not {type(message).__name__}")
        if self._closed:
            raise PubSubError(f"the bus {self._url} is closed")
        await self._backend.publish(topic, message)

    @asynccontextmanager
    async def subscribe(self, topic: str, *, max_backlog: int | None = None) -> AsyncIterator[Subscription]:
        """Receive the messages published on ``topic`` for the body of an ``async with`` block.

        Messages published once the block is entered are delivered (over
        Redis: once Redis acknowledged the subscription, which entering waits
        for while connected).  While Redis is unreachable, entering returns at
        once and the subscription receives from the reconnection on.  Leaving
        the block, by any path, ends the subscription at once (no waiting:
        Redis is told afterwards, by a task of the bus).  Cancellation while
        entering leaves nothing subscribed.

        :param max_backlog: how many messages may wait for the reader before
            new ones are dropped (default: the bus's ``max_backlog``).
        :raises ValueError: ``topic`` is not a str, or ``max_backlog`` is not a positive int.
        :raises PubSubError: the bus is closed.
        """
        _check_topic(topic)
        backlog = self._max_backlog if max_backlog is None else _check_backlog(max_backlog)
        if self._closed:
            raise PubSubError(f"the bus {self._url} is closed")
        subscription = Subscription(topic, backlog)
        self._topics.setdefault(topic, set()).add(subscription)
        try:
            await self._backend.add_topic(topic)
            yield subscription
        finally:
            subscription._leave()
            subscribers = self._topics.get(topic)
            if subscribers is not None:  # (None once the bus closed)
                subscribers.discard(subscription)
                if not subscribers:
                    del self._topics[topic]
                    self._backend.remove_topic(topic)

    async def wait_connected(self) -> None:
        """Wait until the bus is connected and its subscriptions receive (at once for ``memory://``).

        Cancellation is safe: it only stops the wait.

        :raises PubSubError: the bus is closed.
        """
        if self._closed:
            raise PubSubError(f"the bus {self._url} is closed")
        await self._backend.wait_connected()

    # --- for the backend and open_pubsub ---------------------------------------------------

    def _deliver(self, topic: str, message: Message) -> None:
        for subscription in self._topics.get(topic, ()):
            subscription._offer(message)

    def _close(self) -> None:
        self._closed = True
        for subscriptions in self._topics.values():
            for subscription in subscriptions:
                subscription._end()
        self._topics = {}


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str):
        raise ValueError(f"a topic is a str, not {type(topic).__name__}")


def _check_backlog(max_backlog: object) -> int:
    if not isinstance(max_backlog, int) or isinstance(max_backlog, bool) or max_backlog < 1:
        raise ValueError(f"max_backlog must be an int >= 1, not {max_backlog!r}")
    return max_backlog


def _backend_for(url: str, backoff: Backoff, connect_timeout: float) -> Callable[[Deliver], _Backend]:
    """The backend ``url`` names, to be made with the bus's ``deliver`` (its checks, and coredis's
    import, happen here: before any I/O)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(f"pub/sub URL {url!r} has no scheme: write memory:// or redis://host:port/db")
    scheme = scheme.lower()
    if scheme == "memory":
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError(f"a memory:// bus URL is memory:// or memory://name, not {url!r}")
        return partial(_MemoryBackend, rest)
    if scheme in ("redis", "rediss", "unix"):
        from ._pubsub_redis import redis_backend

        return redis_backend(url, backoff=backoff, connect_timeout=connect_timeout)
    raise ValueError(f"unknown pub/sub URL scheme {scheme!r} in {url!r}: memory://, redis://, rediss:// or unix://")


def _hide_password(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{separator}{user}:***@{host}{slash}{path}"


@asynccontextmanager
async def open_pubsub(
    url: str,
    *,
    max_backlog: int = MAX_BACKLOG,
    backoff: Backoff | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[PubSub]:
    """Open the message bus at ``url`` for the body of an ``async with`` block.

    ``memory://`` (or ``memory://name``): the buses of this process with the
    same URL deliver to each other, and nothing leaves the process.
    ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS,
    ``unix:///path/to/redis.sock``): Redis pub/sub, through coredis (the
    ``redis`` extra); every bus on the same Redis server shares its topics.

    Entering connects to Redis once; a lost connection is then reached again
    with ``backoff`` (logged on ``trio_ws.pubsub``), and subscriptions resume
    (what is published meanwhile is lost: delivery is at most once).  Every
    task of the bus runs in a nursery of this block; leaving the block, by any
    path, ends every subscription (their readers take what is queued, then
    see the end), stops those tasks and closes the connections.  An exception
    from the body leaves the block as itself, never inside an ExceptionGroup.

    Cancellation: cancelled while entering (connecting to Redis), nothing is
    left open and the block's body does not run; a block left by cancellation
    closes the bus as any other exit does, and the ``Cancelled`` leaves it as
    itself.

    :param max_backlog: the default bound of a subscription's queue (see :meth:`PubSub.subscribe`).
    :param backoff: the waits between attempts to reach Redis again.
    :param connect_timeout: how long one attempt to connect to Redis may take.
    :raises ValueError: the URL or a parameter is invalid.
    :raises ImportError: a Redis URL, and coredis is not installed (``pip install 'trio-ws[redis]'``).
    :raises PubSubError: Redis is unreachable when the block is entered.
    """
    _check_backlog(max_backlog)
    if not isinstance(connect_timeout, (int, float)) or not 0 < connect_timeout < math.inf:
        raise ValueError(f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}")
    backend = _backend_for(url, backoff or DEFAULT_BACKOFF, float(connect_timeout))
    bus = PubSub(_hide_password(url), max_backlog, backend)
    async with bus._backend.running():
        try:
            yield bus
        finally:
            bus._close()
