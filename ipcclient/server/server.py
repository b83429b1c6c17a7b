"""The threaded RPC server: listen, dispatch, authorize, invoke, answer.

Owns: :class:`Server` (listeners, a worker pool that grows on demand to a bound and sheds
load beyond it with a retriable error, per-VC budgets on calls, flows waiting for their
header and bytes of args, serving a dispatcher, stopping cleanly), the server side of the
request protocol (:mod:`ipcclient.headers`), per-call authorization (the client's blessings
validated against this server's roots, caveats and discharges, then the object's authorizer,
all before any arg is read), and :class:`ServerCall`, which user methods receive to stream
and to see the call's context.

Must not: resolve names or dial (publishing in a mount table goes through an injected
publisher), or let a bug in a user's method reach anything but that call's error.

Only exposed methods are called (``@expose``, or ``serve(obj, methods=[...])``; see
:mod:`ipcclient.server.exposure`). A user method is called as ``method(call, *args)``; it
returns one result, ``None`` for no result, or :class:`Results` for several. Raising an
:class:`~ipcclient.errors.IPCError` sends that error; any other exception is logged and sent
as an UnknownError carrying its message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipcclient import errors, vtrace
from ipcclient.codec import Limits, decode
from ipcclient.context import CancelContext, Context
from ipcclient.headers import Request, Response, decode_usual_request, request_from_wire
from ipcclient.security.blessings import Blessings, validate_blessings, validity_horizon
from ipcclient.security.caveats import SecurityCall
from ipcclient.security.discharges import Discharge
from ipcclient.security.principal import Principal
from ipcclient.server.authorizer import Authorizer, CallSecurity, DefaultAuthorizer
from ipcclient.server.exposure import Exposed, exposed_methods
from ipcclient.stream import MessageStream
from ipcclient.transport.conn import Connection, Flow
from ipcclient.transport.manager import Listener, StreamManager, TransportOptions
from ipcclient.wire.messages import encode_message_parts, encode_messages, split_bodies

__all__ = [
    "SIGNATURE_METHOD",
    "Dispatcher",
    "LeafDispatcher",
    "Results",
    "Server",
    "ServerCall",
    "ServerOptions",
    "signature",
]

log = logging.getLogger("ipcclient.server")

_CALL_FINISHED = errors.CanceledError("call finished")
"""What a call's own context ends with once the call is over (a prototype: see
:meth:`CancelContext.cancel_with`)."""

_PLAIN_REQUEST_KEYS = frozenset({"suffix", "method", "nargs", "deadline", "trace"})
"""The keys of a request header the inline fast path takes (no grant, no discharges)."""
_END_OF_ARGS = Request(end_stream_args=True).to_wire()

_VC_CACHE_ENTRIES = 256
"""Validated client names kept per VC (per method, suffix and discharges); cleared when full."""

_VC_STATE = "server-vc-state"
"""The key of a VC's :class:`_VCState` in its ``cache`` (kept when the cache is cleared)."""

HEADER_GRACE = 0.05
"""Seconds a flow's request header may take to arrive before the flow counts against its
VC's ``max_headerless_per_vc`` (a header cut across two records comes a moment later)."""

_IDLE_WORKER_EXIT = 10.0
"""A worker thread beyond ``ServerOptions.workers`` ends after this many seconds idle."""


class _VCState:
    """What one accepted VC holds of the server: call slots, flows whose request header is
    not here yet, and bytes of args being read (see the per-VC bounds of
    :class:`ServerOptions`). Counters change under the server's slot lock."""

    __slots__ = ("args_held", "calls", "headerless")

    def __init__(self) -> None:
        self.calls = 0
        self.headerless = 0
        self.args_held = 0


class _ArgsCharge:
    """The bytes of args one call holds, charged to its VC's budget as each arg's length
    arrives (a :class:`~ipcclient.wire.messages.Budget`); given back when the call ends."""

    __slots__ = ("_lock", "_server", "_vc", "taken")

    def __init__(self, server: Server, vc: _VCState) -> None:
        self._server = server
        self._lock = server._slots_lock
        self._vc = vc
        self.taken = 0

    def take(self, nbytes: int) -> None:
        limit = self._server.options.max_args_bytes_per_vc
        with self._lock:
            vc = self._vc
            if vc.args_held + nbytes > limit:
                over = True
            else:
                over = False
                vc.args_held += nbytes
                self.taken += nbytes
        if over:
            raise errors.OverloadedError(
                f"server: the calls of this VC hold more than {limit} bytes of args"
            )

    def release(self) -> None:
        with self._lock:
            self._vc.args_held -= self.taken
            self.taken = 0


class _Workers:
    """A pool of worker threads that grows on demand up to ``size`` and keeps ``core`` of
    them; a thread beyond ``core`` ends after ``_IDLE_WORKER_EXIT`` idle.

    Cheaper than ``concurrent.futures`` for this job (no futures): a C-implemented queue and
    an exact count of idle threads (a job is queued for a thread only when one is idle or
    about to take it). ``submit`` never blocks; the server bounds what is queued (its slots),
    so that a job waits only when the server allows queueing (``max_queued``).
    """

    def __init__(self, core: int, size: int) -> None:
        self._core = core
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for a job that no job was queued for yet
        self._owed = 0  # jobs queued with every thread busy (the next free thread runs one)
        self._started = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return len(self._threads)

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False once shut down or when no thread could be started."""
        start: threading.Thread | None = None
        with self._lock:
            if self._closed:
                return False
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                self._started += 1
                start = threading.Thread(
                    target=self._run, name=f"ipc-server-{self._started}", daemon=True
                )
                self._threads.add(start)
            else:
                self._owed += 1
            self._queue.put(job)
        if start is not None:
            try:
                start.start()
            except RuntimeError:  # no thread to be had: take the job back if still queued
                with self._lock:
                    self._threads.discard(start)
                    try:
                        taken = self._queue.get_nowait()
                    except queue.Empty:  # pragma: no cover - another thread took it
                        return True
                if taken is not job:  # pragma: no cover - order kept: put back
                    self._queue.put(taken)
                    return True
                log.warning("server: no thread to be had for a call")
                return False
        return True

    def _run(self) -> None:
        me = threading.current_thread()
        get = self._queue.get
        while True:
            try:
                job = get(timeout=_IDLE_WORKER_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle and len(self._threads) > self._core:
                        self._idle -= 1
                        self._threads.discard(me)
                        return
                continue  # (a job is on its way to this thread, or it is a kept one)
            if job is None:
                return
            try:
                job()
            except BaseException:  # pragma: no cover - a job answers its own errors
                log.exception("server: a worker task failed")
            with self._lock:
                if self._owed:
                    self._owed -= 1  # a job queued while every thread was busy: take it
                else:
                    self._idle += 1

    def shutdown(self, timeout: float) -> None:
        """Stop taking work, let queued work finish, end every thread (bounded)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Results:
    """Several results from one method: ``return Results(a, b)``."""

    __slots__ = ("values",)

    def __init__(self, *values: Any) -> None:
        self.values = values


class Dispatcher(Protocol):
    """Maps a suffix to the object serving it and its authorizer (None: the default)."""

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        """Raise UnknownSuffixError when nothing is served at ``suffix``."""
        ...


class LeafDispatcher:
    """Serves one object at the empty suffix only."""

    def __init__(self, obj: Any, authorizer: Authorizer | None = None) -> None:
        self.obj = obj
        self.authorizer = authorizer

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        if suffix:
            raise errors.UnknownSuffixError(f"server: nothing is served at suffix {suffix!r}")
        return self.obj, self.authorizer


HEADER_LIMITS = Limits(max_message_size=64 * 1024, max_depth=32, max_items=4096)
"""Default bounds of a request header (``ServerOptions.header_limits``): read before the
caller is authorized, so cheap to refuse. A header carries names, a deadline, a trace, and
at most some blessings granted and discharges (a few KiB); 64 KiB and 4,096 CBOR items leave
room for dozens of discharges, and refusing an oversized one costs a few milliseconds."""


@dataclass(frozen=True)
class ServerOptions:
    """Knobs of a server. docs/limits.md explains each bound and why its default.

    Attributes:
        workers: worker threads kept to run calls (started as work first needs them).
        max_workers: the pool grows on demand up to this many threads (one per call running
            on a worker, a streaming call included), so that calls that wait for their
            client (streams) cannot starve the others; idle threads beyond ``workers`` end
            after a while. At least ``workers``.
        max_queued: calls allowed to wait for a worker once ``max_workers`` run; beyond
            ``max_workers + max_queued`` calls (inline ones included) new calls are refused
            at once with OverloadedError (RETRY_BACKOFF). 0 (the default): a call never
            waits silently behind calls that may not end.
        max_calls_per_vc: calls one VC may have running or waiting at once (its flows
            beyond are refused with OverloadedError): one client cannot take every worker.
        max_headerless_per_vc: flows of one VC waiting for their request header on a
            worker (after ``HEADER_GRACE``); more are reset with OverloadedError.
        first_header_timeout: how long a new flow may take to send its request header.
        header_limits: codec bounds of a request header, which is read before the caller
            is authorized (see :data:`HEADER_LIMITS`).
        args_timeout: once its header is read and the caller authorized, a call's args must
            all arrive within this many seconds (or the call's deadline, if sooner); else
            the flow is reset with TimeoutError.
        send_timeout: the longest one send to a client may wait for credit when the call
            has no deadline (a client that stops reading cannot pin a worker forever).
        max_args_bytes: the total size of one call's positional args, which are all held
            in memory at once (64 MiB; a single value is bounded by the codec's 4 MiB).
        max_args_bytes_per_vc: the total size of the args the calls of one VC hold while
            reading them (counted as each arg's length arrives); a call that would go over
            is reset with OverloadedError.
        inline_calls: run a call whose request is complete on arrival (a unary call) on
            the VC's reader thread rather than a worker (no thread hop; one per read of the
            socket, other calls in flight or not; a call running longer than 2 ms gets a
            helper reader for its VC, so other calls on the VC wait at most about 3 ms for
            their data). It still counts against ``max_workers + max_queued``.
        transport: options of the VCs accepted.
    """

    workers: int = 16
    max_workers: int = 256
    max_queued: int = 0
    max_calls_per_vc: int = 128
    max_headerless_per_vc: int = 16
    first_header_timeout: float = 10.0
    header_limits: Limits = HEADER_LIMITS
    args_timeout: float = 30.0
    send_timeout: float = 60.0
    max_args_bytes: int = 64 * 1024 * 1024
    max_args_bytes_per_vc: int = 64 * 1024 * 1024
    inline_calls: bool = True
    transport: TransportOptions = field(default_factory=TransportOptions)

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "max_workers",
            "max_calls_per_vc",
            "max_headerless_per_vc",
            "max_args_bytes",
            "max_args_bytes_per_vc",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.BadArgError(f"server: {name} must be an int >= 1, got {value!r}")
        if not isinstance(self.max_queued, int) or self.max_queued < 0:
            raise errors.BadArgError(f"server: max_queued must be >= 0, got {self.max_queued!r}")
        for name in ("first_header_timeout", "args_timeout", "send_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise errors.BadArgError(f"server: {name} must be seconds > 0, got {value!r}")


class ServerCall:
    """What a server method gets: the call's context, security facts, and streaming.

    ``recv`` / iteration read the client's streamed args; ``send`` streams results back.
    Belongs to the worker running the call; do not share it across threads.
    """

    def __init__(
        self,
        ctx: Context,
        stream: MessageStream,
        request: Request,
        security: CallSecurity,
        server: Server,
    ) -> None:
        self.context = ctx
        self._stream = stream
        self.request = request
        self.security = security
        self.server = server
        self._recv_done = False

    @property
    def suffix(self) -> str:
        return self.request.suffix

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def remote_blessing_names(self) -> tuple[str, ...]:
        """The client's blessing names that validated for this call."""
        return self.security.client_names

    @property
    def granted_blessings(self) -> Blessings | None:
        """Blessings the client granted this server for the call (bound to our key)."""
        granted = self.request.granted
        return granted if isinstance(granted, Blessings) else None

    def recv(self) -> Any:
        """The client's next streamed arg.

        Raises:
            EndOfStreamError: the client closed its send side (also an ``EOFError``).
            CanceledError / TimeoutError: the call was cancelled or its deadline passed.
        """
        if self._recv_done:
            raise errors.EndOfStreamError("server: the client sent no more items")
        header = request_from_wire(self._stream.recv(self.context.deadline))
        if header.end_stream_args:
            self._recv_done = True
            raise errors.EndOfStreamError("server: the client sent no more items")
        if not header.is_stream_item:
            raise errors.BadProtocolError("server: expected a streaming header")
        return self._stream.recv(self.context.deadline)

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except errors.EndOfStreamError:
                return

    def send(self, item: Any) -> None:
        """Stream ``item`` to the client (blocks while the client's window is full, at most
        until the call's deadline or the server's ``send_timeout``)."""
        self._stream.flow.write(
            encode_message_parts(item, head=_STREAM_ITEM_MESSAGE),
            deadline=self.server._send_deadline(self.context),
            streamed=True,
        )


_SIGNATURES: dict[tuple[type, str], tuple[int, int | None]] = {}
_SIGNATURES_LOCK = threading.Lock()


def _arity(obj: Any, name: str, method: Callable[..., Any]) -> tuple[int, int | None]:
    """(min, max) positional args a method takes after the call object (max None: *args)."""
    key = (type(obj), name)
    found = _SIGNATURES.get(key)
    if found is not None:
        return found
    lo, hi = 0, 0
    unbounded = False
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return (0, None)
    for p in params[1:]:  # the first is the ServerCall
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is p.empty:
                lo += 1
        elif p.kind is p.VAR_POSITIONAL:
            unbounded = True
    result = (lo, None if unbounded else hi)
    with _SIGNATURES_LOCK:
        _SIGNATURES[key] = result
    return result


SIGNATURE_METHOD = "__Signature"
"""The reserved method every server answers: what the object served at the suffix offers
(see :func:`signature`). Authorized like any other method of the object."""


def signature(obj: Any) -> list[dict[str, Any]]:
    """What ``__Signature`` answers for ``obj``: one map per exposed method (see
    :func:`~ipcclient.server.exposure.expose`), sorted by name: ``{"name": str, "args":
    [parameter names], "varargs": bool, "doc": str}`` (the parameters after the
    :class:`ServerCall`; the docstring cleaned of indentation)."""
    out: list[dict[str, Any]] = []
    for name in sorted(exposed_methods(obj)):
        method = _find_method(obj, name)
        args: list[str] = []
        varargs = False
        try:
            params = list(inspect.signature(method).parameters.values())[1:]
        except (TypeError, ValueError):
            params = []
            varargs = True
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                args.append(p.name)
            elif p.kind is p.VAR_POSITIONAL:
                varargs = True
        out.append(
            {"name": name, "args": args, "varargs": varargs, "doc": inspect.getdoc(method) or ""}
        )
    return out


def _find_method(obj: Any, name: str) -> Callable[..., Any]:
    """The exposed method ``name`` of ``obj`` (an :class:`Exposed` stands for its object)."""
    if name not in exposed_methods(obj):
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    method = getattr(_target(obj), name, None)
    if method is None or not callable(method):
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    return method  # type: ignore[no-any-return]


def _target(obj: Any) -> Any:
    return obj.obj if type(obj) is Exposed else obj


class Server:
    """A threaded RPC server for one principal.

    ``server = Server(principal); endpoint = server.listen("tcp", "127.0.0.1:0");
    server.serve(obj)`` ... ``server.stop()``. Also a context manager.
    """

    def __init__(
        self,
        principal: Principal,
        *,
        blessings: Blessings | None = None,
        options: ServerOptions | None = None,
        publisher: Any = None,
        serves_mount_table: bool = False,
    ) -> None:
        self.principal = principal
        self.options = options or ServerOptions()
        chosen = blessings if blessings is not None else principal.store.default
        if chosen is None:
            raise errors.BadArgError(
                "server: the principal has no default blessings; pass blessings="
            )
        if chosen.public_key != principal.public_key:
            raise errors.BadArgError("server: blessings are not bound to the principal's key")
        self.blessings: Blessings = chosen
        self._names = tuple(chosen.names)
        self._manager = StreamManager(principal, self.options.transport)
        self._listeners: list[Listener] = []
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()
        # Calls running or queued, against their bound (a counter under a plain lock: cheaper
        # than a semaphore, which is a Python-level Condition).
        self._slots_lock = threading.Lock()
        self._in_use = 0
        opts = self.options
        max_workers = max(opts.workers, opts.max_workers)
        self._capacity = max_workers + opts.max_queued
        self._pool = _Workers(opts.workers, max_workers)
        self._root = Context.background().with_cancel()
        self._stopped = False
        self._stopped_event = threading.Event()
        self._publisher = publisher
        self._serves_mount_table = serves_mount_table
        self.endpoints: list[str] = []

    # --- lifecycle ----------------------------------------------------------------------
    def listen(self, protocol: str = "tcp", address: str = "127.0.0.1:0") -> str:
        """Listen on ``address`` and return this server's endpoint string there."""
        from ipcclient.naming.endpoint import Endpoint  # naming sits below; import lazily

        with self._lock:
            if self._stopped:
                raise errors.BadStateError("server: stopped")
        listener = self._manager.listen(
            protocol,
            address,
            blessings=self.blessings,
            on_flow=self._on_flow,
        )
        ep = Endpoint(
            protocol=protocol,
            address=listener.address,
            blessings=self._names,
            min_version=self.options.transport.versions[0],
            max_version=self.options.transport.versions[1],
            serves_mount_table=self._serves_mount_table,
        )
        with self._lock:
            self._listeners.append(listener)
            self.endpoints.append(str(ep))
        return str(ep)

    def serve(
        self,
        obj: Any,
        authorizer: Authorizer | None = None,
        *,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Serve ``obj`` at the empty suffix (a :class:`LeafDispatcher`).

        Clients may call only its exposed methods: those named in ``methods`` when given,
        else those decorated with :func:`~ipcclient.expose` (or all the public methods of a
        class decorated with it).

        Raises:
            BadArgError: ``obj`` exposes no method, or ``methods`` names something that is
                not a public method of ``obj``.
            BadStateError: the server already serves.
        """
        if methods is not None:
            obj = Exposed(obj, methods)
        elif not exposed_methods(obj):
            raise errors.BadArgError(
                f"server: {type(obj).__name__} exposes no methods: decorate them (or the "
                "class) with @ipcclient.expose, or pass serve(obj, methods=[...])"
            )
        self.serve_dispatcher(LeafDispatcher(obj, authorizer))

    def serve_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Serve every suffix through ``dispatcher``. A server serves once. The objects the
        dispatcher returns are called only through their exposed methods (see
        :meth:`serve`; a dispatcher may return an :class:`~ipcclient.server.exposure.Exposed`)."""
        with self._lock:
            if self._dispatcher is not None:
                raise errors.BadStateError("server: already serving")
            self._dispatcher = dispatcher

    def add_name(self, name: str) -> None:
        """Publish this server's endpoints under ``name`` in the mount table (kept mounted
        by the publisher until :meth:`remove_name` or :meth:`stop`). Listen first."""
        publisher = self._require_publisher()
        with self._lock:
            endpoints = list(self.endpoints)
        if not endpoints:
            raise errors.BadStateError("server: listen before publishing a name")
        publisher.add_name(name, endpoints, serves_mount_table=self._serves_mount_table)

    def remove_name(self, name: str) -> None:
        """Stop publishing under ``name`` (unmounts it)."""
        self._require_publisher().remove_name(name)

    def _require_publisher(self) -> Any:
        if self._publisher is None:
            raise errors.BadStateError("server: no publisher was given (Server(publisher=...))")
        return self._publisher

    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            listeners = list(self._listeners)
        return [c for lst in listeners for c in lst.connections]

    def stop(self, timeout: float = 5.0, *, grace: float = 0.0) -> None:
        """Stop: no new calls (new ones are refused with CanceledError) and no new VCs; the
        published names are unmounted; calls in flight get up to ``grace`` seconds to finish,
        then the rest are cancelled (their clients see Canceled or a broken VC); VCs close;
        worker threads end (waiting at most ``timeout`` for each step). Idempotent; a second
        call while the first waits returns at once.
        """
        if not (isinstance(grace, int | float) and grace >= 0):
            raise errors.BadArgError(f"server: grace must be >= 0 seconds, got {grace!r}")
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            listeners = list(self._listeners)
        for lst in listeners:  # no new VCs (the VCs already open stay for the grace)
            lst.close(close_connections=False, timeout=timeout)
        if self._publisher is not None:
            try:
                self._publisher.stop(timeout)
            except Exception:
                log.exception("server: unpublishing failed")
        if grace > 0:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                with self._slots_lock:
                    if self._in_use <= 0:
                        break
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        self._root.cancel("server stopping")
        for lst in listeners:
            for conn in lst.connections:
                conn.close()
        self._pool.shutdown(timeout)
        self._stopped_event.set()

    def wait(self, timeout: float | None = None, *, grace: float = 5.0) -> bool:
        """Serve until :meth:`stop` is called (from another thread or a signal handler) or
        the process is interrupted (Ctrl-C, which stops the server with ``grace``).

        Returns True once stopped, False when ``timeout`` seconds passed first.
        """
        try:
            if timeout is None:
                while not self._stopped_event.wait(1.0):
                    pass
                return True
            return self._stopped_event.wait(timeout)
        except KeyboardInterrupt:
            log.info("server: interrupted; stopping (grace %.1f s)", grace)
            self.stop(grace=grace)
            return True

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving ------------------------------------------------------------------------
    def _on_flow(self, flow: Flow) -> Callable[[], None] | None:
        """A client opened a flow (reader thread): run it there, hand it to a worker, or
        refuse it at once (OverloadedError) when the server or the flow's VC is over a bound.

        A call whose whole request is already here (the client closed its side: a unary
        call) runs on the VC's reader thread when the VC allows it (``inline_calls``): no
        hop to a worker. If it runs long, the VC gets a helper reader (see
        ``transport.conn.INLINE_HANDOFF``), so other calls and cancellation still flow.
        """
        if self._stopped:
            flow.cancel(errors.CanceledError("server: stopping"))
            return None
        conn = flow.connection
        vc: _VCState | None = conn.cache.get(_VC_STATE)
        if vc is None:  # (only this VC's reader runs this: no race)
            vc = conn.cache[_VC_STATE] = _VCState()
        done = flow.peer_done
        opts = self.options
        refused: str | None = None
        with self._slots_lock:
            if self._in_use >= self._capacity:
                refused = f"server: {self._capacity} calls running or queued; try again later"
            elif vc.calls >= opts.max_calls_per_vc:
                refused = (
                    f"server: this VC has {opts.max_calls_per_vc} calls running; try again later"
                )
            else:
                self._in_use += 1
                vc.calls += 1
        if refused is not None:
            flow.cancel(errors.OverloadedError(refused))
            return None
        job = functools.partial(self._serve_flow, flow, vc)
        if opts.inline_calls and done and conn.inline_available():
            return job
        if not self._pool.submit(job):  # shut down (we are stopping), or no thread
            self._release_slot(vc)
            flow.cancel(
                errors.CanceledError("server: stopping")
                if self._stopped
                else errors.OverloadedError("server: no thread for the call; try again later")
            )
        return None

    def _serve_flow(self, flow: Flow, vc: _VCState) -> None:
        """Serve one call (a worker, or the VC's reader thread for an inline job). A request
        that is all here and the usual one (a plain header, its args, the end of args) is
        split at once and run without reading the flow message by message; anything else
        takes the general way (which also answers every malformed request, so the short
        way never has to). Either way the caller is authorized before any arg is decoded
        (the general way: before any arg is read)."""
        charge = _ArgsCharge(self, vc)
        try:
            if flow.error is not None:  # reset, or its VC broke, before it could run
                return
            parsed = self._parse_whole_request(flow) if flow.peer_done else None
            if parsed is None:
                self._run_call(flow, MessageStream(flow), vc, charge)
                return
            request, bodies, end = parsed
            flow.discard_received()
            stream = MessageStream(flow)
            stream.push(end)  # (what ServerCall.recv reads: the end of args)
            self._run_parsed(flow, stream, request, bodies)
        except BaseException:  # a method's SystemExit must not take its thread or VC down
            log.exception("server: unexpected failure serving a flow")
        finally:
            flow.close()
            charge.release()
            self._release_slot(vc)

    def _parse_whole_request(self, flow: Flow) -> tuple[Request, list[bytes], Any] | None:
        """The request, the args' bodies (not decoded) and the end-of-args message of a flow
        whose peer is done, when they are the usual ones and within bounds; None for the
        general way (nothing read)."""
        data = flow.received_all()
        if data is None or len(data) > self.options.max_args_bytes:
            return None
        try:
            bodies = split_bodies(data)
            if not bodies:
                return None
            request = decode_usual_request(bodies[0])
            if request is None:
                header = decode(bodies[0], self.options.header_limits)
                if type(header) is not dict or not header.keys() <= _PLAIN_REQUEST_KEYS:
                    return None
                request = request_from_wire(header)
            if len(bodies) != request.nargs + 2:
                return None
            end = decode(bodies[-1])
            if end != _END_OF_ARGS:
                return None
            return request, bodies[1:-1], end
        except errors.BadProtocolError:
            return None

    def _release_slot(self, vc: _VCState) -> None:
        with self._slots_lock:
            self._in_use -= 1
            vc.calls -= 1

    def _run_call(
        self,
        flow: Flow,
        stream: MessageStream,
        vc: _VCState,
        charge: _ArgsCharge,
    ) -> None:
        """The general way: read the header under the header limits, then run the call
        (which authorizes before reading the args). A header not here after
        ``HEADER_GRACE`` counts against the VC's ``max_headerless_per_vc`` while it is
        awaited (over it, the flow is reset with OverloadedError)."""
        opts = self.options
        waiting = False
        try:
            now = time.monotonic()
            first_deadline = now + opts.first_header_timeout
            # Every arg is held at once: bound their total, for the call and for its VC (the
            # header, not counted, is bounded by the header limits).
            stream.set_budget(opts.max_args_bytes, free=1, shared=charge)
            stream.set_first_limits(opts.header_limits)
            try:
                message = stream.recv(min(first_deadline, now + HEADER_GRACE))
            except errors.TimeoutError:
                with self._slots_lock:
                    waiting = vc.headerless < opts.max_headerless_per_vc
                    if waiting:
                        vc.headerless += 1
                if not waiting:
                    flow.cancel(
                        errors.OverloadedError(
                            f"server: this VC has {opts.max_headerless_per_vc} flows waiting "
                            "for their request header"
                        )
                    )
                    return
                message = stream.recv(first_deadline)
            request = request_from_wire(message)
        except errors.IPCError as exc:
            self._answer_error(stream, exc)
            return
        finally:
            if waiting:
                with self._slots_lock:
                    vc.headerless -= 1
        self._run_parsed(flow, stream, request, None)

    def _run_parsed(
        self, flow: Flow, stream: MessageStream, request: Request, bodies: list[bytes] | None
    ) -> None:
        """Run a call whose header is read (``bodies``: its args' bodies when they are here
        already, else None: they are read from ``stream`` once the caller is authorized),
        and answer it."""
        span: vtrace.Span | None = None
        item: tuple[Any, Any] | None = None
        trace = request.trace
        if trace is not None:  # continue the client's trace; nested calls join it
            span = vtrace.new_span(
                self._root,
                f"{request.suffix!r}.{request.method}",
                trace_id=trace.trace_id,
                parent_id=trace.span_id,
                collect=bool(trace.flags & vtrace.COLLECT),
            )
            item = vtrace.span_item(span)
        # One context per call: the request's deadline, the span, cancellable.
        root = self._root
        deadline = None if request.deadline is None else time.monotonic() + request.deadline
        ctx = CancelContext(root, clock=root.clock, deadline=deadline, item=item, cancellable=True)
        call_ctx: Context = ctx
        flow.set_abort_callback(lambda err: ctx.cancel(f"client: {err.msg}"))
        try:
            self._run_request(ctx, call_ctx, span, flow, stream, request, bodies)
        finally:
            ctx.cancel_with(_CALL_FINISHED)

    def _run_request(
        self,
        ctx: CancelContext,
        call_ctx: Context,
        span: vtrace.Span | None,
        flow: Flow,
        stream: MessageStream,
        request: Request,
        bodies: list[bytes] | None,
    ) -> None:
        try:
            method, security = self._prepare(flow, request)
            args: list[Any] | None
            if bodies is not None:
                args = [decode(body) for body in bodies]
            else:
                args = self._read_args(ctx, flow, stream, request)
                if args is None:
                    return  # (the flow was reset)
                stream.set_budget(None)
            if ctx.done():
                raise ctx.err() or errors.CanceledError("server: call cancelled")
            call = ServerCall(call_ctx, stream, request, security, self)
            value = method(call, *args)
            results: Sequence[Any]
            if value is None:
                results = ()
            elif isinstance(value, Results):
                results = value.values
            elif isinstance(value, types.GeneratorType):
                value.close()
                raise errors.InternalError(
                    f"server: {request.method} returned a generator; stream results with "
                    "call.send(item) inside the method and return the final results"
                )
            else:
                results = (value,)
        except errors.IPCError as exc:
            err = (ctx.err() or exc) if _is_flow_abort(exc, ctx) else exc
            self._answer_error(stream, err, _spans(span))
            return
        except Exception as exc:
            log.exception("server: %s.%s raised", request.suffix, request.method)
            err = errors.UnknownError(f"{type(exc).__name__}: {exc}")
            self._answer_error(stream, err, _spans(span))
            return
        n = len(results)
        spans = _spans(span)
        try:
            if spans:  # (inside the try: span notes are text an application wrote)
                head = encode_messages(
                    Response(end_stream_results=True, nresults=n, trace=spans).to_wire()
                )
            else:
                head = _END_MESSAGES[n] if n < len(_END_MESSAGES) else _end_message(n)
            flow.write(
                encode_message_parts(*results, head=head),
                end=True,
                deadline=self._send_deadline(ctx),
            )
        except errors.BadArgError as exc:
            err = errors.InternalError(f"server: cannot encode results: {exc.msg}")
            self._answer_error(stream, err)
        except errors.IPCError as exc:
            log.debug("server: could not send results: %s", exc)

    def _read_args(
        self, ctx: CancelContext, flow: Flow, stream: MessageStream, request: Request
    ) -> list[Any] | None:
        """Read an authorized call's args, within ``args_timeout`` (or the call's deadline,
        if sooner). A call whose args do not come in time, or whose VC holds too many bytes
        of args, has its flow reset at once with that error (None is returned): nothing is
        written to a client that may not be reading."""
        bound = time.monotonic() + self.options.args_timeout
        deadline = ctx.deadline
        until = bound if deadline is None else min(deadline, bound)
        try:
            return [stream.recv(until) for _ in range(request.nargs)]
        except errors.TimeoutError:
            if until != bound or ctx.done():  # the call's own deadline
                raise
            err: errors.IPCError = errors.TimeoutError(
                f"server: the call's args did not arrive within {self.options.args_timeout} s"
            )
        except errors.OverloadedError as exc:
            err = exc
        flow.cancel(err)
        return None

    def _prepare(self, flow: Flow, request: Request) -> tuple[Callable[..., Any], CallSecurity]:
        """Find the method and authorize the caller for it (raises the error to answer):
        everything a call needs that does not depend on its args, so an unauthorized caller
        is refused before any of its args is read."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            raise errors.UnknownSuffixError("server: nothing is served yet")
        suffix = request.suffix.lstrip("/")
        obj, authorizer = dispatcher.lookup(suffix)
        security = self._authorize(flow.connection, request, suffix, authorizer)
        method: Callable[..., Any]
        hi: int | None
        if request.method == SIGNATURE_METHOD:
            listing = signature(obj)
            method, lo, hi = (lambda call: listing), 0, 0
        else:
            method = _find_method(obj, request.method)
            lo, hi = _arity(_target(obj), request.method, method)
        nargs = request.nargs
        if nargs < lo or (hi is not None and nargs > hi):
            expected = str(lo) if hi == lo else f"{lo}..{'any' if hi is None else hi}"
            raise errors.BadArgError(
                f"server: {request.method} takes {expected} arguments, got {nargs} "
                "(wrong number of input arguments)"
            )
        return method, security

    def _authorize(
        self,
        conn: Connection,
        request: Request,
        suffix: str,
        authorizer: Authorizer | None,
    ) -> CallSecurity:
        granted = request.granted
        authorizer = authorizer or DefaultAuthorizer()
        plain = granted is None and not request.discharges
        if plain:
            # The usual call (nothing granted, no discharges in the request): its security
            # facts depend only on the VC, the method and the suffix, so they are cached.
            fast = conn.cache.get(("call-security", request.method, suffix))
            if fast is not None and fast[1] > time.time():
                authorizer.authorize(fast[0])  # NoAccess: no refused discharge to report
                return fast[0]  # type: ignore[no-any-return]
        until: float | None = None
        if granted is not None:
            if not isinstance(granted, Blessings):
                raise errors.BadProtocolError("server: granted blessings are malformed")
            if granted.public_key != self.principal.public_key:
                raise errors.NoAccessError("server: blessing granted not bound to this server")
        discharges: dict[str, Discharge] = {d.caveat_id: d for d in conn.remote_discharges}
        for d in request.discharges:
            if not isinstance(d, Discharge):
                raise errors.BadProtocolError("server: a discharge in the request is malformed")
            discharges[d.caveat_id] = d
        remote = conn.remote_blessings
        key = ("client-names", request.method, suffix, tuple(sorted(discharges)))
        now = time.time()
        hit = conn.cache.get(key)
        if hit is not None and hit[2] > now:
            names, rejected, until = hit[0], hit[1], hit[2]
        else:
            sc = SecurityCall(
                method=request.method,
                suffix=suffix,
                local_blessings=self._names,
                remote_blessings=remote,
                remote_discharges=discharges,
            )
            names, rejected = validate_blessings(remote, sc, self.principal.roots)
            if not any(r.error.id == errors.ErrorID.BAD_DISCHARGE.value for r in rejected):
                # Safe to reuse until the earliest expiry: every other caveat kind depends only
                # on the method, the suffix and the blessings of this VC.
                _trim_cache(conn.cache)
                until = min(validity_horizon(remote, discharges.values()), now + 60.0)
                conn.cache[key] = (names, rejected, until)
        security = CallSecurity(
            method=request.method,
            suffix=suffix,
            client_names=tuple(names),
            rejected=tuple((r.name, r.error.msg) for r in rejected),
            server_names=self._names,
            client_key=conn.remote_key,
            server_key=self.principal.public_key,
            granted=granted,
        )
        if plain and until is not None:
            _trim_cache(conn.cache)
            conn.cache[("call-security", request.method, suffix)] = (security, until)
        try:
            authorizer.authorize(security)
        except errors.NoAccessError:
            # A refused discharge names its caveat: say so, so the client refetches only it.
            for r in rejected:
                if isinstance(r.error, errors.BadDischargeError):
                    raise r.error from None
            raise
        return security

    def _send_deadline(self, ctx: Context) -> float:
        """A send never waits forever on a client that grants no credit: the call's
        deadline, or ``options.send_timeout`` from now when the call has none."""
        bound = time.monotonic() + self.options.send_timeout
        deadline = ctx.deadline
        return bound if deadline is None else min(deadline, bound)

    def _answer_error(
        self, stream: MessageStream, err: errors.IPCError, trace: tuple[Any, ...] = ()
    ) -> None:
        try:
            stream.send(
                Response(error=err, end_stream_results=True, trace=trace).to_wire(),
                end=True,
                deadline=time.monotonic() + self.options.send_timeout,
            )
        except errors.IPCError as exc:
            log.debug("server: could not send error %s: %s", err.id, exc)


def _trim_cache(cache: dict[Any, Any]) -> None:
    """Clear a VC's cache of security facts when full (its server state stays)."""
    if len(cache) >= _VC_CACHE_ENTRIES:
        state = cache.get(_VC_STATE)
        cache.clear()
        if state is not None:
            cache[_VC_STATE] = state


def _spans(span: vtrace.Span | None) -> tuple[Any, ...]:
    """The span records to send back: every span of the trace this process recorded (the
    call's own and its nested calls'), when the client asked for collection."""
    if span is None:
        return ()
    span.finish()
    if not span.collecting:
        return ()
    return tuple(r.to_wire() for r in vtrace.STORE.trace(span.trace_id))


def _end_message(nresults: int) -> bytes:
    return encode_messages(Response(end_stream_results=True, nresults=nresults).to_wire())


_END_MESSAGES = tuple(_end_message(n) for n in range(4))
"""The final response headers of calls with 0..3 results, encoded once."""
_STREAM_ITEM_MESSAGE = encode_messages(Response().to_wire())
"""The empty response header before each streamed result, encoded once."""


def _is_flow_abort(exc: errors.IPCError, ctx: Context) -> bool:
    """Whether ``exc`` came from the call being cancelled or timing out."""
    return ctx.done() and isinstance(
        exc, errors.CanceledError | errors.TimeoutError | errors.ConnectionFailedError
    )
