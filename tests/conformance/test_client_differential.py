"""The fast path of the usual unary call against the general path, for changes on the
client's side of security: each case must end the same whichever path the call takes.

``ipcclient.client.api.FAST_PATH = False`` forces the general path (the documented switch);
the fast path is seen to be taken when a call makes no call object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ipcclient.client.api as client_api
from ipcclient import errors
from ipcclient.client import Client, security
from ipcclient.context import Context
from ipcclient.naming.endpoint import Endpoint
from ipcclient.options import CallOption, ServerPattern, SkipServerAuthorization
from ipcclient.security import Principal, caveats
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.discharger import Discharger
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall
from tests.conftest import Family

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Who:
    def WhoAmI(self, call: ServerCall) -> list[str]:
        return list(call.remote_blessing_names)


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many call objects the general path made (the fast path makes none)."""
    count = [0]
    real = client_api.Call

    def counting(*a: Any, **k: Any) -> Any:
        count[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(client_api, "Call", counting)
    yield count


def outcome(
    client: Client, name: str, *, fast: bool, options: tuple[CallOption, ...] = ()
) -> tuple[Any, ...]:
    """What ``WhoAmI`` on ``name`` ends with, with the fast path allowed or not."""
    saved = client_api.FAST_PATH
    client_api.FAST_PATH = fast
    try:
        return ("ok", client.call(ctx(5.0), name, "WhoAmI", options=options))
    except errors.IPCError as exc:
        return (type(exc), exc.id, exc.action, exc.request_sent)
    finally:
        client_api.FAST_PATH = saved


def same_both_ways(
    client: Client, name: str, made: list[int], options: tuple[CallOption, ...] = ()
) -> tuple[Any, ...]:
    general = outcome(client, name, fast=False, options=options)
    fast = outcome(client, name, fast=True, options=options)
    assert general == fast
    return fast


def test_the_fast_path_is_taken_and_the_switch_turns_it_off(
    make_server: MakeServer, make_client: MakeClient, made: list[int]
) -> None:
    _, name = make_server(Who(), AllowEveryone())
    client = make_client()
    assert same_both_ways(client, name, made) == ("ok", (["root:client"],))
    before = made[0]
    assert outcome(client, name, fast=True) == ("ok", (["root:client"],))
    assert made[0] == before  # the fast path, from the plan the general path kept
    assert outcome(client, name, fast=False) == ("ok", (["root:client"],))
    assert made[0] == before + 1  # the switch forces the general path


def test_the_validity_horizon_expiring(
    family: Family,
    make_server: MakeServer,
    make_client: MakeClient,
    made: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's blessing expires after the plan was kept: the fast path must not use
    the plan past its validity; both paths refuse the server."""
    server = family.member("server", caveats.expires_in(30))
    _, name = make_server(Who(), AllowEveryone(), principal=server)
    client = make_client()
    assert same_both_ways(client, name, made) == ("ok", (["root:client"],))
    before = made[0]
    assert outcome(client, name, fast=True)[0] == "ok"
    assert made[0] == before  # the plan is in use
    real = security.wall_clock
    monkeypatch.setattr(security, "wall_clock", lambda: real() + 120.0)
    got = same_both_ways(client, name, made)
    assert got[0] is errors.NotTrustedError and got[3] is False


def test_a_server_pattern_mismatch(
    make_server: MakeServer, make_client: MakeClient, made: list[int]
) -> None:
    """A plan kept by a plain call never stands in for a call that names its server."""
    _, name = make_server(Who(), AllowEveryone())
    client = make_client()
    assert same_both_ways(client, name, made)[0] == "ok"  # a plan is kept on the VC
    got = same_both_ways(client, name, made, (ServerPattern("root:other"),))
    assert got[0] is errors.NotTrustedError and got[3] is False
    ok = same_both_ways(client, name, made, (ServerPattern("root:server"),))
    assert ok == ("ok", (["root:client"],))


def test_an_endpoint_blessing_mismatch(
    family: Family, make_server: MakeServer, make_client: MakeClient, made: list[int]
) -> None:
    """The endpoint names root:server; root:mallory answers. A call that skips the check
    (an option) must leave no plan for the plain calls after it."""
    _, name = make_server(Who(), AllowEveryone(), principal=family.member("mallory"))
    ep = Endpoint.parse(name[1:])
    forged = "/" + str(Endpoint(ep.protocol, ep.address, blessings=("root:server",)))
    client = make_client()
    first = same_both_ways(client, forged, made)
    assert first[0] is errors.NotTrustedError and first[3] is False
    skip = (SkipServerAuthorization(),)
    assert same_both_ways(client, forged, made, skip) == ("ok", (["root:client"],))
    assert same_both_ways(client, forged, made) == first
    assert same_both_ways(client, name, made)[0] == "ok"  # (the true endpoint: trusted)


def test_the_clients_blessings_gaining_third_party_caveats(
    family: Family, make_server: MakeServer, make_client: MakeClient, made: list[int]
) -> None:
    """Blessings with a third-party caveat need a discharge on every call: the fast path is
    never taken, and both paths send the discharge (or both fail without one)."""
    dp = family.member("discharger")
    discharger = Discharger(dp, validity=60.0)
    _, dname = make_server(discharger, AllowEveryone(), principal=dp)
    _, name = make_server(Who(), AllowPatterns(["root:client"]))
    cp = Principal.generate()
    cp.roots.add_blessings(family.root_blessings)
    plain = family.root.bless(
        cp.public_key, family.root_blessings, "client", [caveats.unconstrained_use()]
    )
    cp.store.default = plain
    cp.store.set(plain, "...")
    client = make_client(cp)
    assert same_both_ways(client, name, made) == ("ok", (["root:client"],))
    # The client's blessings gain a third-party caveat; a new client presents them.
    cav = caveats.third_party(dname, dp.public_key)
    tpc = family.root.bless(cp.public_key, family.root_blessings, "client", [cav])
    cp.store.default = tpc
    cp.store.set(tpc, "...")
    gained = make_client(cp)
    assert same_both_ways(gained, name, made) == ("ok", (["root:client"],))
    before = made[0]
    assert outcome(gained, name, fast=True)[0] == "ok"
    assert made[0] == before + 1  # no plan without discharges: the general path
    assert gained.stats["discharges_fetched"] == 1  # (then from the cache)
    discharger.revocations.revoke(cav.id)
    gained.discharge_cache.clear()
    refused = same_both_ways(gained, name, made)
    assert refused[0] is errors.BadDischargeError and refused[3] is True
