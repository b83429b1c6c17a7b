"""The keepalive settings a user gives a VC, checked.

Owns: :class:`KeepaliveConfig` and :data:`MIN_KEEPALIVE_INTERVAL`: what a user may set, and
the BadArgError for anything else. Kept apart from the decisions that use them
(:mod:`~ipcclient.transport.liveness`), which a compiled build compiles: a compiled dataclass
would refuse a value of the wrong type with a bare TypeError before this check could say
what is wrong.

Must not: decide anything about a VC's liveness, or touch sockets, threads or clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ipcclient import errors
from ipcclient.context import LONGEST_WAIT

__all__ = ["MIN_KEEPALIVE_INTERVAL", "KeepaliveConfig"]

MIN_KEEPALIVE_INTERVAL = 0.01
"""The shortest keepalive period accepted: shorter ones would keep a reader thread waking
without pause (0 would spin a CPU on an idle VC)."""


@dataclass(frozen=True)
class KeepaliveConfig:
    """Liveness of an idle VC.

    Attributes:
        interval: seconds without receiving anything before this side sends a PING.
        timeout: seconds without receiving anything (not even a PING ACK) before the VC is
            declared broken.
        send_timeout: seconds one socket send may block (a peer that stops reading) before
            the VC is declared broken.
        probe_timeout: on a dialed VC, a call that timed out while the peer had been silent
            for ``probe_after`` makes the VC send one PING; if no whole record comes back
            within this many seconds the VC is declared broken (new calls meanwhile use
            another VC, instead of waiting on a silent one again).
        probe_after: see ``probe_timeout``.

    Every value is a finite number of seconds of at least ``MIN_KEEPALIVE_INTERVAL``, and
    ``timeout`` is at least ``interval`` (so a longer ``interval`` needs a longer ``timeout``
    too); anything else is a BadArgError.
    """

    interval: float = 15.0
    timeout: float = 45.0
    send_timeout: float = 30.0
    probe_timeout: float = 2.0
    probe_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "send_timeout", "probe_timeout", "probe_after"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and MIN_KEEPALIVE_INTERVAL <= value <= LONGEST_WAIT
            ):
                raise errors.BadArgError(
                    f"transport: KeepaliveConfig.{name} must be a number of seconds "
                    f">= {MIN_KEEPALIVE_INTERVAL} and <= {LONGEST_WAIT:g}, got {value!r}"
                )
        if self.timeout < self.interval:
            raise errors.BadArgError(
                "transport: KeepaliveConfig.timeout must be >= interval (else a VC is declared "
                "dead before it is pinged)"
            )
