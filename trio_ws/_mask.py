"""Masking (RFC 6455 5.3): every byte a client sends is XORed with a 4-byte key.

``apply_mask`` comes from the optional C extension ``_speedups`` when it was
built (a compiler was present at install time), else from the Python
version below.  Setting ``TRIO_WS_NO_SPEEDUPS=1`` forces the Python version
(the tests run both).
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["SPEEDUPS", "apply_mask", "python_apply_mask"]

# One translation table per key byte: bytes.translate XORs a whole slice in C.
_XOR_TABLES = [bytes(value ^ key for value in range(256)) for key in range(256)]


def python_apply_mask(data: bytes | bytearray | memoryview, key: bytes, prefix: bytes = b"") -> bytes:
    """``prefix`` + ``data`` XOR ``key`` repeated: four strided slices, each translated by a table."""
    if len(data) < 32:
        return prefix + bytes(byte ^ key[index & 3] for index, byte in enumerate(data))
    out = bytearray(data)
    for offset in range(4):
        out[offset::4] = out[offset::4].translate(_XOR_TABLES[key[offset]])
    return prefix + out


class _ApplyMask(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, key: bytes, prefix: bytes = ..., /) -> bytes: ...


apply_mask: _ApplyMask = python_apply_mask
SPEEDUPS = False
if not os.environ.get("TRIO_WS_NO_SPEEDUPS"):
    try:
        from ._speedups import apply_mask as _c_apply_mask
    except ImportError:  # not built: no compiler at install time
        pass
    else:
        apply_mask, SPEEDUPS = _c_apply_mask, True
