"""One VC over one socket: its flow table, the dispatch of the peer's frames, its life.

Owns: the :class:`Connection` (an established VC: its socket, its sans-IO mux and record
layer, its flow table, the dispatch of what the mux reports to the flows and the owner, the
keepalive check, and breaking the VC on any fault). Its parts live in their own modules:
:mod:`~ipcclient.transport.flow` (the :class:`Flow` objects callers use),
:mod:`~ipcclient.transport.writer` (the record writer), :mod:`~ipcclient.transport.reader`
(the read role and the reader loops), :mod:`~ipcclient.transport.liveness` (keepalive
decisions; :class:`KeepaliveConfig` in :mod:`~ipcclient.transport.keepalive`),
:mod:`~ipcclient.transport.polling` (busy polling),
:mod:`~ipcclient.transport.inline` (inline jobs) and :mod:`~ipcclient.transport.parking`
(idle VCs without a thread). ``Connection``, ``Flow`` and ``KeepaliveConfig`` are imported
from here.

Must not: resolve names, know RPC headers, authorize anyone (the handshake's callbacks did that
before this object exists), or hold its lock across I/O.

Locks. ``_lock`` guards the mux, every flow's buffers, the record writer's state, the read
role and the inline job's state; it is never held across a socket call (the pipe write that
wakes a reader is a non-blocking one-byte write). It is a leaf lock: callbacks (``on_flow``,
``on_close``, a flow's abort callback) run outside it. See docs/concurrency.md for the
threads and the read role. ``_sock_lock``, another leaf lock never taken with ``_lock`` held
nor the other way round, orders the socket's shutdown and close (:meth:`_shut_socket`,
:meth:`_close_socket`): the thread that ends the VC shuts the socket, which wakes every
thread blocked on it, and the reader thread closes it; without the lock the close could land
between another thread's reading of the descriptor and its ``shutdown()`` call, which then
hits a closed descriptor (the wake-up is lost) or one already reused for another socket.
Neither call blocks. For the same reason the socket is never closed while the flusher or a
caller reading for itself is inside a call on it: the close is then left due
(``RecordWriter.close_due``) and made by whichever gives its role up last; once it is due,
no thread becomes the flusher.

On an accepted VC the owner's ``on_flow`` may return a job (a call whose request is all
here; one per batch) that the reader thread runs itself after dispatching the current batch
(:mod:`~ipcclient.transport.inline`). An accepted VC made with ``park_idle`` that has no flow
and has read nothing for that long is *parked* (:mod:`~ipcclient.transport.parking`): its
reader thread ends until the socket becomes readable again.

A broken VC (EOF, reset, a record or frame that fails, a missed keepalive, a failed send) ends
every flow with a :class:`~ipcclient.errors.ConnectionFailedError` (retry action
RETRY_CONNECTION) and calls ``on_close`` once so the owner evicts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from ipcclient import errors
from ipcclient.transport import liveness as livemod
from ipcclient.transport.flow import Flow, run_abort
from ipcclient.transport.inline import INLINE_HANDOFF as INLINE_HANDOFF
from ipcclient.transport.inline import InlineRunner
from ipcclient.transport.keepalive import MIN_KEEPALIVE_INTERVAL as MIN_KEEPALIVE_INTERVAL
from ipcclient.transport.keepalive import KeepaliveConfig
from ipcclient.transport.parking import IDLE
from ipcclient.transport.polling import PollState
from ipcclient.transport.reader import LEAD_GRACE as LEAD_GRACE
from ipcclient.transport.reader import Reader
from ipcclient.transport.readrole import CALLER
from ipcclient.transport.writer import LINGER as LINGER
from ipcclient.transport.writer import LINGER_BYTES as LINGER_BYTES
from ipcclient.transport.writer import RecordWriter
from ipcclient.vc.handshake import HandshakeResult
from ipcclient.wire import mux as muxmod
from ipcclient.wire.mux import Mux, MuxConfig

__all__ = ["Connection", "Flow", "KeepaliveConfig"]
# (INLINE_HANDOFF, LEAD_GRACE, LINGER, LINGER_BYTES and MIN_KEEPALIVE_INTERVAL are imported
# "as" themselves: re-exported for code that imports them from here.)

log = logging.getLogger("ipcclient.transport")

_GOAWAY_GRACE = 0.2
"""How long :meth:`Connection.close` waits for another thread's send to carry its GOAWAY out
before it shuts the socket."""


_IDLE = "idle"
"""(What :meth:`Connection.check_liveness` decided: close a VC without a call for its
``idle_timeout``.)"""


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in ``sock``'s kernel send queue (sent or not, not yet acknowledged); 0 where
    the system cannot say, or once the socket is closed."""
    try:
        got = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int(struct.unpack("i", got)[0])


def _timeval(seconds: float) -> bytes:
    """A socket timeout of ``seconds`` (> 0) as a ``struct timeval``: at least 1 us, since a
    zero timeval means no timeout at all."""
    whole = int(seconds)
    return struct.pack("ll", whole, max(int((seconds - whole) * 1_000_000), 0 if whole else 1))


class Connection(Reader):
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
        busy_poll_adapt: bool = True,
        idle_timeout: float = 0.0,
    ) -> None:
        self._sock = sock
        self._sock_lock = threading.Lock()
        self._sock_closed = False
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
        self._opener = result.opener
        self.result = result
        self._flows: dict[int, Flow] = {}
        # The most flows the peer takes from us at once (announced in its hello; 0: none
        # announced). A dialer at it waits for one of its flows to end (see connect()).
        self.flow_limit = peer.max_flows if dialer else 0
        self._flow_waiters: list[threading.Event] = []  # in the order they came
        self._flow_promised: list[threading.Event] = []  # woken: a free flow is kept for each
        self._on_flow = on_flow
        self._on_close = on_close
        self._keepalive = keepalive or KeepaliveConfig()
        self.name = name or f"vc-{id(self):x}"
        self._writer = RecordWriter(
            self._lock, self._mux, sock, result.sealer, self.name, self._break, self._close_socket
        )
        self._error: errors.IPCError | None = None
        self._close_error: errors.IPCError | None = None  # set by close() before GOAWAY
        self._closed_event = threading.Event()
        self._close_notified = False
        self._retiring = False  # see retire()
        self._dropped = False  # see drop()
        self.pid = os.getpid()
        self.cache: dict[Any, Any] = {}
        """Per-VC data the layers above keep (validated names per method, ...); bounded by
        its users."""
        self._last_recv = time.monotonic()
        self._read_at = self._last_recv
        """When the bytes being dispatched were received (``time.monotonic()``)."""
        ka = self._keepalive
        self._liveness = livemod.Liveness(
            interval=ka.interval,
            timeout=ka.timeout,
            probe_timeout=ka.probe_timeout,
            probe_after=ka.probe_after,
            now=self._last_recv,
        )
        # Parking (accepted VCs; see parking.IdleWatcher): after this long without input and
        # with no flow, the reader thread hands the VC to the idle watcher and ends.
        self._park_idle = park_idle if on_flow is not None else 0.0
        if ka.timeout - ka.interval < 2 * IDLE.ROUND:
            # The watcher checks parked VCs once a ROUND: with less than that between the
            # ping's due time and the timeout, a parked VC could be judged dead without ever
            # having been pinged. Such a VC keeps its reader thread.
            self._park_idle = 0.0
        # Idle close (dialed VCs; see TransportOptions.idle_timeout): with no flow since
        # ``_idle_since`` for this long, the keepalive check closes the VC with GOAWAY.
        self._idle_close = idle_timeout if on_flow is None else 0.0
        self._idle_since = self._last_recv
        try:
            timeout = min(ka.interval, self._park_idle) if self._park_idle else ka.interval
            if self._idle_close:
                timeout = min(timeout, self._idle_close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(ka.send_timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        except OSError:  # pragma: no cover - every POSIX socket has these
            log.debug("transport: could not set socket timeouts on %s", self.name)
        self._pending_early = list(result.early_plaintext)
        # Inline jobs on accepted VCs (see inline_available) and busy polling by the reader
        # thread (an accepted VC's; a dialed VC's while it reads for several calls, never a
        # caller reading for itself: see TransportOptions.busy_poll).
        self._inline_runner = InlineRunner(self._lock, self)
        self._polling = PollState(busy_poll, busy_poll_adapt)
        self._init_reader(on_flow is None and lead_reads)

    def start(self) -> None:
        """Start the reader thread (after the owner has stored the connection)."""
        self._reader.start()

    def run_reader(self) -> None:
        """Make the calling thread this VC's reader thread, instead of :meth:`start`: it
        reads until the VC ends, then returns. For an accepted VC, whose handshake thread
        becomes its reader (no second thread start before the first call is served)."""
        thread = threading.current_thread()
        thread.name = self._reader.name
        self._reader = thread
        self._reader_thread()

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
            self._wake_flow_waiters_locked()  # (they go to the VC that replaces this one)
        if idle:
            self.close()

    def drop(self) -> None:
        """Its owner is gone without closing it (a client collected without ``close()``):
        the VC ends at its reader's next check (:meth:`check_liveness`, within the keepalive
        interval), whatever flows are left (a dropped owner's calls cannot be alive: each
        holds its client). Takes no lock and touches no socket, so a finalizer may call it
        from any thread, one holding this VC's lock among them."""
        self._dropped = True

    @property
    def flow_count(self) -> int:
        with self._lock:
            return len(self._flows)

    @property
    def inbound_flows(self) -> int:
        """The peer's flows live on this VC now (a snapshot, read without the lock): a flow
        counts from its first frame until it is over both ways, or reset either way."""
        return self._mux._inbound

    # --- flows ------------------------------------------------------------------------
    def connect(self, waiter: threading.Event | None = None) -> Flow | None:
        """Open a new flow (nothing is sent until its first write); None when this side
        has as many flows open as the peer takes at once (:attr:`flow_limit`), or others
        wait for one: ``waiter``, if given, then joins the queue (once) and is set when a
        flow is kept for it (its turn: call again, with the same ``waiter``) or the VC ends.
        Call :meth:`stop_waiting` if you give up first.

        Raises:
            ConnectionFailedError: the VC is closed or broken (evict it and dial again).
        """
        with self._lock:
            if self._error is not None:
                raise errors.ConnectionFailedError(
                    f"transport: the VC is closed: {self._error.msg}"
                )
            limit = self.flow_limit
            if limit:
                promised = self._flow_promised
                if promised and waiter is not None and waiter in promised:
                    promised.remove(waiter)  # its turn: the flow kept for it
                elif self._flow_waiters or len(self._flows) + len(promised) >= limit:
                    # Full, or others are ahead: queue (no call overtakes those waiting).
                    if waiter is not None and waiter not in self._flow_waiters:
                        self._flow_waiters.append(waiter)
                    self._pass_free_flows_locked()  # (room with a queue: the head's turn)
                    return None
            try:
                fid = self._mux.open_flow()
            except errors.IPCError as exc:
                raise errors.ConnectionFailedError(
                    f"transport: cannot open a flow: {exc.msg}"
                ) from exc
            flow = Flow(self, fid, self._lock, self._mux, self._writer)
            self._flows[fid] = flow
            return flow

    def stop_waiting(self, waiter: threading.Event) -> None:
        """Forget ``waiter`` (see :meth:`connect`): its owner no longer wants a flow here.
        Had a flow's end woken it already, the next waiter is woken in its place."""
        with self._lock:
            if waiter in self._flow_waiters:
                self._flow_waiters.remove(waiter)
            elif waiter in self._flow_promised:
                self._flow_promised.remove(waiter)
                self._pass_free_flows_locked()

    def _pass_free_flows_locked(self) -> None:
        """Keep a free flow for each of the longest waiting, as many as there are free
        flows, and wake them."""
        waiters = self._flow_waiters
        promised = self._flow_promised
        free = self.flow_limit - len(self._flows) - len(promised)
        for _ in range(min(len(waiters), free)):
            waiter = waiters.pop(0)
            promised.append(waiter)
            waiter.set()

    def _wake_flow_waiters_locked(self) -> None:
        """The VC ended or is retired: every waiter tries again (and hears why, or goes to
        another VC)."""
        waiters = self._flow_waiters + self._flow_promised
        self._flow_waiters = []
        self._flow_promised = []
        for waiter in waiters:
            waiter.set()

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
                data = self._writer.take_output_locked()
        self._writer.send_last(data, min(timeout, _GOAWAY_GRACE))  # (the GOAWAY, best effort)
        self._break(err)
        if self._reader.ident is None:  # never started: nobody else will close the socket
            self._close_socket()
        elif (
            threading.current_thread() is not self._reader
            and self._reader.is_alive()
            and not self._inline_runner.running  # (it runs a call: it ends when the call does)
        ):
            self._reader.join(timeout)

    def abandon_after_fork(self) -> None:
        """In a child process after fork(): forget this VC without touching the connection
        the parent still uses (no GOAWAY, no shutdown; only our copy of the descriptor is
        closed). The reader thread did not survive the fork."""
        self._error = errors.ConnectionFailedError("transport: VC inherited across fork")
        self._flows.clear()
        self._sock_closed = True  # (no _sock_lock: another thread may have held it)
        with contextlib.suppress(OSError):
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):  # no lock: another thread may have held it
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def sending(self) -> bool:
        """Whether bytes of this VC are still on their way out: queued, being sent by a
        thread, or in the kernel's send queue, not yet acknowledged by the peer (Linux; not
        counted elsewhere). An unlocked read, for a server's stop to poll."""
        if self._writer.flushing or self._mux._out:
            return True
        return _unacknowledged(self._sock) > 0

    def answering(self) -> bool:
        """Whether a flow of this VC that has not failed still has its send side open: on a
        server, a call whose answer is not all handed over yet (its writer may be waiting
        for the peer's credit, with nothing queued or unacknowledged meanwhile). For a
        server's stop to poll, beside :meth:`sending`."""
        with self._lock:
            return any(f._error is None and not f._local_closed for f in self._flows.values())

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
            self._wake_flow_waiters_locked()
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
            run_abort(fn, err)
        if first:
            # (a GOAWAY from the peer, EOF, a protocol error, a local close: which one is err)
            log.debug("transport: VC %s ended: %s", self.name, err)
            self._shut_socket()
        if notify:
            self._closed_event.set()
            if self._on_close is not None:
                try:
                    self._on_close(self, err)
                except Exception:  # a bug in the owner's callback must not kill the reader
                    log.exception("transport: on_close callback failed")

    def _shut_socket(self) -> None:
        """Shut both directions of the socket, waking every thread blocked on it, unless it
        is closed already (see the module docstring on ``_sock_lock``)."""
        with self._sock_lock:
            if not self._sock_closed:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _close_socket(self) -> None:
        """The VC has ended: close its socket and wake pipe once no other thread is inside a
        call on them. That is now, unless a flusher or a caller reading for itself holds its
        role: then the close is left due and that thread makes it when it gives the role up
        (each of them calls this again). Closing under them could hand the descriptor to
        another socket between their reading of it and their system call."""
        with self._lock:
            self._writer.close_due = True
            if self._writer.flushing or self._role is CALLER:
                return
        self._close_now()

    def _close_now(self) -> None:
        """Close the wake pipe, then shut the socket (if nobody did) and close it, once;
        never while another thread is in :meth:`_shut_socket`."""
        self._close_pipe()
        with self._sock_lock:
            if self._sock_closed:
                return
            self._sock_closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()

    def _goaway_for(self, exc: errors.IPCError) -> errors.IPCError:
        """Send GOAWAY saying why the peer's input was refused (best effort, never waiting
        on the socket); the error the VC's flows then end with."""
        err = errors.ConnectionFailedError(f"transport: {exc.id}: {exc.msg}")
        err.__cause__ = exc
        with self._lock:
            if self._error is None:
                self._mux.close(exc)
        self._writer.flush(blocking=False)
        return err

    # --- for the flows (FlowHost) -------------------------------------------------------
    def forget_flow_locked(self, flow_id: int) -> None:
        """With ``_lock`` held: the flow is over; drop it from the flow table. The last
        flow of a retired VC wakes whoever reads it, whose keepalive check then closes it
        (it would wait for the next check, up to the keepalive interval)."""
        flows = self._flows
        flows.pop(flow_id, None)
        if self._flow_waiters:
            self._pass_free_flows_locked()
        if not flows:
            self._idle_since = time.monotonic()
            if self._retiring:
                self._wake_poll_locked()

    # --- busy polling -------------------------------------------------------------------
    @property
    def busy_poll(self) -> float:
        """Seconds this VC's reader polls before a blocking read (0: never)."""
        return self._polling.length

    @property
    def busy_poll_hits(self) -> int:
        """How often a poll by this VC's reader found data."""
        return self._polling.hits

    @property
    def busy_poll_misses(self) -> int:
        """How often a poll by this VC's reader found nothing."""
        return self._polling.misses

    @property
    def busy_poll_pays(self) -> bool:
        """This VC's reader's last judgement of whether polling pays (see
        ``TransportOptions.busy_poll_adapt``; always True when it does not adapt)."""
        return self._polling.pays

    # --- parking (accepted VCs with park_idle) ------------------------------------------
    def _park(self) -> bool:
        """(The reader thread, after a receive timed out.) Hand the VC to the idle watcher
        if it is idle (no flow, no job, nothing half read): True, and the thread must end
        at once without touching the VC again."""
        with self._lock:
            if (
                self._error is not None
                or self._flows
                or not self._inline_runner.idle
                or self._opener.buffered
                # (the receive timeout may be the keepalive interval, when that is shorter)
                or time.monotonic() - self._last_recv < self._park_idle
            ):
                return False
        self._opener.release_buffer()  # (nobody reads until the watcher starts a reader)
        try:
            IDLE.park(self)
        except (RuntimeError, OSError):  # no watcher to be had: keep reading here
            return False
        return True

    def fileno(self) -> int:
        """The socket's descriptor (for the idle watcher)."""
        return self._sock.fileno()

    def unpark(self) -> None:
        """(The idle watcher.) Input came: give the VC a reader thread again."""
        thread = threading.Thread(target=self._reader_thread, name=f"ipc-{self.name}", daemon=True)
        self._reader = thread
        try:
            thread.start()
        except RuntimeError:
            self.end_parked(errors.ConnectionFailedError("transport: no thread to read an idle VC"))

    def end_parked(self, err: errors.IPCError) -> None:
        """(The idle watcher.) End a parked VC: what its reader thread's end would do."""
        self._break(err)
        self._close_socket()

    # --- inline jobs (accepted VCs) -----------------------------------------------------
    def inline_available(self) -> bool:
        """For ``on_flow`` (on an accepted VC): whether it may return a job to run on this
        VC's reader thread once the current batch of input is dispatched, instead of handing
        the flow to a worker. True only on the reader thread itself, with no job pending
        (one per batch: the other complete requests of a batch go to workers, so that they
        overlap) and no helper reading; also with other calls in flight on the VC. The job
        must not wait for input on its own flow (give it a flow whose peer is done). A job
        running longer than ``INLINE_HANDOFF`` gets a helper thread that reads for the VC
        until it ends."""
        inline = self._inline_runner
        return (
            not self._lead
            and inline.job is None
            and not inline.helper_active
            and threading.get_ident() == self._reader_ident
        )

    # --- liveness -----------------------------------------------------------------------
    def suspect_locked(self) -> bool:
        """With ``_lock`` held: a call on this VC timed out. On a dialed VC whose peer was
        silent meanwhile, start a probe (one PING, queued: the caller flushes when this
        returns True) and wake whoever reads, so that its wait ends by the probe's deadline."""
        if not self._lead or self._error is not None or self._mux.closed:
            return False
        if not self._liveness.suspect(time.monotonic(), self._last_recv):
            return False
        self._mux.ping(os.urandom(8))  # (the caller logs it, once it lets the lock go)
        self._wake_poll_locked()
        return True

    def check_liveness(self) -> errors.IPCError | None:
        """The one keepalive check, called by every loop that reads the VC (or watches it
        parked) whenever it wakes without data, and after data while a probe runs: ping if
        due (queued and flushed without waiting on the socket); the error to break the VC
        with if the peer is dead (missed its keepalive, or did not answer a probe), or if the
        VC was retired and has no flow left, or its owner dropped it (:meth:`drop`), or it
        has had no flow for ``idle_timeout`` (closed with a GOAWAY: a normal close)."""
        with self._lock:
            if self._error is not None:
                return None
            if self._retiring and not self._flows:
                return errors.ConnectionFailedError("transport: the VC was retired")
            if self._dropped:
                return errors.ConnectionFailedError(
                    "transport: the client that made the VC was dropped without close()"
                )
            now = time.monotonic()
            idle = now - self._idle_since if self._idle_close and not self._flows else 0.0
            probing = self._liveness.probing
            action: str | None
            if idle and idle >= self._idle_close:
                self._mux.close()  # (GOAWAY, a normal close; connect() fails from now on)
                action = _IDLE
            else:
                action = self._liveness.check(now, self._last_recv)
                if action is livemod.PING:
                    self._mux.ping(os.urandom(8))
        if action is _IDLE:
            self._writer.flush(blocking=False)
            log.debug("transport: closing the VC %s: no call for %.3g s", self.name, idle)
            return errors.ConnectionFailedError(
                f"transport: the VC was closed after {self._idle_close:g} s without a call "
                "(idle_timeout)"
            )
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
            self._writer.flush(blocking=False)
        return None

    def _on_plaintext(self, plain: bytes | memoryview) -> None:
        new_flows: list[Flow] = []
        aborted: list[tuple[Callable[[errors.IPCError], None], errors.IPCError]] = []
        closed: errors.IPCError | None = None
        goaway: muxmod.ConnectionClosed | None = None
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
                        inbox = flow._inbox
                        if not inbox:
                            flow._came_at = self._read_at
                            inbox.append(ev.data)
                        else:
                            flow.queue_more_locked(ev.data, self._read_at)
                    if ev.end:
                        flow._eof_at = self._read_at  # (first: read without the lock)
                        flow._eof = True
                        if flow._local_closed and not self._mux.is_live(ev.flow_id):
                            # Both sides sent FIN: the flow is over. (A flow we have not
                            # closed can only have ended by a RESET later in this chunk:
                            # keep it for that event, which fails it and runs its abort.)
                            del flows[ev.flow_id]
                            if not flows:
                                self._idle_since = self._read_at
                    flow._cond.notify_all()
                elif cls is muxmod.FlowOpened:
                    assert isinstance(ev, muxmod.FlowOpened)
                    flow = Flow(self, ev.flow_id, self._lock, self._mux, self._writer)
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
                    if not flows:
                        self._idle_since = self._read_at
                    if flow is not None:
                        flow._error = ev.error
                        flow._cond.notify_all()
                        if flow._on_abort is not None:
                            aborted.append((flow._on_abort, ev.error))
                elif cls is muxmod.ConnectionClosed:
                    assert isinstance(ev, muxmod.ConnectionClosed)
                    goaway = ev  # (logged once the lock is let go)
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
            if self._flow_waiters:  # (flows that ended above)
                self._pass_free_flows_locked()
            # (Usually nothing to send: the check spares the writer's call.)
            out = self._writer.take_output_locked() if self._mux._out else []
        if out:
            self._writer.send(out, blocking=False)  # the reader never waits on a full socket
        if self._on_flow is not None:
            for flow in new_flows:
                try:
                    job = self._on_flow(flow)
                except Exception:
                    log.exception("transport: on_flow callback failed")
                    flow.cancel(errors.InternalError("transport: the flow could not be taken"))
                    continue
                if job is not None:
                    self._inline_runner.job = job  # (the owner asked inline_available() first)
        for fn, err in aborted:
            run_abort(fn, err)
        if goaway is not None:
            log.debug(
                "transport: VC %s: the peer sent GOAWAY (%s); %d flow(s) it never took",
                self.name,
                goaway.peer_error or "no error",
                len(goaway.unprocessed),
            )
        if closed is not None:
            self._break(closed)
