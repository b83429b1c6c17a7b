"""Frames: byte layout, round trips under any chunking, and refusal of malformed headers."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import errors
from ipcclient.wire import frames
from ipcclient.wire.frames import (
    CREDIT,
    DATA,
    DEFAULT_MAX_FRAME_PAYLOAD,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_OPEN,
    GOAWAY,
    HEADER_SIZE,
    MAX_FRAME_PAYLOAD_LIMIT,
    MIN_FRAME_PAYLOAD,
    PING,
    RESET,
    Frame,
    FrameDecoder,
    encode_credit,
    encode_frame,
)

MAX = MIN_FRAME_PAYLOAD  # a small receiver maximum keeps generated payloads cheap

flow_ids = st.integers(1, 2**32 - 1)
payloads = st.binary(max_size=300)


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from([DATA, CREDIT, RESET, PING, GOAWAY]))
    if kind == DATA:
        flags = draw(st.sampled_from([0, FLAG_FIN, FLAG_OPEN, FLAG_FIN | FLAG_OPEN]))
        return Frame(DATA, flags, draw(flow_ids), draw(payloads))
    if kind == CREDIT:
        inc = draw(st.integers(1, 2**32 - 1))
        return Frame(CREDIT, 0, draw(flow_ids), struct.pack(">I", inc))
    if kind == RESET:
        return Frame(RESET, 0, draw(flow_ids), draw(payloads))
    if kind == PING:
        flags = draw(st.sampled_from([0, FLAG_ACK]))
        return Frame(PING, flags, 0, draw(st.binary(min_size=8, max_size=8)))
    return Frame(GOAWAY, 0, 0, draw(payloads))


def encode(frame: Frame) -> bytes:
    return encode_frame(frame.type, frame.flags, frame.flow_id, frame.payload)


def test_header_layout_byte_by_byte() -> None:
    wire = encode_frame(DATA, FLAG_OPEN | FLAG_FIN, 0x01020304, b"hi")
    assert wire == bytes([0x00, 0x03, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x02]) + b"hi"
    assert len(wire) == HEADER_SIZE + 2
    assert encode_credit(7, 0x10000) == bytes.fromhex("0100 00000007 00000004 00010000")
    ping = encode_frame(PING, FLAG_ACK, 0, b"12345678")
    assert ping == bytes.fromhex("0301 00000000 00000008") + b"12345678"
    assert encode_frame(GOAWAY, 0, 0) == bytes.fromhex("0400 00000000 00000000")
    assert encode_frame(RESET, 0, 9) == bytes.fromhex("0200 00000009 00000000")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(valid_frames(), max_size=12),
    st.lists(st.integers(0, 5000), max_size=20),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_round_trip_under_any_chunking(
    frame_list: list[Frame], cuts: list[int], kind: type[bytes | bytearray | memoryview]
) -> None:
    wire = b"".join(encode(f) for f in frame_list)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    decoder = FrameDecoder(MAX)
    out: list[Frame] = []
    for start, stop in itertools.pairwise(points):
        out.extend(decoder.feed(kind(wire[start:stop])))
    # (Up to the first GOAWAY: the last frame of a stream, what follows it is ignored.)
    ends = [i for i, f in enumerate(frame_list) if f.type == GOAWAY]
    expected = frame_list[: ends[0] + 1] if ends else frame_list
    assert out == expected
    assert decoder.buffered == 0
    assert all(type(f.payload) is bytes for f in out)
    # All at once gives the same frames.
    assert FrameDecoder(MAX).feed(wire) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 50))
def test_random_bytes_give_frames_or_bad_protocol(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(MAX)
    got: list[Frame] = []
    try:
        for i in range(0, len(data), chunk):
            got.extend(decoder.feed(data[i : i + chunk]))
    except errors.BadProtocolError:
        with pytest.raises(errors.BadProtocolError):
            decoder.feed(b"")
        return
    # Every frame handed out is valid and is exactly a prefix of the input; a GOAWAY only
    # last, with nothing kept after it.
    rebuilt = b"".join(encode(f) for f in got)
    assert data.startswith(rebuilt)
    assert all(f.type != GOAWAY for f in got[:-1])
    ended = bool(got) and got[-1].type == GOAWAY
    assert decoder.buffered == (0 if ended else len(data) - len(rebuilt))


@pytest.mark.parametrize(
    "after",
    [
        b"\xff" * HEADER_SIZE,  # an unknown type
        struct.pack(">HII", CREDIT << 8, 1, 4) + bytes(4),  # a zero increment
        struct.pack(">HII", DATA << 8, 1, MAX + 1),  # a length over the maximum
        encode_frame(PING, 0, 0, b"12345678"),  # a valid frame: ignored too
    ],
)
@pytest.mark.parametrize("split", [None, 3, HEADER_SIZE + 2])
def test_what_follows_a_goaway_is_ignored_unread(after: bytes, split: int | None) -> None:
    """A GOAWAY is the stream's last frame: bytes after it, valid or not, in the same chunk
    or later, are ignored (they were decoded first, and a malformed frame after the GOAWAY
    turned the peer's reason and LAST_ID into a protocol error)."""
    goaway = encode_frame(GOAWAY, 0, 0, b"why")
    decoder = FrameDecoder(MAX)
    wire = goaway + after
    if split is None:
        got = decoder.feed(wire)
    else:
        got = decoder.feed(wire[:split]) + decoder.feed(wire[split:])
    assert got == [Frame(GOAWAY, 0, 0, b"why")]
    assert decoder.feed(after) == [] and decoder.buffered == 0


def test_oversized_payload_is_refused_after_the_header_alone() -> None:
    decoder = FrameDecoder(MAX)
    header = struct.pack(">BBII", DATA, 0, 1, MAX + 1)
    for byte in header[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.buffered == HEADER_SIZE - 1
    with pytest.raises(errors.BadProtocolError, match="exceeds the maximum"):
        decoder.feed(header[-1:])  # no payload byte was ever sent
    assert decoder.buffered == 0


def test_huge_declared_length_costs_nothing() -> None:
    decoder = FrameDecoder(DEFAULT_MAX_FRAME_PAYLOAD)
    with pytest.raises(errors.BadProtocolError):
        decoder.feed(struct.pack(">BBII", RESET, 0, 3, 2**32 - 1))


def test_payload_of_exactly_max_is_accepted_and_buffered_until_complete() -> None:
    decoder = FrameDecoder(MAX)
    wire = encode_frame(DATA, 0, 5, b"x" * MAX)
    assert decoder.feed(wire[:-1]) == []
    assert decoder.buffered == len(wire) - 1
    assert decoder.feed(wire[-1:]) == [Frame(DATA, 0, 5, b"x" * MAX)]


@pytest.mark.parametrize(
    ("header", "payload", "reason"),
    [
        ((0x05, 0, 1, 0), b"", "unknown frame type"),
        ((0xFF, 0, 1, 0), b"", "unknown frame type"),
        ((DATA, 0x04, 1, 0), b"", "unknown flags"),
        ((DATA, 0x80, 1, 0), b"", "unknown flags"),
        ((CREDIT, 0x01, 1, 4), b"\0\0\0\1", "unknown flags"),
        ((RESET, 0x01, 1, 0), b"", "unknown flags"),
        ((PING, 0x02, 0, 8), b"12345678", "unknown flags"),
        ((GOAWAY, 0x02, 0, 0), b"", "unknown flags"),
        ((DATA, 0, 0, 0), b"", "on flow 0"),
        ((CREDIT, 0, 0, 4), b"\0\0\0\1", "on flow 0"),
        ((RESET, 0, 0, 0), b"", "on flow 0"),
        ((PING, 0, 1, 8), b"12345678", "must be 0"),
        ((GOAWAY, 0, 3, 0), b"", "must be 0"),
        ((CREDIT, 0, 1, 3), b"\0\0\1", "must be 4"),
        ((CREDIT, 0, 1, 5), b"\0\0\0\0\1", "must be 4"),
        ((CREDIT, 0, 1, 4), b"\0\0\0\0", "zero increment"),
        ((PING, 0, 0, 7), b"1234567", "must be 8"),
        ((PING, FLAG_ACK, 0, 0), b"", "must be 8"),
    ],
)
def test_invalid_headers_are_bad_protocol(
    header: tuple[int, int, int, int], payload: bytes, reason: str
) -> None:
    decoder = FrameDecoder(MAX)
    good = encode_frame(DATA, 0, 1, b"ok")
    wire = good + struct.pack(">BBII", *header) + payload
    with pytest.raises(errors.BadProtocolError, match=reason) as info:
        decoder.feed(wire)
    # Dead afterwards: the same error again, whatever is fed.
    with pytest.raises(errors.BadProtocolError) as again:
        decoder.feed(good)
    assert again.value is info.value
    # encode_frame refuses to build the same frame.
    with pytest.raises(errors.BadArgError):
        encode_frame(header[0], header[1], header[2], payload)


def test_encode_frame_argument_ranges() -> None:
    with pytest.raises(errors.BadArgError):
        encode_frame(DATA, 0, 2**32, b"")
    with pytest.raises(errors.BadArgError):
        encode_frame(-1, 0, 1, b"")
    with pytest.raises(errors.BadArgError):
        encode_credit(1, 0)
    with pytest.raises(errors.BadArgError):
        encode_credit(1, 2**32)
    assert encode_frame(DATA, 0, 1, bytearray(b"ab")).endswith(b"ab")


def test_decoder_max_payload_bounds() -> None:
    with pytest.raises(errors.BadArgError):
        FrameDecoder(MIN_FRAME_PAYLOAD - 1)
    with pytest.raises(errors.BadArgError):
        FrameDecoder(MAX_FRAME_PAYLOAD_LIMIT + 1)
    assert FrameDecoder(MAX_FRAME_PAYLOAD_LIMIT).max_payload == MAX_FRAME_PAYLOAD_LIMIT


def test_type_names_cover_every_type() -> None:
    assert frames.FRAME_TYPE_NAMES == {
        DATA: "DATA",
        CREDIT: "CREDIT",
        RESET: "RESET",
        PING: "PING",
        GOAWAY: "GOAWAY",
    }
