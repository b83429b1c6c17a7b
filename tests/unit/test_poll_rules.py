"""Busy polling (:mod:`ipcclient.transport.polling`): when a reader polls, the one polling
loop and its outcomes, and the process's polling slots."""

from __future__ import annotations

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
    if state.poll_now():
        state.waited = True  # (the poll found nothing at first)
        state.polled(poll_gap)
        return True
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
    """Paying at a saving of 25% of the poll, it stays paying down to 3/4 of that."""
    state = PollState(0.001)
    for _ in range(4 * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000130)  # 30 us saved: pays
    assert state.pays
    for _ in range(4 * polling.SAMPLES * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000120)  # 20 us: under 25, over 18.75
    assert state.pays
    for _ in range(4 * polling.SAMPLES * polling.EXPLORE_EVERY):
        _read(state, 0.000100, 0.000110)  # 10 us: under 18.75
    assert not state.pays


def test_only_gaps_that_say_something_are_noted() -> None:
    state = PollState(0.001)
    state.waited = False  # data there at once: costs the same either way
    state.polled(0.000005)
    assert not state.slept(0.0025)  # over twice the poll's length: a slow peer, and not quick
    assert state.slept(0.0015)  # (a wake-up may outlast the poll: still quick)
    assert (state._polled, state._slept) == ([], [0.0015])


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
