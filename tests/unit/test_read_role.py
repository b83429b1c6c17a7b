"""The read role of a VC (:mod:`ipcclient.transport.readrole`): its transition table, and the
roles a real VC goes through (free after the dial, the reader thread takes it when the VC is
quiet, a lone caller takes it for its own reply, the reader thread takes it back)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.manager import Listener, StreamManager, TransportOptions
from ipcclient.transport.reader import LEAD_GRACE
from ipcclient.transport.readrole import (
    CALLER,
    CALLER_DONE,
    CALLER_TAKES,
    FREE,
    HAND_OVER,
    READER,
    READER_TAKES,
    TRANSITIONS,
    Event,
    Read,
    Role,
)
from tests.identities import make_identity

EXPECTED = {
    (Event.HAND_OVER, Role.READER): Role.FREE,
    (Event.CALLER_TAKES, Role.FREE): Role.CALLER,
    (Event.CALLER_DONE, Role.CALLER): Role.FREE,
    (Event.READER_TAKES, Role.FREE): Role.READER,
}


def test_the_transition_table_allows_exactly_the_documented_moves() -> None:
    for event, role in itertools.product(Event, Role):
        if (event, role) in EXPECTED:
            assert TRANSITIONS[event][role] is EXPECTED[event, role]
        else:
            with pytest.raises(KeyError):
                TRANSITIONS[event][role]  # an impossible move is an error, never a no-op


def test_the_per_event_tables_are_the_table_s_rows() -> None:
    assert HAND_OVER is TRANSITIONS[Event.HAND_OVER]
    assert CALLER_TAKES is TRANSITIONS[Event.CALLER_TAKES]
    assert CALLER_DONE is TRANSITIONS[Event.CALLER_DONE]
    assert READER_TAKES is TRANSITIONS[Event.READER_TAKES]
    assert (FREE, READER, CALLER) == (Role.FREE, Role.READER, Role.CALLER)


def test_every_role_is_reachable_and_the_reader_always_gets_it_back() -> None:
    seen = {READER}
    frontier = [READER]
    while frontier:
        role = frontier.pop()
        for table in TRANSITIONS.values():
            nxt = table.get(role)
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Role)
    # A caller's turn: the reader gives it up, the caller takes it and gives it back, the
    # reader takes it again.
    role = READER
    for table in (HAND_OVER, CALLER_TAKES, CALLER_DONE, READER_TAKES):
        role = table[role]
    assert role is READER
    # Nobody takes the role from a holder: only a FREE role can be taken.
    for table in (CALLER_TAKES, READER_TAKES):
        assert set(table) == {FREE}


def test_read_outcomes_are_distinct() -> None:
    assert len({r.value for r in Read}) == len(Read) == 7


# --- on a real VC ------------------------------------------------------------------------------
def _accept_all(_k: object, _b: object, _d: object) -> None:
    return None


@pytest.fixture
def slow_echo() -> Iterator[tuple[Listener, threading.Event]]:
    """A server that answers each request once ``release`` is set."""
    release = threading.Event()

    def on_flow(flow: Flow) -> None:
        def run() -> None:
            data = bytearray()
            while chunk := flow.read(time.monotonic() + 10):
                data += chunk
            release.wait(10)
            flow.write(bytes(data), end=True)

        threading.Thread(target=run, daemon=True).start()

    lst = StreamManager(make_identity()).listen(
        "tcp", "127.0.0.1:0", blessings=None, on_flow=on_flow
    )
    yield lst, release
    release.set()
    lst.close()


def _dial(lst: Listener, lead_reads: bool = True) -> Connection:
    return StreamManager(make_identity(), TransportOptions(lead_reads=lead_reads)).dial(
        lst.protocol,
        lst.address,
        deadline=time.monotonic() + 5,
        authorize_server=_accept_all,
        blessings_for_server=lambda _b: None,
    )


def _wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.001)


def test_a_lone_caller_reads_its_own_reply_then_the_reader_thread_takes_the_role_back(
    slow_echo: tuple[Listener, threading.Event],
) -> None:
    lst, release = slow_echo
    conn = _dial(lst)
    try:
        _wait_until(lambda: conn._role is READER)  # (quiet since the dial: see below)
        flow = conn.connect()
        flow.write(b"ping", end=True)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(flow.read(time.monotonic() + 10)))
        reader.start()
        _wait_until(lambda: conn._role is CALLER)  # the caller reads for itself
        release.set()
        reader.join(10)
        assert got == [b"ping"]
        time.sleep(LEAD_GRACE)
        _wait_until(lambda: conn._role is READER)  # quiet: the reader thread reads again
    finally:
        conn.close()


def test_the_caller_that_dialed_reads_its_first_reply_without_waking_the_reader_thread(
    slow_echo: tuple[Listener, threading.Event],
) -> None:
    """A dialed VC's role starts free, as if a caller had just read: the first call reads
    its reply itself, where it used to wake the reader thread (asleep in poll, holding the
    role since the dial) to hand the role over, a wake-up on every new VC's first call.
    The reader thread takes the role once the VC has been quiet for LEAD_GRACE."""
    lst, release = slow_echo
    conn = _dial(lst)
    wakes: list[int] = []
    wake = conn._wake_poll_locked

    def counted() -> None:
        wakes.append(1)
        wake()

    conn._wake_poll_locked = counted  # type: ignore[method-assign]
    try:
        assert conn._role is FREE
        flow = conn.connect()
        flow.write(b"ping", end=True)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(flow.read(time.monotonic() + 10)))
        reader.start()
        _wait_until(lambda: conn._role is CALLER)
        release.set()
        reader.join(10)
        assert got == [b"ping"]
        assert wakes == []  # nobody was woken to give the role up
        _wait_until(lambda: conn._role is READER)
    finally:
        conn.close()


def test_without_leader_follower_reads_the_reader_thread_keeps_the_role(
    slow_echo: tuple[Listener, threading.Event],
) -> None:
    lst, release = slow_echo
    conn = _dial(lst, lead_reads=False)
    try:
        flow = conn.connect()
        flow.write(b"x", end=True)
        seen: set[object] = set()
        reader = threading.Thread(target=lambda: flow.read(time.monotonic() + 10))
        reader.start()
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            seen.add(conn._role)
            time.sleep(0.001)
        release.set()
        reader.join(10)
        seen.add(conn._role)
        assert seen == {READER}
        (served,) = lst.connections
        assert served._role is READER  # an accepted VC: always its reader thread
    finally:
        conn.close()
