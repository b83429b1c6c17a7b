"""A dialed VC with no call on it for ``TransportOptions.idle_timeout`` closes (GOAWAY, a
normal close); the next call dials again, and a call that finds the VC closing as it starts
is not failed by it."""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ClientOptions, NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.options import ServerOptions
from ipcclient.server.server import Server, ServerCall
from ipcclient.transport import conn as connmod
from ipcclient.transport.conn import Connection, KeepaliveConfig
from ipcclient.transport.manager import CLIENT_BUSY_POLL, IDLE_TIMEOUT, TransportOptions

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]

IDLE = 0.3


@expose
class Svc:
    def __init__(self) -> None:
        self.release = threading.Event()

    def Echo(self, call: ServerCall, x: Any) -> Any:
        return x

    def Hold(self, call: ServerCall) -> str:
        """Returns once the test lets it (or after 10 s)."""
        self.release.wait(10.0)
        return "held"


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


def idle_client(make_client: MakeClient, idle: float = IDLE, **transport: Any) -> Client:
    options = TransportOptions(busy_poll=CLIENT_BUSY_POLL, idle_timeout=idle, **transport)
    return make_client(options=ClientOptions(default_call_timeout=20.0, transport=options))


def the_vc(client: Client) -> Connection:
    (conn,) = client._cache.vcs.values()
    return conn


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def served(make_server: MakeServer) -> tuple[Server, str, Svc]:
    svc = Svc()
    srv, name = make_server(svc, AllowEveryone())
    return srv, name, svc


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lead_reads", [True, False])
def test_an_idle_vc_closes_and_the_next_call_dials_again(
    served: tuple[Server, str, Svc], make_client: MakeClient, lead_reads: bool
) -> None:
    srv, name, _svc = served
    client = idle_client(make_client, lead_reads=lead_reads)
    assert client.call_one(ctx(), name, "Echo", 1) == 1
    first = the_vc(client)
    started = time.monotonic()
    assert first.wait_closed(10.0), "the idle VC never closed"
    # Closed by the idle check, not before its time, and as a normal close.
    assert time.monotonic() - started >= IDLE * 0.9
    assert first.error is not None and "idle_timeout" in first.error.msg
    assert client.vc_count() == 0
    first._reader.join(5.0)
    assert not first._reader.is_alive()
    # The server saw a GOAWAY (a normal close) and let its end of the VC go.
    assert wait_until(lambda: not srv.connections)
    # The next call dials a new VC.
    assert client.call_one(ctx(), name, "Echo", 2) == 2
    assert the_vc(client) is not first


@pytest.mark.timeout(30)
def test_calls_more_often_than_the_idle_timeout_keep_one_vc(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = served
    client = idle_client(make_client)
    assert client.call_one(ctx(), name, "Echo", 0) == 0
    first = the_vc(client)
    for i in range(12):  # 12 x 0.1 s: four times the idle timeout, never idle that long
        time.sleep(IDLE / 3)
        assert client.call_one(ctx(), name, "Echo", i) == i
    assert not first.closed
    assert the_vc(client) is first


@pytest.mark.timeout(30)
def test_a_call_in_flight_keeps_its_vc_open(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, svc = served
    client = idle_client(make_client)
    call = client.start_call(ctx(), name, "Hold", [])
    conn = the_vc(client)
    assert not conn.wait_closed(IDLE * 4)  # no call started since, but one is in flight
    svc.release.set()
    assert call.finish() == ("held",)
    # Idle from the end of that call on: it closes now.
    assert conn.wait_closed(10.0)


@pytest.mark.timeout(30)
def test_a_call_that_finds_the_vc_closing_dials_again_without_a_retry(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    """The idle check closes the mux (GOAWAY queued) under the VC's lock; a caller that took
    the VC from the cache just before cannot open a flow on it. It dials again at once, even
    with NoRetry: the request never went out, and a VC closing by itself is no failure of the
    call's."""
    _srv, name, _svc = served
    client = idle_client(make_client, idle=60.0)
    assert client.call_one(ctx(), name, "Echo", 1) == 1
    conn = the_vc(client)
    with conn._lock:  # (what the idle check does, without the reader noticing yet)
        conn._mux.close()
    assert client.call_one(ctx(), name, "Echo", 2, options=[NoRetry()]) == 2
    assert the_vc(client) is not conn
    assert conn.wait_closed(5.0)


@pytest.mark.timeout(30)
def test_idle_timeout_zero_keeps_a_vc_open(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    _srv, name, _svc = served
    client = idle_client(make_client, idle=0.0)
    assert client.call_one(ctx(), name, "Echo", 1) == 1
    assert not the_vc(client).wait_closed(IDLE * 3)


def test_the_default_closes_after_five_minutes() -> None:
    assert TransportOptions().idle_timeout == IDLE_TIMEOUT == 300.0
    assert ClientOptions().transport.idle_timeout == IDLE_TIMEOUT


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e10, True, "5", None])
def test_a_bad_idle_timeout_is_refused(bad: Any) -> None:
    with pytest.raises(errors.BadArgError, match="idle_timeout"):
        TransportOptions(idle_timeout=bad)


@pytest.mark.timeout(30)
def test_a_vc_read_by_its_reader_alone_closes_though_the_server_pings_often(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """With ``lead_reads=False`` the reader thread judges the VC when a receive times out; a
    server pinging more often than that timeout (its keepalive interval shorter than the
    client's idle timeout) kept the idle close from ever being judged."""
    chatty = TransportOptions(keepalive=KeepaliveConfig(interval=0.1, timeout=5.0))
    _srv, name = make_server(Svc(), AllowEveryone(), options=ServerOptions(transport=chatty))
    client = idle_client(make_client, lead_reads=False)
    assert client.call_one(ctx(), name, "Echo", 1) == 1
    assert the_vc(client).wait_closed(10.0)


@pytest.mark.timeout(30)
def test_a_vc_whose_last_call_was_cancelled_closes_in_time(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    """The last flow ended by a cancel, while the reader thread waited for the peer with that
    flow open (a wait as long as the keepalive interval, 15 s): the reader looks again
    within the idle timeout all the same."""
    _srv, name, _svc = served
    client = idle_client(make_client)
    call = client.start_call(ctx(), name, "Hold", [])
    conn = the_vc(client)
    assert not conn.wait_closed(IDLE * 2)  # (the reader thread reads meanwhile)
    call.cancel()
    assert conn.wait_closed(IDLE * 10)


@pytest.mark.timeout(30)
def test_a_vc_that_closes_as_it_is_evicted_is_not_kept_as_retired(
    served: tuple[Server, str, Svc], make_client: MakeClient
) -> None:
    """A caller evicts a VC whose mux the idle check closed; its reader's break (which
    forgets the VC: ``on_close`` runs once) lands just before the eviction takes the cache's
    lock. The eviction used to put the closed VC in ``retired``, where nothing removed it
    until the client closed."""
    _srv, name, _svc = served
    client = idle_client(make_client, idle=60.0)
    assert client.call_one(ctx(), name, "Echo", 1) == 1
    cache = client._cache
    conn = the_vc(client)
    with conn._lock:
        conn._mux.close()  # (what the idle check does)
    lock = cache.lock

    class BreakFirst:
        """The cache's lock, with the reader's break run just before its first taking."""

        fired = False

        def __enter__(self) -> Any:
            if not BreakFirst.fired:
                BreakFirst.fired = True
                conn._break(errors.ConnectionFailedError("transport: closed meanwhile"))
            return lock.__enter__()

        def __exit__(self, *exc: object) -> Any:
            return lock.__exit__(*exc)

    cache.lock = BreakFirst()  # type: ignore[assignment]
    try:
        cache.evict(conn)
    finally:
        cache.lock = lock
    assert BreakFirst.fired and conn.closed
    assert conn not in cache.retired


def test_a_socket_timeout_under_a_microsecond_is_not_none() -> None:
    """A zero ``struct timeval`` means no timeout: an ``idle_timeout`` of 5e-7 s made the
    receive timeout of a VC read by its reader alone endless (no idle close, no keepalive)."""
    assert struct.unpack("ll", connmod._timeval(5e-7)) == (0, 1)
    assert struct.unpack("ll", connmod._timeval(2.5)) == (2, 500_000)
    assert struct.unpack("ll", connmod._timeval(3.0)) == (3, 0)
