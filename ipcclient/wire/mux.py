"""The flow multiplexer: many flows over one byte stream, with per-flow credits (sans-IO).

Owns: flow ids (allocation, opening, late frames), per-flow send credit and receive windows,
half-close, reset, ping and connection close (GOAWAY), as specified byte by byte in
``docs/protocol.md`` section 3. Bytes go in (:meth:`Mux.receive_data`) and events come out;
calls go in (:meth:`Mux.send_data`, ...) and bytes come out (:meth:`Mux.data_to_send`).
:class:`Mux` is those operations; what they share (limits, per-flow state, counters, queued
output) is :class:`~ipcclient.wire.muxstate.MuxState`, the events are
:mod:`ipcclient.wire.events` and the error in a RESET or GOAWAY is
:mod:`ipcclient.wire.errorpayload`. Their public names are re-exported here.

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

from ipcclient import errors
from ipcclient.wire.errorpayload import decode_error
from ipcclient.wire.events import (
    ConnectionClosed,
    CreditAvailable,
    DataReceived,
    Event,
    FlowOpened,
    FlowReset,
    PingAcked,
    PingReceived,
)
from ipcclient.wire.frames import (
    CREDIT,
    DATA,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_LAST_ID,
    FLAG_OPEN,
    HEADER_SIZE,
    MAX_FLOW_ID,
    PING,
    PING_PAYLOAD_SIZE,
    RESET,
)
from ipcclient.wire.muxstate import (
    CREDIT_BATCH_DIVISOR,
    CREDIT_FRAME,
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_INBOUND_FLOWS,
    FRAME_HEADER,
    MAX_PENDING_REPLIES,
    MAX_WINDOW,
    U32,
    FlowState,
    MuxConfig,
    MuxState,
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

_FIN = FLAG_FIN  # DATA is type 0, so a DATA header's first u16 is just its flags
_OPEN = FLAG_OPEN


class Mux(MuxState):
    """One side of a multiplexed connection (see the module docstring for the API)."""

    __slots__ = ()

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
        self._flows[fid] = FlowState(fid, self._peer_initial_window, self._initial_window, False)
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
                out[header_at] = FRAME_HEADER.pack(flags, flow_id, frame_len)
            else:
                header_at = len(out)
                frame_len = n
                out.append(FRAME_HEADER.pack(flags, flow_id, n))
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
                out.append(FRAME_HEADER.pack(flags, flow_id, stop - pos))
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
        self._out.append(FRAME_HEADER.pack(flags, flow_id, 0))
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
        self._out.append(FRAME_HEADER.pack(RESET << 8, flow_id, len(payload)))
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
            self._out.append(CREDIT_FRAME.pack(CREDIT << 8, flow_id, 4, pending))
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
        self._out.append(FRAME_HEADER.pack(PING << 8, 0, PING_PAYLOAD_SIZE) + bytes(payload))

    def close(self, error: errors.IPCError | None = None) -> None:
        """Queue GOAWAY (``error`` or a normal close; with LAST_ID, the highest flow id the
        peer opened that this side took) and end every flow. Afterwards, calls raise
        BadStateError and received bytes are ignored. Does nothing if already closed.
        """
        if self._error is not None:
            return
        self._queue_goaway(error, self._max_peer_id)
        self._terminate(errors.BadStateError("mux: the connection was closed locally"))

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
            tf, fid, n = FRAME_HEADER.unpack_from(data)
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
                        self._queue_reply(FRAME_HEADER.pack(PING << 8 | FLAG_ACK, 0, 8) + payload)
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

    def _on_data_slow(
        self, flow: FlowState | None, flags: int, fid: int, payload: bytes, events: list[Event]
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
            self._queue_reply(FRAME_HEADER.pack(RESET << 8, fid, len(refusal)) + refusal)
            return
        flow = FlowState(fid, self._peer_initial_window, self._initial_window - n, True)
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
        new = credit + U32.unpack(payload)[0]
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
            err = decode_error(payload)
        else:
            err = errors.CanceledError("mux: the peer cancelled the flow")
        self._end(flow)
        events.append(FlowReset(fid, err))

    def _on_goaway(self, flags: int, payload: bytes, events: list[Event]) -> None:
        last_id: int | None = None
        if flags & FLAG_LAST_ID:
            if len(payload) < U32.size:
                raise errors.BadProtocolError("mux: GOAWAY with LAST_ID shorter than 4 bytes")
            last_id = U32.unpack_from(payload)[0]
            payload = payload[U32.size :]
        peer_error = decode_error(payload) if payload else None
        msg = "mux: the peer closed the connection"
        if peer_error is not None:
            msg += (
                f": {peer_error.id}: {peer_error.msg}" if peer_error.msg else f": {peer_error.id}"
            )
        err = errors.ConnectionFailedError(msg)
        err.__cause__ = peer_error
        flow_ids = tuple(self._flows)
        # Ours above LAST_ID, and ours never announced (no OPEN sent: the peer cannot have
        # taken them, whatever its GOAWAY says or leaves unsaid).
        parity = self._own_parity
        above = MAX_FLOW_ID if last_id is None else last_id
        unprocessed = tuple(
            f for f, flow in self._flows.items() if f & 1 == parity and (f > above or flow.unopened)
        )
        self._out.clear()  # nothing may be sent after receiving GOAWAY
        self._tail = None
        self._terminate(err)
        events.append(ConnectionClosed(err, peer_error, flow_ids, last_id, unprocessed))
