"""Worker processes on one port (run_workers, ``python -m trio_ws run``): real processes on loopback.

Every test checks that the worker processes it saw are gone at its end (by PID).
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import ssl
from collections.abc import Iterable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import trio_ws._workers
from trio_ws import (
    Backoff,
    ConnectionClosed,
    PoolState,
    WorkerError,
    WorkerPool,
    WorkerState,
    open_websocket_url,
    run_workers,
)
from trio_ws._workers import _Exit, _import_name, _Table

from . import workers_app
from .conftest import HOST
from .test_cli import LIMIT, Output, cli, read_server_port, run_cli

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.workers_app"
FAST_RESTART = Backoff(initial=0.05, maximum=0.05, factor=1.0, reset_after=60.0)


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers import ``tests.workers_app`` from their working directory, as ``python -m`` does."""
    monkeypatch.chdir(ROOT)


async def ask(url: str, message: str = "hi", context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """One connection, one message: the pid and worker id that answered."""
    async with open_websocket_url(url, context) as ws:
        await ws.send_message(message)
        reply = await ws.get_message()
    assert isinstance(reply, str)
    pid, worker, echoed = reply.split(" ", 2)
    assert echoed == message
    return int(pid), worker


async def until(condition: Any, seconds: float = 10.0) -> None:
    """Bounded polling of another process's state."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - another process's state: no event to wait for
            await trio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def all_gone(pids: Iterable[int]) -> None:
    pids = list(pids)
    assert pids
    await until(lambda: not any(alive(pid) for pid in pids))


class Pool:
    """run_workers in the test's nursery, inside a cancel scope the test can cancel."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, *args: Any, task_status: trio.TaskStatus[WorkerPool], **kwargs: Any) -> None:
        try:
            with self.scope:
                await run_workers(*args, handle_signals=False, task_status=task_status, **kwargs)
        finally:
            self.done.set()


async def start_pool(nursery: trio.Nursery, *args: Any, **kwargs: Any) -> tuple[WorkerPool, Pool]:
    runner = Pool()
    pool: WorkerPool = await nursery.start(partial(runner.run, *args, **kwargs))
    return pool, runner


async def test_connections_spread_over_all_workers_and_cancellation_closes_them_1001(nursery: trio.Nursery) -> None:
    pool, runner = await start_pool(nursery, f"{APP}:echo_pid", HOST, 0, workers=2, disconnect_timeout=5)
    assert pool.port != 0
    assert pool.url == f"ws://{HOST}:{pool.port}"
    assert pool.state is PoolState.RUNNING
    assert pool.reuse_port
    pids = pool.pids
    assert sorted(pids) == [1, 2]
    assert pool.states == {1: WorkerState.READY, 2: WorkerState.READY}
    # SO_REUSEPORT hashes the 4-tuple: 24 connections from new ports reach both (1 in 2**23 to miss one).
    seen = {await ask(f"{pool.url}/") for _ in range(24)}
    assert seen == {(pid, str(worker)) for worker, pid in pids.items()}

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(open_websocket_url(f"{pool.url}/")) for _ in range(8)]
        for ws in clients:
            await ws.send_message("x")
            await ws.get_message()  # served: its worker holds it
        runner.scope.cancel()  # cancellation stops the workers gracefully
        for ws in clients:
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
            assert caught.value.reason.code == 1001
    await runner.done.wait()
    assert pool.state is PoolState.STOPPED
    assert pool.pids == {}
    assert pool.killed == []
    await all_gone(pids.values())


async def test_a_crashed_worker_is_restarted_and_logged(
    nursery: trio.Nursery, logged_errors: list[logging.LogRecord]
) -> None:
    pool, runner = await start_pool(nursery, f"{APP}:echo_pid", HOST, 0, workers=2, restart_backoff=FAST_RESTART)
    before = pool.pids
    async with open_websocket_url(f"{pool.url}/") as ws:
        await ws.send_message("hi")
        crashed_pid, worker = (await ws.get_message()).split()[:2]
        await ws.send_message("crash")  # the handler calls os._exit(3)
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    crashed = int(worker)
    await until(lambda: pool.restarts == 1 and pool.states[crashed] is WorkerState.READY)
    assert pool.pids[crashed] != int(crashed_pid)
    assert pool.pids[3 - crashed] == before[3 - crashed]  # the other one was left alone
    assert not alive(int(crashed_pid))
    # Connections work again, and reach the new process too.
    seen = {await ask(f"{pool.url}/") for _ in range(24)}
    assert seen == {(pid, str(worker)) for worker, pid in pool.pids.items()}
    assert [record.getMessage() for record in logged_errors] == [
        f"worker {crashed} exited unexpectedly; restarting it in {pool._table.slots[crashed].delay:.2f} s (restart 1)"
    ]
    assert logged_errors[0].worker == crashed  # type: ignore[attr-defined]
    pids = pool.pids
    pool.stop()
    await runner.done.wait()
    await all_gone(pids.values())


async def test_a_worker_that_outstays_the_grace_period_is_killed(nursery: trio.Nursery) -> None:
    pool, runner = await start_pool(
        nursery, f"{APP}:echo_pid", HOST, 0, workers=1, disconnect_timeout=0.2, grace_period=0.5
    )
    (pid,) = pool.pids.values()
    async with open_websocket_url(f"{pool.url}/") as ws:
        await ws.send_message("hi")
        await ws.get_message()
        await ws.send_message("stuck")  # its handler now ignores cancellation
        await trio.sleep(0.1)  # (not synchronisation: the worker gets 'stuck' or not, the kill comes either way)
        with trio.fail_after(5):
            pool.stop()
            await runner.done.wait()
    assert pool.killed == [pid]
    await all_gone([pid])


async def test_without_so_reuseport_one_worker_serves_and_its_port_waits_for_restarts(
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    logged_errors: list[logging.LogRecord],
) -> None:
    monkeypatch.setattr(trio_ws._workers, "_reuse_port", lambda sock: False)
    pool, runner = await start_pool(nursery, f"{APP}:echo_pid", HOST, 0, workers=3, restart_backoff=FAST_RESTART)
    assert "SO_REUSEPORT is not available on this system: one worker instead of 3" in caplog.text
    assert not pool.reuse_port
    assert pool.port != 0
    (first,) = pool.pids.values()
    assert await ask(f"{pool.url}/") == (first, "1")
    async with open_websocket_url(f"{pool.url}/") as ws:
        await ws.send_message("crash")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    # The parent's listening socket keeps the port: this connection waits in its backlog for the new worker.
    pid, worker = await ask(f"{pool.url}/")
    assert (pid != first, worker) == (True, "1")
    assert len(logged_errors) == 1
    pool.stop()
    await runner.done.wait()
    await all_gone([first, pid])


async def test_a_router_over_tls(nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert(HOST)
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pool, runner = await start_pool(nursery, f"{APP}:router", HOST, 0, workers=1, tls=(str(certfile), str(keyfile)))
    assert pool.url.startswith("wss://")
    (pid,) = pool.pids.values()
    assert await ask(f"{pool.url}/pid", context=context) == (pid, "1")
    # Plain HTTP goes to the router's handle_http.
    stream = await trio.open_ssl_over_tcp_stream(HOST, pool.port, ssl_context=context, https_compatible=True)
    async with stream:
        await stream.send_all(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while data := await stream.receive_some():
            response += data
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(f"ok {pid}\n".encode())
    pool.stop()
    await runner.done.wait()
    await all_gone([pid])


async def test_a_worker_that_cannot_start_is_a_worker_error() -> None:
    with trio.fail_after(LIMIT), pytest.raises(WorkerError, match="cannot import module 'no_such_module_here'"):
        await run_workers("no_such_module_here:handler", HOST, 0, workers=2, handle_signals=False)


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"target": "no_colon"}, "the target must be 'MODULE:ATTRIBUTE'"),
        ({"target": lambda request: None}, "cannot tell where"),
        ({"workers": 0}, "workers must be a positive int"),
        ({"tls": ("/no/such/cert.pem", "/no/such/key.pem")}, "no such TLS file"),
        ({"log_level": "LOUD"}, "unknown log level"),
        ({"compression": "gzip"}, "compression must be None"),
        ({"message_queue_size": math.inf}, "cannot be given to workers"),
        ({"max_connections": 0}, "max_connections must be a positive int"),
    ],
)
async def test_bad_arguments_fail_before_any_process_starts(arguments: dict[str, Any], complaint: str) -> None:
    arguments = {"target": f"{APP}:echo_pid", "workers": 1, **arguments}
    with pytest.raises((ValueError, TypeError), match=re.escape(complaint)):
        await run_workers(arguments.pop("target"), HOST, 0, handle_signals=False, **arguments)


def test_a_target_defined_in_main_cannot_be_imported_by_a_worker() -> None:
    def handler() -> None: ...

    handler.__module__ = "__main__"
    handler.__qualname__ = "handler"
    with pytest.raises(ValueError, match="defined in __main__"):
        _import_name(handler)
    assert _import_name(workers_app.echo_pid) == f"{APP}:echo_pid"


def test_the_table_decides_restarts_with_backoff() -> None:
    table = _Table(2, Backoff(initial=1.0, maximum=8.0, factor=2.0, reset_after=10.0))
    table.spawned(1, 101, now=0.0)
    table.spawned(2, 102, now=0.0)
    assert table.ready(1) is False
    assert table.ready(2) is True  # every worker listening: the pool runs
    assert table.state is PoolState.RUNNING
    bounds = []
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert table.exited(1, now) is _Exit.CRASHED  # a crash series: the bound doubles, up to the maximum
        bounds.append(table.backoff.ceiling(table.slots[1].attempt - 1))
        assert 0 <= table.slots[1].delay <= bounds[-1]
        table.spawned(1, 200 + int(now), now=now)
        table.ready(1)
    assert bounds == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert table.exited(1, now=20.0) is _Exit.CRASHED  # it lived 15 s: a new series
    assert table.slots[1].attempt == 1
    assert table.slots[1].restarts == 6
    assert table.stop() == [2]  # worker 1 waits for its restart: it is simply not started again
    assert table.slots[1].state is WorkerState.EXITED
    assert table.exited(2, now=21.0) is _Exit.STOPPED
    assert table.stop() == []


def test_a_worker_that_dies_while_the_pool_starts_fails_it() -> None:
    table = _Table(2, Backoff())
    table.spawned(1, 101, now=0.0)
    assert table.exited(1, now=0.5) is _Exit.FAILED
    assert table.slots[1].state is WorkerState.EXITED


# --- the command line -------------------------------------------------------------------------------


def served_line(line: str) -> tuple[str, dict[int, int]]:
    match = re.search(r"at (ws://\S+)/ with \d+ worker\(s\) \(pids ([^)]*)\)", line)
    assert match is not None, line
    pids = dict(tuple(map(int, pair.split(": "))) for pair in match.group(2).split(", "))
    return match.group(1), pids  # type: ignore[return-value]


async def test_cli_run_serves_and_sigterm_closes_every_client_1001() -> None:
    with trio.fail_after(LIMIT):
        async with cli("run", f"{APP}:echo_pid", "--host", HOST, "--port", "0", "--workers", "2") as process:
            assert process.stdout is not None
            assert process.stderr is not None
            url, pids = served_line((await Output(process.stdout).read_until(b"\n")).decode())
            assert sorted(pids) == [1, 2]
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(open_websocket_url(f"{url}/")) for _ in range(16)]
                served = set()
                for ws in clients:
                    await ws.send_message("x")
                    served.add(int((await ws.get_message()).split()[0]))
                assert served == set(pids.values())
                process.send_signal(signal.SIGTERM)
                for ws in clients:
                    with pytest.raises(ConnectionClosed) as caught:
                        await ws.get_message()
                    assert caught.value.reason.code == 1001
            assert await process.wait() == 0
            stderr = (await Output(process.stderr).read_rest()).decode()
    assert "Traceback" not in stderr, stderr
    assert "[worker main] INFO trio_ws.workers: SIGTERM: stopping the workers" in stderr, stderr
    for worker in (1, 2):
        # SIGTERM, or the end of the control socket, whichever comes first
        assert re.search(rf"\[worker {worker}\] INFO trio_ws.workers: .*: closing the connections \(1001\)", stderr)
    await all_gone(pids.values())


async def test_cli_run_a_second_signal_kills_the_workers() -> None:
    with trio.fail_after(LIMIT):
        async with cli(
            "run", f"{APP}:echo_pid", "--host", HOST, "--port", "0", "--workers", "1", "--disconnect-timeout", "30"
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            url, pids = served_line((await Output(process.stdout).read_until(b"\n")).decode())
            async with open_websocket_url(f"{url}/") as ws:
                await ws.send_message("hi")
                await ws.get_message()
                await ws.send_message("stuck")
                await ws.send_message("hi")  # answered only if 'stuck' was not taken first: it never is
                errors = Output(process.stderr)
                process.send_signal(signal.SIGTERM)
                await errors.read_until(b"SIGTERM: stopping the workers")
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 1  # some worker had to be killed
            await errors.read_rest()
    assert b"second signal: killing the workers" in errors.seen
    await all_gone(pids.values())


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("no_such_module_here:handler", "cannot import module 'no_such_module_here': ModuleNotFoundError"),
        (f"{APP}:missing", f"module '{APP}' has no attribute 'missing'"),
        (f"{APP}:not_callable", f"{APP}:not_callable is not callable"),
    ],
)
async def test_cli_run_a_bad_target_is_a_clear_error(target: str, complaint: str) -> None:
    result = await run_cli("run", target, "--host", HOST, "--port", "0", "--workers", "1")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert f"trio_ws run: worker 1 could not start: {complaint}" in stderr, stderr


async def test_cli_run_a_target_without_a_colon_is_a_usage_error() -> None:
    result = await run_cli("run", "app", "--port", "0")
    assert result.returncode == 2
    assert b"the target must be 'MODULE:ATTRIBUTE'" in result.stderr


async def test_cli_serve_workers_shows_which_worker_served() -> None:
    with trio.fail_after(LIMIT):
        async with cli("serve", "--host", HOST, "--port", "0", "--workers", "2") as process:
            port = await read_server_port(process)
            stream = await trio.open_tcp_stream(HOST, port)
            async with stream:
                await stream.send_all(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                response = b""
                while data := await stream.receive_some():
                    response += data
            assert re.search(rb"\r\nx-worker: [12]\r\n", response.partition(b"\r\n\r\n")[0], re.I), response[:300]
            async with open_websocket_url(f"ws://{HOST}:{port}/chat", subprotocols=["chat.v1"]) as ws:
                tick = json.loads(await ws.get_message())
            assert tick["type"] == "tick"
            assert tick["worker"] in ("1", "2")
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


async def test_docs_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/workers.md: its app.py, and the program that serves it from two workers."""
    text = (ROOT / "docs" / "workers.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    app, program = blocks[0], blocks[1]
    (tmp_path / "app.py").write_text(app)
    monkeypatch.chdir(tmp_path)
    output: list[str] = []
    namespace: dict[str, Any] = {
        "__name__": "doc_example",
        "print": lambda *args: output.append(" ".join(map(str, args))),
    }
    exec(compile(program.removesuffix("trio.run(main)\n"), "docs/workers.md", "exec"), namespace)
    with trio.fail_after(LIMIT):
        await namespace["main"]()
    assert output[0].startswith("2 workers at ws://127.0.0.1:"), output
    assert output[1:] == ["hello from worker 1", "hello from worker 2"] or output[1:] == [
        "hello from worker 2",
        "hello from worker 1",
    ], output


async def test_cli_serve_workers_over_tls_with_a_throwaway_ca() -> None:
    with trio.fail_after(LIMIT):
        async with cli("serve", "--host", HOST, "--port", "0", "--workers", "1", "--tls") as process:
            assert process.stdout is not None
            output = (await Output(process.stdout).read_until(b"for the CLI client)\n")).decode()
            match = re.search(r"wss://127\.0\.0\.1:(\d+)/chat", output)
            ca_file = re.search(r"trust (\S+\.pem)", output)
            assert match is not None, output
            assert ca_file is not None, output
            context = ssl.create_default_context(cafile=ca_file.group(1))
            async with open_websocket_url(f"wss://{HOST}:{match.group(1)}/", context) as ws:
                await ws.send_message("over TLS")
                assert await ws.get_message() == "over TLS"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert not await trio.Path(ca_file.group(1)).exists()  # the throw-away files are removed


@pytest.mark.parametrize("command", ["run", "serve"])
async def test_cli_zero_workers_is_a_usage_error(command: str) -> None:
    target = [f"{APP}:echo_pid"] if command == "run" else []
    result = await run_cli(command, *target, "--port", "0", "--workers", "0")
    assert result.returncode == 2
    assert b"--workers must be at least 1" in result.stderr
