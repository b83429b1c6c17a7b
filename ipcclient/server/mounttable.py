"""The mount table service: names to servers, with TTLs, served as a dispatcher.

Owns: :class:`MountTable` (a :class:`~ipcclient.server.server.Dispatcher`; the call's suffix
is the name inside the table), the in-memory tree of mounts, its bounds, expiry by TTL, and
access control by the client's blessing names. Methods, by their wire names:

``Mount(server, ttl, flags)``
    Mount the rooted name ``server`` (``/@1@tcp@...@@`` or ``/host:port[/prefix]``) at the
    suffix for ``ttl`` seconds. ``flags`` is a bitmask of :data:`MT` (the server is a mount
    table), :data:`LEAF` (it serves nothing below the name) and :data:`REPLACE` (drop the
    servers mounted there first). Mounting a server again refreshes its TTL in place.
    Without REPLACE, MT / LEAF must agree with the live servers already there (BadArg).
``Unmount(server)``
    Remove ``server`` from the suffix; ``""`` removes every server there. Idempotent.
``ResolveStep()``
    Walk the suffix's components from the root; the first node on the path with live
    servers answers ``MountEntry(remaining components, its servers).to_wire(now)``; no mount
    on the path is ``NoExistError("no such name")``.
``Glob(pattern)``
    Stream ``{"name", "servers", "serves_mount_table", "is_leaf"}`` for each live mount
    below the suffix whose name (relative to the suffix) matches ``pattern`` (``*`` and
    ``fnmatch`` classes within one component, ``...`` for zero or more components). Returns
    the number of items sent. Glob does not descend below a mount point: what is below it
    lives in the mounted server (names mounted under a mount point are shadowed, exactly as
    ResolveStep sees them).

Must not: make RPCs or resolve names (it answers one step; the client's namespace walks),
hold its lock while streaming to a client, or keep anything unbounded.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ipcclient import errors
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint
from ipcclient.naming.namespace import MountedServer, MountEntry
from ipcclient.security.patterns import BlessingPattern
from ipcclient.server.authorizer import Authorizer, CallSecurity
from ipcclient.server.exposure import expose
from ipcclient.server.server import ServerCall

__all__ = [
    "LEAF",
    "MAX_COMPONENTS",
    "MAX_GLOB_RESULTS",
    "MAX_NAME_LEN",
    "MAX_NODES",
    "MAX_SERVERS_PER_NAME",
    "MAX_SERVER_LEN",
    "MAX_TTL",
    "MT",
    "REPLACE",
    "MountTable",
]

log = logging.getLogger("ipcclient.mounttable")

MT = 1
"""Mount flag: the mounted server is itself a mount table (resolution continues there)."""
LEAF = 2
"""Mount flag: the mounted server serves nothing below the mounted name."""
REPLACE = 4
"""Mount flag: replace every server mounted at the name (and its flags) with this one."""
_ALL_FLAGS = MT | LEAF | REPLACE

# Bounds (h11 style: each named, with its reason).
MAX_NAME_LEN = 4096
"""Characters in a suffix; a name of a few dozen components with endpoints fits easily."""
MAX_COMPONENTS = 64
"""Components in a name; twice the namespace's resolve depth, far beyond real hierarchies."""
MAX_SERVER_LEN = 4096
"""Characters in a mounted server's name (an endpoint with a few blessings is ~200)."""
MAX_SERVERS_PER_NAME = 256
"""Replicas under one name; more is a bug or an attack, and every answer carries them all."""
MAX_NODES = 100_000
"""Nodes (name components) in the whole table: bounds memory to tens of MB at worst."""
MAX_TTL = 24 * 3600.0
"""Longest TTL granted; longer requests are clamped (a server must refresh at least daily)."""
MAX_GLOB_RESULTS = 10_000
"""Items one Glob may stream; a larger answer is cut off at this many (logged)."""
MAX_PATTERN_LEN = 1024
"""Characters in a Glob pattern."""
SWEEP_INTERVAL = 60.0
"""Seconds between full sweeps of expired mounts (done lazily on Mount; lookups also purge
what they walk through)."""


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    servers: dict[str, float] = field(default_factory=dict)  # server -> deadline, in order
    mt: bool = False
    leaf: bool = False

    def purge(self, now: float) -> bool:
        """Drop expired servers; True if the node still has live ones."""
        if self.servers:
            dead = [s for s, d in self.servers.items() if d <= now]
            for s in dead:
                del self.servers[s]
        return bool(self.servers)


def _check_suffix(suffix: str) -> tuple[str, ...]:
    if len(suffix) > MAX_NAME_LEN:
        raise errors.BadArgError(f"mount table: name longer than {MAX_NAME_LEN} characters")
    comps = names.components(suffix)
    if len(comps) > MAX_COMPONENTS:
        raise errors.BadArgError(f"mount table: name has more than {MAX_COMPONENTS} components")
    return comps


def _check_server(server: object) -> str:
    if not isinstance(server, str) or not server:
        raise errors.BadArgError("mount table: the server must be a non-empty rooted name")
    if len(server) > MAX_SERVER_LEN:
        raise errors.BadArgError(f"mount table: server name longer than {MAX_SERVER_LEN}")
    if not names.is_rooted(server):
        raise errors.BadArgError(f"mount table: server {server!r} must be a rooted name")
    address, _ = names.split_address_name(server)
    if not address:
        raise errors.BadArgError(f"mount table: server {server!r} has no address")
    Endpoint.parse(address)  # BadArgError when malformed
    return names.clean(server)


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise errors.BadArgError(f"mount table: ttl must be a number of seconds, got {ttl!r}")
    seconds = float(ttl)
    if not math.isfinite(seconds) or seconds <= 0:
        raise errors.BadArgError(f"mount table: ttl must be > 0 and finite, got {ttl!r}")
    return min(seconds, MAX_TTL)


class _MethodAuthorizer:
    """Mount/Unmount need a name matched by the mount patterns; ResolveStep/Glob need one
    matched by the resolve patterns (None: every authenticated client)."""

    def __init__(
        self,
        mount: tuple[BlessingPattern, ...] | None,
        resolve: tuple[BlessingPattern, ...] | None,
    ) -> None:
        self._mount = mount
        self._resolve = resolve

    def authorize(self, call: CallSecurity) -> None:
        if call.method in ("Mount", "Unmount"):
            patterns = self._mount
        elif call.method in ("ResolveStep", "Glob"):
            patterns = self._resolve
        else:
            return  # not a mount table method: the server answers UnknownMethod
        if patterns is None or any(p.matched_by(*call.client_names) for p in patterns):
            return
        detail = (
            f"mount table: client {list(call.client_names)!r} may not call {call.method!r} "
            f"(needs a blessing matching {[str(p) for p in patterns]!r})"
        )
        if call.rejected:
            detail += "; rejected: " + "; ".join(f"{n} ({e})" for n, e in call.rejected)
        raise errors.NoAccessError(detail)


@expose
class _Invoker:
    """What the server invokes: only the four wire methods are public (and exposed)."""

    def __init__(self, table: MountTable) -> None:
        self._table = table

    def Mount(self, call: ServerCall, server: str, ttl: float, flags: int) -> None:
        self._table._mount(call.suffix, server, ttl, flags)

    def Unmount(self, call: ServerCall, server: str) -> None:
        self._table._unmount(call.suffix, server)

    def ResolveStep(self, call: ServerCall) -> dict[str, Any]:
        return self._table._resolve_step(call.suffix)

    def Glob(self, call: ServerCall, pattern: str) -> int:
        count = 0
        for item in self._table._glob(call.suffix, pattern):
            call.send(item)
            count += 1
        return count


class MountTable:
    """An in-memory mount table; serve it with ``server.serve_dispatcher(table)`` on a
    ``Server(principal, serves_mount_table=True)``.

    Thread-safe: one lock guards the tree and is held only for in-memory work.

    Args:
        mount_patterns: blessing patterns allowed to Mount and Unmount (None: everyone,
            even a client with no validated blessing name).
        resolve_patterns: blessing patterns allowed to ResolveStep and Glob (None: everyone).
        clock: monotonic clock for TTLs (inject one in tests).
        max_nodes: the most nodes the tree may hold (default :data:`MAX_NODES`).
        max_servers_per_name: the most servers at one name (default
            :data:`MAX_SERVERS_PER_NAME`).
        max_ttl: TTLs are clamped to this (default :data:`MAX_TTL`).
    """

    def __init__(
        self,
        *,
        mount_patterns: Iterable[str] | None = ("...",),
        resolve_patterns: Iterable[str] | None = ("...",),
        clock: Callable[[], float] = time.monotonic,
        max_nodes: int = MAX_NODES,
        max_servers_per_name: int = MAX_SERVERS_PER_NAME,
        max_ttl: float = MAX_TTL,
    ) -> None:
        if max_nodes < 1 or max_servers_per_name < 1 or not max_ttl > 0:
            raise errors.BadArgError("mount table: bounds must be positive")
        self._authorizer = _MethodAuthorizer(
            _patterns(mount_patterns, "mount_patterns"),
            _patterns(resolve_patterns, "resolve_patterns"),
        )
        self._clock = clock
        self._max_nodes = max_nodes
        self._max_servers = max_servers_per_name
        self._max_ttl = min(max_ttl, MAX_TTL)
        self._lock = threading.Lock()
        self._root = _Node()
        self._nodes = 1
        self._last_sweep = clock()
        self._invoker = _Invoker(self)

    # -- Dispatcher ------------------------------------------------------------------------

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        """Every suffix is served (it is a name in the table); the authorizer checks the
        method against the access patterns. Only the four wire methods are invocable: the
        object served is a private invoker, not this table."""
        return self._invoker, self._authorizer

    # -- inspection (Python only, not remotely callable: the invoker is what is served) ----

    def node_count(self) -> int:
        """Nodes in the tree now (the root included; expired ones until purged)."""
        with self._lock:
            return self._nodes

    def set_access(
        self,
        *,
        mount_patterns: Iterable[str] | None,
        resolve_patterns: Iterable[str] | None,
    ) -> None:
        """Replace the access patterns (as in the constructor); calls already authorized
        are not affected."""
        self._authorizer = _MethodAuthorizer(
            _patterns(mount_patterns, "mount_patterns"),
            _patterns(resolve_patterns, "resolve_patterns"),
        )

    def sweep(self) -> int:
        """Drop every expired server and empty node now; returns the nodes left."""
        with self._lock:
            self._sweep_locked(self._clock())
            return self._nodes

    # -- the methods -----------------------------------------------------------------------

    def _mount(self, suffix: str, server: str, ttl: float, flags: int) -> None:
        comps = _check_suffix(suffix)
        if not comps:
            raise errors.BadArgError("mount table: cannot mount at the root of the table")
        for c in comps:
            if names.is_reserved(c):
                raise errors.BadArgError(f"mount table: name element {c!r} is reserved")
        server = _check_server(server)
        seconds = min(_check_ttl(ttl), self._max_ttl)
        if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~_ALL_FLAGS:
            raise errors.BadArgError(f"mount table: bad flags {flags!r}")
        want_mt, want_leaf = bool(flags & MT), bool(flags & LEAF)
        with self._lock:
            now = self._clock()
            if now - self._last_sweep >= SWEEP_INTERVAL:
                self._sweep_locked(now)
            node = self._node_for_mount(comps, now)
            live = node.purge(now)
            if flags & REPLACE:
                node.servers.clear()
                live = False
            if live and (node.mt, node.leaf) != (want_mt, want_leaf):
                raise errors.BadArgError(
                    f"mount table: {'/'.join(comps)!r} is mounted with mt={node.mt} "
                    f"leaf={node.leaf}; use REPLACE to change the flags"
                )
            if server not in node.servers and len(node.servers) >= self._max_servers:
                raise errors.OverloadedError(
                    f"mount table: {'/'.join(comps)!r} already has {self._max_servers} servers",
                    action=errors.RetryAction.NO_RETRY,
                )
            node.mt, node.leaf = want_mt, want_leaf
            node.servers[server] = now + seconds
        log.debug("mount table: mounted %s at %r for %.1fs", server, "/".join(comps), seconds)

    def _node_for_mount(self, comps: tuple[str, ...], now: float) -> _Node:
        """The node at ``comps``, created with its parents; the lock is held."""
        missing = 0
        node = self._root
        for i, c in enumerate(comps):
            child = node.children.get(c)
            if child is None:
                missing = len(comps) - i
                break
            node = child
        if missing and self._nodes + missing > self._max_nodes:
            self._sweep_locked(now)
        if missing and self._nodes + missing > self._max_nodes:
            raise errors.OverloadedError(
                f"mount table: full ({self._max_nodes} nodes)", action=errors.RetryAction.NO_RETRY
            )
        node = self._root
        for c in comps:
            child = node.children.get(c)
            if child is None:
                child = node.children[c] = _Node()
                self._nodes += 1
            node = child
        return node

    def _unmount(self, suffix: str, server: str) -> None:
        comps = _check_suffix(suffix)
        if not isinstance(server, str):
            raise errors.BadArgError("mount table: the server must be a str ('' for all)")
        target = names.clean(server) if server else ""
        with self._lock:
            path = [self._root]
            for c in comps:
                child = path[-1].children.get(c)
                if child is None:
                    return  # nothing mounted there: unmounting is idempotent
                path.append(child)
            node = path[-1]
            if target:
                node.servers.pop(target, None)
            else:
                node.servers.clear()
            self._prune_locked(path, comps)

    def _resolve_step(self, suffix: str) -> dict[str, Any]:
        comps = _check_suffix(suffix)
        with self._lock:
            now = self._clock()
            path = [self._root]
            for i, c in enumerate(comps):
                child = path[-1].children.get(c)
                if child is None:
                    break
                path.append(child)
                if child.purge(now):
                    entry = MountEntry(
                        "/".join(comps[i + 1 :]),
                        tuple(MountedServer(s, d) for s, d in child.servers.items()),
                        child.mt,
                        child.leaf,
                    )
                    return entry.to_wire(now)
            self._prune_locked(path, comps[: len(path) - 1])
        raise errors.NoExistError(f"mount table: no such name {suffix!r}", suffix)

    def _glob(self, suffix: str, pattern: str) -> Iterator[dict[str, Any]]:
        comps = _check_suffix(suffix)
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LEN:
            raise errors.BadArgError("mount table: bad glob pattern")
        pat = names.components(pattern)
        items: list[dict[str, Any]] = []
        with self._lock:
            now = self._clock()
            node: _Node | None = self._root
            for c in comps:
                node = node.children.get(c) if node is not None else None
            if node is not None:
                self._glob_locked(node, (), frozenset({0}), pat, now, items)
        if len(items) >= MAX_GLOB_RESULTS:
            log.warning(
                "mount table: Glob %r at %r cut off at %d items", pattern, suffix, len(items)
            )
        return iter(items)

    def _glob_locked(
        self,
        node: _Node,
        rel: tuple[str, ...],
        states: frozenset[int],
        pat: tuple[str, ...],
        now: float,
        out: list[dict[str, Any]],
    ) -> None:
        if len(out) >= MAX_GLOB_RESULTS:
            return
        states = _close(states, pat)
        if node.purge(now):
            if len(pat) in states:
                out.append(
                    {
                        "name": "/".join(rel),
                        "servers": [
                            MountedServer(s, d).to_wire(now) for s, d in node.servers.items()
                        ],
                        "serves_mount_table": node.mt,
                        "is_leaf": node.leaf,
                    }
                )
            if rel:
                return  # a mount point: what is below lives in the mounted server
        for name in sorted(node.children):
            nxt = _advance(states, pat, name)
            if nxt:
                self._glob_locked(node.children[name], (*rel, name), nxt, pat, now, out)

    # -- housekeeping (lock held) ----------------------------------------------------------

    def _prune_locked(self, path: list[_Node], comps: tuple[str, ...]) -> None:
        """Remove empty nodes at the end of ``path`` (``path[i+1]`` is ``comps[i]``)."""
        for i in range(len(path) - 1, 0, -1):
            node = path[i]
            if node.servers or node.children:
                return
            del path[i - 1].children[comps[i - 1]]
            self._nodes -= 1

    def _sweep_locked(self, now: float) -> None:
        self._last_sweep = now

        def visit(node: _Node) -> bool:
            for name in list(node.children):
                if not visit(node.children[name]):
                    del node.children[name]
                    self._nodes -= 1
            return node.purge(now) or bool(node.children)

        visit(self._root)


def _patterns(value: Iterable[str] | None, what: str) -> tuple[BlessingPattern, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise errors.BadArgError(f"mount table: {what} must be a sequence of patterns")
    return tuple(BlessingPattern(p) for p in value)


def _close(states: frozenset[int], pat: tuple[str, ...]) -> frozenset[int]:
    """Add the states reachable by letting each ``...`` match zero components."""
    out = set(states)
    for s in sorted(states):
        while s < len(pat) and pat[s] == "...":
            s += 1
            out.add(s)
    return frozenset(out)


def _advance(states: frozenset[int], pat: tuple[str, ...], name: str) -> frozenset[int]:
    """The pattern states after matching one more component ``name``."""
    out: set[int] = set()
    for s in states:
        if s >= len(pat):
            continue
        p = pat[s]
        if p == "...":
            out.add(s)  # "..." stays to match more components
        elif fnmatch.fnmatchcase(name, p):
            out.add(s + 1)
    return frozenset(out)
