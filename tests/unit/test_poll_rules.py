"""Busy polling (:mod:`ipcclient.transport.polling`): when a reader polls, the one polling
loop and its outcomes, and the process's polling slots."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

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
