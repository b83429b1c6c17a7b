"""Typed call and client options.

Owns: the option values a caller passes to :meth:`Client.start_call` and :meth:`Client.call`
(``NoRetry()``, ``RetryTimeout(2.0)``, ``ServerPattern("root:server")``, ...), and
:class:`ClientOptions`, the client-wide knobs. Options are plain frozen values: no strings,
no ``**kwargs`` soup, easy to log and compare.

Must not: act on the options (the client does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ipcclient import errors
from ipcclient.retry import DEFAULT_POLICY, BackoffPolicy, RetryBudget
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
    "WaitForReady",
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
    """Retry failures that allow it for at most ``seconds`` from the start of the call, in
    place of the client's ``connect_retry_window`` (never past the call's deadline; 0 means
    NoRetry). A name that does not exist is still not retried without :class:`WaitForReady`."""

    seconds: float

    def __post_init__(self) -> None:
        if not (
            isinstance(self.seconds, int | float)
            and not isinstance(self.seconds, bool)
            and self.seconds >= 0
        ):
            raise errors.BadArgError("options: RetryTimeout needs a number of seconds >= 0")


@dataclass(frozen=True)
class WaitForReady(CallOption):
    """Wait for the server until the call's deadline instead of failing fast.

    With it (or ``ClientOptions(wait_for_ready=True)``) a name that is not mounted yet and a
    server that refuses connections are retried, with backoff, until the deadline: a call made
    before its server is published finds it once it is (a rendezvous). ``WaitForReady(False)``
    turns a client-wide ``wait_for_ready`` off for one call."""

    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise errors.BadArgError("options: WaitForReady takes a bool")


@dataclass(frozen=True)
class ServerPattern(CallOption):
    """The server must present a blessing matched by one of ``patterns`` (ORed). Several
    ServerPattern options are ANDed, as Vanadium's AllowedServersPolicy."""

    patterns: tuple[str, ...]

    def __init__(self, *patterns: str) -> None:
        if not patterns:
            raise errors.BadArgError("options: ServerPattern needs at least one pattern")
        for p in patterns:
            if not isinstance(p, str):
                raise errors.BadArgError(
                    f"options: ServerPattern takes patterns as str, not {type(p).__name__}"
                )
        object.__setattr__(self, "patterns", tuple(patterns))

    def matched_by(self, names: Sequence[str]) -> bool:
        return any(BlessingPattern(p).matched_by(*names) for p in self.patterns)


@dataclass(frozen=True)
class ServerPublicKey(CallOption):
    """The server must authenticate with exactly this key."""

    key: PublicKey

    def __post_init__(self) -> None:
        if not isinstance(self.key, PublicKey):
            raise errors.BadArgError(
                f"options: ServerPublicKey takes a PublicKey, not {type(self.key).__name__}"
            )


@dataclass(frozen=True)
class SkipServerAuthorization(CallOption):
    """Do not match the server against the endpoint's advertised blessings (its blessings
    must still validate under the client's roots, and other options still apply). The call
    dials the endpoint without those names, on a VC of its own: the client's blessings are
    shown to any server its roots trust at that address."""


@dataclass(frozen=True)
class NoDischarges(CallOption):
    """Send no discharges and fetch none (used for calls to dischargers themselves)."""


@dataclass(frozen=True)
class Granter(CallOption):
    """Grant the server blessings for this call: ``grant(server_blessings, server_key)``
    returns blessings bound to the server's key. An error it raises fails the call with
    NotTrustedError before any request byte is written."""

    grant: Callable[[Any, PublicKey], Any] = field(compare=False)

    def __post_init__(self) -> None:
        if not callable(self.grant):
            raise errors.BadArgError(
                "options: Granter takes a function grant(server_blessings, server_key), not "
                f"{type(self.grant).__name__}"
            )


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
        wait_for_ready: retry a name that is not mounted and servers that cannot be reached
            until the call's deadline (see :class:`WaitForReady`). Off by default: such a
            call fails at once (a name the mount table does not have) or after
            ``connect_retry_window`` (servers that refuse or drop connections).
        connect_retry_window: seconds from the start of a call during which failures that
            may go away by themselves (a server restarting, a mount table's stale answer) are
            retried with backoff when the call does not wait for ready. Long enough for a
            server restarting on the same address, short enough that a dead server is
            reported while the user still cares.
        retry_budget: a :class:`~ipcclient.retry.RetryBudget` shared by every call of this
            client: each call that has to retry deposits once and each retry takes a token,
            so that when every server is down, retries from many threads stop multiplying
            the load. None (the default): no budget, only the retry window bounds retries.
    """

    default_call_timeout: float | None = 60.0
    backoff: BackoffPolicy = DEFAULT_POLICY
    transport: TransportOptions = field(
        default_factory=lambda: TransportOptions(busy_poll=CLIENT_BUSY_POLL)
    )
    max_parallel_discharge_fetches: int = 8
    dial_timeout: float = 20.0
    wait_for_ready: bool = False
    connect_retry_window: float = 1.0
    retry_budget: RetryBudget | None = None

    def __post_init__(self) -> None:
        def seconds(name: str, value: object, *, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0
            ):
                raise errors.BadArgError(
                    f"options: ClientOptions.{name} must be a finite number of seconds >= 0, "
                    f"not {value!r}"
                )

        seconds("default_call_timeout", self.default_call_timeout, allow_none=True)
        seconds("dial_timeout", self.dial_timeout)
        seconds("connect_retry_window", self.connect_retry_window)
        if self.default_call_timeout == 0 or self.dial_timeout == 0:
            raise errors.BadArgError(
                "options: ClientOptions.default_call_timeout and dial_timeout must be > 0"
            )
        n = self.max_parallel_discharge_fetches
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise errors.BadArgError(
                "options: ClientOptions.max_parallel_discharge_fetches must be an int >= 1"
            )
        if not isinstance(self.wait_for_ready, bool):
            raise errors.BadArgError("options: ClientOptions.wait_for_ready must be a bool")
        if not isinstance(self.backoff, BackoffPolicy):
            raise errors.BadArgError("options: ClientOptions.backoff must be a BackoffPolicy")
        if self.retry_budget is not None and not isinstance(self.retry_budget, RetryBudget):
            raise errors.BadArgError("options: ClientOptions.retry_budget must be a RetryBudget")
        if not isinstance(self.transport, TransportOptions):
            raise errors.BadArgError("options: ClientOptions.transport must be TransportOptions")
