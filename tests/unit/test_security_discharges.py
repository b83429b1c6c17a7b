"""Discharges: issuing, wire form, impetus filtering, and the thread-safe cache."""

from __future__ import annotations

import random
import threading

import pytest

from ipcclient import codec, errors
from ipcclient.security import (
    BlessingPattern,
    Discharge,
    DischargeCache,
    DischargeImpetus,
    Principal,
    SecurityCall,
    caveats,
    filtered_impetus,
    issue_discharge,
)
from ipcclient.security.caveats import ThirdPartyRequirements

NOW = 1_700_000_000.0


def _discharge(
    disch: Principal, ttl: float, **reqs: bool
) -> tuple[caveats.ThirdPartyCaveat, Discharge]:
    tp = caveats.third_party("/d", disch.public_key, ThirdPartyRequirements(**reqs))
    return tp, issue_discharge(disch, tp, [caveats.expiry(NOW + ttl)])


def test_issue_and_round_trip() -> None:
    disch = Principal.generate()
    tp, d = _discharge(disch, 60)
    assert d.caveat_id == tp.id
    assert d.expiry == NOW + 60
    assert d.verify(disch.public_key)
    assert not d.verify(Principal.generate().public_key)
    back = codec.decode(codec.encode(d))
    assert back == d and hash(back) == hash(d)
    assert back != "d"
    assert tp.id[:16] in repr(d)
    d.validate_for(tp, SecurityCall(timestamp=NOW))
    with pytest.raises(errors.BadDischargeError):
        d.validate_for(tp, SecurityCall(timestamp=NOW + 61))


def test_expiry_is_earliest() -> None:
    disch = Principal.generate()
    tp = caveats.third_party("/d", disch.public_key)
    d = issue_discharge(disch, tp, [caveats.expiry(NOW + 50), caveats.expiry(NOW + 10)])
    assert d.expiry == NOW + 10


def test_issue_refusals() -> None:
    disch, other = Principal.generate(), Principal.generate()
    tp = caveats.third_party("/d", disch.public_key)
    with pytest.raises(errors.BadArgError):
        issue_discharge(other, tp, [caveats.expiry(NOW)])
    with pytest.raises(errors.BadArgError):
        issue_discharge(disch, tp, [caveats.method("Get")])  # no expiry
    with pytest.raises(errors.BadArgError):
        issue_discharge(disch, tp, ["x"])  # type: ignore[list-item]
    with pytest.raises(errors.BadArgError):
        issue_discharge(disch, caveats.method("Get"), [caveats.expiry(NOW)])  # type: ignore[arg-type]


def test_issue_checks_restrictions() -> None:
    disch = Principal.generate()
    tp = caveats.third_party("/d", disch.public_key, restrictions=[caveats.method("Get")])
    with pytest.raises(errors.BadArgError):
        issue_discharge(disch, tp, [caveats.expiry(NOW)])
    with pytest.raises(errors.NoAccessError):
        issue_discharge(disch, tp, [caveats.expiry(NOW)], call=SecurityCall(method="Put"))
    d = issue_discharge(disch, tp, [caveats.expiry(NOW)], call=SecurityCall(method="Get"))
    assert d.caveat_id == tp.id


def test_discharge_without_expiry_never_validates() -> None:
    disch = Principal.generate()
    tp = caveats.third_party("/d", disch.public_key)
    from ipcclient.security.discharges import _discharge_digest
    from ipcclient.security.keys import PURPOSE_DISCHARGE

    cavs = [caveats.method("Get")]
    sig = disch.sign(PURPOSE_DISCHARGE, _discharge_digest(tp.id, cavs))
    d = Discharge(tp.id, cavs, sig)
    assert d.expiry is None
    with pytest.raises(errors.BadDischargeError, match="no expiry"):
        d.validate_for(tp, SecurityCall(method="Get"))
    cache = DischargeCache()
    assert cache.put(d, now=NOW) is False


@pytest.mark.parametrize(
    "wire",
    [[], "x", ["a" * 64, [], b"s"], ["short", [], bytes(64)], ["a" * 64, "no", bytes(64)]],
)
def test_malformed_discharge(wire: object) -> None:
    with pytest.raises(errors.BadProtocolError):
        Discharge.from_wire(wire)


def test_filtered_impetus() -> None:
    imp = DischargeImpetus(server=(BlessingPattern("srv"),), method="Get", arguments=(1,))
    assert filtered_impetus(ThirdPartyRequirements(), imp) == DischargeImpetus()
    assert filtered_impetus(ThirdPartyRequirements(True, True, True), imp) == imp
    only_method = filtered_impetus(ThirdPartyRequirements(report_method=True), imp)
    assert only_method == DischargeImpetus(method="Get")


def test_cache_get_put_expiry_invalidate() -> None:
    disch = Principal.generate()
    cache = DischargeCache()
    tp, d = _discharge(disch, 60)
    assert cache.get(tp.id, now=NOW) is None
    assert cache.put(d, caveat=tp, now=NOW)
    assert cache.get(tp.id, now=NOW) is d
    assert cache.get(tp.id, now=NOW, min_validity=61) is None
    assert len(cache) == 1  # not purged: still valid now
    assert cache.get(tp.id, now=NOW + 61) is None
    assert len(cache) == 0  # purged on lookup
    assert cache.put(d, now=NOW)
    cache.invalidate(tp.id, "unknown")
    assert cache.get(tp.id, now=NOW) is None
    assert cache.put(d, now=NOW + 100) is False  # already expired
    cache.put(d, now=NOW)
    cache.clear()
    assert len(cache) == 0
    assert cache.put(d) is False  # default clock: NOW is in the past


def test_cache_refuses_report_arguments_and_mismatches() -> None:
    disch = Principal.generate()
    cache = DischargeCache()
    tp, d = _discharge(disch, 60, report_arguments=True)
    assert cache.put(d, caveat=tp, now=NOW) is False
    other_tp, other = _discharge(disch, 60)
    with pytest.raises(errors.BadDischargeError):
        cache.put(other, caveat=tp, now=NOW)
    forged = Discharge(other_tp.id, other.caveats, bytes(64))
    with pytest.raises(errors.BadDischargeError):
        cache.put(forged, caveat=other_tp, now=NOW)
    with pytest.raises(errors.BadArgError):
        DischargeCache(0)


def test_cache_is_bounded_and_evicts_soonest_expiring() -> None:
    disch = Principal.generate()
    cache = DischargeCache(max_entries=3)
    made = [_discharge(disch, ttl) for ttl in (50, 10, 30, 40)]
    for _, d in made:
        assert cache.put(d, now=NOW)
    assert len(cache) == 3
    assert cache.get(made[1][0].id, now=NOW) is None  # ttl 10 evicted
    assert all(cache.get(tp.id, now=NOW) is not None for tp, _ in (made[0], made[2], made[3]))
    # expired entries are purged first when full
    cache2 = DischargeCache(max_entries=2)
    a, b, c = (_discharge(disch, ttl) for ttl in (5, 100, 200))
    cache2.put(a[1], now=NOW)
    cache2.put(b[1], now=NOW)
    cache2.put(c[1], now=NOW + 50)
    assert cache2.get(b[0].id, now=NOW + 50) is b[1]
    assert cache2.get(c[0].id, now=NOW + 50) is c[1]


def test_cache_threads() -> None:
    disch = Principal.generate()
    pool = [_discharge(disch, random.randint(1, 100)) for _ in range(40)]
    cache = DischargeCache(max_entries=16)
    errors_seen: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(500):
                tp, d = rng.choice(pool)
                op = rng.random()
                if op < 0.5:
                    cache.put(d, now=NOW)
                elif op < 0.9:
                    got = cache.get(tp.id, now=NOW + rng.random() * 50)
                    assert got is None or got.caveat_id == tp.id
                else:
                    cache.invalidate(tp.id)
                assert len(cache) <= 16
        except BaseException as exc:  # pragma: no cover - reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert errors_seen == []
    assert len(cache) <= 16


def test_the_cache_keeps_a_discharge_per_call_the_caveat_asks_reported() -> None:
    """Keyed as the fetch was made: a discharge obtained for method Get is not handed out
    for Put when the caveat reports the method; invalidating the caveat ID forgets all."""
    dp = Principal.generate()
    reported = caveats.third_party("/d", dp.public_key, ThirdPartyRequirements(report_method=True))
    plain = caveats.third_party("/d", dp.public_key)
    get, put = DischargeImpetus(method="Get"), DischargeImpetus(method="Put")
    cache = DischargeCache()
    for_get = issue_discharge(dp, reported, [caveats.expires_in(60, now=NOW)])
    assert cache.put(for_get, caveat=reported, impetus=get, now=NOW)
    assert cache.get(reported.id, NOW, caveat=reported, impetus=get) is for_get
    assert cache.get(reported.id, NOW, caveat=reported, impetus=put) is None
    for_put = issue_discharge(dp, reported, [caveats.expires_in(60, now=NOW)])
    assert cache.put(for_put, caveat=reported, impetus=put, now=NOW)
    assert cache.get(reported.id, NOW, caveat=reported, impetus=put) is for_put
    # A caveat that reports nothing: one discharge for every call.
    any_call = issue_discharge(dp, plain, [caveats.expires_in(60, now=NOW)])
    assert cache.put(any_call, caveat=plain, impetus=get, now=NOW)
    assert cache.get(plain.id, NOW, caveat=plain, impetus=put) is any_call
    assert cache.get(plain.id, NOW) is any_call
    cache.invalidate(reported.id)
    assert cache.get(reported.id, NOW, caveat=reported, impetus=get) is None
    assert cache.get(reported.id, NOW, caveat=reported, impetus=put) is None
    assert len(cache) == 1


@pytest.mark.interpreted  # (counts the signature checks by replacing Discharge.verify)
@pytest.mark.parametrize("missing", [False, True])
def test_a_caveat_referenced_at_every_level_has_its_discharge_checked_once(
    monkeypatch: pytest.MonkeyPatch, missing: bool
) -> None:
    """A principal any trusted root blessed can be its own discharger: discharges whose
    caveats reference the next level's caveat F times each, and a blessing that references
    the top one R times, made one check verify R * (1 + F + F^2 + F^3) signatures (hours
    of CPU for one call at F = R = 63). Each (caveat, depth) is now checked once per call,
    whether it holds or not."""
    from ipcclient.security import validate_blessings

    idp = Principal.generate()
    root = idp.bless_self("idp")
    server = Principal.generate()
    server.add_to_roots(root)
    mallory = Principal.generate()
    hers = idp.bless(mallory.public_key, root, "mallory", [caveats.expires_in(3600)])
    expiry = caveats.expires_in(3600)
    w = caveats.third_party("d", mallory.public_key)
    level, discharges = w, [issue_discharge(mallory, w, [expiry])]
    for _ in range(3):
        upper = caveats.third_party("d", mallory.public_key)
        discharges.append(issue_discharge(mallory, upper, [expiry] + [level] * 20))
        level = upper
    blessings = mallory.bless(mallory.public_key, hers, "x", [level] * 20)
    if missing:
        discharges = discharges[1:]  # (the bottom one: every path fails there)
    checked = [0]
    verify = Discharge.verify

    def counting(d: Discharge, key: object) -> bool:
        checked[0] += 1
        return verify(d, key)  # type: ignore[arg-type]

    monkeypatch.setattr(Discharge, "verify", counting)
    call = SecurityCall(
        method="Get",
        remote_blessings=blessings,
        remote_discharges={d.caveat_id: d for d in discharges},
    )
    names, rejected = validate_blessings(blessings, call, server.roots)
    if missing:
        assert names == [] and len(rejected) == 1
        assert "no discharge" in rejected[0].error.msg
    else:
        assert names == ["idp:mallory:x"]
    assert checked[0] <= len(discharges)  # (was 20 * (1 + 20 + 400 + 8000) = 168,420)


def test_a_nested_caveat_shared_by_many_discharges_is_sent_once() -> None:
    """Discharges of one level that carry the same third-party caveat each added its
    discharge again: 40 such discharges made 80 for 41 caveats, and the server, which
    takes at most 64 in a request, refused every call."""
    from ipcclient.client.security import prepare_discharges

    disch, user = Principal.generate(), Principal.generate()
    expiry = caveats.expires_in(3600)
    shared = caveats.third_party("d", disch.public_key)
    tops = [caveats.third_party("d", disch.public_key) for _ in range(40)]
    blessings = user.bless(user.public_key, user.bless_self("u"), "x", tops)
    cache = DischargeCache()
    for top in tops:
        cache.put(issue_discharge(disch, top, [expiry, shared]), caveat=top)
    fetched: list[str] = []

    def fetch(_ctx: object, missing: list[caveats.ThirdPartyCaveat], *_: object) -> list[Discharge]:
        fetched.extend(c.id for c in missing)
        return [issue_discharge(disch, c, [expiry]) for c in missing]

    found, problems = prepare_discharges(
        cache,
        fetch,
        lambda: None,
        blessings,
        ["s"],
        "Get",
        (),
        (),  # type: ignore[arg-type]
    )
    assert problems == []
    assert fetched == [shared.id]
    assert sorted(d.caveat_id for d in found) == sorted([t.id for t in tops] + [shared.id])
