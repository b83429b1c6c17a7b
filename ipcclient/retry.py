"""Backoff and retry decisions as pure, property-testable values.

Owns: :class:`BackoffPolicy` (the two backoff formulas of Veyron's 2014 client and of Vanadium),
:func:`backoff_delay`, the retry decision :func:`should_retry` (by error action and call
phase), the retry window :func:`retry_deadline`, the driver :func:`run_with_retries`
with injected clock, sleep and randomness, and a process-level :class:`RetryBudget`.

Must not: import anything from ipcclient but :mod:`ipcclient.errors` and
:mod:`ipcclient.context`; read error message text (decisions read ``IPCError.action`` only,
never ``msg``: matching message text breaks when a message is reworded); touch sockets, names or
calls; sleep anywhere but through the injected ``sleep``.

The two formulas (``n`` is the retry number, 1 for the first retry):

* Veyron 2014: ``(1.5 + rand[0, 0.5)) ** n`` seconds: the first retry waits 1.5-2 s.
* Vanadium (2015 on): ``(100 ms + rand[0, 100 ms)) * 2 ** (n - 1)``: 100-200 ms, 200-400 ms...

Both are capped at ``max_backoff`` (1 min) and clamped so that at least ``reserve`` seconds are
left before the deadline; with ``reserve`` or less left there is no retry.

The default is :meth:`BackoffPolicy.vanadium`: a first retry after 100-200 ms instead of 1.5-2 s
finds a name that has just been mounted (rendezvous) or a restarted server quickly; the random
half still breaks convoys of clients that failed together; and the cap plus the deadline bound
the total time whatever the formula. Its reserve is 100 ms (as in Vanadium's later "core"
runtime) rather than the 2014 client's 1 ms, so the last attempt has time to do something
and its own error, not a bare Timeout, is what the caller sees.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ipcclient import errors
from ipcclient.context import Context

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_RETRY_WINDOW",
    "MAX_BACKOFF",
    "BackoffKind",
    "BackoffPolicy",
    "RetryBudget",
    "RetryPhase",
    "backoff_delay",
    "call_retry_window",
    "retry_deadline",
    "run_with_retries",
    "should_retry",
]

T = TypeVar("T")

log = logging.getLogger("ipcclient.retry")

MAX_BACKOFF = 60.0
"""Vanadium's maxBackoff: no single sleep is longer than a minute."""
DEFAULT_RETRY_WINDOW = 60.0
"""Vanadium's defaultCallTimeout: the retry window when the context has no deadline."""


def _finite_at_least(value: object, least: float) -> bool:
    """Whether ``value`` is a finite number (not a bool) >= ``least``."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= least
    )


class BackoffKind(enum.Enum):
    """The shape of the backoff formula."""

    POWER = "power"
    """``(base + jitter * r) ** n`` (Veyron's client, 2014)."""
    EXPONENTIAL = "exponential"
    """``(base + jitter * r) * multiplier ** (n - 1)`` (Vanadium, 2015)."""


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to sleep before retry ``n``; a pure value.

    Attributes:
        kind: which formula (see :class:`BackoffKind`).
        base: the fixed part of the randomized term, in seconds.
        jitter: the width of the random part: the term is ``base + jitter * r``, r in [0, 1).
        multiplier: growth per retry for EXPONENTIAL (ignored for POWER).
        max_backoff: the cap on one sleep, in seconds.
        reserve: seconds always left before the deadline; no retry with this or less left.

    Raises:
        BadArgError: a field is not of its type or out of its range.
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    base: float = 0.1
    jitter: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = MAX_BACKOFF
    reserve: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.kind, BackoffKind):
            raise errors.BadArgError(
                f"retry: BackoffPolicy.kind must be a BackoffKind, not {self.kind!r:.40}"
            )
        for name in ("base", "jitter", "multiplier", "max_backoff", "reserve"):
            value = getattr(self, name)
            if not _finite_at_least(value, 0):
                raise errors.BadArgError(
                    f"retry: BackoffPolicy.{name} must be a finite number >= 0, got {value!r}"
                )
        if self.kind is BackoffKind.POWER and self.base < 1:
            raise errors.BadArgError(
                "retry: a POWER backoff needs base >= 1 (else it would shrink)"
            )
        if self.kind is BackoffKind.EXPONENTIAL and self.multiplier < 1:
            raise errors.BadArgError("retry: an EXPONENTIAL backoff needs multiplier >= 1")

    @classmethod
    def seed_2014(cls) -> BackoffPolicy:
        """Veyron's 2014 ``(1.5 + rand[0,0.5)) ** n`` s, cap 1 min, 1 ms reserve."""
        return cls(
            kind=BackoffKind.POWER,
            base=1.5,
            jitter=0.5,
            multiplier=1.0,
            max_backoff=MAX_BACKOFF,
            reserve=0.001,
        )

    @classmethod
    def vanadium(cls, *, reserve: float = 0.1) -> BackoffPolicy:
        """Vanadium's ``(100 ms + rand[0,100 ms)) * 2 ** (n-1)``, cap 1 min.

        ``reserve`` defaults to 100 ms (Vanadium core); pass 0.001 for a 1 ms reserve.
        """
        return cls(
            kind=BackoffKind.EXPONENTIAL,
            base=0.1,
            jitter=0.1,
            multiplier=2.0,
            max_backoff=MAX_BACKOFF,
            reserve=reserve,
        )


DEFAULT_POLICY = BackoffPolicy.vanadium()


def backoff_delay(
    policy: BackoffPolicy, attempt: int, remaining: float, rand: Callable[[], float]
) -> float | None:
    """The sleep before retry number ``attempt`` (1, 2, ...), or ``None`` to give up.

    ``remaining`` is the time left until the deadline (may be ``math.inf``). The result is
    ``None`` exactly when ``remaining <= policy.reserve`` (or is NaN); otherwise it is in
    ``[0, min(policy.max_backoff, remaining - policy.reserve)]``. ``rand`` is called once and
    its value clamped to [0, 1].
    """
    if attempt < 1:
        raise errors.BadArgError("retry: attempt counts retries from 1")
    if not remaining > policy.reserve:
        return None
    r = min(1.0, max(0.0, float(rand())))  # NaN compares false: max(0.0, nan) is 0.0
    term = policy.base + policy.jitter * r
    try:
        if policy.kind is BackoffKind.POWER:
            raw = term**attempt
        else:
            raw = term * policy.multiplier ** (attempt - 1)
    except OverflowError:
        raw = math.inf
    return max(0.0, min(raw, policy.max_backoff, remaining - policy.reserve))


class RetryPhase(enum.Enum):
    """Where in a call an error happened."""

    BEFORE_SEND = "before_send"
    """Connection level: no byte of the request was written (StartCall's loop)."""
    AFTER_SEND = "after_send"
    """Application level: the request may have run (the error came from Finish)."""


_RETRIED: dict[RetryPhase, frozenset[errors.RetryAction]] = {
    RetryPhase.BEFORE_SEND: frozenset(
        {
            errors.RetryAction.RETRY_CONNECTION,
            errors.RetryAction.RETRY_REFETCH,
            errors.RetryAction.RETRY_BACKOFF,
        }
    ),
    RetryPhase.AFTER_SEND: frozenset({errors.RetryAction.RETRY_BACKOFF}),
}


def should_retry(err: errors.IPCError, phase: RetryPhase, *, no_retry: bool = False) -> bool:
    """Whether ``err`` in ``phase`` may be retried; reads ``err.action`` only.

    * ``no_retry`` (the NoRetry option): never.
    * BEFORE_SEND: RETRY_CONNECTION, RETRY_REFETCH and RETRY_BACKOFF (the last is harmless:
      nothing of the request ran). NO_RETRY never.
    * AFTER_SEND: only RETRY_BACKOFF, the server's explicit "try me again" (Vanadium's Call
      loop); other actions could re-run a request that already had effects.
    """
    if no_retry:
        return False
    return err.action in _RETRIED[phase]


def retry_deadline(
    ctx: Context | None = None,
    *,
    retry_timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """The end of the retry window: ``now + retry_timeout`` if given, else the context's
    deadline, else ``now + DEFAULT_RETRY_WINDOW`` (Vanadium's rule)."""
    if retry_timeout is not None:
        return clock() + retry_timeout
    if ctx is not None and ctx.deadline is not None:
        return ctx.deadline
    return clock() + DEFAULT_RETRY_WINDOW


def call_retry_window(
    start: float,
    call_deadline: float | None,
    *,
    wait_for_ready: bool,
    connect_retry_window: float,
    retry_timeout: float | None = None,
) -> float:
    """The end of one call's retry window, computed once when the call starts and shared by
    every retry loop of the call (before and after the request is sent).

    ``start`` and ``call_deadline`` are on the same clock (the context's). The window ends
    at ``start + retry_timeout`` when given, else at the call's deadline when the call waits
    for ready, else at ``start + connect_retry_window``; never after the call's deadline
    (or ``DEFAULT_RETRY_WINDOW`` from the start when the call has none).
    """
    limit = call_deadline if call_deadline is not None else start + DEFAULT_RETRY_WINDOW
    if retry_timeout is not None:
        return min(limit, start + retry_timeout)
    if wait_for_ready:
        return limit
    return min(limit, start + connect_retry_window)


class RetryBudget:
    """A Finagle-style retry budget: retries may be at most a fraction of recent requests.

    Over a sliding window of ``ttl`` seconds, each request (:meth:`deposit`) earns
    ``percent_can_retry`` tokens and each retry (:meth:`try_withdraw`) costs one; a floor of
    ``min_retries_per_sec * ttl`` tokens lets a quiet client still retry. When every server is
    down, retries stop multiplying the load. Thread-safe; time comes from ``clock``. The window
    is kept in ``buckets`` slots, so memory is bounded whatever the request rate.

    Raises:
        BadArgError: an argument is not a number or out of its range.
    """

    def __init__(
        self,
        *,
        ttl: float = 10.0,
        min_retries_per_sec: float = 10.0,
        percent_can_retry: float = 0.2,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (_finite_at_least(ttl, 0) and ttl > 0):
            raise errors.BadArgError(f"retry: ttl must be a finite number > 0, got {ttl!r:.40}")
        if not _finite_at_least(min_retries_per_sec, 0):
            raise errors.BadArgError(
                "retry: min_retries_per_sec must be a finite number >= 0, "
                f"got {min_retries_per_sec!r:.40}"
            )
        if not (_finite_at_least(percent_can_retry, 0) and percent_can_retry <= 1000):
            raise errors.BadArgError(
                f"retry: percent_can_retry must be in [0, 1000], got {percent_can_retry!r:.40}"
            )
        given: object = buckets
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise errors.BadArgError(f"retry: buckets must be an int >= 1, got {buckets!r:.40}")
        self._slot = ttl / buckets
        self._buckets = buckets
        self._reserve = min_retries_per_sec * ttl
        self._percent = percent_can_retry
        self._clock = clock
        self._lock = threading.Lock()
        # slot index -> [deposits, withdrawals]; at most ``buckets`` live slots.
        self._window: collections.OrderedDict[int, list[int]] = collections.OrderedDict()

    def _current(self) -> list[int]:
        slot = math.floor(self._clock() / self._slot)
        while self._window and next(iter(self._window)) <= slot - self._buckets:
            self._window.popitem(last=False)
        counts = self._window.get(slot)
        if counts is None:
            counts = self._window[slot] = [0, 0]
        return counts

    def _balance_locked(self) -> float:
        self._current()
        deposits = sum(c[0] for c in self._window.values())
        withdrawals = sum(c[1] for c in self._window.values())
        return self._reserve + self._percent * deposits - withdrawals

    def deposit(self) -> None:
        """Record one request (a first attempt)."""
        with self._lock:
            self._current()[0] += 1

    def try_withdraw(self) -> bool:
        """Take one retry token if there is one; False means "do not retry"."""
        with self._lock:
            if self._balance_locked() < 1:
                return False
            self._current()[1] += 1
            return True

    def balance(self) -> float:
        """Tokens available now (may be fractional)."""
        with self._lock:
            return self._balance_locked()


def run_with_retries(
    attempt_fn: Callable[[int], T],
    *,
    deadline: float,
    phase: RetryPhase,
    policy: BackoffPolicy = DEFAULT_POLICY,
    no_retry: bool = False,
    max_attempts: int | None = None,
    ctx: Context | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], object] | None = None,
    rand: Callable[[], float] = random.random,
    budget: RetryBudget | None = None,
    first_error: errors.IPCError | None = None,
    what: str = "call",
) -> T:
    """Call ``attempt_fn(n)`` for n = 1, 2, ... until it returns, and return that.

    With ``first_error``, attempt 1 was already made by the caller (a fast path that enters
    the loop only on failure) and failed with it: the loop starts from that failure.

    After an :class:`errors.IPCError` the loop retries only if :func:`should_retry` allows it,
    ``max_attempts`` is not reached, and :func:`backoff_delay` gives a delay for the time left
    until ``deadline`` (on ``clock``); it then sleeps through ``sleep`` and tries again
    (what ``sleep`` raises ends the loop: a client closed meanwhile says so that way).
    A sleep that had to be clamped to ``deadline - reserve`` is the last one. Otherwise it
    raises the last error (a copy with one ``tried`` entry per attempt when there
    was more than one). Other exceptions propagate at once.

    ``ctx`` makes the loop cancellable: by default ``clock`` is the context's clock and
    ``sleep`` is ``ctx.wait`` (woken by cancel); a done context stops the loop before the next
    attempt with the context's error. Without ``ctx`` the defaults are ``time.monotonic`` and
    ``time.sleep``. With a ``budget``, the call deposits once and every retry must withdraw a
    token; an empty budget ends the loop like a used-up deadline.

    Each retry is logged at INFO on ``ipcclient.retry`` with ``what``, the error that caused
    it and the backoff; giving up after retries is logged at INFO too.
    """
    if max_attempts is not None and max_attempts < 1:
        raise errors.BadArgError("retry: max_attempts must be >= 1")
    now: Callable[[], float]
    if clock is not None:
        now = clock
    elif ctx is not None:
        now = ctx.clock.monotonic
    else:
        now = time.monotonic
    if sleep is None:
        sleep = ctx.wait if ctx is not None else time.sleep
    tried: list[str] = []
    attempt = 0
    window_used = False  # the last sleep ran up to deadline - reserve: that was the last try
    if budget is not None:
        budget.deposit()
    while True:
        attempt += 1
        if first_error is not None:
            last, first_error = first_error, None
        else:
            try:
                return attempt_fn(attempt)
            except errors.IPCError as err:
                last = err
        tried.append(f"attempt {attempt}: {last.id}")
        delay: float | None = None
        if (
            not window_used
            and should_retry(last, phase, no_retry=no_retry)
            and (max_attempts is None or attempt < max_attempts)
        ):
            remaining = deadline - now()
            delay = backoff_delay(policy, attempt, remaining, rand)
            # Clamped to the deadline: stop after the next attempt even if float rounding
            # leaves a sliver above the reserve (else tiny sleeps could loop forever).
            window_used = delay is not None and delay >= remaining - policy.reserve
            if delay is not None and budget is not None and not budget.try_withdraw():
                delay = None
        if delay is None:
            if attempt == 1:
                raise last
            log.info("%s: giving up after %d attempts: %s", what, attempt, last)
            raise last.with_context(tried=tried).with_traceback(last.__traceback__)
        log.info(
            "%s: retry %d in %.0f ms after %s (%s)",
            what,
            attempt,
            delay * 1000,
            last,
            last.action.name,
        )
        sleep(delay)
        if ctx is not None:
            cerr = ctx.err()
            if cerr is not None:
                raise cerr.with_context(tried=tried) from last
