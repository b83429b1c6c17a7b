"""The knobs of a server: :class:`ServerOptions` and the default bounds of a request header.

Owns: the option values and their validation, :data:`HEADER_LIMITS` and
:data:`HEADER_GRACE`. Must not: hold any state of a running server or enforce a bound itself
(the server's capacity and flow-serving modules do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipcclient import errors
from ipcclient.codec import Limits
from ipcclient.transport.manager import TransportOptions

__all__ = ["HEADER_GRACE", "HEADER_LIMITS", "ServerOptions"]

HEADER_GRACE = 0.05
"""Seconds a flow's request header may take to arrive before the flow counts against its
VC's ``max_headerless_per_vc`` (a header cut across two records comes a moment later)."""

HEADER_LIMITS = Limits(max_message_size=64 * 1024, max_depth=32, max_items=4096)
"""Default bounds of a request header (``ServerOptions.header_limits``): read before the
caller is authorized, so cheap to refuse. A header carries names, a deadline, a trace, and
at most some blessings granted and discharges (a few KiB); 64 KiB and 4,096 CBOR items leave
room for dozens of discharges."""


@dataclass(frozen=True)
class ServerOptions:
    """Knobs of a server. docs/limits.md explains each bound and why its default.

    Attributes:
        workers: worker threads kept to run calls (started as work first needs them).
        max_workers: the pool grows on demand up to this many threads (one per call running
            on a worker, a streaming call included), so that calls that wait for their
            client (streams) cannot starve the others; idle threads beyond ``workers`` end
            after a while. At least ``workers``.
        max_queued: calls allowed to wait for a worker once ``max_workers`` run; beyond
            ``max_workers + max_queued`` calls (inline ones included) new calls are refused
            at once with OverloadedError (RETRY_BACKOFF). 0 (the default): a call never
            waits silently behind calls that may not end.
        max_calls_per_vc: calls one VC may have open at once: one client cannot take every
            worker. The server announces it in the handshake, and ipcclient's client waits
            for one of its calls to end rather than open more (a client that opens more
            anyway has them refused with OverloadedError). A call whose flow has ended
            (the client cancelled it, or the server reset it) while its method still runs
            leaves its slot to a new call, here and in ``max_calls_per_address``, but still
            counts toward twice this: beyond that, new calls on the VC are refused with
            OverloadedError until some of those methods return.
        max_calls_per_address: calls the VCs from one remote IP address may have running
            or waiting at once, all together (flows waiting for their request header
            included: a flow counts from when it opens until it ends); their flows beyond
            are refused at once with OverloadedError (RETRY_BACKOFF), as over
            ``max_calls_per_vc``: a peer cannot take every worker by opening several VCs.
            Half of the default ``max_workers``, as ``max_calls_per_vc``; lower it with
            ``max_workers``. The address is the peer's IP as the listener sees it (its
            exact IPv6 address; every local client over loopback TCP shares 127.0.0.1). A
            VC over a Unix socket is its own peer: its calls count only with its own.
        max_headerless_per_vc: flows of one VC waiting for their request header on a
            worker (after ``HEADER_GRACE``); more are reset with OverloadedError.
        first_header_timeout: how long a new flow may take to send its request header.
        header_limits: codec bounds of a request header, which is read before the caller
            is authorized (see :data:`HEADER_LIMITS`).
        args_timeout: once its header is read and the caller authorized, a call's args must
            all arrive within this many seconds (or the call's deadline, if sooner); else
            the flow is reset with TimeoutError.
        send_timeout: the longest one send to a client may wait for credit, whatever the
            call's deadline (a sooner deadline bounds it first): a client that stops reading
            cannot pin a worker for long.
        max_args_bytes: the total size of one call's positional args (their message
            bodies), which are all held in memory at once (64 MiB; a single value is bounded
            by the codec's 4 MiB); a call over it is reset with an OverloadedError that says
            not to retry.
        max_args_bytes_per_vc: the total size of the args the calls of one VC hold while
            reading them (counted as each arg's length arrives); a call that would go over
            is reset with OverloadedError (retry after backing off).
        max_args_bytes_total: the same for all the calls of the server together (256 MiB,
            four VCs' worth), and half of it for the VCs from one remote address together
            (counted as ``max_calls_per_address`` counts calls): many VCs, each within its
            own budget, cannot together hold unbounded memory, nor those of one address
            take it all; a call that would go over is reset with OverloadedError (retry
            after backing off). Keep it at least twice ``max_args_bytes``, so that one
            address can send a maximal call. The process holds more than this: a
            received arg is held both as received and once decoded.
        inline_calls: run a call whose request is complete on arrival (a unary call) on
            the VC's reader thread rather than a worker (no thread hop; one per read of the
            socket, other calls in flight or not; a call running longer than 2 ms gets a
            helper reader for its VC, so other calls on the VC wait at most about 3 ms for
            their data). It still counts against ``max_workers + max_queued``.
        transport: options of the VCs accepted.

    Raises:
        BadArgError: a field is not of its type or out of its range.
    """

    workers: int = 16
    max_workers: int = 256
    max_queued: int = 0
    max_calls_per_vc: int = 128
    max_headerless_per_vc: int = 16
    first_header_timeout: float = 10.0
    header_limits: Limits = HEADER_LIMITS
    args_timeout: float = 30.0
    send_timeout: float = 60.0
    max_args_bytes: int = 64 * 1024 * 1024
    max_args_bytes_per_vc: int = 64 * 1024 * 1024
    inline_calls: bool = True
    transport: TransportOptions = field(default_factory=TransportOptions)
    # (Fields added later come last: a positional ServerOptions(...) keeps its meaning.)
    max_calls_per_address: int = 128
    max_args_bytes_total: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "max_workers",
            "max_calls_per_vc",
            "max_calls_per_address",
            "max_headerless_per_vc",
            "max_args_bytes",
            "max_args_bytes_per_vc",
            "max_args_bytes_total",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.BadArgError(f"server: {name} must be an int >= 1, got {value!r}")
        if (
            not isinstance(self.max_queued, int)
            or isinstance(self.max_queued, bool)
            or self.max_queued < 0
        ):
            raise errors.BadArgError(f"server: max_queued must be >= 0, got {self.max_queued!r}")
        for name in ("first_header_timeout", "args_timeout", "send_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise errors.BadArgError(f"server: {name} must be seconds > 0, got {value!r}")
        # (Checked here, not when the server first listens or reads a request.)
        kinds: tuple[tuple[str, object, type, str], ...] = (
            ("header_limits", self.header_limits, Limits, "a codec Limits"),
            ("inline_calls", self.inline_calls, bool, "a bool"),
            ("transport", self.transport, TransportOptions, "a TransportOptions"),
        )
        for name, value, kind, what in kinds:
            if not isinstance(value, kind):
                raise errors.BadArgError(
                    f"server: ServerOptions.{name} must be {what}, not {type(value).__name__}"
                )
