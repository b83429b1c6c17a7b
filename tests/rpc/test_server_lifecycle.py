"""Serving until stopped: ``Server.wait``, ``stop(grace=)``; one result with ``call_one``; the
reserved ``__Signature`` method every server answers."""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import Client, Context, Results, Server, errors
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.server import ServerCall, signature
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
