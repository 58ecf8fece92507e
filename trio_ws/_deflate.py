"""permessage-deflate (RFC 7692): negotiation, and compression for the framing layer.

wsproto ships an implementation, but it inflates without a limit (a small
frame can expand to gigabytes before anybody checks a size), accepts
parameters RFC 7692 says to decline (unknown names, duplicates, bad values),
mixes up state across several offers in one request, and cannot be told to
avoid the 8-bit window that zlib cannot produce.  This one fixes those
points; ``_frames.Parser`` calls it for every compressed message.

Inflation is bounded by ``max_message_size`` as it happens: binary output by
bytes, text output by characters (the unit ``len()`` uses for ``str``), so a
compressed message is refused (1009) at the same size as an uncompressed one,
without inflating more than the limit plus one byte per call to zlib.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["PerMessageDeflate", "parse_parameters"]

NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"  # what RFC 7692 7.2.1 strips from each compressed message
# UTF-8 continuation bytes (0x80-0xBF): a character is a byte that is not one.
_CONTINUATION = bytes(range(0x80, 0xC0))
# zlib produces raw deflate streams with windows of 2**9 to 2**15 bytes only.
_MIN_BITS, _MAX_BITS = 9, 15


class _Declined(Exception):
    """An offer or response this implementation does not take."""


def parse_parameters(header_value: str) -> dict[str, str | None]:
    """The parameters of one ``permessage-deflate; a; b=c`` element.

    Raises :exc:`_Declined` for a malformed element, an unknown or repeated
    parameter, or a value where none belongs (RFC 7692 7.1).
    """
    name, *raw_params = (part.strip() for part in header_value.split(";"))
    if name.lower() != NAME:
        raise _Declined(f"not {NAME}: {name!r}")
    params: dict[str, str | None] = {}
    for raw in raw_params:
        key, sep, text = raw.partition("=")
        key = key.strip().lower()
        if key in params:
            raise _Declined(f"repeated parameter {key}")
        params[key] = text.strip().strip('"') if sep else None
    for key, value in params.items():
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise _Declined(f"{key} takes no value")
        elif key in ("server_max_window_bits", "client_max_window_bits"):
            if value is None:
                if key == "server_max_window_bits":
                    raise _Declined("server_max_window_bits needs a value")
            elif not (value.isascii() and value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
                raise _Declined(f"{key}={value!r}: must be 8 to 15")
        else:
            raise _Declined(f"unknown parameter {key}")
    return params


@dataclass
class _Agreement:
    """What was negotiated, from our side's point of view."""

    send_bits: int = _MAX_BITS  # our compressor's window
    send_reset: bool = False  # no context takeover for what we send
    receive_reset: bool = False  # ... for what the peer sends
    header: str = NAME  # the Sec-WebSocket-Extensions value agreed on


class PerMessageDeflate:
    """permessage-deflate for one connection (a new instance per connection)."""

    name = NAME

    def __init__(self, *, client: bool, max_message_size: int, level: int = 6, mem_level: int = 8) -> None:
        self._client = client
        self._max_message_size = max_message_size
        self._level = level
        self._mem_level = mem_level
        self._agreement: _Agreement | None = None
        # Created on first use, so that an idle connection costs no zlib memory.
        self._deflater: zlib._Compress | None = None
        self._inflater: zlib._Decompress | None = None
        self._text = False  # the compressed message being received is text
        self._pending = b""  # input inflate_some() has not inflated yet
        self.has_more = False  # ... or output it has not returned yet

    @property
    def header(self) -> str:
        """The agreed ``Sec-WebSocket-Extensions`` value, or ``""`` before agreement."""
        return self._agreement.header if self._agreement else ""

    def enabled(self) -> bool:
        return self._agreement is not None

    # --- negotiation -------------------------------------------------------------

    def offer(self) -> str:
        # As browsers do: let the server limit our window (saves its memory).
        return "client_max_window_bits"

    def accept(self, offer: str) -> str | None:
        """Server: the response parameters for an offer, or ``None`` to decline it.

        The server's accept() calls this once per offer in the request, in
        order; the first acceptable one wins, later ones are declined.
        """
        if self._agreement is not None:
            return None
        try:
            params = parse_parameters(offer)
        except _Declined:
            return None
        response: list[str] = []
        agreement = _Agreement()
        if "server_no_context_takeover" in params:
            response.append("server_no_context_takeover")
            agreement.send_reset = True
        if "client_no_context_takeover" in params:
            response.append("client_no_context_takeover")
            agreement.receive_reset = True
        if "server_max_window_bits" in params:
            bits = int(params["server_max_window_bits"] or _MAX_BITS)
            if bits < _MIN_BITS:
                return None  # an 8-bit window is more than zlib can promise
            response.append(f"server_max_window_bits={bits}")
            agreement.send_bits = bits
        text = "; ".join(response)
        agreement.header = f"{NAME}; {text}" if text else NAME
        self._agreement = agreement
        return text

    def finalize(self, offer: str) -> None:
        """Client: check the server's response and adopt it (``offer`` is the response)."""
        if self._agreement is not None:
            raise _Declined(f"{NAME} accepted twice")
        params = parse_parameters(offer)
        agreement = _Agreement(header=offer.strip())
        agreement.send_reset = "client_no_context_takeover" in params
        agreement.receive_reset = "server_no_context_takeover" in params
        if "client_max_window_bits" in params:
            value = params["client_max_window_bits"]
            if value is None:
                raise _Declined("client_max_window_bits in a response needs a value")
            if int(value) < _MIN_BITS:
                raise _Declined("the server asks for an 8-bit window, which zlib cannot produce")
            agreement.send_bits = int(value)
        self._agreement = agreement

    # --- receiving ---------------------------------------------------------------

    def start_inbound(self, *, text: bool) -> None:
        """A compressed message begins (its first frame had RSV1 set)."""
        self._text = text

    def inflate(self, data: bytes, room: int, last: bool) -> bytes | int:
        """Inflate a piece of the message; ``last``: the message ends with it.

        ``room`` is how much more the message may grow (max_message_size
        minus what came so far): output stops at one unit past it, and the
        result is then 1009.  Bad compressed data gives 1007.  Units are bytes
        for binary messages and characters for text (``len()``'s).
        """
        if self._inflater is None:
            # A window of 2**15 inflates whatever window the peer compresses with.
            self._inflater = zlib.decompressobj(-_MAX_BITS)
        result = self._inflate(data + _TAIL if last else data, room)
        return result

    def inflate_some(self, data: bytes, step: int, last: bool) -> bytes | int:
        """Inflate at most ``step`` bytes of a piece, keeping the rest for ``inflate_more()``:
        for a message streamed without a size bound (memory stays bounded per piece).

        1007 for bad data.  ``has_more`` says whether output is left.
        """
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-_MAX_BITS)
        self._pending = data + _TAIL if last else data
        return self.inflate_more(step)

    def inflate_more(self, step: int) -> bytes | int:
        inflater = self._inflater
        assert inflater is not None
        try:
            out = inflater.decompress(self._pending, step)
        except zlib.error:
            return 1007
        self._pending = inflater.unconsumed_tail
        # Output cut at ``step`` may leave more inside zlib even with no input left.
        self.has_more = bool(self._pending) or len(out) >= step
        return out

    def end_inbound(self) -> None:
        """The compressed message ended (completely, or dropped after an error)."""
        if self._agreement is not None and self._agreement.receive_reset:
            self._inflater = None

    def _inflate(self, data: bytes, room: int) -> bytes | int:
        inflater = self._inflater
        assert inflater is not None
        pieces: list[bytes] = []
        produced = 0
        while True:
            try:
                # At most room + 1 bytes out: one byte past the limit is enough to know.
                out = inflater.decompress(data, max(room - produced, 0) + 1)
            except zlib.error:
                return 1007
            data = inflater.unconsumed_tail
            produced += len(out) if not self._text else len(out.translate(None, _CONTINUATION))
            if produced > room:
                return 1009
            pieces.append(out)
            if not data:
                return b"".join(pieces) if len(pieces) != 1 else pieces[0]

    def shareable_key(self) -> tuple[int, int, int] | None:
        """What a compressed message depends on, when it depends on nothing else: with no
        context takeover on our side, the same message compresses to the same bytes under
        the same window, level and memory level, so a broadcast compresses it once for all
        such connections.  ``None`` with context takeover (each compressor has a history)."""
        agreement = self._agreement
        if agreement is None or not agreement.send_reset:
            return None
        return (agreement.send_bits, self._level, self._mem_level)

    def deflate(self, data: bytes, last: bool = True) -> bytes:
        """The compressed payload of a whole message (``last``), or of one piece of a message
        sent in fragments: its first frame has RSV1 set, the others not (RFC 7692 6.1).

        Every piece is flushed, so that it reaches the peer at once; the last drops the
        4-byte tail of its flush (RFC 7692 7.2.1).
        """
        agreement = self._agreement
        assert agreement is not None
        if self._deflater is None:
            self._deflater = zlib.compressobj(self._level, zlib.DEFLATED, -agreement.send_bits, self._mem_level)
        if not last:
            # Flushed, so that each piece reaches the peer as it is sent (a stream
            # is only useful if it flows); the tail stays, as it is not the end.
            return self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        compressed = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        if compressed.endswith(_TAIL):
            compressed = compressed[:-4]
        if agreement.send_reset:
            self._deflater = None
        return compressed

    def __repr__(self) -> str:
        return f"<PerMessageDeflate {self.header or 'not negotiated'}>"
