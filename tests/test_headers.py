"""Request/response headers: the fast path and the general path agree."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import errors
from ipcclient.headers import (
    MAX_ARGS,
    Request,
    TraceContext,
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
