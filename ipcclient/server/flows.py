"""Serving the flows a server accepts: admit or refuse each, read its request, authorize
the caller, run the method, answer.

Owns: :class:`FlowServing`, the part of :class:`~ipcclient.server.server.Server` that serves
flows (admission against the server's, the VC's and its remote address's bounds, the inline
path for a request that is all here on arrival, the general path that reads the header and
then the args under their timeouts and budgets, the call's context and trace span, and the
response or error sent back). Must not: listen, publish, or stop the server (``Server``
does), or let a user's method's exception reach anything but that call's error.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipcclient import errors, vtrace
from ipcclient.codec import decode, encode
from ipcclient.context import CancelContext
from ipcclient.headers import Request, Response, decode_usual_request, request_from_wire
from ipcclient.security.principal import Principal
from ipcclient.server.authorizer import Authorizer, CallSecurity
from ipcclient.server.call import Results, ServerCall
from ipcclient.server.callsecurity import authorize_call
from ipcclient.server.capacity import (
    VC_STATE,
    ArgsCharge,
    ArgsTotal,
    VCState,
    WorkerPool,
    hold_args,
)
from ipcclient.server.dispatcher import (
    SIGNATURE_METHOD,
    Dispatcher,
    LeafDispatcher,
    arity,
    find_method,
    signature,
    target,
)
from ipcclient.server.options import HEADER_GRACE, ServerOptions
from ipcclient.stream import MessageStream
from ipcclient.transport.conn import Connection, Flow
from ipcclient.wire.messages import (
    decoded_charge,
    encode_message_parts,
    encode_messages,
    split_bodies,
)

if TYPE_CHECKING:
    from ipcclient.server.server import Server

__all__ = ["MAX_KEPT_METHODS", "FlowServing", "Found"]

log = logging.getLogger("ipcclient.server")

Found = tuple[Callable[..., Any], int, int | None, str, Authorizer | None]
"""What serving a method needs of it (see ``FlowServing._find``): the bound method, its least
and most args (None: any), the suffix as the dispatcher saw it, the authorizer."""
MAX_KEPT_METHODS = 256
"""Methods (per suffix spelling) a server serving one object keeps found."""

_ABORTS = (errors.CanceledError, errors.TimeoutError, errors.ConnectionFailedError)
"""The errors a call's method or args reading raises when the call was cancelled or timed
out: the answer then says why the call ended (see ``ServerCall.ended_error``)."""

_PLAIN_REQUEST_KEYS = frozenset({"suffix", "method", "nargs", "deadline", "trace"})
"""The keys of a request header the inline fast path takes (no grant, no discharges)."""
_END_OF_ARGS_BODY = encode(Request(end_stream_args=True).to_wire())
"""How this package's clients encode the end of args (compared before decoding one)."""


def _is_end_of_args(value: object) -> bool:
    """Whether a decoded message is exactly the end of args, ``{"end_stream_args": true}``
    (``true`` itself: a 1 or 1.0, equal to True in Python, is not; the general way refuses
    those)."""
    return type(value) is dict and len(value) == 1 and value.get("end_stream_args") is True


class FlowServing:
    """The flow-serving half of a server; :class:`~ipcclient.server.server.Server` sets
    every attribute below in its constructor."""

    options: ServerOptions
    principal: Principal
    _names: tuple[str, ...]
    _dispatcher: Dispatcher | None
    _methods: dict[tuple[str, str], Found]
    _usual_requests: bool
    _slots_lock: threading.Lock
    _in_use: int
    _capacity: int
    _peers: dict[object, int]
    """Calls running or queued per remote address (a VC's ``VCState.peer``), under the slot
    lock; an address is in it only while it has one."""
    _args_total: ArgsTotal
    _pool: WorkerPool
    _root: CancelContext
    _stopped: bool

    def _on_flow(self, flow: Flow) -> Callable[[], None] | None:
        """A client opened a flow (reader thread): run it there, hand it to a worker, or
        refuse it at once (OverloadedError) when the server, the flow's VC or the VCs from
        its remote address are over a bound.

        A call whose whole request is already here (the client closed its side: a unary
        call) runs on the VC's reader thread when the VC allows it (``inline_calls``): no
        hop to a worker. If it runs long, the VC gets a helper reader (see
        ``transport.conn.INLINE_HANDOFF``), so other calls and cancellation still flow.
        """
        if self._stopped:
            flow.cancel(errors.CanceledError("server: stopping"))
            return None
        conn = flow.connection
        vc: VCState | None = conn.cache.get(VC_STATE)
        if vc is None:  # (only this VC's reader runs this: no race)
            vc = conn.cache[VC_STATE] = VCState(_remote_address(conn))
        done = flow.peer_done
        opts = self.options
        refused: str | None = None
        peers = self._peers
        peer = vc.peer
        with self._slots_lock:
            from_peer = peers.get(peer, 0)
            if self._in_use >= self._capacity:
                refused = f"server: {self._capacity} calls running or queued; try again later"
            elif vc.calls >= 2 * opts.max_calls_per_vc:
                # (Its open flows are held to max_calls_per_vc by the mux, as announced;
                # these are calls the client ended whose methods still run.)
                refused = (
                    f"server: this VC has {vc.calls} calls running, at least half of them "
                    "ended by the client; try again later"
                )
            elif (
                from_peer >= opts.max_calls_per_address
                # Calls of this VC whose flows have ended for the client (it reset them, or
                # we did) while their methods still run do not count here (they count
                # toward the bound above): the client opens a flow in their place as soon as
                # the old one is over for it, within the limit announced to it.
                and from_peer - max(0, vc.calls - (conn.inbound_flows - 1))
                >= opts.max_calls_per_address
            ):
                refused = (
                    f"server: this client's address has {opts.max_calls_per_address} calls "
                    "running; try again later"
                )
            else:
                self._in_use += 1
                vc.calls += 1
                peers[peer] = from_peer + 1
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

    def _serve_flow(self, flow: Flow, vc: VCState) -> None:
        """Serve one call (a worker, or the VC's reader thread for an inline job). A request
        that is all here and the usual one (a plain header, its args, the end of args) is
        split at once and run without reading the flow message by message; anything else
        takes the general way, which also answers every malformed request. Either way the
        caller is authorized before any arg is decoded (the general way: before any arg is
        read)."""
        # The call's slot, the bytes of args charged to it by the whole way, then any
        # ArgsCharge of the call (the general way's, what decoding may cost): given back
        # (emptied) by _end_slot before the call's last frame goes out, else at the end.
        slot: list[Any] = [vc, 0]
        try:
            parsed = self._parse_whole_request(flow)
            if parsed is None:
                if flow.error is not None:  # reset, or its VC broke, before it could run
                    return
                opts = self.options
                charge = ArgsCharge(
                    self._slots_lock,
                    vc,
                    opts.max_args_bytes_per_vc,
                    opts.max_args_bytes,
                    self._args_total,
                )
                slot.append(charge)
                self._run_call(flow, MessageStream(flow), vc, charge, slot)
                return
            request, bodies = parsed
            flow.discard_received()
            if bodies:  # (held at once, as the general way charges each arg as it comes)
                size = sum(map(len, bodies))
                limit = self.options.max_args_bytes_per_vc
                refused = hold_args(self._slots_lock, vc, limit, self._args_total, size)
                if refused is not None:
                    self._end_slot(slot)
                    flow.cancel(refused)  # (reset, as the general way's _read_args)
                    return
                slot[1] = size
            self._run_parsed(flow, None, request, bodies, slot)
        except BaseException:  # a method's SystemExit must not take its thread or VC down
            log.exception("server: unexpected failure serving a flow")
        finally:
            try:
                if slot:  # (not given back yet: see _end_slot, before the last frame)
                    self._end_slot(slot)
            finally:
                flow.close()

    def _end_slot(self, slot: list[Any]) -> None:
        """Give back a call's slot (see ``_serve_flow``) unless it was given back already.
        Each final frame of a call (its results or error with FIN, or a RESET) goes out
        after this: a client that sees its call end and opens a new flow at once, within
        the limit announced to it, must not find the old call still counted."""
        if slot:
            vc, held, *charges = slot
            slot.clear()
            self._release_slot(vc, held)
            for charge in charges:
                charge.release()

    def _parse_whole_request(self, flow: Flow) -> tuple[Request, list[bytes]] | None:
        """The request and the args' bodies (not decoded) of a flow whose peer is done and
        that has not failed, when they are the usual ones (ending with the end of args) and
        within bounds; None for the general way (nothing read)."""
        data = flow.received_all()
        if data is None or len(data) > self.options.max_args_bytes:
            return None
        try:
            bodies = split_bodies(data)
            if not bodies:
                return None
            request = decode_usual_request(bodies[0]) if self._usual_requests else None
            if request is None:
                header = decode(bodies[0], self.options.header_limits)
                if type(header) is not dict or not header.keys() <= _PLAIN_REQUEST_KEYS:
                    return None
                request = request_from_wire(header)
            if len(bodies) != request.nargs + 2:
                return None
            last = bodies[-1]
            if last != _END_OF_ARGS_BODY and not _is_end_of_args(decode(last)):
                return None
            return request, bodies[1:-1]
        except errors.BadProtocolError:
            return None

    def _release_slot(self, vc: VCState, held: int = 0) -> None:
        """Give back a call's slot (the server's, its VC's, its address's) and the ``held``
        bytes of args charged for it (to its VC, its address and the server). Every admitted
        flow comes here once, however it ends: see ``_on_flow`` and ``_serve_flow``."""
        peers = self._peers
        peer = vc.peer
        with self._slots_lock:
            self._in_use -= 1
            vc.calls -= 1
            left = peers.get(peer, 0) - 1
            if left > 0:
                peers[peer] = left
            else:  # (an address is kept only while it has calls: no entry outlives its VCs)
                peers.pop(peer, None)
            if held:  # (ArgsTotal.release_locked, inline: this runs once per call)
                vc.args_held -= held
                total = self._args_total
                total.held -= held
                by_peer = total.by_peer
                left = by_peer.get(peer, 0) - held
                if left > 0:
                    by_peer[peer] = left
                else:
                    by_peer.pop(peer, None)

    def _run_call(
        self,
        flow: Flow,
        stream: MessageStream,
        vc: VCState,
        charge: ArgsCharge,
        slot: list[Any],
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
                    self._end_slot(slot)
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
            self._answer_error(flow, exc, slot=slot)
            return
        finally:
            if waiting:
                with self._slots_lock:
                    vc.headerless -= 1
        self._run_parsed(flow, stream, request, None, slot)

    def _run_parsed(
        self,
        flow: Flow,
        stream: MessageStream | None,
        request: Request,
        bodies: list[bytes] | None,
        slot: list[Any],
    ) -> None:
        """Run a call whose header is read, and answer it: ``bodies`` are its args' bodies
        when the whole request was here (``stream`` is then None), else None and the args
        are read from ``stream`` once the caller is authorized. The call's context is made
        only if its method asks for it (see :class:`ServerCall`); its trace span at once
        only when the client collects."""
        span: vtrace.Span | None = None
        trace = request.trace
        if trace is not None and trace.flags & vtrace.COLLECT:  # continue the client's trace
            span = vtrace.new_span(
                self._root,
                f"{request.suffix!r}.{request.method}",
                trace_id=trace.trace_id,
                parent_id=trace.span_id,
                collect=True,
            )
        deadline = None if request.deadline is None else time.monotonic() + request.deadline
        server: Server = self  # type: ignore[assignment]  # (the mixin of Server)
        call = ServerCall(flow, stream, request, server, self._root, deadline, span)
        try:
            self._run_request(call, flow, stream, request, bodies, deadline, slot)
        finally:
            call.end()

    def _run_request(
        self,
        call: ServerCall,
        flow: Flow,
        stream: MessageStream | None,
        request: Request,
        bodies: list[bytes] | None,
        deadline: float | None,
        slot: list[Any],
    ) -> None:
        try:
            method, call.security = self._prepare(flow, request)
            args: list[Any] | None
            if bodies is not None:
                for body in bodies:
                    if len(body) > 1 and 0x60 <= body[0] < 0xE0:  # (text, array, map, tag)
                        walked = self._hold_decoded(flow, bodies, slot)
                        args = [decode(b, walked=w) for b, w in zip(bodies, walked, strict=True)]
                        break
                else:
                    args = [decode(body) for body in bodies]
            else:
                assert stream is not None
                args = self._read_args(call, flow, stream, request, slot)
                if args is None:
                    return  # (the flow was reset)
                stream.set_budget(None)
            over = call.ended_error()
            if over is not None:
                raise over
            value = method(call, *args)
            results: Sequence[Any]
            if value is None:
                results = ()
            elif isinstance(value, Results):
                results = value.values
            elif isinstance(value, _NOT_RESULTS):
                raise _not_results(request.method, value)
            else:
                results = (value,)
        except errors.IPCError as exc:
            err: errors.IPCError
            if exc is call.unsendable:  # (an item the method streamed could not be encoded)
                err = errors.InternalError(f"server: cannot encode a streamed result: {exc.msg}")
            else:
                err = (call.ended_error() or exc) if isinstance(exc, _ABORTS) else exc
            self._answer_error(flow, err, _spans(call.span), slot)
            return
        except BaseException as exc:  # (SystemExit, KeyboardInterrupt too: see _unknown)
            log.exception("server: %s.%s raised", request.suffix, request.method)
            self._answer_error(flow, _unknown(exc), _spans(call.span), slot)
            return
        n = len(results)
        span = call.span
        spans = () if span is None else _spans(span)
        try:
            if spans:  # (inside the try: span notes are text an application wrote)
                head = encode_messages(
                    Response(end_stream_results=True, nresults=n, trace=spans).to_wire()
                )
            else:
                head = _END_MESSAGES[n] if n < len(_END_MESSAGES) else _end_message(n)
            bound, late = self._send_bound(deadline)
            data = encode_message_parts(*results, head=head)
            if len(slot) == 2:  # (_end_slot, inline, for the usual call: once per call)
                vc, held_bytes = slot
                slot.clear()
                self._release_slot(vc, held_bytes)
            elif slot:
                self._end_slot(slot)
            flow.write(data, end=True, deadline=bound, late=late)
        except errors.BadArgError as exc:
            err = errors.InternalError(f"server: cannot encode results: {exc.msg}")
            self._answer_error(flow, err, slot=slot)
        except errors.IPCError as exc:
            log.debug("server: could not send results: %s", exc)

    def _hold_decoded(self, flow: Flow, bodies: list[bytes], slot: list[Any]) -> list[bool]:
        """Charge what a whole request's args (their bytes already held) may cost decoded
        beyond their bytes (``decoded_charge``: many small items), as the general way's
        reader charges each arg, once the caller is authorized; the charge is added to the
        call's ``slot``, given back with it (see ``_serve_flow``). Returns, for each arg,
        whether its heads were walked to count its items (``decode``'s ``walked``).

        Raises:
            OverloadedError: over the call's, its VC's, its address's or the server's bound.
            BadProtocolError: an arg is malformed (found counting its items).
        """
        extra = 0
        walked: list[bool] = []
        for body in bodies:
            more, counted = decoded_charge(body)
            extra += more
            walked.append(counted)
        if not extra:
            return walked
        vc: VCState = flow.connection.cache[VC_STATE]
        opts = self.options
        charge = ArgsCharge(
            self._slots_lock,
            vc,
            opts.max_args_bytes_per_vc,
            opts.max_args_bytes - sum(map(len, bodies)),  # (those bytes are held already)
            self._args_total,
        )
        charge.take(extra)
        slot.append(charge)
        return walked

    def _read_args(
        self,
        call: ServerCall,
        flow: Flow,
        stream: MessageStream,
        request: Request,
        slot: list[Any],
    ) -> list[Any] | None:
        """Read an authorized call's args, within ``args_timeout`` (or the call's deadline,
        if sooner). A call whose args do not come in time, or whose VC holds too many bytes
        of args, has its flow reset at once with that error (None is returned): nothing is
        written to a client that may not be reading."""
        bound = time.monotonic() + self.options.args_timeout
        deadline = call.deadline
        until = bound if deadline is None else min(deadline, bound)
        stream.count_only(request.nargs)  # (the end of args and any streamed item are not args)
        try:
            return [stream.recv(until) for _ in range(request.nargs)]
        except errors.TimeoutError:
            if until != bound or call.ended_error() is not None:  # the call's own deadline
                raise
            err: errors.IPCError = errors.TimeoutError(
                f"server: the call's args did not arrive within {self.options.args_timeout} s"
            )
        except errors.OverloadedError as exc:
            err = exc
        self._end_slot(slot)
        flow.cancel(err)
        return None

    def _prepare(self, flow: Flow, request: Request) -> tuple[Callable[..., Any], CallSecurity]:
        """Find the method and authorize the caller for it (raises the error to answer):
        everything a call needs that does not depend on its args, so an unauthorized caller
        is refused before any of its args is read."""
        key = (request.suffix, request.method)
        found = self._methods.get(key)
        if found is None:
            found = self._find(request)
        method, lo, hi, suffix, authorizer = found
        security = authorize_call(
            flow.connection, request, suffix, authorizer, self.principal, self._names
        )
        nargs = request.nargs
        if nargs < lo or (hi is not None and nargs > hi):
            expected = str(lo) if hi == lo else f"{lo}..{'any' if hi is None else hi}"
            raise errors.BadArgError(
                f"server: {request.method} takes {expected} arguments, got {nargs} "
                "(wrong number of input arguments)"
            )
        return method, security

    def _find(self, request: Request) -> Found:
        """What :meth:`_prepare` needs of the object served at the request's suffix: the
        method, its arity, the suffix and the authorizer (raises the error to answer). Kept
        per suffix and method when the dispatcher serves one fixed object (``serve``), whose
        exposed methods are fixed (see ``exposure.exposed_methods``)."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            raise errors.UnknownSuffixError("server: nothing is served yet")
        suffix = request.suffix.lstrip("/")
        obj, authorizer = dispatcher.lookup(suffix)
        method: Callable[..., Any]
        hi: int | None
        if request.method == SIGNATURE_METHOD:
            listing = signature(obj)
            method, lo, hi = (lambda call: listing), 0, 0
        else:
            method = find_method(obj, request.method)
            lo, hi = arity(target(obj), request.method, method)
        found = (method, lo, hi, suffix, authorizer)
        if type(dispatcher) is LeafDispatcher and len(self._methods) < MAX_KEPT_METHODS:
            self._methods[(request.suffix, request.method)] = found
        return found

    def _send_bound(self, deadline: float | None) -> tuple[float, str]:
        """A send never waits long on a client that grants no credit: the call's
        ``deadline`` or ``options.send_timeout`` from now, whichever comes first; with, when
        it is ``send_timeout``, what the flow's reset says when it passes (the client must
        not take it for its own deadline)."""
        timeout = self.options.send_timeout
        bound = time.monotonic() + timeout
        if deadline is not None and deadline <= bound:
            return deadline, ""
        return bound, f"server: the client read nothing for send_timeout ({timeout:g} s)"

    def _answer_error(
        self,
        flow: Flow,
        err: errors.IPCError,
        trace: tuple[Any, ...] = (),
        slot: list[Any] | None = None,
    ) -> None:
        """Send ``err`` as the call's answer. An error whose wire form cannot be encoded (or
        that a client would refuse: its params are not plain values, its message is not
        text or is over the message limit) is sent as :func:`_sendable`'s stand-in for it,
        logged at warning: the client always gets an error it can read."""
        try:
            data = _encode_error(err, trace)
        except Exception as exc:  # (BadArgError; or a broken IPCError subclass)
            data = _encode_fallback(err, trace, exc)
        if slot is not None:
            self._end_slot(slot)
        try:
            bound, late = self._send_bound(None)
            flow.write(data, end=True, deadline=bound, late=late)
        except errors.IPCError as exc:
            log.debug("server: could not send error %s: %s", err.id, exc)


def _remote_address(conn: Connection) -> str | None:
    """The remote IP address of an accepted VC, as the listener's per-address bound of
    pending handshakes spells it (the host part of the socket's peer name); None for a VC
    that is its own peer: over a Unix socket (whose peers all share one address), or whose
    address cannot be read (its socket is closed already: it serves nothing more).

    Read once per VC, on its first flow. The transport does not keep an accepted VC's
    address, so this asks its socket."""
    sock = conn._sock
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        peer = sock.getpeername()
    except OSError:
        return None
    host = peer[0] if isinstance(peer, tuple) and peer else None
    return host if isinstance(host, str) and host else None


def _unknown(exc: BaseException) -> errors.UnknownError:
    """What a client gets for a method's (or an authorizer's) exception that is not an
    :class:`~ipcclient.errors.IPCError`: ``ipc.Unknown`` with its type and message.

    ``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit`` are answered the same way and
    not raised again: on a worker thread they would end only that thread (``sys.exit()``
    never ends the process from there), and an answered call is all the caller can be told.
    A method that means to stop the server calls ``call.server.stop()``."""
    try:
        detail = str(exc)
    except Exception:
        detail = "(its message could not be read)"
    return errors.UnknownError(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def _encode_error(err: errors.IPCError, trace: tuple[Any, ...]) -> list[bytes]:
    """The messages that answer a call with ``err`` (raises BadArgError when its wire form
    cannot be encoded, or is one a client would refuse as malformed)."""
    wid, msg = err.id, err.msg
    if type(wid) is not str or not wid or len(wid) > errors.MAX_WIRE_ID_LEN:
        raise errors.BadArgError(
            f"server: the error's ID is not {errors.MAX_WIRE_ID_LEN} chars of text"
        )
    if type(msg) is not str:
        raise errors.BadArgError(f"server: the error's message is a {type(msg).__name__}")
    return encode_message_parts(Response(error=err, end_stream_results=True, trace=trace).to_wire())


def _encode_fallback(err: errors.IPCError, trace: tuple[Any, ...], why: Exception) -> list[bytes]:
    """The messages that answer a call with a stand-in for ``err``, whose wire form could
    not be encoded (``why``): :func:`_sendable`'s, else without the trace, else without the
    params, else a plain ``ipc.Internal``. Logged at warning."""
    last = errors.InternalError("server: the method's error could not be sent")
    try:
        fallback = _sendable(err)
        tries = [
            (fallback, trace),
            (fallback, ()),
            (errors.IPCError(fallback.msg, id=fallback.id, action=fallback.action), ()),
        ]
    except Exception:
        fallback, tries = last, []
    log.warning(
        "server: cannot send error %s as it is (%s: %s); sending %r instead",
        _safe_repr(err),
        type(why).__name__,
        why.msg if isinstance(why, errors.IPCError) else _safe_repr(why),
        fallback,
    )
    for candidate, spans in tries:
        try:
            return _encode_error(candidate, spans)
        except Exception:
            continue
    return _encode_error(last, ())


def _safe_repr(value: object) -> str:
    try:
        return repr(value)[:200]
    except Exception:
        return f"<{type(value).__name__}>"


def _sendable(err: errors.IPCError) -> errors.IPCError:
    """A stand-in for an error whose wire form cannot be encoded: the same ID and retry
    action when they can travel (else ``ipc.Internal``), its message as text (characters
    that cannot be encoded escaped, ``\\udc80``; cut at ``errors.MAX_WIRE_MSG_LEN``, which
    is all a client keeps), and its params only when they can be encoded."""
    msg = err.msg if type(err.msg) is str else repr(err.msg)
    if len(msg) > errors.MAX_WIRE_MSG_LEN:
        msg = msg[: errors.MAX_WIRE_MSG_LEN - 30] + f" ... ({len(msg)} chars in all)"
    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(msg) > errors.MAX_WIRE_MSG_LEN:
        msg = msg[: errors.MAX_WIRE_MSG_LEN - 30] + " ... (cut)"
    params: tuple[Any, ...] = ()
    try:
        encode(list(err.params[: errors.MAX_WIRE_PARAMS]))
        params = err.params[: errors.MAX_WIRE_PARAMS]
    except errors.BadArgError:
        msg = msg[: errors.MAX_WIRE_MSG_LEN - 40] + " (params not sent: not plain values)"
    wid = err.id
    action = err.action if isinstance(err.action, errors.RetryAction) else None
    if (
        type(wid) is str
        and 0 < len(wid) <= errors.MAX_WIRE_ID_LEN
        and wid.isprintable()
        and wid.isascii()
    ):
        return errors.IPCError(msg, *params, id=wid, action=action)
    return errors.InternalError(f"server: an error with an unsendable ID: {msg}", *params)


_NOT_RESULTS = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
"""What a method returns by mistake: a generator (it used ``yield``) or a coroutine (it was
written ``async def``)."""


def _not_results(method: str, value: Any) -> errors.InternalError:
    """The error for a method that returned one of :data:`_NOT_RESULTS` (closed here, so
    Python does not warn that a coroutine was never awaited)."""
    if isinstance(value, types.AsyncGeneratorType):
        value.aclose().close()
        kind, fix = "an async generator", "write it with def, and stream with call.send(item)"
    else:
        value.close()
        if isinstance(value, types.CoroutineType):
            kind, fix = "a coroutine", "the server runs methods on threads: write it with def"
        else:
            kind, fix = (
                "a generator",
                (
                    "stream results with call.send(item) inside the method and return the final "
                    "results"
                ),
            )
    return errors.InternalError(f"server: {method} returned {kind}; {fix}")


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
