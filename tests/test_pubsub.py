"""open_pubsub(): one suite for both backends (memory://, and redis:// on a real redis-server),
then what only Redis does: losing the server under a live subscription, and the missing extra.
The examples of docs/pubsub.md run here too."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import trio_ws
from tests._redis import RedisServer, redis_command
from tests.conftest import start_server
from tests.test_router import doc_examples, exec_doc_example, run_doc_example
from trio_ws import Backoff, PubSub, PubSubError, PubSubState, Subscription, open_pubsub, open_websocket_url

FAST = Backoff(initial=0.02, maximum=0.1, factor=2.0, reset_after=1.0)  # reconnect within tests' time


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[PubSub]:
    async with open_pubsub(bus_url, backoff=FAST) as bus:
        yield bus


async def barrier(bus: PubSub, *subscriptions: Subscription) -> None:
    """Wait until every message published before this call has reached ``subscriptions``' topics.

    A bus delivers in order, over one connection with Redis: a marker published
    now, once it arrives on a topic of its own, comes after everything before it.
    """
    async with bus.subscribe("barrier") as marker:
        await bus.publish("barrier", "mark")
        with trio.fail_after(5):
            assert await marker.receive() == "mark"


async def take(subscription: Subscription, count: int) -> list[str | bytes]:
    with trio.fail_after(5):
        return [await subscription.receive() for _ in range(count)]


# --- both backends --------------------------------------------------------------------------------


async def test_publish_and_subscribe_keep_str_and_bytes(bus: PubSub) -> None:
    async with bus.subscribe("room") as messages:
        assert isinstance(messages, trio.abc.ReceiveChannel)
        assert bus.topics == {"room"}
        await bus.publish("room", "héllo")
        await bus.publish("room", b"\x00\xffbytes")
        await bus.publish("room", bytearray(b"ba"))
        await bus.publish("room", memoryview(b"mv"))
        await bus.publish("room", "")
        await bus.publish("room", b"")
        await bus.publish("room", "t")  # (looks like the wire's text marker)
        await bus.publish("room", b"b")
        got = await take(messages, 8)
    assert got == ["héllo", b"\x00\xffbytes", b"ba", b"mv", "", b"", "t", b"b"]
    assert [type(message) for message in got] == [str, bytes, bytes, bytes, str, bytes, str, bytes]
    assert bus.state is PubSubState.OPEN


async def test_several_subscribers_and_topics(bus: PubSub) -> None:
    async with bus.subscribe("a") as a1, bus.subscribe("a") as a2, bus.subscribe("b") as b, bus.subscribe("c") as c:
        assert bus.topics == {"a", "b", "c"}
        await bus.publish("a", "to a")
        await bus.publish("b", "to b")
        await bus.publish("nobody", "lost")
        await bus.publish("a", b"again a")
        assert await take(a1, 2) == ["to a", b"again a"]
        assert await take(a2, 2) == ["to a", b"again a"]
        assert await take(b, 1) == ["to b"]
        await barrier(bus)
        assert c.statistics().backlog == 0
        assert a1.statistics() == trio_ws.SubscriptionStatistics("a", 0, trio_ws._pubsub.MAX_BACKLOG, 2, 0)


async def test_publish_with_no_subscriber(bus: PubSub) -> None:
    await bus.publish("empty", "nobody hears this")
    async with bus.subscribe("empty") as messages:
        await bus.publish("empty", "now someone does")
        assert await take(messages, 1) == ["now someone does"]


async def test_leaving_the_block_unsubscribes(bus: PubSub, bus_url: str) -> None:
    async with bus.subscribe("room") as first:
        pass
    assert bus.topics == frozenset()
    with pytest.raises(trio.ClosedResourceError):
        await first.receive()
    async with bus.subscribe("room") as second:
        await bus.publish("room", "for the second")
        assert await take(second, 1) == ["for the second"]
    assert first.statistics().received == 0
    if bus_url.startswith("redis://"):
        port = int(bus_url.rsplit(":", 1)[1].split("/")[0])
        # The unsubscriber tells Redis after the block: poll the server (bounded).
        with trio.fail_after(5):
            while (reply := await redis_command(port, "PUBSUB", "NUMSUB", "room")) != b"*2\r\n$4\r\nroom\r\n:0\r\n":  # noqa: ASYNC110 - Redis's state, polled
                await trio.sleep(0.01)
        assert reply.endswith(b":0\r\n")


async def test_a_slow_subscriber_is_bounded_and_its_loss_counted_and_logged(
    bus: PubSub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_ws.pubsub")
    async with bus.subscribe("feed", max_backlog=4) as slow, bus.subscribe("feed") as fast:
        for number in range(1000):
            await bus.publish("feed", str(number))
            if number % 100 == 0:
                assert slow.statistics().backlog <= 4
        await barrier(bus)
        stats = slow.statistics()
        assert (stats.backlog, stats.max_backlog, stats.received, stats.dropped) == (4, 4, 4, 996)
        assert slow.dropped == 996
        assert await take(slow, 4) == ["0", "1", "2", "3"]  # the oldest are kept; what found it full is lost
        assert fast.statistics().dropped == 900  # (its default backlog of 100)
    records = [r for r in caplog.records if r.name == "trio_ws.pubsub" and r.levelno == logging.WARNING]
    # Rate-limited: the first loss of each subscription at once, and on leaving the rest in one record.
    assert 2 <= len(records) <= 4, [r.getMessage() for r in records]
    messages = [record.getMessage() for record in records]
    assert any("'feed'" in m and "max_backlog=4" in m and "(996 in all)" in m for m in messages), messages
    assert any("max_backlog=100" in m and "(900 in all)" in m for m in messages), messages


async def test_closing_the_bus_ends_subscriptions(bus_url: str) -> None:
    got: list[str | bytes] = []

    async def reader(bus: PubSub, task_status: trio.TaskStatus[Subscription]) -> None:
        async with bus.subscribe("room") as messages:
            task_status.started(messages)
            async for message in messages:  # ends with the bus
                got.append(message)

    async with trio.open_nursery() as nursery:
        async with open_pubsub(bus_url) as bus:
            subscription = await nursery.start(reader, bus)
            await bus.publish("room", "one")
            await bus.publish("room", b"two")
            await barrier(bus)
        assert bus.state is PubSubState.CLOSED
        assert "closed" in repr(bus)
        with pytest.raises(PubSubError, match="closed"):
            await bus.publish("room", "after")
        with pytest.raises(PubSubError, match="closed"):
            async with bus.subscribe("room"):
                pass  # pragma: no cover
        with pytest.raises(PubSubError, match="closed"):
            await bus.wait_connected()
    assert got == ["one", b"two"]  # what was queued is delivered, then the loop ends
    assert subscription.statistics().backlog == 0


async def test_cancellation(bus: PubSub) -> None:
    # Cancelled while entering: nothing stays subscribed.
    with trio.CancelScope() as scope:
        scope.cancel()
        async with bus.subscribe("room"):
            pass  # pragma: no cover
    assert scope.cancelled_caught
    assert bus.topics == frozenset()
    async with bus.subscribe("room") as messages:
        await bus.publish("room", "kept")
        await barrier(bus)
        # A cancelled receive takes nothing: the message is still there.
        with trio.CancelScope() as scope:
            scope.cancel()
            await messages.receive()
        assert messages.statistics().backlog == 1
        assert await take(messages, 1) == ["kept"]
        # A receive that waits can be cancelled, and the subscription goes on.
        with trio.move_on_after(0.05):
            await messages.receive()
        await bus.publish("room", "later")
        assert await take(messages, 1) == ["later"]
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.publish("room", "maybe")  # at most once: this one may or may not go
        await bus.wait_connected()
    # A subscription whose reader closed it takes nothing more, and the bus does not mind.
    async with bus.subscribe("room") as messages:
        await messages.aclose()
        await bus.publish("room", "to a closed reader")
        await barrier(bus)
        assert messages.statistics().received == 0


async def test_the_body_of_the_block_and_its_cancellation_leave_as_themselves(bus_url: str) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with open_pubsub(bus_url) as bus, bus.subscribe("room"):
            raise KeyError("mine")
    with trio.move_on_after(0.05) as scope:
        async with open_pubsub(bus_url) as bus, bus.subscribe("room") as messages:
            await messages.receive()
    assert scope.cancelled_caught


async def test_arguments_are_checked(bus: PubSub) -> None:
    with pytest.raises(ValueError, match="topic is a str"):
        await bus.publish(b"room", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message must be"):
        await bus.publish("room", 42)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_backlog"):
            async with bus.subscribe("room", max_backlog=bad):  # type: ignore[arg-type]
                pass  # pragma: no cover
    assert bus.topics == frozenset()


# --- memory:// ------------------------------------------------------------------------------------


async def test_memory_buses_of_one_name_share_messages() -> None:
    async with (
        open_pubsub("memory://shared") as one,
        open_pubsub("memory://shared") as two,
        open_pubsub("memory://other") as other,
        open_pubsub("MEMORY://") as anonymous,
        two.subscribe("t") as on_two,
        other.subscribe("t") as on_other,
        anonymous.subscribe("t") as anon,
    ):
        await one.publish("t", "hello")
        assert await take(on_two, 1) == ["hello"]
        assert on_other.statistics().received == anon.statistics().received == 0
        await one.wait_connected()
        assert repr(one) == "<PubSub memory://shared open>"
    assert trio_ws._pubsub._MemoryBackend._buses == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "no scheme"),
        ("memory://a/b", "memory://name"),
        ("kafka://host", "unknown pub/sub URL scheme"),
        ("redis://host:notaport", "invalid Redis URL"),
    ],
)
async def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with open_pubsub(url):
            pass  # pragma: no cover


async def test_bad_options() -> None:
    with pytest.raises(ValueError, match="max_backlog"):
        async with open_pubsub("memory://", max_backlog=0):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="connect_timeout"):
        async with open_pubsub("memory://", connect_timeout=0):
            pass  # pragma: no cover


# --- redis:// only --------------------------------------------------------------------------------


async def test_redis_unreachable_at_entry_is_a_pubsub_error(redis_server: RedisServer) -> None:
    redis_server.stop()
    with pytest.raises(PubSubError, match=f"cannot reach Redis at 127.0.0.1:{redis_server.port}|{redis_server.port}"):
        async with open_pubsub(redis_server.url):
            pass  # pragma: no cover


async def test_the_password_is_not_shown() -> None:
    assert trio_ws._pubsub._hide_password("redis://user:secret@host:1/0") == "redis://user:***@host:1/0"
    assert trio_ws._pubsub._hide_password("redis://:secret@host") == "redis://:***@host"
    assert trio_ws._pubsub._hide_password("redis://host:1/0") == "redis://host:1/0"


@pytest.mark.deadline(30)
async def test_redis_restarted_under_a_live_subscription(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_ws.pubsub")
    async with open_pubsub(redis_server.url, backoff=FAST) as bus, bus.subscribe("room") as messages:
        await bus.publish("room", "before")
        assert await take(messages, 1) == ["before"]

        redis_server.stop()
        with trio.fail_after(5):  # the reader notices the lost connection (bounded polling)
            while bus.state is not PubSubState.DISCONNECTED:  # noqa: ASYNC110 - no event for "lost"
                await trio.sleep(0.01)
        with pytest.raises(PubSubError, match="cannot publish to 'room'") as info:
            await bus.publish("room", "while down")
        assert not isinstance(info.value, BaseExceptionGroup)
        # A subscription entered while Redis is down waits for the reconnection.
        async with bus.subscribe("late") as late:
            with trio.move_on_after(0.3):  # a few failed attempts, logged
                await bus.wait_connected()

            redis_server.start()  # same port
            with trio.fail_after(10):
                await bus.wait_connected()
            assert bus.state is PubSubState.OPEN
            await bus.publish("room", "after")
            await bus.publish("late", b"late too")
            assert await take(messages, 1) == ["after"]
            assert await take(late, 1) == [b"late too"]
    text = [record.getMessage() for record in caplog.records if record.name == "trio_ws.pubsub"]
    assert any(line.startswith("lost Redis at") for line in text), text
    assert any(line.startswith("cannot reach Redis at") for line in text), text
    assert any(line.startswith("reconnected to Redis at") and "2 topic(s)" in line for line in text), text


async def test_foreign_messages_are_dropped_and_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_ws.pubsub")
    async with open_pubsub(redis_server.url) as bus, bus.subscribe("room") as messages:
        for raw in (b"no marker", b"t\xff\xfe", b""):
            assert await redis_command(redis_server.port, "PUBLISH", "room", raw) == b":1\r\n"
        await redis_command(redis_server.port, "PUBLISH", "room", b"tfine")
        assert await take(messages, 1) == ["fine"]
    records = [r.getMessage() for r in caplog.records if r.name == "trio_ws.pubsub"]
    assert len(records) == 1, records
    assert "no trio_ws bus published" in records[0]


async def test_missing_coredis_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # import coredis now raises ImportError
    with pytest.raises(ImportError, match=r"trio-ws\[redis\]") as info:
        async with open_pubsub("redis://127.0.0.1:1/0"):
            pass  # pragma: no cover
    assert info.value.name == "coredis"
    async with open_pubsub("memory://"):  # memory:// needs nothing
        pass


# --- docs/pubsub.md ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), doc_examples("pubsub.md"))
def test_pubsub_doc_examples(monkeypatch: pytest.MonkeyPatch, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, "pubsub.md", code, expected)


async def test_the_broadcast_recipe_across_two_buses(bus_url: str, nursery: trio.Nursery) -> None:
    """docs/pubsub.md's relay(): two "processes" (two buses and two servers) share a room."""
    recipe = next(code for code, _ in (p.values for p in doc_examples("pubsub.md")) if "async def relay(" in code)
    relay: Any = exec_doc_example(pytest.MonkeyPatch(), "pubsub.md", recipe)["relay"]

    async def chat(request: trio_ws.WebSocketRequest) -> None:
        ws = await request.accept()
        async for _ in ws:  # the peers only listen here
            pass

    async with open_pubsub(bus_url) as bus_a, open_pubsub(bus_url) as bus_b:
        servers = [await start_server(nursery, chat) for _ in range(2)]
        await nursery.start(relay, bus_a, "room:lobby", servers[0].connections)
        await nursery.start(relay, bus_b, "room:lobby", servers[1].connections)
        async with (
            open_websocket_url(f"ws://127.0.0.1:{servers[0].port}/") as peer_a,
            open_websocket_url(f"ws://127.0.0.1:{servers[1].port}/") as peer_b,
        ):
            with trio.fail_after(5):  # the servers count a connection once its handshake is done
                while len(servers[0].connections) + len(servers[1].connections) < 2:  # noqa: ASYNC110 - counts, polled
                    await trio.sleep(0.01)
            await bus_a.publish("room:lobby", "hello, lobby")
            with trio.fail_after(5):
                assert await peer_a.get_message() == "hello, lobby"
                assert await peer_b.get_message() == "hello, lobby"
        nursery.cancel_scope.cancel()
