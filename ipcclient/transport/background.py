"""The base of the process-wide background threads of the transport (started on demand).

Owns: :class:`OnDemandThread`: a daemon thread for one duty that starts on first use, ends
after ``IDLE_EXIT`` seconds without work, and starts again when needed (also in a forked
child, where :meth:`OnDemandThread.reinit` runs).

Must not: know what the duty is (subclasses do) or touch any VC.
"""

from __future__ import annotations

import abc
import threading

__all__ = ["IDLE_EXIT", "OnDemandThread"]

IDLE_EXIT = 0.5
"""Seconds without work after which an on-demand thread ends."""


class OnDemandThread(abc.ABC):
    """A process-wide daemon thread for one background duty: started on first use, it ends
    after ``IDLE_EXIT`` seconds without work and starts again when needed (also in a forked
    child, where :meth:`reinit` runs). Subclasses keep their work under ``_lock``."""

    _name = "ipc-background"

    def __init__(self) -> None:
        self.reinit()

    def reinit(self) -> None:
        """(Re)create the state: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_work()

    @abc.abstractmethod
    def _reset_work(self) -> None:
        """(Re)create the duty's own state (also in a forked child)."""

    @abc.abstractmethod
    def _has_work_locked(self) -> bool:
        """With ``_lock`` held: whether work is pending (else the thread may end)."""

    @abc.abstractmethod
    def _round(self) -> None:
        """One round of the duty, after a wake-up (called without ``_lock``)."""

    def _start_locked(self) -> None:
        """With ``_lock`` held: make sure the thread runs.

        Raises:
            RuntimeError: no thread could be started (nothing changed).
        """
        if self._thread is None:
            thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            thread.start()
            self._thread = thread

    def _loop(self) -> None:
        while True:
            if not self._wake.wait(IDLE_EXIT):
                with self._lock:
                    if not self._has_work_locked():
                        self._thread = None
                        return
                continue
            self._round()
