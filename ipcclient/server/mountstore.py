"""Where a mount table keeps its mounts: the storage interface and the in-memory store.

Owns: :class:`MountStore` (what :class:`~ipcclient.server.mounttable.MountTable` needs from
its storage: mount, unmount, resolve a prefix, glob, expiry, the access lists),
:class:`Resolved` and :class:`AccessLists` (what a store answers), :class:`MemoryStore` (one
process's tree in memory, the default), the bounds shared by every store, and the Glob
matcher every store uses (:func:`glob_tree`).

A store receives names already checked by the table (components, a clean rooted server
name, a TTL within bounds, flags as booleans); it enforces the rules that need its state to
be atomic: the MT / LEAF flags of a name agree across its live servers unless REPLACE, the
bounds on servers per name and on the table's size.

Must not: make RPCs, know about the wire or the server, or hold a lock across I/O.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.naming.mountentry import MountedServer

__all__ = [
    "MAX_GLOB_RESULTS",
    "MAX_GLOB_STEPS",
    "MAX_NODES",
    "MAX_SERVERS_PER_NAME",
    "SWEEP_INTERVAL",
    "AccessLists",
    "MemoryStore",
    "MountStore",
    "Resolved",
    "glob_pattern",
    "glob_tree",
]

log = logging.getLogger("ipcclient.mounttable")

MAX_SERVERS_PER_NAME = 256
"""Replicas under one name; more is a bug or an attack, and every answer carries them all."""
MAX_NODES = 100_000
"""Nodes (name components) in an in-memory table, or mounts in a shared one: bounds memory
to tens of MB at worst."""
MAX_GLOB_RESULTS = 10_000
"""Items one Glob may stream; a larger answer is cut off at this many (logged)."""
MAX_GLOB_STEPS = 1_000_000
"""Matcher steps (a node visited, times the pattern positions live there) one Glob may take:
ten per node of a full table. The store's lock is held while matching, so a pattern that
would take longer is refused (OverloadedError) instead of stalling every other call."""
SWEEP_INTERVAL = 60.0
"""Seconds between full sweeps of expired mounts in memory (done lazily on Mount; lookups
also purge what they walk through)."""


@dataclass(frozen=True)
class Resolved:
    """The first mount on a name's path.

    Attributes:
        consumed: how many leading components of the name name the mount point.
        servers: ``(server, seconds left)`` for each live server, in mount order.
        mt: the servers are mount tables.
        leaf: the servers serve nothing below the name.
    """

    consumed: int
    servers: tuple[tuple[str, float], ...]
    mt: bool
    leaf: bool


@dataclass(frozen=True)
class AccessLists:
    """Blessing patterns (as strings) that may Mount/Unmount and ResolveStep/Glob; ``None``
    lets every authenticated client in."""

    mount: tuple[str, ...] | None
    resolve: tuple[str, ...] | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "mount": None if self.mount is None else list(self.mount),
            "resolve": None if self.resolve is None else list(self.resolve),
        }

    @classmethod
    def from_json(cls, value: object) -> AccessLists:
        """Rebuild :meth:`to_json`'s form.

        Raises:
            BadStateError: the stored value is malformed.
        """

        def one(v: object) -> tuple[str, ...] | None:
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
                raise errors.BadStateError("mount table: stored access lists are malformed")
            return tuple(v)

        if not isinstance(value, dict):
            raise errors.BadStateError("mount table: stored access lists are malformed")
        return cls(one(value.get("mount")), one(value.get("resolve")))


class MountStore(Protocol):
    """The storage under a mount table. Every method is thread-safe.

    ``timeout`` is the most seconds a method may block (``None``: the store's own default);
    a store that does I/O raises :class:`~ipcclient.errors.TimeoutError` past it, and
    :class:`~ipcclient.errors.OverloadedError` (back off and retry) when its backend cannot
    be reached.
    """

    access_refresh: float
    """Seconds a table may reuse what :meth:`get_access` answered (``math.inf`` when only
    this process changes the access lists)."""

    def mount(
        self,
        comps: tuple[str, ...],
        server: str,
        seconds: float,
        *,
        mt: bool,
        leaf: bool,
        replace: bool,
        timeout: float | None = None,
    ) -> None:
        """Mount ``server`` at ``comps`` for ``seconds``; mounting it again refreshes it in
        place. Raises BadArg when the flags disagree with live servers (without
        ``replace``), Overloaded (NO_RETRY) past a bound."""

    def unmount(self, comps: tuple[str, ...], server: str, *, timeout: float | None = None) -> None:
        """Remove ``server`` (``""``: every server) at ``comps``; idempotent."""

    def resolve(self, comps: tuple[str, ...], *, timeout: float | None = None) -> Resolved | None:
        """The first node on ``comps``'s path with live servers, or None."""

    def glob(
        self,
        comps: tuple[str, ...],
        pattern: tuple[str, ...],
        *,
        limit: int = MAX_GLOB_RESULTS,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The Glob items below ``comps`` matching ``pattern`` (see :func:`glob_tree`)."""

    def sweep(self) -> int:
        """Drop what has expired, if the store keeps it itself; returns the entries left
        (nodes for a tree, mounts for a flat store)."""

    def size(self) -> int:
        """The entries held now (as :meth:`sweep` counts them)."""

    def get_access(self, *, timeout: float | None = None) -> AccessLists | None:
        """The stored access lists, or None when none were ever set."""

    def set_access(
        self, acl: AccessLists, *, only_if_absent: bool = False, timeout: float | None = None
    ) -> AccessLists:
        """Store ``acl`` (with ``only_if_absent``, only when none is stored); returns what
        is stored afterwards."""

    def close(self) -> None:
        """Release the store's connections (idempotent)."""


# -- the tree and Glob, shared by every store ------------------------------------------------


@dataclass
class Node:
    """One name component of a tree: its children and its live servers."""

    children: dict[str, Node] = field(default_factory=dict)
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

    def child(self, comps: tuple[str, ...]) -> Node:
        """The node at ``comps`` below this one, created with its parents."""
        node = self
        for c in comps:
            nxt = node.children.get(c)
            if nxt is None:
                nxt = node.children[c] = Node()
            node = nxt
        return node


def glob_pattern(elements: tuple[str, ...]) -> tuple[str, ...]:
    """A Glob pattern's elements with each run of ``...`` made one (it matches the same
    names, and the matcher's work grows with the square of a run's length)."""
    return tuple(e for i, e in enumerate(elements) if e != "..." or elements[i - 1 : i] != (e,))


def glob_tree(
    node: Node, pattern: tuple[str, ...], now: float, limit: int = MAX_GLOB_RESULTS
) -> list[dict[str, Any]]:
    """The Glob items of ``node``'s subtree (names relative to it) that match ``pattern``
    (``*`` and ``fnmatch`` classes within a component, ``...`` for zero or more components),
    at most ``limit``. A mount point (``node`` itself too) is listed, not descended into.

    Raises:
        OverloadedError: matching would take more than MAX_GLOB_STEPS steps (a pattern
            with many ``...`` elements against a large table).
    """
    out: list[dict[str, Any]] = []
    budget = [MAX_GLOB_STEPS]
    _glob(node, (), frozenset({0}), glob_pattern(pattern), now, out, limit, budget)
    return out


def _glob(
    node: Node,
    rel: tuple[str, ...],
    states: frozenset[int],
    pat: tuple[str, ...],
    now: float,
    out: list[dict[str, Any]],
    limit: int,
    budget: list[int],
) -> None:
    if len(out) >= limit:
        return
    states = _close(states, pat)
    budget[0] -= len(states)
    if budget[0] < 0:
        raise errors.OverloadedError(
            f"mount table: Glob pattern {'/'.join(pat)!r} is too costly for this table",
            action=errors.RetryAction.NO_RETRY,
        )
    if node.purge(now):
        if len(pat) in states:
            out.append(
                {
                    "name": "/".join(rel),
                    "servers": [MountedServer(s, d).to_wire(now) for s, d in node.servers.items()],
                    "serves_mount_table": node.mt,
                    "is_leaf": node.leaf,
                }
            )
        return  # a mount point: what is below lives in the mounted server
    for name in sorted(node.children):
        nxt = _advance(states, pat, name)
        if nxt:
            _glob(node.children[name], (*rel, name), nxt, pat, now, out, limit, budget)


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


def flags_conflict(
    comps: tuple[str, ...], live: tuple[bool, bool], want: tuple[bool, bool]
) -> None:
    """Raise BadArg when a mount's MT / LEAF flags differ from the live servers' ones."""
    if live != want:
        raise errors.BadArgError(
            f"mount table: {'/'.join(comps)!r} is mounted with mt={live[0]} "
            f"leaf={live[1]}; use REPLACE to change the flags"
        )


def too_many_servers(comps: tuple[str, ...], limit: int) -> errors.OverloadedError:
    """The error for a name that already has ``limit`` servers."""
    return errors.OverloadedError(
        f"mount table: {'/'.join(comps)!r} already has {limit} servers",
        action=errors.RetryAction.NO_RETRY,
    )


def table_full(limit: int, what: str) -> errors.OverloadedError:
    """The error for a table that holds ``limit`` entries already."""
    return errors.OverloadedError(
        f"mount table: full ({limit} {what})", action=errors.RetryAction.NO_RETRY
    )


# -- the in-memory store ---------------------------------------------------------------------


class MemoryStore:
    """One process's mounts in a tree in memory (the default store).

    Thread-safe: one lock guards the tree and is held only for in-memory work. Expired
    servers are purged lazily (by lookups that walk through them, by mounts at their node)
    and by a full sweep at most every :data:`SWEEP_INTERVAL` seconds, run on Mount.

    Args:
        clock: monotonic clock for TTLs (inject one in tests).
        max_nodes: the most nodes the tree may hold.
        max_servers_per_name: the most servers at one name.
    """

    access_refresh = math.inf

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_nodes: int = MAX_NODES,
        max_servers_per_name: int = MAX_SERVERS_PER_NAME,
    ) -> None:
        if max_nodes < 1 or max_servers_per_name < 1:
            raise errors.BadArgError("mount table: bounds must be positive")
        self._clock = clock
        self._max_nodes = max_nodes
        self._max_servers = max_servers_per_name
        self._lock = threading.Lock()
        self._root = Node()
        self._nodes = 1
        self._last_sweep = clock()
        self._acl: AccessLists | None = None

    def mount(
        self,
        comps: tuple[str, ...],
        server: str,
        seconds: float,
        *,
        mt: bool,
        leaf: bool,
        replace: bool,
        timeout: float | None = None,
    ) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last_sweep >= SWEEP_INTERVAL:
                self._sweep_locked(now)
            node = self._node_for_mount(comps, now)
            live = node.purge(now)
            if replace:
                node.servers.clear()
                live = False
            if live:
                flags_conflict(comps, (node.mt, node.leaf), (mt, leaf))
            if server not in node.servers and len(node.servers) >= self._max_servers:
                raise too_many_servers(comps, self._max_servers)
            node.mt, node.leaf = mt, leaf
            node.servers[server] = now + seconds

    def _node_for_mount(self, comps: tuple[str, ...], now: float) -> Node:
        """The node at ``comps``, created with its parents; the lock is held. (The nodes
        missing are counted again after a sweep: it may remove nodes of this very path.)"""
        missing = self._missing_locked(comps)
        if missing and self._nodes + missing > self._max_nodes:
            self._sweep_locked(now)
            missing = self._missing_locked(comps)
        if missing and self._nodes + missing > self._max_nodes:
            raise table_full(self._max_nodes, "nodes")
        self._nodes += missing
        return self._root.child(comps)

    def _missing_locked(self, comps: tuple[str, ...]) -> int:
        """How many nodes of the path to ``comps`` do not exist yet."""
        node = self._root
        for i, c in enumerate(comps):
            child = node.children.get(c)
            if child is None:
                return len(comps) - i
            node = child
        return 0

    def unmount(self, comps: tuple[str, ...], server: str, *, timeout: float | None = None) -> None:
        with self._lock:
            path = [self._root]
            for c in comps:
                child = path[-1].children.get(c)
                if child is None:
                    return  # nothing mounted there: unmounting is idempotent
                path.append(child)
            node = path[-1]
            if server:
                node.servers.pop(server, None)
            else:
                node.servers.clear()
            self._prune_locked(path, comps)

    def resolve(self, comps: tuple[str, ...], *, timeout: float | None = None) -> Resolved | None:
        with self._lock:
            now = self._clock()
            path = [self._root]
            for i, c in enumerate(comps):
                child = path[-1].children.get(c)
                if child is None:
                    break
                path.append(child)
                if child.purge(now):
                    return Resolved(
                        i + 1,
                        tuple((s, max(0.0, d - now)) for s, d in child.servers.items()),
                        child.mt,
                        child.leaf,
                    )
            self._prune_locked(path, comps[: len(path) - 1])
        return None

    def glob(
        self,
        comps: tuple[str, ...],
        pattern: tuple[str, ...],
        *,
        limit: int = MAX_GLOB_RESULTS,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            node: Node | None = self._root
            for c in comps:
                node = node.children.get(c) if node is not None else None
            if node is None:
                return []
            return glob_tree(node, pattern, now, limit)

    def sweep(self) -> int:
        with self._lock:
            self._sweep_locked(self._clock())
            return self._nodes

    def size(self) -> int:
        with self._lock:
            return self._nodes

    def get_access(self, *, timeout: float | None = None) -> AccessLists | None:
        with self._lock:
            return self._acl

    def set_access(
        self, acl: AccessLists, *, only_if_absent: bool = False, timeout: float | None = None
    ) -> AccessLists:
        with self._lock:
            if self._acl is None or not only_if_absent:
                self._acl = acl
            return self._acl

    def close(self) -> None:
        return None

    # -- housekeeping (lock held) ----------------------------------------------------------

    def _prune_locked(self, path: list[Node], comps: tuple[str, ...]) -> None:
        """Remove empty nodes at the end of ``path`` (``path[i+1]`` is ``comps[i]``)."""
        for i in range(len(path) - 1, 0, -1):
            node = path[i]
            if node.servers or node.children:
                return
            del path[i - 1].children[comps[i - 1]]
            self._nodes -= 1

    def _sweep_locked(self, now: float) -> None:
        self._last_sweep = now

        def visit(node: Node) -> bool:
            for name in list(node.children):
                if not visit(node.children[name]):
                    del node.children[name]
                    self._nodes -= 1
            return node.purge(now) or bool(node.children)

        visit(self._root)
