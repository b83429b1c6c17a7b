"""Inline jobs on an accepted VC: a call run on the VC's reader thread, with a helper
reader when it takes long.

Owns: :class:`InlineRunner` (one VC's inline job: the job the owner's ``on_flow`` returned,
run by the reader thread once the current batch is dispatched; the helper thread that reads
for the VC while a job runs longer than ``INLINE_HANDOFF``) and :class:`Handoff`, the process's
thread that notices long jobs and starts their helpers.

Must not: read the socket itself (the helper calls the host's ``read_during_job``), decide
which flows may run inline (the owner asks :meth:`Connection.inline_available`), or hold the
VC's lock while a job runs.

One reader at a time: the reader thread waits for the helper to stop before it reads again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ipcclient.transport.background import OnDemandThread
from ipcclient.transport.waits import Signal

__all__ = ["HANDOFF", "INLINE_HANDOFF", "Handoff", "InlineRunner", "JobHost"]

log = logging.getLogger("ipcclient.transport")

INLINE_HANDOFF = 0.002
"""A job the owner runs on an accepted VC's reader thread (a complete unary request, see
:meth:`Connection.inline_available`) has a helper thread by the time it has run this long,
which reads the socket for the VC until the job ends: short calls cost no thread hop, long
ones cannot hold up the VC (other calls, cancellation, pings) for longer than about this.
(The handoff thread ticks every ``INLINE_HANDOFF`` and gives a helper to each job it finds
running for ``INLINE_HANDOFF / 2`` or more: so a job gets one when it has run between half
of this and this, and one shorter than half of it never does.)"""

_HELPER_AFTER = INLINE_HANDOFF / 2
"""A job found running this long at a tick gets a helper (the next tick would be too late)."""


class JobHost(Protocol):
    """What an :class:`InlineRunner` needs from its VC."""

    name: str

    @property
    def closed(self) -> bool: ...

    def read_during_job(self) -> None:
        """(The helper thread.) Read and dispatch for the VC until the job ends
        (``InlineRunner.running`` turns False) or the VC breaks."""


class InlineRunner:
    """One accepted VC's inline job and its helper reader. Fields are guarded by the VC's
    lock, except ``job``, which only the reader thread touches.

    Args:
        lock: the VC's lock.
        host: the VC.
    """

    __slots__ = (
        "_host",
        "_lock",
        "count",
        "helper_active",
        "helper_done",
        "job",
        "running",
        "started",
    )

    def __init__(self, lock: Any, host: JobHost) -> None:
        self._lock = lock
        self._host = host
        self.job: Callable[[], None] | None = None
        """The job to run after the current batch (one per batch)."""
        self.count = 0
        """Jobs started (numbers them, so a late helper start is for the right one)."""
        self.running = False
        """The reader thread runs a job now."""
        self.started = 0.0
        """When the running job started."""
        self.helper_active = False
        """A helper thread reads for the VC."""
        self.helper_done = Signal(lock)
        """Notified when the helper stops."""

    @property
    def idle(self) -> bool:
        """With the lock held: no job pending or running and no helper reading."""
        return self.job is None and not self.running and not self.helper_active

    def run_pending(self) -> None:
        """(The reader thread, after dispatching a batch.) Run the job ``on_flow`` gave."""
        job = self.job
        if job is not None:
            self.job = None
            self._run(job)

    def run_leftover(self) -> None:
        """(The reader thread, ending.) A job taken from a batch that failed half way: run
        it now; its flow is broken, so it only lets go of what the owner holds for it."""
        job, self.job = self.job, None
        if job is not None:
            call_job(job)

    def _run(self, job: Callable[[], None]) -> None:
        """On the reader thread, between two reads: run ``job``; if a helper took over
        reading meanwhile, wait until it has stopped before reading again."""
        with self._lock:
            self.count += 1
            number = self.count
            self.started = time.monotonic()
            self.running = True
        try:
            HANDOFF.watch(self)
        except RuntimeError:  # no thread for the watch: a helper reads from the start
            try:
                self.start_helper(number)
            except RuntimeError:
                log.warning("transport: no thread to read %s during a call", self._host.name)
        try:
            call_job(job)
        finally:
            pending: BaseException | None = None
            with self._lock:
                self.running = False
                while self.helper_active:  # the helper sees the job ended within 1 ms
                    try:
                        self.helper_done.wait(None)
                    except BaseException as exc:  # (keep waiting: two readers must not race)
                        pending = exc
            if pending is not None:
                raise pending

    def start_helper(self, number: int) -> None:
        """(The handoff thread.) Job ``number`` is taking long: start a thread that reads for
        the VC until the job ends.

        Raises:
            RuntimeError: no thread could be started.
        """
        with self._lock:
            if not self.running or self.count != number or self.helper_active or self._host.closed:
                return
            self.helper_active = True
        try:
            threading.Thread(
                target=self._helper, name=f"ipc-{self._host.name}-helper", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self.helper_active = False
                self.helper_done.notify_all()
            raise

    def _helper(self) -> None:
        try:
            self._host.read_during_job()
        finally:
            with self._lock:
                self.helper_active = False
                self.helper_done.notify_all()


def call_job(job: Callable[[], None]) -> None:
    """Run an inline job; whatever it raises is logged (a SystemExit in a method must not end
    the VC)."""
    try:
        job()
    except BaseException:
        log.exception("transport: an inline job failed")


class Handoff(OnDemandThread):
    """Gives a helper reader to each accepted VC whose reader thread has been running one
    inline job for ``INLINE_HANDOFF / 2`` (see ``INLINE_HANDOFF``).

    Starting a job costs the reader thread no wake-up of this one while jobs keep coming:
    the thread ticks every ``INLINE_HANDOFF`` and looks at the VCs' job start times, and
    it stops ticking at the first tick that finds no job running and none started since the
    tick before (so an idle or lightly loaded server is not woken a thousand times a second;
    the next job wakes it). ``watch`` registers a VC and restarts the ticking; its common
    case (the VC known, the thread ticking) takes no lock. Why that is race-free: the reader
    thread marks its job running *before* it reads ``_ticking``; the ticker clears
    ``_ticking`` and the VC set *before* it looks for running jobs, and keeps ticking if it
    finds one."""

    _name = "ipc-handoff"

    def _reset_work(self) -> None:
        self._runners: dict[InlineRunner, None] = {}
        self._ticking = False
        self.ticks = 0
        """Ticks so far (only the thread adds to it)."""

    def _has_work_locked(self) -> bool:
        return bool(self._runners)

    @property
    def ticking(self) -> bool:
        """Whether the thread is ticking now (some inline job ran or runs lately)."""
        return self._ticking

    def watch(self, runner: InlineRunner) -> None:
        """``runner``'s reader thread has started an inline job (``running`` and ``started``
        are set).

        Raises:
            RuntimeError: no thread could be started (nothing is watched then).
        """
        if self._ticking and runner in self._runners:
            return
        with self._lock:
            added = runner not in self._runners
            self._runners[runner] = None
            try:
                self._start_locked()
            except BaseException:
                if added:
                    del self._runners[runner]
                raise
            wake = not self._ticking
            self._ticking = True
        if wake:
            self._wake.set()

    def _round(self) -> None:
        with self._lock:
            self._wake.clear()
        seen: dict[InlineRunner, int] = {}  # each VC's job count at the previous tick
        while True:
            # Each tick wakes this thread: while calls keep coming, that is a cost per
            # second of serving, so ticks are as far apart as the bound allows.
            time.sleep(INLINE_HANDOFF)
            self.ticks += 1
            now = time.monotonic()
            due: list[tuple[InlineRunner, int]] = []
            busy = False
            with self._lock:
                runners = self._runners
                for runner in list(runners):
                    count = runner.count
                    if runner.running:
                        busy = True
                        if now - runner.started >= _HELPER_AFTER and not runner.helper_active:
                            due.append((runner, count))
                    elif runner._host.closed:
                        del runners[runner]
                        seen.pop(runner, None)
                        continue
                    if seen.get(runner) != count:
                        busy = True  # a job ran since the last tick: more may follow
                    seen[runner] = count
                if not busy:
                    # Stop ticking unless a job started meanwhile (see the class docstring).
                    self._ticking = False
                    self._runners = {}
                    if not any(runner.running for runner in runners):
                        return
                    self._runners = runners
                    self._ticking = True
            for runner, job in due:
                try:
                    runner.start_helper(job)
                except Exception:  # no thread to be had now: the next tick tries again
                    log.warning("transport: could not start a helper reader; retrying")


HANDOFF = Handoff()
"""The process's handoff thread."""
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=HANDOFF.reinit)
