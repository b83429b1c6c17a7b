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
from ipcclient.codec import Limits
from ipcclient.context import Context
from ipcclient.headers import encode_request_message
from ipcclient.options import ClientOptions
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport.background import IDLE_EXIT
from ipcclient.transport.conn import KeepaliveConfig
from ipcclient.transport.inline import HANDOFF, INLINE_HANDOFF
from ipcclient.transport.manager import TransportOptions
from ipcclient.wire.messages import encode_messages, split_messages

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
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

    def Drain(self, call: ServerCall, *first: Any) -> list[Any]:
        return [*first, *call]  # a unary call's streamed args: none


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
        Service(), AllowEveryone(), options=ServerOptions(workers=2, max_workers=2, max_queued=2)
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


# --- the short way of a whole request answers exactly as the general way ---------------------
_END = {"end_stream_args": True}
_CRAFTED: list[tuple[str, bytes]] = [
    ("usual", encode_messages({"method": "Echo", "nargs": 1}, b"hi", _END)),
    (
        "suffix and deadline",
        encode_messages(
            {"suffix": "/x", "method": "Echo", "nargs": 1, "deadline": 5.0}, [1, "a"], _END
        ),
    ),
    ("no args", encode_messages({"method": "Drain"}, _END)),
    ("fewer args than said", encode_messages({"method": "Echo", "nargs": 2}, b"hi", _END)),
    ("more args than said", encode_messages({"method": "Drain"}, 1, 2, _END)),
    ("a message after the end", encode_messages({"method": "Echo", "nargs": 1}, 1, _END, 2)),
    ("no end of args", encode_messages({"method": "Echo", "nargs": 1}, b"hi")),
    (
        "another header key",
        encode_messages({"method": "Echo", "nargs": 1, "language": "fr"}, 1, _END),
    ),
    ("a bad header", encode_messages({"method": 7, "nargs": 1}, 1, _END)),
    ("not a map", encode_messages([1], _END)),
    ("unknown method", encode_messages({"method": "Nope"}, _END)),
    ("wrong arity", encode_messages({"method": "Echo"}, _END)),
    (
        "an arg that is not CBOR",
        encode_messages({"method": "Echo", "nargs": 1})
        + b"\x00\x00\x00\x01\xff"
        + encode_messages(_END),
    ),
    (
        "a message cut short",
        encode_messages({"method": "Echo", "nargs": 1}) + b"\x00\x00\x00\x09ab",
    ),
    ("a method draining nothing", encode_messages({"method": "Drain", "nargs": 1}, 5, _END)),
    (
        "the end of args encoded another way (a key's length in two bytes)",
        encode_messages({"method": "Echo", "nargs": 1}, b"hi")
        + b"\x00\x00\x00\x13\xa1\x78\x0fend_stream_args\xf5",
    ),
    ("nothing at all", b""),
    # (1 and 1.0 equal True in Python; the protocol's end of args is the CBOR true itself)
    ("the end of args as 1", encode_messages({"method": "Drain"}, {"end_stream_args": 1})),
    ("the end of args as 1.0", encode_messages({"method": "Drain"}, {"end_stream_args": 1.0})),
    (
        "the end of args with another key",
        encode_messages({"method": "Drain"}, {"end_stream_args": True, "x": 1}),
    ),
]


def _exchange(client: Client, payload: bytes) -> list[Any]:
    """Send ``payload`` as a whole request on a new flow of the client's VC; the response's
    messages."""
    (conn,) = client._vcs.values()
    flow = conn.connect()
    flow.write(payload, end=True)
    reply = b""
    try:
        while chunk := flow.read(time.monotonic() + 10):
            reply += chunk
    except errors.IPCError as exc:  # the server reset the flow
        return ["reset", exc.id]
    finally:
        flow.close()
    values = split_messages(reply)
    assert values is not None
    return values


def _both_ways(
    make_server: MakeServer,
    make_client: MakeClient,
    payloads: list[bytes],
    authorizer: Any = None,
    options: ServerOptions | None = None,
    ways: tuple[bool, ...] = (True, False),
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The answers to ``payloads`` (whole requests) of a server taking the short way, then
    of one taking the general way for every request; only the ways in ``ways`` are asked
    (the other's answers are then empty)."""
    answers: dict[bool, list[list[Any]]] = {True: [], False: []}
    for short in ways:
        server, name = make_server(Service(), authorizer or AllowEveryone(), options=options)
        if not short:  # every request the general way, message by message
            server._parse_whole_request = lambda flow: None  # type: ignore[method-assign]
        client = make_client()
        with contextlib.suppress(errors.IPCError):  # (an authorizer may refuse it)
            client.call(ctx(), name, "Echo", 0)  # the VC
        answers[short] = [_exchange(client, payload) for payload in payloads]
    return answers[True], answers[False]


def _error_id(answer: list[Any]) -> str:
    (header,) = answer
    assert isinstance(header.get("error"), errors.IPCError), answer
    return str(header["error"].id)


# (Turns the short way off by replacing a method on the server, which a compiled class forbids.)
@pytest.mark.interpreted
def test_the_short_way_answers_like_the_general_way(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    shorts, generals = _both_ways(make_server, make_client, [p for _, p in _CRAFTED])
    for (label, _payload), short, general in zip(_CRAFTED, shorts, generals, strict=True):
        assert short == general, label
    assert shorts[0] == [{"end": True, "nresults": 1}, b"hi"]
    assert shorts[2] == [{"end": True, "nresults": 1}, []]  # Drain saw no stream item
    end_as_one = [label for label, _ in _CRAFTED].index("the end of args as 1")
    assert _error_id(shorts[end_as_one]) == "ipc.BadProtocol"


class _Deny:
    def authorize(self, call: Any) -> None:
        raise errors.NoAccessError("server: denied by the test")


@pytest.mark.interpreted
def test_an_unauthorized_caller_gets_no_access_before_any_arg_is_decoded_either_way(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The caller is authorized before any arg is decoded, on both ways: an arg that is not
    CBOR, in the same chunk as the header, is never looked at for a caller who may not call
    (the general way once decoded every message of the header's chunk at once)."""
    bad_arg = b"\x00\x00\x00\x01\xff"
    payloads = [
        encode_messages({"method": "Echo", "nargs": 1}) + bad_arg + encode_messages(_END),
        encode_messages({"method": "Echo", "nargs": 1, "language": "en"})
        + bad_arg
        + encode_messages(_END),
        encode_messages({"method": "Nope", "nargs": 1}) + bad_arg + encode_messages(_END),
    ]
    shorts, generals = _both_ways(make_server, make_client, payloads, authorizer=_Deny())
    assert shorts == generals
    # (The method is found before the caller is authorized for it.)
    assert [_error_id(a) for a in shorts] == ["ipc.NoAccess", "ipc.NoAccess", "ipc.UnknownMethod"]


@pytest.mark.parametrize("ways", [(True,), pytest.param((False,), marks=pytest.mark.interpreted)])
def test_the_short_way_keeps_the_servers_header_limits(
    make_server: MakeServer, make_client: MakeClient, ways: tuple[bool, ...]
) -> None:
    """A server whose header limits are tighter than the usual header refuses it on both
    ways (the hand-written header reader once read it whatever the limits said)."""
    header = encode_request_message("", "Echo", 1, 5.0, b"t" * 16, b"s" * 16, 0)
    assert header is not None and len(header) - 4 > 64
    payload = header + encode_messages(b"hi", _END)
    for limits in (Limits(max_message_size=64), Limits(max_items=8), Limits(max_depth=1)):
        options = ServerOptions(header_limits=limits)
        shorts, generals = _both_ways(
            make_server, make_client, [payload], options=options, ways=ways
        )
        for answers in (shorts, generals):
            assert [_error_id(a) for a in answers] in ([], ["ipc.BadProtocol"]), limits
        assert shorts or generals
    # Limits that admit every usual header leave the short way on (and answer the call).
    options = ServerOptions(header_limits=Limits(max_message_size=160, max_items=17, max_depth=2))
    shorts, generals = _both_ways(make_server, make_client, [payload], options=options, ways=ways)
    assert (shorts or generals) == [[{"end": True, "nresults": 1}, b"hi"]]


@pytest.mark.parametrize("ways", [(True,), pytest.param((False,), marks=pytest.mark.interpreted)])
def test_the_short_way_charges_the_vcs_args_budget(
    make_server: MakeServer, make_client: MakeClient, ways: tuple[bool, ...]
) -> None:
    """``max_args_bytes_per_vc`` holds for whole requests too: a call whose arg is over it
    has its flow reset with OverloadedError on both ways, one within it is answered."""
    options = ServerOptions(max_args_bytes_per_vc=1024)
    payloads = [
        encode_messages({"method": "Echo", "nargs": 1}, b"x" * 3000, _END),
        encode_messages({"method": "Echo", "nargs": 1}, b"y" * 500, _END),
    ]
    shorts, generals = _both_ways(make_server, make_client, payloads, options=options, ways=ways)
    assert (shorts or generals) == [
        ["reset", "ipc.Overloaded"],
        [{"end": True, "nresults": 1}, b"y" * 500],
    ]


def test_received_all_peeks_and_discard_consumes(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _server, name = make_server(Service(), AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    (conn,) = client._vcs.values()
    flow = conn.connect()
    assert flow.received_all() is None  # the peer is not done: more may come
    flow.write(encode_messages({"method": "Echo", "nargs": 1}, b"abc", _END), end=True)
    deadline = time.monotonic() + 10
    while flow.received_all() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    whole = flow.received_all()
    assert whole is not None and split_messages(whole) == [{"end": True, "nresults": 1}, b"abc"]
    assert flow.received_all() == whole  # a peek: nothing consumed
    flow.discard_received()
    assert flow.received_all() == b""
    assert flow.read(time.monotonic() + 1) == b""  # EOF: what was discarded is gone
    flow.close()


def test_the_handoff_ticker_stops_soon_after_the_last_inline_call(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The ticker that gives long inline calls a helper reader ticks only while calls come:
    one quick call, and it stops within a few ticks (an idle or lightly loaded server is not
    woken every millisecond; it once went on for ``IDLE_EXIT``, half a second, after every
    call). The next call starts it again and is answered as usual."""
    svc = Service()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    quiet_by = time.monotonic() + 5  # (calls of earlier tests may still run: they tick it)
    while HANDOFF.ticking and time.monotonic() < quiet_by:
        time.sleep(0.01)
    for attempt in range(2):
        assert client.call(ctx(), name, "Echo", attempt) == (attempt,)
        stop_by = time.monotonic() + IDLE_EXIT * 0.6
        while HANDOFF.ticking and time.monotonic() < stop_by:
            time.sleep(0.002)
        assert not HANDOFF.ticking, "the handoff thread still ticks with nothing to watch"
    # A long call still gets its helper reader (the ticker starts again): the same VC
    # answers another call while the long one runs on its reader thread.
    waiter = threading.Thread(target=client.call, args=(ctx(), name, "Sleep", 1.0))
    waiter.start()
    try:
        assert svc.running.acquire(timeout=5)
        started = time.monotonic()
        assert client.call(ctx(), name, "Echo", "meanwhile") == ("meanwhile",)
        assert time.monotonic() - started < 0.9  # not after the long call
    finally:
        waiter.join(5)


def test_the_handoff_ticker_ticks_once_per_inline_handoff_while_calls_come(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """While calls keep coming, each tick wakes the handoff thread: it ticks every
    ``INLINE_HANDOFF`` (not twice as often, as it once did), and still gives every job a
    helper by the time it has run ``INLINE_HANDOFF`` (see the long call above). A sleep
    only ever oversleeps, so the bound holds on a slow machine too."""
    svc = Service()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    assert client.call(ctx(), name, "Echo", 0) == (0,)
    before, start = HANDOFF.ticks, time.monotonic()
    calls = 0
    while time.monotonic() - start < 0.4:
        assert client.call(ctx(), name, "Echo", calls) == (calls,)
        calls += 1
    elapsed = time.monotonic() - start
    ticks = HANDOFF.ticks - before
    assert ticks >= 1, "the ticker did not tick while calls came"
    assert ticks <= elapsed / INLINE_HANDOFF + 3, (ticks, elapsed, calls)
