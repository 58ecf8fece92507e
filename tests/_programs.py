"""The real programs some tests start (proxies, Redis, HAProxy: Debian packages that .ci/run
installs): finding them, a free loopback port for each, and stopping them by their handle."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from .conftest import HOST


def find_program(name: str, install: str) -> str:
    """The path of ``name`` (also looked for in /usr/sbin and /sbin); without it, the test
    fails under CI and is skipped elsewhere, with ``install``, the command that installs it."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if path is None:
        message = f"{name} not found: install it with `{install}` (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test needs {name}. {message}", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A loopback port nobody listens on now (for a program that binds it itself)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a few seconds to exit, then SIGKILL; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
