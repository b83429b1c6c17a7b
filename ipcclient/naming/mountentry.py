"""What a name resolves to: :class:`MountEntry` and its :class:`MountedServer` values, and
their plain wire forms (what a mount table's ``ResolveStep`` returns).

Owns: the two value types, their conversion to and from the CBOR-ready form (deadlines
travel as TTLs), and the bounds on an entry received from a peer. Must not: resolve, cache
or call anything (:mod:`ipcclient.naming.namespace` does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipcclient import errors
from ipcclient.naming import names
from ipcclient.naming.endpoint import endpoint_of

__all__ = ["MAX_WIRE_NAME_LEN", "MAX_WIRE_SERVERS", "MountEntry", "MountedServer"]

# Bounds on one MountEntry from a peer (every bound named, with its reason).
MAX_WIRE_SERVERS = 1024  # replicas of one name; far more than any real mount has
MAX_WIRE_NAME_LEN = 16 * 1024  # a name with a few full endpoints in it fits easily

log = logging.getLogger("ipcclient.naming")


@dataclass(frozen=True)
class MountedServer:
    """One server of a mount entry.

    Attributes:
        server: the server's address or rooted name (``/@1@...@@``, ``/host:port/prefix``).
        deadline: when the mount expires, on the namespace's monotonic clock; ``math.inf``
            for never (roots and rooted names).
    """

    server: str
    deadline: float = math.inf

    def to_wire(self, now: float) -> dict[str, Any]:
        """``{"server": str, "ttl": seconds left (>= 0) or None for never}``."""
        ttl = None if math.isinf(self.deadline) else max(0.0, self.deadline - now)
        return {"server": self.server, "ttl": ttl}

    @classmethod
    def from_wire(cls, value: object, now: float) -> MountedServer:
        """Rebuild from :meth:`to_wire`'s form, the TTL counted from ``now``.

        Raises:
            BadProtocolError: the value is malformed.
        """
        if not isinstance(value, Mapping):
            raise errors.BadProtocolError("mount entry: a server must be a map")
        server = value.get("server")
        ttl = value.get("ttl")
        if not isinstance(server, str) or not server or len(server) > MAX_WIRE_NAME_LEN:
            raise errors.BadProtocolError("mount entry: bad server")
        try:
            endpoint_of(server)  # a rooted name with an endpoint: never one without
        except errors.BadArgError as exc:
            raise errors.BadProtocolError(f"mount entry: bad server: {exc.msg}") from None
        if ttl is None:
            return cls(server, math.inf)
        # (A peer's value is never formatted: a repr can fail, an int of 5,000 digits's.)
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            raise errors.BadProtocolError(f"mount entry: bad ttl (a {type(ttl).__name__})")
        try:
            seconds = float(ttl)
        except OverflowError:
            raise errors.BadProtocolError("mount entry: ttl out of range") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise errors.BadProtocolError(f"mount entry: bad ttl {seconds!r}")
        return cls(server, now + seconds)


@dataclass(frozen=True)
class MountEntry:
    """What a name resolves to: the remaining name and the ordered servers that hold it.

    Attributes:
        name: the name relative to each server (empty when the servers are the objects).
        servers: the servers, in the order to try them.
        serves_mount_table: the servers are mount tables (resolution may continue).
        is_leaf: the servers serve nothing below ``name``.
    """

    name: str
    servers: tuple[MountedServer, ...]
    serves_mount_table: bool = False
    is_leaf: bool = False

    def names(self) -> list[str]:
        """The terminal rooted name of :attr:`name` at each server, in order."""
        return [names.join_address_name(s.server, self.name, terminal=True) for s in self.servers]

    def is_stale(self, now: float) -> bool:
        """True once any server's deadline has passed."""
        return any(s.deadline <= now for s in self.servers)

    def to_wire(self, now: float) -> dict[str, Any]:
        """The plain CBOR-ready form; deadlines travel as TTLs (seconds from ``now``)."""
        return {
            "name": self.name,
            "servers": [s.to_wire(now) for s in self.servers],
            "serves_mount_table": self.serves_mount_table,
            "is_leaf": self.is_leaf,
        }

    @classmethod
    def from_wire(cls, value: object, now: float) -> MountEntry:
        """Rebuild from :meth:`to_wire`'s form; TTLs become deadlines from ``now``. A
        malformed server is left out (logged); the others are kept.

        Raises:
            BadProtocolError: the value is malformed or over the bounds, or it names
                servers and every one of them is malformed.
        """
        if not isinstance(value, Mapping):
            raise errors.BadProtocolError("mount entry: expected a map")
        name = value.get("name", "")
        servers = value.get("servers")
        smt = value.get("serves_mount_table", False)
        leaf = value.get("is_leaf", False)
        if not isinstance(name, str) or len(name) > MAX_WIRE_NAME_LEN:
            raise errors.BadProtocolError("mount entry: bad name")
        if names.is_rooted(name):
            raise errors.BadProtocolError(f"mount entry: name {name!r} must be relative")
        if not isinstance(servers, list | tuple) or len(servers) > MAX_WIRE_SERVERS:
            raise errors.BadProtocolError("mount entry: bad servers")
        if not isinstance(smt, bool) or not isinstance(leaf, bool):
            raise errors.BadProtocolError("mount entry: flags must be bools")
        good: list[MountedServer] = []
        first_error: errors.BadProtocolError | None = None
        for s in servers:
            try:
                good.append(MountedServer.from_wire(s, now))
            except errors.BadProtocolError as exc:
                # One malformed server does not hide the well-formed ones beside it.
                log.debug("%s (skipped)", exc.msg)
                first_error = first_error or exc
        if first_error is not None and not good:
            raise first_error
        return cls(names.clean(name), tuple(good), smt, leaf)
