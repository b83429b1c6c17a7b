"""Busy polling (:mod:`ipcclient.transport.polling`): when a reader polls, the one polling
loop and its outcomes, and the process's polling slots."""

from __future__ import annotations

import math
import random
import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient.transport import polling
from ipcclient.transport.polling import PollState
from ipcclient.transport.readrole import Read


def test_polling_follows_only_a_quick_read_that_ended_on_a_record_boundary() -> None:
    state = PollState(0.001)
    assert not state.armed  # never before a first quick read
    state.after_read(quick=True, partial=False)
    assert state.armed
    state.after_read(quick=True, partial=True)  # a large message, or a trickling peer
    assert not state.armed
    state.after_read(quick=True, partial=False)
    state.after_read(quick=False, partial=False)  # a longer gap
    assert not state.armed


def test_quick_means_within_the_poll_length_of_going_idle() -> None:
    state = PollState(0.5)
    assert state.quick(10.0, 10.49)
    assert not state.quick(10.0, 10.5)
    assert not PollState(0.0).quick(10.0, 10.0)  # (off: nothing is quick)


class FakeSocket:
    """A socket whose non-blocking receives find nothing ``empty`` times, then ``payload``
    (or raise ``error``)."""

    def __init__(self, empty: int, payload: bytes = b"data", error: OSError | None = None) -> None:
        self.empty = empty
        self.payload = payload
        self.error = error
        self.calls = 0

    def recv_into(self, buf: bytearray, _n: int, flags: int) -> int:
        assert flags & socket.MSG_DONTWAIT
        self.calls += 1
        if self.calls <= self.empty:
            raise BlockingIOError
        if self.error is not None:
            raise self.error
        buf[: len(self.payload)] = self.payload
        return len(self.payload)


def _spin(state: PollState, sock: object, until: float, stop: Any = None) -> Read:
    return state.spin(sock, bytearray(64), until, stop)  # type: ignore[arg-type]


class Slots:
    """Counts the slots this test's polls hold (other VCs of the process may poll too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = 0
        take, give = polling.take_slot, polling.give_slot

        def counted_take() -> bool:
            ok = take()
            self.held += ok
            return ok

        def counted_give() -> None:
            self.held -= 1
            give()

        monkeypatch.setattr(polling, "take_slot", counted_take)
        monkeypatch.setattr(polling, "give_slot", counted_give)


@pytest.fixture(autouse=True)
def slots(monkeypatch: pytest.MonkeyPatch) -> Slots:
    monkeypatch.setattr(polling, "POLL_SLOTS", 10**6)  # (other VCs may poll meanwhile)
    return Slots(monkeypatch)


# (Counts the slot calls by replacing the module's functions: compiled callers do not look them up.)
@pytest.mark.interpreted
def test_a_poll_that_finds_data_counts_a_hit_and_keeps_the_rules_armed(slots: Slots) -> None:
    state = PollState(1.0)
    state.armed = True
    sock = FakeSocket(empty=3)
    held: list[int] = []

    def stop() -> bool:
        held.append(slots.held)
        return False

    assert _spin(state, sock, time.monotonic() + 10, stop) is Read.DATA
    assert sock.calls == 4 and held == [1] * 4  # a slot held while polling
    assert (state.got, state.hits, state.misses, state.armed) == (4, 1, 0, True)
    assert slots.held == 0  # and given back


def test_a_poll_that_finds_nothing_counts_a_miss_and_disarms() -> None:
    state = PollState(0.001)
    state.armed = True
    sock = FakeSocket(empty=10**9)
    assert _spin(state, sock, time.monotonic() + 0.002) is Read.MISSED
    assert sock.calls >= 1
    assert (state.hits, state.misses, state.armed) == (0, 1, False)


def test_on_a_real_socket_data_then_eof() -> None:
    state = PollState(1.0)
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(64)
        assert state.spin(a, buf, time.monotonic() + 0.002) is Read.MISSED
        b.sendall(b"hello")
        assert state.spin(a, buf, time.monotonic() + 10) is Read.DATA
        assert (bytes(buf[: state.got]), state.hits) == (b"hello", 1)
        b.close()
        assert state.spin(a, buf, time.monotonic() + 10) is Read.DATA
        assert (state.got, state.hits) == (0, 1)  # EOF: returned, not counted as a hit


# (Counts the slot calls by replacing the module's functions: compiled callers do not look them up.)
@pytest.mark.interpreted
def test_a_failed_receive_ends_the_poll_and_gives_the_slot_back(slots: Slots) -> None:
    state = PollState(1.0)
    sock = FakeSocket(empty=2, error=ConnectionResetError("reset by peer"))
    with pytest.raises(ConnectionResetError):
        _spin(state, sock, time.monotonic() + 10)
    assert slots.held == 0 and (state.hits, state.misses) == (0, 0)


def test_no_free_slot_means_no_poll_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(polling, "POLL_SLOTS", 0)
    state = PollState(1.0)
    sock = FakeSocket(empty=0)
    assert _spin(state, sock, time.monotonic() + 10) is Read.SKIPPED
    assert sock.calls == 0 and (state.hits, state.misses) == (0, 0)
    assert polling.take_slot() is False


def test_a_poll_stops_when_told_to() -> None:
    state = PollState(1.0)
    sock = FakeSocket(empty=10**9)
    stops = iter([False, False, True])
    assert _spin(state, sock, time.monotonic() + 10, lambda: next(stops)) is Read.STOPPED
    assert sock.calls == 2 and (state.hits, state.misses) == (0, 0)


def test_slots_are_limited_and_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(polling, "POLL_SLOTS", 0)
    assert not polling.take_slot()  # none free
    monkeypatch.setattr(polling, "POLL_SLOTS", 10**6)
    assert polling.take_slot()
    polling.give_slot()


# --- whether polling pays (PollState.poll_now / polled / slept) ------------------------------


def _read(state: PollState, poll_gap: float, sleep_gap: float) -> bool:
    """One read the rules allow a poll for, the peer's bytes coming ``poll_gap`` after the
    reader goes idle when it polls and ``sleep_gap`` when it sleeps (the wake-up added):
    feeds the state as the reader does. Returns whether it polled."""
    how = state.poll_now()
    if how == polling.POLL:
        state.waited = True  # (the poll found nothing at first)
        state.polled(poll_gap)
        return True
    if how == polling.TRIAL:
        state.slept(sleep_gap)
    return False


def test_a_reader_alternates_until_it_can_judge() -> None:
    state = PollState(0.001)
    choices = [_read(state, 0.0001, 0.0002) for _ in range(2 * polling.MIN_SAMPLES)]
    assert choices == [False, True] * polling.MIN_SAMPLES


def test_polling_stops_when_a_sleep_costs_little_and_resumes_when_it_costs_more() -> None:
    """Gaps of 100 us after a poll: a wake-up adding 10 us is not worth a 100 us poll; one
    adding 60 us is. The judgement follows the machine both ways."""
    state = PollState(0.001)
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000110)
    assert not state.pays
    polls = sum(_read(state, 0.000100, 0.000110) for _ in range(10 * polling.EXPLORE_EVERY))
    assert polls == 10  # (the other method on one read in EXPLORE_EVERY, to recheck)
    for _ in range(4 * polling.SAMPLES * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000160)  # wake-ups got expensive
        if state.pays:
            break
    assert state.pays
    sleeps = sum(not _read(state, 0.000100, 0.000160) for _ in range(10 * polling.EXPLORE_EVERY))
    assert sleeps == 10


def test_the_judgement_needs_both_a_fraction_of_the_poll_and_an_absolute_saving() -> None:
    few = PollState(0.001)  # 8 us saved on a 20 us poll: 40%, but under MIN_SAVED
    much = PollState(0.001)  # 12 us saved on a 20 us poll
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(few, 0.000020, 0.000028)
        _read(much, 0.000020, 0.000032)
    assert not few.pays
    assert much.pays


def test_a_judgement_near_the_line_keeps_its_side() -> None:
    """Paying at a saving of 25% of the poll, it stays paying down to 3/4 of that; a reader
    that never paid needs the whole 25%."""
    state = PollState(0.001)
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000130)  # 30 us saved: pays
    assert state.pays
    state._slept[:] = [0.000120] * polling.SAMPLES  # 20 us: under 25, over 18.75
    state.slept(0.000120)  # (a gap of the kind in use less: judged at once)
    assert state.pays
    state._slept[:] = [0.000110] * polling.SAMPLES  # 10 us: under 18.75
    state.slept(0.000110)
    assert not state.pays
    fresh = PollState(0.001)
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(fresh, 0.000100, 0.000120)
    assert not fresh.pays


def test_only_gaps_that_say_something_are_noted_and_unseen_ones_as_endless() -> None:
    state = PollState(0.001)
    state.waited = False  # data there at once: costs the same either way
    state.polled(0.000005)
    assert not state.slept(0.0025)  # twice the poll's length or more: not quick, and
    assert state.slept(0.0015)  # noted as endless; (a wake-up may outlast the poll: quick)
    assert (state._polled, state._slept) == ([], [float("inf"), 0.0015])


def test_without_adapting_every_allowed_read_polls() -> None:
    state = PollState(0.001, adapt=False)
    assert all(_read(state, 0.0001, 0.0001) for _ in range(3 * polling.EXPLORE_EVERY))
    assert state.pays and state._polled == []


def test_a_peek_receives_once_and_counts_nothing() -> None:
    state = PollState(1.0)
    assert state.peek(FakeSocket(empty=1), bytearray(8)) is Read.MISSED  # type: ignore[arg-type]
    assert state.peek(FakeSocket(empty=0), bytearray(8)) is Read.DATA  # type: ignore[arg-type]
    assert (state.got, state.waited, state.hits, state.misses) == (4, False, 0, 0)


def test_a_poll_that_found_data_at_once_did_not_wait() -> None:
    state = PollState(1.0)
    assert _spin(state, FakeSocket(empty=0), time.monotonic() + 1) is Read.DATA
    assert not state.waited
    assert _spin(state, FakeSocket(empty=3), time.monotonic() + 1) is Read.DATA
    assert state.waited


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.002), st.floats(0.0, 0.004)), min_size=1, max_size=600))
def test_once_judged_the_other_method_is_rare(gaps: list[tuple[float, float]]) -> None:
    """Whatever the gaps: memory stays bounded, and once both kinds have MIN_SAMPLES, a read
    uses the method the judgement does not favour at most once in EXPLORE_EVERY."""
    state = PollState(0.001)
    against = tries = 0
    for poll_gap, sleep_gap in gaps:
        judged = min(len(state._polled), len(state._slept)) >= polling.MIN_SAMPLES
        pays = state.pays
        polled = _read(state, poll_gap, sleep_gap)
        assert len(state._polled) <= polling.SAMPLES and len(state._slept) <= polling.SAMPLES
        if judged:
            tries += 1
            against += polled is not pays
    assert against <= tries // polling.EXPLORE_EVERY + 1


def _drive(state: PollState, gaps: list[float], wake: float) -> int:
    """Feed ``state`` as the reader does, for peer gaps ``gaps`` (0: the data is there at
    once) and a wake-up costing ``wake`` seconds after a sleep. A poll that finds nothing
    is a real spin over a socket that never has data. Returns how many reads polled."""
    length = state.length
    polls = 0
    for gap in gaps:
        how = state.poll_now() if state.armed else None
        if how == polling.POLL:
            polls += 1
            if gap < length:
                state.waited = gap > 0
                state.polled(gap)
                quick = True
            else:
                assert _spin(state, FakeSocket(empty=10**9), 0.0) is Read.MISSED
                quick = gap + wake < length  # (the blocking read after it)
        elif how == polling.TRIAL:
            quick = True if gap == 0 else state.slept(gap + wake)
        elif how == polling.SLEEP:
            quick = (gap + wake if gap else 0.0) < 2 * length
        else:
            quick = (gap + wake if gap else 0.0) < length
        state.after_read(quick, partial=False)
    return polls


def test_gaps_spread_across_the_poll_length_do_not_make_polling_look_worth_it() -> None:
    """A poll sees gaps up to its length only, a sleep up to twice that: comparing what each
    saw made a sleep look slower than a poll whenever the peer's gaps spread across the
    poll's length, even with wake-ups free. Unseen gaps now count as endless on both sides."""
    rng = random.Random(7)
    state = PollState(0.0002)
    polls = _drive(state, [rng.uniform(50e-6, 350e-6) for _ in range(20_000)], wake=0.0)
    assert not state.pays
    assert polls < 20_000 // 8  # (it polled for nearly every read the rules allowed before)


def test_a_wake_up_longer_than_twice_the_poll_is_seen_as_worth_polling_for() -> None:
    """Sleeps whose gaps reach twice the poll's length were left out, so the reader never
    had enough of them to judge and alternated for good; they count as endless now."""
    rng = random.Random(7)
    state = PollState(0.00005)
    gaps = [0.0 if rng.random() < 0.2 else 40e-6 for _ in range(20_000)]
    polls = _drive(state, gaps, wake=70e-6)
    assert state.pays
    assert polls > 0.7 * 20_000


def test_polls_that_mostly_find_nothing_never_pay() -> None:
    """Most gaps outlast the poll (a read after a quick one arms it, then the peer pauses):
    polls mostly miss, and a sleep costs more only on the few quick gaps."""
    rng = random.Random(7)
    state = PollState(0.0001)
    gaps = [30e-6 if rng.random() < 0.2 else 150e-6 for _ in range(5_000)]
    _drive(state, gaps, wake=60e-6)
    assert not state.pays


def test_the_quartiles_error_counts_the_share_of_samples_it_spans() -> None:
    """With few samples the 15th and 35th percentiles are one sample apart, an eighth of
    them, not a fifth: the error was taken as 40% smaller than it is."""
    quartile, error = polling._quartile([float(i) for i in range(8)])
    assert quartile == 2.0
    assert error == pytest.approx(math.sqrt(0.1875 / 8) * 1.0 * 8)  # (spread 1 over 1/8)
    quartile, error = polling._quartile([float(i) for i in range(100)])
    assert error == pytest.approx(math.sqrt(0.1875 / 100) * 20.0 / 0.2)
    assert polling._quartile([1.0] * 6 + [float("inf")] * 2) == (1.0, 0.0)  # (no spread)
    assert polling._quartile([1.0] * 2 + [float("inf")] * 6) == (float("inf"), float("inf"))


def test_where_polling_does_not_pay_most_sleeps_measure_nothing() -> None:
    """A measured sleep costs a peek (one more system call, and a chance for another thread
    to take the interpreter); where polling does not pay, one sleep in MEASURE_EVERY is
    measured, one read in EXPLORE_EVERY polls, and the rest just sleep."""
    state = PollState(0.001)
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000105)
    assert not state.pays
    window = polling.MEASURE_EVERY * polling.EXPLORE_EVERY
    hows = [state.poll_now() for _ in range(window)]
    assert hows.count(polling.POLL) == polling.MEASURE_EVERY
    assert hows.count(polling.TRIAL) == polling.EXPLORE_EVERY - polling.MEASURE_EVERY
    assert hows.count(polling.SLEEP) == window - polling.EXPLORE_EVERY
