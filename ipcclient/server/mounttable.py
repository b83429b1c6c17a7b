"""The mount table service: names to servers, with TTLs, served as a dispatcher.

Owns: :class:`MountTable` (a :class:`~ipcclient.server.dispatcher.Dispatcher`; the call's
suffix is the name inside the table), checking what clients send, the bounds on names, and access
control by the client's blessing names. The mounts themselves, their expiry and the access
lists live in a store (:mod:`ipcclient.server.mountstore`: in memory by default, or shared
through etcd with :mod:`ipcclient.server.etcdstore`). Methods, by their wire names:

``Mount(server, ttl, flags)``
    Mount the rooted name ``server`` (``/@1@tcp@...@@`` or ``/host:port[/prefix]``) at the
    suffix for ``ttl`` seconds. ``flags`` is a bitmask of :data:`MT` (the server is a mount
    table), :data:`LEAF` (it serves nothing below the name) and :data:`REPLACE` (drop the
    servers mounted there first). Mounting a server again refreshes its TTL in place.
    Without REPLACE, MT / LEAF must agree with the live servers already there (BadArg).
``Unmount(server)``
    Remove ``server`` from the suffix; ``""`` removes every server there. Idempotent.
    (A name holding NUL is refused by Mount, BadArg whatever the store; ResolveStep, Glob
    and Unmount treat it as a name never mounted, alike in every store.)
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
    ResolveStep sees them). An answer is cut off at :data:`MAX_GLOB_RESULTS` items or once
    its items are charged :data:`MAX_GLOB_BYTES` (logged).

Each call has one deadline: its access check and every store operation it makes get only the
time left (a shared store's access lists are read when the table's copy is older than the
store's refresh interval, by the method, which knows the call's deadline: the authorizer run
before the args are read has only the copy; see :meth:`MountTable._patterns`).

Must not: make RPCs or resolve names (it answers one step; the client's namespace walks),
hold its lock while streaming to a client or reading the store, keep anything unbounded, or
grant access by access lists it could not read.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.naming.endpoint import canonical_server
from ipcclient.naming.mountentry import MountedServer, MountEntry
from ipcclient.security.patterns import BlessingPattern
from ipcclient.server.authorizer import Authorizer, CallSecurity
from ipcclient.server.call import ServerCall
from ipcclient.server.exposure import expose
from ipcclient.server.mountstore import (
    CALL_CONTEXT,
    MAX_GLOB_BYTES,
    MAX_GLOB_RESULTS,
    MAX_NODES,
    MAX_SERVERS_PER_NAME,
    MAX_TABLE_BYTES,
    SWEEP_INTERVAL,
    AccessLists,
    MemoryStore,
    MountStore,
    glob_item_bytes,
    glob_pattern,
)

__all__ = [
    "LEAF",
    "MAX_COMPONENTS",
    "MAX_GLOB_BYTES",
    "MAX_GLOB_RESULTS",
    "MAX_NAME_LEN",
    "MAX_NODES",
    "MAX_SERVERS_PER_NAME",
    "MAX_SERVER_LEN",
    "MAX_TABLE_BYTES",
    "MAX_TTL",
    "MT",
    "REPLACE",
    "SWEEP_INTERVAL",
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

# Bounds, each named with its reason. The bounds on the table's size live with
# the store (ipcclient.server.mountstore) and are re-exported here.
MAX_NAME_LEN = 4096
"""Characters in a suffix; a name of a few dozen components with endpoints fits easily."""
MAX_COMPONENTS = 64
"""Components in a name; twice the namespace's resolve depth, far beyond real hierarchies."""
MAX_SERVER_LEN = 4096
"""Characters in a mounted server's name (an endpoint with a few blessings is ~200)."""
MAX_TTL = 24 * 3600.0
"""Longest TTL granted; longer requests are clamped (a server must refresh at least daily)."""
MAX_PATTERN_LEN = 1024
"""Characters in a Glob pattern."""
ACCESS_READ_TIMEOUT = 2.0
"""Seconds a call may wait for a shared store's access lists (less when its deadline is
sooner)."""
ACCESS_RETRY_AFTER = 1.0
"""Seconds a table refuses calls at once (OverloadedError, RETRY_BACKOFF) after its store
failed to answer for the access lists (at most the store's refresh interval), so that the
calls meanwhile do not each wait for a store that does not answer. A read cut short by the
call's own deadline is not a failure of the store and is not remembered (a client could
otherwise shut others out with calls of a millisecond)."""


def _time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a monotonic time), at least 0; None when there is none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _components(suffix: str) -> tuple[str, ...]:
    """The components of a name to look up (any depth: an object's name may go on far below
    the mount point that holds it)."""
    if len(suffix) > MAX_NAME_LEN:
        raise errors.BadArgError(f"mount table: name longer than {MAX_NAME_LEN} characters")
    return names.components(suffix)


def _check_suffix(suffix: str) -> tuple[str, ...]:
    """The components of a name to mount or unmount (at most MAX_COMPONENTS)."""
    comps = _components(suffix)
    if len(comps) > MAX_COMPONENTS:
        raise errors.BadArgError(f"mount table: name has more than {MAX_COMPONENTS} components")
    return comps


def _mountable(comps: tuple[str, ...]) -> tuple[str, ...]:
    """The leading components of ``comps`` that a mount could hold: up to the first one with
    a NUL (Mount refuses such names whatever the store, so nothing is mounted there or
    below). Looking a name up past that answers as for any name never mounted."""
    for i, c in enumerate(comps):
        if "\x00" in c:
            return comps[:i]
    return comps


def _check_server(server: object) -> str:
    if not isinstance(server, str) or not server:
        raise errors.BadArgError("mount table: the server must be a non-empty rooted name")
    if len(server) > MAX_SERVER_LEN:
        raise errors.BadArgError(f"mount table: server name longer than {MAX_SERVER_LEN}")
    try:
        return canonical_server(server)  # (two spellings of one endpoint are one server)
    except errors.BadArgError as exc:
        raise errors.BadArgError(f"mount table: bad server: {exc.msg}") from None


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise errors.BadArgError(
            f"mount table: ttl must be a number of seconds, got a {type(ttl).__name__}"
        )
    if isinstance(ttl, int) and not 0 < ttl <= MAX_TTL:  # (may be too large for a float)
        if ttl > 0:
            return MAX_TTL
        raise errors.BadArgError("mount table: ttl must be > 0, got a negative integer or 0")
    seconds = float(ttl)
    if not math.isfinite(seconds) or seconds <= 0:
        raise errors.BadArgError(f"mount table: ttl must be > 0 and finite, got {seconds!r}")
    return min(seconds, MAX_TTL)


_MOUNT_METHODS = ("Mount", "Unmount")
_RESOLVE_METHODS = ("ResolveStep", "Glob")


def _check(call: CallSecurity, patterns: _Patterns) -> None:
    """Mount/Unmount need a name matched by the mount patterns; ResolveStep/Glob need one
    matched by the resolve patterns (None: every authenticated client). Raises NoAccess."""
    if call.method in _MOUNT_METHODS:
        allowed = patterns[0]
    elif call.method in _RESOLVE_METHODS:
        allowed = patterns[1]
    else:
        return  # not a mount table method: the server answers UnknownMethod
    if allowed is None or any(p.matched_by(*call.client_names) for p in allowed):
        return
    detail = (
        f"mount table: client {list(call.client_names)!r} may not call {call.method!r} "
        f"(needs a blessing matching {[str(p) for p in allowed]!r})"
    )
    if call.rejected:
        detail += "; rejected: " + "; ".join(f"{n} ({e})" for n, e in call.rejected)
    raise errors.NoAccessError(detail)


class _MethodAuthorizer:
    """Checks a call against the table's copy of the access lists before its args are read
    (see :func:`_check`), when that copy is fresh. When it is due to be read again from a
    shared store, the method reads it (within the call's deadline, which the authorizer
    does not know) and checks then, before it does anything; while the store has just
    failed to answer, every call is refused at once."""

    def __init__(self, table: MountTable) -> None:
        self._table = table

    def authorize(self, call: CallSecurity) -> None:
        if call.method not in _MOUNT_METHODS and call.method not in _RESOLVE_METHODS:
            return  # not a mount table method: the server answers UnknownMethod
        patterns = self._table._cached_patterns()
        if patterns is not None:
            _check(call, patterns)


@expose
class _Invoker:
    """What the server invokes: only the four wire methods are public (and exposed)."""

    def __init__(self, table: MountTable) -> None:
        self._table = table

    # Each method checks access first, within the call's deadline (see _MethodAuthorizer),
    # then gets the time still left: call.remaining() counts down to the call's deadline.
    # A store that may block on I/O is given the call's context too (CALL_CONTEXT), so
    # that it stops waiting when the client cancels.

    def Mount(self, call: ServerCall, server: str, ttl: float, flags: int) -> None:
        token = self._table._enter(call)
        try:
            self._table._authorize(call.security, call.remaining())
            self._table._mount(call.suffix, server, ttl, flags, call.remaining())
        finally:
            self._table._leave(token)

    def Unmount(self, call: ServerCall, server: str) -> None:
        token = self._table._enter(call)
        try:
            self._table._authorize(call.security, call.remaining())
            self._table._unmount(call.suffix, server, call.remaining())
        finally:
            self._table._leave(token)

    def ResolveStep(self, call: ServerCall) -> dict[str, Any]:
        token = self._table._enter(call)
        try:
            self._table._authorize(call.security, call.remaining())
            return self._table._resolve_step(call.suffix, call.remaining())
        finally:
            self._table._leave(token)

    def Glob(self, call: ServerCall, pattern: str) -> int:
        token = self._table._enter(call)
        try:
            self._table._authorize(call.security, call.remaining())
            items = self._table._glob(call.suffix, pattern, call.remaining())
        finally:
            self._table._leave(token)
        count = 0
        for item in items:
            call.send(item)
            count += 1
        return count


_Patterns = tuple[tuple[BlessingPattern, ...] | None, tuple[BlessingPattern, ...] | None]


class MountTable:
    """A mount table; serve it with ``server.serve_dispatcher(table)`` on a
    ``Server(principal, serves_mount_table=True)``.

    Its mounts live in a :class:`~ipcclient.server.mountstore.MountStore`: by default a
    :class:`~ipcclient.server.mountstore.MemoryStore` of this process; an
    :class:`~ipcclient.server.etcdstore.EtcdStore` shares them (and the access lists) with
    every other table on the same etcd cluster and prefix. Thread-safe.

    Args:
        mount_patterns: blessing patterns allowed to Mount and Unmount (None: everyone,
            even a client with no validated blessing name).
        resolve_patterns: blessing patterns allowed to ResolveStep and Glob (None: everyone).
            With a shared store, the first table to find no access lists stored seeds them
            with its own; :meth:`set_access` changes them for every table.
        store: where the mounts live (default: a new in-memory store).
        clock: monotonic clock for TTLs of the default store (inject one in tests).
        max_nodes: the most nodes the default store may hold (default :data:`MAX_NODES`).
        max_servers_per_name: the most servers at one name in the default store (default
            :data:`MAX_SERVERS_PER_NAME`).
        max_table_bytes: the most bytes the names and servers in the default store may be
            charged (default :data:`MAX_TABLE_BYTES`).
        max_ttl: TTLs are clamped to this (default :data:`MAX_TTL`).

    Raises:
        BadArgError: a bound is not positive, or ``store`` comes with store settings.
    """

    def __init__(
        self,
        *,
        mount_patterns: Iterable[str] | None = ("...",),
        resolve_patterns: Iterable[str] | None = ("...",),
        store: MountStore | None = None,
        clock: Callable[[], float] | None = None,
        max_nodes: int | None = None,
        max_servers_per_name: int | None = None,
        max_table_bytes: int | None = None,
        max_ttl: float = MAX_TTL,
    ) -> None:
        if not max_ttl > 0:
            raise errors.BadArgError("mount table: bounds must be positive")
        settings = (clock, max_nodes, max_servers_per_name, max_table_bytes)
        if store is None:
            store = MemoryStore(
                clock=clock if clock is not None else time.monotonic,
                max_nodes=MAX_NODES if max_nodes is None else max_nodes,
                max_servers_per_name=(
                    MAX_SERVERS_PER_NAME if max_servers_per_name is None else max_servers_per_name
                ),
                max_table_bytes=MAX_TABLE_BYTES if max_table_bytes is None else max_table_bytes,
            )
        elif any(v is not None for v in settings):
            raise errors.BadArgError(
                "mount table: clock, max_nodes, max_servers_per_name and max_table_bytes "
                "belong to the store"
            )
        self._store = store
        # (A MemoryStore never blocks: its calls need no context, which costs a call
        # something to make. A class derived from it may block.)
        self._store_blocks = type(store) is not MemoryStore
        self._own = _access_lists(mount_patterns, resolve_patterns)
        self._max_ttl = min(max_ttl, MAX_TTL)
        self._lock = threading.Lock()  # guards the cached patterns and the failure below
        self._cached: _Patterns = _compile(self._own)  # (used once read from the store)
        self._cached_at = -math.inf
        self._failed: errors.IPCError | None = None  # the store's last failure to answer
        self._failed_at = -math.inf
        self._authorizer = _MethodAuthorizer(self)
        self._invoker = _Invoker(self)

    # -- Dispatcher ------------------------------------------------------------------------

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        """Every suffix is served (it is a name in the table); the authorizer checks the
        method against the access patterns. Only the four wire methods are invocable: the
        object served is a private invoker, not this table."""
        return self._invoker, self._authorizer

    # -- inspection (Python only, not remotely callable: the invoker is what is served) ----

    @property
    def store(self) -> MountStore:
        """Where the mounts live."""
        return self._store

    def node_count(self) -> int:
        """Entries in the store now: nodes of the in-memory tree (the root included;
        expired ones until purged), mounts of a shared store."""
        return self._store.size()

    def set_access(
        self,
        *,
        mount_patterns: Iterable[str] | None,
        resolve_patterns: Iterable[str] | None,
    ) -> None:
        """Replace the access patterns (as in the constructor), in the store: with a shared
        store every table on it uses them within its refresh interval. Calls already
        authorized are not affected."""
        acl = _access_lists(mount_patterns, resolve_patterns)
        compiled = _compile(acl)
        stored = self._store.set_access(acl)
        with self._lock:
            self._own = acl
            self._cached = compiled if stored == acl else _compile(stored)
            self._cached_at = time.monotonic()
            self._failed, self._failed_at = None, -math.inf

    def sweep(self) -> int:
        """Drop every expired server the store keeps itself (an in-memory tree: expired
        servers and empty nodes); returns the entries left."""
        return self._store.sweep()

    def close(self) -> None:
        """Release the store's connections (the in-memory store has none)."""
        self._store.close()

    # -- access lists ----------------------------------------------------------------------

    def _cached_patterns(self) -> _Patterns | None:
        """The patterns when the table's copy is fresh (read from the store less than its
        refresh interval ago), None when they are due to be read again.

        Raises:
            OverloadedError: (RETRY_BACKOFF) the store failed to answer for them less than
                :data:`ACCESS_RETRY_AFTER` ago: no access is granted meanwhile.
        """
        now = time.monotonic()
        refresh = self._store.access_refresh
        with self._lock:
            if now - self._cached_at < refresh:
                return self._cached
            failed = self._failed
            if failed is not None and now - self._failed_at < min(refresh, ACCESS_RETRY_AFTER):
                raise failed.with_context()
        return None

    def _patterns(self, timeout: float | None = None) -> _Patterns:
        """The current patterns: the table's copy, read again from the store once its
        refresh interval passed, within ``timeout`` seconds (and at most
        :data:`ACCESS_READ_TIMEOUT`; no lock is held across the read). Fails closed: lists
        that cannot be read grant nothing (not even the last ones read).

        Raises:
            OverloadedError: (RETRY_BACKOFF) the store did not answer within
                ACCESS_READ_TIMEOUT, or did not answer at all; it is remembered, and calls
                are refused at once for :data:`ACCESS_RETRY_AFTER` seconds.
            TimeoutError: the call's deadline passed first (not remembered).
            BadStateError: the stored access lists are malformed (remembered too).
        """
        cached = self._cached_patterns()
        if cached is not None:
            return cached
        started = time.monotonic()
        budget = ACCESS_READ_TIMEOUT if timeout is None else min(timeout, ACCESS_READ_TIMEOUT)
        cut_short = budget < ACCESS_READ_TIMEOUT  # (by the call's deadline)
        if budget <= 0:
            raise errors.TimeoutError("mount table: no time left to read the access lists")
        deadline = started + budget
        with self._lock:
            own = self._own
        try:
            stored = self._store.get_access(timeout=budget)
            if stored is None:
                stored = self._store.set_access(
                    own, only_if_absent=True, timeout=_time_left(deadline)
                )
            compiled = _compile(stored)
        except errors.IPCError as exc:
            if isinstance(exc, errors.CanceledError) or (
                cut_short and isinstance(exc, errors.TimeoutError)
            ):
                raise  # the call's own cancel or deadline: says nothing about the store
            failure = exc
            if isinstance(exc, errors.TimeoutError | errors.OverloadedError):
                failure = errors.OverloadedError(
                    f"mount table: cannot read its access lists now ({exc.msg})",
                    action=errors.RetryAction.RETRY_BACKOFF,
                )
            log.warning("mount table: cannot read the access lists (%s); refusing calls", exc)
            with self._lock:
                self._failed, self._failed_at = failure, time.monotonic()
            raise failure.with_context() from None
        with self._lock:
            self._cached, self._cached_at = compiled, started
            self._failed, self._failed_at = None, -math.inf
            return compiled

    def _enter(self, call: ServerCall) -> contextvars.Token[Context | None] | None:
        """Give the store the context of ``call`` (see ``CALL_CONTEXT``) until
        :meth:`_leave`, if the store may block."""
        return CALL_CONTEXT.set(call.context) if self._store_blocks else None

    def _leave(self, token: contextvars.Token[Context | None] | None) -> None:
        if token is not None:
            CALL_CONTEXT.reset(token)

    def _authorize(self, call: CallSecurity, timeout: float | None) -> None:
        """Check ``call`` against the current patterns, read within ``timeout`` seconds if
        they are due (raises NoAccess, or the error of a failed read)."""
        _check(call, self._patterns(timeout))

    # -- the methods -----------------------------------------------------------------------

    def _mount(
        self, suffix: str, server: str, ttl: float, flags: int, timeout: float | None = None
    ) -> None:
        comps = _check_suffix(suffix)
        if not comps:
            raise errors.BadArgError("mount table: cannot mount at the root of the table")
        for c in comps:
            if names.is_reserved(c):
                raise errors.BadArgError(f"mount table: name element {c!r} is reserved")
            if "\x00" in c:  # (whatever the store: a shared store's keys end with NUL)
                raise errors.BadArgError("mount table: a name may not contain NUL")
        server = _check_server(server)
        seconds = min(_check_ttl(ttl), self._max_ttl)
        if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~_ALL_FLAGS:
            # (Not the value itself: a peer's integer may be too long to print.)
            raise errors.BadArgError(
                f"mount table: bad flags (a {type(flags).__name__}; the known flags are "
                f"{_ALL_FLAGS:#x})"
            )
        self._store.mount(
            comps,
            server,
            seconds,
            mt=bool(flags & MT),
            leaf=bool(flags & LEAF),
            replace=bool(flags & REPLACE),
            timeout=timeout,
        )
        log.debug("mount table: mounted %s at %r for %.1fs", server, "/".join(comps), seconds)

    def _unmount(self, suffix: str, server: str, timeout: float | None = None) -> None:
        comps = _check_suffix(suffix)
        if not isinstance(server, str):
            raise errors.BadArgError("mount table: the server must be a str ('' for all)")
        if server:
            try:
                server = canonical_server(server)
            except errors.BadArgError:
                server = names.clean(server)  # (never mounted: unmounting it does nothing)
        if _mountable(comps) != comps:
            return  # (a name holding NUL is never mounted: nothing to unmount)
        self._store.unmount(comps, server, timeout=timeout)

    def _resolve_step(self, suffix: str, timeout: float | None = None) -> dict[str, Any]:
        comps = _components(suffix)
        # (No mount is deeper than MAX_COMPONENTS: the rest of a longer name is the name
        # below the mount point that holds it.)
        found = self._store.resolve(_mountable(comps[:MAX_COMPONENTS]), timeout=timeout)
        if found is None:
            raise errors.NoExistError(f"mount table: no such name {suffix!r}", suffix)
        entry = MountEntry(
            "/".join(comps[found.consumed :]),
            tuple(MountedServer(s, left) for s, left in found.servers),
            found.mt,
            found.leaf,
        )
        return entry.to_wire(0.0)

    def _glob(
        self, suffix: str, pattern: str, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        comps = _check_suffix(suffix)
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LEN:
            raise errors.BadArgError("mount table: bad glob pattern")
        if names.is_rooted(pattern):
            raise errors.BadArgError(f"mount table: glob pattern {pattern!r} must be relative")
        elements = glob_pattern(names.components(pattern))
        if len([e for e in elements if e != "..."]) > MAX_COMPONENTS:
            raise errors.BadArgError(
                f"mount table: glob pattern {pattern!r} has more than {MAX_COMPONENTS} "
                "components (no name has)"
            )
        deadline = _deadline(timeout)  # (one for both store calls)
        if comps:
            found = self._store.resolve(_mountable(comps), timeout=_time_left(deadline))
            if found is not None and found.consumed < len(comps):
                return iter(())  # below a mount point: its names live in the mounted server
            if _mountable(comps) != comps:
                return iter(())  # a name holding NUL: nothing is mounted there or below
        items = self._store.glob(
            comps,
            elements,
            limit=MAX_GLOB_RESULTS,
            max_bytes=MAX_GLOB_BYTES,
            timeout=_time_left(deadline),
        )
        size = sum(glob_item_bytes(i) for i in items)
        if len(items) >= MAX_GLOB_RESULTS or size >= MAX_GLOB_BYTES:
            log.warning(
                "mount table: Glob %r at %r cut off at %d items (%d bytes)",
                pattern,
                suffix,
                len(items),
                size,
            )
        return iter(items)


def _access_lists(mount: Iterable[str] | None, resolve: Iterable[str] | None) -> AccessLists:
    def one(value: Iterable[str] | None, what: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            raise errors.BadArgError(f"mount table: {what} must be a sequence of patterns")
        out = tuple(value)
        if not all(isinstance(p, str) for p in out):
            raise errors.BadArgError(f"mount table: {what} must be strings")
        return out

    return AccessLists(one(mount, "mount_patterns"), one(resolve, "resolve_patterns"))


def _compile(acl: AccessLists) -> _Patterns:
    def one(value: tuple[str, ...] | None) -> tuple[BlessingPattern, ...] | None:
        return None if value is None else tuple(BlessingPattern(p) for p in value)

    return one(acl.mount), one(acl.resolve)
