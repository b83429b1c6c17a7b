"""Scenarios of the Go client tests (vanadium.md section 8), adapted, over real sockets.

The name of each test says which Go test it adapts. Others live beside the feature they
exercise: TestMultipleFinish, TestStreamAbort, TestRetryCall, TestTimeoutResponse,
TestMethodErrors, TestArgsAndResponses, TestCancel* in test_rpc.py and test_client_faults.py;
TestGranter, TestServerPublicKeyOpt, TestServerManInTheMiddleAttack, TestRPCServerAuthorization
and TestRPCClientAuthorization in test_client_security.py; TestDischargePurgeFromCache and the
third-party caveat flow in test_discharger.py; TestCancellationPropagation in
test_client_faults.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.naming.endpoint import Endpoint
from ipcclient.options import NoDischarges, NoRetry, RetryTimeout, WaitForReady
from ipcclient.security import caveats
from ipcclient.security.caveats import ThirdPartyRequirements
from ipcclient.server.authorizer import AllowPatterns
from ipcclient.server.discharger import Discharger
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import MountTable
from ipcclient.server.server import ServerCall
from tests.rpc.test_mounttable import Family, Label, at, client_for, ctx, serving


@pytest.fixture
def stack() -> Any:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def family() -> Family:
    return Family()


def _unused_address() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = "%s:%d" % probe.getsockname()
    probe.close()
    return address


def _mount(client: Any, table: str, name: str, server: str, ttl: float = 60.0) -> None:
    client.call(ctx(), at(table, name), "Mount", server, ttl, 0)


def test_rendezvous_start_call_before_the_server_is_mounted(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """TestRendezvous: the name appears while the client retries with RetryRefetch (asked
    for with WaitForReady: by default a name that is not mounted fails at once)."""
    _, table = serving(stack, family.member("mt"), table=MountTable())
    client = client_for(stack, family.member("client"), table)
    _, server = serving(stack, family.member("server"), Label("late"))
    mounter = client_for(stack, family.member("mounter"), table)
    threading.Timer(0.4, lambda: _mount(mounter, table, "svc/late", server)).start()
    start = time.monotonic()
    assert client.call(ctx(10), "svc/late", "Who", options=[WaitForReady()]) == ("late",)
    assert time.monotonic() - start >= 0.3


def test_unregistered_name_and_no_mount_table(stack: contextlib.ExitStack, family: Family) -> None:
    """TestStartCallErrors / TestNoServersAvailable / TestNoMountTable."""
    _, table = serving(stack, family.member("mt"), table=MountTable())
    client = client_for(stack, family.member("client"), table)
    with pytest.raises(errors.NoServersError) as info:
        client.call(ctx(), "no/such/name", "Who", options=[NoRetry()])
    assert info.value.request_sent is False
    assert any("resolve" in t for t in info.value.tried)
    # Without WaitForReady the name fails at once; with it, a retry window narrows how long
    # the client waits for the name to appear.
    start = time.monotonic()
    with pytest.raises(errors.NoServersError):
        client.call(ctx(), "no/such/name", "Who")
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    with pytest.raises(errors.NoServersError):
        client.call(ctx(), "no/such/name", "Who", options=[RetryTimeout(0.5), WaitForReady()])
    assert 0.3 < time.monotonic() - start < 3
    # A root that nobody serves.
    dead_root = "/" + str(Endpoint("tcp", _unused_address(), serves_mount_table=True))
    lost = client_for(stack, family.member("client"), dead_root)
    with pytest.raises(errors.NoServersError) as lost_info:
        lost.call(ctx(), "anything", "Who", options=[NoRetry()])
    assert "Connection refused" in lost_info.value.msg  # what went wrong, down the stack
    assert lost_info.value.tried


def test_unreachable_mount_table_with_a_short_context_times_out(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """TestStartCallErrors: an unreachable (black-holed) mount table and a 300 ms context."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(4)
    stack.callback(hole.close)
    root = "/" + str(Endpoint("tcp", "%s:%d" % hole.getsockname(), serves_mount_table=True))
    client = client_for(stack, family.member("client"), root)
    start = time.monotonic()
    with pytest.raises((errors.TimeoutError, errors.NoServersError)) as info:
        client.call(Context.background().with_timeout(0.3), "x", "Who")
    assert time.monotonic() - start < 2
    assert isinstance(info.value, errors.TimeoutError) or "Timeout" in str(info.value)


def test_connect_with_incompatible_servers(stack: contextlib.ExitStack, family: Family) -> None:
    """TestConnectWithIncompatibleServers: only incompatible endpoints fail fast (no retry
    until the deadline); adding a compatible one succeeds."""
    _, table = serving(stack, family.member("mt"), table=MountTable())
    client = client_for(stack, family.member("client"), table)
    mounter = client_for(stack, family.member("mounter"), table)
    old = "/" + str(Endpoint("tcp", _unused_address(), min_version=7, max_version=9))
    _mount(mounter, table, "svc/mixed", old)
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        client.call(ctx(10), "svc/mixed", "Who")
    assert info.value.action is errors.RetryAction.NO_RETRY
    assert time.monotonic() - start < 2  # not retried until the 10 s deadline
    _, server = serving(stack, family.member("server"), Label("compatible"))
    _mount(mounter, table, "svc/mixed", server)
    client.namespace.flush_cache_entry("svc/mixed")
    assert client.call(ctx(), "svc/mixed", "Who") == ("compatible",)


def test_multiple_endpoints_one_real(stack: contextlib.ExitStack, family: Family) -> None:
    """TestMultipleEndpoints: one real server among unreachable mounted ones."""
    _, table = serving(stack, family.member("mt"), table=MountTable())
    client = client_for(stack, family.member("client"), table)
    mounter = client_for(stack, family.member("mounter"), table)
    for _ in range(5):
        _mount(mounter, table, "svc/many", "/" + str(Endpoint("tcp", _unused_address())))
    _, server = serving(stack, family.member("server"), Label("the one"))
    _mount(mounter, table, "svc/many", server)
    assert client.call(ctx(), "svc/many", "Who") == ("the one",)


@expose
class Slow:
    def Ticks(self, call: ServerCall) -> None:
        i = 0
        while not call.context.wait(0.05):
            call.send(i)
            i += 1


def test_stream_timeout(stack: contextlib.ExitStack, family: Family) -> None:
    """TestStreamTimeout: recv and then finish give Timeout when a stream outlives the
    context."""
    _, server = serving(stack, family.member("server"), Slow())
    client = client_for(stack, family.member("client"))
    client.call(ctx(), server, "__Signature")  # (the VC first: the 0.4 s are the stream's)
    call = client.start_call(Context.background().with_timeout(0.4), server, "Ticks")
    got = []
    with pytest.raises(errors.TimeoutError):
        while True:
            got.append(call.recv())
    assert got[:2] == [0, 1]
    with pytest.raises((errors.TimeoutError, errors.BadStateError)):
        call.finish()


def test_canceled_before_and_during_finish(stack: contextlib.ExitStack, family: Family) -> None:
    """TestCanceledBeforeFinish / TestCanceledDuringFinish."""
    _, server = serving(stack, family.member("server"), Slow())
    client = client_for(stack, family.member("client"))
    c = Context.background().with_timeout(10)
    call = client.start_call(c, server, "Ticks")
    c.cancel()
    with pytest.raises(errors.CanceledError):
        call.finish()
    c2 = Context.background().with_timeout(10)
    call2 = client.start_call(c2, server, "Ticks")
    threading.Timer(0.1, c2.cancel).start()
    with pytest.raises(errors.CanceledError):
        while True:
            call2.recv()


def _discharged_client(stack: contextlib.ExitStack, family: Family, req: Any) -> Any:
    dp = family.member("discharger")
    discharger = Discharger(dp)
    _, dname = serving(stack, dp, discharger)
    cp = family.member("unused")
    cav = caveats.third_party(dname, dp.public_key, req)
    b = family.root.bless(cp.public_key, family.root_blessings, "client", [cav])
    cp.store.default = b
    cp.store.set(b, "...")
    _, sname = serving(
        stack, family.member("server"), Label("guarded"), authorizer=AllowPatterns(["root:client"])
    )
    return discharger, sname, client_for(stack, cp)


def test_no_discharges_option_never_calls_the_discharger(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """TestNoDischargesOpt."""
    _, sname, client = _discharged_client(stack, family, None)
    with pytest.raises(errors.NoAccessError):
        client.call(ctx(), sname, "Who", options=[NoDischarges(), NoRetry()])
    assert client.stats["discharges_fetched"] == 0
    assert client.call(ctx(), sname, "Who") == ("guarded",)
    assert client.stats["discharges_fetched"] == 1


def test_discharge_impetus_follows_the_requirements(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TestDischargeImpetus: one fetch per caveat; the discharger is told only what the
    caveat requires (here: the method, not the arguments)."""
    seen: list[Any] = []
    req = ThirdPartyRequirements(report_server=False, report_method=True, report_arguments=False)
    _, sname, client = _discharged_client(stack, family, req)
    original = Discharger.Discharge

    @expose
    def spy(self: Discharger, call: ServerCall, caveat: Any, impetus: Any) -> Any:
        seen.append(impetus)
        return original(self, call, caveat, impetus)

    # (On the class: a name the served object holds itself is never one of its methods.)
    monkeypatch.setattr(Discharger, "Discharge", spy)
    assert client.call(ctx(), sname, "Echo", "secret argument") == ("secret argument",)
    assert len(seen) == 1
    assert seen[0]["method"] == "Echo"
    assert list(seen[0]["arguments"]) == [] and list(seen[0]["server"]) == []
