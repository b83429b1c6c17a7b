"""Spans and traces across calls, in the spirit of Vanadium's vtrace.

Owns: :class:`Span` (a named, timed piece of work with annotations, in a trace), the span a
:class:`~ipcclient.context.Context` carries, the wire form of span records, and a bounded,
thread-safe :class:`TraceStore` that keeps the traces this process was asked to collect.

Must not: do I/O or know the RPC protocol (the client puts the trace context in the request
header and merges the server's spans at finish; the server continues the trace).

Use: ``ctx, span = vtrace.with_new_span(ctx, "work")`` ... ``span.annotate("step")`` ...
``span.finish()``. ``vtrace.with_collection(ctx)`` asks every process the trace reaches to
record its spans and send them back; ``vtrace.STORE.trace(span.trace_id)`` then holds them.
"""

from __future__ import annotations

import collections
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipcclient import errors
from ipcclient.context import Context

__all__ = [
    "COLLECT",
    "STORE",
    "Span",
    "SpanRecord",
    "TraceStore",
    "current_span",
    "new_ids",
    "new_span",
    "with_collection",
    "with_new_span",
    "with_span",
]

COLLECT = 1
"""Trace flag: record spans in memory and send them back with the response."""
MAX_TRACES = 256
"""Traces a store keeps; the oldest is dropped first."""
MAX_SPANS_PER_TRACE = 1024
"""Spans one trace keeps; more are dropped (a runaway loop cannot grow memory)."""
MAX_ANNOTATIONS = 64
"""Annotations one span keeps."""
MAX_REMOTE_TEXT = 256
"""Characters kept of a peer's span name and of each of its annotations."""
MAX_REMOTE_CHARS_PER_TRACE = 256 * 1024
"""What the peers' span records of one trace may hold in all (characters of names and
annotations, plus a fixed charge per record and per annotation); later ones are dropped.
A process that serves a collected trace sends every span of it back in one response
header (at most 4 MiB): a peer must not be able to fill it."""
_ID_SIZE = 16
_SPAN_KEY = object()
_RECORD_LOCK = threading.Lock()
"""Guards making a span's record (rare: only collected or inspected spans have one)."""


@dataclass
class SpanRecord:
    """What is kept and sent of a span."""

    span_id: bytes
    parent_id: bytes
    name: str
    start: float
    end: float | None = None
    annotations: list[tuple[float, str]] = field(default_factory=list)
    remote: bool = field(default=False, compare=False)
    """A peer's copy (:meth:`from_wire`), not a record this process keeps up to date."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.span_id,
            "parent": self.parent_id,
            "name": self.name,
            "start": self.start,
            "end": self.end,
            "notes": [[when, msg] for when, msg in self.annotations],
        }

    @classmethod
    def from_wire(cls, value: Any) -> SpanRecord | None:
        """A record from a peer, or None when malformed (traces are best effort)."""
        if not isinstance(value, Mapping):
            return None
        sid, parent, name = value.get("id"), value.get("parent"), value.get("name")
        start, end, notes = value.get("start"), value.get("end"), value.get("notes", [])
        if not (isinstance(sid, bytes) and isinstance(parent, bytes) and isinstance(name, str)):
            return None
        if len(sid) != _ID_SIZE or len(parent) != _ID_SIZE:  # (docs/protocol.md 5.3: bytes(16))
            return None
        began = _time(start)
        ended = None if end is None else _time(end)
        if began is None or (end is not None and ended is None):
            return None
        annotations: list[tuple[float, str]] = []
        if isinstance(notes, list | tuple):
            for note in notes[:MAX_ANNOTATIONS]:
                if isinstance(note, list | tuple) and len(note) == 2 and isinstance(note[1], str):
                    when = _time(note[0])
                    if when is not None:
                        annotations.append((when, note[1][:MAX_REMOTE_TEXT]))
        return cls(sid, parent, name[:MAX_REMOTE_TEXT], began, ended, annotations, remote=True)


def _remote_size(rec: SpanRecord) -> int:
    """What a peer's span record is charged (see ``MAX_REMOTE_CHARS_PER_TRACE``)."""
    return 64 + len(rec.name) + sum(16 + len(msg) for _, msg in rec.annotations)


def _time(value: object) -> float | None:
    """A time a peer sent, as a finite float; None for anything else (an integer too large
    for a float among them)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


class TraceStore:
    """Collected traces by trace id (bounded, thread-safe)."""

    def __init__(self, max_traces: int = MAX_TRACES) -> None:
        self._lock = threading.Lock()
        self._traces: collections.OrderedDict[bytes, dict[bytes, SpanRecord]] = (
            collections.OrderedDict()
        )
        self._remote: dict[bytes, int] = {}  # trace id -> what its peers' records hold
        self._max = max_traces

    def record(self, trace_id: bytes, span: SpanRecord) -> None:
        with self._lock:
            spans = self._spans_locked(trace_id)
            was = spans.get(span.span_id)
            if was is not None or len(spans) < MAX_SPANS_PER_TRACE:
                spans[span.span_id] = span
                if was is not None and was.remote:  # (a peer's copy gives its room back)
                    self._remote[trace_id] = self._remote.get(trace_id, 0) - _remote_size(was)

    def _spans_locked(self, trace_id: bytes) -> dict[bytes, SpanRecord]:
        """The spans of ``trace_id``, made (and the oldest trace dropped) when it has none."""
        spans = self._traces.get(trace_id)
        if spans is None:
            spans = self._traces[trace_id] = {}
            while len(self._traces) > self._max:
                dropped, _ = self._traces.popitem(last=False)
                self._remote.pop(dropped, None)
        return spans

    def merge(self, trace_id: bytes, records: Sequence[Any]) -> None:
        """Add a peer's span records (wire form) to the trace. A span this process records
        itself keeps its own record (a server in the same process sends back copies of the
        caller's spans, still open, and of its own): only a peer's earlier copy is
        replaced by a later one. What the peers' records of one trace hold is bounded
        (:data:`MAX_REMOTE_CHARS_PER_TRACE`): past it, later ones are dropped."""
        for value in records[:MAX_SPANS_PER_TRACE]:
            rec = SpanRecord.from_wire(value)
            if rec is None:
                continue
            size = _remote_size(rec)
            with self._lock:
                spans = self._spans_locked(trace_id)
                mine = spans.get(rec.span_id)
                if mine is None or mine.remote:  # (never over a record of our own)
                    held = self._remote.get(trace_id, 0)
                    if mine is not None:
                        held -= _remote_size(mine)
                    # (Past the bound, best effort: the trace holds enough of its peers'.)
                    if held + size <= MAX_REMOTE_CHARS_PER_TRACE and (
                        mine is not None or len(spans) < MAX_SPANS_PER_TRACE
                    ):
                        spans[rec.span_id] = rec
                        self._remote[trace_id] = held + size

    def trace(self, trace_id: bytes) -> list[SpanRecord]:
        """The spans of a trace, by start time."""
        with self._lock:
            spans = list(self._traces.get(trace_id, {}).values())
        return sorted(spans, key=lambda s: s.start)


STORE = TraceStore()
"""The process's trace store."""


class Span:
    """A timed, named piece of work in a trace.

    Its :class:`SpanRecord` is made when the span is collected or when something asks for
    it (``record``, ``annotate``): most spans (every call's, when nobody collects) never
    need one."""

    __slots__ = (
        "_collect",
        "_end",
        "_name",
        "_parent_id",
        "_record",
        "_start",
        "span_id",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: bytes,
        parent_id: bytes,
        collect: bool,
        span_id: bytes | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = _new_id() if span_id is None else span_id
        self._parent_id = parent_id
        self._name = name
        self._start = time.time()
        self._end: float | None = None
        self._record: SpanRecord | None = None
        self._collect = collect
        if collect:
            STORE.record(trace_id, self.record)

    @property
    def name(self) -> str:
        return self._name

    @property
    def collecting(self) -> bool:
        return self._collect

    @property
    def flags(self) -> int:
        return COLLECT if self._collect else 0

    @property
    def record(self) -> SpanRecord:
        record = self._record
        if record is None:
            with _RECORD_LOCK:  # one record per span, whichever threads ask at once
                record = self._record
                if record is None:
                    record = SpanRecord(
                        self.span_id, self._parent_id, self._name, self._start, self._end
                    )
                    self._record = record
        return record

    def annotate(self, message: str) -> None:
        notes = self.record.annotations
        if len(notes) < MAX_ANNOTATIONS:
            notes.append((time.time(), message))

    def finish(self) -> None:
        record = self._record
        if record is None:
            with _RECORD_LOCK:  # (a record being made from _end meanwhile must see it)
                record = self._record  # (read again: another thread may have made it)
                if record is None:
                    if self._end is None:
                        self._end = time.time()
                    return
        if record.end is None:
            record.end = time.time()


def current_span(ctx: Context) -> Span | None:
    """The span ``ctx`` carries, if any."""
    span = ctx.value(_SPAN_KEY)
    return span if isinstance(span, Span) else None


def with_new_span(
    ctx: Context,
    name: str,
    *,
    trace_id: bytes | None = None,
    parent_id: bytes | None = None,
    collect: bool | None = None,
) -> tuple[Context, Span]:
    """A child context carrying a new span: a child of the context's span, or of the given
    remote parent, or the root of a new trace."""
    span = new_span(ctx, name, trace_id=trace_id, parent_id=parent_id, collect=collect)
    return ctx.with_value(_SPAN_KEY, span), span


def _new_id() -> bytes:
    """A fresh 16-byte trace or span id. Ids need to be unique, not secret: a generator of
    our own (seeded from the OS, reseeded in a forked child, untouched by the application's
    ``random.seed``) makes one without a system call, 4x faster than ``os.urandom``."""
    return _getrandbits(128).to_bytes(16, "big")


_RNG = random.Random()
_getrandbits = _RNG.getrandbits
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_RNG.seed)


def new_ids() -> tuple[bytes, bytes]:
    """A fresh trace id and span id (one draw), for a call that starts a trace nobody
    records."""
    both = _getrandbits(256).to_bytes(32, "big")
    return both[:16], both[16:]


def new_span(
    ctx: Context,
    name: str,
    *,
    trace_id: bytes | None = None,
    parent_id: bytes | None = None,
    collect: bool | None = None,
) -> Span:
    """The span :func:`with_new_span` makes, without the context (see :func:`with_span`)."""
    if trace_id is not None and parent_id is not None and collect is not None:
        return Span(name, trace_id, parent_id, collect)  # (a remote parent: the server's case)
    parent = current_span(ctx)
    if trace_id is None and parent is None and parent_id is None:
        # A new trace: its id and the span's from one draw.
        both = _getrandbits(256).to_bytes(32, "big")
        return Span(name, both[:16], bytes(16), bool(collect), both[16:])
    if trace_id is None:
        trace_id = parent.trace_id if parent is not None else _new_id()
    if parent_id is None:
        parent_id = parent.span_id if parent is not None else bytes(16)
    if collect is None:
        collect = parent.collecting if parent is not None else False
    return Span(name, trace_id, parent_id, collect)


def span_item(span: Span) -> tuple[Any, Span]:
    """The (key, value) a context carries for ``span``: for code that builds one context
    with a deadline and the span at once (the server, per call)."""
    return (_SPAN_KEY, span)


def with_span(ctx: Context, span: Span) -> Context:
    """A child context carrying ``span`` (made by :func:`new_span`)."""
    return ctx.with_value(_SPAN_KEY, span)


def with_collection(ctx: Any, name: Any = "root") -> tuple[Context, Span]:
    """A new trace that every process it reaches records and sends back.

    Raises:
        BadArgError: ``ctx`` is not a :class:`~ipcclient.context.Context` or ``name`` is
            not text.
    """
    if not isinstance(ctx, Context) or not isinstance(name, str):
        raise errors.BadArgError(
            "vtrace: with_collection takes a Context and a name (text), not "
            f"{type(ctx).__name__} and {type(name).__name__}"
        )
    return with_new_span(ctx, name, trace_id=_new_id(), parent_id=bytes(16), collect=True)
