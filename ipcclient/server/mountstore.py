"""Where a mount table keeps its mounts: the storage interface and the in-memory store.

Owns: :class:`MountStore` (what :class:`~ipcclient.server.mounttable.MountTable` needs from
its storage: mount, unmount, resolve a prefix, glob, expiry, the access lists),
:class:`Resolved` and :class:`AccessLists` (what a store answers), :class:`MemoryStore` (one
process's tree in memory, the default), the bounds shared by every store, what a name, a
server and a Glob item are charged against them (:func:`name_bytes`, :func:`server_bytes`,
:func:`glob_item_bytes`), and
the Glob matchers every store uses: :func:`glob_tree` for a tree, :class:`GlobScan` for
mounts read one name at a time in key order. Both answer the same items, in the same order,
cut off at the same place (see :func:`glob_order`).

A store receives names already checked by the table (components, a clean rooted server
name, a TTL within bounds, flags as booleans); it enforces the rules that need its state to
be atomic: the MT / LEAF flags of a name agree across its live servers unless REPLACE, the
bounds on servers per name and on the table's size (the in-memory store also bounds the
bytes of the names and servers it holds: :data:`MAX_TABLE_BYTES`).

A store that blocks on I/O ends the wait as soon as the call it serves is done: the table
sets :data:`CALL_CONTEXT` around each method it serves.

Must not: make RPCs, know about the wire or the server, or hold a lock across I/O.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.naming.mountentry import MountedServer

__all__ = [
    "CALL_CONTEXT",
    "MAX_GLOB_BYTES",
    "MAX_GLOB_RESULTS",
    "MAX_GLOB_STEPS",
    "MAX_NODES",
    "MAX_SERVERS_PER_NAME",
    "MAX_TABLE_BYTES",
    "SERVER_ENTRY_BYTES",
    "SWEEP_INTERVAL",
    "AccessLists",
    "GlobScan",
    "MemoryStore",
    "MountStore",
    "Resolved",
    "glob_item_bytes",
    "glob_order",
    "glob_pattern",
    "glob_tree",
    "name_bytes",
    "server_bytes",
]

log = logging.getLogger("ipcclient.mounttable")

CALL_CONTEXT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "ipcclient_mount_store_call", default=None
)
"""The context of the call a store method serves now, in this thread (None outside one):
set by the mount table around each method it serves. A store that blocks on I/O ends the
wait with the context's error (CanceledError, TimeoutError) as soon as it is done: the
client cancelled, or the call's deadline passed. A store that never blocks ignores it."""

MAX_SERVERS_PER_NAME = 256
"""Replicas under one name; more is a bug or an attack, and every answer carries them all."""
MAX_NODES = 100_000
"""Nodes (name components) in an in-memory table, or mounts in a shared one. A node of an
in-memory tree costs ~400 bytes (CPython 3.11) besides its component, so 100,000 take
~40 MB; what their components and the servers mounted at them take is bounded apart, by
:data:`MAX_TABLE_BYTES`."""
SERVER_ENTRY_BYTES = 128
"""What one mounted server is charged beyond its name's bytes: its entry in memory (the
str's header, its slot in the name's dict, its deadline) is ~100 bytes in CPython 3.11."""
MAX_TABLE_BYTES = 64 * 1024 * 1024
"""Bytes an in-memory table's names and servers may be charged in all: each node its
component (:func:`name_bytes`), each server :func:`server_bytes` (its name plus
:data:`SERVER_ENTRY_BYTES`). With :data:`MAX_NODES` it bounds the table's memory to
~110 MB at worst (measured: a table full of 4,000-character servers holds 64 MiB). Without
it, every name could hold :data:`MAX_SERVERS_PER_NAME` servers of 4096 characters (100,000
such names: ~100 GiB), and every node a component of 4096 (~400 MB). 100,000 names of a
few dozen characters each holding two 200-character endpoints fit. A shared store holds no
mounts in memory and does not apply it (see :mod:`ipcclient.server.etcdstore`)."""
MAX_GLOB_RESULTS = 10_000
"""Items one Glob may stream; a larger answer is cut off at this many (logged)."""
MAX_GLOB_BYTES = 16 * 1024 * 1024
"""Bytes the items of one Glob may be charged in all, each :func:`glob_item_bytes`: no item
is added once the items found hold this many, so an answer is cut off (logged) past it, as
at :data:`MAX_GLOB_RESULTS` (it goes over by at most one item: ~1 MiB). Its objects take ~2x
this in memory while it is built (under the store's lock, for the in-memory store) and sent.
10,000 items each holding two 200-character endpoints fit."""
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
    be reached. It also ends a wait as soon as the context in :data:`CALL_CONTEXT` is done.
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
        ``replace``), Overloaded (NO_RETRY) past a bound (:func:`table_full` when the
        table is full, whichever of its bounds)."""

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
        max_bytes: int = MAX_GLOB_BYTES,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The Glob items below ``comps`` matching ``pattern``, at most ``limit`` and none
        added once they are charged ``max_bytes``, in :func:`glob_order` (see
        :func:`glob_tree`: every store answers the same items for the same mounts)."""

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


def name_bytes(component: str) -> int:
    """What a node of an in-memory tree is charged against :data:`MAX_TABLE_BYTES`: its
    component's bytes in UTF-8 (what a node costs besides is bounded by MAX_NODES)."""
    return len(component.encode("utf-8", "surrogatepass"))


def server_bytes(server: str) -> int:
    """What a mounted server is charged against :data:`MAX_TABLE_BYTES`: its name's bytes in
    UTF-8 plus :data:`SERVER_ENTRY_BYTES`."""
    return name_bytes(server) + SERVER_ENTRY_BYTES


def glob_item_bytes(item: dict[str, Any]) -> int:
    """What a Glob item is charged against :data:`MAX_GLOB_BYTES`: its name's bytes in UTF-8
    plus :data:`SERVER_ENTRY_BYTES`, plus :func:`server_bytes` for each of its servers."""
    name = name_bytes(str(item["name"]))
    return name + SERVER_ENTRY_BYTES + sum(server_bytes(s["server"]) for s in item["servers"])


class ByteMeter:
    """The bytes a tree's names and servers are charged in all (see :data:`MAX_TABLE_BYTES`)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


@dataclass
class Node:
    """One name component of a tree: its children and its live servers."""

    children: dict[str, Node] = field(default_factory=dict)
    servers: dict[str, float] = field(default_factory=dict)  # server -> deadline, in order
    mt: bool = False
    leaf: bool = False

    def purge(self, now: float, meter: ByteMeter | None = None) -> bool:
        """Drop expired servers (taking what they were charged off ``meter``); True if the
        node still has live ones."""
        if self.servers:
            dead = [s for s, d in self.servers.items() if d <= now]
            for s in dead:
                del self.servers[s]
                if meter is not None:
                    meter.held -= server_bytes(s)
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


def glob_order(name: str, mounted: bool) -> str:
    """The sort key of a child named ``name`` among its siblings, for Glob: the order of
    the keys a flat store reads (``<name>\\x00<server>`` for a name with live servers,
    ``<name>/...`` for the names below one without), so that a store reading its keys in
    order meets the items in the order :func:`glob_tree` answers them (the items' names
    sorted as strings: ``a-b/c``, ``a.b``, ``a/b``), and a Glob cut off answers the same
    items in every store."""
    return name + ("\x00" if mounted else "/")


def glob_item(
    rel: tuple[str, ...],
    servers: Iterable[tuple[str, float]],
    mt: bool,
    leaf: bool,
    now: float,
) -> dict[str, Any]:
    """One Glob item: ``rel``'s live ``(server, deadline)`` pairs, in mount order."""
    return {
        "name": "/".join(rel),
        "servers": [MountedServer(s, d).to_wire(now) for s, d in servers],
        "serves_mount_table": mt,
        "is_leaf": leaf,
    }


class _Answer:
    """The items of one Glob as they are found: none is added once there are ``limit`` or
    they are charged ``max_bytes`` (:func:`glob_item_bytes`)."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.bytes = 0
        self._limit = limit
        self._max_bytes = max_bytes

    def full(self) -> bool:
        return len(self.items) >= self._limit or self.bytes >= self._max_bytes

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.bytes += glob_item_bytes(item)


class _Steps:
    """The matcher steps one Glob has left (:data:`MAX_GLOB_STEPS`, read when it starts)."""

    def __init__(self, pat: tuple[str, ...]) -> None:
        self.left = MAX_GLOB_STEPS
        self._pat = pat

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise errors.OverloadedError(
                f"mount table: Glob pattern {'/'.join(self._pat)!r} is too costly for this table",
                action=errors.RetryAction.NO_RETRY,
            )


def glob_tree(
    node: Node,
    pattern: tuple[str, ...],
    now: float,
    limit: int = MAX_GLOB_RESULTS,
    max_bytes: int = MAX_GLOB_BYTES,
    meter: ByteMeter | None = None,
) -> list[dict[str, Any]]:
    """The Glob items of ``node``'s subtree (names relative to it) that match ``pattern``
    (``*`` and ``fnmatch`` classes within a component, ``...`` for zero or more components),
    in :func:`glob_order`: at most ``limit``, and none added once they are charged
    ``max_bytes``. A mount point (``node`` itself too) is listed, not descended into.
    Expired servers met are dropped (taking what they were charged off ``meter``).

    Raises:
        OverloadedError: matching would take more than MAX_GLOB_STEPS steps (a pattern
            with many ``...`` elements against a large table).
    """
    pat = glob_pattern(pattern)
    out = _Answer(limit, max_bytes)
    _glob(node, (), frozenset({0}), pat, now, out, _Steps(pat), meter)
    return out.items


def _glob(
    node: Node,
    rel: tuple[str, ...],
    states: frozenset[int],
    pat: tuple[str, ...],
    now: float,
    out: _Answer,
    steps: _Steps,
    meter: ByteMeter | None,
) -> None:
    if out.full():
        return
    states = _close(states, pat)
    steps.take(len(states))
    if node.purge(now, meter):
        if len(pat) in states:
            out.add(glob_item(rel, node.servers.items(), node.mt, node.leaf, now))
        return  # a mount point: what is below lives in the mounted server
    visits: list[tuple[str, str, Node, frozenset[int]]] = []
    for name, child in node.children.items():
        nxt = _advance(states, pat, name)
        if nxt:
            visits.append((glob_order(name, child.purge(now, meter)), name, child, nxt))
    visits.sort(key=lambda v: v[0])
    for _, name, child, nxt in visits:
        _glob(child, (*rel, name), nxt, pat, now, out, steps, meter)


class GlobScan:
    """Glob over mounts met one name at a time in the order of a flat store's keys (what a
    store reading ranges of ``<name>\\x00<server>`` keys sees): the same items as
    :func:`glob_tree` over a tree holding the same live mounts, in the same order, cut off at
    the same place, counting matcher steps the same way (a node met again after other
    names, as ``a`` is after ``a-b`` when ``a/c`` follows, is counted again).

    Feed it with :meth:`add` in increasing key order, stop once :meth:`full`, then read
    :attr:`items`. It keeps the components and pattern states of the last name, and the
    live mount points whose names may still shadow the names to come (those that are a
    prefix of the last name: few).

    Raises:
        OverloadedError: (from :meth:`add`) more than MAX_GLOB_STEPS steps.
    """

    def __init__(
        self,
        pattern: tuple[str, ...],
        limit: int = MAX_GLOB_RESULTS,
        max_bytes: int = MAX_GLOB_BYTES,
    ) -> None:
        self._pat = glob_pattern(pattern)
        self._answer = _Answer(limit, max_bytes)
        self._steps = _Steps(self._pat)
        root = _close(frozenset({0}), self._pat)
        self._steps.take(len(root))
        # _states[i]: the (closed) states after _path[:i]; one fewer than len(_path) + 1
        # when the pattern died at _path's last component.
        self._path: list[str] = []
        self._states: list[frozenset[int]] = [root]
        self._mounts: list[tuple[tuple[str, ...], str | None]] = []  # (name, end of its keys)

    @property
    def items(self) -> list[dict[str, Any]]:
        """The items found so far, in order."""
        return self._answer.items

    def full(self) -> bool:
        """No further item would be added: stop reading."""
        return self._answer.full()

    def add(
        self,
        rel: tuple[str, ...],
        servers: Sequence[tuple[str, float]],
        mt: bool,
        leaf: bool,
        now: float,
    ) -> None:
        """The name ``rel`` (relative to the Glob's name) has the live ``(server,
        deadline)`` pairs ``servers``, in mount order (none: the name is ignored)."""
        if not servers or self.full():
            return
        key = "/".join(rel)
        self._mounts = [(m, end) for m, end in self._mounts if end is None or key < end]
        if any(len(m) < len(rel) and rel[: len(m)] == m for m, _ in self._mounts):
            return  # below a mount point: shadowed
        self._mounts.append((rel, key + "0" if rel else None))  # ("0" follows "/")
        states = self._walk(rel)
        if states is not None and len(self._pat) in states:
            self._answer.add(glob_item(rel, servers, mt, leaf, now))

    def _walk(self, rel: tuple[str, ...]) -> frozenset[int] | None:
        """The pattern states at ``rel`` (None: the pattern cannot match there), reusing
        those of the components it shares with the last name."""
        path, states = self._path, self._states
        i = 0
        while i < len(rel) and i < len(path) and rel[i] == path[i]:
            i += 1
        if i >= len(states):
            return None  # below the component where the pattern died
        del path[i:]
        del states[i + 1 :]
        for comp in rel[i:]:
            path.append(comp)
            nxt = _advance(states[-1], self._pat, comp)
            if not nxt:
                return None
            closed = _close(nxt, self._pat)
            self._steps.take(len(closed))
            states.append(closed)
        return states[-1]


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
    and by a full sweep at most every :data:`SWEEP_INTERVAL` seconds, run on Mount. What
    the nodes and servers held are charged (see :data:`MAX_TABLE_BYTES`) is counted as
    they are made, mounted, replaced, unmounted, dropped on expiry and removed.

    Args:
        clock: monotonic clock for TTLs (inject one in tests).
        max_nodes: the most nodes the tree may hold.
        max_servers_per_name: the most servers at one name.
        max_table_bytes: the most bytes the names and servers held may be charged in all.
    """

    access_refresh = math.inf

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_nodes: int = MAX_NODES,
        max_servers_per_name: int = MAX_SERVERS_PER_NAME,
        max_table_bytes: int = MAX_TABLE_BYTES,
    ) -> None:
        if max_nodes < 1 or max_servers_per_name < 1 or max_table_bytes < 1:
            raise errors.BadArgError("mount table: bounds must be positive")
        self._clock = clock
        self._max_nodes = max_nodes
        self._max_servers = max_servers_per_name
        self._max_bytes = max_table_bytes
        self._lock = threading.Lock()
        self._root = Node()
        self._nodes = 1
        self._meter = ByteMeter()
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
            # Every check before any change: a refused mount leaves the tree as it was.
            found = self._find_locked(comps)
            held: dict[str, float] = {}
            if found is not None and found.purge(now, self._meter):
                held = found.servers
                if not replace:
                    flags_conflict(comps, (found.mt, found.leaf), (mt, leaf))
            if not replace and server not in held and len(held) >= self._max_servers:
                raise too_many_servers(comps, self._max_servers)
            cost = server_bytes(server)
            if replace:
                grows = cost - sum(server_bytes(s) for s in held)
            else:
                grows = 0 if server in held else cost
            if grows + self._new_bytes_locked(comps) > self._max_bytes - self._meter.held:
                # A full table sweeps before it refuses (this name's servers are live: the
                # sweep leaves them, but it may remove nodes of its path).
                self._sweep_locked(now)
                if grows + self._new_bytes_locked(comps) > self._max_bytes - self._meter.held:
                    raise table_full(self._max_bytes, "bytes of names and servers")
            # (Nodes made here that a sweep in _node_for_mount removed first were taken off
            # the bytes held by that sweep: the total stays within what was checked.)
            node = self._node_for_mount(comps, now)  # (``found`` when it has live servers)
            node.purge(now, self._meter)
            if replace:
                for s in node.servers:
                    self._meter.held -= server_bytes(s)
                node.servers.clear()
            node.mt, node.leaf = mt, leaf
            if server not in node.servers:
                self._meter.held += cost
            node.servers[server] = now + seconds

    def _find_locked(self, comps: tuple[str, ...]) -> Node | None:
        """The node at ``comps``, or None; the lock is held."""
        node: Node | None = self._root
        for c in comps:
            node = node.children.get(c) if node is not None else None
        return node

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
        self._meter.held += sum(name_bytes(c) for c in comps[len(comps) - missing :])
        return self._root.child(comps)

    def _new_bytes_locked(self, comps: tuple[str, ...]) -> int:
        """What the nodes of the path to ``comps`` that do not exist yet will be charged."""
        missing = self._missing_locked(comps)
        return sum(name_bytes(c) for c in comps[len(comps) - missing :]) if missing else 0

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
                if node.servers.pop(server, None) is not None:
                    self._meter.held -= server_bytes(server)
            else:
                for s in node.servers:
                    self._meter.held -= server_bytes(s)
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
                if child.purge(now, self._meter):
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
        max_bytes: int = MAX_GLOB_BYTES,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            node = self._find_locked(comps)
            if node is None:
                return []
            return glob_tree(node, pattern, self._clock(), limit, max_bytes, self._meter)

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
            self._meter.held -= name_bytes(comps[i - 1])

    def _sweep_locked(self, now: float) -> None:
        self._last_sweep = now

        def visit(node: Node) -> bool:
            for name in list(node.children):
                if not visit(node.children[name]):
                    del node.children[name]
                    self._nodes -= 1
                    self._meter.held -= name_bytes(name)
            return node.purge(now, self._meter) or bool(node.children)

        visit(self._root)
