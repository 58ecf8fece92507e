"""Worker processes on one port: :func:`run_workers` and the supervisor behind it.

The parent reserves the address (a socket bound with ``SO_REUSEPORT`` and never
listening, kept open while the workers run, so that port 0 gives every worker
the same port and nobody else takes it between restarts), then starts each
worker as a fresh interpreter (``python -m trio_ws._worker``, never a fork of a
running Trio).  Each worker binds its own ``SO_REUSEPORT`` listener on that
address, and the kernel spreads incoming connections over the listeners.

Parent and worker talk over one socketpair per worker, inherited by the worker
(``pass_fds``): the worker writes one JSON line when it is listening
(``{"event": "ready", ...}``) or when it cannot start (``{"event": "error",
...}``); the parent never writes, and its end closing (the parent gone, even
killed) tells the worker to stop, so that no worker outlives its parent.

Where ``SO_REUSEPORT`` is missing, one worker serves, on a listening socket
the parent made and hands down, so that connections wait in its backlog
while the worker restarts.

The bookkeeping (which worker is in which state, whether an exit is a crash,
how long to wait before a restart) is :class:`_Table`, with no I/O; the
trio code around it spawns, signals and waits.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ._deflate import Deflate
from ._endpoint import Endpoint
from ._options import (
    CONN_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MESSAGE_QUEUE_SIZE,
    RECEIVE_BYTES,
    SERVER_HEADER,
    WRITE_LIMIT,
    Options,
)
from ._reconnect import Backoff
from ._server import _check_max_connections, _origin_set

__all__ = [
    "LOG_FORMAT",
    "PoolState",
    "WorkerError",
    "WorkerLogFilter",
    "WorkerPool",
    "WorkerState",
    "run_workers",
]

LOGGER = logging.getLogger("trio_ws.workers")

#: The format of log records in the workers (and of the parent, from the CLI):
#: every record names its worker (``main`` for the parent).
LOG_FORMAT = "%(asctime)s [worker %(worker)s] %(levelname)s %(name)s: %(message)s"

#: How long a worker may take to start listening before the parent gives up on it.
START_TIMEOUT = 30.0

#: The environment variable that tells each worker its id (1, 2, ...).
WORKER_ENV = "TRIO_WS_WORKER"

DEFAULT_RESTART_BACKOFF = Backoff(initial=0.5, maximum=10.0, factor=2.0, reset_after=10.0)


class WorkerLogFilter(logging.Filter):
    """Gives every record a ``worker`` attribute (for ``%(worker)s``): this process's id, unless it has one."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = self.worker
        return True


class WorkerError(RuntimeError):
    """A worker could not start: its target did not import, its address could not be bound..."""


class WorkerState(enum.Enum):
    """Where one worker slot is."""

    STARTING = "starting"  # spawned, not listening yet
    READY = "ready"  # listening
    STOPPING = "stopping"  # asked to stop (SIGTERM), not gone yet
    BACKOFF = "backoff"  # exited unexpectedly; waiting to be started again
    EXITED = "exited"  # gone for good


class PoolState(enum.Enum):
    """Where the pool of workers is."""

    STARTING = "starting"  # until every worker is listening once
    RUNNING = "running"
    STOPPING = "stopping"  # stop() or a signal: workers closing their connections
    STOPPED = "stopped"  # every worker gone


class _Exit(enum.Enum):
    """What a worker's exit means."""

    STOPPED = "stopped"  # it was asked to: nothing more to do
    CRASHED = "crashed"  # restart it after its backoff delay
    FAILED = "failed"  # it never started while the pool was starting: give up


@dataclass
class _Slot:
    id: int
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    started_at: float = 0.0
    ever_ready: bool = False
    attempt: int = 0  # Backoff's attempt number for the next restart
    restarts: int = 0
    delay: float = 0.0  # before the next start, after a crash


@dataclass
class _Table:
    """The supervisor's decisions, without I/O: a state per worker and for the pool."""

    size: int
    backoff: Backoff
    state: PoolState = PoolState.STARTING
    slots: dict[int, _Slot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slots = {number: _Slot(number) for number in range(1, self.size + 1)}

    def spawned(self, worker: int, pid: int, now: float) -> None:
        slot = self.slots[worker]
        slot.state, slot.pid, slot.started_at = WorkerState.STARTING, pid, now

    def ready(self, worker: int) -> bool:
        """A worker is listening; ``True`` when that makes every worker ready for the first time."""
        slot = self.slots[worker]
        if slot.state is WorkerState.STARTING:
            slot.state = WorkerState.READY
        slot.ever_ready = True
        if self.state is PoolState.STARTING and all(s.state is WorkerState.READY for s in self.slots.values()):
            self.state = PoolState.RUNNING
            return True
        return False

    def exited(self, worker: int, now: float) -> _Exit:
        slot = self.slots[worker]
        slot.pid = None
        if self.state in (PoolState.STOPPING, PoolState.STOPPED) or slot.state is WorkerState.STOPPING:
            slot.state = WorkerState.EXITED
            return _Exit.STOPPED
        if self.state is PoolState.STARTING and not slot.ever_ready:
            slot.state = WorkerState.EXITED
            return _Exit.FAILED
        if now - slot.started_at >= self.backoff.reset_after:
            slot.attempt = 0  # it ran long enough: this crash is not part of a series
        slot.delay = self.backoff.delay(slot.attempt)
        slot.attempt += 1
        slot.restarts += 1
        slot.state = WorkerState.BACKOFF
        return _Exit.CRASHED

    def stop(self) -> list[int]:
        """The pool is stopping: the workers to signal (running ones); those waiting to restart are done."""
        if self.state is PoolState.STOPPED:
            return []
        self.state = PoolState.STOPPING
        running = []
        for slot in self.slots.values():
            if slot.state in (WorkerState.STARTING, WorkerState.READY):
                slot.state = WorkerState.STOPPING
                running.append(slot.id)
            elif slot.state is WorkerState.BACKOFF:
                slot.state = WorkerState.EXITED
        return running


def _reuse_port(sock: socket.socket) -> bool:
    """Set ``SO_REUSEPORT`` on ``sock``; ``False`` where the system has no such option."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class _Address:
    """Where the workers listen: the first address ``host`` resolves to, and the port."""

    family: int
    sockaddr: tuple[Any, ...]


async def _resolve(host: str, port: int) -> _Address:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return _Address(int(family), tuple(sockaddr))


def _reserve(address: _Address, *, listen: bool, backlog: int) -> tuple[socket.socket, bool]:
    """The parent's socket on the address, and whether it has ``SO_REUSEPORT``.

    With ``SO_REUSEPORT`` it is bound and never listens: it only holds the port.
    Without, it listens, and the one worker inherits it.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared = _reuse_port(sock) and not listen
        sock.bind(address.sockaddr)
        if not shared:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, shared


def _import_name(target: object) -> str:
    """``"module:attribute"`` for a target given as that string or as an importable object."""
    if isinstance(target, str):
        module, colon, attribute = target.partition(":")
        if not (colon and module and attribute):
            raise ValueError(f"the target must be 'MODULE:ATTRIBUTE' (e.g. 'app:handler'), not {target!r}")
        return target
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or "<" in qualname:
        raise TypeError(f"cannot tell where {target!r} is defined: give it as 'MODULE:ATTRIBUTE'")
    if module_name == "__main__":
        raise ValueError(
            f"{qualname} is defined in __main__, which a worker cannot import: "
            "move it to a module and give it as 'MODULE:ATTRIBUTE'"
        )
    return f"{module_name}:{qualname}"


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Spec:
    """What every worker runs, as its command line carries it (JSON)."""

    kind: str  # "handler" (target and http_handler) or "demo" (trio_ws._demo)
    target: str | None
    http_handler: str | None
    tls: tuple[str, str] | None
    server: dict[str, Any]  # WebSocketServer's keyword arguments
    log_level: str
    backlog: int
    pubsub: str | None = None  # the demo's bus (``serve --workers N --pubsub URL``)


class WorkerPool:
    """What :func:`run_workers` hands to ``nursery.start``: the pool's address, its workers, and control.

    ``url``, ``host`` and ``port`` are where the workers listen (the port the
    system chose for port 0); ``pids`` maps each worker's id (1, 2, ...) to
    its process id while it runs; ``restarts`` counts crashes restarted.
    """

    def __init__(
        self,
        spec: _Spec,
        address: _Address,
        host: str,
        port: int,
        size: int,
        shared: bool,
        grace_period: float,
        backoff: Backoff,
        handle_signals: bool,
        inherited: socket.socket | None,
    ) -> None:
        self._spec = spec
        self._address = address
        self._table = _Table(size, backoff)
        self._processes: dict[int, trio.Process] = {}
        self._controls: dict[int, trio.SocketStream] = {}
        self._shared = shared
        self._grace_period = grace_period
        self._handle_signals = handle_signals
        self._inherited = inherited  # the listening socket the one worker gets, without SO_REUSEPORT
        self._nursery: trio.Nursery | None = None
        self._backoff_scopes: dict[int, trio.CancelScope] = {}
        self._started = trio.Event()  # every worker ready once, or the pool stopped trying
        self._stopped = trio.Event()
        self._error: WorkerError | None = None
        self._killed: list[int] = []  # pids killed by kill() or at the end of the grace period
        self.host = host
        self.port = port
        self.url: str = Endpoint(host, port, spec.tls is not None).url

    @property
    def state(self) -> PoolState:
        """Where the pool is: starting, running, stopping or stopped."""
        return self._table.state

    @property
    def reuse_port(self) -> bool:
        """Whether the workers share the port with ``SO_REUSEPORT`` (else there is one worker)."""
        return self._shared

    @property
    def pids(self) -> dict[int, int]:
        """Each running worker's process id, by worker id."""
        return {slot.id: slot.pid for slot in self._table.slots.values() if slot.pid is not None}

    @property
    def states(self) -> dict[int, WorkerState]:
        """Each worker's state, by worker id."""
        return {slot.id: slot.state for slot in self._table.slots.values()}

    @property
    def restarts(self) -> int:
        """How many times a worker that exited unexpectedly was started again."""
        return sum(slot.restarts for slot in self._table.slots.values())

    @property
    def killed(self) -> list[int]:
        """Process ids that had to be killed (SIGKILL): after the grace period, or by :meth:`kill`."""
        return list(self._killed)

    def __repr__(self) -> str:
        return f"<WorkerPool {self.url} {self.state.value}: {len(self.pids)} worker(s)>"

    def stop(self) -> None:
        """Begin a graceful stop, and return at once.

        Each worker gets SIGTERM: it stops accepting, closes its connections
        with 1001 (bounded by ``disconnect_timeout``) and exits; a worker
        waiting to restart is not started again.  What is still running
        after the grace period is killed.  Idempotent.
        """
        if self._table.state in (PoolState.STOPPING, PoolState.STOPPED):
            return
        for worker in self._table.stop():
            process = self._processes.get(worker)
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
            control = self._controls.get(worker)
            if control is not None:
                # The end of our side says "stop" too, and cannot be lost: a
                # signal that comes while the worker starts up may be.
                control.socket.shutdown(socket.SHUT_WR)
        for scope in self._backoff_scopes.values():
            scope.cancel()
        self._started.set()
        if self._nursery is not None:
            self._nursery.start_soon(self._kill_after, self._grace_period)

    def kill(self) -> None:
        """Kill (SIGKILL) every worker still running: ours only, by their process handles."""
        self.stop()
        for process in self._processes.values():
            if process.returncode is None:
                self._killed.append(process.pid)
                process.kill()

    async def _kill_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        if self._processes:
            LOGGER.warning(
                "%d worker(s) still running %g s after the stop: killing them",
                len(self._processes), seconds, extra={"worker": "main"},
            )  # fmt: skip
        self.kill()

    async def _watch_signals(self) -> None:
        """SIGTERM or SIGINT: stop gracefully; a second one: kill what is left."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._table.state in (PoolState.STARTING, PoolState.RUNNING):
                    name = signal.Signals(signum).name
                    LOGGER.info("%s: stopping the workers", name, extra={"worker": "main"})
                    self.stop()
                else:
                    LOGGER.warning("second signal: killing the workers", extra={"worker": "main"})
                    self.kill()

    async def _supervise(self) -> None:
        """Run the workers until they are all gone, shielded: only stop() and kill() end them."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._handle_signals:
                    nursery.start_soon(self._watch_signals)
                async with trio.open_nursery() as slots:
                    for worker in self._table.slots:
                        slots.start_soon(self._keep, worker)
                self._table.state = PoolState.STOPPED
                self._nursery = None
                nursery.cancel_scope.cancel()  # the grace timer and the signal watcher
        self._started.set()
        self._stopped.set()

    async def _keep(self, worker: int) -> None:
        """Run one worker, and run it again after each crash (with backoff) until the pool stops."""
        while True:
            ending = await self._run_once(worker)
            if ending is _Exit.STOPPED:
                return
            slot = self._table.slots[worker]
            if ending is _Exit.FAILED:
                self.stop()
                return
            LOGGER.error(
                "worker %d exited unexpectedly; restarting it in %.2f s (restart %d)",
                worker, slot.delay, slot.restarts, extra={"worker": worker},
            )  # fmt: skip
            with trio.CancelScope() as scope:
                self._backoff_scopes[worker] = scope
                await trio.sleep(slot.delay)
            del self._backoff_scopes[worker]
            if slot.state is not WorkerState.BACKOFF:  # stopped while waiting
                return

    async def _run_once(self, worker: int) -> _Exit:
        parent_end, worker_end = socket.socketpair()
        try:
            process = await self._spawn(worker, worker_end)
        except BaseException:
            parent_end.close()
            raise
        finally:
            worker_end.close()
        self._processes[worker] = process
        self._table.spawned(worker, process.pid, trio.current_time())
        LOGGER.debug("worker %d started: pid %d", worker, process.pid, extra={"worker": worker})
        try:
            async with trio.SocketStream(trio.socket.from_stdlib_socket(parent_end)) as control:
                self._controls[worker] = control
                try:
                    with trio.move_on_after(START_TIMEOUT) as start_timer:
                        await self._read_control(worker, control, start_timer)
                finally:
                    del self._controls[worker]
                if start_timer.cancelled_caught:
                    self._fail(worker, f"did not start listening within {START_TIMEOUT:g} s")
                    process.kill()
            code = await process.wait()
        finally:
            if process.returncode is None:  # only on a bug: never leave a worker behind
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            del self._processes[worker]
        ending = self._table.exited(worker, trio.current_time())
        if ending is _Exit.FAILED and self._error is None:
            self._fail(worker, f"exited with code {code} before it was listening")
        level = logging.INFO if ending is _Exit.STOPPED else logging.WARNING
        LOGGER.log(level, "worker %d (pid %d) exited with code %s", worker, process.pid, code, extra={"worker": worker})
        return ending

    def _fail(self, worker: int, message: str) -> None:
        if self._error is None:
            self._error = WorkerError(f"worker {worker} could not start: {message}")

    async def _read_control(self, worker: int, control: trio.SocketStream, start_timer: trio.CancelScope) -> None:
        """The worker's lines, until it closes its end (by exiting)."""
        buffer = b""
        while data := await control.receive_some(4096):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if message["event"] == "ready":
                    start_timer.deadline = math.inf
                    if self._table.ready(worker):
                        self._started.set()
                elif message["event"] == "error":
                    self._fail(worker, message["message"])
                    # A restart that fails while the pool runs is news; while it starts (or is
                    # stopping because a start failed), the WorkerError raised says it already.
                    if self._table.state is PoolState.RUNNING:
                        LOGGER.error(
                            "worker %d could not start: %s", worker, message["message"], extra={"worker": worker}
                        )

    async def _spawn(self, worker: int, control: socket.socket) -> trio.Process:
        spec = self._spec
        config = {
            "id": worker,
            "kind": spec.kind,
            "target": spec.target,
            "http_handler": spec.http_handler,
            "tls": spec.tls,
            "server": spec.server,
            "log_level": spec.log_level,
            "backlog": spec.backlog,
            "pubsub": spec.pubsub,
            "family": self._address.family,
            "address": [self._address.sockaddr[0], self.port, *self._address.sockaddr[2:]],
            "control_fd": control.fileno(),
            "listener_fd": self._inherited.fileno() if self._inherited is not None else None,
        }
        fds = [control.fileno()] + ([self._inherited.fileno()] if self._inherited is not None else [])
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_ws._worker", json.dumps(config)],
            stdin=subprocess.DEVNULL,
            pass_fds=fds,
            env={**os.environ, WORKER_ENV: str(worker)},
        )


async def run_workers(
    target: object,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    workers: int | None = None,
    tls: tuple[str, str] | None = None,
    http_handler: object = None,
    compression: str | Deflate | None = None,
    message_queue_size: int = MESSAGE_QUEUE_SIZE,
    max_message_size: int = MAX_MESSAGE_SIZE,
    receive_buffer_size: int | None = RECEIVE_BYTES,
    connect_timeout: float = CONN_TIMEOUT,
    disconnect_timeout: float = CONN_TIMEOUT,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    write_limit: int = WRITE_LIMIT,
    server_header: str | None = SERVER_HEADER,
    origins: Iterable[str | None] | None = None,
    max_connections: int | None = None,
    backlog: int = socket.SOMAXCONN,
    log_level: str = "INFO",
    grace_period: float | None = None,
    restart_backoff: Backoff = DEFAULT_RESTART_BACKOFF,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """(New in trio_ws) Serve WebSockets from ``workers`` processes sharing one port, until stopped.

    ``target`` is the handler, as ``"MODULE:ATTRIBUTE"`` (or the object
    itself, when its module is importable: not ``__main__``): a coroutine
    function taking a :class:`WebSocketRequest`, or a :class:`Router` (whose
    ``handle_http`` then answers plain HTTP, unless ``http_handler`` names
    another).  Each worker is a new Python process that imports it and
    serves it with its own ``SO_REUSEPORT`` listener on ``host``:``port``
    (``host``'s first address; port 0: one port the system chooses, the
    same for all).  Each worker's environment has ``TRIO_WS_WORKER`` set to
    its id (1, 2, ...), and its log records a ``worker`` field
    (:data:`LOG_FORMAT`), to stderr at ``log_level``.

    ``workers``: how many (default: the CPUs this process may use).
    ``tls``: ``(certfile, keyfile)`` to serve ``wss://``.  The other keyword
    arguments are :class:`WebSocketServer`'s, given to each worker.

    Supports ``pool = await nursery.start(run_workers, ...)``, which returns
    the :class:`WorkerPool` once every worker is listening.

    A worker that exits unexpectedly is logged and started again after a
    delay from ``restart_backoff``.  With ``handle_signals`` (the default;
    main thread only), SIGTERM or SIGINT stops the pool gracefully: each
    worker closes its connections with 1001, within ``disconnect_timeout``,
    and exits; a second signal kills the workers.  ``WorkerPool.stop()`` does
    the same, and so does cancellation: the stop is shielded from it, and
    bounded by ``grace_period`` (default ``disconnect_timeout`` + 5 s), after
    which the workers still running are killed.  Returns when every worker is
    gone.  Where ``SO_REUSEPORT`` is not available, one worker serves (a
    warning says so).

    :raises WorkerError: a worker could not start (its target does not
        import, its address is taken...): the others are stopped.
    :raises ValueError: a bad argument, before any process starts.
    """
    name = _import_name(target)
    handler_name = _import_name(http_handler) if http_handler is not None else None
    spec = _Spec(
        "handler",
        name,
        handler_name,
        _check_tls(tls),
        _server_options(
            compression=compression,
            message_queue_size=message_queue_size,
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
            connect_timeout=connect_timeout,
            disconnect_timeout=disconnect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            write_limit=write_limit,
            server_header=server_header,
            origins=origins,
            max_connections=max_connections,
        ),
        _check_log_level(log_level),
        backlog,
    )
    await _run_pool(spec, host, port, workers, grace_period, restart_backoff, handle_signals, task_status)


def _check_tls(tls: Sequence[str] | None) -> tuple[str, str] | None:
    if tls is None:
        return None
    certfile, keyfile = tls
    for path in (certfile, keyfile):
        if not os.path.isfile(path):
            raise ValueError(f"no such TLS file: {path!r}")
    return os.path.abspath(certfile), os.path.abspath(keyfile)


def _check_log_level(level: str) -> str:
    name = str(level).upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return name


def _server_options(**options: Any) -> dict[str, Any]:
    """WebSocketServer's keywords, checked here (before any worker starts), as JSON values."""
    origins = options.pop("origins")
    max_connections = options.pop("max_connections")
    Options(**options)
    _origin_set(origins)
    _check_max_connections(max_connections)
    if options["message_queue_size"] == math.inf:
        raise ValueError("message_queue_size=inf cannot be given to workers")
    options["origins"] = list(origins) if origins is not None else None
    options["max_connections"] = max_connections
    if isinstance(options["compression"], Deflate):  # as JSON: the worker makes it again
        options["compression"] = {"deflate": dataclasses.asdict(options["compression"])}
    return options


async def _run_pool(
    spec: _Spec,
    host: str,
    port: int,
    workers: int | None,
    grace_period: float | None,
    restart_backoff: Backoff,
    handle_signals: bool,
    task_status: trio.TaskStatus[WorkerPool],
) -> None:
    size = _default_workers() if workers is None else workers
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"workers must be a positive int, not {workers!r}")
    grace = float(spec.server.get("disconnect_timeout", CONN_TIMEOUT)) + 5.0 if grace_period is None else grace_period
    address = await _resolve(host, port)
    sock, shared = _reserve(address, listen=False, backlog=spec.backlog)
    inherited = None
    if not shared:
        sock.close()
        sock, _ = _reserve(address, listen=True, backlog=spec.backlog)
        inherited = sock
        if size > 1:
            LOGGER.warning(
                "SO_REUSEPORT is not available on this system: one worker instead of %d", size, extra={"worker": "main"}
            )
            size = 1
    with sock:
        pool = WorkerPool(
            spec, address, host, sock.getsockname()[1], size, shared, grace, restart_backoff, handle_signals, inherited
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool._supervise)
            try:
                await pool._started.wait()
                if pool._error is None and pool.state is PoolState.RUNNING:
                    serving = spec.target or spec.kind
                    LOGGER.info("%d worker(s) serving %s at %s", size, serving, pool.url, extra={"worker": "main"})
                    task_status.started(pool)
                await pool._stopped.wait()
            finally:
                pool.stop()  # cancelled: the workers stop gracefully, and the nursery waits for them
    if pool._error is not None:
        raise pool._error
