"""Request and response headers of the RPC protocol, and their wire forms.

Owns: the :class:`Request` and :class:`Response` header values exchanged on a flow, their CBOR
map forms (short, fixed keys), validation of what a peer sends (types, bounds), and the
relative deadline and trace context they carry.

Must not: read or write flows, dispatch, authorize or retry (the call layer and the server do);
decode blessings or discharges itself (the codec's registered tags do).

Message order on one flow (each item is one length-prefixed CBOR message, see
:mod:`ipcclient.wire.messages`)::

    C->S  Request{suffix, method, nargs=n, deadline, granted, discharges, trace, language}
    C->S  arg_1 ... arg_n
    C->S  ( Request{} item )*              streamed args, each after an empty header
    C->S  Request{end_stream_args=true}    then the client's FIN
    S->C  ( Response{} item )*             streamed results, each after an empty header
    S->C  Response{end_stream_results=true, nresults=m, error, trace}
    S->C  result_1 ... result_m            only when error is absent; then the server's FIN
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from ipcclient import codec, errors

__all__ = [
    "MAX_ARGS",
    "MAX_DISCHARGES",
    "MAX_NAME_LEN",
    "Request",
    "Response",
    "TraceContext",
    "request_from_wire",
    "response_from_wire",
    "usual_request_within",
]

MAX_ARGS = 1024
"""Positional args or results one call may declare; a larger count is a hostile header."""
MAX_NAME_LEN = 4096
"""Longest suffix, method name or language tag."""
MAX_DISCHARGES = 64
"""Discharges one request may carry."""
MAX_DEADLINE = 10 * 365 * 24 * 3600.0
"""A relative deadline beyond ten years means none."""


class TraceContext(NamedTuple):
    """The trace a call belongs to: 16-byte ids and flags (1 = collect in memory)."""

    trace_id: bytes
    span_id: bytes
    flags: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.trace_id, "s": self.span_id, "f": self.flags}

    @classmethod
    def from_wire(cls, value: Any) -> TraceContext | None:
        if value is None:
            return None
        if type(value) is not dict and not isinstance(value, Mapping):
            raise errors.BadProtocolError("headers: bad trace context")
        t, s, f = value.get("t"), value.get("s"), value.get("f", 0)
        if not (isinstance(t, bytes) and len(t) == 16 and isinstance(s, bytes) and len(s) == 16):
            raise errors.BadProtocolError("headers: bad trace ids")
        if not isinstance(f, int) or isinstance(f, bool):
            raise errors.BadProtocolError("headers: bad trace flags")
        return cls(t, s, f)


class Request(NamedTuple):
    """A request header. An all-default ``Request()`` precedes each streamed arg.

    Attributes:
        suffix: the object name relative to the server (leading "/" stripped).
        method: the method name.
        nargs: how many positional args follow this header.
        deadline: seconds from the moment the server reads the header until the call's
            deadline (relative, so clock skew does not matter); None for no deadline.
        granted: blessings the client grants the server for this call, or None.
        discharges: discharges for third-party caveats on the client's blessings.
        trace: the trace context, or None.
        language: an IETF language tag for error messages, or "".
        end_stream_args: no more streamed args follow.
    """

    suffix: str = ""
    method: str = ""
    nargs: int = 0
    deadline: float | None = None
    granted: Any = None
    discharges: tuple[Any, ...] = ()
    trace: TraceContext | None = None
    language: str = ""
    end_stream_args: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The CBOR map; default fields are left out (a streaming header is ``{}``)."""
        out: dict[str, Any] = {}
        if self.suffix:
            out["suffix"] = self.suffix
        if self.method:
            out["method"] = self.method
        if self.nargs:
            out["nargs"] = self.nargs
        if self.deadline is not None:
            out["deadline"] = float(self.deadline)
        if self.granted is not None:
            out["granted"] = self.granted
        if self.discharges:
            out["discharges"] = list(self.discharges)
        if self.trace is not None:
            out["trace"] = self.trace.to_wire()
        if self.language:
            out["language"] = self.language
        if self.end_stream_args:
            out["end_stream_args"] = True
        return out

    @property
    def is_stream_item(self) -> bool:
        """True for the empty header that precedes a streamed arg."""
        return self == _EMPTY_REQUEST


_EMPTY_REQUEST = Request()


class Response(NamedTuple):
    """A response header. An all-default ``Response()`` precedes each streamed result.

    Attributes:
        error: the server's error; when set, no results follow and the stream has ended.
        end_stream_results: no more streamed results follow; ``nresults`` results do.
        nresults: how many results follow this header.
        trace: spans the server recorded, when the caller may see them (a list of maps).
    """

    error: errors.IPCError | None = None
    end_stream_results: bool = False
    nresults: int = 0
    trace: tuple[Any, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.error is not None:
            out["error"] = self.error
        if self.end_stream_results:
            out["end"] = True
        if self.nresults:
            out["nresults"] = self.nresults
        if self.trace:
            out["trace"] = list(self.trace)
        return out

    @property
    def is_stream_item(self) -> bool:
        return self.error is None and not self.end_stream_results and not self.nresults


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NAME_LEN:
        raise errors.BadProtocolError(f"headers: bad {name}")
    return value


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ARGS:
        raise errors.BadProtocolError(f"headers: bad {name} (0..{MAX_ARGS})")
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.BadProtocolError(f"headers: bad {name}")
    return value


def _key(name: str) -> bytes:
    return codec.cbor_head(3, len(name)) + name.encode("ascii")


_K_SUFFIX, _K_METHOD, _K_NARGS, _K_DEADLINE, _K_TRACE = (
    _key(k) for k in ("suffix", "method", "nargs", "deadline", "trace")
)
_TRACE_T, _TRACE_S, _TRACE_F = (_key(k) for k in ("t", "s", "f"))
_TRACE_MAP = codec.cbor_head(5, 3)
_LENGTH = struct.Struct(">I")


def encode_request_message(
    suffix: str,
    method: str,
    nargs: int,
    deadline: object,
    trace_id: object,
    span_id: object,
    flags: object,
) -> bytes | None:
    """The message (length prefix included) of the usual request header,
    ``Request(suffix, method, nargs, deadline, trace=TraceContext(trace_id, span_id,
    flags)).to_wire()``, built without cbor2: the same bytes as cbor2 writes for that map.
    None when it is not the usual one (a name that is empty or not ASCII, a count or flags
    out of range, ids that are not 16 bytes, a deadline that is not a float or None):
    encode ``Request.to_wire()`` then. (The last four are taken as any object and checked
    here: a compiled build would otherwise turn True into the flags 1, or 5 into 5.0, at
    the call.)"""
    timed = deadline is not None
    if type(nargs) is not int:  # (a bool or a float equal to a kept count must not match it)
        return None
    start = _STARTS.get((suffix, method, nargs, timed))
    if start is None:
        start = _request_start(suffix, method, nargs, timed)
        if start is None:
            return None
    if (
        type(flags) is not int  # (True would be written as 1, and 1.0 has no place here)
        or not 0 <= flags < 24
        or type(trace_id) is not bytes
        or type(span_id) is not bytes
        or len(trace_id) != _ID_SIZE
        or len(span_id) != _ID_SIZE
    ):
        return None
    if deadline is not None:
        if type(deadline) is not float:
            return None
        start += _K_DEADLINE + codec.encode_float(deadline)
    body = start + _TRACE_T_ID + trace_id + _TRACE_S_ID + span_id + _TRACE_FLAGS[flags]
    return _LENGTH.pack(len(body)) + body


def _request_start(suffix: str, method: str, nargs: int, timed: bool) -> bytes | None:
    """What :func:`encode_request_message` writes before the deadline: the map's head, the
    suffix, the method and the count of args (None when they are not the usual ones); kept
    in ``_STARTS`` (bounded)."""
    if (
        type(suffix) is not str
        or type(method) is not str
        or not method
        or not method.isascii()
        or not suffix.isascii()
        or not 0 <= nargs <= MAX_ARGS
    ):
        return None
    head = codec.cbor_head
    count = 2 + timed
    parts = []
    if suffix:
        count += 1
        parts.append(_K_SUFFIX + head(3, len(suffix)) + suffix.encode("ascii"))
    parts.append(_K_METHOD + head(3, len(method)) + method.encode("ascii"))
    if nargs:
        count += 1
        parts.append(_K_NARGS + head(0, nargs))
    start = head(5, count) + b"".join(parts)
    if len(_STARTS) >= _MAX_STARTS:
        _STARTS.clear()
    _STARTS[(suffix, method, nargs, timed)] = start
    return start


_STARTS: dict[tuple[str, str, int, bool], bytes] = {}
"""The start of the usual request header per suffix, method, count of args and whether a
deadline follows (see :func:`_request_start`): the same few calls are made again and again."""
_MAX_STARTS = 1024


_ID_SIZE = 16
_TRACE_T_ID = _K_TRACE + _TRACE_MAP + _TRACE_T + codec.cbor_head(2, _ID_SIZE)
_TRACE_S_ID = _TRACE_S + codec.cbor_head(2, _ID_SIZE)
_TRACE_FLAGS = tuple(_TRACE_F + codec.cbor_head(0, f) for f in range(24))


_FLOAT64_BODY = struct.Struct(">d")
_LAYOUT = re.compile(
    rb"(?:\x66suffix([\x60-\x77])(.{0,23}?))?"
    rb"\x66method([\x60-\x77])(.{0,23}?)"
    rb"(?:\x65nargs([\x00-\x17]|\x18.))?"
    rb"(?:\x68deadline\xfb(.{8}))?"
    rb"\x65trace\xa3\x61t\x50(.{16})\x61s\x50(.{16})\x61f([\x00-\x17])",
    re.DOTALL,
)
"""The request header exactly as :func:`encode_request_message` lays it out (names shorter
than 24 bytes, fewer than 256 args): a tokenizer only; every string's extent is then checked
against its head, so a match is the real CBOR structure or is refused. Its strings are
bounded (at most 23 bytes each) and so is its input (``_OWN_LAYOUT_MAX``): the match takes
constant time whatever a peer sends."""
_OWN_LAYOUT_MAX = 160
"""No header in that layout is longer (the longest is 137 bytes)."""
_OWN_LAYOUT_ITEMS = 17
"""Data items in the largest header of that layout: the map, its five keys and values, and
the trace map's three keys and values."""
_OWN_LAYOUT_DEPTH = 2
"""Container nesting of that layout (the trace map inside the header map)."""


def usual_request_within(limits: codec.Limits) -> bool:
    """Whether every header :func:`decode_usual_request` accepts is within ``limits``: only
    then may a reader bound by ``limits`` take it (else it decodes under them, which refuses
    what is over)."""
    return (
        limits.max_message_size >= _OWN_LAYOUT_MAX
        and limits.max_items >= _OWN_LAYOUT_ITEMS
        and limits.max_depth >= _OWN_LAYOUT_DEPTH
    )


def decode_usual_request(data: bytes) -> Request | None:
    """``request_from_wire(codec.decode(data))`` for the request header exactly as
    :func:`encode_request_message` lays it out (what every ipcclient client sends), read
    with one regular-expression match instead of cbor2 (which runs cold on a server: several
    times what it costs warm). None for anything else, valid or not: decode that the general
    way, which also reports what is wrong."""
    if len(data) > _OWN_LAYOUT_MAX or not data or not 0xA2 <= data[0] <= 0xA5:
        return None  # (and bounded: a crafted header can never make the match slow)
    match = _LAYOUT.fullmatch(data, 1)
    if match is None:
        return None
    s_head, suffix_b, m_head, method_b, nargs_b, deadline_b, t, sp, f = match.groups()
    count = 2
    suffix = ""
    try:
        if s_head is not None:
            if len(suffix_b) != s_head[0] - 0x60:
                return None
            suffix = suffix_b.decode("utf-8")
            count += 1
        if len(method_b) != m_head[0] - 0x60:
            return None
        method = method_b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    nargs = 0
    if nargs_b is not None:
        nargs = nargs_b[0] if len(nargs_b) == 1 else nargs_b[1]
        if (len(nargs_b) == 2 and nargs < 24) or nargs > MAX_ARGS:
            return None  # (a non-minimal head: the general way decides)
        count += 1
    deadline: float | None = None
    if deadline_b is not None:
        (deadline,) = _FLOAT64_BODY.unpack(deadline_b)
        if not 0.0 <= deadline < MAX_DEADLINE:  # (NaN fails too)
            return None
        count += 1
    if data[0] - 0xA0 != count:
        return None
    trace = _new_tuple(TraceContext, (t, sp, f[0]))
    request: Request = _new_tuple(
        Request, (suffix, method, nargs, deadline, None, (), trace, "", False)
    )
    return request


_new_tuple: Any = tuple.__new__

_FAST_KEYS = frozenset({"suffix", "method", "nargs", "deadline", "trace"})


def _fast_request(value: dict[str, Any]) -> Request | None:
    """The common request header (a suffix, a method, args, a deadline, a trace) built with
    the same checks as the general path, inline; None sends anything unusual there."""
    suffix = value.get("suffix", "")
    method = value.get("method", "")
    nargs = value.get("nargs", 0)
    deadline = value.get("deadline")
    trace = value.get("trace")
    if (
        type(suffix) is not str
        or type(method) is not str
        or len(suffix) > MAX_NAME_LEN
        or len(method) > MAX_NAME_LEN
        or type(nargs) is not int
        or not 0 <= nargs <= MAX_ARGS
    ):
        return None
    if deadline is not None and (type(deadline) is not float or not 0.0 <= deadline < MAX_DEADLINE):
        return None
    trace_ctx = None
    if trace is not None:
        if type(trace) is not dict:
            return None
        t, sp, f = trace.get("t"), trace.get("s"), trace.get("f", 0)
        if (
            type(t) is not bytes
            or type(sp) is not bytes
            or len(t) != 16
            or len(sp) != 16
            or type(f) is not int
            or len(trace) > 3
        ):
            return None
        trace_ctx = _new_tuple(TraceContext, (t, sp, f))
    # (tuple.__new__: what the named tuples' own __new__ does, without its Python frame)
    request: Request = _new_tuple(
        Request, (suffix, method, nargs, deadline, None, (), trace_ctx, "", False)
    )
    return request


def request_from_wire(value: Any) -> Request:
    """Validate and build a request header from a decoded message.

    Raises:
        BadProtocolError: not a map, or a field of the wrong type or out of bounds.
    """
    if type(value) is not dict and not isinstance(value, Mapping):
        raise errors.BadProtocolError("headers: a request header must be a map")
    if not value:
        return _EMPTY_REQUEST
    if type(value) is dict and value.keys() <= _FAST_KEYS:
        fast = _fast_request(value)
        if fast is not None:
            return fast
    deadline = value.get("deadline")
    if deadline is not None:
        if (
            not isinstance(deadline, int | float)
            or isinstance(deadline, bool)
            or (isinstance(deadline, float) and math.isnan(deadline))
        ):
            raise errors.BadProtocolError("headers: bad deadline")
        # (Compared before any conversion: an integer may be too large for a float.)
        far = deadline >= MAX_DEADLINE
        deadline = None if far else (0.0 if deadline <= 0 else float(deadline))
    discharges = value.get("discharges", ())
    if not isinstance(discharges, list | tuple) or len(discharges) > MAX_DISCHARGES:
        raise errors.BadProtocolError("headers: bad discharges")
    return Request(
        suffix=_text(value.get("suffix"), "suffix"),
        method=_text(value.get("method"), "method"),
        nargs=_count(value.get("nargs"), "nargs"),
        deadline=deadline,
        granted=value.get("granted"),
        discharges=tuple(discharges),
        trace=TraceContext.from_wire(value.get("trace")),
        language=_text(value.get("language"), "language"),
        end_stream_args=_flag(value.get("end_stream_args"), "end_stream_args"),
    )


def response_from_wire(value: Any) -> Response:
    """Validate and build a response header from a decoded message.

    Raises:
        BadProtocolError: not a map, or a field of the wrong type or out of bounds.
    """
    if type(value) is not dict and not isinstance(value, Mapping):
        raise errors.BadProtocolError("headers: a response header must be a map")
    if not value:
        return _EMPTY_RESPONSE
    if len(value) == 2 and value.get("end") is True and type(value.get("nresults")) is int:
        n = value["nresults"]  # the usual end of a call: a few results, no error, no trace
        if 0 <= n < len(_END_RESPONSES):
            return _END_RESPONSES[n]
    err = value.get("error")
    if err is not None and not isinstance(err, errors.IPCError):
        raise errors.BadProtocolError("headers: bad error in response")
    trace = value.get("trace", ())
    if not isinstance(trace, list | tuple):
        raise errors.BadProtocolError("headers: bad trace in response")
    return Response(
        error=err,
        end_stream_results=_flag(value.get("end"), "end"),
        nresults=_count(value.get("nresults"), "nresults"),
        trace=tuple(trace),
    )


_EMPTY_RESPONSE = Response()
_END_RESPONSES = tuple(Response(end_stream_results=True, nresults=n) for n in range(4))
