"""trio_ws's pytest plugin: fixtures for a test suite of code that uses trio_ws (see docs/testing.md).

pytest loads it through the ``pytest11`` entry point named ``trio_ws`` when
trio-ws is installed; ``-p no:trio_ws`` turns it off.  Unused, it costs the
import of trio_ws and nothing else: no hook acts on a test that does not
request one of its fixtures, and trustme and pytest-trio are imported only by
the fixtures that need them (a clear error names what to install).

Fixtures (names start with ``ws``/``wss`` so as not to clash with a suite's own):

- ``ws_server_factory``: ``await ws_server_factory(handler, **options)``
  starts a server on 127.0.0.1 and a free port, returns a
  :class:`~trio_ws.testing.LocalServer` (``.url``, ``.port``, ``.server``,
  ``.connect()``); at teardown the servers are cancelled and what a handler
  raised fails the test.
- ``ws_pair``: ``(client, server)``, connected over memory streams
  (:func:`trio_ws.testing.websocket_pair` with its defaults).
- ``ws_ca`` (session): a trustme CA; ``ws_server_ssl_context`` and
  ``ws_client_ssl_context`` (session): contexts built on it;
  ``wss_server_factory``: ``ws_server_factory`` for ``wss://``.

The async fixtures run under pytest-trio: the test must be a trio test
(``trio_mode = true``, or ``@pytest.mark.trio``).
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from . import testing
from ._connection import WebSocketConnection

if TYPE_CHECKING:
    import trustme

# The fixtures below that are async: they need pytest-trio, and a trio test.
_TRIO_FIXTURES = ("ws_server_factory", "wss_server_factory", "ws_pair")


def _pytest_trio_active(config: pytest.Config) -> bool:
    """Is pytest-trio's plugin registered (under its entry point's name, ``trio``, or any other: ``-p``)?"""
    module = sys.modules.get("pytest_trio.plugin")
    return module is not None and config.pluginmanager.is_registered(module)


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up, where the error would be less clear
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, saying what to do, a test that uses an async fixture of ours where it cannot run."""
    used = [name for name in _TRIO_FIXTURES if name in getattr(item, "fixturenames", ())]
    if not used:
        return
    if not _pytest_trio_active(item.config):
        pytest.fail(
            f"{', '.join(used)} (trio_ws's pytest plugin) is an async fixture and needs pytest-trio: "
            f"pip install pytest-trio (or {testing._TESTING_EXTRA_HINT}), then set trio_mode = true "
            "in the pytest configuration or mark the test @pytest.mark.trio",
            pytrace=False,
        )
    if item.get_closest_marker("trio") is None:
        pytest.fail(
            f"{', '.join(used)} (trio_ws's pytest plugin) is an async fixture: the test must be a trio test, "
            "an async def with trio_mode = true in the pytest configuration, or marked @pytest.mark.trio",
            pytrace=False,
        )


@asynccontextmanager
async def _server_factory(
    ssl_context: ssl.SSLContext | None, client_context: ssl.SSLContext | None
) -> AsyncIterator[testing.ServerFactory]:
    """A ServerFactory whose servers run until the block ends; then what their handlers raised is raised."""
    async with trio.open_nursery() as nursery:
        factory = testing.ServerFactory(nursery, ssl_context=ssl_context, client_ssl_context=client_context)
        yield factory
        nursery.cancel_scope.cancel()
    factory.raise_handler_errors()


@pytest.fixture
async def ws_server_factory() -> AsyncIterator[testing.ServerFactory]:
    """Start servers on loopback: ``server = await ws_server_factory(handler, **serve_websocket_options)``.

    Each returns a :class:`~trio_ws.testing.LocalServer` once it listens on
    127.0.0.1 and a free port.  At teardown the servers are cancelled (open
    connections close with 1001), then an exception a handler raised (other
    than ConnectionClosed) fails the test.  A test that means its handler to
    raise empties ``server.handler_errors`` after asserting on it.
    """
    async with _server_factory(None, None) as factory:
        yield factory


@pytest.fixture
async def ws_pair() -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """``(client, server)``: a connection over memory streams, both ends open (no socket; autojump_clock works).

    At teardown the client closes with 1000, the closing handshake bounded by
    60 s (trio time).  For other settings, call
    :func:`trio_ws.testing.websocket_pair` in the test.
    """
    async with testing.websocket_pair() as pair:
        yield pair


@pytest.fixture(scope="session")
def ws_ca() -> trustme.CA:
    """A throw-away certificate authority (trustme), one for the session."""
    return testing.make_ca()


@pytest.fixture(scope="session")
def ws_server_ssl_context(ws_ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate from ``ws_ca`` for 127.0.0.1, localhost and ::1."""
    return testing.server_ssl_context(ws_ca)


@pytest.fixture(scope="session")
def ws_client_ssl_context(ws_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ws_ca``."""
    return testing.client_ssl_context(ws_ca)


@pytest.fixture
async def wss_server_factory(
    ws_server_ssl_context: ssl.SSLContext, ws_client_ssl_context: ssl.SSLContext
) -> AsyncIterator[testing.ServerFactory]:
    """``ws_server_factory`` for ``wss://``: servers with ``ws_server_ssl_context``.

    Their ``.url`` is ``wss://127.0.0.1:PORT`` and ``.connect()`` uses
    ``ws_client_ssl_context``; a client of your own passes that context.
    """
    async with _server_factory(ws_server_ssl_context, ws_client_ssl_context) as factory:
        yield factory
