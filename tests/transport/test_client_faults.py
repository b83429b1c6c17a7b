"""The client under faults and load: restarts, kills, black holes, garbage, threads, fork,
Ctrl-C, close."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ClientOptions, NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport.conn import KeepaliveConfig
from ipcclient.transport.manager import TransportOptions
from tests.conftest import Family
from tests.rpc.test_call_errors import receiving, wait_for

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Svc:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def Echo(self, call: ServerCall, x: Any) -> Any:
        with self.lock:
            self.calls += 1
        return x

    def Count(self, call: ServerCall, n: int) -> int:
        for i in range(n):
            call.send(i)
        return n

    def Block(self, call: ServerCall) -> str:
        self.started.set()
        if call.context.wait(10):
            self.cancelled.set()
        return "done"

    def Flaky(self, call: ServerCall) -> str:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            raise errors.InternalError("try again", action=errors.RetryAction.RETRY_BACKOFF)
        return "ok"


@contextlib.contextmanager
def ctrl_c_after(seconds: float) -> Iterator[None]:
    """Ctrl-C (SIGINT to the main thread, the caller) ``seconds`` into the block."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.join()


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


def _dialed_vc_threads() -> int:
    """Reader threads of VCs a client dialed (named after the address they dial)."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(("ipc-tcp", "ipc-unix")))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle(pred: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.mark.timeout(300)
def test_32_threads_share_one_client_and_one_vc(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Svc()
    srv, name = make_server(svc, AllowEveryone(), options=ServerOptions(workers=16))
    threads_before = threading.active_count()
    fds_before = _open_fds()
    client = Client(make_client().principal, options=ClientOptions(default_call_timeout=60))
    failures: list[BaseException] = []
    per_thread = 300

    def worker(t: int) -> None:
        c = ctx(120)
        try:
            for i in range(per_thread):
                if i % 10 == 0:
                    call = client.start_call(c, name, "Count", [3])
                    got = list(call)
                    assert got == [0, 1, 2] and call.finish() == (3,)
                else:
                    payload = (t, i)
                    assert client.call(c, name, "Echo", payload) == ([t, i],)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
    assert not failures, failures[:3]
    assert svc.calls == 32 * (per_thread - per_thread // 10)
    assert client.vc_count() == 1
    assert client.stats["dials"] == 1
    client.close()
    srv.stop()
    assert _settle(lambda: threading.active_count() <= threads_before)
    assert _settle(lambda: _open_fds() <= fds_before)


def test_concurrent_first_calls_share_one_dial(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    barrier = threading.Barrier(8)
    out: list[Any] = []

    def go() -> None:
        barrier.wait()
        out.append(client.call(ctx(), name, "Echo", 1))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(out) == 8
    assert client.stats["dials"] == 1


def test_black_holed_endpoint_does_not_delay_others(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, good = make_server(Svc(), AllowEveryone())
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # the kernel completes TCP handshakes; nobody ever answers
    try:
        from ipcclient.naming.endpoint import Endpoint

        bad = "/" + str(Endpoint("tcp", "%s:%d" % hole.getsockname()))
        client = make_client()
        result: list[BaseException] = []

        def stuck() -> None:
            try:
                client.call(ctx(1.5), bad, "Echo", 1)
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=stuck)
        start = time.monotonic()
        t.start()
        time.sleep(0.1)
        for i in range(5):
            assert client.call(ctx(), good, "Echo", i) == (i,)
        assert time.monotonic() - start < 1.0  # not held behind the stuck dial
        t.join(5)
        assert result and isinstance(result[0], errors.TimeoutError)
        assert time.monotonic() - start < 3.0
    finally:
        hole.close()


def test_a_server_that_sends_garbage_is_bad_protocol(make_client: MakeClient) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def garbage() -> None:
        try:
            conn, _ = sock.accept()
            conn.recv(4096)
            conn.sendall(b"\x8fIPC\x00\x00\x00\x05\xff\xff\xff\xff\xff")
            time.sleep(0.2)
            conn.close()
        except OSError:
            pass

    threading.Thread(target=garbage, daemon=True).start()
    try:
        from ipcclient.naming.endpoint import Endpoint

        name = "/" + str(Endpoint("tcp", "%s:%d" % sock.getsockname()))
        with pytest.raises(errors.BadProtocolError) as info:
            make_client().call(ctx(), name, "Echo", 1, options=[NoRetry()])
        assert info.value.request_sent is False
    finally:
        sock.close()


def test_a_server_that_never_answers_hits_the_deadline(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    start = time.monotonic()
    with pytest.raises(errors.TimeoutError):
        make_client().call(ctx(0.3), name, "Block")
    assert time.monotonic() - start < 2


def test_server_restarted_on_the_same_port(family: Family, make_client: MakeClient) -> None:
    sp = family.member("server")
    first = Server(sp)
    ep = first.listen("tcp", "127.0.0.1:0")
    first.serve(Svc(), AllowEveryone())
    client = make_client()
    try:
        assert client.call(ctx(), "/" + ep, "Echo", 1) == (1,)
        address = ep.split("@")[3]
        first.stop()
        assert _settle(lambda: client.vc_count() == 0)  # the broken VC was evicted
        second = Server(sp)
        try:
            ep2 = second.listen("tcp", address)
            second.serve(Svc(), AllowEveryone())
            assert ep2 == ep
            assert client.call(ctx(), "/" + ep, "Echo", 2) == (2,)
            assert client.stats["dials"] == 2
        finally:
            second.stop()
    finally:
        first.stop()


def test_calls_resume_when_the_server_comes_back_during_retries(
    family: Family, make_client: MakeClient
) -> None:
    sp = family.member("server")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = "%s:%d" % probe.getsockname()
    probe.close()
    from ipcclient.naming.endpoint import Endpoint

    name = "/" + str(
        Endpoint("tcp", address, blessings=("root:server",), min_version=1, max_version=1)
    )
    client = make_client()
    holder: list[Server] = []

    def start_later() -> None:
        time.sleep(0.4)
        srv = Server(sp)
        srv.listen("tcp", address)
        srv.serve(Svc(), AllowEveryone())
        holder.append(srv)

    t = threading.Thread(target=start_later)
    t.start()
    try:
        start = time.monotonic()
        assert client.call(ctx(10), name, "Echo", "late") == ("late",)
        assert time.monotonic() - start >= 0.3
    finally:
        t.join(5)
        for srv in holder:
            srv.stop()


@pytest.fixture
def child_server(family: Family) -> Iterator[tuple[subprocess.Popen[str], str]]:
    sp = family.member("server")
    with tempfile.TemporaryDirectory() as tmp:
        sp.save(os.path.join(tmp, "p"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.child_server", os.path.join(tmp, "p")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        try:
            assert proc.stdout is not None
            ep = proc.stdout.readline().strip()
            assert ep.startswith("@1@"), ep
            yield proc, "/" + ep
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_server_killed_mid_stream(
    child_server: tuple[subprocess.Popen[str], str], make_client: MakeClient
) -> None:
    proc, name = child_server
    client = make_client()
    call = client.start_call(ctx(30), name, "Forever")
    assert call.recv() == 0
    assert call.recv() == 1
    start = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    with pytest.raises(errors.ConnectionFailedError) as info:
        while True:
            call.recv()
    assert time.monotonic() - start < 3
    assert info.value.request_sent is True
    assert info.value.retryable


def test_close_fails_in_flight_and_new_calls(make_server: MakeServer, family: Family) -> None:
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    client = Client(family.member("client"))
    call = client.start_call(ctx(), name, "Block")
    assert svc.started.wait(5)
    got: list[BaseException] = []

    def finish() -> None:
        try:
            call.finish()
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=finish)
    t.start()
    time.sleep(0.05)
    client.close()
    t.join(5)
    assert got and isinstance(got[0], errors.CanceledError)
    assert "closed" in got[0].msg
    with pytest.raises(errors.BadStateError) as info:
        client.call(ctx(), name, "Echo", 1)
    assert info.value.request_sent is False
    assert svc.cancelled.wait(5)
    assert _settle(lambda: _dialed_vc_threads() == 0)
    client.close()  # idempotent
    with Client(family.member("client")) as c2:
        assert c2.call(ctx(), name, "Echo", 3) == (3,)
    assert c2.closed


def test_a_client_dropped_without_close_lets_its_vcs_end(
    make_server: MakeServer, family: Family
) -> None:
    """A Client dropped without close() was never collected (its VCs' reader threads held
    it through the VC cache) and its VCs stayed open as long as their servers lived: a
    socket, two pipe descriptors and a thread each on the client, a connection on the
    server (200 dropped clients: +800 descriptors, +200 threads; at 1,024 from one host
    the server refused that host's new clients). It is collected now, with a
    ResourceWarning, and its VCs end at their next keepalive check, calls abandoned on
    them included."""
    server, name = make_server(Svc(), AllowEveryone())
    quick = TransportOptions(keepalive=KeepaliveConfig(interval=0.3, timeout=2.0))
    before = _open_fds()
    client = Client(family.member("client"), options=ClientOptions(transport=quick))
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    abandoned = client.start_call(ctx(), name, "Block")  # (dropped below, never finished)
    assert _settle(lambda: len(server.connections) == 1)
    dropped = weakref.ref(client)
    with pytest.warns(ResourceWarning, match="dropped without close"):
        del client, abandoned
        gc.collect()
    assert dropped() is None
    assert _settle(lambda: _dialed_vc_threads() == 0 and not server.connections)
    assert _settle(lambda: _open_fds() <= before)


@pytest.mark.interpreted  # (replaces the VC cache's map with a dict subclass)
def test_a_dial_published_as_the_client_is_collected_ends_too(
    make_server: MakeServer, family: Family
) -> None:
    """The finalizer of a dropped client (``VCCache.abandon``) takes no lock, so it may run
    while a dial is being published, after the publisher looked at ``closed`` and before it
    put the new VC in the map: abandon() then drops the VCs it finds, which do not include
    that one yet. The publisher looks at ``closed`` again once it lets the lock go and drops
    the VC it added; before, that VC stayed open as long as its server lived. The test puts
    abandon() exactly there: inside the map lookup the publisher makes under the lock."""
    server, name = make_server(Svc(), AllowEveryone())
    quick = TransportOptions(keepalive=KeepaliveConfig(interval=0.3, timeout=2.0))
    client = Client(family.member("client"), options=ClientOptions(transport=quick))
    cache = client._cache

    published: list[Any] = []

    class AbandonDuringPublish(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            if sys._getframe(1).f_code.co_name == "_publish" and not cache.closed:
                cache.abandon()  # (the finalizer, run by the collector in this thread)
            return super().get(key, default)

        def __setitem__(self, key: str, value: Any) -> None:
            published.append(value)
            super().__setitem__(key, value)

    cache.vcs = client._vcs = AbandonDuringPublish()
    # (The call may fail or not: its VC may end under it, its client counting as dropped.)
    with contextlib.suppress(errors.IPCError):
        client.call(ctx(), name, "Echo", 1)
    assert cache.closed
    (conn,) = published
    assert conn._dropped
    assert conn.wait_closed(5.0)
    assert "dropped without close" in str(conn.error)
    assert _settle(lambda: not server.connections)
    client.close()


def test_a_call_in_use_keeps_its_client_and_its_vc(make_server: MakeServer, family: Family) -> None:
    """A call made from a client nobody else refers to (``Client(...).start_call(...)``, or
    a helper that returns the call) keeps that client alive, and so its VC: a dropped
    client's VCs end at their next check, and a call in use must not be taken for one of
    the calls dropped with it."""
    _, name = make_server(Svc(), AllowEveryone())
    quick = TransportOptions(keepalive=KeepaliveConfig(interval=0.2, timeout=2.0))
    call = Client(family.member("client"), options=ClientOptions(transport=quick)).start_call(
        ctx(), name, "Count", [20]
    )
    gc.collect()
    got = []
    for item in call:
        got.append(item)
        time.sleep(0.02)  # (the VC's reader wakes and checks meanwhile)
    assert got == list(range(20))
    assert call.finish() == (20,)


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_in_a_blocked_finish_cancels_the_call(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    assert threading.current_thread() is threading.main_thread()
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    call = client.start_call(ctx(), name, "Block")
    assert svc.started.wait(5)
    with pytest.raises(KeyboardInterrupt), ctrl_c_after(0.1):
        call.finish()
    assert call.ended
    assert svc.cancelled.wait(5)  # the interrupt reached the server as a cancellation


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_in_a_finish_waiting_for_another_threads_recv_cancels_the_call(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """finish() waits for a recv in progress in another thread before it reads; Ctrl-C there
    raises KeyboardInterrupt and cancels the call, as in any blocked finish (docs/client.md):
    the receiving thread wakes with CanceledError and the server's method is cancelled."""
    assert threading.current_thread() is threading.main_thread()
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    call = client.start_call(ctx(), name, "Block")
    call.close_send()
    assert svc.started.wait(5)
    woke = receiving(call)
    with pytest.raises(KeyboardInterrupt), ctrl_c_after(0.2):
        call.finish()
    assert call.ended
    assert wait_for(lambda: woke)
    assert [type(e) for e in woke] == [errors.CanceledError]
    assert svc.cancelled.wait(5)


def test_retry_backoff_errors_are_retried_by_call_only(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Flaky") == ("ok",)
    assert svc.calls == 2  # retried exactly once
    svc.calls = 0
    with pytest.raises(errors.InternalError):
        client.call(ctx(), name, "Flaky", options=[NoRetry()])
    assert svc.calls == 1
    svc.calls = 0
    with pytest.raises(errors.InternalError):
        client.start_call(ctx(), name, "Flaky").finish()  # start+finish never retries
    assert svc.calls == 1


def test_a_full_server_sheds_load_with_a_retriable_error(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = Svc()
    _, name = make_server(
        svc, AllowEveryone(), options=ServerOptions(workers=1, max_workers=1, max_queued=0)
    )
    client = make_client()
    busy = client.start_call(ctx(), name, "Block")
    assert svc.started.wait(5)
    with pytest.raises(errors.OverloadedError) as info:
        client.start_call(ctx(), name, "Echo", [1]).finish()
    assert info.value.action is errors.RetryAction.RETRY_BACKOFF
    busy.cancel()
    # call() retries RETRY_BACKOFF errors: once the worker is free, it gets through.
    assert client.call(ctx(), name, "Echo", 2) == (2,)


@expose
class Middle:
    """A server method that calls another server with its own call's context."""

    def __init__(self, client: Client, backend: str) -> None:
        self.client = client
        self.backend = backend

    def Relay(self, call: ServerCall) -> Any:
        return self.client.call(call.context, self.backend, "Block")


def test_cancellation_propagates_through_nested_calls(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    backend = Svc()
    _, backend_name = make_server(backend, AllowEveryone())
    middle_client = make_client(family.member("middle"))
    _, middle_name = make_server(Middle(middle_client, backend_name), AllowEveryone())
    client = make_client()
    c = Context.background().with_timeout(10)
    call = client.start_call(c, middle_name, "Relay")
    assert backend.started.wait(5)
    c.cancel()
    with pytest.raises(errors.CanceledError):
        call.finish()
    assert backend.cancelled.wait(5)  # the cancel crossed two hops


def test_nested_call_inherits_the_outer_deadline(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    backend = Svc()
    _, backend_name = make_server(backend, AllowEveryone())
    middle_client = make_client(family.member("middle"))
    _, middle_name = make_server(Middle(middle_client, backend_name), AllowEveryone())
    start = time.monotonic()
    with pytest.raises(errors.TimeoutError):
        make_client().call(ctx(0.4), middle_name, "Relay")
    assert backend.cancelled.wait(5)
    assert time.monotonic() - start < 3


def _in_child(work: Callable[[], None]) -> None:
    """Fork; run ``work`` in the child, which then exits without cleanup; the parent waits
    and checks that the child reported success."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            os.write(write_end, b"ok")
            code = 0
        except BaseException as exc:
            os.write(write_end, repr(exc).encode()[:200])
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    message = os.read(read_end, 300)
    os.close(read_end)
    assert message == b"ok" and os.WEXITSTATUS(status) == 0, message


def test_fork_child_redials_and_parent_is_untouched(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", "parent") == ("parent",)

    def child() -> None:  # use the inherited client
        assert client.call(ctx(), name, "Echo", "child") == ("child",)
        assert client.stats["dials"] >= 1

    _in_child(child)
    # The parent's VC was not disturbed by the child.
    assert client.call(ctx(), name, "Echo", "parent again") == ("parent again",)
    assert client.stats["dials"] == 1


def test_a_fork_child_closing_the_client_leaves_the_parents_calls_alone(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The child's close() (or leaving ``with client:``) without a call first closed the
    inherited VCs as its own: GOAWAY and a shutdown of the socket the parent still used,
    failing the parent's calls in flight."""
    svc = Svc()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", "parent") == ("parent",)
    call = client.start_call(ctx(), name, "Count", [3])  # (in flight across the fork)
    _in_child(client.close)
    assert list(call) == [0, 1, 2] and call.finish() == (3,)
    assert client.call(ctx(), name, "Echo", "parent again") == ("parent again",)
    assert client.stats["dials"] == 1


def test_a_fork_child_stopping_the_server_leaves_the_parents_server_alone(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The child's server.stop() (or leaving ``with server:``) shut the listening socket
    and closed the accepted VCs, which are the parent's too: the parent's server stopped
    serving."""
    server, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    _in_child(lambda: server.stop())
    assert client.call(ctx(), name, "Echo", 2) == (2,)  # (the VC accepted before the fork)
    assert client.stats["dials"] == 1
    assert make_client().call(ctx(), name, "Echo", 3) == (3,)  # (a new VC: still listening)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A rooted name whose endpoint accepts TCP connections and never says a word."""
    from ipcclient.naming.endpoint import Endpoint

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        yield "/" + str(Endpoint("tcp", "%s:%d" % hole.getsockname()))
    finally:
        hole.close()


def test_callers_sharing_a_dial_keep_their_own_deadlines(
    black_hole: str, make_client: MakeClient
) -> None:
    client = make_client()
    ends: dict[str, float] = {}
    errs: dict[str, BaseException] = {}
    start = time.monotonic()

    def go(label: str, seconds: float) -> None:
        try:
            client.call(ctx(seconds), black_hole, "Echo", 1)
        except BaseException as exc:
            errs[label] = exc
        ends[label] = time.monotonic() - start

    short = threading.Thread(target=go, args=("short", 0.2))
    long_ = threading.Thread(target=go, args=("long", 1.2))
    short.start()
    long_.start()
    short.join(5)
    long_.join(5)
    assert isinstance(errs["short"], errors.TimeoutError)
    assert isinstance(errs["long"], errors.TimeoutError)
    assert ends["short"] < 0.8
    assert 1.0 < ends["long"] < 3.0  # not cut short by the other caller's deadline


def test_cancel_and_close_interrupt_a_dial(black_hole: str, family: Family) -> None:
    client = Client(family.member("client"))
    c = Context.background().with_timeout(10)
    threading.Timer(0.2, c.cancel).start()
    start = time.monotonic()
    with pytest.raises(errors.CanceledError):
        client.call(c, black_hole, "Echo", 1)
    assert time.monotonic() - start < 1.5
    threading.Timer(0.2, client.close).start()
    start = time.monotonic()
    with pytest.raises(errors.BadStateError):
        client.call(ctx(10), black_hole, "Echo", 1)
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize("driving", [False, True])
@pytest.mark.parametrize("how", ["cancel", "deadline", "close"])
def test_a_caller_waiting_for_a_dial_wakes_when_its_call_ends(
    black_hole: str, family: Family, monkeypatch: pytest.MonkeyPatch, how: str, driving: bool
) -> None:
    # Waiting: not at the next look at its context: the waits between looks are made long
    # here, so only a wake-up by the context's end (or by close) ends the call in time.
    # Driving: the caller drives the dial itself all along (INLINE_DIAL made long), looking
    # at its context between steps.
    from ipcclient.client import vcs

    monkeypatch.setattr(vcs, "DIAL_WAIT_SLICE", 30.0)
    monkeypatch.setattr(vcs, "INLINE_DIAL", 30.0 if driving else 0.0)
    client = Client(family.member("client"))
    try:
        c = Context.background().with_timeout(0.3 if how == "deadline" else 30)
        if how == "cancel":
            threading.Timer(0.3, c.cancel).start()
        elif how == "close":
            threading.Timer(0.3, client.close).start()
        expected = {
            "cancel": errors.CanceledError,
            "deadline": errors.TimeoutError,
            "close": errors.BadStateError,
        }[how]
        start = time.monotonic()
        with pytest.raises(expected) as info:
            client.call(c, black_hole, "Echo", 1)
        took = time.monotonic() - start
        assert 0.25 < took < 3, took
        assert info.value.request_sent is False
    finally:
        client.close()


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_while_a_caller_drives_a_dial_leaves_the_client_usable(
    black_hole: str, make_server: MakeServer, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipcclient.client import vcs

    monkeypatch.setattr(vcs, "INLINE_DIAL", 30.0)  # the caller drives the dial all along
    _, name = make_server(Svc(), AllowEveryone())
    client = Client(family.member("client"))
    try:
        main = threading.main_thread().ident
        assert main is not None and threading.current_thread().ident == main
        timer = threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.call(ctx(10), black_hole, "Echo", 1)
        timer.join()
        assert not client._cache._dialing  # the dial ended (failed) for everyone
        with pytest.raises(errors.TimeoutError):  # a new dial, bounded by its deadline
            client.call(ctx(0.3), black_hole, "Echo", 1)
        assert client.call(ctx(), name, "Echo", 2) == (2,)
    finally:
        client.close()


def test_a_dial_met_twice_in_one_race_is_driven_once(
    black_hole: str, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same server twice among a name's servers (two suffixes, say): the second look at
    # its dial, after the stagger, only waits for it.
    from ipcclient.client import plan as _plan
    from ipcclient.client import vcs

    started: list[object] = []
    real = vcs.VCCache._start_dial

    def counting(self: Any, ep: Any) -> Any:
        started.append(ep)
        return real(self, ep)

    monkeypatch.setattr(vcs.VCCache, "_start_dial", counting)
    client = Client(family.member("client"))
    try:
        address, suffix = _plan.split_server(black_hole)
        ep, key = _plan.parse_endpoint(address)
        target = ("s", ep, key, suffix)
        with pytest.raises(errors.TimeoutError):
            for _ in client._cache.race([target, target], ctx(0.6), []):
                pass
        assert len(started) == 1, started
    finally:
        client.close()


def test_ctrl_c_as_a_caller_starts_a_dial_is_raised(
    black_hole: str, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipcclient.client import vcs

    def interrupted(self: Any, ep: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(vcs.VCCache, "_start_dial", interrupted)
    client = Client(family.member("client"))
    try:
        with pytest.raises(KeyboardInterrupt):
            client.call(ctx(1), black_hole, "Echo", 1)
        assert not client._cache._dialing
    finally:
        client.close()


def test_close_while_calls_finish_concurrently(make_server: MakeServer, family: Family) -> None:
    _, name = make_server(Svc(), AllowEveryone())
    client = Client(family.member("client"))
    stop = threading.Event()
    bad: list[BaseException] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                client.call(ctx(), name, "Echo", 1)
            except (errors.BadStateError, errors.CanceledError, errors.ConnectionFailedError):
                return
            except BaseException as exc:
                bad.append(exc)
                return

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    client.close()  # must not trip over calls that finish while it walks them
    stop.set()
    for t in threads:
        t.join(5)
    assert not bad, bad
    assert _settle(lambda: _dialed_vc_threads() == 0)


def test_fork_while_another_thread_holds_the_vc_lock(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The child must not wait for a lock whose holder did not survive the fork."""
    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    (conn,) = client._vcs.values()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with conn._lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = client.call(ctx(5), name, "Echo", "child") == ("child",)
            os.write(write_end, b"ok" if ok else b"bad")
            code = 0
        except BaseException as exc:
            os.write(write_end, repr(exc).encode()[:200])
        finally:
            os._exit(code)
    release.set()
    t.join(5)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    message = os.read(read_end, 300)
    os.close(read_end)
    assert message == b"ok", message
    assert client.call(ctx(), name, "Echo", 2) == (2,)


def test_a_call_on_an_already_cancelled_context_fails_cleanly(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    c = Context.background().with_timeout(10)
    c.cancel()
    with pytest.raises(errors.CanceledError):
        client.call(c, name, "Echo", 1)


def test_a_fresh_vc_starts_one_thread_on_each_side(
    make_server: MakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dialing starts one thread (the VC's reader: the caller drove the dial itself), and
    accepting the handshake thread, which then reads for its VC (no second thread starts
    before the first call is answered); the VC still works as before: calls, and a clean
    close that ends those threads."""
    _srv, name = make_server(Svc(), AllowEveryone())
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    client = Client(make_client().principal, options=ClientOptions(default_call_timeout=10))
    try:
        assert client.call(ctx(), name, "Echo", "first") == ("first",)
        monkeypatch.setattr(threading.Thread, "start", real_start)
        vc_threads = [
            n
            for n in started
            if n.startswith(("ipc-dial", "ipc-handshake", "ipc-tcp", "ipc-unix", "ipc-vc"))
        ]
        client_threads = [n for n in vc_threads if n != "ipc-handshake"]
        assert len(client_threads) == 1 and vc_threads.count("ipc-handshake") == 1, started
        assert not client_threads[0].startswith("ipc-dial"), started  # (dialed inline)
        assert _dialed_vc_threads() == 1  # the VC's reader thread
        assert client.call(ctx(), name, "Echo", "again") == ("again",)
    finally:
        client.close()
    assert _settle(lambda: _dialed_vc_threads() == 0)


def test_a_vc_out_of_flow_ids_is_replaced_and_its_calls_end_as_they_would(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A VC that has used its 2^31 flow ids (days of calls at full speed) cannot open one
    more: it was evicted like a broken VC, closed, and a call still running on it failed
    with request_sent=True (not retried, though the server may have run it). It retires
    now: the call in flight ends normally and new calls go to a new VC."""
    from ipcclient.wire.frames import MAX_FLOW_ID

    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    (old,) = client._vcs.values()
    running = client.start_call(ctx(), name, "Count", [2])
    mux = old._mux
    with old._lock:  # (as if the ids had been used: the fault cannot be had sooner)
        beyond = mux._next_id + 2 * ((MAX_FLOW_ID - mux._next_id) // 2 + 1)
        mux._next_id = beyond  # (the next id is above the largest)
        mux._opened_upto = beyond - 2
    assert client.call(ctx(), name, "Echo", "a") == ("a",)
    assert client.stats["dials"] == 2
    assert list(running) == [0, 1] and running.finish() == (2,)
    assert old.wait_closed(5)  # (closed after its last call)


def test_a_fork_while_a_thread_holds_the_clients_lock_leaves_the_child_a_usable_client(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The client's lock, taken by its threads on every general-path call, was inherited
    locked when another thread held it at the fork: the child's first call waited for it
    forever, whatever its deadline (the thread holding it does not exist in the child)."""
    _, name = make_server(Svc(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", "parent") == ("parent",)

    def child() -> None:
        signal.alarm(10)  # (a child stuck on the lock dies instead of hanging the test)
        assert client.call(ctx(5), name, "Echo", "child") == ("child",)
        signal.alarm(0)

    with client._lock:  # (as a thread of the parent in a call's bookkeeping at the fork)
        _in_child(child)
    assert client.call(ctx(), name, "Echo", "parent again") == ("parent again",)


@pytest.mark.interpreted  # (replaces a method of the compiled Dialing class)
def test_a_fault_on_this_side_during_a_dial_is_not_blamed_on_the_server(
    make_server: MakeServer,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dial that fails with neither an IPCError nor an OSError (a bug, a platform without
    something the transport uses) is an InternalError saying it is this side's, logged with
    its traceback; not a ConnectionFailed asking whether the server is running."""
    from ipcclient.transport import dial

    _server, name = make_server(Svc(), AllowEveryone())

    def broken(self: Any, until: float) -> bool:
        raise AttributeError("module 'os' has no attribute 'pipe2'")

    monkeypatch.setattr(dial.Dialing, "_handshake_step", broken)
    with caplog.at_level("ERROR", logger="ipcclient"), pytest.raises(errors.IPCError) as info:
        make_client().call(ctx(), name, "Echo", 1, options=[NoRetry()])
    text = str(info.value)
    assert "failed on this side" in text and "pipe2" in text, text
    assert "is the server running" not in text
    assert any(r.exc_info and "pipe2" in str(r.exc_info[1]) for r in caplog.records)
