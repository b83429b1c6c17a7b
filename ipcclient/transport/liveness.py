"""When to ping a VC's peer and when to declare it dead, from times alone (sans-IO).

Owns: :class:`Liveness`, the keepalive and probe decisions of one VC (its settings, a
user's :class:`~ipcclient.transport.keepalive.KeepaliveConfig`, are checked in
:mod:`~ipcclient.transport.keepalive`). The owner tells it the
time and when the peer last sent anything (any byte: data, a PING ACK); it answers with
what to do (:data:`PING`, :data:`DEAD` or nothing) and how long the owner may sleep before
asking again.

Two duties:

- *Keepalive* (an idle VC): nothing received for ``interval``: ping (again every
  ``interval`` while the silence lasts); nothing for ``timeout``: dead.
- *Probe* (a VC under traffic): a call on the VC timed out while the peer had been silent
  for at least ``probe_after``: the VC is suspect. One PING goes out, and if nothing at all
  comes back within ``probe_timeout`` the VC is dead, so the next call dials a new one
  instead of timing out on a silent VC again. One probe at a time.

Must not: touch sockets, threads, locks or clocks (times are arguments, so tests drive it
with a fake clock); send anything itself.
"""

from __future__ import annotations

__all__ = ["DEAD", "PING", "Liveness"]

PING = "ping"
"""Send a PING now."""
DEAD = "dead"
"""The peer is dead: break the VC."""


class Liveness:
    """The liveness decisions of one VC (see the module docstring). Not thread-safe: the
    owner serializes calls (the VC's lock).

    Args:
        interval: seconds of silence before a keepalive PING.
        timeout: seconds of silence before the VC is dead.
        probe_timeout: seconds a probe waits for any byte from the peer.
        probe_after: a call that times out makes the VC suspect only when the peer has been
            silent for at least this long.
        now: the current time (the VC was just established: counts as having heard the peer).
    """

    __slots__ = (
        "_last_ping",
        "_probe_deadline",
        "_probe_sent",
        "interval",
        "probe_after",
        "probe_timeout",
        "probes",
        "timeout",
    )

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        probe_timeout: float,
        probe_after: float,
        now: float,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self.probe_after = probe_after
        self._last_ping = now
        self._probe_sent = 0.0
        self._probe_deadline: float | None = None
        self.probes = 0
        """Probes started (for tests and stats)."""

    @property
    def probing(self) -> bool:
        """Whether a probe waits for its answer."""
        return self._probe_deadline is not None

    def unanswered(self, last_recv: float) -> bool:
        """Whether a probe runs and nothing came from the peer since its PING."""
        return self._probe_deadline is not None and last_recv < self._probe_sent

    def suspect(self, now: float, last_recv: float) -> bool:
        """A call timed out. True: a probe starts (send one PING now); False: nothing to do
        (the peer spoke recently, or a probe already runs)."""
        if self._probe_deadline is not None or now - last_recv < self.probe_after:
            return False
        self._probe_sent = now
        self._probe_deadline = now + self.probe_timeout
        self._last_ping = now
        self.probes += 1
        return True

    def check(self, now: float, last_recv: float) -> str | None:
        """What to do now: :data:`DEAD`, :data:`PING` or None. Call it whenever the reading
        thread wakes (data, a wake-up, a timeout), not only on timeouts."""
        deadline = self._probe_deadline
        if deadline is not None:
            if last_recv >= self._probe_sent:
                self._probe_deadline = None  # the peer answered: not dead
            elif now >= deadline:
                return DEAD
        idle = now - last_recv
        if idle >= self.timeout:
            return DEAD
        if idle >= self.interval and now - max(self._last_ping, last_recv) >= self.interval:
            self._last_ping = now
            return PING
        return None

    def next_check(self, now: float, last_recv: float) -> float:
        """Seconds (> 0) the owner may wait before :meth:`check` can answer differently."""
        due = max(self._last_ping, last_recv) + self.interval
        due = min(due, last_recv + self.timeout)
        if self._probe_deadline is not None:
            due = min(due, self._probe_deadline)
        return max(due - now, 0.001)
