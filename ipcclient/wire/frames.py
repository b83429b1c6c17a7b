"""Frames: the 10-byte header, the five frame types and their validity rules (sans-IO).

Owns: the byte layout of a frame (``docs/protocol.md`` section 2), encoding one frame
(:func:`encode_frame`) and an incremental decoder (:class:`FrameDecoder`) that turns bytes,
chunked any way, into :class:`Frame` values and refuses every frame that is malformed on
its own (unknown type, unknown flag bits, a flow id of 0 where one is needed or non-zero where
none is allowed, a wrong fixed payload size, a zero CREDIT increment, a payload longer than
the receiver's maximum).

Must not: touch sockets, threads or clocks; know what a flow is or whether a frame makes sense
in the current state of a connection (that is :mod:`ipcclient.wire.mux`); decode payloads
beyond the fixed-size checks above. Every failure to decode is an
:class:`~ipcclient.errors.BadProtocolError` and nothing else; every invalid argument to
:func:`encode_frame` is a :class:`~ipcclient.errors.BadArgError`.

Layout (big-endian)::

    byte 0    type            u8   DATA=0 CREDIT=1 RESET=2 PING=3 GOAWAY=4
    byte 1    flags           u8   per type (see FLAG_*)
    bytes 2-5 flow id         u32  0 = the connection
    bytes 6-9 payload length  u32
    then      payload         `length` bytes
"""

from __future__ import annotations

import struct
from typing import NamedTuple, NoReturn

from ipcclient import errors

__all__ = [
    "CREDIT",
    "CREDIT_PAYLOAD_SIZE",
    "DATA",
    "DEFAULT_MAX_FRAME_PAYLOAD",
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_LAST_ID",
    "FLAG_OPEN",
    "FRAME_TYPE_NAMES",
    "GOAWAY",
    "HEADER_SIZE",
    "MAX_FLOW_ID",
    "MAX_FRAME_PAYLOAD_LIMIT",
    "MIN_FRAME_PAYLOAD",
    "PING",
    "PING_PAYLOAD_SIZE",
    "RESET",
    "Frame",
    "FrameDecoder",
    "encode_credit",
    "encode_frame",
]

# --- frame types (byte 0) -------------------------------------------------------------------
DATA = 0x00  # flow bytes
CREDIT = 0x01  # per-flow window increment
RESET = 0x02  # abort a flow in both directions
PING = 0x03  # connection liveness probe / reply
GOAWAY = 0x04  # connection close

FRAME_TYPE_NAMES = {DATA: "DATA", CREDIT: "CREDIT", RESET: "RESET", PING: "PING", GOAWAY: "GOAWAY"}

# --- flags (byte 1) -------------------------------------------------------------------------
FLAG_FIN = 0x01  # DATA: the sender's last frame on this flow (half-close)
FLAG_OPEN = 0x02  # DATA: the opener's first frame on a new flow
FLAG_ACK = 0x01  # PING: this is the reply
FLAG_LAST_ID = 0x01  # GOAWAY: the payload starts with the u32 last flow id the sender accepted

# --- sizes and bounds -----------------------------------------------------------------------
HEADER_SIZE = 10  # type(1) + flags(1) + flow id(4) + payload length(4)
CREDIT_PAYLOAD_SIZE = 4  # one u32 increment
PING_PAYLOAD_SIZE = 8  # opaque bytes echoed back by the ACK
MAX_FLOW_ID = 0xFFFF_FFFF  # flow ids are u32; 0 is the connection itself
# The default largest frame payload: large enough that a frame header costs < 0.02% of bulk
# data, small enough that one flow's frame does not hold up the others for long on the link.
DEFAULT_MAX_FRAME_PAYLOAD = 64 * 1024
# Hard ceiling for any configured maximum: a receiver never agrees to buffer more than this for
# one frame, whatever its configuration says.
MAX_FRAME_PAYLOAD_LIMIT = 16 * 1024 * 1024
# Lower bound of any configured maximum: a RESET or GOAWAY must always be able to carry a
# (shortened) error, which the mux keeps under 1 KiB.
MIN_FRAME_PAYLOAD = 1024

_HEADER = struct.Struct(">HII")  # (type << 8 | flags), flow id, payload length
_U32 = struct.Struct(">I")
_ZERO_U32 = b"\x00\x00\x00\x00"

# Every valid (type, flags) pair, keyed as type << 8 | flags, with what the header must satisfy:
# (type, flags, connection-level (flow id must be 0), fixed payload length or -1).
# One dict lookup validates type and flags together on the hot path.
_RULES: dict[int, tuple[int, int, bool, int]] = {}
for _flags in (0, FLAG_FIN, FLAG_OPEN, FLAG_FIN | FLAG_OPEN):
    _RULES[DATA << 8 | _flags] = (DATA, _flags, False, -1)
_RULES[CREDIT << 8] = (CREDIT, 0, False, CREDIT_PAYLOAD_SIZE)
_RULES[RESET << 8] = (RESET, 0, False, -1)
_RULES[PING << 8] = (PING, 0, True, PING_PAYLOAD_SIZE)
_RULES[PING << 8 | FLAG_ACK] = (PING, FLAG_ACK, True, PING_PAYLOAD_SIZE)
_RULES[GOAWAY << 8] = (GOAWAY, 0, True, -1)
_RULES[GOAWAY << 8 | FLAG_LAST_ID] = (GOAWAY, FLAG_LAST_ID, True, -1)
del _flags

_ALLOWED_FLAGS = {
    DATA: FLAG_FIN | FLAG_OPEN,
    CREDIT: 0,
    RESET: 0,
    PING: FLAG_ACK,
    GOAWAY: FLAG_LAST_ID,
}


class Frame(NamedTuple):
    """One decoded frame. ``payload`` is an immutable copy, safe to keep."""

    type: int
    flags: int
    flow_id: int
    payload: bytes


def _header_problem(tf: int, flow_id: int, length: int, max_payload: int) -> str | None:
    """Why a header is invalid, or None. Slow path: only used to build messages and checks."""
    ftype, flags = tf >> 8, tf & 0xFF
    allowed = _ALLOWED_FLAGS.get(ftype)
    if allowed is None:
        return f"unknown frame type 0x{ftype:02x}"
    name = FRAME_TYPE_NAMES[ftype]
    if flags & ~allowed:
        return f"{name} frame with unknown flags 0x{flags:02x}"
    _, _, conn_level, fixed = _RULES[tf]
    if conn_level and flow_id != 0:
        return f"{name} frame on flow {flow_id} (must be 0)"
    if not conn_level and flow_id == 0:
        return f"{name} frame on flow 0"
    if fixed >= 0 and length != fixed:
        return f"{name} frame with a {length}-byte payload (must be {fixed})"
    if length > max_payload:
        return f"{name} frame payload of {length} bytes exceeds the maximum of {max_payload}"
    return None


def encode_frame(
    ftype: int, flags: int, flow_id: int, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    """The bytes of one frame (header + payload), after checking it is valid.

    Raises:
        BadArgError: the frame would be refused by a receiver whose maximum payload is
            :data:`MAX_FRAME_PAYLOAD_LIMIT` (unknown type or flags, wrong flow id, wrong size,
            zero CREDIT increment, flow id or length out of the u32 range).
    """
    if not (0 <= ftype <= 0xFF and 0 <= flags <= 0xFF and 0 <= flow_id <= MAX_FLOW_ID):
        raise errors.BadArgError("frame: type, flags or flow id out of range")
    length = len(payload)
    problem = _header_problem(ftype << 8 | flags, flow_id, length, MAX_FRAME_PAYLOAD_LIMIT)
    if problem is None and ftype == CREDIT and payload == _ZERO_U32:
        problem = "CREDIT frame with a zero increment"
    if problem is not None:
        raise errors.BadArgError(f"frame: {problem}")
    return _HEADER.pack(ftype << 8 | flags, flow_id, length) + bytes(payload)


def encode_credit(flow_id: int, increment: int) -> bytes:
    """A CREDIT frame granting ``increment`` (1 .. 2**32-1) more bytes on ``flow_id``."""
    if not 0 < increment <= 0xFFFF_FFFF:
        raise errors.BadArgError("frame: CREDIT increment out of range")
    return encode_frame(CREDIT, 0, flow_id, _U32.pack(increment))


class FrameDecoder:
    """Incremental frame decoder: :meth:`feed` bytes in any chunking, get whole frames out.

    The header of a frame is validated as soon as its 10 bytes are here, before any of its
    payload is buffered, so a declared length above ``max_payload`` costs nothing. The decoder
    holds at most one incomplete frame (fewer than ``HEADER_SIZE + max_payload`` bytes). After
    an error it is dead: every later :meth:`feed` raises the same error. A GOAWAY is the last
    frame of a stream: whatever follows it, in the same chunk or later, is ignored unread
    (docs/protocol.md, GOAWAY), so a peer's reason and LAST_ID are never lost to bytes it
    sent after them.
    """

    __slots__ = ("_buf", "_ended", "_error", "max_payload")

    def __init__(self, max_payload: int = DEFAULT_MAX_FRAME_PAYLOAD) -> None:
        if not MIN_FRAME_PAYLOAD <= max_payload <= MAX_FRAME_PAYLOAD_LIMIT:
            raise errors.BadArgError(
                f"frame: max_payload must be in [{MIN_FRAME_PAYLOAD}, {MAX_FRAME_PAYLOAD_LIMIT}]"
            )
        self.max_payload = max_payload
        self._buf = bytearray()
        self._ended = False  # (a GOAWAY came: nothing more is decoded)
        self._error: errors.BadProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every frame it completes, in order.

        Only an incomplete frame is ever copied into the decoder's buffer, and a buffered
        frame takes from ``data`` just the bytes that complete it: a large chunk (a whole
        record of bulk) is never copied as a whole.

        Raises:
            BadProtocolError: the bytes are not a valid frame sequence (this call and every
                later one).
        """
        if self._error is not None:
            raise self._error
        frames: list[Frame] = []
        if self._ended:
            return frames
        buf = self._buf
        if not buf:
            self._parse(data, frames, keep_rest=True)
            return frames
        with memoryview(data) as whole:
            view = whole.cast("B")
            taken = 0
            if len(buf) < HEADER_SIZE:
                taken = min(HEADER_SIZE - len(buf), len(view))
                buf += view[:taken]
            if len(buf) >= HEADER_SIZE:
                length = _HEADER.unpack_from(buf)[2]
                if length <= self.max_payload:  # (else _parse fails the header)
                    more = min(HEADER_SIZE + length - len(buf), len(view) - taken)
                    buf += view[taken : taken + more]
                    taken += more
            if self._parse(buf, frames, keep_rest=False) == len(buf):
                buf.clear()
                if taken < len(view) and not self._ended:
                    self._parse(view[taken:], frames, keep_rest=True)
            view.release()
        return frames

    def _parse(
        self, data: bytes | bytearray | memoryview, frames: list[Frame], *, keep_rest: bool
    ) -> int:
        """Append the whole frames at the start of ``data`` to ``frames``; return the bytes
        they took. With ``keep_rest``, an incomplete tail goes to the (empty) buffer."""
        raw: bytes = b""
        view: memoryview | None = None
        if type(data) is bytes:
            raw = data
        else:
            view = memoryview(data).cast("B")
        end = len(raw) if view is None else len(view)
        pos = 0
        append = frames.append
        rules = _RULES
        unpack_from = _HEADER.unpack_from
        max_payload = self.max_payload
        try:
            while end - pos >= HEADER_SIZE:
                tf, flow_id, length = unpack_from(raw if view is None else view, pos)
                rule = rules.get(tf)
                if rule is None:
                    self._fail(tf, flow_id, length)
                ftype, flags, conn_level, fixed = rule
                if (
                    (flow_id == 0) is not conn_level
                    or (fixed >= 0 and length != fixed)
                    or length > max_payload
                ):
                    self._fail(tf, flow_id, length)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                payload = raw[start:stop] if view is None else view[start:stop].tobytes()
                if ftype == CREDIT and payload == _ZERO_U32:
                    self._fail_with("CREDIT frame with a zero increment")
                append(Frame(ftype, flags, flow_id, payload))
                pos = stop
                if ftype == GOAWAY:
                    self._ended = True
                    return end  # (the rest is ignored, not kept)
            if keep_rest and pos < end:
                self._buf += raw[pos:] if view is None else view[pos:]
        finally:
            if view is not None:
                view.release()
        return pos

    def _fail(self, tf: int, flow_id: int, length: int) -> NoReturn:
        problem = _header_problem(tf, flow_id, length, self.max_payload)
        self._fail_with(problem or "invalid frame header")

    def _fail_with(self, problem: str) -> NoReturn:
        self._buf = bytearray()
        self._error = errors.BadProtocolError(f"frame: {problem}")
        raise self._error
