"""A headless Chromium driven over the DevTools protocol (CDP), spoken by trio_ws's own client.

Used by ``tests/test_browser.py`` (this module holds no tests).  The pieces:

- :func:`find_chromium` and :func:`launch_chromium`: start Chromium as a trio
  subprocess with a fresh profile and ``--remote-debugging-port=0``, and read
  the port it chose from ``<profile>/DevToolsActivePort``.
  :meth:`Chromium.stop` ends it through its own process object (SIGTERM, then
  SIGKILL if it does not exit in time), waits for it and for its helper
  processes (killing any that linger, each by its pid), and removes the
  temporary directory.
- :func:`open_cdp`: a CDP connection over ``open_websocket_url`` to the
  browser endpoint ``ws://127.0.0.1:PORT/devtools/browser/...``.
- :func:`open_page`: a fresh tab (``Target.createTarget``, then
  ``Target.attachToTarget`` with ``flatten``), closed on exit;
  :meth:`BrowserPage.navigate` waits for the load event and
  :meth:`BrowserPage.evaluate` / :meth:`BrowserPage.call` run JavaScript with
  ``awaitPromise`` and ``returnByValue``, raising :exc:`JavaScriptError` when
  it throws.
- :func:`serve_page`: a minimal HTTP/1.1 server on 127.0.0.1 that serves a
  few fixed pages (the origin the page's WebSockets come from).

Everything listens and connects on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_ws import ConnectionClosed, WebSocketConnection, open_websocket_url

__all__ = [
    "CDPConnection",
    "CDPError",
    "Chromium",
    "ChromiumError",
    "BrowserPage",
    "JavaScriptError",
    "find_chromium",
    "launch_chromium",
    "open_cdp",
    "open_page",
    "serve_page",
    "spki_sha256_base64",
]

HOST = "127.0.0.1"
CDP_MAX_MESSAGE_SIZE = 2**26  # CDP messages (results, events) can be big
CDP_TIMEOUT = 30.0  # no single CDP command of ours takes longer

# Where Chromium may live: the Debian package installs the real binary in
# /usr/lib/chromium (/usr/bin/chromium is a shell wrapper that execs it and
# adds flags we do not want).  $CHROMIUM overrides the search.
_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    # Tabs we create in the background must not have their timers throttled.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-port=0",
)


class ChromiumError(Exception):
    """Chromium could not be started, or stopped working."""


class CDPError(Exception):
    """A CDP command returned an error."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(
            f"{method}: {error.get('message')} (code {error.get('code')}) {error.get('data', '')}".rstrip()
        )
        self.method = method
        self.error = error


class JavaScriptError(Exception):
    """JavaScript evaluated in the page threw (or a promise it returned rejected)."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM`` if set, else the first found of the usual names.

    :raises ChromiumError: ``$CHROMIUM`` names no executable.
    """
    override = os.environ.get("CHROMIUM")
    if override:
        found = shutil.which(override)
        if found is None:
            raise ChromiumError(f"$CHROMIUM is {override!r}, which is not an executable")
        return found
    for candidate in _CANDIDATES:
        found = candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else shutil.which(candidate)
        if found:
            return found
    return None


def spki_sha256_base64(cert_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate.

    The format of Chromium's ``--ignore-certificate-errors-spki-list``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


# --- the browser process ----------------------------------------------------


@dataclass
class Chromium:
    """A running Chromium: its process, its temporary directory, its DevTools endpoint."""

    process: trio.Process
    directory: Path  # holds profile/ and chromium.log; removed by stop()
    port: int
    browser_path: str  # /devtools/browser/<uuid>

    @property
    def ws_url(self) -> str:
        """The browser-wide CDP WebSocket URL."""
        return f"ws://{HOST}:{self.port}{self.browser_path}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.directory / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def version(self) -> str:
        """The browser's product string, e.g. ``Chrome/131.0.6778.85``, over CDP."""
        async with open_cdp(self.ws_url) as cdp:
            result = await cdp.send("Browser.getVersion")
        return str(result["product"])

    async def stop(self, grace: float = 5.0) -> int:
        """End Chromium: SIGTERM (it closes its own child processes), SIGKILL after ``grace`` s.

        Waits for the process and removes the temporary directory; returns the exit status.
        """
        try:
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self.process.wait()
                if self.process.returncode is None:
                    self.process.kill()
            status = await self.process.wait()
            # Its helpers (zygote, renderers, utilities) leave a moment later.
            # They are in the process group that Chromium leads
            # (start_new_session), whose id is its pid: wait for them, and
            # after ``grace`` kill each one still there, by its pid.
            if not await _group_gone(self.process.pid, grace):
                for pid in _group_members(self.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await _group_gone(self.process.pid, grace)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
        return status


def _group_members(pgid: int) -> list[int]:
    """The pids of process group ``pgid``'s members that are still running (not zombies).

    Linux only (``/proc``); elsewhere, an empty list.
    """
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc/self") else ():
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


async def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for every member of process group ``pgid`` to exit."""
    with trio.move_on_after(timeout):
        while _group_members(pgid):  # noqa: ASYNC110 - no event tells us; polling /proc is the way
            await trio.sleep(0.02)
        return True
    return False


async def launch_chromium(
    executable: str,
    extra_args: list[str] | None = None,
    *,
    timeout: float = 30.0,
) -> Chromium:
    """Start Chromium with a fresh profile and wait for its DevTools endpoint.

    :raises ChromiumError: it exited, or did not report its port within ``timeout``.
    """
    directory = Path(tempfile.mkdtemp(prefix="trio_ws-chromium-"))
    profile = directory / "profile"
    profile.mkdir()
    args = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *(extra_args or []), "about:blank"]
    try:
        async with await trio.open_file(directory / "chromium.log", "wb") as log:
            process = await trio.lowlevel.open_process(
                args, stdin=subprocess.DEVNULL, stdout=log.wrapped, stderr=log.wrapped, start_new_session=True
            )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    chromium: Chromium | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.move_on_after(timeout):
            while process.poll() is None:
                try:
                    lines = port_file.read_text().split("\n")
                except FileNotFoundError:
                    lines = []
                if len(lines) >= 2 and lines[0].isdigit() and lines[1].startswith("/devtools/browser/"):
                    chromium = Chromium(process, directory, int(lines[0]), lines[1].strip())
                    return chromium
                await trio.sleep(0.02)
        partial_info = Chromium(process, directory, 0, "")
        what = f"exited with status {process.returncode}" if process.returncode is not None else "timed out"
        raise ChromiumError(
            f"{executable} {what} before writing {port_file}; its log ends with:\n{partial_info.log_tail()}"
        )
    finally:
        if chromium is None:
            await Chromium(process, directory, 0, "").stop(grace=2.0)


# --- the DevTools protocol ----------------------------------------------------


class _Reply:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: dict[str, Any] | None = None


class CDPConnection:
    """CDP over one WebSocket: commands matched to replies by id, events to subscribers."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._subscribers: list[tuple[str, str | None, trio.MemorySendChannel[dict[str, Any]]]] = []
        self._closed: str | None = None

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float = CDP_TIMEOUT,
    ) -> dict[str, Any]:
        """Send a command and return its ``result``.

        :raises CDPError: the command failed.
        :raises ChromiumError: the connection to the browser is gone.
        :raises trio.TooSlowError: no reply within ``timeout``.
        """
        if self._closed is not None:
            raise ChromiumError(f"CDP connection closed: {self._closed}")
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        reply = self._pending[command_id] = _Reply()
        try:
            with trio.fail_after(timeout):
                try:
                    await self.ws.send_message(json.dumps(message))
                except ConnectionClosed as exc:
                    raise ChromiumError(f"CDP connection closed: {exc}") from exc
                await reply.done.wait()
        finally:
            del self._pending[command_id]
        if reply.message is None:
            raise ChromiumError(f"CDP connection closed while waiting for {method}: {self._closed}")
        if "error" in reply.message:
            raise CDPError(method, reply.message["error"])
        result: dict[str, Any] = reply.message.get("result", {})
        return result

    @asynccontextmanager
    async def subscribe(
        self, method: str, session_id: str | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """Receive the ``params`` of each ``method`` event (of one session, if given) while inside."""
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        entry = (method, session_id, send)
        self._subscribers.append(entry)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(entry)
            send.close()

    async def _read(self) -> None:
        try:
            while True:
                message = json.loads(await self.ws.get_message())
                if "id" in message:
                    reply = self._pending.get(message["id"])
                    if reply is not None:
                        reply.message = message
                        reply.done.set()
                    continue
                for method, session_id, channel in self._subscribers:
                    if method == message.get("method") and session_id in (None, message.get("sessionId")):
                        channel.send_nowait(message.get("params", {}))
        except ConnectionClosed as exc:
            self._closed = str(exc)
        finally:
            if self._closed is None:
                self._closed = "the CDP reader stopped"
            for reply in self._pending.values():
                reply.done.set()


@asynccontextmanager
async def open_cdp(url: str) -> AsyncIterator[CDPConnection]:
    """A CDP connection to ``url`` (a ``ws://.../devtools/...`` endpoint), through trio_ws."""
    async with open_websocket_url(
        url,
        max_message_size=CDP_MAX_MESSAGE_SIZE,
        message_queue_size=64,
        connect_timeout=10,
        disconnect_timeout=5,
    ) as ws:
        cdp = CDPConnection(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cdp._read)
            try:
                yield cdp
            finally:
                nursery.cancel_scope.cancel()


@dataclass
class BrowserPage:
    """One tab, attached with a flat session on a :class:`CDPConnection`."""

    cdp: CDPConnection
    target_id: str
    session_id: str

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = CDP_TIMEOUT) -> Any:
        """A CDP command for this tab's session."""
        return await self.cdp.send(method, params, session_id=self.session_id, timeout=timeout)

    async def navigate(self, url: str, *, timeout: float = 15.0) -> None:
        """Load ``url`` and wait for its load event.

        :raises ChromiumError: the navigation failed (e.g. connection refused).
        """
        with trio.fail_after(timeout):
            async with self.cdp.subscribe("Page.loadEventFired", self.session_id) as loaded:
                result = await self.send("Page.navigate", {"url": url})
                if result.get("errorText"):
                    raise ChromiumError(f"navigating to {url} failed: {result['errorText']}")
                await loaded.receive()

    async def evaluate(self, expression: str, *, timeout: float = CDP_TIMEOUT) -> Any:
        """Evaluate ``expression``, await it if it is a promise, and return its value as JSON.

        :raises JavaScriptError: it threw, or its promise rejected.
        """
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
            timeout=timeout,
        )
        details = result.get("exceptionDetails")
        if details is not None:
            exception = details.get("exception", {})
            text = exception.get("description") or exception.get("value") or details.get("text")
            raise JavaScriptError(f"{text} (at line {details.get('lineNumber')}:{details.get('columnNumber')})")
        return result["result"].get("value")

    async def call(self, function: str, *args: Any, timeout: float = CDP_TIMEOUT) -> Any:
        """Call the JavaScript ``function`` (source text, may be ``async``) with JSON ``args``."""
        return await self.evaluate(f"({function})(...{json.dumps(list(args))})", timeout=timeout)


@asynccontextmanager
async def open_page(cdp: CDPConnection, url: str | None = None) -> AsyncIterator[BrowserPage]:
    """A new tab (navigated to ``url`` if given), closed on exit."""
    created = await cdp.send("Target.createTarget", {"url": "about:blank"})
    target_id: str = created["targetId"]
    try:
        attached = await cdp.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})
        page = BrowserPage(cdp, target_id, attached["sessionId"])
        await page.send("Page.enable")
        if url is not None:
            await page.navigate(url)
        yield page
    finally:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await cdp.send("Target.closeTarget", {"targetId": target_id})
            except (CDPError, ChromiumError):
                pass  # the browser or the connection is gone: nothing left to close


# --- the page's origin: a minimal HTTP server -----------------------------------


async def _serve_one(routes: dict[str, tuple[str, bytes]], stream: trio.SocketStream) -> None:
    async with stream:
        with trio.move_on_after(30):
            request = b""
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data or len(request) > 65536:
                    return
                request += data
            request_line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            target = request_line[1].split("?", 1)[0] if len(request_line) == 3 else ""
            content_type, body = routes.get(target, ("text/plain; charset=utf-8", b"404 Not Found\n"))
            status = "200 OK" if target in routes else "404 Not Found"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            try:
                await stream.send_all(head.encode("latin-1") + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def serve_page(nursery: trio.Nursery, routes: dict[str, tuple[str, bytes]]) -> str:
    """Serve ``{path: (content_type, body)}`` over HTTP on 127.0.0.1, in ``nursery``.

    Returns the origin, ``http://127.0.0.1:PORT``.  One request per connection;
    anything else gets 404.
    """
    listeners = await nursery.start(partial(trio.serve_tcp, partial(_serve_one, routes), 0, host=HOST))
    port: int = listeners[0].socket.getsockname()[1]
    return f"http://{HOST}:{port}"
