"""Reading a VC's socket: who reads, the one reading loop, one read step.

Owns: :class:`Reader`, the read side of :class:`~ipcclient.transport.conn.Connection` (a
base class of it): the *read role* (who may touch the socket's receive side, the record
opener and its buffer), its hand-over between the VC's reader thread and callers
(leader/follower reads on dialed VCs, the states in :mod:`ipcclient.transport.readrole`), the
one reading loop that the reader thread and an inline job's helper run (``Who``), a caller's
read step, and busy polling before a blocking read (see :mod:`ipcclient.transport.polling`).

Whoever holds the read role reads the socket, opens records and feeds the mux, dispatching to
every flow (:meth:`Connection._on_plaintext`). On an accepted (server) VC the role always
belongs to the VC's reader thread (or, during a long inline job, to its helper thread). On a
dialed (client) VC it is leader/follower: a caller that waits for the peer (a reply, credit)
and finds the role free takes it and reads for itself, dispatching what it reads to the other
flows' waiters; when its own data is in it passes the role on. The reader thread gives the
role up as soon as a lone caller waits (a one-byte write to a pipe wakes its poll) and takes
it back after ``LEAD_GRACE`` without callers, so an idle VC still answers pings, notices a
dead peer and sees GOAWAY. A lone caller thus reads its own reply without a thread hop. With
several calls in flight the reader thread keeps (or takes back) the role and reads for all of
them, instead of the role passing from caller to caller (each pass costs a wake-up).

Must not: write to the socket except through the record writer, decide what a frame means
(the mux and the connection's dispatch do), or hold the VC's lock across a socket call.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import logging
import os
import select
import socket
import threading
import time
from typing import Any

from ipcclient import errors
from ipcclient.transport.flow import Flow
from ipcclient.transport.inline import InlineRunner
from ipcclient.transport.liveness import Liveness
from ipcclient.transport.polling import POLL, TRIAL, PollState
from ipcclient.transport.readrole import (
    CALLER,
    CALLER_DONE,
    CALLER_TAKES,
    FREE,
    HAND_OVER,
    READER,
    READER_TAKES,
    Read,
    Role,
)
from ipcclient.transport.waits import Signal, reacquire
from ipcclient.transport.writer import RecordWriter
from ipcclient.vc.records import RecordOpener

__all__ = ["LEAD_GRACE", "Broken", "Reader", "Who"]

log = logging.getLogger("ipcclient.transport")

LEAD_GRACE = 0.02
"""After a caller last read for itself, the reader thread waits this long before it takes the
socket back (so a client making calls back to back keeps reading its own replies)."""

# (Module constants: an enum member looked up on its class costs an attribute lookup.)
_ENDLESS = float("inf")
_POLL = POLL
_TRIAL = TRIAL
_DATA = Read.DATA
_NOTHING = Read.NOTHING
_WOKEN = Read.WOKEN
_TIMEOUT = Read.TIMEOUT
_SKIPPED = Read.SKIPPED
_STOPPED = Read.STOPPED


class Who(enum.IntEnum):
    """Who runs the reading loop (see :meth:`Reader._read_until_done`)."""

    SHARED = 0
    """The reader thread of a dialed VC that shares the read role with its callers."""
    SOLE = 1
    """The reader thread that does all reading (accepted VCs; ``lead_reads`` off)."""
    HELPER = 2
    """The helper reader of a long inline job."""


_SHARED = Who.SHARED
_SOLE = Who.SOLE
_HELPER = Who.HELPER


class _Step(enum.Enum):
    """What the SHARED reader thread does next, decided under the VC's lock."""

    READ = "read"
    AGAIN = "again"  # (it gave the role to a lone caller and took it back)
    STOP = "stop"  # (the VC ended)


_READ = _Step.READ
_AGAIN = _Step.AGAIN
_STOP = _Step.STOP


class Broken(Exception):
    """Internal: the socket is done (EOF or an error); carries the VC's error."""

    def __init__(self, error: errors.IPCError) -> None:
        super().__init__(error.msg)
        self.error = error


class Reader(abc.ABC):
    """The read side of a VC (see the module docstring); :class:`Connection` sets the
    fields below and supplies the abstract methods at the end."""

    _lock: Any
    _sock: socket.socket
    _opener: RecordOpener
    _flows: dict[int, Flow]
    _error: errors.IPCError | None
    _liveness: Liveness
    _retiring: bool
    _last_recv: float
    _read_at: float
    _pending_early: list[bytes]
    _polling: PollState
    _park_idle: float
    _idle_close: float
    _idle_since: float
    _inline_runner: InlineRunner
    _reader: threading.Thread
    _writer: RecordWriter
    name: str

    def _init_reader(self, lead: bool) -> None:
        """Set up the read role: ``lead``, leader/follower reads (a dialed VC)."""
        self._lead = lead
        # Who holds the read role (see readrole): on a VC without leader/follower reads the
        # reader thread holds it for good. With them it starts free, as if a caller had just
        # read: the caller that dialed the VC reads the reply to its first call itself,
        # without waking the reader thread to hand the role over, and the reader thread
        # takes the role after LEAD_GRACE of quiet. (Unless the handshake's last read
        # brought mux bytes too: the reader thread dispatches those first, as the role.)
        free = lead and not self._pending_early
        self._role: Role = FREE if free else READER
        self._waiters: dict[Flow, None] = {}  # flows whose callers wait for the peer
        self._reader_parked = False  # the reader thread sleeps in _park_locked
        self._last_lead = time.monotonic() if free else 0.0
        self._reader_signal = Signal(self._lock)
        self._mid_read = False
        self._wake_r = self._wake_w = -1
        if lead:
            self._wake_r, self._wake_w = os.pipe()  # (not inherited by children, as always)
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)
            self._poll.register(self._wake_r, select.POLLIN)
        self._reader = threading.Thread(
            target=self._reader_thread,
            name=f"ipc-{self.name}",
            daemon=True,
        )
        self._reader_ident = 0
        """``threading.get_ident()`` of the thread now running :meth:`_reader_thread` (0:
        none yet); a plain int, so a per-call check that it is this thread costs nothing."""

    # --- supplied by the connection -----------------------------------------------------
    @abc.abstractmethod
    def _on_plaintext(self, plain: bytes | memoryview) -> None:
        """Feed one opened record to the mux and dispatch its events."""

    @abc.abstractmethod
    def _break(self, err: errors.IPCError) -> None:
        """End the VC with ``err`` (every flow fails with it)."""

    @abc.abstractmethod
    def _goaway_for(self, exc: errors.IPCError) -> errors.IPCError:
        """Send GOAWAY saying why the peer's input was refused; the error the flows end with."""

    @abc.abstractmethod
    def _close_socket(self) -> None:
        """The VC has ended: close the socket and the wake pipe, once, when nobody else uses
        them (see :meth:`Connection._close_socket`)."""

    @abc.abstractmethod
    def check_liveness(self) -> errors.IPCError | None:
        """The one keepalive check (see :meth:`Connection.check_liveness`)."""

    @abc.abstractmethod
    def _park(self) -> bool:
        """Hand an idle accepted VC to the idle watcher; whether it was parked."""

    def _next_check(self, now: float) -> float:
        """Seconds (> 0) the reader thread may wait before :meth:`check_liveness` can
        answer differently: the keepalive's next due time, or the idle close's."""
        due = self._liveness.next_check(now, self._last_recv)
        if self._idle_close:
            # (Unlocked: the check itself is locked.) With flows, the last may end where this
            # thread does not see it (a caller reading for itself, a cancel): look again
            # within ``_idle_close`` all the same.
            if self._flows:
                due = min(due, self._idle_close)
            else:
                due = min(due, max(self._idle_since + self._idle_close - now, 0.001))
        return due

    def _fail_protocol(self, exc: errors.IPCError) -> None:
        """The peer broke the protocol: send GOAWAY with why (best effort), break the VC."""
        self._break(self._goaway_for(exc))

    # --- leader/follower (dialed VCs) ---------------------------------------------------
    def wait_for_peer(self, flow: Flow, timeout: float | None) -> None:
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
        if self._role is FREE and not (busy and self._reader_parked):
            self._role = CALLER_TAKES[self._role]
            try:
                # (The release is the try's first statement: a KeyboardInterrupt raised as
                # it returns is inside the try, whose finally takes the lock back and gives
                # the role up; nothing before it checks for a signal.)
                self._lock.release()
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
                pending = reacquire(self._lock)
                self._role = CALLER_DONE[self._role]
                try:
                    self._last_lead = time.monotonic()
                    self._pass_role_locked()
                finally:
                    # (Even when an interrupt comes from here on: the role is given up, and
                    # only this thread can still make a close left to it.)
                    if self._writer.close_due:
                        # The VC ended while we read, and its closer left the socket to us.
                        try:
                            self._lock.release()  # (first in the try: see above)
                            self._close_socket()
                        finally:
                            late = reacquire(self._lock)
                        pending = pending or late
                if pending is not None:
                    raise pending
            return
        try:
            self._waiters[flow] = None
            role = self._role
            if role is FREE:  # busy, and the reader thread is parked: it takes over
                self._reader_signal.notify_all()
            elif role is READER and not busy:
                self._wake_poll_locked()  # the reader thread gives the role up to us
            flow._cond.wait(timeout)
        finally:
            self._waiters.pop(flow, None)
            if self._role is FREE:  # (it may have changed while we slept)
                # The role is free and was maybe handed to us; our caller takes it if it
                # still needs the peer. Pass the role on too, so that a waiter that does
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

    def wake_reader_locked(self) -> None:
        """A flow changed from outside the read role (cancelled, closed): a caller reading
        for itself may be waiting for exactly that flow in poll; wake it to look."""
        if self._role is CALLER:
            self._wake_poll_locked()

    def _wake_poll_locked(self) -> None:
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
        now = time.monotonic()
        due = self._liveness.next_check(now, self._last_recv)
        if timeout is None:
            slice_, end = due, None
        else:
            slice_, end = max(0.0, min(timeout, due)), now + timeout
        try:
            outcome = self._read_step(slice_, end)
            if outcome is not _DATA or self._liveness.probing or self._retiring:
                # However the step ended (a call's deadline or cancel wakes it long before
                # any keepalive timer would), the peer's silence is judged; and a retired
                # VC whose last flow this step ended is closed.
                dead = self.check_liveness()
                if dead is not None:
                    self._break(dead)
        except Broken as broken:
            self._break(broken.error)
        except errors.IPCError as exc:
            self._fail_protocol(exc)

    def _read_step(self, timeout: float, end: float | None = None) -> Read:
        """As the read role: wait up to ``timeout`` seconds for the socket (or a wake-up), read
        what is there and dispatch it. Returns ``Read.DATA``, ``Read.WOKEN`` or
        ``Read.TIMEOUT``. (``timeout`` is never above the next keepalive check, which
        ``KeepaliveConfig`` keeps within ``LONGEST_WAIT``: poll() takes it.)

        ``end`` is the deadline (a ``time.monotonic()`` value) of a caller reading for its
        own call. poll() waits whole milliseconds, rounded up, so it may return after that
        deadline; bytes readable by then came after it, and the caller leaves them to the
        next read step instead of taking them as its reply (the deadline has already won).

        Raises:
            Broken: EOF or a socket error.
            IPCError: the peer broke the protocol.
        """
        try:
            ready = self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
        except OSError as exc:  # pragma: no cover - poll on open descriptors does not fail
            raise Broken(errors.ConnectionFailedError(f"transport: poll failed: {exc}")) from exc
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
            return _WOKEN if woken else _TIMEOUT
        if end is not None and time.monotonic() > end:
            return _TIMEOUT
        return _DATA if self._receive_and_dispatch() is _DATA else _WOKEN

    def _receive_and_dispatch(self, flags: int = 0) -> Read:
        """As the read role, the socket readable: receive once (with ``flags``) and
        dispatch every record completed: ``Read.DATA``, or ``Read.NOTHING`` when there was
        nothing to receive after all.

        Raises:
            Broken: EOF or a socket error.
            IPCError: the peer broke the protocol.
        """
        # From before the receive until everything read is dispatched (see wait_for_peer):
        # an interrupt anywhere in between may have taken bytes from the socket (or left the
        # opener's buffer half moved) that nobody will deliver, so the VC cannot be trusted.
        self._mid_read = True
        try:
            n = self._sock.recv_into(self._opener.receive_buffer(), 0, flags)
        except (BlockingIOError, InterruptedError, TimeoutError):
            self._mid_read = False
            return _NOTHING
        except OSError as exc:
            err = errors.ConnectionFailedError(f"transport: receive failed: {exc}")
            raise Broken(err) from exc
        return self._dispatch_received(n)

    def _dispatch_received(self, n: int) -> Read:
        """``n`` bytes were received into the opener's buffer: dispatch every record they
        complete (``Read.DATA``).

        Raises:
            Broken: ``n`` is 0 (EOF).
            IPCError: the peer broke the protocol.
        """
        if n == 0:
            raise Broken(errors.ConnectionFailedError("transport: the peer closed the connection"))
        now = time.monotonic()
        self._read_at = now  # (when these bytes came: a flow notes it for a late reply)
        heard = False
        for plain in self._opener.received(n):
            heard = True
            self._on_plaintext(plain)
        if heard or not self._lead:
            # On a dialed VC with leader/follower reads (where calls that time out start
            # probes) only whole records count as hearing from the peer: bytes of a record
            # that never completes (a length garbled on the way) are no sign of life.
            self._last_recv = now
        self._mid_read = False
        return _DATA

    # --- the reading loop: the reader thread (either kind) and an inline job's helper ------
    def _reader_thread(self) -> None:
        """The VC's reader thread."""
        self._reader_ident = threading.get_ident()
        self._read_until_done(_SHARED if self._lead else _SOLE)

    def read_during_job(self) -> None:
        """(The helper thread of a long inline job.) Read and dispatch for the VC while its
        reader thread runs the job (flows opened meanwhile go to ``on_flow``, which hands
        them to workers)."""
        self._read_until_done(_HELPER)

    def _read_until_done(self, who: Who) -> None:
        """Read and dispatch until the VC ends (or, for the helper, until the inline job
        does), with keepalive duty. ``who`` reads:

        - ``Who.SHARED``, the reader thread of a dialed VC with leader/follower reads: it
          reads only while no caller does (it gives the role up as soon as a lone caller
          waits, and takes it back after LEAD_GRACE of quiet), so a caller normally reads
          its own reply without a thread hop, and an idle VC still answers pings, notices a
          dead peer and sees GOAWAY. Each wait in ``poll`` (socket and wake pipe) lasts at
          most until the next keepalive check.
        - ``Who.SOLE``, the reader thread that does all reading (an accepted VC, or a dialed
          one with ``lead_reads`` off): blocking receives, bounded by the socket's receive
          timeout (the keepalive interval, or ``park_idle`` when shorter); runs the inline
          job a batch brought; may park the VC when idle.
        - ``Who.HELPER``, an inline job's helper: 1 ms polls, until the job ends.

        The reader threads busy-poll before a blocking read (the SHARED one only while it
        reads for several calls); the helper never does.
        """
        lead = who is _SHARED
        sole = who is _SOLE
        helper = who is _HELPER
        sock = self._sock
        inline = self._inline_runner
        polling = self._polling
        spin = 0.0 if helper else polling.length
        monotonic = time.monotonic
        err: errors.IPCError | None = None
        parked = False
        if helper:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
        try:
            if self._pending_early and not helper:
                early, self._pending_early = self._pending_early, []
                for plain in early:
                    self._on_plaintext(plain)
                if sole:
                    inline.run_pending()
            while True:
                # (The loop's exits are decided under the lock and taken after its block, not
                # from inside it: a shape mypyc can compile.)
                if lead:
                    with self._lock:
                        if self._error is not None:
                            step = _STOP
                        elif self._role is not READER:  # (only as it starts: _init_reader)
                            step = _AGAIN if self._park_locked() else _STOP
                        elif self._waiters and len(self._flows) <= 1:
                            # A lone caller wants the socket: hand the role over (with several
                            # calls in flight this thread reads for all of them).
                            self._role = HAND_OVER[self._role]
                            polling.armed = False  # (a quick read must come first again)
                            self._last_lead = time.monotonic()
                            for waiting in self._waiters:
                                waiting._cond.notify_all()
                                break
                            step = _AGAIN if self._park_locked() else _STOP
                        else:
                            step = _READ
                    if step is _STOP:
                        break
                    if step is _AGAIN:
                        continue
                elif sole:
                    if self._error is not None:
                        break
                else:
                    with self._lock:
                        done = not inline.running or self._error is not None
                    if done:
                        break
                # Busy poll first (see polling): the SOLE reader always may, the SHARED one
                # while it reads for several calls.
                polled = _SKIPPED
                polls = spin > 0 and (sole or len(self._flows) > 1)
                trial = False  # (a sleep the rules allowed a poll for: its gap is noted)
                unmeasured = False  # (one whose gap is not: quick as a trial's would be)
                if polls:
                    idle_since = monotonic()
                    if polling.armed:
                        how = polling.poll_now()
                        if how == _POLL:
                            polled = self._poll_socket(idle_since + spin, lead)
                        elif how == _TRIAL:
                            polled = self._poll_socket(0.0, lead, peek=True)
                            trial = polled is not _DATA
                        else:  # (a sleep that measures nothing)
                            unmeasured = True
                        if polled is _STOPPED:
                            # A lone caller waits: it may have written to the pipe for a
                            # reader asleep in poll(); drain that, so the caller's own first
                            # read does not return at once for it.
                            with contextlib.suppress(OSError):
                                os.read(self._wake_r, 4096)
                            continue  # hand it the socket (above)
                if polled is _DATA:
                    outcome = self._dispatch_received(polling.got)
                    polling.polled(self._read_at - idle_since)
                    quick = True
                else:
                    if lead:
                        outcome = self._read_step(self._next_check(monotonic()))
                    elif sole:
                        outcome = self._receive_and_dispatch()  # (blocks: see SO_RCVTIMEO)
                    elif poller.poll(1):
                        outcome = self._receive_and_dispatch()
                    else:
                        outcome = _TIMEOUT
                    # (when the bytes came, not when their dispatch ended)
                    if unmeasured:
                        quick = self._last_recv - idle_since < 2 * spin
                    else:
                        quick = polls and polling.quick(idle_since, self._last_recv)
                    if trial:
                        if outcome is _DATA:
                            quick = polling.slept(self._read_at - idle_since)
                        elif outcome is not _WOKEN:
                            # (nothing came within the receive timeout: an endless gap)
                            polling.slept(_ENDLESS)
                            polling.armed = False  # (a long gap: no new trial for it)
                        # (Woken: a caller taking the role, a probe or a retire cut the
                        # sleep short, not the peer's bytes: it measured no gap.)
                if outcome is _DATA:
                    if spin:  # (read for one call only: not quick, disarms)
                        polling.after_read(quick, self._opener.buffered > 0)
                    if sole:
                        inline.run_pending()
                    # (Probes and retiring: dialed VCs only. A retired VC's last flow wakes
                    # this thread, and the wake-up may come in the same poll as data. An idle
                    # close that is due is checked after data too: a peer that pings more
                    # often than the receive timeout would otherwise put it off for ever.)
                    if not (lead and (self._liveness.probing or self._retiring)) and not (
                        self._idle_close
                        and not self._flows
                        and monotonic() - self._idle_since >= self._idle_close
                    ):
                        continue
                elif sole and self._park_idle and self._park():
                    parked = True  # (the idle watcher has the VC now)
                    return
                err = self.check_liveness()  # (however this thread woke)
                if err is not None:
                    break
        except Broken as broken:
            err = broken.error
        except errors.IPCError as exc:
            err = self._goaway_for(exc)
        except Exception as exc:  # pragma: no cover - a bug here must still break the VC
            log.exception("transport: %s reader failed", who.name.lower())
            err = errors.InternalError(f"transport: reader failed: {exc!r}")
        finally:
            if helper:
                if err is not None:
                    self._break(err)
            elif not parked:
                self._break(err or errors.ConnectionFailedError("transport: the VC was closed"))
                self._close_socket()  # (or leaves it to a flusher or a caller still reading)
                if not lead:
                    # A job taken from a batch that failed half way: run it now; its flow
                    # is broken, so it only lets go of what the owner holds for it.
                    inline.run_leftover()

    def _lone_waiter(self) -> bool:
        """(Unlocked check.) A lone caller waits for the peer: it had better read itself."""
        return bool(self._waiters) and len(self._flows) <= 1

    def _poll_socket(self, until: float, lead: bool, peek: bool = False) -> Read:
        """Busy-poll the socket into the opener's buffer until ``until`` (see
        :meth:`PollState.spin`; with ``lead``, stop when a lone caller waits); with
        ``peek``, receive once without blocking instead (:meth:`PollState.peek`).

        Raises:
            Broken: a receive failed.
        """
        self._mid_read = True  # (until what a poll receives is dispatched)
        buf = self._opener.receive_buffer()
        polling = self._polling
        try:
            if peek:
                got = polling.peek(self._sock, buf)
            else:
                got = polling.spin(self._sock, buf, until, self._lone_waiter if lead else None)
        except OSError as exc:
            err = errors.ConnectionFailedError(f"transport: receive failed: {exc}")
            raise Broken(err) from exc
        finally:
            buf.release()  # (the opener may grow its buffer before the next receive)
        if got is not _DATA:
            self._mid_read = False
        return got

    def _park_locked(self) -> bool:
        """With ``_lock`` held, the role given up: sleep until the VC has been quiet (nobody
        reading, nobody waiting) for LEAD_GRACE, or until several calls wait for the peer
        with nobody reading, then take the role back. False when the VC closed meanwhile."""
        try:
            while self._error is None:
                quiet = time.monotonic() - self._last_lead
                # Quiet: nobody took the role for LEAD_GRACE (normally because nobody waits;
                # as a safety net also when waiters do not take it).
                if self._role is FREE:
                    if quiet >= LEAD_GRACE or (self._waiters and len(self._flows) > 1):
                        self._role = READER_TAKES[self._role]
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
