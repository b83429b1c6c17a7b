"""Parked VCs: idle accepted VCs watched by one thread instead of one reader thread each.

Owns: :class:`IdleWatcher` and the process's instance ``IDLE``: one thread with a selector
over every parked VC's socket. An accepted VC's reader thread that has seen no input for
``park_idle`` and has no flow registers its VC here and ends; when the socket becomes
readable (input, EOF, or a local close, which shuts it down) this thread gives the VC a new
reader thread. Meanwhile it keeps the VC's keepalive (the VC's own liveness check, every
``ROUND`` seconds). Started on first use; ends when nothing is parked.

Must not: read from a parked socket, or decide when a VC may park (the VC does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from typing import Protocol

from ipcclient import errors

__all__ = ["IDLE", "IdleWatcher", "Parkable"]

log = logging.getLogger("ipcclient.transport")


class Parkable(Protocol):
    """What the idle watcher needs from a parked VC."""

    @property
    def error(self) -> errors.IPCError | None: ...

    def fileno(self) -> int:
        """The VC's socket."""

    def unpark(self) -> None:
        """Input came: give the VC a reader thread again."""

    def end_parked(self, err: errors.IPCError) -> None:
        """End the parked VC with ``err`` (what its reader thread's end would do)."""

    def check_liveness(self) -> errors.IPCError | None:
        """Ping the peer if due; the error to end the VC with if the peer is dead."""


class IdleWatcher:
    """The thread that watches parked VCs (see the module docstring)."""

    ROUND = 1.0
    """Seconds between keepalive checks."""

    def __init__(self) -> None:
        self.reinit()

    def reinit(self) -> None:
        """(Re)create the state: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._parked: dict[int, Parkable] = {}
        self._thread: threading.Thread | None = None

    @property
    def parked(self) -> int:
        """VCs parked now."""
        return len(self._parked)

    def park(self, conn: Parkable) -> None:
        """Watch ``conn`` (its reader thread ends next).

        Raises:
            RuntimeError / OSError: no thread or selector could be had (nothing changed).
        """
        fd = conn.fileno()
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
        next_round = time.monotonic() + self.ROUND
        while True:
            with self._lock:
                selector = self._selector
                idle = selector is None or not self._parked
                if idle:
                    # Nothing parked: the thread ends, and its selector (an epoll descriptor)
                    # goes with it; the next park makes both anew.
                    self._thread = None
                    self._selector = None
            if idle or selector is None:
                if selector is not None:
                    selector.close()
                return
            try:
                ready = selector.select(max(0.0, next_round - time.monotonic()))
            except (OSError, ValueError):  # pragma: no cover - a socket closed under us
                ready = []
            for key, _events in ready:
                conn = key.data
                if self._forget(key.fd, conn):
                    err = conn.error
                    if err is not None:  # closed locally: no reader needed
                        conn.end_parked(err)
                    else:
                        conn.unpark()
            now = time.monotonic()
            if now >= next_round:
                next_round = now + self.ROUND
                self._keepalive_round()

    def _forget(self, fd: int, conn: Parkable) -> bool:
        with self._lock:
            if self._parked.get(fd) is not conn:
                return False
            del self._parked[fd]
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(fd)
        return True

    def _keepalive_round(self) -> None:
        with self._lock:
            parked = list(self._parked.items())
        for fd, conn in parked:
            try:
                dead = conn.check_liveness()  # (pings without waiting on the socket)
                if dead is not None and self._forget(fd, conn):
                    conn.end_parked(dead)
            except Exception:  # pragma: no cover - one VC's bug must not stop the others
                log.exception("transport: keepalive of an idle VC failed")


IDLE = IdleWatcher()
"""The process's idle watcher."""
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=IDLE.reinit)
