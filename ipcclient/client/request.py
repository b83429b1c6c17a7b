"""Writing a call's request: the header, the args, the end of args.

Owns: :func:`check_call` (a call's arguments and options, checked before anything is
done), :func:`encode_request_header`, the one way the client encodes a request header (the
usual header is laid out directly, the same bytes the codec writes for that map; any other
through ``Request.to_wire()``), :func:`check_names` (names no server takes), and
:func:`write_request`, which writes header, args and end and says whether anything reached
the wire.

Must not: decide a retry (it reports whether the request is unsent; the caller decides),
authorize, or hold a lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ipcclient import errors
from ipcclient.headers import MAX_ARGS, MAX_NAME_LEN, Request, TraceContext, encode_request_message
from ipcclient.options import CallOption, NoRetry, RetryTimeout, ServerPublicKey, find_all, find_one
from ipcclient.security.blessings import Blessings
from ipcclient.security.discharges import Discharge
from ipcclient.transport.conn import Flow
from ipcclient.wire.messages import encode_message_parts, encode_messages


def option_as_argument(opt: CallOption) -> errors.BadArgError:
    """The error for a call option passed where the method's arguments go."""
    return errors.BadArgError(
        f"client: {opt!r} was passed as an argument of the method; pass call options as "
        "options=[...] to call(), or after the args list to start_call()"
    )


def check_options(options: object) -> Sequence[CallOption]:
    """``options`` if it is a list or tuple (of anything: :func:`check_call` checks each).

    Raises:
        BadArgError: anything else.
    """
    if type(options) is tuple or type(options) is list:  # (the usual: no ABC check)
        return options
    # (One option is refused too: some options are tuples themselves.)
    if not isinstance(options, Sequence) or isinstance(
        options, (str, bytes, bytearray, CallOption)
    ):
        raise errors.BadArgError(
            f"client: options must be a list or tuple of call options, got {options!r}"
        )
    return options


def check_call(name: object, method: object, args: object, options: object) -> bool:
    """Check a call's name, method, args and options before anything is done; returns
    whether the options end retrying (``NoRetry``, ``RetryTimeout(0)``).

    Raises:
        BadArgError: a name or method that is not a string, args that are not a sequence
            of arguments (or hold a call option), or a bad option.
    """
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
            raise option_as_argument(arg)
    options = check_options(options)
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
    return no_retry


def check_names(suffix: str, method: str) -> None:
    """Refuse, before anything is written, a method name or a name suffix longer than any
    server takes (:data:`~ipcclient.headers.MAX_NAME_LEN` characters: a server resets such
    a request as a protocol error). (The general path only: a call plan, which the fast path
    reuses, is made after this check.)

    Raises:
        BadArgError: a name is too long (``request_sent`` False); it is measured, not quoted.
    """
    if len(method) > MAX_NAME_LEN or len(suffix) > MAX_NAME_LEN:
        raise errors.BadArgError(
            f"client: the method name is {len(method)} characters and the name's suffix "
            f"{len(suffix)}; a server takes at most {MAX_NAME_LEN} each",
            request_sent=False,
        )


def encode_request_header(
    suffix: str,
    method: str,
    nargs: int,
    deadline: float | None,
    trace_id: bytes,
    span_id: bytes,
    flags: int,
    granted: Blessings | None = None,
    discharges: tuple[Discharge, ...] = (),
) -> bytes:
    """The request header of a call, as one message (length prefix included).

    Raises:
        BadArgError: more args than a server takes (:data:`~ipcclient.headers.MAX_ARGS`),
            or a name, the granted blessings or the discharges cannot be encoded
            (``request_sent`` False).
    """
    if granted is None and not discharges:
        head = encode_request_message(suffix, method, nargs, deadline, trace_id, span_id, flags)
        if head is not None:
            return head
    if nargs > MAX_ARGS:  # (encode_request_message declines such a count)
        raise errors.BadArgError(
            f"client: a call with {nargs} arguments; a server takes at most {MAX_ARGS} "
            "(stream the rest, or pass them in one list)",
            request_sent=False,
        )
    request = Request(
        suffix=suffix,
        method=method,
        nargs=nargs,
        deadline=deadline,
        granted=granted,
        discharges=discharges,
        trace=TraceContext(trace_id, span_id, flags),
    )
    try:
        return encode_messages(request.to_wire())
    except errors.BadArgError as exc:
        raise exc.with_context(request_sent=False) from None


END_STREAM_MESSAGE = encode_messages(Request(end_stream_args=True).to_wire())
"""The end of args, encoded once: what a unary call's request ends with."""


def write_request(
    flow: Flow,
    head: bytes,
    args: Sequence[Any],
    close_send: bool,
    deadline: float | None,
    cancel: Callable[[errors.IPCError], None],
    tried: list[str],
) -> errors.IPCError | None:
    """Write a request (``head``: its header message; then the args, and with
    ``close_send`` the end of args and FIN).
    On failure ``cancel`` the call; return the error when nothing reached the wire (the
    caller decides about retrying), else raise it.

    Raises:
        BadArgError: an arg cannot be encoded (nothing was sent).
        the write's error, NO_RETRY and ``request_sent``: part of the request may be out.
    """
    try:
        data = encode_message_parts(
            *args, head=head, tail=END_STREAM_MESSAGE if close_send else b""
        )
        flow.write(data, end=close_send, deadline=deadline)
    except errors.BadArgError as exc:
        cancel(exc)
        for arg in args:
            if isinstance(arg, CallOption):  # (the fast path encodes args unchecked)
                raise option_as_argument(arg).with_context(request_sent=False) from None
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
