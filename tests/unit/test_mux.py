"""The flow multiplexer: every rule of docs/protocol.md section 3, garbage input, and a
stateful model of two endpoints talking through a network that delivers arbitrary prefixes."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ipcclient import codec, errors
from ipcclient.wire import mux as mux_mod
from ipcclient.wire.frames import (
    CREDIT,
    DATA,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_LAST_ID,
    FLAG_OPEN,
    GOAWAY,
    MIN_FRAME_PAYLOAD,
    PING,
    RESET,
    Frame,
    FrameDecoder,
    encode_credit,
    encode_frame,
)
from ipcclient.wire.mux import (
    MAX_PENDING_REPLIES,
    MAX_WINDOW,
    ConnectionClosed,
    CreditAvailable,
    DataReceived,
    Event,
    FlowOpened,
    FlowReset,
    Mux,
    MuxConfig,
    PingAcked,
    PingReceived,
)

WINDOW = 4096


def pair(a_config: MuxConfig | None = None, b_config: MuxConfig | None = None) -> tuple[Mux, Mux]:
    a_config = a_config or MuxConfig(initial_window=WINDOW)
    b_config = b_config or MuxConfig(initial_window=WINDOW)
    a = Mux(
        a_config,
        dialer=True,
        peer_initial_window=b_config.initial_window,
        peer_max_frame_payload=b_config.max_frame_payload,
    )
    b = Mux(
        b_config,
        dialer=False,
        peer_initial_window=a_config.initial_window,
        peer_max_frame_payload=a_config.max_frame_payload,
    )
    return a, b


def pump(src: Mux, dst: Mux) -> list[Event]:
    return dst.receive_data(src.data_to_send())


def frames_of(data: bytes) -> list[Frame]:
    return FrameDecoder(16 * 1024 * 1024).feed(data)


def acceptor() -> Mux:
    """An acceptor talking to a peer we write raw frames for (the peer is the dialer)."""
    return Mux(MuxConfig(initial_window=WINDOW), dialer=False, peer_initial_window=WINDOW)


def raw(ftype: int, flags: int, fid: int, payload: bytes = b"") -> bytes:
    return encode_frame(ftype, flags, fid, payload)


# --- ids and opening ------------------------------------------------------------------------
def test_ids_have_the_side_parity_and_increase() -> None:
    a, b = pair()
    assert [a.open_flow() for _ in range(3)] == [1, 3, 5]
    assert [b.open_flow() for _ in range(3)] == [2, 4, 6]


def test_open_flow_sends_nothing_and_opens_ride_on_first_data() -> None:
    a, _b = pair()
    fid = a.open_flow()
    assert a.data_to_send() == b""
    assert a.live_flow_count == 1
    a.send_data(fid, b"x")
    (frame,) = frames_of(a.data_to_send())
    assert frame == Frame(DATA, FLAG_OPEN, fid, b"x")
    a.send_data(fid, b"y")
    (frame,) = frames_of(a.data_to_send())
    assert frame.flags == 0


def test_opens_go_out_in_id_order_even_if_later_flow_sends_first() -> None:
    a, b = pair()
    f1, f3, f5 = a.open_flow(), a.open_flow(), a.open_flow()
    a.reset_flow(f3)  # never announced: dropped without a frame, leaving a gap
    a.send_data(f5, b"five")
    got = frames_of(a.data_to_send())
    assert got == [Frame(DATA, FLAG_OPEN, f1, b""), Frame(DATA, FLAG_OPEN, f5, b"five")]
    events = b.receive_data(b"".join(raw(f.type, f.flags, f.flow_id, f.payload) for f in got))
    assert events == [FlowOpened(f1), FlowOpened(f5), DataReceived(f5, b"five", False)]
    a.send_data(f1, b"one")
    assert frames_of(a.data_to_send()) == [Frame(DATA, 0, f1, b"one")]


def test_gaps_in_peer_ids_are_allowed() -> None:
    b = acceptor()
    events = b.receive_data(raw(DATA, FLAG_OPEN, 7, b"a") + raw(DATA, FLAG_OPEN, 11, b"b"))
    assert [type(e) for e in events] == [FlowOpened, DataReceived, FlowOpened, DataReceived]
    # Ids skipped by the peer are "late": frames for them are dropped, not errors.
    assert b.receive_data(raw(DATA, 0, 9, b"zz")) == []


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (raw(DATA, FLAG_OPEN, 4, b"x"), "of our parity"),
        (raw(DATA, 0, 2, b"x"), "out of order"),  # ours, allocated but not announced
        (raw(DATA, FLAG_OPEN, 5) + raw(DATA, FLAG_OPEN, 3), "not above its highest"),
        (raw(DATA, FLAG_OPEN, 5) + raw(DATA, FLAG_OPEN, 5), "out of order"),
        (raw(DATA, 0, 1, b"x"), "never opened"),
        (raw(CREDIT, 0, 3, struct.pack(">I", 1)), "never opened"),
        (raw(RESET, 0, 5), "never opened"),
        (raw(DATA, 0, 6, b"x"), "which we never opened"),
        (raw(CREDIT, 0, 4, struct.pack(">I", 1)), "which we never opened"),
        (raw(DATA, FLAG_OPEN | FLAG_FIN, 1) + raw(DATA, 0, 1, b"x"), "after FIN"),
        (raw(DATA, FLAG_OPEN, 1, b"x" * (WINDOW + 1)), "exceed its window"),
        (raw(DATA, FLAG_OPEN, 1, b"x" * WINDOW) + raw(DATA, 0, 1, b"y"), "exceed its window"),
        (raw(RESET, 0, 1), "never opened"),
        (raw(DATA, FLAG_OPEN, 1) + raw(RESET, 0, 1, codec.encode(42)), "not an error"),
        (raw(GOAWAY, 0, 0, b"\xff"), "invalid CBOR"),
        (struct.pack(">BBII", 9, 0, 1, 0), "unknown frame type"),
    ],
)
def test_protocol_violations_are_bad_protocol_and_terminal(wire: bytes, reason: str) -> None:
    b = acceptor()
    fid = b.open_flow()
    with pytest.raises(errors.BadProtocolError, match=reason) as info:
        b.receive_data(wire)
    err = info.value
    assert b.closed and b.error is err and b.live_flow_count == 0
    # The same error again, for input and for every call.
    with pytest.raises(errors.BadProtocolError) as again:
        b.receive_data(b"")
    assert again.value is err
    for call in (
        b.open_flow,
        lambda: b.send_data(fid, b"x"),
        lambda: b.close_send(fid),
        lambda: b.reset_flow(fid),
        lambda: b.ping(b"12345678"),
        lambda: b.send_credit(fid),
    ):
        with pytest.raises(errors.BadProtocolError):
            call()
    # The peer is told why with a GOAWAY carrying the error.
    (goaway,) = frames_of(b.data_to_send())
    assert goaway.type == GOAWAY and goaway.flags == FLAG_LAST_ID
    assert goaway.payload[:4] == bytes(4)  # no flow of the peer's was taken
    assert codec.decode(goaway.payload[4:]) == err
    b.close()  # idempotent once closed


def test_frame_for_own_flow_not_yet_announced_is_bad_protocol() -> None:
    b = acceptor()
    fid = b.open_flow()  # allocated, OPEN not sent
    with pytest.raises(errors.BadProtocolError):
        b.receive_data(raw(CREDIT, 0, fid, struct.pack(">I", 5)))


def test_flow_id_exhaustion_asks_for_a_new_connection() -> None:
    a, _ = pair()
    a._next_id = 2**32 - 1  # the last odd u32
    assert a.open_flow() == 2**32 - 1
    with pytest.raises(errors.ConnectionFailedError) as info:
        a.open_flow()
    assert info.value.action is errors.RetryAction.RETRY_CONNECTION


# --- a whole exchange, and late frames ------------------------------------------------------
def test_unary_exchange_costs_two_frames_no_credit_and_leaves_nothing() -> None:
    a, b = pair()
    fid = a.open_flow()
    assert a.send_data(fid, b"hello", end=True) == 5
    request = a.data_to_send()
    assert request == bytes.fromhex("0003 00000001 00000005") + b"hello"
    assert b.receive_data(request) == [FlowOpened(fid), DataReceived(fid, b"hello", True)]
    b.acknowledge(fid, 5)
    assert b.send_data(fid, b"world", end=True) == 5
    reply = b.data_to_send()
    assert reply == bytes.fromhex("0001 00000001 00000005") + b"world"
    assert b.live_flow_count == 0
    assert a.receive_data(reply) == [DataReceived(fid, b"world", True)]
    a.acknowledge(fid, 5)  # after the end: a no-op, not an error
    assert a.live_flow_count == 0 and not a.has_data_to_send
    assert not a.is_live(fid) and not b.is_live(fid)


def test_bulk_unary_of_a_whole_window_needs_no_credit() -> None:
    a, b = pair()
    fid = a.open_flow()
    assert a.send_data(fid, os.urandom(WINDOW), end=True) == WINDOW
    events = pump(a, b)
    received = sum(len(e.data) for e in events if isinstance(e, DataReceived))
    b.acknowledge(fid, received)
    assert all(f.type != CREDIT for f in frames_of(b.data_to_send()))


def test_late_reply_to_a_cancelled_call_reaches_no_other_call() -> None:
    a, b = pair()
    first = a.open_flow()
    a.send_data(first, b"call 1", end=True)
    pump(a, b)
    b.send_data(first, b"reply 1")  # queued at b, crosses the RESET on the wire
    a.reset_flow(first)  # the client cancels
    second = a.open_flow()
    a.send_data(second, b"call 2", end=True)
    assert pump(a, b) == [
        FlowReset(first, errors.CanceledError("mux: the peer cancelled the flow")),
        FlowOpened(second),
        DataReceived(second, b"call 2", True),
    ]
    b.send_data(second, b"reply 2", end=True)
    assert a.receive_data(b.data_to_send()) == [DataReceived(second, b"reply 2", True)]
    # CREDIT and RESET for the dead flow are dropped too.
    assert a.receive_data(encode_credit(first, 10) + raw(RESET, 0, first)) == []
    assert a.live_flow_count == 0 and b.live_flow_count == 0


def test_half_close_lets_the_other_direction_continue() -> None:
    a, b = pair()
    fid = a.open_flow()
    a.close_send(fid)
    a.close_send(fid)  # idempotent
    assert frames_of(a.data_to_send()) == [Frame(DATA, FLAG_OPEN | FLAG_FIN, fid, b"")]
    b.receive_data(raw(DATA, FLAG_OPEN | FLAG_FIN, fid))
    with pytest.raises(errors.BadStateError):
        a.send_data(fid, b"more")
    for chunk in (b"one", b"two"):
        b.send_data(fid, chunk)
        assert pump(b, a) == [DataReceived(fid, chunk, False)]
    assert a.is_live(fid) and b.is_live(fid)
    b.close_send(fid)
    assert pump(b, a) == [DataReceived(fid, b"", True)]
    assert a.live_flow_count == 0 and b.live_flow_count == 0
    with pytest.raises(errors.BadStateError):
        b.close_send(fid)


# --- flow control ---------------------------------------------------------------------------
def test_send_data_accepts_at_most_the_credit_and_defers_fin() -> None:
    a, b = pair(b_config=MuxConfig(initial_window=1000))
    fid = a.open_flow()
    assert a.send_credit(fid) == 1000
    data = (bytes(range(256)) * 5)[:1250]
    assert a.send_data(fid, data, end=True) == 1000
    assert a.send_credit(fid) == 0
    assert a.send_data(fid, data[1000:], end=True) == 0  # nothing, not even FIN
    got = pump(a, b)
    assert got == [FlowOpened(fid), DataReceived(fid, data[:1000], False)]
    b.acknowledge(fid, 249)  # below a quarter of 1000: no CREDIT yet
    assert b.data_to_send() == b""
    b.acknowledge(fid, 1)
    assert frames_of(b.data_to_send()) == [Frame(CREDIT, 0, fid, struct.pack(">I", 250))]
    assert a.receive_data(encode_credit(fid, 250)) == [CreditAvailable(fid)]
    assert a.send_credit(fid) == 250
    assert a.send_data(fid, data[1000:], end=True) == len(data) - 1000
    assert pump(a, b) == [DataReceived(fid, data[1000:], True)]


def test_acknowledge_checks_and_no_credit_after_fin() -> None:
    a, b = pair()
    fid = a.open_flow()
    a.send_data(fid, b"x" * 2000, end=True)
    pump(a, b)
    with pytest.raises(errors.BadArgError):
        b.acknowledge(fid, 2001)
    with pytest.raises(errors.BadArgError):
        b.acknowledge(fid, -1)
    b.acknowledge(fid, 2000)  # the peer has finished sending: no CREDIT is useful
    assert b.data_to_send() == b""
    b.acknowledge(99, 5)  # never-seen or ended flows: nothing to do


def test_credit_overflowing_the_window_is_bad_protocol() -> None:
    a, _b = pair()
    fid = a.open_flow()
    a.send_data(fid, b"x")
    a.data_to_send()
    a.receive_data(encode_credit(fid, MAX_WINDOW - WINDOW + 1))  # exactly MAX_WINDOW
    assert a.send_credit(fid) == MAX_WINDOW
    with pytest.raises(errors.BadProtocolError, match="overflows"):
        a.receive_data(encode_credit(fid, 1))


def test_credit_after_our_fin_is_accepted_without_event() -> None:
    a, _b = pair(b_config=MuxConfig(initial_window=10))
    fid = a.open_flow()
    assert a.send_data(fid, b"x" * 10, end=True) == 10
    with pytest.raises(errors.BadStateError):
        a.send_data(fid, b"", end=True)
    assert a.receive_data(encode_credit(fid, 10)) == []


def test_large_data_is_split_to_the_peers_max_frame_payload() -> None:
    big = MuxConfig(initial_window=1 << 20, max_frame_payload=1 << 20)
    small = MuxConfig(initial_window=1 << 20, max_frame_payload=MIN_FRAME_PAYLOAD)
    a, b = pair(a_config=big, b_config=small)
    fid = a.open_flow()
    data = os.urandom(3 * MIN_FRAME_PAYLOAD + 5)
    mutable = bytearray(data)
    assert a.send_data(fid, data) == len(data)
    assert a.send_data(fid, memoryview(data)) == len(data)
    assert a.send_data(fid, mutable, end=True) == len(data)
    mutable[:] = b"\0" * len(mutable)  # a copy was taken: mutating now changes nothing
    assert a.has_data_to_send
    wire = a.data_to_send()
    assert a.data_to_send() == b""
    got = frames_of(wire)
    assert [len(f.payload) for f in got] == [1024, 1024, 1024, 5] * 3
    assert [f.flags for f in got] == [FLAG_OPEN] + [0] * 10 + [FLAG_FIN]
    events = b.receive_data(wire)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == data * 3
    assert isinstance(events[-1], DataReceived) and events[-1].end
    # The other direction goes out in frames of up to the dialer's larger maximum.
    b.send_data(fid, data, end=True)
    assert [len(f.payload) for f in frames_of(b.data_to_send())] == [len(data)]


def test_small_writes_from_any_buffer_kind() -> None:
    a, b = pair()
    fid = a.open_flow()
    mutable = bytearray(b"abcdef")
    assert a.send_data(fid, memoryview(mutable)) == 6
    assert a.send_data(fid, memoryview(b"ghij")[1:3]) == 2
    assert a.send_data(fid, b"") == 0  # nothing to send, nothing queued
    mutable[:] = b"zzzzzz"
    events = pump(a, b)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"abcdefhi"


def test_partial_send_above_frame_size_defers_fin() -> None:
    small = MuxConfig(initial_window=1500, max_frame_payload=MIN_FRAME_PAYLOAD)
    a, _b = pair(a_config=small, b_config=small)
    fid = a.open_flow()
    assert a.send_data(fid, b"z" * 3000, end=True) == 1500
    got = frames_of(a.data_to_send())
    assert [(len(f.payload), f.flags) for f in got] == [(1024, FLAG_OPEN), (476, 0)]
    assert a.is_live(fid)


# --- reset ----------------------------------------------------------------------------------
def test_reset_with_and_without_error() -> None:
    a, b = pair()
    f1, f3 = a.open_flow(), a.open_flow()
    a.send_data(f1, b"a")
    a.send_data(f3, b"b")
    pump(a, b)
    b.reset_flow(f1, errors.NoAccessError("go away", "param"))
    b.reset_flow(f3)
    b.reset_flow(f3)  # already ended: nothing
    assert b.live_flow_count == 0
    events = pump(b, a)
    assert events == [
        FlowReset(f1, errors.NoAccessError("go away", "param")),
        FlowReset(f3, errors.CanceledError("mux: the peer cancelled the flow")),
    ]
    assert isinstance(events[0], FlowReset) and isinstance(events[0].error, errors.NoAccessError)
    assert a.live_flow_count == 0
    with pytest.raises(errors.BadStateError):
        a.send_data(f1, b"x")
    with pytest.raises(errors.BadStateError):
        a.close_send(f3)
    with pytest.raises(errors.BadStateError):
        a.send_credit(f1)


def test_reset_before_open_sends_nothing() -> None:
    a, _ = pair()
    fid = a.open_flow()
    a.reset_flow(fid, errors.CanceledError("x"))
    assert a.data_to_send() == b"" and a.live_flow_count == 0


def test_oversized_or_unencodable_errors_are_shortened_to_fit() -> None:
    small = MuxConfig(initial_window=WINDOW, max_frame_payload=MIN_FRAME_PAYLOAD)
    a, b = pair(b_config=small)
    f1, f3 = a.open_flow(), a.open_flow()
    a.send_data(f1, b"a")
    a.send_data(f3, b"b")
    pump(a, b)
    a.reset_flow(f1, errors.InternalError("\u20ac" * 100_000))
    a.reset_flow(f3, errors.InternalError("bad params", object()))
    events = pump(a, b)
    assert [type(e) for e in events] == [FlowReset, FlowReset]
    first, second = (e.error for e in events if isinstance(e, FlowReset))
    assert isinstance(first, errors.InternalError) and first.msg == "\u20ac" * 128
    assert isinstance(second, errors.InternalError) and second.msg == "bad params"
    assert second.params == ()


# --- inbound limit --------------------------------------------------------------------------
def test_inbound_flow_limit_refuses_with_overloaded_not_a_connection_error() -> None:
    a, b = pair(b_config=MuxConfig(initial_window=WINDOW, max_inbound_flows=2))
    f1, f3, f5 = a.open_flow(), a.open_flow(), a.open_flow()
    for fid in (f1, f3, f5):
        a.send_data(fid, b"req")
    events = pump(a, b)
    assert [e for e in events if isinstance(e, FlowOpened)] == [FlowOpened(f1), FlowOpened(f3)]
    assert all(e.flow_id != f5 for e in events if isinstance(e, DataReceived))
    (refusal,) = pump(b, a)
    assert isinstance(refusal, FlowReset) and refusal.flow_id == f5
    assert isinstance(refusal.error, errors.OverloadedError)
    assert refusal.error.action is errors.RetryAction.RETRY_BACKOFF
    # Frames that were in flight for the refused flow are late, not errors.
    assert b.receive_data(raw(DATA, FLAG_FIN, f5, b"rest")) == []
    # Once a flow ends, a new one is accepted.
    b.reset_flow(f1)
    f7 = a.open_flow()
    a.send_data(f7, b"again")
    assert pump(a, b)[0] == FlowOpened(f7)
    assert b.live_flow_count == 2 and not b.closed


def test_zero_inbound_flows_refuses_everything() -> None:
    a, b = pair(b_config=MuxConfig(initial_window=WINDOW, max_inbound_flows=0))
    fid = a.open_flow()
    a.send_data(fid, b"x", end=True)
    assert pump(a, b) == []
    (event,) = pump(b, a)
    assert isinstance(event, FlowReset) and isinstance(event.error, errors.OverloadedError)


# --- ping -----------------------------------------------------------------------------------
def test_ping_is_answered_with_the_same_payload() -> None:
    a, b = pair()
    a.ping(b"abcdefgh")
    assert frames_of(a.data_to_send()) == [Frame(PING, 0, 0, b"abcdefgh")]
    a.ping(b"abcdefgh")
    assert pump(a, b) == [PingReceived(b"abcdefgh")]
    assert frames_of(b.data_to_send()) == [Frame(PING, FLAG_ACK, 0, b"abcdefgh")]
    b.receive_data(raw(PING, 0, 0, b"12345678"))
    assert pump(b, a) == [PingAcked(b"12345678")]
    with pytest.raises(errors.BadArgError):
        a.ping(b"short")


def test_ping_flood_is_bad_protocol() -> None:
    b = acceptor()
    one = raw(PING, 0, 0, b"floodfld")
    b.receive_data(one * MAX_PENDING_REPLIES)
    assert len(b.data_to_send()) == MAX_PENDING_REPLIES * 18  # draining resets the count
    b.receive_data(one * MAX_PENDING_REPLIES)
    with pytest.raises(errors.BadProtocolError, match="replies"):
        b.receive_data(one)


# --- goaway ---------------------------------------------------------------------------------
def test_goaway_with_error_ends_every_flow_on_both_sides() -> None:
    a, b = pair()
    f1, f3 = a.open_flow(), a.open_flow()
    a.send_data(f1, b"x")
    a.send_data(f3, b"y")
    pump(a, b)
    b.send_data(f1, b"queued but never sent")
    a.close(errors.InternalError("shutting down"))
    a.close()  # idempotent
    assert a.closed and a.live_flow_count == 0
    with pytest.raises(errors.BadStateError):
        a.open_flow()
    with pytest.raises(errors.BadStateError):
        a.send_data(f1, b"x")
    (event,) = pump(a, b)
    assert isinstance(event, ConnectionClosed)
    assert event.flow_ids == (f1, f3)
    assert event.peer_error == errors.InternalError("shutting down")
    assert isinstance(event.error, errors.ConnectionFailedError)
    assert "shutting down" in event.error.msg
    assert b.live_flow_count == 0 and b.closed and b.error is event.error
    assert b.data_to_send() == b""  # nothing is sent after receiving GOAWAY
    with pytest.raises(errors.ConnectionFailedError):
        b.send_data(f1, b"x")
    assert b.receive_data(b"anything at all") == []
    assert a.receive_data(b"\xff" * 20) == []  # a closed side ignores input


def test_normal_goaway_and_frames_after_it_are_ignored() -> None:
    b = acceptor()
    b.receive_data(raw(DATA, FLAG_OPEN, 1, b"x"))
    events = b.receive_data(raw(GOAWAY, 0, 0) + raw(DATA, 0, 1, b"after"))
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].peer_error is None and events[0].flow_ids == (1,)
    assert events[0].error.msg == "mux: the peer closed the connection"


def test_goaway_with_empty_message_names_the_id() -> None:
    b = acceptor()
    (event,) = b.receive_data(raw(GOAWAY, 0, 0, codec.encode(errors.TimeoutError())))
    assert isinstance(event, ConnectionClosed)
    assert event.error.msg.endswith(": ipc.Timeout")


_COMPOUND_KEYS = {(i,): 0 for i in range(65)}  # 279 bytes; a peer takes at most 64 such keys


@pytest.mark.parametrize(
    ("param", "b_frame"),
    [(_COMPOUND_KEYS, 64 * 1024), (b"x" * (5 * 1024 * 1024), 16 * 1024 * 1024)],
    ids=["65-container-keys", "5MiB-param-16MiB-frames"],
)
def test_a_reset_whose_error_the_peer_would_refuse_ends_only_its_flow(
    param: object, b_frame: int
) -> None:
    """An error whose params encode but break the peer's decoder limits (more map keys that
    are containers than it takes, a message over its size limit) goes as a stand-in: sent
    as it was, the peer took it for a protocol error and ended the whole VC."""
    a, b = pair(MuxConfig(), MuxConfig(max_frame_payload=b_frame))
    f1, f3 = a.open_flow(), a.open_flow()
    a.send_data(f1, b"req1")
    a.send_data(f3, b"req3")
    pump(a, b)
    a.reset_flow(f1, errors.AbortedError("the caller gave up", param))
    (event,) = pump(a, b)
    assert isinstance(event, FlowReset) and event.flow_id == f1
    assert isinstance(event.error, errors.AbortedError) and "the caller gave up" in event.error.msg
    assert b.is_live(f3) and not b.closed


def test_a_goaway_whose_error_the_peer_would_refuse_keeps_its_last_id() -> None:
    a, b = pair()
    pushed = b.open_flow()
    b.send_data(pushed, b"push")
    pump(b, a)
    mine = a.open_flow()
    a.send_data(mine, b"request")
    a.data_to_send()  # (lost: b never sees it)
    b.close(errors.InternalError("shutting down", _COMPOUND_KEYS))
    (event,) = pump(b, a)
    assert isinstance(event, ConnectionClosed)
    assert event.peer_error is not None and isinstance(event.peer_error, errors.InternalError)
    assert event.last_flow_id == 0 and event.unprocessed == (mine,)


@pytest.mark.parametrize("last_id", [None, 0xFFFF_FFFF], ids=["no-LAST_ID", "LAST_ID-above"])
def test_a_flow_never_announced_is_unprocessed_whatever_the_goaway_says(
    last_id: int | None,
) -> None:
    """A flow this side allocated but never sent an OPEN for cannot have reached the peer:
    it is reported unprocessed (retried at once) with no LAST_ID or a LAST_ID above it."""
    a, _b = pair()
    sent = a.open_flow()
    a.send_data(sent, b"request")
    a.data_to_send()
    idle = a.open_flow()  # (connected, nothing written yet)
    goaway = (
        raw(GOAWAY, 0, 0)
        if last_id is None
        else raw(GOAWAY, FLAG_LAST_ID, 0, struct.pack(">I", last_id))
    )
    (event,) = a.receive_data(goaway)
    assert isinstance(event, ConnectionClosed)
    assert set(event.flow_ids) == {sent, idle}
    assert event.unprocessed == (idle,)


# --- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_window": 0},
        {"initial_window": MAX_WINDOW + 1},
        {"max_frame_payload": MIN_FRAME_PAYLOAD - 1},
        {"max_frame_payload": 16 * 1024 * 1024 + 1},
        {"max_inbound_flows": -1},
    ],
)
def test_config_ranges(kwargs: dict[str, int]) -> None:
    with pytest.raises(errors.BadArgError):
        MuxConfig(**kwargs)


def test_constructor_ranges_and_defaults() -> None:
    with pytest.raises(errors.BadArgError):
        Mux(dialer=True, peer_initial_window=0)
    with pytest.raises(errors.BadArgError):
        Mux(dialer=True, peer_initial_window=1, peer_max_frame_payload=10)
    m = Mux(dialer=True, peer_initial_window=1)
    assert m.config == MuxConfig()
    assert (m.config.initial_window, m.config.max_frame_payload) == (1 << 20, 65536)
    assert m.config.max_inbound_flows == 1024 and not m.closed and m.error is None
    assert mux_mod.CREDIT_BATCH_DIVISOR == 4


# --- garbage --------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6), st.booleans())
def test_random_bytes_give_events_or_bad_protocol(chunks: list[bytes], opened: bool) -> None:
    b = acceptor()
    prefix = raw(DATA, FLAG_OPEN, 1, b"hi") if opened else b""
    try:
        for chunk in [prefix, *chunks]:
            events = b.receive_data(chunk)
            assert all(isinstance(e, Event) for e in events)
    except errors.BadProtocolError:
        assert b.closed and b.live_flow_count == 0


# --- two endpoints, a network, and a slow app: the stateful model ---------------------------
PATTERN = os.urandom(8192)
MAX_WRITE = 3000


class AppFlow:
    """What the app on one side knows about one flow."""

    def __init__(self) -> None:
        self.outbox = bytearray()  # written by the app, not yet accepted by the mux
        self.want_end = False
        self.send_closed = False  # FIN accepted by the mux
        self.received = bytearray()
        self.acked = 0
        self.got_end = False


class Side:
    def __init__(self, name: str, mux: Mux, window: int) -> None:
        self.name = name
        self.mux = mux
        self.window = window
        self.flows: dict[int, AppFlow] = {}  # flows the app still tracks (not reset)
        self.dead: set[int] = set()  # reset or ended by a connection close
        self.wire = bytearray()  # bytes taken from the mux, not yet delivered to the peer
        self.pings: list[bytes] = []
        self.closed = False


class TwoEndpoints(RuleBasedStateMachine):
    """A dialer and an acceptor back to back. Invariants: every byte arrives once and in
    order per flow until a reset; no flow holds more unacknowledged bytes than its window;
    nothing is delivered for a reset flow; all flows are gone once everything is finished."""

    def __init__(self) -> None:
        super().__init__()
        self.sides: tuple[Side, Side] | None = None
        self.sent: dict[tuple[str, int], bytearray] = {}  # (sender, flow) -> accepted bytes
        self.ping_count = 0

    @initialize(
        win_a=st.integers(1, 4000),
        win_b=st.integers(1, 4000),
        limit_a=st.integers(1, 4),
        limit_b=st.integers(1, 4),
    )
    def setup(self, win_a: int, win_b: int, limit_a: int, limit_b: int) -> None:
        ca = MuxConfig(initial_window=win_a, max_frame_payload=1024, max_inbound_flows=limit_a)
        cb = MuxConfig(initial_window=win_b, max_frame_payload=1024, max_inbound_flows=limit_b)
        a, b = pair(ca, cb)
        self.sides = (Side("a", a, win_a), Side("b", b, win_b))

    # helpers
    def both(self) -> tuple[Side, Side]:
        assert self.sides is not None
        return self.sides

    def peer(self, side: Side) -> Side:
        a, b = self.both()
        return b if side is a else a

    def pick(self, side: Side, index: int, *, writable: bool = False) -> int | None:
        fids = sorted(
            fid
            for fid, af in side.flows.items()
            if side.mux.is_live(fid) and (not writable or not af.want_end)
        )
        return fids[index % len(fids)] if fids else None

    def flush(self, side: Side, fid: int) -> None:
        af = side.flows[fid]
        if af.send_closed:
            return
        n = side.mux.send_data(fid, bytes(af.outbox), end=af.want_end)
        assert 0 <= n <= len(af.outbox)
        self.sent.setdefault((side.name, fid), bytearray()).extend(af.outbox[:n])
        del af.outbox[:n]
        if af.want_end and not af.outbox:
            af.send_closed = True

    def deliver(self, src: Side, nbytes: int) -> None:
        dst = self.peer(src)
        chunk = bytes(src.wire[:nbytes])
        del src.wire[:nbytes]
        for event in dst.mux.receive_data(chunk):
            self.handle(dst, event)

    def handle(self, side: Side, event: Event) -> None:
        peer = self.peer(side)
        if isinstance(event, FlowOpened):
            assert event.flow_id not in side.flows and event.flow_id not in side.dead
            assert event.flow_id % 2 == (0 if side.name == "a" else 1)
            side.flows[event.flow_id] = AppFlow()
        elif isinstance(event, DataReceived):
            af = side.flows[event.flow_id]  # KeyError = data for a reset/unknown flow
            assert not af.got_end
            af.received += event.data
            stream = self.sent[(peer.name, event.flow_id)]
            assert af.received == stream[: len(af.received)], "bytes out of order or lost"
            assert len(af.received) - af.acked <= side.window
            if event.end:
                af.got_end = True
                assert af.received == stream, "FIN before all bytes"
        elif isinstance(event, FlowReset):
            assert event.flow_id in side.flows
            assert isinstance(event.error, errors.IPCError)
            del side.flows[event.flow_id]
            side.dead.add(event.flow_id)
        elif isinstance(event, CreditAvailable):
            # Events describe the past: a later frame of the same batch may have ended the
            # flow (a RESET after the CREDIT), so a writer checks before writing.
            if event.flow_id in side.flows and side.mux.is_live(event.flow_id):
                self.flush(side, event.flow_id)
        elif isinstance(event, PingReceived):
            pass
        elif isinstance(event, PingAcked):
            side.pings.remove(event.payload)
        else:
            assert isinstance(event, ConnectionClosed)
            side.closed = True
            side.dead.update(side.flows)
            side.flows.clear()

    def transmit(self) -> None:
        for side in self.both():
            side.wire += side.mux.data_to_send()

    # rules
    @rule(who=st.integers(0, 1))
    def open_flow(self, who: int) -> None:
        side = self.both()[who]
        if side.closed:
            return
        side.flows[side.mux.open_flow()] = AppFlow()

    @rule(who=st.integers(0, 1), index=st.integers(0, 20), size=st.integers(0, MAX_WRITE))
    def write(self, who: int, index: int, size: int) -> None:
        side = self.both()[who]
        fid = self.pick(side, index, writable=True)
        if fid is None or side.closed:
            return
        af = side.flows[fid]
        start = (len(self.sent.get((side.name, fid), b"")) + len(af.outbox) + fid) % 4096
        af.outbox += PATTERN[start : start + size]
        self.flush(side, fid)

    @rule(who=st.integers(0, 1), index=st.integers(0, 20))
    def close_send(self, who: int, index: int) -> None:
        side = self.both()[who]
        fid = self.pick(side, index, writable=True)
        if fid is None or side.closed:
            return
        side.flows[fid].want_end = True
        self.flush(side, fid)

    @rule(who=st.integers(0, 1), index=st.integers(0, 20), with_error=st.booleans())
    def reset(self, who: int, index: int, with_error: bool) -> None:
        side = self.both()[who]
        fid = self.pick(side, index)
        if fid is None or side.closed:
            return
        side.mux.reset_flow(fid, errors.AbortedError("app reset") if with_error else None)
        del side.flows[fid]
        side.dead.add(fid)
        assert not side.mux.is_live(fid)

    @rule(who=st.integers(0, 1), index=st.integers(0, 20), amount=st.integers(0, 5000))
    def consume(self, who: int, index: int, amount: int) -> None:
        side = self.both()[who]
        if not side.flows:
            return
        fids = sorted(side.flows)
        af = side.flows[fids[index % len(fids)]]
        n = min(amount, len(af.received) - af.acked)
        side.mux.acknowledge(fids[index % len(fids)], n)
        af.acked += n

    @rule(who=st.integers(0, 1))
    def ping(self, who: int) -> None:
        side = self.both()[who]
        if side.closed:
            return
        self.ping_count += 1
        payload = self.ping_count.to_bytes(8, "big")
        side.mux.ping(payload)
        side.pings.append(payload)

    @rule(who=st.integers(0, 1), fraction=st.floats(0, 1))
    def network(self, who: int, fraction: float) -> None:
        self.transmit()
        side = self.both()[who]
        self.deliver(side, int(len(side.wire) * fraction))

    @rule(who=st.integers(0, 1), dice=st.integers(0, 15), with_error=st.booleans())
    def close_connection(self, who: int, dice: int, with_error: bool) -> None:
        side = self.both()[who]
        if dice or side.closed:
            return
        side.mux.close(errors.InternalError("bye") if with_error else None)
        side.closed = True
        side.dead.update(side.flows)
        side.flows.clear()
        assert side.mux.live_flow_count == 0

    @precondition(lambda self: self.sides is not None)
    @invariant()
    def windows_are_respected(self) -> None:
        for side in self.both():
            for fid, flow in side.mux._flows.items():
                window = side.window
                assert flow.recv_window + flow.unread + flow.pending_credit == window
                assert 0 <= flow.unread <= window and flow.send_credit >= 0
                af = side.flows[fid]  # every live mux flow is known to the app
                assert flow.unread == len(af.received) - af.acked
            assert side.mux.live_flow_count <= len(side.flows)

    def teardown(self) -> None:
        if self.sides is None:
            return
        a, b = self.sides
        # Bounded by what is left to move: with 1-byte windows each byte takes a round trip
        # of its own (data, then the credit back), so a fixed bound is too small for a
        # large write and too large for a small one.
        queued = sum(len(af.outbox) for side in (a, b) for af in side.flows.values())
        rounds = 100 + 4 * (queued + sum(len(stream) for stream in self.sent.values()))
        for _ in range(rounds):
            for side in (a, b):
                for fid in list(side.flows):
                    af = side.flows.get(fid)
                    if af is None or not side.mux.is_live(fid):
                        continue
                    if not af.want_end:
                        af.want_end = True
                    self.flush(side, fid)
            self.transmit()
            if not a.wire and not b.wire:
                break
            self.deliver(a, len(a.wire))
            self.deliver(b, len(b.wire))
            for side in (a, b):
                for fid, af in side.flows.items():
                    side.mux.acknowledge(fid, len(af.received) - af.acked)
                    af.acked = len(af.received)
        else:  # pragma: no cover - a failure, not a path
            raise AssertionError("the two sides did not settle")
        assert a.mux.live_flow_count == 0 and b.mux.live_flow_count == 0
        if a.closed or b.closed:
            assert a.mux.closed and b.mux.closed
            return
        assert not a.pings and not b.pings
        for side in (a, b):
            peer = self.peer(side)
            for fid, af in side.flows.items():
                assert af.got_end and af.send_closed
                assert af.received == self.sent.get((peer.name, fid), b"")


TwoEndpoints.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_two_endpoints = TwoEndpoints.TestCase


# --- small writes queued together share a frame ---------------------------------------------
def test_writes_queued_back_to_back_on_a_flow_grow_one_frame() -> None:
    a, b = pair()
    one, two = a.open_flow(), a.open_flow()
    for i in range(3):
        a.send_data(one, b"item%d" % i)
    a.send_data(two, b"other")  # another flow's frame ends the run
    a.send_data(one, b"late")
    a.send_data(one, b"", end=True)  # FIN joins the run too
    wire = a.data_to_send()
    assert [(f.flow_id, f.flags, f.payload) for f in frames_of(wire)] == [
        (one, FLAG_OPEN, b"item0item1item2"),
        (two, FLAG_OPEN, b"other"),
        (one, FLAG_FIN, b"late"),
    ]
    assert b.receive_data(wire)[1] == DataReceived(one, b"item0item1item2", False)
    a.send_data(two, b"x")  # after the queue was taken nothing is merged into sent frames
    a.ping(b"12345678")  # nor across another frame
    a.send_data(two, b"y")
    assert [f.payload for f in frames_of(a.data_to_send())] == [b"x", b"12345678", b"y"]


def test_a_grown_frame_never_exceeds_the_peers_max_payload() -> None:
    small = MuxConfig(max_frame_payload=MIN_FRAME_PAYLOAD)
    a, _b = pair(b_config=small)
    fid = a.open_flow()
    for _ in range(5):
        a.send_data(fid, b"z" * 400)
    sizes = [len(f.payload) for f in frames_of(a.data_to_send())]
    assert sizes == [800, 800, 400]
    assert max(sizes) <= MIN_FRAME_PAYLOAD


# --- the one-frame fast path of receive_data -------------------------------------------------
_ONE_FRAME = st.tuples(
    st.sampled_from([DATA, DATA, DATA, CREDIT, RESET]),
    st.sampled_from([0, FLAG_FIN, FLAG_OPEN, FLAG_OPEN | FLAG_FIN]),
    st.sampled_from([1, 3, 5, 2]),
    st.integers(min_value=0, max_value=WINDOW + 8),
)


@given(frames=st.lists(_ONE_FRAME, min_size=1, max_size=12))
@settings(max_examples=300, deadline=None)
def test_a_chunk_of_one_data_frame_takes_the_short_way_to_the_same_result(
    frames: list[tuple[int, int, int, int]],
) -> None:
    """``receive_data`` of a ``bytes`` chunk holding exactly one DATA frame skips the frame
    decoder; a ``bytearray`` chunk never does. Both must give the same events, errors and
    state for any frame sequence, valid or not."""
    fast, slow = acceptor(), acceptor()
    for ftype, flags, fid, size in frames:
        payload = b"\x00\x00\x10\x00" if ftype == CREDIT else bytes(size)
        if ftype != DATA:
            flags = 0
        wire = struct.pack(">BBII", ftype, flags, fid, len(payload)) + payload
        outcomes = []
        for mux, chunk in ((fast, wire), (slow, bytearray(wire))):
            try:
                outcomes.append(("events", mux.receive_data(chunk)))
            except errors.IPCError as exc:
                outcomes.append(("error", (exc.id, exc.msg)))
        assert outcomes[0] == outcomes[1]
        assert fast.live_flow_count == slow.live_flow_count
        assert fast.data_to_send() == slow.data_to_send()
        for live in (1, 3, 5):
            assert fast.is_live(live) == slow.is_live(live)
            if fast.is_live(live):
                f, s = fast._flows[live], slow._flows[live]
                assert (f.recv_window, f.unread, f.recv_closed, f.send_closed) == (
                    s.recv_window,
                    s.unread,
                    s.recv_closed,
                    s.send_closed,
                )


def test_one_data_frame_on_a_dialed_flow_ends_it_when_both_sides_are_done() -> None:
    a, b = pair()
    fid = a.open_flow()
    a.send_data(fid, b"ask", end=True)
    b.receive_data(a.data_to_send())
    b.send_data(fid, b"answer", end=True)
    reply = b.data_to_send()
    assert isinstance(reply, bytes)
    assert a.receive_data(reply) == [DataReceived(fid, b"answer", True)]
    assert not a.is_live(fid)
    # A second FIN on the ended flow is late, not an error (our id, already opened).
    assert a.receive_data(reply) == []
