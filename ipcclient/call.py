"""The client side of one RPC in flight: the call object.

Owns: :class:`Call` — Veyron's ``flowClient``: streaming args (``send``) and results
(``recv``, iteration), ``close_send``, ``finish`` (implicit close_send, the final response
header, the server's error raised as its own exception, the results), ``cancel``, the
context-manager and finalizer behaviour, and invalidating discharges the server refused.

Must not: resolve, dial, retry, or authorize (the client did all that before the call object
exists; by then the request header and args are written).

Thread contract: a Call belongs to one thread at a time, except :meth:`Call.cancel`, which any
thread (or a context callback) may call at any time, and except that one thread may send
(``send``, ``close_send``) while one other receives (``recv``, iteration): the two sides share
only state guarded by ``_lock`` or written once before the call ends. Each side has a lock of
its own, held while it works (``_send_lock``, ``_recv_lock``): a second thread on the same
side is refused with BadStateError instead of interleaving its bytes or its reads with the
first's. ``finish`` first closes the send side (waiting for a ``send`` in progress), then
reads as the receiving side does: it waits for a ``recv`` in progress in another thread to
return (and a ``recv`` while it runs is refused). It comes after the receiving thread has
read the end of the stream (join that thread first): called while the server still streams,
it cancels the call (BadStateError), as a finish with unread items does. Lock order:
``_recv_lock``, then ``_send_lock``, then ``_lock`` (held for no I/O). The context is looked
at under the first two without running its callbacks (``Context.peek_err``), and finish
releases the call (its ``on_done``, which may end the call's own context) after letting
``_recv_lock`` go; a callback that a send or recv runs all the same (ending the call on an
error releases it there) and that calls ``finish`` on this call is refused with
BadStateError instead of waiting for its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from threading import get_ident
from typing import Any

from ipcclient import errors, vtrace
from ipcclient.context import SYSTEM_CLOCK, CallbackHandle, Context
from ipcclient.headers import Request, Response, response_from_wire
from ipcclient.security.discharges import Discharge, DischargeCache
from ipcclient.stream import MessageStream
from ipcclient.wire.messages import (
    MessageReader,
    encode_message_parts,
    encode_messages,
    split_messages,
)

__all__ = ["Call", "finish_unary"]

log = logging.getLogger("ipcclient.call")

MAX_RESULTS_BYTES = 64 * 1024 * 1024
"""Total size of one call's results (all held at once by ``finish``); a single value is
bounded by the codec's 4 MiB."""


class Call:
    """One RPC in flight (see the module docstring). Made by :meth:`Client.start_call`."""

    def __init__(
        self,
        ctx: Context,
        stream: MessageStream,
        *,
        name: str,
        method: str,
        server: str,
        discharges: tuple[Discharge, ...] = (),
        discharge_cache: DischargeCache | None = None,
        fetch_problems: Sequence[str] = (),
        on_done: Callable[[Call], None] | None = None,
        on_abandon: Callable[[Any], None] | None = None,
        on_trace: Callable[[tuple[Any, ...]], None] | None = None,
        owner: object = None,
    ) -> None:
        self.context = ctx
        self._owner = owner  # (the client: a call in use keeps it, and so its VCs, alive)
        self._stream = stream
        self.name = name
        self.method = method
        self.server = server
        self._discharges = discharges
        self._discharge_cache = discharge_cache
        self._fetch_problems = tuple(fetch_problems)  # discharges that could not be fetched
        self._on_done = on_done
        self._on_abandon = on_abandon
        self._on_trace = on_trace
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # held by the thread sending (see the module doc)
        self._recv_lock = threading.Lock()  # held by the thread receiving, or finishing
        self._unary = False  # made by Client.call, which reads its results alone
        self._sending = 0  # the thread holding _send_lock (threading.get_ident()), or 0
        self._receiving = 0  # the thread holding _recv_lock, or 0
        self._send_closed = False
        self._finished = False
        self._ended = False  # finished, cancelled, or failed: the flow is released
        self._response: Response | None = None  # the final header, once read
        self._budgeted = False  # the results' budget is set (set it once: it is a count)
        self._cancel_error: errors.IPCError | None = None
        self._end_error: errors.IPCError | None = None  # what else ended it (see _mark)
        # The deadline the transport waits for, on time.monotonic (the context's own, unless
        # it is on an injected clock: converted once, here).
        deadline = ctx.deadline
        if deadline is not None and ctx._clock is not SYSTEM_CLOCK:
            deadline = ctx.monotonic_deadline()
        self._deadline = deadline
        # The context must not keep a dropped call alive (so its finalizer can run): hold the
        # call weakly from the callback.
        ref = weakref.ref(self)

        def on_context_done(err: errors.IPCError) -> None:
            call = ref()
            if call is not None:
                call._on_context_done(err)

        self._ctx_handle: CallbackHandle | None = None  # (the callback may run right away)
        handle = ctx.add_done_callback(on_context_done)
        if not self._ended:
            self._ctx_handle = handle

    # --- streaming --------------------------------------------------------------------
    def send(self, item: Any) -> None:
        """Stream ``item`` to the server.

        Raises:
            BadArgError: the item cannot be encoded or is over the message limits (size,
                nesting, items); nothing was sent and the call goes on.
            AbortedError: after :meth:`close_send`, once the server ended the call, or when
                it has already answered in full (its reply is kept for :meth:`finish`).
            CanceledError / TimeoutError / ConnectionFailedError: the call was cancelled
                (by :meth:`cancel`, its context or the client closing), its deadline
                passed, or its VC broke: before or during this send, each time.
            BadStateError: another thread is sending on this call (one sends at a time);
                nothing was sent and the call goes on.
        """
        lock = self._send_lock
        if not lock.acquire(False):
            raise _busy("sending on")
        self._sending = get_ident()
        try:
            self._send(item)
        finally:
            self._sending = 0
            lock.release()

    def _send(self, item: Any) -> None:
        with self._lock:
            refused = self._send_closed or self._ended
        if refused:
            # Cancelled, past its deadline or broken: say so, as recv and close_send do.
            # Otherwise (close_send was called, or the server ended the call) it is Aborted.
            failed = self._cancel_error
            if failed is None and self._ended and self._response is None:
                failed = self._end_error
            if failed is not None:
                raise failed.with_context(request_sent=True)
            raise self._mark(errors.AbortedError("call: send after close_send or end"))
        # Encoded (and checked against the message limits) before anything is written: an
        # item that cannot go is a BadArgError and the call goes on without it.
        data = encode_message_parts(item, head=_STREAM_ITEM_REQUEST_MESSAGE)
        try:
            self._stream.send_encoded(data, deadline=self._deadline, streamed=True)
        except errors.IPCError as exc:
            if self._cancel_error is None:
                if self._server_ended():
                    # The server answered in full and stopped reading: its reply is kept for
                    # recv/finish, which say how the call ended.
                    raise errors.AbortedError(
                        "call: the server has ended the call; finish() returns its outcome"
                    ).with_context(request_sent=True) from None
                failed = self._end_error  # (the receiving side ended the call: say why)
                if failed is not None:
                    raise failed.with_context(request_sent=True) from None
            err = self._translate(exc)
            if isinstance(err, errors.TimeoutError) and self._stream.flow.starved:
                err = _starved(err)
                with self._lock:  # (what recv and finish raise from now on too)
                    if isinstance(self._cancel_error, errors.TimeoutError):
                        self._cancel_error = err
            raise self._mark(err) from None
        except BaseException:
            self.cancel(errors.CanceledError("call: interrupted"))
            raise

    def recv(self) -> Any:
        """The server's next streamed result.

        Raises:
            EndOfStreamError: the server sent its last item (also an ``EOFError``); the
                final header is kept for :meth:`finish`.
            the server's error: the call failed (``finish`` raises it again).
            CanceledError / TimeoutError: the call was cancelled or its context ended
                (items already received are not handed out after that).
            BadStateError: another thread is receiving on this call, or finishing it (one
                receives at a time); the call goes on.
        """
        self._past_deadline()  # (before the lock: see the module docstring)
        lock = self._recv_lock
        if not lock.acquire(False):
            raise _busy("receiving on or finishing")
        self._receiving = get_ident()
        try:
            cancelled = self._cancel_error
            if cancelled is not None:
                raise cancelled.with_context(request_sent=True)
            response = self._response
            if response is not None:
                if response.error is not None:
                    raise self._mark(response.error)
                raise errors.EndOfStreamError("call: the server sent no more items")
            failed = self._end_error
            if failed is not None:  # (the call ended on it: a protocol error, a limit)
                raise failed.with_context(request_sent=True)
            header = self._read_header()
            if header.error is not None:
                raise self._mark(self._on_server_error(header.error))
            if header.end_stream_results:
                raise errors.EndOfStreamError("call: the server sent no more items")
            return self._recv()
        finally:
            self._receiving = 0
            lock.release()

    def __iter__(self) -> Iterator[Any]:
        """Iterate over streamed results until the server's end of stream."""
        while True:
            try:
                yield self.recv()
            except errors.EndOfStreamError:
                return

    def close_send(self) -> None:
        """Tell the server no more items follow. Idempotent: once the send side is closed
        (by this, or by :meth:`finish`), it returns, unless the call has failed since (below).

        When the server has already answered (its reply ended, or it failed the call) there
        is nothing left to tell it: this returns and the reply is read by :meth:`recv` /
        :meth:`finish` as usual.

        Raises:
            CanceledError / TimeoutError: the call was cancelled (by :meth:`cancel`, its
                context or the client closing) or its deadline passed, before or during
                this close_send.
            ConnectionFailedError: the call ended (its VC broke).
            BadStateError: another thread is sending on this call; the call goes on.
        """
        lock = self._send_lock
        if not lock.acquire(False):
            raise _busy("sending on")
        self._sending = get_ident()
        try:
            self._close_send()
        finally:
            self._sending = 0
            lock.release()

    def _close_send(self) -> None:
        with self._lock:
            already = self._send_closed
            self._send_closed = True
            ended = self._ended
        if ended:
            # Cancelled, past its deadline or broken: say so (the failure is explicit), each
            # time. Not when the server ended the call (recv met its error): finish says how.
            failed = self._cancel_error
            if failed is None and self._response is None:
                failed = self._end_error
            if failed is not None:
                raise failed.with_context(request_sent=True)
            return
        if already:
            return
        try:
            self._stream.send(_END_STREAM_REQUEST, end=True, deadline=self._deadline)
        except errors.IPCError as exc:
            if self._cancel_error is None and self._server_ended():
                log.debug(
                    "call: %s.%s: the server answered before the end of the request (%s)",
                    self.name,
                    self.method,
                    exc.id,
                )
                return
            raise self._mark(self._translate(exc)) from None
        except BaseException:
            self.cancel(errors.CanceledError("call: interrupted"))
            raise

    def finish(self, nresults: int | None = None) -> tuple[Any, ...]:
        """Wait for the server to end the call and return its results.

        Implicitly closes the send side (an error doing so is ignored: the server may have
        answered and closed already). With ``nresults``, the server must send exactly that
        many results.

        Raises:
            BadArgError: ``nresults`` is neither None nor a count (checked first: the call
                goes on, and finish may be called again).
            BadStateError: finish was already called, or streamed results remain unread
                (the call is then cancelled: a later :meth:`recv` raises CanceledError).
            CanceledError: the call was cancelled (by :meth:`cancel`, its context, or the
                client closing) before its results were read.
            BadProtocolError: the server sent another number of results than ``nresults``.
            the server's error, as its own exception class with its ID and retry action.

        It first closes the send side, waiting for a ``send`` in progress in another thread,
        then waits for a ``recv`` in progress in another thread to return. Call it once the
        receiving thread has read the end of the stream (join it first): while the server
        still streams, it is the BadStateError above. Interrupted while it waits (Ctrl-C),
        it cancels the call.
        """
        if nresults is not None and (type(nresults) is not int or nresults < 0):
            raise errors.BadArgError(
                f"call: finish(nresults=...) takes a count of results or None, got {nresults!r}"
            )
        self._past_deadline()  # (before the locks: see the module docstring)
        me = get_ident()
        if me in (self._receiving, self._sending):
            # (a callback run by this call's own recv or send: a context's, say) It would wait
            # for the lock its own thread holds.
            raise errors.BadStateError(
                "call: finish() called from inside this call's own send or recv (a callback "
                "it ran): finish it once that returns"
            )
        lock = self._recv_lock
        try:
            if not self._send_closed:
                # First, so that the server can end the call a recv in progress waits for.
                try:
                    with self._send_lock:  # (a send in progress: see the module docstring)
                        self._close_send()
                except errors.IPCError as exc:
                    log.debug("call: close_send in finish failed (the server may be done): %s", exc)
            lock.acquire()  # (a recv in progress returns by the call's deadline or end)
        except BaseException:  # (an interrupt while waiting: the call is cancelled)
            self.cancel(errors.CanceledError("call: interrupted"))
            raise
        try:
            results = self._finish(nresults)
        except BaseException:
            lock.release()
            self._release(cancel=True)  # (outside the lock: its callbacks are any code)
            raise
        lock.release()
        self._release(cancel=False)
        return results

    def _finish(self, nresults: int | None) -> tuple[Any, ...]:
        """(finish, with ``_recv_lock`` held.) The results, or what ended the call; the
        caller releases the call after letting the lock go."""
        with self._lock:
            if self._finished:
                raise errors.BadStateError("call: finish has already been called")
            self._finished = True
            cancelled = self._cancel_error  # (set by cancel() before it releases the flow)
        if cancelled is not None:
            raise cancelled.with_context(request_sent=True)
        failed = self._end_error
        if failed is not None and self._response is None:
            raise failed.with_context(request_sent=True)  # (as recv: what ended the call)
        if self._response is None:  # the final header and the results, held at once
            self._stream.set_budget(MAX_RESULTS_BYTES, free=1)
            self._budgeted = True
        response = self._response or self._read_header()
        if response.error is None and not response.end_stream_results:
            self._response = None
            with self._lock:  # (a cancel from another thread meanwhile stays the cause)
                if self._cancel_error is None:
                    # Cancelled for the unread results: recv hands out none of them.
                    self._cancel_error = errors.CanceledError(_UNREAD_CANCELLED)
            unread = _STREAMED_RESULTS if self._unary else _UNREAD_RESULTS
            raise errors.BadStateError(unread, request_sent=True)
        if self._on_trace is not None and response.trace:
            self._on_trace(response.trace)
        if response.error is not None:
            raise self._on_server_error(response.error).with_context(request_sent=True)
        if nresults is not None and nresults != response.nresults:
            raise errors.BadProtocolError(
                f"call: server sent {response.nresults} results, client expected {nresults}",
                request_sent=True,
            )
        n = response.nresults
        return (self._recv(),) if n == 1 else tuple(self._recv() for _ in range(n))

    def cancel(self, error: errors.IPCError | None = None) -> None:
        """Cancel the call: the server's context is cancelled, the flow is released, and a
        thread blocked in ``send``/``recv``/``finish`` wakes at once with CanceledError (or
        ``error``). Safe from any thread; a no-op once the call ended.

        Raises:
            BadArgError: ``error`` is not an :class:`~ipcclient.errors.IPCError` (the call
                goes on).
        """
        if error is not None and not isinstance(error, errors.IPCError):
            raise errors.BadArgError(
                f"call: cancel takes an IPCError (or nothing), not a {type(error).__name__}"
            )
        err = error or errors.CanceledError("call: cancelled")
        with self._lock:
            if self._ended:
                return
            self._cancel_error = err
        self._stream.flow.cancel(err)
        self._release(cancel=False)

    # --- context manager and finalizer -------------------------------------------------
    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            if not self._finished:
                self.finish()
        else:
            self.cancel()

    def __del__(self) -> None:
        try:
            ended = self._ended
        except AttributeError:  # __init__ failed half way
            return
        if not ended:
            warnings.warn(
                f"ipcclient: call {self.name}.{self.method} was dropped without finish() or "
                "cancel(); it is being cancelled",
                ResourceWarning,
                stacklevel=2,
            )
            # Never touch locks or sockets in a finalizer (it may run on any thread, even
            # one holding the VC's lock): hand the flow to the client to cancel later.
            if self._on_abandon is not None:
                self._on_abandon(self._stream.flow)

    # --- internals ----------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def flow(self) -> Any:
        return self._stream.flow

    def _read_header(self) -> Response:
        try:
            header = response_from_wire(self._recv())
        except errors.IPCError as exc:  # (a malformed header: the call ends on it)
            raise self._mark(exc) from None
        if header.error is not None or header.end_stream_results:
            self._response = header
            if header.error is None and not self._budgeted:
                # The results follow and will be held at once, however this header was
                # reached (recv or iteration; finish bounded them before): bound them. A
                # result whose length came already is charged now; what one read already
                # decoded with the header is at most one read's worth.
                self._budgeted = True
                self._stream.set_budget(MAX_RESULTS_BYTES)
        return header

    def _recv(self) -> Any:
        """The next message from the server, guarded as :meth:`_guard` does."""
        try:
            return self._stream.recv(self._deadline)
        except errors.IPCError as exc:
            raise self._mark(self._translate(exc)) from None
        except BaseException:
            self.cancel(errors.CanceledError("call: interrupted"))
            raise

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking step; turn what ends the call into the right error, and cancel
        the call on anything else escaping (KeyboardInterrupt included)."""
        try:
            return fn()
        except errors.IPCError as exc:
            raise self._mark(self._translate(exc)) from None
        except BaseException:
            self.cancel(errors.CanceledError("call: interrupted"))
            raise

    def _translate(self, exc: errors.IPCError) -> errors.IPCError:
        """Cancelled wins over timeout, which wins over whatever the flow reported. (Under
        a side's lock: the context is looked at without running its callbacks.)"""
        if self._cancel_error is not None:
            return self._cancel_error
        return _translate(exc, self.context, peek=True)

    def _mark(self, err: errors.IPCError) -> errors.IPCError:
        """Release the flow on an error that ends the call; say the request was sent."""
        if not isinstance(err, errors.EndOfStreamError | errors.AbortedError):
            if self._end_error is None:
                self._end_error = err
            self._release(cancel=True)
        if err.request_sent is None:
            return err.with_context(request_sent=True)
        return err

    def _server_ended(self) -> bool:
        """Whether the server has ended the call: its reply came in full (its FIN), or its
        final header did (a ``recv`` read its error or its end of stream; the flow may have
        been reset since, which forgets the FIN)."""
        return self._response is not None or self._stream.flow.peer_done

    def _past_deadline(self) -> bool:
        """Whether the deadline has passed; if so, the context is looked at, which runs the
        call's done-callback now when the timer thread has not yet: it cancels the call with
        the context's error, so that items already buffered are not handed out after the
        deadline, unless the whole reply had come by then (see :meth:`_on_context_done`).
        Called before ``_recv_lock`` or ``_send_lock`` is taken: the context's other
        callbacks run here too, and they are any code (one may finish this call)."""
        deadline = self._deadline
        if deadline is None or time.monotonic() < deadline:
            return False
        self.context.done()
        return True

    def _on_context_done(self, err: errors.IPCError) -> None:
        """The context ended (its deadline passed, or it was cancelled): so does the call,
        unless the server's whole reply had arrived by then (its FIN, by the deadline for a
        deadline): that reply is the answer (docs/protocol.md 5.5), which recv and finish
        hand out as if the context had not ended."""
        deadline = self._deadline
        if isinstance(err, errors.TimeoutError) and deadline is not None:
            moment = deadline
        else:
            moment = time.monotonic()
        if self._stream.flow.peer_done_by(moment):
            return
        self.cancel(err)

    def _on_server_error(self, err: errors.IPCError) -> errors.IPCError:
        """The server's error ``err``, as the caller sees it. A refusal forgets the
        discharges it may be about, and says which discharges could not be fetched (the
        likely cause)."""
        if not isinstance(err, errors.NoAccessError):
            return err
        cache = self._discharge_cache
        if cache is not None and self._discharges:
            refused = err.params[0] if err.params else None
            if isinstance(err, errors.BadDischargeError) and isinstance(refused, str):
                cache.invalidate(refused)  # exactly the discharge the server refused
            else:
                # A plain NoAccess may have been caused by a stale discharge; forget the
                # ones used so the *next* call fetches fresh ones (this call is not
                # retried: no loop).
                cache.invalidate(*(d.caveat_id for d in self._discharges))
        if not self._fetch_problems:
            return err
        told = type(err).__new__(type(err))
        errors.IPCError.__init__(
            told,
            f"{err.msg} (not fetched: {'; '.join(self._fetch_problems)})",
            *err.params,
            id=err.id,
            action=err.action,
            request_sent=err.request_sent,
            tried=err.tried,
        )
        return told

    def _release(self, *, cancel: bool) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            handle, self._ctx_handle = self._ctx_handle, None
        if handle is not None:
            self.context.remove_done_callback(handle)
        if cancel:
            self._stream.flow.cancel(self._cancel_error)
        else:
            self._stream.flow.close()
        if self._on_done is not None:
            self._on_done(self)


def _busy(doing: str) -> errors.BadStateError:
    return errors.BadStateError(
        f"call: another thread is {doing} this call: one thread sends and one receives at a "
        "time (the call goes on)"
    )


def _starved(err: errors.IPCError) -> errors.IPCError:
    """``err``, the deadline that passed while ``send`` waited for the server to take more
    of the stream, saying so and what usually causes it."""
    said = err.with_context(
        request_sent=True,
        msg=f"{err.msg}: send() was waiting for the server to take more of the stream (the "
        "flow's window was full). A thread that sends everything before it reads the "
        "replies waits for credit the server cannot give while its replies go unread: "
        "receive in another thread (docs/client.md, Threads)",
    )
    said.__cause__ = err
    return said


def _translate(exc: errors.IPCError, ctx: Context, *, peek: bool = False) -> errors.IPCError:
    """The context's end (cancelled, deadline) wins over whatever the flow reported; with
    ``peek``, looked at without running the context's callbacks (``Context.peek_err``)."""
    ctx_err = ctx.peek_err() if peek else ctx.err()
    if ctx_err is not None and not isinstance(exc, type(ctx_err)):
        return ctx_err
    if isinstance(exc, errors.EndOfStreamError):
        return errors.BadProtocolError("call: the server closed the flow early")
    return exc


def finish_unary(flow: Any, ctx: Context, collect: bytes | None) -> tuple[Any, ...]:
    """The end of a unary call whose request is written (args and end of args sent):
    what :meth:`Call.finish` does, without a call object, for :meth:`Client.call`. The
    caller has set the flow's deadline to the context's and wired the context's end to
    ``flow.cancel`` (it wakes a blocked read); the flow is released whatever happens.
    ``collect``: the trace id whose spans the server returns, when the trace collects
    them.

    Raises:
        the server's error, or what ended the call (as :meth:`Call.finish`).
    """
    ok = False
    try:
        values: list[Any] = []
        want = 1  # the response header first, then its results
        header: Response | None = None
        reader: MessageReader | None = None
        try:
            first = flow.read()  # (by the flow's deadline: the context's)
            if first and flow.drained and len(first) <= _WHOLE_REPLY_BYTES:
                # The usual reply: all of it in one read (whole messages, far below the
                # budget): split at once; what is missing can no longer come.
                if first == _NO_RESULTS:
                    ok = True
                    return ()
                n = _FINAL_HEADERS.get(first[:_FINAL_HEADER_SIZE])
                if n is not None:  # (the usual final header, recognised by its bytes)
                    results = split_messages(first[_FINAL_HEADER_SIZE:])
                    if results is not None and len(results) >= n:
                        ok = True
                        return tuple(results[:n])
                whole = split_messages(first)
                if whole is not None:
                    values = whole
                    reader = _DRAINED
            while True:
                while len(values) < want:
                    if reader is None:
                        reader = MessageReader()
                        # The header and the results are held at once: bound them.
                        reader.set_budget(MAX_RESULTS_BYTES, free=1)
                        chunk = first
                    elif reader is _DRAINED:
                        chunk = b""
                    else:
                        chunk = flow.read()
                    if not chunk:
                        raise errors.BadProtocolError("call: the server closed the flow early")
                    values.extend(reader.feed(chunk))
                if header is not None:
                    break
                header = response_from_wire(values[0])
                if header.error is not None or not header.end_stream_results:
                    break
                want = 1 + header.nresults
        except errors.IPCError as exc:
            raise _translate(exc, ctx).with_context(request_sent=True) from None
        if collect is not None and header.trace:
            vtrace.STORE.merge(collect, header.trace)
        if header.error is not None:
            raise header.error.with_context(request_sent=True)
        if not header.end_stream_results:
            raise errors.BadStateError(_STREAMED_RESULTS, request_sent=True)
        ok = True
        return tuple(values[1:want])
    finally:
        if ok:
            flow.close()
        else:
            flow.cancel(errors.CanceledError("call: interrupted"))


_WHOLE_REPLY_BYTES = 64 * 1024
"""The largest reply split at once, uncounted (a frame's payload by default): decoded, it
holds at most ~70 times that; a larger one (frames a client made larger) goes through the
results' budget, which counts each item."""
_NO_RESULTS = encode_messages(Response(end_stream_results=True).to_wire())
_FINAL_HEADERS = {
    encode_messages(Response(end_stream_results=True, nresults=n).to_wire()): n for n in range(1, 4)
}
_FINAL_HEADER_SIZE = len(next(iter(_FINAL_HEADERS)))
assert all(len(message) == _FINAL_HEADER_SIZE for message in _FINAL_HEADERS)
"""The final response header of a call with 0 (the whole reply) and 1..3 results as the
ipcclient server writes it: a reply that starts with one is read without decoding it."""

_DRAINED = MessageReader()
"""(A marker for finish_unary: the whole reply was split already.)"""

_STREAM_ITEM_REQUEST = Request().to_wire()
_STREAM_ITEM_REQUEST_MESSAGE = encode_messages(_STREAM_ITEM_REQUEST)
_UNREAD_RESULTS = (
    "call: finish() was called while the server was still streaming results, so the call "
    "was cancelled: read them first (for item in call: ...), or call a streaming method "
    "with start_call"
)
_STREAMED_RESULTS = (
    "call: the method streams results, which a call that waits for its results alone cannot "
    "read, so the call was cancelled: call it with start_call and read them (for item in "
    "call: ...) before finish()"
)
_UNREAD_CANCELLED = (
    "call: cancelled by finish() while the server was still streaming results (read them "
    "before finish: for item in call: ...)"
)
_END_STREAM_REQUEST = Request(end_stream_args=True).to_wire()
