"""A server call's context is made when its method first asks for it, and is then what it
would have been from the start: cancelled if the client already reset the call, if the call
is over, or if the server stopped; with the call's deadline and trace span.

The work budget (tests/transport/test_work_budget.py) checks that a method which never asks
makes none; these tests check that one made late is still right."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import Client, Context, Server, errors, vtrace
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import ServerCall

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


def _ctx(seconds: float = 20.0) -> Context:
    return Context.background().with_timeout(seconds)


class Late:
    """Methods that look at their context only late, or keep the call for the test."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.seen: list[Any] = []
        self.kept: ServerCall | None = None

    @expose
    def AfterReset(self, call: ServerCall) -> None:
        """Wait (without a context) until the client's reset has arrived, then look."""
        self.entered.set()
        for _ in range(1000):  # at most 10 s
            if call.ended_error() is not None:
                break
            time.sleep(0.01)
        ctx = call.context
        self.seen.append((ctx.done(), ctx.err()))

    @expose
    def Keep(self, call: ServerCall) -> str:
        self.kept = call
        return "kept"

    @expose
    def Deadline(self, call: ServerCall) -> list[Any]:
        before = (call.deadline, call.remaining())
        return [before[0] is not None, before[1], call.context.deadline == call.deadline]

    @expose
    def TraceId(self, call: ServerCall) -> bytes | None:
        span = vtrace.current_span(call.context)
        return None if span is None else span.trace_id


def test_context_made_after_the_client_reset_is_born_cancelled(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Late()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    ctx = _ctx()
    call = client.start_call(ctx, name, "AfterReset", [])
    assert svc.entered.wait(10)
    call.cancel()
    for _ in range(1000):
        if svc.seen:
            break
        time.sleep(0.01)
    (done, err) = svc.seen[0]
    assert done is True
    assert isinstance(err, errors.CanceledError)
    assert err.msg.startswith("client:"), err.msg


def test_context_of_a_call_that_is_over_is_cancelled(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Late()
    _, name = make_server(svc, AllowEveryone())
    assert make_client().call(_ctx(), name, "Keep") == ("kept",)
    kept = svc.kept
    assert kept is not None
    ctx = kept.context  # made after the method returned (the server may still be ending it)
    assert ctx.wait(10)
    err = ctx.err()
    assert isinstance(err, errors.CanceledError) and err.msg == "call finished"


def test_deadline_is_read_without_a_context_and_matches_the_context_made_later(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Late()
    _, name = make_server(svc, AllowEveryone())
    ((has_deadline, remaining, same),) = make_client().call(_ctx(30.0), name, "Deadline")
    assert has_deadline is True
    assert 0.0 < remaining <= 30.0
    assert same is True


def test_span_made_late_continues_the_clients_trace(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Late()
    _, name = make_server(svc, AllowEveryone())
    ctx, span = vtrace.with_new_span(_ctx(), "client-side")
    (trace_id,) = make_client().call(ctx, name, "TraceId")
    assert trace_id == span.trace_id


class Waits:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.entered = threading.Event()
        self.err: Any = None
        self.flow: Any = None

    @expose
    def Wait(self, call: ServerCall) -> None:
        call.context.wait(10)
        self.err = call.context.err()
        self.done.set()

    @expose
    def Send(self, call: ServerCall) -> None:
        self.flow = call._flow
        self.entered.set()
        try:
            while True:  # (the client reads nothing: the window fills, the send waits)
                call.send(b"x" * 100_000)
        except errors.IPCError as exc:
            self.err = exc
        self.done.set()

    @expose
    def Recv(self, call: ServerCall) -> None:
        self.entered.set()
        try:
            for _ in call:
                pass
        except errors.IPCError as exc:
            self.err = exc
        self.done.set()


def test_the_context_of_a_call_whose_deadline_passed_says_timeout(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The client's reset (carrying its TimeoutError) always arrives before the server's
    own copy of the deadline passes: the context ended with CanceledError, and a nested
    call made with it failed ipc.Canceled, where docs/client.md says it expires."""
    svc = Waits()
    _, name = make_server(svc, AllowEveryone())
    with pytest.raises(errors.TimeoutError):
        make_client().call(_ctx(0.5), name, "Wait")
    assert svc.done.wait(10)
    # (Whichever came first, the client's reset or the server's own copy of the deadline.)
    assert isinstance(svc.err, errors.TimeoutError), svc.err


def test_a_method_reading_the_clients_stream_when_the_server_stops_sees_the_stop(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """stop() cancels every call's context; a method blocked in call.recv() was woken by the
    VC's close instead and got ConnectionFailedError (retry action: connect again), which
    ServerCall.recv does not list."""
    svc = Waits()
    server, name = make_server(svc, AllowEveryone())
    call = make_client().start_call(_ctx(), name, "Recv", [])
    call.send(1)
    assert svc.entered.wait(10)
    server.stop(timeout=5)
    assert svc.done.wait(10)
    call.cancel()
    assert isinstance(svc.err, errors.CanceledError), svc.err


def test_a_method_streaming_to_its_client_when_the_server_stops_sees_the_stop(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """As for recv: a method blocked in call.send() (its client reads nothing) when the
    server stops got the VC's close, ConnectionFailedError, not the stop's CanceledError."""
    svc = Waits()
    server, name = make_server(svc, AllowEveryone())
    call = make_client().start_call(_ctx(), name, "Send", [])
    assert svc.entered.wait(10)
    deadline = time.monotonic() + 10
    while not svc.flow.starved and time.monotonic() < deadline:
        time.sleep(0.01)
    assert svc.flow.starved  # (the window is full and the send waits for credit)
    server.stop(timeout=1)
    assert svc.done.wait(10)
    call.cancel()
    assert isinstance(svc.err, errors.CanceledError), svc.err
