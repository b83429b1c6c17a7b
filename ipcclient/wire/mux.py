"""The flow multiplexer: many flows over one byte stream, with per-flow credits (sans-IO).

Owns: flow ids (allocation, opening, late frames), per-flow send credit and receive windows,
half-close, reset, ping and connection close (GOAWAY), as specified byte by byte in
``docs/protocol.md`` section 3. Bytes go in (:meth:`Mux.receive_data`) and events come out;
calls go in (:meth:`Mux.send_data`, ...) and bytes come out (:meth:`Mux.data_to_send`).

Must not: touch sockets, threads or clocks (the owner drives it and times pings); encrypt (on a
VC these bytes travel inside encrypted records); know what the bytes on a flow mean. It is not
thread-safe: the owner serializes calls. A peer that breaks the protocol makes
:meth:`Mux.receive_data` raise :class:`~ipcclient.errors.BadProtocolError` and nothing else;
the mux then is in its terminal state (every live flow is gone, a GOAWAY carrying the error is
queued for the peer, every later call raises that same error).

API::

    mux = Mux(MuxConfig(), dialer=True, peer_initial_window=..., peer_max_frame_payload=...)
    fid = mux.open_flow()                       # nothing is sent until the first DATA
    n = mux.send_data(fid, b"...", end=False)   # bytes accepted now (<= send credit)
    mux.close_send(fid)                         # FIN (half-close)
    mux.reset_flow(fid, error=None)             # RESET: abort both directions
    mux.acknowledge(fid, n)                     # the app consumed n received bytes
    mux.ping(b"8 bytes!"); mux.close(error=None)
    events = mux.receive_data(data)             # list[Event]
    wire = mux.data_to_send()                   # all queued frames, coalesced
    pieces = mux.take_output()                  # the same, as a list (no join)

Events: :class:`FlowOpened`, :class:`DataReceived` (``end`` marks the peer's FIN),
:class:`FlowReset`, :class:`CreditAvailable`, :class:`PingReceived`, :class:`PingAcked`,
:class:`ConnectionClosed`. Events describe what already happened while the whole chunk was
processed: a flow named by one event may have ended by a later frame of the same chunk (a
CREDIT then a RESET), so check :meth:`Mux.is_live` before acting on a flow.

A flow ends, and all its state is dropped, when FIN was both sent and received, when a RESET
is sent or received, or when the connection closes. :meth:`Mux.acknowledge` and
:meth:`Mux.reset_flow` on an ended flow do nothing (the app may still be reading what arrived,
or cancel a call that just finished); :meth:`Mux.send_data`, :meth:`Mux.close_send` and
:meth:`Mux.send_credit` raise :class:`~ipcclient.errors.BadStateError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipcclient import codec, errors
from ipcclient.wire.frames import (
    CREDIT,
    DATA,
    DEFAULT_MAX_FRAME_PAYLOAD,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_LAST_ID,
    FLAG_OPEN,
    GOAWAY,
    HEADER_SIZE,
    MAX_FLOW_ID,
    MAX_FRAME_PAYLOAD_LIMIT,
    MIN_FRAME_PAYLOAD,
    PING,
    PING_PAYLOAD_SIZE,
    RESET,
    FrameDecoder,
)

__all__ = [
    "CREDIT_BATCH_DIVISOR",
    "DEFAULT_INITIAL_WINDOW",
    "DEFAULT_MAX_INBOUND_FLOWS",
    "MAX_PENDING_REPLIES",
    "MAX_WINDOW",
    "ConnectionClosed",
    "CreditAvailable",
    "DataReceived",
    "Event",
    "FlowOpened",
    "FlowReset",
    "Mux",
    "MuxConfig",
    "PingAcked",
    "PingReceived",
]

# --- limits and defaults --------------------------------------------------------------------
# Largest window (credit) a flow may have: a signed 32-bit int, as h2's stream windows, so a
# peer cannot make the counters grow without bound and every implementation can use an i32.
MAX_WINDOW = 2**31 - 1
# Per-flow receive window, Vanadium's DefaultBytesBufferedPerFlow: a 1 MiB bulk message mostly
# streams without waiting for a CREDIT round trip, and a slow reader costs at most 1 MiB of
# buffered data per flow.
DEFAULT_INITIAL_WINDOW = 1024 * 1024
# Live flows the peer may open on one connection; beyond, OPENs are refused with a RESET
# carrying OverloadedError (a server sheds load per flow rather than dropping the connection).
DEFAULT_MAX_INBOUND_FLOWS = 1024
# A receiver sends CREDIT once the consumed-but-not-yet-granted bytes of a flow reach
# window // CREDIT_BATCH_DIVISOR. A quarter keeps >= 3/4 of the window in flight while costing
# one 14-byte frame per 256 KiB read (default window), and a small unary exchange none at all.
CREDIT_BATCH_DIVISOR = 4
# Frames queued in reply to the peer (PING acks, RESETs refusing flows) between two calls to
# data_to_send(). A peer above this is flooding us (h2's "ping flood", CVE-2019-9512): the
# replies would grow our output buffer without bound. A legitimate peer never comes close.
MAX_PENDING_REPLIES = 1024
# When an error does not fit a peer's frame (or cannot be encoded), it is sent shortened to
# its id, action and the first characters of its message: at most 64*4 + 128*4 + ~40 bytes,
# under MIN_FRAME_PAYLOAD whatever the UTF-8.
_SHORT_ERROR_ID_CHARS = 64
_SHORT_ERROR_MSG_CHARS = 128

_HEADER = struct.Struct(">HII")  # (type << 8 | flags), flow id, payload length
_CREDIT_FRAME = struct.Struct(">HIII")  # a whole CREDIT frame: header + u32 increment
_U32 = struct.Struct(">I")
_FIN = FLAG_FIN  # DATA is type 0, so a DATA header's first u16 is just its flags
_OPEN = FLAG_OPEN


@dataclass(frozen=True)
class MuxConfig:
    """This side's limits, announced to the peer by the VC handshake.

    Attributes:
        initial_window: per-flow receive window in bytes (1 .. MAX_WINDOW).
        max_frame_payload: largest frame payload this side accepts (1 KiB .. 16 MiB; 64 KiB
            default, Vanadium's MTU).
        max_inbound_flows: live peer-opened flows allowed at once (0 refuses all).
    """

    initial_window: int = DEFAULT_INITIAL_WINDOW
    max_frame_payload: int = DEFAULT_MAX_FRAME_PAYLOAD
    max_inbound_flows: int = DEFAULT_MAX_INBOUND_FLOWS

    def __post_init__(self) -> None:
        if not 1 <= self.initial_window <= MAX_WINDOW:
            raise errors.BadArgError(f"mux: initial_window must be in [1, {MAX_WINDOW}]")
        if not MIN_FRAME_PAYLOAD <= self.max_frame_payload <= MAX_FRAME_PAYLOAD_LIMIT:
            raise errors.BadArgError(
                f"mux: max_frame_payload must be in [{MIN_FRAME_PAYLOAD}, "
                f"{MAX_FRAME_PAYLOAD_LIMIT}]"
            )
        if self.max_inbound_flows < 0:
            raise errors.BadArgError("mux: max_inbound_flows must be >= 0")


# --- events ---------------------------------------------------------------------------------
class Event:
    """Base class of what :meth:`Mux.receive_data` returns."""

    __slots__ = ()


@dataclass(slots=True)
class FlowOpened(Event):
    """The peer opened a flow (its first DATA follows as :class:`DataReceived` if non-empty)."""

    flow_id: int


@dataclass(slots=True)
class DataReceived(Event):
    """Bytes on a flow; ``end`` is the peer's FIN (it sends nothing more on this flow).

    The app must :meth:`Mux.acknowledge` ``len(data)`` once it has consumed them.
    """

    flow_id: int
    data: bytes
    end: bool


@dataclass(slots=True)
class FlowReset(Event):
    """The peer reset the flow; ``error`` is its error, or CanceledError. The flow is gone."""

    flow_id: int
    error: errors.IPCError


@dataclass(slots=True)
class CreditAvailable(Event):
    """Send credit on the flow went from 0 to > 0: a blocked writer may resume."""

    flow_id: int


@dataclass(slots=True)
class PingReceived(Event):
    """The peer pinged; the ACK is already queued."""

    payload: bytes


@dataclass(slots=True)
class PingAcked(Event):
    """The peer answered a ping carrying ``payload``."""

    payload: bytes


@dataclass(slots=True)
class ConnectionClosed(Event):
    """The peer sent GOAWAY. ``error`` (a ConnectionFailedError) is what the local flows end
    with; ``peer_error`` is the error the peer sent, if any; ``flow_ids`` were live and are gone.

    ``last_flow_id`` is the highest of our flow ids the peer says it accepted (None when its
    GOAWAY did not say); ``unprocessed`` are the ids of ``flow_ids`` above it: flows the
    peer never delivered to its application, so it cannot have acted on them (a request on
    one may be sent again on a new connection).
    """

    error: errors.IPCError
    peer_error: errors.IPCError | None
    flow_ids: tuple[int, ...]
    last_flow_id: int | None = None
    unprocessed: tuple[int, ...] = ()


class _Flow:
    """State of one live flow. Invariant: recv_window + unread + pending_credit == window."""

    __slots__ = (
        "id",
        "inbound",
        "pending_credit",
        "recv_closed",
        "recv_window",
        "send_closed",
        "send_credit",
        "unopened",
        "unread",
    )

    def __init__(self, fid: int, send_credit: int, recv_window: int, inbound: bool) -> None:
        self.id = fid
        self.send_credit = send_credit  # DATA bytes we may still send
        self.recv_window = recv_window  # DATA bytes the peer may still send
        self.unread = 0  # received, not yet acknowledged by the app
        self.pending_credit = 0  # acknowledged, not yet granted back with CREDIT
        self.send_closed = False  # FIN sent
        self.recv_closed = False  # FIN received
        self.inbound = inbound  # opened by the peer
        self.unopened = not inbound  # ours, and no frame with OPEN sent yet


class Mux:
    """One side of a multiplexed connection (see the module docstring for the API)."""

    __slots__ = (
        "_credit_threshold",
        "_decoder",
        "_error",
        "_flows",
        "_inbound",
        "_initial_window",
        "_input_error",
        "_max_inbound",
        "_max_peer_id",
        "_next_id",
        "_opened_upto",
        "_out",
        "_own_parity",
        "_peer_initial_window",
        "_peer_max_frame",
        "_pending_replies",
        "_tail",
        "config",
        "dialer",
    )

    def __init__(
        self,
        config: MuxConfig | None = None,
        *,
        dialer: bool,
        peer_initial_window: int,
        peer_max_frame_payload: int = DEFAULT_MAX_FRAME_PAYLOAD,
    ) -> None:
        """Args:
        config: this side's limits (defaults: :class:`MuxConfig`).
        dialer: True on the side that dialed (odd flow ids), False on the acceptor (even).
        peer_initial_window: the peer's per-flow receive window (our initial send credit).
        peer_max_frame_payload: the peer's largest accepted frame payload (we split to it).

        Raises:
            BadArgError: a value is out of its range.
        """
        config = config if config is not None else MuxConfig()
        if not 1 <= peer_initial_window <= MAX_WINDOW:
            raise errors.BadArgError(f"mux: peer_initial_window must be in [1, {MAX_WINDOW}]")
        if not MIN_FRAME_PAYLOAD <= peer_max_frame_payload <= MAX_FRAME_PAYLOAD_LIMIT:
            raise errors.BadArgError(
                f"mux: peer_max_frame_payload must be in [{MIN_FRAME_PAYLOAD}, "
                f"{MAX_FRAME_PAYLOAD_LIMIT}]"
            )
        self.config = config
        self.dialer = dialer
        self._decoder = FrameDecoder(config.max_frame_payload)
        self._flows: dict[int, _Flow] = {}
        self._out: list[bytes | memoryview] = []
        self._own_parity = 1 if dialer else 0
        self._next_id = 1 if dialer else 2
        self._opened_upto = self._next_id - 2  # highest own id announced with OPEN
        self._max_peer_id = 0  # highest peer id seen with OPEN
        self._inbound = 0  # live peer-opened flows
        self._max_inbound = config.max_inbound_flows
        self._initial_window = config.initial_window
        self._credit_threshold = max(1, config.initial_window // CREDIT_BATCH_DIVISOR)
        self._peer_initial_window = peer_initial_window
        self._peer_max_frame = peer_max_frame_payload
        self._pending_replies = 0
        # (flow id, flags, payload length, index of its header in _out, len(_out)) of the
        # DATA frame last queued, while nothing else was queued after it: small writes that
        # follow on the same flow grow that frame instead of adding one (a burst of stream
        # items queued together is one frame).
        self._tail: tuple[int, int, int, int, int] | None = None
        self._error: errors.IPCError | None = None  # why the connection is closed
        self._input_error: errors.BadProtocolError | None = None  # the peer broke the protocol

    # --- inspection ---------------------------------------------------------------------
    @property
    def live_flow_count(self) -> int:
        """Flows with any state left (opened, not yet ended)."""
        return len(self._flows)

    @property
    def closed(self) -> bool:
        """True once GOAWAY was sent or received, or the peer broke the protocol."""
        return self._error is not None

    @property
    def error(self) -> errors.IPCError | None:
        """Why the connection is closed (what calls now raise), or None while open."""
        return self._error

    def is_live(self, flow_id: int) -> bool:
        """Whether ``flow_id`` still has state here."""
        return flow_id in self._flows

    def send_credit(self, flow_id: int) -> int:
        """DATA bytes that may be sent on ``flow_id`` right now.

        Raises:
            BadStateError: the flow is not live (or the connection's error when closed).
        """
        if self._error is not None:
            raise self._error
        flow = self._flows.get(flow_id)
        if flow is None:
            raise errors.BadStateError(f"mux: flow {flow_id} is not live")
        return flow.send_credit

    # --- sending ------------------------------------------------------------------------
    def open_flow(self) -> int:
        """Allocate the next flow id of this side's parity. Nothing is sent yet: the OPEN
        flag rides on the flow's first DATA frame (from send_data or close_send).

        Raises:
            ConnectionFailedError: the ids of this connection are exhausted; dial a new one.
        """
        if self._error is not None:
            raise self._error
        fid = self._next_id
        if fid > MAX_FLOW_ID:
            raise errors.ConnectionFailedError("mux: flow ids exhausted; dial a new connection")
        self._next_id = fid + 2
        self._flows[fid] = _Flow(fid, self._peer_initial_window, self._initial_window, False)
        return fid

    def send_data(
        self, flow_id: int, data: bytes | bytearray | memoryview, *, end: bool = False
    ) -> int:
        """Queue DATA on a flow; return how many bytes of ``data`` were accepted now.

        At most :meth:`send_credit` bytes are accepted; send the rest again after a
        :class:`CreditAvailable`. With ``end``, FIN goes on the last frame if and only if all
        of ``data`` was accepted. Data above the peer's maximum frame payload is split.
        ``data`` is a 1-D byte buffer. ``bytes`` (and memoryviews of ``bytes``) are referenced
        until :meth:`data_to_send` without copying; other buffers are copied now.

        Raises:
            BadStateError: the flow is not live (ended, reset) or its send side is closed.
        """
        if self._error is not None:
            raise self._error
        flow = self._flows.get(flow_id)
        if flow is None:
            raise errors.BadStateError(f"mux: flow {flow_id} is not live")
        if flow.send_closed:
            raise errors.BadStateError(f"mux: flow {flow_id} send side is closed")
        size = len(data)
        n = flow.send_credit
        if size <= n:
            n = size
            fin = end
        else:
            fin = False
        flags = _FIN if fin else 0
        if flow.unopened:
            flags |= _OPEN
            self._announce(flow_id)
        out = self._out
        maxp = self._peer_max_frame
        if n <= maxp:
            if n == 0 and not flags:
                return 0
            tail = self._tail
            if (
                tail is not None
                and tail[0] == flow_id
                and tail[4] == len(out)
                and tail[2] + n <= maxp
            ):
                flags |= tail[1]  # (the earlier frame may carry OPEN)
                frame_len = tail[2] + n
                header_at = tail[3]
                out[header_at] = _HEADER.pack(flags, flow_id, frame_len)
            else:
                header_at = len(out)
                frame_len = n
                out.append(_HEADER.pack(flags, flow_id, n))
            if n:
                if type(data) is bytes:
                    out.append(data if n == size else memoryview(data)[:n])
                elif type(data) is memoryview and type(data.obj) is bytes:
                    out.append(data[:n])
                else:
                    out.append(bytes(data[:n]))
            self._tail = None if fin else (flow_id, flags, frame_len, header_at, len(out))
        else:
            view = memoryview(data).cast("B")
            copy = type(view.obj) is not bytes
            flags &= _OPEN  # OPEN on the first frame only, FIN on the last only
            self._tail = None
            pos = 0
            while pos < n:
                stop = pos + maxp
                if stop >= n:
                    stop = n
                    if fin:
                        flags |= _FIN
                out.append(_HEADER.pack(flags, flow_id, stop - pos))
                out.append(view[pos:stop].tobytes() if copy else view[pos:stop])
                flags = 0
                pos = stop
        flow.send_credit -= n
        if fin:
            flow.send_closed = True
            if flow.recv_closed:
                self._end(flow)
        return n

    def close_send(self, flow_id: int) -> None:
        """Send FIN on the flow (half-close); nothing more may be sent on it. Idempotent.

        Raises:
            BadStateError: the flow is not live.
        """
        if self._error is not None:
            raise self._error
        flow = self._flows.get(flow_id)
        if flow is None:
            raise errors.BadStateError(f"mux: flow {flow_id} is not live")
        if flow.send_closed:
            return
        flags = _FIN
        if flow.unopened:
            flags |= _OPEN
            self._announce(flow_id)
        self._out.append(_HEADER.pack(flags, flow_id, 0))
        flow.send_closed = True
        if flow.recv_closed:
            self._end(flow)

    def reset_flow(self, flow_id: int, error: errors.IPCError | None = None) -> None:
        """Abort the flow in both directions and drop its state; the peer sees RESET with
        ``error`` (None means Canceled). Does nothing if the flow already ended. A flow never
        announced to the peer is dropped without sending anything.
        """
        if self._error is not None:
            raise self._error
        flow = self._flows.pop(flow_id, None)
        if flow is None:
            return
        if flow.inbound:
            self._inbound -= 1
        if flow.unopened:
            return
        payload = b"" if error is None else self._error_payload(error)
        self._out.append(_HEADER.pack(RESET << 8, flow_id, len(payload)))
        if payload:
            self._out.append(payload)

    def acknowledge(self, flow_id: int, nbytes: int) -> None:
        """The app consumed ``nbytes`` more received bytes of the flow: grant them back.

        CREDIT is sent once the acknowledged-but-not-granted bytes reach a quarter of the
        window, and never after the peer's FIN. Does nothing on an ended flow.

        Raises:
            BadArgError: ``nbytes`` is negative or more than was received and not yet
                acknowledged.
        """
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        if not 0 <= nbytes <= flow.unread:
            raise errors.BadArgError(
                f"mux: acknowledge({flow_id}, {nbytes}) but {flow.unread} bytes are unread"
            )
        flow.unread -= nbytes
        pending = flow.pending_credit + nbytes
        if pending >= self._credit_threshold and not flow.recv_closed:
            self._out.append(_CREDIT_FRAME.pack(CREDIT << 8, flow_id, 4, pending))
            flow.recv_window += pending
            pending = 0
        flow.pending_credit = pending

    def ping(self, payload: bytes) -> None:
        """Queue a PING carrying 8 opaque bytes; the peer's ACK comes back as PingAcked.

        Raises:
            BadArgError: ``payload`` is not exactly 8 bytes.
        """
        if self._error is not None:
            raise self._error
        if len(payload) != PING_PAYLOAD_SIZE:
            raise errors.BadArgError(f"mux: a ping payload is {PING_PAYLOAD_SIZE} bytes")
        self._out.append(_HEADER.pack(PING << 8, 0, PING_PAYLOAD_SIZE) + bytes(payload))

    def close(self, error: errors.IPCError | None = None) -> None:
        """Queue GOAWAY (``error`` or a normal close; with LAST_ID, the highest flow id the
        peer opened that this side took) and end every flow. Afterwards, calls raise
        BadStateError and received bytes are ignored. Does nothing if already closed.
        """
        if self._error is not None:
            return
        self._queue_goaway(error, self._max_peer_id)
        self._terminate(errors.BadStateError("mux: the connection was closed locally"))

    @property
    def last_accepted(self) -> int:
        """The highest flow id the peer opened that this side took (0: none): what a GOAWAY
        from this side carries."""
        return self._max_peer_id

    def _queue_goaway(self, error: errors.IPCError | None, last_id: int) -> None:
        """Queue GOAWAY with LAST_ID ``last_id`` and, if given, ``error``."""
        payload = _U32.pack(last_id)
        if error is not None:
            payload += self._error_payload(error, room=self._peer_max_frame - _U32.size)
        self._out.append(_HEADER.pack(GOAWAY << 8 | FLAG_LAST_ID, 0, len(payload)))
        self._out.append(payload)

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return any bytes (cheap; no copy)."""
        return bool(self._out)

    def take_output(self) -> list[bytes | memoryview]:
        """All queued frames as the list of their pieces, without joining them (a bulk
        payload stays the caller's buffer); the queue is emptied."""
        out = self._out
        if not out:
            return []
        self._out = []
        self._tail = None
        self._pending_replies = 0
        return out

    def data_to_send(self) -> bytes:
        """All queued frames as one bytes object (empty if none); the queue is emptied."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self._tail = None
        self._pending_replies = 0
        return data

    # --- receiving ----------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; return the events they complete, in order.

        After a GOAWAY (sent or received) the bytes are ignored.

        Raises:
            BadProtocolError: the peer broke the protocol. The mux is now terminal: flows are
                gone, a GOAWAY with this error is queued, every later call raises it again,
                and the events of this call are lost.
        """
        if self._error is not None:
            if self._input_error is not None:
                raise self._input_error
            return []
        upto = (
            self._max_peer_id
        )  # (flows opened by this chunk reach the owner only if it all is valid)
        decoder = self._decoder
        if type(data) is bytes and not decoder._buf and len(data) >= HEADER_SIZE:
            # The usual chunk: exactly one DATA frame (no OPEN) on a live flow of ours or
            # the peer's (a reply, more of a request): the loop below without the decoder.
            tf, fid, n = _HEADER.unpack_from(data)
            if (
                tf == _OPEN | _FIN
                and fid
                and n == len(data) - HEADER_SIZE
                and n <= decoder.max_payload
                and fid not in self._flows
            ):
                # A whole request opening a flow (the peer's OPEN|FIN).
                opened: list[Event] = []
                try:
                    self._on_data_slow(None, tf, fid, data[HEADER_SIZE:], opened)
                except errors.BadProtocolError as err:
                    self._fail_input(err, upto)
                    raise
                return opened
            if tf <= _FIN and fid and n == len(data) - HEADER_SIZE and n <= decoder.max_payload:
                flow = self._flows.get(fid)
                if (
                    flow is not None
                    and not flow.recv_closed
                    and not flow.unopened
                    and n <= flow.recv_window
                ):
                    payload = data[HEADER_SIZE:]
                    flow.recv_window -= n
                    flow.unread += n
                    if tf:  # FIN
                        flow.recv_closed = True
                        if flow.send_closed:
                            self._end(flow)
                        return [DataReceived(fid, payload, True)]
                    return [DataReceived(fid, payload, False)] if n else []
        events: list[Event] = []
        try:
            frames = decoder.feed(data)
            flows = self._flows
            for ftype, flags, fid, payload in frames:
                if ftype == DATA:
                    flow = flows.get(fid)
                    if (
                        flow is None
                        or flags & _OPEN
                        or flow.recv_closed
                        or flow.unopened
                        or len(payload) > flow.recv_window
                    ):
                        self._on_data_slow(flow, flags, fid, payload, events)
                        continue
                    n = len(payload)
                    flow.recv_window -= n
                    flow.unread += n
                    if flags:  # FIN (OPEN went to the slow path)
                        flow.recv_closed = True
                        events.append(DataReceived(fid, payload, True))
                        if flow.send_closed:
                            self._end(flow)
                    elif n:
                        events.append(DataReceived(fid, payload, False))
                elif ftype == CREDIT:
                    self._on_credit(fid, payload, events)
                elif ftype == RESET:
                    self._on_reset(fid, payload, events)
                elif ftype == PING:
                    if flags & FLAG_ACK:
                        events.append(PingAcked(payload))
                    else:
                        self._queue_reply(_HEADER.pack(PING << 8 | FLAG_ACK, 0, 8) + payload)
                        events.append(PingReceived(payload))
                else:  # GOAWAY: the decoder lets no other type through
                    self._on_goaway(flags, payload, events)
                    break
        except errors.BadProtocolError as err:
            self._fail_input(err, upto)
            raise
        return events

    def _fail_input(self, err: errors.BadProtocolError, upto: int) -> None:
        """The peer broke the protocol: the mux is terminal, with GOAWAY(err) queued, whose
        LAST_ID is ``upto`` (the events of the failing chunk are lost: flows it opened were
        never seen by the owner)."""
        self._input_error = err
        self._pending_replies = 0
        self._queue_goaway(err, upto)
        self._terminate(err)

    # --- internals ----------------------------------------------------------------------
    def _on_data_slow(
        self, flow: _Flow | None, flags: int, fid: int, payload: bytes, events: list[Event]
    ) -> None:
        n = len(payload)
        if flow is not None:
            if flags & _OPEN or flow.unopened:
                raise errors.BadProtocolError(f"mux: OPEN or DATA out of order on flow {fid}")
            if flow.recv_closed:
                raise errors.BadProtocolError(f"mux: DATA after FIN on flow {fid}")
            raise errors.BadProtocolError(
                f"mux: {n} bytes on flow {fid} exceed its window of {flow.recv_window}"
            )
        if not flags & _OPEN:
            self._check_late(fid)
            return
        if fid & 1 == self._own_parity:
            raise errors.BadProtocolError(f"mux: peer opened flow {fid} of our parity")
        if fid <= self._max_peer_id:
            raise errors.BadProtocolError(
                f"mux: peer opened flow {fid}, not above its highest id {self._max_peer_id}"
            )
        self._max_peer_id = fid
        if n > self._initial_window:
            raise errors.BadProtocolError(
                f"mux: {n} bytes on flow {fid} exceed its window of {self._initial_window}"
            )
        if self._inbound >= self._max_inbound:
            refusal = self._error_payload(
                errors.OverloadedError(f"mux: too many flows (limit {self._max_inbound})")
            )
            self._queue_reply(_HEADER.pack(RESET << 8, fid, len(refusal)) + refusal)
            return
        flow = _Flow(fid, self._peer_initial_window, self._initial_window - n, True)
        flow.unread = n
        self._flows[fid] = flow
        self._inbound += 1
        events.append(FlowOpened(fid))
        end = bool(flags & _FIN)
        if n or end:
            events.append(DataReceived(fid, payload, end))
        flow.recv_closed = end

    def _on_credit(self, fid: int, payload: bytes, events: list[Event]) -> None:
        flow = self._flows.get(fid)
        if flow is None or flow.unopened:
            self._check_late(fid)
            return
        credit = flow.send_credit
        new = credit + _U32.unpack(payload)[0]
        if new > MAX_WINDOW:
            raise errors.BadProtocolError(f"mux: CREDIT on flow {fid} overflows the window")
        flow.send_credit = new
        if credit == 0 and not flow.send_closed:
            events.append(CreditAvailable(fid))

    def _on_reset(self, fid: int, payload: bytes, events: list[Event]) -> None:
        flow = self._flows.get(fid)
        if flow is None or flow.unopened:
            self._check_late(fid)
            return
        if payload:
            err = self._decode_error(payload)
        else:
            err = errors.CanceledError("mux: the peer cancelled the flow")
        self._end(flow)
        events.append(FlowReset(fid, err))

    def _on_goaway(self, flags: int, payload: bytes, events: list[Event]) -> None:
        last_id: int | None = None
        if flags & FLAG_LAST_ID:
            if len(payload) < _U32.size:
                raise errors.BadProtocolError("mux: GOAWAY with LAST_ID shorter than 4 bytes")
            last_id = _U32.unpack_from(payload)[0]
            payload = payload[_U32.size :]
        peer_error = self._decode_error(payload) if payload else None
        msg = "mux: the peer closed the connection"
        if peer_error is not None:
            msg += (
                f": {peer_error.id}: {peer_error.msg}" if peer_error.msg else f": {peer_error.id}"
            )
        err = errors.ConnectionFailedError(msg)
        err.__cause__ = peer_error
        flow_ids = tuple(self._flows)
        unprocessed: tuple[int, ...] = ()
        if last_id is not None:
            parity = self._own_parity
            unprocessed = tuple(f for f in flow_ids if f & 1 == parity and f > last_id)
        self._out.clear()  # nothing may be sent after receiving GOAWAY
        self._tail = None
        self._terminate(err)
        events.append(ConnectionClosed(err, peer_error, flow_ids, last_id, unprocessed))

    def _check_late(self, fid: int) -> None:
        """Return if a frame for a non-live flow is late (drop it), else raise."""
        if fid & 1 == self._own_parity:
            if fid <= self._opened_upto:
                return
            raise errors.BadProtocolError(f"mux: frame for flow {fid}, which we never opened")
        if fid <= self._max_peer_id:
            return
        raise errors.BadProtocolError(f"mux: frame for flow {fid}, which the peer never opened")

    def _announce(self, fid: int) -> None:
        """Mark our flow ``fid`` opened; first open every lower unopened live flow of ours with
        an empty OPEN frame, so that OPENs reach the peer in increasing id order."""
        flows = self._flows
        for lower in range(self._opened_upto + 2, fid, 2):
            flow = flows.get(lower)
            if flow is not None and flow.unopened:
                flow.unopened = False
                self._out.append(_HEADER.pack(_OPEN, lower, 0))
        flows[fid].unopened = False
        self._opened_upto = fid

    def _end(self, flow: _Flow) -> None:
        del self._flows[flow.id]
        if flow.inbound:
            self._inbound -= 1

    def _terminate(self, err: errors.IPCError) -> None:
        self._error = err
        self._flows.clear()
        self._inbound = 0

    def _queue_reply(self, frame: bytes) -> None:
        self._pending_replies += 1
        if self._pending_replies > MAX_PENDING_REPLIES:
            raise errors.BadProtocolError(
                f"mux: the peer made us queue more than {MAX_PENDING_REPLIES} replies"
            )
        self._out.append(frame)

    def _error_payload(self, err: errors.IPCError, room: int = 0) -> bytes:
        """``err`` encoded in at most ``room`` bytes (default: the peer's max frame payload),
        shortened if need be."""
        try:
            payload = codec.encode(err)
        except errors.BadArgError:  # params that have no CBOR form
            payload = b""
        if not payload or len(payload) > (room or self._peer_max_frame):
            short = errors.IPCError(
                err.msg[:_SHORT_ERROR_MSG_CHARS],
                id=err.id[:_SHORT_ERROR_ID_CHARS],
                action=err.action,
            )
            payload = codec.encode(short)
        return payload

    @staticmethod
    def _decode_error(payload: bytes) -> errors.IPCError:
        value = codec.decode(payload)
        if not isinstance(value, errors.IPCError):
            raise errors.BadProtocolError("mux: RESET/GOAWAY payload is not an error")
        return value
