"""Which modules a compiled install of ipcclient compiles, and which of them this process runs
compiled.

Owns: :data:`MODULES`, the one list of the modules that ``setup.py`` hands to mypyc when a
build asks for it (``IPCCLIENT_COMPILE=1``) and that ``make test-compiled`` builds and tests;
and :func:`compiled_modules`, which tells a user whether their install is the compiled one.

Must not: import anything of the package. ``setup.py`` reads this file by path, before the
package or its dependencies can be imported.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

__all__ = ["MODULES", "compiled_modules"]

MODULES: tuple[str, ...] = (
    "ipcclient.codec",
    "ipcclient.headers",
    "ipcclient.stream",
    "ipcclient.vtrace",
    "ipcclient.wire.events",
    "ipcclient.wire.frames",
    "ipcclient.wire.messages",
    "ipcclient.wire.mux",
    "ipcclient.wire.muxstate",
    "ipcclient.vc.records",
    "ipcclient.transport.conn",
    "ipcclient.transport.flow",
    "ipcclient.transport.inline",
    "ipcclient.transport.liveness",
    "ipcclient.transport.polling",
    "ipcclient.transport.reader",
    "ipcclient.transport.readrole",
    "ipcclient.transport.waits",
    "ipcclient.transport.writer",
    "ipcclient.client.fast",
    "ipcclient.client.plan",
    "ipcclient.client.request",
    "ipcclient.client.retries",
    "ipcclient.server.authorizer",
    "ipcclient.server.call",
    "ipcclient.server.callsecurity",
    "ipcclient.server.capacity",
    "ipcclient.server.dispatcher",
    "ipcclient.server.flows",
    "ipcclient.server.server",
)
"""The modules a compiled build compiles: most of the per-call path of both sides. The rest
of the package stays interpreted: it runs once per VC or less (handshake, security, naming),
or it checks a user's settings itself (``transport/keepalive.py``: a compiled dataclass would
refuse a wrong type with a bare TypeError first), or it is on a call's path but cannot be
compiled as it is: ``context.py`` (a class derived from ``int``),
``call.py`` and ``client/api.py`` (objects that are weakly referenced, and methods with
closures mypyc does not compile)."""


def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`MODULES` that this process imports compiled: all of them in a
    compiled install, none in a pure-Python one.

    Finds each module without importing it; a module the install does not hold counts as not
    compiled.
    """
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            found.append(name)
    return tuple(found)
