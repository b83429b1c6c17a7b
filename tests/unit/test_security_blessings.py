"""Blessing chains: creation, names, wire form, validation, caveats and tampering."""

from __future__ import annotations

import copy
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.security import (
    BlessingRoots,
    Blessings,
    Caveat,
    Certificate,
    Principal,
    SecurityCall,
    UnknownCaveat,
    caveats,
    is_valid_extension,
    issue_discharge,
    validate_blessings,
    validate_caveats,
)
from ipcclient.security import blessings as blessings_mod
from ipcclient.security.caveats import caveat_from_wire

ANY = [caveats.unconstrained_use()]


def _trusting(*blessings: Blessings) -> BlessingRoots:
    roots = BlessingRoots()
    for b in blessings:
        roots.add_blessings(b)
    return roots


def test_self_blessing_names_and_key() -> None:
    p = Principal.generate()
    b = p.bless_self("idp")
    assert b.names == ["idp"]
    assert b.public_key == p.public_key
    assert validate_blessings(b, SecurityCall(), _trusting(b)) == (["idp"], [])
    assert repr(b) == "Blessings(['idp'])"


def test_bless_other_multi_level_chain() -> None:
    idp, alice, phone = Principal.generate(), Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", ANY)
    ph = alice.bless(phone.public_key, a, "phone", ANY)
    assert ph.names == ["idp:alice:phone"]
    assert ph.public_key == phone.public_key
    assert [len(c) for c in ph.chains] == [3]
    assert validate_blessings(ph, SecurityCall(), _trusting(root))[0] == ["idp:alice:phone"]


def test_bless_refuses_blessings_not_held_and_missing_caveats() -> None:
    idp, alice, eve = Principal.generate(), Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    with pytest.raises(errors.BadArgError):
        eve.bless(alice.public_key, root, "alice", ANY)
    with pytest.raises(errors.BadArgError):
        idp.bless(alice.public_key, root, "alice", [])
    with pytest.raises(errors.BadArgError):
        idp.bless(alice.public_key, root, "al:ice", ANY)
    with pytest.raises(errors.BadArgError):
        idp.bless(b"raw", root, "alice", ANY)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        idp.bless(alice.public_key, "root", "alice", ANY)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        idp.bless(alice.public_key, root, "alice", ["not a caveat"])  # type: ignore[list-item]
    with pytest.raises(errors.BadArgError):
        idp.bless_self("bad name")


def test_a_certificate_carries_at_most_max_caveats() -> None:
    """Every peer refuses a certificate with more than MAX_CAVEATS caveats: bless made one,
    and the client then failed at the handshake, with a message blaming the server."""
    from ipcclient.security.caveats import MAX_CAVEATS

    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    cavs = [caveats.method("Echo%d" % i) for i in range(MAX_CAVEATS + 1)]
    blessed = idp.bless(alice.public_key, root, "alice", cavs[:MAX_CAVEATS])
    again = codec.decode(codec.encode(blessed))  # (its peers take it)
    assert again == blessed
    with pytest.raises(errors.BadArgError, match="at most 64 caveats, not 65"):
        idp.bless(alice.public_key, root, "alice", cavs)
    with pytest.raises(errors.BadArgError, match="at most 64 caveats, not 65"):
        idp.bless_self("idp", cavs)


def test_a_caveat_whose_params_every_peer_refuses_is_not_made() -> None:
    """A method caveat naming 70 methods of 1,000 characters encodes to more than
    MAX_PARAMS_SIZE, which every decoder refuses: bless took it, and the principal's own
    blessing could then not be loaded again."""
    from ipcclient.security.caveats import MAX_PARAMS_SIZE, Caveat, caveat_from_wire

    edge = Caveat("opaque", bytes(MAX_PARAMS_SIZE))
    assert caveat_from_wire(edge.to_wire()) == edge  # (at the bound: its peers take it)
    with pytest.raises(errors.BadArgError, match=f"at most {MAX_PARAMS_SIZE}"):
        Caveat("opaque", bytes(MAX_PARAMS_SIZE + 1))
    with pytest.raises(errors.BadArgError, match="'method' caveat's parameters encode to 70"):
        caveats.method(*["M%02d%s" % (i, "x" * 997) for i in range(70)])


def test_bless_refuses_blessings_too_large_for_a_handshake() -> None:
    """64 caveats of ~900 bytes on one certificate (each within its own bounds) made
    blessings over the 64 KiB a handshake carries: every peer then refused the handshake,
    and the client's error blamed the peer."""
    from ipcclient.security.blessings import MAX_BLESSINGS_SIZE

    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    big = [caveats.method(*["M%02d%s" % (j, "x" * 40) for j in range(20)]) for _ in range(64)]
    too_large = f"a handshake carries at most {MAX_BLESSINGS_SIZE}"
    with pytest.raises(errors.BadArgError, match=too_large):
        idp.bless(alice.public_key, root, "alice", big)
    with pytest.raises(errors.BadArgError, match=too_large):
        idp.bless_self("idp", big)
    fits = idp.bless(alice.public_key, root, "alice", big[:40])
    assert len(codec.encode(fits)) <= MAX_BLESSINGS_SIZE


def test_union_and_multiple_chains() -> None:
    a, b, me = Principal.generate(), Principal.generate(), Principal.generate()
    ra, rb = a.bless_self("a"), b.bless_self("b")
    ba = a.bless(me.public_key, ra, "me", ANY)
    bb = b.bless(me.public_key, rb, "me", ANY)
    u = Blessings.union(ba, None, bb)
    assert u is not None
    assert sorted(u.names) == ["a:me", "b:me"]
    assert u == Blessings.union(bb, ba)
    assert hash(u) == hash(Blessings.union(bb, ba, ba))
    assert Blessings.union() is None and Blessings.union(None) is None
    with pytest.raises(errors.BadArgError):
        Blessings.union(ba, ra)  # different keys
    # blessing with two chains extends both
    child = Principal.generate()
    cb = me.bless(child.public_key, u, "kid", ANY)
    assert sorted(cb.names) == ["a:me:kid", "b:me:kid"]
    names, rejected = validate_blessings(cb, SecurityCall(), _trusting(ra))
    assert names == ["a:me:kid"]
    assert [r.name for r in rejected] == ["b:me:kid"]
    assert isinstance(rejected[0].error, errors.NotTrustedError)


def test_blessings_constructor_checks_structure() -> None:
    with pytest.raises(errors.BadArgError):
        Blessings([])
    with pytest.raises(errors.BadArgError):
        Blessings([()])
    with pytest.raises(errors.BadArgError):
        Blessings([("x",)])  # type: ignore[list-item]
    p = Principal.generate()
    b = p.bless_self("p")
    with pytest.raises(errors.BadArgError):
        Blessings([b.chains[0]] * 1 + [(b.chains[0][0],) * 33])


def test_untrusted_root_and_root_trusted_only_for_its_pattern() -> None:
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", ANY)
    names, rejected = validate_blessings(a, SecurityCall(), BlessingRoots())
    assert names == [] and isinstance(rejected[0].error, errors.NotTrustedError)
    roots = BlessingRoots()
    roots.add(idp.public_key, "idp:bob")
    assert validate_blessings(a, SecurityCall(), roots)[0] == []
    roots.add(idp.public_key, "idp:alice:$")
    assert validate_blessings(a, SecurityCall(), roots)[0] == ["idp:alice"]
    # another key claiming the same name is not trusted
    fake = Principal.generate()
    froot = fake.bless_self("idp")
    fa = fake.bless(alice.public_key, froot, "alice", ANY)
    assert validate_blessings(fa, SecurityCall(), roots)[0] == []
    assert validate_blessings(None, SecurityCall(), roots) == ([], [])


def test_a_chain_is_verified_once_and_a_forged_copy_is_not_taken_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", ANY)
    verified: list[int] = []
    real = blessings_mod._verify_chain

    def counting(chain: tuple[Certificate, ...]) -> None:
        verified.append(len(chain))
        real(chain)

    monkeypatch.setattr(blessings_mod, "_verify_chain", counting)
    roots = _trusting(root)
    # The same chain, decoded afresh (as each VC's handshake does), hits the cache.
    for _ in range(3):
        again = Blessings.from_wire(codec.decode(codec.encode(a.to_wire())))
        assert validate_blessings(again, SecurityCall(), roots)[0] == ["idp:alice"]
    assert verified == [2]
    # The same certificates with one byte of a signature changed: verified, and refused.
    cert = a.chains[0][-1]
    bad_sig = bytes([cert.signature[0] ^ 1]) + cert.signature[1:]
    forged = Blessings(
        [(a.chains[0][0], Certificate(cert.extension, cert.public_key, cert.caveats, bad_sig))]
    )
    names, rejected = validate_blessings(forged, SecurityCall(), roots)
    assert names == [] and isinstance(rejected[0].error, errors.NotTrustedError)
    assert verified == [2, 2]


def test_expiry_caveat() -> None:
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    now = time.time()
    a = idp.bless(alice.public_key, root, "alice", [caveats.expiry(now + 10)])
    roots = _trusting(root)
    assert validate_blessings(a, SecurityCall(timestamp=now), roots)[0] == ["idp:alice"]
    assert validate_blessings(a, SecurityCall(timestamp=now + 10), roots)[0] == ["idp:alice"]
    names, rejected = validate_blessings(a, SecurityCall(timestamp=now + 11), roots)
    assert names == [] and "expired" in rejected[0].error.msg
    exp = caveats.expires_in(5, now=100.0)
    assert isinstance(exp, caveats.ExpiryCaveat) and exp.not_after == 105.0
    assert "105" in repr(exp)
    for bad in (-1, float("nan"), "soon", True, 1e300):
        with pytest.raises(errors.BadArgError):
            caveats.expiry(bad)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        caveats.ExpiryCaveat(-5)
    for too_late in (caveats.MAX_EXPIRY_NS + 1, 2**2000):  # (no float of seconds holds it)
        with pytest.raises(errors.BadArgError):
            caveats.ExpiryCaveat(too_late)
    assert caveats.ExpiryCaveat(caveats.MAX_EXPIRY_NS).not_after > 9e9


def test_method_caveat() -> None:
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", [caveats.method("Get", "List")])
    roots = _trusting(root)
    assert validate_blessings(a, SecurityCall(method="List"), roots)[0] == ["idp:alice"]
    assert validate_blessings(a, SecurityCall(method="Put"), roots)[0] == []
    assert validate_blessings(a, SecurityCall(), roots)[0] == []  # no method yet: fail closed
    with pytest.raises(errors.BadArgError):
        caveats.method()
    with pytest.raises(errors.BadArgError):
        caveats.method("")
    assert "Get" in repr(caveats.method("Get"))


def test_peer_blessings_caveat() -> None:
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", [caveats.peer_blessings("idp:server")])
    roots = _trusting(root)
    ok = SecurityCall(local_blessings=("other", "idp:server:fortune"))
    assert validate_blessings(a, ok, roots)[0] == ["idp:alice"]
    bad = SecurityCall(local_blessings=("idp:serverx",))
    names, rejected = validate_blessings(a, bad, roots)
    assert names == [] and isinstance(rejected[0].error, errors.NotTrustedError)
    with pytest.raises(errors.BadArgError):
        caveats.peer_blessings("a::b")
    assert "idp:server" in repr(caveats.peer_blessings("idp:server"))


def test_unknown_caveat_fails_closed_and_round_trips() -> None:
    unknown = caveat_from_wire(["future-kind", b"\x01\x02"])
    assert isinstance(unknown, UnknownCaveat)
    with pytest.raises(errors.NotTrustedError):
        validate_caveats([unknown], SecurityCall())
    assert codec.decode(codec.encode(unknown)) == unknown
    idp, alice = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", [unknown])
    back = codec.decode(codec.encode(a))
    assert back == a
    names, rejected = validate_blessings(back, SecurityCall(), _trusting(root))
    assert names == [] and "unknown caveat kind" in rejected[0].error.msg
    assert "future-kind" in repr(unknown)


def test_caveat_equality_and_immutability() -> None:
    a, b = caveats.method("X"), caveats.method("X")
    assert a == b and hash(a) == hash(b) and a.digest() == b.digest()
    assert a != caveats.method("Y")
    assert a != "X"
    with pytest.raises(AttributeError):
        a.kind = "other"
    assert caveats.unconstrained_use() == caveat_from_wire(["unconstrained", codec.encode([])])
    assert repr(caveats.unconstrained_use()) == "UnconstrainedCaveat()"


def test_certificate_equality_and_immutability() -> None:
    """A certificate is a value: equal and hashing alike when rebuilt from its wire form
    (chains are set members and keys of the verified-chain cache), and never changed in
    place, where a cached hash would go stale."""
    alice = Principal.generate()
    cert = alice.bless_self("alice").chains[0][0]
    again = Certificate.from_wire(codec.decode(codec.encode(cert.to_wire())))
    assert again is not cert and again == cert and hash(again) == hash(cert)
    other = Certificate(cert.extension + "x", cert.public_key, cert.caveats, cert.signature)
    assert other != cert and cert != "alice"
    for name, value in [("extension", "mallory"), ("signature", bytes(64)), ("caveats", ())]:
        with pytest.raises(AttributeError):
            setattr(cert, name, value)
    assert cert == again and cert.extension == "alice"
    assert copy.copy(cert) == cert and copy.deepcopy(cert) == cert


@pytest.mark.parametrize(
    "wire",
    [
        "x",
        ["method"],
        [7, b""],
        ["", b""],
        ["method", "notbytes"],
        ["method", codec.encode([])],
        ["method", codec.encode([""])],
        ["method", codec.encode("Get")],
        ["method", b"\xff"],
        ["expiry", codec.encode(-1)],
        ["expiry", codec.encode("x")],
        ["expiry", b"\x19\x00\x05"],  # non-canonical encoding of 5
        ["expiry", codec.encode(2**63)],  # (later than any float of seconds compares)
        ["expiry", codec.encode(2**2000)],
        ["peer", codec.encode([3])],
        ["unconstrained", codec.encode([1])],
        ["third-party", codec.encode([1, 2])],
        ["third-party", codec.encode([b"short", "loc", bytes(32), [False] * 3, []])],
        ["third-party", codec.encode([bytes(16), "", bytes(32), [False] * 3, []])],
        ["third-party", codec.encode([bytes(16), "loc", bytes(31), [False] * 3, []])],
        ["third-party", codec.encode([bytes(16), "loc", bytes(32), [False, 1, 0], []])],
        ["third-party", codec.encode([bytes(16), "loc", bytes(32), [False] * 3, ["x"]])],
    ],
)
def test_malformed_caveats_are_bad_protocol(wire: object) -> None:
    with pytest.raises(errors.BadProtocolError):
        caveat_from_wire(wire)


def test_certificate_and_blessings_wire_malformed() -> None:
    p = Principal.generate()
    b = p.bless_self("p")
    good = b.to_wire()
    cert = good[0][0]
    bad_values: list[object] = [
        [],
        "x",
        [[]],
        [["x"]],
        [[cert[:3]]],
        [[["bad:ext", *cert[1:]]]],
        [[[cert[0], b"short", *cert[2:]]]],
        [[[*cert[:3], b"sig"]]],
        [[cert] * 33],
        [[cert]] * 33,
    ]
    for value in bad_values:
        with pytest.raises(errors.BadProtocolError):
            Blessings.from_wire(value)
    other = Principal.generate().bless_self("q").to_wire()
    with pytest.raises(errors.BadProtocolError):
        Blessings.from_wire([good[0], other[0]])  # chains bound to different keys
    assert Blessings.from_wire(good) == b
    assert "p" in repr(b.chains[0][0])
    assert b.chains[0][0] != "cert"


def test_third_party_caveats_listed_once() -> None:
    idp, alice, disch = Principal.generate(), Principal.generate(), Principal.generate()
    tp = caveats.third_party("discharger", disch.public_key)
    root = idp.bless_self("idp", [tp])
    a = idp.bless(alice.public_key, root, "alice", [tp, caveats.unconstrained_use()])
    assert [c.id for c in a.third_party_caveats()] == [tp.id]
    assert idp.bless_self("x").third_party_caveats() == []


def test_valid_missing_expired_and_foreign_discharges() -> None:
    idp, alice, disch, eve = (Principal.generate() for _ in range(4))
    tp = caveats.third_party("/disch", disch.public_key)
    root = idp.bless_self("idp")
    a = idp.bless(alice.public_key, root, "alice", [tp])
    roots = _trusting(root)
    now = time.time()

    names, rejected = validate_blessings(a, SecurityCall(timestamp=now), roots)
    assert names == []
    assert isinstance(rejected[0].error, errors.BadDischargeError)
    assert rejected[0].error.params == (tp.id,)

    d = issue_discharge(disch, tp, [caveats.expiry(now + 60)])
    call = SecurityCall(timestamp=now, remote_discharges={tp.id: d})
    assert validate_blessings(a, call, roots)[0] == ["idp:alice"]

    late = SecurityCall(timestamp=now + 61, remote_discharges={tp.id: d})
    names, rejected = validate_blessings(a, late, roots)
    assert names == [] and isinstance(rejected[0].error, errors.BadDischargeError)

    # a "discharge" signed by the wrong key
    forged = issue_discharge(
        eve, caveats.third_party("/disch", eve.public_key), [caveats.expiry(now + 60)]
    )
    from ipcclient.security import Discharge

    wrong_key = Discharge(tp.id, forged.caveats, forged.signature)
    names, rejected = validate_blessings(
        a, SecurityCall(timestamp=now, remote_discharges={tp.id: wrong_key}), roots
    )
    assert names == [] and "not signed" in rejected[0].error.msg

    # a discharge for another caveat presented under this ID
    other_tp = caveats.third_party("/disch", disch.public_key)
    other = issue_discharge(disch, other_tp, [caveats.expiry(now + 60)])
    names, rejected = validate_blessings(
        a, SecurityCall(timestamp=now, remote_discharges={tp.id: other}), roots
    )
    assert names == [] and "another caveat" in rejected[0].error.msg

    # a discharge whose own method caveat does not hold
    meth = issue_discharge(disch, tp, [caveats.expiry(now + 60), caveats.method("Get")])
    call_put = SecurityCall(timestamp=now, method="Put", remote_discharges={tp.id: meth})
    assert validate_blessings(a, call_put, roots)[0] == []
    call_get = SecurityCall(timestamp=now, method="Get", remote_discharges={tp.id: meth})
    assert validate_blessings(a, call_get, roots)[0] == ["idp:alice"]


def test_third_party_caveat_wire_round_trip() -> None:
    disch = Principal.generate()
    tp = caveats.third_party(
        "/disch",
        disch.public_key,
        caveats.ThirdPartyRequirements(report_server=True, report_arguments=True),
        [caveats.method("Get"), caveats.third_party("/inner", disch.public_key)],
    )
    back = codec.decode(codec.encode(tp))
    assert isinstance(back, caveats.ThirdPartyCaveat)
    assert back == tp and back.id == tp.id
    assert back.requirements.report_server and not back.requirements.report_method
    assert back.restrictions == tp.restrictions
    assert tp.id[:16] in repr(tp)
    # the id depends on the nonce
    assert caveats.third_party("/disch", disch.public_key).id != tp.id


def test_third_party_constructor_checks() -> None:
    key = Principal.generate().public_key
    reqs = caveats.ThirdPartyRequirements()
    with pytest.raises(errors.BadArgError):
        caveats.third_party("", key)
    with pytest.raises(errors.BadArgError):
        caveats.third_party("/d", key, nonce=b"short")
    with pytest.raises(errors.BadArgError):
        caveats.ThirdPartyCaveat(bytes(16), "/d", b"key", reqs, [])  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        caveats.ThirdPartyCaveat(bytes(16), "/d", key, "reqs", [])  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        caveats.ThirdPartyCaveat(bytes(16), "/d", key, reqs, ["x"])  # type: ignore[list-item]


def test_discharge_nesting_is_bounded() -> None:
    disch = Principal.generate()
    tp = caveats.third_party("/d", disch.public_key)
    with pytest.raises(errors.BadDischargeError):
        tp.validate(SecurityCall(), depth=caveats.MAX_CAVEAT_NESTING)


# ---- hypothesis: random chains, and tampering --------------------------------------------

exts = st.text(alphabet="abcxyz019-_.", min_size=1, max_size=6).filter(is_valid_extension)
caveat_choice = st.sampled_from(["none", "method", "expiry", "peer"])


def _make_caveat(kind: str) -> Caveat:
    if kind == "method":
        return caveats.method("Get")
    if kind == "expiry":
        return caveats.expiry(time.time() + 3600)
    if kind == "peer":
        return caveats.peer_blessings("...")
    return caveats.unconstrained_use()


def _chain(ext_list: list[str], kinds: list[str]) -> tuple[Blessings, Blessings]:
    signer = Principal.generate()
    root = signer.bless_self(ext_list[0])
    current = root
    for ext, kind in zip(ext_list[1:], kinds, strict=False):
        nxt = Principal.generate()
        current = signer.bless(nxt.public_key, current, ext, [_make_caveat(kind)])
        signer = nxt
    return root, current


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(exts, min_size=1, max_size=6), st.lists(caveat_choice, min_size=5, max_size=5))
def test_random_chains_round_trip_and_validate(ext_list: list[str], kinds: list[str]) -> None:
    root, b = _chain(ext_list, kinds)
    assert b.names == [":".join(ext_list)]
    back = codec.decode(codec.encode(b))
    assert back == b
    call = SecurityCall(method="Get", local_blessings=("peer",))
    assert validate_blessings(back, call, _trusting(root)) == ([":".join(ext_list)], [])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flipping_any_byte_never_validates_changed_content(data: st.DataObject) -> None:
    global _TAMPER_FIXTURE
    if _TAMPER_FIXTURE is None:
        _TAMPER_FIXTURE = _tamper_fixture()
    root, b, call = _TAMPER_FIXTURE
    encoded = codec.encode(b)
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(encoded)
    tampered[index] ^= flip
    try:
        decoded = codec.decode(bytes(tampered))
    except errors.BadProtocolError:
        return
    if not isinstance(decoded, Blessings):
        assert decoded != b
        return
    names, rejected = validate_blessings(decoded, call, _trusting(root))
    if decoded != b:
        assert names == [] and len(rejected) == 1
    else:  # pragma: no cover - a flip that decodes to identical content
        assert names == b.names


_TAMPER_FIXTURE: tuple[Blessings, Blessings, SecurityCall] | None = None


def _tamper_fixture() -> tuple[Blessings, Blessings, SecurityCall]:
    idp, alice, phone, disch = (Principal.generate() for _ in range(4))
    root = idp.bless_self("idp")
    tp = caveats.third_party("/disch", disch.public_key)
    a = idp.bless(alice.public_key, root, "alice", [caveats.expires_in(3600), tp])
    ph = alice.bless(phone.public_key, a, "phone", [caveats.method("Get", "Put")])
    d = issue_discharge(disch, tp, [caveats.expires_in(3600)])
    call = SecurityCall(method="Get", remote_discharges={tp.id: d})
    assert validate_blessings(ph, call, _trusting(root))[0] == ["idp:alice:phone"]
    return root, ph, call


def test_moving_a_certificate_to_another_chain_fails() -> None:
    idp, alice, bob = Principal.generate(), Principal.generate(), Principal.generate()
    root1, root2 = idp.bless_self("one"), idp.bless_self("two")
    a1 = idp.bless(alice.public_key, root1, "alice", ANY)
    # graft alice's certificate (signed under "one") onto the "two" root
    cert = a1.chains[0][1]
    grafted = Blessings([(root2.chains[0][0], cert)])
    names, _ = validate_blessings(grafted, SecurityCall(), _trusting(root1, root2))
    assert names == []
    # and a certificate naming another key
    swapped = Certificate(cert.extension, bob.public_key, cert.caveats, cert.signature)
    names, _ = validate_blessings(
        Blessings([(root1.chains[0][0], swapped)]), SecurityCall(), _trusting(root1)
    )
    assert names == []
