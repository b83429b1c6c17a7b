"""The record writer of one VC: one flusher at a time, coalescing, deferred stream writes.

Owns: :class:`RecordWriter` (who sends what the mux has queued: writers queue frames into the
mux under the VC's lock, then exactly one thread at a time, the *flusher*, chosen under that
lock by :attr:`RecordWriter.flushing`, drains everything queued, seals it into records and
sends them outside the lock; a writer that finds a flusher active leaves its frames to it, so
bursts from many threads coalesce into few records and syscalls), the short-lived drainer
thread that finishes a record a non-blocking sender could not, and the process's lingerer
thread (:class:`Lingerer`) that sends what streamed writes in a burst deferred (``LINGER``).

Must not: read the socket, dispatch anything, decide when a VC is dead (a failed send is
reported to the owner's ``on_broken``), or hold the VC's lock across a socket call.

Threads that must never wait on a full socket (the reader, cancellation on the context timer
thread, close) send with ``blocking=False``: what the socket takes at once, the rest of the
record going to a drainer thread that keeps the flusher role until everything is out (so
record order holds). A writer (``blocking=True``) waits on a full socket for up to
``HANDOFF_AFTER``, then hands the rest to a drainer the same way; only the drainer blocks
in ``sendall``, each send bounded by the send timeout.

The flusher may be inside a socket call when the VC ends. Closing the socket then could hand
its descriptor to another socket before the flusher's system call is made, so the VC only
marks the close as due (:attr:`RecordWriter.close_due`); the flusher, giving its role up,
asks the VC to close it then (``on_idle``: it does unless a caller still reads it), and no
thread becomes the flusher after the mark.

Known trade-offs: the flusher sends what other threads queued while it was sending, so under
sustained load a writer may stay sending past its own deadline, by up to ``HANDOFF_AFTER``
of waiting on the socket per send (and the time the sends that did not wait took); a
drainer sending to a peer that reads slowly but steadily stays as long as the peer takes
(its memory bounded by ``MAX_QUEUED`` and the flows' windows; a peer that stops reading
breaks the VC after the send timeout); a
KeyboardInterrupt that lands between
taking the flusher role and the first send leaves the role taken, so later writes on that VC
wait for their deadlines (the VC is then redialed), and its socket is closed only when the
VC object is collected. So is the socket of a VC that ended while a KeyboardInterrupt hit
the main thread between giving up the flusher role or the read role and closing the socket.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ipcclient import errors
from ipcclient.transport.background import OnDemandThread
from ipcclient.wire.mux import Mux

__all__ = ["LINGER", "LINGERER", "LINGER_BYTES", "Lingerer", "RecordWriter"]

log = logging.getLogger("ipcclient.transport")

LINGER = 0.0002
"""A streamed write that follows the flow's previous one within this many seconds (a burst)
is queued instead of sent at once, and goes out with the next write that is not deferred,
when ``LINGER_BYTES`` are queued, before the writer waits for its peer, or at the latest
``LINGER`` later (the lingerer thread): a burst of small items costs one record, one AEAD
call and one syscall per batch instead of per item, on both sides. The first item of a burst
is never delayed."""

LINGER_BYTES = 32 * 1024
"""Deferred bytes on a VC that make the next streamed write send them all at once."""

MAX_QUEUED = 4 * 1024 * 1024
"""Bytes of flow data writers may queue on a VC while another thread is sending (the
flusher, blocked while the peer does not read). A writer that finds this much waiting stops
queueing until the flusher takes it (or its deadline passes): memory stays bounded by what
the socket takes, whatever window the peer announced (up to 2 GiB per flow)."""

HANDOFF_AFTER = 0.5
"""Seconds a writer sending with ``blocking=True`` may wait, in all, on a socket that will not
take a record at once (a peer reading slowly, or not at all) in one :meth:`RecordWriter.send`
before it hands the rest to a drainer thread and returns: a thread of the caller's (a
server's worker) is never held by a slow peer's socket for longer, whatever its pace; what
it writes next waits for room (``MAX_QUEUED``) or credit within its own deadline. A healthy
peer takes a record far sooner."""

Parts = list[bytes | memoryview]


class RecordWriter:
    """Sends what one VC's mux queues (see the module docstring). Its fields are guarded by
    the VC's lock (``lock``).

    Args:
        lock: the VC's lock (it guards the mux too).
        mux: the VC's mux.
        sock: the VC's socket.
        sealer: the VC's record sealer (``seal_parts``).
        name: the VC's name (for thread names).
        on_broken: called (without the lock) with the error when a send fails.
        on_idle: called (without the lock) when the flusher gives its role up while
            ``close_due`` is set: it closes the socket unless another thread still uses it.
    """

    __slots__ = (
        "_lock",
        "_mux",
        "_name",
        "_on_broken",
        "_on_idle",
        "_sealer",
        "_sock",
        "close_due",
        "deferred",
        "draining",
        "flushing",
        "linger_due",
        "queued",
    )

    def __init__(
        self,
        lock: Any,
        mux: Mux,
        sock: socket.socket,
        sealer: Any,
        name: str,
        on_broken: Callable[[errors.IPCError], None],
        on_idle: Callable[[], None],
    ) -> None:
        self._lock = lock
        self._mux = mux
        self._sock = sock
        self._sealer = sealer
        self._name = name
        self._on_broken = on_broken
        self._on_idle = on_idle
        self.close_due = False
        """The VC has ended and wants its socket closed: whoever gives the flusher role up
        calls ``on_idle`` (set under the lock, before the VC looks at ``flushing``)."""
        self.flushing = False
        """A thread holds the flusher role."""
        self.deferred = 0
        """Bytes streamed writes left queued (see ``LINGER``)."""
        self.linger_due = False
        """The lingerer will flush this VC."""
        self.queued = 0
        """Bytes of flow data writers queued since the flusher last took the output (see
        ``MAX_QUEUED``)."""
        self.draining: list[Any] = []
        """The signals of writers waiting for the flusher to take what is queued."""

    # --- the flusher role ---------------------------------------------------------------
    def take_output_locked(self) -> Parts:
        """With the lock held: become the flusher and take what the mux has queued, or
        return [] (nothing queued, or another thread is flushing and will send it). A
        non-empty result must be passed to :meth:`send` once the lock is released. Once the
        close is due nobody becomes the flusher: the socket may be closed at any moment."""
        if self.flushing or self.close_due or not self._mux._out:
            return []
        self.flushing = True
        self.deferred = 0
        if self.queued:
            self._taken_locked()
        return self._mux.take_output()

    def _taken_locked(self) -> None:
        """With the lock held: what was queued is taken (or nobody sends it any more):
        writers waiting for room may queue again."""
        self.queued = 0
        draining = self.draining
        if draining:
            for signal in draining:
                signal.notify_all()
            draining.clear()

    def flush(self, *, blocking: bool = True) -> None:
        """Send everything the mux has queued; one flusher at a time.

        ``blocking=False`` never waits on a full socket: what cannot go out at once is handed
        to a short-lived drainer thread (which keeps the flusher role until it is done).
        """
        with self._lock:
            data = self.take_output_locked()
        if data:
            self.send(data, blocking=blocking)

    def send(self, data: Parts, *, blocking: bool = True, once: bool = False) -> None:
        """As the flusher (see :meth:`take_output_locked`): seal and send ``data`` (frame
        pieces), then whatever was queued meanwhile, until nothing is left; then give up
        the role. Bulk is sealed record by record into the sealer's reused buffer. With
        ``once`` (the lingerer), what was queued meanwhile is left for the lingerer's next
        round instead.

        Whoever gives the role up or hands it to a drainer first notes that it no longer
        holds it (``holding``): a failure (or a KeyboardInterrupt) after that must not
        clear the role another thread may hold by then; two flushers would share the
        sealer (its nonces) and the socket. An interrupt between the note and the hand-off
        leaves the role taken instead (see the module docstring)."""
        handoff_at = 0.0
        holding = True  # (this thread holds the flusher role)
        try:
            while data:
                records = iter(self._sealer.seal_parts(data))
                for record in records:
                    sent = self.send_nowait(record)  # (normally all of it)
                    if sent < len(record) and blocking:
                        if handoff_at == 0.0:  # (the first wait of this send starts the clock)
                            handoff_at = time.monotonic() + HANDOFF_AFTER
                        sent = self._send_within(record, sent, handoff_at)
                    if sent < len(record):
                        # (a copy: the record's buffer is reused for the next record)
                        rest = bytes(memoryview(record)[sent:])
                        holding = False  # (the drainer holds the role once it starts)
                        try:
                            _start_thread(self._drain, (rest, records), f"ipc-drain-{self._name}")
                        except errors.IPCError:
                            holding = True  # (no drainer: still ours to give up)
                            raise
                        return  # the drainer holds the flusher role now
                linger = False
                with self._lock:  # (no break inside: a shape mypyc can compile)
                    # (Once the mux is closed, what is queued ends with the GOAWAY: it goes
                    # now, for close() gives a flusher only a moment to send it.)
                    if once and self._mux._out and not self._mux.closed:
                        holding = False
                        self.flushing = False
                        if self.draining:  # (nobody flushes now: a waiting writer may)
                            self._taken_locked()
                        linger = not self.linger_due
                        self.linger_due = True
                        self.deferred = max(self.deferred, 1)
                        data = []  # (what is queued is left for the lingerer's next round)
                    else:
                        self.deferred = 0
                        mux = self._mux
                        data = mux.take_output() if mux._out else []  # (usually nothing more)
                        if not data:
                            holding = False
                            self.flushing = False
                        if self.queued or self.draining:
                            self._taken_locked()
                if linger:
                    try:
                        LINGERER.add(self)
                    except RuntimeError as exc:  # (its thread could not start)
                        raise _no_thread(exc) from None
            if self.close_due:  # (the role is given up: the VC ended meanwhile)
                self._on_idle()
        except (OSError, errors.IPCError) as exc:
            if holding:
                self._release()
            self._on_broken(
                exc
                if isinstance(exc, errors.ConnectionFailedError)  # (says why itself)
                else errors.ConnectionFailedError(f"transport: send failed: {exc}")
            )
        except BaseException:
            # KeyboardInterrupt mid-send: part of a record may be out, so the VC is gone.
            if holding:
                self._release()
            self._on_broken(errors.ConnectionFailedError("transport: interrupted while sending"))
            raise

    def _release(self) -> None:
        with self._lock:
            self.flushing = False
            self._taken_locked()  # (a waiting writer finds the VC broken, or sends itself)
        if self.close_due:
            self._on_idle()

    def send_nowait(self, record: bytes | bytearray | memoryview) -> int:
        """Send what the socket takes without blocking; return how much that was."""
        sock = self._sock
        try:
            total = sock.send(record, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        size = len(record)
        if total < size:
            view = memoryview(record)
            while total < size:
                try:
                    total += sock.send(view[total:], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
        return total

    def _send_within(self, record: bytes | bytearray | memoryview, sent: int, end: float) -> int:
        """Send the rest of ``record`` after its first ``sent`` bytes, waiting for the socket
        to take more until monotonic time ``end``; return how much of it is out."""
        view = memoryview(record)
        size = len(view)
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        while sent < size:
            left = end - time.monotonic()
            if left <= 0:
                break
            if poller.poll(max(1, int(left * 1000))):  # (POLLERR/POLLHUP: the send says)
                sent += self.send_nowait(view[sent:])
        return sent

    def send_last(self, data: Parts, grace: float) -> None:
        """Closing the VC: send ``data`` (the GOAWAY, taken as the flusher), best effort and
        never waiting on the socket; with nothing to send while another thread flushes, give
        that thread up to ``grace`` seconds to carry the GOAWAY out."""
        if data:  # a peer that stopped reading must not hold us up
            try:
                for record in self._sealer.seal_parts(data):
                    if self.send_nowait(record) < len(record):
                        break
            except (OSError, errors.IPCError):
                pass
            finally:  # (a KeyboardInterrupt too: the role must not stay taken)
                self._release()
        elif self.flushing and self._mux.closed:
            # Another thread is sending: it sends our GOAWAY after what it has, unless the
            # socket is shut first. Its LAST_ID is what lets the peer resend the calls we
            # never took, so give it a moment (bounded: it may be stuck on a full socket).
            end = time.monotonic() + grace
            while self.flushing and time.monotonic() < end:
                time.sleep(0.001)

    def _drain(self, rest: bytes, records: Iterator[bytes | memoryview]) -> None:
        """The drainer: finish the record the socket would not take and the records still
        to seal of that batch, then flush on as a blocking flusher (bounded by the send
        timeout), then end."""
        try:
            self._sock.sendall(rest)
            for record in records:
                self._sock.sendall(record)
        except (OSError, errors.IPCError) as exc:
            self._release()
            self._on_broken(errors.ConnectionFailedError(f"transport: send failed: {exc}"))
            return
        with self._lock:
            self.deferred = 0
            data = self._mux.take_output()
            if not data:
                self.flushing = False
            self._taken_locked()
        if data:
            self.send(data)
        elif self.close_due:
            self._on_idle()

    # --- deferred stream writes ---------------------------------------------------------
    def defer_locked(self, size: int) -> bool:
        """With the lock held: a streamed write of ``size`` bytes in a burst stays queued.
        True when the lingerer must be asked (:meth:`linger`) once the lock is released."""
        self.deferred += size
        ask = not self.linger_due
        self.linger_due = True
        return ask

    def linger(self) -> None:
        """Have the lingerer send what is deferred within ``LINGER``; with no thread to be
        had, send it now."""
        try:
            LINGERER.add(self)
        except RuntimeError:
            with self._lock:
                self.linger_due = False
            self.flush()

    def flush_deferred(self) -> None:
        """The lingerer's turn: send what bursts left queued, in one pass that never waits on
        the socket (what was queued meanwhile gets the lingerer's next round, so one busy VC
        cannot hold up the others)."""
        with self._lock:
            self.linger_due = False
            data = self.take_output_locked() if self.deferred else []
        if data:
            self.send(data, blocking=False, once=True)


class Lingerer(OnDemandThread):
    """Sends what streamed writes deferred (see ``LINGER``), ``LINGER`` after being woken."""

    _name = "ipc-linger"

    def _reset_work(self) -> None:
        self._due: dict[RecordWriter, None] = {}

    def _has_work_locked(self) -> bool:
        return bool(self._due)

    def add(self, writer: RecordWriter) -> None:
        """Flush ``writer`` within LINGER.

        Raises:
            RuntimeError: no thread could be started (``writer`` is then not registered).
        """
        with self._lock:
            self._due[writer] = None
            try:
                self._start_locked()
            except BaseException:
                del self._due[writer]
                raise
        self._wake.set()

    def _round(self) -> None:
        time.sleep(LINGER)
        with self._lock:
            self._wake.clear()
            due, self._due = self._due, {}
        for writer in due:
            try:
                writer.flush_deferred()
            except Exception:  # pragma: no cover - a bug here must not stop the thread
                log.exception("transport: deferred flush failed")


LINGERER = Lingerer()
"""The process's lingerer."""
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=LINGERER.reinit)


def _no_thread(exc: RuntimeError) -> errors.ConnectionFailedError:
    """A send that needed a thread (to finish what the socket would not take, or to send a
    burst's rest later) could not start one: what was to be sent is lost, so the VC is gone
    as after a failed send (the caller breaks it)."""
    return errors.ConnectionFailedError(f"transport: no thread to finish a send: {exc}")


def _start_thread(target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
    """Start a daemon thread for a send; ConnectionFailedError when none can be started."""
    try:
        threading.Thread(target=target, args=args, name=name, daemon=True).start()
    except RuntimeError as exc:
        raise _no_thread(exc) from None
