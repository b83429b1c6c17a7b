"""What a client keeps and shows of a hostile server's replies: span records it merges into
its trace store (bounded, and never enough to fail a middle server's own reply) and error
IDs and messages it prints (never able to drive a terminal or forge a log line). The server
is tests/hostile.py's ScriptedServer: the real handshake, records and mux, and the bytes a
test chooses."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ipcclient
from ipcclient import Client, Context, Server, codec, errors, vtrace
from ipcclient.headers import Response
from ipcclient.options import ClientOptions, NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.server import ServerCall
from ipcclient.transport.manager import TransportOptions
from ipcclient.wire.messages import encode_messages
from ipcclient.wire.muxstate import MuxConfig
from tests.conftest import Family
from tests.hostile import ScriptedServer

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]
Reply = Callable[[int, bytes], bytes]

BIG = 3 * 1024 * 1024  # (under the 4 MiB a message may hold)


@pytest.fixture
def scripted(family: Family) -> Iterator[Callable[[Reply], str]]:
    """``scripted(reply)`` -> the name of a ScriptedServer answering with ``reply``."""
    made: list[ScriptedServer] = []

    def make(reply: Reply) -> str:
        server = ScriptedServer(family.member("server"), reply)
        made.append(server)
        return "/" + server.endpoint

    yield make
    for server in made:
        server.close()


def _span(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": os.urandom(16),
        "parent": bytes(16),
        "name": "s",
        "start": 1.0,
        "end": 2.0,
        "notes": [],
    }
    record.update(fields)
    return record


def _answer_ok_with(*records: dict[str, Any]) -> bytes:
    header = Response(end_stream_results=True, nresults=1, trace=records).to_wire()
    return encode_messages(header, "ok")


def _held(records: list[vtrace.SpanRecord]) -> int:
    return sum(
        len(r.span_id) + len(r.parent_id) + len(r.name) + sum(len(m) for _, m in r.annotations)
        for r in records
    )


@pytest.mark.parametrize("kind", ["annotation", "id"])
@pytest.mark.parametrize("fast", [True, False], ids=["call", "call-with-options"])
def test_a_servers_span_records_are_bounded_in_the_trace_store(
    scripted: Callable[[Reply], str], make_client: MakeClient, kind: str, fast: bool
) -> None:
    """Span ids are 16 bytes (docs/protocol.md 5.3) and a peer's annotations are cut like
    its span names: the store kept whatever a server sent, up to 1,024 spans of ~4 MiB per
    collected trace."""

    def reply(_n: int, _request: bytes) -> bytes:
        if kind == "annotation":
            return _answer_ok_with(_span(notes=[[1.0, "A" * BIG]]))
        return _answer_ok_with(_span(id=os.urandom(16) + bytes(BIG)))

    name = scripted(reply)
    client = make_client()
    ctx, root = vtrace.with_collection(Context.background().with_timeout(30), "job")
    options = () if fast else (NoRetry(),)  # (the fast path, and the general one)
    for _ in range(4):
        assert client.call(ctx, name, "Echo", 1, options=options) == ("ok",)
    held = _held(vtrace.STORE.trace(root.trace_id))
    assert held < 64 * 1024, f"the trace store holds {held} bytes of one server's records"


@pytest.mark.parametrize("many", [False, True], ids=["one-big-span", "many-spans"])
def test_a_hostile_downstream_server_cannot_fail_the_middle_servers_reply(
    scripted: Callable[[Reply], str],
    make_client: MakeClient,
    make_server: MakeServer,
    many: bool,
) -> None:
    """A server calling on its caller's collected trace sends every span of that trace
    back in its response header: span records a downstream server returned, unbounded,
    made that header too large to encode, and the middle server's successful call failed
    with InternalError. Many spans each within the usual sizes did too: the records a
    trace keeps of its peers are bounded as a whole."""

    def reply(_n: int, _request: bytes) -> bytes:
        if many:
            notes = [[1.0, "A" * 256]] * 64
            return _answer_ok_with(*(_span(name="s" * 256, notes=notes) for _ in range(200)))
        return _answer_ok_with(_span(notes=[[1.0, "A" * BIG]]))

    down = scripted(reply)
    inner = make_client()

    @ipcclient.expose
    class Middle:
        def Relay(self, call: ServerCall) -> str:
            for _ in range(2):
                inner.call(call.context, down, "Echo", 1)
            return "done"

    _, name = make_server(Middle(), AllowEveryone())
    ctx, _root = vtrace.with_collection(Context.background().with_timeout(30), "job")
    assert make_client().call(ctx, name, "Relay") == ("done",)


_EVIL_ID = "ipc.Overloaded\x1b[2J\x1b[H\nINFO all calls succeeded"


def test_a_servers_error_id_cannot_drive_a_terminal_through_details(
    scripted: Callable[[Reply], str], make_client: MakeClient
) -> None:
    """str(err) shows a peer's control characters escaped (docs/client.md); err.details()
    printed the error IDs of the attempts it lists as the server sent them."""

    def reply(_n: int, _request: bytes) -> bytes:
        err = errors.IPCError("busy", id=_EVIL_ID, action=errors.RetryAction.RETRY_BACKOFF)
        return encode_messages(Response(error=err, end_stream_results=True).to_wire())

    name = scripted(reply)
    with pytest.raises(errors.IPCError) as info:
        make_client().call(Context.background().with_timeout(3), name, "Echo", 1)
    err = info.value
    assert any("Overloaded" in t for t in err.tried)  # (retried: the attempts are listed)
    for text in (str(err), err.details()):
        assert "\x1b" not in text, text
        assert "\nINFO" not in text, text


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\u2028"])
def test_str_of_a_peer_error_escapes_bidi_and_invisible_characters(char: str) -> None:
    """A right-to-left override (or an isolate, a zero-width space) reorders or hides the
    rest of a line in a terminal or a log viewer: str(err) shows it as an escape, as the
    CLI's printer does."""
    wire = errors.to_wire(errors.IPCError(f"denied for user {char}nimda", id="ipc.NoAccess"))
    text = str(errors.from_wire(wire))
    assert char not in text, repr(text)
    assert "nimda" in text


_DENSE = codec.encode([{}] * 260_000)  # 260 KB, 260,001 items: ~16.6 MB counted decoded


def _dense_results(_n: int, _request: bytes) -> bytes:
    header = encode_messages(Response(end_stream_results=True, nresults=8).to_wire())
    return header + b"".join(len(_DENSE).to_bytes(4, "big") + _DENSE for _ in range(8))


@pytest.mark.parametrize("frame", [None, 4 << 20], ids=["default-frames", "big-frames"])
def test_results_over_the_budget_counted_decoded_are_refused_however_framed(
    scripted: Callable[[Reply], str], make_client: MakeClient, frame: int | None
) -> None:
    """8 results of 260,000 empty maps (2 MB on the wire, ~150 MB decoded) are over the
    results' budget once each item counts. A client whose frames are larger than the
    default read the whole reply in one read and split it uncounted (held whole)."""
    transport = TransportOptions()
    if frame is not None:
        transport = TransportOptions(
            mux=MuxConfig(initial_window=16 << 20, max_frame_payload=frame)
        )
    client = make_client(options=ClientOptions(default_call_timeout=60.0, transport=transport))
    name = scripted(_dense_results)
    for _ in range(2):  # (the first call dials; the next one reads the reply the short way)
        with pytest.raises(errors.BadProtocolError, match="total allowed"):
            client.call(Context.background().with_timeout(60), name, "Many")
