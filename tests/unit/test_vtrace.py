"""Traces across calls: the trace context travels; collected spans come back and merge."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import errors, vtrace
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall
from tests.conftest import Family

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


@expose
class Backend:
    def Echo(self, call: ServerCall, x: Any) -> Any:
        span = vtrace.current_span(call.context)
        if span is not None:
            span.annotate("backend echoing")
        return x


@expose
class Middle:
    def __init__(self, client: Client, backend: str) -> None:
        self.client, self.backend = client, backend

    def Relay(self, call: ServerCall, x: Any) -> Any:
        (out,) = self.client.call(call.context, self.backend, "Echo", x)
        return out


def test_collected_spans_of_every_hop_come_back(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    _, backend = make_server(Backend(), AllowEveryone())
    _, middle = make_server(Middle(make_client(family.member("middle")), backend), AllowEveryone())
    client = make_client()
    assert client.call(Context.background().with_timeout(10), middle, "Relay", 0) == (0,)
    # Now both hops are warm: the calls below take the clients' short way, which must carry
    # and bring back the trace exactly as the general way does.
    ctx, root = vtrace.with_collection(Context.background().with_timeout(10), "test")
    assert client.call(ctx, middle, "Relay", 7) == (7,)
    spans = vtrace.STORE.trace(root.trace_id)
    names = [s.name for s in spans]
    assert "test" in names
    assert "''.Relay" in names and "''.Echo" in names  # both servers' spans came back
    assert sum(1 for n in names if n.startswith("<client>")) == 2  # both client hops
    by_id = {s.span_id: s for s in spans}
    echo = next(s for s in spans if s.name == "''.Echo")
    assert any(msg == "backend echoing" for _, msg in echo.annotations)
    # The chain of parents leads from the backend's span up to the root.
    hops = 0
    node = echo
    while node.parent_id in by_id:
        node = by_id[node.parent_id]
        hops += 1
    assert node.span_id == root.span_id and hops == 4


def test_a_server_in_the_same_process_leaves_the_callers_spans_as_they_are(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """The server's reply carries every span of the trace this process holds, the caller's
    still open among them; merging those copies replaced the live records, so the caller's
    span lost its end and what was annotated after the call."""
    _, backend = make_server(Backend(), AllowEveryone())
    client = make_client()
    ctx, root = vtrace.with_collection(Context.background().with_timeout(10), "job")
    for x in (1, 2):  # (the second call takes the short way)
        assert client.call(ctx, backend, "Echo", x) == (x,)
    root.annotate("after the calls")
    root.finish()
    spans = vtrace.STORE.trace(root.trace_id)
    job = next(s for s in spans if s.name == "job")
    assert job.end is not None and [m for _, m in job.annotations] == ["after the calls"]
    hops = [s for s in spans if s.name.startswith("<client>")]
    assert len(hops) == 2 and all(s.end is not None for s in hops)
    echoes = [s for s in spans if s.name == "''.Echo"]
    assert len(echoes) == 2 and all(s.end is not None for s in echoes)
    # A peer's copy is replaced by its later copy, a record of this process's never.
    copy = vtrace.SpanRecord.from_wire(job.to_wire() | {"end": None, "notes": []})
    assert copy is not None and copy.remote
    vtrace.STORE.merge(root.trace_id, [copy.to_wire()])
    assert next(s for s in vtrace.STORE.trace(root.trace_id) if s.name == "job") is job
    other = vtrace.SpanRecord(b"p" * 16, root.span_id, "peer", 1.0)
    vtrace.STORE.merge(root.trace_id, [other.to_wire()])
    vtrace.STORE.merge(root.trace_id, [other.to_wire() | {"end": 2.0}])
    (peer,) = [s for s in vtrace.STORE.trace(root.trace_id) if s.name == "peer"]
    assert peer.remote and peer.end == 2.0


def test_without_collection_nothing_is_recorded(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    _, backend = make_server(Backend(), AllowEveryone())
    ctx, span = vtrace.with_new_span(Context.background().with_timeout(10), "quiet")
    assert make_client().call(ctx, backend, "Echo", 1) == (1,)
    assert vtrace.STORE.trace(span.trace_id) == []


def test_ids_are_fresh_in_a_forked_child() -> None:
    import os

    from ipcclient import vtrace as vtrace_mod

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send two ids and leave at once
        try:
            os.write(write_end, vtrace_mod._new_id() + vtrace_mod._new_id())
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    mine = {vtrace_mod._new_id() for _ in range(2)}
    theirs = {child[:16], child[16:32]}
    assert len(mine | theirs) == 4  # parent and child never make the same id


def test_ids_do_not_follow_the_applications_random_seed() -> None:
    import random

    random.seed(7)
    first = vtrace.with_collection(Context.background())[1].trace_id
    random.seed(7)
    second = vtrace.with_collection(Context.background())[1].trace_id
    assert first != second


def test_a_span_keeps_every_note_and_its_end_under_threads() -> None:
    """A span makes its record lazily: threads annotating, finishing and reading it at once
    must still see one record with every note and the end time."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        bg = Context.background()
        spans = [vtrace.new_span(bg, "s") for _ in range(5000)]

        def annotate() -> None:
            for span in spans:
                span.annotate("x")

        def finish() -> None:
            for span in spans:
                span.finish()

        def read() -> None:
            for span in spans:
                _ = span.record

        threads = [threading.Thread(target=f) for f in (annotate, annotate, finish, read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(len(span.record.annotations) == 2 for span in spans)
        assert all(span.record.end is not None for span in spans)
    finally:
        sys.setswitchinterval(old)


def test_a_span_record_from_a_peer_with_times_no_float_holds_is_dropped() -> None:
    """Trace records are best effort: a start or end too large for a float (or not finite)
    makes the record None, and such a note is skipped (a bare OverflowError once reached
    the caller of the call that collected them)."""
    base = {"id": b"i" * 16, "parent": b"p" * 16, "name": "n", "start": 1.0, "end": 2.0}
    assert vtrace.SpanRecord.from_wire(base) is not None
    for key in ("start", "end"):
        for bad in (2**2000, float("inf"), float("nan"), True):
            assert vtrace.SpanRecord.from_wire({**base, key: bad}) is None
    noted = vtrace.SpanRecord.from_wire({**base, "notes": [[2**2000, "a"], [1.5, "b"]]})
    assert noted is not None and noted.annotations == [(1.5, "b")]


def test_with_collection_refuses_what_is_not_a_context_or_a_name() -> None:
    for ctx, name in [(None, "x"), ("ctx", "x"), (Context.background(), 5)]:
        with pytest.raises(errors.BadArgError, match="with_collection"):
            vtrace.with_collection(ctx, name)
