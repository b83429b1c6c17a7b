"""The keepalive and probe decisions of one VC (:mod:`ipcclient.transport.liveness`), driven
by a fake clock: the one object every reading loop consults through
``Connection.check_liveness``."""

from __future__ import annotations

import math

import pytest

from ipcclient import errors
from ipcclient.transport import conn as connmod
from ipcclient.transport.keepalive import MIN_KEEPALIVE_INTERVAL, KeepaliveConfig
from ipcclient.transport.liveness import DEAD, PING, Liveness
from ipcclient.transport.manager import TransportOptions
from ipcclient.transport.waits import LONGEST_WAIT


class FakeClock:
    """Time that moves only when told to; ``heard()`` records input from the peer."""

    def __init__(self) -> None:
        self.now = 100.0
        self.last_recv = self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def heard(self) -> None:
        self.last_recv = self.now


def _live(clock: FakeClock, **kw: float) -> Liveness:
    cfg = {"interval": 10.0, "timeout": 30.0, "probe_timeout": 2.0, "probe_after": 1.0}
    cfg.update(kw)
    return Liveness(now=clock.now, **cfg)


def _check(live: Liveness, clock: FakeClock) -> str | None:
    return live.check(clock.now, clock.last_recv)


def test_an_idle_vc_is_pinged_every_interval_then_declared_dead() -> None:
    clock = FakeClock()
    live = _live(clock)
    actions = []
    for _ in range(40):  # one check a second for 40 s of silence
        clock.advance(1.0)
        actions.append((clock.now - 100.0, _check(live, clock)))
    pings = [t for t, a in actions if a == PING]
    dead = [t for t, a in actions if a == DEAD]
    assert pings == [10.0, 20.0]
    assert dead and dead[0] == 30.0


def test_input_postpones_the_ping_and_the_verdict() -> None:
    clock = FakeClock()
    live = _live(clock)
    clock.advance(9.0)
    clock.heard()
    clock.advance(9.0)
    assert _check(live, clock) is None  # 9 s since the peer spoke
    clock.advance(1.0)
    assert _check(live, clock) == PING
    clock.advance(0.5)
    clock.heard()  # (the PING's ACK)
    clock.advance(25.0)
    assert _check(live, clock) is PING  # silent again for an interval
    clock.advance(4.9)
    assert _check(live, clock) is None
    clock.advance(0.1)
    assert _check(live, clock) == DEAD


def test_a_check_between_pings_says_nothing_and_next_check_says_when_to_ask() -> None:
    clock = FakeClock()
    live = _live(clock)
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(10.0)
    clock.advance(10.0)
    assert _check(live, clock) == PING
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(10.0)
    clock.advance(3.0)
    assert _check(live, clock) is None
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(7.0)
    clock.advance(7.0)
    assert _check(live, clock) == PING
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(10.0)  # dead at 30
    clock.advance(10.0)
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(0.001)  # (> 0)


def test_a_probe_starts_only_after_silence_and_one_at_a_time() -> None:
    clock = FakeClock()
    live = _live(clock)
    clock.advance(0.5)
    assert not live.suspect(clock.now, clock.last_recv)  # the peer spoke 0.5 s ago
    clock.advance(1.0)
    assert live.suspect(clock.now, clock.last_recv)
    assert live.probing and live.unanswered(clock.last_recv) and live.probes == 1
    assert not live.suspect(clock.now, clock.last_recv)  # one at a time
    assert live.next_check(clock.now, clock.last_recv) == pytest.approx(2.0)
    clock.advance(1.0)
    clock.heard()  # anything at all answers it
    assert not live.unanswered(clock.last_recv)
    assert _check(live, clock) is None and not live.probing


def test_an_unanswered_probe_is_dead_at_its_deadline_long_before_the_keepalive() -> None:
    clock = FakeClock()
    live = _live(clock)
    clock.advance(5.0)
    assert live.suspect(clock.now, clock.last_recv)
    clock.advance(1.999)
    assert _check(live, clock) is None
    clock.advance(0.001)
    assert _check(live, clock) == DEAD


def test_a_probe_counts_as_a_ping_for_the_keepalive() -> None:
    clock = FakeClock()
    live = _live(clock)
    clock.advance(9.0)
    assert live.suspect(clock.now, clock.last_recv)
    clock.advance(1.0)
    clock.heard()
    assert _check(live, clock) is None  # answered, and the PING went out 1 s ago


@pytest.mark.parametrize(
    "field", ["interval", "timeout", "send_timeout", "probe_timeout", "probe_after"]
)
@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "1", 1e300, 86_400.5])
def test_keepalive_config_refuses_bad_values(field: str, bad: object) -> None:
    with pytest.raises(errors.BadArgError):
        KeepaliveConfig(**{field: bad})  # type: ignore[arg-type]


def test_keepalive_config_bounds_and_its_old_import_path() -> None:
    assert KeepaliveConfig(interval=MIN_KEEPALIVE_INTERVAL, timeout=MIN_KEEPALIVE_INTERVAL)
    with pytest.raises(errors.BadArgError):
        KeepaliveConfig(interval=10.0, timeout=5.0)  # dead before ever pinged
    assert connmod.KeepaliveConfig is KeepaliveConfig


def test_keepalive_and_first_byte_timeouts_are_bounded_by_the_longest_wait() -> None:
    """A timeout the system calls cannot take (a socket timeout struct, poll()'s
    milliseconds) is refused when it is set, not found later by a VC's thread."""
    assert KeepaliveConfig(interval=LONGEST_WAIT, timeout=LONGEST_WAIT)
    assert TransportOptions(first_byte_timeout=LONGEST_WAIT)
    for bad in (LONGEST_WAIT * 2, math.inf, math.nan, 0, True):
        with pytest.raises(errors.BadArgError):
            TransportOptions(first_byte_timeout=bad)
