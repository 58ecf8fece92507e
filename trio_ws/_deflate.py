"""permessage-deflate (RFC 7692): negotiation, and compression for the framing layer.

wsproto ships an implementation, but it inflates without a limit (a small
frame can expand to gigabytes before anybody checks a size), accepts
parameters RFC 7692 says to decline (unknown names, duplicates, bad values),
mixes up state across several offers in one request, and cannot be told to
avoid the 8-bit window that zlib cannot produce.  This one fixes those
points; ``_frames.Parser`` calls it for every compressed message.

Each direction's zlib object is made when a message needs it and dropped when the
direction goes idle (``_deflate_window``), and a message that deflate would not make
smaller goes uncompressed.  :class:`Deflate` holds the settings a user may choose.

Inflation is bounded by ``max_message_size`` as it happens: binary output by
bytes, text output by characters (the unit ``len()`` uses for ``str``), so a
compressed message is refused (1009) at the same size as an uncompressed one,
without inflating more than the limit plus one byte per call to zlib.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ._deflate_window import Compressor, Decompressor

__all__ = ["Deflate", "PerMessageDeflate", "parse_parameters", "to_deflate"]

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


@dataclass(frozen=True, slots=True)
class Deflate:
    """permessage-deflate settings: ``compression=Deflate(...)`` wherever ``compression="deflate"``
    is taken (which means ``Deflate()``: these defaults).  Each setting is for one direction of
    a connection, whichever its role; docs/compression.md has the table they were chosen from.

    :param send_window_bits: the window our compressor refers back into: 2**N bytes, 9 to 15.
        The peer may ask for a smaller one (it is then used); a larger one is never used.
    :param receive_window_bits: the largest window we ask the peer to compress with, 9 to 15.
        A server asks it when the client's offer lets it (``client_max_window_bits``, as
        browsers send); a client offers ``server_max_window_bits=N`` (below 15), followed by
        an offer without it for servers that do not take that parameter.  The bytes kept
        for the receiving direction between messages are at most 2**N.
    :param level: zlib's compression level, 1 (fastest) to 9 (smallest).
    :param mem_level: zlib's memory level, 1 to 9: the size of the compressor's hash table
        (made for each burst of messages, see docs/compression.md).
    :param send_context_takeover: ``False`` compresses each message on its own (and tells the
        peer, which may then drop its decompressor's state between messages): less ratio,
        nothing kept between messages.
    :param receive_context_takeover: ``False`` asks the peer to compress each message on its own
        (a server tells the client so; a client offers it, and the server may refuse).
    :raises ValueError: a setting out of range, or not an int (a bool for the last two).
    """

    send_window_bits: int = 13
    receive_window_bits: int = 13
    level: int = 6
    mem_level: int = 5
    send_context_takeover: bool = True
    receive_context_takeover: bool = True

    def __post_init__(self) -> None:
        for name, low, high in (
            ("send_window_bits", _MIN_BITS, _MAX_BITS),
            ("receive_window_bits", _MIN_BITS, _MAX_BITS),
            ("level", 1, 9),
            ("mem_level", 1, 9),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                why = " (zlib cannot compress with a window of 2**8 bytes)" if name.endswith("bits") else ""
                raise ValueError(f"Deflate {name} must be an int from {low} to {high}, not {value!r}{why}")
        for name in ("send_context_takeover", "receive_context_takeover"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Deflate {name} must be True or False, not {getattr(self, name)!r}")


def to_deflate(compression: object) -> Deflate | None:
    """The settings ``compression=`` stands for: ``None``, ``"deflate"`` or a :class:`Deflate`.

    :raises ValueError: anything else.
    """
    if compression is None or isinstance(compression, Deflate):
        return compression
    if compression == "deflate":
        return _DEFAULT
    raise ValueError(f'compression must be None, "deflate" or a trio_ws.Deflate, not {compression!r}')


_DEFAULT = Deflate()


@dataclass
class _Agreement:
    """What was negotiated, from our side's point of view."""

    send_bits: int = _MAX_BITS  # our compressor's window
    receive_bits: int = _MAX_BITS  # the peer's (the most it may refer back)
    send_reset: bool = False  # no context takeover for what we send
    receive_reset: bool = False  # ... for what the peer sends
    header: str = NAME  # the Sec-WebSocket-Extensions value agreed on


class PerMessageDeflate:
    """permessage-deflate for one connection (a new instance per connection)."""

    name = NAME

    def __init__(self, *, client: bool, max_message_size: int, options: Deflate | None = None) -> None:
        self._client = client
        self._max_message_size = max_message_size
        self._options = options or _DEFAULT
        self._agreement: _Agreement | None = None
        # Made once agreed; each makes its zlib object on first use (an idle connection
        # costs no zlib memory) and drops it when idle (see _deflate_window).
        self._send: Compressor | None = None
        self._receive: Decompressor | None = None
        self._text = False  # the compressed message being received is text
        self._pending = b""  # input inflate_some() has not inflated yet
        self.has_more = False  # ... or output it has not returned yet

    @property
    def header(self) -> str:
        """The agreed ``Sec-WebSocket-Extensions`` value, or ``""`` before agreement."""
        return self._agreement.header if self._agreement else ""

    def enabled(self) -> bool:
        return self._agreement is not None

    @property
    def sender(self) -> Compressor | None:
        """The sending direction, once agreed (read-only: for tests and statistics)."""
        return self._send

    @property
    def receiver(self) -> Decompressor | None:
        """The receiving direction, once agreed (read-only: for tests and statistics)."""
        return self._receive

    # --- negotiation -------------------------------------------------------------

    def offers(self) -> list[str]:
        """Client: the ``Sec-WebSocket-Extensions`` offers, the preferred first."""
        options = self._options
        # As browsers do: let the server limit our window (saves its memory).
        params = ["client_max_window_bits"]
        if not options.send_context_takeover:
            params.append("client_no_context_takeover")
        if not options.receive_context_takeover:
            params.append("server_no_context_takeover")
        plain = "; ".join([NAME, *params])
        if options.receive_window_bits >= _MAX_BITS:
            return [plain]
        # A server may decline an offer with server_max_window_bits (RFC 7692 7.1.2.1):
        # the same offer without it follows.
        return [f"{NAME}; server_max_window_bits={options.receive_window_bits}; {plain[len(NAME) + 2 :]}", plain]

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
        options = self._options
        response: list[str] = []
        agreement = _Agreement(send_bits=options.send_window_bits)
        # A server may announce either on its own (RFC 7692 7.1.1.1, 7.1.1.2).
        if "server_no_context_takeover" in params or not options.send_context_takeover:
            response.append("server_no_context_takeover")
            agreement.send_reset = True
        if "client_no_context_takeover" in params or not options.receive_context_takeover:
            response.append("client_no_context_takeover")
            agreement.receive_reset = True
        if "server_max_window_bits" in params:
            bits = int(params["server_max_window_bits"] or _MAX_BITS)
            if bits < _MIN_BITS:
                return None  # an 8-bit window is more than zlib can promise
            # The same or smaller than offered (RFC 7692 7.1.2.1).
            agreement.send_bits = min(bits, options.send_window_bits)
            response.append(f"server_max_window_bits={agreement.send_bits}")
        if "client_max_window_bits" in params:
            # The client lets us limit its window (RFC 7692 7.1.2.2): to what we want, and
            # never above a value it gave.
            value = params["client_max_window_bits"]
            bits = min(options.receive_window_bits, int(value) if value else _MAX_BITS)
            if bits < _MAX_BITS:
                response.append(f"client_max_window_bits={bits}")
                agreement.receive_bits = bits
        text = "; ".join(response)
        agreement.header = f"{NAME}; {text}" if text else NAME
        self._agree(agreement)
        return text

    def finalize(self, offer: str) -> None:
        """Client: check the server's response and adopt it (``offer`` is the response)."""
        if self._agreement is not None:
            raise _Declined(f"{NAME} accepted twice")
        params = parse_parameters(offer)
        options = self._options
        agreement = _Agreement(header=offer.strip(), send_bits=options.send_window_bits)
        agreement.send_reset = "client_no_context_takeover" in params or not options.send_context_takeover
        agreement.receive_reset = "server_no_context_takeover" in params
        if "client_max_window_bits" in params:
            value = params["client_max_window_bits"]
            if value is None:
                raise _Declined("client_max_window_bits in a response needs a value")
            if int(value) < _MIN_BITS:
                raise _Declined("the server asks for an 8-bit window, which zlib cannot produce")
            agreement.send_bits = min(int(value), options.send_window_bits)
        value = params.get("server_max_window_bits")
        if value is not None:
            agreement.receive_bits = int(value)
        self._agree(agreement)

    def _agree(self, agreement: _Agreement) -> None:
        options = self._options
        self._agreement = agreement
        self._send = Compressor(agreement.send_bits, agreement.send_reset, options.level, options.mem_level)
        self._receive = Decompressor(agreement.receive_bits, agreement.receive_reset)

    def close(self) -> None:
        """The connection is over: drop both zlib objects now (and the histories)."""
        self._send = self._receive = None

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
        receiver = self._receive
        assert receiver is not None
        inflater = receiver.start()
        pieces: list[bytes] = []
        produced = 0
        if last:
            data = data + _TAIL  # (a new object: the caller's bytes stay as they are)
        while True:
            try:
                # At most room + 1 bytes out: one byte past the limit is enough to know.
                out = inflater.decompress(data, room - produced + 1)
            except zlib.error:
                return 1007
            data = inflater.unconsumed_tail
            size = len(out)
            if self._text and produced + size > room:
                # A character takes at least a byte: count them only when the bytes are too many.
                size = len(out.translate(None, _CONTINUATION))
            produced += size
            if produced > room:
                return 1009
            if not data:
                result = b"".join([*pieces, out]) if pieces else out
                receiver.output(result)
                return result
            pieces.append(out)

    def inflate_some(self, data: bytes, step: int, last: bool) -> bytes | int:
        """Inflate at most ``step`` bytes of a piece, keeping the rest for ``inflate_more()``:
        for a message streamed without a size bound (memory stays bounded per piece).

        1007 for bad data.  ``has_more`` says whether output is left.
        """
        assert self._receive is not None
        self._receive.start()
        self._pending = data + _TAIL if last else data
        return self.inflate_more(step)

    def inflate_more(self, step: int) -> bytes | int:
        receiver = self._receive
        assert receiver is not None
        inflater = receiver.start()
        try:
            out = inflater.decompress(self._pending, step)
        except zlib.error:
            return 1007
        self._pending = inflater.unconsumed_tail
        # Output cut at ``step`` may leave more inside zlib even with no input left.
        self.has_more = bool(self._pending) or len(out) >= step
        receiver.output(out)
        return out

    def end_inbound(self) -> None:
        """The compressed message ended (completely, or dropped after an error)."""
        if self._receive is not None:
            self._receive.end()

    # --- sending -------------------------------------------------------------------

    def shareable_key(self) -> tuple[int, int, int] | None:
        """What a compressed message depends on, when it depends on nothing else: with no
        context takeover on our side, the same message compresses to the same bytes under
        the same window, level and memory level (and is sent uncompressed or not alike),
        so a broadcast compresses it once for all such connections.  ``None`` with context
        takeover (each compressor has a history)."""
        agreement = self._agreement
        if agreement is None or not agreement.send_reset:
            return None
        return (agreement.send_bits, self._options.level, self._options.mem_level)

    def deflate(self, data: bytes) -> bytes | None:
        """The compressed payload of a whole message, or ``None`` to send it uncompressed
        (it would not get smaller: see ``Compressor.message``)."""
        assert self._send is not None
        return self._send.message(data)

    def deflate_piece(self, data: bytes, last: bool) -> bytes:
        """The compressed payload of one piece of a message sent in fragments: its first
        frame has RSV1 set, the others not (RFC 7692 6.1)."""
        assert self._send is not None
        return self._send.piece(data, last)

    def __repr__(self) -> str:
        return f"<PerMessageDeflate {self.header or 'not negotiated'}>"
