"""The blocking transport over real loopback sockets: dial, listen, flows, faults."""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.transport.conn import Connection, Flow, KeepaliveConfig
from ipcclient.transport.manager import (
    Listener,
    StreamManager,
    TransportOptions,
    open_socket,
    split_host_port,
)
from ipcclient.transport.waits import reacquire
from ipcclient.wire.mux import MuxConfig
from tests.conftest import refuse_threads
from tests.identities import make_identity


def _accept_all(_k: Any, _b: Any, _d: Any) -> None:
    return None


def _echo_upper(flow: Flow) -> None:
    def run() -> None:
        data = bytearray()
        try:
            while chunk := flow.read(time.monotonic() + 10):
                data += chunk
            flow.write(bytes(data).upper(), end=True)
        except errors.IPCError:
            pass

    threading.Thread(target=run, daemon=True).start()


def _dial(listener: Listener, **kw: Any) -> Connection:
    mgr = StreamManager(make_identity(), kw.pop("options", None))
    return mgr.dial(
        listener.protocol,
        listener.address,
        deadline=time.monotonic() + 5,
        authorize_server=_accept_all,
        blessings_for_server=lambda _b: None,
        **kw,
    )


@pytest.fixture
def server() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(
        protocol: str = "tcp",
        address: str = "127.0.0.1:0",
        on_flow: Callable[[Flow], None] = _echo_upper,
        options: TransportOptions | None = None,
    ) -> Listener:
        lst = StreamManager(make_identity(), options).listen(
            protocol, address, blessings=None, on_flow=on_flow
        )
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.close()


def _roundtrip(conn: Connection, payload: bytes) -> bytes:
    flow = conn.connect()
    flow.write(payload, end=True)
    return _read_all(flow)


def _read_all(flow: Flow) -> bytes:
    out = bytearray()
    while chunk := flow.read(time.monotonic() + 10):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::1]:0"])
def test_echo_over_tcp(server: Callable[..., Listener], address: str) -> None:
    if address.startswith("[") and not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback; the test needs it")
    lst = server("tcp", address)
    conn = _dial(lst)
    try:
        assert _roundtrip(conn, b"hello") == b"HELLO"
        assert conn.remote_key is not None
    finally:
        conn.close()


def test_echo_over_unix_socket(server: Callable[..., Listener]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        lst = server("unix", path)
        conn = _dial(lst)
        try:
            assert _roundtrip(conn, b"unix") == b"UNIX"
        finally:
            conn.close()
        lst.close()
        assert not os.path.exists(path)


def test_large_payload_crosses_many_frames_and_windows(server: Callable[..., Listener]) -> None:
    opts = TransportOptions(mux=MuxConfig(initial_window=64 * 1024, max_frame_payload=16 * 1024))
    lst = server(options=opts)
    conn = _dial(lst, options=opts)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    try:
        assert _roundtrip(conn, payload) == payload.upper()
    finally:
        conn.close()


def test_hundreds_of_concurrent_flows_from_many_threads(server: Callable[..., Listener]) -> None:
    lst = server()
    conn = _dial(lst)
    results: dict[int, bytes] = {}
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                payload = f"t{t}-i{i}-".encode() * (1 + (i * 37) % 200)
                got = _roundtrip(conn, payload)
                if got != payload.upper():
                    raise AssertionError(f"mismatch on {t}/{i}")
                results[t * 1000 + i] = got
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    try:
        assert not failures, failures
        assert len(results) == 400
        assert sum(len(v) for v in results.values()) == sum(
            len(f"t{t}-i{i}-".encode() * (1 + (i * 37) % 200)) for t in range(10) for i in range(40)
        )
        assert conn.flow_count == 0  # nothing left behind
    finally:
        conn.close()


def test_slow_reader_bounds_what_is_buffered(server: Callable[..., Listener]) -> None:
    window = 32 * 1024
    opts = TransportOptions(mux=MuxConfig(initial_window=window, max_frame_payload=8 * 1024))
    sent = threading.Event()

    def firehose(flow: Flow) -> None:
        def run() -> None:
            try:
                flow.write(b"x" * (2 * 1024 * 1024), end=True, deadline=time.monotonic() + 10)
                sent.set()
            except errors.IPCError:
                pass

        threading.Thread(target=run, daemon=True).start()

    lst = server(on_flow=firehose, options=opts)
    conn = _dial(lst, options=opts)
    try:
        flow = conn.connect()
        flow.write(b"go")
        until = time.monotonic() + 10  # (the sender uses all its credit, then waits)
        while _inbox_bytes(flow) < window and time.monotonic() < until:
            time.sleep(0.01)
        time.sleep(0.1)  # (were credit not bounding it, more would come meanwhile)
        assert _inbox_bytes(flow) == window
        assert not sent.is_set()  # the writer is held back by credit
        total = 0
        while chunk := flow.read(time.monotonic() + 10):
            total += len(chunk)
            assert _inbox_bytes(flow) <= window
        assert total == 2 * 1024 * 1024
        assert sent.wait(5)
    finally:
        conn.close()


def test_closing_an_ended_flow_wakes_a_writer_waiting_for_credit(
    server: Callable[..., Listener],
) -> None:
    # One thread writes more than the window and waits for credit; another ends the flow
    # (its FIN after the peer's) and closes it. The waiting writer must wake (BadStateError)
    # rather than sleep forever on a flow nobody will touch again.
    opts = TransportOptions(mux=MuxConfig(initial_window=32 * 1024, max_frame_payload=8 * 1024))
    outcome: list[str] = []
    done = threading.Event()

    def two_threads(flow: Flow) -> None:
        def writer() -> None:
            try:
                flow.write(b"x" * (1024 * 1024))  # no deadline: waits for credit
                outcome.append("returned")
            except errors.BadStateError:
                outcome.append("BadStateError")
            except errors.IPCError as exc:
                outcome.append(type(exc).__name__)
            done.set()

        def closer() -> None:
            while flow.read(time.monotonic() + 5):
                pass
            deadline = time.monotonic() + 5
            while not flow._cond._waiters and time.monotonic() < deadline:
                time.sleep(0.01)  # until the writer waits for credit
            flow.write(b"", end=True)
            flow.close()

        threading.Thread(target=writer, daemon=True).start()
        threading.Thread(target=closer, daemon=True).start()

    lst = server(on_flow=two_threads, options=opts)
    conn = _dial(lst, options=opts)
    try:
        flow = conn.connect()
        flow.write(b"go", end=True)  # and never read: the server's writer runs out of credit
        assert done.wait(5), "the writer still waits on a closed flow"
        assert outcome == ["BadStateError"]
    finally:
        conn.close()


def test_cancel_reaches_the_peer_and_wakes_blocked_reader(server: Callable[..., Listener]) -> None:
    seen: list[BaseException] = []
    got_data = threading.Event()
    done = threading.Event()

    def waiter(flow: Flow) -> None:
        def run() -> None:
            try:
                flow.read(time.monotonic() + 10)
                got_data.set()
                flow.read(time.monotonic() + 10)
            except errors.IPCError as exc:
                seen.append(exc)
            done.set()

        threading.Thread(target=run, daemon=True).start()

    lst = server(on_flow=waiter)
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write(b"first")
        assert got_data.wait(5)
        blocked: list[BaseException] = []
        t = threading.Thread(target=lambda: _capture(flow.read, blocked))
        t.start()
        time.sleep(0.05)
        flow.cancel()
        t.join(5)
        assert blocked and isinstance(blocked[0], errors.CanceledError)
        assert done.wait(5)
        assert seen and isinstance(seen[0], errors.CanceledError)
        with pytest.raises(errors.CanceledError):
            flow.write(b"more")
    finally:
        conn.close()


def _capture(fn: Callable[[], Any], into: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        into.append(exc)


def test_read_deadline(server: Callable[..., Listener]) -> None:
    lst = server(on_flow=lambda f: None)
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write(b"x")
        start = time.monotonic()
        with pytest.raises(errors.TimeoutError):
            flow.read(time.monotonic() + 0.2)
        assert 0.15 < time.monotonic() - start < 2
        flow.set_deadline(time.monotonic() + 0.1)
        with pytest.raises(errors.TimeoutError):
            flow.read()
    finally:
        conn.close()


class _LatePoll:
    """A poll() that returns up to ``late`` seconds after its timeout, as a real one does by
    rounding its timeout up to whole milliseconds on a busy machine, but at once when a
    descriptor becomes readable."""

    def __init__(self, real: Any, late: float) -> None:
        self._real = real
        self._late_ms = int(late * 1000)

    def register(self, fd: int, events: int) -> None:
        self._real.register(fd, events)

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        return self._real.poll(timeout_ms + self._late_ms)  # type: ignore[no-any-return]


# (Replaces the VC's poll object at run time, which compiled code does not allow.)
@pytest.mark.interpreted
def test_a_reply_that_comes_after_the_callers_deadline_is_not_its_answer(
    server: Callable[..., Listener],
) -> None:
    # The caller reads the socket itself (a lone call on a dialed VC). Its poll returns
    # late, when the reply comes 50 ms after the deadline: the deadline has won, and the
    # reply is left for the next read.
    def reply_late(flow: Flow) -> None:
        def run() -> None:
            with contextlib.suppress(errors.IPCError):
                flow.read(time.monotonic() + 5)
                time.sleep(0.15)
                flow.write(b"late", end=True)

        threading.Thread(target=run, daemon=True).start()

    lst = server(on_flow=reply_late)
    conn = _dial(lst)
    try:
        conn._poll = _LatePoll(conn._poll, late=0.4)
        flow = conn.connect()
        deadline = time.monotonic() + 0.1  # (before the write: the reply comes 0.15 s after)
        flow.write(b"x")
        with pytest.raises(errors.TimeoutError):
            flow.read(deadline)
        assert flow.read(time.monotonic() + 5) == b"late"  # (nothing was lost)
    finally:
        conn.close()


def test_a_chunk_received_after_the_deadline_is_kept_for_a_later_read(
    server: Callable[..., Listener],
) -> None:
    # The VC's reader thread receives the reply after the read's deadline, before the caller
    # looks (a caller that wakes late): the deadline has won, and the reply is kept.
    def reply(flow: Flow) -> None:
        def run() -> None:
            with contextlib.suppress(errors.IPCError):
                flow.read(time.monotonic() + 5)
                flow.write(b"late", end=True)

        threading.Thread(target=run, daemon=True).start()

    lst = server(on_flow=reply)
    conn = _dial(lst)
    try:
        flow = conn.connect()
        deadline = time.monotonic()
        flow.write(b"x")
        until = time.monotonic() + 5
        while flow.received_all() is None and time.monotonic() < until:
            time.sleep(0.002)
        assert flow.received_all() == b"late"  # received, by the reader thread
        with pytest.raises(errors.TimeoutError):
            flow.read(deadline)
        assert flow.read(time.monotonic() + 5) == b"late"  # (nothing was lost)
        assert flow.read(time.monotonic() + 5) == b""
    finally:
        conn.close()


def test_server_killed_mid_stream_breaks_the_vc_promptly(server: Callable[..., Listener]) -> None:
    lst = server(on_flow=lambda f: f.write(b"partial"))
    closed: list[errors.IPCError] = []
    conn = _dial(lst, on_close=lambda c, e: closed.append(e))
    flow = conn.connect()
    flow.write(b"start")
    assert flow.read(time.monotonic() + 5) == b"partial"
    start = time.monotonic()
    lst.close()  # closes every accepted VC: the peer's process is gone as far as we can see
    with pytest.raises(errors.ConnectionFailedError) as info:
        flow.read(time.monotonic() + 5)
    assert time.monotonic() - start < 2
    assert info.value.retryable
    assert conn.wait_closed(2) and closed
    with pytest.raises(errors.ConnectionFailedError):
        conn.connect()


def test_black_holed_peer_is_found_by_keepalive(server: Callable[..., Listener]) -> None:
    """A relay that stops forwarding after the handshake: only keepalive can notice."""
    lst = server()
    relay = _Relay(lst.address)
    opts = TransportOptions(keepalive=KeepaliveConfig(interval=0.1, timeout=0.4, send_timeout=1))
    mgr = StreamManager(make_identity(), opts)
    conn = mgr.dial(
        "tcp", relay.address, deadline=time.monotonic() + 5,
        authorize_server=_accept_all, blessings_for_server=lambda _b: None,
    )  # fmt: skip
    try:
        assert _roundtrip(conn, b"ok") == b"OK"
        relay.black_hole = True
        assert conn.wait_closed(3)
        assert isinstance(conn.error, errors.ConnectionFailedError)
        assert "keepalive" in conn.error.msg
    finally:
        conn.close()
        relay.close()


def test_idle_vc_survives_with_keepalive(server: Callable[..., Listener]) -> None:
    # (Both ends in one process: a stall of the whole process longer than timeout minus
    # interval would look like a dead peer; a second of it is more than a loaded CI stalls.)
    opts = TransportOptions(keepalive=KeepaliveConfig(interval=0.1, timeout=1.0, send_timeout=1))
    lst = server(options=opts)
    conn = _dial(lst, options=opts)
    try:
        time.sleep(1.5)
        assert not conn.closed
        assert _roundtrip(conn, b"still here") == b"STILL HERE"
    finally:
        conn.close()


def test_garbage_from_a_raw_socket_does_not_hurt_other_clients(
    server: Callable[..., Listener],
) -> None:
    lst = server()
    host, port = split_host_port(lst.address)
    raw = socket.create_connection((host, port), timeout=5)
    try:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        raw.settimeout(5)
        assert raw.recv(100) == b""  # the server hung up on it
    finally:
        raw.close()
    conn = _dial(lst)
    try:
        assert _roundtrip(conn, b"fine") == b"FINE"
    finally:
        conn.close()


def test_dial_errors_are_typed() -> None:
    mgr = StreamManager(make_identity())
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    kw: dict[str, Any] = {
        "authorize_server": _accept_all,
        "blessings_for_server": lambda _b: None,
    }
    with pytest.raises(errors.ConnectionFailedError):
        mgr.dial("tcp", f"127.0.0.1:{port}", deadline=time.monotonic() + 2, **kw)
    with pytest.raises(errors.BadArgError):
        mgr.dial("carrier-pigeon", "x", deadline=time.monotonic() + 2, **kw)
    with pytest.raises(errors.BadArgError):
        mgr.dial("tcp", "no-port", deadline=time.monotonic() + 2, **kw)
    with pytest.raises(errors.TimeoutError):
        mgr.dial("tcp", "127.0.0.1:1", deadline=time.monotonic() - 1, **kw)
    with pytest.raises(errors.ConnectionFailedError):
        mgr.dial("unix", "/nonexistent/ipcclient.sock", deadline=time.monotonic() + 2, **kw)


def test_a_silent_server_fails_the_handshake_by_the_deadline() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        mgr = StreamManager(make_identity())
        start = time.monotonic()
        with pytest.raises(errors.TimeoutError):
            mgr.dial(
                "tcp", "%s:%d" % silent.getsockname(), deadline=time.monotonic() + 0.3,
                authorize_server=_accept_all, blessings_for_server=lambda _b: None,
            )  # fmt: skip
        assert time.monotonic() - start < 2
    finally:
        silent.close()


def test_client_refusing_the_server_closes_without_a_vc(server: Callable[..., Listener]) -> None:
    lst = server()

    def refuse(_k: Any, _b: Any, _d: Any) -> None:
        raise errors.NotTrustedError("not the server I want")

    with pytest.raises(errors.NotTrustedError):
        StreamManager(make_identity()).dial(
            lst.protocol, lst.address, deadline=time.monotonic() + 5,
            authorize_server=refuse, blessings_for_server=lambda _b: None,
        )  # fmt: skip


def test_version_mismatch_is_reported_to_the_client(server: Callable[..., Listener]) -> None:
    lst = server(options=TransportOptions(versions=(5, 6)))
    with pytest.raises(errors.VersionIncompatibleError):
        _dial(lst)


def _start_dial(listener_address: tuple[str, str], deadline: float) -> Any:
    protocol, address = listener_address
    return StreamManager(make_identity()).start_dial(
        protocol,
        address,
        deadline=deadline,
        authorize_server=_accept_all,
        blessings_for_server=lambda _b: None,
    )


def test_a_dial_driven_in_short_steps_is_finished_by_another_thread(
    server: Callable[..., Listener],
) -> None:
    lst = server()
    dialing = _start_dial((lst.protocol, lst.address), time.monotonic() + 5)
    steps = 0
    while steps < 3 and not dialing.step(time.monotonic()):  # each returns at once
        steps += 1
    finisher = threading.Thread(target=dialing.run)
    finisher.start()
    finisher.join(5)
    assert dialing.done
    assert dialing.step(time.monotonic()) is True  # (done: nothing more to do)
    conn = StreamManager(make_identity()).finish_dial(dialing)
    try:
        assert _roundtrip(conn, b"stepped") == b"STEPPED"
    finally:
        conn.close()


def test_a_dial_step_returns_at_its_time_and_the_dial_at_its_deadline() -> None:
    silent = socket.socket()  # accepts (the kernel's backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        address = "%s:%d" % silent.getsockname()
        dialing = _start_dial(("tcp", address), time.monotonic() + 1.0)
        start = time.monotonic()
        assert dialing.step(start + 0.05) is False
        assert 0.04 < time.monotonic() - start < 0.9
        with pytest.raises(errors.TimeoutError, match="did not finish in time"):
            dialing.run()
        assert time.monotonic() - start < 2.5
        assert dialing.sock is None  # closed
    finally:
        silent.close()


def test_a_refused_dial_step_says_so() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = "%s:%d" % probe.getsockname()
    probe.close()  # nothing listens there now
    dialing = _start_dial(("tcp", address), time.monotonic() + 5)
    with pytest.raises(errors.ConnectionFailedError, match="refused"):
        dialing.run()
    assert dialing.sock is None
    with pytest.raises(errors.ConnectionFailedError, match="refused"):
        dialing.step(time.monotonic() + 1)  # it stays failed


def test_an_address_the_socket_refuses_is_a_dial_error() -> None:
    with pytest.raises(errors.ConnectionFailedError):
        open_socket("unix", "/tmp/" + "x" * 200, time.monotonic() + 1)  # (path too long)


def test_close_is_idempotent_and_leaves_no_threads(server: Callable[..., Listener]) -> None:
    before = threading.active_count()
    lst = server()
    conn = _dial(lst)
    assert _roundtrip(conn, b"a") == b"A"
    conn.close()
    conn.close()
    lst.close()
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before


class _OrderedSocket(socket.socket):
    """A real socket that records its shutdown and close calls. Its first ``shutdown`` waits
    (up to 0.3 s, until a ``close`` starts) before making the call: what a thread switch
    between reading the descriptor and the system call does, made likely."""

    wait = 0.3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[str] = []
        self._closing = threading.Event()
        self._waited = False

    def shutdown(self, how: int) -> None:
        self.events.append("shutdown")
        if not self._waited:
            self._waited = True
            self._closing.wait(self.wait)
        try:
            super().shutdown(how)
        finally:
            self.events.append("shutdown done")

    def close(self) -> None:
        self._closing.set()
        self.events.append("close")
        super().close()


class _SocketModuleMaking:
    """The ``socket`` module as one of our modules sees it, except that the sockets it makes
    are of class ``kind`` (kept in ``made``), and so are those they accept."""

    def __init__(self, kind: type[socket.socket] = _OrderedSocket) -> None:
        self.made: list[Any] = []
        self._kind = kind

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any, **kwargs: Any) -> Any:
        made = self.made
        kind = self._kind

        class Listening(kind):  # type: ignore[valid-type,misc]
            def accept(self) -> tuple[socket.socket, Any]:
                fd, address = self._accept()
                sock = kind(self.family, self.type, self.proto, fileno=fd)
                made.append(sock)
                return sock, address

        sock = Listening(*args, **kwargs)
        made.append(sock)
        return sock


def test_the_socket_is_shut_before_it_is_closed_whichever_thread_ends_the_vc(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # close() shuts the socket (which wakes any thread blocked on it) while the VC's reader
    # thread wakes and closes it. A close that lands inside the shutdown would leave the
    # shutdown to hit a closed descriptor, or one another thread has just been given.
    from ipcclient.transport import dial as dialmod

    fake = _SocketModuleMaking()
    monkeypatch.setattr(dialmod, "socket", fake)
    lst = server()
    conn = _dial(lst)
    assert _roundtrip(conn, b"a") == b"A"
    conn.close()
    (sock,) = fake.made
    assert conn.wait_closed(5)
    deadline = time.monotonic() + 5
    while "close" not in sock.events and time.monotonic() < deadline:
        time.sleep(0.01)
    events = list(sock.events)
    assert events[-1] == "close", events
    assert events.count("close") == 1, events
    assert events[0] == "shutdown", events
    assert events.count("shutdown") == events.count("shutdown done"), events
    open_shutdowns = 0
    for event in events:
        if event == "shutdown":
            open_shutdowns += 1
        elif event == "shutdown done":
            open_shutdowns -= 1
        else:
            assert open_shutdowns == 0, f"closed during a shutdown: {events}"


def test_a_shed_handshake_socket_is_shut_before_its_thread_closes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One handshake at a time: a second connection sheds the first (the accept thread shuts
    # its socket) just as the first one's thread gives up on it (its first byte never came)
    # and closes it.
    from ipcclient.transport import manager as managermod

    fake = _SocketModuleMaking()
    monkeypatch.setattr(managermod, "socket", fake)
    monkeypatch.setattr(_OrderedSocket, "wait", 3.0)
    # (The second connection must come within first_byte_timeout of the first.)
    options = TransportOptions(max_pending_handshakes=1, first_byte_timeout=1.0)
    lst = StreamManager(make_identity(), options).listen(
        "tcp", "127.0.0.1:0", blessings=None, on_flow=_echo_upper
    )
    host, port = split_host_port(lst.address)
    first = second = None
    try:
        first = socket.create_connection((host, port), timeout=5)
        deadline = time.monotonic() + 5
        while len(fake.made) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        second = socket.create_connection((host, port), timeout=5)
        shed = fake.made[1]  # (made[0] listens)
        while "close" not in shed.events and time.monotonic() < deadline:
            time.sleep(0.01)
        events = list(shed.events)
        assert events[0] == "shutdown", events  # it was shed
        assert events.index("close") > events.index("shutdown done"), events
    finally:
        for sock in (first, second):
            if sock is not None:
                sock.close()
        lst.close()


class _StoppingSocket(socket.socket):
    """A real socket whose next ``send`` or ``sendall`` (``stop_send``) or whose next
    ``recv_into`` by one thread (``stop_recv_in``, a thread ident), once armed, stops before
    the system call until ``go`` is set: a thread stopped by the scheduler between reading
    the descriptor and the call, made certain. It records a ``close`` made while a call is
    stopped (``closed_under``): the descriptor could then go to another socket before the
    call is made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_send = False
        self.stop_recv_in = 0
        self.stopped = threading.Event()
        self.go = threading.Event()
        self.closed = threading.Event()
        self.closed_under = False
        self._in_call = False

    def _stop(self) -> None:
        self._in_call = True
        self.stopped.set()
        self.go.wait(10)
        self._in_call = False

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self.stop_send:
            self.stop_send = False
            self._stop()
        super().sendall(data, flags)

    def send(self, data: Any, flags: int = 0) -> int:  # (a writer's first try at a record)
        if self.stop_send:
            self.stop_send = False
            self._stop()
        return super().send(data, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.stop_recv_in == threading.get_ident():
            self.stop_recv_in = 0
            self._stop()
        return super().recv_into(buffer, nbytes, flags)

    def close(self) -> None:
        if self._in_call:
            self.closed_under = True
        self.closed.set()
        super().close()


def _dial_stopping(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> tuple[Connection, _StoppingSocket]:
    from ipcclient.transport import dial as dialmod

    fake = _SocketModuleMaking(_StoppingSocket)
    monkeypatch.setattr(dialmod, "socket", fake)
    conn = _dial(listener)
    monkeypatch.undo()
    (sock,) = fake.made
    return conn, sock


def _end_the_vc_under_a_stopped_call(
    conn: Connection,
    sock: _StoppingSocket,
    thread: threading.Thread,
    started: Callable[[], None] = lambda: None,
) -> None:
    """Start ``thread``, whose socket call ``sock`` is armed to stop (``started`` runs once
    it runs); once the call is stopped, close the VC and check that the socket outlives its
    reader thread; then let the call go on and check that the socket is closed after it."""
    thread.start()
    try:
        started()
        assert sock.stopped.wait(5)
        conn.close()  # (waits for the reader thread, which ends the VC)
        assert conn.closed and not conn._reader.is_alive()
        assert not sock.closed.is_set(), "closed while a call on it was under way"
    finally:
        sock.go.set()
        thread.join(10)
    assert sock.closed.wait(5), "the thread in the call did not close the socket"
    assert not sock.closed_under
    assert sock.fileno() == -1


def test_a_vc_that_ends_while_a_flusher_sends_leaves_the_close_to_it(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader thread ends the VC (here after a local close) while another thread is inside
    # a send: the socket stays open until that send returns, and is closed then.
    conn, sock = _dial_stopping(server(), monkeypatch)
    assert _roundtrip(conn, b"a") == b"A"
    flow = conn.connect()
    sock.stop_send = True
    failed: list[BaseException] = []
    writer = threading.Thread(target=_capture, args=(lambda: flow.write(b"x" * 100), failed))
    _end_the_vc_under_a_stopped_call(conn, sock, writer)
    # (its send fails on the shut socket; the write either returned first or says the VC died)
    assert all(isinstance(exc, errors.ConnectionFailedError) for exc in failed), failed


def test_a_vc_that_ends_while_a_caller_reads_leaves_the_close_to_it(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a dialed VC a lone caller reads the socket itself. The VC ends (a local close from
    # another thread) while that caller is inside its receive: the socket stays open until
    # the receive returns, and the caller closes it.
    from ipcclient.transport.readrole import CALLER

    conn, sock = _dial_stopping(server(), monkeypatch)
    assert _roundtrip(conn, b"a") == b"A"
    flow = conn.connect()
    flow.write(b"b")  # (the server answers once the request ends)
    got: list[bytes] = []
    failed: list[BaseException] = []

    def call() -> None:
        sock.stop_recv_in = threading.get_ident()
        got.append(_read_all(flow))

    def reading() -> None:
        # The caller reads for itself (it holds the read role) before the reply can come,
        # so the reader thread cannot be the one that receives it.
        deadline = time.monotonic() + 5
        while conn._role is not CALLER and time.monotonic() < deadline:
            time.sleep(0.002)
        assert conn._role is CALLER
        flow.close_send()

    caller = threading.Thread(target=_capture, args=(call, failed))
    _end_the_vc_under_a_stopped_call(conn, sock, caller, reading)
    assert not got
    assert len(failed) == 1 and isinstance(failed[0], errors.ConnectionFailedError), failed


def test_nobody_becomes_the_flusher_once_the_vc_wants_its_socket_closed(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The VC ends as on EOF (its mux still open), so a flow closed afterwards queues a reset.
    # Its socket may be closed at any moment from then on: no thread may start a send on it.
    conn, sock = _dial_stopping(server(), monkeypatch)
    assert _roundtrip(conn, b"a") == b"A"
    flow = conn.connect()
    flow.write(b"x")
    conn._break(errors.ConnectionFailedError("test: the peer closed the connection"))
    assert sock.closed.wait(5)  # (the reader thread ends and closes it)
    sock.stop_send = True
    closer = threading.Thread(target=flow.close)
    closer.start()
    try:
        assert not sock.stopped.wait(0.3), "a send started after the VC ended"
    finally:
        sock.go.set()
        closer.join(10)
    assert not closer.is_alive()


class _Relay:
    """A TCP relay that can stop forwarding (a black hole) to inject a silent failure."""

    def __init__(self, target: str) -> None:
        self.black_hole = False
        self.stall = False  # stop reading from the client altogether
        host, port = split_host_port(target)
        self._target = (host, port)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self.address = "%s:%d" % self._sock.getsockname()
        self._socks: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            a, _ = self._sock.accept()
        except OSError:
            return
        b = socket.create_connection(self._target)
        self._socks += [a, b]
        threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        threading.Thread(target=self._pump, args=(b, a), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._stop:
            if self.stall and src is self._socks[0]:
                time.sleep(0.01)
                continue
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.black_hole:
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._stop = True
        for s in [self._sock, *self._socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_a_dialer_refuses_flows_the_peer_opens(server: Callable[..., Listener]) -> None:
    """Nobody reads flows a server opens toward a client: they are refused at once, so a
    hostile peer cannot pin a window of memory per flow."""
    got: list[BaseException] = []
    done = threading.Event()

    def open_back(conn: Connection) -> None:
        def run() -> None:
            try:
                flow = conn.connect()
                flow.write(b"unsolicited")
                flow.read(time.monotonic() + 5)
            except BaseException as exc:
                got.append(exc)
            done.set()

        threading.Thread(target=run, daemon=True).start()

    lst = StreamManager(make_identity()).listen(
        "tcp", "127.0.0.1:0", blessings=None, on_flow=_echo_upper, on_connection=open_back
    )
    conn = _dial(lst)
    try:
        assert done.wait(5)
        assert got and isinstance(got[0], errors.OverloadedError)
        assert conn.flow_count == 0
        assert _roundtrip(conn, b"still fine") == b"STILL FINE"
    finally:
        conn.close()
        lst.close()


def test_a_failing_on_connection_callback_leaves_the_vc_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handshake thread calls ``on_connection`` and then reads for the VC: a callback
    that raises is logged, and the VC is still read and answered."""

    def broken(conn: Connection) -> None:
        raise RuntimeError("owner bug")

    lst = StreamManager(make_identity()).listen(
        "tcp", "127.0.0.1:0", blessings=None, on_flow=_echo_upper, on_connection=broken
    )
    conn = _dial(lst)
    try:
        assert _roundtrip(conn, b"served") == b"SERVED"
        assert any("on_connection" in r.getMessage() for r in caplog.records)
    finally:
        conn.close()
        lst.close()


def test_close_returns_promptly_when_the_peer_stopped_reading(
    server: Callable[..., Listener],
) -> None:
    lst = server(on_flow=lambda f: None)  # never reads what arrives
    relay = _Relay(lst.address)
    conn = StreamManager(make_identity()).dial(
        "tcp", relay.address, deadline=time.monotonic() + 5,
        authorize_server=_accept_all, blessings_for_server=lambda _b: None,
    )  # fmt: skip
    relay.stall = True  # stop reading from the client: its socket buffers fill up
    writers: list[threading.Thread] = []
    try:
        for _ in range(12):  # 12 flows x 1 MiB windows: more than the socket buffers hold
            flow = conn.connect()
            t = threading.Thread(
                target=_capture,
                args=(lambda f=flow: f.write(b"x" * (1 << 20), deadline=time.monotonic() + 10), []),
                daemon=True,
            )
            t.start()
            writers.append(t)
        time.sleep(0.3)
        start = time.monotonic()
        conn.close()
        assert time.monotonic() - start < 1.5
        for t in writers:
            t.join(5)
            assert not t.is_alive()
    finally:
        conn.close()
        relay.close()


@pytest.mark.parametrize("lead_reads", [True, False])
def test_both_read_modes_carry_concurrent_flows(
    server: Callable[..., Listener], lead_reads: bool
) -> None:
    """Dialed VCs read leader/follower by default; the reader-thread mode is a knob."""
    lst = server()
    conn = _dial(lst, options=TransportOptions(lead_reads=lead_reads))
    assert conn._lead is lead_reads
    out: list[bytes] = []
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(25):
                out.append(_roundtrip(conn, f"{i}-{j}".encode()))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not failures, failures
        assert sorted(out) == sorted(
            f"{i}-{j}".encode().upper() for i in range(6) for j in range(25)
        )
    finally:
        conn.close()


def test_pieces_streamed_items_and_an_empty_list_with_end(
    server: Callable[..., Listener],
) -> None:
    lst = server()
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write([b"a", b"", b"bc"])  # pieces, in order
        for item in (b"d", b"e", b"f"):  # a burst of streamed items (may share a frame)
            flow.write(item, streamed=True)
        flow.write([], end=True)  # an empty list still carries the FIN
        assert _read_all(flow) == b"ABCDEF"
    finally:
        conn.close()


def test_streamed_items_go_out_even_when_the_lingerer_cannot_start(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipcclient.transport import writer as writer_mod

    lingerer = writer_mod.Lingerer()  # a fresh one, with no thread yet
    monkeypatch.setattr(writer_mod, "LINGERER", lingerer)
    real_start = threading.Thread.start

    def failing_start(self: threading.Thread) -> None:
        if self.name == "ipc-linger":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    lst = server()
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write(b"x", streamed=True)
        flow.write(b"y", streamed=True)  # in the burst: would wait for the lingerer
        flow.write(b"z", streamed=True)
        assert not lingerer._due and lingerer._thread is None  # nothing left registered
        # The peer echoes only after FIN; the point is that x, y and z went out at once:
        # nothing is queued on the VC any more.
        with conn._lock:
            assert not conn._mux.has_data_to_send and not conn._writer.linger_due
        flow.close_send()
        assert _read_all(flow) == b"XYZ"
    finally:
        conn.close()


def test_a_request_and_its_reset_in_one_record_reach_the_owner_as_a_reset(
    server: Callable[..., Listener],
) -> None:
    # A client that cancels right after sending: DATA(OPEN|FIN) and RESET may share one
    # record. The flow the owner gets must be failed (so a server never runs the call, or
    # its context is cancelled), not a complete request whose reset was lost.
    seen: list[Flow] = []
    arrived = threading.Event()

    def on_flow(flow: Flow) -> None:
        seen.append(flow)
        arrived.set()

    lst = server(on_flow=on_flow)
    conn = _dial(lst)
    try:
        flow = conn.connect()
        with conn._lock:
            conn._mux.send_data(flow.id, b"a whole request", end=True)
            conn._mux.reset_flow(flow.id)
        conn._writer.flush()
        assert arrived.wait(5)
        (got,) = seen
        assert isinstance(got.error, errors.CanceledError)
        aborted: list[errors.IPCError] = []
        got.set_abort_callback(aborted.append)  # registered late: runs at once
        assert len(aborted) == 1
    finally:
        conn.close()


# --- what a read takes, and when each chunk came ----------------------------------------------
def _inbox_bytes(flow: Flow) -> int:
    with flow._lock:
        return sum(len(chunk) for chunk in flow._inbox)


def _wait_for_inbox(flow: Flow, nbytes: int) -> None:
    until = time.monotonic() + 5
    while _inbox_bytes(flow) < nbytes and time.monotonic() < until:
        time.sleep(0.002)  # (bounded: the reader thread receives it on its own)
    assert _inbox_bytes(flow) >= nbytes


def _two_writes(first: bytes, second: bytes, go_on: threading.Event) -> Callable[[Flow], None]:
    """A flow handler that writes ``first``, then ``second`` once ``go_on`` is set."""

    def handle(flow: Flow) -> None:
        def run() -> None:
            with contextlib.suppress(errors.IPCError):
                flow.read(time.monotonic() + 5)
                flow.write(first)
                assert go_on.wait(5)
                flow.write(second, end=True)

        threading.Thread(target=run, daemon=True).start()

    return handle


@pytest.mark.parametrize("size", [2000, 20_000])
def test_each_chunk_is_judged_by_when_it_came(server: Callable[..., Listener], size: int) -> None:
    """A read with a deadline takes what came before it and never joins to it (or hands out
    after it) a chunk that came after the deadline, however late the reader looks; that
    chunk stays for a later read. (Reads once judged every chunk by the oldest one read.)"""
    go_on = threading.Event()
    first, second = b"A" * size, b"B" * size
    lst = server(on_flow=_two_writes(first, second, go_on))
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write(b"go")
        _wait_for_inbox(flow, size)  # the first came
        deadline = time.monotonic()
        go_on.set()
        _wait_for_inbox(flow, 2 * size)  # the second came, after the deadline
        assert flow.read(deadline) == first
        with pytest.raises(errors.TimeoutError):
            flow.read(deadline)
        assert flow.read(time.monotonic() + 5) == second
        assert flow.read(time.monotonic() + 5) == b""
    finally:
        conn.close()


def test_a_small_chunk_joined_to_the_one_before_counts_as_received_when_it_came(
    server: Callable[..., Listener],
) -> None:
    """Small chunks queued one behind another are kept as one (see the next test); that one
    counts as received when its last part was, so a part that came after a read's deadline
    is never handed out by that read."""
    go_on = threading.Event()
    lst = server(on_flow=_two_writes(b"a" * 100, b"b" * 100, go_on))
    conn = _dial(lst)
    try:
        flow = conn.connect()
        flow.write(b"go")
        _wait_for_inbox(flow, 100)
        deadline = time.monotonic()
        go_on.set()
        _wait_for_inbox(flow, 200)
        with pytest.raises(errors.TimeoutError):
            flow.read(deadline)
        assert flow.read(time.monotonic() + 5) == b"a" * 100 + b"b" * 100
    finally:
        conn.close()


def test_tiny_frames_from_a_peer_are_queued_in_a_few_objects(
    server: Callable[..., Listener],
) -> None:
    """A peer that cuts what it sends into tiny frames cannot make an unread flow hold many
    times its bytes in per-chunk overhead (a 2-byte chunk costs ~40 bytes beside its data:
    a 1 MiB window of them would pin ~20 MiB): small chunks queued behind others are joined.
    What the reader then gets is every byte, in order."""
    from tests.conftest import Family
    from tests.hostile import HostilePeer

    flows: list[Flow] = []
    opened = threading.Event()

    def keep(flow: Flow) -> None:  # never reads until the test does
        flows.append(flow)
        opened.set()

    lst = server(on_flow=keep)
    host, port = lst.address.rsplit(":", 1)
    peer = HostilePeer(Family().member("peer"), (host, int(port)), source="127.0.0.1")
    try:
        fid = peer.open(b"<")
        assert opened.wait(5)
        (flow,) = flows
        for i in range(5000):
            assert peer.send(fid, b"%02d" % (i % 100)) == 2
        peer.send(fid, b">", end=True)
        _wait_for_inbox(flow, 10_002)
        with flow._lock:
            assert len(flow._inbox) <= 3, len(flow._inbox)  # (5,002 chunks before)
        got = b""
        while chunk := flow.read(time.monotonic() + 5):
            got += chunk
        assert got == b"<" + b"".join(b"%02d" % (i % 100) for i in range(5000)) + b">"
    finally:
        peer.close()
        for flow in flows:
            flow.close()


# --- a KeyboardInterrupt as a wait lets the VC's lock go ------------------------------------
def _interrupt_once_at(function: str, fired: list[str]) -> Callable[..., None]:
    """A profile hook that raises KeyboardInterrupt once, as the VC lock's ``release()``
    called by ``function`` returns: where CPython raises a signal's KeyboardInterrupt that
    arrived during that call."""

    def hook(frame: Any, event: str, arg: Any) -> None:
        if (
            not fired
            and event == "c_return"
            and getattr(arg, "__name__", "") == "release"
            and frame.f_code.co_name == function
        ):
            fired.append(function)
            raise KeyboardInterrupt

    return hook


def _held_open(flow: Flow, release: threading.Event) -> None:
    """A flow handler that answers (upper case) only once ``release`` is set."""

    def run() -> None:
        with contextlib.suppress(errors.IPCError):
            data = flow.read(time.monotonic() + 10)
            assert release.wait(10)
            flow.write(data.upper(), end=True)

    threading.Thread(target=run, daemon=True).start()


# (A profile hook sees the interpreter's calls only.)
@pytest.mark.interpreted
@pytest.mark.parametrize("function", ["wait", "wait_for_peer"])
def test_a_keyboard_interrupt_as_a_wait_lets_the_lock_go_leaves_the_vc_usable(
    server: Callable[..., Listener], function: str
) -> None:
    """``wait``: a caller asleep until the VC's reader thread hands it its reply;
    ``wait_for_peer``: a caller that took the read role to read for itself. Either way the
    KeyboardInterrupt reaches the caller as such, the VC's lock is not left released twice
    (a RuntimeError, or another thread's hold of it undone) and the read role is given
    back: the next call on the VC is answered (it once waited forever)."""
    release = threading.Event()
    lst = server(on_flow=lambda flow: _held_open(flow, release))
    conn = _dial(lst)
    fired: list[str] = []
    try:
        flow = conn.connect()
        flow.write(b"one")
        if function == "wait":  # (the role starts free: let the reader thread take it)
            from ipcclient.transport.readrole import READER

            until = time.monotonic() + 5
            while conn._role is not READER and time.monotonic() < until:
                time.sleep(0.005)
            assert conn._role is READER
        hook = _interrupt_once_at(function, fired)
        until = time.monotonic() + 5
        while not fired and time.monotonic() < until:  # (until the caller waits that way)
            sys.setprofile(hook)
            try:
                flow.read(time.monotonic() + 0.05)
            except KeyboardInterrupt:
                pass
            except errors.TimeoutError:
                continue
            finally:
                sys.setprofile(None)
        assert fired == [function]
        assert conn._lock.acquire(timeout=1)  # free, and ours to take
        conn._lock.release()
        release.set()
        assert flow.read(time.monotonic() + 5) == b"ONE"  # the same flow goes on
        second = conn.connect()
        second.write(b"two", end=True)
        assert second.read(time.monotonic() + 5) == b"TWO"
    finally:
        release.set()
        conn.close()


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt (which would end the test session)."""


@pytest.fixture
def sigusr1_interrupts() -> Iterator[None]:
    """SIGUSR1 raises :class:`_Interrupt` in the main thread while the test runs."""
    assert threading.current_thread() is threading.main_thread()

    def handler(_signum: int, _frame: object) -> None:
        raise _Interrupt

    old = signal.signal(signal.SIGUSR1, handler)
    yield
    signal.signal(signal.SIGUSR1, old)


def _interrupt_when_main_waits_in(
    function: str, lock: Any, done: threading.Event, stuck: list[bool]
) -> None:
    """Once the main thread is seen in ``function``, flag an interrupt for it (as a signal
    the kernel hands to another thread does: its wait goes on), let ``lock`` go, and, if
    the main thread has not come back 2 s later, release ``lock`` once more for it (it
    waits on a lock it holds) so that the test ends."""
    main = threading.main_thread().ident
    assert main is not None
    end = time.monotonic() + 10
    while time.monotonic() < end:
        frame = sys._current_frames().get(main)
        if frame is not None and frame.f_code.co_name == function:
            break
        time.sleep(0.005)
    time.sleep(0.05)  # (into the acquire)
    _thread.interrupt_main(signal.SIGUSR1)
    time.sleep(0.05)
    lock.release()
    if not done.wait(2.0):
        stuck.append(True)
        lock.release()


# (The signal's handler runs where the interpreter checks for one: compiled code never does
# inside reacquire.)
@pytest.mark.interpreted
def test_an_interrupt_raised_once_the_lock_is_taken_back_is_kept_not_waited_on(
    sigusr1_interrupts: None,
) -> None:
    """A signal meant for the main thread but delivered to another one does not cut its wait
    for the VC's lock short: its handler raises only once the lock is taken. reacquire took
    the lock once more and waited forever on itself, with every thread of the VC behind."""
    lock = threading.Lock()
    lock.acquire()
    done = threading.Event()
    stuck: list[bool] = []
    helper = threading.Thread(
        target=_interrupt_when_main_waits_in, args=("reacquire", lock, done, stuck), daemon=True
    )
    helper.start()
    try:
        pending = reacquire(lock)
    finally:
        done.set()
    helper.join(5)
    assert not stuck, "reacquire waited on the lock it had just taken"
    assert isinstance(pending, _Interrupt)  # (kept, to be raised once the lock is held)
    assert lock.locked()
    lock.release()


@pytest.mark.interpreted
def test_an_interrupt_as_a_caller_takes_the_vc_lock_back_leaves_the_vc_usable(
    sigusr1_interrupts: None, server: Callable[..., Listener]
) -> None:
    """The same on a VC: a caller whose wait for its reply ends while another thread holds
    the VC's lock, interrupted as it takes the lock back. The interrupt reaches the caller,
    and the VC's lock is free afterwards."""
    release = threading.Event()
    lst = server(on_flow=lambda flow: _held_open(flow, release))
    conn = _dial(lst)
    done = threading.Event()
    stuck: list[bool] = []
    try:
        other = conn.connect()  # (two calls: the reader thread reads for both, callers wait)
        other.write(b"other")
        flow = conn.connect()
        flow.write(b"one")
        from ipcclient.transport.readrole import READER

        until = time.monotonic() + 5
        while conn._role is not READER and time.monotonic() < until:
            time.sleep(0.005)
        assert conn._role is READER

        def hold_the_lock() -> None:
            until = time.monotonic() + 5
            while flow not in conn._waiters and time.monotonic() < until:
                time.sleep(0.001)
            conn._lock.acquire()  # (as a thread dispatching would; the read's wait ends)
            _interrupt_when_main_waits_in("reacquire", conn._lock, done, stuck)

        helper = threading.Thread(target=hold_the_lock, daemon=True)
        helper.start()
        try:
            with pytest.raises(_Interrupt):
                flow.read(time.monotonic() + 0.3)
        finally:
            done.set()
        helper.join(5)
        assert not stuck, "the caller waited on the VC's lock it held"
        assert conn._lock.acquire(timeout=1)
        conn._lock.release()
        release.set()
        assert flow.read(time.monotonic() + 5) == b"ONE"  # the VC goes on
    finally:
        release.set()
        conn.close()


# (A profile hook sees the interpreter's calls only.)
@pytest.mark.interpreted
def test_a_caller_interrupted_as_it_gives_the_read_role_up_still_closes_the_socket_left_to_it(
    server: Callable[..., Listener],
) -> None:
    """The VC is closed while a caller reads for itself: the closer leaves the socket to
    that caller, who closes it as it gives the role up. A KeyboardInterrupt raised there,
    after the role was given up (at its first call that checks for a signal), skipped that
    close: the socket and the wake pipe stayed open for good."""
    release = threading.Event()
    lst = server(on_flow=lambda flow: _held_open(flow, release))
    conn = _dial(lst)
    fired: list[bool] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        if (
            not fired
            and event == "c_return"
            and getattr(arg, "__name__", "") == "monotonic"
            and frame.f_code.co_name == "wait_for_peer"
            and conn._writer.close_due
        ):
            fired.append(True)
            raise KeyboardInterrupt

    from ipcclient.transport.readrole import CALLER

    def close_while_the_caller_reads() -> None:
        # The step of close() that meets a caller reading: the socket is left to it (due),
        # and it is woken. (All of close() would also shut the socket, and the caller could
        # give the role up before the close is left to it.)
        until = time.monotonic() + 5
        while conn._role is not CALLER and time.monotonic() < until:
            time.sleep(0.001)
        conn._close_socket()
        with conn._lock:
            conn._wake_poll_locked()

    try:
        flow = conn.connect()
        flow.write(b"one")
        closer = threading.Thread(target=close_while_the_caller_reads, daemon=True)
        closer.start()
        sys.setprofile(hook)
        try:
            with pytest.raises(KeyboardInterrupt):
                flow.read(time.monotonic() + 5)
        finally:
            sys.setprofile(None)
        closer.join(5)
        assert fired
        assert conn._sock_closed and conn._sock.fileno() == -1
        assert conn._wake_r == -1 and conn._wake_w == -1
    finally:
        release.set()
        conn.close()


class _LockChecker(logging.Handler):
    """Records, for each message it is given, whether the VC's lock could be taken by the
    thread logging it (a handler may block or take locks of its own: the VC's lock must not
    be held while one runs)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.conn: Connection | None = None
        self.seen: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        conn = self.conn
        if conn is None or not record.getMessage().startswith("transport:"):
            return
        free = conn._lock.acquire(timeout=1)  # (never, if this thread holds it)
        if free:
            conn._lock.release()
        self.seen.append((record.getMessage(), free))


def test_the_vc_does_not_log_with_its_lock_held(server: Callable[..., Listener]) -> None:
    """A call that times out on a silent peer starts a probe, and the peer's GOAWAY is
    noted: both are logged once the VC's lock is let go."""
    lst = server(on_flow=lambda flow: None)  # takes the flow, never answers
    checker = _LockChecker()
    logger = logging.getLogger("ipcclient")
    level = logger.level
    logger.addHandler(checker)
    logger.setLevel(logging.DEBUG)
    quick = TransportOptions(keepalive=KeepaliveConfig(probe_after=0.05, probe_timeout=5))
    try:
        conn = _dial(lst, options=quick)
        checker.conn = conn
        flow = conn.connect()
        flow.write(b"x")
        with pytest.raises(errors.TimeoutError):
            flow.read(time.monotonic() + 0.3)  # (silent for longer than probe_after)
        lst.close()  # the listener's VCs end with a GOAWAY
        assert conn.wait_closed(5)
        messages = [m for m, _ in checker.seen]
        assert any("probing" in m for m in messages), messages
        assert any("GOAWAY" in m for m in messages), messages
        assert all(free for _, free in checker.seen), checker.seen
    finally:
        logger.removeHandler(checker)
        logger.setLevel(level)
        checker.conn = None


class _ShortSendSocket(socket.socket):
    """A real socket whose next send without waiting (``short_send``, once armed) takes one
    byte and then finds the socket full: what a peer that stops reading makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.short_send = False
        self._full = False

    def send(self, data: Any, flags: int = 0) -> int:
        if self._full:
            self._full = False
            raise BlockingIOError
        if self.short_send and flags & socket.MSG_DONTWAIT:
            self.short_send = False
            self._full = True
            return super().send(bytes(data[:1]), flags)
        return super().send(data, flags)


def test_a_send_that_cannot_start_its_thread_breaks_the_vc_with_a_typed_error(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send that may not wait hands what the socket would not take to a drainer thread.
    When no thread can be started (a process at its limit: faked here, the one fault a
    real part cannot make on demand), the VC breaks with ConnectionFailedError, as after a
    failed send; the bare RuntimeError once reached whoever flushed (here, a cancel)."""
    from ipcclient.transport import dial as dialmod

    lst = server(on_flow=lambda flow: None)
    fake = _SocketModuleMaking(_ShortSendSocket)
    monkeypatch.setattr(dialmod, "socket", fake)
    conn = _dial(lst)
    monkeypatch.undo()
    (sock,) = fake.made
    try:
        flow = conn.connect()
        flow.write(b"x")  # (the flow is open at the peer: its cancel sends a RESET)
        refuse_threads(monkeypatch, "ipc-drain")
        sock.short_send = True
        flow.cancel()  # (its RESET is flushed without waiting: a byte goes, then it is full)
        monkeypatch.undo()
        assert conn.wait_closed(5)
        assert isinstance(conn.error, errors.ConnectionFailedError)
        assert "can't start new thread" in str(conn.error)
        with pytest.raises(errors.ConnectionFailedError):
            conn.connect()
    finally:
        conn.close()


def test_a_listener_whose_own_auth_no_peer_takes_says_so_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Blessings (or, as they are fetched, discharges) that make the server's auth message
    larger than any peer accepts fail every handshake on the server's side, before it
    sends a byte. That was logged at debug level only, like any peer's failed handshake:
    the server's owner saw nothing. It is a rate-limited warning now, saying why."""
    from ipcclient import Principal, caveats
    from ipcclient.security.blessings import Blessings

    root, me = Principal.generate(), Principal.generate()
    root_b = root.bless_self("root")
    big = [caveats.method(*["M%02d%s" % (j, "x" * 40) for j in range(20)]) for _ in range(40)]
    chains = [root.bless(me.public_key, root_b, name, big) for name in ("a", "b")]
    blessings = Blessings.union(*chains)
    caplog.set_level(logging.WARNING, logger="ipcclient.transport")
    lst = StreamManager(me).listen("tcp", "127.0.0.1:0", blessings=blessings, on_flow=_echo_upper)
    try:
        with pytest.raises(errors.IPCError):
            _dial(lst)
        until = time.monotonic() + 5  # (the record is emitted on the log thread)
        while time.monotonic() < until and not any(
            "own auth" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.01)
        (record,) = [r for r in caplog.records if "own auth" in r.getMessage()]
        assert record.levelno == logging.WARNING
        assert "blessings and discharges encode to" in record.getMessage()
    finally:
        lst.close()


class _SlowSealer:
    """The VC's sealer, sealing ``delay`` seconds late on the thread named ``who`` (as a
    busy CPU might hold that thread): the flusher role stays with it meanwhile."""

    def __init__(self, inner: Any, who: str, delay: float) -> None:
        self._inner, self._who, self._delay = inner, who, delay

    def seal_parts(self, parts: Any) -> Any:
        if threading.current_thread().name == self._who:
            time.sleep(self._delay)
        return self._inner.seal_parts(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_close_while_the_lingerer_flushes_still_sends_the_goaway(
    server: Callable[..., Listener],
) -> None:
    """close() queues the GOAWAY and gives the flusher a moment to send it. The lingerer,
    flushing a burst's deferred writes, left what was queued meanwhile for its next round
    and gave up the role: close() stopped waiting and shut the socket first, and the peer
    saw a bare EOF (no LAST_ID, so calls it could resend failed instead)."""
    accepted: list[Flow] = []
    opened = threading.Event()

    def on_flow(flow: Flow) -> None:
        accepted.append(flow)
        opened.set()

    lst = server(on_flow=on_flow)
    conn = _dial(lst)
    flow = conn.connect()
    flow.write(b"first")  # (opens the flow at the server)
    assert opened.wait(5)
    server_conn = accepted[0].connection
    writer = conn._writer
    writer._sealer = _SlowSealer(writer._sealer, "ipc-linger", 0.05)
    deadline = time.monotonic() + 5
    while not writer.flushing and time.monotonic() < deadline:
        # The second write within LINGER (0.2 ms) of the first is deferred to the lingerer;
        # on a loaded machine the gap may be longer (then both go out at once): again.
        flow.write(b"a", streamed=True)
        flow.write(b"b", streamed=True)
        burst = time.monotonic() + 0.02
        while not writer.flushing and time.monotonic() < burst:
            time.sleep(0.0005)
    assert writer.flushing  # the lingerer holds the role, sealing
    conn.close()
    assert server_conn.wait_closed(5)
    # (What the peer's GOAWAY says; a bare EOF says "transport: the peer closed ...".)
    assert "mux: the peer closed the connection" in str(server_conn.error), server_conn.error


@pytest.mark.interpreted  # (replaces the lingerer's add at run time)
def test_a_send_that_gave_the_flusher_role_up_never_clears_it_for_another_thread(
    server: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lingerer gives the role up, then fails to be asked again (no thread to be had):
    by then another writer may hold the role. The failure cleared it all the same, and a
    third writer could become a second flusher, sharing the sealer's nonces and the socket."""
    from ipcclient.transport import writer as writer_mod

    conn = _dial(lst := server())
    try:
        flow = conn.connect()
        flow.write(b"open")
        writer = conn._writer

        def add(w: Any) -> None:  # meanwhile another writer became the flusher
            with w._lock:
                w.flushing = True
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(writer_mod.LINGERER, "add", add)
        with conn._lock:
            conn._mux.send_data(flow.id, b"a")
            data = writer.take_output_locked()
            conn._mux.send_data(flow.id, b"b")  # (queued meanwhile: left for the next round)
            writer.linger_due = False
        writer.send(data, blocking=False, once=True)
        assert writer.flushing  # (still the other writer's)
        assert conn.error is not None  # (what was deferred is lost: the VC is gone)
    finally:
        conn.close(timeout=0.1)
        lst.close()
