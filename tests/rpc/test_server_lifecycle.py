"""Serving until stopped: ``Server.wait``, ``stop(grace=)``; one result with ``call_one``; the
reserved ``__Signature`` method every server answers."""

from __future__ import annotations

import _thread
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import Client, Context, Results, Server, errors
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.server import ServerCall, signature
from ipcclient.vc.handshake import ClientHandshake
from tests.conftest import Family

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


class Slow:
    """A service whose calls wait for the test to let them go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @expose
    def Wait(self, call: ServerCall, seconds: float) -> str:
        """Block until released (or ``seconds``), then say how it ended."""
        self.entered.set()
        if self.release.wait(seconds):
            return "released"
        return "cancelled" if call.context.done() else "timed out"

    @expose
    def Nothing(self, call: ServerCall) -> None:
        return None

    @expose
    def One(self, call: ServerCall) -> int:
        return 1

    @expose
    def Two(self, call: ServerCall) -> Results:
        return Results(1, 2)

    @expose
    def Vary(self, call: ServerCall, a: int, b: str = "x", *rest: Any) -> None:
        """First line.

        Indented detail.
        """

    def helper(self) -> None:  # public, but not exposed: Python only
        pass

    def _private(self, call: ServerCall) -> None:
        pass


def _ctx(seconds: float = 20.0) -> Context:
    return Context.background().with_timeout(seconds)


def _call_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_stop_with_grace_lets_a_call_in_flight_finish(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Slow()
    server, name = make_server(svc, AllowEveryone())
    client = make_client()
    t, out = _call_in_thread(lambda: client.call(_ctx(), name, "Wait", 30.0))
    assert svc.entered.wait(20)

    stopper, _ = _call_in_thread(lambda: server.stop(grace=20.0))
    # While stopping: the listener no longer accepts, new calls are refused...
    deadline = time.monotonic() + 20
    refused: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            client.call(_ctx(5), name, "One")
        except errors.IPCError as exc:
            refused = exc
            break
        time.sleep(0.01)
    assert isinstance(refused, errors.IPCError)
    # ...but the call in flight still runs, and ends well once released.
    assert t.is_alive()
    svc.release.set()
    t.join(20)
    stopper.join(20)
    assert out == [("released",)]
    assert server.wait(0) is True


def test_stop_without_grace_cancels_calls_in_flight(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Slow()
    server, name = make_server(svc, AllowEveryone())
    client = make_client()
    t, out = _call_in_thread(lambda: client.call(_ctx(), name, "Wait", 30.0))
    assert svc.entered.wait(20)
    started = time.monotonic()
    server.stop(grace=0.2)  # the call does not finish in time: it is cancelled
    t.join(20)
    assert time.monotonic() - started < 15
    assert len(out) == 1 and isinstance(out[0], errors.IPCError)
    # (The method itself runs on, ignoring its context: let it go, or it runs on as an
    # inline job for 30 s, keeping the process's handoff thread ticking for later tests.)
    svc.release.set()
    with pytest.raises(errors.BadArgError):
        Server(Family().member("s")).stop(grace=-1)


def test_wait_returns_when_stopped_or_times_out(family: Family) -> None:
    server = Server(family.member("server"))
    server.listen("tcp", "127.0.0.1:0")
    assert server.wait(0.05) is False
    threading.Timer(0.1, server.stop).start()
    assert server.wait(20) is True
    server.stop()  # idempotent


@pytest.mark.parametrize("timeout", [1e10, float("inf")])
def test_wait_takes_a_timeout_of_any_length(family: Family, timeout: float) -> None:
    """A timeout the system calls would refuse in one wait (they once raised a bare
    OverflowError) is waited out in slices; a negative or NaN one is refused."""
    server = Server(family.member("server"))
    server.listen("tcp", "127.0.0.1:0")
    threading.Timer(0.1, server.stop).start()
    assert server.wait(timeout) is True
    for bad in (-1.0, float("nan")):
        with pytest.raises(errors.BadArgError):
            server.wait(bad)


@pytest.mark.usefixtures("ctrl_c")
def test_wait_stops_the_server_on_ctrl_c(family: Family) -> None:
    server = Server(family.member("server"))
    server.listen("tcp", "127.0.0.1:0")
    threading.Timer(0.1, _thread.interrupt_main).start()
    assert server.wait(grace=0.1) is True  # KeyboardInterrupt in the main thread: stopped
    assert server.wait(0) is True
    with pytest.raises(errors.BadStateError):
        server.listen("tcp", "127.0.0.1:0")


def test_call_one(make_server: MakeServer, make_client: MakeClient) -> None:
    _, name = make_server(Slow(), AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Nothing") == ()
    assert client.call_one(_ctx(), name, "Nothing") is None
    assert client.call_one(_ctx(), name, "One") == 1
    with pytest.raises(errors.BadStateError, match="2 results"):
        client.call_one(_ctx(), name, "Two")
    assert client.call(_ctx(), name, "Two") == (1, 2)


def test_signature_is_served_and_authorized(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    _, name = make_server(Slow(), AllowPatterns(["root:client"]))
    (sig,) = make_client().call(_ctx(), name, "__Signature")
    by_name = {m["name"]: m for m in sig}
    assert by_name["Vary"] == {
        "name": "Vary",
        "args": ["a", "b"],
        "varargs": True,
        "doc": "First line.\n\nIndented detail.",
    }
    assert by_name["Wait"]["args"] == ["seconds"]
    assert "_private" not in by_name and "__Signature" not in by_name
    assert "helper" not in by_name
    assert [m["name"] for m in sig] == sorted(by_name)
    assert sig == signature(Slow())
    # The object's authorizer decides who may read its signature.
    with pytest.raises(errors.NoAccessError):
        make_client(family.member("stranger")).call(_ctx(), name, "__Signature")


class Stopper:
    """A service with a "Shutdown" method: it stops its own server."""

    def __init__(self) -> None:
        self.raised: list[BaseException] = []
        self.returned = threading.Event()

    @expose
    def Shutdown(self, call: ServerCall) -> str:
        try:
            call.server.stop(timeout=5.0)
        except BaseException as exc:
            self.raised.append(exc)
            raise
        finally:
            self.returned.set()
        return "stopping"


@pytest.mark.parametrize("way", ["inline", "worker"])
def test_a_method_can_stop_its_own_server(
    make_server: MakeServer, make_client: MakeClient, way: str
) -> None:
    """stop() from a served method (on the VC's reader thread for a unary call, on a worker
    for a streaming one) stops the server: the worker running it is not waited for (it
    cannot join itself), and the server ends stopped."""
    svc = Stopper()
    server, name = make_server(svc, AllowEveryone())
    client = make_client()
    try:
        if way == "inline":
            client.call(_ctx(), name, "Shutdown")
        else:
            client.start_call(_ctx(), name, "Shutdown", []).finish()
    except errors.IPCError:
        pass  # (the call is cancelled with the rest, or its VC closed: either is fine)
    assert svc.returned.wait(10)
    assert svc.raised == []
    assert server.wait(10) is True
    deadline = time.monotonic() + 10
    while server._pool.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server._pool.threads == 0  # (the worker that stopped ended once its call did)
    with pytest.raises(errors.BadStateError):
        server.listen("tcp", "127.0.0.1:0")


class _FailingPublisher:
    """A publisher whose stop fails with ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def stop(self, timeout: float) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("unpublishing broke"), KeyboardInterrupt()])
def test_stop_runs_every_step_whatever_fails(
    family: Family, make_client: MakeClient, exc: BaseException
) -> None:
    """A step of stop() that fails does not leave the server half stopped: the later steps
    run (calls are cancelled, VCs closed, workers end) and wait() says stopped. An error is
    logged; an interruption (Ctrl-C while stopping) is raised once every step has run."""
    server = Server(family.member("server"), publisher=_FailingPublisher(exc))
    ep = server.listen("tcp", "127.0.0.1:0")
    svc = Slow()
    server.serve(svc, AllowEveryone())
    client = make_client()
    t, out = _call_in_thread(lambda: client.call(_ctx(), "/" + ep, "Wait", 30.0))
    assert svc.entered.wait(10)
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            server.stop()
    else:
        server.stop()
    assert server.wait(0) is True
    t.join(10)
    assert len(out) == 1 and isinstance(out[0], errors.IPCError)  # cancelled, not left running
    svc.release.set()  # (the method itself runs on, as a method that ignores its context does)
    assert server.connections == []
    # Its worker thread (when it did not run on the VC's reader) ends once it returns.
    ends = time.monotonic() + 10
    while server._pool.threads and time.monotonic() < ends:
        time.sleep(0.01)
    assert server._pool.threads == 0


def test_stop_refuses_a_timeout_that_is_not_seconds(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """stop()'s timeout bounds each step: it must be a finite number of seconds >= 0
    (``None`` is refused, not taken as "no bound"), checked before anything stops."""
    server, name = make_server(Slow(), AllowEveryone())
    client = make_client()
    for bad in (None, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(errors.BadArgError, match="stop timeout"):
            server.stop(timeout=bad)  # type: ignore[arg-type]
        assert server.wait(0) is False
        assert client.call_one(_ctx(), name, "One") == 1  # still serving
    server.stop(timeout=0)
    assert server.wait(0) is True


def test_a_listen_that_loses_a_race_with_stop_leaves_no_listener(
    family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """listen() whose listener is made while stop() runs (after stop() took the listeners
    to close) closes it and raises BadStateError: no port stays open after stop()."""
    server = Server(family.member("server"))
    made: list[Any] = []
    real_listen = server._manager.listen

    def listen_then_stop(*args: Any, **kwargs: Any) -> Any:
        listener = real_listen(*args, **kwargs)
        made.append(listener)
        server.stop()  # (what another thread may do at this very moment)
        return listener

    monkeypatch.setattr(server._manager, "listen", listen_then_stop)
    with pytest.raises(errors.BadStateError):
        server.listen("tcp", "127.0.0.1:0")
    assert server.wait(0) is True and server.endpoints == []
    (listener,) = made
    host, port = listener.address.rsplit(":", 1)
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(5)
        s.connect((host, int(port)))


def test_stop_ends_the_handshakes_still_going_on(family: Family) -> None:
    """Connections that sent their hello and then nothing kept a handshake thread and a
    socket each for the handshake timeout (10 s) after stop() returned."""
    hello = ClientHandshake(
        family.member("raw"), authorize_server=lambda *_: None, blessings_for_server=lambda _: None
    ).start()
    server = Server(family.member("server"))
    ep = server.listen("tcp", "127.0.0.1:0")
    server.serve(Slow(), AllowEveryone())
    host, port = ep.split("@")[3].rsplit(":", 1)
    others = set(threading.enumerate())  # (another test's server may still be shaking hands)
    raws = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    try:
        for raw in raws:
            raw.sendall(hello)
            assert raw.recv(4096)  # (the server's hello and auth: its handshake waits for ours)
        stopped = time.monotonic()
        server.stop()
        for raw in raws:
            while raw.recv(4096):  # (EOF once the server's side is closed)
                pass
        assert time.monotonic() - stopped < 2.0

        def ours() -> list[threading.Thread]:
            return [
                t for t in threading.enumerate() if t.name == "ipc-handshake" and t not in others
            ]

        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and ours():
            time.sleep(0.02)
        assert not ours()
    finally:
        for raw in raws:
            raw.close()


@expose
class _Download:
    def __init__(self) -> None:
        self.answered = threading.Event()

    def Big(self, call: ServerCall) -> bytes:
        self.answered.set()
        return b"x" * (3 << 20)


def _download(client: Client, target: str) -> tuple[threading.Thread, list[Any]]:
    """A thread calling ``Big`` on ``target``; the list gets its result or its error."""
    got: list[Any] = []

    def download() -> None:
        try:
            got.append(client.call(Context.background().with_timeout(30), target, "Big"))
        except errors.IPCError as exc:
            got.append(exc)

    thread = threading.Thread(target=download)
    thread.start()
    return thread, got


def test_stop_with_grace_lets_an_answer_being_sent_reach_its_client(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A method's worker returns once its answer is queued or handed to a drainer (a slow
    client); stop(grace) found no call in flight, closed the VC at once, and the client,
    owed the answer and well within the grace, got a broken VC instead."""
    from tests.faultproxy import Fault, FaultProxy

    svc = _Download()
    srv, name = make_server(svc, AllowEveryone())
    parts = name.split("@")
    with FaultProxy(parts[3]) as proxy:
        proxy.set(down=Fault.latency(0.04))  # (at most 64 KiB per 40 ms toward the client)
        target = "@".join([*parts[:3], proxy.address, *parts[4:]])
        thread, got = _download(make_client(), target)
        assert svc.answered.wait(10)
        deadline = time.monotonic() + 5  # (the worker returns, its answer still going out)
        while srv._in_use and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv._in_use == 0
        srv.stop(grace=20)
        thread.join(20)
    assert got and not isinstance(got[0], errors.IPCError), got
    assert len(got[0][0]) == 3 << 20


@expose
class _GatedDownload:
    def __init__(self) -> None:
        self.called = threading.Event()
        self.go = threading.Event()

    def Big(self, call: ServerCall) -> bytes:
        self.called.set()
        self.go.wait(10)
        return b"x" * (3 << 20)


def test_stop_with_grace_waits_for_an_answer_waiting_for_the_clients_credit(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A call's slot is given back before its answer is written; an answer larger than the
    client's window then waits for the client's credit with nothing queued or
    unacknowledged. stop(grace) found no call running and nothing being sent and closed
    the VC with most of the answer unsent. (The proxy holds back what the client sends,
    its credit included, until the stop has begun.)"""
    from tests.faultproxy import Fault, FaultProxy

    svc = _GatedDownload()
    srv, name = make_server(svc, AllowEveryone())
    parts = name.split("@")
    with FaultProxy(parts[3]) as proxy:
        target = "@".join([*parts[:3], proxy.address, *parts[4:]])
        thread, got = _download(make_client(), target)
        assert svc.called.wait(10)
        proxy.set(up=Fault.stall())
        svc.go.set()
        (conn,) = srv.connections
        deadline = time.monotonic() + 10  # (the first window out and acknowledged)
        while srv._in_use or conn.sending():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 20})
        stopper.start()
        stopper.join(0.3)
        assert stopper.is_alive()  # (before: the VC was closed at once)
        proxy.heal()
        stopper.join(20)
        assert not stopper.is_alive() and conn.closed
        # The whole answer left the server before the stop closed its VC. (Whether the
        # client then reads all of it is another matter: credit it sends after the close
        # meets a closed socket, and a client whose send fails so breaks its VC, at times
        # before it has read the tail it received. A limit of the close, not of the wait.)
        (pipe,) = proxy.pipes
        assert pipe.count["down"] > 3 << 20
        thread.join(20)
    assert got, "the call never ended"
