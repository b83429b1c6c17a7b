"""RPC semantics end to end over loopback: the seed's call rules, streaming, errors."""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import context, errors, vtrace
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Results, Server, ServerCall
from tests.rpc.test_mounttable import wait_until

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Service:
    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.seen_deadline: float | None = None
        self.lock = threading.Lock()

    def Echo(self, call: ServerCall, x: Any) -> Any:
        with self.lock:
            self.calls += 1
        return x

    def Nothing(self, call: ServerCall) -> None:
        return None

    def Pair(self, call: ServerCall, a: Any, b: Any) -> Results:
        return Results(b, a)

    def Optional(self, call: ServerCall, a: Any, b: Any = 2, *rest: Any) -> int:
        return a + b + len(rest)

    def Count(self, call: ServerCall, n: int) -> str:
        for i in range(n):
            call.send(i)
        return "done"

    def Sum(self, call: ServerCall) -> int:
        return sum(call)

    def EchoStream(self, call: ServerCall) -> int:
        n = 0
        for item in call:
            call.send(item * 2)
            n += 1
        return n

    def Fail(self, call: ServerCall, kind: str) -> None:
        if kind == "noexist":
            raise errors.NoExistError("no such thing", "thing")
        if kind == "custom":
            raise errors.IPCError(
                "quota", id="com.example.Quota", action=errors.RetryAction.NO_RETRY
            )
        if kind == "SystemExit":
            raise SystemExit(3)
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt("stop it")
        if kind == "GeneratorExit":
            raise GeneratorExit("closing")
        if kind == "params":  # (params that are not plain values)
            raise errors.NoExistError("no such key", object(), {1, 2})
        if kind == "huge":  # (over the 4 MiB message limit once encoded)
            raise errors.NoExistError("y" * (5 << 20), "key")
        if kind == "surrogate":  # (as in a file name read with surrogateescape)
            raise ValueError("no file \udcff here")
        raise ZeroDivisionError("boom")

    def ReplyAt(self, call: ServerCall, at: float) -> str:
        """Reply once ``time.monotonic()`` reaches ``at`` (client and server share the clock)."""
        time.sleep(max(0.0, at - time.monotonic()))
        return "late"

    def Block(self, call: ServerCall) -> str:
        self.seen_deadline = call.context.deadline
        self.started.set()
        if call.context.wait(10):
            self.cancelled.set()
            return "cancelled"
        return "not cancelled"

    def Burst(self, call: ServerCall, n: int) -> str:
        for i in range(n):
            call.send(i)
        # Items sent in a burst may be held back briefly to share a record: they must still
        # reach the client while the method goes on with something else.
        self.started.set()
        call.context.wait(10)
        return "released"

    def EveryOther(self, call: ServerCall) -> int:
        with self.lock:
            self.calls += 1
            n = self.calls
        if n % 2:
            raise errors.InternalError("try again", action=errors.RetryAction.RETRY_BACKOFF)
        return n

    def Where(self, call: ServerCall) -> str:
        return threading.current_thread().name

    def SumWhere(self, call: ServerCall) -> list[Any]:
        return [sum(call), threading.current_thread().name]

    def ReturnsEarly(self, call: ServerCall) -> str:
        return "early"

    def Unencodable(self, call: ServerCall) -> object:
        return object()

    def BadNote(self, call: ServerCall) -> int:
        span = vtrace.current_span(call.context)
        assert span is not None
        span.annotate("a path \udcff")  # (surrogate-escaped text has no CBOR form)
        return 1


@pytest.fixture
def rig(make_server: MakeServer, make_client: MakeClient) -> tuple[Service, str, Client]:
    svc = Service()
    _, name = make_server(svc, AllowEveryone())
    return svc, name, make_client()


def ctx(seconds: float = 10.0) -> Context:
    return Context.background().with_timeout(seconds)


def test_unary_results(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    assert client.call(ctx(), name, "Echo", {"a": [1, b"2"]}) == ({"a": [1, b"2"]},)
    assert client.call(ctx(), name, "Nothing") == ()
    assert client.call(ctx(), name, "Pair", 1, "x") == ("x", 1)
    assert client.call(ctx(), name, "Optional", 1) == (3,)
    assert client.call(ctx(), name, "Optional", 1, 5, 7, 7) == (8,)


def test_server_streaming_and_iteration(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Count", [5])
    assert list(call) == [0, 1, 2, 3, 4]
    with pytest.raises(errors.EndOfStreamError):
        call.recv()
    with pytest.raises(EOFError):  # the end of stream is also an EOFError
        call.recv()
    assert call.finish() == ("done",)


def test_client_streaming_and_bidi(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Sum")
    for i in range(100):
        call.send(i)
    assert call.finish() == (4950,)
    with client.start_call(ctx(), name, "EchoStream") as bidi:
        got = []
        for i in range(20):
            bidi.send(i)
            got.append(bidi.recv())
        bidi.close_send()
        assert list(bidi) == []
        assert bidi.finish() == (20,)
    assert got == [i * 2 for i in range(20)]


def test_finish_closes_send_implicitly(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Sum")
    call.send(1)
    call.send(2)
    assert call.finish() == (3,)  # the server was waiting in recv: finish unblocked it


def test_send_after_close_send_is_aborted_and_finish_still_works(
    rig: tuple[Service, str, Client],
) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Sum")
    call.send(5)
    call.close_send()
    call.close_send()  # idempotent
    with pytest.raises(errors.AbortedError):
        call.send(6)
    assert call.finish() == (5,)


def test_second_finish_is_bad_state(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Echo", [1])
    assert call.finish() == (1,)
    with pytest.raises(errors.BadStateError):
        call.finish()


def test_finish_with_unread_stream_results_is_bad_state(
    rig: tuple[Service, str, Client],
) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Count", [3])
    with pytest.raises(errors.BadStateError, match="still streaming results"):
        call.finish()
    # The same method called with Client.call, which never calls finish(): the error says
    # what to do, not that finish() was called.
    with pytest.raises(errors.BadStateError, match="the method streams results") as info:
        client.call(ctx(), name, "Count", 3)
    assert "finish() was called" not in info.value.msg


def test_result_count_is_checked(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "Pair", [1, 2])
    with pytest.raises(errors.BadProtocolError, match="2 results, client expected 1"):
        call.finish(nresults=1)
    assert client.start_call(ctx(), name, "Pair", [1, 2]).finish(nresults=2) == (2, 1)


def test_server_errors_arrive_typed(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    with pytest.raises(errors.NoExistError) as info:
        client.call(ctx(), name, "Fail", "noexist")
    assert info.value.params == ("thing",)
    assert info.value.request_sent is True
    with pytest.raises(errors.IPCError) as custom:
        client.call(ctx(), name, "Fail", "custom")
    assert custom.value.id == "com.example.Quota"
    with pytest.raises(errors.UnknownError, match="ZeroDivisionError"):
        client.call(ctx(), name, "Fail", "bug")
    # The server survived its user's bug.
    assert client.call(ctx(), name, "Echo", "still up") == ("still up",)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_a_base_exception_in_a_method_reaches_the_client_as_unknown(
    rig: tuple[Service, str, Client], kind: str
) -> None:
    """A method raising an exception that is not an Exception is answered like any other:
    ipc.Unknown with its type and message (not raised again on the server: the worker, or
    the VC's reader thread, goes on serving), on the short way and on the general one."""
    _, name, client = rig
    with pytest.raises(errors.UnknownError, match=kind) as unary:
        client.call(ctx(), name, "Fail", kind)
    with pytest.raises(errors.UnknownError, match=kind) as general:
        client.start_call(ctx(), name, "Fail", [kind]).finish()
    assert unary.value.msg == general.value.msg
    assert client.call(ctx(), name, "Echo", "still up") == ("still up",)


class _Raises:
    """An authorizer that raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def authorize(self, call: Any) -> None:
        raise self.exc


def test_an_authorizer_raising_a_base_exception_is_answered(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, name = make_server(Service(), _Raises(KeyboardInterrupt("in the authorizer")))
    client = make_client()
    for _ in range(2):
        with pytest.raises(errors.UnknownError, match="KeyboardInterrupt: in the authorizer"):
            client.call(ctx(), name, "Echo", 1)


def test_an_error_without_a_wire_form_still_reaches_the_client(
    rig: tuple[Service, str, Client], caplog: pytest.LogCaptureFixture
) -> None:
    """An error the server cannot encode as it is (params that are not plain values, a
    message over the message limit, a message that is not valid text) reaches the client as
    a stand-in it can read: the same ID, the message escaped and cut, the params dropped
    when they cannot travel; the server logs a warning."""
    _, name, client = rig
    with caplog.at_level(logging.WARNING, logger="ipcclient.server"):
        with pytest.raises(errors.NoExistError) as params:
            client.call(ctx(), name, "Fail", "params")
        assert params.value.msg.startswith("no such key") and params.value.params == ()
        assert "params not sent" in params.value.msg
        with pytest.raises(errors.NoExistError) as huge:
            client.start_call(ctx(), name, "Fail", ["huge"]).finish()
        assert huge.value.msg.startswith("yyyy")
        assert len(huge.value.msg) <= errors.MAX_WIRE_MSG_LEN
        assert huge.value.params == ("key",)
        with pytest.raises(errors.UnknownError) as surrogate:
            client.call(ctx(), name, "Fail", "surrogate")
        assert surrogate.value.msg == "ValueError: no file \\udcff here"
    logged = [r for r in caplog.records if "cannot send error" in r.getMessage()]
    assert len(logged) == 3 and all(r.levelno == logging.WARNING for r in logged)
    assert client.call(ctx(), name, "Echo", "still up") == ("still up",)


def test_unknown_method_suffix_and_arg_counts(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    with pytest.raises(errors.UnknownMethodError):
        client.call(ctx(), name, "NoSuchMethod")
    with pytest.raises(errors.UnknownMethodError):
        client.call(ctx(), name, "_private")
    with pytest.raises(errors.UnknownSuffixError):
        client.call(ctx(), name + "/deeper", "Echo", 1)
    with pytest.raises(errors.BadArgError, match="wrong number of input arguments"):
        client.call(ctx(), name, "Echo")
    with pytest.raises(errors.BadArgError, match="wrong number of input arguments"):
        client.call(ctx(), name, "Echo", 1, 2)
    with pytest.raises(errors.InternalError, match="cannot encode results"):
        client.call(ctx(), name, "Unencodable")


def test_a_method_found_once_is_still_checked_on_every_call(
    rig: tuple[Service, str, Client],
) -> None:
    """The server keeps what it found of a served object's method (see FlowServing._find):
    the arity, the suffix and the authorizer still apply to every later call."""
    _, name, client = rig
    for _ in range(3):
        assert client.call(ctx(), name, "Echo", 1) == (1,)
        with pytest.raises(errors.BadArgError, match="wrong number of input arguments"):
            client.call(ctx(), name, "Echo")
        with pytest.raises(errors.BadArgError, match="wrong number of input arguments"):
            client.call(ctx(), name, "Echo", 1, 2)
        with pytest.raises(errors.UnknownSuffixError):
            client.call(ctx(), name + "/deeper", "Echo", 1)
        with pytest.raises(errors.UnknownMethodError):
            client.call(ctx(), name, "NoSuchMethod")


def test_bad_arguments_on_the_client_side(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    with pytest.raises(errors.BadArgError):
        client.call(None, name, "Echo", 1)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError) as unencodable:
        client.call(ctx(), name, "Echo", object())
    assert unencodable.value.request_sent is False
    with pytest.raises(errors.BadArgError):
        client.start_call(ctx(), name, "Echo", [1], "not an option")  # type: ignore[arg-type]


def test_a_method_name_without_a_wire_form_is_bad_arg_and_leaves_nothing(
    rig: tuple[Service, str, Client],
) -> None:
    _, name, client = rig
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    (conn,) = client._vcs.values()
    for _ in range(2):  # the second time from the VC's caches (the short way's checks)
        with pytest.raises(errors.BadArgError) as raised:
            client.call(ctx(), name, "Ech\udcff", 1)
        assert raised.value.request_sent is False
        with pytest.raises(errors.BadArgError):
            client.start_call(ctx(), name, "Ech\udcff", [1])
        gc.collect()
        assert conn.flow_count == 0 and not client._abandoned
    assert client.call(ctx(), name, "Echo", 2) == (2,)


def test_span_notes_without_a_wire_form_are_an_internal_error(
    rig: tuple[Service, str, Client],
) -> None:
    _, name, client = rig
    traced, _span = vtrace.with_collection(ctx())
    with pytest.raises(errors.InternalError, match="cannot encode results"):
        client.call(traced, name, "BadNote")


def test_cancel_reaches_the_server_and_wakes_the_caller(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    call = client.start_call(ctx(), name, "Block")
    assert svc.started.wait(5)
    result: list[BaseException] = []

    def finish() -> None:
        try:
            call.finish()
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=finish)
    t.start()
    time.sleep(0.05)
    call.cancel()
    t.join(5)
    assert result and isinstance(result[0], errors.CanceledError)
    assert svc.cancelled.wait(5)  # the server's context was cancelled


def test_context_cancel_cancels_the_call(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    c = Context.background().with_timeout(10)
    call = client.start_call(c, name, "Block")
    assert svc.started.wait(5)
    threading.Timer(0.05, c.cancel).start()
    with pytest.raises(errors.CanceledError):
        call.finish()
    assert svc.cancelled.wait(5)


def test_deadline_travels_and_times_out(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    start = time.monotonic()
    with pytest.raises(errors.TimeoutError) as info:
        client.call(Context.background().with_timeout(0.3), name, "Block")
    assert time.monotonic() - start < 3
    assert info.value.request_sent is True
    assert svc.seen_deadline is not None
    assert svc.seen_deadline - start < 1.0  # the server's context got the call's deadline
    assert svc.cancelled.wait(5)  # and the server's work was cancelled


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("timeout", [1e10, float("inf")])
def test_a_deadline_years_away_is_waited_for_like_any_other(
    rig: tuple[Service, str, Client], timeout: float
) -> None:
    """A context whose deadline is centuries away (or infinitely far) works as any other:
    the waits are made in slices the system calls accept (they once raised a bare
    OverflowError). Four calls in flight at once, so that callers also wait while the VC's
    reader thread reads for them, and one alone, which reads its own reply."""
    _svc, name, client = rig
    far = Context.background().with_timeout(timeout)
    outcomes: list[object] = []

    def caller(i: int) -> None:
        try:
            outcomes.append(client.call(far, name, "ReplyAt", time.monotonic() + 0.05)[0] + str(i))
        except BaseException as exc:  # (the test checks what every caller got)
            outcomes.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    caller(4)
    assert sorted(map(str, outcomes)) == [f"late{i}" for i in range(5)], outcomes
    # The context's deadline is scheduled on the process's timer thread too, whose wait it
    # once ended (an OverflowError there stopped every deadline's callbacks in the process).
    assert context._TIMER._thread is not None and context._TIMER._thread.is_alive()
    near = Context.background().with_timeout(0.05)
    fired = threading.Event()
    near.add_done_callback(lambda _err: fired.set())
    assert fired.wait(5)


def test_call_object_as_context_manager(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    with client.start_call(ctx(), name, "Sum") as call:
        call.send(2)
    assert call.ended
    with pytest.raises(RuntimeError), client.start_call(ctx(), name, "Block") as blocked:
        assert svc.started.wait(5)
        raise RuntimeError("user code failed")
    assert blocked.ended
    assert svc.cancelled.wait(5)  # leaving with an error cancelled the call


def test_dropped_call_warns_and_is_cancelled(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    call = client.start_call(ctx(), name, "Block")
    assert svc.started.wait(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del call
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    client.call(ctx(), name, "Echo", 1)  # the client reaps dropped calls on its next call
    assert svc.cancelled.wait(5)


def test_handler_returning_early_ends_client_streaming(rig: tuple[Service, str, Client]) -> None:
    _, name, client = rig
    call = client.start_call(ctx(), name, "ReturnsEarly")
    assert call.finish() == ("early",)
    with pytest.raises(errors.AbortedError):
        call.send(1)


def test_late_reply_is_never_delivered_to_another_call(rig: tuple[Service, str, Client]) -> None:
    _svc, name, client = rig
    with pytest.raises(errors.TimeoutError):
        client.call(Context.background().with_timeout(0.2), name, "Block")
    # The VC is reused; the cancelled flow's late frames are dropped by id, never reused.
    for i in range(20):
        assert client.call(ctx(), name, "Echo", i) == (i,)
    assert client.vc_count() == 1


def test_a_reply_sent_after_the_deadline_is_never_the_answer(
    rig: tuple[Service, str, Client],
) -> None:
    # Eight calls in flight on one VC, so its reader thread receives the replies for them.
    # Each server replies just after its caller's deadline; however late a caller wakes,
    # a reply received after its deadline is not its answer.
    _svc, name, client = rig
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    outcomes: list[object] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(6):
            c = Context.background().with_timeout(0.04)
            assert c.deadline is not None
            try:
                got: object = client.call(c, name, "ReplyAt", c.deadline + 0.0005)
            except errors.IPCError as exc:
                got = exc
            with lock:
                outcomes.append(got)

    stop = threading.Event()

    def spin() -> None:  # (holds the GIL in turns: the callers wake late, as on a busy host)
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    spinners = [threading.Thread(target=spin) for _ in range(2)]
    for t in spinners + threads:
        t.start()
    for t in threads:
        t.join(20)
    stop.set()
    for t in spinners:
        t.join(5)
    assert len(outcomes) == 48
    assert all(isinstance(o, errors.TimeoutError) for o in outcomes), [
        o for o in outcomes if not isinstance(o, errors.TimeoutError)
    ]
    assert client.call(ctx(), name, "Echo", 1) == (1,)
    assert client.vc_count() == 1


def test_no_retry_of_application_errors(rig: tuple[Service, str, Client]) -> None:
    svc, name, client = rig
    before = svc.calls
    with pytest.raises(errors.BadArgError):
        client.call(ctx(), name, "Echo", options=[NoRetry()])
    assert svc.calls == before


def test_the_args_of_one_call_are_bounded_in_total(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    from ipcclient.server.server import ServerOptions

    _, name = make_server(Service(), AllowEveryone(), options=ServerOptions(max_args_bytes=10_000))
    client = make_client()
    assert client.call(ctx(), name, "Pair", b"x" * 4000, b"y" * 4000) == (b"y" * 4000, b"x" * 4000)
    # Exactly at the bound (each arg's body is 3 bytes of CBOR head and its bytes): the end
    # of args after them, in the same read, is not args.
    a, b = b"x" * 4997, b"y" * 4997
    assert client.call(ctx(), name, "Pair", a, b) == (b, a)
    for size in (4998, 6000):  # one byte over, and well over
        with pytest.raises(errors.OverloadedError, match="allowed for one call") as info:
            client.call(ctx(), name, "Pair", b"x" * size, b"y" * size)
        assert info.value.action is errors.RetryAction.NO_RETRY  # the same call: refused again
    assert client.call(ctx(), name, "Pair", a, b) == (b, a)  # the VC's budget was given back


def test_bulk_args_results_and_stream_items_arrive_intact(
    rig: tuple[Service, str, Client],
) -> None:
    # Bulk byte strings travel as their own pieces (never joined) and are sealed and opened
    # through the VC's reused buffers: several in one request, mixed with small values,
    # streamed both ways, and sizes around the record and window boundaries.
    import os

    _, name, client = rig
    a, b = os.urandom((1 << 20) + 3), os.urandom(256 * 1024)
    assert client.call(ctx(), name, "Pair", a, b) == (b, a)
    for size in (4095, 4096, 65_535, 65_536, 262_144, 262_145, (1 << 20) - 40, 3 << 20):
        blob = os.urandom(size)
        assert client.call(ctx(), name, "Echo", blob) == (blob,)
    call = client.start_call(ctx(), name, "EchoStream")
    items = [os.urandom(n) for n in (10, 70_000, 300_000, 5)]
    for item in items:
        call.send(item)
        assert call.recv() == item * 2
    assert call.finish() == (4,)


def test_items_of_a_burst_arrive_while_the_method_is_still_busy(
    rig: tuple[Service, str, Client],
) -> None:
    service, name, client = rig
    call = client.start_call(ctx(), name, "Burst", [50])
    deadline = time.monotonic() + 5
    got = [call.recv() for _ in range(50)]
    assert got == list(range(50))
    assert time.monotonic() < deadline
    assert service.started.is_set()
    call.cancel()


# --- the fast path of a usual unary call (ipcclient.client.fast) -------------------------------
def _count_call_objects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import ipcclient.client.api as client_mod

    made = [0]
    real = client_mod.Call

    def counting(*a: Any, **k: Any) -> Any:
        made[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(client_mod, "Call", counting)
    return made


def test_a_warm_unary_call_takes_the_short_way(
    rig: tuple[Service, str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, name, client = rig
    made = _count_call_objects(monkeypatch)
    assert client.call(ctx(), name, "Echo", 1) == (1,)  # first: resolves, dials, authorizes
    assert made[0] == 1
    for i in range(20):  # the first authorizes the server for this method too
        assert client.call(ctx(), name, "Pair", i, "x") == ("x", i)
    assert made[0] == 2  # then no call object, stream or retry loop for the usual call
    assert client.stats["calls_started"] == 21
    assert client.call(ctx(), name, "Echo", 2, options=[NoRetry()]) == (2,)  # options: general
    assert made[0] == 3


def test_short_and_general_ways_raise_the_same_errors(
    rig: tuple[Service, str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, name, client = rig
    made = _count_call_objects(monkeypatch)

    def outcome(method: str, *args: Any, seconds: float = 10.0) -> tuple[Any, ...]:
        try:
            return ("ok", client.call(ctx(seconds), name, method, *args))
        except errors.IPCError as exc:
            return (type(exc), exc.id, exc.action, exc.request_sent)

    cases: list[tuple[str, tuple[Any, ...], float]] = [
        ("Fail", ("noexist",), 10.0),
        ("Fail", ("custom",), 10.0),
        ("Fail", ("boom",), 10.0),
        ("NoSuchMethod", (), 10.0),
        ("Echo", (), 10.0),  # wrong number of args
        ("Count", (2,), 10.0),  # streams results to a unary call
        ("Unencodable", (), 10.0),
        ("Block", (), 0.3),  # deadline
    ]
    for method, args, seconds in cases:
        general = _general_outcome(client, name, method, args, seconds)
        first = outcome(method, *args, seconds=seconds)  # (the server is authorized now)
        before = made[0]
        fast = outcome(method, *args, seconds=seconds)
        assert made[0] == before, method  # the short way
        assert first == general == fast, method


def _general_outcome(
    client: Client, name: str, method: str, args: tuple[Any, ...], seconds: float
) -> tuple[Any, ...]:
    # The general path: a call with an option never takes the short way.
    try:
        return ("ok", client.call(ctx(seconds), name, method, *args, options=[NoRetry()]))
    except errors.IPCError as exc:
        return (type(exc), exc.id, exc.action, exc.request_sent)


def test_short_way_is_cancelled_by_its_context_and_by_close(
    rig: tuple[Service, str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, name, client = rig
    made = _count_call_objects(monkeypatch)
    with pytest.raises(errors.TimeoutError):  # warms the Block method's authorization
        client.call(ctx(0.2), name, "Block")
    before = made[0]
    service.started.clear()
    c = Context.background().with_cancel()
    threading.Timer(0.2, c.cancel).start()
    with pytest.raises(errors.CanceledError) as info:
        client.call(c, name, "Block")
    assert info.value.request_sent is True
    assert made[0] == before  # it was the short way
    assert service.cancelled.wait(5)  # and the server's context was cancelled too
    service.started.clear()
    threading.Timer(0.2, client.close).start()
    with pytest.raises(errors.CanceledError):
        client.call(ctx(), name, "Block")


def test_short_way_retries_a_server_error_that_asks_for_it(
    rig: tuple[Service, str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, name, client = rig
    assert client.call(ctx(), name, "EveryOther") == (2,)  # general path: fails, retried
    made = _count_call_objects(monkeypatch)
    assert client.call(ctx(), name, "EveryOther") == (4,)  # short way fails; the loop retries
    assert made[0] == 1  # (the retry takes the general path)
    assert service.calls == 4


def test_short_way_sends_nothing_for_a_context_already_done(
    rig: tuple[Service, str, Client],
) -> None:
    service, name, client = rig
    assert client.call(ctx(), name, "Echo", 0) == (0,)  # warm
    before = service.calls
    cancelled = Context.background().with_cancel()
    cancelled.cancel()
    expired = Context.background().with_timeout(0.001)
    time.sleep(0.01)
    for done, kind in ((cancelled, errors.CanceledError), (expired, errors.TimeoutError)):
        for _ in range(20):
            with pytest.raises(kind) as info:
                client.call(done, name, "Echo", 1)
            assert info.value.request_sent is False
    time.sleep(0.1)
    assert service.calls == before  # the server never ran one of them


def test_short_way_cancel_wakes_a_write_blocked_on_flow_control(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    from ipcclient.server.server import ServerOptions

    service = Service()
    _, name = make_server(
        service,
        AllowEveryone(),
        options=ServerOptions(workers=1, max_workers=1, max_queued=1, inline_calls=False),
    )
    client = make_client()
    assert client.call(ctx(), name, "Echo", 1) == (1,)  # warm: the next Echo is short
    holder = Context.background().with_cancel()
    outcomes: list[Any] = []

    def hold() -> None:
        try:
            outcomes.append(client.call(holder, name, "Block"))
        except errors.IPCError as exc:
            outcomes.append(exc)

    held = threading.Thread(target=hold, daemon=True)
    held.start()  # the only worker is busy: nobody reads the big request's args
    assert service.started.wait(5)
    c = Context.background().with_cancel()  # no deadline: only the cancel can end it
    threading.Timer(0.3, c.cancel).start()
    start = time.monotonic()
    with pytest.raises(errors.CanceledError):
        client.call(c, name, "Echo", b"x" * (3 * 1024 * 1024))  # 3x the flow's window
    assert time.monotonic() - start < 5
    holder.cancel()
    held.join(5)
    assert len(outcomes) == 1  # the held call ended too (cancelled, or its result)


def test_short_way_refuses_bad_names_and_methods_as_the_general_way(
    rig: tuple[Service, str, Client],
) -> None:
    _, name, client = rig
    assert client.call(ctx(), name, "Echo", 0) == (0,)  # warm
    for bad_name, bad_method in ((["x"], "Echo"), (None, "Echo"), (b"/x", "Echo")):
        with pytest.raises(errors.BadArgError):
            client.call(ctx(), bad_name, bad_method)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        client.call(ctx(), name, ["Echo"])  # type: ignore[arg-type]


def test_short_way_follows_a_replaced_namespace(
    rig: tuple[Service, str, Client], make_server: MakeServer
) -> None:
    from ipcclient.naming.namespace import Namespace

    service, name, client = rig
    other = Service()
    _, other_name = make_server(other, AllowEveryone())
    assert client.call(ctx(), name, "Echo", 1) == (1,)  # warm: planned for this name

    class Redirect(Namespace):
        def resolve(self, c: Context, n: str) -> Any:
            return super().resolve(c, other_name if n == name else n)

    client.namespace = Redirect()  # (rooted names resolve without calling anyone)
    assert client.call(ctx(), name, "Echo", 2) == (2,)
    assert other.calls == 1 and service.calls == 1  # the new namespace decided


# --- calls run on the VC's reader thread (ServerOptions.inline_calls) -------------------------
def test_a_complete_request_runs_on_the_vcs_reader_thread(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    from ipcclient.server.server import ServerOptions

    _, name = make_server(Service(), AllowEveryone())
    client = make_client()
    (where,) = client.call(ctx(), name, "Where")
    assert where.startswith("ipc-vc-")  # no hop to a worker
    call = client.start_call(ctx(), name, "SumWhere")  # streamed args: not complete on arrival
    for i in range(3):
        call.send(i)
    total, where = call.finish()[0]
    assert total == 3 and where.startswith("ipc-server-")
    # With another call in flight on the VC (streaming, on a worker), still on the reader.
    other = client.start_call(ctx(), name, "SumWhere")
    other.send(1)
    (where,) = client.call(ctx(), name, "Where")
    assert where.startswith("ipc-vc-")
    assert other.finish()[0][0] == 1
    _, pooled = make_server(Service(), AllowEveryone(), options=ServerOptions(inline_calls=False))
    (where,) = client.call(ctx(), pooled, "Where")
    assert where.startswith("ipc-server-")


def test_a_long_inline_call_does_not_hold_up_its_vc(rig: tuple[Service, str, Client]) -> None:
    service, name, client = rig
    block_ctx = Context.background().with_timeout(10)
    blocked: list[Any] = []

    def block() -> None:
        try:
            blocked.append(client.call(block_ctx, name, "Block"))
        except errors.IPCError as exc:
            blocked.append(exc)

    t = threading.Thread(target=block)
    t.start()
    assert service.started.wait(5)  # Block runs on the VC's reader thread
    start = time.monotonic()
    for i in range(20):  # same client, same VC: a helper reads for the VC meanwhile
        assert client.call(ctx(), name, "Echo", i) == (i,)
    assert client.vc_count() == 1
    assert time.monotonic() - start < 5
    block_ctx.cancel()  # and the cancel reaches the blocked call
    t.join(5)
    assert service.cancelled.wait(5)
    assert len(blocked) == 1 and isinstance(blocked[0], errors.CanceledError)


@pytest.mark.parametrize("how", ["cancel", "deadline", "deadline-after-the-reply"])
def test_no_item_is_handed_out_after_the_call_ended(
    rig: tuple[Service, str, Client], how: str
) -> None:
    """recv and iteration once went on returning the items already received after cancel
    (or the deadline), then ended normally, as if the call had succeeded. A reply that was
    complete by the deadline is the answer, though (docs/protocol.md 5.5): its items are
    handed out after the deadline, and finish returns its results."""
    service, name, client = rig
    open_reply = how == "deadline"  # (the method waits after its items: no end yet)
    method = "Burst" if open_reply else "Count"
    call = client.start_call(ctx(10.0 if how == "cancel" else 1.0), name, method, [2000])
    if open_reply:
        assert service.started.wait(5.0)  # (every item is sent)
        assert wait_until(lambda: len(call._stream.flow._inbox) > 0, 5.0)
    else:
        assert wait_until(lambda: call._stream.flow.peer_done, 5.0)  # every item is here
    assert call.recv() == 0
    assert len(call._stream._pending) > 10  # (received, decoded, not handed out yet)
    if how == "cancel":
        call.cancel()
    else:
        assert wait_until(call.context.done, 5.0)
    if how == "deadline-after-the-reply":
        assert list(call) == list(range(1, 2000))
        assert call.finish() == ("done",)
        return
    expected = errors.CanceledError if how == "cancel" else errors.TimeoutError
    for _ in range(2):
        with pytest.raises(expected):
            call.recv()
    with pytest.raises(expected):
        for _item in call:
            pass


@expose
class _Slurper:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.outcome: list[Any] = []

    def Slurp(self, call: ServerCall) -> int:
        assert wait_until(lambda: call._flow.peer_done, 5.0)  # every item is here, none handed out
        self.ready.set()
        assert wait_until(call.context.done, 5.0)  # the client cancelled
        n = 0
        try:
            for _item in call:
                n += 1
        except errors.IPCError as exc:
            self.outcome.append((n, type(exc)))
        return n


def test_a_server_is_handed_no_item_after_the_client_cancelled(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    svc = _Slurper()
    _, name = make_server(svc, AllowEveryone())
    call = make_client().start_call(ctx(), name, "Slurp")
    for i in range(200):
        call.send(i)
    call.close_send()
    assert svc.ready.wait(5)
    call.cancel()
    assert wait_until(lambda: bool(svc.outcome), 5.0)
    assert svc.outcome == [(0, errors.CanceledError)]


@expose
class _BigResults:
    def Big(self, call: ServerCall, k: int) -> Results:
        return Results(*(b"r" * (4 * 1024 * 1024 - 5) for _ in range(k)))  # (each one message)


@pytest.mark.parametrize("path", ["call", "finish", "iterate"])
def test_the_results_budget_is_the_same_on_every_path(
    make_server: MakeServer, make_client: MakeClient, path: str
) -> None:
    """16 results of 4 MiB fit in MAX_RESULTS_BYTES (64 MiB) and 17 do not, however they are
    reached: finish and iteration once let one more result through (the budget was set a
    second time, forgetting a result already counted)."""
    _, name = make_server(_BigResults(), AllowEveryone())
    client = make_client()

    def results(k: int) -> tuple[Any, ...]:
        if path == "call":
            return client.call(ctx(60), name, "Big", k)
        call = client.start_call(ctx(60), name, "Big", [k])
        if path == "iterate":
            assert list(call) == []
        return call.finish()

    assert sum(map(len, results(16))) == 16 * (4 * 1024 * 1024 - 5)
    with pytest.raises(errors.BadProtocolError, match="exceed the total allowed"):
        results(17)
