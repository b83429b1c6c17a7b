"""Typed call and client options.

Owns: the option values a caller passes to :meth:`Client.start_call` and :meth:`Client.call`
(``NoRetry()``, ``RetryTimeout(2.0)``, ``ServerPattern("root:server")``, ...), and
:class:`ClientOptions`, the client-wide knobs. Options are plain frozen values: no strings,
no ``**kwargs`` soup, easy to log and compare.

Must not: act on the options (the client does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ipcclient import errors
from ipcclient.retry import DEFAULT_POLICY, BackoffPolicy
from ipcclient.security.keys import PublicKey
from ipcclient.security.patterns import BlessingPattern
from ipcclient.transport.manager import CLIENT_BUSY_POLL, TransportOptions

__all__ = [
    "CallOption",
    "ClientOptions",
    "Granter",
    "NoDischarges",
    "NoRetry",
    "RetryTimeout",
    "ServerPattern",
    "ServerPublicKey",
    "SkipServerAuthorization",
    "find_all",
    "find_one",
]


class CallOption:
    """Base class of every per-call option."""

    __slots__ = ()


@dataclass(frozen=True)
class NoRetry(CallOption):
    """Try once: no retry before the request is sent, none after."""


@dataclass(frozen=True)
class RetryTimeout(CallOption):
    """Retry connection and resolution failures for at most ``seconds`` from the start of
    the call (narrows the context's deadline for the retry loop; 0 means NoRetry)."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds >= 0:
            raise errors.BadArgError("options: RetryTimeout needs seconds >= 0")


@dataclass(frozen=True)
class ServerPattern(CallOption):
    """The server must present a blessing matched by one of ``patterns`` (ORed). Several
    ServerPattern options are ANDed, as Vanadium's AllowedServersPolicy."""

    patterns: tuple[str, ...]

    def __init__(self, *patterns: str) -> None:
        if not patterns:
            raise errors.BadArgError("options: ServerPattern needs at least one pattern")
        object.__setattr__(self, "patterns", tuple(patterns))

    def matched_by(self, names: Sequence[str]) -> bool:
        return any(BlessingPattern(p).matched_by(*names) for p in self.patterns)


@dataclass(frozen=True)
class ServerPublicKey(CallOption):
    """The server must authenticate with exactly this key."""

    key: PublicKey


@dataclass(frozen=True)
class SkipServerAuthorization(CallOption):
    """Do not match the server against the endpoint's advertised blessings (its blessings
    must still validate under the client's roots, and other options still apply)."""


@dataclass(frozen=True)
class NoDischarges(CallOption):
    """Send no discharges and fetch none (used for calls to dischargers themselves)."""


@dataclass(frozen=True)
class Granter(CallOption):
    """Grant the server blessings for this call: ``grant(server_blessings, server_key)``
    returns blessings bound to the server's key. An error it raises fails the call with
    NotTrustedError before any request byte is written."""

    grant: Callable[[Any, PublicKey], Any] = field(compare=False)


_O = TypeVar("_O", bound=CallOption)


def find_one(options: Iterable[CallOption], kind: type[_O]) -> _O | None:
    """The last option of ``kind`` (later options win), or None."""
    found: _O | None = None
    for opt in options:
        if isinstance(opt, kind):
            found = opt
    return found


def find_all(options: Iterable[CallOption], kind: type[_O]) -> list[_O]:
    """Every option of ``kind``, in order."""
    return [opt for opt in options if isinstance(opt, kind)]


@dataclass(frozen=True)
class ClientOptions:
    """Client-wide knobs.

    Attributes:
        default_call_timeout: the deadline given to a call whose context has none (seconds,
            covering resolution, retries, the request and the reply; Vanadium's 1 minute).
            ``None`` gives such calls no deadline at all (they may then wait forever).
        backoff: the randomized exponential backoff between retries.
        transport: options of the VCs this client dials. By default they poll for up to
            ``CLIENT_BUSY_POLL`` (500 us) rather than a server's 200 us (see
            ``TransportOptions.busy_poll``): a client's VC polls only while several of its
            calls are in flight, where the longer poll measured ~8% more calls per second
            with 8 threads; a lone caller never polls. A ``TransportOptions`` given here is
            used as it is: pass ``busy_poll=CLIENT_BUSY_POLL`` with it to keep the client's.
        max_parallel_discharge_fetches: discharge RPCs in flight at once for one call.
        dial_timeout: the longest one dial (connect and handshake) may take, whoever waits
            for it: callers wait only up to their own deadlines, and a dial that finishes after
            they gave up is cached for later calls.
    """

    default_call_timeout: float | None = 60.0
    backoff: BackoffPolicy = DEFAULT_POLICY
    transport: TransportOptions = field(
        default_factory=lambda: TransportOptions(busy_poll=CLIENT_BUSY_POLL)
    )
    max_parallel_discharge_fetches: int = 8
    dial_timeout: float = 20.0
