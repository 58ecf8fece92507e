"""What the benchmark scripts share about the processes they start: stopping one, and its RSS.

Each script starts its peers with ``subprocess.Popen``, talks to them over
stdin/stdout, and must leave nothing behind; this is the one copy of how.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def stop_child(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Make sure this process (and only it) is gone: EOF on its stdin (a peer stops when its
    orchestrator's pipe closes), then SIGTERM, then SIGKILL, ``grace`` seconds apart."""
    if proc.poll() is not None:
        return
    try:
        assert proc.stdin is not None
        proc.stdin.close()
    except OSError:
        pass
    for signal_it in (None, proc.terminate, proc.kill):
        if signal_it is not None:
            signal_it()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
