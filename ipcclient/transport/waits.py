"""Waiting on a VC's lock: a light condition variable and a lock re-take that survives
KeyboardInterrupt.

Owns: :class:`Signal` (the waiters of one flow, or of one of the VC's threads, woken under the
VC's lock) and :func:`reacquire`. A wait lasts at most ``context.LONGEST_WAIT`` at a time.

Must not: know about sockets, flows or the mux; hold any lock of its own.
"""

from __future__ import annotations

import contextlib
import operator
from _thread import allocate_lock
from typing import Any

from ipcclient.context import LONGEST_WAIT

__all__ = ["LONGEST_WAIT", "Signal", "reacquire"]


_ACQUIRE = operator.methodcaller("acquire")


def reacquire(lock: Any) -> BaseException | None:
    """Take ``lock`` back whatever happens: a KeyboardInterrupt while waiting for it is kept
    and returned (to be re-raised once the lock is held), never lost and never leaving the
    lock unheld for a ``with`` block that will release it.

    An interrupt may also be raised just after ``acquire`` returned, with the lock held:
    the interpreter runs a signal's handler at its next check, and when the signal went to
    another thread (``interrupt_main``, or a SIGINT the kernel handed elsewhere) nothing
    cut the wait short. Taking the lock once more would then wait forever on a lock this
    thread holds, with every thread of the VC behind it. So the acquire runs inside C
    code (``list.extend`` over ``map``) that records its result before the interpreter
    checks again, and an interrupt after a recorded acquire is only kept."""
    pending: BaseException | None = None
    got: list[bool] = []
    while True:
        try:
            got.extend(map(_ACQUIRE, (lock,)))
            return pending
        except BaseException as exc:
            pending = exc
            if got:  # (the lock was taken before the interrupt was raised: held)
                return pending


class Signal:
    """A condition variable on the connection's lock, lighter than ``threading.Condition``
    (which costs several Python-level calls per wait and notify). ``wait`` and
    ``notify_all`` are called with the connection's lock held."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiters: list[Any] = []

    def wait(self, timeout: float | None) -> None:
        """Release the lock, sleep until notified or ``timeout`` seconds, re-take the lock."""
        waiter = allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        lock = self._lock
        try:
            # The release is the try's first statement: a KeyboardInterrupt raised as it
            # returns (a signal is checked after a call, and nothing between the try's
            # start and the release checks for one) is inside the try, whose finally takes
            # the lock back.
            lock.release()
            if timeout is None:
                waiter.acquire()
            elif timeout > 0:
                waiter.acquire(True, min(timeout, LONGEST_WAIT))
        finally:
            pending = reacquire(lock)
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
