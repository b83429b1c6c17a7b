"""The client: names in, calls out, one VC per endpoint.

Owns: :class:`Client` — the VC map shared by every thread (lookups and inserts under a lock
held for nothing else; dials outside it, one dial per endpoint however many callers wait for
it; a VC that cannot open a flow is evicted and redialed once), ``start_call`` with the retry
loop before the request is sent, each try (resolve; for each server in order: split address
and suffix, check the endpoint's versions, get a flow, authorize the server, grant, prepare
discharges, write the request), ``call`` (start + finish, retrying only errors whose action
is RETRY_BACKOFF), discharge fetching, fork safety and ``close``.

Must not: parse bytes, frames or headers itself (the layers below do), hold its lock across a
dial, a handshake, a discharge fetch or any other I/O, or decide a retry from message text.

Lock order: ``Client._lock`` is a leaf: nothing else is acquired while it is held.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ipcclient import errors, retry, vtrace
from ipcclient.call import Call, finish_unary
from ipcclient.context import Context
from ipcclient.headers import Request, TraceContext, encode_request_message
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint
from ipcclient.naming.namespace import (
    MountEntry,
    NameNotFoundError,
    Namespace,
    ResolutionDepthExceededError,
    terminal_servers,
)
from ipcclient.options import (
    CallOption,
    ClientOptions,
    Granter,
    NoDischarges,
    NoRetry,
    RetryTimeout,
    ServerPattern,
    ServerPublicKey,
    SkipServerAuthorization,
    WaitForReady,
    find_all,
    find_one,
)
from ipcclient.security.blessings import Blessings, validate_blessings, validity_horizon
from ipcclient.security.caveats import SecurityCall, ThirdPartyCaveat
from ipcclient.security.discharges import (
    Discharge,
    DischargeCache,
    DischargeImpetus,
    filtered_impetus,
)
from ipcclient.security.keys import PublicKey
from ipcclient.security.patterns import BlessingPattern
from ipcclient.security.principal import Principal
from ipcclient.stream import MessageStream
from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.manager import StreamManager
from ipcclient.wire.messages import encode_message_parts, encode_messages

__all__ = ["Client"]

log = logging.getLogger("ipcclient.client")

_forks = 0
"""How many times this process is a fork child (a child's count differs from its parent's):
a cheaper test than ``os.getpid()``, a system call, on every call."""


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_count_fork)

_CALL_FINISHED = errors.CanceledError("call finished")
"""What a call's own context ends with once the call is over (a prototype: see
:meth:`CancelContext.cancel_with`)."""

_T = TypeVar("_T")

_DIAL_WAIT_SLICE = 0.05
"""How often a caller waiting for a dial looks at its context and at close()."""

_VC_CACHE_ENTRIES = 256
"""Validated server names kept per VC (per method and suffix); cleared when full."""

_FAST_PLANS = 1024
"""Names whose fast-path plan (or its absence) is kept; cleared when full."""

_PROTOCOL_RANK = {"unix": 0, "tcp4": 1, "tcp": 1, "tcp6": 1}
"""Order of servers by protocol (a local Unix socket first; unknown protocols last)."""


HAPPY_EYEBALLS_STAGGER = 0.25
"""When a name has several servers and the first has no VC yet, the next server's dial
starts this many seconds after the previous one's (or as soon as that fails), as RFC 8305
(Happy Eyeballs) does; the first VC established carries the call."""

STALE_DIAL = 1.0
"""A dial that has run this long (or that a caller already gave up on) is not joined by a new
caller: it dials afresh (once per ``STALE_DIAL`` per endpoint), so a stalled handshake costs
the calls already waiting for it, not every call until the handshake timeout."""

MAX_RESENDS = 3
"""How many times :meth:`Client.call` sends a request again on a new VC when the server said
(GOAWAY's last flow id) it never took it."""


_REDIALING = errors.ConnectionFailedError("client: redialing")
"""(A marker inside :meth:`Client._race`: a new dial replaced an evicted VC.)"""


class _Dial:
    """One dial in progress that several callers may wait for."""

    __slots__ = ("abandoned", "conn", "done", "error", "listeners", "started")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.abandoned = False  # a caller's deadline passed while it waited for this dial
        self.listeners: list[threading.Event] = []  # set when the dial ends (races)

    def stale(self, now: float) -> bool:
        return self.abandoned or now - self.started >= STALE_DIAL


class _NamespaceCaller:
    """Adapts the client to the namespace's Caller protocol (names arrive terminal)."""

    def __init__(self, client: Client) -> None:
        self._client = weakref.ref(client)

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **_options: Any
    ) -> Sequence[Any]:
        client = self._client()
        if client is None:
            raise errors.BadStateError("client: closed")
        return client.call(ctx, name, method, *args, options=(NoRetry(),))


class Client:
    """A synchronous RPC client, safe to share across threads (see the module docstring).

    Args:
        principal: who this client is. Default: a fresh principal blessed by itself as
            ``client`` (it then trusts no server until roots are added to its principal).
        namespace: how names are resolved. Default: a namespace with ``roots``.
        roots: mount table names for the default namespace (e.g. ``["/127.0.0.1:8101"]``).
        options: client-wide knobs (:class:`~ipcclient.options.ClientOptions`).
        stream_manager: how VCs are made (default: one over this principal).
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
        if principal is None:
            principal = Principal.generate()
            principal.store.default = principal.bless_self("client")
        self.principal = principal
        self.options = options or ClientOptions()
        self._manager = stream_manager or StreamManager(principal, self.options.transport)
        self.namespace = namespace if namespace is not None else Namespace(roots)
        if namespace is None or namespace.caller is None:
            self.namespace.set_caller(_NamespaceCaller(self))
        self.discharge_cache = DischargeCache()
        self._lock = threading.Lock()
        self._vcs: dict[str, Connection] = {}
        self._dialing: dict[str, _Dial] = {}
        self._calls: weakref.WeakSet[Call] = weakref.WeakSet()
        self._abandoned: collections.deque[Flow] = collections.deque()
        self._closed = False
        self._pid = os.getpid()
        self._forks = _forks  # the process's fork count when _pid was taken (see _forks)
        self._fast_plans: dict[str, tuple[Endpoint, str, str] | None] = {}
        self._fast_namespace: Namespace | None = None  # the namespace the plans were made for
        self.stats = collections.Counter[str]()

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
        """
        from ipcclient import env

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
            BadArgError: a bad context, name or option.
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
    ) -> tuple[Any, ...]:
        """``start_call`` + ``finish``: the results as a tuple.

        A server error whose action is RETRY_BACKOFF is retried (the request may have run:
        servers mark only errors that are safe to retry so); nothing else is retried after
        the request was sent.
        """
        if not isinstance(ctx, Context):
            raise _no_context(ctx, "call")
        call_ctx, owned = self._call_context(ctx)
        start = call_ctx.clock.monotonic()  # the call's one retry window starts here
        try:

            def attempt(_n: int) -> tuple[Any, ...]:
                for resend in range(MAX_RESENDS + 1):
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
                    results = self._fast_call(call_ctx, name, method, args)
                except errors.NotProcessedError as exc:
                    self._note_unprocessed(exc, 0, call_ctx)
                    results = None
                return attempt(n) if results is None else results

            # The usual call may take the fast path (see _fast_call).
            first = attempt if options else fast_first

            no_retry = bool(options) and find_one(options, NoRetry) is not None
            return self._with_retries(
                attempt,
                call_ctx,
                options,
                retry.RetryPhase.AFTER_SEND,
                no_retry,
                start,
                first=first,
                what=("call", name, method),
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
    ) -> Any:
        """:meth:`call` for a method with at most one result: the result itself, or None
        when the method returned none (a server method that returns ``None``).

        Raises:
            BadStateError: the method returned several results (it ran; use :meth:`call`).
            IPCError: as :meth:`call`.
        """
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
        """Close the client: new calls fail at once with BadStateError; calls in flight end
        with CanceledError("client closed"); every VC closes; no thread is left. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            vcs = list(self._vcs.values())
            self._vcs.clear()
            calls = list(self._calls)
        if calls:
            closing = errors.CanceledError("client: closed while the call was in flight")
            for call in calls:
                call.cancel(closing)
        self._reap_abandoned()
        for conn in vcs:
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
        with self._lock:
            return sum(1 for c in self._vcs.values() if not c.closed)

    # --- starting a call ----------------------------------------------------------------
    def _call_context(self, ctx: Context) -> tuple[Context, bool]:
        if ctx.deadline is None and self.options.default_call_timeout is not None:
            return ctx.with_timeout(self.options.default_call_timeout), True
        return ctx, False

    def _with_retries(
        self,
        attempt: Callable[[int], _T],
        ctx: Context,
        options: Sequence[CallOption],
        phase: retry.RetryPhase,
        no_retry: bool,
        start: float,
        first: Callable[[int], _T] | None = None,
        what: tuple[str, str, str] = ("call", "", ""),
    ) -> _T:
        """``first(1)`` (default: ``attempt``); only if it fails with an error ``phase`` may
        retry, the retry loop (backoff, deadline, cancellation) of ``attempt`` starting from
        that failure, within the call's one retry window (from ``start``). ``what``: (kind,
        name, method), for the retry log only."""
        try:
            return (first or attempt)(1)  # the usual case: no retry machinery at all
        except errors.IPCError as first:
            if no_retry or not retry.should_retry(first, phase):
                raise
            return retry.run_with_retries(
                attempt,
                deadline=self._retry_window_end(ctx, options, start),
                phase=phase,
                policy=self.options.backoff,
                no_retry=no_retry,
                ctx=ctx,
                budget=self.options.retry_budget,
                first_error=first,
                what=f"{what[0]} {what[1]!r}.{what[2]}",
            )

    def _waits_for_ready(self, options: Sequence[CallOption]) -> bool:
        """Whether this call waits for its server (see :class:`WaitForReady`)."""
        opt = find_one(options, WaitForReady) if options else None
        return self.options.wait_for_ready if opt is None else opt.enabled

    def _retry_window_end(self, ctx: Context, options: Sequence[CallOption], start: float) -> float:
        """The end of the call's retry window (on the context's clock), the same for every
        retry loop of the call: see :func:`retry.call_retry_window`."""
        rt = find_one(options, RetryTimeout) if options else None
        return retry.call_retry_window(
            start,
            ctx.deadline,
            wait_for_ready=self._waits_for_ready(options),
            connect_retry_window=self.options.connect_retry_window,
            retry_timeout=None if rt is None else rt.seconds,
        )

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
        if not isinstance(name, str) or not isinstance(method, str) or not method:
            raise errors.BadArgError(
                f"client: the name and the method must be strings, got {name!r} and {method!r}"
            )
        if not isinstance(args, Sequence) or isinstance(args, str | bytes | bytearray):
            raise errors.BadArgError(
                f"client: start_call's args must be a list or tuple of arguments, got {args!r}"
            )
        for arg in args:
            if isinstance(arg, CallOption):
                raise _option_as_argument(arg)
        no_retry = False
        if options:
            for opt in options:
                if not isinstance(opt, CallOption):
                    raise errors.BadArgError(
                        f"client: {opt!r} is not a call option (arguments of the method go "
                        "in args, before the options)"
                    )
            keys = {o.key for o in find_all(options, ServerPublicKey)}
            if len(keys) > 1:
                raise errors.BadArgError("client: two different ServerPublicKey options")
            no_retry = find_one(options, NoRetry) is not None
            rt = find_one(options, RetryTimeout)
            if rt is not None and rt.seconds == 0:
                no_retry = True
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
            return self._try_call(
                span_ctx, call_ctx, span, name, method, args, options, close_send, tried, owned
            )

        try:
            return self._with_retries(
                attempt,
                call_ctx,
                options,
                retry.RetryPhase.BEFORE_SEND,
                no_retry,
                start,
                what=("starting", name, method),
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
            servers = self._resolve(span_ctx.get(), name, tried, options).names()
        if len(servers) > 1:
            servers = sorted(servers, key=_server_rank)
        last: errors.IPCError | None = None
        failures: list[errors.IPCError] = []
        deadline = call_ctx.deadline
        versions = self._manager.options.versions
        plan = _dial_plan_cached if type(versions) is tuple else _dial_plan
        plans: list[tuple[str, Endpoint, str, str]] = []
        for server in servers:
            address, suffix = _split_server(server)
            if not address:
                last = errors.BadArgError(f"client: cannot connect to a non-rooted name {server!r}")
                failures.append(last)
                continue
            try:
                ep, ep_key = plan(address, versions)
            except errors.IPCError as exc:
                tried.append(f"{server}: {exc.id}")
                last = exc
                failures.append(exc)
                continue
            plans.append((server, ep, ep_key, suffix))
        if len(plans) > 1:
            # Servers with a healthy cached VC first (stable: protocol order otherwise).
            vcs = self._vcs
            plans.sort(key=lambda p: vcs.get(p[2]) is None or vcs[p[2]].closed)
        for (server, ep, _key, suffix), got in self._race(plans, call_ctx, tried):
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
            try:
                flow.set_deadline(deadline)
                conn = flow.connection
                server_names = self._authorize_server(conn, ep, method, suffix, options)
                granted = self._grant(conn, options)
                discharges, fetch_errors = self._prepare_discharges(
                    span_ctx.get, conn.local_blessings, server_names, method, args, options
                )
            except errors.IPCError as exc:
                flow.cancel()  # never opened on the wire: nothing at all is sent
                tried.append(f"{server}: {exc.id}")
                last = exc
                failures.append(exc)
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            request = Request(
                suffix=suffix,
                method=method,
                nargs=len(args),
                deadline=remaining,
                granted=granted,
                discharges=discharges,
                trace=TraceContext(span.trace_id, span.span_id, span.flags),
            )
            stream = MessageStream(flow)
            trace_id = span.trace_id
            collecting = span.collecting

            def on_trace(
                records: tuple[Any, ...], _t: bytes = trace_id, _c: bool = collecting
            ) -> None:
                if _c:
                    vtrace.STORE.merge(_t, records)

            call = Call(
                call_ctx,
                stream,
                name=name,
                method=method,
                server=server,
                discharges=discharges,
                discharge_cache=self.discharge_cache,
                on_done=self._make_on_done(call_ctx if owned_ctx else None, span),
                on_abandon=self._abandoned.append,
                on_trace=on_trace,
            )
            if fetch_errors:
                call.discharge_errors = fetch_errors  # type: ignore[attr-defined]
            with self._lock:
                self._calls.add(call)
            unsent = _write_request(
                flow,
                request.to_wire(),
                args,
                close_send,
                deadline,
                call.cancel,
                tried,
            )
            if unsent is not None:  # nothing reached the wire: the usual retry rules apply
                raise unsent.with_context(request_sent=False, tried=tried) from None
            if close_send:
                call._send_closed = True
            self.stats["calls_started"] += 1
            return call
        # Every server failed (or there were none): the cached resolution may be stale.
        self.namespace.flush_cache_entry(name)
        raise self._classify(name, servers, failures, last, tried)

    def _fast_call(
        self, ctx: Context, name: str, method: str, args: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """The usual unary call by the fast path, or None with nothing sent (the general path
        then makes it). Usual: no options, a rooted name naming one server, its VC cached
        and open, the server already authorized on that VC for this method and suffix (the
        general path's cache: the same checks, before any byte), and blessings without
        third-party caveats (no discharges to send). Then no call object, retry loop or
        stream object is made; the request and the response are the same bytes, and every
        error is the one the general path would raise."""
        if type(name) is not str or type(method) is not str or ctx.done():
            return None  # the general path raises what it must, with nothing sent
        if self._closed or self._abandoned or self._forks != _forks:
            return None
        if self._fast_namespace is not self.namespace:  # plans depend on the namespace
            self._fast_plans.clear()
            self._fast_namespace = self.namespace
        try:
            plan = self._fast_plans[name]
        except KeyError:
            plan = self._fast_plan(name)
        if plan is None:
            return None
        ep, key, suffix = plan
        if not (method.isascii() and suffix.isascii()):
            return None  # (the header is encoded by hand below for ASCII names)
        conn = self._vcs.get(key)
        if conn is None or conn._error is not None or conn.suspect:
            return None
        hit = conn.cache.get(("server-names", method, suffix))
        if hit is None or hit[1] <= time.time():
            return None
        if ep.blessings:
            names = hit[0]
            for pattern in ep.blessings:
                if pattern in names:
                    break
            else:
                return None  # the general path says why
        plain = conn.cache.get("no-discharges")
        if plain is None:
            local = conn.local_blessings
            plain = not (isinstance(local, Blessings) and local.third_party_caveats())
            conn.cache["no-discharges"] = plain
        if not plain:
            return None
        try:
            flow = conn.connect()
        except errors.IPCError:
            return None  # the general path evicts and redials
        deadline = ctx.deadline
        flow.set_deadline(deadline)
        # From here the context's end (cancel, deadline) cancels the flow: it wakes a write
        # blocked on flow control as well as the wait for the response.
        handle = ctx.add_done_callback(flow.cancel)
        span: vtrace.Span | None = None
        if vtrace.current_span(ctx) is None:
            # A new trace that nobody records (no span in the context, so not collected):
            # the call's span would be seen nowhere; only its ids travel.
            trace_id, span_id = vtrace.new_ids()
            flags = 0
        else:
            span = vtrace.new_span(ctx, f"<client>{name!r}.{method}")
            trace_id, span_id, flags = span.trace_id, span.span_id, span.flags
        try:
            # Request(...).to_wire() of this call, encoded directly (the same bytes).
            relative = None if deadline is None else max(0.0, deadline - time.monotonic())
            head = encode_request_message(
                suffix, method, len(args), relative, trace_id, span_id, flags
            )
            if head is None:  # (a count out of range: the codec's way, same map and order)
                header: dict[str, Any] = {"suffix": suffix} if suffix else {}
                header["method"] = method
                if args:
                    header["nargs"] = len(args)
                if relative is not None:
                    header["deadline"] = relative
                header["trace"] = {"t": trace_id, "s": span_id, "f": flags}
                head = encode_messages(header)
            unsent = _write_request(flow, head, args, True, deadline, flow.cancel, [])
            if unsent is not None:
                return None  # nothing reached the wire: the general path starts over
            self.stats["calls_started"] += 1
            collect = trace_id if span is not None and span.collecting else None
            return finish_unary(flow, ctx, collect)
        except BaseException:
            flow.cancel(errors.CanceledError("call: interrupted"))  # (no-op once it ended)
            raise
        finally:
            ctx.remove_done_callback(handle)
            if span is not None:
                span.finish()

    def _fast_plan(self, name: str) -> tuple[Endpoint, str, str] | None:
        """What :meth:`_fast_call` needs of ``name`` (endpoint, VC key, suffix), when it
        names exactly one server without resolving; else None. Pure, so kept (bounded)."""
        plan: tuple[Endpoint, str, str] | None = None
        servers = self._servers_without_resolving(name)
        versions = self._manager.options.versions
        if servers is not None and len(servers) == 1 and type(versions) is tuple:
            address, suffix = _split_server(servers[0])
            if address:
                try:
                    ep, key = _dial_plan_cached(address, versions)
                    plan = (ep, key, suffix)
                except errors.IPCError:
                    plan = None
        if len(self._fast_plans) >= _FAST_PLANS:
            self._fast_plans.clear()
        self._fast_plans[name] = plan
        return plan

    def _servers_without_resolving(self, name: str) -> tuple[str, ...] | None:
        """The servers of ``name`` when the namespace would answer at once without a call (a
        rooted terminal name; pure, so cached), else None: ask the namespace."""
        if type(self.namespace).resolve is not Namespace.resolve:
            return None
        try:
            return terminal_servers(name)
        except errors.IPCError:
            return None  # let the namespace raise it, as for any name

    def _classify(
        self,
        name: str,
        servers: Sequence[str],
        failures: list[errors.IPCError],
        last: errors.IPCError | None,
        tried: list[str],
    ) -> errors.IPCError:
        """The one error for "every server of ``name`` failed", saying why in one line."""
        if not servers:
            return errors.NoServersError(
                f"client: {name!r} resolved to no servers (its mount entry is empty)", tried=tried
            )
        if any(isinstance(f, errors.NotTrustedError) for f in failures):
            nt = next(f for f in failures if isinstance(f, errors.NotTrustedError))
            return errors.NotTrustedError(nt.msg, tried=tried)
        if failures and all(
            isinstance(f, errors.VersionIncompatibleError | errors.BadArgError) for f in failures
        ):
            # Hopeless whatever we retry (Vanadium retried these until the deadline).
            return errors.NoServersError(
                f"client: no compatible server for {name!r}: {_bare(last.msg) if last else ''}",
                action=errors.RetryAction.NO_RETRY,
                tried=tried,
            )
        if failures and all(isinstance(f, errors.BadProtocolError) for f in failures):
            # Every server spoke garbage: not worth retrying (Vanadium retried it blindly).
            return errors.BadProtocolError(
                f"client: no server for {name!r} speaks the protocol: {_bare(failures[-1].msg)}",
                tried=tried,
            )
        if failures and all(isinstance(f, errors.TimeoutError) for f in failures):
            return errors.TimeoutError(
                f"client: {_bare(last.msg) if last else 'timed out'}", tried=tried
            )
        if isinstance(last, errors.CanceledError):
            return last
        action = (
            last.action
            if last is not None and last.action is not errors.RetryAction.NO_RETRY
            else errors.RetryAction.RETRY_REFETCH
        )
        if last is not None and isinstance(last, errors.ConnectionFailedError):
            where = "its server" if len(servers) == 1 else f"any of its {len(servers)} servers"
            return errors.NoServersError(
                f"client: cannot connect to {where} for {name!r}: {_bare(last.msg)} "
                "(is the server running at that address?)",
                action=action,
                tried=tried,
            )
        detail = f": {last.id}: {_bare(last.msg)}" if last is not None else ""
        return errors.NoServersError(
            f"client: no server for {name!r} could be reached{detail}", action=action, tried=tried
        )

    def _resolve(
        self, ctx: Context, name: str, tried: list[str], options: Sequence[CallOption]
    ) -> MountEntry:
        """Resolve ``name`` through the namespace. A name no mount table has fails at once
        unless the call waits for ready (then it is retried until the deadline: the server
        may be about to mount it); so do a relative name without roots and a malformed
        name. Other failures (a mount table that cannot be reached) may be retried."""
        try:
            entry = self.namespace.resolve(ctx, name)
        except errors.NoExistError as exc:
            tried.append(f"resolve {name!r}: {exc.id}")
            if isinstance(exc, ResolutionDepthExceededError):
                raise errors.NoServersError(
                    f"client: resolving {name!r} failed: {exc.msg} (a loop of mount tables?)",
                    action=errors.RetryAction.NO_RETRY,
                    tried=tried,
                ) from exc
            wait = self._waits_for_ready(options)
            where = exc.msg if isinstance(exc, NameNotFoundError) else f"{exc.id}: {exc.msg}"
            hint = (
                "waiting for it to be mounted"
                if wait
                else "check the name, and that its server is running and published under "
                "it; pass WaitForReady() to wait for it"
            )
            raise errors.NoServersError(
                f"client: {name!r} is not mounted: {where} ({hint})",
                action=errors.RetryAction.RETRY_REFETCH if wait else errors.RetryAction.NO_RETRY,
                tried=tried,
            ) from exc
        except (
            errors.TimeoutError,
            errors.CanceledError,
            errors.BadArgError,
            errors.NoAccessError,
            errors.NotTrustedError,
        ):
            raise
        except errors.IPCError as exc:
            tried.append(f"resolve {name!r}: {exc.id}")
            if isinstance(exc, errors.NoServersError) and exc.action is errors.RetryAction.NO_RETRY:
                raise exc.with_context(tried=tried) from exc  # (no roots, say: hopeless)
            log.debug("client: resolving %r failed: %s", name, exc)
            raise errors.NoServersError(
                f"client: cannot resolve {name!r}: no mount table answered "
                f"({_bare(exc.msg) or exc.id})",
                action=exc.action
                if exc.action is not errors.RetryAction.NO_RETRY
                else errors.RetryAction.RETRY_REFETCH,
                tried=tried,
            ) from exc
        tried.append(f"resolved {name!r} to {len(entry.servers)} server(s)")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client: %r resolved to %s", name, [s.server for s in entry.servers])
        return entry

    # --- VCs ----------------------------------------------------------------------------
    def _race(
        self, plans: list[tuple[str, Endpoint, str, str]], ctx: Context, tried: list[str]
    ) -> Iterator[tuple[tuple[str, Endpoint, str, str], Flow | errors.IPCError]]:
        """New flows to the servers of ``plans`` (server, endpoint, VC key, suffix), best
        first, each as soon as its VC is there, with each server's failure in its turn.

        A cached open VC answers at once. Otherwise its dial starts (or an ongoing fresh one
        is joined); the next server's dial starts ``HAPPY_EYEBALLS_STAGGER`` later, or as
        soon as every dial started has failed (RFC 8305). Dials still running when the
        caller stops iterating go on and their VCs are cached. A cached VC that cannot open a
        flow is evicted and that server dialed again, once. Each caller waits only as long
        as its own context allows (and no longer than the client stays open).

        Raises:
            the context's error (TimeoutError, CanceledError) while waiting for a dial;
            BadStateError: the client closed.
        """
        wake = threading.Event()
        pending: dict[int, _Dial] = {}
        redialed: set[int] = set()
        next_i = 0
        next_at = 0.0
        try:
            while True:
                wake.clear()
                for i, dial in list(pending.items()):
                    if not dial.done.is_set():
                        continue
                    del pending[i]
                    done = self._flow_on(dial, plans[i], redialed, i, pending, wake)
                    if done is not _REDIALING:
                        yield plans[i], done
                if next_i >= len(plans) and not pending:
                    return
                now = time.monotonic()
                if next_i < len(plans) and (not pending or now >= next_at):
                    i, next_i, next_at = next_i, next_i + 1, now + HAPPY_EYEBALLS_STAGGER
                    _server, ep, key, _suffix = plans[i]
                    try:
                        found = self._vc_or_dial(ep, key, tried, wake)
                    except errors.IPCError as exc:
                        yield plans[i], exc
                        continue
                    if isinstance(found, _Dial):
                        pending[i] = found
                        continue
                    flow = self._flow_on(found, plans[i], redialed, i, pending, wake)
                    if flow is not _REDIALING:
                        yield plans[i], flow
                    continue
                timeout = _DIAL_WAIT_SLICE
                if next_i < len(plans):
                    timeout = max(0.0, min(timeout, next_at - now))
                if wake.wait(timeout):
                    continue
                err = ctx.err()
                if err is not None:
                    for dial in pending.values():
                        dial.abandoned = True
                    if isinstance(err, errors.TimeoutError):
                        where = ", ".join(plans[i][1].address for i in pending)
                        err = errors.TimeoutError(
                            f"client: the deadline passed while dialing {where}"
                        )
                    log.debug("client: gave up waiting for a dial: %s", err)
                    raise err.with_context(request_sent=False, tried=tried)
                if self._closed:
                    raise errors.BadStateError("client: closed while dialing")
                for i in list(pending):  # a newer dial to the same endpoint may have won
                    conn = self._vcs.get(plans[i][2])
                    if conn is not None and not conn.closed and not conn.suspect:
                        del pending[i]
                        flow = self._flow_on(conn, plans[i], redialed, i, pending, wake)
                        if flow is not _REDIALING:
                            yield plans[i], flow
        finally:
            for dial in pending.values():
                with contextlib.suppress(ValueError):
                    dial.listeners.remove(wake)

    def _flow_on(
        self,
        source: Connection | _Dial,
        plan: tuple[str, Endpoint, str, str],
        redialed: set[int],
        i: int,
        pending: dict[int, _Dial],
        wake: threading.Event,
    ) -> Flow | errors.IPCError:
        """A new flow on ``source`` (a VC, or a finished dial): the flow, or why not. A VC
        that cannot open one is evicted; the first time for server ``i``, a new dial is
        started and put in ``pending`` (the error is then that of the evicted VC, and the
        caller hears of the new dial in its turn)."""
        if isinstance(source, _Dial):
            if source.error is not None:
                if isinstance(source.error, errors.IPCError):
                    return source.error.with_context()
                return errors.ConnectionFailedError(
                    f"client: dialing {plan[1].address} failed: {source.error!r}"
                )
            assert source.conn is not None
            conn = source.conn
        else:
            conn = source
        try:
            return conn.connect()
        except errors.ConnectionFailedError as exc:
            self._evict(conn)
            if i in redialed:
                return exc
            redialed.add(i)
            try:
                got = self._vc_or_dial(plan[1], plan[2], [], wake)
            except errors.IPCError as again:
                return again
            if isinstance(got, _Dial):
                pending[i] = got
                return _REDIALING
            try:
                return got.connect()
            except errors.ConnectionFailedError as again:
                self._evict(got)
                return again

    def _vc_or_dial(
        self, ep: Endpoint, key: str, tried: list[str], wake: threading.Event
    ) -> Connection | _Dial:
        """The cached open VC to ``ep``, else the dial to join (``wake`` is set when it
        ends): the ongoing one unless it is stale (see ``STALE_DIAL``), else a new one on
        a dial thread. The dial outlives the callers that give up on it (bounded by
        ``options.dial_timeout``) and its VC is cached for the next call."""
        with self._lock:
            if self._closed:
                raise errors.BadStateError("client: closed")
            conn = self._vcs.get(key)
            if conn is not None and not conn.closed:
                if not conn.suspect:
                    return conn
                # A call just timed out on it with the peer silent, and its probe runs:
                # dial another (which replaces it) rather than wait on it too.
            elif conn is not None:
                del self._vcs[key]
            dial = self._dialing.get(key)
            if dial is None or dial.stale(time.monotonic()):
                if dial is not None:
                    log.debug("client: a dial to %s is stalled; dialing again", ep.address)
                dial = self._dialing[key] = _Dial()
                tried.append(f"dial {ep.protocol}:{ep.address}")
                threading.Thread(
                    target=self._dial,
                    args=(key, ep, dial),
                    name=f"ipc-dial-{ep.address}",
                    daemon=True,
                ).start()
            dial.listeners.append(wake)
            if dial.done.is_set():
                wake.set()
        return dial

    def _dial(self, key: str, ep: Endpoint, dial: _Dial) -> None:
        """The dial thread: dial outside every lock; publish the result to the waiters."""
        conn: Connection | None = None
        try:
            conn = self._manager.dial(
                ep.protocol,
                ep.address,
                deadline=time.monotonic() + self.options.dial_timeout,
                authorize_server=self._vc_authorizer(ep),
                blessings_for_server=self._blessings_for_server,
                on_close=self._on_vc_closed,
            )
            self.stats["dials"] += 1
        except BaseException as exc:
            dial.error = exc
        surplus: Connection | None = None
        retired: Connection | None = None
        with self._lock:
            if self._dialing.get(key) is dial:
                del self._dialing[key]
            if conn is not None:
                if self._closed:
                    dial.error = errors.BadStateError("client: closed")
                    surplus = conn
                else:
                    cached = self._vcs.get(key)
                    if cached is None or cached.closed or cached.suspect:
                        self._vcs[key] = conn
                        dial.conn = conn
                        if cached is not None and not cached.closed:
                            retired = cached
                    else:
                        # A newer dial to the same endpoint finished first: its VC serves
                        # this dial's callers too; one VC per endpoint stays.
                        dial.conn = cached
                        surplus = conn
            listeners = list(dial.listeners)
        if surplus is not None:
            surplus.close()
        if retired is not None:
            log.debug("client: VC %s replaced by a new one; retiring it", retired.name)
            retired.retire()
        dial.done.set()
        for wake in listeners:
            wake.set()

    def _evict(self, conn: Connection) -> None:
        log.debug("client: evicting the VC %s (it cannot open a flow)", conn.name)
        with self._lock:
            for key, c in list(self._vcs.items()):
                if c is conn:
                    del self._vcs[key]
        conn.close()

    def _on_vc_closed(self, conn: Connection, err: errors.IPCError) -> None:
        log.debug("client: VC %s closed: %s", conn.name, err)
        with self._lock:
            for key, c in list(self._vcs.items()):
                if c is conn:
                    del self._vcs[key]

    def _after_fork_check(self) -> None:
        """In a child after fork(): drop inherited VCs without touching the parent's
        connections (close our copies of the descriptors only) and start afresh."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            inherited = list(self._vcs.values())
            self._vcs.clear()
            self._dialing.clear()
            self._calls = weakref.WeakSet()
            self._abandoned.clear()
            self._pid = pid
            self._forks = _forks
        for conn in inherited:
            conn.abandon_after_fork()
        log.debug("client: dropped %d VCs inherited across fork", len(inherited))

    def _reap_abandoned(self) -> None:
        while True:
            try:
                flow = self._abandoned.popleft()
            except IndexError:
                return
            flow.cancel(errors.CanceledError("client: the call was dropped without finish()"))

    def _check_open(self) -> None:
        if self._closed:
            raise errors.BadStateError("client: closed", request_sent=False)

    def _make_on_done(self, owned_ctx: Context | None, span: vtrace.Span) -> Any:
        calls = self._calls

        lock = self._lock

        def on_done(call: Call) -> None:
            span.finish()
            with lock:  # close() iterates the set under the lock
                calls.discard(call)
            if owned_ctx is not None:
                owned_ctx.cancel_with(_CALL_FINISHED)  # type: ignore[attr-defined]

        return on_done

    # --- security -----------------------------------------------------------------------
    def _vc_authorizer(self, ep: Endpoint) -> Any:
        """The handshake's check: the server's blessings must validate under our roots
        (before we reveal our own blessings)."""

        def authorize(key: PublicKey, blessings: Any, discharges: tuple[Any, ...]) -> None:
            if not isinstance(blessings, Blessings):
                raise errors.NotTrustedError("client: the server presented no blessings")
            names_ok, rejected = self._server_names(blessings, discharges, method="")
            if not names_ok:
                why = "; ".join(f"{r.name}: {_bare(r.error.msg)}" for r in rejected)
                log.debug("client: server %s not trusted: %s", blessings.names, why)
                raise errors.NotTrustedError(
                    f"client: the server's blessings {blessings.names} are not trusted ({why})"
                )
            log.debug("client: server at handshake presents %s", names_ok)

        return authorize

    def _server_names(
        self, blessings: Blessings, discharges: Sequence[Any], *, method: str, suffix: str = ""
    ) -> tuple[list[str], list[Any]]:
        default = self.principal.store.default
        call = SecurityCall(
            method=method,
            suffix=suffix,
            local_blessings=tuple(default.names) if default is not None else (),
            remote_blessings=blessings,
            remote_discharges={d.caveat_id: d for d in discharges if isinstance(d, Discharge)},
        )
        return validate_blessings(blessings, call, self.principal.roots)

    def _blessings_for_server(self, server_blessings: Any) -> Blessings | None:
        peer_names = server_blessings.names if isinstance(server_blessings, Blessings) else []
        chosen = self.principal.store.for_peer(*peer_names)
        return chosen if chosen is not None else self.principal.store.default

    def _authorize_server(
        self,
        conn: Connection,
        ep: Endpoint,
        method: str,
        suffix: str,
        options: Sequence[CallOption],
    ) -> list[str]:
        """Authorize the server for this call before any request byte is written."""
        blessings = conn.remote_blessings
        if not isinstance(blessings, Blessings):
            raise errors.NotTrustedError("client: the server presented no blessings")
        key = ("server-names", method, suffix)
        now = time.time()
        hit = conn.cache.get(key)
        if hit is not None and hit[1] > now:
            server_names: list[str] = hit[0]
        else:
            server_names, rejected = self._server_names(
                blessings, conn.remote_discharges, method=method, suffix=suffix
            )
            if not server_names:
                why = "; ".join(f"{r.name}: {_bare(r.error.msg)}" for r in rejected)
                log.debug("client: no trusted blessing of the server for %s: %s", method, why)
                raise errors.NotTrustedError(f"client: no trusted server blessing ({why})")
            log.debug("client: server %s authorized for %s on %r", server_names, method, suffix)
            if len(conn.cache) >= _VC_CACHE_ENTRIES:
                conn.cache.clear()
            until = min(validity_horizon(blessings, conn.remote_discharges), now + 60.0)
            conn.cache[key] = (server_names, until)
        # Exact match: a delegate of the server must not pass for it (Vanadium's MITM TODO).
        endpoint_ok = not ep.blessings or any(b in server_names for b in ep.blessings)
        if not options:
            if not endpoint_ok:
                raise errors.NotTrustedError(
                    f"client: server {server_names} is not the one the endpoint names "
                    f"({list(ep.blessings)})"
                )
            return server_names
        if not endpoint_ok and find_one(options, SkipServerAuthorization) is None:
            raise errors.NotTrustedError(
                f"client: server {server_names} is not the one the endpoint names "
                f"({list(ep.blessings)})"
            )
        for opt in find_all(options, ServerPattern):
            if not opt.matched_by(server_names):
                raise errors.NotTrustedError(
                    f"client: server {server_names} does not match the pattern(s) "
                    f"{list(opt.patterns)}"
                )
        key_opt = find_one(options, ServerPublicKey)
        if key_opt is not None and key_opt.key != conn.remote_key:
            raise errors.NotTrustedError("client: the server's public key is not the one asked for")
        return server_names

    def _grant(self, conn: Connection, options: Sequence[CallOption]) -> Blessings | None:
        granted: Blessings | None = None
        if not options:
            return granted
        for opt in find_all(options, Granter):
            try:
                got = opt.grant(conn.remote_blessings, conn.remote_key)
            except errors.IPCError as exc:
                raise errors.NotTrustedError(f"client: granter failed: {exc.msg}") from exc
            except Exception as exc:
                raise errors.NotTrustedError(f"client: granter failed: {exc!r}") from exc
            if got is not None:
                if not isinstance(got, Blessings):
                    raise errors.BadArgError("client: a granter must return Blessings")
                granted = Blessings.union(granted, got)
        return granted

    def _prepare_discharges(
        self,
        ctx: Callable[[], Context],
        blessings: Any,
        server_names: Sequence[str],
        method: str,
        args: Sequence[Any],
        options: Sequence[CallOption],
    ) -> tuple[tuple[Discharge, ...], list[str]]:
        """Discharges for the third-party caveats on the blessings we present: from the
        shared cache, else fetched from their dischargers (concurrently, within the call's
        deadline) and cached. A fetch that fails is reported with the call's error."""
        if not isinstance(blessings, Blessings) or (
            options and find_one(options, NoDischarges) is not None
        ):
            return (), []
        caveats = blessings.third_party_caveats()
        if not caveats:
            return (), []
        found: list[Discharge] = []
        missing: list[ThirdPartyCaveat] = []
        for cav in caveats:
            d = self.discharge_cache.get(cav.id)
            if d is not None:
                found.append(d)
            else:
                missing.append(cav)
        problems: list[str] = []
        if missing:
            impetus = DischargeImpetus(
                tuple(BlessingPattern(n) for n in server_names), method, tuple(args)
            )
            fetched = self._fetch_discharges(ctx(), missing, impetus, problems)
            found.extend(fetched)
        return tuple(found), problems

    def _fetch_discharges(
        self,
        ctx: Context,
        caveats: list[ThirdPartyCaveat],
        impetus: DischargeImpetus,
        problems: list[str],
    ) -> list[Discharge]:
        def fetch(cav: ThirdPartyCaveat) -> Discharge | None:
            log.debug(
                "client: fetching a discharge for caveat %s from %s", cav.id[:12], cav.location
            )
            try:
                (d,) = self.call(
                    ctx,
                    cav.location,
                    "Discharge",
                    cav,
                    filtered_impetus(cav.requirements, impetus).to_wire(),
                    options=(NoDischarges(), NoRetry()),
                )
                if not isinstance(d, Discharge):
                    raise errors.BadProtocolError("client: the discharger sent no discharge")
                self.discharge_cache.put(d, caveat=cav)
                self.stats["discharges_fetched"] += 1
                return d
            except errors.IPCError as exc:
                problems.append(f"discharge for caveat {cav.id[:12]} from {cav.location}: {exc}")
                log.warning("client: fetching a discharge from %s failed: %s", cav.location, exc)
                return None

        if len(caveats) == 1:
            results = [fetch(caveats[0])]
        else:
            workers = min(len(caveats), self.options.max_parallel_discharge_fetches)
            with ThreadPoolExecutor(workers, thread_name_prefix="ipc-discharge") as pool:
                results = list(pool.map(fetch, caveats))
        return [d for d in results if d is not None]


def _no_context(ctx: object, fn: str) -> errors.BadArgError:
    """The error for a call made without a Context first."""
    return errors.BadArgError(
        f"client: {fn}() takes a Context first, got {ctx!r}: "
        f"client.{fn}(Context.background().with_timeout(5.0), name, method, ...)"
    )


def _option_as_argument(opt: CallOption) -> errors.BadArgError:
    return errors.BadArgError(
        f"client: {opt!r} was passed as an argument of the method; pass call options as "
        "options=[...] to call(), or after the args list to start_call()"
    )


def _bare(msg: str) -> str:
    """``msg`` without the leading ``client:`` of the client's own messages (for composing
    one error's message from another's without repeating the component)."""
    return msg[8:] if msg.startswith("client: ") else msg


def _write_request(
    flow: Flow,
    head: bytes | dict[str, Any],
    args: Sequence[Any],
    close_send: bool,
    deadline: float | None,
    cancel: Callable[[errors.IPCError], None],
    tried: list[str],
) -> errors.IPCError | None:
    """Write a request (``head``: its header, as a map or already encoded as a message; then
    the args, and with ``close_send`` the end of args and FIN).
    On failure ``cancel`` the call; return the error when nothing reached the wire (the
    caller decides about retrying), else raise it.

    Raises:
        BadArgError: an arg cannot be encoded (nothing was sent).
        the write's error, NO_RETRY and ``request_sent``: part of the request may be out.
    """
    try:
        if type(head) is not bytes:
            head = encode_messages(head)  # (a header that cannot be encoded is a BadArg)
        data = encode_message_parts(
            *args, head=head, tail=_END_STREAM_MESSAGE if close_send else b""
        )
        flow.write(data, end=close_send, deadline=deadline)
    except errors.BadArgError as exc:
        cancel(exc)
        for arg in args:
            if isinstance(arg, CallOption):  # (the fast path encodes args unchecked)
                raise _option_as_argument(arg).with_context(request_sent=False) from None
        raise exc.with_context(request_sent=False) from None
    except errors.IPCError as exc:
        if flow.wrote and flow.peer_done:
            # The server answered in full (its FIN came) and then reset the flow because the
            # rest of the request was still coming (it had what it needed): the reply is
            # here to be read, and the call goes on to read it.
            return None
        cancel(exc)
        if not flow.wrote or isinstance(exc, errors.NotProcessedError):
            return exc  # (or the server said it never took the flow: as good as unsent)
        # Part of the request may be out: the server may run it, so never retry it here,
        # whatever the error's action says (at most once).
        raise exc.with_context(
            request_sent=True, tried=tried, action=errors.RetryAction.NO_RETRY
        ) from None
    return None


_END_STREAM_MESSAGE = encode_messages(Request(end_stream_args=True).to_wire())
"""The end of args, encoded once: what a unary call's request ends with."""


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


@functools.lru_cache(maxsize=1024)
def _split_server(server: str) -> tuple[str, str]:
    """``names.split_address_name`` of a server's name (pure; the same names come back)."""
    return names.split_address_name(server)


def _dial_plan(address: str, versions: tuple[int, int]) -> tuple[Endpoint, str]:
    """The endpoint at ``address`` and its VC key, if this client can dial it.

    Raises:
        the endpoint's parse error, VersionIncompatibleError, NoServersError (a protocol this
            client cannot dial).
    """
    ep, key = _parse_endpoint(address)
    ep.check_compatibility(versions)
    if not ep.is_dialable:
        raise errors.NoServersError(f"client: cannot dial protocol {ep.protocol!r}")
    return ep, key


_dial_plan_cached = functools.lru_cache(maxsize=1024)(_dial_plan)
""":func:`_dial_plan` for hashable versions; errors are not cached (they are raised anew)."""


@functools.lru_cache(maxsize=1024)
def _parse_endpoint(address: str) -> tuple[Endpoint, str]:
    """An endpoint and its canonical string (the VC map's key). Endpoint strings repeat call
    after call; parsing each once saves most of the work."""
    ep = Endpoint.parse(address)
    return ep, str(ep)


def _server_rank(server: str) -> int:
    address, _ = names.split_address_name(server)
    try:
        return _PROTOCOL_RANK.get(_parse_endpoint(address)[0].protocol, 9)
    except errors.IPCError:
        return 10
