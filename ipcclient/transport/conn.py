"""One VC over one socket: blocking flows, read by a reader thread or by the callers.

Owns: the :class:`Connection` (an established VC: its socket, its sans-IO mux and record
layer, the reader thread that feeds them, keepalive, and breaking the VC on any fault) and the
:class:`Flow` objects callers use (``write``, ``read``, ``close_send``, ``cancel``, ...), with
a deadline on every blocking step.

Must not: resolve names, know RPC headers, authorize anyone (the handshake's callbacks did that
before this object exists), or hold its lock across I/O.

Threads and locks. Whoever holds the *read role* reads the socket, opens records and feeds
the mux, dispatching to every flow. On an accepted (server) VC the role always belongs to the
VC's reader thread. On a dialed (client) VC it is leader/follower: a caller that waits for the
peer (a reply, credit) and finds the role free takes it and reads for itself, dispatching what
it reads to the other flows' waiters; when its own data is in it passes the role on. The
reader thread gives the role up as soon as a lone caller waits (a one-byte write to a pipe
wakes its poll) and takes it back after ``LEAD_GRACE`` without callers, so an idle VC still
answers pings, notices a dead peer and sees GOAWAY. A lone caller thus reads its own reply
without a thread hop (measured on a 32 B unary call over loopback: p50 about 310 µs and 143 µs
of client CPU, against about 370 µs and 172 µs with the reader thread alone). With several
calls in flight the reader thread keeps (or takes back) the role and reads for all of them,
instead of the role passing from caller to caller (each pass costs a wake-up).

On an accepted VC the owner's ``on_flow`` may return a job (a call whose request is all
here; one per batch) that the reader thread runs itself after dispatching the current batch,
whatever else is in flight on the VC; a job running
longer than ``INLINE_HANDOFF`` gets a helper thread that reads for the VC until the job ends
(the reader thread waits for the helper to stop before it reads again: one reader at a time).

An accepted VC made with ``park_idle`` that has no flow and has read nothing for that long
is *parked*: its reader thread ends and the process's idle watcher (one thread, a selector
over every parked VC's socket) starts a new one when the socket becomes readable, and keeps
the VC's keepalive meanwhile; so an idle VC costs no thread.

Before a reader thread sleeps in a blocking read it may poll the socket for a moment
(``busy_poll``, see ``TransportOptions`` and ``_POLL_RULES``): an accepted VC's, a dialed VC's
while it reads for several calls (always with ``lead_reads=False``); never a caller reading
for itself (that would cost the caller's CPU on every call). Polling stops after a gap longer
than the poll and resumes after a short one.

Streamed writes in a burst are deferred (``LINGER``): they stay queued in the mux, and go out
with the next write that is not deferred, before the writer waits for its peer, or from the
process's lingerer thread at most ``LINGER`` later.
``_lock`` guards the mux, every flow's buffers and the read role; it is never held across a
socket call (the pipe write that wakes the reader is a non-blocking one-byte write).

Writers queue frames into the mux under ``_lock``; then exactly one thread at a time
(the *flusher*, chosen under ``_lock`` by the ``_flushing`` flag) drains everything queued,
seals it into one record and sends it outside the lock. A writer that finds a flusher active
leaves its frames to it, so bursts from many threads coalesce into few records and syscalls.
Lock order: ``_lock`` is a leaf lock; callbacks (``on_flow``, ``on_close``) run outside it.
The reader thread, cancellation (which may run on the context timer thread) and close never
wait on a full socket: they send what the socket takes at once and hand the rest of a record
to a short-lived drainer thread, which keeps the flusher role until everything is out (so
record order holds). Only a writer blocks in ``sendall``, bounded by the send timeout.

Known trade-offs: the flusher sends what other threads queued while it was sending, so under
sustained load a writer may stay in ``sendall`` past its own deadline (never past the send
timeout, after which the VC is declared broken); a KeyboardInterrupt that lands between
taking the flusher role and the first send leaves the role taken, so later writes on that VC
wait for their deadlines (the VC is then redialed).

A broken VC (EOF, reset, a record or frame that fails, a missed keepalive, a failed send) ends
every flow with a :class:`~ipcclient.errors.ConnectionFailedError` (retry action
RETRY_CONNECTION) and calls ``on_close`` once so the owner evicts it.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import logging
import math
import os
import select
import selectors
import socket
import struct
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ipcclient import errors
from ipcclient.transport import liveness as livemod
from ipcclient.vc.handshake import HandshakeResult
from ipcclient.wire import mux as muxmod
from ipcclient.wire.mux import Mux, MuxConfig

__all__ = ["Connection", "Flow", "KeepaliveConfig"]

log = logging.getLogger("ipcclient.transport")

_COALESCE_READS = 64 * 1024
"""A read joins queued chunks up to this many bytes (small items of a fast stream)."""

LINGER = 0.0002
"""A streamed write that follows the flow's previous one within this many seconds (a burst)
is queued instead of sent at once, and goes out with the next write that is not deferred,
when ``LINGER_BYTES`` are queued, before the writer waits for its peer, or at the latest
``LINGER`` later (the lingerer thread): a burst of small items costs one record, one AEAD
call and one syscall per batch instead of per item, on both sides. The first item of a burst
is never delayed."""

LINGER_BYTES = 32 * 1024
"""Deferred bytes on a VC that make the next streamed write send them all at once."""

INLINE_HANDOFF = 0.002
"""A job the owner runs on an accepted VC's reader thread (a complete unary request, see
:meth:`Connection.inline_available`) that takes longer than this gets a helper thread (at the
latest ``INLINE_HANDOFF / 2`` later), which reads the socket for the VC until the job ends:
short calls cost no thread hop, long ones cannot hold up the VC (other calls, cancellation,
pings) for longer than about this."""

_GOAWAY_GRACE = 0.2
"""How long :meth:`Connection.close` waits for another thread's send to carry its GOAWAY out
before it shuts the socket."""

LEAD_GRACE = 0.02
"""After a caller last read for itself, the reader thread waits this long before it takes the
socket back (so a client making calls back to back keeps reading its own replies)."""

# _POLL_RULES: when a reader thread polls (``TransportOptions.busy_poll``). Only after a read
# that came within the poll's length of the thread going idle and that ended on a record
# boundary (a partial record means a large message, or a peer trickling bytes: its rest
# comes by a blocking read, and polling for it would only burn CPU); never right after a
# poll that found nothing (until a quick read again); never while _POLL_SLOTS other threads
# of the process poll.


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # (the CPUs this process may run on)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 2


_POLL_SLOTS = max(1, _usable_cpus() - 1)
"""At most this many reader threads of the process poll at once (one per CPU the process may
run on, but one; at least one): polling pays only while a CPU would otherwise sit idle, and it
must not take every CPU. (A CPU quota, as in some containers, is not seen.)"""

_POLL_MISSED = -1
_POLL_SKIPPED = -2
_POLL_HANDOVER = -3

_poll_lock = _allocate_lock()
_pollers = 0


def _take_poll_slot() -> bool:
    global _pollers
    with _poll_lock:
        if _pollers >= _POLL_SLOTS:
            return False
        _pollers += 1
        return True


def _give_poll_slot() -> None:
    global _pollers
    with _poll_lock:
        if _pollers > 0:  # (0 in a child forked while this thread polled: reset)
            _pollers -= 1


def _reset_poll_slots() -> None:
    """After fork: the child has none of the parent's reader threads."""
    global _poll_lock, _pollers
    _poll_lock = _allocate_lock()
    _pollers = 0


@dataclass(frozen=True)
class KeepaliveConfig:
    """Liveness of an idle VC.

    Attributes:
        interval: seconds without receiving anything before this side sends a PING.
        timeout: seconds without receiving anything (not even a PING ACK) before the VC is
            declared broken.
        send_timeout: seconds one socket send may block (a peer that stops reading) before
            the VC is declared broken.
        probe_timeout: on a dialed VC, a call that timed out while the peer had been silent
            for ``probe_after`` makes the VC send one PING; if no whole record comes back
            within this many seconds the VC is declared broken (new calls meanwhile use
            another VC, instead of waiting on a silent one again).
        probe_after: see ``probe_timeout``.

    Every value is a finite number of seconds of at least ``MIN_KEEPALIVE_INTERVAL``, and
    ``timeout`` is at least ``interval`` (so a longer ``interval`` needs a longer ``timeout``
    too); anything else is a BadArgError.
    """

    interval: float = 15.0
    timeout: float = 45.0
    send_timeout: float = 30.0
    probe_timeout: float = 2.0
    probe_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "send_timeout", "probe_timeout", "probe_after"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= MIN_KEEPALIVE_INTERVAL
            ):
                raise errors.BadArgError(
                    f"transport: KeepaliveConfig.{name} must be a finite number of seconds "
                    f">= {MIN_KEEPALIVE_INTERVAL}, got {value!r}"
                )
        if self.timeout < self.interval:
            raise errors.BadArgError(
                "transport: KeepaliveConfig.timeout must be >= interval (else a VC is declared "
                "dead before it is pinged)"
            )


MIN_KEEPALIVE_INTERVAL = 0.01
"""The shortest keepalive period accepted: shorter ones would keep a reader thread waking
without pause (0 would spin a CPU on an idle VC)."""


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.monotonic()


def _reacquire(lock: Any) -> BaseException | None:
    """Take ``lock`` back whatever happens: a KeyboardInterrupt while waiting for it is kept
    and returned (to be re-raised once the lock is held), never lost and never leaving the
    lock unheld for a ``with`` block that will release it."""
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as exc:
            pending = exc


class _OnDemandThread(abc.ABC):
    """A process-wide daemon thread for one background duty: started on first use, it ends
    after ``_IDLE_EXIT`` seconds without work and starts again when needed (also in a forked
    child, where ``_init`` runs again). Subclasses keep their work under ``_lock``."""

    _name = "ipc-background"

    def __init__(self) -> None:
        self._init()

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_work()

    @abc.abstractmethod
    def _reset_work(self) -> None:
        """(Re)create the duty's own state (also in a forked child)."""

    @abc.abstractmethod
    def _has_work_locked(self) -> bool:
        """With ``_lock`` held: whether work is pending (else the thread may end)."""

    @abc.abstractmethod
    def _round(self) -> None:
        """One round of the duty, after a wake-up (called without ``_lock``)."""

    def _start_locked(self) -> None:
        """With ``_lock`` held: make sure the thread runs.

        Raises:
            RuntimeError: no thread could be started (nothing changed).
        """
        if self._thread is None:
            thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            thread.start()
            self._thread = thread

    def _loop(self) -> None:
        while True:
            if not self._wake.wait(_IDLE_EXIT):
                with self._lock:
                    if not self._has_work_locked():
                        self._thread = None
                        return
                continue
            self._round()


_IDLE_EXIT = 0.5


class _Lingerer(_OnDemandThread):
    """Sends what streamed writes deferred (see ``LINGER``), ``LINGER`` after being woken."""

    _name = "ipc-linger"

    def _reset_work(self) -> None:
        self._due: dict[Connection, None] = {}

    def _has_work_locked(self) -> bool:
        return bool(self._due)

    def add(self, conn: Connection) -> None:
        """Flush ``conn`` within LINGER.

        Raises:
            RuntimeError: no thread could be started (``conn`` is then not registered).
        """
        with self._lock:
            self._due[conn] = None
            try:
                self._start_locked()
            except BaseException:
                del self._due[conn]
                raise
        self._wake.set()

    def _round(self) -> None:
        time.sleep(LINGER)
        with self._lock:
            self._wake.clear()
            due, self._due = self._due, {}
        for conn in due:
            try:
                conn._flush_deferred()
            except Exception:  # pragma: no cover - a bug here must not stop the thread
                log.exception("transport: deferred flush failed")


class _Handoff(_OnDemandThread):
    """Gives a helper reader to each accepted VC whose reader thread has been running one
    inline job for ``INLINE_HANDOFF``.

    Starting a job costs the reader thread no wake-up of this one: while any VC it knows
    runs jobs, the thread ticks every ``INLINE_HANDOFF / 2`` and looks at the VCs' job
    start times; after ``_IDLE_EXIT`` without a running job it stops ticking (and, later,
    ends). ``watch`` registers a VC and restarts the ticking; its common case (the VC known,
    the thread ticking) takes no lock. Why that is race-free: the reader thread marks its job
    running *before* it reads ``_ticking``; the ticker clears ``_ticking`` and the VC set
    *before* it looks for running jobs, and keeps ticking if it finds one."""

    _name = "ipc-handoff"

    def _reset_work(self) -> None:
        self._conns: dict[Connection, None] = {}
        self._ticking = False

    def _has_work_locked(self) -> bool:
        return bool(self._conns)

    def watch(self, conn: Connection) -> None:
        """``conn``'s reader thread has started an inline job (``_inline_running`` and
        ``_inline_started`` are set).

        Raises:
            RuntimeError: no thread could be started (nothing is watched then).
        """
        if self._ticking and conn in self._conns:
            return
        with self._lock:
            added = conn not in self._conns
            self._conns[conn] = None
            try:
                self._start_locked()
            except BaseException:
                if added:
                    del self._conns[conn]
                raise
            wake = not self._ticking
            self._ticking = True
        if wake:
            self._wake.set()

    def _round(self) -> None:
        with self._lock:
            self._wake.clear()
        busy_at = time.monotonic()
        while True:
            time.sleep(INLINE_HANDOFF / 2)
            now = time.monotonic()
            due: list[tuple[Connection, int]] = []
            with self._lock:
                conns = self._conns
                for conn in list(conns):
                    if conn._inline_running:
                        busy_at = now
                        if now - conn._inline_started >= INLINE_HANDOFF and not conn._helper_active:
                            due.append((conn, conn._inline_count))
                    elif conn._error is not None:
                        del conns[conn]
                if now - busy_at >= _IDLE_EXIT:
                    # Stop ticking unless a job started meanwhile (see the class docstring).
                    self._ticking = False
                    self._conns = {}
                    if not any(conn._inline_running for conn in conns):
                        return
                    self._conns = conns
                    self._ticking = True
            for conn, job in due:
                try:
                    conn._start_helper(job)
                except Exception:  # no thread to be had now: the next tick tries again
                    log.warning("transport: could not start a helper reader; retrying")


class _IdleWatcher:
    """One thread that watches every parked VC's socket, so that an idle accepted VC costs
    no thread: an accepted VC's reader thread that has seen no input for ``park_idle`` and
    has no flow registers its VC here and ends; when the socket becomes readable (input,
    EOF, or a local close, which shuts it down) this thread starts a new reader thread for
    it. Meanwhile it keeps the VC's keepalive: pings after ``interval`` without input,
    breaks the VC after ``timeout``. Started on first use; ends when nothing is parked."""

    _ROUND = 1.0  # seconds between keepalive checks

    def __init__(self) -> None:
        self._init()

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._parked: dict[int, Connection] = {}
        self._thread: threading.Thread | None = None

    @property
    def parked(self) -> int:
        """VCs parked now."""
        return len(self._parked)

    def park(self, conn: Connection) -> None:
        """Watch ``conn`` (its reader thread ends next).

        Raises:
            RuntimeError / OSError: no thread or selector could be had (nothing changed).
        """
        fd = conn._sock.fileno()
        with self._lock:
            if self._selector is None:
                self._selector = selectors.DefaultSelector()
            self._selector.register(fd, selectors.EVENT_READ, conn)
            self._parked[fd] = conn
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="ipc-idle", daemon=True)
                try:
                    thread.start()
                except BaseException:
                    self._selector.unregister(fd)
                    del self._parked[fd]
                    raise
                self._thread = thread

    def _loop(self) -> None:
        next_round = time.monotonic() + self._ROUND
        while True:
            with self._lock:
                selector = self._selector
                if selector is None or not self._parked:
                    self._thread = None
                    return
            try:
                ready = selector.select(max(0.0, next_round - time.monotonic()))
            except (OSError, ValueError):  # pragma: no cover - a socket closed under us
                ready = []
            for key, _events in ready:
                conn = key.data
                if self._forget(key.fd, conn):
                    if conn._error is not None:  # closed locally: no reader needed
                        conn._broken_while_parked(conn._error)
                    else:
                        conn._unpark()
            now = time.monotonic()
            if now >= next_round:
                next_round = now + self._ROUND
                self._keepalive_round(now)

    def _forget(self, fd: int, conn: Connection) -> bool:
        with self._lock:
            if self._parked.get(fd) is not conn:
                return False
            del self._parked[fd]
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(fd)
        return True

    def _keepalive_round(self, now: float) -> None:
        with self._lock:
            parked = list(self._parked.items())
        for fd, conn in parked:
            ka = conn._keepalive
            idle = now - conn._last_recv
            try:
                if idle >= ka.timeout:
                    if self._forget(fd, conn):
                        conn._broken_while_parked(
                            errors.ConnectionFailedError(
                                "transport: the peer missed its keepalive; the VC is broken"
                            )
                        )
                elif idle >= ka.interval and now - conn._last_ping >= ka.interval:
                    conn._last_ping = now
                    conn._keepalive_due()  # (sends a PING without waiting on the socket)
            except Exception:  # pragma: no cover - one VC's bug must not stop the others
                log.exception("transport: keepalive of an idle VC failed")


_HANDOFF = _Handoff()
_LINGERER = _Lingerer()
_IDLE = _IdleWatcher()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_LINGERER._init)
    os.register_at_fork(after_in_child=_HANDOFF._init)
    os.register_at_fork(after_in_child=_reset_poll_slots)
    os.register_at_fork(after_in_child=_IDLE._init)


_CLOSED: errors.IPCError = errors.BadStateError("transport: the flow is closed")
"""A closed flow's ``_error`` (a marker: what is raised is a fresh copy, see
:func:`_raisable`), so that closing a flow normally builds no exception."""


def _raisable(err: errors.IPCError) -> errors.IPCError:
    return errors.BadStateError(_CLOSED.msg) if err is _CLOSED else err


class _Broken(Exception):
    """Internal: the socket is done (EOF or an error); carries the VC's error."""

    def __init__(self, error: errors.IPCError) -> None:
        super().__init__(error.msg)
        self.error = error


class _Signal:
    """A condition variable on the connection's lock, lighter than ``threading.Condition``
    (which costs several Python-level calls per wait and notify): the waiters of one flow.
    ``wait`` and ``notify_all`` are called with the connection's lock held."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiters: list[Any] = []

    def wait(self, timeout: float | None) -> None:
        """Release the lock, sleep until notified or ``timeout`` seconds, re-take the lock."""
        waiter = _allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        lock = self._lock
        lock.release()
        try:
            if timeout is None:
                waiter.acquire()
            elif timeout > 0:
                waiter.acquire(True, timeout)
        finally:
            pending = _reacquire(lock)
            if self._waiters:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if pending is not None:
                raise pending

    def notify_all(self) -> None:
        waiters = self._waiters
        if waiters:
            for waiter in waiters:
                waiter.release()
            waiters.clear()


def _run_abort(fn: Callable[[errors.IPCError], None], err: errors.IPCError) -> None:
    try:
        fn(err)
    except Exception:  # a bug in the owner's callback must not kill the reader
        log.exception("transport: flow abort callback failed")


class Flow:
    """One flow on a VC: a flow-controlled, bidirectional byte stream.

    A flow belongs to one call; its methods may be called from different threads (for example
    ``cancel`` from a context callback while another thread is blocked in ``read``).
    """

    __slots__ = (
        "__weakref__",
        "_cond",
        "_conn",
        "_deadline",
        "_eof",
        "_error",
        "_inbox",
        "_last_write",
        "_local_closed",
        "_lock",
        "_on_abort",
        "_wrote",
        "id",
    )

    def __init__(self, conn: Connection, flow_id: int) -> None:
        self._conn = conn
        self.id = flow_id
        self._lock = conn._lock
        self._cond = _Signal(conn._lock)
        self._inbox: collections.deque[bytes] = collections.deque()
        self._eof = False  # the peer's FIN arrived (after the inbox drains: EOF)
        self._error: errors.IPCError | None = None  # reset, cancelled, or the VC broke
        self._local_closed = False  # close_send / close / cancel done locally
        self._deadline: float | None = None
        self._on_abort: Callable[[errors.IPCError], None] | None = None
        self._wrote = False  # some of our bytes (or our FIN) were queued for the peer
        self._last_write = 0.0  # when a streamed write last queued data (see LINGER)

    def set_abort_callback(self, fn: Callable[[errors.IPCError], None] | None) -> None:
        """Call ``fn(error)`` once if the peer resets this flow or the VC breaks (not on a
        local cancel or a normal end). Called at once if that already happened. The callback
        runs on the reader thread: it must be quick and must not block."""
        with self._lock:
            self._on_abort = fn
            err = self._error if self._error is not None and not self._local_closed else None
        if err is not None and fn is not None:
            _run_abort(fn, err)

    # --- properties -------------------------------------------------------------------
    @property
    def connection(self) -> Connection:
        """The VC this flow runs on (its keys and blessings)."""
        return self._conn

    @property
    def local_blessings(self) -> Any:
        return self._conn.local_blessings

    @property
    def remote_blessings(self) -> Any:
        return self._conn.remote_blessings

    @property
    def error(self) -> errors.IPCError | None:
        """Why the flow ended abnormally (reset, cancelled, its VC broke), or None."""
        err = self._error
        return None if err is None else _raisable(err)

    @property
    def peer_done(self) -> bool:
        """Whether the peer has closed its sending side (everything it will send is here)."""
        return self._eof

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
        if deadline is None:
            return self._deadline
        if self._deadline is None:
            return deadline
        return min(deadline, self._deadline)

    # --- reading ----------------------------------------------------------------------
    def read(self, deadline: float | None = None) -> bytes:
        """The next bytes the peer sent (a chunk, or several small queued chunks joined,
        up to 64 KiB); ``b""`` once the peer closed its send side.

        Raises:
            TimeoutError: the deadline passed first (the flow stays usable).
            CanceledError / ConnectionFailedError / the peer's error: the flow was reset,
                cancelled, or the VC broke.
        """
        deadline = self._effective(deadline)
        conn = self._conn
        if conn._deferred and not self._inbox:
            # What a burst left queued must not wait while we wait for the peer (and we must
            # not wait on a full socket for it: a drainer finishes what does not fit).
            conn._flush(blocking=False)
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
                conn._wait_for_peer(self, timeout)
            else:
                inbox = self._inbox
                chunk = inbox.popleft()
                if inbox and len(chunk) < _COALESCE_READS:
                    # Many small chunks queued (a fast stream): hand them over together, one
                    # lock round trip and one ack; big chunks go alone (no extra copy).
                    parts = [chunk]
                    size = len(chunk)
                    while inbox and size + len(inbox[0]) <= _COALESCE_READS:
                        nxt = inbox.popleft()
                        parts.append(nxt)
                        size += len(nxt)
                    chunk = b"".join(parts)
                conn._mux.acknowledge(self.id, len(chunk))
                data = conn._take_output_locked()
                chunk_ready = True
            if not chunk_ready:
                probe = conn._suspect_locked(self)
        if not chunk_ready:
            if probe:
                conn._flush(blocking=False)
            raise errors.TimeoutError("transport: deadline passed while reading a flow")
        if data:
            conn._send(data)
        return chunk

    def received_all(self) -> bytes | None:
        """Once the peer is done: everything it sent that is not read yet, joined, without
        consuming it (:meth:`read` still returns it; :meth:`discard_received` drops it);
        None while more may come or when the flow failed."""
        with self._lock:
            if not self._eof or self._error is not None:
                return None
            inbox = self._inbox
            if len(inbox) == 1:
                return inbox[0]
            return b"".join(inbox)

    def discard_received(self) -> None:
        """Consume what :meth:`received_all` returned (its credit is given back, as by a
        read)."""
        conn = self._conn
        with self._lock:
            inbox = self._inbox
            size = 0
            for chunk in inbox:
                size += len(chunk)
            inbox.clear()
            conn._mux.acknowledge(self.id, size)
            data = conn._take_output_locked()
        if data:
            conn._send(data)

    # --- writing ----------------------------------------------------------------------
    def write(
        self,
        data: bytes | list[bytes],
        *,
        end: bool = False,
        deadline: float | None = None,
        streamed: bool = False,
    ) -> None:
        """Send ``data`` (bytes, or a list of pieces sent in order without joining them)
        and, with ``end``, close the send side after it.

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
                self._write(piece, end and i == last, deadline, streamed and i == last)
        else:
            self._write(data, end, deadline, streamed)  # type: ignore[arg-type]

    def _write(self, data: bytes, end: bool, deadline: float | None, streamed: bool) -> None:
        deadline = self._effective(deadline)
        conn = self._conn
        view: bytes | memoryview = data
        total = len(data)
        pos = 0
        while True:
            with self._lock:
                if self._error is not None:
                    raise _raisable(self._error)
                if self._local_closed:
                    raise errors.BadStateError("transport: write after the flow's send side closed")
                try:
                    n = conn._mux.send_data(self.id, view, end=end)
                except errors.IPCError as exc:
                    raise self._fail_locked(exc) from None
                pos += n
                if n or end:
                    self._wrote = True
                done = pos >= total
                if done and end:
                    self._local_closed = True
                    conn._forget_if_ended(self)
                linger = False
                if streamed and done and not end:
                    now = time.monotonic()
                    if now - self._last_write < LINGER and conn._deferred < LINGER_BYTES:
                        conn._deferred += total
                        linger = not conn._linger_due
                        conn._linger_due = True
                        out = []
                    else:
                        out = conn._take_output_locked()
                    self._last_write = now
                else:
                    out = conn._take_output_locked()
            if out:
                conn._send(out)
            elif linger:
                try:
                    _LINGERER.add(conn)
                except RuntimeError:  # no thread to be had: send now instead
                    with self._lock:
                        conn._linger_due = False
                    conn._flush()
            if done:
                return
            if n:
                view = memoryview(data)[pos:]
            expired: errors.IPCError | None = None
            with self._lock:
                while self._error is None and conn._mux.is_live(self.id):
                    try:
                        if conn._mux.send_credit(self.id) > 0:
                            break
                    except errors.IPCError:
                        break  # the VC closed; the loop above reports it
                    timeout = _remaining(deadline)
                    if timeout is not None and timeout <= 0:
                        expired = errors.TimeoutError(
                            "transport: deadline passed while waiting for flow credit"
                        )
                        self._reset_locked(expired)
                        conn._suspect_locked(self)
                        break
                    conn._wait_for_peer(self, timeout)
            if expired is not None:
                conn._flush()  # the RESET
                raise expired

    def close_send(self) -> None:
        """Tell the peer nothing more will be written (half-close). Idempotent."""
        conn = self._conn
        with self._lock:
            if self._local_closed or self._error is not None:
                return
            self._local_closed = True
            try:
                conn._mux.close_send(self.id)
            except errors.IPCError:
                return  # the flow already ended: nothing to announce
            conn._forget_if_ended(self)
        conn._flush()

    def cancel(self, error: errors.IPCError | None = None) -> None:
        """Abort the flow both ways: the peer sees RESET (its context is cancelled) and any
        thread blocked on this flow wakes with ``error`` (default CanceledError). Idempotent;
        a no-op once the flow has ended."""
        err = error if error is not None else errors.CanceledError("transport: flow cancelled")
        with self._lock:
            if self._error is not None:
                return
            self._reset_locked(err)
            if isinstance(err, errors.TimeoutError):
                self._conn._suspect_locked(self)
        self._conn._flush(blocking=False)  # may run on the timer thread: never wait here

    def close(self) -> None:
        """Close the send side and stop reading: what arrives later is discarded."""
        conn = self._conn
        mux = conn._mux
        with self._lock:
            if not self._local_closed and self._error is None:  # as close_send
                self._local_closed = True
                with contextlib.suppress(errors.IPCError):  # the flow already ended
                    mux.close_send(self.id)
            if self._error is None:
                self._error = _CLOSED
            self._inbox.clear()
            self._cond.notify_all()
            conn._wake_leader_locked()
            if self.id in mux._flows and not mux.closed:
                # Discard the rest of the peer's stream instead of letting it block on credit.
                mux.reset_flow(self.id, None)
            conn._flows.pop(self.id, None)
            data = conn._take_output_locked()
        if data:
            conn._send(data)

    # --- internals (called with the lock held) ------------------------------------------
    def _reset_locked(self, err: errors.IPCError) -> None:
        conn = self._conn
        self._error = err
        self._eof = False  # a local reset wins over a FIN that came before it
        self._local_closed = True
        self._inbox.clear()
        if not conn._mux.closed:
            conn._mux.reset_flow(self.id, None if isinstance(err, errors.CanceledError) else err)
        conn._flows.pop(self.id, None)
        self._cond.notify_all()
        conn._wake_leader_locked()

    def _fail_locked(self, err: errors.IPCError) -> errors.IPCError:
        if self._error is None:
            self._error = err
        self._cond.notify_all()
        return _raisable(self._error)


class Connection:
    """An established VC over a connected socket (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        result: HandshakeResult,
        *,
        dialer: bool,
        config: MuxConfig | None = None,
        on_flow: Callable[[Flow], Callable[[], None] | None] | None = None,
        on_close: Callable[[Connection, errors.IPCError], None] | None = None,
        keepalive: KeepaliveConfig | None = None,
        name: str = "",
        lead_reads: bool = True,
        busy_poll: float = 0.0,
        park_idle: float = 0.0,
    ) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._config = config or MuxConfig()
        if on_flow is None and self._config.max_inbound_flows:
            # Nobody would read flows the peer opens: refuse them (RESET) instead of
            # letting a hostile peer pin a window's worth of memory per flow.
            self._config = dataclasses.replace(self._config, max_inbound_flows=0)
        peer = result.peer_settings
        self._mux = Mux(
            self._config,
            dialer=dialer,
            peer_initial_window=peer.initial_window,
            peer_max_frame_payload=peer.max_frame_payload,
        )
        self._sealer = result.sealer
        self._opener = result.opener
        self.result = result
        self._flows: dict[int, Flow] = {}
        self._on_flow = on_flow
        self._on_close = on_close
        self._keepalive = keepalive or KeepaliveConfig()
        self._flushing = False
        self._deferred = 0  # bytes streamed writes left queued (see LINGER)
        self._linger_due = False  # the lingerer will flush this VC
        self._error: errors.IPCError | None = None
        self._close_error: errors.IPCError | None = None  # set by close() before GOAWAY
        self._closed_event = threading.Event()
        self._close_notified = False
        self._retiring = False  # see retire()
        self.pid = os.getpid()
        self.name = name or f"vc-{id(self):x}"
        self.cache: dict[Any, Any] = {}
        """Per-VC data the layers above keep (validated names per method, ...); bounded by
        its users."""
        self._last_recv = time.monotonic()
        ka = self._keepalive
        self._liveness = livemod.Liveness(
            interval=ka.interval,
            timeout=ka.timeout,
            probe_timeout=ka.probe_timeout,
            probe_after=ka.probe_after,
            now=self._last_recv,
        )
        # Parking (accepted VCs; see _IdleWatcher): after this long without input and with
        # no flow, the reader thread hands the VC to the idle watcher and ends.
        self._park_idle = park_idle if on_flow is not None else 0.0
        self._last_ping = 0.0  # when a reader with a short receive timeout last pinged
        try:
            timeout = min(ka.interval, self._park_idle) if self._park_idle else ka.interval
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(ka.send_timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        except OSError:  # pragma: no cover - every POSIX socket has these
            log.debug("transport: could not set socket timeouts on %s", self.name)
        self._pending_early = list(result.early_plaintext)
        # Leader/follower reads (dialed VCs: see the module docstring). The "read role" is
        # who may touch the socket's receive side, the opener and the receive buffer.
        self._lead = on_flow is None and lead_reads
        self._reading = self._lead  # the reader thread holds the role from the start
        self._reader_holds = self._lead
        self._waiters: dict[Flow, None] = {}  # flows whose callers wait for the peer
        self._reader_parked = False  # the reader thread sleeps in _park_locked
        # Inline jobs on accepted VCs (see inline_available): the job the reader thread
        # runs after the current batch, its number, whether one is running, whether a
        # helper thread reads for the VC meanwhile.
        self._inline_job: Callable[[], None] | None = None
        self._inline_count = 0
        self._inline_running = False
        self._inline_started = 0.0
        self._helper_active = False
        self._helper_done = _Signal(self._lock)
        self._last_lead = 0.0
        self._reader_signal = _Signal(self._lock)
        self._mid_read = False
        # Busy polling by the reader thread (an accepted VC's; a dialed VC's while it reads
        # for several calls, never a caller reading for itself): see
        # TransportOptions.busy_poll. The counters say how often a poll found data.
        self._busy_poll = busy_poll
        self.busy_poll_hits = 0
        self.busy_poll_misses = 0
        self._wake_r = self._wake_w = -1
        if self._lead:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
            self._poll.register(self._wake_r, select.POLLIN)
        self._reader = threading.Thread(
            target=self._lead_loop if self._lead else self._read_loop,
            name=f"ipc-{self.name}",
            daemon=True,
        )

    def start(self) -> None:
        """Start the reader thread (after the owner has stored the connection)."""
        self._reader.start()

    # --- properties -------------------------------------------------------------------
    @property
    def local_key(self) -> Any:
        return self.result.local_key

    @property
    def remote_key(self) -> Any:
        return self.result.remote_key

    @property
    def local_blessings(self) -> Any:
        return self.result.local_blessings

    @property
    def remote_blessings(self) -> Any:
        return self.result.remote_blessings

    @property
    def remote_discharges(self) -> tuple[Any, ...]:
        return self.result.remote_discharges

    @property
    def closed(self) -> bool:
        """True once the VC is closed or broken."""
        return self._error is not None

    @property
    def error(self) -> errors.IPCError | None:
        """Why the VC is closed, or None while it is open."""
        return self._error

    @property
    def suspect(self) -> bool:
        """True while a probe waits for the peer's answer (a call timed out on this VC
        with the peer silent): new calls had better use another VC."""
        return self._liveness.unanswered(self._last_recv)

    def retire(self) -> None:
        """Close the VC once its last flow ends (now if it has none): another VC to the same
        peer replaces it for new calls."""
        with self._lock:
            self._retiring = True
            idle = not self._flows
        if idle:
            self.close()

    @property
    def flow_count(self) -> int:
        with self._lock:
            return len(self._flows)

    # --- flows ------------------------------------------------------------------------
    def connect(self) -> Flow:
        """Open a new flow (nothing is sent until its first write).

        Raises:
            ConnectionFailedError: the VC is closed or broken (evict it and dial again).
        """
        with self._lock:
            if self._error is not None:
                raise errors.ConnectionFailedError(
                    f"transport: the VC is closed: {self._error.msg}"
                )
            try:
                fid = self._mux.open_flow()
            except errors.IPCError as exc:
                raise errors.ConnectionFailedError(
                    f"transport: cannot open a flow: {exc.msg}"
                ) from exc
            flow = Flow(self, fid)
            self._flows[fid] = flow
            return flow

    # --- closing ----------------------------------------------------------------------
    def close(self, error: errors.IPCError | None = None, *, timeout: float = 1.0) -> None:
        """Close the VC: send GOAWAY (best effort), end every flow, stop the reader thread.

        In-flight flows end with ``error`` if given, else a ConnectionFailedError saying the
        VC was closed locally. Idempotent; safe from any thread, including callbacks.
        """
        err = error or errors.ConnectionFailedError("transport: the VC was closed locally")
        with self._lock:
            data: list[bytes | memoryview] = []
            if self._error is None:
                # What the flows end with, even if the peer's answer to our GOAWAY (EOF) is
                # seen by a reader before this thread gets to _break.
                if self._close_error is None:
                    self._close_error = err
                self._mux.close(error)
                data = self._take_output_locked()
        if data:  # GOAWAY, best effort: a peer that stopped reading must not hold us up
            with contextlib.suppress(OSError, errors.IPCError):
                for record in self._sealer.seal_parts(data):
                    if self._send_nowait(record) < len(record):
                        break
            with self._lock:
                self._flushing = False
        elif self._flushing and self._mux.closed:
            # Another thread is sending: it sends our GOAWAY after what it has, unless the
            # socket is shut first. Its LAST_ID is what lets the peer resend the calls we
            # never took, so give it a moment (bounded: it may be stuck on a full socket).
            end = time.monotonic() + min(timeout, _GOAWAY_GRACE)
            while self._flushing and time.monotonic() < end:
                time.sleep(0.001)
        self._break(err)
        if self._reader.ident is None:  # never started: nobody else will close the socket
            self._sock.close()
            self._close_pipe()
        elif (
            threading.current_thread() is not self._reader
            and self._reader.is_alive()
            and not self._inline_running  # (it runs a call: it ends when the call does)
        ):
            self._reader.join(timeout)

    def abandon_after_fork(self) -> None:
        """In a child process after fork(): forget this VC without touching the connection
        the parent still uses (no GOAWAY, no shutdown; only our copy of the descriptor is
        closed). The reader thread did not survive the fork."""
        self._error = errors.ConnectionFailedError("transport: VC inherited across fork")
        self._flows.clear()
        with contextlib.suppress(OSError):
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):  # no lock: another thread may have held it
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the VC is closed or broken; True if it is."""
        return self._closed_event.wait(timeout)

    def _break(self, err: errors.IPCError) -> None:
        """Fail every flow with ``err``, shut the socket, tell the owner (once)."""
        with self._lock:
            if self._close_error is not None:
                err = self._close_error  # a local close() is why, whoever noticed first
            first = self._error is None
            if first:
                self._error = err
            flows = list(self._flows.values())
            self._flows.clear()
            aborted = []
            for flow in flows:
                if flow._error is None:
                    flow._error = err
                    if flow._on_abort is not None:
                        aborted.append(flow._on_abort)
                flow._cond.notify_all()
            notify = not self._close_notified
            self._close_notified = True
            self._reader_signal.notify_all()
        for fn in aborted:
            _run_abort(fn, err)
        if first:
            # (a GOAWAY from the peer, EOF, a protocol error, a local close: which one is err)
            log.debug("transport: VC %s ended: %s", self.name, err)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if notify:
            self._closed_event.set()
            if self._on_close is not None:
                try:
                    self._on_close(self, err)
                except Exception:  # a bug in the owner's callback must not kill the reader
                    log.exception("transport: on_close callback failed")

    # --- writing (flusher) --------------------------------------------------------------
    def _forget_if_ended(self, flow: Flow) -> None:
        if flow._eof and not self._mux.is_live(flow.id):
            self._flows.pop(flow.id, None)

    def _take_output_locked(self) -> list[bytes | memoryview]:
        """With ``_lock`` held: become the flusher and take what the mux has queued, or
        return [] (nothing queued, or another thread is flushing and will send it). A
        non-empty result must be passed to :meth:`_send` once the lock is released."""
        if self._flushing or not self._mux._out:
            return []
        self._flushing = True
        self._deferred = 0
        return self._mux.take_output()

    def _flush_deferred(self) -> None:
        """The lingerer's turn: send what bursts left queued, in one pass that never waits on
        the socket (what was queued meanwhile gets the lingerer's next round, so one busy VC
        cannot hold up the others)."""
        with self._lock:
            self._linger_due = False
            data = self._take_output_locked() if self._deferred else []
        if data:
            self._send(data, blocking=False, once=True)

    def _flush(self, *, blocking: bool = True) -> None:
        """Send everything the mux has queued; one flusher at a time (see module docstring).

        ``blocking=False`` never waits on a full socket: what cannot go out at once is handed
        to a short-lived drainer thread (which keeps the flusher role until it is done). The
        reader thread and cancellation paths (context callbacks, the timer thread) use it, so
        they never stall behind a peer that stopped reading.
        """
        with self._lock:
            data = self._take_output_locked()
        if data:
            self._send(data, blocking=blocking)

    def _send(
        self, data: list[bytes | memoryview], *, blocking: bool = True, once: bool = False
    ) -> None:
        """As the flusher (see :meth:`_take_output_locked`): seal and send ``data`` (frame
        pieces), then whatever was queued meanwhile, until nothing is left; then give up
        the role. Bulk is sealed record by record into the sealer's reused buffer. With
        ``once`` (the lingerer), what was queued meanwhile is left for the lingerer's next
        round instead."""
        try:
            while data:
                records = iter(self._sealer.seal_parts(data))
                for record in records:
                    if blocking:
                        self._sock.sendall(record)
                        continue
                    sent = self._send_nowait(record)
                    if sent < len(record):
                        # (a copy: the record's buffer is reused for the next record)
                        self._start_drainer(bytes(memoryview(record)[sent:]), records)
                        return  # the drainer holds the flusher role now
                with self._lock:
                    if once and self._mux._out:
                        self._flushing = False
                        again = not self._linger_due
                        self._linger_due = True
                        self._deferred = max(self._deferred, 1)
                        break
                    self._deferred = 0
                    data = self._mux.take_output()
                    if not data:
                        self._flushing = False
            else:
                return
            if again:
                _LINGERER.add(self)
        except (OSError, errors.IPCError) as exc:
            with self._lock:
                self._flushing = False
            self._break(errors.ConnectionFailedError(f"transport: send failed: {exc}"))
        except BaseException:
            # KeyboardInterrupt mid-send: part of a record may be out, so the VC is gone.
            with self._lock:
                self._flushing = False
            self._break(errors.ConnectionFailedError("transport: interrupted while sending"))
            raise

    def _send_nowait(self, record: bytes | bytearray | memoryview) -> int:
        """Send what the socket takes without blocking; return how much that was."""
        view = memoryview(record)
        total = 0
        size = len(record)
        while total < size:
            try:
                total += self._sock.send(view[total:], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
        return total

    def _start_drainer(self, rest: bytes, records: Iterator[bytes | memoryview]) -> None:
        threading.Thread(
            target=self._drain, args=(rest, records), name=f"ipc-drain-{self.name}", daemon=True
        ).start()

    def _drain(self, rest: bytes, records: Iterator[bytes | memoryview]) -> None:
        """The drainer: finish the record the socket would not take and the records still
        to seal of that batch, then flush on as a blocking flusher (bounded by the send
        timeout), then end."""
        try:
            self._sock.sendall(rest)
            for record in records:
                self._sock.sendall(record)
        except (OSError, errors.IPCError) as exc:
            with self._lock:
                self._flushing = False
            self._break(errors.ConnectionFailedError(f"transport: send failed: {exc}"))
            return
        with self._lock:
            self._deferred = 0
            data = self._mux.take_output()
            if not data:
                self._flushing = False
        if data:
            self._send(data)

    # --- reading: leader/follower (dialed VCs) ------------------------------------------
    def _wait_for_peer(self, flow: Flow, timeout: float | None) -> None:
        """With ``_lock`` held: wait for the peer to send something (data or credit for
        ``flow``, or anything that ends it). On a dialed VC a caller with nobody reading for
        it reads the socket itself (one read step, dispatching to every flow); otherwise it
        sleeps until notified. Callers loop, checking their own condition."""
        if not self._lead:
            flow._cond.wait(timeout)
            return
        # Other calls in flight: the reader thread reads for all of them (one thread stays
        # awake dispatching replies, instead of the role passing from caller to caller).
        busy = len(self._flows) > 1
        if not self._reading and not (busy and self._reader_parked):
            self._reading = True
            self._reader_holds = False
            self._lock.release()
            try:
                try:
                    self._lead_step(timeout)
                except BaseException:
                    if self._mid_read:
                        # Interrupted (KeyboardInterrupt) between reading bytes and
                        # dispatching them: they are lost, so the VC cannot be trusted.
                        self._mid_read = False
                        self._break(
                            errors.ConnectionFailedError("transport: interrupted while reading")
                        )
                    raise
            finally:
                pending = _reacquire(self._lock)
                self._reading = False
                self._last_lead = time.monotonic()
                self._pass_role_locked()
                if pending is not None:
                    raise pending
            return
        try:
            self._waiters[flow] = None
            if not self._reading:  # busy, and the reader thread is parked: it takes over
                self._reader_signal.notify_all()
            elif self._reader_holds and not busy:
                self._poke_locked()  # the reader thread gives the role up to us
            flow._cond.wait(timeout)
        finally:
            self._waiters.pop(flow, None)
            if self._role_free_locked():  # (it may have changed while we slept)
                # The role is free and was maybe handed to us; our caller takes it if it
                # still needs the peer. Pass the baton on too, so that a waiter that does
                # need it is never left sleeping with nobody reading.
                self._pass_role_locked()

    def _pass_role_locked(self) -> None:
        """The read role was just given up: wake who should take it, if anybody waits: the
        reader thread when several calls are in flight (it reads for all), else the next
        waiting caller."""
        if not self._waiters:
            return
        if self._reader_parked and len(self._flows) > 1:
            self._reader_signal.notify_all()
            return
        for waiting in self._waiters:
            waiting._cond.notify_all()
            break

    def _role_free_locked(self) -> bool:
        return not self._reading

    def _wake_leader_locked(self) -> None:
        """A flow changed from outside the read role (cancelled, closed): a caller reading
        for itself may be waiting for exactly that flow in poll; wake it to look."""
        if self._reading and not self._reader_holds:
            self._poke_locked()

    def _poke_locked(self) -> None:
        """Wake the reader thread's poll (a one-byte write to a non-blocking pipe)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def _close_pipe(self) -> None:
        with self._lock:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _lead_step(self, timeout: float | None) -> None:
        """As the read role, outside the lock: one read step, with keepalive duty; a broken
        VC is broken here."""
        due = self._liveness.next_check(time.monotonic(), self._last_recv)
        slice_ = due if timeout is None else max(0.0, min(timeout, due))
        try:
            outcome = self._read_step(slice_)
            if outcome != "data" or self._liveness.probing:
                # However the step ended (a call's deadline or cancel wakes it long before
                # any keepalive timer would), the peer's silence is judged.
                dead = self._liveness_duty()
                if dead is not None:
                    self._break(dead)
        except _Broken as broken:
            self._break(broken.error)
        except errors.IPCError as exc:
            self._fail_protocol(exc)

    def _read_step(self, timeout: float) -> str:
        """As the read role: wait up to ``timeout`` seconds for the socket (or a poke), read
        what is there and dispatch it. Returns "data", "wake" or "timeout".

        Raises:
            _Broken: EOF or a socket error.
            IPCError: the peer broke the protocol.
        """
        try:
            ready = self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
        except OSError as exc:  # pragma: no cover - poll on open descriptors does not fail
            raise _Broken(errors.ConnectionFailedError(f"transport: poll failed: {exc}")) from exc
        readable = False
        woken = False
        for fd, _events in ready:
            if fd == self._wake_r:
                woken = True
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
            else:
                readable = True
        if not readable:
            return "wake" if woken else "timeout"
        return "data" if self._receive_and_dispatch() else "wake"

    def _receive_and_dispatch(self, flags: int = 0) -> bool:
        """As the read role, the socket readable: receive once (with ``flags``) and
        dispatch every record completed. False when there was nothing to receive after all.

        Raises:
            _Broken: EOF or a socket error.
            IPCError: the peer broke the protocol.
        """
        # From before the receive until everything read is dispatched (see _wait_for_peer):
        # an interrupt anywhere in between may have taken bytes from the socket (or left the
        # opener's buffer half moved) that nobody will deliver, so the VC cannot be trusted.
        self._mid_read = True
        try:
            n = self._sock.recv_into(self._opener.receive_buffer(), 0, flags)
        except (BlockingIOError, InterruptedError, TimeoutError):
            self._mid_read = False
            return False
        except OSError as exc:
            err = errors.ConnectionFailedError(f"transport: receive failed: {exc}")
            raise _Broken(err) from exc
        if n == 0:
            raise _Broken(errors.ConnectionFailedError("transport: the peer closed the connection"))
        now = time.monotonic()
        heard = False
        for plain in self._opener.received(n):
            heard = True
            self._on_plaintext(plain)
        if heard:
            # Only whole records count as hearing from the peer: bytes of a record that
            # never completes (a length garbled on the way) are no sign of life.
            self._last_recv = now
        self._mid_read = False
        return True

    def _fail_protocol(self, exc: errors.IPCError) -> None:
        """The peer broke the protocol: send GOAWAY with why (best effort), break the VC."""
        self._break(self._goaway_for(exc))

    def _goaway_for(self, exc: errors.IPCError) -> errors.IPCError:
        """Send GOAWAY saying why the peer's input was refused (best effort, never waiting
        on the socket); the error the VC's flows then end with."""
        err = errors.ConnectionFailedError(f"transport: {exc.id}: {exc.msg}")
        err.__cause__ = exc
        with self._lock:
            if self._error is None:
                self._mux.close(exc)
        self._flush(blocking=False)
        return err

    def _lead_loop(self) -> None:
        """The reader thread of a dialed VC: it reads only while no caller does (it gives
        the role up as soon as a caller waits, and takes it back after LEAD_GRACE of quiet),
        so a caller normally reads its own reply without a thread hop, and an idle VC still
        answers pings, notices a dead peer and sees GOAWAY."""
        err: errors.IPCError | None = None
        spin = self._busy_poll
        spinning = False  # poll before the next blocking read (see busy_poll, _POLL_RULES)
        monotonic = time.monotonic
        try:
            if self._pending_early:
                early, self._pending_early = self._pending_early, []
                for plain in early:
                    self._on_plaintext(plain)
            while True:
                with self._lock:
                    if self._error is not None:
                        break
                    if self._waiters and len(self._flows) <= 1:
                        # A lone caller wants the socket: hand the role over (with several
                        # calls in flight this thread reads for all of them).
                        self._reading = False
                        spinning = False  # (a quick read must come first again)
                        self._reader_holds = False
                        self._last_lead = time.monotonic()
                        for waiting in self._waiters:
                            waiting._cond.notify_all()
                            break
                        if not self._park_locked():
                            break
                        continue
                try:
                    # Reading for several calls: poll first, as accepted VCs do (busy_poll).
                    polled = _POLL_SKIPPED
                    quick = False  # what was read came within `spin` of going idle
                    polling = spin > 0 and len(self._flows) > 1
                    if polling:
                        idle_since = monotonic()
                        if spinning:
                            polled = self._spin_read(idle_since + spin)
                            if polled == _POLL_HANDOVER:
                                continue  # a lone caller waits: hand it the socket (above)
                            if polled == _POLL_MISSED:
                                spinning = False  # a longer gap: sleep until a short one
                    if polled > 0:
                        outcome = "data"
                        quick = True
                    else:
                        outcome = self._read_step(
                            self._liveness.next_check(monotonic(), self._last_recv)
                        )
                        # (when the bytes came, not when their dispatch ended)
                        quick = polling and self._last_recv - idle_since < spin
                    if outcome == "data":  # (read for one call only: not quick, disarms)
                        spinning = quick and not self._opener.buffered  # (see _POLL_RULES)
                except _Broken as broken:
                    err = broken.error
                    break
                if outcome != "data" or self._liveness.probing:
                    err = self._liveness_duty()  # (however this thread woke)
                    if err is not None:
                        break
        except errors.IPCError as exc:
            self._fail_protocol(exc)
        except Exception as exc:  # pragma: no cover - a bug here must still break the VC
            log.exception("transport: reader thread failed")
            err = errors.InternalError(f"transport: reader failed: {exc!r}")
        finally:
            self._break(err or errors.ConnectionFailedError("transport: the VC was closed"))
            with contextlib.suppress(OSError):
                self._sock.close()
            self._close_pipe()

    def _spin_read(self, until: float) -> int:
        """The reader thread reading for several calls: poll the socket without blocking
        until monotonic time ``until`` (see ``busy_poll``), dispatching what comes, yielding
        the CPU between polls (see :meth:`_spin_recv`). 1: something was dispatched;
        ``_POLL_MISSED``: nothing came; ``_POLL_HANDOVER``: a lone caller now waits for
        the peer (the loop hands it the socket); ``_POLL_SKIPPED``: no polling slot free.

        Raises:
            _Broken: EOF or a socket error.
            IPCError: the peer broke the protocol.
        """
        if not _take_poll_slot():
            return _POLL_SKIPPED
        monotonic = time.monotonic
        yield_cpu = os.sched_yield
        try:
            while not (self._waiters and len(self._flows) <= 1):
                if self._receive_and_dispatch(socket.MSG_DONTWAIT):
                    self.busy_poll_hits += 1
                    return 1
                if monotonic() >= until:
                    self.busy_poll_misses += 1
                    return _POLL_MISSED
                yield_cpu()
            # A lone caller waits: it may have poked the pipe for a reader asleep in poll();
            # drain that, so the caller's own first read does not return at once for it.
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            return _POLL_HANDOVER
        finally:
            _give_poll_slot()

    def _park_locked(self) -> bool:
        """With ``_lock`` held, the role given up: sleep until the VC has been quiet (nobody
        reading, nobody waiting) for LEAD_GRACE, or until several calls wait for the peer
        with nobody reading, then take the role back. False when the VC closed meanwhile."""
        try:
            while self._error is None:
                quiet = time.monotonic() - self._last_lead
                # Quiet: nobody took the role for LEAD_GRACE (normally because nobody waits;
                # as a safety net also when waiters do not take it).
                if not self._reading:
                    if quiet >= LEAD_GRACE or (self._waiters and len(self._flows) > 1):
                        self._reading = True
                        self._reader_holds = True
                        return True
                    for waiting in self._waiters:  # a lone caller waits: it reads itself
                        waiting._cond.notify_all()
                        break
                self._reader_parked = True
                self._reader_signal.wait(
                    max(LEAD_GRACE - quiet, 0.001) if quiet < LEAD_GRACE else LEAD_GRACE
                )
            return False
        finally:
            self._reader_parked = False

    # --- reading (reader thread) --------------------------------------------------------
    def _read_loop(self) -> None:
        sock = self._sock
        opener = self._opener
        err: errors.IPCError | None = None
        spin = self._busy_poll
        spinning = False  # poll before the next blocking read (see busy_poll, _POLL_RULES)
        monotonic = time.monotonic
        parked = False
        try:
            if self._pending_early:
                early, self._pending_early = self._pending_early, []
                for plain in early:
                    self._on_plaintext(plain)
                self._run_pending_inline()
            while self._error is None:
                try:
                    buf = opener.receive_buffer()
                    try:
                        n = -1
                        quick = False  # what was read came within `spin` of going idle
                        if spin:
                            idle_since = monotonic()
                            if spinning:
                                n = self._spin_recv(buf, idle_since + spin)
                                if n == _POLL_MISSED:
                                    spinning = False  # a longer gap: sleep until a short one
                                quick = n > 0
                        if n < 0:
                            n = sock.recv_into(buf)
                            quick = spin > 0 and monotonic() - idle_since < spin
                    finally:
                        buf.release()  # (the opener may grow its buffer for the next read)
                except (BlockingIOError, TimeoutError):
                    if self._park_idle:
                        if self._park():
                            parked = True  # (the idle watcher has the VC now)
                            return
                        if not self._ping_due():
                            continue
                    if self._keepalive_due():
                        continue
                    err = errors.ConnectionFailedError(
                        "transport: the peer missed its keepalive; the VC is broken"
                    )
                    break
                except OSError as exc:
                    if self._error is None:
                        err = errors.ConnectionFailedError(f"transport: receive failed: {exc}")
                    break
                if n == 0:
                    err = errors.ConnectionFailedError("transport: the peer closed the connection")
                    break
                self._last_recv = time.monotonic()
                for record in opener.received(n):
                    self._on_plaintext(record)
                if spin:
                    spinning = quick and not opener.buffered  # (see _POLL_RULES)
                self._run_pending_inline()
        except errors.IPCError as exc:
            err = self._goaway_for(exc)  # (broken in the finally below)
        except Exception as exc:  # pragma: no cover - a bug here must still break the VC
            log.exception("transport: reader thread failed")
            err = errors.InternalError(f"transport: reader failed: {exc!r}")
        finally:
            if not parked:
                self._break(err or errors.ConnectionFailedError("transport: the VC was closed"))
                with contextlib.suppress(OSError):
                    sock.close()
                # A job taken from a batch that failed half way: run it now; its flow is
                # broken, so it only lets go of what the owner holds for it (a server slot).
                job, self._inline_job = self._inline_job, None
                if job is not None:
                    self._call_job(job)

    # --- parking (accepted VCs with park_idle) ------------------------------------------
    def _park(self) -> bool:
        """(The reader thread, after a receive timed out.) Hand the VC to the idle watcher
        if it is idle (no flow, no job, nothing half read): True, and the thread must end
        at once without touching the VC again."""
        with self._lock:
            if (
                self._error is not None
                or self._flows
                or self._inline_job is not None
                or self._inline_running
                or self._helper_active
                or self._opener.buffered
            ):
                return False
        self._opener.release_buffer()  # (nobody reads until the watcher starts a reader)
        try:
            _IDLE.park(self)
        except (RuntimeError, OSError):  # no watcher to be had: keep reading here
            return False
        return True

    def _unpark(self) -> None:
        """(The idle watcher.) Input came: give the VC a reader thread again."""
        thread = threading.Thread(target=self._read_loop, name=f"ipc-{self.name}", daemon=True)
        self._reader = thread
        try:
            thread.start()
        except RuntimeError:
            self._broken_while_parked(
                errors.ConnectionFailedError("transport: no thread to read an idle VC")
            )

    def _broken_while_parked(self, err: errors.IPCError) -> None:
        """(The idle watcher.) End a parked VC: what its reader thread's end would do."""
        self._break(err)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _ping_due(self) -> bool:
        """On a receive timeout shorter than the keepalive interval (``park_idle``): whether
        it is time to ping (or to find the peer dead)."""
        now = time.monotonic()
        idle = now - self._last_recv
        ka = self._keepalive
        if idle >= ka.timeout:
            return True
        if idle < ka.interval or now - self._last_ping < ka.interval:
            return False
        self._last_ping = now
        return True

    def _spin_recv(self, buf: memoryview | bytearray, until: float) -> int:
        """Poll the socket without blocking until monotonic time ``until`` (see
        ``busy_poll``): what one receive returned (0: EOF), ``_POLL_MISSED`` when nothing
        came, ``_POLL_SKIPPED`` when the process has no polling slot free.

        Each receive lets go of the GIL; between polls the thread also yields its CPU
        (``sched_yield``, which lets go of the GIL too from Python 3.12), so that a thread
        just woken (a worker given data or credit) can run (measured on 3.11: a 1 MiB echo
        lost ~15% polling without yielding, nothing with it). A slot is held while what a
        poll found is dispatched."""
        if not _take_poll_slot():
            return _POLL_SKIPPED
        sock = self._sock
        monotonic = time.monotonic
        yield_cpu = os.sched_yield
        try:
            while True:
                try:
                    n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if monotonic() >= until:
                        self.busy_poll_misses += 1
                        return _POLL_MISSED
                    yield_cpu()
                    continue
                if n:
                    self.busy_poll_hits += 1
                return n
        finally:
            _give_poll_slot()

    # --- inline jobs (accepted VCs) -----------------------------------------------------
    def inline_available(self) -> bool:
        """For ``on_flow`` (on an accepted VC): whether it may return a job to run on this
        VC's reader thread once the current batch of input is dispatched, instead of handing
        the flow to a worker. True only on the reader thread itself, with no job pending
        (one per batch: the other complete requests of a batch go to workers, so that they
        overlap) and no helper reading; also with other calls in flight on the VC (measured
        with 8 threads calling on one VC: ~10k against ~8k calls/s when only a lone call
        ran inline, and less CPU per call on both sides). The job must not wait for input on
        its own flow (give it a flow whose peer is done). A job running longer than
        ``INLINE_HANDOFF`` gets a helper thread that reads for the VC until it ends."""
        return (
            not self._lead
            and self._inline_job is None
            and not self._helper_active
            and threading.get_ident() == self._reader.ident
        )

    def _run_pending_inline(self) -> None:
        """(The reader thread, after dispatching a batch.) Run the job ``on_flow`` gave."""
        job = self._inline_job
        if job is not None:
            self._inline_job = None
            self._run_inline(job)

    def _run_inline(self, job: Callable[[], None]) -> None:
        """On the reader thread, between two reads: run ``job``; if a helper took over
        reading meanwhile, wait until it has stopped before reading again."""
        with self._lock:
            self._inline_count += 1
            number = self._inline_count
            self._inline_started = time.monotonic()
            self._inline_running = True
        try:
            _HANDOFF.watch(self)
        except RuntimeError:  # no thread for the watch: a helper reads from the start
            try:
                self._start_helper(number)
            except RuntimeError:
                log.warning("transport: no thread to read %s during a call", self.name)
        try:
            self._call_job(job)
        finally:
            pending: BaseException | None = None
            with self._lock:
                self._inline_running = False
                while self._helper_active:  # the helper sees the job ended within 1 ms
                    try:
                        self._helper_done.wait(None)
                    except BaseException as exc:  # (keep waiting: two readers must not race)
                        pending = exc
            if pending is not None:
                raise pending

    @staticmethod
    def _call_job(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:  # (a SystemExit in a method must not end the VC)
            log.exception("transport: an inline job failed")

    def _start_helper(self, number: int) -> None:
        """(The handoff thread.) Inline job ``number`` is taking long: start a thread that
        reads for the VC until the job ends."""
        with self._lock:
            if (
                not self._inline_running
                or self._inline_count != number
                or self._helper_active
                or self._error is not None
            ):
                return
            self._helper_active = True
        try:
            threading.Thread(
                target=self._helper_loop, name=f"ipc-{self.name}-helper", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._helper_active = False
                self._helper_done.notify_all()
            raise

    def _helper_loop(self) -> None:
        """Read and dispatch for the VC while its reader thread runs a long inline job
        (flows opened meanwhile go to ``on_flow``, which hands them to workers)."""
        err: errors.IPCError | None = None
        ka = self._keepalive
        last_ping = 0.0
        try:
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
            while True:
                with self._lock:
                    if not self._inline_running or self._error is not None:
                        break
                if not poller.poll(1):
                    now = time.monotonic()
                    idle = now - self._last_recv
                    if idle >= ka.timeout:  # keepalive duty, as the reader thread's
                        err = errors.ConnectionFailedError(
                            "transport: the peer missed its keepalive; the VC is broken"
                        )
                        break
                    if idle >= ka.interval and now - last_ping >= ka.interval:
                        last_ping = now
                        self._keepalive_due()  # sends a PING
                    continue
                self._receive_and_dispatch()
        except _Broken as broken:
            err = broken.error
        except errors.IPCError as exc:
            self._fail_protocol(exc)
        except Exception as exc:  # pragma: no cover - a bug here must still break the VC
            log.exception("transport: helper reader failed")
            err = errors.InternalError(f"transport: helper reader failed: {exc!r}")
        finally:
            if err is not None:
                self._break(err)
            with self._lock:
                self._helper_active = False
                self._helper_done.notify_all()

    def _suspect_locked(self, flow: Flow) -> bool:
        """With ``_lock`` held: a call on ``flow`` timed out (``flow`` itself does not
        matter: the VC's silence does). On a dialed VC whose peer was
        silent meanwhile, start a probe (one PING, queued: the caller flushes when this
        returns True) and wake whoever reads, so that its wait ends by the probe's deadline."""
        if not self._lead or self._error is not None or self._mux.closed:
            return False
        if not self._liveness.suspect(time.monotonic(), self._last_recv):
            return False
        log.debug("transport: a call timed out on %s with the peer silent: probing", self.name)
        self._mux.ping(os.urandom(8))
        self._poke_locked()
        return True

    def _liveness_duty(self) -> errors.IPCError | None:
        """As the read role, after a read step: ping if due; the error to break the VC with
        if the peer is dead (missed its keepalive, or did not answer a probe)."""
        with self._lock:
            if self._error is not None:
                return None
            if self._retiring and not self._flows:
                return errors.ConnectionFailedError("transport: the VC was retired")
            probing = self._liveness.probing
            action = self._liveness.check(time.monotonic(), self._last_recv)
            if action is livemod.PING:
                self._mux.ping(os.urandom(8))
        if action is livemod.DEAD:
            if probing:
                return errors.ConnectionFailedError(
                    "transport: a call timed out and the peer did not answer a ping; "
                    "the VC is broken"
                )
            return errors.ConnectionFailedError(
                "transport: the peer missed its keepalive; the VC is broken"
            )
        if self._mux._out:
            self._flush(blocking=False)
        return None

    def _keepalive_due(self) -> bool:
        """On a receive timeout: ping, or say the peer is dead (False)."""
        idle = time.monotonic() - self._last_recv
        if idle >= self._keepalive.timeout:
            return False
        with self._lock:
            if self._error is None:
                self._mux.ping(os.urandom(8))
        self._flush(blocking=False)
        return True

    def _on_plaintext(self, plain: bytes | memoryview) -> None:
        new_flows: list[Flow] = []
        aborted: list[tuple[Callable[[errors.IPCError], None], errors.IPCError]] = []
        closed: errors.IPCError | None = None
        with self._lock:
            events = self._mux.receive_data(plain)
            flows = self._flows
            for ev in events:
                cls = type(ev)
                if cls is muxmod.DataReceived:
                    assert isinstance(ev, muxmod.DataReceived)
                    flow = flows.get(ev.flow_id)
                    if flow is None:
                        # The app closed or cancelled it; give the credit back silently.
                        self._mux.acknowledge(ev.flow_id, len(ev.data))
                        continue
                    if ev.data:
                        flow._inbox.append(ev.data)
                    if ev.end:
                        flow._eof = True
                        if flow._local_closed and not self._mux.is_live(ev.flow_id):
                            # Both sides sent FIN: the flow is over. (A flow we have not
                            # closed can only have ended by a RESET later in this chunk:
                            # keep it for that event, which fails it and runs its abort.)
                            del flows[ev.flow_id]
                    flow._cond.notify_all()
                elif cls is muxmod.FlowOpened:
                    assert isinstance(ev, muxmod.FlowOpened)
                    flow = Flow(self, ev.flow_id)
                    flows[ev.flow_id] = flow
                    new_flows.append(flow)
                elif cls is muxmod.CreditAvailable:
                    assert isinstance(ev, muxmod.CreditAvailable)
                    flow = flows.get(ev.flow_id)
                    if flow is not None:
                        flow._cond.notify_all()
                elif cls is muxmod.FlowReset:
                    assert isinstance(ev, muxmod.FlowReset)
                    flow = flows.pop(ev.flow_id, None)
                    if flow is not None:
                        flow._error = ev.error
                        flow._cond.notify_all()
                        if flow._on_abort is not None:
                            aborted.append((flow._on_abort, ev.error))
                elif cls is muxmod.ConnectionClosed:
                    assert isinstance(ev, muxmod.ConnectionClosed)
                    log.debug(
                        "transport: VC %s: the peer sent GOAWAY (%s); %d flow(s) it never took",
                        self.name,
                        ev.peer_error or "no error",
                        len(ev.unprocessed),
                    )
                    closed = ev.error
                    for fid in ev.unprocessed:
                        # The peer says it never took these: their calls may be sent again.
                        flow = flows.pop(fid, None)
                        if flow is not None and flow._error is None:
                            flow._error = errors.NotProcessedError(
                                f"{ev.error.msg} (it never took flow {fid})"
                            )
                            flow._cond.notify_all()
                            if flow._on_abort is not None:
                                aborted.append((flow._on_abort, flow._error))
            out = self._take_output_locked()
        if out:
            self._send(out, blocking=False)  # the reader never waits on a full socket
        if self._on_flow is not None:
            for flow in new_flows:
                try:
                    job = self._on_flow(flow)
                except Exception:
                    log.exception("transport: on_flow callback failed")
                    flow.cancel(errors.InternalError("transport: the flow could not be taken"))
                    continue
                if job is not None:
                    self._inline_job = job  # (the owner asked inline_available() first)
        for fn, err in aborted:
            _run_abort(fn, err)
        if closed is not None:
            self._break(closed)
