"""ipcclient: a synchronous, thread-safe RPC SDK in the design of Vanadium.

The public surface is re-exported here; everything else is internal and may change.
Logging goes to the ``ipcclient`` logger and its children (see docs/client.md); a
``NullHandler`` is attached so that an application without logging set up sees nothing.
"""

import logging

from ipcclient import env, vtrace
from ipcclient.call import Call
from ipcclient.client import Client
from ipcclient.context import CancelContext, Context
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
    NotProcessedError,
    NotTrustedError,
    OverloadedError,
    RetryAction,
    TimeoutError,
    UnknownError,
    UnknownMethodError,
    UnknownSuffixError,
    VersionIncompatibleError,
)
from ipcclient.naming.endpoint import Endpoint
from ipcclient.naming.namespace import Namespace
from ipcclient.options import (
    CallOption,
    ClientOptions,
    Granter,
    NoDischarges,
    NoRetry,
    RetryTimeout,
    ServerPattern,
    ServerPublicKey,
    SkipServerAuthorization,
    WaitForReady,
)
from ipcclient.retry import BackoffPolicy, RetryBudget
from ipcclient.security import BlessingPattern, Blessings, Principal, caveats
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns, DefaultAuthorizer
from ipcclient.server.discharger import Discharger
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import MountTable
from ipcclient.server.publisher import Publisher
from ipcclient.server.server import Results, Server, ServerCall, ServerOptions
from ipcclient.transport.manager import TransportOptions

logging.getLogger("ipcclient").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AllowEveryone",
    "AllowPatterns",
    "BackoffPolicy",
    "BadArgError",
    "BadDischargeError",
    "BadProtocolError",
    "BadStateError",
    "BlessingPattern",
    "Blessings",
    "Call",
    "CallOption",
    "CancelContext",
    "CanceledError",
    "Client",
    "ClientOptions",
    "ConnectionFailedError",
    "Context",
    "DefaultAuthorizer",
    "Discharger",
    "EndOfStreamError",
    "Endpoint",
    "ErrorID",
    "ExistError",
    "Granter",
    "IPCError",
    "InternalError",
    "MountTable",
    "Namespace",
    "NoAccessError",
    "NoDischarges",
    "NoExistError",
    "NoRetry",
    "NoServersError",
    "NotProcessedError",
    "NotTrustedError",
    "OverloadedError",
    "Principal",
    "Publisher",
    "Results",
    "RetryAction",
    "RetryBudget",
    "RetryTimeout",
    "Server",
    "ServerCall",
    "ServerOptions",
    "ServerPattern",
    "ServerPublicKey",
    "SkipServerAuthorization",
    "TimeoutError",
    "TransportOptions",
    "UnknownError",
    "UnknownMethodError",
    "UnknownSuffixError",
    "VersionIncompatibleError",
    "WaitForReady",
    "__version__",
    "caveats",
    "env",
    "expose",
    "vtrace",
]
