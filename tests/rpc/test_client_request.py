"""The client's one request-header encoder: the same bytes as ``Request.to_wire()`` encoded
by the codec, whichever way it lays them out."""

from __future__ import annotations

import pytest

from ipcclient import errors
from ipcclient.client.request import encode_request_header
from ipcclient.headers import Request, TraceContext, request_from_wire
from ipcclient.security import Blessings, Principal, caveats
from ipcclient.wire.messages import encode_messages, split_messages


def _codec_way(
    suffix: str, method: str, nargs: int, deadline: float | None, granted: Blessings | None = None
) -> bytes:
    trace = TraceContext(b"t" * 16, b"s" * 16, 1)
    request = Request(
        suffix=suffix, method=method, nargs=nargs, deadline=deadline, trace=trace, granted=granted
    )
    return encode_messages(request.to_wire())


@pytest.mark.parametrize(
    ("suffix", "method", "nargs", "deadline"),
    [
        ("", "Echo", 0, None),
        ("a/b", "Echo", 2, 4.5),
        ("x" * 40, "M", 300, 0.0),  # (beyond the usual layout: the codec's way)
        ("é", "Méthode", 1, 1.25),  # (not ASCII: the codec's way)
    ],
)
def test_the_header_is_the_codecs_bytes(
    suffix: str, method: str, nargs: int, deadline: float | None
) -> None:
    got = encode_request_header(suffix, method, nargs, deadline, b"t" * 16, b"s" * 16, 1)
    assert got == _codec_way(suffix, method, nargs, deadline)


def test_granted_blessings_go_in_the_header() -> None:
    p = Principal.generate()
    granted = p.bless_self("delegate", [caveats.expires_in(60)])
    got = encode_request_header("o", "M", 1, None, b"t" * 16, b"s" * 16, 1, granted)
    assert got == _codec_way("o", "M", 1, None, granted=granted)
    (message,) = split_messages(got) or ()
    request = request_from_wire(message)
    assert request.granted is not None and request.granted.names == ["delegate"]


def test_a_method_without_a_wire_form_is_bad_arg_before_anything_is_sent() -> None:
    with pytest.raises(errors.BadArgError) as info:
        encode_request_header("", "Ech\udcff", 0, None, b"t" * 16, b"s" * 16, 0)
    assert info.value.request_sent is False
