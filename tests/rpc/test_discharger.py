"""The discharger over real loopback TCP, and third-party caveats end to end.

A client blessed with a third-party caveat calls a server; the client fetches the discharge
from a real Discharger by itself; revocation then makes the server refuse it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.options import NoDischarges, NoRetry
from ipcclient.security import BlessingPattern, Discharge, DischargeImpetus, Principal, caveats
from ipcclient.security.caveats import SecurityCall, ThirdPartyRequirements
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.discharger import Discharger
from ipcclient.server.exposure import expose
from ipcclient.server.server import ServerCall
from tests.rpc.test_mounttable import Family, Label, client_for, ctx, serving, wait_until


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


def test_revocation_bites_when_the_cached_discharge_expires(
    stack: contextlib.ExitStack, family: Family
) -> None:
    discharger, sname, client, cid = _tpc_setup(stack, family, validity=0.4)
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    discharger.revocations.revoke(cid)

    def refused() -> bool:
        try:
            client.call(ctx(), sname, "Who", options=(NoRetry(),))
        except errors.NoAccessError:
            return True
        return False

    assert wait_until(refused, 3.0)
