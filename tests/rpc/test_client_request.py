"""The client's one request-header encoder: the same bytes as ``Request.to_wire()`` encoded
by the codec, whichever way it lays them out."""

from __future__ import annotations

import pytest

from ipcclient import errors
from ipcclient.client.request import check_names, encode_request_header
from ipcclient.headers import MAX_NAME_LEN, Request, TraceContext, request_from_wire
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


def test_names_no_server_takes_are_refused_and_nothing_else_is_bounded_here() -> None:
    """A method name or name suffix longer than MAX_NAME_LEN, which every server resets as a
    protocol error, is the caller's BadArgError (measured, not quoted: it may be megabytes);
    at the limit it goes. The header as a whole is not bounded by the client: granted
    blessings or discharges may make it larger than a default server takes, and a server
    configured with larger ``header_limits`` takes it (the client refused such a call)."""
    check_names("a" * MAX_NAME_LEN, "M" * MAX_NAME_LEN)
    for suffix, method in (("", "M" * (MAX_NAME_LEN + 1)), ("a" * (5 << 20), "M")):
        with pytest.raises(errors.BadArgError, match=f"takes at most {MAX_NAME_LEN}") as info:
            check_names(suffix, method)
        assert info.value.request_sent is False
        assert len(str(info.value)) < 300
    idp, me = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    big = [caveats.method(*["M%02d%s" % (j, "x" * 40) for j in range(20)]) for _ in range(40)]
    granted = Blessings.union(*(idp.bless(me.public_key, root, e, big) for e in ("a", "b")))
    head = encode_request_header("", "M", 1, None, b"t" * 16, b"s" * 16, 1, granted)
    assert len(head) > 64 * 1024
    (message,) = split_messages(head)
    assert request_from_wire(message).granted == granted
