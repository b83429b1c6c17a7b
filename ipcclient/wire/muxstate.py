"""The state of a multiplexed connection: its limits, its flows, and the bookkeeping every
operation of :class:`~ipcclient.wire.mux.Mux` shares (sans-IO).

Owns: the defaults and bounds of flow control (:data:`MAX_WINDOW`, the default window, the
inbound flow limit, when CREDIT is sent, how many replies may be queued), :class:`MuxConfig`
(this side's limits), :class:`FlowState` (one flow's windows, credit and half-closes), and
:class:`MuxState`, the base of ``Mux``: the connection's counters and queued output,
inspection, opening our flows in id order, ending a flow, late frames, the terminal state,
and queuing GOAWAY. Must not: parse received bytes or act on a caller's request (``Mux``
does), or touch sockets, threads or clocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipcclient import errors
from ipcclient.wire.errorpayload import encode_error
from ipcclient.wire.frames import (
    DEFAULT_MAX_FRAME_PAYLOAD,
    FLAG_LAST_ID,
    FLAG_OPEN,
    GOAWAY,
    MAX_FRAME_PAYLOAD_LIMIT,
    MIN_FRAME_PAYLOAD,
    FrameDecoder,
)

__all__ = [
    "CREDIT_BATCH_DIVISOR",
    "CREDIT_FRAME",
    "DEFAULT_INITIAL_WINDOW",
    "DEFAULT_MAX_INBOUND_FLOWS",
    "FRAME_HEADER",
    "MAX_PENDING_REPLIES",
    "MAX_WINDOW",
    "U32",
    "FlowState",
    "MuxConfig",
    "MuxState",
]

# Largest window (credit) a flow may have: a signed 32-bit int, as HTTP/2's stream windows, so
# a peer cannot make the counters grow without bound and every implementation can use an i32.
MAX_WINDOW = 2**31 - 1
# Per-flow receive window: a 1 MiB bulk message mostly streams without waiting for a CREDIT
# round trip, and a slow reader costs at most 1 MiB of buffered data per flow.
DEFAULT_INITIAL_WINDOW = 1024 * 1024
# Live flows the peer may open on one connection; beyond, OPENs are refused with a RESET
# carrying OverloadedError (a server sheds load per flow rather than dropping the connection).
DEFAULT_MAX_INBOUND_FLOWS = 1024
# A receiver sends CREDIT once the consumed-but-not-yet-granted bytes of a flow reach
# window // CREDIT_BATCH_DIVISOR. A quarter keeps >= 3/4 of the window in flight while costing
# one 14-byte frame per 256 KiB read (default window), and a small unary exchange none at all.
CREDIT_BATCH_DIVISOR = 4
# Frames queued in reply to the peer (PING acks, RESETs refusing flows) between two calls to
# data_to_send(). A peer above this is flooding us (the HTTP/2 "ping flood", CVE-2019-9512):
# the replies would grow our output buffer without bound. A legitimate peer never comes close.
MAX_PENDING_REPLIES = 1024

FRAME_HEADER = struct.Struct(">HII")  # (type << 8 | flags), flow id, payload length
CREDIT_FRAME = struct.Struct(">HIII")  # a whole CREDIT frame: header + u32 increment
U32 = struct.Struct(">I")


@dataclass(frozen=True)
class MuxConfig:
    """This side's limits, announced to the peer by the VC handshake.

    Attributes:
        initial_window: per-flow receive window in bytes (1 .. MAX_WINDOW here; a VC's
            handshake needs at least 1024, which ``TransportOptions`` checks).
        max_frame_payload: largest frame payload this side accepts (1 KiB .. 16 MiB; 64 KiB
            default).
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


class FlowState:
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


class MuxState:
    """What one side of a multiplexed connection holds, and the helpers its operations
    share; :class:`~ipcclient.wire.mux.Mux` adds the operations."""

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
        self._flows: dict[int, FlowState] = {}
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

    @property
    def last_accepted(self) -> int:
        """The highest flow id the peer opened that this side took (0: none): what a GOAWAY
        from this side carries."""
        return self._max_peer_id

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return any bytes (cheap; no copy)."""
        return bool(self._out)

    def _queue_goaway(self, error: errors.IPCError | None, last_id: int) -> None:
        """Queue GOAWAY with LAST_ID ``last_id`` and, if given, ``error``."""
        payload = U32.pack(last_id)
        if error is not None:
            payload += self._error_payload(error, room=self._peer_max_frame - U32.size)
        self._out.append(FRAME_HEADER.pack(GOAWAY << 8 | FLAG_LAST_ID, 0, len(payload)))
        self._out.append(payload)

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
                self._out.append(FRAME_HEADER.pack(FLAG_OPEN, lower, 0))
        flows[fid].unopened = False
        self._opened_upto = fid

    def _end(self, flow: FlowState) -> None:
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
        return encode_error(err, room or self._peer_max_frame)
