"""Build trio_ws's sdist and wheel from scratch, with and without a C compiler, and install them.

    python scripts/check_package.py            # needs `build` (the lint extra) and PyPI or a pip cache
    python scripts/check_package.py --keep DIR # leave the builds and venvs in DIR to look at them

Four steps, each failing the script (exit 1) with what went wrong:

1. ``python -m build`` as a user would run it: an sdist, then a wheel built from
   that sdist, each in an isolated environment holding only what
   ``[build-system] requires`` names (so a missing build requirement fails here).
2. The same without a compiler: ``CC``, ``CXX`` and ``LDSHARED`` are ``/bin/false``.
   The C extension is optional (setup.py), so the build must succeed, its log must
   say the extension failed, and the wheel must hold no compiled module.
3. The archives' contents: the sdist has what a build needs (the package, its
   ``demo_page.html``, ``py.typed``, ``_speedups.c`` and its stub, ``setup.py``,
   ``pyproject.toml``, ``README.md``, ``LICENSE``); both wheels have ``py.typed``,
   ``demo_page.html`` and the licence; only the compiled one has ``_speedups``;
   neither carries the C source; the metadata says ``License-Expression: MIT``.
4. Installs in fresh virtual environments, dependencies from the index: the
   compiled wheel in one, the sdist itself in another with no compiler (pip builds
   it there, as for a user without one). Each runs a smoke test from outside the
   repository: the package imports from the venv, uses the C masking or the Python
   fallback as expected, finds its data files, echoes a text and a binary message
   (masked: the client masks what it sends) over loopback, and ``trio-ws --help`` runs.

Sizes and file counts are printed for the record (docs and reports quote them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What an sdist must hold for a build anywhere (paths under its top directory).
SDIST_NEEDS = (
    "LICENSE",
    "README.md",
    "pyproject.toml",
    "setup.py",
    "trio_ws/__init__.py",
    "trio_ws/_speedups.c",
    "trio_ws/_speedups.pyi",
    "trio_ws/demo_page.html",
    "trio_ws/py.typed",
)
WHEEL_NEEDS = ("trio_ws/__init__.py", "trio_ws/py.typed", "trio_ws/demo_page.html")

# The compiler, the C++ compiler and the linker distutils would call: /bin/false fails
# each call, as a missing compiler would.
NO_COMPILER = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}

# Run by each venv's Python, from a directory outside the repository (argv[1]: "1" when
# the C extension should be there). Bounded by fail_after: a hang is a failure, not a stall.
SMOKE = """
import importlib.resources, sys
import trio, trio_ws
from trio_ws import _mask

expect_c = sys.argv[1] == "1"
assert _mask.SPEEDUPS is expect_c, f"SPEEDUPS is {_mask.SPEEDUPS}, expected {expect_c}"
assert "site-packages" in trio_ws.__file__, trio_ws.__file__
package = importlib.resources.files("trio_ws")
for name in ("py.typed", "demo_page.html"):
    assert package.joinpath(name).is_file(), name

async def echo(request: trio_ws.WebSocketRequest) -> None:
    ws = await request.accept()
    async for message in ws:
        await ws.send(message)

async def main() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_ws.serve_websocket, echo, "127.0.0.1", 0, None)
            async with trio_ws.open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                for message in ("hello", bytes(range(256)) * 4):
                    await ws.send(message)
                    assert await ws.get_message() == message
            nursery.cancel_scope.cancel()

trio.run(main)
print(f"trio_ws {trio_ws.__version__}: imported, echoed, C masking {_mask.SPEEDUPS}")
"""


class CheckFailed(Exception):
    """One check failed; its message says which and why."""


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a command, returning its combined output; raise CheckFailed with that output if it fails."""
    done = subprocess.run(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-4000:]}")
    return done.stdout


def build(outdir: Path, env: dict[str, str]) -> tuple[Path, Path, str]:
    """``python -m build`` (sdist, then a wheel from it) into outdir: the sdist, the wheel, the log."""
    log = run([sys.executable, "-m", "build", "--outdir", str(outdir), str(REPO)], env=env)
    (sdist,) = outdir.glob("*.tar.gz")
    (wheel,) = outdir.glob("*.whl")
    return sdist, wheel, log


def sdist_names(sdist: Path) -> set[str]:
    """The sdist's member names, without its top directory."""
    with tarfile.open(sdist) as archive:
        return {name.partition("/")[2] for name in archive.getnames()}


def check_sdist(sdist: Path) -> list[str]:
    names = sdist_names(sdist)
    missing = [name for name in SDIST_NEEDS if name not in names]
    if missing:
        raise CheckFailed(f"{sdist.name} lacks {missing}")
    stray = sorted(name for name in names if name.startswith(("tests/", "build/", ".")) or name.endswith(".so"))
    if stray:
        raise CheckFailed(f"{sdist.name} holds what it should not: {stray}")
    return sorted(names)


def check_wheel(wheel: Path, compiled: bool) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
        headers = archive.read(metadata).decode()
    missing = [name for name in WHEEL_NEEDS if name not in names]
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in names):
        missing.append("*.dist-info/licenses/LICENSE")
    if missing:
        raise CheckFailed(f"{wheel.name} lacks {missing}")
    if "License-Expression: MIT" not in headers.splitlines():
        raise CheckFailed(f"{wheel.name}: no 'License-Expression: MIT' in its METADATA")
    built = [name for name in names if name.startswith("trio_ws/_speedups") and name.endswith((".so", ".pyd"))]
    if bool(built) != compiled:
        raise CheckFailed(f"{wheel.name}: compiled modules {built}, expected {'one' if compiled else 'none'}")
    if "trio_ws/_speedups.c" in names:
        raise CheckFailed(f"{wheel.name} carries the C source")
    return names


def smoke(venv: Path, target: Path, compiled: bool, env: dict[str, str], workdir: Path) -> str:
    """A fresh venv, target (a wheel or an sdist) installed in it, then the smoke test run there."""
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(target)], env=env)
    # workdir, not the repository: the repository's trio_ws must not be the one imported.
    out = run([str(python), "-c", SMOKE, "1" if compiled else "0"], cwd=workdir)
    run([str(venv / "bin" / "trio-ws"), "--help"], cwd=workdir)
    return out.strip()


def size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.0f} KiB"


def check(work: Path) -> None:
    base_env = dict(os.environ)
    base_env.pop("PYTHONPATH", None)
    no_cc_env = base_env | NO_COMPILER
    started = time.monotonic()

    sdist, wheel, _ = build(work / "dist", base_env)
    sdist_files = check_sdist(sdist)
    wheel_files = check_wheel(wheel, compiled=True)
    print(f"with a compiler:    {sdist.name} {size(sdist)}, {len(sdist_files)} entries")
    print(f"                    {wheel.name} {size(wheel)}, {len(wheel_files)} files (with _speedups)")

    sdist_nocc, wheel_nocc, log = build(work / "dist-nocc", no_cc_env)
    if 'building extension "trio_ws._speedups" failed' not in log:
        raise CheckFailed("the build without a compiler did not report the extension failing: was a compiler used?")
    if sdist_names(sdist_nocc) != set(sdist_files):
        raise CheckFailed("the sdists built with and without a compiler differ")
    wheel_nocc_files = check_wheel(wheel_nocc, compiled=False)
    print(f"without a compiler: {wheel_nocc.name} {size(wheel_nocc)}, {len(wheel_nocc_files)} files (pure Python)")

    outside = work / "outside"
    outside.mkdir()
    print("install the wheel, fresh venv:      ", smoke(work / "venv-wheel", wheel, True, base_env, outside))
    print("install the sdist, no compiler:     ", smoke(work / "venv-sdist", sdist, False, no_cc_env, outside))
    print(f"package checks passed in {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--keep", type=Path, help="build and install in this directory and leave it there")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="check_package-", dir=args.keep))
    else:
        work = Path(tempfile.mkdtemp(prefix="trio_ws-check_package-"))
    try:
        check(work)
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
