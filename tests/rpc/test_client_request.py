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


MAX_REQUEST_HEADER = 64 * 1024
"""What a server takes by default (docs/limits.md: ``ServerOptions.header_limits``)."""


@pytest.mark.parametrize("granted", [False, True])  # (the usual layout, and the codec's way)
def test_a_header_over_the_servers_limit_is_bad_arg_before_anything_is_sent(
    granted: bool,
) -> None:
    """A method name or a name suffix so long that the header is over the 64 KiB a server
    takes (docs/limits.md) is refused by the length of the header just encoded; one that
    fills the limit exactly goes."""
    blessings = Principal.generate().bless_self("g") if granted else None
    base = len(encode_request_header("", "M", 1, None, b"t" * 16, b"s" * 16, 1, blessings)) - 4
    fits = "M" * (MAX_REQUEST_HEADER - base - 1)  # (one more M, and its CBOR head grows by 2)
    head = encode_request_header("", fits, 1, None, b"t" * 16, b"s" * 16, 1, blessings)
    assert len(head) - 4 == MAX_REQUEST_HEADER
    for suffix, method in (("", fits + "M"), ("a" * MAX_REQUEST_HEADER, "M")):
        with pytest.raises(errors.BadArgError, match="request header") as info:
            encode_request_header(suffix, method, 1, None, b"t" * 16, b"s" * 16, 1, blessings)
        assert info.value.request_sent is False
        assert len(str(info.value)) < 300  # (the names are measured, not quoted)
