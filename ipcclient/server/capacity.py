"""What bounds a server's work: its pool of worker threads and the budgets of its VCs, of
their remote addresses and of the whole server.

Owns: :class:`WorkerPool` (threads that grow on demand to a bound, never blocking a
submitter), :class:`VCState` (the calls, headerless flows and bytes of args of one accepted
VC, and the key its calls count under per remote address), :class:`ArgsTotal` (the bytes of
args all the server's calls hold, and those of each remote address), :class:`ArgsCharge` and
:func:`hold_args` (the bytes of args one call holds against its VC's budget, its address's
and the server's).
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
    "ArgsTotal",
    "VCState",
    "WorkerPool",
    "hold_args",
    "over_args",
    "over_call_args",
    "over_peer_args",
    "over_total_args",
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
    slot lock.

    ``peer`` is the key the VC's calls and args count under per remote address (see
    ``max_calls_per_address`` and ``max_args_bytes_total``): its peer's IP address, shared
    by every VC from there; None (the default) gives the VC a key of its own, for a VC that
    is its own peer (a Unix socket's, whose peers all share one address)."""

    __slots__ = ("args_held", "calls", "headerless", "peer")

    def __init__(self, peer: str | None = None) -> None:
        self.calls = 0
        self.headerless = 0
        self.args_held = 0
        self.peer: object = object() if peer is None else peer


class ArgsTotal:
    """The bytes of args all the calls of one server hold (``held``), against its
    ``max_args_bytes_total`` (``limit``), and those the VCs from each remote address hold
    (``by_peer``, keyed by ``VCState.peer``; an address is in it only while it holds some),
    against half of it (``peer_limit``). Charged with each call's VC's budget: many VCs,
    each within its own budget, cannot together hold unbounded memory, and the VCs of one
    address cannot take the server's whole budget (calls from elsewhere would then be
    refused until their args timed out). Changes under the server's slot lock."""

    __slots__ = ("by_peer", "held", "limit", "peer_limit")

    def __init__(self, limit: int) -> None:
        self.held = 0
        self.limit = limit
        self.peer_limit = max(1, limit // 2)
        self.by_peer: dict[object, int] = {}

    def release_locked(self, peer: object, nbytes: int) -> None:
        """Give back ``nbytes`` held by the calls of ``peer`` (the server's slot lock held).
        (The server's per-call path does the same inline.)"""
        self.held -= nbytes
        left = self.by_peer.get(peer, 0) - nbytes
        if left > 0:
            self.by_peer[peer] = left
        else:
            self.by_peer.pop(peer, None)


def hold_args(
    lock: threading.Lock, vc: VCState, limit: int, total: ArgsTotal, nbytes: int
) -> errors.OverloadedError | None:
    """Charge ``nbytes`` of args to ``vc``, its remote address and the server's ``total``
    under ``lock`` (the server's slot lock); None once charged, else the refusal, charging
    nothing, when the VC's calls would then hold more than ``limit`` bytes, its address's
    more than ``total.peer_limit`` or the server's more than ``total.limit``. Nothing (0
    bytes: an empty arg body is legal) is charged to nobody: an address holds an entry in
    ``total.by_peer`` only while it holds bytes."""
    if nbytes <= 0:
        return None
    if nbytes > limit or nbytes > total.peer_limit:  # (could never be held: do not retry)
        return over_call_args(min(limit, total.peer_limit))
    peer = vc.peer
    by_peer = total.by_peer
    with lock:
        from_peer = by_peer.get(peer, 0) + nbytes
        over_vc = vc.args_held + nbytes > limit
        over_peer = from_peer > total.peer_limit
        if not (over_vc or over_peer) and total.held + nbytes <= total.limit:
            vc.args_held += nbytes
            by_peer[peer] = from_peer
            total.held += nbytes
            return None
    if over_vc:
        return over_args(limit)
    return over_peer_args(total.peer_limit) if over_peer else over_total_args(total.limit)


def over_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose args would take its VC over ``limit`` bytes."""
    return errors.OverloadedError(
        f"server: the calls of this VC hold more than {limit} bytes of args"
    )


def over_peer_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose args would take the calls from its VC's remote address
    over ``limit`` bytes (retry after backing off)."""
    return errors.OverloadedError(
        f"server: the calls from this client's address hold more than {limit} bytes of args; "
        "try again later"
    )


def over_total_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose args would take the server's calls over ``limit`` bytes
    (retry after backing off, as over its VC's budget: other calls end meanwhile)."""
    return errors.OverloadedError(
        f"server: its calls hold more than {limit} bytes of args; try again later"
    )


def over_call_args(limit: int) -> errors.OverloadedError:
    """The answer to a call whose own args are over ``limit`` bytes (not to be retried)."""
    return errors.OverloadedError(
        f"server: the call's args are over the {limit} bytes allowed for one call",
        action=errors.RetryAction.NO_RETRY,
    )


class ArgsCharge:
    """The bytes of args one call holds, charged to its VC's budget, its remote address's
    and the server's as each arg's length arrives (a
    :class:`~ipcclient.wire.messages.Budget`); given back when the call ends.

    Over the call's own bound the refusal is final (an OverloadedError that says not to
    retry: the same call would be refused again); over another, the call may be retried
    after backing off, when other calls have ended."""

    __slots__ = ("_call_limit", "_limit", "_lock", "_total", "_vc", "taken")

    def __init__(
        self, lock: threading.Lock, vc: VCState, limit: int, call_limit: int, total: ArgsTotal
    ) -> None:
        self._lock = lock  # the server's lock over its call slots and VC counters
        self._vc = vc
        self._limit = limit  # the server's max_args_bytes_per_vc
        self._call_limit = call_limit  # the server's max_args_bytes
        self._total = total  # the server's, against its max_args_bytes_total
        self.taken = 0

    def take(self, nbytes: int) -> None:
        # (Over the call's own bound, or over what its VC or its address may ever hold: the
        # same call would be refused again, whatever other calls do.)
        most = min(self._call_limit, self._limit, self._total.peer_limit)
        if self.taken + nbytes > most:
            raise over_call_args(most)
        refused = hold_args(self._lock, self._vc, self._limit, self._total, nbytes)
        if refused is not None:
            raise refused
        self.taken += nbytes

    def release(self) -> None:
        taken = self.taken
        if not taken:
            return
        vc = self._vc
        with self._lock:
            vc.args_held -= taken
            self._total.release_locked(vc.peer, taken)
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
