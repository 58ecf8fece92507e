"""The drop-in promise: code written for trio-websocket 0.12.2 works after changing the import.

The names and signatures of trio-websocket 0.12.2 are written out by hand
below (from its ``trio_websocket/_impl.py``); this test does not import
trio_websocket.  trio_ws must offer each parameter with the same name, kind
and default, in the same position; it may only add keyword-only parameters
that have defaults.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import pytest
import trio

import trio_ws
from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    Endpoint,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from .conftest import HOST

# --- (a) names -------------------------------------------------------------------

# trio_websocket/__init__.py, 0.12.2: everything it re-exports.
TRIO_WEBSOCKET_NAMES = [
    "CloseReason",
    "ConnectionClosed",
    "ConnectionRejected",
    "ConnectionTimeout",
    "connect_websocket",
    "connect_websocket_url",
    "DisconnectionTimeout",
    "Endpoint",
    "HandshakeError",
    "open_websocket",
    "open_websocket_url",
    "WebSocketConnection",
    "WebSocketRequest",
    "WebSocketServer",
    "wrap_client_stream",
    "wrap_server_stream",
    "serve_websocket",
    "__version__",
]


@pytest.mark.parametrize("name", TRIO_WEBSOCKET_NAMES)
def test_public_name_exists_and_is_exported(name: str) -> None:
    assert hasattr(trio_ws, name), f"trio_ws lacks {name}"
    assert name in trio_ws.__all__, f"{name} is not in trio_ws.__all__"


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, Any] = {}
    exec("from trio_ws import *", namespace)
    missing = [name for name in TRIO_WEBSOCKET_NAMES if name not in namespace]
    assert not missing


def test_version_is_a_version_string() -> None:
    assert isinstance(trio_ws.__version__, str)
    assert trio_ws.__version__[0].isdigit()


# --- (b) signatures ----------------------------------------------------------------

POS = inspect.Parameter.POSITIONAL_OR_KEYWORD
KW = inspect.Parameter.KEYWORD_ONLY
REQUIRED = inspect.Parameter.empty

# trio-websocket 0.12.2's module constants, as the defaults below use them.
CONN_TIMEOUT = 60
MESSAGE_QUEUE_SIZE = 1
MAX_MESSAGE_SIZE = 2**20
RECEIVE_BYTES = 4 * 2**10

Params = list[tuple[str, inspect._ParameterKind, object]]

# Shared tails of trio-websocket's signatures.
_CLIENT_OPTIONS: Params = [
    ("subprotocols", KW, None),
    ("extra_headers", KW, None),
    ("message_queue_size", KW, MESSAGE_QUEUE_SIZE),
    ("max_message_size", KW, MAX_MESSAGE_SIZE),
    ("receive_buffer_size", KW, RECEIVE_BYTES),
]

REFERENCE: dict[str, tuple[Callable[..., Any], Params]] = {
    "open_websocket": (
        trio_ws.open_websocket,
        [
            ("host", POS, REQUIRED),
            ("port", POS, REQUIRED),
            ("resource", POS, REQUIRED),
            ("use_ssl", KW, REQUIRED),
            *_CLIENT_OPTIONS,
            ("connect_timeout", KW, CONN_TIMEOUT),
            ("disconnect_timeout", KW, CONN_TIMEOUT),
        ],
    ),
    "open_websocket_url": (
        trio_ws.open_websocket_url,
        [
            ("url", POS, REQUIRED),
            ("ssl_context", POS, None),
            ("subprotocols", KW, None),
            ("extra_headers", KW, None),
            ("message_queue_size", KW, MESSAGE_QUEUE_SIZE),
            ("max_message_size", KW, MAX_MESSAGE_SIZE),
            ("connect_timeout", KW, CONN_TIMEOUT),
            ("disconnect_timeout", KW, CONN_TIMEOUT),
            ("receive_buffer_size", KW, RECEIVE_BYTES),
        ],
    ),
    "connect_websocket": (
        trio_ws.connect_websocket,
        [
            ("nursery", POS, REQUIRED),
            ("host", POS, REQUIRED),
            ("port", POS, REQUIRED),
            ("resource", POS, REQUIRED),
            ("use_ssl", KW, REQUIRED),
            *_CLIENT_OPTIONS,
        ],
    ),
    "connect_websocket_url": (
        trio_ws.connect_websocket_url,
        [
            ("nursery", POS, REQUIRED),
            ("url", POS, REQUIRED),
            ("ssl_context", POS, None),
            *_CLIENT_OPTIONS,
        ],
    ),
    "wrap_client_stream": (
        trio_ws.wrap_client_stream,
        [
            ("nursery", POS, REQUIRED),
            ("stream", POS, REQUIRED),
            ("host", POS, REQUIRED),
            ("resource", POS, REQUIRED),
            *_CLIENT_OPTIONS,
        ],
    ),
    "wrap_server_stream": (
        trio_ws.wrap_server_stream,
        [
            ("nursery", POS, REQUIRED),
            ("stream", POS, REQUIRED),
            ("message_queue_size", POS, MESSAGE_QUEUE_SIZE),
            ("max_message_size", POS, MAX_MESSAGE_SIZE),
            ("receive_buffer_size", POS, RECEIVE_BYTES),
        ],
    ),
    "serve_websocket": (
        trio_ws.serve_websocket,
        [
            ("handler", POS, REQUIRED),
            ("host", POS, REQUIRED),
            ("port", POS, REQUIRED),
            ("ssl_context", POS, REQUIRED),
            ("handler_nursery", KW, None),
            ("message_queue_size", KW, MESSAGE_QUEUE_SIZE),
            ("max_message_size", KW, MAX_MESSAGE_SIZE),
            ("receive_buffer_size", KW, RECEIVE_BYTES),
            ("connect_timeout", KW, CONN_TIMEOUT),
            ("disconnect_timeout", KW, CONN_TIMEOUT),
            ("task_status", KW, trio.TASK_STATUS_IGNORED),
        ],
    ),
    "WebSocketServer.__init__": (
        WebSocketServer.__init__,
        [
            ("self", POS, REQUIRED),
            ("handler", POS, REQUIRED),
            ("listeners", POS, REQUIRED),
            ("handler_nursery", KW, None),
            ("message_queue_size", KW, MESSAGE_QUEUE_SIZE),
            ("max_message_size", KW, MAX_MESSAGE_SIZE),
            ("receive_buffer_size", KW, RECEIVE_BYTES),
            ("connect_timeout", KW, CONN_TIMEOUT),
            ("disconnect_timeout", KW, CONN_TIMEOUT),
        ],
    ),
    "WebSocketServer.run": (
        WebSocketServer.run,
        [
            ("self", POS, REQUIRED),
            ("task_status", KW, trio.TASK_STATUS_IGNORED),
        ],
    ),
    "WebSocketRequest.accept": (
        WebSocketRequest.accept,
        [
            ("self", POS, REQUIRED),
            ("subprotocol", KW, None),
            ("extra_headers", KW, None),
        ],
    ),
    "WebSocketRequest.reject": (
        WebSocketRequest.reject,
        [
            ("self", POS, REQUIRED),
            ("status_code", POS, REQUIRED),
            ("extra_headers", KW, None),
            ("body", KW, None),
        ],
    ),
    "WebSocketConnection.aclose": (
        WebSocketConnection.aclose,
        [
            ("self", POS, REQUIRED),
            ("code", POS, 1000),
            ("reason", POS, None),
        ],
    ),
    "WebSocketConnection.get_message": (
        WebSocketConnection.get_message,
        [("self", POS, REQUIRED)],
    ),
    "WebSocketConnection.send_message": (
        WebSocketConnection.send_message,
        [("self", POS, REQUIRED), ("message", POS, REQUIRED)],
    ),
    "WebSocketConnection.ping": (
        WebSocketConnection.ping,
        [("self", POS, REQUIRED), ("payload", POS, None)],
    ),
    "WebSocketConnection.pong": (
        WebSocketConnection.pong,
        [("self", POS, REQUIRED), ("payload", POS, None)],
    ),
    "CloseReason.__init__": (
        CloseReason.__init__,
        [("self", POS, REQUIRED), ("code", POS, REQUIRED), ("reason", POS, REQUIRED)],
    ),
    "ConnectionClosed.__init__": (
        ConnectionClosed.__init__,
        [("self", POS, REQUIRED), ("reason", POS, REQUIRED)],
    ),
    "ConnectionRejected.__init__": (
        ConnectionRejected.__init__,
        [
            ("self", POS, REQUIRED),
            ("status_code", POS, REQUIRED),
            ("headers", POS, REQUIRED),
            ("body", POS, REQUIRED),
        ],
    ),
    "Endpoint.__init__": (
        Endpoint.__init__,
        [
            ("self", POS, REQUIRED),
            ("address", POS, REQUIRED),
            ("port", POS, REQUIRED),
            ("is_ssl", POS, REQUIRED),
        ],
    ),
}


def _same_default(default: object, ref_default: object) -> bool:
    """Equal defaults: the same object, or equal values of the same type (int and float count as one)."""
    if default is ref_default:
        return True
    if REQUIRED in (default, ref_default) or bool in (type(default), type(ref_default)):
        return False
    numbers = (int, float)
    if isinstance(default, numbers) and isinstance(ref_default, numbers):
        return default == ref_default
    return type(default) is type(ref_default) and default == ref_default


@pytest.mark.parametrize("qualname", list(REFERENCE))
def test_signature_is_compatible(qualname: str) -> None:
    function, reference = REFERENCE[qualname]
    actual: Params = [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    # Positional parameters: the same, in the same order, and no more.
    ref_positional = [p for p in reference if p[1] is POS]
    positional = [p for p in actual if p[1] in (inspect.Parameter.POSITIONAL_ONLY, POS)]
    assert [(name, kind.description) for name, kind, _ in positional] == [
        (name, kind.description) for name, kind, _ in ref_positional
    ], f"{qualname}: positional parameters differ from trio-websocket's"
    for (name, _, default), (_, _, ref_default) in zip(positional, ref_positional, strict=True):
        assert _same_default(default, ref_default), (
            f"{qualname}({name}=...) defaults to {default!r}, trio-websocket to {ref_default!r}"
        )

    # Keyword-only parameters: all of trio-websocket's, same defaults.
    keyword = {name: default for name, kind, default in actual if kind is KW}
    for name, _, ref_default in (p for p in reference if p[1] is KW):
        assert name in keyword, f"{qualname} lacks keyword-only parameter {name!r}"
        default = keyword[name]
        assert _same_default(default, ref_default), (
            f"{qualname}({name}=...) defaults to {default!r}, trio-websocket to {ref_default!r}"
        )

    # Anything else is a keyword-only addition with a default (no *args, no **kwargs).
    ref_names = {name for name, _, _ in reference}
    for name, kind, default in actual:
        if name in ref_names:
            continue
        assert kind is KW, f"{qualname} adds {name!r} as {kind.description}; only keyword-only additions are allowed"
        assert default is not REQUIRED, f"{qualname} adds a required parameter {name!r}"


@pytest.mark.parametrize(
    "function",
    [
        trio_ws.connect_websocket,
        trio_ws.connect_websocket_url,
        trio_ws.wrap_client_stream,
        trio_ws.wrap_server_stream,
        trio_ws.serve_websocket,
        WebSocketServer.run,
        WebSocketRequest.accept,
        WebSocketRequest.reject,
        WebSocketConnection.aclose,
        WebSocketConnection.get_message,
        WebSocketConnection.send_message,
        WebSocketConnection.ping,
        WebSocketConnection.pong,
    ],
    ids=lambda f: f.__qualname__,
)
def test_coroutine_functions_stay_coroutine_functions(function: Callable[..., Any]) -> None:
    assert inspect.iscoroutinefunction(function)


async def test_open_websocket_and_url_give_async_context_managers() -> None:
    # Neither connects before it is entered; so no server is needed here.
    for manager in (
        trio_ws.open_websocket(HOST, 1, "/", use_ssl=False),
        trio_ws.open_websocket_url(f"ws://{HOST}:1/"),
    ):
        assert isinstance(manager, AbstractAsyncContextManager)
        assert not inspect.iscoroutine(manager)
        # An async generator context manager that was never entered has nothing to clean up,
        # but close its generator explicitly anyway so that no warning can come of it.
        gen = getattr(manager, "gen", None)
        if gen is not None:
            await gen.aclose()


def test_websocket_connection_is_an_async_resource() -> None:
    assert issubclass(WebSocketConnection, trio.abc.AsyncResource)


# --- (c) exceptions -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ConnectionTimeout, DisconnectionTimeout, ConnectionRejected])
def test_handshake_error_subclasses(cls: type[Exception]) -> None:
    assert issubclass(cls, HandshakeError)


@pytest.mark.parametrize(
    "cls",
    [HandshakeError, ConnectionTimeout, DisconnectionTimeout, ConnectionRejected, ConnectionClosed],
)
def test_exceptions_are_exceptions(cls: type[BaseException]) -> None:
    assert issubclass(cls, Exception)


def test_connection_closed_is_not_a_handshake_error() -> None:
    assert not issubclass(ConnectionClosed, HandshakeError)
    assert not issubclass(HandshakeError, ConnectionClosed)


def _round_trips(value: Any) -> list[Any]:
    return [copy.copy(value), copy.deepcopy(value), *(pickle.loads(pickle.dumps(value, p)) for p in (2, 5))]


def test_close_reason_copies_and_pickles() -> None:
    reason = CloseReason(1001, "going away")
    for clone in _round_trips(reason):
        assert type(clone) is CloseReason
        assert (clone.code, clone.name, clone.reason) == (1001, "GOING_AWAY", "going away")
        assert repr(clone) == repr(reason)
    none_reason = CloseReason(4000, None)
    for clone in _round_trips(none_reason):
        assert (clone.code, clone.name, clone.reason) == (4000, "PRIVATE_RESERVED", None)
    # trio_ws's addition travels too.
    clean = CloseReason(1000, None, was_clean=True)
    for clone in _round_trips(clean):
        assert clone.was_clean is True


def test_connection_closed_copies_and_pickles() -> None:
    error = ConnectionClosed(CloseReason(1000, "bye"))
    for clone in _round_trips(error):
        assert type(clone) is ConnectionClosed
        assert isinstance(clone.reason, CloseReason)
        assert (clone.reason.code, clone.reason.name, clone.reason.reason) == (1000, "NORMAL_CLOSURE", "bye")
        assert repr(clone) == repr(error)
    for clone in _round_trips(ConnectionClosed(None)):
        assert clone.reason is None


def test_connection_rejected_copies_and_pickles() -> None:
    headers = ((b"content-type", b"text/plain"), (b"x-why", b"no"))
    error = ConnectionRejected(403, headers, b"forbidden")
    for clone in _round_trips(error):
        assert type(clone) is ConnectionRejected
        assert isinstance(clone, HandshakeError)
        assert clone.status_code == 403
        assert clone.headers == headers
        assert clone.body == b"forbidden"
        assert repr(clone) == "ConnectionRejected<status_code=403>"
    for clone in _round_trips(ConnectionRejected(500, (), None)):
        assert (clone.status_code, clone.headers, clone.body) == (500, (), None)


@pytest.mark.parametrize("cls", [HandshakeError, ConnectionTimeout, DisconnectionTimeout])
def test_message_exceptions_copy_and_pickle(cls: type[HandshakeError]) -> None:
    error = cls("the handshake went wrong")
    for clone in _round_trips(error):
        assert type(clone) is cls
        assert clone.args == ("the handshake went wrong",)
        assert str(clone) == "the handshake went wrong"


# --- (d) trio-websocket's README examples, with the import changed -------------------
#
# The README's client opens 'wss://echo.websocket.org' and its server binds port
# 8000; here they talk to loopback servers on port 0.  The calls are the README's.


async def readme_client(url: str, printed: list[str]) -> None:
    # README:  async with open_websocket_url('wss://echo.websocket.org') as ws: ...
    from trio_ws import open_websocket_url

    try:
        async with open_websocket_url(url) as ws:
            await ws.send_message("hello world!")
            message = await ws.get_message()
            printed.append("Received message: " + str(message))
    except OSError as ose:
        printed.append(f"Connection attempt failed: {ose}")


async def test_readme_client_example(echo_server: WebSocketServer) -> None:
    printed: list[str] = []
    with trio.fail_after(5):
        await readme_client(f"ws://{HOST}:{echo_server.port}", printed)
    assert printed == ["Received message: hello world!"]


async def test_readme_server_example(nursery: trio.Nursery) -> None:
    from trio_ws import ConnectionClosed, open_websocket_url, serve_websocket

    handler_finished = trio.Event()

    async def echo_server(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
                await ws.send_message(message)
            except ConnectionClosed:
                break
        handler_finished.set()

    # README:  await serve_websocket(echo_server, '127.0.0.1', 8000, ssl_context=None)
    server = await nursery.start(partial(serve_websocket, echo_server, "127.0.0.1", 0, ssl_context=None))
    assert isinstance(server, WebSocketServer)
    assert server.port != 0

    with trio.fail_after(5):
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            for message in ("hello world!", b"bytes too", "and again"):
                await ws.send_message(message)
                assert await ws.get_message() == message
        await handler_finished.wait()

        # The README client, unchanged but for the URL, against the README server.
        printed: list[str] = []
        await readme_client(f"ws://127.0.0.1:{server.port}", printed)
        assert printed == ["Received message: hello world!"]


def test_url_functions_pass_on_what_trio_websocket_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that replaces open_websocket() to check what open_websocket_url() passes it
    (trio-websocket's own tests do) sees trio-websocket's keywords only, unless it uses ours."""
    import trio_ws._client

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(trio_ws._client, "open_websocket", lambda *args, **kwargs: calls.append(kwargs))
    trio_ws.open_websocket_url("ws://127.0.0.1:1234/r", message_queue_size=9)
    trio_ws.open_websocket_url("wss://127.0.0.1/r", compression="deflate", origin="https://o.example")
    assert set(calls[0]) == {
        "use_ssl",
        "subprotocols",
        "extra_headers",
        "message_queue_size",
        "max_message_size",
        "receive_buffer_size",
        "connect_timeout",
        "disconnect_timeout",
    }
    assert calls[0]["message_queue_size"] == 9
    assert calls[1]["compression"] == "deflate"
    assert calls[1]["origin"] == "https://o.example"
    assert calls[1]["use_ssl"] is True
    assert "ping_interval" not in calls[1]
