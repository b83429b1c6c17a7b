"""Busy polling by a VC's reader thread (``TransportOptions.busy_poll``), over real sockets.

Polled: an accepted VC's reader thread; a dialed VC's while it reads for several calls (or
always, with ``lead_reads=False``); never a caller reading its own reply.

What polling buys (no wake-up of a sleeping thread) is a matter of time and is measured by
the benchmark only; these tests hold the behaviour: a peer calling back to back is found by
a poll, a slow peer stops the polling after one miss, 0 turns it off, bad values are refused.
The rules are tested with ``busy_poll_adapt=False`` (poll whenever they allow); whether
polling pays is judged on a peer that pauses between calls (below) and, for gaps a real
machine cannot be made to show, in tests/unit/test_poll_rules.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import AllowEveryone, Client, ClientOptions, Context, Server, ServerOptions, errors
from ipcclient.server.exposure import expose
from ipcclient.transport import polling
from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.manager import (
    CLIENT_BUSY_POLL,
    DEFAULT_BUSY_POLL,
    MAX_BUSY_POLL,
    Listener,
    StreamManager,
    TransportOptions,
)
from tests.identities import make_identity


def _echo(flow: Flow) -> None:
    def run() -> None:
        data = bytearray()
        try:
            while chunk := flow.read(time.monotonic() + 10):
                data += chunk
            flow.write(bytes(data), end=True)
        except errors.IPCError:
            pass

    threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def listen() -> Iterator[Callable[[TransportOptions], Listener]]:
    made: list[Listener] = []

    def make(options: TransportOptions) -> Listener:
        lst = StreamManager(make_identity(), options).listen(
            "tcp", "127.0.0.1:0", blessings=None, on_flow=_echo
        )
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.close()


def _dial(lst: Listener, options: TransportOptions | None = None) -> Connection:
    return StreamManager(make_identity(), options).dial(
        lst.protocol,
        lst.address,
        deadline=time.monotonic() + 5,
        authorize_server=lambda _k, _b, _d: None,
        blessings_for_server=lambda _b: None,
    )


def _roundtrip(conn: Connection, payload: bytes) -> bytes:
    flow = conn.connect()
    flow.write(payload, end=True)
    out = bytearray()
    while chunk := flow.read(time.monotonic() + 10):
        out += chunk
    return bytes(out)


def _calls(conn: Connection, n: int, tag: bytes, gap: float = 0.0) -> None:
    """``n`` echo round trips on ``conn``, ``gap`` seconds apart."""
    for i in range(n):
        payload = b"%s %d" % (tag, i)
        assert _roundtrip(conn, payload) == payload
        if gap:
            time.sleep(gap)


def _accepted(lst: Listener) -> Connection:
    deadline = time.monotonic() + 10
    while not lst.connections:  # (registered right after the handshake)
        assert time.monotonic() < deadline, "the listener never registered the VC"
        time.sleep(0.005)
    (conn,) = lst.connections
    return conn


def test_calls_back_to_back_are_found_by_polling(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    lst = listen(TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
    conn = _dial(lst)
    try:
        _calls(conn, 30, b"call")
        served = _accepted(lst)
        # Each request but the first came within 10 ms of the reader going idle (the
        # echo and the client's next call take far less), so polls found them.
        assert served.busy_poll_hits >= 1
        # The caller read its replies itself (leader/follower): no reader thread polled.
        assert (conn.busy_poll_hits, conn.busy_poll_misses) == (0, 0)
    finally:
        conn.close()


def test_a_dialed_vc_reading_for_several_calls_polls(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    """Leader/follower: a lone caller reads for itself and never polls (above); with several
    calls in flight the VC's reader thread reads for all of them, and polls between reads."""
    lst = listen(TransportOptions(busy_poll=0))
    conn = _dial(lst, TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
    failures: list[BaseException] = []

    def caller(t: int) -> None:
        try:
            for i in range(40):
                payload = b"%d-%d" % (t, i)
                if _roundtrip(conn, payload) != payload:
                    raise AssertionError(f"wrong reply for {payload!r}")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(6)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
            assert not th.is_alive()
        assert not failures, failures
        assert conn.busy_poll_hits >= 1
    finally:
        conn.close()


def test_a_dialed_vc_read_by_its_thread_polls_too(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    lst = listen(TransportOptions(busy_poll=0))
    conn = _dial(
        lst, TransportOptions(lead_reads=False, busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False)
    )
    try:
        _calls(conn, 30, b"call")
        assert conn.busy_poll_hits >= 1  # replies came within 10 ms of the reader idling
    finally:
        conn.close()


def test_a_slow_peer_stops_the_polling_after_one_miss(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    lst = listen(TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
    conn = _dial(lst)
    try:
        _calls(conn, 20, b"quick")  # (arms the polling)
        served = _accepted(lst)
        misses = served.busy_poll_misses
        _calls(conn, 6, b"slow", gap=0.05)  # gaps far longer than the poll
        # Polling on would miss once per slow call (6); after a miss the reader sleeps
        # until a gap is short again, which 50 ms gaps never are.
        assert served.busy_poll_misses - misses <= 1
        # Quick calls again: the reader polls again (and finds them).
        hits = served.busy_poll_hits
        _calls(conn, 30, b"again")
        assert served.busy_poll_hits > hits
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("busy_poll", "slots"), [(0.0, None), (MAX_BUSY_POLL, 0)], ids=["zero", "no-slot-free"]
)
def test_nothing_polls_when_off_or_when_no_slot_is_free(
    listen: Callable[[TransportOptions], Listener],
    monkeypatch: pytest.MonkeyPatch,
    busy_poll: float,
    slots: int | None,
) -> None:
    if slots is not None:
        monkeypatch.setattr(polling, "POLL_SLOTS", slots)  # (as if other threads polled)
    lst = listen(TransportOptions(busy_poll=busy_poll))
    conn = _dial(lst)
    try:
        _calls(conn, 30, b"unpolled")
        served = _accepted(lst)
        assert (served.busy_poll_hits, served.busy_poll_misses) == (0, 0)
    finally:
        conn.close()


def test_servers_poll_by_default(listen: Callable[[TransportOptions], Listener]) -> None:
    assert TransportOptions().busy_poll == DEFAULT_BUSY_POLL > 0
    lst = listen(TransportOptions())
    conn = _dial(lst)
    try:
        assert _roundtrip(conn, b"x") == b"x"
        assert _accepted(lst).busy_poll == DEFAULT_BUSY_POLL
        assert conn.busy_poll == DEFAULT_BUSY_POLL  # (its reader thread polls for several)
    finally:
        conn.close()


@expose
class _Echo:
    def Echo(self, call: Any, x: Any) -> Any:
        return x


def test_rpc_servers_and_clients_poll_by_default(
    make_server: Callable[..., tuple[Server, str]], make_client: Callable[..., Client]
) -> None:
    """Servers poll 200 us; a client's VC 500 us (only while several calls are in flight)."""
    assert ServerOptions().transport.busy_poll == DEFAULT_BUSY_POLL == 0.0002
    assert ClientOptions().transport.busy_poll == CLIENT_BUSY_POLL == 0.0005
    server, name = make_server(_Echo(), AllowEveryone())
    client = make_client()
    ctx = Context.background().with_timeout(10)
    for i in range(20):
        assert client.call(ctx, name, "Echo", i) == (i,)
    (dialed,) = client._vcs.values()
    (accepted,) = server.connections
    assert (dialed.busy_poll, accepted.busy_poll) == (CLIENT_BUSY_POLL, DEFAULT_BUSY_POLL)
    # (Whether 200 us catches this client's turnaround depends on the machine: the polling
    # itself is held by the transport tests above, with a 10 ms window.)
    assert dialed.busy_poll_hits == dialed.busy_poll_misses == 0  # a lone caller: never


@pytest.mark.parametrize("bad", [-0.001, MAX_BUSY_POLL * 2, float("nan"), float("inf"), True, "1"])
def test_bad_busy_poll_is_refused(bad: Any) -> None:
    with pytest.raises(errors.BadArgError, match="busy_poll"):
        TransportOptions(busy_poll=bad)


class _TrickleRelay:
    """A TCP relay to ``target`` that, once ``trickle`` is set, forwards the client's bytes
    one at a time about 1 ms apart (the server's way back is forwarded whole)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self.trickle = False
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._lsock.getsockname()[1]
        self._socks: list[socket.socket] = [self._lsock]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            a, _ = self._lsock.accept()
        except OSError:
            return
        b = socket.create_connection(self._target, timeout=5)
        b.settimeout(None)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one byte per segment
        self._socks += [a, b]
        threading.Thread(target=self._pump, args=(a, b, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(b, a, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow and self.trickle:
                    for i in range(len(data)):
                        dst.sendall(data[i : i + 1])
                        time.sleep(0.001)
                else:
                    dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_a_peer_trickling_bytes_is_not_polled_for(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    """Bytes that do not end a record (a large message, or a hostile peer sending a byte
    every millisecond) are read by blocking: polling for each would keep a CPU busy for as
    long as the peer likes, at no cost to it."""
    lst = listen(TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
    relay = _TrickleRelay(lst.address)
    conn = StreamManager(make_identity()).dial(
        "tcp",
        relay.address,
        deadline=time.monotonic() + 5,
        authorize_server=lambda _k, _b, _d: None,
        blessings_for_server=lambda _b: None,
    )
    try:
        assert _roundtrip(conn, b"whole") == b"whole"
        relay.trickle = True
        for i in range(2):  # ~100 bytes each, one byte per ~1 ms: gaps far below 10 ms
            assert _roundtrip(conn, b"trickled %d" % i) == b"trickled %d" % i
        served = _accepted(lst)
        # Polling on every byte found ~80 of them; after a poll that leaves part of
        # a record the reader blocks until a read ends one.
        assert served.busy_poll_hits <= 10
    finally:
        conn.close()
        relay.close()


def test_a_slow_read_disarms_the_polling_even_when_no_poll_ran(
    listen: Callable[[TransportOptions], Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling follows only a quick read: a slow one (here while no polling slot was free,
    so no poll could miss) turns it off too."""
    lst = listen(TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
    conn = _dial(lst)
    try:
        _calls(conn, 20, b"quick")  # (arms the polling)
        served = _accepted(lst)
        monkeypatch.setattr(polling, "POLL_SLOTS", 0)
        _calls(conn, 3, b"unpolled")
        time.sleep(0.05)
        _calls(conn, 1, b"late")  # a slow read, and no poll before it
        monkeypatch.setattr(polling, "POLL_SLOTS", 10**6)
        misses = served.busy_poll_misses
        time.sleep(0.05)
        _calls(conn, 1, b"later")
        time.sleep(0.03)  # (still armed, the reader would now have polled 10 ms in vain)
        assert served.busy_poll_misses == misses
    finally:
        conn.close()


def test_polling_slots_are_free_again_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread polling in the parent at fork time does not exist in the child."""
    monkeypatch.setattr(polling, "POLL_SLOTS", 10**6)  # (other VCs may poll meanwhile)
    assert polling.take_slot()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = 0 if polling.pollers() == 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        polling.give_slot()


def test_polling_stops_where_it_does_not_pay(
    listen: Callable[[TransportOptions], Listener],
) -> None:
    """A peer that pauses 3 ms between a reply and its next call, against a 10 ms poll: the
    rules allow a poll before every call (each comes within 10 ms), and each poll would keep
    a CPU busy for 3 ms to save one wake-up. The adapting reader tries both, sees a sleep
    cost the same, and sleeps (polling only to recheck now and then)."""
    lst = listen(TransportOptions(busy_poll=MAX_BUSY_POLL))
    conn = _dial(lst)
    try:
        _calls(conn, 50, b"pausing", gap=0.003)  # (tries both, then judges)
        served = _accepted(lst)
        assert not served.busy_poll_pays
        hits = served.busy_poll_hits
        _calls(conn, 40, b"judged", gap=0.003)
        # Polling whenever the rules allow found (nearly) all 40; now one in
        # polling.EXPLORE_EVERY at most (and a rejudgement may try a few).
        assert served.busy_poll_hits - hits <= 3
        # Without adapting, the same peer is polled for on every call.
        lst2 = listen(TransportOptions(busy_poll=MAX_BUSY_POLL, busy_poll_adapt=False))
        conn2 = _dial(lst2)
        try:
            _calls(conn2, 40, b"polled", gap=0.003)
            assert _accepted(lst2).busy_poll_hits >= 30
            assert _accepted(lst2).busy_poll_pays  # (never judged)
        finally:
            conn2.close()
    finally:
        conn.close()


def _silent(flow: Flow) -> None:
    """A flow handler that reads and never answers."""

    def run() -> None:
        with contextlib.suppress(errors.IPCError):
            while flow.read(time.monotonic() + 10):
                pass

    threading.Thread(target=run, daemon=True).start()


def test_a_sleep_a_caller_cuts_short_measures_no_gap() -> None:
    """The reader thread of a dialed VC, reading for two calls, sleeps in a read whose gap it
    measures (a trial); one call ends and the other's caller, now alone, wakes it to take
    the read role. That wake-up is not the peer's bytes: it measures nothing. It was noted
    as an endless gap, which pushes the judgement towards "polling pays"."""
    lst = StreamManager(make_identity()).listen(
        "tcp", "127.0.0.1:0", blessings=None, on_flow=_silent
    )
    conn = _dial(lst, TransportOptions(busy_poll=0.0001))
    try:
        from ipcclient.transport.readrole import READER

        end = time.monotonic() + 5
        while conn._role is not READER:
            assert time.monotonic() < end, "the reader thread never took the read role"
            time.sleep(0.001)
        a, b = conn.connect(), conn.connect()
        a.write(b"a")
        b.write(b"b")  # (two calls in flight: the reader thread reads, and may poll, for both)
        state = conn._polling
        assert state.adapt and state._tries == 0
        with conn._lock:  # (as after a quick read: the rules allow a poll; the first is a trial)
            state.armed = True
            conn._wake_poll_locked()
        end = time.monotonic() + 5
        while state._tries < 1:
            assert time.monotonic() < end, "the reader thread never chose to poll"
            time.sleep(0.001)
        time.sleep(0.05)  # (into its measured sleep)
        b.close()
        with pytest.raises(errors.TimeoutError):
            a.read(time.monotonic() + 0.2)  # (alone: the reader thread is woken for it)
        assert state._slept == []
    finally:
        conn.close()
        lst.close()


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_bad_busy_poll_adapt_is_refused(bad: Any) -> None:
    with pytest.raises(errors.BadArgError, match="busy_poll_adapt"):
        TransportOptions(busy_poll_adapt=bad)
