"""Tests for ipcclient.naming.endpoint: string form, short forms, validation, versions, codec."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.naming import NULL_ROUTING_ID, Endpoint, check_version_compatibility, names

RID = bytes(range(16))
RID_HEX = RID.hex()
ZERO = "0" * 32


# -- strategies -------------------------------------------------------------------------------

_hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_tcp_addresses = st.builds(
    lambda h, p: f"{h}:{p}", _hosts, st.integers(min_value=0, max_value=65535)
)
# Nasty text: every separator and escape character the format knows, plus anything else.
_nasty = st.text(
    alphabet=st.one_of(st.sampled_from("@%,/:()[]\\ \t\n"), st.characters(codec="utf-8")),
    min_size=1,
    max_size=30,
)


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    kind = draw(st.sampled_from(["tcp", "tcp4", "tcp6", "unix", "other"]))
    if kind in ("tcp", "tcp4", "tcp6"):
        address = draw(_tcp_addresses)
        if kind == "tcp4":
            address = draw(st.ip_addresses(v=4).map(str)) + ":80"
        if kind == "tcp6":
            address = draw(st.ip_addresses(v=6).map(lambda a: f"[{a}]:80"))
        protocol = kind
    elif kind == "unix":
        protocol = "unix"
        address = draw(_nasty.filter(lambda s: "\x00" not in s))
    else:
        protocol = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,10}", fullmatch=True))
        address = draw(_nasty)
    lo = draw(st.integers(min_value=0, max_value=2**32 - 1))
    hi = draw(st.integers(min_value=0, max_value=2**32 - 1))
    if lo and hi and lo > hi:
        lo, hi = hi, lo
    try:
        return Endpoint(
            protocol=protocol,
            address=address,
            routing_id=draw(st.binary(min_size=16, max_size=16)),
            min_version=lo,
            max_version=hi,
            serves_mount_table=draw(st.booleans()),
            is_leaf=draw(st.booleans()),
            blessings=tuple(draw(st.lists(_nasty, max_size=4))),
        )
    except errors.BadArgError:
        # Only the unknown-protocol branch may hit a tcp-ish protocol name; skip those.
        assert kind == "other"
        return Endpoint(protocol="x" + protocol, address=address)


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(endpoints())
def test_round_trip(ep: Endpoint) -> None:
    text = str(ep)
    assert Endpoint.parse(text) == ep
    assert str(Endpoint.parse(text)) == text
    assert text.startswith("@1@") and text.endswith("@@")
    assert text.count("@@") == 1 or text.endswith("@@@")  # "@@" only where it ends
    assert "@@/" not in text


@settings(max_examples=200, deadline=None)
@given(endpoints(), st.lists(st.text(alphabet="abc/", max_size=6), max_size=3))
def test_endpoint_survives_inside_a_name(ep: Endpoint, suffix_parts: list[str]) -> None:
    suffix = names.clean("/".join(suffix_parts).lstrip("/"))
    name = ep.name(suffix)
    address, got = names.split_address_name(name)
    assert Endpoint.parse(address) == ep
    assert got == suffix
    assert names.clean(name) == name


@settings(max_examples=200, deadline=None)
@given(endpoints())
def test_codec_round_trip(ep: Endpoint) -> None:
    assert codec.decode(codec.encode({"ep": ep})) == {"ep": ep}


def test_codec_rejects_a_malformed_endpoint_from_a_peer() -> None:
    tag = codec.TAGS["endpoint"]
    for value in ("@1@tcp@@@", 42, "@9@x@@"):
        with pytest.raises(errors.BadProtocolError):
            codec.decode(cbor2.dumps(cbor2.CBORTag(tag, value)))


# -- the full form --------------------------------------------------------------------------------


def test_parse_full_form_fields() -> None:
    ep = Endpoint.parse(f"@1@tcp@127.0.0.1:8101@{RID_HEX}@3@7@ml@a:b,c%40d%2Ce@@")
    assert ep == Endpoint(
        protocol="tcp",
        address="127.0.0.1:8101",
        routing_id=RID,
        min_version=3,
        max_version=7,
        serves_mount_table=True,
        is_leaf=True,
        blessings=("a:b", "c@d,e"),
    )
    assert ep.flags == "ml"


@pytest.mark.parametrize(
    ("flags", "mt", "leaf", "canonical"),
    [("m", True, False, "m"), ("s", False, False, "s"), ("l", False, True, "l"),
     ("sl", False, True, "l"), ("lm", True, True, "ml")],
)  # fmt: skip
def test_flags(flags: str, mt: bool, leaf: bool, canonical: str) -> None:
    ep = Endpoint.parse(f"@1@tcp@h:1@{ZERO}@0@0@{flags}@@@")
    assert (ep.serves_mount_table, ep.is_leaf, ep.flags) == (mt, leaf, canonical)


def test_defaults_describe_a_plain_server() -> None:
    ep = Endpoint("tcp", "h:1")
    assert str(ep) == f"@1@tcp@h:1@{ZERO}@0@0@s@@@"
    assert ep.is_null_routing_id and ep.routing_id == NULL_ROUTING_ID


def test_uppercase_routing_id_parses_to_the_same_endpoint() -> None:
    upper = Endpoint.parse(f"@1@tcp@h:1@{RID_HEX.upper()}@0@0@s@@@")
    assert upper == Endpoint("tcp", "h:1", routing_id=RID)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@",
        "@@",
        "@1@@@",
        "@2@tcp@h:1@@",  # unknown format version
        "@6@tcp@h:1@@" + ZERO + "@s@@@",
        f"@1@tcp@h:1@{ZERO}@0@0@s@@",  # missing the blessings field
        f"@1@tcp@h:1@{ZERO}@0@0@s@@@@",  # one field too many
        f"@1@tcp@h:1@{ZERO}@0@0@s@@",
        f"@1@tcp@h:1@{ZERO}@0@0@s@",  # no terminator
        f"@1@@h:1@{ZERO}@0@0@s@@@",  # empty protocol
        f"@1@t cp@h:1@{ZERO}@0@0@s@@@",  # bad protocol
        f"@1@tcp@@{ZERO}@0@0@s@@@",  # empty address
        f"@1@tcp@h@{ZERO}@0@0@s@@@",  # not host:port
        f"@1@tcp@h:99999@{ZERO}@0@0@s@@@",  # port out of range
        f"@1@tcp@h:x@{ZERO}@0@0@s@@@",
        f"@1@tcp@::1:80@{ZERO}@0@0@s@@@",  # IPv6 without brackets
        f"@1@tcp@[::zz]:80@{ZERO}@0@0@s@@@",
        f"@1@tcp@[::1]80@{ZERO}@0@0@s@@@",
        f"@1@tcp4@[::1]:80@{ZERO}@0@0@s@@@",
        f"@1@tcp6@1.2.3.4:80@{ZERO}@0@0@s@@@",
        f"@1@unix@/a\x00b@{ZERO}@0@0@s@@@",
        "@1@tcp@h:1@00@0@0@s@@@",  # short routing id
        f"@1@tcp@h:1@{'g' * 32}@0@0@s@@@",
        f"@1@tcp@h:1@{ZERO}@-1@0@s@@@",
        f"@1@tcp@h:1@{ZERO}@+1@0@s@@@",
        f"@1@tcp@h:1@{ZERO}@\u0661@0@s@@@",  # a non-ASCII digit
        f"@1@tcp@h:1@{ZERO}@0@99999999999@s@@@",  # too large
        f"@1@tcp@h:1@{ZERO}@5@4@s@@@",  # min > max
        f"@1@tcp@h:1@{ZERO}@0@0@@@@",  # empty flags
        f"@1@tcp@h:1@{ZERO}@0@0@x@@@",
        f"@1@tcp@h:1@{ZERO}@0@0@mm@@@",
        f"@1@tcp@h:1@{ZERO}@0@0@ms@@@",  # contradiction
        f"@1@tcp@h:1@{ZERO}@0@0@s@a,,b@@",  # empty blessing
        f"@1@tcp@h:1@{ZERO}@0@0@s@a%4@@",  # bad escape
        f"@1@tcp@h%ZZ:1@{ZERO}@0@0@s@@@",
        f"@1@tcp@h%C3%A9:1@{ZERO}@0@0@s@@@",  # escapes above %7F
        "@1@x@" + "a" * 70000 + f"@{ZERO}@0@0@s@@@",  # too long
    ],
)
def test_malformed_full_forms_are_bad_arg(text: str) -> None:
    with pytest.raises(errors.BadArgError) as info:
        Endpoint.parse(text)
    assert info.value.msg.startswith(("endpoint:", "naming:"))


# -- short forms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "protocol", "address", "blessings"),
    [
        ("localhost:8101", "tcp", "localhost:8101", ()),
        ("127.0.0.1:0", "tcp", "127.0.0.1:0", ()),
        (":8101", "tcp", ":8101", ()),
        ("[::1]:8101", "tcp", "[::1]:8101", ()),
        ("[fe80::1%eth0]:80", "tcp", "[fe80::1%eth0]:80", ()),
        ("(dev.v.io:alice)@h:1", "tcp", "h:1", ("dev.v.io:alice",)),
        ("(a%40b)@h:1", "tcp", "h:1", ("a@b",)),
        ("unix:/tmp/mt.sock", "unix", "/tmp/mt.sock", ()),
    ],
)
def test_short_forms_are_mount_tables(
    text: str, protocol: str, address: str, blessings: tuple[str, ...]
) -> None:
    ep = Endpoint.parse(text)
    assert (ep.protocol, ep.address, ep.blessings) == (protocol, address, blessings)
    assert ep.serves_mount_table and not ep.is_leaf
    assert ep.routing_id == NULL_ROUTING_ID
    assert (ep.min_version, ep.max_version) == (0, 0)
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize(
    "text", ["h", "h:1/x", "a@h:1", "(b)h:1", "()@h:1", "(b)@", "::1:80", "unix:", "h:70000"]
)
def test_malformed_short_forms_are_bad_arg(text: str) -> None:
    with pytest.raises(errors.BadArgError):
        Endpoint.parse(text)


def test_parse_refuses_non_str() -> None:
    with pytest.raises(errors.BadArgError):
        Endpoint.parse(b"h:1")  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("@1mslx%0:h/[]()tcp,"), max_size=40))
def test_parse_garbage_is_bad_arg_or_round_trips(text: str) -> None:
    try:
        ep = Endpoint.parse(text)
    except errors.BadArgError:
        return
    assert Endpoint.parse(str(ep)) == ep


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocol": 1},
        {"address": None},
        {"routing_id": b"short"},
        {"routing_id": "0" * 16},
        {"min_version": -1},
        {"max_version": 2**32},
        {"min_version": True},
        {"min_version": 3, "max_version": 2},
        {"serves_mount_table": 1},
        {"blessings": ["a"]},
        {"blessings": ("",)},
        {"blessings": (3,)},
    ],
)
def test_constructor_validates(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"protocol": "tcp", "address": "h:1"}
    base.update(kwargs)
    with pytest.raises(errors.BadArgError):
        Endpoint(**base)


def test_endpoints_are_hashable_values() -> None:
    a = Endpoint("tcp", "h:1", routing_id=RID, blessings=("x",))
    b = Endpoint.parse(str(a))
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Endpoint("tcp", "h:1", routing_id=RID)}) == 2


def test_dial_key_and_dialable() -> None:
    a = Endpoint("tcp4", "1.2.3.4:80", routing_id=RID, serves_mount_table=True)
    b = Endpoint("tcp", "1.2.3.4:80", routing_id=RID, blessings=("x",), max_version=9)
    assert a.dial_key() == b.dial_key() == ("tcp", "1.2.3.4:80", RID)
    assert a != b
    assert Endpoint("unix", "/s").dial_key() == ("unix", "/s", NULL_ROUTING_ID)
    assert a.is_dialable and Endpoint("unix", "/s").is_dialable
    assert not Endpoint("tcp", ":80").is_dialable  # a listen spec, not an address
    assert not Endpoint("tcp", "h:0").is_dialable
    assert not Endpoint("ws", "h:80").is_dialable
    assert Endpoint("ws", "h:80").protocol_family == "ws"
    assert Endpoint("tcp6", "host.example:80").is_dialable  # a name may resolve to IPv6


def test_name() -> None:
    ep = Endpoint("tcp", "h:1")
    assert ep.name() == "/" + str(ep)
    assert ep.name("/a/b/") == "/" + str(ep) + "/a/b"


# -- versions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ep_range", "ours", "want"),
    [
        ((0, 0), (2, 5), (2, 5)),
        ((3, 0), (2, 5), (3, 5)),
        ((0, 3), (2, 5), (2, 3)),
        ((1, 2), (2, 5), (2, 2)),
        ((5, 9), (2, 5), (5, 5)),
        ((4, 4), (4, 4), (4, 4)),
    ],
)
def test_compatible_versions(
    ep_range: tuple[int, int], ours: tuple[int, int], want: tuple[int, int]
) -> None:
    ep = Endpoint("tcp", "h:1", min_version=ep_range[0], max_version=ep_range[1])
    assert ep.check_compatibility(ours) == want
    assert check_version_compatibility(ep, ours) == want


@pytest.mark.parametrize(
    ("ep_range", "ours"), [((6, 9), (2, 5)), ((0, 1), (2, 5)), ((1, 1), (2, 2))]
)
def test_incompatible_versions(ep_range: tuple[int, int], ours: tuple[int, int]) -> None:
    ep = Endpoint("tcp", "h:1", min_version=ep_range[0], max_version=ep_range[1])
    with pytest.raises(errors.VersionIncompatibleError) as info:
        ep.check_compatibility(ours)
    assert info.value.params == (*ep_range, *ours)
    assert info.value.action is errors.RetryAction.NO_RETRY


@pytest.mark.parametrize("ours", [(0, 5), (5, 2), (1,), "12", (1.0, 2), (True, 2), None])
def test_supported_range_is_validated(ours: Any) -> None:
    with pytest.raises(errors.BadArgError):
        Endpoint("tcp", "h:1").check_compatibility(ours)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 20), st.integers(0, 20), st.integers(1, 20), st.integers(1, 20))
def test_version_check_agrees_with_interval_overlap(emin: int, emax: int, a: int, b: int) -> None:
    if emin and emax and emin > emax:
        emin, emax = emax, emin
    lo, hi = min(a, b), max(a, b)
    ep = Endpoint("tcp", "h:1", min_version=emin, max_version=emax)
    allowed = {v for v in range(lo, hi + 1) if (not emin or v >= emin) and (not emax or v <= emax)}
    if allowed:
        assert ep.check_compatibility((lo, hi)) == (min(allowed), max(allowed))
    else:
        with pytest.raises(errors.VersionIncompatibleError):
            ep.check_compatibility((lo, hi))
