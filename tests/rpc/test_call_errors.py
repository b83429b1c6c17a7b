"""What a streaming call says once something other than the server's answer ended it.

A malformed response header (a peer that lies: the real server is made to send one) must end
the call, and every later ``recv``/``finish`` must say what ended it, not hand out the items
that follow nor report a cancellation nobody asked for. And the one way to stream both ways
past the flow-control windows: a sending thread beside a receiving one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import call as callmod
from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import NoRetry
from ipcclient.server import call as server_call
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall
from ipcclient.wire.messages import encode_messages

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


def receiving(call: Any) -> list[BaseException]:
    """Start a thread that waits in ``call.recv()`` once, and return once it holds the call's
    receiving side; the list gets the IPCError its recv raised (EndOfStreamError
    included). The thread is a daemon: it ends with the call."""
    met: list[BaseException] = []

    def receive() -> None:
        try:
            call.recv()
        except errors.IPCError as exc:
            met.append(exc)

    threading.Thread(target=receive, daemon=True).start()
    deadline = time.monotonic() + 5
    while not call._recv_lock.locked() and not met and time.monotonic() < deadline:
        time.sleep(0.01)
    return met


@expose
class Counter:
    def Count(self, call: ServerCall, n: int) -> str:
        for i in range(n):
            call.send(i)
        return "done"


@pytest.mark.interpreted  # (replaces a constant of ipcclient.server.call at run time)
def test_a_malformed_item_header_ends_the_call_and_every_later_step_says_so(
    make_server: MakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each streamed item goes out behind a header that is not a map (5).
    monkeypatch.setattr(server_call, "_STREAM_ITEM_MESSAGE", encode_messages(5))
    _, name = make_server(Counter(), AllowEveryone())
    client = make_client()
    ctx = Context.background().with_timeout(10)
    call = client.start_call(ctx, name, "Count", [3])
    with pytest.raises(errors.BadProtocolError) as first:
        call.recv()
    assert first.value.request_sent is True
    assert call.ended  # (before: the call went on, and the next recv returned an item)
    seen: list[Any] = []
    for step in (call.recv, call.recv, call.finish):
        with pytest.raises(errors.IPCError) as later:
            seen.append(step())
        # (before: CanceledError "flow cancelled", as if someone had cancelled it)
        assert type(later.value) is errors.BadProtocolError, later.value
        assert later.value.msg == first.value.msg and later.value.request_sent is True
    assert seen == []
    # The VC is fine for other calls.
    monkeypatch.undo()
    assert client.call(ctx, name, "Count", 0) == ("done",)


@expose
class Reader:
    def ReadOneThenSend(self, call: ServerCall) -> None:
        call.recv()
        time.sleep(0.1)  # (the client's sender fills the window and waits for credit)
        call.send(1)
        call.context.wait(10)


@pytest.mark.interpreted  # (replaces a constant of ipcclient.server.call at run time)
def test_a_sender_blocked_when_a_malformed_header_ends_the_call_is_told_why(
    make_server: MakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiving thread met a malformed header, which ends the call; the sending thread,
    waiting for credit, woke with the transport's "flow cancelled" CanceledError, as if
    someone had cancelled. It gets the error that ended the call."""
    monkeypatch.setattr(server_call, "_STREAM_ITEM_MESSAGE", encode_messages(5))
    _, name = make_server(Reader(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(10), name, "ReadOneThenSend")
    received = receiving(call)
    with pytest.raises(errors.BadProtocolError):
        while True:
            call.send(b"x" * 200_000)
    assert wait_for(lambda: received)
    assert [type(e) for e in received] == [errors.BadProtocolError]


@expose
class Echoer:
    def EchoStream(self, call: ServerCall) -> int:
        n = 0
        for item in call:
            call.send(item)
            n += 1
        return n


def test_one_thread_sends_while_another_receives(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Full duplex beyond the flow-control windows (8 MB each way against a 1 MiB window):
    sending everything before reading would wait for credit until the deadline, so one
    thread sends (and closes the send side) while another reads; finish once both are
    done."""
    _, name = make_server(Echoer(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(30), name, "EchoStream")
    items = [i.to_bytes(4, "big") * 2048 for i in range(1000)]
    failed: list[BaseException] = []

    def send_all() -> None:
        try:
            for item in items:
                call.send(item)
            call.close_send()
        except BaseException as exc:  # (reported below)
            failed.append(exc)

    sender = threading.Thread(target=send_all)
    sender.start()
    got = list(call)
    sender.join(30)
    assert not sender.is_alive() and not failed, failed
    assert got == items
    assert call.finish() == (1000,)


@expose
class Streamer:
    def Unencodable(self, call: ServerCall) -> str:
        call.send(1)
        call.send(object())  # (not caught: the method fails with it)
        return "never"

    def Forever(self, call: ServerCall) -> None:
        while True:
            call.send(b"x" * 1024)


def test_an_item_the_server_cannot_encode_is_the_servers_fault(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """ServerCall.send's BadArgError escaping the method reached the client as a BadArg with
    advice meant for a caller ("send it in pieces"): the client's arguments were fine."""
    _, name = make_server(Streamer(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(10), name, "Unencodable")
    assert call.recv() == 1
    with pytest.raises(errors.InternalError, match="cannot encode a streamed result"):
        call.recv()
    with pytest.raises(errors.InternalError, match="cannot encode a streamed result"):
        call.finish()


def test_a_server_giving_up_on_a_client_that_reads_nothing_says_so(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The server's send_timeout passing reset the flow with the transport's "deadline
    passed" TimeoutError: the client, far from its own deadline, could not tell."""
    from ipcclient.server.server import ServerOptions

    _, name = make_server(Streamer(), AllowEveryone(), options=ServerOptions(send_timeout=0.5))
    client = make_client()
    call = client.start_call(Context.background().with_timeout(20), name, "Forever")
    deadline = time.monotonic() + 10
    with pytest.raises(errors.TimeoutError) as info:
        time.sleep(1.5)  # (reads nothing: the window fills, the server waits, gives up)
        while time.monotonic() < deadline:
            call.recv()
    assert "the client read nothing for send_timeout (0.5 s)" in info.value.msg


@expose
class _Answers:
    def Big(self, call: ServerCall) -> bytes:
        return b"r" * 8192

    def Fails(self, call: ServerCall) -> None:
        raise errors.BadArgError("x" * 8192)


@pytest.mark.parametrize(
    ("method", "answer"), [("Big", "final results"), ("Fails", "error answer")]
)
def test_a_final_answer_the_client_does_not_read_ends_with_the_servers_reason(
    make_server: MakeServer, make_client: MakeClient, method: str, answer: str
) -> None:
    """An answer larger than the client's window (here 1 KiB), results or error, waits for
    credit at most the server's send_timeout; the reset it ends with says so, not the
    transport's "deadline passed", which the client, far from its own deadline, would take
    for a deadline of its own."""
    from ipcclient.options import ClientOptions
    from ipcclient.server.server import ServerOptions
    from ipcclient.transport.manager import TransportOptions
    from ipcclient.wire.mux import MuxConfig

    _, name = make_server(_Answers(), AllowEveryone(), options=ServerOptions(send_timeout=0.5))
    tiny = TransportOptions(mux=MuxConfig(initial_window=1024))
    client = make_client(options=ClientOptions(default_call_timeout=20, transport=tiny))
    call = client.start_call(Context.background().with_timeout(20), name, method)
    time.sleep(1.5)  # (reads nothing: the server waits for credit, then gives up)
    with pytest.raises(errors.TimeoutError) as info:
        call.finish()
    assert "the client read nothing for send_timeout (0.5 s)" in info.value.msg, answer
    assert info.value.request_sent is True


@expose
class Failer:
    def __init__(self) -> None:
        self.read_one = threading.Event()

    def FailAfterOne(self, call: ServerCall) -> None:
        call.recv()
        self.read_one.set()
        time.sleep(0.1)  # (the client's sender fills the window and waits for credit)
        raise errors.NoExistError("no such thing")


def test_a_sender_blocked_when_the_server_fails_the_call_is_told_it_ended(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """One thread sends while another receives; the server fails the call while the sender
    waits for credit. The receiving thread met the error first in about a third of the
    runs: its end of the call reset the flow, which forgot the server's FIN, and the sender
    woke with CanceledError "flow cancelled" though nobody cancelled. It is AbortedError,
    as for a sender the server's end finds first, and finish says how the call ended."""
    svc = Failer()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    for _ in range(10):
        call = client.start_call(Context.background().with_timeout(10), name, "FailAfterOne")
        received: list[BaseException] = []

        def receive(call: Any = call, received: list[BaseException] = received) -> None:
            try:
                for _ in call:
                    pass
            except errors.IPCError as exc:
                received.append(exc)

        receiver = threading.Thread(target=receive)
        receiver.start()
        with pytest.raises(errors.AbortedError, match="server has ended the call"):
            while True:
                call.send(b"x" * 200_000)
        receiver.join(10)
        assert [type(e) for e in received] == [errors.NoExistError]
        with pytest.raises(errors.NoExistError):
            call.finish()


@expose
class Ender:
    def __init__(self) -> None:
        self.go = threading.Event()

    def OneThenEnd(self, call: ServerCall) -> str:
        call.send(1)
        self.go.wait(10)  # (the client's receiving thread now waits in recv for more)
        return "ended"

    def Total(self, call: ServerCall) -> int:
        return sum(call)  # (streams nothing: answers once the client's items end)


def test_finish_waits_for_a_recv_in_progress_in_another_thread(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Another thread waits in recv for the server's next message when finish() is called:
    finish read the stream beside it (the two took each other's messages: a result taken
    for a header, "a response header must be a map", items lost). It waits for that recv to
    return, then reads on: the receiving thread gets the end of the stream, finish the
    results."""
    svc = Ender()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(10), name, "OneThenEnd")
    got: list[Any] = []
    receiver = threading.Thread(target=lambda: got.extend(call))
    receiver.start()
    deadline = time.monotonic() + 5
    while not (got and call._recv_lock.locked()) and time.monotonic() < deadline:
        time.sleep(0.01)
    releaser = threading.Timer(0.3, svc.go.set)  # (while finish waits for the lock)
    releaser.start()
    assert call.finish() == ("ended",)
    receiver.join(10)
    releaser.join()
    assert got == [1]


def test_finish_from_a_third_thread_closes_the_send_side_before_it_waits(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The sending thread is done (without close_send) and the receiving thread waits in
    recv for the server, which waits for the end of the client's items: finish() from a
    third thread must close the send side before it waits for that recv, or all three wait
    for each other until the deadline."""
    _, name = make_server(Ender(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(10), name, "Total")
    sender = threading.Thread(target=lambda: [call.send(i) for i in range(5)])
    sender.start()
    sender.join(10)
    ended = receiving(call)
    start = time.monotonic()
    assert call.finish() == (10,)
    assert time.monotonic() - start < 5
    assert wait_for(lambda: ended)
    assert [type(e) for e in ended] == [errors.EndOfStreamError]


@expose
class Slow:
    def __init__(self) -> None:
        self.go = threading.Event()

    def Hold(self, call: ServerCall) -> int:
        self.go.wait(10)  # (reads nothing, sends nothing, until told)
        call.send(1)
        return sum(1 for _ in call)


def test_a_second_thread_on_one_side_of_a_call_is_refused(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """One thread sends and one receives at a time. A second receiver took items meant for
    the first (and finish once returned a wrong result); a second sender's bytes
    interleaved with the first's on the wire (the server saw a message of 2 GB). Each is
    now refused at once with BadStateError, and the call goes on."""
    svc = Slow()
    _, name = make_server(svc, AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(10), name, "Hold")
    items: list[Any] = []
    receiver = threading.Thread(target=lambda: items.append(call.recv()))
    receiver.start()
    deadline = time.monotonic() + 5
    while not call._recv_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(errors.BadStateError, match="another thread is receiving"):
        call.recv()
    blocked: list[BaseException] = []

    def send_until_blocked() -> None:
        try:
            while True:  # (the server reads nothing: the window fills, the send waits)
                call.send(b"y" * 100_000)
        except errors.IPCError as exc:
            blocked.append(exc)

    sender = threading.Thread(target=send_until_blocked)
    sender.start()
    while not call._send_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    flow = call._stream.flow
    while not flow.starved and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flow.starved  # (the sender waits for credit, holding its side)
    with pytest.raises(errors.BadStateError, match="another thread is sending"):
        call.send(b"z")
    with pytest.raises(errors.BadStateError, match="another thread is sending"):
        call.close_send()
    svc.go.set()
    receiver.join(10)
    assert items == [1]
    call.cancel()
    sender.join(10)
    assert [type(e) for e in blocked] == [errors.CanceledError]


@pytest.mark.parametrize("streamed", [False, True], ids=["results", "streamed-items"])
def test_a_reply_complete_before_the_deadline_is_the_answer_read_after_it(
    make_server: MakeServer, make_client: MakeClient, streamed: bool
) -> None:
    """The server's whole reply (its items, results and FIN) came before the call's
    deadline, and the caller read it only after the deadline: it was TimeoutError, and the
    outcome of a call the server had carried out was lost (a caller may then repeat it).
    Such a reply is the answer (docs/protocol.md 5.5), as for Client.call; a reply not
    complete by the deadline is still a TimeoutError."""
    _, name = make_server(Counter(), AllowEveryone())
    client = make_client()
    n = 3 if streamed else 0
    call = client.start_call(Context.background().with_timeout(0.5), name, "Count", [n])
    flow = call.flow
    deadline = time.monotonic() + 5
    while not flow.peer_done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flow.peer_done
    assert call.context.wait(5)  # (past the deadline: the context has ended)
    assert call.context.err() is not None
    assert list(call) == list(range(n))
    assert call.finish() == ("done",)
    # A reply that was not complete by the deadline: the deadline wins.
    svc = Slow()
    _, slow = make_server(svc, AllowEveryone())
    late = client.start_call(Context.background().with_timeout(0.3), slow, "Hold")
    assert late.context.wait(5)  # (the deadline passed before the reply could come)
    svc.go.set()
    with pytest.raises(errors.TimeoutError):
        late.finish()


def test_client_call_on_a_streaming_method_says_to_use_start_call(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Client.call reads the results alone: on a method that streams, the first call (a new
    VC: the general way) and the next (the short way) both say to call it with start_call,
    not that finish() was called, which the caller never did."""
    _, name = make_server(Counter(), AllowEveryone())
    client = make_client()
    for _ in range(2):
        with pytest.raises(errors.BadStateError, match="the method streams results") as info:
            client.call(Context.background().with_timeout(10), name, "Count", 3)
        assert "finish() was called" not in info.value.msg


def wait_for(done: Callable[[], Any], seconds: float = 10.0) -> bool:
    """Whether ``done()`` became true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(done())


def test_a_context_callback_that_finishes_the_call_is_refused_not_a_deadlock(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A call without a deadline of its own gets the client's default, in a context the
    client made and ends with the call. finish released the call with its receiving side
    still locked, and that context's callbacks ran there: one that finished the call (to
    be sure it ends) waited for the lock its own thread held, for good. The call is
    released after the lock is let go, and a finish inside the call's own send or recv is
    refused at once."""
    _, name = make_server(Counter(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background(), name, "Count", [3])
    assert call.context.deadline is not None  # (the client's own context)
    seen: list[str] = []

    def on_done(_err: errors.IPCError) -> None:
        try:
            call.finish()
        except errors.BadStateError as exc:
            seen.append(exc.msg)

    call.context.add_done_callback(on_done)
    assert list(call) == [0, 1, 2]
    results: list[Any] = []
    finishing = threading.Thread(target=lambda: results.append(call.finish()), daemon=True)
    finishing.start()
    finishing.join(10)
    assert results == [("done",)]
    assert wait_for(lambda: seen)
    assert "already been called" in seen[0]


# --- an application's own error classes ------------------------------------------------------
@errors.register
class OutOfStock(errors.IPCError):
    """An application's error: registered, it comes back to the client as this class."""

    error_id = "shop.OutOfStock"
    default_action = errors.RetryAction.RETRY_BACKOFF


class Unregistered(errors.IPCError):
    error_id = "shop.Unregistered"


@errors.register
class OddInit(errors.IPCError):
    """A registered class whose constructor takes other arguments than IPCError's."""

    error_id = "shop.OddInit"

    def __init__(self, item: str, count: int) -> None:
        super().__init__(f"{count} x {item}")


@expose
class Shop:
    def Buy(self, call: ServerCall, what: str) -> None:
        if what == "odd":
            raise OddInit("pears", 3)
        if what == "unregistered":
            raise Unregistered("not registered")
        raise OutOfStock(f"no {what} left", what)


def test_a_registered_application_error_comes_back_as_its_class(
    make_server: Callable[..., tuple[Server, str]], make_client: Callable[..., Client]
) -> None:
    _, name = make_server(Shop(), AllowEveryone())
    client = make_client()
    ctx = Context.background().with_timeout(10.0)
    with pytest.raises(OutOfStock) as info:
        client.call(ctx, name, "Buy", "apples", options=[NoRetry()])
    assert info.value.id == "shop.OutOfStock"
    assert info.value.params == ("apples",)
    assert info.value.action is errors.RetryAction.RETRY_BACKOFF
    assert "no apples left" in info.value.msg
    assert info.value.request_sent is True
    # Unregistered: a plain IPCError that keeps the ID (as before).
    with pytest.raises(errors.IPCError) as plain:
        client.call(ctx, name, "Buy", "unregistered")
    assert type(plain.value) is errors.IPCError and plain.value.id == "shop.Unregistered"
    # A class that cannot be rebuilt from the wire form: a plain IPCError with its ID.
    with pytest.raises(errors.IPCError) as odd:
        client.call(ctx, name, "Buy", "odd")
    assert type(odd.value) is errors.IPCError and odd.value.id == "shop.OddInit"
    assert odd.value.msg == "3 x pears"


@pytest.mark.parametrize(
    "cls",
    [
        type("NoID", (errors.IPCError,), {}),  # (inherits ipc.Unknown: not its own)
        type("Empty", (errors.IPCError,), {"error_id": ""}),
        type("Long", (errors.IPCError,), {"error_id": "x" * 257}),
        type("Ours", (errors.IPCError,), {"error_id": "ipc.Mine"}),
        type("Builtin", (errors.IPCError,), {"error_id": "ipc.Timeout"}),
        type("Taken", (errors.IPCError,), {"error_id": "shop.OutOfStock"}),
        ValueError,
        errors.IPCError,
        "shop.X",
    ],
)
def test_register_refuses_what_it_cannot_map(cls: Any) -> None:
    with pytest.raises(errors.BadArgError, match=r"errors\.register"):
        errors.register(cls)
    assert errors.register(OutOfStock) is OutOfStock  # (again: the same class is fine)


# --- a send that waits for credit until the deadline says why -----------------------------
@pytest.mark.timeout(30)
def test_a_send_starved_of_credit_until_the_deadline_says_so(
    make_server: Callable[..., tuple[Server, str]], make_client: Callable[..., Client]
) -> None:
    """One thread sending everything before it reads: the server's replies fill the
    client's window, the server stops reading, and the client's send waits for credit until
    the deadline. That was a bare 'context deadline exceeded'; it now says what send waited
    for and what to do."""
    _, name = make_server(Echoer(), AllowEveryone())
    client = make_client()
    call = client.start_call(Context.background().with_timeout(1.5), name, "EchoStream")
    item = b"x" * 4096
    with pytest.raises(errors.TimeoutError) as info:
        for _ in range(100_000):  # (~400 MB: far beyond both windows; the deadline ends it)
            call.send(item)
    assert "send() was waiting for the server to take more" in info.value.msg
    assert "receive in another thread" in info.value.msg
    assert info.value.request_sent is True
    with pytest.raises(errors.TimeoutError) as again:
        call.finish()
    assert "send() was waiting" in again.value.msg


@errors.register
class Shortage(errors.IPCError):
    """A registered error that keeps a field of its own, set from its params."""

    error_id = "shop.Shortage"

    def __init__(self, msg: str = "", *params: Any, **kw: Any) -> None:
        super().__init__(msg, *params, **kw)
        self.item = params[0] if params else None


@expose
class Store:
    def Take(self, call: ServerCall, what: str) -> None:
        raise Shortage(f"no {what}", what)


def test_a_registered_errors_own_fields_survive_the_clients_copies(
    make_server: Callable[..., tuple[Server, str]], make_client: Callable[..., Client]
) -> None:
    """The client copies an error on its way out (``with_context``: request_sent, tried);
    the copy was made with IPCError's fields only, so ``exc.item`` was gone."""
    _, name = make_server(Store(), AllowEveryone())
    client = make_client()
    with pytest.raises(Shortage) as info:
        client.call(Context.background().with_timeout(10.0), name, "Take", "apples")
    assert info.value.item == "apples"
    copy = info.value.with_context(tried=["x"], msg="other")
    assert type(copy) is Shortage and copy.item == "apples" and copy.msg == "other"


def test_a_starved_sends_error_keeps_its_class_id_and_action() -> None:
    @errors.register
    class AppTimeout(errors.TimeoutError):
        error_id = "app.Timeout"
        default_action = errors.RetryAction.RETRY_BACKOFF

    said = callmod._starved(AppTimeout("app gave up", tried=["attempt 1"]))
    assert type(said) is AppTimeout and said.id == "app.Timeout"
    assert said.action is errors.RetryAction.RETRY_BACKOFF
    assert said.tried == ("attempt 1",) and said.request_sent is True
    assert said.msg.startswith("app gave up: send() was waiting")


def test_a_class_defined_again_under_its_name_registers_again() -> None:
    """A module reloaded (or a script also imported by its module name) defines its error
    classes again: registering the new class replaces the old one instead of refusing."""

    def define() -> type[errors.IPCError]:
        class Reloaded(errors.IPCError):
            error_id = "shop.Reloaded"

        return Reloaded

    first, second = define(), define()
    assert errors.register(first) is first
    assert errors.register(second) is second
    back = errors.from_wire(errors.to_wire(second("again")))
    assert type(back) is second
