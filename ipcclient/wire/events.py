"""What :meth:`Mux.receive_data <ipcclient.wire.mux.Mux.receive_data>` returns: one event
per thing the peer did (sans-IO).

Owns: :class:`Event` and its kinds (a flow opened, data, a reset, credit, a ping and its
answer, the connection closed). Must not: hold any behaviour; they are plain records.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipcclient import errors

__all__ = [
    "ConnectionClosed",
    "CreditAvailable",
    "DataReceived",
    "Event",
    "FlowOpened",
    "FlowReset",
    "PingAcked",
    "PingReceived",
]


class Event:
    """Base class of what :meth:`~ipcclient.wire.mux.Mux.receive_data` returns."""

    __slots__ = ()


@dataclass(slots=True)
class FlowOpened(Event):
    """The peer opened a flow (its first DATA follows as :class:`DataReceived` if non-empty)."""

    flow_id: int


@dataclass(slots=True)
class DataReceived(Event):
    """Bytes on a flow; ``end`` is the peer's FIN (it sends nothing more on this flow).

    The app must :meth:`~ipcclient.wire.mux.Mux.acknowledge` ``len(data)`` once it has
    consumed them.
    """

    flow_id: int
    data: bytes
    end: bool


@dataclass(slots=True)
class FlowReset(Event):
    """The peer reset the flow; ``error`` is its error, or CanceledError. The flow is gone."""

    flow_id: int
    error: errors.IPCError


@dataclass(slots=True)
class CreditAvailable(Event):
    """Send credit on the flow went from 0 to > 0: a blocked writer may resume."""

    flow_id: int


@dataclass(slots=True)
class PingReceived(Event):
    """The peer pinged; the ACK is already queued."""

    payload: bytes


@dataclass(slots=True)
class PingAcked(Event):
    """The peer answered a ping carrying ``payload``."""

    payload: bytes


@dataclass(slots=True)
class ConnectionClosed(Event):
    """The peer sent GOAWAY. ``error`` (a ConnectionFailedError) is what the local flows end
    with; ``peer_error`` is the error the peer sent, if any; ``flow_ids`` were live and are gone.

    ``last_flow_id`` is the highest of our flow ids the peer says it accepted (None when its
    GOAWAY did not say); ``unprocessed`` are the ids of ``flow_ids`` above it, and those of
    ours this side never announced (no frame with OPEN sent), with or without LAST_ID: flows
    the peer never delivered to its application, so it cannot have acted on them (a request
    on one may be sent again on a new connection).
    """

    error: errors.IPCError
    peer_error: errors.IPCError | None
    flow_ids: tuple[int, ...]
    last_flow_id: int | None = None
    unprocessed: tuple[int, ...] = ()
