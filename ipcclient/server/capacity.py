"""What bounds a server's work: its pool of worker threads and the per-VC budgets.

Owns: :class:`WorkerPool` (threads that grow on demand to a bound, never blocking a
submitter), :class:`VCState` (the calls, headerless flows and bytes of args of one accepted
VC), :class:`ArgsCharge` and :func:`hold_args` (the bytes of args one call holds against its
VC's budget).
Must not: read or write a flow, or decide what to refuse (the flow-serving code does, from
these counts).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from ipcclient import errors

__all__ = [
    "IDLE_WORKER_EXIT",
    "VC_STATE",
    "ArgsCharge",
    "VCState",
    "WorkerPool",
    "hold_args",
    "over_args",
    "over_call_args",
]

log = logging.getLogger("ipcclient.server")

VC_STATE = "server-vc-state"
"""The key of a VC's :class:`VCState` in its ``cache`` (kept when the cache is cleared)."""

IDLE_WORKER_EXIT = 10.0
"""A worker thread beyond ``ServerOptions.workers`` ends after this many seconds idle."""


class VCState:
    """What one accepted VC holds of the server: call slots, flows whose request header is
    not here yet, and bytes of args being read (see the per-VC bounds of
    :class:`~ipcclient.server.options.ServerOptions`). Counters change under the server's
    slot lock."""

    __slots__ = ("args_held", "calls", "headerless")

    def __init__(self) -> None:
        self.calls = 0
        self.headerless = 0
        self.args_held = 0


def hold_args(lock: threading.Lock, vc: VCState, limit: int, nbytes: int) -> bool:
    """Charge ``nbytes`` of args to ``vc`` under ``lock`` (the server's slot lock); False,
    charging nothing, when its calls would then hold more than ``limit`` bytes."""
    with lock:
        if vc.args_held + nbytes > limit:
            return False
        vc.args_held += nbytes
        return True


def over_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose args would take its VC over ``limit`` bytes."""
    return errors.OverloadedError(
        f"server: the calls of this VC hold more than {limit} bytes of args"
    )


def over_call_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose own args are over ``limit`` bytes (not to be retried)."""
    return errors.OverloadedError(
        f"server: the call's args are over the {limit} bytes allowed for one call",
        action=errors.RetryAction.NO_RETRY,
    )


class ArgsCharge:
    """The bytes of args one call holds, charged to its VC's budget as each arg's length
    arrives (a :class:`~ipcclient.wire.messages.Budget`); given back when the call ends.

    Over the call's own bound the refusal is final (an OverloadedError that says not to
    retry: the same call would be refused again); over its VC's, the call may be retried
    after backing off, when the VC's other calls have ended."""

    __slots__ = ("_call_limit", "_limit", "_lock", "_vc", "taken")

    def __init__(self, lock: threading.Lock, vc: VCState, limit: int, call_limit: int) -> None:
        self._lock = lock  # the server's lock over its call slots and VC counters
        self._vc = vc
        self._limit = limit  # the server's max_args_bytes_per_vc
        self._call_limit = call_limit  # the server's max_args_bytes
        self.taken = 0

    def take(self, nbytes: int) -> None:
        if self.taken + nbytes > self._call_limit:
            raise over_call_args(self._call_limit)
        if not hold_args(self._lock, self._vc, self._limit, nbytes):
            raise over_args(self._limit)
        self.taken += nbytes

    def release(self) -> None:
        with self._lock:
            self._vc.args_held -= self.taken
            self.taken = 0


class WorkerPool:
    """A pool of worker threads that grows on demand up to ``size`` and keeps ``core`` of
    them; a thread beyond ``core`` ends after ``IDLE_WORKER_EXIT`` idle.

    Cheaper than ``concurrent.futures`` for this job (no futures): a C-implemented queue and
    an exact count of idle threads (a job is queued for a thread only when one is idle or
    about to take it). ``submit`` never blocks; the server bounds what is queued (its slots),
    so that a job waits only when the server allows queueing (``max_queued``).
    """

    def __init__(self, core: int, size: int) -> None:
        self._core = core
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for a job that no job was queued for yet
        self._owed = 0  # jobs queued with every thread busy (the next free thread runs one)
        self._started = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return len(self._threads)

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False once shut down or when no thread could be started."""
        start: threading.Thread | None = None
        with self._lock:
            if self._closed:
                return False
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                self._started += 1
                start = threading.Thread(
                    target=self._run, name=f"ipc-server-{self._started}", daemon=True
                )
                self._threads.add(start)
            else:
                self._owed += 1
            self._queue.put(job)
        if start is not None:
            try:
                start.start()
            except RuntimeError:  # no thread to be had: take the job back if still queued
                with self._lock:
                    self._threads.discard(start)
                    try:
                        taken = self._queue.get_nowait()
                    except queue.Empty:  # pragma: no cover - another thread took it
                        return True
                if taken is not job:  # pragma: no cover - order kept: put back
                    self._queue.put(taken)
                    return True
                log.warning("server: no thread to be had for a call")
                return False
        return True

    def _run(self) -> None:
        me = threading.current_thread()
        get = self._queue.get
        while True:
            try:
                job = get(timeout=IDLE_WORKER_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle and len(self._threads) > self._core:
                        self._idle -= 1
                        self._threads.discard(me)
                        return
                continue  # (a job is on its way to this thread, or it is a kept one)
            if job is None:  # (shut down)
                with self._lock:
                    self._threads.discard(me)
                return
            try:
                job()
            except BaseException:  # pragma: no cover - a job answers its own errors
                log.exception("server: a worker task failed")
            with self._lock:
                if self._owed:
                    self._owed -= 1  # a job queued while every thread was busy: take it
                else:
                    self._idle += 1

    def shutdown(self, timeout: float) -> None:
        """Stop taking work, let queued work finish, end every thread (bounded). Called from
        one of the pool's own threads (a job that stops the server), that thread is not
        waited for: it ends once its job returns."""
        me = threading.current_thread()
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in threads:
            if t is not me:
                t.join(max(0.0, deadline - time.monotonic()))
