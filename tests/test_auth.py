"""Authentication: basic_auth, and the token recipes of docs/authentication.md, over loopback sockets.

The recipes are tested as written: each test loads the example from the page
(its code without the final ``trio.run(main)``) and serves its handlers to
more clients than the example tries: wrong, missing, malformed and late
credentials.  The examples also run whole, their output compared with the
page's.
"""

from __future__ import annotations

import base64
import hmac
import logging
import unicodedata
from typing import Any

import pytest
import trio

from trio_ws import (
    ConnectionClosed,
    ConnectionRejected,
    HTTPRequest,
    HTTPResponse,
    Router,
    WebSocketRequest,
    WebSocketServer,
    basic_auth,
    open_websocket_url,
)
from trio_ws._auth import _parse

from .conftest import HOST, start_server
from .test_router import doc_examples, exec_doc_example, http, run_doc_example, ws_get

USERS = {"alice": "correct horse", "bob": "battery staple", "jösé": "pässwörd €"}
CHALLENGE = b'Basic realm="chat", charset="UTF-8"'


def basic(user: str | bytes, password: str | bytes) -> bytes:
    raw = (user.encode() if isinstance(user, str) else user) + b":"
    raw += password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(raw)


@basic_auth(realm="chat", credentials=USERS)
async def greet(request: WebSocketRequest, user: str) -> None:
    ws = await request.accept()
    await ws.send(f"hello {user}")


@pytest.fixture
async def greeter(nursery: trio.Nursery) -> WebSocketServer:
    return await start_server(nursery, greet)


async def connect(port: int, *authorization: bytes, path: str = "/") -> str | ConnectionRejected:
    """The server's first message, or the rejection."""
    headers = [(b"authorization", value) for value in authorization]
    try:
        async with open_websocket_url(f"ws://{HOST}:{port}{path}", extra_headers=headers) as ws:
            message = await ws.get_message()
            assert isinstance(message, str)
            return message
    except ConnectionRejected as exc:
        return exc


# --- basic_auth on a WebSocket handler ------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "user"),
    [
        (basic("alice", "correct horse"), "alice"),
        (basic("bob", "battery staple"), "bob"),
        (basic("jösé", "pässwörd €"), "jösé"),  # UTF-8
        # The same text in another Unicode form (decomposed): the same user and password.
        (basic(unicodedata.normalize("NFD", "jösé"), unicodedata.normalize("NFD", "pässwörd €")), "jösé"),
        (b"basic " + basic("alice", "correct horse")[6:], "alice"),  # the scheme's case does not matter
        (b"BASIC   " + basic("alice", "correct horse")[6:], "alice"),
    ],
)
async def test_good_credentials(greeter: WebSocketServer, authorization: bytes, user: str) -> None:
    assert await connect(greeter.port, authorization) == f"hello {user}"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param([basic("alice", "wrong")], id="wrong password"),
        pytest.param([basic("alice", "correct horse ")], id="password with a space more"),
        pytest.param([basic("alice", "")], id="empty password"),
        pytest.param([basic("Alice", "correct horse")], id="user name in another case"),
        pytest.param([basic("mallory", "correct horse")], id="unknown user"),
        pytest.param([basic("bob", "correct horse")], id="another user's password"),
        pytest.param([basic("", "")], id="empty"),
        pytest.param([], id="missing"),
        pytest.param([b"Bearer " + basic("alice", "correct horse")[6:]], id="another scheme"),
        pytest.param([b"Basic"], id="no credentials"),
        pytest.param([b"Basic !!!!"], id="not base64"),
        pytest.param([b"Basic " + base64.b64encode(b"alice")], id="no colon"),
        pytest.param([basic(b"alice", b"correct horse\xff")], id="not UTF-8"),
        pytest.param([basic("alice", "correct horse")] * 2, id="two Authorization headers"),
    ],
)
async def test_bad_credentials(greeter: WebSocketServer, authorization: list[bytes]) -> None:
    outcome = await connect(greeter.port, *authorization)
    assert isinstance(outcome, ConnectionRejected)
    assert outcome.status_code == 401
    headers = dict(outcome.headers)
    assert headers[b"www-authenticate"] == CHALLENGE
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert outcome.body == b"401 Unauthorized\n"


async def test_handler_does_not_run_without_credentials(nursery: trio.Nursery) -> None:
    calls: list[str] = []

    @basic_auth(credentials=USERS)
    async def handler(request: WebSocketRequest, user: str) -> None:
        calls.append(user)
        await (await request.accept()).send(user)

    server = await start_server(nursery, handler)
    assert isinstance(await connect(server.port, basic("alice", "wrong")), ConnectionRejected)
    assert isinstance(await connect(server.port), ConnectionRejected)
    assert calls == []
    assert await connect(server.port, basic("alice", "correct horse")) == "alice"
    assert calls == ["alice"]


async def test_logs_never_show_the_password(greeter: WebSocketServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="trio_ws"):
        await connect(greeter.port, basic("alice", "my-secret-guess"))
        await connect(greeter.port)
        await connect(greeter.port, basic("alice", "correct horse"))
    messages = [
        (record.levelno, record.getMessage()) for record in caplog.records if "basic_auth" in record.getMessage()
    ]
    assert len(messages) == 2
    assert messages[0][0] == logging.INFO
    assert "wrong credentials for user 'alice' on /" in messages[0][1]
    assert messages[1][0] == logging.DEBUG
    assert "no valid Basic credentials" in messages[1][1]
    for record in caplog.records:
        assert "my-secret-guess" not in record.getMessage()
        assert "correct horse" not in record.getMessage()
        assert base64.b64encode(b"alice:my-secret-guess").decode() not in record.getMessage()


async def test_check_function(nursery: trio.Nursery) -> None:
    checked: list[tuple[str, str]] = []

    def sync_check(user: str, password: str) -> bool:
        checked.append((user, password))
        return password == user[::-1]

    async def async_check(user: str, password: str) -> bool:
        await trio.lowlevel.checkpoint()
        return sync_check(user, password)

    for check in (sync_check, async_check):
        checked.clear()
        server = await start_server(nursery, basic_auth(greet.__wrapped__, check=check))  # type: ignore[attr-defined]
        assert await connect(server.port, basic("alice", "ecila")) == "hello alice"
        outcome = await connect(server.port, basic("alice", "alice"))
        assert isinstance(outcome, ConnectionRejected)
        assert outcome.status_code == 401
        assert dict(outcome.headers)[b"www-authenticate"] == b'Basic realm="trio_ws", charset="UTF-8"'
        assert checked == [("alice", "ecila"), ("alice", "alice")]


async def test_a_failing_check_is_a_500(nursery: trio.Nursery, logged_errors: list[logging.LogRecord]) -> None:
    def check(user: str, password: str) -> bool:
        raise RuntimeError("the user database is down")

    server = await start_server(nursery, basic_auth(greet.__wrapped__, check=check))  # type: ignore[attr-defined]
    outcome = await connect(server.port, basic("alice", "x"))
    assert isinstance(outcome, ConnectionRejected)
    assert outcome.status_code == 500
    assert len(logged_errors) == 1


async def test_on_router_routes(nursery: trio.Nursery) -> None:
    router = Router()
    protected = basic_auth(realm="chat", credentials=USERS)

    @router.websocket("/rooms/{room}", subprotocols=["chat.v1"])
    @protected
    async def room(request: WebSocketRequest, room: str, user: str) -> None:
        ws = await request.accept()
        await ws.send(f"{user} in {room} ({ws.subprotocol})")

    @router.http("/rooms/{room}/log")
    @protected
    async def log(request: HTTPRequest, room: str, user: str) -> HTTPResponse:
        return HTTPResponse(200, [], f"{user} reads {room}".encode())

    server = await start_server(nursery, router, http_handler=router.handle_http)
    url = f"ws://{HOST}:{server.port}/rooms/lobby"
    good = [(b"authorization", basic("bob", "battery staple"))]
    async with open_websocket_url(url, subprotocols=["chat.v1"], extra_headers=good) as ws:
        assert await ws.get_message() == "bob in lobby (chat.v1)"
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, subprotocols=["chat.v1"]):
            pytest.fail("must not connect")  # pragma: no cover
    assert info.value.status_code == 401
    assert await ws_get(server.port, "/nowhere", extra_headers=good) == 404  # before any authentication
    # Plain HTTP: the same wrapper answers with a response.
    status, headers, body = await http(server.port, "GET", "/rooms/lobby/log")
    assert (status, headers[b"www-authenticate"], body) == (401, CHALLENGE, b"401 Unauthorized\n")
    response = await log(
        HTTPRequest("GET", "/rooms/lobby/log", [(b"authorization", basic("alice", "correct horse"))]), room="lobby"
    )
    assert response == HTTPResponse(200, [], b"alice reads lobby")


async def test_as_the_http_handler(nursery: trio.Nursery) -> None:
    @basic_auth(credentials=USERS)
    async def page(request: HTTPRequest, user: str) -> HTTPResponse | None:
        return HTTPResponse(200, [], f"{request.method} for {user}".encode()) if request.path == "/" else None

    server = await start_server(nursery, greet, http_handler=page)
    status, headers, body = await http(server.port, "GET", "/")
    assert (status, headers[b"www-authenticate"]) == (401, b'Basic realm="trio_ws", charset="UTF-8"')
    status, headers, body = await http(server.port, "HEAD", "/")
    assert (status, body) == (401, b"")
    assert await page(HTTPRequest("GET", "/", [(b"authorization", basic("bob", "battery staple"))])) == HTTPResponse(
        200, [], b"GET for bob"
    )


# --- basic_auth: construction ----------------------------------------------------------------------


async def takes_user(request: WebSocketRequest, user: str) -> None: ...


def test_needs_credentials_or_check() -> None:
    with pytest.raises(TypeError, match=r"either credentials= \(a mapping\) or check="):
        basic_auth(takes_user)
    with pytest.raises(TypeError, match="and not both"):
        basic_auth(takes_user, credentials=USERS, check=lambda user, password: True)


@pytest.mark.parametrize("realm", ["caf\u00e9", "a\nb", "tab\there", "\x7f"])
def test_bad_realm(realm: str) -> None:
    with pytest.raises(ValueError, match="realm must be printable ASCII"):
        basic_auth(takes_user, realm=realm, credentials=USERS)


async def test_realm_is_quoted(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, basic_auth(takes_user, realm='say "hi" \\ o/', credentials=USERS))
    outcome = await connect(server.port)
    assert isinstance(outcome, ConnectionRejected)
    assert dict(outcome.headers)[b"www-authenticate"] == b'Basic realm="say \\"hi\\" \\\\ o/", charset="UTF-8"'


def test_bad_credentials_table() -> None:
    with pytest.raises(ValueError, match="contains ':'"):
        basic_auth(takes_user, credentials={"a:b": "c"})
    with pytest.raises(TypeError, match="must map user names"):
        basic_auth(takes_user, credentials={"a": b"bytes"})  # type: ignore[dict-item]


def test_handler_must_take_user() -> None:
    async def no_user(request: WebSocketRequest) -> None: ...

    async def positional_only(request: WebSocketRequest, user: str, /) -> None: ...

    async def star_user(request: WebSocketRequest, *user: str) -> None: ...

    async def anything(request: WebSocketRequest, **keywords: str) -> None: ...

    async def keyword_only(request: WebSocketRequest, *, user: str) -> None: ...

    for handler in (no_user, positional_only, star_user):
        with pytest.raises(TypeError, match=rf"{handler.__qualname__}\(\) must take the keyword argument 'user'"):
            basic_auth(handler, credentials=USERS)
    basic_auth(anything, credentials=USERS)
    basic_auth(keyword_only, credentials=USERS)
    with pytest.raises(TypeError, match="wrapped already"):
        basic_auth(basic_auth(anything, credentials=USERS), credentials=USERS)


def test_the_wrapper_keeps_the_handlers_name() -> None:
    wrapped = basic_auth(takes_user, credentials=USERS)
    assert wrapped.__name__ == "takes_user"
    assert wrapped.__wrapped__ is takes_user  # type: ignore[attr-defined]


def test_credentials_are_read_once() -> None:
    users = {"alice": "one"}
    wrapped = basic_auth(takes_user, credentials=users)
    users["alice"] = "two"
    users["bob"] = "three"
    assert callable(wrapped)
    table = _table_of(wrapped)
    assert table("alice", "one")
    assert not table("alice", "two")
    assert not table("bob", "three")


def _table_of(wrapped: Any) -> Any:
    """The credential check inside a basic_auth wrapper (its closure's ``verify``)."""
    names = wrapped.__code__.co_freevars
    return wrapped.__closure__[names.index("verify")].cell_contents


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("trio_ws._auth.hmac.compare_digest", counting)
    return calls


@pytest.mark.parametrize(
    ("user", "password", "good"),
    [("alice", "correct horse", True), ("alice", "x", False), ("mallory", "x", False), ("bob", "correct horse", False)],
)
def test_every_entry_is_compared_every_time(
    compare_digest_calls: list[tuple[bytes, bytes]], user: str, password: str, good: bool
) -> None:
    table = _table_of(basic_auth(takes_user, credentials=USERS))
    assert table(user, password) is good
    # Both the user name and the password, against every entry, whatever matched:
    # the time taken does not depend on which part was wrong, nor on whether the user exists.
    assert len(compare_digest_calls) == 2 * len(USERS)
    assert all(len(a) == len(b) == 32 for a, b in compare_digest_calls)  # digests: their lengths tell nothing


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (basic("alice", "pass:word"), ("alice", "pass:word")),  # the first colon separates
        (basic("", "x"), ("", "x")),
        (b"Basic " + base64.b64encode(b"a:b") + b"\t", ("a", "b")),
        (b"Basic " + base64.b64encode(b"a:b")[:-1], None),  # bad padding
        (b"Basic YQ==:", None),
        (b"Digest username=alice", None),
        (b"", None),
    ],
)
def test_parse(header: bytes, parsed: tuple[str, str] | None) -> None:
    assert _parse([(b"authorization", header)]) == parsed


# --- the recipes of docs/authentication.md, as written --------------------------------------------


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``load_example(marker)``: the namespace of the page's example that contains ``marker``, run
    up to its ``trio.run(main)`` (left out)."""

    def load(marker: str) -> dict[str, Any]:
        examples = [param.values[0] for param in doc_examples("authentication.md") if marker in param.values[0]]
        assert len(examples) == 1, f"{len(examples)} examples contain {marker!r}"
        return exec_doc_example(monkeypatch, "authentication.md", examples[0])

    return load


async def test_query_string_recipe(nursery: trio.Nursery, load_example: Any) -> None:
    example = load_example("async def feed(")
    server = await start_server(nursery, example["feed"])
    token = example["TOKEN"]
    assert await ws_get(server.port, f"/feed?token={token}") == "hello alice"
    assert await ws_get(server.port, f"/feed?x=1&token={token}&y=2") == "hello alice"
    for query in ["?token=guess", "", "?token=", f"?token={token}&token={token}", f"?Token={token}", f"#token={token}"]:
        assert await ws_get(server.port, f"/feed{query}") == 403, query


async def test_cookie_recipe(nursery: trio.Nursery, load_example: Any) -> None:
    example = load_example("def cookie(")
    server = await start_server(nursery, example["chat"], origins={"https://chat.example"})
    token = example["TOKEN"]
    ours = "https://chat.example"

    async def attempt(origin: str, *cookies: bytes) -> str | int:
        headers = [(b"cookie", cookie) for cookie in cookies]
        return await ws_get(server.port, "/chat", origin=origin, extra_headers=headers)

    assert await attempt(ours, f"session={token}".encode()) == "hello alice"
    assert await attempt(ours, f'theme=dark; session="{token}"; lang=fr'.encode()) == "hello alice"
    assert await attempt(ours, b"theme=dark", f"session={token}".encode()) == "hello alice"  # two headers
    assert await attempt(ours) == 403
    assert await attempt(ours, b"session=guess") == 403
    assert await attempt(ours, b"theme=dark") == 403
    assert await attempt(ours, f'prefs={{"a":1}}; session={token}'.encode()) == "hello alice"  # not SimpleCookie's
    assert await attempt(ours, f"session=guess; session={token}".encode()) == 403  # the first one counts
    assert await attempt(ours, f"xsession={token}; sessionx={token}; {token}".encode()) == 403
    assert await attempt("https://evil.example", f"session={token}".encode()) == 403  # the Origin check
    assert await ws_get(server.port, "/chat", extra_headers=[(b"cookie", f"session={token}".encode())]) == 403


async def test_first_message_recipe(nursery: trio.Nursery, load_example: Any) -> None:
    example = load_example("AUTH_TIMEOUT = ")
    example["AUTH_TIMEOUT"] = 0.3  # (the handler reads it when it runs)
    server = await start_server(nursery, example["chat"])
    url = f"ws://{HOST}:{server.port}/chat"

    async def refused(first: str | bytes | None) -> tuple[int, str | None]:
        async with open_websocket_url(url) as ws:
            if first is not None:
                await ws.send(first)
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            return info.value.reason.code, info.value.reason.reason

    async with open_websocket_url(url) as ws:
        await ws.send(example["TOKEN"])
        assert await ws.get_message() == "hello alice"
        await ws.send("hi")
        assert await ws.get_message() == "alice says hi"
    assert await refused("guess") == (1008, "authentication failed")
    assert await refused(example["TOKEN"].encode()) == (1008, "authentication failed")  # binary: not a token
    start = trio.current_time()
    assert await refused(None) == (1008, "authentication failed")  # silent: closed after AUTH_TIMEOUT
    assert trio.current_time() - start >= 0.3


async def test_subprotocol_recipe(nursery: trio.Nursery, load_example: Any) -> None:
    example = load_example("def the_token_protocol(")
    server = await start_server(nursery, example["router"])
    token = f"token.{example['TOKEN']}"
    url = f"ws://{HOST}:{server.port}"
    async with open_websocket_url(f"{url}/chat", subprotocols=[token, "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"  # never the token
        assert await ws.get_message() == "hello alice, in chat.v1"
    async with open_websocket_url(f"{url}/legacy", subprotocols=[token]) as ws:
        assert ws.subprotocol == token  # the hook: the client wants its token back
    for path, proposed, status in [
        ("/chat", ["chat.v1", "token.guess"], 403),
        ("/chat", ["chat.v1"], 403),
        ("/chat", ["chat.v1", token, "token.other"], 403),  # two tokens: refused
        ("/chat", [token], 400),  # not the route's subprotocol: refused by the router
        ("/legacy", ["token.guess"], 403),
        ("/legacy", [], 403),
    ]:
        assert await ws_get(server.port, path, subprotocols=proposed) == status, (path, proposed)


async def test_decorator_recipe(nursery: trio.Nursery, load_example: Any) -> None:
    example = load_example("def token_required(")
    server = await start_server(nursery, example["router"])
    assert await ws_get(server.port, f"/rooms/lobby?token={example['TOKEN']}") == "alice joined lobby"
    assert await ws_get(server.port, "/rooms/lobby") == 403
    assert await ws_get(server.port, f"/nowhere?token={example['TOKEN']}") == 404


@pytest.mark.parametrize(("code", "expected"), doc_examples("authentication.md"))
def test_authentication_doc_examples(monkeypatch: pytest.MonkeyPatch, code: str, expected: str | None) -> None:
    run_doc_example(monkeypatch, "authentication.md", code, expected)
