"""The discharger over real loopback TCP, and third-party caveats end to end.

A client blessed with a third-party caveat calls a server; the client fetches the discharge
from a real Discharger by itself; revocation then makes the server refuse it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.client import security as csec
from ipcclient.options import NoDischarges, NoRetry
from ipcclient.security import BlessingPattern, Discharge, DischargeImpetus, Principal, caveats
from ipcclient.security.caveats import SecurityCall, ThirdPartyRequirements
from ipcclient.security.discharges import issue_discharge
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.discharger import Discharger
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import MountTable
from ipcclient.server.server import Results, Server, ServerCall
from tests.rpc.test_mounttable import Family, Label, at, client_for, ctx, serving, wait_until


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


def _discharger(
    stack: contextlib.ExitStack, family: Family, **kwargs: float
) -> tuple[Discharger, Principal, str]:
    principal = family.member("discharger")
    discharger = Discharger(principal, validity=kwargs.get("validity", 60.0))
    _, name = serving(stack, principal, discharger, authorizer=AllowEveryone())
    return discharger, principal, name


def _impetus(method: str = "", server: tuple[str, ...] = ()) -> dict[str, object]:
    patterns = tuple(BlessingPattern(p) for p in server)
    return DischargeImpetus(server=patterns, method=method).to_wire()


def test_issues_a_discharge_for_its_own_caveat(stack: contextlib.ExitStack, family: Family) -> None:
    _, dp, dname = _discharger(stack, family, validity=30.0)
    client = client_for(stack, family.member("client"))
    cav = caveats.third_party(dname, dp.public_key)
    before = time.time()
    (d,) = client.call(ctx(), dname, "Discharge", cav, _impetus())
    assert isinstance(d, Discharge)
    assert d.caveat_id == cav.id and d.verify(dp.public_key)
    assert d.expiry is not None and before + 29 <= d.expiry <= time.time() + 30.5
    d.validate_for(cav, SecurityCall(remote_discharges={cav.id: d}))  # what a server checks


def test_refuses_foreign_revoked_and_non_third_party_caveats(
    stack: contextlib.ExitStack, family: Family
) -> None:
    discharger, dp, dname = _discharger(stack, family)
    client = client_for(stack, family.member("client"))
    foreign = caveats.third_party(dname, Principal.generate().public_key)
    with pytest.raises(errors.NoAccessError):
        client.call(ctx(), dname, "Discharge", foreign, _impetus(), options=(NoRetry(),))
    with pytest.raises(errors.BadArgError):
        client.call(
            ctx(), dname, "Discharge", caveats.expires_in(60), _impetus(), options=(NoRetry(),)
        )
    with pytest.raises(errors.BadArgError):
        client.call(ctx(), dname, "Discharge", caveats.third_party(dname, dp.public_key), "x")

    mine = caveats.third_party(dname, dp.public_key)
    discharger.revocations.revoke(mine.id)
    with pytest.raises(errors.NoAccessError) as info:
        client.call(ctx(), dname, "Discharge", mine, _impetus(), options=(NoRetry(),))
    assert "revoked" in info.value.msg
    discharger.revocations.restore(mine.id)
    (d,) = client.call(ctx(), dname, "Discharge", mine, _impetus())
    assert d.caveat_id == mine.id

    # Revocation is Python-only: nothing but Discharge is callable remotely.
    for method in ("revocations", "revoke", "_principal"):
        with pytest.raises(errors.UnknownMethodError):
            client.call(ctx(), dname, method, mine.id, options=(NoRetry(),))
    assert Discharger(dp, revoked={mine.id}).revocations.__contains__(mine.id)
    with pytest.raises(errors.BadArgError):
        Discharger(dp, validity=0)


def test_checks_the_caveats_restrictions(stack: contextlib.ExitStack, family: Family) -> None:
    _, dp, dname = _discharger(stack, family)
    client = client_for(stack, family.member("client"))
    cav = caveats.third_party(
        dname,
        dp.public_key,
        ThirdPartyRequirements(report_server=True, report_method=True),
        [caveats.method("Get"), caveats.peer_blessings("root:server")],
    )
    (d,) = client.call(ctx(), dname, "Discharge", cav, _impetus("Get", ("root:server",)))
    assert d.caveat_id == cav.id
    for method, server in (("Put", ("root:server",)), ("Get", ("root:other",)), ("", ())):
        with pytest.raises(errors.NoAccessError):
            client.call(
                ctx(), dname, "Discharge", cav, _impetus(method, server), options=(NoRetry(),)
            )


@expose
class _LyingAboutDischarges:
    def Who(self, call: ServerCall) -> str:
        # (10**5000 has more digits than Python turns into text by default.)
        raise errors.BadDischargeError("server: refused a discharge", 10**5000)


def test_a_refused_discharge_named_by_no_text_forgets_every_discharge_used(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A server's BadDischargeError names the refused discharge by its caveat id; one that
    names it by anything else (here an integer too long to print) makes the client forget
    every discharge the call used, and the error reaches the caller as such (it once
    ended the call with a bare ValueError)."""
    _, sname, client, _ = _tpc_setup(stack, family, validity=60.0)
    _server, liar = serving(
        stack, family.member("liar"), _LyingAboutDischarges(), authorizer=AllowEveryone()
    )
    assert client.call(ctx(), sname, "Who") == ("guarded",)  # (a discharge is fetched)
    assert client.stats["discharges_fetched"] == 1
    with pytest.raises(errors.BadDischargeError):
        client.call(ctx(), liar, "Who", options=(NoRetry(),))
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    assert client.stats["discharges_fetched"] == 2  # (the one used was forgotten)


def _tpc_setup(
    stack: contextlib.ExitStack, family: Family, validity: float
) -> tuple[Discharger, str, Client, str]:
    """A discharger, a client blessed with its third-party caveat, and a server that allows
    only that blessing (``root:client``)."""
    discharger, dp, dname = _discharger(stack, family, validity=validity)
    cp = Principal.generate()
    cav = caveats.third_party(dname, dp.public_key)
    b = family.root.bless(cp.public_key, family.root_blessings, "client", [cav])
    cp.store.default = b
    cp.store.set(b, "...")
    cp.roots.add_blessings(family.root_blessings)
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    return discharger, sname, client_for(stack, cp), cav.id


def test_third_party_caveat_end_to_end_then_revoked(
    stack: contextlib.ExitStack, family: Family
) -> None:
    discharger, sname, client, cid = _tpc_setup(stack, family, validity=60.0)
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    assert client.stats["discharges_fetched"] == 1
    assert client.call(ctx(), sname, "Echo", 5) == (5,)
    assert client.stats["discharges_fetched"] == 1  # cached

    # Without a discharge the server refuses the blessing.
    with pytest.raises(errors.NoAccessError):
        client.call(ctx(), sname, "Who", options=(NoDischarges(), NoRetry()))

    discharger.revocations.revoke(cid)
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    client.discharge_cache.clear()
    with pytest.raises(errors.NoAccessError) as info:
        client.call(ctx(), sname, "Who", options=(NoRetry(),))
    assert isinstance(info.value, errors.BadDischargeError)
    assert info.value.params[0] == cid


def test_a_server_whose_blessing_needs_a_discharge_presents_one(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A revocable server: its blessing carries a third-party caveat. The server had no way
    to present discharges, so every client refused it (NotTrusted); with
    ``discharges=client.discharges_for(...)`` it fetches one and presents it at each
    handshake, until the discharger revokes it."""
    discharger, dp, dname = _discharger(stack, family)
    cav = caveats.third_party(dname, dp.public_key)
    sp = Principal.generate()
    sb = family.root.bless(sp.public_key, family.root_blessings, "server", [cav])
    sp.store.default = sb
    sp.roots.add_blessings(family.root_blessings)
    fetcher = client_for(stack, sp)
    for source, expected in ((None, errors.NotTrustedError), (fetcher.discharges_for(sb), None)):
        server = Server(sp, discharges=source)
        stack.callback(server.stop)
        name = "/" + server.listen("tcp", "127.0.0.1:0")
        server.serve(Label("revocable"), AllowEveryone())
        client = client_for(stack, family.member("client"))
        if expected is None:
            assert client.call(ctx(), name, "Who", options=(NoRetry(),)) == ("revocable",)
        else:
            with pytest.raises(expected, match="discharge"):
                client.call(ctx(), name, "Who", options=(NoRetry(),))
    assert fetcher.stats["discharges_fetched"] == 1
    discharger.revocations.revoke(cav.id)
    fetcher.discharge_cache.clear()  # (as when the discharge expires)
    with pytest.raises(errors.NotTrustedError):
        client_for(stack, family.member("client")).call(ctx(), name, "Who", options=(NoRetry(),))
    with pytest.raises(errors.BadArgError):
        Server(sp, discharges="not a function")
    with pytest.raises(errors.BadArgError):
        fetcher.discharges_for("not blessings")


def test_revocation_bites_when_the_cached_discharge_expires(
    stack: contextlib.ExitStack, family: Family
) -> None:
    # (Under DISCHARGE_MARGIN: never reused from the cache, whatever the validity.)
    discharger, sname, client, cid = _tpc_setup(stack, family, validity=1.0)
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    discharger.revocations.revoke(cid)

    def refused() -> bool:
        try:
            client.call(ctx(), sname, "Who", options=(NoRetry(),))
        except errors.NoAccessError:
            return True
        return False

    assert wait_until(refused, 3.0)


def _blessed_with(family: Family, *cavs: caveats.Caveat) -> Principal:
    """A principal blessed ``root:client`` with ``cavs`` on its blessing."""
    cp = Principal.generate()
    b = family.root.bless(cp.public_key, family.root_blessings, "client", list(cavs))
    cp.store.default = b
    cp.store.set(b, "...")
    cp.roots.add_blessings(family.root_blessings)
    return cp


def _signed(cid: str, cavs: list[caveats.Caveat], signer: Principal) -> Discharge:
    digest = Discharge(cid, cavs, b"").digest()
    return Discharge(cid, cavs, signer.sign(b"discharge", digest))


def test_a_discharge_is_checked_whatever_was_checked_before_on_the_vc(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a valid discharge for a caveat, the server once took any discharge for the same
    caveat ID on that VC (a forged or an expired one) from its cache of checked facts.
    A hostile client is simulated by sending crafted discharges (the one fault a real
    client does not make)."""
    _, dp, dname = _discharger(stack, family)
    cav = caveats.third_party(dname, dp.public_key)
    client = client_for(stack, _blessed_with(family, cav))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    assert client.call(ctx(), sname, "Who", options=(NoRetry(),)) == ("guarded",)
    soon = [caveats.expires_in(60)]
    for forged in (
        _signed(cav.id, soon, Principal.generate()),  # not the discharger's signature
        _signed(cav.id, [caveats.expiry(time.time() - 5)], dp),  # expired
    ):
        monkeypatch.setattr(csec, "prepare_discharges", lambda *_a, d=forged: ((d,), []))
        with pytest.raises(errors.NoAccessError):
            client.call(ctx(), sname, "Who", options=(NoRetry(),))
    monkeypatch.undo()
    assert client.call(ctx(), sname, "Who", options=(NoRetry(),)) == ("guarded",)


@expose
class _OddDischarger:
    """A discharger that answers with no result, or with two."""

    def Discharge(self, call: ServerCall, caveat: object, impetus: object) -> Results:
        return Results() if call.suffix == "none" else Results(1, 2)

    def lookup(self, suffix: str) -> tuple[object, AllowEveryone]:  # (every suffix)
        return self, AllowEveryone()


@pytest.mark.parametrize("answer", ["none", "two"])
def test_a_discharger_that_answers_oddly_is_named_in_the_callers_error(
    stack: contextlib.ExitStack, family: Family, answer: str
) -> None:
    """A discharger answering with no result or two once ended the call with a bare
    ValueError and left its flow open on the VC; why a fetch failed never reached the
    caller, whose error said only that the server refused the blessing."""
    odd_key = family.member("odd")
    odd = Server(odd_key)
    stack.callback(odd.stop)
    location = "/" + odd.listen("tcp", "127.0.0.1:0") + "/" + answer
    odd.serve_dispatcher(_OddDischarger())
    cav = caveats.third_party(location, odd_key.public_key)
    client = client_for(stack, _blessed_with(family, cav))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    for _ in range(3):
        with pytest.raises(errors.NoAccessError) as info:
            client.call(ctx(), sname, "Who", options=(NoRetry(),))
        assert "not fetched: discharge for caveat" in str(info.value)
        assert "the discharger sent no discharge" in str(info.value)
    conns = [c for c in client._cache.vcs.values() if not c.closed]
    assert conns and all(c.flow_count == 0 for c in conns)


def test_a_discharge_that_needs_a_discharge_of_its_own_gets_one(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A discharger may issue discharges that carry a third-party caveat of their own (the
    validator looks that deep: docs/protocol.md 6.2). The client fetched discharges only
    for the caveats on its certificates, so the server refused every call (BadDischarge),
    and the client dropped the outer discharge and fetched it again each time."""
    _, inner_p, inner_name = _discharger(stack, family)
    inner = caveats.third_party(inner_name, inner_p.public_key)
    outer_p = family.member("outer-discharger")

    @expose
    class Chained:
        def Discharge(self, call: ServerCall, caveat: Any, impetus: Any) -> Discharge:
            return issue_discharge(outer_p, caveat, [caveats.expires_in(60), inner])

    _, outer_name = serving(stack, outer_p, Chained(), authorizer=AllowEveryone())
    outer = caveats.third_party(outer_name, outer_p.public_key)
    client = client_for(stack, _blessed_with(family, outer))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    for _ in range(3):
        assert client.call(ctx(), sname, "Who", options=(NoRetry(),)) == ("guarded",)
    assert client.stats["discharges_fetched"] == 2  # (one each, then both from the cache)


def test_a_discharge_bound_to_what_it_was_told_is_kept_for_that_call_only(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A caveat that asks the client to report the method and the server lets a discharger
    bind its discharge to them. Cached by caveat ID alone, the discharge fetched for Get
    went with Put (refused, dropped, fetched again: every other call failed)."""
    dp = family.member("binding-discharger")

    @expose
    class Binding:
        def Discharge(self, call: ServerCall, caveat: Any, impetus: Any) -> Discharge:
            told = DischargeImpetus.from_wire(impetus)
            cavs = [caveats.expires_in(60), caveats.method(told.method)]
            cavs.append(caveats.peer_blessings(*[f"{p}:$" for p in told.server]))
            return issue_discharge(dp, caveat, cavs)

    _, dname = serving(stack, dp, Binding(), authorizer=AllowEveryone())
    required = ThirdPartyRequirements(report_server=True, report_method=True)
    client = client_for(
        stack, _blessed_with(family, caveats.third_party(dname, dp.public_key, required))
    )
    guarded = AllowPatterns(["root:client"])
    _, a = serving(stack, family.member("a"), Label("a"), authorizer=guarded)
    _, b = serving(stack, family.member("b"), Label("b"), authorizer=guarded)
    for _ in range(3):
        for name, method, args in ((a, "Who", ()), (a, "Echo", (1,)), (b, "Who", ())):
            client.call(ctx(), name, method, *args, options=(NoRetry(),))
    assert client.stats["discharges_fetched"] == 3  # (one per method and server, kept)


def test_a_discharge_is_asked_only_of_a_server_holding_the_dischargers_key(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """The caveat's location names a server that is not the discharger (a name hijacked in
    a mount table, say): valid under the client's roots, but not holding the caveat's
    discharger key. It once received the request, with the call's method and arguments
    when the caveat asks for them; now the client refuses it before writing a byte."""
    dp = family.member("discharger")
    told: list[Any] = []

    @expose
    class Impostor:
        def Discharge(self, call: ServerCall, caveat: Any, impetus: Any) -> Discharge:
            told.append(impetus)
            raise errors.NoAccessError("no")

    _, iname = serving(stack, family.member("impostor"), Impostor(), authorizer=AllowEveryone())
    required = ThirdPartyRequirements(report_method=True, report_arguments=True)
    client = client_for(
        stack, _blessed_with(family, caveats.third_party(iname, dp.public_key, required))
    )
    _, sname = serving(
        stack, family.member("server"), Label("s"), authorizer=AllowPatterns(["root:client"])
    )
    with pytest.raises(errors.NoAccessError) as info:
        client.call(ctx(), sname, "Echo", "a secret", options=(NoRetry(),))
    assert "public key is not the one asked for" in str(info.value)
    assert told == []
    # The discharger itself, at its own name, is asked.
    discharger = Discharger(dp)
    _, dname = serving(stack, dp, discharger, authorizer=AllowEveryone())
    client = client_for(stack, _blessed_with(family, caveats.third_party(dname, dp.public_key)))
    assert client.call(ctx(), sname, "Echo", "a secret", options=(NoRetry(),)) == ("a secret",)
    assert client.stats["discharges_fetched"] == 1


def test_blessings_with_more_third_party_caveats_than_a_request_carries_fail_at_once(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """65 third-party caveats on a chain of two certificates (33 and 32: one certificate
    carries at most 64, which ``bless`` enforces): 65 discharges would be fetched, then the
    server refused the request header as malformed ("bad discharges"), on every call."""
    _, dp, dname = _discharger(stack, family)
    cavs = [caveats.third_party(dname, dp.public_key) for _ in range(65)]
    mid = Principal.generate()
    mid_blessings = family.root.bless(mid.public_key, family.root_blessings, "mid", cavs[:33])
    cp = Principal.generate()
    b = mid.bless(cp.public_key, mid_blessings, "client", cavs[33:])
    cp.store.default = b
    cp.store.set(b, "...")
    cp.roots.add_blessings(family.root_blessings)
    client = client_for(stack, cp)
    _, sname = serving(stack, family.member("server"), Label("guarded"))
    with pytest.raises(errors.IPCError, match="65 third-party caveats; a request carries at"):
        client.call(ctx(), sname, "Who", options=(NoRetry(),))
    assert client.stats["discharges_fetched"] == 0


def test_a_cached_discharge_about_to_expire_is_fetched_anew(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A discharge with less than DISCHARGE_MARGIN left is not sent (it could expire on its
    way: busy clients once lost calls to BadDischarge near each expiry)."""
    assert csec.DISCHARGE_MARGIN > 1.5
    _, sname, client, _ = _tpc_setup(stack, family, validity=1.5)
    for n in (1, 2, 3):
        assert client.call(ctx(), sname, "Who") == ("guarded",)
        assert client.stats["discharges_fetched"] == n


class _GatedDischarger(Discharger):
    """A discharger that holds every request until its gate opens, counting them."""

    def __init__(self, principal: Principal) -> None:
        super().__init__(principal, validity=60.0)
        self.gate = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()

    @expose
    def Discharge(self, call: ServerCall, caveat: object, impetus: object) -> Discharge:
        with self._lock:
            self.requests += 1
        self.gate.wait(10.0)
        return super().Discharge(call, caveat, impetus)


def _gated_setup(
    stack: contextlib.ExitStack, family: Family
) -> tuple[_GatedDischarger, Client, str, str]:
    """A gated discharger, a client blessed with its caveat, a server that wants that
    blessing, and the caveat's ID."""
    dp = family.member("discharger")
    discharger = _GatedDischarger(dp)
    stack.callback(discharger.gate.set)  # (no request is left held at the end)
    _, dname = serving(stack, dp, discharger, authorizer=AllowEveryone())
    cav = caveats.third_party(dname, dp.public_key)
    client = client_for(stack, _blessed_with(family, cav))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    return discharger, client, sname, cav.id


def _calls_in_threads(
    n: int, call: Callable[[], tuple[object, ...]]
) -> tuple[list[threading.Thread], list[object]]:
    outcomes: list[object] = []

    def one() -> None:
        try:
            outcomes.append(call())
        except errors.IPCError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, outcomes


def _awaiting(client: Client, cid: str, n: int) -> Callable[[], bool]:
    """Whether ``n`` calls await the fetch in progress for caveat ``cid``."""

    def check() -> bool:
        fetches = getattr(client.discharge_cache, "_fetches", {})
        waiting = [len(f.waiters) for key, f in list(fetches.items()) if key[0] == cid]
        return waiting == [n]

    return check


@pytest.mark.parametrize("revoked", [False, True])
def test_calls_missing_the_cache_together_make_one_fetch(
    stack: contextlib.ExitStack, family: Family, revoked: bool
) -> None:
    """16 calls missing the cache for the same caveat at once made 16 fetches. Now one
    fetches and the others take its discharge, or its refusal."""
    discharger, client, sname, cid = _gated_setup(stack, family)
    if revoked:
        discharger.revocations.revoke(cid)
    threads, outcomes = _calls_in_threads(
        16, lambda: client.call(ctx(10), sname, "Who", options=(NoRetry(),))
    )
    assert wait_until(_awaiting(client, cid, 15), 5.0)
    discharger.gate.set()
    for t in threads:
        t.join(10.0)
    assert discharger.requests == 1
    if not revoked:
        assert outcomes == [("guarded",)] * 16
        assert client.stats["discharges_fetched"] == 1
    else:
        assert len(outcomes) == 16
        for err in outcomes:
            assert isinstance(err, errors.NoAccessError)
            assert "not fetched: discharge for caveat" in str(err) and "is revoked" in str(err)


def test_a_call_awaiting_a_fetch_keeps_its_own_deadline(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A call awaiting another's fetch ends at its own deadline; and when the fetching
    call's deadline ends that fetch, a call still awaiting it fetches anew. A call that
    stops waiting is forgotten by the fetch at once (they were kept until it ended)."""
    discharger, client, sname, cid = _gated_setup(stack, family)
    leader, leader_out = _calls_in_threads(
        1, lambda: client.call(ctx(1.5), sname, "Who", options=(NoRetry(),))
    )
    assert wait_until(lambda: discharger.requests == 1, 5.0)
    short, short_out = _calls_in_threads(
        1, lambda: client.call(ctx(0.3), sname, "Who", options=(NoRetry(),))
    )
    patient, patient_out = _calls_in_threads(
        1, lambda: client.call(ctx(10), sname, "Who", options=(NoRetry(),))
    )
    short[0].join(5.0)
    assert not short[0].is_alive()  # (ended by its deadline, the fetch still held)
    assert len(short_out) == 1 and isinstance(short_out[0], errors.TimeoutError)
    assert discharger.requests == 1  # (it awaited the fetch in progress)
    assert wait_until(_awaiting(client, cid, 1), 5.0)  # (only the patient call is left)
    leader[0].join(5.0)  # its deadline ends its fetch
    assert len(leader_out) == 1 and isinstance(leader_out[0], errors.TimeoutError)
    assert wait_until(lambda: discharger.requests == 2, 5.0)  # the patient call's own
    discharger.gate.set()
    patient[0].join(10.0)
    assert patient_out == [("guarded",)]


def test_a_call_awaits_only_a_fetch_that_tells_the_discharger_the_same(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A caveat that reports the method and holds only for "Who": a call to "Who" that
    awaited a call to "Echo" fetching the same caveat took the discharger's refusal of
    "Echo". Calls share a fetch only when the discharger is told the same."""
    dp = family.member("discharger")
    discharger = _GatedDischarger(dp)
    stack.callback(discharger.gate.set)
    _, dname = serving(stack, dp, discharger, authorizer=AllowEveryone())
    cav = caveats.third_party(
        dname, dp.public_key, ThirdPartyRequirements(report_method=True), [caveats.method("Who")]
    )
    client = client_for(stack, _blessed_with(family, cav))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    echo, echo_out = _calls_in_threads(
        1, lambda: client.call(ctx(10), sname, "Echo", 1, options=(NoRetry(),))
    )
    assert wait_until(lambda: discharger.requests == 1, 5.0)
    who, who_out = _calls_in_threads(
        1, lambda: client.call(ctx(10), sname, "Who", options=(NoRetry(),))
    )
    assert wait_until(lambda: discharger.requests == 2, 5.0)  # (its own fetch)
    discharger.gate.set()
    for t in echo + who:
        t.join(10.0)
    assert who_out == [("guarded",)]
    assert len(echo_out) == 1 and isinstance(echo_out[0], errors.NoAccessError)
    assert "method 'Echo' not in the allowed" in str(echo_out[0])


class _TimingOutDischarger(_GatedDischarger):
    """Answers every request, once its gate opens, with its own TimeoutError."""

    @expose
    def Discharge(self, call: ServerCall, caveat: object, impetus: object) -> Discharge:
        with self._lock:
            self.requests += 1
        self.gate.wait(10.0)
        raise errors.TimeoutError("discharger: the revocation list did not answer in time")


def test_a_discharger_timing_out_is_its_error_not_the_fetching_calls_deadline(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A TimeoutError from the discharger was taken for the fetching call's own deadline:
    each waiting call fetched anew, one after another, and late ones ended by their own
    deadlines. Now they all take the discharger's error from the one fetch."""
    dp = family.member("discharger")
    discharger = _TimingOutDischarger(dp)
    stack.callback(discharger.gate.set)
    _, dname = serving(stack, dp, discharger, authorizer=AllowEveryone())
    cav = caveats.third_party(dname, dp.public_key)
    client = client_for(stack, _blessed_with(family, cav))
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    threads, outcomes = _calls_in_threads(
        8, lambda: client.call(ctx(10), sname, "Who", options=(NoRetry(),))
    )
    assert wait_until(_awaiting(client, cav.id, 7), 5.0)
    discharger.gate.set()
    for t in threads:
        t.join(10.0)
    assert discharger.requests == 1
    assert len(outcomes) == 8
    for err in outcomes:
        assert isinstance(err, errors.NoAccessError)
        assert "revocation list did not answer in time" in str(err)


@pytest.mark.parametrize("anyone_resolves", [True, False])
def test_a_discharger_named_through_a_mount_table(
    stack: contextlib.ExitStack, anyone_resolves: bool
) -> None:
    """The discharger's name resolved through a mount table: the lookup (ResolveStep,
    presenting the same blessings) missed the cache for the caveat being fetched and
    awaited that very fetch until the call's deadline (before the fetches were shared, it
    recursed until a RecursionError). The lookup now goes without that discharge: a table
    that lets anyone resolve answers it, and one that wants the client's blessing refuses at
    once, the error saying why."""
    family = Family()
    table = MountTable(resolve_patterns=None) if anyone_resolves else MountTable()
    _, mt = serving(stack, family.member("mt"), table=table)
    dp = family.member("discharger")
    _, dname = serving(stack, dp, Discharger(dp), authorizer=AllowEveryone())
    admin = client_for(stack, family.member("admin"), mt)
    assert admin.call(ctx(), at(mt, "disch"), "Mount", dname, 60.0, 0) == ()
    cav = caveats.third_party("disch", dp.public_key)
    client = client_for(stack, _blessed_with(family, cav), mt)
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    started = time.monotonic()
    if anyone_resolves:
        assert client.call(ctx(10), sname, "Who", options=(NoRetry(),)) == ("guarded",)
        assert client.stats["discharges_fetched"] == 1
        assert client.call(ctx(10), sname, "Who", options=(NoRetry(),)) == ("guarded",)
        assert client.stats["discharges_fetched"] == 1  # (cached)
    else:
        with pytest.raises(errors.NoAccessError, match="needed on the way to its own discharger"):
            client.call(ctx(10), sname, "Who", options=(NoRetry(),))
        assert client.stats["discharges_fetched"] == 0
    assert time.monotonic() - started < 5.0


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_while_fetching_several_discharges_comes_at_once(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """Two third-party caveats, fetched side by side from a discharger that does not answer:
    Ctrl-C reaches the caller at once (the fetches were waited for until their deadline,
    20 s here), and the client's next call goes on normally."""
    from tests.transport.test_client_faults import ctrl_c_after

    dp = family.member("discharger")
    discharger = _TimingOutDischarger(dp)
    stack.callback(discharger.gate.set)
    _, dname = serving(stack, dp, discharger, authorizer=AllowEveryone())
    cavs = [caveats.third_party(dname, dp.public_key) for _ in range(2)]
    client = client_for(stack, _blessed_with(family, *cavs))
    _, sname = serving(stack, family.member("server"), Label("guarded"))
    start = time.monotonic()
    with ctrl_c_after(0.3), pytest.raises(KeyboardInterrupt):
        client.call(ctx(20), sname, "Who", options=(NoRetry(),))
    assert time.monotonic() - start < 5.0
    assert discharger.requests == 2
    open_server = family.member("server")
    _, open_name = serving(stack, open_server, Label("open"), authorizer=AllowEveryone())
    assert client.call(ctx(5), open_name, "Who", options=(NoRetry(), NoDischarges())) == ("open",)
