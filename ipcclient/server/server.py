"""The threaded RPC server: listen, serve a dispatcher, publish names, stop.

Owns: :class:`Server` (its listeners and endpoints, what it serves, its names published
through an injected publisher, its worker pool and call slots, and stopping cleanly). The
serving of each flow is :class:`~ipcclient.server.flows.FlowServing`, which ``Server``
extends; the other parts live beside it: :mod:`~ipcclient.server.options` (the knobs),
:mod:`~ipcclient.server.capacity` (worker pool, per-VC budgets),
:mod:`~ipcclient.server.dispatcher` (which object and method serve a call),
:mod:`~ipcclient.server.callsecurity` (authorizing a call) and
:mod:`~ipcclient.server.call` (what a method receives). Their public names are re-exported
here.

Must not: resolve names or dial (publishing in a mount table goes through an injected
publisher), or let a bug in a user's method reach anything but that call's error.

Only exposed methods are called (``@expose``, or ``serve(obj, methods=[...])``; see
:mod:`ipcclient.server.exposure`). A user method is called as ``method(call, *args)``; it
returns one result, ``None`` for no result, or :class:`Results` for several. Raising an
:class:`~ipcclient.errors.IPCError` sends that error; any other exception (``SystemExit`` and
``KeyboardInterrupt`` too: answered, not raised again) is logged and sent as an UnknownError
carrying its type and message.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.headers import usual_request_within
from ipcclient.security.blessings import Blessings, check_size
from ipcclient.security.discharges import Discharge
from ipcclient.security.principal import Principal
from ipcclient.server.call import Results, ServerCall
from ipcclient.server.capacity import ArgsTotal, WorkerPool
from ipcclient.server.dispatcher import (
    SIGNATURE_METHOD,
    Dispatcher,
    LeafDispatcher,
    arity,
    find_method,
    signature,
    target,
)
from ipcclient.server.exposure import Exposed, exposed_methods, is_marked
from ipcclient.server.flows import FlowServing, Found
from ipcclient.server.options import HEADER_GRACE, HEADER_LIMITS, ServerOptions
from ipcclient.transport.conn import Connection
from ipcclient.transport.manager import Listener, StreamManager

__all__ = [
    "HEADER_GRACE",
    "HEADER_LIMITS",
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


class Server(FlowServing):
    """A threaded RPC server for one principal.

    ``server = Server(principal); endpoint = server.listen("tcp", "127.0.0.1:0");
    server.serve(obj)`` ... ``server.stop()``. Also a context manager.

    Args:
        principal (Principal): who this server is.
        blessings (Blessings | None): the blessings it presents (default: the principal's
            default blessings).
        options (ServerOptions | None): its knobs (default: ``ServerOptions()``).
        publisher: what publishes its names (:meth:`add_name`), or None.
        serves_mount_table: whether it serves a mount table (its endpoints say so).
        discharges: where the discharges for third-party caveats on its own blessings come
            from, asked at each handshake: a function returning them (a client's
            ``Client.discharges_for(blessings)``), or None for none. A client refuses a
            server whose blessings need a discharge it does not present.

    Raises:
        BadArgError: ``principal`` is not a Principal, ``blessings`` are not Blessings
            bound to its key (or it has no default blessings), ``options`` is not a
            ServerOptions, or ``discharges`` is not callable.
    """

    # (principal, blessings and options are typed Any: this checks them itself, so that in
    # the compiled build too a wrong type is a BadArgError, not a TypeError at the boundary.)
    def __init__(
        self,
        principal: Any,
        *,
        blessings: Any = None,
        options: Any = None,
        publisher: Any = None,
        serves_mount_table: bool = False,
        discharges: Any = None,
    ) -> None:
        if discharges is not None and not callable(discharges):
            raise errors.BadArgError(
                "server: discharges must be a function returning discharges (see "
                f"Client.discharges_for), not {type(discharges).__name__}"
            )
        if not isinstance(principal, Principal):
            raise errors.BadArgError(
                f"server: principal must be a Principal, not {type(principal).__name__}"
            )
        if options is not None and not isinstance(options, ServerOptions):
            raise errors.BadArgError(
                f"server: options must be a ServerOptions or None, not {type(options).__name__}"
            )
        if blessings is not None and not isinstance(blessings, Blessings):
            raise errors.BadArgError(
                f"server: blessings must be Blessings or None, not {type(blessings).__name__}"
            )
        self.principal = principal
        self.options = options or ServerOptions()
        chosen = blessings if blessings is not None else principal.store.default
        if chosen is None:
            raise errors.BadArgError(
                "server: the principal has no default blessings; pass blessings="
            )
        if chosen.public_key != principal.public_key:
            raise errors.BadArgError("server: blessings are not bound to the principal's key")
        self.blessings: Blessings = check_size(chosen, "server")
        self._names = tuple(chosen.names)
        self._manager = StreamManager(principal, self.options.transport)
        self._listeners: list[Listener] = []
        self._dispatcher: Dispatcher | None = None
        self._methods: dict[tuple[str, str], Found] = {}
        # (Read by the hand-written header reader only when the header limits admit all it
        # reads: a tighter limit is a choice the server's owner made.)
        self._usual_requests = usual_request_within(self.options.header_limits)
        self._lock = threading.Lock()
        # Calls running or queued, against their bound (a counter under a plain lock: cheaper
        # than a semaphore, which is a Python-level Condition).
        self._slots_lock = threading.Lock()
        self._in_use = 0
        opts = self.options
        max_workers = max(opts.workers, opts.max_workers)
        self._capacity = max_workers + opts.max_queued
        self._peers: dict[object, int] = {}  # calls per remote address (see FlowServing)
        self._args_total = ArgsTotal(opts.max_args_bytes_total)
        self._pool = WorkerPool(opts.workers, max_workers)
        self._root = Context.background().with_cancel()
        self._stopped = False
        self._stopped_event = threading.Event()
        self._pid = os.getpid()  # (stop() in a forked child leaves the parent's parts alone)
        self._publisher = publisher
        self._serves_mount_table = serves_mount_table
        self._discharge_source: Callable[[], Any] | None = discharges
        self.endpoints: list[str] = []

    def _own_discharges(self) -> tuple[Any, ...]:
        """The discharges its auth message carries (see ``discharges``), at each handshake."""
        return _own_discharges_of(self._discharge_source)

    # --- lifecycle ----------------------------------------------------------------------
    # (protocol and address are typed Any: this checks them itself; see __init__.)
    def listen(self, protocol: Any = "tcp", address: Any = "127.0.0.1:0") -> str:
        """Listen on ``address`` (a str, ``host:port`` for tcp) with ``protocol`` (a str)
        and return this server's endpoint string there.

        Raises:
            BadArgError: ``protocol`` or ``address`` is not a str, or is not one the
                transport knows.
            BadStateError: the server is stopped.
        """
        from ipcclient.naming.endpoint import Endpoint  # naming sits below; import lazily

        for what, value in (("protocol", protocol), ("address", address)):
            if not isinstance(value, str):
                raise errors.BadArgError(
                    f"server: listen's {what} must be a str, not {type(value).__name__}"
                )
        with self._lock:
            if self._stopped:
                raise errors.BadStateError("server: stopped")
        listener = self._manager.listen(
            protocol,
            address,
            blessings=self.blessings,
            on_flow=self._on_flow,
            discharges=self._own_discharges,
            max_flows=self.options.max_calls_per_vc,
        )
        ep = Endpoint(
            protocol=protocol,
            address=listener.address,
            blessings=self._names,
            min_version=self.options.transport.versions[0],
            max_version=self.options.transport.versions[1],
            serves_mount_table=self._serves_mount_table,
        )
        if not self._add_listener(listener, str(ep)):
            listener.close()
            raise errors.BadStateError("server: stopped")
        return str(ep)

    def _add_listener(self, listener: Listener, endpoint: str) -> bool:
        """Keep a new listener for :meth:`stop` to close; False (nothing kept) when the server
        stopped meanwhile: stop() took its list of listeners before this one came."""
        with self._lock:
            if self._stopped:
                return False
            self._listeners.append(listener)
            self.endpoints.append(endpoint)
            return True

    # (authorizer is typed Any: this checks it itself; see __init__.)
    def serve(
        self,
        obj: Any,
        authorizer: Any = None,
        *,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Serve ``obj`` at the empty suffix (a :class:`LeafDispatcher`).

        Clients may call only its exposed methods: those named in ``methods`` when given,
        else those decorated with :func:`~ipcclient.expose` (or all the public methods of a
        class decorated with it).

        Raises:
            BadArgError: ``obj`` exposes no method, ``methods`` names something that is
                not a public method of ``obj``, or a method named in ``methods`` or itself
                decorated with :func:`~ipcclient.expose` can never be called as
                ``method(call, *args)`` (no parameter for the call, or a keyword-only
                parameter without a default: see :func:`~ipcclient.server.dispatcher.parameters`).
                Such a method exposed only by ``@expose`` on its class is logged as a
                warning instead, and a client calling it gets BadArg. Or ``authorizer`` is
                neither None nor an :class:`~ipcclient.server.authorizer.Authorizer` (an
                object with a callable ``authorize``; not a class).
            BadStateError: the server already serves.
        """
        _check_authorizer(authorizer)
        if methods is not None:
            obj = Exposed(obj, methods)
        elif not exposed_methods(obj):
            raise errors.BadArgError(
                f"server: {type(obj).__name__} exposes no methods: decorate them (or the "
                "class) with @ipcclient.expose, or pass serve(obj, methods=[...])"
            )
        for name in sorted(exposed_methods(obj)):
            try:
                method = find_method(obj, name)
            except errors.UnknownMethodError:
                # The object holds an attribute of that name itself (a dataclass field whose
                # default is a function, say): a value, not a method; clients cannot call it.
                log.debug(
                    "server: %s.%s is the object's own attribute: not served",
                    type(obj).__name__,
                    name,
                )
                continue
            try:
                arity(target(obj), name, method)
            except errors.BadArgError as exc:
                if methods is not None or is_marked(method):
                    raise  # (named explicitly: a mistake to say at once)
                # A public helper of a class decorated with @expose (``close(self)``, say):
                # the object is served; a client calling it gets BadArg.
                log.warning("%s; a client calling it gets BadArg", exc)
        self.serve_dispatcher(LeafDispatcher(obj, authorizer))

    def serve_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Serve every suffix through ``dispatcher``. A server serves once. The objects the
        dispatcher returns are called only through their exposed methods (see
        :meth:`serve`; a dispatcher may return an :class:`~ipcclient.server.exposure.Exposed`).

        Raises:
            BadArgError: ``dispatcher`` has no callable ``lookup``.
            BadStateError: the server already serves.
        """
        if not callable(getattr(dispatcher, "lookup", None)):
            raise errors.BadArgError(
                "server: serve_dispatcher needs a Dispatcher (an object with a callable "
                f"lookup), not {type(dispatcher).__name__}"
            )
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

    # (The seconds are typed Any: this checks them itself, so that in the compiled build too
    # a wrong type is a BadArgError, not the TypeError of a compiled function's boundary.)
    def stop(self, timeout: Any = 5.0, *, grace: Any = 0.0) -> None:
        """Stop: no new calls (new ones are refused with CanceledError) and no new VCs; the
        published names are unmounted; calls in flight get up to ``grace`` seconds to finish
        and their answers to reach the clients (sent and acknowledged), then the rest are
        cancelled (their clients see Canceled or a broken VC); VCs close;
        worker threads end (waiting at most ``timeout`` for each step). Idempotent; a second
        call while the first waits returns at once.

        Safe from a served method (a "Shutdown" method): that call is one of the calls in
        flight (``grace`` waits for it too, and it is cancelled with the rest; to answer it,
        stop from another thread), and the worker running it is not waited for. Every step
        runs even when one before it fails (the failure is logged); once it returns, or
        raises, the server is stopped and :meth:`wait` returns True.

        Raises:
            BadArgError: ``timeout`` or ``grace`` is not a finite number of seconds >= 0
                (checked before anything stops: ``stop(timeout=None)`` is refused; the
                timeout bounds each step, there is no waiting without a bound).
        """
        if not _seconds(timeout):
            raise errors.BadArgError(
                f"server: stop timeout must be a finite number of seconds >= 0, got {timeout!r}"
            )
        if not _seconds(grace, finite=False):
            raise errors.BadArgError(f"server: grace must be >= 0 seconds, got {grace!r}")
        if os.getpid() != self._pid:
            self._abandon_after_fork()
            return
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            listeners = list(self._listeners)
        steps: list[tuple[str, Callable[[], object]]] = []
        for lst in listeners:  # no new VCs (the VCs already open stay for the grace)
            close = functools.partial(lst.close, close_connections=False, timeout=timeout)
            steps.append(("closing a listener", close))
        if self._publisher is not None:
            steps.append(("unpublishing", functools.partial(self._publisher.stop, timeout)))
        if grace > 0:
            steps.append(
                (
                    "waiting for calls in flight",
                    functools.partial(self._await_idle, grace, listeners),
                )
            )
        steps.append(("cancelling calls", functools.partial(self._root.cancel, "server stopping")))
        steps.append(
            ("closing the VCs", functools.partial(self._close_connections, listeners, timeout))
        )
        steps.append(("ending worker threads", functools.partial(self._pool.shutdown, timeout)))
        interrupted: BaseException | None = None  # (re-raised once every step has run)
        try:
            for what, fn in steps:
                exc = _run_step(what, fn)
                if interrupted is None:
                    interrupted = exc
        finally:
            self._stopped_event.set()
        if interrupted is not None:
            raise interrupted

    def _abandon_after_fork(self) -> None:
        """stop() in a child after fork(): the listeners, VCs and published names are the
        parent's too, so nothing is shut, sent or unmounted; only this process's copies of
        the descriptors are closed (the threads that served them did not survive the fork).
        No lock: a thread of the parent may have held it at the fork."""
        if self._stopped:
            return
        self._stopped = True
        listeners, self._listeners = list(self._listeners), []
        for lst in listeners:
            lst.abandon_after_fork()
        self._stopped_event.set()
        log.debug("server: forgot %d listeners inherited across fork", len(listeners))

    def _close_connections(self, listeners: list[Listener], timeout: float) -> None:
        """Close every VC the ``listeners`` accepted (each one, even if one fails), all
        within ``timeout`` seconds (each VC's close waits a moment for a thread sending on
        it; with many VCs whose peers do not read, the moments must not add up)."""
        deadline = time.monotonic() + timeout
        interrupted: BaseException | None = None
        for lst in listeners:
            for conn in lst.connections:
                left = max(0.0, deadline - time.monotonic())
                exc = _run_step("closing a VC", functools.partial(conn.close, timeout=left))
                if interrupted is None:
                    interrupted = exc
        if interrupted is not None:
            raise interrupted

    def _await_idle(self, grace: float, listeners: list[Listener]) -> None:
        """Wait up to ``grace`` seconds for the calls running or queued to end, and for
        what they answered to be out: a call's slot is given back before its answer is
        written (which may wait for the client's credit), and a method's worker returns
        once its answer is queued or handed to a drainer (a slow peer); closing the VC
        then would lose it."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._slots_lock:
                idle = self._in_use <= 0
            if idle and not any(
                c.answering() or c.sending() for lst in listeners for c in lst.connections
            ):
                return
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def wait(self, timeout: float | None = None, *, grace: float = 5.0) -> bool:
        """Serve until :meth:`stop` is called (from another thread or a signal handler) or
        the process is interrupted (Ctrl-C, which stops the server with ``grace``).

        Returns True once stopped, False when ``timeout`` seconds passed first (any number
        of seconds: it waits in slices).

        Raises:
            BadArgError: ``timeout`` is negative or not a number.
        """
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout >= 0
        ):
            raise errors.BadArgError(f"server: wait timeout must be seconds >= 0, got {timeout!r}")
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:  # (in slices: Ctrl-C is seen, and no wait is too long for the system)
                left = 1.0 if end is None else min(1.0, end - time.monotonic())
                if left <= 0:
                    return self._stopped_event.is_set()
                if self._stopped_event.wait(left):
                    return True
        except KeyboardInterrupt:
            log.info("server: interrupted; stopping (grace %.1f s)", grace)
            self.stop(grace=grace)
            return True

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _own_discharges_of(source: Callable[[], Any] | None) -> tuple[Any, ...]:
    """What ``source`` (``Server(discharges=...)``) gives: its discharges, for a handshake's
    auth message. A source that fails gives none (logged): the handshake goes on, and a
    client that needs a discharge says which one it missed."""
    if source is None:
        return ()
    try:
        got = tuple(source())
    except Exception as exc:  # (the owner's function: it must not fail a handshake)
        log.warning("server: the discharges for its own blessings could not be had: %r", exc)
        return ()
    return tuple(d for d in got if isinstance(d, Discharge))


def _check_authorizer(authorizer: object) -> None:
    """Refuse, when serving starts, an authorizer that could not authorize a call (else
    every call would fail with a bare AttributeError).

    Raises:
        BadArgError: ``authorizer`` is neither None nor an object with a callable
            ``authorize`` (a class, ``AllowEveryone`` rather than ``AllowEveryone()``, is
            refused too).
    """
    if isinstance(authorizer, type):
        raise errors.BadArgError(
            f"server: the authorizer must be an Authorizer instance, not the class "
            f"{authorizer.__name__} (write {authorizer.__name__}(...))"
        )
    if authorizer is not None and not callable(getattr(authorizer, "authorize", None)):
        raise errors.BadArgError(
            "server: the authorizer must be an Authorizer (an object with a callable "
            f"authorize(call)) or None, not {type(authorizer).__name__}"
        )


def _seconds(value: object, *, finite: bool = True) -> bool:
    """Whether ``value`` is a number of seconds >= 0 (not a bool, not NaN; with ``finite``,
    not infinite either)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        return False
    return not finite or math.isfinite(value)


def _run_step(what: str, fn: Callable[[], object]) -> BaseException | None:
    """Run one step of :meth:`Server.stop`: a failure is logged (the next steps run all the
    same); an interruption (Ctrl-C while stopping) is returned, to be raised once every step
    has run."""
    try:
        fn()
    except Exception:
        log.exception("server: stopping: %s failed", what)
    except BaseException as exc:
        log.warning("server: stopping: %s was interrupted (%s)", what, type(exc).__name__)
        return exc
    return None
