"""The client recovers by itself: faults injected by a loopback proxy (cut, RST, black hole,
stall, flipped bits, latency), Ctrl-C at every point of the read step, budgets on every path."""

from __future__ import annotations

import contextlib
import linecache
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import call as callmod
from ipcclient import errors
from ipcclient.client import Client
from ipcclient.client.api import MAX_RESENDS
from ipcclient.client.vcs import STALE_ABANDONED_DIAL
from ipcclient.context import Context
from ipcclient.options import NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Results, Server, ServerCall
from ipcclient.transport import conn as connmod
from ipcclient.vc import records
from ipcclient.wire import mux as muxmod
from tests.conftest import Family
from tests.faultproxy import Fault, FaultProxy
from tests.hostile import RefusingServer

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Svc:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def Echo(self, call: ServerCall, x: Any) -> Any:
        with self.lock:
            self.calls += 1
        return x

    def Stream(self, call: ServerCall, items: int, size: int, results: int) -> Results:
        for i in range(items):
            call.send(i)
        return Results(*(b"r" * size for _ in range(results)))


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


def proxied(name: str, proxy: FaultProxy) -> str:
    """The server's name with its address replaced by the proxy's."""
    parts = name.split("@")
    parts[3] = proxy.address
    return "@".join(parts)


@pytest.fixture
def server(make_server: MakeServer) -> tuple[Server, str, Svc]:
    svc = Svc()
    srv, name = make_server(svc, AllowEveryone())
    return srv, name, svc


# --- the fault proxy: after each fault, the next call through a healthy path succeeds ----------
@pytest.mark.parametrize(
    ("up", "down"),
    [
        (Fault.cut(0), None),
        (Fault.cut(30), None),
        (None, Fault.cut(0)),
        (None, Fault.cut(20)),
        (Fault.rst(0), None),
        (None, Fault.rst(10)),
        (Fault.flip(2), None),
        (None, Fault.flip(2)),
        (None, Fault.flip(40)),
        (Fault.blackhole(), Fault.blackhole()),
        (None, Fault.stall()),
        (Fault.latency(0.05), Fault.latency(0.05)),
    ],
    ids=lambda f: "-" if f is None else f"{f.kind}{f.at or ''}",
)
def test_after_any_fault_the_next_call_succeeds(
    server: tuple[Server, str, Svc], make_client: MakeClient, up: Fault | None, down: Fault | None
) -> None:
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        assert client.call(ctx(), target, "Echo", "warm") == ("warm",)
        proxy.set(up=up, down=down)
        try:
            result: Any = client.call(ctx(1.0), target, "Echo", "x" * 100)
        except errors.IPCError as exc:
            result = exc
        if isinstance(result, tuple):  # latency, or a fault that missed every byte of the call
            assert result == ("x" * 100,)
        proxy.heal()
        # The next call through the (now healthy) path succeeds, at most after the liveness
        # probe evicted the VC the fault left silent.
        assert client.call(ctx(10.0), target, "Echo", "after") == ("after",)


# --- an interrupted read breaks its VC -----------------------------------------------------
_READ_STEP = (
    connmod.Connection._lead_step,
    connmod.Connection._read_step,
    connmod.Connection._receive_and_dispatch,
    connmod.Connection._dispatch_received,
    connmod.Connection._on_plaintext,
    records.RecordOpener.receive_buffer,
    records.RecordOpener.received,
    records.RecordOpener._open_buffered,
    muxmod.Mux.receive_data,
)


def _is_with(frame: FrameType) -> bool:
    """Whether the frame is at a ``with`` line: its line event also comes just before the
    context manager's exit, where no exception can be handled (CPython raises there without
    running ``__exit__``, leaving a lock held: not something a library can guard)."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return line.lstrip().startswith("with ")


class _Injector:
    """A trace hook that raises KeyboardInterrupt at the ``at``-th line executed (counted
    from 0) in the read step's functions on this thread; records the points it saw."""

    def __init__(self, at: int) -> None:
        self.codes = {fn.__code__ for fn in _READ_STEP}
        self.at = at
        self.seen = 0
        self.fired: tuple[str, int] | None = None

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "call":
            return self._local if frame.f_code in self.codes else None
        return None

    def _local(self, frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "line" and self.fired is None and not _is_with(frame):
            if self.seen == self.at:
                self.fired = (frame.f_code.co_name, frame.f_lineno)
                raise KeyboardInterrupt
            self.seen += 1
        return self._local


# (Interrupts at each line with a trace hook: compiled code reports no lines.)
@pytest.mark.interpreted
def test_ctrl_c_at_every_point_of_the_read_step_never_fails_a_later_call(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = server
    client = make_client()
    assert client.call(ctx(), name, "Echo", b"warm") == (b"warm",)
    points: set[tuple[str, int]] = set()
    misses = 0
    at = 0
    while at < 400 and misses < 25:
        injector = _Injector(at)
        previous = sys.gettrace()  # (coverage's tracer, under make test: give it back)
        sys.settrace(injector)
        try:
            client.call(ctx(5.0), name, "Echo", b"x" * (at % 7) * 1000)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(previous)
        if injector.fired is None:
            misses += 1  # the reply came by the reader thread, or fewer lines ran this time
        else:
            points.add(injector.fired)
            misses = 0
        # The next, unrelated call never fails (the VC was broken if bytes were lost).
        assert client.call(ctx(10.0), name, "Echo", b"later") == (b"later",), injector.fired
        at += 1
    assert len(points) >= 20, sorted(points)


# --- every budget holds on every path --------------------------------------------------------
@pytest.mark.parametrize("path", ["iterate", "recv"])
def test_results_budget_holds_after_iterating(
    server: tuple[Server, str, Svc],
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    _srv, name, _svc = server
    monkeypatch.setattr(callmod, "MAX_RESULTS_BYTES", 256 * 1024)
    client = make_client()
    with client.start_call(ctx(), name, "Stream", [3, 64 * 1024, 2]) as call:
        assert list(call) == [0, 1, 2]
        assert len(call.finish()) == 2  # 128 KiB: within the budget
    call = client.start_call(ctx(), name, "Stream", [3, 64 * 1024, 8])  # 512 KiB of results
    if path == "iterate":
        assert list(call) == [0, 1, 2]
    else:
        assert [call.recv() for _ in range(3)] == [0, 1, 2]
        with pytest.raises(errors.EndOfStreamError):
            call.recv()
    with pytest.raises(errors.BadProtocolError):
        call.finish()
    assert client.call(ctx(), name, "Echo", 1) == (1,)


# --- liveness under traffic ----------------------------------------------------------------
def test_liveness_keepalive_and_probe_with_a_fake_clock() -> None:
    from ipcclient.transport.liveness import DEAD, PING, Liveness

    live = Liveness(interval=15, timeout=45, probe_timeout=2, probe_after=1, now=0.0)
    assert live.check(1.0, last_recv=0.5) is None
    assert live.next_check(1.0, 0.5) == pytest.approx(14.5)
    assert live.check(16.0, last_recv=0.5) == PING
    assert live.check(17.0, last_recv=0.5) is None  # one ping per interval of silence
    assert live.check(31.0, last_recv=0.5) == PING
    assert live.check(46.0, last_recv=0.5) == DEAD
    # A call that timed out after the peer spoke recently: not suspect.
    live = Liveness(interval=15, timeout=45, probe_timeout=2, probe_after=1, now=0.0)
    assert not live.suspect(10.0, last_recv=9.5)
    # Silent for a while: one probe, whose answer clears it.
    assert live.suspect(10.0, last_recv=5.0)
    assert live.unanswered(5.0)
    assert not live.suspect(10.5, last_recv=5.0)  # one probe at a time
    assert live.next_check(10.0, 5.0) == pytest.approx(2.0)
    assert not live.unanswered(10.2)  # anything from the peer since the PING answers it
    assert live.check(11.0, last_recv=11.0) is None and not live.probing
    # Unanswered: dead at the probe's deadline, long before the keepalive timeout.
    assert live.suspect(20.0, last_recv=11.0)
    assert live.check(21.9, last_recv=11.0) is None
    assert live.check(22.0, last_recv=11.0) == DEAD


def test_a_black_holed_vc_under_traffic_is_abandoned_within_two_calls(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        assert client.call(ctx(), target, "Echo", "warm") == ("warm",)
        (pipe,) = proxy.pipes
        pipe.set(up=Fault.blackhole(), down=Fault.blackhole())  # this VC only
        lost = 0
        for _ in range(10):
            try:
                assert client.call(ctx(2.0), target, "Echo", "x") == ("x",)
                break
            except (errors.TimeoutError, errors.ConnectionFailedError):
                lost += 1
        assert 1 <= lost <= 2, lost  # one call (on a loaded machine, maybe a second)
        assert len(proxy.pipes) == 2  # the next call dialed a new VC


def test_a_flipped_length_bit_costs_at_most_a_probe(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        assert client.call(ctx(), target, "Echo", "warm") == ("warm",)
        (pipe,) = proxy.pipes
        pipe.set(down=Fault.flip(2))  # the reply's record length grows by 256: it never ends
        lost = 0
        for _ in range(10):
            try:
                assert client.call(ctx(2.0), target, "Echo", "x") == ("x",)
                break
            except (errors.TimeoutError, errors.ConnectionFailedError):
                lost += 1
        assert 1 <= lost <= 2, lost  # one call (on a loaded machine, maybe a second)


def _lost_before_recovery(client: Client, target: str, seconds: float = 2.0) -> int:
    """Calls with ``seconds`` deadlines until one succeeds; how many failed (at most 10)."""
    lost = 0
    for _ in range(10):
        try:
            assert client.call(ctx(seconds), target, "Echo", "x") == ("x",)
            return lost
        except (errors.TimeoutError, errors.ConnectionFailedError):
            lost += 1
    return lost


# --- a stuck dial does not hold the others ---------------------------------------------------
def test_a_stalled_handshake_costs_one_call(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        proxy.set(up=Fault.blackhole())  # the handshake's first bytes vanish: it stalls
        with pytest.raises(errors.TimeoutError):
            client.call(ctx(1.0), target, "Echo", "x")
        proxy.heal()
        # The stalled dial runs on (until the handshake timeout) but is not joined.
        start = time.monotonic()
        assert client.call(ctx(5.0), target, "Echo", "y") == ("y",)
        assert time.monotonic() - start < 5.0
        assert proxy.accepted == 2


def test_calls_that_give_up_on_a_stalled_dial_do_not_each_start_another(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    """Calls with short deadlines against a server that never answers the handshake: a dial
    a caller gave up on is replaced at most once per STALE_ABANDONED_DIAL (each call once
    started a dial of its own: a thread and a socket until the handshake timeout)."""
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        proxy.set(up=Fault.blackhole())
        start = time.monotonic()
        for _ in range(100):
            with pytest.raises(errors.TimeoutError):
                client.call(ctx(0.01), target, "Echo", "x")
        elapsed = time.monotonic() - start
        assert proxy.accepted <= elapsed / STALE_ABANDONED_DIAL + 2, (proxy.accepted, elapsed)
        dials = [t for t in threading.enumerate() if t.name.startswith("ipc-dial")]
        assert len(dials) <= proxy.accepted


# --- use every replica -----------------------------------------------------------------------
def test_a_black_holed_first_replica_costs_less_than_a_second(
    family: Any, make_server: MakeServer, make_client: MakeClient
) -> None:
    from ipcclient.naming import names
    from ipcclient.server.mounttable import MountTable

    table_srv = Server(family.member("mt"), serves_mount_table=True)
    try:
        table = "/" + table_srv.listen("tcp", "127.0.0.1:0")
        table_srv.serve_dispatcher(MountTable())
        _srv, healthy = make_server(Svc(), AllowEveryone())
        with FaultProxy("127.0.0.1:1", blackhole_accept=True) as hole:
            dead = proxied(
                healthy, hole
            )  # the same server's name, at an address that never answers
            client = make_client(roots=[table])
            at = names.join_address_name(table, "svc", terminal=True)
            for server in (dead, healthy):
                assert client.call(ctx(), at, "Mount", server, 60.0, 0) == ()
            start = time.monotonic()
            assert client.call(ctx(10.0), "svc", "Echo", "z") == ("z",)
            elapsed = time.monotonic() - start
            # About the stagger (0.25 s); the bound is generous for a loaded machine (without
            # the race the call would wait for its deadline).
            assert elapsed < 2.0, elapsed
            assert hole.accepted <= 1
            # The healthy VC is cached: the next call does not wait at all on the dead one.
            assert client.call(ctx(10.0), "svc", "Echo", "w") == ("w",)
    finally:
        table_srv.stop()


# --- retry what provably never ran -------------------------------------------------------------
def test_stop_restart_on_the_same_port_then_call_never_fails(
    family: Any, make_client: MakeClient
) -> None:
    svc = Svc()
    principal = family.member("server")
    srv = Server(principal)
    ep = srv.listen("tcp", "127.0.0.1:0")
    srv.serve(svc, AllowEveryone())
    address = ep.split("@")[3]
    client = make_client()
    name = "/" + ep
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    try:
        for i in range(1, 51):
            srv.stop()
            srv = Server(principal)
            srv.listen("tcp", address)
            srv.serve(svc, AllowEveryone())
            assert client.call(ctx(10.0), name, "Echo", i) == (i,), i
    finally:
        srv.stop()


# --- property: a flow is retried only if the server cannot have run it -------------------------
_NEVER_OPENED = bytes([0, 0, 0, 0, 0x7F, 0xFF, 0, 0, 0, 0])  # DATA, flow 32767, no OPEN
_ACTIONS = st.lists(
    st.one_of(
        st.just(("open", 0)),
        st.tuples(st.just("up"), st.integers(0, 64)),
        st.tuples(st.just("reply"), st.integers(0, 8)),
        st.tuples(st.just("down"), st.integers(0, 64)),
        st.just(("goaway", 0)),
        st.just(("eof", 0)),
        st.tuples(st.just("garbage"), st.integers(0, 64)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_ACTIONS)
def test_a_flow_is_retried_only_if_the_server_cannot_have_run_it(
    actions: list[tuple[str, int]],
) -> None:
    client = muxmod.Mux(dialer=True, peer_initial_window=muxmod.DEFAULT_INITIAL_WINDOW)
    server = muxmod.Mux(dialer=False, peer_initial_window=muxmod.DEFAULT_INITIAL_WINDOW)
    up = bytearray()  # client -> server, in flight
    down = bytearray()  # server -> client, in flight
    delivered: list[int] = []  # flows the server's application took (it may have run them)
    replied: set[int] = set()  # flows with a byte of reply at the client
    dead = False  # the server died (EOF): it sends nothing more
    closed: list[muxmod.ConnectionClosed] = []

    def server_input(data: bytes) -> None:
        try:
            events = server.receive_data(data)
        except errors.BadProtocolError:
            return  # the events of that chunk never reach the application
        delivered.extend(e.flow_id for e in events if isinstance(e, muxmod.FlowOpened))

    def client_input(data: bytes) -> None:
        for event in client.receive_data(data):
            if isinstance(event, muxmod.DataReceived) and event.data:
                replied.add(event.flow_id)
            elif isinstance(event, muxmod.ConnectionClosed):
                closed.append(event)

    for kind, n in actions:
        if kind == "open" and not client.closed:
            fid = client.open_flow()
            client.send_data(fid, b"request", end=True)
            up += client.data_to_send()
        elif kind in ("up", "garbage") and not dead:
            chunk = bytes(up[:n])
            del up[:n]
            # garbage: a frame for a flow never opened, a protocol error once the frames
            # before it in the chunk were read (and the flows they opened counted).
            server_input(chunk + (_NEVER_OPENED if kind == "garbage" else b""))
        elif kind == "reply" and delivered and not dead and not server.closed:
            fid = delivered[n % len(delivered)]
            if server.is_live(fid):
                server.send_data(fid, b"reply", end=True)
        elif kind == "down":
            chunk = bytes(down[:n])
            del down[:n]
            client_input(chunk)
        elif kind == "goaway" and not dead:
            server.close()
        elif kind == "eof":
            dead = True
        if not dead:
            down += server.data_to_send()
    client_input(bytes(down))  # whatever is still on its way (an EOF, if dead, ends it)
    retried: set[int] = set()
    for event in closed:
        retried.update(event.unprocessed)
        # Complete: every live flow of ours that the server did not take is retried.
        mine = {f for f in event.flow_ids if f & 1}
        assert mine - set(delivered) == set(event.unprocessed)
    # Safe: never a flow the server's application took, never one with a reply byte.
    assert not retried & set(delivered), (retried, delivered)
    assert not retried & replied


@pytest.mark.parametrize("options", [(), (NoRetry(),)], ids=["fast-call", "general-path"])
def test_a_request_the_server_never_took_is_sent_again_at_most_max_resends_times(
    family: Family, make_client: MakeClient, options: tuple[Any, ...]
) -> None:
    """The server answers one call, then answers every request with GOAWAY saying it took
    none: the next call goes on the warm VC, and is sent again MAX_RESENDS times, each on a
    new VC, then fails with NotProcessedError (request_sent False), whichever path it took
    first."""
    server = RefusingServer(family.member("server"), answer=1)
    try:
        client = make_client()
        name = "/" + server.endpoint
        assert client.call(Context.background(), name, "Echo", 1) == ("ok",)
        with pytest.raises(errors.NotProcessedError) as info:
            client.call(Context.background(), name, "Echo", 1, options=options)
        assert info.value.request_sent is False
        assert server.refused == 1 + MAX_RESENDS
        assert server.connections == 1 + MAX_RESENDS
        assert client.stats["resent_unprocessed"] == MAX_RESENDS
    finally:
        server.close()


def test_goaway_carries_the_last_flow_id_taken_as_documented() -> None:
    server = muxmod.Mux(dialer=False, peer_initial_window=1024)
    client = muxmod.Mux(dialer=True, peer_initial_window=1024)
    for _ in range(4):  # flows 1, 3, 5, 7
        client.send_data(client.open_flow(), b"x", end=True)
    server.receive_data(client.data_to_send())
    later = client.open_flow()  # 9: sent after the server queued its GOAWAY
    client.send_data(later, b"y", end=True)
    server.close()
    wire = server.data_to_send()
    assert wire == bytes.fromhex("0401 00000000 00000004 00000007")  # docs/protocol.md 2.5
    assert server.receive_data(client.data_to_send()) == []  # ignored after GOAWAY
    (closed,) = client.receive_data(wire)
    assert isinstance(closed, muxmod.ConnectionClosed)
    assert closed.last_flow_id == 7 and closed.unprocessed == (later,)
    # Without LAST_ID (an older peer, a handshake refusal): nothing is known, nothing retried.
    other = muxmod.Mux(dialer=True, peer_initial_window=1024)
    other.send_data(other.open_flow(), b"z", end=True)
    (closed,) = other.receive_data(bytes.fromhex("0400 00000000 00000000"))
    assert isinstance(closed, muxmod.ConnectionClosed)
    assert closed.last_flow_id is None and closed.unprocessed == ()
    with pytest.raises(errors.BadProtocolError):
        muxmod.Mux(dialer=True, peer_initial_window=1024).receive_data(
            bytes.fromhex("0401 00000000 00000002 0000")
        )


# --- a reply that came before the end of the request is kept -----------------------------------
# (Replaces Flow.write at run time, which compiled callers never look up.)
@pytest.mark.interpreted
@pytest.mark.parametrize("warm", [True, False], ids=["fast-call", "general-path"])
def test_a_reply_that_overtakes_the_end_of_the_request_is_kept(
    server: tuple[Server, str, Svc],
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    warm: bool,
) -> None:
    """The server runs a call once its args are in, answers (FIN) and resets the flow when the
    end of the request is still on its way; the write of that end then fails, but the reply is
    there and is the call's result (a fault injected by holding the last piece back)."""
    _srv, name, _svc = server
    client = make_client()
    if warm:
        assert client.call(ctx(), name, "Echo", b"warm") == (b"warm",)
    real_write = connmod.Flow.write
    held = []
    caller = threading.current_thread()  # (the server's writes, in this process too, pass)

    def write(self: connmod.Flow, data: Any, *, end: bool = False, **kw: Any) -> None:
        if threading.current_thread() is caller and isinstance(data, list) and end:
            real_write(self, data[:-1], **kw)  # the header and the bulk arg, not the end
            deadline = time.monotonic() + 5
            while not self.peer_done and time.monotonic() < deadline:
                threading.Event().wait(0.005)
            held.append(self.peer_done)
            data = data[-1:]
        real_write(self, data, end=end, **kw)

    monkeypatch.setattr(connmod.Flow, "write", write)
    payload = b"y" * 8192  # a bulk arg: its own piece of the write
    assert client.call(ctx(), name, "Echo", payload) == (payload,)
    assert held == [True]  # the reply did overtake the end of the request


def _wait_until_answered(call: callmod.Call) -> None:
    """Until the server's reply has ended (it answered without waiting for our end)."""
    flow = call._stream.flow
    deadline = time.monotonic() + 5
    while not flow.peer_done and time.monotonic() < deadline:
        threading.Event().wait(0.005)
    assert flow.peer_done


def test_close_send_after_the_server_answered_keeps_the_reply(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    """A streaming-style call (start_call, then close_send, as ``ipc call`` does) whose
    server answers once its args are in, and resets the flow because the end of the request
    had not come yet: close_send must not fail the call, and finish returns the reply (a slow
    client, e.g. a process starting on a loaded machine, hits this at random)."""
    _srv, name, _svc = server
    client = make_client()
    with client.start_call(ctx(), name, "Echo", ["hello"]) as call:
        _wait_until_answered(call)
        threading.Event().wait(0.05)  # (the server's RESET follows its reply)
        call.close_send()
        assert list(call) == []
        assert call.finish() == ("hello",)


def test_send_after_the_server_answered_says_so_and_keeps_the_reply(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = server
    client = make_client()
    with client.start_call(ctx(), name, "Echo", [[1, 2]]) as call:
        _wait_until_answered(call)
        threading.Event().wait(0.05)
        with pytest.raises(errors.AbortedError, match="finish"):
            call.send("late")
        assert call.finish() == ([1, 2],)


def test_a_dial_its_caller_gave_up_on_goes_on_and_serves_the_next_call(
    server: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    # The caller drives the dial itself at first; its deadline passes before the server's
    # (delayed) hello comes: the rest of the dial goes on in a thread and its VC is cached.
    _srv, name, _svc = server
    with FaultProxy(name.split("@")[3]) as proxy:
        proxy.set(down=Fault.latency(0.3))
        client = make_client()
        target = proxied(name, proxy)
        with pytest.raises(errors.TimeoutError) as info:
            client.call(ctx(0.1), target, "Echo", "early")
        assert info.value.request_sent is False
        deadline = time.monotonic() + 5
        while client.vc_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.vc_count() == 1
        assert client.call(ctx(), target, "Echo", "next") == ("next",)
        assert client.stats["dials"] == 1


# --- a VC retired for a newer one still carries calls ------------------------------------------
@expose
class _Sleeper:
    def __init__(self) -> None:
        self.sleeping = threading.Event()

    def Sleep(self, call: ServerCall, seconds: float) -> str:
        self.sleeping.set()
        call.context.wait(seconds)
        return "slept"

    def Echo(self, call: ServerCall, x: Any) -> Any:
        return x


def _retire_a_vc_under_a_call(
    make_server: MakeServer, make_client: MakeClient, proxy_of: Callable[[str], FaultProxy]
) -> tuple[Client, Any, dict[str, Any], threading.Thread]:
    """A client whose first VC carries a 3 s call when a call times out on it with the peer
    silent, so that the next call dials a new VC that replaces it (the first is retired);
    then the first VC's peer speaks again. Returns the client, the retired VC, the long
    call's outcome (filled in when it ends) and its thread."""
    svc = _Sleeper()
    _srv, name = make_server(svc, AllowEveryone())
    proxy = proxy_of(name.split("@")[3])
    client = make_client()
    target = proxied(name, proxy)
    assert client.call(ctx(), target, "Echo", "warm") == ("warm",)
    (first,) = client._vcs.values()
    outcome: dict[str, Any] = {}

    def long_call() -> None:
        try:
            outcome["result"] = client.call(ctx(), target, "Sleep", 3.0)
        except errors.IPCError as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=long_call)
    thread.start()
    assert svc.sleeping.wait(5)
    (pipe,) = proxy.pipes
    pipe.set(up=Fault.stall(), down=Fault.stall())
    time.sleep(0.2)  # (a pump waiting in select when the fault is set relays one more read)
    with pytest.raises(errors.TimeoutError):
        # (a call that times out with the peer silent for over a second: the VC is suspect)
        client.call(ctx(1.5), target, "Echo", "lost")
    assert client.call(ctx(5), target, "Echo", "new") == ("new",)
    assert len(proxy.pipes) == 2 and first not in client._vcs.values()  # (retired)
    pipe.set(up=Fault.none(), down=Fault.none())
    return client, first, outcome, thread


def test_close_ends_a_retired_vc_and_the_calls_it_carries(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Client.close() closed only the VCs in the cache: a retired one, and a call on it, ran
    on after close() (the call returned its result, the VC's thread and socket stayed until
    the next keepalive check)."""
    with contextlib.ExitStack() as stack:
        proxies = lambda target: stack.enter_context(FaultProxy(target))  # noqa: E731
        client, first, outcome, thread = _retire_a_vc_under_a_call(
            make_server, make_client, proxies
        )
        assert not first.closed
        closed_at = time.monotonic()
        client.close()
        thread.join(5)
        assert isinstance(outcome.get("error"), errors.CanceledError), outcome
        assert outcome["at"] - closed_at < 1.0
        assert first.closed and first.wait_closed(1.0)


def test_a_retired_vc_closes_when_its_last_call_ends(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A retired VC closed at the next keepalive check after its last flow ended (up to the
    keepalive interval later); the flow's end now wakes its reader to close it."""
    with contextlib.ExitStack() as stack:
        proxies = lambda target: stack.enter_context(FaultProxy(target))  # noqa: E731
        client, first, outcome, thread = _retire_a_vc_under_a_call(
            make_server, make_client, proxies
        )
        thread.join(10)
        assert outcome.get("result") == ("slept",), outcome
        assert first.wait_closed(1.0), "the retired VC is still open after its last call"
        assert client.vc_count() == 1


@expose
class _Uploads:
    def Up(self, call: ServerCall, data: bytes) -> int:
        return len(data)

    def Ping(self, call: ServerCall) -> str:
        return "pong"


def test_a_call_that_never_queued_a_byte_behind_a_stalled_send_says_it_was_not_sent(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """When MAX_QUEUED waits behind a send the peer does not read, a new call's request is
    cut to nothing and waits for room; if its deadline passes then, nothing of it reached
    the wire, and the error says so (it said request_sent=True, not to be retried).

    The socket buffers on both sides of the stall are fixed and small, and the uploads far
    outweigh them: a kernel that went on taking bytes during the stall (buffers that grow
    by themselves, or a receive queue compacted) would let the flusher finish and take
    what was queued, and the Ping would go out whole, as it should then."""
    _srv, name = make_server(_Uploads(), AllowEveryone())
    with FaultProxy(name.split("@")[3], rcvbuf=64 * 1024) as proxy:
        client = make_client()
        target = proxied(name, proxy)
        assert client.call(ctx(), target, "Ping") == ("pong",)
        (conn,) = client._vcs.values()
        conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        proxy.set(up=Fault.stall())
        data = b"u" * ((1 << 20) - 100)

        def upload() -> None:
            with contextlib.suppress(errors.IPCError):  # (it may end either way)
                client.call(ctx(10), target, "Up", data)

        uploads = [threading.Thread(target=upload, daemon=True) for _ in range(16)]
        for t in uploads:
            t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and conn._writer.queued < (4 << 20):
            time.sleep(0.02)
        assert conn._writer.flushing and conn._writer.queued >= (4 << 20)
        with pytest.raises(errors.TimeoutError) as info:
            client.call(ctx(0.5), target, "Ping", options=(NoRetry(),))
        still = (conn._writer.flushing, conn._writer.queued)  # (the stall held throughout)
        assert info.value.request_sent is False, still
        proxy.set(up=Fault.none())
        for t in uploads:
            t.join(10)
