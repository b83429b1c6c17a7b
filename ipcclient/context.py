"""Deadlines, cancellation and request-scoped values, in the shape of Go's context.

Owns: the :class:`Context` tree (``background`` -> ``with_cancel`` / ``with_timeout`` /
``with_deadline`` / ``with_value``), the cancel signal and its propagation from parent to
descendants, done-callbacks, the injectable :class:`Clock`, and the one process-wide timer
thread that turns a passed deadline into a cancellation with :class:`errors.TimeoutError`.

Must not: import anything from ipcclient but :mod:`ipcclient.errors`; spawn a thread per
context or per call (one shared daemon timer thread, started lazily); call user callbacks
while holding an internal lock; know about calls, flows or sockets.

Design decisions:

* Only contexts made by ``with_cancel`` / ``with_timeout`` / ``with_deadline`` can be cancelled:
  they are :class:`CancelContext` and have :meth:`CancelContext.cancel`. ``background()`` and
  ``with_value`` return a plain :class:`Context`, so "cancel the background" is a type error
  that mypy reports, not a runtime surprise.
* A parent holds its children **weakly** (weak references that drop out when a child dies)
  and a child unregisters from its parent as soon as it is done. A child that becomes
  garbage therefore costs its parent nothing. The flip side: a context nobody references
  any more is forgotten together with its done-callbacks; keep a reference while the
  callbacks matter (a call object does). A child holds its parent strongly (for values and
  deadlines), so a parent lives as long as any child.
* Contexts that can never be done (``background()`` and value contexts below it) keep no
  children and no callbacks at all: registering a callback there returns an inert handle.
* ``err()`` is sticky, like Go's ``ctx.Err()``: it is set once, by the first of "cancelled"
  or "deadline passed". When both hold at the moment the context is first seen done (a cancel
  arriving after the deadline passed but before anyone noticed) cancellation wins, as in
  Vanadium's ``flowClient.close``. Descendants get their ancestor's error.
* Deadlines are noticed in two ways: lazily, whenever ``done()`` / ``err()`` / ``wait()`` /
  ``add_done_callback`` look at the clock; and, for contexts on the system clock only, by the
  shared timer thread (a heap of ``(deadline, weakref)``), which cancels the context with
  ``TimeoutError`` so done-callbacks fire on deadline too. A context is put on the timer only
  when it gets its first done-callback (its effective deadline, ancestors' included): most
  contexts never get one, and then cost the timer nothing. A context on an injected clock has
  no timer (its time is not real time); tests advance the clock and look. The timer thread is
  recreated in a forked child (``os.register_at_fork``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from ipcclient import errors

LONGEST_WAIT = 86_400.0
"""The longest any thread of this package waits in one go (a lock, a condition, poll()): a
day. A longer timeout (a deadline centuries away, or infinitely far) is waited out in such
slices by the waiter's loop, which checks its condition after each; the system calls refuse
far longer ones."""

__all__ = [
    "SYSTEM_CLOCK",
    "CallbackHandle",
    "CancelContext",
    "Clock",
    "Context",
]

_log = logging.getLogger("ipcclient.context")

# How long one Event.wait slice may block, so that a blocked wait() still sees Ctrl-C.
WAIT_SLICE = 0.2
# The timer heap is compacted (entries of finished or collected contexts dropped) when it holds
# at least this many entries and at least twice as many as after the previous compaction.
_TIMER_COMPACT_MIN = 1024


class Clock(Protocol):
    """A monotonic clock; inject one to test deadline logic without real time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (like :func:`time.monotonic`)."""
        ...


class _SystemClock:
    """The real clock (:func:`time.monotonic`)."""

    monotonic = staticmethod(time.monotonic)

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


SYSTEM_CLOCK: Clock = _SystemClock()
"""The default clock. Only contexts on a real monotonic clock get timer-driven expiry."""


def _is_real_clock(clock: Clock) -> bool:
    return getattr(clock, "monotonic", None) is time.monotonic


class CallbackHandle(int):
    """What :meth:`Context.add_done_callback` returns; pass it to ``remove_done_callback``.
    (A number: made without running Python code, once per call.)"""

    __slots__ = ()

    def __new__(cls, id: int) -> CallbackHandle:  # (keyword "id", as before)
        return super().__new__(cls, id)

    @property
    def id(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"CallbackHandle(id={int(self)})"


_handle_ids = itertools.count(1)


def _fresh(err: errors.IPCError) -> errors.IPCError:
    """A copy of a stored error, so two threads never raise the same exception object."""
    return err.with_context()


def _seconds(value: object, what: str) -> float:
    """``value`` (a timeout or a deadline that is not a plain float, or is NaN) as a float:
    an int or a float but not a bool (an int beyond a float's range is infinitely far, or
    long past). Callers pass a float that compares equal to itself without calling this.

    Raises:
        BadArgError: ``value`` is neither an int nor a float, is a bool, or is NaN.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.BadArgError(
            f"context: a {what} must be a number (an int or a float), got {value!r}"
        )
    try:
        seconds = float(value)
    except OverflowError:  # (an int)
        return math.inf if value > 0 else -math.inf
    if seconds != seconds:  # NaN
        raise errors.BadArgError(f"context: a {what} must not be NaN")
    return seconds


class _Children(dict["weakref.ref[Context]", None]):
    """A parent's children: weak references (keys) that remove themselves when their child
    dies (a plain dict: cheaper than a ``WeakSet`` for the add/remove of every call)."""

    __slots__ = ()

    def drop(self, ref: weakref.ref[Context]) -> None:
        self.pop(ref, None)


def _live_children(table: _Children) -> list[Context]:
    """The children in ``table`` still alive. A child that dies meanwhile removes itself
    from the table from whatever thread frees it (a weakref callback, which takes no lock),
    so the table may change under the copy: copy again."""
    while True:
        try:
            refs = list(table)
        except RuntimeError:  # (dictionary changed size during iteration)
            continue
        live = []
        for ref in refs:
            child = ref()
            if child is not None:
                live.append(child)
        return live


class Context:
    """An immutable bundle of deadline, cancel signal and values; derive children from it.

    Thread-safe: every method may be called from any thread. Build the root with
    :meth:`background`, then derive. A child's deadline is the earlier of its parent's and its
    own; a child is done when its parent is done, never the reverse.
    """

    _background: Context | None = None
    _background_lock = threading.Lock()

    def __init__(
        self,
        parent: Context | None,
        *,
        clock: Clock,
        deadline: float | None = None,
        item: tuple[Any, Any] | None = None,
        cancellable: bool = False,
    ) -> None:
        """Internal: use :meth:`background` and the ``with_*`` methods."""
        self._parent = parent
        self._clock = clock
        effective = deadline
        if parent is not None and parent._deadline is not None:
            effective = parent._deadline if effective is None else min(effective, parent._deadline)
        self._deadline: float | None = effective
        self._item = item
        # Never done: no deadline, no way to cancel, and no ancestor that could be.
        self._never_done: bool = (
            effective is None and not cancellable and (parent is None or parent._never_done)
        )
        self._lock = threading.Lock()
        # Made on first use: most contexts are never waited on and never get children, and
        # an Event and a WeakSet cost more than the rest of a context together.
        self._event: threading.Event | None = None
        self._err: errors.IPCError | None = None
        self._callbacks: dict[int, Callable[[errors.IPCError], None]] = {}
        self._children: _Children | None = None
        # The deadline the timer thread must enforce once a done-callback needs it (armed
        # by add_done_callback; everything else notices a deadline by looking at the clock).
        self._timer_due: float | None = effective if _is_real_clock(clock) else None
        if parent is not None and not parent._never_done:
            parent._adopt(self)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def background(cls, clock: Clock | None = None) -> Context:
        """The root: never cancelled, no deadline, no values.

        Without ``clock`` this is a shared singleton on :data:`SYSTEM_CLOCK`; with one it is a
        fresh root whose descendants read time from ``clock``.
        """
        if clock is not None:
            return Context(None, clock=clock)
        if Context._background is None:
            with Context._background_lock:
                if Context._background is None:
                    Context._background = Context(None, clock=SYSTEM_CLOCK)
        return Context._background

    def with_cancel(self) -> CancelContext:
        """A child that can be cancelled with :meth:`CancelContext.cancel`."""
        return CancelContext(self, clock=self._clock, cancellable=True)

    def with_deadline(self, deadline: float) -> CancelContext:
        """A cancellable child whose deadline is ``min(deadline, self.deadline)``.

        ``deadline`` is a value of this context's clock (``time.monotonic()`` by default).

        Raises:
            BadArgError: ``deadline`` is not a number (an int or a float; not a bool, not
                None) or is NaN.
        """
        if type(deadline) is not float or deadline != deadline:  # (else: a float, not NaN)
            deadline = _seconds(deadline, "deadline")
        return CancelContext(self, clock=self._clock, deadline=deadline, cancellable=True)

    def with_timeout(self, seconds: float) -> CancelContext:
        """A cancellable child with a deadline ``seconds`` from now (capped by this one's).

        Raises:
            BadArgError: ``seconds`` is not a number (an int or a float; not a bool, not
                None) or is NaN.
        """
        if type(seconds) is not float or seconds != seconds:  # (else: a float, not NaN)
            seconds = _seconds(seconds, "timeout")
        return self.with_deadline(self._clock.monotonic() + seconds)

    def with_value(self, key: Any, value: Any) -> Context:
        """A child that carries ``key -> value`` (and is done exactly when this one is)."""
        return Context(self, clock=self._clock, item=(key, value))

    # -- observation ------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock this context reads deadlines from."""
        return self._clock

    @property
    def deadline(self) -> float | None:
        """The effective deadline on :attr:`clock`, or ``None`` for none."""
        return self._deadline

    def monotonic_deadline(self) -> float | None:
        """The deadline as a :func:`time.monotonic` value (the clock sockets and flows wait
        on), or ``None`` for none. On :data:`SYSTEM_CLOCK` it is :attr:`deadline`; on an
        injected clock it is ``time.monotonic()`` plus what is left on that clock now, so a
        call converts it once, when it takes its deadline (advancing the injected clock
        later ends the context when it is next looked at, not the transport's waits)."""
        deadline = self._deadline
        if deadline is None or self._clock is SYSTEM_CLOCK:
            return deadline
        return time.monotonic() + (deadline - self._clock.monotonic())

    def remaining(self) -> float | None:
        """Seconds until the deadline, clamped at 0; ``None`` when there is no deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock.monotonic())

    def done(self) -> bool:
        """True when this context is cancelled or its deadline has passed."""
        if self._err is not None:
            return True
        if self._deadline is not None and self._clock.monotonic() >= self._deadline:
            self._finish(errors.TimeoutError("context deadline exceeded"))
            return True
        return False

    def err(self) -> errors.IPCError | None:
        """``None`` while live; then :class:`errors.CanceledError` or ``TimeoutError``.

        Sticky once set. Each call returns a fresh copy, safe to raise.
        """
        if not self.done():
            return None
        err = self._err
        assert err is not None
        return _fresh(err)

    def peek_err(self) -> errors.IPCError | None:
        """What :meth:`err` returns, without ending the context now when its deadline has
        passed and the timer has not yet: no done-callback runs here (for code that holds a
        lock a callback may want)."""
        err = self._err
        if err is not None:
            return _fresh(err)
        if self._deadline is not None and self._clock.monotonic() >= self._deadline:
            return errors.TimeoutError("context deadline exceeded")
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (True) or until ``timeout`` real seconds pass (False).

        Wakes at once on cancel and when the deadline passes; blocks in slices of at most
        :data:`WAIT_SLICE` seconds so that KeyboardInterrupt is seen.

        Raises:
            BadArgError: ``timeout`` is neither None nor a number (an int or a float; not a
                bool), or is NaN.
        """
        end = None
        if timeout is not None:
            if type(timeout) is not float or timeout != timeout:  # (else: a float, not NaN)
                timeout = _seconds(timeout, "wait timeout")
            end = time.monotonic() + timeout
        while True:
            if self.done():
                return True
            slice_ = WAIT_SLICE
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                slice_ = min(slice_, left)
            if self._deadline is not None:
                slice_ = min(slice_, max(0.0, self._deadline - self._clock.monotonic()))
            event = self._event
            if event is None:
                with self._lock:
                    if self._event is None:
                        self._event = threading.Event()
                        if self._err is not None:
                            self._event.set()
                    event = self._event
            event.wait(slice_)

    def value(self, key: Any, default: Any = None) -> Any:
        """The value of the nearest ancestor-or-self that set ``key``, else ``default``."""
        node: Context | None = self
        while node is not None:
            if node._item is not None and node._item[0] == key:
                return node._item[1]
            node = node._parent
        return default

    # -- callbacks --------------------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[errors.IPCError], None]) -> CallbackHandle:
        """Call ``fn(err)`` exactly once when this context is done.

        If it is already done, ``fn`` runs now, in this thread. Callbacks run outside any lock,
        in the thread that cancels (or the timer thread); an exception is logged and does not
        stop the others. On a context that can never be done nothing is stored.
        """
        handle = CallbackHandle(next(_handle_ids))
        if self._never_done:
            return handle
        if not self.done():
            stored = False
            with self._lock:
                if self._err is None:
                    self._callbacks[handle] = fn
                    stored = True
                    due, self._timer_due = self._timer_due, None
            if stored:
                if due is not None:  # from now on the deadline must fire the callbacks
                    _TIMER.schedule(due, self)
                return handle
        err = self._err
        assert err is not None
        _run_callbacks([(fn, err)])
        return handle

    def remove_done_callback(self, handle: CallbackHandle) -> bool:
        """Forget a callback; True if it was pending (it will not run), else False."""
        with self._lock:
            return self._callbacks.pop(handle, None) is not None

    # -- internals --------------------------------------------------------------------------

    def _adopt(self, child: Context) -> None:
        """Register ``child`` for propagation, or finish it at once if this one is done."""
        with self._lock:
            err = self._err
            if err is None:
                children = self._children
                if children is None:
                    children = self._children = _Children()
                children[weakref.ref(child, children.drop)] = None
                return
        child._finish(err)

    def _finish(self, err: errors.IPCError) -> None:
        """Mark this context and every descendant done with ``err``; then run callbacks."""
        to_run: list[tuple[Callable[[errors.IPCError], None], errors.IPCError]] = []
        pending: list[Context] = [self]
        finished: list[Context] = []
        while pending:
            node = pending.pop()
            with node._lock:
                if node._err is not None:
                    continue
                node._err = err
                callbacks = list(node._callbacks.values())
                node._callbacks.clear()
                table = node._children
                node._children = None  # (children adopted from now on are born done)
                event = node._event
            children = _live_children(table) if table is not None else ()
            if event is not None:
                event.set()
            finished.append(node)
            for fn in callbacks:
                to_run.append((fn, err))
            pending.extend(children)
        if finished and finished[0] is self:
            parent = self._parent
            if parent is not None and not parent._never_done:
                with parent._lock:
                    if parent._children is not None:
                        parent._children.pop(weakref.ref(self), None)
        if to_run:
            _run_callbacks(to_run)

    def __repr__(self) -> str:
        state = "done" if self._err is not None else "live"
        return f"<{type(self).__name__} {state} deadline={self._deadline!r}>"


class CancelContext(Context):
    """A context that can be cancelled (made by ``with_cancel``/``with_timeout``/``with_deadline``).

    Usable as a context manager: leaving the ``with`` block cancels it (Go's ``defer cancel()``).
    """

    def cancel(self, reason: str = "") -> None:
        """Cancel this context and all its descendants; idempotent; any thread.

        Has no effect if this context is already done (the first error sticks).

        Raises:
            BadArgError: ``reason`` is not text (nothing is cancelled).
        """
        if not isinstance(reason, str):
            raise errors.BadArgError(
                f"context: a cancel reason is text, not a {type(reason).__name__}"
            )
        self._finish(errors.CanceledError(reason or "context canceled"))

    def cancel_with(self, err: errors.IPCError) -> None:
        """Cancel with ``err`` as the error (a prototype: whoever asks gets a fresh copy,
        so one error object may end many contexts: nothing is built per cancel).

        Raises:
            BadArgError: ``err`` is not an :class:`~ipcclient.errors.IPCError` (nothing is
                cancelled).
        """
        if not isinstance(err, errors.IPCError):
            raise errors.BadArgError(
                f"context: cancel_with takes an IPCError, not a {type(err).__name__}"
            )
        self._finish(err)

    def __enter__(self) -> CancelContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


def _run_callbacks(
    items: list[tuple[Callable[[errors.IPCError], None], errors.IPCError]],
) -> None:
    """Run every callback, each once. One that raises is logged; a KeyboardInterrupt or a
    SystemExit is raised again once the others have run: they are gone from their context,
    which is done, so nothing would ever run them (a call's cancellation among them)."""
    interrupted: BaseException | None = None
    for fn, err in items:
        try:
            fn(_fresh(err))
        except Exception:
            _log.exception("context done-callback %r raised", fn)
        except BaseException as exc:
            if interrupted is None:
                interrupted = exc
    if interrupted is not None:
        raise interrupted


class _Timer:
    """One daemon thread for the whole process that expires system-clock deadlines."""

    def __init__(self) -> None:
        self._init_state()
        self._heap: list[tuple[float, int, weakref.ref[Context]]] = []
        self._seq = itertools.count()
        self._compact_at = _TIMER_COMPACT_MIN

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def schedule(self, deadline: float, ctx: Context) -> None:
        """Expire ``ctx`` with TimeoutError once ``time.monotonic() >= deadline``."""
        if self._pid != os.getpid():  # pragma: no cover - only without os.register_at_fork
            self.after_fork_in_child()
        with self._cond:
            if len(self._heap) >= self._compact_at:
                self._heap = [e for e in self._heap if _live(e[2])]
                heapq.heapify(self._heap)
                self._compact_at = max(_TIMER_COMPACT_MIN, 2 * len(self._heap))
            heapq.heappush(self._heap, (deadline, next(self._seq), weakref.ref(ctx)))
            if self._thread is None or not self._thread.is_alive():
                self._start_locked()
            elif self._heap[0][0] == deadline:
                self._cond.notify()

    def _start_locked(self) -> None:
        """Start the timer thread. When none can be started (the process is at its thread
        limit) the deadlines wait, logged, for the next :meth:`schedule` to try again; a
        context still reports its deadline when asked (``done()``, ``err()``)."""
        thread = threading.Thread(target=self._run, name="ipcclient-context-timer", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            self._thread = None
            _log.warning("context: no timer thread (%s); deadlines fire when next asked", exc)
            return
        self._thread = thread

    def _run(self) -> None:
        while True:
            due: list[weakref.ref[Context]] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(None if timeout is None else min(timeout, LONGEST_WAIT))
                    continue
            for ref in due:
                ctx = ref()
                if ctx is not None and ctx._err is None:
                    try:
                        ctx._finish(errors.TimeoutError("context deadline exceeded"))
                    except BaseException:  # (a callback's SystemExit: the timer goes on)
                        _log.exception("context: a done-callback ended its run")
            del due, ctx

    def after_fork_in_child(self) -> None:
        """The parent's timer thread does not exist in a forked child: start afresh."""
        self._init_state()
        if self._heap:
            with self._cond:
                self._start_locked()

    def thread(self) -> threading.Thread | None:
        """The timer thread, if started (for tests and diagnostics)."""
        return self._thread

    def pending(self) -> int:
        """How many heap entries (live or stale) the timer holds."""
        with self._cond:
            return len(self._heap)


def _live(ref: weakref.ref[Context]) -> bool:
    ctx = ref()
    return ctx is not None and ctx._err is None


_TIMER = _Timer()

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_TIMER.after_fork_in_child)
