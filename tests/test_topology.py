"""Several machines, simulated on one: HAProxy in front of two trio_ws servers, on loopback.

Every part is real and started here: ``haproxy`` (the Debian package, which
``.ci/run`` installs) on one port, balancing round robin over two trio_ws
servers on two other ports (the two "machines", served by this process).
Clients connect through HAProxy only, and each server says its name first, so
a client knows where it landed.

Under CI (``CI`` set) a missing ``haproxy`` fails these tests; elsewhere they
are skipped with the command that installs it.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_ws import (
    Backoff,
    ConnectionClosed,
    PubSub,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    broadcast,
    open_pubsub,
    open_websocket_url,
    reconnecting_websocket_url,
    serve_websocket,
)

from ._programs import find_program, free_port, stop_process
from .conftest import HOST

STARTUP_TIMEOUT = 10.0  # seconds for HAProxy to accept connections


def find_haproxy() -> str:
    return find_program("haproxy", "apt-get install -y haproxy")


DOCS = Path(__file__).parent.parent / "docs"


def haproxy_config(port: int, backends: dict[str, int]) -> str:
    """The HAProxy configuration of docs/several-machines.md, with our ports in place of its
    8000 (the front) and 8001, 8002 (the two machines, in order)."""
    text = (DOCS / "several-machines.md").read_text()
    (config,) = re.findall(r"^```haproxy\n(.*?)^```$", text, re.S | re.M)
    ports = [str(backend) for backend in backends.values()]
    assert config.count("127.0.0.1:8000") == 1
    assert len(ports) == 2
    config = config.replace("127.0.0.1:8000", f"{HOST}:{port}")
    return config.replace("127.0.0.1:8001", f"{HOST}:{ports[0]}").replace("127.0.0.1:8002", f"{HOST}:{ports[1]}")


class HAProxy:
    """``haproxy -db`` (in the foreground) on a free loopback port, stopped by its handle."""

    def __init__(self, directory: Path, backends: dict[str, int]) -> None:
        self.port = free_port()
        config = directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, backends))
        self.log = directory / "haproxy.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [find_haproxy(), "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    async def wait_until_accepting(self) -> None:
        with trio.fail_after(STARTUP_TIMEOUT):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"haproxy exited with {self.process.returncode}: {self.log_text()}")
                try:
                    stream = await trio.open_tcp_stream(HOST, self.port)
                except OSError:
                    await trio.sleep(0.02)  # polling another process: there is no event to wait for
                    continue
                await stream.aclose()
                return

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.process)


@dataclass(eq=False)
class Machine:
    """One of the two servers: its name, its connections, and how to stop it."""

    name: str
    server: WebSocketServer | None = None
    peers: set[WebSocketConnection] = field(default_factory=set)
    bus: PubSub | None = None  # with one, what a client says goes to the room, on every machine

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.peers.add(ws)
        try:
            await ws.send_message(self.name)  # where the client landed
            async for message in ws:
                if self.bus is not None:
                    await self.bus.publish("room", f"{self.name}: {message}")
                else:
                    await ws.send_message(f"{self.name}: {message}")
        except ConnectionClosed:
            pass
        finally:
            self.peers.discard(ws)

    async def relay(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """This machine's bus: each message of the room to this machine's peers."""
        async with open_pubsub(url) as bus, bus.subscribe("room") as messages:
            self.bus = bus
            task_status.started()
            async for message in messages:
                broadcast(self.peers, message)


@dataclass
class Topology:
    machines: dict[str, Machine]
    haproxy: HAProxy

    @property
    def url(self) -> str:
        return self.haproxy.url


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[list[HAProxy]]:
    started: list[HAProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


async def start_topology(
    nursery: trio.Nursery, started: list[HAProxy], directory: Path, bus_url: str | None = None
) -> Topology:
    find_haproxy()  # fail (CI) or skip before anything starts
    machines = {name: Machine(name) for name in ("a", "b")}
    for machine in machines.values():
        if bus_url is not None:
            await nursery.start(machine.relay, bus_url)
        machine.server = await nursery.start(
            partial(serve_websocket, machine.handler, HOST, 0, None, disconnect_timeout=2)
        )
    backends = {name: machine.server.port for name, machine in machines.items() if machine.server is not None}
    proxy = HAProxy(directory, backends)
    started.append(proxy)
    await proxy.wait_until_accepting()
    return Topology(machines, proxy)


async def test_clients_through_haproxy_land_on_both_servers(
    nursery: trio.Nursery, haproxy_factory: list[HAProxy], tmp_path: Path
) -> None:
    topology = await start_topology(nursery, haproxy_factory, tmp_path)
    landed: list[str] = []
    async with trio.open_nursery() as clients:
        done = trio.Event()
        ready = trio.Semaphore(0)

        async def client(number: int) -> None:
            async with open_websocket_url(topology.url) as ws:
                name = await ws.get_message()
                assert isinstance(name, str)
                landed.append(name)
                await ws.send_message(f"hello {number}")
                assert await ws.get_message() == f"{name}: hello {number}"
                ready.release()
                await done.wait()

        for number in range(4):
            clients.start_soon(client, number)
        for _ in range(4):
            await ready.acquire()
        # Round robin over two healthy servers: two clients each.
        assert sorted(landed) == ["a", "a", "b", "b"]
        assert {name: len(machine.peers) for name, machine in topology.machines.items()} == {"a": 2, "b": 2}
        done.set()


async def test_a_graceful_stop_sends_1001_and_reconnecting_clients_move_to_the_other_server(
    nursery: trio.Nursery, haproxy_factory: list[HAProxy], tmp_path: Path
) -> None:
    topology = await start_topology(nursery, haproxy_factory, tmp_path)
    stopping = topology.machines["a"]
    endings: list[int | None] = []
    journeys: list[list[str]] = [[] for _ in range(4)]
    on_a = trio.Semaphore(0)
    back = trio.Semaphore(0)
    backoff = Backoff(initial=0.05, maximum=0.2)

    async def client(journey: list[str]) -> None:
        async with reconnecting_websocket_url(topology.url, backoff=backoff) as connections:
            async for ws in connections:
                name = await ws.get_message()
                assert isinstance(name, str)
                journey.append(name)
                if len(journey) > 1:
                    back.release()
                    return
                if name == "a":
                    on_a.release()
                async for _ in ws:  # ends quietly on 1000 and 1001 (a normal close)
                    pass
                assert ws.closed is not None
                endings.append(ws.closed.code)
                if ws.closed.code != 1001:
                    return  # closed by the test: done
                # 1001, Going Away: the loop closes this connection and connects again.

    start = time.monotonic()
    async with trio.open_nursery() as clients:
        for journey in journeys:
            clients.start_soon(client, journey)
        with trio.fail_after(10):
            for _ in range(2):  # round robin: two of the four land on "a"
                await on_a.acquire()
            assert stopping.server is not None
            await stopping.server.aclose()  # 1001 to its clients, then its port is closed
            for _ in range(2):  # ...and both come back, through HAProxy, to "b"
                await back.acquire()
            # The two on "b" are not affected: let them go.
            for machine in topology.machines.values():
                for ws in list(machine.peers):
                    await ws.aclose()
    assert sorted(journey[0] for journey in journeys) == ["a", "a", "b", "b"]
    moved = [journey for journey in journeys if journey[0] == "a"]
    assert [journey[1:] for journey in moved] == [["b"], ["b"]]
    assert sorted(endings) == [1000, 1000, 1001, 1001]
    assert time.monotonic() - start < 10


async def test_a_message_published_on_one_server_reaches_the_clients_of_both(
    nursery: trio.Nursery, haproxy_factory: list[HAProxy], tmp_path: Path, redis_server: Any
) -> None:
    """Redis between the two machines: what a client says on one reaches every client, on both."""
    topology = await start_topology(nursery, haproxy_factory, tmp_path, bus_url=redis_server.url)
    heard: dict[int, list[str]] = {number: [] for number in range(4)}
    async with trio.open_nursery() as clients:
        landed: list[str] = []
        ready = trio.Semaphore(0)
        speak = trio.Event()

        async def client(number: int) -> None:
            async with open_websocket_url(topology.url) as ws:
                name = await ws.get_message()
                assert isinstance(name, str)
                landed.append(name)
                ready.release()
                if number == 0:
                    await speak.wait()
                    await ws.send_message("hello, everyone")
                message = await ws.get_message()
                assert isinstance(message, str)
                heard[number].append(message)

        for number in range(4):
            clients.start_soon(client, number)
        with trio.fail_after(10):
            for _ in range(4):  # each is among its machine's peers before it hears the name
                await ready.acquire()
            speak.set()
    assert sorted(landed) == ["a", "a", "b", "b"]  # two clients on each machine
    said = {messages[0] for messages in heard.values()}
    assert len(said) == 1, heard  # the same message, heard by all four, on both machines
    assert said.pop() in ("a: hello, everyone", "b: hello, everyone")
