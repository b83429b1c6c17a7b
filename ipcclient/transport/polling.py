"""Busy polling by a VC's reader: when to poll, the one polling loop, the process's slots.

Owns: :class:`PollState` (one reader's poll rules, its poll length and hit/miss counters, and
:meth:`PollState.spin`, the one loop that polls a socket without blocking) and the process-wide
polling slots (:func:`take_slot`, :func:`give_slot`, ``POLL_SLOTS``).

The poll rules. A reader polls before a blocking read only after a read that came within the
poll's length of the reader going idle and that ended on a record boundary (a partial record
means a large message, or a peer trickling bytes: its rest comes by a blocking read, and
polling for it would only burn CPU); never right after a poll that found nothing (until a
quick read again); never while ``POLL_SLOTS`` other threads of the process poll.

Must not: dispatch what it receives (the caller does), or decide who reads a VC.
"""

from __future__ import annotations

import os
import socket
import time
from _thread import allocate_lock
from collections.abc import Callable

from ipcclient.transport.readrole import Read

_DATA = Read.DATA
_MISSED = Read.MISSED
_SKIPPED = Read.SKIPPED
_STOPPED = Read.STOPPED

__all__ = ["POLL_SLOTS", "PollState", "give_slot", "pollers", "take_slot"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # (the CPUs this process may run on)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 2


POLL_SLOTS = max(1, _usable_cpus() - 1)
"""At most this many reader threads of the process poll at once (one per CPU the process may
run on, but one; at least one): polling pays only while a CPU would otherwise sit idle, and it
must not take every CPU. (A CPU quota, as in some containers, is not seen.)"""

_slot_lock = allocate_lock()
_pollers = 0


def take_slot() -> bool:
    """Take a polling slot; False when ``POLL_SLOTS`` threads poll already."""
    global _pollers
    with _slot_lock:
        if _pollers >= POLL_SLOTS:
            return False
        _pollers += 1
        return True


def give_slot() -> None:
    """Give back a slot :func:`take_slot` gave."""
    global _pollers
    with _slot_lock:
        if _pollers > 0:  # (0 in a child forked while this thread polled: reset)
            _pollers -= 1


def pollers() -> int:
    """Slots taken now."""
    return _pollers


def _reset_slots() -> None:
    """After fork: the child has none of the parent's reader threads."""
    global _slot_lock, _pollers
    _slot_lock = allocate_lock()
    _pollers = 0


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_slots)


class PollState:
    """One reader's poll rules (see the module docstring), its counters and its poll loop.
    Used by one thread at a time (whoever reads the VC).

    Args:
        length: seconds a poll lasts (0: never poll).
    """

    __slots__ = ("armed", "got", "hits", "length", "misses")

    def __init__(self, length: float) -> None:
        self.length = length
        self.armed = False
        """Poll before the next blocking read."""
        self.hits = 0
        """Polls that found data."""
        self.misses = 0
        """Polls that found nothing."""
        self.got = 0
        """Bytes the last poll that found data received."""

    def quick(self, idle_since: float, came_at: float) -> bool:
        """Whether input that came at ``came_at`` came within the poll's length of the reader
        going idle at ``idle_since``."""
        return came_at - idle_since < self.length

    def after_read(self, quick: bool, partial: bool) -> None:
        """After a read: poll next time only if it was quick and ended on a record
        boundary (``partial``: the opener holds part of a record)."""
        self.armed = quick and not partial

    def spin(
        self,
        sock: socket.socket,
        buf: memoryview | bytearray,
        until: float,
        stop: Callable[[], bool] | None = None,
    ) -> Read:
        """Poll ``sock`` until monotonic time ``until``: non-blocking receives into ``buf``,
        yielding the CPU between them. Returns ``Read.DATA`` when a receive returned (its
        byte count in :attr:`got`; 0 means the peer closed the connection), ``Read.MISSED``
        (nothing before ``until``; this disarms the rules), ``Read.SKIPPED`` (no slot free:
        nothing was tried) or ``Read.STOPPED`` (``stop()``, asked before each receive, became
        true). A slot is held meanwhile.

        Each receive lets go of the GIL; between polls the thread also yields its CPU
        (``sched_yield``, which lets go of the GIL too from Python 3.12), so that a thread
        just woken (a worker given data or credit) can run.

        Raises:
            OSError: a receive failed (other than finding nothing).
        """
        if not take_slot():
            return _SKIPPED
        monotonic = time.monotonic
        yield_cpu = os.sched_yield
        recv_into = sock.recv_into
        try:
            while stop is None or not stop():
                try:
                    n = recv_into(buf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if monotonic() >= until:
                        self.misses += 1
                        self.armed = False  # a longer gap: sleep until a short one
                        return _MISSED
                    yield_cpu()
                    continue
                if n:
                    self.hits += 1
                self.got = n
                return _DATA
            return _STOPPED
        finally:
            give_slot()
