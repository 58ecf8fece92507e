"""Property-based fuzzing (hypothesis) of frames and handshakes, both roles, over loopback TCP.

Each example runs in its own ``trio.run``: a trio_ws server (or, for the
client role, a scripted raw server) on 127.0.0.1 port 0, and a hand-made peer
that sends a generated or mutated byte stream.  Every example must end

- within ``EXAMPLE_LIMIT`` seconds, while trio_ws's own timeouts
  (``connect_timeout``, ``disconnect_timeout``) are longer: an example passes
  by the protocol, never by waiting for a timeout;
- with the Close frame the RFC asks for (1002, 1007, 1009, or the peer's own
  valid Close sent back unchanged), or with a plain disconnect where no Close
  is due;
- without an exception escaping trio_ws, an ERROR log from it, a task left
  running (the server's connection tasks run in a nursery of ours that must
  empty by itself; the client's reader in one that must end after
  ``aclose()``) or a socket left open (checked after each example; the autouse
  ``no_fd_leak`` fixture and ``-W error`` check the whole test too);
- with the server still serving: after each example a normal client gets its echo.

For frame streams the expected outcome comes from ``expect()``, a reference
decoder written from RFC 6455: which messages the application gets, which
pings are answered, which close code goes out, and that replies to messages
received before a protocol error leave before the Close.  Where the RFC leaves
the receiver a choice (``Leeway``), any of the choices passes.

The tests are sync functions that call ``trio.run`` per example (hypothesis
does not drive pytest-trio's async tests), with ``derandomize=True`` and no
example database, so every run, local or CI, tries the same examples.
"""

from __future__ import annotations

import base64
import codecs
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from trio_ws import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketRequest,
    connect_websocket,
    open_websocket,
    serve_websocket,
)

from .conftest import HOST, ErrorLog, RawServerPeer, accept_token, start_raw_server

# trio_ws's own timeouts in these tests, and the bound on one example: an
# example that only ends because one of those timeouts ran out fails.
TRIO_WS_TIMEOUT = 5.0
EXAMPLE_LIMIT = 4.0

FUZZ = settings(
    deadline=None,  # EXAMPLE_LIMIT bounds each example instead
    derandomize=True,  # the same examples on every run
    database=None,  # nothing written to .hypothesis/, nothing replayed from it
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})
# Close codes a peer may send (RFC 6455 7.4, plus 1012 and 1013 from the
# IANA registry); everything else below 3000 is a protocol error.
PEER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})
BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2000, 2999, 5000, 65535]
BAD_UTF8 = [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xfe\xfe"]
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def valid_peer_code(code: int) -> bool:
    return code in PEER_CLOSE_CODES or 3000 <= code <= 4999


def upgrade_request(path: bytes = b"/fuzz", extra: bytes = b"") -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


# --- frames: building, reading, and the reference decoder -----------------------------------


@dataclass(frozen=True)
class F:
    """A frame to send.  ``form``: 0 minimal length encoding, 16 or 64 that field anyway,
    65 a 64-bit length with its most significant bit set."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    form: int = 0
    key: bytes = b"\x01\x02\x03\x04"

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        n = len(self.payload)
        bit = 0x80 if self.masked else 0
        form = self.form or (7 if n < 126 else 16 if n < 2**16 else 64)
        if form == 7:
            head = bytes([first, bit | n])
        elif form == 16:
            head = struct.pack("!BBH", first, bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, bit | 127, n | (1 << 63 if form == 65 else 0))
        if not self.masked:
            return head + self.payload
        return head + self.key + xor(self.payload, self.key)


def xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def encode(frames: list[F]) -> bytes:
    return b"".join(f.encode() for f in frames)


@dataclass(frozen=True)
class Got:
    """A frame trio_ws sent."""

    opcode: int
    payload: bytes
    fin: bool
    rsv: int
    masked: bool

    @property
    def code(self) -> int:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


def parse_frames(buffer: bytearray) -> list[Got]:
    """Take every complete frame out of ``buffer``."""
    frames = []
    while len(buffer) >= 2:
        length = buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                break
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                break
            (length,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        masked = bool(buffer[1] & 0x80)
        key = bytes(buffer[offset : offset + 4]) if masked else b""
        offset += len(key)
        if len(buffer) < offset + length:
            break
        payload = bytes(buffer[offset : offset + length])
        frames.append(
            Got(
                opcode=buffer[0] & 0x0F,
                payload=xor(payload, key) if masked else payload,
                fin=bool(buffer[0] & 0x80),
                rsv=(buffer[0] >> 4) & 7,
                masked=masked,
            )
        )
        del buffer[: offset + length]
    return frames


@dataclass
class Expected:
    """What trio_ws must do with a byte stream from its peer."""

    messages: list[str | bytes] = field(default_factory=list)  # handed to the application
    pongs: list[bytes] = field(default_factory=list)  # answers to the peer's pings, in order
    codes: frozenset[int] = frozenset()  # our Close carries one of these; empty: no Close is due
    echo: bytes | None = None  # the peer's valid Close payload, which we must send back unchanged
    fault: bool = False  # a protocol error (1002/1007): replies to earlier messages go out first
    reset_ok: bool = False  # we may close TCP with the peer's bytes unread (a reset is no bug)

    @property
    def app_codes(self) -> frozenset[int]:
        """What ConnectionClosed.reason.code may say (1006: the peer closed TCP without a Close)."""
        return self.codes or frozenset({1006})

    def fail(self, *codes: int) -> Expected:
        self.codes = frozenset(codes)
        self.fault = 1009 not in codes
        self.reset_ok = 1009 in codes  # after a 1009 we read on until the peer's Close, then stop
        return self


@dataclass(frozen=True)
class Leeway:
    """A choice RFC 6455 leaves to the receiver; ``expectations()`` accepts any combination.

    - ``strict_lengths``: a length not in its minimal encoding (which senders
      MUST use) fails the connection (1002), or is accepted.
    - ``reject_1014``: a Close with 1014 (registered after RFC 6455, as 1012
      and 1013 were) is a protocol error (wsproto's choice), or valid.
    - ``incomplete``: what a receiver makes of the frame the peer's EOF cuts
      short: ``"partial"`` checks what arrived as it arrives (a data frame's
      payload too), as wsproto does; ``"header"`` fails it (1002) if its
      header, as far as it came, is wrong, and ignores its payload;
      ``"ignore"`` ignores it.
    """

    strict_lengths: bool
    reject_1014: bool
    incomplete: str


LEEWAYS = [
    Leeway(strict, reject, incomplete)
    for strict in (True, False)
    for reject in (True, False)
    for incomplete in ("partial", "header", "ignore")
]


@dataclass
class Head:
    """A frame header, as far as it arrived."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool | None = None
    short: int | None = None  # the 7-bit length
    length: int | None = None  # the payload length, once its extended field arrived
    key: bytes = b""
    start: int | None = None  # where the payload starts, once the header (and mask key) arrived

    @property
    def control(self) -> bool:
        return self.opcode >= 8


def read_head(data: bytes, pos: int) -> Head:
    head = Head(bool(data[pos] & 0x80), (data[pos] >> 4) & 7, data[pos] & 0x0F)
    if len(data) < pos + 2:
        return head
    head.masked, head.short = bool(data[pos + 1] & 0x80), data[pos + 1] & 0x7F
    p = pos + 2
    if head.short < 126:
        head.length = head.short
    else:
        n = 2 if head.short == 126 else 8
        if len(data) < p + n:
            return head
        head.length = int.from_bytes(data[p : p + n], "big")
        p += n
    if head.masked:
        if len(data) < p + 4:
            return head
        head.key = data[p : p + 4]
        p += 4
    head.start = p
    return head


def bad_length(head: Head, leeway: Leeway) -> bool:
    """The extended length field breaks a rule (its most significant bit is set, or it is too long)."""
    assert head.length is not None
    if head.short == 127 and head.length >> 63:
        return True
    minimum = {126: 126, 127: 0x10000}.get(head.short or 0, 0)
    return leeway.strict_lengths and head.length < minimum


def visible_fault(head: Head, *, to_client: bool, leeway: Leeway, in_message: int | None) -> bool:
    """Whatever arrived of this header already breaks a rule."""
    if head.opcode not in VALID_OPCODES or head.rsv or (head.control and not head.fin):
        return True
    if not head.control and (head.opcode == 0x0) == (in_message is None):
        return True  # a continuation of nothing, or a new message inside a fragmented one
    if head.short is None:
        return False
    if head.masked == to_client or (head.control and head.short > 125):
        return True
    return head.length is not None and bad_length(head, leeway)


def header_verdict(out: Expected, head: Head, *, to_client: bool, leeway: Leeway) -> Expected | None:
    """What a complete (or "partial") header decides by itself, in wsproto's order of checks:
    ``out`` as it ends there, or None to read the payload."""
    if head.short is None:
        return out
    if head.opcode not in VALID_OPCODES or (head.control and (not head.fin or head.short > 125)):
        return out.fail(1002)
    if head.length is None:
        return out
    if bad_length(head, leeway):
        return out.fail(1002, 1009) if head.short == 127 and head.length >> 63 else out.fail(1002)
    if head.rsv or head.masked == to_client:  # no extension; clients mask, servers do not
        return out.fail(1002)
    if head.start is None:
        return out
    return None


def expect(data: bytes, *, to_client: bool, max_size: int, leeway: Leeway) -> Expected:
    """The reference decoder: what a receiver (a client if ``to_client``) must make of ``data``.

    Written from RFC 6455 sections 5 and 7: the first violation decides the
    close code (1002, or 1007 for invalid UTF-8, as soon as the invalid byte
    arrives), a message over ``max_size`` (counted with ``len()``, as trio_ws
    documents) closes with 1009, a valid Close is answered with the same
    payload, and the peer's EOF ends the connection without a Close from us.
    """
    out = Expected()
    pos = 0
    in_message: int | None = None
    decoder: codecs.IncrementalDecoder | None = None
    parts: list[Any] = []
    size = 0
    while pos < len(data):
        head = read_head(data, pos)
        complete = head.start is not None and head.length is not None and len(data) >= head.start + head.length
        if not complete and leeway.incomplete == "ignore":
            return out
        if not complete and leeway.incomplete == "header":
            return (
                out.fail(1002)
                if visible_fault(head, to_client=to_client, leeway=leeway, in_message=in_message)
                else out
            )
        # Complete, or "partial": wsproto's order of checks.
        verdict = header_verdict(out, head, to_client=to_client, leeway=leeway)
        if verdict is not None:
            return verdict
        payload = data[head.start : head.start + head.length]
        if head.masked:
            payload = xor(payload, head.key)
        if head.control:
            if not complete:
                return out
            pos = head.start + head.length
            if head.opcode == 0x9:
                out.pongs.append(payload)
            elif head.opcode == 0x8:
                return close_frame(out, payload, trailing=pos < len(data), leeway=leeway)
            continue
        if head.length and not payload:
            return out  # nothing of this frame's payload arrived
        if in_message is None:
            if head.opcode == 0x0:
                return out.fail(1002)  # a continuation of nothing
            in_message, parts, size = head.opcode, [], 0
            decoder = codecs.getincrementaldecoder("utf-8")() if head.opcode == 0x1 else None
        elif head.opcode != 0x0:
            return out.fail(1002)  # a new message inside a fragmented one
        piece: str | bytes = payload
        if decoder is not None:
            try:
                piece = decoder.decode(payload, head.fin and complete)
            except UnicodeDecodeError:
                # Read in pieces, the valid start of the frame may pass the size limit first.
                return out.fail(1007, 1009) if size + len(payload) > max_size else out.fail(1007)
        size += len(piece)
        if size > max_size:
            return out.fail(1009)
        parts.append(piece)
        if not complete:
            return out
        pos = head.start + head.length
        if head.fin:
            out.messages.append("".join(parts) if in_message == 0x1 else b"".join(parts))
            in_message, decoder = None, None
    return out


def close_frame(out: Expected, payload: bytes, *, trailing: bool, leeway: Leeway) -> Expected:
    if not payload:
        out.codes, out.echo = frozenset({1005}), b""  # no code: answered with no code
    elif len(payload) == 1:
        return out.fail(1002)
    else:
        code = struct.unpack("!H", payload[:2])[0]
        if not valid_peer_code(code) and not (code == 1014 and not leeway.reject_1014):
            return out.fail(1002)
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return out.fail(1007)
        out.codes, out.echo = frozenset({code}), payload
    out.reset_ok = trailing  # we stop reading after answering: unread bytes may reset TCP
    return out


def expectations(data: bytes, *, to_client: bool, max_size: int) -> list[Expected]:
    """``expect()`` under every Leeway, without duplicates."""
    found: list[Expected] = []
    for leeway in LEEWAYS:
        expected = expect(data, to_client=to_client, max_size=max_size, leeway=leeway)
        if expected not in found:
            found.append(expected)
    return found


def check_one_of(expected: list[Expected], check: Callable[[Expected], None]) -> Expected:
    """Pass if ``check`` passes for one of the acceptable outcomes; else raise its first failure."""
    failures: list[AssertionError] = []
    for candidate in expected:
        try:
            check(candidate)
        except AssertionError as exc:
            failures.append(exc)
        else:
            return candidate
    if len(failures) > 1:
        failures[0].add_note(f"({len(failures) - 1} more acceptable outcomes did not match either)")
    raise failures[0]


# --- strategies -------------------------------------------------------------------------------

keys = st.binary(min_size=4, max_size=4)
small = st.binary(max_size=20)


@st.composite
def data_message(draw: st.DrawFn, masked: bool) -> list[F]:
    """A text or binary message, maybe in fragments (text split anywhere, even inside a character)."""
    kind = draw(st.sampled_from(["text", "text", "bad-text", "binary", "big"]))
    if kind == "text":
        data = draw(st.text(max_size=30)).encode("utf-8")
    elif kind == "bad-text":
        data = draw(st.text(max_size=30)).encode("utf-8")
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BAD_UTF8)) + data[at:]
    elif kind == "binary":
        data = draw(small)
    else:
        data = draw(st.binary(min_size=126, max_size=300))  # a 16-bit length
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=3))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    first = 0x2 if kind in ("binary", "big") else 0x1
    return [
        F(first if i == 0 else 0x0, piece, fin=i == len(pieces) - 1, masked=masked, key=draw(keys))
        for i, piece in enumerate(pieces)
    ]


@st.composite
def control_frame(draw: st.DrawFn, masked: bool) -> F:
    opcode = draw(st.sampled_from([0x9, 0x9, 0xA]))
    payload = draw(st.one_of(small, st.binary(min_size=125, max_size=125)))
    return F(opcode, payload, masked=masked, key=draw(keys))


@st.composite
def close_frames(draw: st.DrawFn, masked: bool) -> F:
    code = draw(st.one_of(st.sampled_from([*sorted(PEER_CLOSE_CODES), 3000, 4999]), st.integers(0, 65535)))
    reason = draw(st.text(max_size=30)).encode("utf-8")[:123]
    payload = draw(st.sampled_from([b"", struct.pack("!H", code), struct.pack("!H", code) + reason]))
    return F(0x8, payload, masked=masked, key=draw(keys))


@st.composite
def raw_frame(draw: st.DrawFn, masked: bool) -> F:
    """Anything goes: reserved opcodes, RSV bits, FIN, masking."""
    return F(
        draw(st.integers(0, 15)),
        draw(small),
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 1, 2, 4, 7])),
        masked=draw(st.sampled_from([masked, masked, not masked])),
        key=draw(keys),
    )


@st.composite
def perturb(draw: st.DrawFn, f: F) -> F:
    """One thing wrong with a frame."""
    how = draw(
        st.sampled_from(["opcode", "fin", "rsv", "mask", "bad-utf8", "long", "short-close", "bad-close", "form", "msb"])
    )
    if how == "opcode":
        return F(draw(st.integers(0, 15)), f.payload, f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "fin":
        return F(f.opcode, f.payload, not f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "rsv":
        return F(f.opcode, f.payload, f.fin, draw(st.integers(1, 7)), f.masked, f.form, f.key)
    if how == "mask":
        return F(f.opcode, f.payload, f.fin, f.rsv, not f.masked, f.form, f.key)
    if how == "bad-utf8":
        at = draw(st.integers(0, len(f.payload)))
        payload = f.payload[:at] + draw(st.sampled_from(BAD_UTF8)) + f.payload[at:]
        return F(f.opcode, payload, f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "long":  # a control frame over 125 bytes, say
        return F(f.opcode, f.payload + b"x" * draw(st.integers(126, 140)), f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "short-close":
        return F(0x8, draw(st.binary(min_size=1, max_size=1)), f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "bad-close":
        code = draw(st.sampled_from([*BAD_CLOSE_CODES, 1000]))
        reason = draw(st.sampled_from([b"", b"ok", *BAD_UTF8]))
        return F(0x8, struct.pack("!H", code) + reason, f.fin, f.rsv, f.masked, f.form, f.key)
    if how == "form":  # a longer length field than needed
        return F(f.opcode, f.payload, f.fin, f.rsv, f.masked, draw(st.sampled_from([16, 64])), f.key)
    return F(f.opcode, f.payload, f.fin, f.rsv, f.masked, 65, f.key)


@st.composite
def frame_streams(draw: st.DrawFn, *, masked: bool) -> list[F]:
    """Mostly valid traffic (messages, fragments, pings, a Close) with a few frames made wrong."""
    frames: list[F] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["data", "data", "data", "control", "close", "raw"]))
        if kind == "data":
            frames.extend(draw(data_message(masked)))
        elif kind == "control":
            frames.append(draw(control_frame(masked)))
        elif kind == "close":
            frames.append(draw(close_frames(masked)))
        else:
            frames.append(draw(raw_frame(masked)))
    for _ in range(draw(st.integers(0, 2))):  # control frames anywhere, inside fragmented messages too
        frames.insert(draw(st.integers(0, len(frames))), draw(control_frame(masked)))
    for _ in range(draw(st.integers(0, 2))):
        if not frames:
            break
        i = draw(st.integers(0, len(frames) - 1))
        edit = draw(st.sampled_from(["perturb", "perturb", "perturb", "delete", "duplicate", "swap"]))
        if edit == "perturb":
            frames[i] = draw(perturb(frames[i]))
        elif edit == "delete":
            del frames[i]
        elif edit == "duplicate":
            frames.insert(i, frames[i])
        else:
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
    return frames


@st.composite
def mutate(draw: st.DrawFn, data: bytes, *, at_most: int = 4) -> bytes:
    """Byte-level damage: flip bits, truncate, duplicate, insert garbage, delete, overwrite."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, at_most))):
        how = draw(st.sampled_from(["flip", "flip", "truncate", "duplicate", "insert", "delete", "set"]))
        if not buf:
            how = "insert"
        i = draw(st.integers(0, max(len(buf) - 1, 0)))
        if how == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            del buf[i:]
        elif how == "duplicate":
            j = draw(st.integers(i, min(len(buf), i + 32)))
            buf[i:i] = buf[i:j]
        elif how == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del buf[i : draw(st.integers(i, min(len(buf), i + 8)))]
        else:
            buf[i] = draw(st.integers(0, 255))
    return bytes(buf)


DEFAULTS = {"max_message_size": 2**20, "message_queue_size": 1, "receive_buffer_size": 4096}
connection_options = st.fixed_dictionaries(
    {
        "max_message_size": st.sampled_from([2**20, 2**20, 64]),
        "message_queue_size": st.sampled_from([1, 1, 0, 4]),
        "receive_buffer_size": st.sampled_from([4096, 4096, 1, 5, 100]),
    }
)


# --- running an example -----------------------------------------------------------------------


def _sockets() -> set[tuple[int, str]]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add((int(fd), target))
    return found


@contextmanager
def _trio_ws_errors() -> Iterator[ErrorLog]:
    """Errors per example, for hypothesis to find and shrink the example that logs one
    (conftest's autouse check would fail the test too, but not say which example)."""
    log = ErrorLog()
    logger = logging.getLogger("trio_ws")
    logger.addHandler(log)
    try:
        yield log
    finally:
        logger.removeHandler(log)


def run_example(scenario: Callable[..., Awaitable[None]], *args: Any) -> None:
    """One example: its own trio.run, bounded in time, no ERROR log from trio_ws, no socket left open."""
    before = _sockets()
    start = time.monotonic()
    with _trio_ws_errors() as errors:
        trio.run(partial(bounded, scenario, *args))
    elapsed = time.monotonic() - start
    left = _sockets() - before
    assert not left, f"sockets left open: {left}"
    assert not errors.records, f"trio_ws logged errors: {[r.getMessage() for r in errors.records]}"
    assert elapsed < EXAMPLE_LIMIT, f"the example took {elapsed:.2f} s (trio_ws waited for a timeout?)"


async def bounded(scenario: Callable[..., Awaitable[None]], *args: Any) -> None:
    with trio.fail_after(EXAMPLE_LIMIT):
        await scenario(*args)


@dataclass
class Record:
    """What the server's handler saw on one connection."""

    path: str
    messages: list[str | bytes] = field(default_factory=list)
    reason: CloseReason | None = None
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)


def recording_echo_handler(records: list[Record]) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """Accept (with the first proposed subprotocol), echo, and record every message and the close."""

    async def handler(request: WebSocketRequest) -> None:
        record = Record(request.path)
        records.append(record)
        try:
            ws = await request.accept(subprotocol=next(iter(request.proposed_subprotocols), None))
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed as exc:
                    record.reason = exc.reason
                    return
                record.messages.append(message)
                try:
                    await ws.send_message(message)
                except ConnectionClosed:
                    pass  # closing: keep taking what arrived before the close
        except BaseException as exc:
            record.error = exc
            raise
        finally:
            record.done.set()

    return handler


class Wire:
    """Our end of a raw connection: a buffer, and frames read from it."""

    def __init__(self, stream: trio.SocketStream, buffer: bytes = b"") -> None:
        self.stream = stream
        self.buffer = bytearray(buffer)
        self.reset = False

    async def receive_head(self) -> bytes:
        """The HTTP head (through the blank line); b"" if the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self.receive()
            if not data:
                return b""
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head + b"\r\n\r\n"

    async def receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            self.reset = True
            return b""
        self.buffer += data
        return data

    async def exchange(self, data: bytes, *, then: str) -> list[Got]:
        """Send ``data`` while reading frames, until the peer closes TCP.

        ``then``: ``"eof"`` sends FIN right after ``data``; ``"client"`` sends
        FIN once the peer's Close arrives (a client lets the server close
        first); ``"server"`` closes as soon as the peer's Close arrives;
        ``"abort"`` reads nothing and returns at once, for the caller to close
        the socket (with unread data, a reset).
        """
        if then == "abort":
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            return []
        sent = trio.Event()

        async def sender() -> None:
            try:
                await self.stream.send_all(data)
                if then == "eof":
                    await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                sent.set()

        frames: list[Got] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            frames += parse_frames(self.buffer)
            answered = False
            while True:
                if not answered and then != "eof" and any(f.opcode == 0x8 for f in frames):
                    answered = True
                    await sent.wait()
                    if then == "server":
                        break
                    try:
                        await self.stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                if not await self.receive():
                    break
                frames += parse_frames(self.buffer)
        return frames

    async def drain(self) -> None:
        while await self.receive():
            pass


async def check_still_serving(port: int) -> None:
    """A normal client still gets its echo."""
    async with open_websocket(HOST, port, "/check", use_ssl=False, disconnect_timeout=TRIO_WS_TIMEOUT) as ws:
        await ws.send_message("still serving?")
        assert await ws.get_message() == "still serving?"


async def with_server(options: dict[str, Any], body: Callable[[int, list[Record]], Awaitable[None]]) -> list[Record]:
    """Serve with the recording echo handler, run ``body(port, records)``, check the server still
    echoes, then stop accepting and wait for every connection task to end by itself."""
    records: list[Record] = []
    async with trio.open_nursery() as handlers, trio.open_nursery() as serving:
        server = await serving.start(
            partial(
                serve_websocket,
                recording_echo_handler(records),
                HOST,
                0,
                None,
                handler_nursery=handlers,
                connect_timeout=TRIO_WS_TIMEOUT,
                disconnect_timeout=TRIO_WS_TIMEOUT,
                **options,
            )
        )
        await body(server.port, records)
        for record in records:
            await record.done.wait()
        await check_still_serving(server.port)
        serving.cancel_scope.cancel()  # stop accepting; the handler nursery is left to empty itself
    for record in records:
        assert record.error is None, f"the handler raised {record.error!r}"
    return records


# --- checking what trio_ws sent ---------------------------------------------------------------


class Inflater:
    """Decompresses what a trio_ws server sends once permessage-deflate is agreed (``agreed``: its header)."""

    def __init__(self, agreed: bytes) -> None:
        self.reset = b"server_no_context_takeover" in agreed.lower()
        self.inflater = zlib.decompressobj(-15)

    def __call__(self, payload: bytes) -> bytes:
        data = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        if self.reset:
            self.inflater = zlib.decompressobj(-15)
        return data


def inflated(frames: list[Got], inflate: Inflater) -> list[Got]:
    """The frames, with compressed messages (RSV1) inflated."""
    return [
        Got(f.opcode, inflate(f.payload), f.fin, 0, f.masked) if f.opcode in (0x1, 0x2) and f.rsv == 4 else f
        for f in frames
    ]


def check_frames(frames: list[Got], expected: Expected, *, reset: bool, from_client: bool) -> None:
    """trio_ws's frames: well formed, the pongs and the Close the reference decoder predicts.

    ``from_client``: trio_ws is the client (it masks, and sends no data here).
    """
    data_opcodes = () if from_client else (0x1, 0x2)
    for f in frames:
        assert f.opcode in (*data_opcodes, 0x8, 0xA), f"unexpected frame {f}"
        assert f.fin, f"malformed frame {f}"
        assert f.rsv == 0, f"malformed frame {f}"
        assert f.masked == from_client, f"malformed frame {f}"
    closes = [f for f in frames if f.opcode == 0x8]
    assert len(closes) <= 1, f"more than one Close: {closes}"
    assert not closes or frames[-1] is closes[0], "frames after our Close"
    if reset:
        assert expected.reset_ok, "TCP reset where trio_ws should have read the peer out"
    pongs = [f.payload for f in frames if f.opcode == 0xA]
    if reset:
        assert pongs == expected.pongs[: len(pongs)]
    else:
        assert pongs == expected.pongs
    if closes:
        close = closes[0]
        assert expected.codes, f"a Close ({close.code}) where none was due"
        assert close.code in expected.codes, f"Close code {close.code}, expected {set(expected.codes)}"
        if expected.echo is not None:
            assert close.payload == expected.echo, "the peer's Close was not sent back unchanged"
        elif len(close.payload) > 2:
            close.payload[2:].decode("utf-8")  # our own reason is valid UTF-8
    else:
        assert reset or not expected.codes, f"no Close frame; expected one of {set(expected.codes)}"
    if not from_client:
        echoes = [f.payload.decode("utf-8") if f.opcode == 0x1 else f.payload for f in frames if f.opcode in (1, 2)]
        if expected.fault and not reset:
            # The replies to messages before the fault go out before our Close.
            assert echoes == expected.messages
        else:
            assert echoes == expected.messages[: len(echoes)]


def check_aborted(result: Exchange, expected: Expected) -> None:
    """The peer vanished right after sending (a reset, often): what arrived first was delivered."""
    assert result.messages == expected.messages[: len(result.messages)]
    assert result.reason is not None
    assert result.reason.code in expected.app_codes | {1006}, result.reason


def check_app(messages: list[str | bytes], reason: CloseReason | None, expected: Expected) -> None:
    assert messages == expected.messages
    assert reason is not None
    assert reason.code in expected.app_codes, f"closed with {reason}, expected {set(expected.app_codes)}"


# --- server role: frame streams ---------------------------------------------------------------


@dataclass
class Exchange:
    """One connection's worth of results."""

    frames: list[Got]  # what trio_ws sent after the handshake
    reset: bool  # our side saw a TCP reset
    head: bytes  # the server's 101 (server role)
    messages: list[str | bytes]  # what the application got
    reason: CloseReason | None  # the ConnectionClosed it ended with


async def exchange_with_server(
    options: dict[str, Any], data: bytes, then: str, request: bytes = upgrade_request()
) -> Exchange:
    """Upgrade, send ``data`` to a trio_ws server (recording echo handler), read its frames to EOF."""
    result = Exchange([], False, b"", [], None)

    async def body(port: int, records: list[Record]) -> None:
        async with await trio.open_tcp_stream(HOST, port) as stream:
            wire = Wire(stream)
            await stream.send_all(request)
            result.head = await wire.receive_head()
            assert result.head.startswith(b"HTTP/1.1 101 "), result.head
            result.frames = await wire.exchange(data, then=then)
            result.reset = wire.reset
            assert wire.reset or not wire.buffer, f"half a frame before EOF: {bytes(wire.buffer)!r}"

    records = await with_server(options, body)
    result.messages, result.reason = records[0].messages, records[0].reason
    return result


async def server_frames_scenario(data: bytes, then: str, options: dict[str, Any]) -> None:
    candidates = expectations(data, to_client=False, max_size=options["max_message_size"])
    result = await exchange_with_server(options, data, then)

    def check(expected: Expected) -> None:
        if then == "abort":
            check_aborted(result, expected)
            return
        check_frames(result.frames, expected, reset=result.reset, from_client=False)
        check_app(result.messages, result.reason, expected)

    expected = check_one_of(candidates, check)
    event(f"server {then}: close {sorted(expected.codes)} messages {min(len(expected.messages), 3)}")


CLOSE_1000 = F(0x8, struct.pack("!H", 1000))


@settings(FUZZ, max_examples=150)
@given(frames=frame_streams(masked=True), then=st.sampled_from(["eof", "close", "abort"]), options=connection_options)
@example(frames=[F(0x3, b"reserved")], then="close", options=DEFAULTS)
def test_server_frame_streams(frames: list[F], then: str, options: dict[str, Any]) -> None:
    """Random and broken frames from a client: the server answers as RFC 6455 says, and goes on serving.

    ``then="close"`` ends the stream with a Close (1000) and waits for the
    server's Close before sending FIN; ``"eof"`` sends FIN right after;
    ``"abort"`` closes the socket right after (unread data: a reset).
    """
    data = encode([*frames, CLOSE_1000]) if then == "close" else encode(frames)
    run_example(server_frames_scenario, data, "client" if then == "close" else then, options)


# --- client role: frame streams ---------------------------------------------------------------


async def exchange_with_client(options: dict[str, Any], data: bytes, then: str, extra: bytes = b"") -> Exchange:
    """A scripted server sends ``data`` after its 101 (with ``extra`` headers); trio_ws's client
    reads until closed, then closes."""
    result = Exchange([], False, b"", [], None)
    script_done = trio.Event()

    async def script(peer: RawServerPeer) -> None:
        try:
            await peer.accept(extra)
            wire = Wire(peer.stream, peer.buffer)
            result.frames = await wire.exchange(data, then=then)
            result.reset = wire.reset
        finally:
            script_done.set()

    async with trio.open_nursery() as outer:
        port = await start_raw_server(outer, script)
        # The client's reader runs in this nursery, which must end by itself after aclose().
        async with trio.open_nursery() as inner:
            ws = await connect_websocket(
                inner, HOST, port, "/fuzz", use_ssl=False, disconnect_timeout=TRIO_WS_TIMEOUT, **options
            )
            try:
                while True:
                    result.messages.append(await ws.get_message())
            except ConnectionClosed as exc:
                result.reason = exc.reason
            await ws.aclose()
        await script_done.wait()
        outer.cancel_scope.cancel()
    assert ws.closed is result.reason  # the reason reported is the connection's
    return result


async def client_frames_scenario(data: bytes, then: str, options: dict[str, Any]) -> None:
    candidates = expectations(data, to_client=True, max_size=options["max_message_size"])
    result = await exchange_with_client(options, data, then)

    def check(expected: Expected) -> None:
        if then == "abort":
            check_aborted(result, expected)
            return
        check_app(result.messages, result.reason, expected)
        check_frames(result.frames, expected, reset=result.reset, from_client=True)

    expected = check_one_of(candidates, check)
    event(f"client {then}: close {sorted(expected.codes)} messages {min(len(expected.messages), 3)}")


@settings(FUZZ, max_examples=150)
@given(frames=frame_streams(masked=False), then=st.sampled_from(["eof", "close", "abort"]), options=connection_options)
def test_client_frame_streams(frames: list[F], then: str, options: dict[str, Any]) -> None:
    """Random and broken frames from a server: the client closes as RFC 6455 says.

    ``then="close"``: the server ends with a Close (1000) and closes TCP once
    the client's Close arrives; ``"eof"``: the server sends FIN after the data;
    ``"abort"``: it closes the socket right after.
    """
    data = encode([*frames, F(0x8, struct.pack("!H", 1000), masked=False)]) if then == "close" else encode(frames)
    run_example(client_frames_scenario, data, "server" if then == "close" else then, options)


# --- both roles: byte-level mutations of a frame stream ----------------------------------------


@st.composite
def mutated_streams(draw: st.DrawFn, *, masked: bool) -> bytes:
    frames = draw(frame_streams(masked=masked))
    frames.append(F(0x8, struct.pack("!H", 1000), masked=masked, key=draw(keys)))
    return draw(mutate(encode(frames)))


@settings(FUZZ, max_examples=150)
@given(data=mutated_streams(masked=True), options=connection_options)
def test_server_mutated_streams(data: bytes, options: dict[str, Any]) -> None:
    """A frame stream with flipped bits, cuts, copies and garbage, then FIN, to the server."""
    run_example(server_frames_scenario, data, "eof", options)


@settings(FUZZ, max_examples=100)
@given(data=mutated_streams(masked=False), options=connection_options)
def test_client_mutated_streams(data: bytes, options: dict[str, Any]) -> None:
    """The same damage, from a server to trio_ws's client."""
    run_example(client_frames_scenario, data, "eof", options)


# --- server role: opening handshakes --------------------------------------------------------

HEADER_VALUES = [
    b"",
    b"13",
    b"8",
    b"13, 8",
    b"websocket",
    b"WebSocket",
    b"websocket, h2c",
    b"h2c",
    b"Upgrade",
    b"keep-alive, Upgrade",
    b"close",
    b"dGhlIHNhbXBsZSBub25jZQ",
    b"AAAAAAAAAAAAAAAAAAAAAA==",
    b"AAAAAAAAAAAAAAAAAAAAAAAA",
    b"not base64!",
    b"127.0.0.1:80",
    b"h\xc3\xb4te",
    b"\xff\xfe",
    b"x" * 200,
    b"a\x00b",
    b"a\x7fb",
]
OFFER_NAMES = [b"permessage-deflate"] * 4 + [b"PerMessage-Deflate", b"x-webkit-deflate-frame", b""]
OFFER_PARAMS = [
    b"server_no_context_takeover",
    b"client_no_context_takeover",
    b"server_max_window_bits",
    b"client_max_window_bits",
    b"foo",
]
OFFER_VALUES = [
    None,
    b"8",
    b"9",
    b"10",
    b"15",
    b"16",
    b"010",
    b'"12"',
    b"",
    b"x",
    b" 11 ",
    b"\xb9",
    b"\xb2\xb3",
    b"1\xbd",
]
SUBPROTOCOLS = [b"chat", b"chat, superchat", b"superchat", b", ,", b"caf\xe9", b"a b"]


@st.composite
def extension_offers(draw: st.DrawFn) -> bytes:
    offers = []
    for _ in range(draw(st.integers(1, 3))):
        parts = [draw(st.sampled_from(OFFER_NAMES))]
        for _ in range(draw(st.integers(0, 3))):
            name, value = draw(st.sampled_from(OFFER_PARAMS)), draw(st.sampled_from(OFFER_VALUES))
            parts.append(name if value is None else name + b"=" + value)
        offers.append(b"; ".join(parts))
    return b", ".join(offers)


GARBAGE_LINES = [b"garbage", b": no name", b" folded", b"\x00", b"X: \xff\xfe\xfd", b"Transfer-Encoding: chunked"]


@st.composite
def header_edits(draw: st.DrawFn, headers: list[list[bytes]], values: list[bytes]) -> tuple[list[bytes], bool]:
    """Break a header list: drop, repeat, change, garbage lines, a huge head, a body.

    Returns the head's lines (after the start line) and whether a body was added.
    """
    headers = [list(header) for header in headers]
    with_body = False
    lines_after: list[bytes] = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        how = draw(st.sampled_from(["drop", "repeat", "value", "value", "case", "garbage", "huge", "body"]))
        i = draw(st.integers(0, len(headers) - 1)) if headers else 0
        if how == "drop" and headers:
            del headers[i]
        elif how == "repeat" and headers:
            headers.insert(i, [headers[i][0], draw(st.sampled_from([headers[i][1], *values]))])
        elif how == "value" and headers:
            headers[i] = [headers[i][0], draw(st.one_of(st.sampled_from(values), st.binary(max_size=12)))]
        elif how == "case" and headers:
            headers[i] = [
                draw(st.sampled_from([headers[i][0].upper(), headers[i][0] + b" ", b" " + headers[i][0]])),
                headers[i][1],
            ]
        elif how == "garbage":
            lines_after.append(draw(st.sampled_from(GARBAGE_LINES)))
        elif how == "huge":
            headers.append([b"X-Huge", b"h" * draw(st.sampled_from([8000, 17000, 70000]))])
        elif how == "body":
            body = draw(st.binary(max_size=20))
            length = draw(st.sampled_from([len(body), len(body) + 5, 70000]))
            headers.append([b"Content-Length", str(length).encode()])
            lines_after.append(b"\r\n" + body)  # the blank line comes from the join below
            with_body = True
    lines = [name + b": " + value for name, value in headers]
    if lines_after and with_body:
        # Put the body after the head's blank line.
        garbage = [line for line in lines_after if not line.startswith(b"\r\n")]
        bodies = [line[2:] for line in lines_after if line.startswith(b"\r\n")]
        return [*lines, *garbage, b"", b"".join(bodies)], True
    return [*lines, *lines_after, b"", b""], False


@dataclass(frozen=True)
class Built:
    """A generated handshake message."""

    data: bytes
    complete: bool  # not byte-mutated: the head is complete, so an answer is due
    exact: bool  # ... and has no body: whatever follows it is ours (frames)


@st.composite
def upgrade_requests(draw: st.DrawFn) -> Built:
    """An upgrade request: a valid one (with odd offers, maybe), or one broken in a few ways."""
    clean = draw(st.integers(0, 3)) == 0
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16)))
    methods = [b"GET"] * 8 + [b"POST", b"HEAD", b"get", b"G\xc3\xa9T", b"OPTIONS"]
    method = b"GET" if clean else draw(st.sampled_from(methods))
    targets = [b"/fuzz"] * 6 + [b"/fuzz?q=1", b"*", b"http://127.0.0.1/fuzz", b"/\xff", b""]
    target = b"/fuzz" if clean else draw(st.sampled_from(targets))
    versions = [b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1"]
    version = b"HTTP/1.1" if clean else draw(st.sampled_from(versions))
    headers = [
        [b"Host", b"127.0.0.1"],
        [b"Upgrade", b"websocket"],
        [b"Connection", b"Upgrade"],
        [b"Sec-WebSocket-Key", key],
        [b"Sec-WebSocket-Version", b"13"],
    ]
    if draw(st.booleans()):
        headers.append([b"Sec-WebSocket-Extensions", draw(extension_offers())])
    if draw(st.booleans()):
        headers.append([b"Sec-WebSocket-Protocol", draw(st.sampled_from(SUBPROTOCOLS))])
    if draw(st.booleans()):
        headers.append([b"Origin", draw(st.sampled_from([b"http://127.0.0.1", b"null", b"\xe9"]))])
    if clean:
        lines, with_body, eol = [*(name + b": " + value for name, value in headers), b"", b""], False, b"\r\n"
    else:
        lines, with_body = draw(header_edits(draw(st.permutations(headers)), HEADER_VALUES))
        eol = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
    request = eol.join([method + b" " + target + b" " + version, *lines])  # ends with a blank line
    if not clean and draw(st.integers(0, 2)) == 0:
        return Built(draw(mutate(request, at_most=3)), complete=False, exact=False)
    return Built(request, complete=True, exact=not with_body)


@st.composite
def valid_frames(draw: st.DrawFn, *, masked: bool) -> bytes:
    """Frames a well-behaved peer sends (text may still be invalid UTF-8), maybe ending with a Close."""
    frames: list[F] = []
    for _ in range(draw(st.integers(0, 3))):
        frames.extend(draw(st.one_of(data_message(masked), control_frame(masked).map(lambda f: [f]))))
    if draw(st.booleans()):
        frames.append(draw(close_frames(masked)))
    return encode(frames)


def accept_tokens_for(request: bytes) -> set[bytes]:
    return {
        accept_token(key) for key in re.findall(rb"(?im)^sec-websocket-key[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", request)
    }


# How a handshake is delivered: mostly at once, sometimes a few pieces first (a head cut anywhere).
PIECES = st.one_of(st.just([]), st.lists(st.integers(1, 60), min_size=1, max_size=3))


async def send_then_eof(stream: trio.SocketStream, data: bytes, pieces: list[int] | None = None) -> None:
    """Send ``data`` (the first bytes in ``pieces`` of these sizes, a moment apart), then FIN."""
    try:
        for size in pieces or ():
            await stream.send_all(data[:size])
            data = data[size:]
            await trio.sleep(0.001)
        await stream.send_all(data)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def server_handshake_scenario(built: Built, trailing: bytes, compression: str | None, pieces: list[int]) -> None:
    """Send a (maybe broken) request, maybe frames behind it, then FIN; read the answer to EOF."""
    answer = b""
    reset = False

    async def body(port: int, records: list[Record]) -> None:
        nonlocal answer, reset
        async with await trio.open_tcp_stream(HOST, port) as stream:
            wire = Wire(stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_then_eof, stream, built.data + trailing, pieces)
                await wire.drain()
            answer, reset = bytes(wire.buffer), wire.reset

    records = await with_server({"compression": compression}, body)
    fuzzed = records[:-1]  # the last one is check_still_serving's
    assert not reset, "the server reset the connection instead of reading the request out"
    if not answer:
        event("server handshake: no answer")
        assert not built.complete, "a complete request got no answer"
        assert not fuzzed
        return
    match = re.match(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n", answer)
    assert match, f"not an HTTP response: {answer[:200]!r}"
    status = int(match.group(1))
    event(f"server handshake: {status}")
    head, _, rest = answer.partition(b"\r\n\r\n")
    if status != 101:
        # 501: a Transfer-Encoding other than chunked (RFC 9112 6.1, via h11).
        assert status in (400, 413, 426, 431, 501), f"answered {status}: {answer[:300]!r}"
        assert not fuzzed, "the handler ran for a refused request"
        length = re.search(rb"(?im)^content-length: (\d+)\r?$", head)
        assert length, "no Content-Length"
        if not built.data.startswith(b"HEAD "):  # a response to HEAD has no body
            assert int(length.group(1)) == len(rest), "the response body is not its Content-Length"
        return
    # Accepted: the key was valid, and the handler ran.
    tokens = re.findall(rb"(?im)^sec-websocket-accept: ([^\r\n]*)\r?$", head)
    assert len(tokens) == 1, head
    assert tokens[0] in accept_tokens_for(built.data), "101 without a matching accept token"
    assert len(fuzzed) == 1
    if built.exact:
        # The frames behind the request are handled as if they came after our 101.
        buffer = bytearray(rest)
        frames = parse_frames(buffer)
        assert not buffer
        agreed = re.findall(rb"(?im)^sec-websocket-extensions: ([^\r\n]*)\r?$", head)
        if agreed:
            frames = inflated(frames, Inflater(agreed[0]))

        def check(expected: Expected) -> None:
            check_frames(frames, expected, reset=False, from_client=False)
            check_app(fuzzed[0].messages, fuzzed[0].reason, expected)

        check_one_of(expectations(trailing, to_client=False, max_size=2**20), check)


@settings(FUZZ, max_examples=150)
@given(
    request=upgrade_requests(),
    trailing=valid_frames(masked=True),
    compression=st.sampled_from([None, "deflate"]),
    pieces=PIECES,
)
def test_server_handshakes(request: Built, trailing: bytes, compression: str | None, pieces: list[int]) -> None:
    """Broken upgrade requests get a 4xx (or nothing, if cut short) and never reach the handler;
    a valid one gets a 101 with the right accept token, and the frames sent behind it are handled."""
    run_example(server_handshake_scenario, request, trailing, compression, pieces)


# --- client role: opening handshakes --------------------------------------------------------

ACCEPT = b"@@ACCEPT@@"  # replaced by the accept token for the client's key
STATUS_LINES = [b"HTTP/1.1 101 Switching Protocols"] * 8 + [
    b"HTTP/1.1 101 ",
    b"HTTP/1.0 101 Switching Protocols",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 301 Moved Permanently",
    b"HTTP/1.1 400 Bad Request",
    b"HTTP/1.1 403 Forbidden",
    b"HTTP/1.1 503 Service Unavailable",
    b"HTTP/1.1 999 Whatever",
    b"HTTP/2 101",
    b"HTTP/1.1 1O1 Switching Protocols",
    b"SSH-2.0-OpenSSH_9.6",
    b"",
]
RESPONSE_EXTENSIONS = [
    b"permessage-deflate",
    b"permessage-deflate",
    b"permessage-deflate; server_max_window_bits=10",
    b"permessage-deflate; client_max_window_bits=8",
    b"permessage-deflate; client_max_window_bits=12",
    b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate; client_max_window_bits=\xb9",
    b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    b"permessage-deflate; server_no_context_takeover=1",
    b"permessage-deflate; bogus",
    b"permessage-deflate, permessage-deflate",
    b"x-webkit-deflate-frame",
    b"",
]
RESPONSE_VALUES = [*HEADER_VALUES, ACCEPT + b"x", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]


@st.composite
def handshake_responses(draw: st.DrawFn) -> Built:
    """A server's answer to the upgrade: a valid 101 (maybe with a subprotocol or extension we
    did not offer), or one broken in a few ways."""
    clean = draw(st.integers(0, 3)) == 0
    headers = [[b"Upgrade", b"websocket"], [b"Connection", b"Upgrade"], [b"Sec-WebSocket-Accept", ACCEPT]]
    if draw(st.integers(0, 2)) == 0:
        headers.append([b"Sec-WebSocket-Protocol", draw(st.sampled_from([*SUBPROTOCOLS, b"other"]))])
    if draw(st.integers(0, 2)) == 0:
        headers.append([b"Sec-WebSocket-Extensions", draw(st.sampled_from(RESPONSE_EXTENSIONS))])
    if clean:
        lines, with_body, eol = [*(name + b": " + value for name, value in headers), b"", b""], False, b"\r\n"
        status = STATUS_LINES[0]
    else:
        lines, with_body = draw(header_edits(draw(st.permutations(headers)), RESPONSE_VALUES))
        eol = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
        status = draw(st.sampled_from(STATUS_LINES))
    response = eol.join([status, *lines])
    if not clean and draw(st.integers(0, 2)) == 0:
        return Built(draw(mutate(response, at_most=3)), complete=False, exact=False)
    return Built(response, complete=True, exact=not with_body)


async def client_handshake_scenario(
    built: Built, trailing: bytes, compression: str | None, entry: str, pieces: list[int]
) -> None:
    """A scripted server answers the upgrade with ``built`` (and frames), then FIN."""
    response = key = b""
    script_done = trio.Event()

    async def script(peer: RawServerPeer) -> None:
        nonlocal response, key
        try:
            request = await peer.receive_until(b"\r\n\r\n")
            (key,) = re.findall(rb"(?im)^sec-websocket-key: (\S+)\r$", request)
            response = built.data.replace(ACCEPT, accept_token(key))
            wire = Wire(peer.stream, peer.buffer)
            await send_then_eof(peer.stream, response + trailing, pieces)
            await wire.drain()
        finally:
            script_done.set()

    messages: list[str | bytes] = []
    reason: CloseReason | None = None
    outcome: BaseException | None = None
    subprotocol: str | None = None

    async def read_all(ws: Any) -> None:
        nonlocal reason, subprotocol
        subprotocol = ws.subprotocol
        try:
            while True:
                messages.append(await ws.get_message())
        except ConnectionClosed as exc:
            reason = exc.reason

    options: dict[str, Any] = {
        "subprotocols": ["chat", "superchat"],
        "compression": compression,
        "disconnect_timeout": TRIO_WS_TIMEOUT,
        "use_ssl": False,
    }
    async with trio.open_nursery() as outer:
        port = await start_raw_server(outer, script)
        try:
            if entry == "open_websocket":
                async with open_websocket(HOST, port, "/fuzz", connect_timeout=TRIO_WS_TIMEOUT, **options) as ws:
                    await read_all(ws)
            else:
                async with trio.open_nursery() as inner:
                    try:
                        ws = await connect_websocket(inner, HOST, port, "/fuzz", **options)
                    except HandshakeError as exc:
                        outcome = exc
                    else:
                        await read_all(ws)
                        await ws.aclose()
        except HandshakeError as exc:
            outcome = exc
        await script_done.wait()
        outer.cancel_scope.cancel()

    # Only these may come out, and never because something timed out.
    assert not isinstance(outcome, (DisconnectionTimeout,)), outcome
    assert type(outcome).__name__ != "ConnectionTimeout", outcome
    status_line = response.partition(b"\n")[0]
    if isinstance(outcome, ConnectionRejected):
        event("client handshake: rejected")
        assert outcome.status_code != 101
        if built.complete:
            assert status_line.startswith(b"HTTP/1.1 %d " % outcome.status_code)
        return
    if outcome is not None:
        event("client handshake: HandshakeError")
        return
    event("client handshake: opened")
    # Opened: it was a 101 with our accept token, and a subprotocol we offered, if any.
    # (h11 takes any HTTP/d.d status line: "HTTP/0.1 101" opens too.)
    assert re.match(rb"HTTP/\d\.\d 101 ", status_line), response
    tokens = re.findall(rb"(?im)^sec-websocket-accept[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", response)
    assert tokens == [accept_token(key)], f"opened on accept tokens {tokens}"
    assert subprotocol in (None, "chat", "superchat")
    assert reason is not None
    if built.exact:
        check_one_of(expectations(trailing, to_client=True, max_size=2**20), lambda e: check_app(messages, reason, e))


@settings(FUZZ, max_examples=150)
@given(
    response=handshake_responses(),
    trailing=valid_frames(masked=False),
    compression=st.sampled_from([None, "deflate"]),
    entry=st.sampled_from(["connect_websocket", "open_websocket"]),
    pieces=PIECES,
)
def test_client_handshakes(
    response: Built, trailing: bytes, compression: str | None, entry: str, pieces: list[int]
) -> None:
    """Broken handshake responses raise HandshakeError (ConnectionRejected for a non-101 status),
    never anything else and never after a timeout; an accepted one behaves as a connection."""
    run_example(client_handshake_scenario, response, trailing, compression, entry, pieces)


# --- both roles: permessage-deflate frames ----------------------------------------------------

TAIL = b"\x00\x00\xff\xff"


@dataclass
class DeflateStream:
    data: bytes
    messages: list[str | bytes]  # what the peer meant to send
    pings: list[bytes]
    damaged: bool


def deflate(data: bytes, compressor: Any) -> bytes:
    payload = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert payload.endswith(TAIL)
    return payload[:-4]


@st.composite
def deflate_streams(draw: st.DrawFn, *, masked: bool, reset: bool) -> DeflateStream:
    """Messages compressed as RFC 7692 says (with context takeover unless ``reset``), some not
    compressed, some fragmented; maybe damaged: flipped bits, RSV1 where it may not be, garbage
    with RSV1, a deflate bomb, a cut compressed payload."""
    shared = zlib.compressobj(6, zlib.DEFLATED, -15)
    frames: list[F] = []
    messages: list[str | bytes] = []
    pings: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "text", "binary", "repeated", "ping"]))
        if kind == "ping":
            pings.append(draw(small))
            frames.append(F(0x9, pings[-1], masked=masked, key=draw(keys)))
            continue
        message: str | bytes
        if kind == "text":
            message = draw(st.text(max_size=60))
            data = message.encode("utf-8")
        elif kind == "binary":
            message = data = draw(st.binary(max_size=300))
        else:
            message = data = draw(st.binary(min_size=1, max_size=3)) * draw(st.integers(1, 300))
        messages.append(message)
        compressed = draw(st.sampled_from([True, True, True, False]))
        payload = deflate(data, zlib.compressobj(6, zlib.DEFLATED, -15) if reset else shared) if compressed else data
        cuts = sorted(set(draw(st.lists(st.integers(0, len(payload)), max_size=2))))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = (0x1 if kind == "text" else 0x2) if i == 0 else 0x0
            rsv = 4 if compressed and i == 0 else 0
            frames.append(F(opcode, piece, fin=i == len(pieces) - 1, rsv=rsv, masked=masked, key=draw(keys)))
    damaged = False
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        how = draw(st.sampled_from(["flip", "flip", "rsv1", "rsv2", "garbage", "bomb", "cut", "bad-utf8"]))
        damaged = True
        at = draw(st.integers(0, len(frames)))
        if how in ("flip", "cut") and frames:
            i = min(at, len(frames) - 1)
            f = frames[i]
            payload = bytearray(f.payload)
            if not payload:
                continue
            if how == "flip":
                payload[draw(st.integers(0, len(payload) - 1))] ^= 1 << draw(st.integers(0, 7))
            else:
                del payload[draw(st.integers(0, len(payload) - 1)) :]
            frames[i] = F(f.opcode, bytes(payload), f.fin, f.rsv, f.masked, f.form, f.key)
        elif how == "rsv1":  # on a continuation or a control frame
            frames.insert(at, F(draw(st.sampled_from([0x0, 0x9, 0xA])), b"x", rsv=4, masked=masked))
        elif how == "rsv2":
            frames.insert(at, F(0x2, deflate(b"x", zlib.compressobj(6, zlib.DEFLATED, -15)), rsv=6, masked=masked))
        elif how == "garbage":
            frames.insert(at, F(draw(st.sampled_from([0x1, 0x2])), draw(st.binary(max_size=20)), rsv=4, masked=masked))
        elif how == "bomb":  # inflates past max_message_size (1000)
            bomb = deflate(
                b"\x00" * draw(st.sampled_from([1001, 20_000, 2**20])), zlib.compressobj(9, zlib.DEFLATED, -15)
            )
            frames.insert(at, F(draw(st.sampled_from([0x1, 0x2])), bomb, rsv=4, masked=masked))
        elif how == "bad-utf8":
            text = deflate(b"ok " + draw(st.sampled_from(BAD_UTF8)), zlib.compressobj(6, zlib.DEFLATED, -15))
            frames.insert(at, F(0x1, text, rsv=4, masked=masked))
    return DeflateStream(encode(frames), messages, pings, damaged)


def check_deflate(result: Exchange, stream: DeflateStream, then: str, *, from_client: bool, agreed: bytes) -> None:
    close = CLOSE_1000.payload if then != "eof" else None
    frames = result.frames if from_client else inflated(result.frames, Inflater(agreed))
    if not stream.damaged:
        event(f"deflate {'client' if from_client else 'server'}: intact")
        expected = Expected(messages=stream.messages, pongs=stream.pings)
        if close is not None:
            expected.codes, expected.echo = frozenset({1000}), close
        check_frames(frames, expected, reset=result.reset, from_client=from_client)
        check_app(result.messages, result.reason, expected)
        return
    # Damaged: no exact prediction, but only the RFC's codes, and replies only to what was received.
    codes = {1002, 1007, 1009} | ({1000} if close is not None else set())
    pongs = [f.payload for f in frames if f.opcode == 0xA]
    loose = Expected(messages=result.messages, pongs=pongs, codes=frozenset(codes), reset_ok=True)
    check_frames(frames, loose, reset=True, from_client=from_client)
    closes = [f for f in frames if f.opcode == 0x8]
    assert closes or result.reset or then == "eof", "no Close frame after the peer's Close"
    event(f"deflate {'client' if from_client else 'server'}: damaged, close {[f.code for f in closes]}")
    assert result.reason is not None
    assert result.reason.code in codes | {1006}, result.reason


async def server_deflate_scenario(stream: DeflateStream, then: str, request: bytes, buffer: int) -> None:
    options = {"compression": "deflate", "max_message_size": 1000, "receive_buffer_size": buffer}
    data = stream.data + (CLOSE_1000.encode() if then != "eof" else b"")
    result = await exchange_with_server(options, data, then, request)
    agreed = re.findall(rb"(?im)^sec-websocket-extensions: ([^\r\n]*)\r?$", result.head)
    assert len(agreed) == 1, result.head
    assert agreed[0].startswith(b"permessage-deflate"), result.head
    check_deflate(result, stream, then, from_client=False, agreed=agreed[0])


@st.composite
def server_deflate_cases(draw: st.DrawFn) -> tuple[DeflateStream, bytes]:
    reset = draw(st.booleans())
    offer = b"permessage-deflate; client_max_window_bits"
    offer += b"; client_no_context_takeover" if reset else b""
    offer += draw(st.sampled_from([b"", b"; server_no_context_takeover", b"; server_max_window_bits=9"]))
    request = upgrade_request(extra=b"Sec-WebSocket-Extensions: " + offer + b"\r\n")
    return draw(deflate_streams(masked=True, reset=reset)), request


@settings(FUZZ, max_examples=100)
@given(case=server_deflate_cases(), then=st.sampled_from(["eof", "client"]), buffer=st.sampled_from([4096, 4096, 3]))
def test_server_deflate_streams(case: tuple[DeflateStream, bytes], then: str, buffer: int) -> None:
    """Compressed traffic, intact or damaged, to a server with compression="deflate": intact, every
    message arrives and is echoed (compressed); damaged, it closes with 1002, 1007 or 1009."""
    stream, request = case
    run_example(server_deflate_scenario, stream, then, request, buffer)


async def client_deflate_scenario(stream: DeflateStream, then: str, reset: bool, buffer: int) -> None:
    options = {"compression": "deflate", "max_message_size": 1000, "receive_buffer_size": buffer}
    agreed = b"permessage-deflate" + (b"; server_no_context_takeover" if reset else b"")
    data = stream.data + (F(0x8, CLOSE_1000.payload, masked=False).encode() if then != "eof" else b"")
    result = await exchange_with_client(options, data, then, extra=b"Sec-WebSocket-Extensions: " + agreed + b"\r\n")
    check_deflate(result, stream, then, from_client=True, agreed=agreed)


@st.composite
def client_deflate_cases(draw: st.DrawFn) -> tuple[DeflateStream, bool]:
    reset = draw(st.booleans())
    return draw(deflate_streams(masked=False, reset=reset)), reset


@settings(FUZZ, max_examples=100)
@given(case=client_deflate_cases(), then=st.sampled_from(["eof", "server"]), buffer=st.sampled_from([4096, 4096, 3]))
def test_client_deflate_streams(case: tuple[DeflateStream, bool], then: str, buffer: int) -> None:
    """The same compressed traffic from a server to a client with compression="deflate"."""
    stream, reset = case
    run_example(client_deflate_scenario, stream, then, reset, buffer)


# --- regressions found by the properties above ------------------------------------------------------


def test_deflate_offer_with_a_superscript_digit_is_declined() -> None:
    heads: list[bytes] = []
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=\xb9\r\n"

    async def body(port: int, records: list[Record]) -> None:
        async with await trio.open_tcp_stream(HOST, port) as stream:
            await stream.send_all(upgrade_request(extra=offer))
            heads.append(await Wire(stream).receive_head())

    run_example(with_server, {"compression": "deflate"}, body)
    # RFC 7692 5.1: an offer with an invalid parameter value is declined; the upgrade goes on without it.
    assert heads[0].startswith(b"HTTP/1.1 101 "), heads[0]
    assert b"sec-websocket-extensions" not in heads[0].lower()
