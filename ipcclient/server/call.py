"""What a server method receives and returns: :class:`ServerCall` and :class:`Results`.

Owns: a call's view for the user's method (its context, made when first asked for, security
facts, the client's streamed args and the results it streams back). Must not: authorize,
look up methods, or answer the call (the flow-serving code answers it once the method
returns).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ipcclient import errors, vtrace
from ipcclient.context import CancelContext, Context
from ipcclient.headers import Request, Response, request_from_wire
from ipcclient.security.blessings import Blessings
from ipcclient.server.authorizer import CallSecurity
from ipcclient.stream import MessageStream
from ipcclient.transport.conn import Flow
from ipcclient.wire.messages import encode_message_parts, encode_messages

if TYPE_CHECKING:
    from ipcclient.server.server import Server

__all__ = ["Results", "ServerCall"]

_STREAM_ITEM_MESSAGE = encode_messages(Response().to_wire())
"""The empty response header before each streamed result, encoded once."""
_CALL_FINISHED = errors.CanceledError("call finished")
"""What a call's context ends with once the call is over (a prototype: see
:meth:`CancelContext.cancel_with`)."""
_MAKING = threading.Lock()
"""Held while a call's context is made (rare: only when a method asks for it), so two
threads asking at once get the same one."""


class Results:
    """Several results from one method: ``return Results(a, b)``."""

    __slots__ = ("values",)

    def __init__(self, *values: Any) -> None:
        self.values = values


class ServerCall:
    """What a server method gets: the call's context, security facts, and streaming.

    ``recv`` / iteration read the client's streamed args; ``send`` streams results back.
    Belongs to the worker running the call; do not share it across threads.
    """

    security: CallSecurity
    """The call's security facts (set once the caller is authorized, before the method runs)."""

    def __init__(
        self,
        flow: Flow,
        stream: MessageStream | None,
        request: Request,
        server: Server,
        root: Context,
        deadline: float | None,
        span: vtrace.Span | None = None,
    ) -> None:
        """Internal: the server makes one per call. ``stream``: the call's messages after
        the request header, or None when the whole request was here and read (its args are
        passed to the method; :meth:`recv` has nothing more to read); ``root``: the server's
        context (calls end when it does); ``deadline``: the call's, a ``time.monotonic()``
        value or None; ``span``: the call's trace span when it is made at once (the client
        collects the trace), else it is made with the context."""
        self._flow = flow
        self._stream = stream
        self.request = request
        self.server = server
        self._root = root
        self._deadline = deadline
        self.span = span
        """The call's trace span, if one was made (the client collects the trace, or the
        method asked for its context)."""
        self._ctx: CancelContext | None = None
        self._ended = False
        self._recv_done = stream is None
        self.unsendable: errors.IPCError | None = None
        """(For the server.) The error :meth:`send` raised for an item it could not encode:
        if the method lets it escape, the client is told the server failed (InternalError),
        not that its own argument was bad."""

    # -- the call's context, made on first use ------------------------------------------
    #
    # Most methods never look at their context: making one per call (a cancellable child of
    # the server's, carrying the trace span, cancelled by the client's reset) is the
    # largest piece of a small call's work on the server. So the deadline, the cancellation
    # state and the span are kept here and the context is made the first time a method
    # asks; it is then exactly what it would have been from the start: past its deadline,
    # or cancelled (the client reset the flow, its VC broke, the server stopped, or the
    # call is over) if that already happened. A span made then starts then.

    @property
    def context(self) -> Context:
        """The call's context: its deadline, cancelled when the client cancels or resets
        the call, when the server stops, and once the call is over; it carries the call's
        trace span (``vtrace.current_span``) and is the parent for nested calls."""
        ctx = self._ctx
        return ctx if ctx is not None else self._make_context()

    @property
    def deadline(self) -> float | None:
        """The call's deadline (a ``time.monotonic()`` value), or None for none; reading it
        makes no context."""
        return self._deadline

    def remaining(self) -> float | None:
        """Seconds until the call's deadline, clamped at 0; None when it has none."""
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _make_context(self) -> Context:
        with _MAKING:
            ctx = self._ctx
            if ctx is not None:
                return ctx
            span = self.span
            trace = self.request.trace
            if span is None and trace is not None:  # (not collected: see __init__)
                span = self.span = vtrace.new_span(
                    self._root,
                    f"{self.request.suffix!r}.{self.request.method}",
                    trace_id=trace.trace_id,
                    parent_id=trace.span_id,
                    collect=False,
                )
            root = self._root
            made = CancelContext(
                root,
                clock=root.clock,
                deadline=self._deadline,
                item=None if span is None else vtrace.span_item(span),
                cancellable=True,
            )
            self._ctx = made
        # (end() sets _ended, then reads _ctx; here the reverse: one of them cancels it.)
        if self._ended:
            made.cancel_with(_CALL_FINISHED)
        else:  # (at once when the flow is already reset)
            self._flow.set_abort_callback(lambda err: made.cancel_with(_client_ended(err)))
        return made

    def ended_error(self) -> errors.IPCError | None:
        """Why the call cannot go on, or None: what its context's ``err()`` says (the
        client reset the flow or its VC broke, the deadline passed, the server stopped),
        without making one."""
        ctx = self._ctx
        if ctx is not None:
            return ctx.err()
        err = self._flow.error
        if err is not None:
            return _client_ended(err)
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            return errors.TimeoutError("context deadline exceeded")
        root = self._root
        return root.err() if root.done() else None

    def end(self) -> None:
        """The call is over (the server, once it answered): its context, if made, is
        cancelled; one made from now on is born cancelled."""
        self._ended = True
        ctx = self._ctx
        if ctx is not None:
            ctx.cancel_with(_CALL_FINISHED)

    @property
    def suffix(self) -> str:
        """The object name relative to the server, as the dispatcher saw it: a leading
        ``/`` of the request's suffix is ignored (docs/protocol.md 5.2)."""
        return self.request.suffix.lstrip("/")

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
            EndOfStreamError: the client sent the end of its items (also an ``EOFError``).
            BadProtocolError: the client closed its send side without it, or in the middle
                of an item (a stream cut short: the method should not take it as whole).
            CanceledError / TimeoutError: the call was cancelled or its deadline passed.
        """
        stream = self._stream
        if stream is None or self._recv_done:
            raise errors.EndOfStreamError("server: the client sent no more items")
        ended = self.ended_error()  # (items already received are not handed out after it)
        if ended is not None:
            raise ended
        try:
            header = request_from_wire(stream.recv(self._deadline))
            if not header.end_stream_args:
                if not header.is_stream_item:
                    raise errors.BadProtocolError("server: expected a streaming header")
                return stream.recv(self._deadline)
        except errors.EndOfStreamError:
            # The client closed its side without the end of its items (a cut stream): the
            # method must not take what came for all of it.
            raise errors.BadProtocolError(
                "server: the client closed its send side before the end of its items"
            ) from None
        except errors.ConnectionFailedError:
            root = self._root.err()  # (the server stopped: its close of the VC woke us)
            if root is not None:
                raise root from None
            raise
        self._recv_done = True
        raise errors.EndOfStreamError("server: the client sent no more items")

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except errors.EndOfStreamError:
                return

    def send(self, item: Any) -> None:
        """Stream ``item`` to the client (blocks while the client's window is full, at most
        until the call's deadline or the server's ``send_timeout``).

        Raises:
            BadArgError: ``item`` cannot be encoded or is over the message limits; nothing
                was sent and the call goes on (a method that lets it escape fails the call
                with InternalError: the server's fault, not the client's).
            TimeoutError: the client read nothing until the deadline or ``send_timeout``
                (the call is then reset, saying which).
            CanceledError / the client's error: the call ended (the server's stop, for a
                send its close of the VC cut short: as :meth:`recv`).
        """
        try:
            data = encode_message_parts(item, head=_STREAM_ITEM_MESSAGE)
        except errors.BadArgError as exc:
            self.unsendable = exc
            raise
        deadline, late = self.server._send_bound(self._deadline)
        try:
            self._flow.write(data, deadline=deadline, streamed=True, late=late)
        except errors.ConnectionFailedError:
            root = self._root.err()  # (the server stopped: its close of the VC woke us)
            if root is not None:
                raise root from None
            raise


def _client_ended(err: errors.IPCError) -> errors.IPCError:
    """What a call's context ends with when its flow was reset or its VC broke: the
    client's deadline passing (its reset carries a TimeoutError) stays a TimeoutError;
    anything else is a cancel."""
    if isinstance(err, errors.TimeoutError):
        return errors.TimeoutError(f"client: {err.msg}")
    return errors.CanceledError(f"client: {err.msg}")
