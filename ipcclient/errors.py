"""Error IDs, retry actions and the exception tree.

Owns: the catalogue of error IDs in the spirit of Vanadium's verror, the retry action each
carries, the exception classes users catch by kind, and the plain wire form of an error
(``to_wire`` / ``from_wire``) that the codec tags.

Must not: import anything from ipcclient, encode bytes (that is the codec's job), or decide
retries from message text. Retry decisions read ``IPCError.action`` only.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ERROR_CLASSES",
    "AbortedError",
    "BadArgError",
    "BadDischargeError",
    "BadProtocolError",
    "BadStateError",
    "CanceledError",
    "ConnectionFailedError",
    "EndOfStreamError",
    "ErrorID",
    "ExistError",
    "IPCError",
    "InternalError",
    "NoAccessError",
    "NoExistError",
    "NoServersError",
    "NotProcessedError",
    "NotTrustedError",
    "OverloadedError",
    "RetryAction",
    "TimeoutError",
    "UnknownError",
    "UnknownMethodError",
    "UnknownSuffixError",
    "VersionIncompatibleError",
    "from_wire",
    "register",
    "to_wire",
]


_E = TypeVar("_E", bound="IPCError")


class RetryAction(enum.IntEnum):
    """What a caller may do after an error (Vanadium's ActionCode, same numbers)."""

    NO_RETRY = 0
    """Do not retry: the error will not go away by itself."""
    RETRY_CONNECTION = 1
    """Renew the connection (dial a new VC) and try again."""
    RETRY_REFETCH = 2
    """Refetch what the call was built from (resolve the name again) and try again."""
    RETRY_BACKOFF = 3
    """Back off, then try again a bounded number of times."""

    @classmethod
    def from_wire(cls, value: object) -> RetryAction:
        """A peer's action code; unknown codes degrade to NO_RETRY (fail safe)."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                return cls.NO_RETRY
        return cls.NO_RETRY


class ErrorID(str, enum.Enum):
    """The error IDs this side knows. The string is what travels on the wire."""

    UNKNOWN = "ipc.Unknown"
    INTERNAL = "ipc.Internal"
    BAD_ARG = "ipc.BadArg"
    BAD_PROTOCOL = "ipc.BadProtocol"
    BAD_STATE = "ipc.BadState"
    EXIST = "ipc.Exist"
    NO_EXIST = "ipc.NoExist"
    NO_SERVERS = "ipc.NoServers"
    NO_ACCESS = "ipc.NoAccess"
    NOT_TRUSTED = "ipc.NotTrusted"
    BAD_DISCHARGE = "ipc.BadDischarge"
    TIMEOUT = "ipc.Timeout"
    CANCELED = "ipc.Canceled"
    ABORTED = "ipc.Aborted"
    VERSION_INCOMPATIBLE = "ipc.VersionIncompatible"
    UNKNOWN_METHOD = "ipc.UnknownMethod"
    UNKNOWN_SUFFIX = "ipc.UnknownSuffix"
    CONNECTION_FAILED = "ipc.ConnectionFailed"
    OVERLOADED = "ipc.Overloaded"
    END_OF_FILE = "ipc.EndOfFile"


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
"""What :meth:`IPCError.__str__` shows for each control character left after whitespace
is collapsed."""


def _one_line(text: str) -> str:
    """``text`` as one line a peer cannot use to forge log lines or drive a terminal: line
    breaks collapsed, control characters shown as ``\\xNN`` and every other character
    that is not printable (bidirectional controls, zero-width characters, unassigned code
    points) as ``\\uXXXX``."""
    if text.isprintable():
        return text
    text = " ".join(text.split()).translate(_CONTROLS)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


class IPCError(Exception):
    """Base of every error ipcclient raises.

    Attributes:
        id: the error ID string (an :class:`ErrorID` value, or a peer's ID this side does
            not know, kept verbatim).
        action: the :class:`RetryAction` retry decisions read.
        msg: a human-readable message (never parsed).
        params: extra values (component, operation, ...), CBOR-encodable.
        request_sent: whether the request may have reached a server: ``False`` when it
            certainly did not (or the server said it never took it: see
            :class:`NotProcessedError`), ``True`` when it may have, ``None`` when unknown.
        tried: what was tried on the way (names resolved, endpoints dialed, attempts).
    """

    error_id: ClassVar[str] = ErrorID.UNKNOWN.value
    default_action: ClassVar[RetryAction] = RetryAction.NO_RETRY

    def __init__(
        self,
        msg: str = "",
        *params: Any,
        id: str | None = None,
        action: RetryAction | None = None,
        request_sent: bool | None = None,
        tried: Sequence[str] = (),
    ) -> None:
        super().__init__(msg)
        self.id: str = id if id is not None else type(self).error_id
        self.action: RetryAction = action if action is not None else type(self).default_action
        self.msg: str = msg
        self.params: tuple[Any, ...] = tuple(params)
        self.request_sent: bool | None = request_sent
        self.tried: tuple[str, ...] = tuple(tried)

    def __str__(self) -> str:
        """One line: the ID and what happened (and, where there is one, what to do). What was
        tried and whether the request went out are in :meth:`details`, not here."""
        return _one_line(f"{self.id}: {self.msg}" if self.msg else self.id)

    def details(self) -> str:
        """Several lines for a person debugging: the one-line summary, the retry action,
        whether the request may have reached a server, what was tried, and the cause."""
        lines = [str(self), f"  action: {self.action.name}"]
        if self.request_sent is not None:
            lines.append(
                "  the request may have reached the server"
                if self.request_sent
                else "  the request was not sent"
            )
        lines.extend(f"  tried: {_one_line(t)}" for t in self.tried)  # (a peer's IDs)
        cause = self.__cause__
        if cause is not None:
            lines.append(f"  caused by: {type(cause).__name__}: {_one_line(str(cause))}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, action={self.action.name}, msg={self.msg!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IPCError):
            return NotImplemented
        return (self.id, self.action, self.msg, self.params) == (
            other.id,
            other.action,
            other.msg,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.action, self.msg))

    @property
    def retryable(self) -> bool:
        """True when the action allows some kind of retry."""
        return self.action is not RetryAction.NO_RETRY

    def with_context(
        self,
        *,
        request_sent: bool | None = None,
        tried: Sequence[str] = (),
        action: RetryAction | None = None,
        msg: str | None = None,
    ) -> IPCError:
        """A copy of this error (its class, and what a subclass keeps of its own) with "did
        it run?", "what was tried" (appended) and, if given, another retry action or
        message filled in."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)  # (a subclass's own fields)
        IPCError.__init__(
            clone,
            self.msg if msg is None else msg,
            *self.params,
            id=self.id,
            action=action if action is not None else self.action,
            request_sent=request_sent if request_sent is not None else self.request_sent,
            tried=tuple(self.tried) + tuple(tried),
        )
        clone.__cause__ = self.__cause__
        return clone


class UnknownError(IPCError):
    """An error without a more specific kind (also used for unknown peer IDs' base)."""

    error_id = ErrorID.UNKNOWN.value


class InternalError(IPCError):
    """A bug or an unexpected condition on one side."""

    error_id = ErrorID.INTERNAL.value


class BadArgError(IPCError):
    """The caller passed an invalid argument."""

    error_id = ErrorID.BAD_ARG.value


class BadProtocolError(IPCError):
    """The peer broke the protocol (garbage, bad framing, bad sizes, bad state)."""

    error_id = ErrorID.BAD_PROTOCOL.value


class BadStateError(IPCError):
    """An operation was called in a state that does not allow it."""

    error_id = ErrorID.BAD_STATE.value


class ExistError(IPCError):
    """Something already exists."""

    error_id = ErrorID.EXIST.value


class NoExistError(IPCError):
    """Something does not exist."""

    error_id = ErrorID.NO_EXIST.value


class NoServersError(IPCError):
    """No server could be reached for a name; refetching the name may help."""

    error_id = ErrorID.NO_SERVERS.value
    default_action = RetryAction.RETRY_REFETCH


class NoAccessError(IPCError):
    """The caller is not authorized."""

    error_id = ErrorID.NO_ACCESS.value


class NotTrustedError(IPCError):
    """The peer's identity is not trusted (roots, caveats, or a pattern did not match)."""

    error_id = ErrorID.NOT_TRUSTED.value


class BadDischargeError(NoAccessError):
    """A discharge was refused; ``params[0]`` names the third-party caveat ID.

    A subclass of :class:`NoAccessError` so that code catching NoAccess still catches it;
    the client uses the caveat ID to invalidate only that discharge.
    """

    error_id = ErrorID.BAD_DISCHARGE.value


class TimeoutError(IPCError, builtins.TimeoutError):
    """A deadline passed. Also a built-in ``TimeoutError`` (so ``except TimeoutError``
    written for the standard library catches it too)."""

    error_id = ErrorID.TIMEOUT.value


class CanceledError(IPCError):
    """The operation was cancelled."""

    error_id = ErrorID.CANCELED.value


class AbortedError(IPCError):
    """The operation was aborted (for example a send after close_send)."""

    error_id = ErrorID.ABORTED.value


class VersionIncompatibleError(IPCError):
    """The two sides share no protocol version."""

    error_id = ErrorID.VERSION_INCOMPATIBLE.value


class UnknownMethodError(IPCError):
    """The object has no such method."""

    error_id = ErrorID.UNKNOWN_METHOD.value


class UnknownSuffixError(IPCError):
    """The server has no object at that suffix."""

    error_id = ErrorID.UNKNOWN_SUFFIX.value


class ConnectionFailedError(IPCError, ConnectionError):
    """A dial failed or a VC broke; a new connection may work. Also a built-in
    ``ConnectionError``."""

    error_id = ErrorID.CONNECTION_FAILED.value
    default_action = RetryAction.RETRY_CONNECTION


class NotProcessedError(ConnectionFailedError):
    """The connection closed and the server said (GOAWAY's last flow id) that it never took
    this flow: nothing of the request ran there, whatever reached its socket, so the request
    may be sent again on a new connection. Its ID is ``ipc.ConnectionFailed`` (it travels as
    one); the type is the signal, read by the client's retry decision. Its ``request_sent``
    is always False: the server said so, whatever bytes reached it."""

    def __init__(self, msg: str = "", *params: Any, **kw: Any) -> None:
        kw["request_sent"] = False
        super().__init__(msg, *params, **kw)

    def with_context(
        self,
        *,
        request_sent: bool | None = None,
        tried: Sequence[str] = (),
        action: RetryAction | None = None,
        msg: str | None = None,
    ) -> IPCError:
        """As :meth:`IPCError.with_context`, but ``request_sent`` stays False."""
        return super().with_context(request_sent=False, tried=tried, action=action, msg=msg)


class OverloadedError(IPCError):
    """The server shed load; back off and try again."""

    error_id = ErrorID.OVERLOADED.value
    default_action = RetryAction.RETRY_BACKOFF


class EndOfStreamError(IPCError, EOFError):
    """A stream ended cleanly: ``recv`` after the peer's last item. Also an ``EOFError``."""

    error_id = ErrorID.END_OF_FILE.value


ERROR_CLASSES: Mapping[str, type[IPCError]] = {
    cls.error_id: cls
    for cls in (
        UnknownError,
        InternalError,
        BadArgError,
        BadProtocolError,
        BadStateError,
        ExistError,
        NoExistError,
        NoServersError,
        NoAccessError,
        NotTrustedError,
        BadDischargeError,
        TimeoutError,
        CanceledError,
        AbortedError,
        VersionIncompatibleError,
        UnknownMethodError,
        UnknownSuffixError,
        ConnectionFailedError,
        OverloadedError,
        EndOfStreamError,
    )
}

# Bounds on what a peer may make us keep from one wire error (every bound named).
MAX_WIRE_ID_LEN = 256  # IDs are short dotted names
MAX_WIRE_MSG_LEN = 64 * 1024  # a message longer than this is truncated, not rejected
MAX_WIRE_PARAMS = 64  # params beyond this are dropped


_REGISTERED: dict[str, type[IPCError]] = {}
"""Application error classes by ID (:func:`register`)."""


def register(cls: type[_E]) -> type[_E]:
    """Make ``cls``, an application's subclass of :class:`IPCError` with an ``error_id`` of
    its own, the class an error with that ID is rebuilt as when it comes back from a peer
    (usable as a class decorator; the server and the client each register it). Without
    this, such an error arrives as a plain :class:`IPCError` that keeps the ID, action,
    message and params: ``except OutOfStock`` would not catch it. A class defined again
    under the same name (its module reloaded, or a script also imported by its module
    name) replaces the one registered before.

    Raises:
        BadArgError: ``cls`` is not an IPCError subclass, its ID is empty, longer than
            256 characters or one of this package's (``ipc.`` ones), or another class
            has that ID already.
    """
    if not (isinstance(cls, type) and issubclass(cls, IPCError)) or cls is IPCError:
        raise BadArgError(f"errors.register: {cls!r} is not a subclass of IPCError")
    wid = cls.__dict__.get("error_id")
    if not isinstance(wid, str) or not wid or len(wid) > MAX_WIRE_ID_LEN:
        raise BadArgError(
            f"errors.register: {cls.__name__} needs an error_id of its own (a short "
            f"dotted name such as 'shop.OutOfStock'), not {wid!r}"
        )
    if wid in ERROR_CLASSES or wid.startswith("ipc."):
        raise BadArgError(f"errors.register: {wid!r} is one of ipcclient's own error IDs")
    known = _REGISTERED.setdefault(wid, cls)
    if known is not cls and _same_class(known, cls):
        _REGISTERED[wid] = known = cls  # (its module reloaded, or run as __main__ too)
    if known is not cls:
        raise BadArgError(
            f"errors.register: {wid!r} is the ID of {known.__module__}.{known.__qualname__} already"
        )
    return cls


def _same_class(a: type, b: type) -> bool:
    """Whether ``a`` and ``b`` are one class defined twice: the same name in the same module
    (reloaded), or in a script that was also imported under its module name."""
    if a.__qualname__ != b.__qualname__:
        return False
    return a.__module__ == b.__module__ or "__main__" in (a.__module__, b.__module__)


def to_wire(err: IPCError) -> dict[str, Any]:
    """The plain (CBOR-ready) form of an error: ``{"id", "action", "msg", "params"}``."""
    return {
        "id": err.id,
        "action": int(err.action),
        "msg": err.msg,
        "params": list(err.params),
    }


def from_wire(value: object) -> IPCError:
    """Rebuild an error from its wire form.

    A known ID gives its class; an ID this side does not know gives an :class:`IPCError`
    that keeps the peer's ID and action.

    Raises:
        BadProtocolError: the value is not a well-formed wire error.
    """
    if not isinstance(value, Mapping):
        raise BadProtocolError(f"malformed wire error: expected a map, got {type(value).__name__}")
    wid = value.get("id")
    msg = value.get("msg", "")
    params = value.get("params", [])
    if not isinstance(wid, str) or not wid or len(wid) > MAX_WIRE_ID_LEN:
        raise BadProtocolError("malformed wire error: bad id")
    if not isinstance(msg, str):
        raise BadProtocolError("malformed wire error: bad msg")
    if not isinstance(params, list | tuple):
        raise BadProtocolError("malformed wire error: bad params")
    action = RetryAction.from_wire(value.get("action", 0))
    msg, params = msg[:MAX_WIRE_MSG_LEN], params[:MAX_WIRE_PARAMS]
    cls = ERROR_CLASSES.get(wid) or _REGISTERED.get(wid, IPCError)
    try:
        return cls(msg, *params, id=wid, action=action)
    except Exception:  # (a registered class whose __init__ takes other arguments)
        return IPCError(msg, *params, id=wid, action=action)
