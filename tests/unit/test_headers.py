"""Request/response headers: the fast path and the general path agree."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors, headers
from ipcclient.headers import (
    MAX_ARGS,
    Request,
    TraceContext,
    decode_usual_request,
    encode_request_message,
    request_from_wire,
    response_from_wire,
)
from ipcclient.wire.messages import encode_messages

trace = st.builds(TraceContext, st.binary(min_size=16, max_size=16),
                  st.binary(min_size=16, max_size=16), st.integers(0, 3))  # fmt: skip


@given(
    suffix=st.text(max_size=20),
    method=st.text(min_size=1, max_size=20),
    nargs=st.integers(0, 1024),
    deadline=st.one_of(st.none(), st.floats(0, 1e6)),
    tr=st.one_of(st.none(), trace),
)
def test_round_trip_of_common_headers(
    suffix: str, method: str, nargs: int, deadline: float | None, tr: TraceContext | None
) -> None:
    req = Request(suffix=suffix, method=method, nargs=nargs, deadline=deadline, trace=tr)
    assert request_from_wire(req.to_wire()) == req


@pytest.mark.parametrize(
    "bad",
    [
        {"method": 5},
        {"nargs": -1},
        {"nargs": 5000},
        {"nargs": True},
        {"deadline": float("nan")},
        {"deadline": "soon"},
        {"trace": {"t": b"x", "s": b"y"}},
        {"trace": [1, 2]},
        {"suffix": "x" * 5000},
        {"end_stream_args": 1},
        [],
    ],
)
def test_malformed_request_headers_are_bad_protocol(bad: Any) -> None:
    with pytest.raises(errors.BadProtocolError):
        request_from_wire(bad)


def test_general_path_normalizes_deadlines() -> None:
    assert request_from_wire({"method": "M", "deadline": -3.0}).deadline == 0.0
    assert request_from_wire({"method": "M", "deadline": 10**12}).deadline is None
    assert request_from_wire({"method": "M", "deadline": 7}).deadline == 7.0


def test_response_headers() -> None:
    assert response_from_wire({}).is_stream_item
    with pytest.raises(errors.BadProtocolError):
        response_from_wire({"error": "not an error"})
    with pytest.raises(errors.BadProtocolError):
        response_from_wire({"nresults": -1})


# --- the usual request header, encoded by hand ---------------------------------------------
_ASCII = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)


@given(
    suffix=_ASCII,
    method=_ASCII,
    nargs=st.integers(min_value=0, max_value=2000),
    deadline=st.one_of(st.none(), st.floats(allow_nan=False), st.just(float("inf"))),
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=16, max_size=16),
    flags=st.integers(min_value=0, max_value=30),
)
@settings(max_examples=300, deadline=None)
def test_hand_built_request_header_is_the_codecs_bytes(
    suffix: str,
    method: str,
    nargs: int,
    deadline: float | None,
    trace_id: bytes,
    span_id: bytes,
    flags: int,
) -> None:
    got = encode_request_message(suffix, method, nargs, deadline, trace_id, span_id, flags)
    if not method or nargs > MAX_ARGS or flags >= 24:
        assert got is None
        return
    request = Request(
        suffix=suffix,
        method=method,
        nargs=nargs,
        deadline=deadline,
        trace=TraceContext(trace_id, span_id, flags),
    )
    assert got == encode_messages(request.to_wire())


def test_hand_built_request_header_declines_names_that_are_not_ascii() -> None:
    ids = bytes(16)
    assert encode_request_message("", "Méthode", 0, None, ids, ids, 0) is None
    assert encode_request_message("é", "M", 0, None, ids, ids, 0) is None
    assert encode_request_message("", "M", 0, None, ids, ids, 0) is not None
    # Ids of another length than the 16 bytes vtrace makes: the general encoder writes them.
    assert encode_request_message("", "M", 0, None, ids[:8], ids, 0) is None
    assert encode_request_message("", "M", 0, None, ids, ids + b"x", 0) is None


def test_hand_built_request_header_declines_values_of_another_type() -> None:
    """Only what a client itself makes is written by hand: True is not the flags 1 (cbor2
    writes it as true), and a float flags, text ids or an int deadline never get there."""
    ids = bytes(16)
    assert encode_request_message("", "M", 0, None, ids, ids, True) is None
    assert encode_request_message("", "M", 0, None, ids, ids, 1.0) is None  # type: ignore[arg-type]
    assert encode_request_message("", "M", 0, None, "x" * 16, ids, 0) is None  # type: ignore[arg-type]
    assert encode_request_message("", "M", 0, None, ids, bytearray(16), 0) is None  # type: ignore[arg-type]
    assert encode_request_message("", "M", 0, 5, ids, ids, 0) is None
    assert encode_request_message("", "M", 0, 5.0, ids, ids, 1) is not None


def test_the_largest_usual_header_is_within_the_limits_said_to_admit_it() -> None:
    """``usual_request_within`` says True only for limits under which every header the
    hand-written reader takes decodes (a server with tighter header limits decodes under
    them instead)."""
    largest = encode_request_message("s" * 23, "m" * 23, 255, 5.0, b"t" * 16, b"s" * 16, 23)
    assert largest is not None
    body = largest[4:]
    enough = codec.Limits(max_message_size=160, max_items=17, max_depth=2)
    assert headers.usual_request_within(enough)
    assert headers.usual_request_within(codec.DEFAULT_LIMITS)
    assert request_from_wire(codec.decode(body, enough)) == decode_usual_request(body)
    for tighter in (
        codec.Limits(max_message_size=159, max_items=17, max_depth=2),
        codec.Limits(max_message_size=160, max_items=16, max_depth=2),
        codec.Limits(max_message_size=160, max_items=17, max_depth=1),
    ):
        assert not headers.usual_request_within(tighter)
    for over in (
        codec.Limits(max_message_size=len(body) - 1),
        codec.Limits(max_items=16),
        codec.Limits(max_depth=1),
    ):
        with pytest.raises(errors.BadProtocolError):
            codec.decode(body, over)


def test_hand_built_request_header_kept_starts_give_the_codecs_bytes_and_stay_bounded() -> None:
    ids = bytes(range(16))
    for _ in range(2):  # the second time from the kept starts
        for deadline in (None, 2.5, None):  # the same name with and without a deadline
            for nargs in (0, 1, 3):
                got = encode_request_message("a/b", "Echo", nargs, deadline, ids, ids, 1)
                request = Request(
                    suffix="a/b",
                    method="Echo",
                    nargs=nargs,
                    deadline=deadline,
                    trace=TraceContext(ids, ids, 1),
                )
                assert got == encode_messages(request.to_wire())
    for i in range(headers._MAX_STARTS + 10):  # many methods: the kept starts stay bounded
        assert encode_request_message("", f"M{i}", 0, None, ids, ids, 0) is not None
    assert len(headers._STARTS) <= headers._MAX_STARTS


# --- the usual request header, parsed by hand ------------------------------------------------
@given(
    suffix=st.text(max_size=40),
    method=st.text(max_size=40),
    nargs=st.integers(min_value=0, max_value=2000),
    deadline=st.one_of(st.none(), st.floats(), st.integers(min_value=0, max_value=10)),
    trace=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"t": st.binary(min_size=15, max_size=17), "s": st.binary(min_size=16, max_size=16)},
            optional={"f": st.integers(min_value=-2, max_value=70_000)},
        ),
    ),
    extra=st.dictionaries(st.sampled_from(["language", "x", "nargs"]), st.integers(), max_size=1),
    drop=st.sets(st.sampled_from(["suffix", "method", "nargs", "deadline"])),
    tail=st.sampled_from([b"", b"\x00"]),
)
@settings(max_examples=500, deadline=None)
def test_hand_parsed_request_header_is_the_general_result_or_declines(
    suffix: str,
    method: str,
    nargs: int,
    deadline: float | int | None,
    trace: dict[str, Any] | None,
    extra: dict[str, int],
    drop: set[str],
    tail: bytes,
) -> None:
    value: dict[str, Any] = {"suffix": suffix, "method": method, "nargs": nargs}
    if deadline is not None:
        value["deadline"] = deadline
    if trace is not None:
        value["trace"] = trace
    for key in drop:
        value.pop(key, None)
    value.update(extra)
    try:
        data = cbor2.dumps(value) + tail
    except (ValueError, cbor2.CBOREncodeError):
        return  # (text hypothesis cannot encode)
    got = decode_usual_request(data)
    try:
        expected: Request | None = request_from_wire(codec.decode(data))
    except errors.BadProtocolError:
        expected = None
    if got is not None:
        assert got == expected  # whatever it parses, the general way parses the same
        assert type(got.trace) is (TraceContext if got.trace is not None else type(None))
    # (Declining is always allowed: the server then decodes the header the general way.)


def test_hand_parsed_request_header_on_the_wire_a_client_writes() -> None:
    ids = bytes(range(16))
    message = encode_request_message("a/b", "Echo", 2, 4.5, ids, ids[::-1], 1)
    assert message is not None
    request = decode_usual_request(message[4:])
    assert request == Request(
        suffix="a/b", method="Echo", nargs=2, deadline=4.5, trace=TraceContext(ids, ids[::-1], 1)
    )
    for cut in range(len(message) - 4):  # every truncation: declined, never an exception
        assert decode_usual_request(message[4 : 4 + cut]) is None


def test_own_layout_parser_refuses_what_only_looks_like_it() -> None:
    ids = bytes(16)
    # A suffix whose text contains the next key: the tokenizer may cut it wrong; then the
    # lengths disagree and it declines (never a wrong parse; the codec then decides).
    tricky = "x\x66method\x64Echo"
    message = encode_request_message(tricky, "Echo", 1, None, ids, ids, 0)
    assert message is not None
    got = decode_usual_request(message[4:])
    assert got is None or got == request_from_wire(codec.decode(message[4:]))
    # A map head that counts more pairs than are there, or a non-minimal count: declined.
    good = encode_request_message("", "Echo", 1, 2.5, ids, ids, 0)
    assert good is not None
    assert decode_usual_request(b"\xa5" + good[5:]) is None
    widened = good[4:].replace(b"\x65nargs\x01", b"\x65nargs\x18\x01")
    assert decode_usual_request(bytes([widened[0]]) + widened[1:]) is None


def test_a_crafted_header_cannot_make_the_parsers_slow() -> None:
    """Key names repeated inside a huge header (what made an unbounded tokenizer take time
    growing with the square of the size): declined at once. Were the bounds gone, this test
    would run for minutes and fail on its timeout."""
    crafted = b"\xa3\x66suffix\x60" + b"\x66method" * 30_000
    assert decode_usual_request(crafted) is None
    assert headers._LAYOUT.fullmatch(crafted, 1) is None  # (bounded even without the cap)
    longest = encode_request_message("s" * 23, "m" * 23, 255, 1.5, bytes(16), bytes(16), 23)
    assert longest is not None and len(longest) - 4 <= headers._OWN_LAYOUT_MAX
    assert decode_usual_request(longest[4:]) is not None


_SHORT = st.text(alphabet=st.characters(max_codepoint=127), max_size=23)


@given(
    suffix=_SHORT,
    method=_SHORT.filter(bool),
    nargs=st.integers(min_value=0, max_value=255),
    deadline=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e8)),
    ids=st.binary(min_size=32, max_size=32),
    flags=st.integers(min_value=0, max_value=23),
)
@settings(max_examples=300, deadline=None)
def test_every_header_an_ipcclient_client_writes_is_read_the_short_way(
    suffix: str, method: str, nargs: int, deadline: float | None, ids: bytes, flags: int
) -> None:
    message = encode_request_message(suffix, method, nargs, deadline, ids[:16], ids[16:], flags)
    assert message is not None
    got = decode_usual_request(message[4:])
    if "\x66method" in suffix or "\x65trace" in (suffix + method):
        # (key names inside names may make the tokenizer decline; never misread)
        assert got is None or got == request_from_wire(codec.decode(message[4:]))
    else:
        assert got is not None and got == request_from_wire(codec.decode(message[4:]))


@pytest.mark.parametrize(
    ("deadline", "read"),
    [(-(2**1100), 0.0), (2**1100, None), (-5, 0.0), (7, 7.0)],
    ids=["-2^1100", "2^1100", "-5", "7"],
)
def test_a_deadline_of_any_integer_is_read_without_overflow(deadline: int, read: Any) -> None:
    """An integer deadline too large for a float (either sign) is compared before it is
    converted: it once raised a bare OverflowError on the server."""
    got = request_from_wire({"method": "Echo", "deadline": deadline})
    assert got.deadline == read
