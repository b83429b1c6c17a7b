"""The public :class:`Client`: names in, calls out.

Owns: ``start_call`` with the retry loop before the request is sent, each try (resolve; for
each server in order: split address and suffix, check the endpoint's versions, get a flow
from the VC cache, authorize the server, grant, prepare discharges — the call's
:class:`~ipcclient.client.plan.CallPlan` — then write the request), ``call`` (start + finish,
retrying only errors whose action is RETRY_BACKOFF; the usual unary call tries the fast path
first, ``fast.fast_call``, which reuses a plan the general path made), fork safety and
``close`` (which also ends the calls still starting, waking those waiting between two tries).

Must not: parse bytes, frames or headers itself (the layers below do), hold its lock across a
dial, a handshake, a discharge fetch or any other I/O, or decide a retry from message text.

Lock order: the VC cache's lock (``Client._lock``) is a leaf: nothing else is acquired while
it is held.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from ipcclient import errors, retry, vtrace
from ipcclient.call import Call
from ipcclient.client import fast, resolution, retries, security, vcs
from ipcclient.client import plan as _plan
from ipcclient.client.plan import CallPlan, Route, keep_plan
from ipcclient.client.request import (
    check_call,
    check_names,
    check_options,
    encode_request_header,
    write_request,
)
from ipcclient.client.resolution import NamespaceCaller
from ipcclient.client.vcs import Target
from ipcclient.context import SYSTEM_CLOCK, CancelContext, Context
from ipcclient.naming.namespace import (
    Namespace,
    terminal_servers,
)
from ipcclient.options import (
    CallOption,
    ClientOptions,
    NoRetry,
    find_one,
)
from ipcclient.security.blessings import Blessings
from ipcclient.security.caveats import ThirdPartyCaveat
from ipcclient.security.discharges import Discharge, DischargeCache, DischargeImpetus
from ipcclient.security.principal import Principal
from ipcclient.stream import MessageStream
from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.manager import StreamManager

__all__ = ["FAST_PATH", "MAX_RESENDS", "Client"]

log = logging.getLogger("ipcclient.client")

FAST_PATH = True
"""Whether :meth:`Client.call` may take the fast path for the usual unary call. False makes
every call take the general path (the differential tests compare the two; the outcome of a
call must not depend on it)."""

_CALL_FINISHED = errors.CanceledError("call finished")
"""What a call's own context ends with once the call is over (a prototype: see
:meth:`CancelContext.cancel_with`)."""

_T = TypeVar("_T")

MAX_RESENDS = 3
"""How many times :meth:`Client.call` sends a request again on a new VC when the server said
(GOAWAY's last flow id) it never took it."""


class Client:
    """A synchronous RPC client, safe to share across threads (see the module docstring).

    Args:
        principal: who this client is. Default: a fresh principal blessed by itself as
            ``client`` (it then trusts no server until roots are added to its principal).
        namespace: how names are resolved. Default: a namespace with ``roots``.
        roots: mount table names for the default namespace (e.g. ``["/127.0.0.1:8101"]``).
        options: client-wide knobs (:class:`~ipcclient.options.ClientOptions`).
        stream_manager: how VCs are made (default: one over this principal).

    Raises:
        BadArgError: ``principal`` is not a :class:`~ipcclient.security.Principal`, or
            ``namespace``, ``options`` or ``stream_manager`` is not of its type (checked
            here, not at the first call), or a root is malformed.
    """

    def __init__(
        self,
        principal: Principal | None = None,
        *,
        namespace: Namespace | None = None,
        roots: Sequence[str] = (),
        options: ClientOptions | None = None,
        stream_manager: StreamManager | None = None,
    ) -> None:
        # (Checked here: a wrong type would otherwise fail only in every call, with a bare
        # exception inside the dial.)
        for what, value, kind in (
            ("principal", principal, Principal),
            ("namespace", namespace, Namespace),
            ("options", options, ClientOptions),
            ("stream_manager", stream_manager, StreamManager),
        ):
            if value is not None and not isinstance(value, kind):
                raise errors.BadArgError(
                    f"client: {what} must be a {kind.__name__} or None, not {type(value).__name__}"
                )
        if principal is None:
            principal = Principal.generate()
            principal.store.default = principal.bless_self("client")
        self.principal = principal
        self.options = options or ClientOptions()
        self._manager = stream_manager or StreamManager(principal, self.options.transport)
        self.namespace = namespace if namespace is not None else Namespace(roots)
        caller = self.namespace.caller
        if caller is None:
            self.namespace.set_caller(NamespaceCaller(self))
        elif isinstance(caller, NamespaceCaller):  # (another client's namespace: share it)
            caller.add(self)
        self.discharge_cache = DischargeCache()
        self.stats = collections.Counter[str]()
        self._cache = vcs.VCCache(
            self._manager,
            _dial_timeout(weakref.ref(self)),  # (weakly: the VCs' threads hold the cache)
            self.stats,
            security.vc_authorizer(principal),
            security.blessings_for_server(principal),
        )
        # A client collected without close() has its VCs end (their reader threads would
        # keep them, a socket and a thread each, for as long as their servers live).
        weakref.finalize(self, _dropped, self._cache).atexit = False
        self._lock = self._cache.lock  # (also guards _calls)
        self._vcs = self._cache.vcs  # (the same map: read without the lock on the fast path)
        self._calls: weakref.WeakSet[Call] = weakref.WeakSet()
        self._abandoned = self._cache.abandoned  # (the same deque: see VCCache.reap_abandoned)
        self._closed = False
        self._pid = os.getpid()
        self._forks = vcs.forks  # the process's fork count when _pid was taken
        self._routes: dict[str, Route | None] = {}
        self._routes_namespace: Namespace | None = None  # the namespace routes were made for
        # The backoff waits of calls between two tries (close() wakes them; see _backoff).
        self._backoffs: set[CancelContext] = set()

    @classmethod
    def from_env(
        cls,
        credentials: str | os.PathLike[str] | None = None,
        *,
        roots: Sequence[str] | None = None,
        passphrase: bytes | None = None,
        options: ClientOptions | None = None,
    ) -> Client:
        """A client configured as the ``ipc`` command is: the principal in ``credentials``
        (default: the directory ``$IPCCLIENT_CREDENTIALS``; neither: a fresh principal, as
        ``Client()``) and the root mount tables ``roots`` (default: ``$IPCCLIENT_NAMESPACE``,
        comma-separated). Explicit arguments win over the environment.

        Raises:
            NoExistError, NoAccessError, BadArgError, NotTrustedError: the principal cannot
                be loaded (see :meth:`Principal.load`), or a root is malformed.
            BadArgError: ``credentials`` is not a path (str or os.PathLike), or an
                argument is not of its type (see :class:`Client`).
        """
        from ipcclient import env

        given: object = credentials
        if given is not None and not isinstance(given, str | os.PathLike):
            raise errors.BadArgError(
                "client: credentials must be a principal directory (str or os.PathLike), "
                f"not {type(given).__name__}"
            )
        principal = env.load_principal(credentials, passphrase=passphrase)
        return cls(principal, roots=env.roots(roots), options=options)

    # --- public API ---------------------------------------------------------------------
    def start_call(
        self,
        ctx: Context,
        name: str,
        method: str,
        args: Sequence[Any] = (),
        *options: CallOption,
    ) -> Call:
        """Start ``method(*args)`` on the object ``name``; returns the call in flight.

        The call's deadline is the context's, or ``options.default_call_timeout`` from now
        when the context has none. Before a request byte is written, failures whose retry
        action allows it (resolution, connection) are retried with randomized exponential
        backoff until the deadline (``RetryTimeout`` narrows it, ``NoRetry`` ends it).

        Raises:
            BadArgError: a bad context, name or option, or a method name or name suffix
                too long for a request header (nothing is sent).
            BadStateError: the client is closed, or was closed while the call was starting
                (resolving, dialing, waiting between two tries): never retried.
            NoServersError, NotTrustedError, TimeoutError, CanceledError, ...: the call
                could not start; ``err.request_sent`` is False and ``err.tried`` says what
                was tried.
        """
        return self._start(ctx, name, method, args, options, close_send=False)

    def call(
        self,
        ctx: Context,
        name: str,
        method: str,
        *args: Any,
        options: Sequence[CallOption] = (),
        **keywords: NoReturn,
    ) -> tuple[Any, ...]:
        """``start_call`` + ``finish``: the results as a tuple.

        A server error whose action is RETRY_BACKOFF is retried (the request may have run:
        servers mark only errors that are safe to retry so); nothing else is retried after
        the request was sent. The method's arguments are positional only: a keyword
        argument is a BadArgError (and a type error for mypy).
        """
        if not isinstance(ctx, Context):
            raise _no_context(ctx, "call")
        if keywords:
            raise _keywords(keywords, method)
        options = check_options(options)
        call_ctx, owned = self._call_context(ctx)
        start = call_ctx.clock.monotonic()  # the call's one retry window starts here
        try:

            def attempt(_n: int, sent: int = 0) -> tuple[Any, ...]:
                """The call, sent again (up to MAX_RESENDS in all, counting ``sent``, the
                resends the fast path already made) while the server never takes it."""
                for resend in range(sent, MAX_RESENDS + 1):
                    call = self._start(
                        call_ctx, name, method, args, options, close_send=True, start=start
                    )
                    try:
                        return call.finish()
                    except errors.NotProcessedError as exc:
                        self._note_unprocessed(exc, resend, call_ctx)
                raise AssertionError("unreachable")  # pragma: no cover

            def fast_first(n: int) -> tuple[Any, ...]:
                try:
                    results = fast.fast_call(self, call_ctx, name, method, args)
                except errors.NotProcessedError as exc:
                    self._note_unprocessed(exc, 0, call_ctx)
                    return attempt(n, 1)
                return attempt(n) if results is None else results  # (None: not taken)

            # The usual call may take the fast path (see fast.fast_call).
            first = attempt if options or not FAST_PATH else fast_first

            no_retry = bool(options) and find_one(options, NoRetry) is not None
            return retries.with_retries(
                self.options,
                attempt,
                call_ctx,
                options,
                retry.RetryPhase.AFTER_SEND,
                no_retry,
                start,
                first=first,
                what=("call", name, method),
                sleep=self._backoff,
            )
        finally:
            if owned:
                call_ctx.cancel_with(_CALL_FINISHED)  # type: ignore[attr-defined]

    def call_one(
        self,
        ctx: Context,
        name: str,
        method: str,
        *args: Any,
        options: Sequence[CallOption] = (),
        **keywords: NoReturn,
    ) -> Any:
        """:meth:`call` for a method with at most one result: the result itself, or None
        when the method returned none (a server method that returns ``None``).

        Raises:
            BadStateError: the method returned several results (it ran; use :meth:`call`).
            IPCError: as :meth:`call`.
        """
        if keywords:
            raise _keywords(keywords, method)
        results = self.call(ctx, name, method, *args, options=options)
        if len(results) > 1:
            raise errors.BadStateError(
                f"client: {name}.{method} returned {len(results)} results; use call()",
                request_sent=True,
            )
        return results[0] if results else None

    def _note_unprocessed(self, exc: errors.NotProcessedError, resend: int, ctx: Context) -> None:
        """A request the server never took (see NotProcessedError): return to send it again
        on a new VC, or raise ``exc`` when the resends are used up or the context is done."""
        if resend >= MAX_RESENDS or ctx.done():
            raise exc
        self.stats["resent_unprocessed"] += 1
        log.debug("client: the server never took the request; sending it again: %s", exc)

    def close(self) -> None:
        """Close the client: new calls fail at once with BadStateError, and so do calls still
        starting, whatever they are doing (resolving, dialing, waiting between two tries):
        they end at once and are not retried; calls in flight end with
        CanceledError("client closed"); every VC closes; no thread is left. Idempotent. In a
        child after fork(), the VCs it inherited are dropped without touching the parent's
        connections (as its first call would), then the child's own close."""
        self._after_fork_check()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            open_vcs = self._cache.close_locked()
            calls = list(self._calls)
            backoffs = list(self._backoffs)
            self._backoffs.clear()
        for waiting in backoffs:  # (each then raises the closed client's error: see _backoff)
            waiting.cancel("client: closed")
        if calls:
            closing = errors.CanceledError("client: closed while the call was in flight")
            for call in calls:
                call.cancel(closing)
        self._reap_abandoned()
        for conn in open_vcs:
            conn.close(errors.CanceledError("client: closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def vc_count(self) -> int:
        """Open VCs in the cache."""
        return self._cache.open_count()

    # --- starting a call ----------------------------------------------------------------
    def _call_context(self, ctx: Context) -> tuple[Context, bool]:
        if ctx.deadline is None and self.options.default_call_timeout is not None:
            return ctx.with_timeout(self.options.default_call_timeout), True
        return ctx, False

    def _start(
        self,
        ctx: Context,
        name: str,
        method: str,
        args: Sequence[Any],
        options: Sequence[CallOption],
        *,
        close_send: bool,
        start: float | None = None,
    ) -> Call:
        if not isinstance(ctx, Context):
            raise _no_context(ctx, "start_call")
        no_retry = check_call(name, method, args, options)
        self._check_open()
        self._after_fork_check()
        if self._abandoned:
            self._reap_abandoned()
        call_ctx, owned = self._call_context(ctx)
        if start is None:
            start = call_ctx.clock.monotonic()  # the call's one retry window starts here
        span = vtrace.new_span(call_ctx, f"<client>{name!r}.{method}")
        span_ctx = _SpanContext(call_ctx, span)
        tried: list[str] = []

        def attempt(n: int) -> Call:
            if n > 1:
                span.annotate(f"retry {n}")
            try:
                return self._try_call(
                    span_ctx, call_ctx, span, name, method, args, options, close_send, tried, owned
                )
            except errors.IPCError as exc:
                if self._closed and exc.request_sent is not True:
                    # Closed while the call was starting (whatever failed, a nested resolve
                    # or a dial, failed because of it): end now, never retried.
                    raise self._closed_error(tried) from exc
                raise

        try:
            return retries.with_retries(
                self.options,
                attempt,
                call_ctx,
                options,
                retry.RetryPhase.BEFORE_SEND,
                no_retry,
                start,
                what=("starting", name, method),
                sleep=self._backoff,
            )
        except errors.IPCError as exc:
            span.finish()
            if owned:
                call_ctx.cancel("call failed to start")  # type: ignore[attr-defined]
            err = exc if exc.request_sent is not None else exc.with_context(request_sent=False)
            raise err from exc.__cause__
        except BaseException:
            span.finish()
            if owned:
                call_ctx.cancel("call interrupted")  # type: ignore[attr-defined]
            raise

    def _try_call(
        self,
        span_ctx: _SpanContext,
        call_ctx: Context,
        span: vtrace.Span,
        name: str,
        method: str,
        args: Sequence[Any],
        options: Sequence[CallOption],
        close_send: bool,
        tried: list[str],
        owned_ctx: bool,
    ) -> Call:
        servers: list[str] | tuple[str, ...] | None = self._servers_without_resolving(name)
        if servers is not None:
            tried.append(f"resolved {name!r} to {len(servers)} server(s)")
        else:
            servers = resolution.resolve(
                self.namespace,
                span_ctx.get(),
                name,
                tried,
                lambda: retries.waits_for_ready(self.options, options),
            ).names()
        if len(servers) > 1:
            servers = sorted(servers, key=_plan.server_rank)
        last: errors.IPCError | None = None
        failures: list[errors.IPCError] = []
        deadline = call_ctx.deadline
        if deadline is not None and call_ctx._clock is not SYSTEM_CLOCK:
            deadline = call_ctx.monotonic_deadline()  # (the transport waits on time.monotonic)
        versions = self._manager.options.versions
        dial_plan = _plan.dial_plan_cached if type(versions) is tuple else _plan.dial_plan
        targets: list[Target] = []
        for server in servers:
            address, suffix = _plan.split_server(server)
            if not address:
                last = errors.BadArgError(f"client: cannot connect to a non-rooted name {server!r}")
                failures.append(last)
                continue
            try:
                ep, ep_key = dial_plan(address, versions)
            except errors.IPCError as exc:
                tried.append(f"{server}: {exc.id}")
                last = exc
                failures.append(exc)
                continue
            if options:
                ep, ep_key = security.endpoint_to_dial(ep, ep_key, options)
            targets.append((server, ep, ep_key, suffix))
        if len(targets) > 1:
            # Servers with a healthy cached VC first (stable: protocol order otherwise).
            open_vcs = self._vcs
            # (One lookup: a VC that closes meanwhile leaves the cache between two.)
            targets.sort(key=lambda t: _unusable(open_vcs.get(t[2])))
        for (server, ep, key, suffix), got in self._cache.race(targets, call_ctx, tried):
            ctx_err = call_ctx.err()
            if ctx_err is not None:  # cancelled or past the deadline: say so, send nothing
                if isinstance(got, Flow):
                    got.cancel()
                raise ctx_err.with_context(request_sent=False, tried=tried) from None
            if isinstance(got, errors.IPCError):
                if self._closed or isinstance(got, errors.CanceledError):
                    raise got.with_context(request_sent=False, tried=tried) from None
                tried.append(f"{server}: {got.id}")
                last = got
                failures.append(got)
                continue
            flow = got
            granting = False
            try:
                flow.set_deadline(deadline)
                conn = flow.connection
                auth = security.authorize_server(self.principal, conn, ep, method, suffix, options)
                granting = True
                granted = security.grant(conn, options)
                granting = False
                discharges, fetch_errors = security.prepare_discharges(
                    self.discharge_cache,
                    self._fetch_discharges,
                    span_ctx.get,
                    conn.local_blessings,
                    auth.server_names,
                    method,
                    args,
                    options,
                )
            except errors.IPCError as exc:
                flow.cancel()  # never opened on the wire: nothing at all is sent
                if granting and isinstance(exc, errors.BadArgError):
                    # The caller's Granter returned what cannot be granted: the caller's bug,
                    # the same with every server. Say so, instead of trying the others.
                    raise exc.with_context(request_sent=False, tried=tried) from None
                tried.append(f"{server}: {exc.id}")
                last = exc
                failures.append(exc)
                continue
            except BaseException:
                flow.cancel()  # (an interrupt, or a bug: the flow is not left behind)
                raise
            plan = CallPlan(
                Route(ep, key, suffix), auth.server_names, auth.valid_until, discharges, granted
            )
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                check_names(suffix, method)
                head = encode_request_header(
                    suffix,
                    method,
                    len(args),
                    remaining,
                    span.trace_id,
                    span.span_id,
                    span.flags,
                    plan.granted,
                    plan.discharges,
                )
            except errors.BadArgError as exc:
                flow.cancel(exc)  # never opened on the wire: nothing at all is sent
                raise
            if not options and not discharges and not fetch_errors:
                keep_plan(conn, method, plan)  # (for the fast path: see fast.fast_call)
            stream = MessageStream(flow)
            trace_id = span.trace_id
            collecting = span.collecting

            def on_trace(
                records: tuple[Any, ...], _t: bytes = trace_id, _c: bool = collecting
            ) -> None:
                if _c:
                    vtrace.STORE.merge(_t, records)

            started: list[bool] = []  # (the request is out: the call is the caller's)
            call = Call(
                call_ctx,
                stream,
                name=name,
                method=method,
                server=server,
                discharges=discharges,
                discharge_cache=self.discharge_cache,
                fetch_problems=fetch_errors,
                on_done=self._make_on_done(call_ctx if owned_ctx else None, span, started),
                on_abandon=self._abandoned.append,
                on_trace=on_trace,
                owner=self,
            )
            with self._lock:
                self._calls.add(call)
            unsent = write_request(
                flow,
                head,
                args,
                close_send,
                deadline,
                call.cancel,
                tried,
            )
            if unsent is not None:  # nothing reached the wire: the usual retry rules apply
                raise unsent.with_context(request_sent=False, tried=tried) from None
            if close_send:  # (Client.call: it reads the results alone)
                call._send_closed = True
                call._unary = True
            started.append(True)
            if owned_ctx and call.ended:  # (it ended while its request was written)
                call_ctx.cancel_with(_CALL_FINISHED)  # type: ignore[attr-defined]
            self.stats["calls_started"] += 1
            return call
        # Every server failed (or there were none): the cached resolution may be stale.
        self.namespace.flush_cache_entry(name)
        raise resolution.classify(name, servers, failures, last, tried)

    def _servers_without_resolving(self, name: str) -> tuple[str, ...] | None:
        """The servers of ``name`` when the namespace would answer at once without a call (a
        rooted terminal name; pure, so cached), else None: ask the namespace."""
        if type(self.namespace).resolve is not Namespace.resolve:
            return None
        try:
            return terminal_servers(name)
        except errors.IPCError:
            return None  # let the namespace raise it, as for any name

    def _after_fork_check(self) -> None:
        """In a child after fork(): drop inherited VCs without touching the parent's
        connections (close our copies of the descriptors only) and start afresh."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            inherited = self._cache.drop_after_fork_locked()
            self._calls = weakref.WeakSet()
            self._abandoned.clear()
            self._pid = pid
            self._forks = vcs.forks
        for conn in inherited:
            conn.abandon_after_fork()
        log.debug("client: dropped %d VCs inherited across fork", len(inherited))

    def _reap_abandoned(self) -> None:
        self._cache.reap_abandoned()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.BadStateError("client: closed", request_sent=False)

    @staticmethod
    def _closed_error(tried: Sequence[str] = ()) -> errors.BadStateError:
        """The error of a call the client's close() ended before its request was sent."""
        return errors.BadStateError(
            "client: closed while the call was starting", request_sent=False, tried=tried
        )

    def _backoff(self, ctx: Context, seconds: float) -> None:
        """The wait between two tries of a call (the retry loops' sleep): ``seconds``, or
        less when ``ctx`` ends (the loop then raises its error) or the client is closed.

        Raises:
            BadStateError: the client is closed (before or during the wait); not retried.
        """
        waiting = ctx.with_cancel()
        with self._lock:
            closed = self._closed
            if not closed:
                self._backoffs.add(waiting)
        if not closed:
            try:
                waiting.wait(seconds)
            finally:
                with self._lock:
                    self._backoffs.discard(waiting)
                waiting.cancel()  # (no longer a child of the call's context)
        if self._closed:
            raise self._closed_error()

    def _make_on_done(
        self, owned_ctx: Context | None, span: vtrace.Span, started: list[bool]
    ) -> Any:
        calls = self._calls

        lock = self._lock

        def on_done(call: Call) -> None:
            span.finish()
            with lock:  # close() iterates the set under the lock
                calls.discard(call)
            # (Not for an attempt whose request never went out: the call's context is
            # still the retry loop's, which tries again with it.)
            if owned_ctx is not None and started:
                owned_ctx.cancel_with(_CALL_FINISHED)  # type: ignore[attr-defined]

        return on_done

    # --- security -----------------------------------------------------------------------
    def discharges_for(
        self, blessings: Any, *, timeout: float = 10.0
    ) -> Callable[[], tuple[Discharge, ...]]:
        """Where a server gets the discharges for the third-party caveats on its own
        ``blessings``: ``Server(principal, discharges=client.discharges_for(blessings))``.

        Each call of the returned function (the server makes one per handshake) gives them
        from this client's discharge cache, fetching from their dischargers, within
        ``timeout`` seconds, those missing or about to expire; the client must be able to
        reach the dischargers (its roots) and stay open while the server runs. A discharge
        that cannot be fetched is left out and logged at warning; a client of the server
        then refuses it, naming the caveat.

        Raises:
            BadArgError: ``blessings`` are not :class:`~ipcclient.security.Blessings`, or
                ``timeout`` is not a positive number of seconds.
        """
        if not isinstance(blessings, Blessings):
            raise errors.BadArgError(
                f"client: discharges_for takes Blessings, not {type(blessings).__name__}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise errors.BadArgError("client: discharges_for's timeout is seconds > 0")

        def discharges() -> tuple[Discharge, ...]:
            if self._closed or not blessings.third_party_caveats():
                return ()
            ctx = Context.background().with_timeout(timeout)
            try:
                found, problems = security.prepare_discharges(
                    self.discharge_cache,
                    self._fetch_discharges,
                    lambda: ctx,
                    blessings,
                    (),
                    "",
                    (),
                    (),
                )
            except errors.IPCError as exc:
                log.warning("client: discharges for a server's own blessings: %s", exc)
                return ()
            finally:
                ctx.cancel()
            if problems:
                log.warning(
                    "client: discharges for a server's own blessings not fetched: %s",
                    "; ".join(problems),
                )
            return found

        return discharges

    def _fetch_discharges(
        self,
        ctx: Context,
        caveats: list[ThirdPartyCaveat],
        impetus: DischargeImpetus,
        problems: list[str],
    ) -> list[Discharge]:
        return security.fetch_discharges(
            self.call,
            self.discharge_cache,
            self._count_fetched,
            self.options.max_parallel_discharge_fetches,
            ctx,
            caveats,
            impetus,
            problems,
        )

    def _count_fetched(self) -> None:
        self.stats["discharges_fetched"] += 1


def _dial_timeout(client: weakref.ref[Client]) -> Callable[[], float]:
    """The dial timeout of ``client``'s options as they are now (read at each dial), without
    holding the client (the default once it is gone)."""

    def dial_timeout() -> float:
        alive = client()
        return (alive.options if alive is not None else _DEFAULT_OPTIONS).dial_timeout

    return dial_timeout


_DEFAULT_OPTIONS = ClientOptions()


def _dropped(cache: vcs.VCCache) -> None:
    """(The finalizer of a client collected without ``close()``.) Its VCs end at their next
    check (see ``VCCache.abandon``: no lock, no socket here)."""
    if cache.vcs or cache.retired:
        warnings.warn(
            "ipcclient: a Client was dropped without close(); its connections are closed "
            "at their next keepalive check (use 'with Client(...) as client:' or close())",
            ResourceWarning,
            stacklevel=2,
        )
    cache.abandon()


def _keywords(keywords: dict[str, Any], method: object) -> errors.BadArgError:
    """The error for keyword arguments given to a call: the wire has positional ones only."""
    return errors.BadArgError(
        f"client: the arguments of {method!r} are positional only (got "
        f"{', '.join(sorted(keywords))}=...): pass them in order, after the method's name",
        request_sent=False,
    )


def _no_context(ctx: object, fn: str) -> errors.BadArgError:
    """The error for a call made without a Context first."""
    return errors.BadArgError(
        f"client: {fn}() takes a Context first, got {ctx!r}: "
        f"client.{fn}(Context.background().with_timeout(5.0), name, method, ...)"
    )


class _SpanContext:
    """The call's context with its span, made only when something needs it (resolving
    through a mount table, fetching a discharge): most calls never do."""

    __slots__ = ("_ctx", "_parent", "_span")

    def __init__(self, parent: Context, span: vtrace.Span) -> None:
        self._parent = parent
        self._span = span
        self._ctx: Context | None = None

    def get(self) -> Context:
        if self._ctx is None:
            self._ctx = vtrace.with_span(self._parent, self._span)
        return self._ctx


def _unusable(conn: Connection | None) -> bool:
    """(For sorting servers) no cached VC, or a closed one."""
    return conn is None or conn.closed
