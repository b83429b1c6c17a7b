"""Busy polling by a VC's reader: when to poll, the one polling loop, the process's slots.

Owns: :class:`PollState` (one reader's poll rules, its poll length and hit/miss counters, and
:meth:`PollState.spin`, the one loop that polls a socket without blocking) and the process-wide
polling slots (:func:`take_slot`, :func:`give_slot`, ``POLL_SLOTS``).

The poll rules. A reader polls before a blocking read only after a read that came within the
poll's length of the reader going idle and that ended on a record boundary (a partial record
means a large message, or a peer trickling bytes: its rest comes by a blocking read, and
polling for it would only burn CPU); never right after a poll that found nothing (until a
quick read again); never while ``POLL_SLOTS`` other threads of the process poll.

Whether polling pays. A poll saves the wake-up of a thread asleep in a blocking read; what
that costs differs by machine (on some VMs an inter-processor interrupt and a halted virtual
CPU to restart, tens of microseconds; elsewhere a few), and by the moment. So, unless told
not to adapt, a reader measures it on its own traffic: of the reads the rules allow a poll
for, it polls for some and sleeps for others, and compares the gaps (from going idle to
having the bytes) of the two kinds: the lower quartiles of the last ``SAMPLES`` of each
(only reads where the data was not there at once: those cost the same either way). A poll
that found nothing, and a sleep whose gap reached twice the poll's length, are noted as
endless gaps rather than left out, so that neither kind's quartile is biased by what it
cannot see (a poll sees gaps up to its length only). Polling pays when sleeping makes the
gap longer by at least ``PAYS_FRACTION`` of a poll's gap (the CPU a poll spends) and by
``MIN_SAVED`` seconds, beyond twice the quartiles' standard error (gaps spread wide differ by
chance), or when the poll's quartile and the spread around it are seen and the sleep's are
not; never when the poll's are not seen. Once it pays, three quarters as much keeps it
paying. Until it has ``MIN_SAMPLES`` of each kind the reader alternates; after that it uses
the method that pays and tries the other on one read in ``EXPLORE_EVERY``, so the choice
follows a change of machine or pace.

Must not: dispatch what it receives (the caller does), or decide who reads a VC.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from _thread import allocate_lock
from collections.abc import Callable

from ipcclient.transport.readrole import Read

log = logging.getLogger("ipcclient.transport")

_ENDLESS = float("inf")
"""A gap the reader did not see end (see the module docstring)."""


def _quartile(gaps: list[float]) -> tuple[float, float]:
    """The lower quartile of ``gaps`` and its standard error, estimated from the spread
    around it (the 15th to 35th percentiles: the error of a quartile of n samples is
    sqrt(p(1 - p) / n) over the density there). Endless when it, or the spread, was not
    seen."""
    ordered = sorted(gaps)
    n = len(ordered)
    quartile = ordered[n // 4]
    low, high = (n * 15) // 100, (n * 35) // 100
    spread = ordered[high] - ordered[low]  # (inf - inf: nan)
    if quartile == _ENDLESS or not spread < _ENDLESS:
        return quartile, _ENDLESS
    # (The share of the samples between the two: 20% for many, less for a few.)
    return quartile, math.sqrt(0.1875 / n) * spread * n / max(high - low, 1)


_DATA = Read.DATA
_MISSED = Read.MISSED
_SKIPPED = Read.SKIPPED
_STOPPED = Read.STOPPED

__all__ = [
    "EXPLORE_EVERY",
    "MEASURE_EVERY",
    "MIN_SAMPLES",
    "MIN_SAVED",
    "PAYS_FRACTION",
    "POLL",
    "POLL_SLOTS",
    "SAMPLES",
    "SLEEP",
    "TRIAL",
    "PollState",
    "give_slot",
    "pollers",
    "take_slot",
]

SAMPLES = 32
"""Gaps of each kind (after a poll, after a sleep) a reader keeps: it compares their lower
quartiles."""

MIN_SAMPLES = 8
"""Gaps of each kind a reader needs before it judges; until then it alternates."""

EXPLORE_EVERY = 64
"""Once judged, one read in this many (of those the rules allow a poll for) uses the other
method, to keep both kinds of gap current."""

MEASURE_EVERY = 8
"""Where polling does not pay, one sleep in this many is measured (``TRIAL``) to keep the
sleeps' gaps current; the others measure nothing (``SLEEP``)."""

SLEEP = 0
POLL = 1
TRIAL = 2
"""What :meth:`PollState.poll_now` says to do."""

PAYS_FRACTION = 0.25
"""Polling pays when sleeping lengthens the gap by at least this fraction of the gap after a
poll (the time, and CPU, a poll spends)..."""

MIN_SAVED = 0.000010
"""... and by at least this many seconds."""


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
    """One reader's poll rules and its judgement of whether polling pays (see the module
    docstring), its counters and its poll loop. Used by one thread at a time (whoever reads
    the VC).

    Args:
        length: seconds a poll lasts (0: never poll).
        adapt: judge whether polling pays and poll only when it does (False: poll whenever
            the rules allow).
    """

    __slots__ = (
        "_judge_in",
        "_judged",
        "_polled",
        "_slept",
        "_tries",
        "adapt",
        "armed",
        "got",
        "hits",
        "length",
        "misses",
        "pays",
        "waited",
    )

    def __init__(self, length: float, adapt: bool = True) -> None:
        self.length = length
        self.adapt = adapt
        self.armed = False
        """Poll before the next blocking read (if :meth:`poll_now` says so)."""
        self.pays = True
        """The last judgement: polling pays (it starts so, and alternates until judged)."""
        self.hits = 0
        """Polls that found data."""
        self.misses = 0
        """Polls that found nothing."""
        self.got = 0
        """Bytes the last poll (or peek) that found data received."""
        self.waited = False
        """The last poll that found data found none at first (its gap measures something:
        with data there at once, polling and sleeping would have cost the same)."""
        self._polled: list[float] = []
        """The last gaps (seconds from going idle to having the bytes) after a poll."""
        self._slept: list[float] = []
        """The last gaps after a sleep in a blocking read the rules allowed a poll for."""
        self._tries = 0
        self._judge_in = 0
        self._judged = False

    def quick(self, idle_since: float, came_at: float) -> bool:
        """Whether input that came at ``came_at`` came within the poll's length of the reader
        going idle at ``idle_since``."""
        return came_at - idle_since < self.length

    def after_read(self, quick: bool, partial: bool) -> None:
        """After a read: poll next time only if it was quick and ended on a record
        boundary (``partial``: the opener holds part of a record)."""
        self.armed = quick and not partial

    def poll_now(self) -> int:
        """(The rules allow a poll: :attr:`armed`.) ``POLL``; ``TRIAL``: sleep in a blocking
        read, after a :meth:`peek`, and tell :meth:`slept` the gap; or ``SLEEP``: sleep,
        measuring nothing (where polling does not pay, most reads: a peek is one more
        system call, which lets another thread take the interpreter)."""
        if not self.adapt:
            return POLL
        tries = self._tries = self._tries + 1
        if len(self._slept) < MIN_SAMPLES or len(self._polled) < MIN_SAMPLES:
            return POLL if tries & 1 == 0 else TRIAL  # (not judged yet: alternate)
        if self.pays:
            return TRIAL if tries % EXPLORE_EVERY == 0 else POLL  # (check now and then)
        if tries % EXPLORE_EVERY == 0:
            return POLL
        return TRIAL if tries % MEASURE_EVERY == 0 else SLEEP

    def polled(self, gap: float) -> None:
        """A poll found data ``gap`` seconds after the reader went idle (noted if it
        :attr:`waited` for it)."""
        if self.adapt and self.waited:
            self._note(self._polled, gap)

    def slept(self, gap: float) -> bool:
        """A blocking read that :meth:`poll_now` chose (after a :meth:`peek` found nothing)
        had data ``gap`` seconds after the reader went idle. A gap of twice the poll's
        length or more is noted as endless (see the module docstring). Returns whether the
        read counts as quick: a gap under twice the poll's length does (a wake-up may take
        longer than a poll lasts: such a read must not stop the polling it is compared
        with)."""
        if gap < 2 * self.length:
            self._note(self._slept, gap)
            return True
        self._note(self._slept, _ENDLESS)
        return False

    def _note(self, gaps: list[float], gap: float) -> None:
        gaps.append(gap)
        if len(gaps) > SAMPLES:
            del gaps[0]
        # Judge after every gap of the kind in use less, and after every fifth of the other
        # (sorting SAMPLES floats is cheap, but not free on every call).
        judge_in = self._judge_in
        if gaps is (self._polled if self.pays else self._slept) and judge_in > 0:
            self._judge_in = judge_in - 1
            return
        self._judge_in = 4
        polled, slept = self._polled, self._slept
        if len(polled) < MIN_SAMPLES or len(slept) < MIN_SAMPLES:
            return
        # Lower quartiles: other load only ever adds to a gap, so the low ones say most.
        poll_gap, poll_error = _quartile(polled)
        sleep_gap, sleep_error = _quartile(slept)
        if poll_error == _ENDLESS:  # (polls mostly find nothing: never worth it)
            pays = False
            saved = 0.0
        elif sleep_error == _ENDLESS:  # (a sleep mostly takes far longer than a poll)
            pays = True
            saved = 2 * self.length - poll_gap
        else:
            saved = sleep_gap - poll_gap
            enough = max(MIN_SAVED, PAYS_FRACTION * poll_gap)
            # (Three quarters as much keeps it paying: a judgement near the line flaps less.)
            if self.pays and self._judged:
                enough *= 0.75
            # A difference within the quartiles' own uncertainty says nothing: with gaps
            # spread wide, a few dozen of each kind differ by chance.
            pays = saved >= enough + 2 * math.hypot(poll_error, sleep_error)
        self._judged = True
        if pays is not self.pays:
            self.pays = pays
            log.debug(
                "transport: busy polling %s: a sleep lengthens the gap by %.0f us, a poll "
                "lasts %.0f us",
                "pays" if pays else "does not pay",
                saved * 1e6,
                poll_gap * 1e6,
            )

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
        waited = False
        try:
            while stop is None or not stop():
                try:
                    n = recv_into(buf, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if monotonic() >= until:
                        self.misses += 1
                        self.armed = False  # a longer gap: sleep until a short one
                        if self.adapt:
                            self._note(self._polled, _ENDLESS)  # (a gap it cannot see)
                        return _MISSED
                    waited = True
                    yield_cpu()
                    continue
                if n:
                    self.hits += 1
                self.got = n
                self.waited = waited
                return _DATA
            return _STOPPED
        finally:
            give_slot()

    def peek(self, sock: socket.socket, buf: memoryview | bytearray) -> Read:
        """One receive without blocking, before a sleep :meth:`poll_now` chose: ``Read.DATA``
        (its byte count in :attr:`got`: the data was there, nothing to compare) or
        ``Read.MISSED`` (nothing there yet: the blocking read's gap will be noted). Counts
        neither a hit nor a miss.

        Raises:
            OSError: the receive failed (other than finding nothing).
        """
        try:
            n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return _MISSED
        self.got = n
        self.waited = False
        return _DATA
