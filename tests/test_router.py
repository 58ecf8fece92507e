"""Router: patterns and their errors, matching order, parameters, subprotocols, plain HTTP routes.

Routing tables are checked without sockets (the errors come at declaration
time; matching through the router's own lookup, and ``handle_http`` called
with an ``HTTPRequest``); what a client sees is checked over loopback sockets,
with trio_ws's client and raw HTTP requests.  The runnable examples of
docs/routing.md are run too, and their output compared with the page's.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_ws import (
    ConnectionRejected,
    HTTPRequest,
    HTTPResponse,
    Router,
    WebSocketRequest,
    WebSocketServer,
    basic_auth,
    open_websocket_url,
)

from .conftest import HOST, RawClient, start_server

DOCS = Path(__file__).parent.parent / "docs"


async def accept_and_send(request: WebSocketRequest, **parameters: object) -> None:
    """A handler that tells the client which parameters it got, with their types."""
    ws = await request.accept()
    await ws.send(repr(sorted(parameters.items())))


async def serve(nursery: trio.Nursery, router: Router, **options: Any) -> WebSocketServer:
    return await start_server(nursery, router, http_handler=router.handle_http, **options)


async def ws_get(port: int, path: str, **options: Any) -> str | int:
    """The first message of a WebSocket to ``path``, or the HTTP status that refused it."""
    try:
        async with open_websocket_url(f"ws://{HOST}:{port}{path}", **options) as ws:
            message = await ws.get_message()
            assert isinstance(message, str)
            return message
    except ConnectionRejected as exc:
        return exc.status_code


async def http(port: int, method: str, target: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """A plain HTTP request by hand: status, headers (lower-case names), body."""
    client = RawClient(await trio.open_tcp_stream(HOST, port))
    async with client.stream:
        await client.stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        response = await client.receive_eof()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def plain(method: str, target: str) -> HTTPRequest:
    return HTTPRequest(method=method, target=target, headers=[(b"host", b"x")])


# --- patterns: every mistake is an error when the route is declared -----------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("rooms/{room}", "must start with '/'"),
        ("", "must start with '/'"),
        ("/rooms/{room", "whole segment"),
        ("/rooms/room}", "whole segment"),
        ("/rooms/x{room}", "whole segment"),
        ("/rooms/{room}.json", "whole segment"),
        ("/a//b", "empty segment"),
        ("//", "empty segment"),
        ("/rooms/{}", "not a Python identifier"),
        ("/rooms/{1st}", "not a Python identifier"),
        ("/rooms/{room-id}", "not a Python identifier"),
        ("/rooms/{class}", "not a Python identifier"),
        ("/rooms/{:int}", "not a Python identifier"),
        ("/a/{x}/{x}", "'x' appears twice"),
        ("/a/{x}/{x:int}", "'x' appears twice"),
        ("/a/{x:float}", "unknown converter 'float' \\(known: int, path, str, uuid\\)"),
        ("/a/{x:}", "unknown converter ''"),
        ("/a/{rest:path}/b", "must be the last segment"),
        ("/a?b=1", "query string"),
        ("/a#top", "query string"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    router = Router()
    with pytest.raises(ValueError, match=message) as info:
        router.websocket(pattern)
    assert repr(pattern) in str(info.value)  # the message names the pattern
    with pytest.raises(ValueError, match=message):
        router.http(pattern)


def test_pattern_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        Router().websocket(b"/a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a/{x}", "/a/{y}"),  # same shape, other names
        ("/users/{id:int}", "/users/{name}"),  # other converters: still the same shape
        ("/users/{id:uuid}", "/users/{id:int}"),
        ("/a", "/a"),
        ("/", "/"),
        ("/a/", "/a/"),
        ("/files/{rest:path}", "/files/{other:path}"),
        ("/a/{x}/b/{y}", "/a/{p}/b/{q:int}"),
    ],
)
def test_conflicts(first: str, second: str) -> None:
    router = Router()
    router.websocket(first)(accept_and_send)
    with pytest.raises(ValueError, match=re.escape(f"WebSocket route {second!r} conflicts with {first!r}")):
        router.websocket(second)(accept_and_send)
    router.http(first)(page)
    with pytest.raises(ValueError, match=re.escape(f"HTTP route {second!r} conflicts with {first!r} for GET, HEAD")):
        router.http(second)(page)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a", "/a/"),  # the trailing slash is a segment
        ("/a/{x}", "/a/b"),  # static beats parameter: both may exist
        ("/a/{x}", "/a/{x}/b"),
        ("/a/{x}", "/a/{x:path}"),  # one segment, or the rest
        ("/a/{x}/b", "/a/b/{x}"),  # they overlap (/a/b/b), and the order decides
        ("/", "/{x}"),
    ],
)
def test_no_conflict(first: str, second: str) -> None:
    router = Router()
    router.websocket(first)(accept_and_send)
    router.websocket(second)(accept_and_send)


def test_http_routes_share_a_pattern_when_their_methods_differ() -> None:
    router = Router()
    router.http("/items/{item}", methods=["GET"])(page)
    router.http("/items/{name}", methods=["put", "DELETE"])(page)  # methods are upper-cased
    with pytest.raises(ValueError, match=r"conflicts with '/items/\{name\}' for DELETE"):
        router.http("/items/{thing}", methods=["POST", "DELETE"])(page)
    with pytest.raises(ValueError, match=r"conflicts with '/items/\{item\}' for HEAD"):  # GET answers HEAD
        router.http("/items/{item}", methods=["HEAD"])(page)


def test_websocket_and_http_routes_are_separate_tables() -> None:
    router = Router()
    router.websocket("/chat")(accept_and_send)
    router.http("/chat")(page)


@pytest.mark.parametrize(
    ("methods", "error", "message"),
    [
        ("GET", TypeError, "not one string"),
        ([], ValueError, "methods is empty"),
        (["G ET"], ValueError, "is not an HTTP method"),
        ([""], ValueError, "is not an HTTP method"),
        (["GET", "HEAD"], ValueError, "HEAD comes with GET"),
    ],
)
def test_bad_methods(methods: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Router().http("/", methods=methods)


@pytest.mark.parametrize(
    ("subprotocols", "error", "message"),
    [
        ("chat.v1", TypeError, "not one string"),
        ([], ValueError, "subprotocols is empty"),
        (["chat v1"], ValueError, "is not an HTTP token"),
        (["chat,v1"], ValueError, "is not an HTTP token"),
        ([""], ValueError, "is not an HTTP token"),
        ([1], ValueError, "is not an HTTP token"),
        (["a", "b", "a"], ValueError, "listed twice"),
    ],
)
def test_bad_subprotocols(subprotocols: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Router().websocket("/", subprotocols=subprotocols)


def test_handler_must_take_the_parameters() -> None:
    router = Router()

    async def no_room(request: WebSocketRequest) -> None: ...

    async def other_name(request: WebSocketRequest, name: str) -> None: ...

    async def more(request: WebSocketRequest, room: str, extra: str) -> None: ...

    async def no_request(*, room: str) -> None: ...

    async def room_is_the_request(room: WebSocketRequest) -> None: ...

    wrong: list[tuple[Callable[..., Awaitable[None]], str]] = [
        (no_room, "unexpected keyword argument 'room'"),
        (other_name, "missing a required argument: 'name'"),
        (more, "missing a required argument: 'extra'"),
        (no_request, "too many positional arguments"),
        (room_is_the_request, "multiple values for argument 'room'"),
    ]
    for handler, why in wrong:
        with pytest.raises(TypeError, match=re.escape(why)) as info:
            router.websocket("/rooms/{room}")(handler)
        assert f"{handler.__qualname__}() cannot be called" in str(info.value)

    async def fine(request: WebSocketRequest, room: str, extra: str = "default") -> None: ...

    async def anything(request: WebSocketRequest, **parameters: str) -> None: ...

    router.websocket("/rooms/{room}")(fine)
    router.websocket("/halls/{room}")(anything)
    with pytest.raises(TypeError, match="must be an async function"):
        router.websocket("/x")(None)  # type: ignore[type-var]


def test_a_wrapper_of_your_own_is_taken_at_its_word() -> None:
    # functools.wraps makes the wrapper look like the handler, but the wrapper
    # may pass it more: the router checks the wrapper's own signature.
    def adds_user(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def wrapper(request: WebSocketRequest, **parameters: Any) -> None:
            await handler(request, user="someone", **parameters)

        return wrapper

    @adds_user
    async def room(request: WebSocketRequest, room: str, user: str) -> None: ...

    Router().websocket("/rooms/{room}")(room)


def test_converters() -> None:
    with pytest.raises(ValueError, match="built in and cannot be replaced"):
        Router(converters={"int": int})
    with pytest.raises(ValueError, match="is not an identifier"):
        Router(converters={"a-b": str})
    with pytest.raises(TypeError, match="must be callable"):
        Router(converters={"x": 3})  # type: ignore[dict-item]
    router = Router(converters={"hex": lambda text: int(text, 16)})
    router.websocket("/colour/{value:hex}")(accept_and_send)
    assert match(router, "/colour/ff") == ("/colour/{value:hex}", {"value": 255})
    assert match(router, "/colour/fg") is None
    with pytest.raises(ValueError, match="unknown converter 'float' \\(known: hex, int, path, str, uuid\\)"):
        router.websocket("/a/{x:float}")


# --- matching ---------------------------------------------------------------------------------


def match(router: Router, path: str) -> tuple[str, dict[str, object]] | None:
    found = router._match_websocket(path)
    return None if found is None else (found[0].pattern.text, found[1])


@pytest.fixture
def table() -> Router:
    router = Router()
    for pattern in [
        "/",
        "/rooms",
        "/rooms/",
        "/rooms/{room}",
        "/rooms/lobby",
        "/rooms/{room}/log",
        "/users/{user_id:int}",
        "/users/{user_id:int}/avatar",
        "/users/me/avatar",
        "/keys/{key:uuid}",
        "/files/{rest:path}",
        "/files/{name}",
        "/files/index",
        "/files/{folder}/index",
        "/a/{x}/b",
        "/a/b/{y}",
        "/n/{number:int}",
        "/n/{rest:path}",
    ]:
        router.websocket(pattern)(accept_and_send)
    return router


KEY = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ("/", {})),
        ("/?x=1", ("/", {})),
        ("/rooms", ("/rooms", {})),
        ("/rooms/", ("/rooms/", {})),
        ("/rooms/lobby", ("/rooms/lobby", {})),  # static before parameter, declared later or not
        ("/rooms/kitchen", ("/rooms/{room}", {"room": "kitchen"})),
        ("/rooms/kitchen?lang=fr&x=%2F", ("/rooms/{room}", {"room": "kitchen"})),  # the query is not matched
        ("/rooms/caf%C3%A9", ("/rooms/{room}", {"room": "café"})),  # percent-decoded, UTF-8
        ("/rooms/caf%c3%a9", ("/rooms/{room}", {"room": "café"})),
        ("/rooms/a%2Fb", ("/rooms/{room}", {"room": "a/b"})),  # one segment, whatever it decodes to
        ("/rooms/a%20b", ("/rooms/{room}", {"room": "a b"})),
        ("/rooms/lobby/log", ("/rooms/{room}/log", {"room": "lobby"})),  # no "/rooms/lobby/log": backtrack
        ("/rooms/%6Cobby", ("/rooms/lobby", {})),  # static text is compared decoded
        ("/rooms/LOBBY", ("/rooms/{room}", {"room": "LOBBY"})),  # and case matters
        ("/rooms//log", None),  # a parameter is never empty
        ("/rooms/lobby/", None),
        ("/rooms/caf%C3", None),  # not UTF-8
        ("/rooms/caf%FF", None),
        ("/users/42", ("/users/{user_id:int}", {"user_id": 42})),
        ("/users/007", ("/users/{user_id:int}", {"user_id": 7})),
        ("/users/abc", None),  # a value the converter refuses: like an unknown path
        ("/users/-1", None),
        ("/users/+1", None),
        ("/users/1_000", None),
        ("/users/%D9%A3", None),  # an Arabic-Indic digit: int() takes it, the router does not
        ("/users/" + "9" * 5000, None),  # beyond int()'s limit on digits: no match, no error
        ("/users/42/avatar", ("/users/{user_id:int}/avatar", {"user_id": 42})),
        ("/users/me/avatar", ("/users/me/avatar", {})),
        ("/users/me", None),
        (f"/keys/{KEY}", ("/keys/{key:uuid}", {"key": uuid.UUID(KEY)})),
        (f"/keys/{KEY.upper()}", ("/keys/{key:uuid}", {"key": uuid.UUID(KEY)})),
        (f"/keys/{KEY.replace('-', '')}", None),  # only the 8-4-4-4-12 form
        (f"/keys/{{{KEY}}}", None),
        (f"/keys/urn:uuid:{KEY}", None),
        ("/files/index", ("/files/index", {})),
        ("/files/report.pdf", ("/files/{name}", {"name": "report.pdf"})),
        ("/files/docs/index", ("/files/{folder}/index", {"folder": "docs"})),
        ("/files/docs/a/b.txt", ("/files/{rest:path}", {"rest": "docs/a/b.txt"})),
        ("/files/docs/index/more", ("/files/{rest:path}", {"rest": "docs/index/more"})),
        ("/files/caf%C3%A9/x", ("/files/{rest:path}", {"rest": "café/x"})),
        ("/files/", None),  # a path parameter has at least one segment
        ("/files", None),
        ("/files/a//b", None),  # and no empty, "." or ".." segment
        ("/files/a/b/", None),
        ("/files/../etc/passwd", None),
        ("/files/a/./b", None),
        ("/files/a/%2E%2E/b", None),  # decoded first
        ("/files/a/b%2F..%2F..%2Fc", None),  # %2F too
        ("/files/..", ("/files/{name}", {"name": ".."})),  # a one-segment parameter is just text
        ("/a/b/b", ("/a/b/{y}", {"y": "b"})),  # the leftmost difference decides: static "b" first
        ("/a/c/b", ("/a/{x}/b", {"x": "c"})),
        ("/n/12", ("/n/{number:int}", {"number": 12})),
        ("/n/twelve", ("/n/{rest:path}", {"rest": "twelve"})),  # refused by int: the next candidate
        ("/nowhere", None),
        ("", None),
        ("*", None),
        ("http://x/rooms", None),  # absolute form
        ("rooms", None),
    ],
)
def test_matching(table: Router, path: str, expected: tuple[str, dict[str, object]] | None) -> None:
    assert match(table, path) == expected


def test_parameter_types(table: Router) -> None:
    found = match(table, "/users/42")
    assert found is not None
    assert type(found[1]["user_id"]) is int
    found = match(table, f"/keys/{KEY}")
    assert found is not None
    assert isinstance(found[1]["key"], uuid.UUID)


def test_declaration_order_does_not_matter() -> None:
    patterns = ["/files/{rest:path}", "/files/{name}", "/files/index", "/files/{folder}/index"]
    results = []
    for order in [patterns, patterns[::-1], patterns[1:] + patterns[:1]]:
        router = Router()
        for pattern in order:
            router.websocket(pattern)(accept_and_send)
        results.append([match(router, path) for path in ["/files/index", "/files/x", "/files/x/index", "/files/x/y"]])
    assert results[0] == results[1] == results[2]


def test_a_long_path_does_not_recurse_deeply() -> None:
    router = Router()
    router.websocket("/a/{rest:path}")(accept_and_send)
    router.websocket("/a/{x}/{y}")(accept_and_send)
    deep = "/a/" + "/".join(["x"] * 5000)
    assert match(router, deep) == ("/a/{rest:path}", {"rest": "/".join(["x"] * 5000)})
    assert match(router, "/b/" + "/".join(["x"] * 5000)) is None


# --- WebSocket routes over sockets -------------------------------------------------------------


class Calls:
    """Handlers that record their calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []

    def handler(self, name: str) -> Callable[..., Awaitable[None]]:
        async def handler(request: WebSocketRequest, **parameters: object) -> None:
            self.calls.append((name, parameters))
            ws = await request.accept()
            await ws.send(f"{name} {sorted(parameters.items())!r}")

        return handler


async def test_websocket_routes(nursery: trio.Nursery) -> None:
    calls = Calls()
    router = Router()
    router.websocket("/rooms/{room}")(calls.handler("room"))
    router.websocket("/users/{user_id:int}")(calls.handler("user"))
    router.websocket("/keys/{key:uuid}")(calls.handler("key"))
    server = await serve(nursery, router)
    port = server.port
    assert await ws_get(port, "/rooms/lobby?token=abc") == "room [('room', 'lobby')]"
    assert await ws_get(port, "/rooms/caf%C3%A9") == "room [('room', 'café')]"
    assert await ws_get(port, "/rooms/café") == "room [('room', 'café')]"  # the client encodes it
    assert await ws_get(port, "/users/41") == "user [('user_id', 41)]"
    assert await ws_get(port, f"/keys/{KEY}") == f"key [('key', UUID('{KEY}'))]"
    # Unknown paths and refused values: 404, and no handler runs.
    calls.calls.clear()
    for path in ["/users/abc", "/rooms/", "/rooms", "/", "/nowhere", "/rooms/a/b"]:
        assert await ws_get(port, path) == 404, path
    assert calls.calls == []


async def test_not_found_body_and_log(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    router = Router()
    server = await serve(nursery, router)
    with caplog.at_level(logging.DEBUG, logger="trio_ws"), pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"ws://{HOST}:{server.port}/nowhere?x"):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 404
    assert info.value.body == b"404 Not Found\n"
    assert (b"content-type", b"text/plain; charset=utf-8") in info.value.headers
    assert any("no WebSocket route for '/nowhere?x': 404" in record.getMessage() for record in caplog.records)
    assert all(record.levelno < logging.INFO for record in caplog.records if "route" in record.getMessage())


async def test_a_handler_may_reject(nursery: trio.Nursery) -> None:
    router = Router()

    @router.websocket("/private/{thing}")
    async def private(request: WebSocketRequest, thing: str) -> None:
        await request.reject(403, body=f"not {thing}".encode())

    @router.websocket("/undecided")
    async def undecided(request: WebSocketRequest) -> None:
        pass  # the server answers 403

    server = await serve(nursery, router)
    assert await ws_get(server.port, "/private/x") == 403
    assert await ws_get(server.port, "/undecided") == 403


async def test_a_failing_handler_is_the_servers_business(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    router = Router()

    @router.websocket("/boom")
    async def boom(request: WebSocketRequest) -> None:
        raise RuntimeError("the handler broke")

    server = await serve(nursery, router)
    assert await ws_get(server.port, "/boom") == 500
    assert len(logged_errors) == 1
    assert logged_errors[0].exc_info is not None
    assert isinstance(logged_errors[0].exc_info[1], RuntimeError)


async def test_router_with_origins(nursery: trio.Nursery) -> None:
    calls = Calls()
    router = Router()
    router.websocket("/chat")(calls.handler("chat"))
    server = await serve(nursery, router, origins={"https://good.example"})
    assert await ws_get(server.port, "/chat", origin="https://evil.example") == 403
    assert calls.calls == []  # the origin check comes first
    assert await ws_get(server.port, "/chat", origin="https://good.example") == "chat []"


# --- subprotocols ---------------------------------------------------------------------------------


async def chat(request: WebSocketRequest, **parameters: object) -> None:
    ws = await request.accept()
    await ws.send(f"speaking {ws.subprotocol}")


@pytest.mark.parametrize(
    ("proposed", "expected"),
    [
        (["chat.v1"], "speaking chat.v1"),
        (["chat.v2"], "speaking chat.v2"),
        (["chat.v1", "chat.v2"], "speaking chat.v2"),  # the server's order of preference
        (["x", "chat.v1", "token.abc"], "speaking chat.v1"),  # others are ignored
        (["mqtt"], 400),  # none of the route's: refused before the handler
        ([], 400),
    ],
)
async def test_route_subprotocols(nursery: trio.Nursery, proposed: list[str], expected: str | int) -> None:
    router = Router()
    router.websocket("/chat", subprotocols=["chat.v2", "chat.v1"])(chat)
    server = await serve(nursery, router)
    assert await ws_get(server.port, "/chat", subprotocols=proposed) == expected


async def test_subprotocol_refusal_says_why(nursery: trio.Nursery) -> None:
    router = Router()
    router.websocket("/chat", subprotocols=["chat.v2", "chat.v1"])(chat)
    server = await serve(nursery, router)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"ws://{HOST}:{server.port}/chat", subprotocols=["mqtt"]):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 400
    assert info.value.body is not None
    assert b"chat.v2, chat.v1" in info.value.body


async def test_route_without_subprotocols(nursery: trio.Nursery) -> None:
    router = Router()
    router.websocket("/plain")(chat)
    server = await serve(nursery, router)
    assert await ws_get(server.port, "/plain") == "speaking None"
    assert await ws_get(server.port, "/plain", subprotocols=["chat.v1"]) == "speaking None"


async def test_handler_overrides_the_routers_choice(nursery: trio.Nursery) -> None:
    router = Router()

    @router.websocket("/chat", subprotocols=["chat.v2", "chat.v1"])
    async def older(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="chat.v1", extra_headers=[(b"x-chosen", b"by the handler")])
        await ws.send(f"speaking {ws.subprotocol}")

    @router.websocket("/none", subprotocols=["chat.v1"])
    async def none(request: WebSocketRequest) -> None:
        request.default_subprotocol = None  # accept()'s None means "the router's choice"
        ws = await request.accept()
        await ws.send(f"speaking {ws.subprotocol}")

    server = await serve(nursery, router)
    async with open_websocket_url(f"ws://{HOST}:{server.port}/chat", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert await ws.get_message() == "speaking chat.v1"
        assert (b"x-chosen", b"by the handler") in ws.handshake_headers
    assert await ws_get(server.port, "/none", subprotocols=["chat.v1"]) == "speaking None"


def newest_version(request: WebSocketRequest, supported: tuple[str, ...]) -> str | None:
    versions = [name for name in request.proposed_subprotocols if name.startswith("v")]
    return max(versions, key=lambda name: int(name[1:]), default=None)


async def test_select_subprotocol(nursery: trio.Nursery) -> None:
    seen: list[tuple[str, ...]] = []

    async def async_first_proposed(request: WebSocketRequest, supported: tuple[str, ...]) -> str | None:
        seen.append(supported)
        await trio.lowlevel.checkpoint()
        return request.proposed_subprotocols[0] if request.proposed_subprotocols else None

    router = Router(select_subprotocol=newest_version)
    router.websocket("/versions")(chat)  # the router's hook
    router.websocket("/listed", subprotocols=["v1", "v2"])(chat)  # the router's hook, with the route's list
    router.websocket("/client-first", subprotocols=["b", "a"], select_subprotocol=async_first_proposed)(chat)
    server = await serve(nursery, router)
    port = server.port
    assert await ws_get(port, "/versions", subprotocols=["v3", "v12", "v4"]) == "speaking v12"
    assert await ws_get(port, "/versions", subprotocols=["mqtt"]) == "speaking None"  # no list: None is fine
    assert await ws_get(port, "/listed", subprotocols=["v9"]) == "speaking v9"  # the hook decides
    assert await ws_get(port, "/listed", subprotocols=["mqtt"]) == 400  # a route with a list: None is 400
    assert await ws_get(port, "/client-first", subprotocols=["a", "b"]) == "speaking a"  # the route's own hook
    assert await ws_get(port, "/client-first") == 400
    assert seen == [("b", "a"), ("b", "a")]


async def test_select_subprotocol_must_choose_a_proposal(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    router = Router(select_subprotocol=lambda request, supported: "chat.v9")
    router.websocket("/chat")(chat)
    server = await serve(nursery, router)
    assert await ws_get(server.port, "/chat", subprotocols=["chat.v1"]) == 500
    assert len(logged_errors) == 1
    assert logged_errors[0].exc_info is not None
    error = logged_errors[0].exc_info[1]
    assert isinstance(error, ValueError)
    assert "chose 'chat.v9', which the client did not propose" in str(error)


# --- plain HTTP routes ------------------------------------------------------------------------------


async def page(request: HTTPRequest, **parameters: object) -> HTTPResponse | None:
    body = f"{request.method} {sorted(parameters.items())}".encode()
    return HTTPResponse(200, [(b"content-type", b"text/plain")], body)


@pytest.fixture
def http_router() -> Router:
    router = Router()
    router.http("/health")(page)
    router.http("/items/{item_id:int}", methods=["GET", "PUT"])(page)
    router.http("/items/{item_id:int}", methods=["DELETE"])(page)
    router.http("/items/new", methods=["POST"])(page)
    router.http("/static/{rest:path}")(page)

    @router.http("/maybe/{thing}")
    async def maybe(request: HTTPRequest, thing: str) -> HTTPResponse | None:
        return None if thing == "not" else HTTPResponse(200, [], thing.encode())

    router.websocket("/chat")(chat)
    router.websocket("/rooms/{room}")(chat)
    router.http("/rooms/{room}/page")(page)
    return router


@pytest.mark.parametrize(
    ("method", "target", "status", "body", "allow"),
    [
        ("GET", "/health", 200, b"GET []", None),
        ("HEAD", "/health", 200, b"HEAD []", None),  # the handler sees HEAD (the server drops the body)
        ("GET", "/health?verbose=1", 200, b"GET []", None),
        ("POST", "/health", 405, b"405 Method Not Allowed\n", b"GET, HEAD"),
        ("GET", "/items/7", 200, b"GET [('item_id', 7)]", None),
        ("PUT", "/items/7", 200, b"PUT [('item_id', 7)]", None),
        ("DELETE", "/items/7", 200, b"DELETE [('item_id', 7)]", None),
        ("PATCH", "/items/7", 405, b"405 Method Not Allowed\n", b"DELETE, GET, HEAD, PUT"),
        ("POST", "/items/new", 200, b"POST []", None),
        ("GET", "/items/new", 405, b"405 Method Not Allowed\n", b"POST"),  # "new" is no int
        ("GET", "/items/x", None, None, None),  # None: the server's 404
        ("GET", "/static/css/site.css", 200, b"GET [('rest', 'css/site.css')]", None),
        ("GET", "/static/../secret", None, None, None),
        ("GET", "/maybe/so", 200, b"so", None),
        ("GET", "/maybe/not", None, None, None),
        ("GET", "/chat", 426, None, None),  # a WebSocket route
        ("GET", "/rooms/lobby", 426, None, None),
        ("GET", "/rooms/lobby/page", 200, b"GET [('room', 'lobby')]", None),
        ("GET", "/nowhere", None, None, None),
        ("GET", "*", None, None, None),
        ("GET", "/caf%FF", None, None, None),
    ],
)
async def test_handle_http(
    http_router: Router, method: str, target: str, status: int | None, body: bytes | None, allow: bytes | None
) -> None:
    response = await http_router.handle_http(plain(method, target))
    if status is None:
        assert response is None
        return
    assert response is not None
    assert response.status_code == status
    if body is not None:
        assert response.body == body
    headers = dict(response.headers)
    assert headers.get(b"allow") == allow
    if status == 426:
        assert headers[b"upgrade"] == b"websocket"


async def test_http_routes_over_sockets(nursery: trio.Nursery, http_router: Router) -> None:
    server = await serve(nursery, http_router)
    port = server.port
    status, headers, body = await http(port, "GET", "/health")
    assert (status, headers[b"content-type"], body) == (200, b"text/plain", b"GET []")
    status, headers, body = await http(port, "HEAD", "/health")
    assert (status, headers[b"content-length"], body) == (200, b"7", b"")
    status, headers, body = await http(port, "DELETE", "/health")
    assert (status, headers[b"allow"], body) == (405, b"GET, HEAD", b"405 Method Not Allowed\n")
    status, headers, body = await http(port, "GET", "/chat")
    assert (status, headers[b"upgrade"]) == (426, b"websocket")
    status, _, body = await http(port, "GET", "/nowhere")
    assert (status, body) == (404, b"404 Not Found\n")
    # And WebSockets on the same port.
    assert await ws_get(port, "/chat") == "speaking None"
    assert await ws_get(port, "/health") == 404  # an HTTP route only


async def test_a_failing_http_route_is_the_servers_business(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    router = Router()

    @router.http("/boom")
    async def boom(request: HTTPRequest) -> HTTPResponse:
        raise RuntimeError("the page broke")

    server = await serve(nursery, router)
    status, _, _ = await http(server.port, "GET", "/boom")
    assert status == 500
    assert len(logged_errors) == 1


def test_router_repr() -> None:
    assert repr(Router()).startswith("<Router at 0x")


def test_basic_auth_user_is_not_a_path_parameter() -> None:
    router = Router()

    @basic_auth(credentials={"alice": "secret"})
    async def profile(request: WebSocketRequest, user: str) -> None: ...

    with pytest.raises(ValueError, match="parameter 'user' has the name of a keyword argument"):
        router.websocket("/users/{user}")(profile)

    @basic_auth(credentials={"alice": "secret"})
    async def room(request: WebSocketRequest, room: str, user: str) -> None: ...

    router.websocket("/rooms/{room}")(room)
    with pytest.raises(TypeError, match="missing a required argument: 'room'"):
        router.websocket("/halls/{hall}")(room)


# --- the examples of docs/routing.md --------------------------------------------------------------


def doc_examples(page: str) -> list[Any]:
    """The page's ``python`` blocks, each with the untagged block that follows it (its output) or
    ``None``, as pytest params named by page and line."""
    text = (DOCS / page).read_text()
    examples: list[tuple[str, str, str | None]] = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M):
        language, body = block[1], block[2]
        if language == "python":
            examples.append((f"{page}:{text.count(chr(10), 0, block.start()) + 1}", body, None))
        elif language == "" and examples and examples[-1][2] is None:
            examples[-1] = (*examples[-1][:2], body)
    return [pytest.param(code, expected, id=name) for name, code, expected in examples]


_MAIN = "\ntrio.run(main)\n"


def exec_doc_example(
    monkeypatch: pytest.MonkeyPatch, page: str, code: str, output: io.StringIO | None = None
) -> dict[str, Any]:
    """Run an example's module code, all but a final ``trio.run(main)``, and return its namespace.

    Its ``print`` writes to ``output``.  Until trio_ws exports ``Router`` and
    ``basic_auth``, the examples (which import them from trio_ws, as users
    will) find them there for the test.
    """
    namespace: dict[str, Any] = {"__name__": "doc_example"}
    if output is not None:
        namespace["print"] = functools.partial(print, file=output)
    exec(compile(code.removesuffix(_MAIN.lstrip()), str(DOCS / page), "exec"), namespace)
    return namespace


def run_doc_example(monkeypatch: pytest.MonkeyPatch, page: str, code: str, expected: str | None) -> None:
    """Run an example as its program would (its own server on a free port), in this process and
    within a deadline, and compare what it prints with the page."""
    output = io.StringIO()
    namespace = exec_doc_example(monkeypatch, page, code, output)
    if code.endswith(_MAIN):
        trio.run(_within, namespace["main"], 20.0)
    if expected is not None:
        assert output.getvalue() == expected


async def _within(main: Callable[[], Awaitable[None]], seconds: float) -> None:
    with trio.fail_after(seconds):
        await main()


@pytest.mark.parametrize(("code", "expected"), doc_examples("routing.md"))
def test_routing_doc_examples(monkeypatch: pytest.MonkeyPatch, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, "routing.md", code, expected)
