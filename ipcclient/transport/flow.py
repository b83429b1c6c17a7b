"""One flow on a VC: a flow-controlled, bidirectional byte stream with deadlines.

Owns: :class:`Flow` (what callers use: ``write``, ``read``, ``close_send``, ``cancel``, ...,
with a deadline on every blocking step) and :class:`FlowHost`, the narrow interface a flow
uses to reach its VC (wait for the peer, start a liveness probe, leave the VC's flow table,
wake the reader). A flow queues frames into the VC's mux and sends them through the VC's
:class:`~ipcclient.transport.writer.RecordWriter`, all under the VC's lock.

Must not: read the socket, dispatch the peer's frames (the VC does that and fills the flow's
inbox), or hold the VC's lock across I/O.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ipcclient import errors
from ipcclient.transport.waits import Signal
from ipcclient.transport.writer import LINGER, LINGER_BYTES, MAX_QUEUED, RecordWriter
from ipcclient.wire.mux import Mux

if TYPE_CHECKING:
    from ipcclient.transport.conn import Connection

__all__ = ["Flow", "FlowHost"]

log = logging.getLogger("ipcclient.transport")

COALESCE_READS = 64 * 1024
"""A read joins queued chunks up to this many bytes (small items of a fast stream)."""

SMALL_CHUNK = 1024
"""A chunk this small that arrives behind others joins the one before it, while that one is
within ``JOINED_CHUNK`` (see :meth:`Flow.queue_more_locked`)."""
JOINED_CHUNK = 16 * 1024
"""The largest chunk small ones are joined into."""

CLOSED: errors.IPCError = errors.BadStateError("transport: the flow is closed")
"""A closed flow's ``_error`` (a marker: what is raised is a fresh copy, see
:func:`_raisable`), so that closing a flow normally builds no exception."""


def _raisable(err: errors.IPCError) -> errors.IPCError:
    return errors.BadStateError(CLOSED.msg) if err is CLOSED else err


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.monotonic()


def run_abort(fn: Callable[[errors.IPCError], None], err: errors.IPCError) -> None:
    """Run a flow's abort callback; a bug in it is logged, not raised."""
    try:
        fn(err)
    except Exception:  # a bug in the owner's callback must not kill the reader
        log.exception("transport: flow abort callback failed")


class FlowHost(Protocol):
    """What a :class:`Flow` needs from its VC. The ``_locked`` methods are called with the
    VC's lock held."""

    @property
    def local_blessings(self) -> Any: ...

    @property
    def remote_blessings(self) -> Any: ...

    def wait_for_peer(self, flow: Flow, timeout: float | None) -> None:
        """With the lock held: wait (up to ``timeout``) for the peer to send something that
        may concern ``flow`` (data, credit, an end); the caller re-checks its condition."""

    def suspect_locked(self) -> bool:
        """A call timed out: maybe start a liveness probe (True: a PING is queued, flush)."""

    def forget_flow_locked(self, flow_id: int) -> None:
        """The flow is over: drop it from the VC's flow table."""

    def wake_reader_locked(self) -> None:
        """A flow changed outside the read role (cancelled, closed): wake whoever reads."""


class Flow:
    """One flow on a VC: a flow-controlled, bidirectional byte stream.

    A flow belongs to one call; its methods may be called from different threads (for example
    ``cancel`` from a context callback while another thread is blocked in ``read``).
    """

    __slots__ = (
        "__weakref__",
        "_came_at",
        "_cond",
        "_deadline",
        "_eof",
        "_eof_at",
        "_error",
        "_host",
        "_inbox",
        "_last_write",
        "_later",
        "_local_closed",
        "_lock",
        "_mux",
        "_on_abort",
        "_writer",
        "_wrote",
        "connection",
        "id",
        "starved",
    )

    def __init__(
        self, host: FlowHost, flow_id: int, lock: Any, mux: Mux, writer: RecordWriter
    ) -> None:
        self._host = host
        self.connection: Connection = host  # type: ignore[assignment]
        """The VC this flow runs on (its keys and blessings). (An attribute, not a property:
        the server reads it on every call.)"""
        self.id = flow_id
        self._lock = lock
        self._mux = mux
        self._writer = writer
        self._cond = Signal(lock)
        self._inbox: collections.deque[bytes | bytearray] = collections.deque()
        self._came_at = 0.0  # when the oldest chunk in the inbox was received
        self._later: collections.deque[float] | None = None  # when each of the others was
        # (made when a chunk first queues behind another)
        self._eof = False  # the peer's FIN arrived (after the inbox drains: EOF)
        self._eof_at = 0.0  # when it did (set with _eof)
        self._error: errors.IPCError | None = None  # reset, cancelled, or the VC broke
        self._local_closed = False  # close_send / close / cancel done locally
        self._deadline: float | None = None
        self._on_abort: Callable[[errors.IPCError], None] | None = None
        self._wrote = False  # some of our bytes (or our FIN) were queued for the peer
        self._last_write = 0.0  # when a streamed write last queued data (see LINGER)
        self.starved = False
        """A write waits for credit the peer has not granted (left True when that wait ended
        by the deadline, a cancel or the flow's end: the caller's error can say so)."""

    def set_abort_callback(self, fn: Callable[[errors.IPCError], None] | None) -> None:
        """Call ``fn(error)`` once if the peer resets this flow or the VC breaks (not on a
        local cancel or a normal end). Called at once if that already happened. The callback
        runs on the reader thread: it must be quick and must not block."""
        with self._lock:
            self._on_abort = fn
            err = self._error if self._error is not None and not self._local_closed else None
        if err is not None and fn is not None:
            run_abort(fn, err)

    # --- properties -------------------------------------------------------------------
    @property
    def local_blessings(self) -> Any:
        return self._host.local_blessings

    @property
    def remote_blessings(self) -> Any:
        return self._host.remote_blessings

    @property
    def error(self) -> errors.IPCError | None:
        """Why the flow ended abnormally (reset, cancelled, its VC broke), or None."""
        err = self._error
        return None if err is None else _raisable(err)

    @property
    def peer_done(self) -> bool:
        """Whether the peer has closed its sending side (everything it will send is here)."""
        return self._eof

    def peer_done_by(self, moment: float) -> bool:
        """Whether the peer's FIN arrived by ``moment`` (``time.monotonic()``), so that
        everything it sent came by then (and the flow was not reset here since)."""
        return self._eof and self._eof_at <= moment

    @property
    def drained(self) -> bool:
        """Whether the peer has closed its sending side and everything it sent was read."""
        return self._eof and not self._inbox

    @property
    def wrote(self) -> bool:
        """Whether anything of ours was queued for the peer on this flow (so a failed write
        may have delivered part of it)."""
        return self._wrote

    def set_deadline(self, deadline: float | None) -> None:
        """The default deadline (``time.monotonic()`` value) of blocking calls on this flow."""
        self._deadline = deadline

    def _effective(self, deadline: float | None) -> float | None:
        """The sooner of ``deadline`` and the flow's default deadline (None: none)."""
        own = self._deadline
        if own is None:
            return deadline
        return own if deadline is None else min(deadline, own)

    # --- reading ----------------------------------------------------------------------
    def read(self, deadline: float | None = None) -> bytes:
        """The next bytes the peer sent (a chunk, or several small queued chunks joined,
        up to 64 KiB); ``b""`` once the peer closed its send side.

        Raises:
            TimeoutError: the deadline passed first, or what is there was received after it
                (the flow stays usable: that is kept for a later read). Small chunks that
                queued one behind another are kept as one, received when its last part
                was: a read that looks after its deadline may so leave for later a part
                that came before it.
            CanceledError / ConnectionFailedError / the peer's error: the flow was reset,
                cancelled, or the VC broke.
        """
        if self._deadline is not None:  # (as _effective)
            deadline = self._effective(deadline)
        writer = self._writer
        if writer.deferred and not self._inbox:
            # What a burst left queued must not wait while we wait for the peer (and we must
            # not wait on a full socket for it: a drainer finishes what does not fit).
            writer.flush(blocking=False)
        chunk_ready = False
        with self._lock:
            while not self._inbox:
                if self._eof:  # the peer's FIN came: everything it sent is here
                    return b""
                if self._error is not None:
                    raise _raisable(self._error)
                timeout = _remaining(deadline)
                if timeout is not None and timeout <= 0:
                    break
                self._host.wait_for_peer(self, timeout)
            else:
                # A chunk received after the deadline is late: the deadline has won, and the
                # chunk is left for a later read. (Each chunk is judged by when it came.)
                if deadline is None or self._came_at <= deadline:
                    inbox = self._inbox
                    first = inbox.popleft()
                    if inbox:
                        chunk = self._take_more_locked(first, deadline)
                    else:
                        chunk = first if type(first) is bytes else bytes(first)
                    mux = self._mux
                    mux.acknowledge(self.id, len(chunk))
                    data = writer.take_output_locked() if mux._out else []  # (usually no credit)
                    chunk_ready = True
            if not chunk_ready:
                probe = self._host.suspect_locked()
        if not chunk_ready:
            if probe:
                self._probed()
            raise errors.TimeoutError("transport: deadline passed while reading a flow")
        if data:
            writer.send(data)
        return chunk

    def _probed(self) -> None:
        """Outside the lock: a call on this flow timed out with the peer silent and the VC
        queued a probe (see ``FlowHost.suspect_locked``): send it, and say so."""
        log.debug(
            "transport: a call timed out on %s with the peer silent: probing",
            self.connection.name,
        )
        self._writer.flush(blocking=False)

    def _take_more_locked(self, chunk: bytes | bytearray, deadline: float | None) -> bytes:
        """``chunk`` was the first of several in the inbox: it, joined with the chunks after
        it when it is small (a fast stream's items: one lock round trip and one ack for many),
        up to ``COALESCE_READS`` and never past one received after ``deadline``; big chunks
        go alone (no extra copy). Keeps ``_came_at`` the new first chunk's."""
        inbox = self._inbox
        later = self._later
        assert later is not None
        self._came_at = later.popleft()
        if len(chunk) < COALESCE_READS:
            parts = [chunk]
            size = len(chunk)
            while size + len(inbox[0]) <= COALESCE_READS and (
                deadline is None or self._came_at <= deadline
            ):
                nxt = inbox.popleft()
                parts.append(nxt)
                size += len(nxt)
                if not inbox:
                    break
                self._came_at = later.popleft()
            return b"".join(parts)
        return chunk if type(chunk) is bytes else bytes(chunk)

    def queue_more_locked(self, data: bytes, at: float) -> None:
        """With the lock held (the VC's dispatch): queue ``data``, received at ``at``, behind
        the chunks already in the inbox. A small chunk joins a small one before it: however
        a peer cuts its bytes into tiny frames, the inbox holds them in a few objects, not
        one per frame (each costs dozens of bytes beside its data, so a flow's window would
        otherwise pin many times its size). The joined chunk counts as received when its
        last part was (a read with a deadline never takes a part that came after it)."""
        inbox = self._inbox
        later = self._later
        if later is None:
            later = self._later = collections.deque()
        tail = inbox[-1]
        if len(data) <= SMALL_CHUNK and len(tail) + len(data) <= JOINED_CHUNK:
            if type(tail) is bytes:
                joined = bytearray(tail)
                inbox[-1] = joined
            else:
                assert isinstance(tail, bytearray)
                joined = tail
            joined += data
            if later:
                later[-1] = at
            else:  # (the tail is the first chunk)
                self._came_at = at
            return
        inbox.append(data)
        later.append(at)

    def received_all(self) -> bytes | None:
        """Once the peer is done: everything it sent that is not read yet, joined, without
        consuming it (:meth:`read` still returns it; :meth:`discard_received` drops it);
        None while more may come or when the flow failed."""
        with self._lock:
            if not self._eof or self._error is not None:
                return None
            inbox = self._inbox
            if len(inbox) == 1 and type(inbox[0]) is bytes:
                return inbox[0]
            return b"".join(inbox)

    def discard_received(self) -> None:
        """Consume what :meth:`received_all` returned (its credit is given back, as by a
        read)."""
        with self._lock:
            inbox = self._inbox
            size = 0
            for chunk in inbox:
                size += len(chunk)
            inbox.clear()
            self._later = None
            mux = self._mux
            mux.acknowledge(self.id, size)
            data = self._writer.take_output_locked() if mux._out else []  # (no credit after FIN)
        if data:
            self._writer.send(data)

    # --- writing ----------------------------------------------------------------------
    def write(
        self,
        data: bytes | list[bytes],
        *,
        end: bool = False,
        deadline: float | None = None,
        streamed: bool = False,
        late: str = "",
    ) -> None:
        """Send ``data`` (bytes, or a list of pieces sent in order without joining them)
        and, with ``end``, close the send side after it. ``late``: what the TimeoutError
        (and the flow's reset) says if ``deadline`` passes (default: the transport's words).

        ``streamed``: one item of a stream; in a burst it may be sent with the next ones
        (at most ``LINGER`` seconds later; see that constant).

        Blocks while the peer grants no credit (a slow reader bounds what is in flight).

        Raises:
            TimeoutError: the deadline passed while waiting for credit; part of the data
                may have been sent, so the flow is reset (the stream cannot be resumed).
            BadStateError: the send side is already closed.
            CanceledError / ConnectionFailedError / the peer's error: see :meth:`read`.
        """
        if type(data) is list:
            if not data:
                data = [b""]
            last = len(data) - 1
            for i, piece in enumerate(data):
                self._write(piece, end and i == last, deadline, streamed and i == last, late)
        else:
            self._write(data, end, deadline, streamed, late)  # type: ignore[arg-type]

    def _write(
        self, data: bytes, end: bool, deadline: float | None, streamed: bool, late: str = ""
    ) -> None:
        if self._deadline is not None:  # (as _effective)
            deadline = self._effective(deadline)
        mux = self._mux
        writer = self._writer
        view: bytes | memoryview = data
        total = len(data)
        pos = 0
        while True:
            with self._lock:
                if self._error is not None:
                    raise _raisable(self._error)
                if self._local_closed:
                    raise errors.BadStateError("transport: write after the flow's send side closed")
                chunk = view
                last = end
                limited = False
                if writer.flushing:
                    # Another thread sends, maybe blocked on a peer that does not read:
                    # queue at most up to MAX_QUEUED, then wait for it (_wait_for_room).
                    room = MAX_QUEUED - writer.queued
                    if room < total - pos:
                        chunk = memoryview(view)[: max(room, 0)]
                        last = False
                        limited = True
                if limited and not chunk:
                    n = 0
                else:
                    try:
                        n = mux.send_data(self.id, chunk, end=last)
                    except errors.IPCError as exc:
                        raise self._fail_locked(exc) from None
                    writer.queued += n
                pos += n
                room_wait = limited and n >= len(chunk)
                if n or last:  # (a write cut to nothing by MAX_QUEUED queued nothing)
                    self._wrote = True
                done = pos >= total
                if done and end:
                    self._local_closed = True
                    if self._eof and self.id not in mux._flows:  # (as _forget_if_ended_locked)
                        self._host.forget_flow_locked(self.id)
                linger = False
                if streamed and done and not end:
                    now = time.monotonic()
                    if now - self._last_write < LINGER and writer.deferred < LINGER_BYTES:
                        linger = writer.defer_locked(total)
                        out = []
                    else:
                        out = writer.take_output_locked()
                    self._last_write = now
                else:
                    out = writer.take_output_locked()
            if out:
                writer.send(out)
            elif linger:
                writer.linger()
            if done:
                return
            if n:
                view = memoryview(data)[pos:]
            if room_wait:
                expired = self._wait_for_room(deadline, late)
            else:
                expired = self._wait_for_credit(deadline, late)
            if expired is not None:
                writer.flush()  # the RESET
                raise expired

    def _wait_for_room(self, deadline: float | None, late: str = "") -> errors.IPCError | None:
        """(For :meth:`_write`.) Wait until the flusher has taken what writers queued (below
        ``MAX_QUEUED``), nobody flushes, the flow ends or ``deadline`` passes; in that last
        case the flow is reset and the error to raise once the RESET is sent is returned."""
        writer = self._writer
        expired: errors.IPCError | None = None
        with self._lock:
            while self._error is None and writer.flushing and writer.queued >= MAX_QUEUED:
                timeout = _remaining(deadline)
                if timeout is not None and timeout <= 0:
                    expired = errors.TimeoutError(
                        late or "transport: deadline passed while the peer was not reading"
                    )
                    self._reset_locked(expired)
                    break
                if self._cond not in writer.draining:
                    writer.draining.append(self._cond)
                self._cond.wait(timeout)
        return expired

    def _wait_for_credit(self, deadline: float | None, late: str = "") -> errors.IPCError | None:
        """(For :meth:`_write`.) Wait until the peer grants credit for this flow, the flow
        ends or ``deadline`` passes; in that last case the flow is reset and the error to
        raise once the RESET is sent is returned. A method of its own, so that what
        ``_write`` checked of ``_error`` before is not assumed here: another thread may end
        the flow during the wait (compiled by mypyc, such an assumption is checked at run
        time and fails)."""
        mux = self._mux
        expired: errors.IPCError | None = None
        probe = False
        with self._lock:
            while self._error is None and mux.is_live(self.id):
                try:
                    if mux.send_credit(self.id) > 0:
                        self.starved = False
                        break
                except errors.IPCError:
                    break  # the VC closed; _write's next turn reports it
                self.starved = True
                timeout = _remaining(deadline)
                if timeout is not None and timeout <= 0:
                    expired = errors.TimeoutError(
                        late or "transport: deadline passed while waiting for flow credit"
                    )
                    self._reset_locked(expired)
                    probe = self._host.suspect_locked()
                    break
                self._host.wait_for_peer(self, timeout)
        if probe:
            self._probed()
        return expired

    def close_send(self) -> None:
        """Tell the peer nothing more will be written (half-close). Idempotent."""
        with self._lock:
            if self._local_closed or self._error is not None:
                return
            self._local_closed = True
            try:
                self._mux.close_send(self.id)
            except errors.IPCError:
                return  # the flow already ended: nothing to announce
            self._forget_if_ended_locked()
        self._writer.flush()

    def cancel(self, error: errors.IPCError | None = None) -> None:
        """Abort the flow both ways: the peer sees RESET (its context is cancelled) and any
        thread blocked on this flow wakes with ``error`` (default CanceledError). Idempotent;
        a no-op once the flow has ended."""
        err = error if error is not None else errors.CanceledError("transport: flow cancelled")
        with self._lock:
            if self._error is not None:
                return
            self._reset_locked(err)
            probe = isinstance(err, errors.TimeoutError) and self._host.suspect_locked()
        if probe:
            self._probed()
        self._writer.flush(blocking=False)  # may run on the timer thread: never wait here

    def close(self) -> None:
        """Close the send side and stop reading: what arrives later is discarded."""
        mux = self._mux
        with self._lock:
            if (
                self._local_closed
                and self._eof
                and self._error is None
                and not self._inbox
                and self.id not in mux._flows
                and not self._cond._waiters
            ):
                # Ended both ways and all read (a finished call): already forgotten, nothing
                # is left to tell the peer and no thread waits on it (one can: a writer
                # waiting for credit when another thread ended the flow; the general way
                # below wakes it). Only mark it closed.
                self._error = CLOSED
                return
            if not self._local_closed and self._error is None:  # as close_send
                self._local_closed = True
                with contextlib.suppress(errors.IPCError):  # the flow already ended
                    mux.close_send(self.id)
            if self._error is None:
                self._error = CLOSED
            self._inbox.clear()
            self._later = None
            self._cond.notify_all()
            self._host.wake_reader_locked()
            if self.id in mux._flows and not mux.closed:
                # Discard the rest of the peer's stream instead of letting it block on credit.
                mux.reset_flow(self.id, None)
            self._host.forget_flow_locked(self.id)
            data = self._writer.take_output_locked()
        if data:
            self._writer.send(data)

    # --- internals (called with the lock held) ------------------------------------------
    def _forget_if_ended_locked(self) -> None:
        if self._eof and not self._mux.is_live(self.id):
            self._host.forget_flow_locked(self.id)

    def _reset_locked(self, err: errors.IPCError) -> None:
        mux = self._mux
        self._error = err
        self._eof = False  # a local reset wins over a FIN that came before it
        self._local_closed = True
        self._inbox.clear()
        self._later = None
        if not mux.closed:
            mux.reset_flow(self.id, None if isinstance(err, errors.CanceledError) else err)
        self._host.forget_flow_locked(self.id)
        self._cond.notify_all()
        self._host.wake_reader_locked()

    def _fail_locked(self, err: errors.IPCError) -> errors.IPCError:
        if self._error is None:
            self._error = err
        self._cond.notify_all()
        return _raisable(self._error)
