"""Publishing a server's endpoints under names in mount tables, kept alive by refreshes.

Owns: :class:`Publisher` — the names a server publishes (each checked when added: a
relative name without reserved elements, servers whose address is an endpoint), the
``Mount`` / ``Unmount`` calls that put its endpoints in the mount table holding each name
(found with ``namespace.resolve_to_mount_table``), one daemon thread that refreshes every
mount at ``ttl * refresh_fraction`` (the TTL at most the table's ``MAX_TTL``), one
short-lived lane per mount table server in each refresh, run side by side, that works through
every name held at that server (one name's calls there sharing one deadline; a server that
uses up a whole deadline is not asked about the rest of the names in that refresh), per-name
status, and unmounting everything on :meth:`stop`.

Must not: raise from its thread (errors are logged, recorded in :meth:`Publisher.status` and
retried at the next refresh), make a call without a deadline, hold its lock across a call,
or import the client (it is given anything with ``call(ctx, name, method, *args, options=)``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.context import LONGEST_WAIT, CancelContext, Context
from ipcclient.naming import names
from ipcclient.naming.endpoint import endpoint_of
from ipcclient.naming.namespace import Namespace
from ipcclient.options import CallOption, NoRetry
from ipcclient.server.mounttable import MAX_SERVER_LEN, MAX_TTL, MT, REPLACE

__all__ = ["MountCaller", "NameStatus", "Publisher"]

log = logging.getLogger("ipcclient.publisher")

DEFAULT_CALL_TIMEOUT = 5.0
"""Seconds one Mount / Unmount (resolution included) may take."""
MAX_NAMES = 1024
"""Names one publisher keeps alive (each costs a Mount per server per refresh)."""
_MAX_WAIT = 3600.0
"""The refresher wakes at least this often (a wait must fit the platform's timeouts)."""
_SETTLE_CALLS = 3
"""Calls a lane makes at most to put right one Mount that landed after its server was
unpublished (Unmount; Mount again if it was published again meanwhile; Unmount ...)."""


class MountCaller(Protocol):
    """What the publisher calls mount tables through (a :class:`~ipcclient.Client`)."""

    def call(
        self, ctx: Context, name: str, method: str, *args: Any, options: Sequence[CallOption] = ()
    ) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class NameStatus:
    """What :meth:`Publisher.status` reports for one name.

    Attributes:
        servers: the servers mounted under the name.
        serves_mount_table: whether they are mounted with the MT flag.
        last_mount: monotonic time of the last refresh that mounted every server, or None.
        last_error: the last refresh's error text, or None when it succeeded.
    """

    servers: tuple[str, ...]
    serves_mount_table: bool
    last_mount: float | None
    last_error: str | None


@dataclass
class _Name:
    servers: tuple[str, ...]
    serves_mount_table: bool
    last_mount: float | None = None
    last_error: str | None = None
    # The flags changed: the first Mount at each table carries REPLACE, until that table
    # has taken it. ``replaced`` holds the tables (mount table servers) that have; it is
    # shared by the entries that add_name makes while the flags stay the same, and a new
    # set when they change again. Both are read and written under the publisher's lock.
    replace: bool = False
    replaced: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Read:
    """One name as a refresh read it (under the lock) before mounting it."""

    name: str
    servers: tuple[str, ...]
    serves_mount_table: bool
    replace: bool
    replaced: set[str]


@dataclass(frozen=True)
class _Job:
    """One name to mount at one mount table server in a refresh, at ``target`` (the terminal
    name there); what went wrong goes into ``problems``."""

    read: _Read
    target: str
    problems: list[str]


class Publisher:
    """Keeps ``servers`` mounted under names until removed or stopped.

    Args:
        caller: makes the RPCs (a :class:`~ipcclient.Client`).
        namespace: finds the mount table for each name (usually ``client.namespace``).
        ttl: the TTL asked for each mount, in seconds; more than the mount table's
            :data:`~ipcclient.server.mounttable.MAX_TTL` is asked as ``MAX_TTL`` (the table
            grants no more, so the refreshes must come at least that often). It must not
            exceed the ``max_ttl`` of the tables it mounts in either: a table built with a
            lower ``max_ttl`` grants only that, ``Mount`` does not say so, and the name then
            expires between refreshes with no error in :meth:`status` or the log.
        refresh_fraction: refresh every ``ttl * refresh_fraction`` seconds (0 < f < 1).
        call_timeout: the time the calls of one name through one mount table server
            share: its Mounts at that table in a refresh (or its Unmounts there, in
            :meth:`stop` or :meth:`remove_name`) end within it, and the resolution of the
            name has a ``call_timeout`` of its own. A table that uses up a whole
            ``call_timeout`` on one name is not asked about the names after it in that
            refresh (they are retried at the next one, and kept alive meanwhile by the
            other servers of their table) nor in :meth:`stop` (their mounts there expire
            with their TTL).

    Raises:
        BadArgError: ``ttl`` or ``call_timeout`` is not a finite number > 0, or
            ``refresh_fraction`` is not in (0, 1).
    """

    def __init__(
        self,
        caller: MountCaller,
        namespace: Namespace,
        *,
        ttl: float = 60.0,
        refresh_fraction: float = 0.5,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        ttl = _seconds(ttl, "ttl", MAX_TTL)
        if not (_is_number(refresh_fraction) and 0 < refresh_fraction < 1):
            raise errors.BadArgError("publisher: refresh_fraction must be in (0, 1)")
        self._caller = caller
        self._namespace = namespace
        self._ttl = ttl
        self._period = self._ttl * float(refresh_fraction)
        self._call_timeout = _seconds(call_timeout, "call_timeout")
        self._life = Context.background().with_cancel()  # cancelled by stop()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._names: dict[str, _Name] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._refresher_error: str | None = None  # why the refresher could not start

    # -- public API ------------------------------------------------------------------------

    def add_name(
        self, name: str, servers: Sequence[str], *, serves_mount_table: bool = False
    ) -> None:
        """Publish ``servers`` (endpoint strings or rooted names) under ``name``.

        Mounts at once, through each mount table server side by side (the calls through one
        together bounded by ``call_timeout``); a failure is logged, shown by :meth:`status`
        and retried at the next refresh, never raised. Adding a name again replaces its
        servers (the old ones are unmounted) and its flags (after a change of
        ``serves_mount_table``, the first Mount each table takes carries REPLACE).

        Raises:
            BadArgError: a bad name (not a non-empty relative name, or an element that is
                reserved, ``__x``, or holds NUL: no mount table takes it), ``servers`` not a
                sequence of str or a bad server (its address is not an endpoint, or it is
                longer than a mount table takes), or too many names. Raised at once: the
                refreshes would only retry what can never be mounted.
            BadStateError: the publisher is stopped.
        """
        name = _checked_name(name)
        given: object = servers
        if isinstance(given, str | bytes) or not isinstance(given, Iterable):
            raise errors.BadArgError(
                f"publisher: servers must be a sequence of str, not {type(given).__name__}"
            )
        rooted = tuple(_checked_server(s) for s in servers)
        if not rooted:
            raise errors.BadArgError("publisher: no servers to publish")
        with self._lock:
            if self._stopped:
                raise errors.BadStateError("publisher: stopped")
            old = self._names.get(name)
            if old is None and len(self._names) >= MAX_NAMES:
                raise errors.BadArgError(f"publisher: more than {MAX_NAMES} names")
            smt = bool(serves_mount_table)
            if old is not None and old.serves_mount_table == smt:
                new = _Name(rooted, smt, replace=old.replace, replaced=old.replaced)
            else:  # new, or new flags: every table must take a REPLACE Mount again
                new = _Name(rooted, smt, replace=old is not None)
            self._names[name] = new
            self._ensure_thread_locked()
        if old is not None:
            gone = [s for s in old.servers if s not in rooted]
            if gone:
                self._unmount([(name, gone)])
        self._refresh([name])

    def remove_name(self, name: str) -> None:
        """Stop publishing ``name`` and unmount its servers (errors are logged). A refresh
        in flight unmounts again whatever it mounts after this."""
        name = names.clean(name)
        with self._lock:
            entry = self._names.pop(name, None)
        if entry is not None:
            self._unmount([(name, entry.servers)])

    def names(self) -> list[str]:
        """The names published now."""
        with self._lock:
            return list(self._names)

    def status(self) -> dict[str, NameStatus]:
        """Per name: its servers, the last successful mount and the last error (or, while
        the refresher could not start, that nothing refreshes it)."""
        with self._lock:
            idle = self._refresher_error
            return {
                n: NameStatus(
                    e.servers,
                    e.serves_mount_table,
                    e.last_mount,
                    "; ".join(m for m in (e.last_error, idle) if m) or None,
                )
                for n, e in self._names.items()
            }

    def refresh_now(self) -> None:
        """Mount every name once more now, in the calling thread (and start the refresher,
        if it could not start before)."""
        with self._lock:
            if self._names and not self._stopped:
                self._ensure_thread_locked()
        self._refresh(self.names())

    def stop(self, timeout: float = 5.0) -> None:
        """End the refresher, then unmount every name; about ``timeout`` seconds overall.

        The refresher's calls are cancelled and the thread joined first (for at most half
        of ``timeout``), so no refresh re-mounts a name after it was unmounted (a Mount that
        lands anyway is unmounted by the refresh that made it). The unmounts run side by
        side, one lane per mount table server, so a table that does not answer cannot use
        up the others' time. Idempotent; later :meth:`add_name` calls fail with
        BadStateError."""
        if not _is_number(timeout) or timeout != timeout:  # (NaN)
            raise errors.BadArgError(
                f"publisher: stop's timeout must be seconds, got {timeout!r:.40}"
            )
        deadline = time.monotonic() + max(0.0, min(timeout, LONGEST_WAIT))
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            published = list(self._names.items())
            self._names.clear()
            thread = self._thread
            self._wake.notify_all()
        self._life.cancel("publisher: stopped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout) / 2)
            if thread.is_alive():
                log.warning("publisher: the refresher is still in a call; unmounting anyway")
        self._unmount([(name, entry.servers) for name, entry in published], deadline=deadline)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _ensure_thread_locked(self) -> None:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="ipc-publisher", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # (the process is at its thread limit)
                # The name is still mounted now, by the caller; status() says nothing
                # refreshes, and add_name or refresh_now try again to start the refresher.
                log.warning("publisher: no thread to refresh the mounts (%s); not refreshed", exc)
                self._refresher_error = f"not refreshed: no thread for the refresher ({exc})"
                return
            self._thread = thread
            self._refresher_error = None

    def _run(self) -> None:
        next_at = time.monotonic() + self._period
        while True:
            with self._lock:
                while not self._stopped:
                    wait = next_at - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(min(wait, _MAX_WAIT))
                if self._stopped:
                    return
            next_at = time.monotonic() + self._period
            try:
                self._refresh(self.names())
            except Exception:  # pragma: no cover - _refresh records its own errors
                log.exception("publisher: a refresh failed")

    def _is_stopped(self) -> bool:
        with self._lock:
            return self._stopped

    def _published(self, name: str, server: str) -> bool:
        """Whether ``server`` is still to be mounted under ``name`` (not removed, replaced or
        stopped since the caller read it)."""
        return self._published_flags(name, server) is not None

    def _published_flags(self, name: str, server: str) -> int | None:
        """The flags ``server`` is to be mounted with under ``name`` now, or None when it is
        not to be mounted (removed, replaced or stopped)."""
        with self._lock:
            entry = self._names.get(name)
            if self._stopped or entry is None or server not in entry.servers:
                return None
            return MT if entry.serves_mount_table else 0

    def _ctx(self, deadline: float | None = None, *, stoppable: bool = True) -> CancelContext:
        """A context for one call: ``call_timeout`` from now, at most ``deadline``; cancelled
        by :meth:`stop` when ``stoppable`` (mounts; not the unmounts stop itself makes)."""
        end = time.monotonic() + self._call_timeout
        if deadline is not None:
            end = min(end, deadline)
        parent = self._life if stoppable else Context.background()
        return parent.with_deadline(end)

    def _mount_targets(self, ctx: Context, name: str) -> list[tuple[str, str]]:
        """``(mount table server, terminal name there)``, one per server of the mount table
        entry that holds ``name``."""
        entry = self._namespace.resolve_to_mount_table(ctx, name)
        if not entry.servers:
            raise errors.NoServersError(f"publisher: no mount table for {name!r}")
        return [
            (s.server, names.join_address_name(s.server, entry.name, terminal=True))
            for s in entry.servers
        ]

    def _refresh(self, wanted: Sequence[str]) -> None:
        """Mount each name of ``wanted`` once more and record the outcome in its status.

        The names are resolved one after another (each resolution with a ``call_timeout`` of
        its own). Then each mount table server met gets one lane, the lanes run side by side,
        and a lane works through every name held at its server in turn (:meth:`_table_lane`).
        So a server that does not answer (or answers slowly) delays only its own lane: the
        names are refreshed through the other servers as soon as those answer, and a refresh
        of many names costs such a server one ``call_timeout``, not one per name.
        """
        reads: list[_Read] = []
        # Per name, per server of its mount table entry (in the entry's order): the problems.
        problems: dict[str, list[list[str]]] = {}
        lanes: dict[str, list[_Job]] = {}  # per mount table server, in the order first met
        for name in wanted:
            with self._lock:
                entry = self._names.get(name)
                if entry is None or self._stopped:
                    continue
                read = _Read(
                    name,
                    entry.servers,
                    entry.serves_mount_table,
                    entry.replace,
                    entry.replaced,
                )
            reads.append(read)
            try:
                with self._ctx() as ctx:
                    targets = self._mount_targets(ctx, name)
            except errors.IPCError as exc:
                problems[name] = [[f"resolving {name!r}: {exc}"]]
                continue
            slots: list[list[str]] = [[] for _ in targets]
            problems[name] = slots
            for (table, target), slot in zip(targets, slots, strict=True):
                lanes.setdefault(table, []).append(_Job(read, target, slot))
        if lanes:
            tables = list(lanes)
            outcomes = _run_lanes(
                [functools.partial(self._table_lane, t, lanes[t]) for t in tables]
            )
            for table, outcome in zip(tables, outcomes, strict=True):
                if outcome is None:  # (the lane failed: a bug, logged by _run_lanes)
                    for job in lanes[table]:
                        job.problems.append(f"Mount at {job.target}: the lane failed")
        if self._is_stopped():
            return  # stop() unmounts; the lanes undid whatever landed behind it
        for read in reads:
            self._record(read, [p for slot in problems[read.name] for p in slot])

    def _record(self, read: _Read, problems: Sequence[str]) -> None:
        """Record the outcome of one name's refresh (unless the name changed meanwhile)."""
        error = "; ".join(problems) if problems else None
        if error is not None:
            log.warning(
                "publisher: publishing %r failed (retrying in %.1fs): %s",
                read.name,
                self._period,
                error,
            )
            self._namespace.flush_cache_entry(read.name)
        with self._lock:
            current = self._names.get(read.name)
            if current is not None and (current.servers, current.serves_mount_table) == (
                read.servers,
                read.serves_mount_table,
            ):
                current.last_error = error
                if error is None:
                    current.last_mount = time.monotonic()
                    if current.replaced is read.replaced:  # (the same flags all along)
                        current.replace = False

    def _table_lane(self, table: str, jobs: Sequence[_Job]) -> bool:
        """Mount the names of ``jobs`` at one mount table server, one name after another,
        each name's Mounts sharing one ``call_timeout`` (:meth:`_mount_lane`); problems go
        into each job's list. Once one name has used up a whole ``call_timeout`` (the server
        does not answer, or is too slow), the names after it are not asked about in this
        refresh: each would cost another ``call_timeout`` and hold up the refresh of every
        name through the other servers. They are retried at the next refresh."""
        spent: str | None = None  # the name on which the server used up a call_timeout
        for job in jobs:
            if spent is not None:
                job.problems.append(
                    f"Mount at {job.target}: not asked in this refresh ({table} took a "
                    f"whole call_timeout, {self._call_timeout:g}s, over {spent!r})"
                )
                continue
            read = job.read
            end = time.monotonic() + self._call_timeout
            job.problems.extend(
                self._mount_lane(
                    read.name,
                    table,
                    job.target,
                    read.servers,
                    MT if read.serves_mount_table else 0,
                    read.replace,
                    read.replaced,
                    end,
                )
            )
            if time.monotonic() >= end:
                spent = read.name
        return True

    def _mount_lane(
        self,
        name: str,
        table: str,
        target: str,
        servers: Sequence[str],
        flags: int,
        replace: bool,
        replaced: set[str],
        end: float,
    ) -> list[str]:
        """Mount each server of one name at one table (the server ``table``, at ``target``);
        the Mounts share one ``call_timeout``, ending at ``end``. A server no longer
        published when its Mount returns (removed, replaced, stopped meanwhile) is unmounted
        again, so a refresh never leaves behind what :meth:`remove_name` or :meth:`add_name`
        took away."""
        problems: list[str] = []
        for server in servers:
            if not self._published(name, server):
                continue
            if time.monotonic() >= end:
                problems.append(
                    f"Mount {server} at {target}: out of time ({self._call_timeout:g}s per table)"
                )
                continue
            # A change of flags replaces the name's servers at the first Mount a table takes
            # (it refuses a Mount whose flags differ from the live servers'); only once, so
            # later refreshes do not drop what other processes mounted under the name since.
            with self._lock:
                first = replace and table not in replaced
            try:
                with self._ctx(end) as ctx:
                    self._caller.call(
                        ctx,
                        target,
                        "Mount",
                        server,
                        self._ttl,
                        flags | (REPLACE if first else 0),
                        options=_OPTS,
                    )
            except errors.IPCError as exc:
                problems.append(f"Mount {server} at {target}: {exc}")
                continue
            if first:
                with self._lock:
                    replaced.add(table)
            if not self._published(name, server):
                log.debug("publisher: %s was unpublished during its Mount at %s", server, target)
                problems.extend(self._undo_late_mount(name, target, server))
        return problems

    def _undo_late_mount(self, name: str, target: str, server: str) -> list[str]:
        """Unmount ``server``, whose Mount at ``target`` landed after it was unpublished. If
        it is published again by the time the Unmount returns (an :meth:`add_name` whose own
        Mount may have landed before this Unmount), mount it again, and so on: at most
        :data:`_SETTLE_CALLS` calls, each with its own ``call_timeout``."""
        mounted = True
        for _ in range(_SETTLE_CALLS):
            flags = self._published_flags(name, server)
            if (flags is not None) == mounted:
                return []
            if flags is None:
                try:
                    with self._ctx(stoppable=False) as ctx:
                        self._caller.call(ctx, target, "Unmount", server, options=_OPTS)
                except errors.IPCError as exc:
                    log.warning("publisher: Unmount %s at %s: %s", server, target, exc)
                    return []
                mounted = False
            else:
                try:
                    with self._ctx() as ctx:
                        self._caller.call(
                            ctx, target, "Mount", server, self._ttl, flags, options=_OPTS
                        )
                except errors.IPCError as exc:
                    return [f"Mount {server} at {target}: {exc}"]
                mounted = True
        if (self._published_flags(name, server) is not None) != mounted:
            log.warning(
                "publisher: %s under %r kept being published and unpublished during its Mount "
                "at %s; it is %s there until the next refresh or its TTL",
                server,
                name,
                target,
                "mounted" if mounted else "not mounted",
            )
        return []

    def _unmount(
        self,
        pairs: Sequence[tuple[str, Sequence[str]]],
        *,
        deadline: float | None = None,
    ) -> None:
        """Unmount ``(name, servers)`` pairs: one lane per mount table server, side by side;
        in a lane, one name's calls share one ``call_timeout`` (never past ``deadline``).
        Errors are logged."""
        lanes: dict[str, list[list[tuple[str, str]]]] = {}  # per table, per name: calls
        for name, servers in pairs:
            try:
                with self._ctx(deadline, stoppable=False) as ctx:
                    targets = self._mount_targets(ctx, name)
            except errors.IPCError as exc:
                log.warning("publisher: cannot find the mount table of %r: %s", name, exc)
                continue
            for table, target in targets:
                lanes.setdefault(table, []).append([(target, s) for s in servers])

        def lane(groups: list[list[tuple[str, str]]]) -> bool:
            for calls in groups:  # (one name's unmounts at this table share one timeout)
                end = time.monotonic() + self._call_timeout
                if deadline is not None:
                    end = min(end, deadline)
                for target, server in calls:
                    if time.monotonic() >= end:
                        # The table did not answer within a whole call_timeout: asking it
                        # about the other names would cost each of them one more.
                        log.warning(
                            "publisher: out of time unmounting at %s; the other mounts "
                            "there expire with their TTL",
                            target,
                        )
                        return False
                    try:
                        with self._ctx(end, stoppable=False) as ctx:
                            self._caller.call(ctx, target, "Unmount", server, options=_OPTS)
                    except errors.IPCError as exc:
                        log.warning("publisher: Unmount %s at %s: %s", server, target, exc)
                if time.monotonic() >= end:
                    log.warning(
                        "publisher: %s took a whole call_timeout; the other mounts there "
                        "expire with their TTL",
                        calls[0][0] if calls else "a mount table",
                    )
                    return False
            return True

        _run_lanes([functools.partial(lane, calls) for calls in lanes.values()])


def _run_lanes(lanes: Sequence[Callable[[], bool]]) -> list[bool | None]:
    """Run each lane (the first in the calling thread, the others in threads of their own),
    wait for all, and return what each returned, in lane order (None for a lane that raised:
    a bug, logged). A lane whose thread cannot start (the process is at its thread limit)
    runs in the calling thread after the first. Every lane has a deadline, so the wait is
    bounded."""
    results: list[bool | None] = [None for _ in lanes]

    def run(i: int) -> None:
        try:
            results[i] = lanes[i]()
        except Exception:  # pragma: no cover - lanes catch the IPC errors they expect
            log.exception("publisher: a mount lane failed")

    threads: list[threading.Thread] = []
    inline: list[int] = []
    for i in range(1, len(lanes)):
        t = threading.Thread(target=run, args=(i,), name="ipc-publisher-lane", daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # can't start new thread
            log.debug("publisher: running a lane in the calling thread: %s", exc)
            inline.append(i)
        else:
            threads.append(t)
    if lanes:
        run(0)
    for i in inline:
        run(i)
    for t in threads:
        t.join()
    return results


_OPTS: tuple[CallOption, ...] = (NoRetry(),)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(value: object, what: str, most: float = math.inf) -> float:
    """A finite number of seconds > 0, as a float, at most ``most`` (so an int too large
    for a float is ``most`` when that is finite, and refused otherwise)."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and value > most:
            return most
        with contextlib.suppress(OverflowError):
            seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise errors.BadArgError(
            f"publisher: {what} must be a finite number > 0, got {value!r:.40}"
        )
    return min(seconds, most)


def _checked_name(name: object) -> str:
    """``name`` cleaned, if a mount table can hold it: non-empty, relative, and no element
    reserved (``__x``) or holding NUL (every mount table refuses such a Mount).

    Raises:
        BadArgError: otherwise.
    """
    if not isinstance(name, str) or not names.clean(name) or names.is_rooted(name):
        raise errors.BadArgError(f"publisher: {name!r:.200} must be a non-empty relative name")
    name = names.clean(name)
    for element in names.components(name):
        if names.is_reserved(element):
            raise errors.BadArgError(
                f"publisher: {name!r:.200}: the name element {element!r:.100} is reserved"
            )
        if "\x00" in element:
            raise errors.BadArgError(f"publisher: {name!r:.200}: a name may not hold NUL")
    return name


def _checked_server(server: object) -> str:
    """``server`` (an endpoint string or a rooted name) as the rooted name to mount, if a
    mount table takes it: its address an endpoint, at most ``MAX_SERVER_LEN`` characters.

    Raises:
        BadArgError: otherwise.
    """
    if not isinstance(server, str) or not server.strip("/"):
        raise errors.BadArgError(f"publisher: bad server {server!r:.200}")
    rooted = names.clean(server if names.is_rooted(server) else "/" + server)
    if len(rooted) > MAX_SERVER_LEN:
        raise errors.BadArgError(f"publisher: a server name longer than {MAX_SERVER_LEN}")
    try:
        endpoint_of(rooted)
    except errors.BadArgError as exc:
        raise errors.BadArgError(f"publisher: bad server: {exc.msg}") from None
    return rooted
