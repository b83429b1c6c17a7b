"""The client's VC cache: one VC per endpoint, shared by every thread.

Owns: the map from endpoint key to open VC and the dials in progress (lookups and inserts
under :attr:`VCCache.lock`, held for nothing else); dialing outside every lock, one dial per
endpoint however many callers wait for it (the caller that starts a dial to an IP address or
a Unix socket drives it itself at first, ``INLINE_DIAL``; any other dial has a thread);
racing the servers of a name (a staggered start, the first VC established carries the
call); evicting a VC that cannot open a flow (and dialing its endpoint again, once); dropping
VCs inherited across ``fork()``.

Must not: authorize a server for a call, write a request, or hold its lock across a dial,
a handshake or any other I/O.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ipcclient import errors
from ipcclient.context import CallbackHandle, Context
from ipcclient.naming.endpoint import Endpoint
from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.dial import Dialing
from ipcclient.transport.manager import StreamManager, split_host_port

log = logging.getLogger("ipcclient.client")

forks = 0
"""How many times this process is a fork child (a child's count differs from its parent's):
a cheaper test than ``os.getpid()``, a system call, on every call."""


_CACHES: weakref.WeakSet[VCCache] = weakref.WeakSet()
"""Every VC cache of the process, for :func:`_count_fork`."""


def _count_fork() -> None:
    """In a fork child: count the fork, and unlock every VC cache's lock in place. A thread
    of the parent may have held one at the fork; it does not exist in the child, so the
    child's first call would wait for it forever. (In place: closures hold the lock.)"""
    global forks
    forks += 1
    for cache in list(_CACHES):
        reinit = getattr(cache.lock, "_at_fork_reinit", None)
        if reinit is not None:  # pragma: no branch - CPython >= 3.9 has it
            reinit()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_count_fork)

DIAL_WAIT_SLICE = 0.05
"""How often a caller waiting for a dial looks for a newer dial's VC to the same endpoint.
Its context's end (cancel, deadline) and ``close()`` wake it at once."""

HAPPY_EYEBALLS_STAGGER = 0.25
"""When a name has several servers and the first has no VC yet, the next server's dial
starts this many seconds after the previous one's (or as soon as that fails), as RFC 8305
(Happy Eyeballs) does; the first VC established carries the call."""

INLINE_DIAL = 0.05
"""A caller that starts a dial to a numeric address or a Unix socket drives it itself for at
most this long (no thread start and no wake-up between the dial and its first call, the
usual dial to a nearby server being over well within it); what is left of the dial then
goes on in a thread of its own, and the caller waits for it as for any other dial."""

INLINE_DIAL_SLICE = 0.005
"""How often a caller driving a dial itself looks at its context and at ``close()``."""

CLOSE_CHECK = 0.05
"""How often a dial's own thread looks at ``close()``."""

STALE_DIAL = 1.0
"""A dial that has run this long is not joined by a new caller: it dials afresh (once per
``STALE_DIAL`` per endpoint), so a stalled handshake costs the calls already waiting for it,
not every call until the handshake timeout."""

STALE_ABANDONED_DIAL = STALE_DIAL / 4
"""The same for a dial a caller already gave up on (its deadline passed while it waited):
a server that comes back is dialed again soon. Never sooner: callers with short deadlines
against a stalled server would otherwise start a dial (a thread and a socket, until the
handshake timeout) each."""

Target = tuple[str, Endpoint, str, str]
"""One server of a name to try: (server name, endpoint, VC key, suffix)."""

FLOW_WAIT_SLICE = 1.0
"""How often a caller waiting for a flow on a VC at its flow limit (with no dial to wait
for) looks again by itself; a flow's end, the VC's end, its context's end and ``close()``
wake it at once."""

_NOT_YET = errors.ConnectionFailedError("client: no flow yet")
"""(A marker inside :meth:`VCCache.race`: a new dial replaced an evicted VC, or the VC is at
its flow limit; the server's turn comes again.)"""


class Dial:
    """One dial in progress that several callers may wait for."""

    __slots__ = ("abandoned", "conn", "done", "driver", "error", "listeners", "started")

    def __init__(self, driver: threading.Event | None = None) -> None:
        self.driver = driver
        """The wake-up of the caller that drives this dial itself at first (see
        ``INLINE_DIAL``); None for a dial that has a thread from the start."""
        self.done = threading.Event()
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.abandoned = False  # a caller's deadline passed while it waited for this dial
        self.listeners: list[threading.Event] = []  # set when the dial ends (races)

    def stale(self, now: float) -> bool:
        return now - self.started >= (STALE_ABANDONED_DIAL if self.abandoned else STALE_DIAL)


def _without_lookup(ep: Endpoint) -> bool:
    """Whether dialing ``ep`` needs no name lookup (which could block a caller past its
    context's end): a Unix socket, or an IP address."""
    if ep.protocol == "unix":
        return True
    try:
        host, _port = split_host_port(ep.address)
        ipaddress.ip_address(host)
    except (errors.IPCError, ValueError):
        return False
    return True


def _waker(wake: threading.Event) -> Callable[[errors.IPCError], None]:
    """A context callback that sets ``wake``."""

    def done(_err: errors.IPCError) -> None:
        wake.set()

    return done


def _waiting_for(plans: list[Target], pending: dict[int, Dial], full: dict[int, Connection]) -> str:
    """What a caller of :meth:`VCCache.race` was waiting for, for its timeout's message."""
    parts = []
    if pending:
        parts.append("dialing " + ", ".join(plans[i][1].address for i in pending))
    for i, conn in full.items():
        parts.append(
            f"waiting for one of the {conn.flow_limit} calls open on the VC to "
            f"{plans[i][1].address} to end (the server takes {conn.flow_limit} at once)"
        )
    return "; ".join(parts) or "waiting for a VC"


class VCCache:
    """The VCs of one client (see the module docstring).

    Args:
        manager: makes the VCs.
        dial_timeout: how long one dial may take, in seconds.
        stats: the client's counters (``dials``).
        authorizer: the handshake's check of the server for an endpoint.
        blessings_for_server: which of our blessings a server is shown.
    """

    def __init__(
        self,
        manager: StreamManager,
        dial_timeout: Callable[[], float],
        stats: collections.Counter[str],
        authorizer: Callable[[Endpoint], Any],
        blessings_for_server: Callable[[Any], Any],
    ) -> None:
        self.lock = threading.Lock()
        """Guards :attr:`vcs`, the dials and :attr:`closed` (and the client's set of calls);
        a leaf: nothing else is acquired while it is held."""
        self.vcs: dict[str, Connection] = {}
        self.retired: set[Connection] = set()
        """VCs replaced by a newer one (suspect) that still carry calls: out of :attr:`vcs`
        for new calls, kept here until they close so that :meth:`close_locked` closes them
        too."""
        self.closed = False
        self.abandoned: collections.deque[Flow] = collections.deque()
        """Flows of calls dropped without ``finish()``, to cancel (:meth:`reap_abandoned`) when
        the next call starts, or when callers wait for a free flow on a VC."""
        self._dialing: dict[str, Dial] = {}
        _CACHES.add(self)
        self._manager = manager
        self._dial_timeout = dial_timeout
        self._stats = stats
        self._authorizer = authorizer
        self._blessings_for_server = blessings_for_server

    def reap_abandoned(self) -> None:
        """Cancel the flows of calls dropped without ``finish()`` (see :attr:`abandoned`)."""
        while True:
            try:
                flow = self.abandoned.popleft()
            except IndexError:
                return
            flow.cancel(errors.CanceledError("client: the call was dropped without finish()"))

    def race(
        self, plans: list[Target], ctx: Context, tried: list[str]
    ) -> Iterator[tuple[Target, Flow | errors.IPCError]]:
        """New flows to the servers of ``plans``, best first, each as soon as its VC is
        there, with each server's failure in its turn.

        A cached open VC answers at once. Otherwise its dial starts (or an ongoing fresh one
        is joined); the next server's dial starts ``HAPPY_EYEBALLS_STAGGER`` later, or as
        soon as every dial started has failed (RFC 8305). Dials still running when the
        caller stops iterating go on and their VCs are cached. A cached VC that cannot open a
        flow is evicted and that server dialed again, once. A VC with as many flows open
        as its server takes at once (``Connection.flow_limit``) is waited on, as a dial is,
        until one of them ends. Each caller waits only as long as its own context allows
        (and no longer than the cache stays open).

        Raises:
            the context's error (TimeoutError, CanceledError) while waiting for a dial;
            BadStateError: the client closed.
        """
        wake = threading.Event()
        pending: dict[int, Dial] = {}
        full: dict[int, Connection] = {}  # VCs at their flow limit (``wake`` waits on them)
        redialed: set[int] = set()
        next_i = 0
        next_at = 0.0
        handle: CallbackHandle | None = None
        try:
            while True:
                wake.clear()
                for i, dial in list(pending.items()):
                    if not dial.done.is_set():
                        continue
                    del pending[i]
                    done = self._flow_on(dial, plans[i], redialed, i, pending, full, wake)
                    if done is not _NOT_YET:
                        yield from self._hand_over(plans[i], done, full, wake)
                if full and self.abandoned:  # (a dropped call may hold the flow waited for)
                    self.reap_abandoned()
                for i, conn in list(full.items()):
                    del full[i]
                    _server, ep, key, _suffix = plans[i]
                    try:
                        if self.vcs.get(key) is not conn:
                            # Replaced (a newer VC took over from a suspect one): wait there.
                            conn.stop_waiting(wake)
                            found: Connection | Dial | errors.IPCError
                            try:
                                found = self.vc_or_dial(ep, key, tried, wake)
                            except errors.IPCError as exc:
                                found = exc
                            if not isinstance(found, Connection):
                                if isinstance(found, Dial):
                                    pending[i] = found
                                else:
                                    yield plans[i], found
                                continue
                            conn = found
                        done = self._flow_on(conn, plans[i], redialed, i, pending, full, wake)
                    except BaseException:  # (out of ``full``: the finally below misses it)
                        conn.stop_waiting(wake)
                        raise
                    if done is not _NOT_YET:
                        yield from self._hand_over(plans[i], done, full, wake)
                if next_i >= len(plans) and not pending and not full:
                    return
                now = time.monotonic()
                if next_i < len(plans) and (not (pending or full) or now >= next_at):
                    i, next_i, next_at = next_i, next_i + 1, now + HAPPY_EYEBALLS_STAGGER
                    _server, ep, key, _suffix = plans[i]
                    try:
                        found = self.vc_or_dial(ep, key, tried, wake, inline=not pending)
                    except errors.IPCError as exc:
                        yield plans[i], exc
                        continue
                    if isinstance(found, Dial):
                        if found.driver is wake:  # ours to drive (then it has a thread)
                            self._drive(key, ep, found, ctx)
                        pending[i] = found
                        continue
                    flow = self._flow_on(found, plans[i], redialed, i, pending, full, wake)
                    if flow is not _NOT_YET:
                        yield from self._hand_over(plans[i], flow, full, wake)
                    continue
                timeout = DIAL_WAIT_SLICE if pending else FLOW_WAIT_SLICE
                if next_i < len(plans):
                    timeout = max(0.0, min(timeout, next_at - now))
                if handle is None:
                    # The context's end wakes this wait at once (cancel from another thread,
                    # the deadline from the context's timer thread); so does close().
                    handle = ctx.add_done_callback(_waker(wake))
                ended = ctx.done() or self.closed  # (before the wait: wake was cleared)
                if not ended and wake.wait(timeout) and not ctx.done() and not self.closed:
                    continue  # a dial ended (or the next one is due)
                err = ctx.err()
                if err is not None:
                    for dial in pending.values():
                        dial.abandoned = True
                    if isinstance(err, errors.TimeoutError):
                        what = _waiting_for(plans, pending, full)
                        err = errors.TimeoutError(f"client: the deadline passed while {what}")
                    log.debug("client: gave up waiting for a dial or a flow: %s", err)
                    raise err.with_context(request_sent=False, tried=tried)
                if self.closed:
                    raise errors.BadStateError("client: closed while dialing")
                for i in list(pending):  # a newer dial to the same endpoint may have won
                    newer = self.vcs.get(plans[i][2])
                    if newer is not None and not newer.closed and not newer.suspect:
                        del pending[i]
                        flow = self._flow_on(newer, plans[i], redialed, i, pending, full, wake)
                        if flow is not _NOT_YET:
                            yield from self._hand_over(plans[i], flow, full, wake)
        finally:
            if handle is not None:
                ctx.remove_done_callback(handle)
            for waited in full.values():
                waited.stop_waiting(wake)
            for dial in pending.values():
                with contextlib.suppress(ValueError):
                    dial.listeners.remove(wake)

    @staticmethod
    def _hand_over(
        plan: Target,
        got: Flow | errors.IPCError,
        full: dict[int, Connection],
        wake: threading.Event,
    ) -> Iterator[tuple[Target, Flow | errors.IPCError]]:
        """Yield ``got`` to :meth:`race`'s caller. A caller given a flow stops waiting on
        the other VCs it waits on (``full``) while it uses it, so that no free flow is kept
        there for it meanwhile; it queues on them again if it comes back for another."""
        if not full or isinstance(got, errors.IPCError):
            yield plan, got
            return
        waited = dict(full)
        full.clear()
        for conn in waited.values():
            conn.stop_waiting(wake)
        yield plan, got
        full.update(waited)

    def _flow_on(
        self,
        source: Connection | Dial,
        plan: Target,
        redialed: set[int],
        i: int,
        pending: dict[int, Dial],
        full: dict[int, Connection],
        wake: threading.Event,
    ) -> Flow | errors.IPCError:
        """A new flow on ``source`` (a VC, or a finished dial): the flow, or why not. A VC
        that cannot open one is evicted; the first time for server ``i``, a new dial is
        started and put in ``pending`` (``_NOT_YET`` is returned, and the caller hears of
        the new dial in its turn). A VC at its flow limit goes in ``full``, ``wake`` set
        when one of its flows ends (``_NOT_YET`` too)."""
        if isinstance(source, Dial):
            if source.error is not None:
                if isinstance(source.error, errors.IPCError):
                    return source.error.with_context()
                if isinstance(source.error, OSError):
                    return errors.ConnectionFailedError(
                        f"client: dialing {plan[1].address} failed: {source.error!r}"
                    )
                # Not the network, not the server: a fault on this side (logged as the dial
                # ended), which no retry or other server mends.
                return errors.InternalError(
                    f"client: dialing {plan[1].address} failed on this side, not the "
                    f"server's: {source.error!r}"
                )
            assert source.conn is not None
            conn = source.conn
        else:
            conn = source
        try:
            flow = conn.connect(wake)
            if flow is None:
                full[i] = conn
                return _NOT_YET
            return flow
        except errors.ConnectionFailedError as exc:
            self.evict(conn)
            if i in redialed:
                return exc
            redialed.add(i)
            try:
                got = self.vc_or_dial(plan[1], plan[2], [], wake)
            except errors.IPCError as again:
                return again
            if isinstance(got, Dial):
                pending[i] = got
                return _NOT_YET
            try:
                flow = got.connect(wake)
            except errors.ConnectionFailedError as again:
                self.evict(got)
                return again
            if flow is None:
                full[i] = got
                return _NOT_YET
            return flow

    def vc_or_dial(
        self,
        ep: Endpoint,
        key: str,
        tried: list[str],
        wake: threading.Event,
        *,
        inline: bool = False,
    ) -> Connection | Dial:
        """The cached open VC to ``ep``, else the dial to join (``wake`` is set when it
        ends): the ongoing one unless it is stale (see ``STALE_DIAL``), else a new one on
        a dial thread, or, with ``inline`` and an address that needs no name lookup, a new
        one whose ``driver`` is ``wake``: the caller then drives it (:meth:`_drive`). The
        dial outlives the callers that give up on it (bounded by the dial timeout) and its
        VC is cached for the next call."""
        with self.lock:
            if self.closed:
                raise errors.BadStateError("client: closed")
            conn = self.vcs.get(key)
            if conn is not None and not conn.closed:
                if not conn.suspect:
                    return conn
                # A call just timed out on it with the peer silent, and its probe runs:
                # dial another (which replaces it) rather than wait on it too.
            elif conn is not None:
                del self.vcs[key]
            dial = self._dialing.get(key)
            if dial is None or dial.stale(time.monotonic()):
                if dial is not None:
                    log.debug("client: a dial to %s is stalled; dialing again", ep.address)
                driver = wake if inline and _without_lookup(ep) else None
                dial = self._dialing[key] = Dial(driver)
                tried.append(f"dial {ep.protocol}:{ep.address}")
                needs_thread = driver is None
            else:
                needs_thread = False
            dial.listeners.append(wake)
            if dial.done.is_set():
                wake.set()
        if needs_thread:  # (started outside the lock, which is held for nothing else)
            try:
                self._dial_on_thread(key, ep, dial, None)
            except errors.ConnectionFailedError as exc:
                self._publish(key, dial, None, exc)  # (its waiters, us too, see why)
        return dial

    def _start_dial(self, ep: Endpoint) -> Dialing:
        return self._manager.start_dial(
            ep.protocol,
            ep.address,
            deadline=time.monotonic() + self._dial_timeout(),
            authorize_server=self._authorizer(ep),
            blessings_for_server=self._blessings_for_server,
        )

    def _dial_on_thread(self, key: str, ep: Endpoint, dial: Dial, dialing: Dialing | None) -> None:
        """Give ``dial`` a thread of its own (:meth:`_finish_dial`).

        Raises:
            ConnectionFailedError: no thread could be started (the process is at its limit).
        """
        try:
            threading.Thread(
                target=self._finish_dial,
                args=(key, ep, dial, dialing),
                name=f"ipc-dial-{ep.address}",
                daemon=True,
            ).start()
        except RuntimeError as exc:
            raise errors.ConnectionFailedError(
                f"client: no thread to dial {ep.protocol}:{ep.address}: {exc}"
            ) from None

    def _finish_dial(self, key: str, ep: Endpoint, dial: Dial, dialing: Dialing | None) -> None:
        """A dial's thread: dial outside every lock (starting the dial, unless a caller
        handed over one it started), drive it to its end, publish the result to the
        waiters; then be the new VC's reader thread (so no second thread starts before the
        first call)."""
        conn: Connection | None = None
        error: BaseException | None = None
        try:
            if dialing is None:
                dialing = self._start_dial(ep)
            # In slices, looking at close() after each: a closed client leaves no dial
            # thread (nor its socket) behind for the rest of the dial timeout.
            while not dialing.step(min(time.monotonic() + CLOSE_CHECK, dialing.deadline)):
                if self.closed:
                    dialing.close()
                    raise errors.BadStateError("client: closed while dialing")
            conn = self._manager.finish_dial(dialing, on_close=self._on_vc_closed, start=False)
            self._stats["dials"] += 1
        except BaseException as exc:
            error = exc
        reader = self._publish(key, dial, conn, error)
        if reader is not None:
            reader.run_reader()  # until the VC ends

    def _drive(self, key: str, ep: Endpoint, dial: Dial, ctx: Context) -> None:
        """The caller that started ``dial`` drives it itself (see ``INLINE_DIAL``), looking
        at its context and at close() every ``INLINE_DIAL_SLICE``: until the dial ends
        (its result published; a new VC gets its reader thread), or until ``INLINE_DIAL``
        has passed or the context is done: the rest of the dial then goes on in a thread of
        its own. A client closed meanwhile ends the dial. An interrupt (Ctrl-C) is raised
        again after the dial is failed for everyone waiting for it (or, once its VC is
        published, after that VC is closed); no other error escapes."""
        dial.driver = None  # (driven once, even if this caller meets it again)
        dialing: Dialing | None = None
        conn: Connection | None = None
        published = handed_over = False
        try:
            dialing = self._start_dial(ep)
            end = time.monotonic() + INLINE_DIAL
            while True:
                now = time.monotonic()
                if now >= end or ctx.done() or self.closed:
                    break
                if dialing.step(min(now + INLINE_DIAL_SLICE, end)):
                    conn = self._manager.finish_dial(
                        dialing, on_close=self._on_vc_closed, start=False
                    )
                    self._stats["dials"] += 1
                    break
            if conn is None:
                if self.closed:
                    raise errors.BadStateError("client: closed while dialing")
                log.debug("client: the dial to %s goes on in a thread of its own", ep.address)
                self._dial_on_thread(key, ep, dial, dialing)
                handed_over = True
                return
            published = True
            reader = self._publish(key, dial, conn, None)
            if reader is not None:
                reader.start()  # its reader thread
        except BaseException as exc:
            if handed_over:  # (the thread owns the dial now)
                raise
            if conn is not None:
                conn.close()  # (published or not: it has no reader thread)
            elif dialing is not None:
                dialing.close()
            if not published:
                error: BaseException = exc
                if not isinstance(exc, Exception):
                    error = errors.ConnectionFailedError("client: the dial was interrupted")
                self._publish(key, dial, None, error)
            if not isinstance(exc, Exception):
                raise

    def _publish(
        self, key: str, dial: Dial, conn: Connection | None, error: BaseException | None
    ) -> Connection | None:
        """A dial ended with ``conn`` (or ``error``): cache the VC, wake the dial's waiters.
        Returns the VC that needs a reader thread (None when there is none, or when it was
        not needed: a newer VC to the endpoint, or the client closed)."""
        if error is not None:
            dial.error = error
            if not isinstance(error, (errors.IPCError, OSError)):
                log.error("client: dialing for %s failed on this side", key, exc_info=error)
        surplus: Connection | None = None
        retired: Connection | None = None
        with self.lock:
            if self._dialing.get(key) is dial:
                del self._dialing[key]
            if conn is not None:
                if self.closed:
                    dial.error = errors.BadStateError("client: closed")
                    surplus = conn
                else:
                    cached = self.vcs.get(key)
                    if cached is None or cached.closed or cached.suspect:
                        self.vcs[key] = conn
                        dial.conn = conn
                        if cached is not None and not cached.closed:
                            retired = cached
                            self.retired.add(cached)
                    else:
                        # A newer dial to the same endpoint finished first: its VC serves
                        # this dial's callers too; one VC per endpoint stays.
                        dial.conn = cached
                        surplus = conn
            listeners = list(dial.listeners)
        if self.closed:  # (abandon() takes no lock: it may have run after the check above)
            for late in (conn, retired):
                if late is not None:
                    late.drop()
        if surplus is not None:
            surplus.close()
        if retired is not None:
            log.debug("client: VC %s replaced by a new one; retiring it", retired.name)
            retired.retire()
        dial.done.set()
        for wake in listeners:
            wake.set()
        if conn is not None and conn is not surplus:
            return conn
        return None

    def evict(self, conn: Connection) -> None:
        """Drop ``conn`` from the cache (it cannot open a flow). A broken VC is closed; one
        that is still up (it ran out of flow ids, say) is retired: its calls in flight end
        as they would have, and it closes after the last."""
        log.debug("client: evicting the VC %s (it cannot open a flow)", conn.name)
        if conn.closed:
            self._forget(conn)
            conn.close()
            return
        with self.lock:
            for key, c in list(self.vcs.items()):
                if c is conn:
                    del self.vcs[key]
            shut = self.closed  # (the client closed meanwhile: nobody would close it)
            if not shut and not conn.closed:
                # (Not once it closed: its on_close, which forgets it, may have run since the
                # check above; ``closed`` is true before on_close runs.)
                self.retired.add(conn)
        if shut:
            conn.close()
        else:
            conn.retire()
            if self.closed:  # (abandon() takes no lock: it may have run after the check)
                conn.drop()

    def _on_vc_closed(self, conn: Connection, err: errors.IPCError) -> None:
        log.debug("client: VC %s closed: %s", conn.name, err)
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        with self.lock:
            for key, c in list(self.vcs.items()):
                if c is conn:
                    del self.vcs[key]
            self.retired.discard(conn)

    def close_locked(self) -> list[Connection]:
        """Mark the cache closed and empty it (the caller holds :attr:`lock`); returns the
        VCs, for the caller to close outside the lock."""
        self.closed = True
        vcs = [*self.vcs.values(), *self.retired]
        self.vcs.clear()
        self.retired.clear()
        for dial in self._dialing.values():  # (its callers see closed at once)
            for wake in dial.listeners:
                wake.set()
        return vcs

    def abandon(self) -> None:
        """(A finalizer: the client was collected without ``close()``.) Have every VC end at
        its reader's next check (``Connection.drop``); dials still going on see the cache
        closed when they end. Takes no lock and touches no socket: it may run on any
        thread, in the middle of anything (the copies of the map are made by single
        operations the interpreter does not interrupt)."""
        self.closed = True
        for conn in [*list(self.vcs.values()), *list(self.retired)]:
            conn.drop()

    def drop_after_fork_locked(self) -> list[Connection]:
        """In a fork child (the caller holds :attr:`lock`): forget every VC and dial; the
        caller abandons the returned VCs (see ``Connection.abandon_after_fork``)."""
        inherited = [*self.vcs.values(), *self.retired]
        self.vcs.clear()
        self.retired.clear()
        self._dialing.clear()
        return inherited

    def open_count(self) -> int:
        """Open VCs in the cache."""
        with self.lock:
            return sum(1 for c in self.vcs.values() if not c.closed)
