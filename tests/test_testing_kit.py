"""The testing kit: trio_ws.testing's helpers, and the pytest plugin users get through its entry point.

The plugin is tested as users meet it: ``pytester`` runs small test suites in
this process, in a directory of their own, where pytest loads the plugin
through the ``pytest11`` entry point (this suite turns the entry point off and
loads the plugin from conftest.py, for coverage's sake).  docs/testing.md is
one of those suites: its ``python`` blocks are written out as a project
(``# chat.py`` names a module, the rest are test modules) and must all pass.
"""

from __future__ import annotations

import faulthandler
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trio_ws._pytest_plugin
from trio_ws import CloseReason, ConnectionClosed, WebSocketConnection, WebSocketRequest
from trio_ws.testing import (
    LocalServer,
    ServerFactory,
    assert_closed_with,
    expect_close,
    make_ca,
    start_server,
    websocket_pair,
)

pytest_plugins = ["pytester"]

DOCS = Path(__file__).parent.parent / "docs"
INNER_SECONDS = 60  # a hung inner suite ends the process, with every thread's traceback


def doc_blocks(page: str) -> list[tuple[str, str]]:
    """The page's ``python`` blocks as (module name, code): ``# name.py`` on the first line names it."""
    text = (DOCS / page).read_text()
    blocks = []
    for block in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M):
        code = block[1]
        named = re.match(r"# (\w+)\.py\n", code)
        name = named[1] if named else f"test_doc_line{text.count(chr(10), 0, block.start()) + 1}"
        blocks.append((name, code))
    return blocks


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in this process on ``pytester.path``, bounded by a watchdog (a sync test has no trio deadline)."""
    faulthandler.dump_traceback_later(INNER_SECONDS, exit=True)
    try:
        # pytest rewrites the asserts of an entry point's package, trio_ws here, and warns that it cannot
        # when the package is already imported: by this outer session, which a user's run does not have.
        quiet = ("-W", "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning")
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args, *quiet)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def trio_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project in trio mode, warnings as errors."""
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    return pytester


# --- the plugin, through its entry point ---------------------------------------------------------


def test_the_entry_point_names_the_plugin() -> None:
    [entry] = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "trio_ws"]
    assert entry.value == "trio_ws._pytest_plugin"
    assert entry.load() is trio_ws._pytest_plugin


def test_the_docs_examples_pass_through_the_entry_point(
    trio_project: pytest.Pytester, logged_errors: list[object]
) -> None:
    blocks = doc_blocks("testing.md")
    trio_project.makepyfile(**dict(blocks))
    tests = sum(len(re.findall(r"^(?:async )?def test_", code, re.M)) for _, code in blocks)
    assert tests >= 12  # every fixture of the plugin is used, see the page
    trio_project.makeconftest(
        "def pytest_sessionstart(session):\n"
        "    assert session.config.pluginmanager.get_plugin('trio_ws') is not None, 'not via the entry point'\n"
    )
    result = run_inner(trio_project)
    result.assert_outcomes(passed=tests)
    # The crashing handler of the page's example: the server logs it, the test takes it.
    assert [str(record.exc_info[1]) for record in logged_errors] == ["the database is down"]  # type: ignore[attr-defined]


def test_a_suite_that_uses_no_fixture_is_unaffected(pytester: pytest.Pytester) -> None:
    # A project without trio at all (pytest-trio off, no trio_mode): the plugin is loaded and inert.
    pytester.makepyfile(
        """
        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.get_plugin("trio_ws") is not None
            assert 1 + 1 == 2

        def test_fixture_lookups(request):
            assert request.getfixturevalue("tmp_path").exists()
        """
    )
    run_inner(pytester, "-p", "no:trio", "-W", "error").assert_outcomes(passed=2)


def test_without_pytest_trio_a_fixture_says_what_to_install(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        async def test_pair(ws_pair):
            pass

        def test_server(ws_server_factory):
            pass
        """
    )
    result = run_inner(pytester, "-p", "no:trio")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*ws_pair (trio_ws's pytest plugin) is an async fixture and needs pytest-trio*"])
    assert "pip install pytest-trio" in result.stdout.str()


def test_a_fixture_in_a_test_that_is_not_trio_says_so(pytester: pytest.Pytester) -> None:
    # No trio_mode: a marked async test works, a sync test gets told.
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.trio
        async def test_marked(ws_pair, ws_server_factory):
            client, server = ws_pair
            await client.send_message("marked")
            assert await server.get_message() == "marked"

        def test_sync(wss_server_factory):
            pass
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*wss_server_factory (trio_ws's pytest plugin) is an async fixture: the test must*"])


def test_a_handler_that_raises_fails_the_test(trio_project: pytest.Pytester, logged_errors: list[object]) -> None:
    trio_project.makepyfile(
        """
        from trio_ws.testing import expect_close

        async def strict(request):
            ws = await request.accept()
            assert await ws.get_message() == "expected", "the handler's own assertion"

        async def test_it(ws_server_factory):
            server = await ws_server_factory(strict)
            async with server.connect() as ws:
                await ws.send_message("something else")
                async with expect_close(1011):
                    await ws.get_message()
        """
    )
    result = run_inner(trio_project)
    result.assert_outcomes(failed=1)  # the test's body passed; the fixture's teardown failed it
    result.stdout.fnmatch_lines(["*AssertionError: the handler's own assertion*"])
    assert len(logged_errors) == 1


# --- expect_close and assert_closed_with -----------------------------------------------------------


async def test_expect_close_swallows_the_expected_close(
    ws_pair: tuple[WebSocketConnection, WebSocketConnection],
) -> None:
    client, server = ws_pair
    await server.aclose(4001, "go away")
    async with expect_close(4001, "go away") as closed:
        await client.get_message()
    assert closed.reason is not None
    assert (closed.reason.code, closed.reason.reason) == (4001, "go away")
    with expect_close(4001):  # as a plain ``with`` too
        await client.send_message("too late")


async def test_expect_close_gives_both_codes(ws_pair: tuple[WebSocketConnection, WebSocketConnection]) -> None:
    client, server = ws_pair
    await server.aclose(1008, "policy")
    with pytest.raises(AssertionError) as failed:
        async with expect_close(1011):
            await client.get_message()
    assert str(failed.value) == (
        "expected a close with 1011 (INTERNAL_ERROR), got 1008 (POLICY_VIOLATION) with reason 'policy'"
    )
    assert isinstance(failed.value.__cause__, ConnectionClosed)  # where the close was seen
    other = r"with reason 'other', got 1008 \(POLICY_VIOLATION\) with reason 'policy'"
    with pytest.raises(AssertionError, match=other), expect_close(1008, "other"):
        await client.get_message()


async def test_expect_close_fails_a_block_that_ends_without_a_close(
    ws_pair: tuple[WebSocketConnection, WebSocketConnection],
) -> None:
    client, server = ws_pair
    with pytest.raises(AssertionError, match=r"the block ended without ConnectionClosed \(give expect_close"):
        async with expect_close(1000):
            await server.send_message("fine")
            assert await client.get_message() == "fine"
    with pytest.raises(AssertionError, match=r"expected a close with 1000 .*, but the connection is not closed"):
        async with expect_close(1000, connection=client):
            pass


async def test_expect_close_after_async_for_and_end_of_channel(
    ws_pair: tuple[WebSocketConnection, WebSocketConnection],
) -> None:
    client, server = ws_pair
    await server.send_message("last")
    await server.aclose()
    async with expect_close(1000, connection=client):
        assert [message async for message in client] == ["last"]
    # receive() raises EndOfChannel for a normal close; its cause has the code.
    async with expect_close(1000) as closed:
        await client.receive()
    assert closed.reason is client.closed
    with pytest.raises(AssertionError, match="the block raised EndOfChannel without"), expect_close(1000):
        raise trio.EndOfChannel


async def test_expect_close_lets_other_exceptions_through(
    ws_pair: tuple[WebSocketConnection, WebSocketConnection],
) -> None:
    client, _ = ws_pair
    with pytest.raises(KeyError) as raised:
        async with expect_close(1008):
            raise KeyError("unrelated")
    assert raised.value.__notes__ == ["(in a block expecting the connection to close with 1008 (POLICY_VIOLATION))"]
    with trio.move_on_after(0) as scope:  # a timeout inside the block is the caller's, untouched
        async with expect_close(1008):
            await client.get_message()
    assert scope.cancelled_caught


async def test_expect_close_reads_a_group_of_closes(ws_pair: tuple[WebSocketConnection, WebSocketConnection]) -> None:
    client, server = ws_pair
    await server.aclose(4002)
    # Strict exception groups: the close comes out of the nursery in a group.
    async with expect_close(4002), trio.open_nursery() as nursery:
        nursery.start_soon(client.get_message)
    # A group with anything else in it is not a close.
    with pytest.raises(ExceptionGroup), expect_close(4002):
        raise ExceptionGroup("mixed", [ConnectionClosed(client.closed), ValueError()])
    with pytest.raises(AssertionError, match=r"got 1006 \(ABNORMAL_CLOSURE\)"), expect_close(4002):
        raise ConnectionClosed(None)


def test_assert_closed_with_takes_a_reason_an_exception_or_nothing() -> None:
    reason = CloseReason(1001, "bye", was_clean=True)
    assert assert_closed_with(reason, 1001) is reason
    assert assert_closed_with(ConnectionClosed(reason), 1001, "bye") is reason
    with pytest.raises(AssertionError, match=r"^expected a close with 1000 \(NORMAL_CLOSURE\), got 1001 \(GOING_AW"):
        assert_closed_with(reason, 1000)
    with pytest.raises(AssertionError, match="but the connection is not closed"):
        assert_closed_with(None, 1000)


async def test_assert_closed_with_a_connection(autojump_clock: trio.abc.Clock) -> None:
    async with websocket_pair() as (client, server):
        with pytest.raises(AssertionError, match="not closed"):
            assert_closed_with(client, 1000)
        await client.aclose(4003, "done")
        assert assert_closed_with(client, 4003, "done").was_clean
        assert assert_closed_with(server, 4003, "done") is server.closed


# --- servers on loopback ---------------------------------------------------------------------------


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    async for message in ws:
        await ws.send_message(message)


async def test_a_local_server(ws_server_factory: ServerFactory) -> None:
    server = await ws_server_factory(echo, max_message_size=10)
    assert isinstance(server, LocalServer)
    assert server.url == f"ws://127.0.0.1:{server.port}"
    assert (server.host, repr(server)) == ("127.0.0.1", f"<LocalServer ws://127.0.0.1:{server.port}>")
    assert ws_server_factory.servers == [server]
    async with server.connect("/x?y=1") as ws:
        assert ws.url == f"ws://127.0.0.1:{server.port}/x?y=1"
        await ws.send_message("x" * 11)
        async with expect_close(1009):  # the option reached the server
            await ws.get_message()
    with pytest.raises(ValueError, match="path must start with '/', not 'x'"):
        server.connect("x")


async def test_start_server_wants_both_tls_contexts_or_none(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="give both ssl_context and client_ssl_context"):
        await start_server(nursery, echo, client_ssl_context=object())  # type: ignore[arg-type]


async def test_handler_errors_are_recorded_but_not_closes(
    ws_server_factory: ServerFactory, logged_errors: list[object]
) -> None:
    async def fussy(request: WebSocketRequest) -> None:
        ws = await request.accept()
        message = await ws.get_message()  # the client leaving raises ConnectionClosed: not an error
        if message == "group":
            raise ExceptionGroup("closes only", [ConnectionClosed(ws.closed)])
        raise LookupError(message)

    server = await ws_server_factory(fussy)
    for message in ["one", "two"]:
        async with server.connect() as ws:
            await ws.send_message(message)
            async with expect_close(1011):
                await ws.get_message()
    for _ in range(2):
        async with server.connect():
            pass
    assert [str(error) for error in server.handler_errors] == ["one", "two"]
    with pytest.raises(ExceptionGroup) as group:
        server.raise_handler_errors()
    assert [type(error) for error in group.value.exceptions] == [LookupError, LookupError]
    assert server.handler_errors == []
    server.raise_handler_errors()  # reported once
    assert len(logged_errors) == 2


async def test_a_factory_reports_every_server(nursery: trio.Nursery, logged_errors: list[object]) -> None:
    async def broken(request: WebSocketRequest) -> None:
        await request.accept()
        raise ZeroDivisionError

    factory = ServerFactory(nursery)
    servers = [await factory(broken), await factory(broken)]
    for server in servers:
        async with server.connect() as ws:
            with expect_close(1011):
                await ws.get_message()
    with pytest.raises(ExceptionGroup, match="WebSocket handlers raised 2 times"):
        factory.raise_handler_errors()
    factory.raise_handler_errors()  # reported once
    async with servers[1].connect() as ws, expect_close(1011):
        await ws.get_message()
    with pytest.raises(ZeroDivisionError):  # what comes after is recorded too
        factory.raise_handler_errors()
    await servers[0].server.aclose()
    assert len(logged_errors) == 3


async def test_wss_fixtures(wss_server_factory: ServerFactory, ws_client_ssl_context: object) -> None:
    server = await wss_server_factory(echo)
    assert server.url.startswith("wss://127.0.0.1:")
    assert server.client_ssl_context is ws_client_ssl_context
    async with server.connect() as ws:
        await ws.send_message(b"tls")
        assert await ws.get_message() == b"tls"


# --- without the optional packages ------------------------------------------------------------------


def test_make_ca_without_trustme_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)  # what an import finds when it is not installed
    with pytest.raises(ImportError, match=r"needs trustme: pip install 'trio-ws\[testing\]'") as missing:
        make_ca()
    assert missing.value.name == "trustme"


def test_trio_ws_testing_imports_without_pytest() -> None:
    blocked = "import sys; sys.modules.update(dict.fromkeys(['pytest', '_pytest', 'pytest_trio', 'trustme']))"
    check = "import trio_ws.testing; assert 'pytest' not in sys.modules or sys.modules['pytest'] is None"
    subprocess.run([sys.executable, "-c", f"{blocked}; {check}"], check=True, timeout=30)


def test_without_autoload_the_plugin_loads_by_name(
    trio_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    trio_project.makepyfile(
        """
        async def test_pair(ws_pair):
            client, server = ws_pair
            await server.send_message("loaded by hand")
            assert await client.get_message() == "loaded by hand"
        """
    )
    run_inner(trio_project, "-p", "trio", "-p", "trio_ws").assert_outcomes(passed=1)
