"""Authorization both ways over real VCs: roots, patterns, keys, granting, caveats."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming.endpoint import Endpoint
from ipcclient.options import (
    Granter,
    NoRetry,
    ServerPattern,
    ServerPublicKey,
    SkipServerAuthorization,
)
from ipcclient.security import Blessings, Principal, PublicKey, caveats
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall
from tests.conftest import Family
from tests.hostile import RefusingServer

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Who:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def WhoAmI(self, call: ServerCall) -> list[str]:
        with self.lock:
            self.calls += 1
        return list(call.remote_blessing_names)

    def Granted(self, call: ServerCall) -> list[str]:
        granted = call.granted_blessings
        return granted.names if granted is not None else []

    def OnlyThis(self, call: ServerCall) -> str:
        return "ok"


def ctx() -> Context:
    return Context.background().with_timeout(10)


def test_both_sides_see_each_others_validated_names(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Who()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "WhoAmI") == (["root:client"],)


def test_default_authorizer_requires_a_shared_prefix(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Who()
    _, name = make_server(svc, principal=family.member("alice"))
    friend = make_client(family.member("alice:phone"))
    assert friend.call(ctx(), name, "WhoAmI") == (["root:alice:phone"],)
    stranger = make_client(family.member("bob"))
    with pytest.raises(errors.NoAccessError) as info:
        stranger.call(ctx(), name, "WhoAmI")
    assert info.value.request_sent is True


def test_allow_patterns_authorizer(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    _, name = make_server(Who(), AllowPatterns(["root:friend"]))
    assert make_client(family.member("friend:laptop")).call(ctx(), name, "WhoAmI")
    with pytest.raises(errors.NoAccessError, match="no blessing matches"):
        make_client(family.member("enemy")).call(ctx(), name, "WhoAmI")


def test_server_pattern_mismatch_sends_no_request_bytes(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Who()
    srv, name = make_server(svc, AllowEveryone())
    client = make_client()
    with pytest.raises(errors.NotTrustedError) as info:
        client.call(ctx(), name, "WhoAmI", options=[ServerPattern("root:other")])
    assert info.value.request_sent is False
    assert svc.calls == 0
    # Check on the server side: the VC exists, and no flow was ever opened on it.
    deadline = time.monotonic() + 5
    while not srv.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    (conn,) = srv.connections
    time.sleep(0.05)  # let anything the client might have sent arrive
    assert conn._mux._max_peer_id == 0
    # The same client with a matching pattern works on the same VC.
    assert client.call(ctx(), name, "WhoAmI", options=[ServerPattern("root:server")])
    assert svc.calls == 1


def test_patterns_are_anded_across_options(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Who(), AllowEveryone())
    client = make_client()
    ok = [ServerPattern("root:server", "nobody"), ServerPattern("root")]
    assert client.call(ctx(), name, "WhoAmI", options=ok)
    with pytest.raises(errors.NotTrustedError):
        client.call(ctx(), name, "WhoAmI", options=[ServerPattern("root"), ServerPattern("x")])


def test_untrusted_server_root_is_refused_before_the_client_reveals_itself(
    make_client: MakeClient,
) -> None:
    other = Family()
    srv = Server(other.member("server"))
    try:
        ep = srv.listen()
        srv.serve(Who(), AllowEveryone())
        client = make_client()
        with pytest.raises(errors.NotTrustedError):
            client.call(ctx(), "/" + ep, "WhoAmI", options=[NoRetry()])
        # The server never saw a VC complete: the client stopped in the handshake.
        assert srv.connections == []
    finally:
        srv.stop()


def test_server_public_key_option(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    sp = family.member("server")
    _, name = make_server(Who(), AllowEveryone(), principal=sp)
    client = make_client()
    assert client.call(ctx(), name, "WhoAmI", options=[ServerPublicKey(sp.public_key)])
    with pytest.raises(errors.NotTrustedError):
        client.call(
            ctx(), name, "WhoAmI", options=[ServerPublicKey(Principal.generate().public_key)]
        )
    with pytest.raises(errors.BadArgError):
        other = Principal.generate().public_key
        client.call(
            ctx(), name, "WhoAmI", options=[ServerPublicKey(sp.public_key), ServerPublicKey(other)]
        )


def test_endpoint_blessings_catch_a_man_in_the_middle(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """The endpoint says root:server; a valid but different root:mallory answers there."""
    _, name = make_server(Who(), AllowEveryone(), principal=family.member("mallory"))
    ep = Endpoint.parse(name[1:])
    forged = Endpoint(ep.protocol, ep.address, blessings=("root:server",))
    client = make_client()
    with pytest.raises(errors.NotTrustedError, match="not the one the endpoint names"):
        client.call(ctx(), "/" + str(forged), "WhoAmI", options=[NoRetry()])
    # A delegate of the named server (root:server:proxy) does not pass either: exact match.
    _, name2 = make_server(Who(), AllowEveryone(), principal=family.member("server:proxy"))
    ep2 = Endpoint.parse(name2[1:])
    forged2 = Endpoint(ep2.protocol, ep2.address, blessings=("root:server",))
    with pytest.raises(errors.NotTrustedError):
        client.call(ctx(), "/" + str(forged2), "WhoAmI", options=[NoRetry()])
    assert client.call(ctx(), "/" + str(forged), "WhoAmI", options=[SkipServerAuthorization()]) == (
        ["root:client"],
    )


def test_a_server_the_endpoint_does_not_name_never_sees_the_clients_blessings(
    family: Family, make_client: MakeClient
) -> None:
    """The endpoint names root:server and root:mallory answers (its blessings valid under
    the client's roots): the client ends the handshake before it presents its blessings.
    A call that skips the endpoint's names presents them, on a VC of its own."""
    mallory = RefusingServer(family.member("mallory"), answer=1)
    client = make_client()
    try:
        ep = Endpoint.parse(mallory.endpoint)
        forged = "/" + str(dataclasses.replace(ep, blessings=("root:server",)))
        for _ in range(2):
            with pytest.raises(errors.NotTrustedError, match="not the one the endpoint names"):
                client.call(ctx(), forged, "WhoAmI", options=[NoRetry()])
        assert client.vc_count() == 0
        assert client.call(ctx(), forged, "WhoAmI", options=[SkipServerAuthorization()]) == ("ok",)
        assert client.vc_count() == 1
    finally:
        client.close()
        mallory.close()  # (joins its thread: every handshake it ran is over)
    assert mallory.presented == [("root:client",)]


def test_granter(family: Family, make_server: MakeServer, make_client: MakeClient) -> None:
    _, name = make_server(Who(), AllowEveryone())
    cp = family.member("client")
    client = make_client(cp)

    def grant(server_blessings: Any, key: PublicKey) -> Blessings:
        return cp.bless(key, cp.store.default, "delegate", [caveats.expires_in(60)])  # type: ignore[arg-type]

    assert client.call(ctx(), name, "Granted", options=[Granter(grant)]) == (
        ["root:client:delegate"],
    )

    def bad_grant(server_blessings: Any, key: PublicKey) -> Blessings:
        raise ValueError("no")

    with pytest.raises(errors.NotTrustedError, match="granter failed"):
        client.call(ctx(), name, "Granted", options=[Granter(bad_grant)])

    def wrong_key(server_blessings: Any, key: PublicKey) -> Blessings:
        other = Principal.generate()
        return cp.bless(other.public_key, cp.store.default, "x", [caveats.expires_in(60)])  # type: ignore[arg-type]

    with pytest.raises(errors.NoAccessError, match="not bound to this server"):
        client.call(ctx(), name, "Granted", options=[Granter(wrong_key)])


def test_caveats_on_the_clients_blessing(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    _, _name = make_server(Who())  # default authorizer: shares prefix with root:server?
    _, open_name = make_server(Who(), AllowPatterns(["root"]))
    method_only = make_client(family.member("m", caveats.method("OnlyThis")))
    assert method_only.call(ctx(), open_name, "OnlyThis") == ("ok",)
    with pytest.raises(errors.NoAccessError):
        method_only.call(ctx(), open_name, "WhoAmI")
    expired = make_client(family.member("old", caveats.expiry(time.time() - 1)))
    with pytest.raises(errors.NoAccessError, match="rejected"):
        expired.call(ctx(), open_name, "WhoAmI")


def test_self_signed_client_is_not_validated(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Who(), AllowPatterns(["root"]))
    loner = Principal.generate()
    loner.store.default = loner.bless_self("root")  # claims the name, but not from our root
    client = make_client(loner)
    with pytest.raises(errors.NotTrustedError):
        client.call(ctx(), name, "WhoAmI", options=[NoRetry()])
    # (It cannot even trust the server: it has no roots. Give it the server's root.)


def test_client_blessings_must_be_bound_to_its_key(family: Family) -> None:
    """A principal cannot even present another's blessings: its store refuses them (and the
    handshake refuses blessings not bound to the signing key: see test_handshake)."""
    thief = family.member("thief")
    victim = family.member("victim")
    with pytest.raises(errors.BadArgError, match="not bound"):
        thief.store.default = victim.store.default


def _too_large_for_a_handshake(family: Family, p: Principal) -> Blessings:
    """Two chains for ``p``, each within what ``bless`` makes, whose union is larger than
    the 64 KiB auth message of a handshake."""
    big = [caveats.method(*["M%02d%s" % (j, "x" * 40) for j in range(20)]) for _ in range(40)]
    a = family.root.bless(p.public_key, family.root_blessings, "a", big)
    b = family.root.bless(p.public_key, family.root_blessings, "b", big)
    union = Blessings.union(a, b)
    assert union is not None
    return union


def test_blessings_too_large_for_a_handshake_fail_at_once_saying_whose(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """A client presenting blessings over the 64 KiB a handshake carries: the server
    refused the handshake, and the client's error said "auth message too large" of the
    peer. Now the client fails before sending, naming its own blessings; a server given
    such blessings refuses them when it is made (every handshake would fail)."""
    _, name = make_server(Who(), AllowEveryone())
    cp = Principal.generate()
    cp.store.default = _too_large_for_a_handshake(family, cp)
    cp.roots.add_blessings(family.root_blessings)
    started = time.monotonic()
    with pytest.raises(errors.NoServersError, match="our blessings and discharges encode to"):
        make_client(cp).call(ctx(), name, "WhoAmI", options=(NoRetry(),))
    assert time.monotonic() - started < 5.0
    sp = Principal.generate()
    sp.store.default = _too_large_for_a_handshake(family, sp)
    with pytest.raises(errors.BadArgError, match="a handshake carries at most 49152"):
        Server(sp)


def test_the_blessings_a_server_is_shown_are_chosen_by_its_validated_names(
    family: Family, make_client: MakeClient
) -> None:
    """Alice shows her bank blessing only to ``bank:server``. A server with a valid blessing
    of its own (``root:evil``) adds a chain it signed itself, named ``bank:server``: the
    client rejects that name, and used to show the bank blessing all the same (the choice
    read every name the server presented)."""
    bank = Principal.generate()
    bank_b = bank.bless_self("bank")
    alice = family.member("alice")
    alice.roots.add_blessings(bank_b)
    secret = bank.bless(alice.public_key, bank_b, "customer", [caveats.unconstrained_use()])
    alice.store.set(secret, "bank:server")
    evil = family.member("evil")
    evil.roots.add_blessings(bank_b)  # (so that it would see the bank blessing validate)
    fake = evil.bless(
        evil.public_key, evil.bless_self("bank"), "server", [caveats.unconstrained_use()]
    )
    assert evil.store.default is not None
    server = Server(evil, blessings=Blessings.union(evil.store.default, fake))
    try:
        name = "/" + server.listen("tcp", "127.0.0.1:0")
        server.serve(Who(), AllowEveryone())
        assert make_client(alice).call(ctx(), name, "WhoAmI") == (["root:alice"],)
        # The real bank server (its name validates) is shown the bank blessing.
        real = Principal.generate()
        real.store.default = bank.bless(
            real.public_key, bank_b, "server", [caveats.unconstrained_use()]
        )
        real.roots.add_blessings(bank_b)
        bank_server = Server(real)
        try:
            bank_name = "/" + bank_server.listen("tcp", "127.0.0.1:0")
            bank_server.serve(Who(), AllowEveryone())
            assert make_client(alice).call(ctx(), bank_name, "WhoAmI") == (["bank:customer"],)
        finally:
            bank_server.stop()
    finally:
        server.stop()
