"""A server's per-VC call limit (``ServerOptions.max_calls_per_vc``) announced in its hello
(``"max_flows"``, docs/protocol.md 3.8): the client waits for one of its calls on the VC to
end rather than open more, within its context (deadline, cancel) and whatever happens to the
VC meanwhile; a peer that opens more anyway is refused; calls the client cancelled whose
methods still run are bounded too."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client, vcs
from ipcclient.client import plan as _plan
from ipcclient.context import Context
from ipcclient.options import ClientOptions, NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport.manager import TransportOptions
from ipcclient.wire.muxstate import MuxConfig
from tests.conftest import Family
from tests.hostile import HostilePeer, request_header, server_address
from tests.transport.test_hostile_load import wait_until

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]

pytestmark = pytest.mark.timeout(60)


@expose
class Gate:
    """``Hold`` runs until the gate opens, whatever its context says (a method that ignores
    cancellation); it counts the calls running, and their most at once."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.done = 0

    def Hold(self, call: ServerCall, i: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.open.wait(30)
            return i
        finally:
            with self.lock:
                self.running -= 1
                self.done += 1

    def Echo(self, call: ServerCall, x: Any) -> Any:
        return x


def _no_retry_client(make_client: MakeClient) -> Client:
    return make_client(options=ClientOptions(default_call_timeout=20.0))


NO_RETRY = [NoRetry()]
"""(Every call here: a call refused with Overloaded fails at once rather than retry.)"""


def _holding(client: Client, name: str, gate: Gate, n: int) -> list[Any]:
    """Start ``n`` Hold calls, each on a thread of its own; wait until the server runs as
    many as it takes at once. The list fills with each call's result or error."""
    out: list[Any] = []

    def one(i: int) -> None:
        try:
            out.append(
                client.call_one(
                    Context.background().with_timeout(20), name, "Hold", i, options=NO_RETRY
                )
            )
        except errors.IPCError as exc:
            out.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    gate.threads = threads  # type: ignore[attr-defined]
    return out


def _join(gate: Gate) -> None:
    for t in gate.threads:  # type: ignore[attr-defined]
        t.join(20)
        assert not t.is_alive()


def _full_vc(
    make_server: MakeServer, make_client: MakeClient, limit: int, n: int = 0
) -> tuple[Gate, str, Client, list[Any]]:
    """A server taking ``limit`` calls per VC, a client, and ``n`` Hold calls (``limit``
    by default) running or waiting on its VC; returns once the server runs ``limit``."""
    gate = Gate()
    _server, name = make_server(
        gate, AllowEveryone(), options=ServerOptions(max_calls_per_vc=limit, max_workers=32)
    )
    client = _no_retry_client(make_client)
    out = _holding(client, name, gate, n or limit)
    wait_until(lambda: gate.running == limit)
    return gate, name, client, out


def _queued_echo(client: Client, name: str, word: str) -> tuple[threading.Thread, list[Any]]:
    """An Echo call of ``word`` on a thread of its own, started once the client's one VC
    has it queued (waiting for a flow); its result goes in the list."""
    (conn,) = client._vcs.values()
    result: list[Any] = []

    def waiter() -> None:
        ctx = Context.background().with_timeout(10)
        result.append(client.call_one(ctx, name, "Echo", word, options=NO_RETRY))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    wait_until(lambda: bool(conn._flow_waiters))
    return thread, result


def test_the_server_announces_its_per_vc_limit_and_refuses_a_peer_over_it(
    family: Family, make_server: MakeServer
) -> None:
    """The hello carries ``max_calls_per_vc`` (or the mux's inbound limit, if lower); a peer
    that opens more flows than that at once has the extra ones refused with Overloaded."""
    gate = Gate()
    server, _name = make_server(
        gate, AllowEveryone(), options=ServerOptions(max_calls_per_vc=3, max_workers=16)
    )
    peer = HostilePeer(family.member("raw"), server_address(server))
    try:
        assert peer.settings.max_flows == 3
        fids = [peer.open(request_header("Hold", 1) + _arg(i), end=True) for i in range(5)]
        for fid in fids[3:]:
            err = peer.wait_reset(fid)
            assert isinstance(err, errors.OverloadedError), err
            assert err.action == errors.RetryAction.RETRY_BACKOFF
        wait_until(lambda: gate.running == 3)
        gate.open.set()
        for fid in fids[:3]:
            peer.wait_ended(fid)
            assert fid in peer.ended and fid not in peer.resets
    finally:
        gate.open.set()
        peer.close()
    lower = TransportOptions(mux=MuxConfig(max_inbound_flows=2))
    other, _ = make_server(
        Gate(), AllowEveryone(), options=ServerOptions(max_calls_per_vc=3, transport=lower)
    )
    peer = HostilePeer(family.member("raw"), server_address(other))
    try:
        assert peer.settings.max_flows == 2
    finally:
        peer.close()


def _arg(i: int) -> bytes:
    from ipcclient.wire.messages import encode_messages

    return encode_messages(i, {"end_stream_args": True})


def test_calls_beyond_the_limit_wait_for_a_call_to_end_instead_of_failing(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Twelve threads on one client, a server that takes four calls per VC, no retries: four
    run, eight wait in the client (none sent, none refused), and all twelve succeed as the
    first ones end, never more than four at once on the server."""
    gate, _name, client, out = _full_vc(make_server, make_client, 4, 12)
    (conn,) = client._vcs.values()
    wait_until(lambda: len(conn._flow_waiters) == 8)  # (each waiting call, queued on the VC)
    assert gate.running == 4 and not out
    assert conn.flow_limit == 4 and conn.flow_count == 4
    gate.open.set()
    _join(gate)
    assert sorted(out) == list(range(12)), out
    assert gate.peak == 4 and gate.done == 12


def test_a_deadline_passes_while_waiting_for_a_flow(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A call that waits for a flow until its deadline fails with TimeoutError saying so,
    not sent; the calls holding the VC are untouched and the VC serves afterwards."""
    gate, name, client, out = _full_vc(make_server, make_client, 2)
    start = time.monotonic()
    with pytest.raises(errors.TimeoutError) as info:
        client.call_one(
            Context.background().with_timeout(0.3), name, "Echo", "late", options=NO_RETRY
        )
    assert time.monotonic() - start < 3.0
    assert info.value.request_sent is False
    assert "calls open on the VC" in info.value.msg and "takes 2 at once" in info.value.msg
    gate.open.set()
    _join(gate)
    assert sorted(out) == [0, 1]
    assert client.call_one(Context.background().with_timeout(10), name, "Echo", "ok") == "ok"


def test_a_cancel_ends_the_wait_for_a_flow_at_once(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    gate, name, client, out = _full_vc(make_server, make_client, 1)
    ctx = Context.background().with_timeout(20).with_cancel()
    timer = threading.Timer(0.2, ctx.cancel)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(errors.CanceledError) as info:
            client.call_one(ctx, name, "Echo", "x", options=NO_RETRY)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 2.0
    assert info.value.request_sent is False
    (conn,) = client._vcs.values()
    assert not conn._flow_waiters  # (the waiter left the VC's queue)
    gate.open.set()
    _join(gate)
    assert out == [0]


def test_a_waiter_whose_vc_ends_goes_on_to_a_new_vc(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The VC a call waits on ends (its calls fail with it): the waiter dials again and its
    call succeeds on the new VC."""
    gate, name, client, out = _full_vc(make_server, make_client, 1)
    (conn,) = client._vcs.values()
    waiter, result = _queued_echo(client, name, "after")
    conn.close()
    waiter.join(10)
    assert result == ["after"]
    gate.open.set()
    _join(gate)
    assert len(out) == 1 and isinstance(out[0], errors.IPCError), out
    (new,) = client._vcs.values()
    assert new is not conn


def test_waiters_are_served_in_turn_and_never_overtaken(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A flow's end keeps the free flow for the waiter waiting longest and wakes it; until
    it comes for it, neither a later waiter nor a caller that did not queue (the fast path)
    can take it. A woken waiter that gives up passes it on to the next one."""
    gate, _name, client, _out = _full_vc(make_server, make_client, 1)
    (conn,) = client._vcs.values()
    first, second, third = threading.Event(), threading.Event(), threading.Event()
    assert conn.connect(first) is None and conn.connect(second) is None
    assert conn._flow_waiters == [first, second]
    gate.open.set()
    _join(gate)
    wait_until(first.is_set)
    assert not second.is_set() and conn._flow_waiters == [second]
    assert conn.connect() is None  # a caller that never queued does not overtake
    assert conn.connect(second) is None and conn._flow_waiters == [second]  # nor a later one
    assert conn.connect(third) is None and conn._flow_waiters == [second, third]
    conn.stop_waiting(first)  # woken, but it gives up: the next waiter's turn
    assert second.is_set() and not third.is_set() and conn._flow_waiters == [third]
    flow = conn.connect(second)
    assert flow is not None and conn._flow_waiters == [third] and not conn._flow_promised
    flow.cancel()  # (its end: the third's turn)
    assert third.is_set() and not conn._flow_waiters
    conn.stop_waiting(third)
    flow = conn.connect()  # nobody waits: a free flow for anyone
    assert flow is not None
    flow.cancel()


def test_a_call_dropped_without_finish_frees_its_flow_for_a_waiter(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A call collected without finish() holds its flow until the client cancels it; a call
    already waiting for that flow has it cancelled (within ``FLOW_WAIT_SLICE``) rather than
    wait out its own deadline (10 s here; it is served within 5 s)."""
    gate = Gate()
    _server, name = make_server(
        gate, AllowEveryone(), options=ServerOptions(max_calls_per_vc=1, max_workers=8)
    )
    client = _no_retry_client(make_client)
    dropped = client.start_call(Context.background().with_timeout(20), name, "Hold", [0])
    wait_until(lambda: gate.running == 1)
    thread, result = _queued_echo(client, name, "next")  # (waiting before the call drops)
    del dropped
    gc.collect()
    assert client._abandoned  # (its flow is left for the client to cancel)
    thread.join(5)
    assert result == ["next"]
    gate.open.set()


@pytest.mark.interpreted  # (sets a module constant, which compiled code does not read)
def test_a_waiter_moves_to_the_vc_that_replaced_its_own(
    make_server: MakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VC at its limit is replaced in the cache (here evicted; a suspect VC is retired
    the same way): a call waiting on it is woken and goes to the new VC, as new calls do,
    rather than wait for the old VC's call to end (or for its own next look)."""
    monkeypatch.setattr(vcs, "FLOW_WAIT_SLICE", 30.0)  # (only the wake can move it in time)
    gate, name, client, out = _full_vc(make_server, make_client, 1)
    (old,) = client._vcs.values()
    thread, result = _queued_echo(client, name, "moved")
    client._cache.evict(old)
    thread.join(5)
    assert result == ["moved"] and not old._flow_waiters
    assert gate.running == 1 and not out  # (the old VC's call still runs)
    gate.open.set()
    _join(gate)
    assert out == [0]


def test_calls_cancelled_while_their_methods_run_are_bounded_per_vc(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A client that cancels calls whose methods ignore it frees its flows for new calls
    (those calls no longer count toward ``max_calls_per_address`` either), but a VC's
    running calls stay bounded at twice ``max_calls_per_vc``: beyond that a new call is
    refused with Overloaded (backoff), and admitted again once the methods end."""
    gate = Gate()
    server, name = make_server(
        gate,
        AllowEveryone(),
        options=ServerOptions(max_calls_per_vc=2, max_calls_per_address=2, max_workers=16),
    )
    client = _no_retry_client(make_client)
    for round_ in range(2):  # (the second round's calls go over the address's bound)
        ctx = Context.background().with_timeout(20).with_cancel()
        calls = [client.start_call(ctx, name, "Hold", [i], *NO_RETRY) for i in range(2)]
        wait_until(lambda r=round_: gate.running == 2 * (r + 1))
        ctx.cancel()
        for c in calls:
            with pytest.raises(errors.CanceledError):
                c.finish()
    wait_until(lambda: server._in_use == 4)
    with pytest.raises(errors.OverloadedError) as info:
        client.call_one(Context.background().with_timeout(10), name, "Echo", "x", options=NO_RETRY)
    assert info.value.action == errors.RetryAction.RETRY_BACKOFF
    assert "ended by the client" in info.value.msg
    gate.open.set()
    wait_until(lambda: server._in_use == 0)
    assert client.call_one(Context.background().with_timeout(10), name, "Echo", "y") == "y"


def test_a_call_that_just_ended_never_counts_against_the_next(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Sixteen threads make short calls, no retries, through a VC held at its limit, with
    the client's address bound as tight as the VC's, each call run by a worker (not inline on
    the VC's reader, which reads the next flow only after the call is over): each new call
    opens a flow as soon as the client sees an earlier one end, and the server, which gives
    a call's slot back before its last frame goes out, never refuses one."""
    _server, name = make_server(
        Gate(),
        AllowEveryone(),
        options=ServerOptions(
            max_calls_per_vc=4, max_calls_per_address=4, max_workers=32, inline_calls=False
        ),
    )
    client = _no_retry_client(make_client)
    failures: list[BaseException] = []

    def many(t: int) -> None:
        try:
            for i in range(40):
                ctx = Context.background().with_timeout(20)
                assert client.call_one(ctx, name, "Echo", (t, i), options=NO_RETRY) == [t, i]
        except BaseException as exc:  # (reported below, with the others)
            failures.append(exc)

    threads = [threading.Thread(target=many, args=(t,), daemon=True) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
        assert not t.is_alive()
    assert not failures, failures[:3]


def test_a_caller_given_a_flow_keeps_none_waiting_on_another_vc(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A name with two servers, each VC at its limit: a caller waits on both. Given a flow
    on one, it stops waiting on the other while it uses that flow (its request being set up:
    discharges fetched, args written), so a flow that ends there goes to that VC's own
    waiter, not kept for it; it queues again if it comes back for another server."""
    gates, names = [Gate(), Gate()], []
    for gate in gates:
        _server, name = make_server(
            gate, AllowEveryone(), options=ServerOptions(max_calls_per_vc=1, max_workers=8)
        )
        names.append(name)
    client = _no_retry_client(make_client)
    for gate, name in zip(gates, names, strict=True):
        _holding(client, name, gate, 1)
        wait_until(lambda g=gate: g.running == 1)
    targets = []
    for name in names:
        address, suffix = _plan.split_server(name)
        ep, key = _plan.dial_plan(address, (1, 1))
        targets.append((name, ep, key, suffix))
    a, b = (client._vcs[key] for _n, _e, key, _s in targets)
    racing = client._cache.race(targets, Context.background().with_timeout(20), [])
    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(next(racing)), daemon=True)
    thread.start()
    wait_until(lambda: bool(a._flow_waiters) and bool(b._flow_waiters))  # (after the stagger)
    gates[0].open.set()  # A's call ends: the caller's turn there
    thread.join(10)
    (target, flow), *_ = first
    assert target is targets[0] and flow.connection is a
    assert not b._flow_waiters and not b._flow_promised  # (it waits on B no more)
    waiter = threading.Event()
    assert b.connect(waiter) is None
    gates[1].open.set()  # B's call ends: its flow goes to B's own waiter at once
    wait_until(waiter.is_set)
    assert b._flow_promised == [waiter]
    b.stop_waiting(waiter)
    racing.close()
    flow.cancel()
    _join(gates[0])
    _join(gates[1])


def test_waiters_on_a_vc_whose_flow_ids_ran_out_go_on_to_a_new_vc(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The flow kept for a waiter cannot be opened (the VC's flow ids ran out): its caller
    dials again, and the waiter after it goes on at once too (the VC left the cache, which
    sends its waiters on), not at its next look, up to a second later."""
    from ipcclient.wire.frames import MAX_FLOW_ID

    gate, name, client, out = _full_vc(make_server, make_client, 1)
    (conn,) = client._vcs.values()
    first, first_result = _queued_echo(client, name, "a")
    second, second_result = _queued_echo(client, name, "b")
    wait_until(lambda: len(conn._flow_waiters) == 2)
    conn._mux._next_id = MAX_FLOW_ID + 1  # (the next flow this VC opens fails)
    started = time.monotonic()
    gate.open.set()
    for t in (first, second):
        t.join(10)
        assert not t.is_alive()
    assert first_result == ["a"] and second_result == ["b"]
    assert time.monotonic() - started < 0.8
    _join(gate)
    assert out == [0]
