"""Who reads a VC's socket (the read role), its transitions, and what one read step got.

Owns: :class:`Role` (who holds the read role of a VC), :class:`Event` and the transition table
``TRANSITIONS`` (with one lookup table per event, ``HAND_OVER`` and so on, that the VC indexes
with its current role: an impossible transition raises KeyError instead of going unnoticed),
and :class:`Read`, the one outcome type of a read step and of a busy poll.

The read role is who may touch the socket's receive side, the record opener and its buffer.
On an accepted VC, and on a dialed VC with ``lead_reads`` off, the VC's reader thread holds it
for good (:data:`READER`, no transition). On a dialed VC with leader/follower reads the role
starts :data:`FREE` (as if a caller had just read, so the caller that dialed reads its first
reply itself; :data:`READER` when the handshake's last read brought mux bytes too), and then:

====================  ============  ===========  ===================================================
from                  event         to           when
====================  ============  ===========  ===================================================
``READER``            hand_over     ``FREE``     a lone caller waits for the peer: it reads itself
``FREE``              caller_takes  ``CALLER``   a caller that waits for the peer finds it free
``CALLER``            caller_done   ``FREE``     that caller's read step ended
``FREE``              reader_takes  ``READER``   LEAD_GRACE without a caller reading, or several
                                                 calls wait with nobody reading
====================  ============  ===========  ===================================================

Must not: touch sockets, threads or locks (the VC makes every transition under its lock).
"""

from __future__ import annotations

import enum

__all__ = [
    "CALLER",
    "CALLER_DONE",
    "CALLER_TAKES",
    "FREE",
    "HAND_OVER",
    "READER",
    "READER_TAKES",
    "TRANSITIONS",
    "Event",
    "Read",
    "Role",
]


class Role(enum.IntEnum):
    """Who holds a VC's read role."""

    FREE = 0
    """Nobody: the next caller that waits for the peer, or the reader thread, takes it."""
    READER = 1
    """The VC's reader thread."""
    CALLER = 2
    """A caller waiting for the peer, reading for itself (and dispatching for every flow)."""


class Event(enum.IntEnum):
    """What changes the read role."""

    HAND_OVER = 0
    """The reader thread gives the role up to a lone waiting caller."""
    CALLER_TAKES = 1
    """A caller that waits for the peer takes the free role."""
    CALLER_DONE = 2
    """The caller's read step ended: it gives the role up."""
    READER_TAKES = 3
    """The reader thread takes the free role back."""


FREE = Role.FREE
READER = Role.READER
CALLER = Role.CALLER

TRANSITIONS: dict[Event, dict[Role, Role]] = {
    Event.HAND_OVER: {READER: FREE},
    Event.CALLER_TAKES: {FREE: CALLER},
    Event.CALLER_DONE: {CALLER: FREE},
    Event.READER_TAKES: {FREE: READER},
}
"""For each event, the role it leads to from each role it may happen in."""

HAND_OVER = TRANSITIONS[Event.HAND_OVER]
CALLER_TAKES = TRANSITIONS[Event.CALLER_TAKES]
CALLER_DONE = TRANSITIONS[Event.CALLER_DONE]
READER_TAKES = TRANSITIONS[Event.READER_TAKES]


class Read(enum.IntEnum):
    """The outcome of one read step (or of one busy poll, or one non-blocking receive)."""

    DATA = 0
    """Something was received and dispatched."""
    NOTHING = 1
    """A receive found nothing (a non-blocking one, or a blocking one whose receive timeout
    passed)."""
    WOKEN = 2
    """The wait ended by a wake-up from another thread, not by input."""
    TIMEOUT = 3
    """The wait's time passed without input."""
    MISSED = 4
    """A busy poll found nothing before its end."""
    SKIPPED = 5
    """No busy polling slot was free: nothing was tried."""
    STOPPED = 6
    """A busy poll stopped because a lone caller waits to read itself."""
    # (EOF and socket errors are not outcomes: they break the VC.)
