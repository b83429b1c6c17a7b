"""When a call cannot succeed: it fails fast, with the right error, saying why.

Over real loopback sockets, a real mount table and real servers: a name that is not mounted,
a relative name without roots, servers that refuse connections, arguments over the message
limits, one retry window per call, misuse of the call object, messages a person can act on,
and the DEBUG/INFO story in the logs. The rendezvous (a call waiting for a server that is
published after it started) still works when asked for.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipcclient
from ipcclient import codec, errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint
from ipcclient.naming.namespace import MountEntry, Namespace
from ipcclient.options import (
    ClientOptions,
    NoRetry,
    RetryTimeout,
    WaitForReady,
)
from ipcclient.retry import BackoffPolicy, RetryBudget
from ipcclient.security import Principal
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import MountTable
from ipcclient.server.server import Server, ServerCall
from ipcclient.transport.conn import Flow, KeepaliveConfig
from tests.conftest import Family, refuse_threads

pytestmark = pytest.mark.timeout(60)

FOUR_MIB = 4 * 1024 * 1024


@expose
class Svc:
    """A small service that counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.items: list[Any] = []

    def Echo(self, call: ServerCall, value: Any) -> Any:
        self.calls += 1
        return value

    def Count(self, call: ServerCall) -> int:
        self.calls += 1
        n = 0
        for item in call:
            self.items.append(item)
            n += 1
        return n

    def Stream(self, call: ServerCall, n: int) -> int:
        self.calls += 1
        for i in range(n):
            call.send(i)
        return n

    def StreamThenWait(self, call: ServerCall, n: int, seconds: float) -> int:
        self.calls += 1
        for i in range(n):
            call.send(i)
        call.context.wait(seconds)  # (the reply is not complete before this ends)
        return n

    def Busy(self, call: ServerCall) -> None:
        self.calls += 1
        raise errors.OverloadedError("svc: busy")

    def Gen(self, call: ServerCall) -> Any:
        yield 1

    async def Async(self, call: ServerCall) -> int:
        return 1

    async def AsyncGen(self, call: ServerCall) -> Any:
        yield 1

    def Sleep(self, call: ServerCall, seconds: float) -> str:
        self.calls += 1
        call.context.wait(seconds)
        return "slept"


def ctx(seconds: float | None = 5.0) -> Context:
    if seconds is None:
        return Context.background()
    return Context.background().with_timeout(seconds)


def free_address() -> str:
    """A loopback TCP address nobody listens on (connections to it are refused)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = "%s:%d" % probe.getsockname()
    probe.close()
    return address


def refused_name(address: str | None = None) -> str:
    ep = Endpoint(
        "tcp", address or free_address(), blessings=("root:server",), min_version=1, max_version=1
    )
    return "/" + str(ep)


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


def serve(stack: contextlib.ExitStack, family: Family, obj: Any, *, table: bool = False) -> str:
    server = Server(family.member("mt" if table else "server"), serves_mount_table=table)
    stack.callback(server.stop)
    ep = server.listen("tcp", "127.0.0.1:0")
    if table:
        server.serve_dispatcher(MountTable())
    else:
        server.serve(obj, AllowEveryone())
    return "/" + ep


def client(stack: contextlib.ExitStack, family: Family, **kw: Any) -> Client:
    c = Client(family.member("client"), **kw)
    stack.callback(c.close)
    return c


def mount(c: Client, table: str, name: str, server: str) -> None:
    at = names.join_address_name(table, name, terminal=True)
    assert c.call(ctx(), at, "Mount", server, 60.0, 0) == ()


# -- 1. fail fast by default, wait on request -------------------------------------------------


@pytest.mark.parametrize("seconds", [None, 3.0])
def test_a_name_that_is_not_mounted_fails_at_once(
    stack: contextlib.ExitStack, family: Family, seconds: float | None
) -> None:
    table = serve(stack, family, None, table=True)
    svc = serve(stack, family, Svc())
    c = client(stack, family, roots=[table])
    mount(c, table, "apps/fortune", svc)

    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(seconds), "apps/fortnue", "Echo", 1)  # the typo
    elapsed = time.monotonic() - start
    err = info.value
    assert elapsed < 0.5, elapsed
    assert err.action is errors.RetryAction.NO_RETRY
    assert err.request_sent is False
    text = str(err)
    assert "\n" not in text and len(text) < 400, text
    assert "'apps/fortnue'" in text and table in text and "WaitForReady" in text
    assert "tried" not in text  # the tries are in err.tried and err.details()
    assert err.tried and "tried:" in err.details()


def test_a_relative_name_without_roots_fails_at_once(
    stack: contextlib.ExitStack, family: Family
) -> None:
    c = client(stack, family)
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(3.0), "apps/fortune", "Echo", 1)
    assert time.monotonic() - start < 0.5
    assert info.value.action is errors.RetryAction.NO_RETRY
    assert "no roots" in str(info.value) and "roots=" in str(info.value)


def test_a_malformed_name_fails_at_once(stack: contextlib.ExitStack, family: Family) -> None:
    c = client(stack, family)
    start = time.monotonic()
    with pytest.raises(errors.BadArgError):
        c.call(ctx(None), "/@9@tcp@nonsense", "Echo", 1)
    assert time.monotonic() - start < 0.5


def test_an_endpoint_whose_versions_do_not_fit_fails_at_once(
    stack: contextlib.ExitStack, family: Family
) -> None:
    c = client(stack, family)
    name = "/" + str(Endpoint("tcp", free_address(), min_version=7, max_version=9))
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:  # (as Vanadium: no compatible server)
        c.call(ctx(None), name, "Echo", 1)
    assert time.monotonic() - start < 0.5
    assert info.value.action is errors.RetryAction.NO_RETRY
    assert "speaks RPC versions 7..9" in str(info.value)


def test_refused_connections_are_retried_briefly_then_fail_clearly(
    stack: contextlib.ExitStack, family: Family
) -> None:
    c = client(stack, family)
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(None), refused_name(), "Echo", 1)  # no deadline at all
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 3.0, elapsed  # the ~1 s connect_retry_window, not a minute
    err = info.value
    assert "cannot connect" in str(err) and "refused" in str(err).lower()
    assert str(err).count("client:") == 1
    assert len(err.tried) >= 2  # it did retry within the window


def test_wait_for_ready_finds_a_server_mounted_after_the_call_started(
    stack: contextlib.ExitStack, family: Family
) -> None:
    table = serve(stack, family, None, table=True)
    svc = serve(stack, family, Svc())
    c = client(stack, family, roots=[table])
    mounter = client(stack, family, roots=[table])
    timer = threading.Timer(0.5, mount, (mounter, table, "apps/late", svc))
    timer.start()
    stack.callback(timer.cancel)
    start = time.monotonic()
    assert c.call(ctx(10.0), "apps/late", "Echo", "hi", options=[WaitForReady()]) == ("hi",)
    assert time.monotonic() - start >= 0.4


def test_wait_for_ready_as_a_client_option_and_turned_off_per_call(
    stack: contextlib.ExitStack, family: Family
) -> None:
    table = serve(stack, family, None, table=True)
    c = client(
        stack,
        family,
        roots=[table],
        options=ClientOptions(default_call_timeout=20.0, wait_for_ready=True),
    )
    start = time.monotonic()
    with pytest.raises(errors.NoServersError):  # WaitForReady(False): fails at once
        c.call(ctx(5.0), "apps/none", "Echo", 1, options=[WaitForReady(False)])
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    with pytest.raises(errors.IPCError):  # waits until the (short) deadline
        c.call(ctx(0.8), "apps/none", "Echo", 1)
    assert time.monotonic() - start >= 0.6


def test_wait_for_ready_retries_refused_connections_until_the_deadline(
    stack: contextlib.ExitStack, family: Family
) -> None:
    sp = family.member("server")
    address = free_address()
    c = client(stack, family)

    def start_later() -> None:
        srv = Server(sp)
        stack.callback(srv.stop)
        srv.listen("tcp", address)
        srv.serve(Svc(), AllowEveryone())

    timer = threading.Timer(1.5, start_later)  # after the default 1 s window
    timer.start()
    stack.callback(timer.cancel)
    assert c.call(ctx(10.0), refused_name(address), "Echo", 2, options=[WaitForReady()]) == (2,)


def test_a_retry_budget_with_tokens_lets_retries_through(
    stack: contextlib.ExitStack, family: Family
) -> None:
    budget = RetryBudget(min_retries_per_sec=1, ttl=10, percent_can_retry=0)  # 10 tokens
    c = client(stack, family, options=ClientOptions(default_call_timeout=20.0, retry_budget=budget))
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(5.0), refused_name(), "Echo", 1)
    attempts = sum(1 for t in info.value.tried if t.startswith("attempt"))
    assert attempts >= 2  # it did retry, within the 1 s window
    assert budget.balance() <= 10 - (attempts - 1)


def test_a_retry_budget_stops_retries_when_it_is_empty(
    stack: contextlib.ExitStack, family: Family
) -> None:
    budget = RetryBudget(min_retries_per_sec=0, percent_can_retry=0)
    c = client(
        stack,
        family,
        options=ClientOptions(default_call_timeout=20.0, wait_for_ready=True, retry_budget=budget),
    )
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(5.0), refused_name(), "Echo", 1)
    assert time.monotonic() - start < 1.0  # not the 5 s a waiting call would take
    assert len(info.value.tried) <= 3  # one attempt: no retry token


# -- 2. check before sending --------------------------------------------------------------------


def _deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


def _shared(n: int) -> Any:
    value: Any = [0]
    for _ in range(n):
        value = [value, value]  # (2**n places for the innermost list)
    return value


# (20,000 deep once crashed the process: the CBOR encoder recursed in C without a guard;
# the shared list, 2**60 places once written out, once never ended.)
@pytest.mark.parametrize(
    "arg",
    [
        b"x" * (5 * 1024 * 1024),
        "y" * FOUR_MIB,
        [b"z" * 1024] * 4200,
        _deep(70),
        _deep(20_000),
        _shared(60),
        {"k": [0] * 300_000},
    ],
    ids=[
        "5MiB-bytes",
        "4MiB-text",
        "list-over-4MiB",
        "70-deep",
        "20000-deep",
        "shared-2^60",
        "300k-items",
    ],
)
@pytest.mark.parametrize("fast", [True, False], ids=["call", "start_call"])
def test_an_argument_over_the_limits_is_refused_before_sending(
    stack: contextlib.ExitStack, family: Family, arg: Any, fast: bool
) -> None:
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    assert c.call(ctx(), name, "Echo", 1) == (1,)  # the VC is up and authorized
    with pytest.raises(errors.BadArgError) as info:
        if fast:
            c.call(ctx(), name, "Echo", arg)
        else:
            c.start_call(ctx(), name, "Echo", [arg]).finish()
    assert info.value.request_sent is False
    assert "limit" in str(info.value)
    # The VC is unharmed and nothing reached the server.
    assert c.call(ctx(), name, "Echo", 2) == (2,)
    assert svc.calls == 2 and c.vc_count() == 1 and c.stats["dials"] == 1


@pytest.mark.parametrize("fast", [True, False], ids=["call", "start_call"])
def test_more_args_than_a_server_takes_are_refused_before_sending(
    stack: contextlib.ExitStack, family: Family, fast: bool
) -> None:
    """1,025 args went out and came back ipc.BadProtocol from the server, request sent."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    assert c.call(ctx(), name, "Echo", 1) == (1,)
    args = list(range(1025))
    with pytest.raises(errors.BadArgError, match="at most 1024") as info:
        if fast:
            c.call(ctx(), name, "Echo", *args)
        else:
            c.start_call(ctx(), name, "Echo", args).finish()
    assert info.value.request_sent is False
    assert c.call(ctx(), name, "Echo", 2) == (2,)
    assert svc.calls == 2 and c.vc_count() == 1


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("E" * 4097, ""), ("E" * (5 * 1024 * 1024), ""), ("Echo", "a" * 4097)],
    ids=["4097-method", "5MiB-method", "4097-suffix"],
)
@pytest.mark.parametrize("fast", [True, False], ids=["call", "start_call"])
def test_a_method_or_suffix_longer_than_a_server_takes_is_refused_before_sending(
    stack: contextlib.ExitStack,
    family: Family,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    suffix: str,
    fast: bool,
) -> None:
    """A method name or name suffix longer than the 4,096 characters every server takes
    (MAX_NAME_LEN) is the caller's BadArgError before a byte is written (it was sent, 5 MiB
    of it, and the server's reset came back as a BadProtocolError with request_sent True)."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    assert c.call(ctx(), name, "Echo", 1) == (1,)  # the VC is up and authorized
    writes: list[int] = []
    real_write = Flow.write

    def write(flow: Flow, data: Any, *args: Any, **kw: Any) -> Any:
        writes.append(len(data) if isinstance(data, bytes) else sum(map(len, data)))
        return real_write(flow, data, *args, **kw)

    monkeypatch.setattr(Flow, "write", write)
    target = name + "/" + suffix if suffix else name
    with pytest.raises(errors.BadArgError, match="takes at most 4096") as info:
        if fast:
            c.call(ctx(), target, method, 1)
        else:
            c.start_call(ctx(), target, method, [1]).finish()
    assert info.value.request_sent is False
    assert writes == []
    monkeypatch.undo()
    # The VC is unharmed and nothing reached the server.
    assert c.call(ctx(), name, "Echo", 2) == (2,)
    assert svc.calls == 2 and c.vc_count() == 1 and c.stats["dials"] == 1


# (Replaces a method at run time, which compiled callers do not look up.)
@pytest.mark.interpreted
@pytest.mark.parametrize("seconds", [None, 10.0], ids=["no-deadline", "deadline"])
def test_start_call_retries_an_attempt_whose_request_never_went_out(
    stack: contextlib.ExitStack,
    family: Family,
    monkeypatch: pytest.MonkeyPatch,
    seconds: float | None,
) -> None:
    """A VC that breaks between the flow's opening and the request's write (a server
    restarting) fails that attempt before a byte is sent: it is retried. With a context
    without a deadline (the client adds ``default_call_timeout`` in a context of its own),
    the failed attempt's end cancelled that context ("call finished"), and the retry loop
    then ended the call with that CanceledError."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family, options=ClientOptions(default_call_timeout=20.0))
    assert c.call(ctx(), name, "Echo", 0) == (0,)  # the VC is up
    writes: list[int] = []
    real_write = Flow.write

    def write(flow: Flow, data: Any, *args: Any, **kw: Any) -> Any:
        writes.append(1)
        if len(writes) == 1:  # (as a VC broken just before the write)
            raise errors.ConnectionFailedError("test: the VC broke before the request went out")
        return real_write(flow, data, *args, **kw)

    monkeypatch.setattr(Flow, "write", write)
    call = c.start_call(ctx(seconds), name, "Echo", [1])
    assert call.finish() == (1,)
    assert len(writes) >= 2


def test_a_streamed_item_over_the_limits_is_refused_and_the_call_goes_on(
    stack: contextlib.ExitStack, family: Family
) -> None:
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    with c.start_call(ctx(), name, "Count") as call:
        call.send("a")
        with pytest.raises(errors.BadArgError):
            call.send(b"x" * (5 * 1024 * 1024))
        with pytest.raises(errors.BadArgError):
            call.send(_deep(80))
        call.send("b")
        assert call.finish() == (2,)
    assert svc.items == ["a", "b"]


def test_an_argument_with_too_many_container_keys_is_refused_before_it_is_sent(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A map keyed by tuples or large integers (keys a peer's decoder limits: their hashes
    can be made to collide) is refused at the sender with a clear error; 64 such keys pass
    and come back as they went."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    with pytest.raises(errors.BadArgError, match="64 map keys that are containers"):
        c.call(ctx(), name, "Echo", {(i, i): i for i in range(65)})
    with pytest.raises(errors.BadArgError, match="64 map keys that are containers"):
        c.call(ctx(), name, "Echo", {2**64 + i: i for i in range(65)})
    assert svc.calls == 0
    value = {(i, i): i for i in range(64)}
    assert c.call(ctx(), name, "Echo", value) == (value,)
    assert c.vc_count() == 1


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.integers(), inner, max_size=2)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.binary(max_size=8) | st.text(max_size=4),
        _containers,
        max_leaves=100,
    ),
    st.integers(min_value=1, max_value=70),
)
def test_check_encoded_refuses_exactly_what_the_decoder_refuses(value: Any, wrap: int) -> None:
    """Property: the client-side check of an encoded message (under any limits) and the
    peer's decoder agree on depth and items; and the check the encoder makes before it
    encodes (a guard for cbor2, under the default limits) never refuses what the decoder
    takes. (It may pass what the decoder refuses: a large integer is a tag, one level and
    one item more, which only the encoded message shows; the first check refuses that.)"""
    for _ in range(wrap):
        value = [value]
    data = cbor2.dumps(value)  # (the encoder's own bytes, without its check)
    try:
        assert codec.encode(value) == data
        encoded = True
    except errors.BadArgError:
        encoded = False
    if not encoded:
        with pytest.raises(errors.BadProtocolError):
            codec.decode(data)
    limits = codec.Limits(max_items=300)
    try:
        codec.decode(data, limits)
        decoded = True
    except errors.BadProtocolError:
        decoded = False
    try:
        codec.check_encoded(data, limits)
        checked = True
    except errors.BadArgError:
        checked = False
    assert decoded == checked


# -- 3. one retry window per call ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class SlowFailingNamespace(Namespace):
    """Each resolve takes ``cost`` seconds of the fake clock, then fails in a way that may be
    retried (a mount table that could not be reached): a fault a real part cannot time."""

    def __init__(self, clock: FakeClock, cost: float) -> None:
        super().__init__(["/127.0.0.1:1"])
        self.clock = clock
        self.cost = cost
        self.calls = 0

    def resolve(self, ctx: Context, name: str) -> MountEntry:
        self.calls += 1
        self.clock.now += self.cost
        raise errors.ConnectionFailedError("mount table unreachable")


@pytest.mark.parametrize(("cost", "attempts"), [(1.5, 1), (0.6, 2)])
def test_retry_timeout_counts_from_the_start_of_the_call(
    stack: contextlib.ExitStack, family: Family, cost: float, attempts: int
) -> None:
    clock = FakeClock()
    ns = SlowFailingNamespace(clock, cost)
    c = client(stack, family, namespace=ns)
    with pytest.raises(errors.NoServersError):
        c.call(Context.background(clock=clock), "apps/x", "Echo", 1, options=[RetryTimeout(1.0)])
    assert ns.calls == attempts


class SlowRealNamespace(Namespace):
    """Each resolve takes ``cost`` seconds of real time, then fails in a way that may be
    retried."""

    def __init__(self, cost: float) -> None:
        super().__init__(["/127.0.0.1:1"])
        self.cost = cost
        self.calls = 0

    def resolve(self, ctx: Context, name: str) -> MountEntry:
        self.calls += 1
        threading.Event().wait(self.cost)
        raise errors.ConnectionFailedError("mount table unreachable")


def test_a_first_try_longer_than_the_retry_timeout_is_not_retried(
    stack: contextlib.ExitStack, family: Family
) -> None:
    ns = SlowRealNamespace(0.5)
    c = client(stack, family, namespace=ns)
    with pytest.raises(errors.NoServersError):
        c.call(ctx(10.0), "apps/x", "Echo", 1, options=[RetryTimeout(0.4)])
    assert ns.calls == 1


class FailingThenFoundNamespace(Namespace):
    """Each resolve takes ``cost`` seconds of the fake clock; the first ``failures`` fail in a
    way that may be retried, then the name resolves to ``server``."""

    def __init__(self, clock: FakeClock, cost: float, failures: int, server: str) -> None:
        super().__init__()
        self.clock = clock
        self.cost = cost
        self.failures = failures
        self.server = server
        self.calls = 0

    def resolve(self, ctx: Context, name: str) -> MountEntry:
        self.calls += 1
        self.clock.now += self.cost
        if self.calls <= self.failures:
            raise errors.ConnectionFailedError("mount table unreachable")
        return Namespace().resolve(ctx, self.server)


def test_one_window_is_shared_by_the_retries_before_and_after_sending(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A failed and a good resolve use 0.92 s of a 1 s window before sending; the server then
    says "back off": a retry after sending would come past the window, so there is none."""
    svc = Svc()
    server = serve(stack, family, svc)
    clock = FakeClock()
    ns = FailingThenFoundNamespace(clock, 0.46, 1, server)
    c = client(stack, family, namespace=ns)
    with pytest.raises(errors.OverloadedError):
        c.call(Context.background(clock=clock), "apps/busy", "Busy", options=[RetryTimeout(1.0)])
    assert ns.calls == 2
    assert svc.calls == 1


@pytest.mark.parametrize("fake_now", [0.0, 1e7])  # (behind and far ahead of the real clock)
def test_a_context_on_an_injected_clock_gives_the_transport_its_time_left(
    stack: contextlib.ExitStack, family: Family, fake_now: float
) -> None:
    """The transport waits on ``time.monotonic``: a call converts the deadline of a context
    on another clock once, when it takes it (what is left on that clock, from now). It once
    passed the deadline as it was: a clock behind the real one timed every call out at
    once, and one ahead of it gave calls all the time in the world."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    clock = FakeClock()
    clock.now = fake_now
    long_ = Context.background(clock=clock).with_timeout(30.0)
    assert c.call(long_, name, "Echo", 1) == (1,)  # (the general path, then the fast one)
    assert c.call(long_, name, "Echo", 2) == (2,)
    assert c.start_call(long_, name, "Sleep", [0.2]).finish() == ("slept",)
    with c.start_call(long_, name, "Stream", [3]) as call:
        assert list(call) == [0, 1, 2]
    short = Context.background(clock=clock).with_timeout(0.3)
    for how in ("call", "start_call"):
        started = time.monotonic()
        with pytest.raises(errors.TimeoutError):
            if how == "call":
                c.call(short, name, "Sleep", 5.0)
            else:
                c.start_call(short, name, "Sleep", [5.0]).finish()
        assert 0.2 < time.monotonic() - started < 2.0, how


def test_keepalive_and_client_options_are_validated() -> None:
    for bad in (
        {"interval": 0},
        {"interval": -1},
        {"timeout": float("nan")},
        {"interval": 10, "timeout": 5},
    ):
        with pytest.raises(errors.BadArgError):
            KeepaliveConfig(**bad)
    for bad_opts in (
        {"connect_retry_window": -1},
        {"default_call_timeout": 0},
        {"dial_timeout": float("inf")},
        {"wait_for_ready": "yes"},
        {"max_parallel_discharge_fetches": 0},
    ):
        with pytest.raises(errors.BadArgError):
            ClientOptions(**bad_opts)
    with pytest.raises(errors.BadArgError):
        RetryTimeout(-1)


# -- 4. errors a person can act on --------------------------------------------------------------


def test_finish_after_cancel_is_canceled(stack: contextlib.ExitStack, family: Family) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Stream", [3])
    threading.Event().wait(0.2)  # the items and the final header arrive together
    assert call.recv() == 0  # (the rest of them are read and held by the call)
    call.cancel()
    with pytest.raises(errors.CanceledError):
        call.finish()
    # Leaving the block normally after a cancel.
    with pytest.raises(errors.CanceledError), c.start_call(ctx(), name, "Stream", [3]) as call:
        call.cancel()


def test_finish_with_unread_streamed_results_is_bad_state(
    stack: contextlib.ExitStack, family: Family
) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Stream", [3])
    with pytest.raises(errors.BadStateError) as info:
        call.finish()
    assert "for item in call" in str(info.value)
    assert call.ended
    with pytest.raises(errors.BadStateError):  # a streaming method called as a unary one
        c.call(ctx(), name, "Stream", 2)


def test_a_call_that_finish_cancelled_for_unread_results_hands_out_none(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """finish() with streamed results unread cancels the call; as after any cancel, recv
    and iteration then raise CanceledError every time, even with items already here (recv
    once handed them out, after blaming the server for the next item's bytes)."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Stream", [5])
    threading.Event().wait(0.3)  # (the items arrive and are held by the flow)
    with pytest.raises(errors.BadStateError):
        call.finish()
    for _ in range(3):
        with pytest.raises(errors.CanceledError, match="finish"):
            call.recv()
    with pytest.raises(errors.CanceledError):
        list(call)
    with pytest.raises(errors.BadStateError):
        call.finish()
    with pytest.raises(errors.CanceledError):
        call.close_send()  # (cancelled by finish, as recv says)


def test_close_send_after_a_cancel_or_the_deadline_says_so(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """close_send once the call was cancelled, or its deadline passed, raises that error, each
    time (it once returned as if the end of the request had gone out); on a call going on,
    once the send side is closed it returns, and so it does when the server already ended
    the call."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Count")
    call.send(1)
    call.cancel()
    with pytest.raises(errors.CanceledError) as cancelled:
        call.close_send()
    assert cancelled.value.request_sent is True
    with pytest.raises(errors.CanceledError):
        call.close_send()  # (each time: the second returned as if all were well)

    call = c.start_call(ctx(0.3), name, "Count")
    threading.Event().wait(0.5)
    with pytest.raises(errors.TimeoutError):
        call.recv()  # (the deadline ends the call: the flow is released)
    with pytest.raises(errors.TimeoutError):
        call.close_send()

    for seconds in (5.0, None):  # (None: the call's own context, ended with the call)
        call = c.start_call(ctx(seconds), name, "Nope")
        with pytest.raises(errors.UnknownMethodError):
            call.recv()  # (the server ended the call with its error)
        call.close_send()
        with pytest.raises(errors.UnknownMethodError):
            call.finish()

    call = c.start_call(ctx(), name, "Count")
    call.send(1)
    call.close_send()
    call.close_send()
    assert call.finish() == (1,)
    call.close_send()


@pytest.mark.parametrize("complete", [False, True], ids=["reply-open", "reply-complete"])
@pytest.mark.parametrize("step", ["recv", "finish"])
def test_no_item_is_handed_out_after_the_deadline_even_when_the_timer_is_late(
    stack: contextlib.ExitStack, family: Family, step: str, complete: bool
) -> None:
    """Items already received are not handed out once the deadline has passed
    (docs/client.md), even while the process's shared timer thread is late to end the call
    (here it runs another context's slow callback): recv and finish looked only at what the
    timer had done, and handed out the buffered items. Unless the whole reply had come by
    the deadline: it is the answer then, whether the timer is late or not."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    assert c.call(ctx(), name, "Echo", 0) == (0,)  # (the VC is dialed outside the 0.5 s)
    deadline_ctx = ctx(0.5)
    if complete:
        call = c.start_call(deadline_ctx, name, "Stream", [3])
    else:
        call = c.start_call(deadline_ctx, name, "StreamThenWait", [3, 5.0])
    assert call.recv() == 0  # (the other two, and the final answer if complete, come with it)
    stop = time.monotonic() + 5
    while complete and not call.flow.peer_done and time.monotonic() < stop:
        time.sleep(0.01)
    held = threading.Event()
    let_go = threading.Event()

    def hold_the_timer(_err: errors.IPCError) -> None:
        held.set()
        let_go.wait(5)

    busy = ctx(0.2)  # (kept: the timer holds a context weakly)
    busy.add_done_callback(hold_the_timer)
    try:
        assert held.wait(5)
        deadline = deadline_ctx.deadline
        assert deadline is not None
        while time.monotonic() <= deadline + 0.1:
            time.sleep(0.02)
        if complete:
            if step == "recv":
                assert [call.recv(), call.recv()] == [1, 2]
                assert call.finish() == (3,)
            else:
                with pytest.raises(errors.BadStateError, match="still streaming"):
                    call.finish()  # (the items before the end are unread: as before it)
        else:
            with pytest.raises(errors.TimeoutError):
                if step == "recv":
                    call.recv()
                else:
                    call.finish()
    finally:
        let_go.set()


def test_send_after_a_cancel_or_the_deadline_says_so(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """send() on a call that was cancelled or whose deadline passed raises that error, as
    recv and close_send do (it said Aborted, "send after close_send or end"); after
    close_send it is still Aborted."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Count")
    call.send(1)
    call.cancel()
    for _ in range(2):
        with pytest.raises(errors.CanceledError) as cancelled:
            call.send(2)
        assert cancelled.value.request_sent is True

    call = c.start_call(ctx(0.3), name, "Count")
    call.send(1)
    threading.Event().wait(0.5)
    with pytest.raises(errors.TimeoutError):
        call.send(2)

    call = c.start_call(ctx(), name, "Count")
    call.send(1)
    call.close_send()
    with pytest.raises(errors.AbortedError):
        call.send(2)
    assert call.finish() == (1,)


@pytest.mark.parametrize(
    "error",
    [
        errors.IPCError("x", id=""),
        errors.IPCError("x", id="a" * 5000),
        errors.IPCError(5),  # type: ignore[arg-type]
        errors.CanceledError("not UTF-8: \udcff"),
        errors.CanceledError("x", object()),
        errors.CanceledError("m" * 100_000),
    ],
)
def test_a_cancel_with_any_error_ends_that_call_only(
    stack: contextlib.ExitStack, family: Family, error: errors.IPCError
) -> None:
    """The error a cancel sends in its RESET is always one the server reads: an error whose
    ID or message a peer refuses was sent as it was, the server took the payload for a
    protocol error and ended the whole VC, failing every other call on it."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    other = c.start_call(ctx(), name, "Sleep", [0.3])
    victim = c.start_call(ctx(), name, "Sleep", [5])
    victim.cancel(error)
    assert other.finish() == ("slept",)
    with pytest.raises(errors.IPCError):
        victim.finish()
    assert c.call(ctx(), name, "Echo", 1) == (1,)
    assert c.vc_count() == 1


@pytest.mark.parametrize("bad", ["user asked", ValueError("x"), 3])
def test_cancel_with_something_other_than_an_error_is_a_bad_arg(
    stack: contextlib.ExitStack, family: Family, bad: Any
) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Sleep", [0.2])
    with pytest.raises(errors.BadArgError, match="cancel takes an IPCError"):
        call.cancel(bad)
    assert call.finish() == ("slept",)  # (a bad cancel cancels nothing)
    parent = Context.background().with_cancel()
    if not isinstance(bad, str):
        with pytest.raises(errors.BadArgError):
            parent.cancel(bad)  # (a reason is text)
    with pytest.raises(errors.BadArgError):
        parent.cancel_with(bad)
    assert parent.err() is None


@pytest.mark.parametrize("bad", ["x", True, -1, 1.0])
def test_finish_with_a_bad_count_of_results_is_a_bad_arg_up_front(
    stack: contextlib.ExitStack, family: Family, bad: Any
) -> None:
    """finish(nresults=...) takes a count: anything else is the caller's mistake, said
    before the call is finished (it once ran the call and blamed the server); the call goes
    on and finish may be called again."""
    svc = Svc()
    name = serve(stack, family, svc)
    c = client(stack, family)
    call = c.start_call(ctx(), name, "Echo", [5])
    with pytest.raises(errors.BadArgError, match="nresults"):
        call.finish(nresults=bad)
    assert not call.ended
    assert call.finish(nresults=1) == (5,)


def test_a_dial_that_timed_out_says_client_once(
    stack: contextlib.ExitStack, family: Family
) -> None:
    hole = socket.socket()  # accepts TCP (the backlog) but never answers the handshake
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    stack.callback(hole.close)
    c = client(stack, family)
    with pytest.raises(errors.TimeoutError) as info:
        c.call(ctx(0.4), refused_name("%s:%d" % hole.getsockname()), "Echo", 1)
    assert str(info.value).count("client:") == 1, str(info.value)
    assert "dialing" in str(info.value)


def test_our_errors_are_also_the_builtin_kinds() -> None:
    assert isinstance(errors.TimeoutError("t"), builtins.TimeoutError)
    assert isinstance(errors.ConnectionFailedError("c"), ConnectionError)
    assert isinstance(errors.EndOfStreamError("e"), EOFError)
    err = errors.TimeoutError("late", request_sent=True, tried=["a", "b"])
    assert str(err) == "ipc.Timeout: late"
    assert isinstance(err.with_context(tried=["c"]), builtins.TimeoutError)
    assert "tried: c" in err.with_context(tried=["c"]).details()
    assert str(errors.IPCError("two\nlines")) == "ipc.Unknown: two lines"


def test_a_call_without_a_context_or_with_an_option_as_an_argument(
    stack: contextlib.ExitStack, family: Family
) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    with pytest.raises(errors.BadArgError) as info:
        c.call(name, "Echo", 1)  # type: ignore[arg-type]
    assert "Context first" in str(info.value)
    with pytest.raises(errors.BadArgError) as info:
        c.start_call(name, "Echo", [1])  # type: ignore[arg-type]
    assert "Context first" in str(info.value)
    with pytest.raises(errors.BadArgError) as info:
        c.call(ctx(), name, "Echo", NoRetry())
    assert "options=[...]" in str(info.value)
    assert c.call(ctx(), name, "Echo", 1) == (1,)  # now the VC is up: the fast path
    with pytest.raises(errors.BadArgError) as info:
        c.call(ctx(), name, "Echo", NoRetry())
    assert "options=[...]" in str(info.value)


def test_a_server_method_written_as_a_generator_says_to_use_send(
    stack: contextlib.ExitStack, family: Family
) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    with pytest.raises(errors.InternalError) as info:
        c.call(ctx(), name, "Gen")
    assert "call.send" in str(info.value)


def test_a_server_method_written_async_says_to_write_it_with_def(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """An async def method answered "cannot encode a value of type coroutine", and Python
    warned that the coroutine was never awaited."""
    name = serve(stack, family, Svc())
    c = client(stack, family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a "never awaited" RuntimeWarning fails the test)
        for method, kind in (("Async", "a coroutine"), ("AsyncGen", "an async generator")):
            with pytest.raises(errors.InternalError) as info:
                c.call(ctx(), name, method)
            assert f"returned {kind}" in str(info.value) and "with def" in str(info.value)
        gc.collect()


def test_an_untrusted_server_says_how_to_trust_it(
    stack: contextlib.ExitStack, family: Family
) -> None:
    name = serve(stack, family, Svc())
    stranger = Principal.generate()
    stranger.store.default = stranger.bless_self("stranger")
    c = Client(stranger)
    stack.callback(c.close)
    with pytest.raises(errors.NotTrustedError) as info:
        c.call(ctx(), name, "Echo", 1)
    assert "roots.add_blessings" in str(info.value)
    assert "\n" not in str(info.value)


# -- 5. logs that explain a slow call ----------------------------------------------------------


def test_the_ipcclient_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("ipcclient").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert ipcclient.WaitForReady is WaitForReady


def test_the_logs_tell_the_story_of_a_failed_resolve(
    stack: contextlib.ExitStack, family: Family, caplog: pytest.LogCaptureFixture
) -> None:
    table = serve(stack, family, None, table=True)
    c = client(stack, family, roots=[table])
    with caplog.at_level(logging.DEBUG, logger="ipcclient"), pytest.raises(errors.NoServersError):
        c.call(ctx(), "apps/typo", "Echo", 1)
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    assert "ipcclient.naming DEBUG namespace:" in text and "cache miss" in text
    assert "has no name 'apps/typo'" in text
    assert "ipcclient.transport DEBUG transport: handshake with" in text  # to the mount table
    assert "ipcclient.client DEBUG client: server" in text and "authorized" in text


def test_the_logs_tell_the_story_of_a_refused_dial(
    stack: contextlib.ExitStack, family: Family, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(stack, family)
    with caplog.at_level(logging.DEBUG, logger="ipcclient"), pytest.raises(errors.NoServersError):
        c.call(ctx(), refused_name(), "Echo", 1)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert any(n == "ipcclient.transport" and "failed" in m and "dial" in m for n, _, m in records)
    retries = [m for n, lvl, m in records if n == "ipcclient.retry" and lvl == logging.INFO]
    assert retries and "retry 1 in" in retries[0] and "ms after" in retries[0]
    assert "giving up" in retries[-1]


def test_close_says_in_flight_only_when_a_call_was(
    stack: contextlib.ExitStack, family: Family, caplog: pytest.LogCaptureFixture
) -> None:
    name = serve(stack, family, Svc())
    c = client(stack, family)
    assert c.call(ctx(), name, "Echo", 1) == (1,)
    with caplog.at_level(logging.DEBUG, logger="ipcclient"):
        c.close()
    assert not any("in flight" in r.getMessage() for r in caplog.records)


def test_the_logs_say_when_a_server_goes_away(
    family: Family, caplog: pytest.LogCaptureFixture
) -> None:
    with contextlib.ExitStack() as stack:
        server = Server(family.member("server"))
        stack.callback(server.stop)
        name = "/" + server.listen("tcp", "127.0.0.1:0")
        server.serve(Svc(), AllowEveryone())
        c = client(stack, family)
        assert c.call(ctx(), name, "Echo", 1) == (1,)

        def seen() -> bool:
            return any(
                r.name == "ipcclient.client" and "closed" in r.getMessage() for r in caplog.records
            )

        with caplog.at_level(logging.DEBUG, logger="ipcclient"):
            server.stop()  # sends GOAWAY
            deadline = time.monotonic() + 5
            while not seen() and time.monotonic() < deadline:
                threading.Event().wait(0.02)
        messages = [r.getMessage() for r in caplog.records if r.name == "ipcclient.transport"]
        assert any("sent GOAWAY" in m for m in messages), messages
        assert any("ended" in m for m in messages), messages
        assert seen()


# -- 3. what a client leaves behind, and what it says it sent ----------------------------------
def _silent_listener(stack: contextlib.ExitStack) -> str:
    """A name whose endpoint accepts connections (the kernel's backlog) and never speaks:
    every dial to it stalls in its handshake."""
    lst = socket.socket()
    stack.callback(lst.close)
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    ep = Endpoint(
        "tcp",
        "127.0.0.1:%d" % lst.getsockname()[1],
        blessings=("root:server",),
        min_version=1,
        max_version=1,
    )
    return "/" + str(ep)


def _dial_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ipc-dial")]


def test_close_ends_the_dials_a_call_gave_up_on(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A dial outlives the call that gave up on it (its VC would serve the next call), but
    not the client: close() leaves no dial thread, nor its socket, for the rest of the dial
    timeout (it once left them for up to ``dial_timeout``)."""
    name = _silent_listener(stack)
    c = Client(family.member("client"), options=ClientOptions(dial_timeout=30.0))
    with pytest.raises(errors.TimeoutError):
        c.call(Context.background().with_timeout(0.3), name, "Echo", 1)
    assert _dial_threads()  # (the dial goes on)
    c.close()
    until = time.monotonic() + 5
    while _dial_threads() and time.monotonic() < until:
        time.sleep(0.01)  # (bounded: the dial thread looks at close() every CLOSE_CHECK)
    assert _dial_threads() == []


def test_a_dial_thread_that_cannot_start_fails_the_call_with_a_typed_error(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread for a dial (a process at its limit: faked, the one fault a real part
    cannot make on demand) fails the call with a typed error that says so (it once raised a
    bare RuntimeError) and leaves no dial behind for the next call to wait on."""
    svc = Svc()
    name = serve(stack, family, svc).replace("127.0.0.1:", "localhost:")  # (dialed on a thread)
    refuse_threads(monkeypatch, "ipc-dial")
    c = client(stack, family)
    with pytest.raises(errors.NoServersError) as info:  # (no VC to the only server)
        c.call(ctx(), name, "Echo", 1, options=[NoRetry()])
    assert "no thread to dial" in str(info.value) and "can't start new thread" in str(info.value)
    assert info.value.request_sent is False
    monkeypatch.undo()
    started = time.monotonic()
    assert c.call(ctx(), name, "Echo", 2) == (2,)
    assert time.monotonic() - started < 5  # (not after a dial that never ran timed out)


def _host_port_name(address: str) -> str:
    """A rooted name in the /host:port/suffix form: its endpoint may be a mount table, so
    the client resolves it with a call of its own (to that address) first."""
    return "/" + address + "/x"


@pytest.mark.parametrize(
    "stage",
    [
        "resolving",  # the call's own resolve call dials a server that never answers
        "dialing",  # the call dials a server that never answers
        "backing off",  # between two tries (refused connections, waiting for ready)
        "resolving, then backing off",  # the resolve call's connections are refused
        "backing off after a busy server",  # call()'s loop after the server said back off
    ],
)
def test_close_ends_a_call_still_starting_at_once_with_bad_state(
    stack: contextlib.ExitStack, family: Family, stage: str
) -> None:
    """close() ends every call still starting, whatever it is doing, at once with
    BadStateError (request not sent, never retried). Such calls once went on: a resolve
    call that failed because the client closed was a mount table that did not answer
    (retried with WaitForReady until the deadline), and a call waiting between two tries
    slept out its backoff first."""
    slow = ClientOptions(backoff=BackoffPolicy(base=5.0, jitter=0.0))  # (5 s between tries)
    c = client(stack, family, options=slow)
    options: list[Any] = [WaitForReady()]
    method, args = "Echo", (1,)
    if stage == "resolving":
        name = _host_port_name(_silent_listener(stack).split("@")[3])
    elif stage == "dialing":
        name = _silent_listener(stack)
    elif stage == "backing off":
        name = refused_name()
    elif stage == "resolving, then backing off":
        name = _host_port_name(free_address())
    else:
        name, method, args = serve(stack, family, Svc()), "Busy", ()
    got: list[BaseException] = []
    ended = threading.Event()

    def caller() -> None:
        try:
            c.call(ctx(20.0), name, method, *args, options=options)
        except BaseException as exc:
            got.append(exc)
        ended.set()

    threading.Thread(target=caller, daemon=True).start()
    assert not ended.wait(0.5)  # (it is starting: resolving, dialing or waiting)
    closed_at = time.monotonic()
    c.close()
    assert ended.wait(10)
    assert time.monotonic() - closed_at < 1.0
    (err,) = got
    assert isinstance(err, errors.BadStateError), repr(err)
    assert err.action is errors.RetryAction.NO_RETRY
    assert err.request_sent is False
    assert "closed" in str(err)


def test_a_call_that_failed_resolving_says_its_request_was_not_sent(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A mount table's refusal (or its timeout) is passed on as the call's error, with
    ``request_sent`` False: the call's own request never went out (the mount table's
    request did, and that is what the error once said)."""

    @expose
    class Refusing:
        def ResolveStep(self, call: ServerCall) -> Any:
            raise errors.NoAccessError("mount table: you may not resolve names here")

    class Everything:
        def lookup(self, suffix: str) -> Any:
            return Refusing(), AllowEveryone()

    server = Server(family.member("mt"), serves_mount_table=True)
    stack.callback(server.stop)
    root = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve_dispatcher(Everything())
    c = client(stack, family, roots=[root])
    for start in (True, False):
        with pytest.raises(errors.NoAccessError) as info:
            if start:
                c.start_call(ctx(), "some/name", "Echo", [1])
            else:
                c.call(ctx(), "some/name", "Echo", 1)
        assert info.value.request_sent is False


@pytest.mark.parametrize("wait", [False, True])
@pytest.mark.parametrize("failure", ["malformed", "internal", "overloaded"])
def test_a_mount_tables_error_keeps_its_own_retry_action(
    stack: contextlib.ExitStack, family: Family, failure: str, wait: bool
) -> None:
    """A mount table reached that fails ResolveStep in a way that will not go away by itself
    (an answer that is not a mount entry, BadProtocol; an InternalError), both NO_RETRY, ends
    the call at once, with or without WaitForReady (it was made RETRY_REFETCH, so the call
    resolved again for the whole retry window: 4 ResolveSteps in 0.9 s, or until the deadline
    when waiting). An error whose own action allows a retry (OverloadedError) is retried."""

    @expose
    class Failing:
        calls = 0

        def ResolveStep(self, call: ServerCall) -> Any:
            Failing.calls += 1
            if failure == "internal":
                raise errors.InternalError("mount table: the store answered nonsense")
            if failure == "overloaded":
                raise errors.OverloadedError("mount table: busy")
            return {"name": "", "servers": [{"server": "garbage", "ttl": None}]}

    class Everything:
        def lookup(self, suffix: str) -> Any:
            return Failing(), AllowEveryone()

    server = Server(family.member("mt"), serves_mount_table=True)
    stack.callback(server.stop)
    root = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve_dispatcher(Everything())
    c = client(stack, family, roots=[root])
    start = time.monotonic()
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(1.5), "a/x", "Echo", 1, options=[WaitForReady(wait)])
    elapsed = time.monotonic() - start
    err = info.value
    assert err.request_sent is False
    if failure == "overloaded":
        assert err.action is errors.RetryAction.RETRY_BACKOFF
        assert Failing.calls >= 2 and elapsed > 0.3
    else:
        assert err.action is errors.RetryAction.NO_RETRY
        assert Failing.calls == 1 and elapsed < 0.5, (Failing.calls, elapsed)
        expected = "ipc.Internal" if failure == "internal" else "ipc.BadProtocol"
        assert "mount table failed" in str(err) and expected in str(err)


@pytest.mark.parametrize("options", [5, "NoRetry", None, NoRetry()])
def test_options_that_are_not_a_list_are_a_bad_arg(
    stack: contextlib.ExitStack, family: Family, options: Any
) -> None:
    """``call``'s options are a list or tuple (it once raised a bare TypeError for 5);
    ``start_call`` takes them as extra arguments, each checked."""
    c = client(stack, family)
    with pytest.raises(errors.BadArgError, match="options must be a list or tuple"):
        c.call(ctx(), "/127.0.0.1:1", "Echo", 1, options=options)
    with pytest.raises(errors.BadArgError, match="is not a call option"):
        c.start_call(ctx(), "/127.0.0.1:1", "Echo", [1], 5)  # type: ignore[arg-type]


def test_keyword_arguments_are_a_bad_arg(stack: contextlib.ExitStack, family: Family) -> None:
    """A method's arguments travel in order; ``call(ctx, name, "Get", key="x")`` was Python's
    bare TypeError. Nothing is sent (the name is not even resolved)."""
    c = client(stack, family)
    for fn in (c.call, c.call_one):
        with pytest.raises(errors.BadArgError, match="positional only") as info:
            fn(ctx(), "/127.0.0.1:1", "Get", 1, key="x")  # type: ignore[arg-type]
        assert info.value.request_sent is False
        assert "key=" in info.value.msg


@pytest.mark.parametrize("failing_first", [True, False])
def test_a_replica_that_cannot_be_reached_keeps_the_call_retryable_whatever_the_order(
    stack: contextlib.ExitStack, family: Family, failing_first: bool
) -> None:
    """Replicas [unreachable, failing with InternalError]: the error of the replica asked
    last decided whether the call was retried, so the order the namespace asked them in
    (the one that answered last goes first) changed the outcome. An error of any replica
    that allows a retry now keeps the resolution retryable."""

    @expose
    class Failing:
        calls = 0

        def ResolveStep(self, call: ServerCall) -> Any:
            Failing.calls += 1
            raise errors.InternalError("mount table: the store answered nonsense")

    class Everything:
        def lookup(self, suffix: str) -> Any:
            return Failing(), AllowEveryone()

    server = Server(family.member("mt"), serves_mount_table=True)
    stack.callback(server.stop)
    failing = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve_dispatcher(Everything())
    gone = "/" + free_address()
    roots = [failing, gone] if failing_first else [gone, failing]
    c = client(stack, family, roots=roots)
    with pytest.raises(errors.NoServersError) as info:
        c.call(ctx(1.5), "a/x", "Echo", 1)
    assert info.value.action is not errors.RetryAction.NO_RETRY
    assert Failing.calls >= 2  # (resolved again: the unreachable replica may come back)
