"""Naming: object names, endpoints and client-side resolution through mount tables.

Owns: the public surface of :mod:`ipcclient.naming.names` (pure functions on name strings),
:mod:`ipcclient.naming.endpoint` (the :class:`Endpoint` value and its string form) and
:mod:`ipcclient.naming.namespace` (:class:`Namespace`, the :class:`Caller` protocol) with
:mod:`ipcclient.naming.mountentry` (:class:`MountEntry`). See ``docs/naming.md``.

Must not: import a client, transport or server module (they sit above naming); the
namespace reaches mount tables only through the injected :class:`Caller`.
"""

from ipcclient.naming.endpoint import (
    NULL_ROUTING_ID,
    Endpoint,
    check_version_compatibility,
)
from ipcclient.naming.names import (
    clean,
    components,
    escape,
    is_reserved,
    is_rooted,
    is_terminal,
    join,
    join_address_name,
    make_terminal,
    split_address_name,
    split_pattern_name,
    unescape,
)
from ipcclient.naming.namespace import (
    MAX_RESOLVE_DEPTH,
    Caller,
    MountedServer,
    MountEntry,
    Namespace,
    ResolutionDepthExceededError,
)

__all__ = [
    "MAX_RESOLVE_DEPTH",
    "NULL_ROUTING_ID",
    "Caller",
    "Endpoint",
    "MountEntry",
    "MountedServer",
    "Namespace",
    "ResolutionDepthExceededError",
    "check_version_compatibility",
    "clean",
    "components",
    "escape",
    "is_reserved",
    "is_rooted",
    "is_terminal",
    "join",
    "join_address_name",
    "make_terminal",
    "split_address_name",
    "split_pattern_name",
    "unescape",
]
