"""Calls run on the VC's reader thread (ServerOptions.inline_calls): what must still hold."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ClientOptions
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport.conn import KeepaliveConfig
from ipcclient.transport.manager import TransportOptions

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


class Service:
    def __init__(self) -> None:
        self.running = threading.Semaphore(0)

    def Echo(self, call: ServerCall, x: Any) -> Any:
        return x

    def Sleep(self, call: ServerCall, seconds: float) -> str:
        self.running.release()
        time.sleep(seconds)  # ignores cancellation on purpose
        return "slept"

    def Exit(self, call: ServerCall) -> None:
        raise SystemExit(3)


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


class _Poisoner:
    """A socket stand-in that appends a record failing authentication to the next send, so
    the server reads a valid request and a bad record in one batch."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: Any, *args: Any) -> None:
        if self.armed:
            self.armed = False
            data = bytes(data) + b"\x00\x00\x00\x20" + b"\x07" * 32
        self._sock.sendall(data, *args)


def test_a_batch_that_fails_after_a_request_leaks_no_call_slot(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(workers=2, max_queued=2)
    )
    for _ in range(6):  # more than the server's 4 slots
        client = make_client()
        assert client.call(ctx(), name, "Echo", 1) == (1,)
        (conn,) = client._vcs.values()
        poisoner = _Poisoner(conn._sock)
        conn._sock = poisoner  # type: ignore[assignment]
        poisoner.armed = True
        # Usually the request and the bad record are read in one batch and the call fails
        # with the VC; if they happen to be read apart, the call completes first. Either way
        # no slot may stay taken.
        with contextlib.suppress(errors.IPCError):
            client.call(ctx(3), name, "Echo", 2)
        client.close()
    deadline = time.monotonic() + 5
    while server._in_use and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server._in_use == 0
    assert make_client().call(ctx(), name, "Echo", 3) == (3,)  # not overloaded for good


def test_a_long_inline_call_keeps_its_vc_alive(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    quick = TransportOptions(keepalive=KeepaliveConfig(interval=0.2, timeout=0.8))
    _, name = make_server(Service(), AllowEveryone(), options=ServerOptions(transport=quick))
    slow = TransportOptions(keepalive=KeepaliveConfig(interval=100, timeout=300))
    client = make_client(options=ClientOptions(transport=slow))  # a quiet client
    assert client.call(ctx(), name, "Sleep", 1.5) == ("slept",)  # the helper pings meanwhile
    time.sleep(0.4)
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    assert client.stats["dials"] == 1  # the server never took the quiet client for dead


def test_stop_does_not_wait_a_second_per_vc_running_a_call(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    service = Service()
    server, name = make_server(service, AllowEveryone())
    threads = []
    for _ in range(4):
        client = make_client()

        def run(c: Client = client) -> None:
            try:
                c.call(ctx(), name, "Sleep", 2.0)
            except errors.IPCError:
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    for _ in range(4):
        assert service.running.acquire(timeout=5)
    start = time.monotonic()
    server.stop(timeout=0.5)
    assert time.monotonic() - start < 1.5  # not 4 x the reader join
    for t in threads:
        t.join(5)


def test_system_exit_in_a_method_ends_only_that_call(rig_exit: tuple[str, Client]) -> None:
    name, client = rig_exit
    with pytest.raises(errors.IPCError):
        client.call(ctx(), name, "Exit")
    assert client.call(ctx(), name, "Echo", 5) == (5,)
    assert client.stats["dials"] == 1  # the VC survived


@pytest.fixture
def rig_exit(make_server: MakeServer, make_client: MakeClient) -> tuple[str, Client]:
    _, name = make_server(Service(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    return name, client


def test_start_call_refuses_args_that_are_not_a_sequence(make_client: MakeClient) -> None:
    client = make_client()
    for bad in (40, "ab", b"ab"):
        with pytest.raises(errors.BadArgError):
            client.start_call(ctx(), "/127.0.0.1:1", "M", bad)  # type: ignore[arg-type]
