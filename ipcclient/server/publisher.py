"""Publishing a server's endpoints under names in mount tables, kept alive by refreshes.

Owns: :class:`Publisher` — the names a server publishes, the ``Mount`` / ``Unmount`` calls
that put its endpoints in the mount table holding each name (found with
``namespace.resolve_to_mount_table``), one daemon thread that refreshes every mount at
``ttl * refresh_fraction``, per-name status, and unmounting everything on :meth:`stop`.

Must not: raise from its thread (errors are logged, recorded in :meth:`Publisher.status` and
retried at the next refresh), make a call without a deadline, hold its lock across a call,
or import the client (it is given anything with ``call(ctx, name, method, *args, options=)``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.context import CancelContext, Context
from ipcclient.naming import names
from ipcclient.naming.namespace import Namespace
from ipcclient.options import CallOption, NoRetry
from ipcclient.server.mounttable import MT

__all__ = ["MountCaller", "NameStatus", "Publisher"]

log = logging.getLogger("ipcclient.publisher")

DEFAULT_CALL_TIMEOUT = 5.0
"""Seconds one Mount / Unmount (resolution included) may take."""
MAX_NAMES = 1024
"""Names one publisher keeps alive (each costs a Mount per server per refresh)."""


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


class Publisher:
    """Keeps ``servers`` mounted under names until removed or stopped.

    Args:
        caller: makes the RPCs (a :class:`~ipcclient.Client`).
        namespace: finds the mount table for each name (usually ``client.namespace``).
        ttl: the TTL asked for each mount, in seconds.
        refresh_fraction: refresh every ``ttl * refresh_fraction`` seconds (0 < f < 1).
        call_timeout: the deadline of each Mount / Unmount, resolution included.
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
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise errors.BadArgError(f"publisher: ttl must be > 0 seconds, got {ttl!r}")
        if not (isinstance(refresh_fraction, int | float) and 0 < refresh_fraction < 1):
            raise errors.BadArgError("publisher: refresh_fraction must be in (0, 1)")
        if not (math.isfinite(call_timeout) and call_timeout > 0):
            raise errors.BadArgError("publisher: call_timeout must be > 0 seconds")
        self._caller = caller
        self._namespace = namespace
        self._ttl = float(ttl)
        self._period = float(ttl) * float(refresh_fraction)
        self._call_timeout = float(call_timeout)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._names: dict[str, _Name] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------

    def add_name(
        self, name: str, servers: Sequence[str], *, serves_mount_table: bool = False
    ) -> None:
        """Publish ``servers`` (endpoint strings or rooted names) under ``name``.

        Mounts at once in the calling thread (each call bounded by ``call_timeout``); a
        failure is logged, shown by :meth:`status` and retried at the next refresh, never
        raised. Adding a name again replaces its servers (the old ones are unmounted).

        Raises:
            BadArgError: a bad name or server, or too many names.
            BadStateError: the publisher is stopped.
        """
        if not isinstance(name, str) or not names.clean(name) or names.is_rooted(name):
            raise errors.BadArgError(f"publisher: {name!r} must be a non-empty relative name")
        if isinstance(servers, str):
            raise errors.BadArgError("publisher: servers must be a sequence of str, not a str")
        rooted = tuple(_rooted(s) for s in servers)
        if not rooted:
            raise errors.BadArgError("publisher: no servers to publish")
        name = names.clean(name)
        with self._lock:
            if self._stopped:
                raise errors.BadStateError("publisher: stopped")
            old = self._names.get(name)
            if old is None and len(self._names) >= MAX_NAMES:
                raise errors.BadArgError(f"publisher: more than {MAX_NAMES} names")
            self._names[name] = _Name(rooted, bool(serves_mount_table))
            self._ensure_thread_locked()
        if old is not None:
            gone = [s for s in old.servers if s not in rooted]
            if gone:
                self._unmount(name, gone)
        self._refresh(name)

    def remove_name(self, name: str) -> None:
        """Stop publishing ``name`` and unmount its servers (errors are logged)."""
        name = names.clean(name)
        with self._lock:
            entry = self._names.pop(name, None)
        if entry is not None:
            self._unmount(name, entry.servers)

    def names(self) -> list[str]:
        """The names published now."""
        with self._lock:
            return list(self._names)

    def status(self) -> dict[str, NameStatus]:
        """Per name: its servers, the last successful mount and the last error."""
        with self._lock:
            return {
                n: NameStatus(e.servers, e.serves_mount_table, e.last_mount, e.last_error)
                for n, e in self._names.items()
            }

    def refresh_now(self) -> None:
        """Mount every name once more now, in the calling thread."""
        for name in self.names():
            self._refresh(name)

    def stop(self, timeout: float = 5.0) -> None:
        """End the refresher, then unmount every name; about ``timeout`` seconds overall.

        The thread is joined first (for at most half of ``timeout``: a refresh in flight
        is bounded by ``call_timeout`` and checks for stop before each Mount), so no
        refresh can re-mount a name after it was unmounted. Idempotent; later
        :meth:`add_name` calls fail with BadStateError."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            published = list(self._names.items())
            self._names.clear()
            thread = self._thread
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout) / 2)
            if thread.is_alive():
                log.warning("publisher: the refresher is still in a call; unmounting anyway")
        for name, entry in published:
            self._unmount(name, entry.servers, deadline=deadline)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _ensure_thread_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ipc-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic() + self._period
        while True:
            with self._lock:
                while not self._stopped:
                    wait = next_at - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
                if self._stopped:
                    return
            next_at = time.monotonic() + self._period
            for name in self.names():
                if self._is_stopped():
                    return
                try:
                    self._refresh(name)
                except Exception:  # pragma: no cover - _refresh records its own errors
                    log.exception("publisher: refreshing %r failed", name)

    def _is_stopped(self) -> bool:
        with self._lock:
            return self._stopped

    def _ctx(self, deadline: float | None = None) -> CancelContext:
        end = time.monotonic() + self._call_timeout
        if deadline is not None:
            end = min(end, deadline)
        return Context.background().with_deadline(end)

    def _mount_targets(self, ctx: Context, name: str) -> list[str]:
        """Terminal names, one per mount table server, at which ``name`` is mounted."""
        entry = self._namespace.resolve_to_mount_table(ctx, name)
        if not entry.servers:
            raise errors.NoServersError(f"publisher: no mount table for {name!r}")
        return [names.join_address_name(s.server, entry.name, terminal=True) for s in entry.servers]

    def _refresh(self, name: str) -> None:
        with self._lock:
            entry = self._names.get(name)
            if entry is None or self._stopped:
                return
            servers, smt = entry.servers, entry.serves_mount_table
        flags = MT if smt else 0
        error: str | None = None
        with self._ctx() as ctx:
            try:
                targets = self._mount_targets(ctx, name)
                for server in servers:
                    ok = False
                    for target in targets:
                        if self._is_stopped():
                            return  # stop() unmounts; do not re-mount behind it
                        try:
                            self._caller.call(
                                ctx, target, "Mount", server, self._ttl, flags, options=_OPTS
                            )
                            ok = True
                        except errors.IPCError as exc:
                            error = f"Mount {server} at {target}: {exc}"
                    if not ok:
                        break
            except errors.IPCError as exc:
                error = f"resolving {name!r}: {exc}"
        if error is not None:
            log.warning(
                "publisher: publishing %r failed (retrying in %.1fs): %s", name, self._period, error
            )
            self._namespace.flush_cache_entry(name)
        with self._lock:
            current = self._names.get(name)
            if current is not None and current.servers == servers:
                current.last_error = error
                if error is None:
                    current.last_mount = time.monotonic()

    def _unmount(self, name: str, servers: Sequence[str], *, deadline: float | None = None) -> None:
        with self._ctx(deadline) as ctx:
            try:
                targets = self._mount_targets(ctx, name)
            except errors.IPCError as exc:
                log.warning("publisher: cannot find the mount table of %r: %s", name, exc)
                return
            for server in servers:
                for target in targets:
                    if ctx.done():
                        log.warning("publisher: out of time unmounting %r", name)
                        return
                    try:
                        self._caller.call(ctx, target, "Unmount", server, options=_OPTS)
                    except errors.IPCError as exc:
                        log.warning("publisher: Unmount %s at %s: %s", server, target, exc)


_OPTS: tuple[CallOption, ...] = (NoRetry(),)


def _rooted(server: object) -> str:
    if not isinstance(server, str) or not server.strip("/"):
        raise errors.BadArgError(f"publisher: bad server {server!r}")
    return names.clean(server if names.is_rooted(server) else "/" + server)
