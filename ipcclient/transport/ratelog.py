"""Rate-limited warnings of the transport, emitted off the thread that notices the event.

Owns: :class:`Throttle` (counts one kind of repeated event and logs it at most once per
``LOG_INTERVAL``, with the number of events since the last record) and the process's log
thread that emits those records, so that a slow log handler (a stderr nobody drains) never
blocks an accept loop.

Must not: drop counts (every event is counted, only the records are limited), or block its
caller on logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from typing import Any

__all__ = ["LOG_INTERVAL", "Throttle"]

log = logging.getLogger("ipcclient.transport")

LOG_INTERVAL = 10.0
"""A repeated warning (connections refused or dropped) is logged at most once per this many
seconds per listener and kind, with the number of events since the last one."""


class _LogPump:
    """Emits log records on a thread of its own, so that a slow log handler (a stderr
    nobody drains) never blocks the accept path; the records are rate-limited by their
    callers, so the queue stays short."""

    def __init__(self) -> None:
        self._init()

    def _init(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[int, str, tuple[Any, ...]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def emit(self, level: int, msg: str, *args: Any) -> None:
        self._queue.put((level, msg, args))
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="ipc-log", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: the record waits for the next
                    return
                self._thread = thread

    def _run(self) -> None:
        while True:
            try:
                level, msg, args = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            with contextlib.suppress(Exception):  # (logging reports its own failures)
                log.log(level, msg, *args)


_LOG_PUMP = _LogPump()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_LOG_PUMP._init)


class Throttle:
    """Counts one kind of repeated event and logs it at most once per ``LOG_INTERVAL``."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._count = 0
        self._last = -LOG_INTERVAL
        self.total = 0

    def event(self, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._count += 1
            self.total += 1
            if now - self._last < LOG_INTERVAL:
                return
            count, self._count, self._last = self._count, 0, now
        _LOG_PUMP.emit(
            logging.WARNING,
            "transport: %s (%d in the last %.0f s; last: %s)",
            self._what,
            count,
            LOG_INTERVAL,
            detail,
        )
