"""A call's one retry window, shared by every retry loop of the call.

Owns: running a call's first attempt with no retry machinery at all, and only when it fails
with an error its phase may retry, the retry loop (backoff, budget, deadline, cancellation)
within the call's one window (it starts when the call starts: see
:func:`ipcclient.retry.call_retry_window`); whether a call waits for its server.

Must not: decide from message text whether an error is retried (``ipcclient.retry`` decides
from its action), or sleep outside the retry loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

from ipcclient import errors, retry
from ipcclient.context import Context
from ipcclient.options import CallOption, ClientOptions, RetryTimeout, WaitForReady, find_one

_T = TypeVar("_T")


def with_retries(
    options_: ClientOptions,
    attempt: Callable[[int], _T],
    ctx: Context,
    options: Sequence[CallOption],
    phase: retry.RetryPhase,
    no_retry: bool,
    start: float,
    first: Callable[[int], _T] | None = None,
    what: tuple[str, object, object] = ("call", "", ""),
    sleep: Callable[[Context, float], None] | None = None,
) -> _T:
    """``first(1)`` (default: ``attempt``); only if it fails with an error ``phase`` may
    retry, the retry loop (backoff, deadline, cancellation) of ``attempt`` starting from
    that failure, within the call's one retry window (from ``start``). ``what``: (kind,
    name, method), for the retry log only. ``sleep(ctx, seconds)``: the wait between two
    tries (default ``ctx.wait``); what it raises ends the loop (the client's, when it is
    closed meanwhile)."""
    try:
        return (first or attempt)(1)  # the usual case: no retry machinery at all
    except errors.IPCError as failed:
        if no_retry or not retry.should_retry(failed, phase):
            raise
        return retry.run_with_retries(
            attempt,
            deadline=retry_window_end(options_, ctx, options, start),
            phase=phase,
            policy=options_.backoff,
            no_retry=no_retry,
            ctx=ctx,
            sleep=None if sleep is None else functools.partial(sleep, ctx),
            budget=options_.retry_budget,
            first_error=failed,
            what=f"{what[0]} {what[1]!r}.{what[2]}",
        )


def waits_for_ready(options_: ClientOptions, options: Sequence[CallOption]) -> bool:
    """Whether this call waits for its server (see :class:`WaitForReady`)."""
    opt = find_one(options, WaitForReady) if options else None
    return options_.wait_for_ready if opt is None else opt.enabled


def retry_window_end(
    options_: ClientOptions, ctx: Context, options: Sequence[CallOption], start: float
) -> float:
    """The end of the call's retry window (on the context's clock), the same for every
    retry loop of the call: see :func:`retry.call_retry_window`."""
    rt = find_one(options, RetryTimeout) if options else None
    return retry.call_retry_window(
        start,
        ctx.deadline,
        wait_for_ready=waits_for_ready(options_, options),
        connect_retry_window=options_.connect_retry_window,
        retry_timeout=None if rt is None else rt.seconds,
    )
