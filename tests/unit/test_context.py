"""Tests for ipcclient.context: deadlines, cancellation, callbacks, the timer thread."""

from __future__ import annotations

import gc
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from ipcclient import context as context_mod
from ipcclient import errors
from ipcclient.context import SYSTEM_CLOCK, CancelContext, Context


class FakeClock:
    """A manual monotonic clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ipcclient-context-timer"]


# -- background and values ------------------------------------------------------------------


def test_background_is_a_never_done_singleton() -> None:
    bg = Context.background()
    assert bg is Context.background()
    assert bg.clock is SYSTEM_CLOCK
    assert repr(SYSTEM_CLOCK) == "SYSTEM_CLOCK"
    assert abs(SYSTEM_CLOCK.monotonic() - time.monotonic()) < 1.0
    assert bg.deadline is None
    assert bg.remaining() is None
    assert not bg.done()
    assert bg.err() is None
    assert bg.wait(0) is False
    assert not hasattr(bg, "cancel")
    assert "live" in repr(bg)


def test_background_with_clock_is_a_fresh_root() -> None:
    clock = FakeClock()
    root = Context.background(clock)
    assert root is not Context.background()
    assert root.clock is clock
    child = root.with_timeout(5)
    assert child.clock is clock
    assert child.deadline == 1005.0


def test_callback_on_never_done_context_is_not_stored() -> None:
    bg = Context.background()
    ran: list[errors.IPCError] = []
    handle = bg.add_done_callback(ran.append)
    value_ctx = bg.with_value("k", 1)
    handle2 = value_ctx.add_done_callback(ran.append)
    assert bg._callbacks == {} and value_ctx._callbacks == {}
    assert handle != handle2
    assert bg.remove_done_callback(handle) is False
    assert ran == []


def test_values_walk_up_and_shadow() -> None:
    root = Context.background(FakeClock())
    a = root.with_value("user", "alice").with_value("trace", 7)
    b = a.with_cancel().with_value("user", "bob")
    assert a.value("user") == "alice"
    assert a.value("trace") == 7
    assert b.value("user") == "bob"
    assert b.value("trace") == 7
    assert b.value("missing") is None
    assert b.value("missing", 42) == 42
    assert root.value("user", "none") == "none"


# -- deadlines on a fake clock -----------------------------------------------------------------


def test_child_deadline_is_min_of_parent_and_own() -> None:
    clock = FakeClock(100.0)
    root = Context.background(clock)
    parent = root.with_timeout(10)
    assert parent.deadline == 110.0
    assert parent.with_timeout(20).deadline == 110.0
    assert parent.with_timeout(5).deadline == 105.0
    assert parent.with_deadline(50.0).deadline == 50.0
    assert parent.with_cancel().deadline == 110.0
    assert parent.with_value("k", "v").deadline == 110.0


def test_nan_deadline_or_timeout_is_rejected() -> None:
    root = Context.background(FakeClock())
    with pytest.raises(errors.BadArgError):
        root.with_timeout(float("nan"))
    with pytest.raises(errors.BadArgError):
        root.with_deadline(float("nan"))


@pytest.mark.parametrize("bad", ["5", None, True, False, b"1", [1.0]])
def test_a_timeout_or_deadline_that_is_not_a_number_is_a_bad_arg(bad: Any) -> None:
    """Not a number (and a bool, which would be taken as 1 or 0 seconds): the project's
    BadArgError, as for NaN, never a bare TypeError nor a context of 1 s."""
    root = Context.background(FakeClock())
    with pytest.raises(errors.BadArgError, match="must be a number"):
        root.with_timeout(bad)
    with pytest.raises(errors.BadArgError, match="must be a number"):
        root.with_deadline(bad)


def test_timeouts_and_deadlines_take_ints_and_floats() -> None:
    clock = FakeClock(100.0)
    root = Context.background(clock)
    assert root.with_timeout(5).deadline == 105.0
    assert root.with_deadline(7).deadline == 7.0
    assert root.with_timeout(10**400).deadline == float("inf")  # (beyond a float: never)
    assert root.with_timeout(-(10**400)).done()
    assert root.with_deadline(float("inf")).deadline == float("inf")


@pytest.mark.parametrize("bad", [float("nan"), "x", True, b"1"])
def test_wait_with_a_bad_timeout_is_a_bad_arg_at_once(bad: Any) -> None:
    """wait(NaN) once blocked for ever (every comparison with NaN is false) and wait("x")
    raised a bare TypeError: both are the BadArgError that with_timeout(NaN) raises."""
    ctx = Context.background().with_cancel()
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            ctx.wait(bad)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(2.0)
    blocked = waiter.is_alive()
    assert ctx.wait(0) is False and ctx.wait(0.0) is False  # (numbers still work)
    ctx.cancel()  # (also ends a wait that blocked, so that nothing outlives the test)
    waiter.join(2.0)
    assert not blocked
    assert raised and isinstance(raised[0], errors.BadArgError), raised
    assert ctx.wait(1) is True


def test_remaining_is_clamped_at_zero() -> None:
    clock = FakeClock(0.0)
    ctx = Context.background(clock).with_timeout(2.0)
    assert ctx.remaining() == 2.0
    clock.advance(1.5)
    assert ctx.remaining() == 0.5
    clock.advance(10)
    assert ctx.remaining() == 0.0


def test_deadline_passing_makes_done_with_timeout_and_fires_callbacks() -> None:
    clock = FakeClock(0.0)
    ctx = Context.background(clock).with_timeout(1.0)
    child = ctx.with_value("k", "v")
    got: list[errors.IPCError] = []
    got_child: list[errors.IPCError] = []
    ctx.add_done_callback(got.append)
    child.add_done_callback(got_child.append)
    clock.advance(0.999)
    assert not ctx.done() and ctx.err() is None and got == []
    clock.advance(0.001)
    err = ctx.err()
    assert isinstance(err, errors.TimeoutError)
    assert ctx.done() and ctx.wait(0) is True
    assert len(got) == 1 and isinstance(got[0], errors.TimeoutError)
    # The descendant got the ancestor's error through propagation.
    assert len(got_child) == 1 and isinstance(got_child[0], errors.TimeoutError)
    assert isinstance(child.err(), errors.TimeoutError)
    assert "done" in repr(ctx)


def test_negative_timeout_is_done_at_once() -> None:
    ctx = Context.background(FakeClock()).with_timeout(-1)
    assert ctx.done()
    assert isinstance(ctx.err(), errors.TimeoutError)


def test_child_of_done_parent_is_born_done() -> None:
    clock = FakeClock()
    parent = Context.background(clock).with_cancel()
    parent.cancel("gone")
    child = parent.with_timeout(100)
    err = child.err()
    assert isinstance(err, errors.CanceledError)
    assert err.msg == "gone"
    assert len(parent._children or ()) == 0


# -- cancellation ------------------------------------------------------------------------------


def test_cancel_propagates_down_never_up() -> None:
    root = Context.background(FakeClock())
    parent = root.with_cancel()
    child = parent.with_cancel()
    grandchild = child.with_value("k", 1).with_cancel()
    sibling = parent.with_cancel()
    child.cancel("stop")
    assert child.done() and grandchild.done()
    assert not parent.done() and not sibling.done()
    err = grandchild.err()
    assert isinstance(err, errors.CanceledError) and err.msg == "stop"
    parent.cancel()
    assert sibling.done()
    perr = parent.err()
    assert isinstance(perr, errors.CanceledError) and perr.msg == "context canceled"


def test_cancel_is_idempotent_and_first_error_sticks() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    calls: list[errors.IPCError] = []
    ctx.add_done_callback(calls.append)
    ctx.cancel("first")
    ctx.cancel("second")
    err = ctx.err()
    assert isinstance(err, errors.CanceledError) and err.msg == "first"
    assert len(calls) == 1


def test_err_returns_fresh_equal_copies() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    ctx.cancel("x")
    a, b = ctx.err(), ctx.err()
    assert a is not None and b is not None
    assert a is not b and a == b


def test_cancel_wins_over_an_unobserved_deadline() -> None:
    clock = FakeClock(0.0)
    ctx = Context.background(clock).with_timeout(1.0)
    clock.advance(5.0)  # the deadline passed, but nobody looked yet
    ctx.cancel("user")
    assert isinstance(ctx.err(), errors.CanceledError)


def test_observed_timeout_sticks_over_a_later_cancel() -> None:
    clock = FakeClock(0.0)
    ctx = Context.background(clock).with_timeout(1.0)
    clock.advance(5.0)
    assert ctx.done()
    ctx.cancel("late")
    assert isinstance(ctx.err(), errors.TimeoutError)


def test_context_manager_cancels_on_exit() -> None:
    with Context.background(FakeClock()).with_timeout(10) as ctx:
        assert isinstance(ctx, CancelContext)
        assert not ctx.done()
    assert isinstance(ctx.err(), errors.CanceledError)


# -- callbacks ----------------------------------------------------------------------------------


def test_callback_runs_once_with_the_error() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    got: list[errors.IPCError] = []
    ctx.add_done_callback(got.append)
    ctx.cancel("bye")
    ctx.cancel("again")
    assert len(got) == 1
    assert isinstance(got[0], errors.CanceledError) and got[0].msg == "bye"


def test_callback_on_done_context_runs_now_in_caller_thread() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    ctx.cancel()
    threads: list[threading.Thread] = []
    ctx.add_done_callback(lambda e: threads.append(threading.current_thread()))
    assert threads == [threading.current_thread()]


def test_removed_callback_does_not_run() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    got: list[str] = []
    h1 = ctx.add_done_callback(lambda e: got.append("one"))
    ctx.add_done_callback(lambda e: got.append("two"))
    assert ctx.remove_done_callback(h1) is True
    assert ctx.remove_done_callback(h1) is False
    ctx.cancel()
    assert got == ["two"]


def test_remove_after_run_returns_false() -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    h = ctx.add_done_callback(lambda e: None)
    ctx.cancel()
    assert ctx.remove_done_callback(h) is False


def test_raising_callback_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = Context.background(FakeClock()).with_cancel()
    got: list[str] = []

    def boom(e: errors.IPCError) -> None:
        raise RuntimeError("boom")

    ctx.add_done_callback(lambda e: got.append("before"))
    ctx.add_done_callback(boom)
    ctx.add_done_callback(lambda e: got.append("after"))
    with caplog.at_level(logging.ERROR, logger="ipcclient.context"):
        ctx.cancel()
    assert sorted(got) == ["after", "before"]
    assert any("raised" in r.getMessage() and r.exc_info for r in caplog.records)


def test_callbacks_run_outside_the_lock() -> None:
    """A callback may use the same context (the locks are not re-entrant)."""
    ctx = Context.background(FakeClock()).with_cancel()
    seen: list[Any] = []

    def reenter(e: errors.IPCError) -> None:
        seen.append(ctx.err())
        seen.append(ctx.with_cancel().done())
        ctx.add_done_callback(lambda e2: seen.append("nested"))
        seen.append(ctx.remove_done_callback(context_mod.CallbackHandle(-1)))

    ctx.add_done_callback(reenter)
    done = threading.Event()

    def run() -> None:
        ctx.cancel()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert done.wait(5), "cancel deadlocked: a callback ran under a lock"
    assert isinstance(seen[0], errors.CanceledError)
    assert seen[1:] == [True, "nested", False]


# -- garbage children do not leak ---------------------------------------------------------------


def test_parent_holds_children_weakly() -> None:
    parent = Context.background(FakeClock()).with_cancel()
    for _ in range(100):
        parent.with_cancel().with_value("k", 1)
    gc.collect()
    assert len(parent._children or ()) == 0
    kept = parent.with_cancel()
    assert len(parent._children or ()) == 1
    kept.cancel()  # a finished child unregisters at once
    assert len(parent._children or ()) == 0


def test_background_keeps_no_children() -> None:
    bg = Context.background()
    ctx = bg.with_cancel()
    assert len(bg._children or ()) == 0
    ctx.cancel()


# -- wait ---------------------------------------------------------------------------------------


def test_wait_times_out_on_a_live_context() -> None:
    ctx = Context.background().with_cancel()
    start = time.monotonic()
    assert ctx.wait(0.03) is False
    assert 0.02 <= time.monotonic() - start < 1.0
    ctx.cancel()
    assert ctx.wait(0) is True


def test_wait_wakes_at_once_on_cancel_from_another_thread() -> None:
    ctx = Context.background().with_cancel()
    cancelled_at: list[float] = []

    def cancel() -> None:
        cancelled_at.append(time.monotonic())
        ctx.cancel()

    timer = threading.Timer(0.02, cancel)
    timer.start()
    assert ctx.wait() is True
    woke = time.monotonic()
    timer.join()
    assert woke - cancelled_at[0] < 0.1  # woken by the event, not by the end of a 0.2 s slice


def test_wait_wakes_when_a_real_deadline_passes() -> None:
    ctx = Context.background().with_timeout(0.03)
    start = time.monotonic()
    assert ctx.wait(5) is True
    elapsed = time.monotonic() - start
    assert 0.02 <= elapsed < 0.5
    assert isinstance(ctx.err(), errors.TimeoutError)


def test_wait_on_fake_clock_sees_another_thread_advance() -> None:
    clock = FakeClock(0.0)
    ctx = Context.background(clock).with_timeout(1.0)

    def advance() -> None:
        clock.advance(2.0)
        ctx.done()  # anyone looking expires it, which wakes the waiter

    threading.Timer(0.02, advance).start()
    start = time.monotonic()
    assert ctx.wait(5) is True
    assert time.monotonic() - start < 0.3


# -- the shared timer thread --------------------------------------------------------------------


def test_timer_fires_done_callbacks_on_deadline() -> None:
    fired = threading.Event()
    got: list[errors.IPCError] = []

    def cb(e: errors.IPCError) -> None:
        got.append(e)
        fired.set()

    ctx = Context.background().with_timeout(0.03)
    ctx.add_done_callback(cb)
    # Nobody looks at ctx: only the timer thread can fire the callback.
    assert fired.wait(2.0)
    assert len(got) == 1 and isinstance(got[0], errors.TimeoutError)
    assert timer_threads()[0] is context_mod._TIMER.thread()
    assert ctx._err is not None


def test_an_interrupt_in_one_callback_leaves_the_others_to_run() -> None:
    """Ctrl-C landing in a done-callback ended the run: the callbacks after it never ran
    (they are gone from the context, which is done), a call's cancellation among them."""
    ctx = Context.background(FakeClock()).with_cancel()
    got: list[str] = []

    def interrupted(e: errors.IPCError) -> None:
        raise KeyboardInterrupt

    ctx.add_done_callback(lambda e: got.append("before"))
    ctx.add_done_callback(interrupted)
    ctx.add_done_callback(lambda e: got.append("after"))
    with pytest.raises(KeyboardInterrupt):
        ctx.cancel()
    assert sorted(got) == ["after", "before"]


def _fires(ctx: Context) -> bool:
    fired = threading.Event()
    ctx.add_done_callback(lambda e: fired.set())
    return fired.wait(2.0)


def test_the_timer_outlives_a_callback_that_exits(caplog: pytest.LogCaptureFixture) -> None:
    """A done-callback raising SystemExit ended the timer thread: no deadline of the
    process fired its callbacks again (only when someone asked the context)."""

    def exits(e: errors.IPCError) -> None:
        raise SystemExit(3)

    with caplog.at_level(logging.ERROR, logger="ipcclient.context"):
        doomed = Context.background().with_timeout(0.01)
        doomed.add_done_callback(exits)
        assert _fires(doomed)  # (the callback after it, in the same run)
        assert _fires(Context.background().with_timeout(0.01))
    assert timer_threads() == [context_mod._TIMER.thread()]


@pytest.mark.interpreted  # (replaces the module's timer at run time)
def test_a_timer_thread_that_could_not_start_is_started_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed start left an unstarted thread as the timer's for good (no deadline fired
    its callbacks again), and the context's caller got a bare RuntimeError."""
    from tests.conftest import refuse_threads

    fresh = context_mod._Timer()
    monkeypatch.setattr(context_mod, "_TIMER", fresh)
    got: list[errors.IPCError] = []
    with pytest.MonkeyPatch.context() as refused:
        refuse_threads(refused, "ipcclient-context-timer")
        with caplog.at_level(logging.WARNING, logger="ipcclient.context"):
            late = Context.background().with_timeout(0.01)
            late.add_done_callback(got.append)  # (no thread: logged, not raised)
    assert any("no timer thread" in r.getMessage() for r in caplog.records)
    assert fresh.thread() is None
    assert _fires(Context.background().with_timeout(0.01))  # (started now)
    assert len(got) == 1 and isinstance(got[0], errors.TimeoutError)  # (fired with it)
    thread = fresh.thread()
    assert thread is not None
    thread.name = "ipcclient-context-timer (a test's, idle)"  # (not the process's timer)


def test_timer_thread_count_stays_one() -> None:
    Context.background().with_timeout(0.001).add_done_callback(noop)  # make sure it started
    ctxs = [Context.background().with_timeout(30 + i * 0.001) for i in range(300)]
    ctxs += [c.with_timeout(10) for c in ctxs[:50]]
    for c in ctxs:
        c.add_done_callback(noop)
    assert len(timer_threads()) == 1
    thread = timer_threads()[0]
    assert thread.daemon
    for c in ctxs:
        c.cancel()
    assert timer_threads() == [thread]


def test_timer_heap_is_compacted() -> None:
    for _ in range(3 * context_mod._TIMER_COMPACT_MIN):
        ctx = Context.background().with_timeout(3600)
        ctx.add_done_callback(noop)
        ctx.cancel()
    # Cancelled entries are dropped as the heap grows; it never holds all 3072 of them.
    assert context_mod._TIMER.pending() < 2 * context_mod._TIMER_COMPACT_MIN + 1


def noop(_err: errors.IPCError) -> None:
    return None


def test_only_contexts_with_done_callbacks_are_put_on_the_timer() -> None:
    before = context_mod._TIMER.pending()
    parent = Context.background().with_timeout(3600)
    children = [parent.with_timeout(7200) for _ in range(10)]  # (the parent's deadline)
    assert context_mod._TIMER.pending() == before  # nobody needs the timer yet
    fired: list[errors.IPCError] = []
    child = parent.with_timeout(0.05)
    child.add_done_callback(fired.append)
    assert context_mod._TIMER.pending() == before + 1
    child.add_done_callback(fired.append)  # armed once
    assert context_mod._TIMER.pending() == before + 1
    deadline = time.monotonic() + 5
    while len(fired) < 2 and time.monotonic() < deadline:  # nobody looks: the timer fires
        time.sleep(0.01)
    assert [type(e) for e in fired] == [errors.TimeoutError, errors.TimeoutError]
    assert not parent.done() and not any(c.done() for c in children)
    late = parent.with_timeout(0.01)
    time.sleep(0.02)  # its deadline passed before the callback came: it runs at once
    got: list[errors.IPCError] = []
    late.add_done_callback(got.append)
    assert [type(e) for e in got] == [errors.TimeoutError]


def test_fake_clock_contexts_are_not_scheduled_on_the_timer() -> None:
    before = context_mod._TIMER.pending()
    ctxs = [Context.background(FakeClock()).with_timeout(0.001) for _ in range(20)]
    assert context_mod._TIMER.pending() == before
    assert all(not c.done() for c in ctxs)


def test_child_with_later_deadline_is_not_scheduled() -> None:
    parent = Context.background().with_timeout(3600)
    before = context_mod._TIMER.pending()
    child = parent.with_timeout(7200)
    assert context_mod._TIMER.pending() == before
    parent.cancel()
    assert child.done()


def test_timer_is_recreated_after_fork() -> None:
    Context.background().with_timeout(0.001).wait(1)
    parent_thread = context_mod._TIMER.thread()
    assert parent_thread is not None and parent_thread.is_alive()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fired = threading.Event()
            ctx = Context.background().with_timeout(0.02)
            ctx.add_done_callback(lambda e: fired.set())
            ok = fired.wait(2.0) and len(timer_threads()) == 1
            ok = ok and context_mod._TIMER.thread() is not parent_thread
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# -- thread safety ------------------------------------------------------------------------------


def test_concurrent_derive_cancel_and_callbacks_run_each_callback_once() -> None:
    root = Context.background().with_cancel()
    lock = threading.Lock()
    counts: Counter[int] = Counter()
    registered: set[int] = set()
    removed: set[int] = set()
    contexts: list[Context] = [root]
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def make_cb(key: int) -> Any:
        def cb(e: errors.IPCError) -> None:
            assert isinstance(e, errors.CanceledError)
            with lock:
                counts[key] += 1

        return cb

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for i in range(200):
                with lock:
                    target = rng.choice(contexts)
                op = rng.randrange(5)
                if op == 0:
                    child: Context = target.with_cancel()
                elif op == 1:
                    child = target.with_value(i, seed)
                elif op == 2:
                    child = target.with_timeout(60)
                elif op == 3:
                    key = seed * 1000 + i
                    handle = target.add_done_callback(make_cb(key))
                    with lock:
                        registered.add(key)
                    if rng.random() < 0.2 and target.remove_done_callback(handle):
                        with lock:
                            removed.add(key)
                    continue
                else:
                    if isinstance(target, CancelContext) and target is not root:
                        target.cancel()
                    continue
                with lock:
                    contexts.append(child)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not failures
    root.cancel()
    assert all(c.done() for c in contexts)
    expected = registered - removed
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values())
    assert len(expected) > 100


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("timeout"), st.floats(-5, 100, allow_nan=False)),
            st.tuples(st.just("cancel"), st.none()),
            st.tuples(st.just("value"), st.integers()),
        ),
        max_size=12,
    ),
    advance=st.floats(0, 120, allow_nan=False),
)
def test_chain_deadline_is_min_and_done_matches_clock(
    steps: list[tuple[str, Any]], advance: float
) -> None:
    clock = FakeClock(0.0)
    ctx: Context = Context.background(clock)
    expected: float | None = None
    for kind, arg in steps:
        if kind == "timeout":
            ctx = ctx.with_timeout(arg)
            expected = arg if expected is None else min(expected, arg)
        elif kind == "cancel":
            ctx = ctx.with_cancel()
        else:
            ctx = ctx.with_value("k", arg)
        assert ctx.deadline == expected
    clock.advance(advance)
    should_be_done = expected is not None and advance >= expected
    assert ctx.done() == should_be_done
    assert (ctx.err() is not None) == should_be_done
    if expected is not None:
        assert ctx.remaining() == max(0.0, expected - advance)


class ContextTreeMachine(RuleBasedStateMachine):
    """A random tree of cancellable contexts against a model of "cancelled ancestors"."""

    nodes = Bundle("nodes")

    def __init__(self) -> None:
        super().__init__()
        self.root = Context.background(FakeClock()).with_cancel()
        self.parent_of: dict[int, int | None] = {id(self.root): None}
        self.cancelled: set[int] = set()
        self.keep: list[Context] = [self.root]
        self.calls: Counter[int] = Counter()
        self.expect_calls: dict[int, int] = {}

    @rule(target=nodes)
    def root_node(self) -> Context:
        return self.root

    @rule(target=nodes, parent=nodes, as_value=st.booleans())
    def derive(self, parent: Context, as_value: bool) -> Context:
        child = parent.with_value("v", 1) if as_value else parent.with_cancel()
        self.parent_of[id(child)] = id(parent)
        self.keep.append(child)
        return child

    @rule(node=nodes)
    def cancel(self, node: Context) -> None:
        if isinstance(node, CancelContext):
            node.cancel()
            self.cancelled.add(id(node))

    @rule(node=nodes)
    def add_callback(self, node: Context) -> None:
        key = len(self.expect_calls)
        self.expect_calls[key] = id(node)

        def cb(e: errors.IPCError) -> None:
            self.calls[key] += 1

        node.add_done_callback(cb)

    @rule(node=consumes(nodes))
    def forget(self, node: Context) -> None:
        """Dropping a bundle entry must not change anything (the model keeps a ref)."""

    def model_done(self, node_id: int) -> bool:
        cur: int | None = node_id
        while cur is not None:
            if cur in self.cancelled:
                return True
            cur = self.parent_of[cur]
        return False

    @invariant()
    def done_matches_model(self) -> None:
        for node in self.keep:
            assert node.done() == self.model_done(id(node))

    @invariant()
    def callbacks_ran_once_iff_done(self) -> None:
        for key, node_id in self.expect_calls.items():
            assert self.calls[key] == (1 if self.model_done(node_id) else 0)


ContextTreeMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestContextTree = ContextTreeMachine.TestCase


def test_module_exports() -> None:
    assert set(context_mod.__all__) <= set(dir(context_mod))
    assert context_mod.WAIT_SLICE <= 0.2  # Ctrl-C is seen within a slice


def test_a_callback_fires_on_an_ancestors_earlier_deadline() -> None:
    parent = Context.background().with_timeout(0.05)  # (no callback: never on the timer)
    child = parent.with_value("k", 1).with_timeout(3600)
    fired = threading.Event()
    child.add_done_callback(lambda err: fired.set())
    assert fired.wait(5)
    assert isinstance(child.err(), errors.TimeoutError)


def test_cancel_while_children_die_in_another_thread() -> None:
    """Children that die (their weakrefs drop them from the parent's table, from the thread
    that frees them) while the parent is being cancelled: the cancel completes, its callback
    runs and every live child is done."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(3):
            parent = Context.background().with_cancel()
            kids = [parent.with_cancel() for _ in range(20_000)]
            keep = kids[1::2]
            seen: list[errors.IPCError] = []
            parent.add_done_callback(seen.append)
            go = threading.Event()

            def drop(go: threading.Event = go, kids: list[Context] = kids) -> None:
                go.wait()
                while kids:
                    kids.pop()

            dropper = threading.Thread(target=drop)
            dropper.start()
            go.set()
            parent.cancel("gone")
            dropper.join(10)
            assert len(seen) == 1
            assert all(kid.done() for kid in keep)
    finally:
        sys.setswitchinterval(old)
