"""Tests for ipcclient.retry: backoff bounds, the retry decision table, the retry loop."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import errors
from ipcclient import retry as retry_mod
from ipcclient.context import Context
from ipcclient.errors import RetryAction
from ipcclient.retry import (
    DEFAULT_POLICY,
    DEFAULT_RETRY_WINDOW,
    MAX_BACKOFF,
    BackoffKind,
    BackoffPolicy,
    RetryBudget,
    RetryPhase,
    backoff_delay,
    retry_deadline,
    run_with_retries,
    should_retry,
)

EPS = 1e-9


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now


def const(r: float) -> Callable[[], float]:
    return lambda: r


# -- BackoffPolicy ------------------------------------------------------------------------------


def test_the_two_policies() -> None:
    seed = BackoffPolicy.seed_2014()
    assert (seed.kind, seed.base, seed.jitter, seed.max_backoff, seed.reserve) == (
        BackoffKind.POWER,
        1.5,
        0.5,
        60.0,
        0.001,
    )
    van = BackoffPolicy.vanadium()
    assert (van.kind, van.base, van.jitter, van.multiplier, van.max_backoff, van.reserve) == (
        BackoffKind.EXPONENTIAL,
        0.1,
        0.1,
        2.0,
        60.0,
        0.1,
    )
    assert DEFAULT_POLICY == van == BackoffPolicy()
    assert BackoffPolicy.vanadium(reserve=0.001).reserve == 0.001
    assert MAX_BACKOFF == 60.0


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICY.base = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -0.1},
        {"jitter": math.nan},
        {"max_backoff": math.inf},
        {"reserve": -1},
        {"multiplier": 0.5},
        {"kind": BackoffKind.POWER, "base": 0.9},
    ],
)
def test_policy_rejects_bad_fields(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.BadArgError):
        BackoffPolicy(**kwargs)


# -- backoff_delay: exact values ----------------------------------------------------------------


def test_vanadium_formula_values() -> None:
    p = BackoffPolicy.vanadium()
    inf = math.inf
    assert backoff_delay(p, 1, inf, const(0.0)) == pytest.approx(0.1)
    assert backoff_delay(p, 1, inf, const(0.5)) == pytest.approx(0.15)
    assert backoff_delay(p, 2, inf, const(0.0)) == pytest.approx(0.2)
    assert backoff_delay(p, 4, inf, const(0.999)) == pytest.approx(0.1999 * 8)
    assert backoff_delay(p, 20, inf, const(0.0)) == 60.0


def test_seed_formula_values() -> None:
    p = BackoffPolicy.seed_2014()
    inf = math.inf
    assert backoff_delay(p, 1, inf, const(0.0)) == pytest.approx(1.5)
    assert backoff_delay(p, 1, inf, const(1.0)) == pytest.approx(2.0)
    assert backoff_delay(p, 2, inf, const(1.0)) == pytest.approx(4.0)
    assert backoff_delay(p, 3, inf, const(0.0)) == pytest.approx(3.375)
    assert backoff_delay(p, 11, inf, const(0.0)) == 60.0


def test_clamp_to_deadline_and_give_up() -> None:
    p = BackoffPolicy.vanadium(reserve=0.001)
    assert backoff_delay(p, 5, 0.5, const(0.0)) == pytest.approx(0.499)
    assert backoff_delay(p, 1, 0.0011, const(0.0)) == pytest.approx(0.0001)
    assert backoff_delay(p, 1, 0.001, const(0.0)) is None
    assert backoff_delay(p, 1, -3.0, const(0.0)) is None
    assert backoff_delay(p, 1, math.nan, const(0.0)) is None


def test_huge_attempt_does_not_overflow() -> None:
    for p in (BackoffPolicy.vanadium(), BackoffPolicy.seed_2014()):
        assert backoff_delay(p, 10**6, math.inf, const(0.5)) == 60.0


def test_bad_rand_values_are_clamped() -> None:
    p = BackoffPolicy.vanadium()
    assert backoff_delay(p, 1, math.inf, const(7.0)) == pytest.approx(0.2)
    assert backoff_delay(p, 1, math.inf, const(-7.0)) == pytest.approx(0.1)
    assert backoff_delay(p, 1, math.inf, const(math.nan)) == pytest.approx(0.1)


def test_attempt_must_be_positive() -> None:
    with pytest.raises(errors.BadArgError):
        backoff_delay(DEFAULT_POLICY, 0, 10.0, const(0.0))


# -- backoff_delay: properties ------------------------------------------------------------------

finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
policies = st.one_of(
    st.just(BackoffPolicy.seed_2014()),
    st.just(BackoffPolicy.vanadium()),
    st.builds(
        BackoffPolicy,
        kind=st.just(BackoffKind.EXPONENTIAL),
        base=finite,
        jitter=finite,
        multiplier=st.floats(1, 100),
        max_backoff=finite,
        reserve=st.floats(0, 10),
    ),
    st.builds(
        BackoffPolicy,
        kind=st.just(BackoffKind.POWER),
        base=st.floats(1, 100),
        jitter=finite,
        max_backoff=finite,
        reserve=st.floats(0, 10),
    ),
)
remainings = st.one_of(st.floats(min_value=-100, max_value=1e7, allow_nan=False), st.just(math.inf))
rands = st.floats(min_value=0, max_value=1, exclude_max=True)


@settings(max_examples=500)
@given(policy=policies, attempt=st.integers(1, 5000), remaining=remainings, r=rands)
def test_delay_bounds(policy: BackoffPolicy, attempt: int, remaining: float, r: float) -> None:
    delay = backoff_delay(policy, attempt, remaining, const(r))
    if remaining <= policy.reserve:
        assert delay is None
        return
    assert delay is not None
    assert delay >= 0
    assert delay <= policy.max_backoff
    assert delay <= remaining - policy.reserve


@settings(max_examples=300)
@given(policy=policies, r=rands, remaining=remainings)
def test_delay_is_monotone_in_attempt_for_fixed_rand(
    policy: BackoffPolicy, r: float, remaining: float
) -> None:
    delays = [backoff_delay(policy, n, remaining, const(r)) for n in range(1, 40)]
    if remaining <= policy.reserve:
        assert all(d is None for d in delays)
        return
    values = [d for d in delays if d is not None]
    assert len(values) == len(delays)
    assert all(a <= b + EPS * max(1.0, b) for a, b in itertools.pairwise(values))


@settings(max_examples=200)
@given(attempt=st.integers(1, 12), r=rands)
def test_vanadium_delay_is_in_its_random_window(attempt: int, r: float) -> None:
    delay = backoff_delay(BackoffPolicy.vanadium(), attempt, math.inf, const(r))
    assert delay is not None
    low, high = 0.1 * 2 ** (attempt - 1), 0.2 * 2 ** (attempt - 1)
    assert min(low, 60.0) - EPS <= delay <= min(high, 60.0) + EPS


# -- should_retry -------------------------------------------------------------------------------

DECISIONS = {
    (RetryAction.NO_RETRY, RetryPhase.BEFORE_SEND): False,
    (RetryAction.RETRY_CONNECTION, RetryPhase.BEFORE_SEND): True,
    (RetryAction.RETRY_REFETCH, RetryPhase.BEFORE_SEND): True,
    (RetryAction.RETRY_BACKOFF, RetryPhase.BEFORE_SEND): True,
    (RetryAction.NO_RETRY, RetryPhase.AFTER_SEND): False,
    (RetryAction.RETRY_CONNECTION, RetryPhase.AFTER_SEND): False,
    (RetryAction.RETRY_REFETCH, RetryPhase.AFTER_SEND): False,
    (RetryAction.RETRY_BACKOFF, RetryPhase.AFTER_SEND): True,
}


@pytest.mark.parametrize(("action", "phase"), list(DECISIONS))
def test_decision_table(action: RetryAction, phase: RetryPhase) -> None:
    err = errors.IPCError("x", action=action)
    assert should_retry(err, phase) is DECISIONS[action, phase]
    assert should_retry(err, phase, no_retry=True) is False


def test_decision_follows_action_not_class() -> None:
    # A NoAccess the server marked RETRY_BACKOFF is retried; an Overloaded marked NO_RETRY not.
    assert should_retry(
        errors.NoAccessError(action=RetryAction.RETRY_BACKOFF), RetryPhase.AFTER_SEND
    )
    assert not should_retry(
        errors.OverloadedError(action=RetryAction.NO_RETRY), RetryPhase.BEFORE_SEND
    )
    assert should_retry(errors.ConnectionFailedError(), RetryPhase.BEFORE_SEND)
    assert not should_retry(errors.ConnectionFailedError(), RetryPhase.AFTER_SEND)


@settings(max_examples=300)
@given(
    action=st.sampled_from(RetryAction),
    phase=st.sampled_from(RetryPhase),
    no_retry=st.booleans(),
    msg1=st.text(),
    msg2=st.one_of(
        st.text(), st.sampled_from(["not authorized", "ipc: Resolve failed", "errno 111"])
    ),
    id_=st.sampled_from([e.value for e in errors.ErrorID] + ["peer.Custom"]),
)
def test_message_text_never_changes_the_decision(
    action: RetryAction, phase: RetryPhase, no_retry: bool, msg1: str, msg2: str, id_: str
) -> None:
    a = errors.IPCError(msg1, action=action)
    b = errors.IPCError(msg2, "param", id=id_, action=action)
    assert should_retry(a, phase, no_retry=no_retry) == should_retry(b, phase, no_retry=no_retry)


# -- retry_deadline -----------------------------------------------------------------------------


def test_retry_deadline_rules() -> None:
    clock = FakeClock(100.0)
    ctx = Context.background(clock).with_timeout(5)
    assert retry_deadline(ctx, clock=clock.monotonic) == 105.0
    assert retry_deadline(ctx, retry_timeout=2, clock=clock.monotonic) == 102.0
    assert retry_deadline(clock=clock.monotonic) == 100.0 + DEFAULT_RETRY_WINDOW
    assert retry_deadline(Context.background(clock), clock=clock.monotonic) == 160.0
    before = time.monotonic()
    assert before + 59 < retry_deadline() <= time.monotonic() + 60


# -- run_with_retries: scripted -----------------------------------------------------------------


@dataclass
class Harness:
    """A fake clock, a sleep that advances it, and a script of attempt outcomes."""

    script: list[Any]
    attempt_cost: float = 0.0
    now: float = 0.0
    sleeps: list[tuple[float, float]] = field(default_factory=list)  # (start, delay)
    attempts: list[tuple[int, float]] = field(default_factory=list)  # (n, time after)

    def clock(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        assert delay >= 0
        self.sleeps.append((self.now, delay))
        self.now += delay

    def attempt(self, n: int) -> Any:
        self.now += self.attempt_cost
        self.attempts.append((n, self.now))
        outcome = self.script[min(n - 1, len(self.script) - 1)]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def run(self, **kwargs: Any) -> Any:
        kwargs.setdefault("deadline", 60.0)
        kwargs.setdefault("phase", RetryPhase.BEFORE_SEND)
        return run_with_retries(
            self.attempt, clock=self.clock, sleep=self.sleep, rand=const(0.5), **kwargs
        )


def test_returns_first_success() -> None:
    h = Harness([errors.NoServersError("a"), errors.ConnectionFailedError("b"), "ok", "later"])
    assert h.run() == "ok"
    assert [n for n, _ in h.attempts] == [1, 2, 3]
    assert [d for _, d in h.sleeps] == pytest.approx([0.15, 0.3])


def test_success_on_first_attempt_never_sleeps() -> None:
    h = Harness([42])
    assert h.run() == 42
    assert h.sleeps == []


def test_no_retry_error_is_raised_as_is() -> None:
    err = errors.NoAccessError("denied")
    h = Harness([err, "ok"])
    with pytest.raises(errors.NoAccessError) as info:
        h.run()
    assert info.value is err
    assert len(h.attempts) == 1


def test_no_retry_option_stops_retries() -> None:
    h = Harness([errors.OverloadedError("busy"), "ok"])
    with pytest.raises(errors.OverloadedError):
        h.run(no_retry=True, phase=RetryPhase.AFTER_SEND)
    assert len(h.attempts) == 1


def test_after_send_only_retries_backoff() -> None:
    h = Harness([errors.ConnectionFailedError("vc broke"), "ok"])
    with pytest.raises(errors.ConnectionFailedError):
        h.run(phase=RetryPhase.AFTER_SEND)
    assert len(h.attempts) == 1
    h2 = Harness([errors.OverloadedError("busy"), "ok"])
    assert h2.run(phase=RetryPhase.AFTER_SEND) == "ok"
    assert len(h2.attempts) == 2


def test_gives_up_at_the_deadline_with_the_last_error_and_tried() -> None:
    h = Harness([errors.NoServersError("first"), errors.NoServersError("last")])
    with pytest.raises(errors.NoServersError) as info:
        h.run(deadline=1.0)
    assert info.value.msg == "last"
    assert info.value.tried == tuple(
        f"attempt {n}: ipc.NoServers" for n in range(1, len(h.attempts) + 1)
    )
    assert len(h.attempts) > 2
    assert info.value.__traceback__ is not None
    # Never slept past deadline - reserve, and stopped because the window was used up.
    for start, delay in h.sleeps:
        assert start + delay <= 1.0 - DEFAULT_POLICY.reserve + EPS
    assert 1.0 - h.now <= DEFAULT_POLICY.reserve + EPS


def test_max_attempts_bounds_the_loop() -> None:
    h = Harness([errors.NoServersError("x")])
    with pytest.raises(errors.NoServersError) as info:
        h.run(max_attempts=3)
    assert len(h.attempts) == 3
    assert len(info.value.tried) == 3
    with pytest.raises(errors.BadArgError):
        h.run(max_attempts=0)


def test_other_exceptions_propagate_at_once() -> None:
    h = Harness([KeyError("bug"), "ok"])
    with pytest.raises(KeyError):
        h.run()
    assert len(h.attempts) == 1


def test_cancelled_context_stops_the_loop() -> None:
    clock = FakeClock()
    ctx = Context.background(clock).with_cancel()
    calls: list[int] = []

    def attempt(n: int) -> str:
        calls.append(n)
        raise errors.NoServersError("not yet")

    def sleep(delay: float) -> bool:
        clock.now += delay
        if len(calls) == 2:
            ctx.cancel("user gave up")
        return ctx.done()

    with pytest.raises(errors.CanceledError) as info:
        run_with_retries(attempt, deadline=60.0, phase=RetryPhase.BEFORE_SEND, ctx=ctx, sleep=sleep)
    assert calls == [1, 2]
    assert info.value.msg == "user gave up"
    assert isinstance(info.value.__cause__, errors.NoServersError)
    assert len(info.value.tried) == 2


def test_context_clock_is_the_default_clock() -> None:
    clock = FakeClock(500.0)
    ctx = Context.background(clock).with_timeout(1.0)
    assert ctx.deadline is not None
    calls: list[float] = []

    def attempt(n: int) -> str:
        calls.append(clock.now)
        raise errors.NoServersError("x")

    def sleep(delay: float) -> None:
        clock.now += delay

    with pytest.raises(errors.NoServersError):
        run_with_retries(
            attempt, deadline=ctx.deadline, phase=RetryPhase.BEFORE_SEND, ctx=ctx, sleep=sleep
        )
    assert calls[0] == 500.0
    assert 500.0 < calls[-1] <= 501.0 - DEFAULT_POLICY.reserve + EPS


def test_context_wait_is_the_default_interruptible_sleep() -> None:
    ctx = Context.background().with_cancel()
    policy = BackoffPolicy(base=30.0, jitter=0.0)  # a 30 s sleep, cut short by cancel
    threading.Timer(0.02, ctx.cancel, args=("stop",)).start()
    start = time.monotonic()
    with pytest.raises(errors.CanceledError):
        run_with_retries(
            lambda n: (_ for _ in ()).throw(errors.NoServersError("x")),
            deadline=time.monotonic() + 60,
            phase=RetryPhase.BEFORE_SEND,
            policy=policy,
            ctx=ctx,
        )
    assert time.monotonic() - start < 1.0


def test_defaults_without_context_use_real_time() -> None:
    outcomes: list[Any] = [errors.ConnectionFailedError("x"), "ok"]
    policy = BackoffPolicy(base=0.001, jitter=0.0, reserve=0.0)
    result = run_with_retries(
        lambda n: _pop(outcomes),
        deadline=time.monotonic() + 5,
        phase=RetryPhase.BEFORE_SEND,
        policy=policy,
    )
    assert result == "ok"


def _pop(outcomes: list[Any]) -> Any:
    outcome = outcomes.pop(0)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# -- run_with_retries: properties against a fake clock -------------------------------------------

actions = st.sampled_from(RetryAction)
outcome_st = st.one_of(
    st.builds(lambda a, m: errors.IPCError(m, action=a), actions, st.text(max_size=5)),
    st.integers().map(lambda i: ("ok", i)),
)


@settings(max_examples=400, deadline=None)
@given(
    script=st.lists(outcome_st, min_size=1, max_size=30),
    policy=st.sampled_from(
        [BackoffPolicy.vanadium(), BackoffPolicy.seed_2014(), BackoffPolicy.vanadium(reserve=0)]
    ),
    phase=st.sampled_from(RetryPhase),
    no_retry=st.booleans(),
    deadline=st.floats(0, 300),
    cost=st.floats(0, 5),
    r=rands,
    max_attempts=st.one_of(st.none(), st.integers(1, 10)),
)
def test_retry_loop_properties(
    script: list[Any],
    policy: BackoffPolicy,
    phase: RetryPhase,
    no_retry: bool,
    deadline: float,
    cost: float,
    r: float,
    max_attempts: int | None,
) -> None:
    # Make the script total: after it ends, the last outcome repeats.
    h = Harness(script, attempt_cost=cost)
    raised: errors.IPCError | None = None
    result: Any = None
    try:
        result = run_with_retries(
            h.attempt,
            deadline=deadline,
            phase=phase,
            policy=policy,
            no_retry=no_retry,
            max_attempts=max_attempts,
            clock=h.clock,
            sleep=h.sleep,
            rand=const(r),
        )
    except errors.IPCError as exc:
        raised = exc
    k = len(h.attempts)
    outcomes = [script[min(i, len(script) - 1)] for i in range(k)]
    assert [n for n, _ in h.attempts] == list(range(1, k + 1))
    assert len(h.sleeps) == k - 1
    # Never sleeps past deadline - reserve.
    for start, delay in h.sleeps:
        assert start + delay <= deadline - policy.reserve + EPS * max(1.0, deadline)
    # Every retried outcome was an error the phase allows retrying.
    for outcome in outcomes[:-1]:
        assert isinstance(outcome, errors.IPCError)
        assert should_retry(outcome, phase, no_retry=no_retry)
        if phase is RetryPhase.AFTER_SEND:
            assert outcome.action is RetryAction.RETRY_BACKOFF
        assert outcome.action is not RetryAction.NO_RETRY
    if max_attempts is not None:
        assert k <= max_attempts
    last = outcomes[-1]
    if raised is None:
        assert result == last and not isinstance(last, errors.IPCError)
        return
    # Gave up: on the last outcome, and exactly when it had to.
    assert isinstance(last, errors.IPCError) and raised == last
    must_stop = (
        not should_retry(last, phase, no_retry=no_retry)
        or (max_attempts is not None and k >= max_attempts)
        or deadline - h.attempts[-1][1] <= policy.reserve
        or (  # the previous sleep used the window up to deadline - reserve
            h.sleeps and sum(h.sleeps[-1]) >= deadline - policy.reserve - EPS * max(1.0, deadline)
        )
    )
    assert must_stop
    if k > 1:
        assert len(raised.tried) == k


def test_reserve_zero_still_stops_at_the_deadline() -> None:
    """With reserve 0 and attempts that take time, the loop still ends at the deadline."""
    h = Harness([errors.NoServersError("x")], attempt_cost=0.25)
    with pytest.raises(errors.NoServersError):
        h.run(deadline=1.0, policy=BackoffPolicy.vanadium(reserve=0.0))
    assert h.now >= 1.0
    # Attempts end at 0.25, 0.65 (after 0.15 s), 1.2 (after 0.3 s): past the deadline, stop.
    assert [t for _, t in h.attempts] == pytest.approx([0.25, 0.65, 1.2])


def test_module_all_is_exported() -> None:
    assert set(retry_mod.__all__) <= set(dir(retry_mod))
    assert "run_with_retries" in retry_mod.__all__


# -- RetryBudget ----------------------------------------------------------------------------------


def test_budget_reserve_allows_min_retries_per_ttl() -> None:
    clock = FakeClock()
    budget = RetryBudget(ttl=10, min_retries_per_sec=1, percent_can_retry=0, clock=clock.monotonic)
    assert budget.balance() == 10
    assert all(budget.try_withdraw() for _ in range(10))
    assert budget.try_withdraw() is False
    clock.now += 10.0  # the whole window slides past the withdrawals
    assert budget.try_withdraw() is True


def test_budget_deposits_earn_a_fraction_of_a_retry() -> None:
    clock = FakeClock()
    budget = RetryBudget(ttl=1, min_retries_per_sec=0, percent_can_retry=0.2, clock=clock.monotonic)
    for _ in range(10):
        budget.deposit()
    assert budget.balance() == pytest.approx(2.0)
    assert budget.try_withdraw() and budget.try_withdraw()
    assert budget.try_withdraw() is False
    clock.now += 1.0  # deposits expire with the window too
    assert budget.balance() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl": math.inf},
        {"min_retries_per_sec": -1},
        {"percent_can_retry": -0.1},
        {"buckets": 0},
    ],
)
def test_budget_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.BadArgError):
        RetryBudget(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.just(("deposit", 0.0)),
            st.just(("withdraw", 0.0)),
            st.tuples(st.just("advance"), st.floats(0, 3)),
        ),
        max_size=80,
    ),
    reserve_rate=st.sampled_from([0.0, 0.1, 0.5]),
    percent=st.sampled_from([0.0, 0.2, 1.0]),
)
def test_budget_matches_a_windowed_model(
    ops: list[tuple[str, float]], reserve_rate: float, percent: float
) -> None:
    clock = FakeClock()
    ttl, buckets = 2.0, 4
    budget = RetryBudget(
        ttl=ttl,
        min_retries_per_sec=reserve_rate,
        percent_can_retry=percent,
        buckets=buckets,
        clock=clock.monotonic,
    )
    events: list[tuple[int, str]] = []  # (slot, kind)
    for kind, amount in ops:
        if kind == "advance":
            clock.now += amount
            continue
        slot = math.floor(clock.now / (ttl / buckets))
        live = [k for s, k in events if s > slot - buckets]
        balance = reserve_rate * ttl + percent * live.count("deposit") - live.count("withdraw")
        if kind == "deposit":
            budget.deposit()
            events.append((slot, "deposit"))
        else:
            allowed = budget.try_withdraw()
            assert allowed == (balance >= 1)
            if allowed:
                events.append((slot, "withdraw"))
    slot = math.floor(clock.now / (ttl / buckets))
    live = [k for s, k in events if s > slot - buckets]
    expected = reserve_rate * ttl + percent * live.count("deposit") - live.count("withdraw")
    assert budget.balance() == pytest.approx(expected)
    assert len(budget._window) <= buckets


def test_empty_budget_stops_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(min_retries_per_sec=0, percent_can_retry=0.5, clock=clock.monotonic)
    h = Harness([errors.NoServersError("x"), errors.NoServersError("y"), "ok"])
    # One deposit earns half a token: not enough for a retry.
    with pytest.raises(errors.NoServersError):
        h.run(budget=budget)
    assert len(h.attempts) == 1
    # One more deposit (another call) and this call's own make 1.5 tokens: one retry only.
    budget.deposit()
    h2 = Harness([errors.NoServersError("x"), errors.NoServersError("y"), "ok"])
    with pytest.raises(errors.NoServersError) as info:
        h2.run(budget=budget)
    assert len(h2.attempts) == 2 and info.value.msg == "y"
    assert budget.balance() == pytest.approx(0.5)  # 3 deposits * 0.5 - 1 withdrawal


def test_first_error_starts_the_loop_from_a_failure_made_outside() -> None:
    from ipcclient.retry import RetryPhase, run_with_retries

    calls: list[int] = []
    now = [0.0]

    def attempt(n: int) -> str:
        calls.append(n)
        return "ok"

    first = errors.ConnectionFailedError("dial failed")
    out = run_with_retries(
        attempt,
        deadline=10.0,
        phase=RetryPhase.BEFORE_SEND,
        clock=lambda: now[0],
        sleep=lambda d: now.__setitem__(0, now[0] + d),
        rand=lambda: 0.5,
        first_error=first,
    )
    assert out == "ok"
    assert calls == [2]  # attempt 1 was the caller's; the loop backed off, then tried 2
    assert now[0] > 0
    with pytest.raises(errors.NoAccessError):
        run_with_retries(
            attempt,
            deadline=10.0,
            phase=RetryPhase.BEFORE_SEND,
            clock=lambda: now[0],
            sleep=lambda d: None,
            first_error=errors.NoAccessError("no"),
        )
    assert calls == [2]
