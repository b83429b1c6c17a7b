"""ipcclient: a synchronous, thread-safe RPC SDK in the design of Vanadium.

The public surface is re-exported here; everything else is internal and may change.
"""

from ipcclient.errors import (
    AbortedError,
    BadArgError,
    BadDischargeError,
    BadProtocolError,
    BadStateError,
    CanceledError,
    ConnectionFailedError,
    EndOfStreamError,
    ErrorID,
    ExistError,
    InternalError,
    IPCError,
    NoAccessError,
    NoExistError,
    NoServersError,
    NotTrustedError,
    OverloadedError,
    RetryAction,
    TimeoutError,
    UnknownError,
    UnknownMethodError,
    UnknownSuffixError,
    VersionIncompatibleError,
)

__version__ = "0.1.0"

__all__ = [
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
    "NotTrustedError",
    "OverloadedError",
    "RetryAction",
    "TimeoutError",
    "UnknownError",
    "UnknownMethodError",
    "UnknownSuffixError",
    "VersionIncompatibleError",
    "__version__",
]
