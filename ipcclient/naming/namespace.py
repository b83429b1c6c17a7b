"""Client-side name resolution through mount tables, with a TTL cache.

Owns: the :class:`Caller` protocol through which resolution makes its ``ResolveStep``
calls, and :class:`Namespace`: the roots, :meth:`Namespace.resolve`,
:meth:`Namespace.resolve_to_mount_table`, the resolution cache and
:meth:`Namespace.flush_cache_entry`. What a name resolves to (:class:`MountEntry`,
:class:`MountedServer` and their wire forms) is :mod:`ipcclient.naming.mountentry`,
re-exported here.

Must not: import anything from ipcclient but :mod:`ipcclient.errors`,
:mod:`ipcclient.context` and :mod:`ipcclient.naming` (never the client, a transport or a
server: the client passes itself in as the :class:`Caller`); open sockets; hold its lock while
calling the caller; sort servers by protocol (that is the client's job, after resolution).

Resolution:

1. Strip a ``__(pattern)`` prefix. A relative name starts from an entry made of the roots
   (``serves_mount_table=True``). A rooted name starts from a one-server entry whose
   endpoint's ``m`` flag decides whether it serves a mount table; a terminal name
   (``/address//suffix``) never does.
2. While the entry serves a mount table and its remaining name is not empty, at most
   :data:`MAX_RESOLVE_DEPTH` times: ask its servers, in order, ``ResolveStep`` of the
   remaining name (the cache first, for every server; then a call to each server until one
   answers, the one that answered last for the same servers first, each given a share of
   the time left while others remain). The answer becomes the entry.
3. A server saying "no such name" (:class:`~ipcclient.errors.NoExistError`) ends resolution
   with that error. A server saying "I am not a mount table" (UnknownMethod, UnknownSuffix,
   BadArg) ends resolution with the current entry. Any other error moves on to the next
   server; when every server failed, the last error is raised with a ``tried`` list.

The cache maps what was resolved (the mount table's address and the name *components* it
resolved) to the answer. An entry is stale once any of its servers' deadlines passed. The
cache is bounded by entries (``cache_size``) and by what they hold
(:data:`MAX_CACHE_BYTES`; an answer over :data:`MAX_CACHE_ENTRY_BYTES` is not cached), since
one answer within the wire's limits may hold megabytes of server names.
Lookup takes the longest component prefix. :meth:`Namespace.flush_cache_entry` walks the
cache as a resolution would, following *every* server of every entry it meets, and forgets
all of them (it does not stop at the first server it flushes, and compares name
components, not raw string prefixes).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint, endpoint_of
from ipcclient.naming.mountentry import (
    MAX_WIRE_NAME_LEN,
    MAX_WIRE_SERVERS,
    MountedServer,
    MountEntry,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_STEP_TIMEOUT",
    "MAX_CACHE_BYTES",
    "MAX_CACHE_ENTRY_BYTES",
    "MAX_RESOLVE_DEPTH",
    "MAX_WIRE_NAME_LEN",
    "MAX_WIRE_SERVERS",
    "Caller",
    "MountEntry",
    "MountedServer",
    "NameNotFoundError",
    "Namespace",
    "ResolutionDepthExceededError",
    "terminal_servers",
]

MAX_RESOLVE_DEPTH = 32
"""Most ResolveStep hops one resolution may take."""
DEFAULT_STEP_TIMEOUT = 30.0
"""Seconds a ResolveStep call may take when the caller's context has no deadline."""
DEFAULT_CACHE_SIZE = 4000
"""Cache entries kept; when full, stale ones go first, then the oldest, down to 75 %."""
MAX_CACHE_BYTES = 32 * 1024 * 1024
"""What the cache's entries may hold in all (as counted by :func:`_entry_cost`: the names
they hold plus a fixed overhead per entry and per server); past it, stale entries go first,
then the oldest, down to 75 %. Real entries cost a few hundred bytes per server, so the
entry count is the bound that matters for them; this one caps what a mount table answering
with huge entries (up to 1024 servers of 16 KiB each) can make a client keep."""
MAX_CACHE_ENTRY_BYTES = 2 * 1024 * 1024
"""The most one cached entry may cost; a bigger answer is used but not cached (each
resolution through it asks again), so no single answer can push out much of the cache. The
largest answer this project's mount table gives (256 servers of 4096 characters) costs
about 1.1 MiB; a peer's answer within the wire's limits may cost up to 4 MiB."""
_ENTRY_OVERHEAD = 256
"""Bytes counted per cache entry besides its names (the key, the entry and its dict slot)."""
_SERVER_OVERHEAD = 128
"""Bytes counted per server of an entry besides its name (its object and deadline)."""
RESOLVE_STEP = "ResolveStep"
MIN_STEP_SHARE = 1.0
"""Seconds a ResolveStep to one server gets at least while other servers are left to try."""
MAX_LAST_GOOD = 1024
"""Server lists (roots, replicated tables) for which the one that answered last is kept."""

log = logging.getLogger("ipcclient.naming")

_NOT_A_MOUNT_TABLE = (errors.UnknownMethodError, errors.UnknownSuffixError, errors.BadArgError)


class ResolutionDepthExceededError(errors.NoExistError):
    """Resolution took more than :data:`MAX_RESOLVE_DEPTH` steps (a loop of mount tables).

    A :class:`~ipcclient.errors.NoExistError` on the wire, but never worth retrying.
    """


class NameNotFoundError(errors.NoExistError):
    """A mount table answered that it has no such name (``ipc.NoExist`` on the wire).

    Attributes:
        name: the name as it was asked of that mount table (relative to it).
        mount_table: the rooted name of the mount table that answered.
    """

    def __init__(self, msg: str, *params: Any, name: str = "", mount_table: str = "", **kw: Any):
        super().__init__(msg, *params, **kw)
        self.name = name
        self.mount_table = mount_table

    def with_context(self, **kw: Any) -> errors.IPCError:
        clone = super().with_context(**kw)
        clone.name = self.name  # type: ignore[attr-defined]
        clone.mount_table = self.mount_table  # type: ignore[attr-defined]
        return clone


class Caller(Protocol):
    """How the namespace makes an RPC: the client passes itself (or an adapter) in.

    ``name`` is always a terminal rooted name (``/address//suffix``): the callee must send it
    to that server as it is, without resolving it again. Results are the call's positional
    results; errors are :class:`~ipcclient.errors.IPCError`.
    """

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **options: Any
    ) -> Sequence[Any]:
        """Call ``method(*args)`` on the object ``name`` and return its results."""
        ...


_CacheKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class _CachedEntry:
    servers: tuple[MountedServer, ...]
    serves_mount_table: bool
    is_leaf: bool
    cost: int  # as counted against MAX_CACHE_BYTES (_entry_cost)

    def is_stale(self, now: float) -> bool:
        return any(s.deadline <= now for s in self.servers)


class _NotAMountTable(Exception):
    """Internal: the current entry's servers are not mount tables."""


def _check_context(ctx: object, fn: str) -> None:
    if not isinstance(ctx, Context):
        raise errors.BadArgError(
            f"namespace: {fn}() takes a Context first, got {ctx!r:.60}: "
            f"namespace.{fn}(Context.background().with_timeout(5.0), name)"
        )


def _key_of(name: str) -> _CacheKey:
    address, suffix = names.split_address_name(name)
    return address, tuple(suffix.split("/")) if suffix else ()


def _text_cost(text: str) -> int:
    """Bytes counted for a str: one per character, four when any is not ASCII (the most a
    character takes in memory)."""
    return len(text) if text.isascii() else 4 * len(text)


def _entry_cost(key: _CacheKey, servers: Sequence[MountedServer]) -> int:
    """What a cache entry is counted as holding: its key's and its servers' names, plus
    :data:`_ENTRY_OVERHEAD` and :data:`_SERVER_OVERHEAD` per server."""
    address, comps = key
    return (
        _ENTRY_OVERHEAD
        + _text_cost(address)
        + sum(_text_cost(c) for c in comps)
        + sum(_text_cost(s.server) + _SERVER_OVERHEAD for s in servers)
    )


def _validate_roots(roots: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roots, str):
        raise errors.BadArgError("namespace: roots must be a sequence of names, not one str")
    given: object = roots
    if isinstance(given, bytes) or not isinstance(given, Iterable):
        raise errors.BadArgError(
            f"namespace: roots must be a sequence of names, not {type(given).__name__}"
        )
    out: list[str] = []
    for root in roots:
        try:
            endpoint_of(root)
        except errors.BadArgError as exc:
            raise errors.BadArgError(f"namespace: bad root: {exc.msg}") from None
        out.append(names.clean(root))
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _rooted_entry(name: str) -> tuple[MountEntry, bool]:
    """The one-server entry a rooted name starts from (pure, so cached: a client calls the
    same rooted names over and over)."""
    _, name = names.split_pattern_name(name)
    address, suffix = names.split_address_name(name)
    if not address:
        raise errors.BadArgError(f"namespace: rooted name {name!r} has no address")
    ep = Endpoint.parse(address)
    entry = MountEntry(suffix, (MountedServer("/" + address),), ep.serves_mount_table, ep.is_leaf)
    return entry, names.is_terminal(name)


@functools.lru_cache(maxsize=1024)
def terminal_servers(name: str) -> tuple[str, ...] | None:
    """What :meth:`Namespace.resolve` answers at once, with no call and whatever the roots,
    for a rooted terminal name: the terminal names of its servers. None for every other name
    (it needs the namespace). Raises as ``resolve`` for a malformed rooted name."""
    if not names.is_rooted(name):
        return None
    entry, final = _rooted_entry(name)
    return tuple(entry.names()) if final else None


class Namespace:
    """Resolves names to servers through mount tables, caching what it learns.

    Thread-safe. One lock guards the roots and the cache and is held only for dictionary
    operations, never while calling the :class:`Caller`.

    Args:
        roots: rooted names of the root mount tables (``/host:port``, ``/@1@...@@``).
        caller: makes the ``ResolveStep`` calls; may be set later with :meth:`set_caller`
            (the client usually passes itself). Without one, only names that need no call
            resolve.
        clock: a monotonic clock; mount deadlines are read on it.
        cache_size: the most cache entries kept (0 disables the cache). Whatever it is,
            the entries hold at most :data:`MAX_CACHE_BYTES` in all.

    Raises:
        BadArgError: ``roots`` is not a sequence of rooted names (one str, None...), or
            ``cache_size`` is not an int >= 0.
    """

    def __init__(
        self,
        roots: Sequence[str] = (),
        caller: Caller | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if not isinstance(cache_size, int) or cache_size < 0:
            raise errors.BadArgError(f"namespace: cache_size must be an int >= 0: {cache_size!r}")
        self._lock = threading.Lock()
        self._roots = _validate_roots(roots)
        self._caller = caller
        self._clock = clock
        self._cache_size = cache_size
        self._cache: dict[_CacheKey, _CachedEntry] = {}
        self._cache_bytes = 0  # the sum of the entries' costs
        # hash(servers) -> the one of them that answered last. Keyed by the hash, not the
        # servers, so that it does not keep alive the names of entries the cache dropped; a
        # collision only changes which server is asked first (the one named must be among
        # the servers asked).
        self._last_good: dict[int, str] = {}

    # -- configuration ---------------------------------------------------------------------

    @property
    def roots(self) -> tuple[str, ...]:
        """The root mount tables, as rooted names."""
        with self._lock:
            return self._roots

    def set_roots(self, roots: Sequence[str]) -> None:
        """Replace the roots (the cache stays valid: it is keyed by server addresses).

        Raises:
            BadArgError: a root is not a rooted name with a well-formed address.
        """
        validated = _validate_roots(roots)
        with self._lock:
            self._roots = validated

    @property
    def caller(self) -> Caller | None:
        """The caller used for ``ResolveStep``, or ``None`` when none is set yet."""
        with self._lock:
            return self._caller

    def set_caller(self, caller: Caller | None) -> None:
        """Set (or clear) the caller used for ``ResolveStep``."""
        with self._lock:
            self._caller = caller

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, ctx: Context, name: str) -> MountEntry:
        """Resolve ``name`` to its servers (in order) and the name relative to them.

        Raises:
            BadArgError: the name is malformed (bad address).
            NoServersError: a relative name and no roots (not retryable).
            NoExistError: a mount table has no such name.
            ResolutionDepthExceededError: more than :data:`MAX_RESOLVE_DEPTH` steps.
            CanceledError, TimeoutError: ``ctx`` is done.
            IPCError: every server of a step failed (the last error, with ``tried``).
        """
        _check_context(ctx, "resolve")
        entry, final = self._root_entry(name)
        if final:
            return entry
        for _ in range(MAX_RESOLVE_DEPTH):
            if not entry.serves_mount_table or not entry.name:
                return entry
            try:
                entry = self._step(ctx, entry)
            except _NotAMountTable:
                return entry
        raise ResolutionDepthExceededError(
            f"resolution of {name!r} took more than {MAX_RESOLVE_DEPTH} steps", name
        )

    def resolve_to_mount_table(self, ctx: Context, name: str) -> MountEntry:
        """Resolve ``name`` to the mount table entry that holds (or would hold) its last part.

        That is where a server mounts itself under ``name``: the returned entry's servers are
        mount tables and its :attr:`MountEntry.name` is the name relative to them. A mount
        table that has no such name is the answer (the name would be created there).

        Raises:
            as :meth:`resolve`, except NoExistError from a mount table.
        """
        _check_context(ctx, "resolve_to_mount_table")
        entry, final = self._root_entry(name)
        if final:
            return entry
        last = entry
        for _ in range(MAX_RESOLVE_DEPTH):
            if not entry.serves_mount_table or not entry.name:
                return last
            try:
                nxt = self._step(ctx, entry)
            except _NotAMountTable:
                return last
            except errors.NoExistError:
                return entry
            last, entry = entry, nxt
        raise ResolutionDepthExceededError(
            f"resolution of {name!r} took more than {MAX_RESOLVE_DEPTH} steps", name
        )

    def _root_entry(self, name: str) -> tuple[MountEntry, bool]:
        """The entry resolution starts from, and whether it is final (a terminal name)."""
        if not isinstance(name, str):
            raise errors.BadArgError(f"namespace: a name must be a str, got {type(name).__name__}")
        if names.is_rooted(name):
            return _rooted_entry(name)
        _, name = names.split_pattern_name(name)
        address, suffix = names.split_address_name(name)
        if not address:
            if names.is_rooted(name):
                raise errors.BadArgError(f"namespace: rooted name {name!r} has no address")
            roots = self.roots
            if not roots:
                raise errors.NoServersError(
                    f"namespace: the relative name {name!r} needs a mount table and no roots "
                    "are set (give the client roots=['/host:port'], or use a rooted name "
                    f"such as '/host:port/{name}')",
                    name,
                    action=errors.RetryAction.NO_RETRY,
                )
            entry = MountEntry(suffix, tuple(MountedServer(r) for r in roots), True, False)
            return entry, False
        return _rooted_entry(name)

    def _step(self, ctx: Context, entry: MountEntry) -> MountEntry:
        """One ResolveStep of ``entry.name`` against ``entry``'s servers (cache first)."""
        step_names = [
            names.join_address_name(s.server, entry.name, terminal=True) for s in entry.servers
        ]
        for step_name in step_names:
            cached = self._lookup(step_name)
            if cached is not None:
                log.debug("namespace: %s: cache hit", step_name)
                return cached
        log.debug("namespace: %r: cache miss, asking its mount table(s)", entry.name)
        with self._lock:
            caller = self._caller
        if caller is None:
            raise errors.NoServersError(
                f"namespace: resolving {entry.name!r} needs a mount table call and no caller "
                "is set",
                action=errors.RetryAction.NO_RETRY,
            )
        servers = tuple(s.server for s in entry.servers)
        with self._lock:
            good = self._last_good.get(hash(servers))
        order = list(zip(servers, step_names, strict=True))
        if good is not None and good in servers:  # the server that answered last goes first
            order.insert(0, order.pop(servers.index(good)))
        tried: list[str] = []
        last_err: errors.IPCError | None = None
        retryable: errors.IPCError | None = None  # (the first error allowing a retry)
        for i, (server, step_name) in enumerate(order):
            err = ctx.err()
            if err is not None:
                raise err.with_context(tried=tried)
            try:
                answer = self._call(ctx, caller, step_name, len(step_names) - i - 1)
            except errors.NoExistError as exc:
                mount_table = names.split_address_name(step_name)[0]
                log.debug("namespace: /%s has no name %r: %s", mount_table, entry.name, exc)
                raise NameNotFoundError(
                    f"the mount table at /{mount_table} has no name {entry.name!r}",
                    entry.name,
                    name=entry.name,
                    mount_table="/" + mount_table,
                    tried=tried,
                ) from exc
            except errors.IPCError as exc:
                if isinstance(exc, _NOT_A_MOUNT_TABLE) and exc.request_sent is not False:
                    raise _NotAMountTable() from None  # (the server's answer, not our refusal)
                log.debug("namespace: %s %s failed: %s", step_name, RESOLVE_STEP, exc)
                tried.append(f"{step_name}: {exc}")
                last_err = exc
                if retryable is None and exc.action is not errors.RetryAction.NO_RETRY:
                    retryable = exc
                continue
            log.debug("namespace: %s resolved to %d server(s)", step_name, len(answer.servers))
            self._remember(step_name, answer)
            if len(servers) > 1:
                self._note_good(servers, server)
            return answer
        if last_err is None:
            raise errors.NoServersError(f"namespace: no servers to resolve {entry.name!r}")
        # A replica that may answer later (it could not be reached, it was overloaded) keeps
        # the resolution retryable, whichever order the replicas were asked in.
        raise (retryable or last_err).with_context(tried=tried)

    def _note_good(self, servers: tuple[str, ...], server: str) -> None:
        key = hash(servers)
        with self._lock:
            if key not in self._last_good and len(self._last_good) >= MAX_LAST_GOOD:
                self._last_good.clear()
            self._last_good[key] = server

    def _call(self, ctx: Context, caller: Caller, step_name: str, others: int = 0) -> MountEntry:
        """One ResolveStep; while ``others`` servers are left to try, it gets a share of the
        time left (at least :data:`MIN_STEP_SHARE` seconds) so a server that does not answer
        cannot use up the whole deadline."""
        remaining = ctx.remaining()
        budget = DEFAULT_STEP_TIMEOUT if remaining is None else remaining
        if others:
            budget = max(budget / (others + 1), min(budget, MIN_STEP_SHARE))
        if remaining is None or budget < remaining:
            with ctx.with_timeout(budget) as step_ctx:
                results = caller.call(step_ctx, step_name, RESOLVE_STEP, [])
        else:
            results = caller.call(ctx, step_name, RESOLVE_STEP, [])
        if not isinstance(results, list | tuple) or len(results) != 1:
            raise errors.BadProtocolError(
                f"namespace: {RESOLVE_STEP} on {step_name!r} must return exactly one result"
            )
        return MountEntry.from_wire(results[0], self._clock())

    # -- cache -----------------------------------------------------------------------------

    def _find(self, name: str, now: float) -> tuple[_CacheKey, _CachedEntry, str] | None:
        """Longest-prefix match; the caller holds the lock. Stale hits are returned too."""
        address, comps = _key_of(name)
        for cut in range(len(comps), -1, -1):
            key = (address, comps[:cut])
            hit = self._cache.get(key)
            if hit is not None:
                return key, hit, "/".join(comps[cut:])
        return None

    def _lookup(self, name: str) -> MountEntry | None:
        now = self._clock()
        with self._lock:
            while True:
                found = self._find(name, now)
                if found is None:
                    return None
                key, hit, rest = found
                if not hit.is_stale(now):
                    return MountEntry(rest, hit.servers, hit.serves_mount_table, hit.is_leaf)
                self._drop_locked(key)  # stale: drop it and try a shorter prefix

    def _remember(self, step_name: str, answer: MountEntry) -> None:
        """Cache ``answer`` under the part of ``step_name`` the mount table resolved."""
        if self._cache_size == 0:
            return
        now = self._clock()
        if not answer.servers or answer.is_stale(now):
            return
        address, comps = _key_of(step_name)
        rest = names.components(answer.name)
        if rest:
            if len(rest) > len(comps) or comps[len(comps) - len(rest) :] != rest:
                return  # the answer's name is not a suffix of what we asked: do not cache
            comps = comps[: len(comps) - len(rest)]
        key = (address, comps)
        cost = _entry_cost(key, answer.servers)
        if cost > MAX_CACHE_ENTRY_BYTES:
            log.debug("namespace: %s: an answer of %d bytes is not cached", step_name, cost)
            with self._lock:
                self._drop_locked(key)  # (what was cached for it is older than this answer)
            return
        value = _CachedEntry(answer.servers, answer.serves_mount_table, answer.is_leaf, cost)
        with self._lock:
            self._drop_locked(key)  # re-insert as the newest
            if len(self._cache) >= self._cache_size or self._cache_bytes + cost > MAX_CACHE_BYTES:
                self._evict_locked(now, cost)
            self._cache[key] = value
            self._cache_bytes += cost

    def _drop_locked(self, key: _CacheKey) -> None:
        value = self._cache.pop(key, None)
        if value is not None:
            self._cache_bytes -= value.cost

    def _evict_locked(self, now: float, room: int) -> None:
        """Make room for one more entry costing ``room``: drop the stale entries, then the
        oldest, until at most 75 % of ``cache_size`` entries and of
        :data:`MAX_CACHE_BYTES` (the new entry included) are left."""
        for key in [k for k, v in self._cache.items() if v.is_stale(now)]:
            self._drop_locked(key)
        target = (self._cache_size * 3) // 4
        target_bytes = (MAX_CACHE_BYTES * 3) // 4 - room
        while self._cache and (len(self._cache) > target or self._cache_bytes > target_bytes):
            self._drop_locked(next(iter(self._cache)))  # the oldest insertion

    def cache_size(self) -> int:
        """How many entries the cache holds now (stale ones included until noticed)."""
        with self._lock:
            return len(self._cache)

    def cache_bytes(self) -> int:
        """What the cache's entries hold now, as counted against :data:`MAX_CACHE_BYTES`
        (stale ones included until noticed)."""
        with self._lock:
            return self._cache_bytes

    def flush_cache_entry(self, name: str) -> bool:
        """Forget every cache entry a resolution of ``name`` would use; True if any.

        Walks the cache as a resolution would, from every rooted form of ``name`` (each root
        for a relative name), following *every* server of every entry met, and forgets each
        entry met together with the entries for longer names at the same server (matched by
        whole components: flushing ``a/b`` never touches ``a/bc``).

        Raises:
            BadArgError: ``name`` is not a str.
        """
        given: object = name
        if not isinstance(given, str):
            raise errors.BadArgError(f"namespace: a name must be a str, not {type(given).__name__}")
        _, name = names.split_pattern_name(name)
        if names.is_rooted(name):
            starts = [name]
        else:
            starts = [names.join_address_name(r, name, terminal=True) for r in self.roots]
        now = self._clock()
        to_forget: set[_CacheKey] = set()
        seen: set[str] = set()
        pending = [(n, 0) for n in starts]
        while pending:
            current, depth = pending.pop()
            if current in seen or depth > MAX_RESOLVE_DEPTH:
                continue
            seen.add(current)
            with self._lock:
                found = self._find(current, now)
            if found is None:
                continue
            key, hit, rest = found
            to_forget.add(key)
            pending.extend(
                (names.join_address_name(s.server, rest, terminal=True), depth + 1)
                for s in hit.servers
            )
        removed = 0
        with self._lock:
            for address, comps in to_forget:
                doomed = [k for k in self._cache if k[0] == address and k[1][: len(comps)] == comps]
                for k in doomed:
                    self._drop_locked(k)
                removed += len(doomed)
        if removed:
            log.debug("namespace: flushed %d cache entries for %r", removed, name)
        return removed > 0
