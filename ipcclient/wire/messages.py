"""Messages on a flow: length-prefixed CBOR values (sans-IO).

Owns: how the byte stream of one flow is cut into messages: each message is a u32 big-endian
length followed by that many bytes of one CBOR value. Writing one or many values into one
buffer (so a whole unary request is one flow write) and reassembling messages from whatever
chunks the flow delivers, with the message size limit enforced from the length alone, before
any byte of the body is buffered beyond it.

Must not: know what a message means (request and response headers are the call layer's), touch
sockets or threads.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from ipcclient import codec, errors

__all__ = [
    "Budget",
    "MessageReader",
    "encode_message_parts",
    "encode_messages",
    "split_bodies",
    "split_messages",
]

_LENGTH = struct.Struct(">I")
_BULK = 4096
"""A top-level byte string at least this long skips cbor2 both ways: its CBOR form is a head
and the bytes themselves (the same bytes cbor2 would write), so a bulk payload is copied once
per direction instead of twice."""


_SMALL = 64
"""An encoded value this short that is no container or tag is within every message limit."""
_MAX_BULK = codec.DEFAULT_LIMITS.max_message_size - 9
"""The longest byte string whose message (with its CBOR head) is within the size limit."""


def _bytes_head(n: int) -> bytes:
    """The CBOR head (major type 2, shortest form) of a byte string of ``n`` bytes."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x1_0000_0000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


_HEAD_SIZES = {0x58: 2, 0x59: 3, 0x5A: 5, 0x5B: 9}


def _bulk_head_size(first: bytes, size: int) -> int:
    """If a message of ``size`` bytes starting with ``first`` is exactly one definite byte
    string, the size of its CBOR head; else 0."""
    head = _HEAD_SIZES.get(first[0]) if first else None
    if head is None or len(first) < head:
        return 0
    return head if int.from_bytes(first[1:head], "big") == size - head else 0


DECODED_ITEM_BYTES = 64
"""What an item of a held message is counted as at least, in bytes, beside the message's
own bytes: a decoded value takes memory per item, not per byte (an empty map is one byte on
the wire and ~70 bytes decoded), so a budget of held args or results counts
``max(bytes, items * DECODED_ITEM_BYTES)`` of each message (:func:`decoded_charge`)."""
_COUNT_ABOVE = 256
"""Messages of at most this many bytes are taken to hold one item per byte (no count)."""


def decoded_charge(body: bytes, limits: codec.Limits = codec.DEFAULT_LIMITS) -> tuple[int, bool]:
    """What holding the message ``body`` decoded may cost beyond its own bytes:
    ``items * DECODED_ITEM_BYTES - len(body)`` when that is more than 0. A number, a
    string or a simple value is one item (text that is not ASCII counts 4 bytes a byte:
    Python may hold each of its characters in 4); a message of up to ``_COUNT_ABOVE`` bytes is
    taken to hold one per byte; a longer one's items are counted from its heads
    (``codec.count_items``).

    Returns that charge, and whether the heads were walked to count the items: the walk
    ``codec.decode`` makes itself before building such a value, which it is then told to
    skip (its ``walked``), under the same ``limits``.

    Raises:
        BadProtocolError: the message is malformed or over ``limits`` (found counting).
    """
    size = len(body)
    if size <= 1:
        return 0, False
    first = body[0]
    if not 0x80 <= first < 0xE0:  # (a number, a string or a simple value: one item)
        if 0x60 <= first < 0x80 and not body.isascii():
            info = first & 0x1F
            head = 1 if info < 24 else 1 + (1 << (info - 24)) if info < 28 else 1
            if not body[head:].isascii():  # (not only its length's bytes)
                return 3 * size, False  # (a character past U+00FF: Python holds 4 bytes each)
        return 0, False
    if size <= _COUNT_ABOVE:
        return max(0, size * DECODED_ITEM_BYTES - size), False
    return max(0, codec.count_items(body, limits) * DECODED_ITEM_BYTES - size), True


def encode_messages(*values: Any, head: bytes = b"", tail: bytes = b"") -> bytes:
    """One buffer holding ``head``, then each value as a length-prefixed CBOR message, in
    order, then ``tail`` (``head`` and ``tail``: messages encoded before, e.g. constant
    headers)."""
    parts = encode_message_parts(*values, head=head, tail=tail)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_message_parts(*values: Any, head: bytes = b"", tail: bytes = b"") -> list[bytes]:
    """The same bytes as :func:`encode_messages`, as a list of pieces to write in order:
    a bulk byte string (see ``_BULK``) is its own piece, never copied; everything between
    two bulk values is joined into one piece. Usually a list of one.

    Raises:
        BadArgError: a value cannot be encoded, or its message would be refused by a peer
            for its size, items or nesting (:func:`codec.check_encoded`): nothing is written.
    """
    if len(values) == 1 and not tail:  # one value (a stream item): the fast path
        value = values[0]
        if type(value) is not bytes or len(value) < _BULK:
            body = codec.encode_scalar(value) or codec.encode(value)
            if len(body) > _SMALL or 0x80 <= body[0] < 0xE0:
                codec.check_encoded(body)
            return [b"".join((head, _LENGTH.pack(len(body)), body))]
    small: list[bytes] = [head] if head else []
    parts: list[bytes] = []
    append = small.append
    encode = codec.encode
    scalar = codec.encode_scalar
    pack = _LENGTH.pack
    for value in values:
        if type(value) is bytes and len(value) >= _BULK:
            bulk_head = _bytes_head(len(value))
            if len(value) > _MAX_BULK:
                codec.check_size(len(bulk_head) + len(value))
            append(pack(len(bulk_head) + len(value)) + bulk_head)
            parts.append(b"".join(small))
            parts.append(value)
            small = []
            append = small.append
            continue
        body = scalar(value) or encode(value)
        if len(body) > _SMALL or 0x80 <= body[0] < 0xE0:
            codec.check_encoded(body)
        append(pack(len(body)))
        append(body)
    if tail:
        append(tail)
    if small or not parts:
        parts.append(b"".join(small))
    return parts


def split_bodies(data: bytes, limits: codec.Limits = codec.DEFAULT_LIMITS) -> list[bytes] | None:
    """The bodies of the messages in ``data`` when it holds whole messages only (what a peer
    that is done sent, read at once), not decoded; None when it does not (a message cut
    short: read it the general way, with a :class:`MessageReader`).

    Raises:
        BadProtocolError: a message above the size limit.
    """
    out: list[bytes] = []
    end = len(data)
    pos = 0
    unpack_from = _LENGTH.unpack_from
    limit = limits.max_message_size
    while pos < end:
        if end - pos < 4:
            return None
        (need,) = unpack_from(data, pos)
        if need > limit:
            raise errors.BadProtocolError(
                f"messages: a message of {need} bytes exceeds the limit of {limit}"
            )
        pos += 4
        stop = pos + need
        if stop > end:
            return None
        out.append(data[pos:stop])
        pos = stop
    return out


def split_messages(data: bytes, limits: codec.Limits = codec.DEFAULT_LIMITS) -> list[Any] | None:
    """The values of ``data`` when it holds whole messages only; None when it does not
    (see :func:`split_bodies`).

    Raises:
        BadProtocolError: a message above the size limit, or one that does not decode.
    """
    bodies = split_bodies(data, limits)
    if bodies is None:
        return None
    decode = codec.decode
    return [decode(body, limits) for body in bodies]


class Budget(Protocol):
    """Bytes shared by several readers (the calls of one VC, say), charged as each message's
    length prefix arrives (see :meth:`MessageReader.set_budget`)."""

    def take(self, nbytes: int) -> None:
        """Charge ``nbytes``, or raise an :class:`~ipcclient.errors.IPCError` (nothing is
        charged then) when they are not to be had."""
        ...


class MessageReader:
    """Reassembles messages from a flow's bytes and decodes them under codec limits.

    Whole messages inside one chunk are decoded from the chunk; a message that spans chunks
    is kept as the list of its body's pieces and joined once, when complete (one copy,
    whatever its size and however many chunks it took).

    A message read under first limits (:meth:`set_first_limits`, a request header) ends its
    feed: the rest of that chunk is kept undecoded (:attr:`rest`) for the next feed, so
    nothing after a header is decoded before its reader has decided on the header (the
    server authorizes a caller before it decodes any arg).
    """

    __slots__ = (
        "_budget",
        "_charging",
        "_counted",
        "_first",
        "_free",
        "_have",
        "_head",
        "_limits",
        "_need",
        "_parts",
        "_shared",
        "rest",
    )

    def __init__(self, limits: codec.Limits = codec.DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._first: codec.Limits | None = None  # limits of the next message only
        self._head = b""  # the first bytes (< 4) of a length prefix
        self._need = -1  # body length of the message being read; -1 while reading its length
        self._parts: list[bytes] = []  # the body bytes received so far, when _need >= 0
        self._have = 0  # their total length
        self._budget: int | None = None  # message bytes still allowed, when set
        self._free = 0  # messages not charged to the budget
        self._counted = -1  # messages still charged after those (-1: every one)
        self._shared: Budget | None = None  # also charged, when set
        self._charging = False  # the message being read is charged to the budget
        self.rest = b""
        """Bytes after a message read under first limits, to feed next (whole messages
        and the start of one, not yet read: see the class docstring)."""

    def set_budget(
        self, nbytes: int | None, *, free: int = 0, shared: Budget | None = None
    ) -> None:
        """Allow at most ``nbytes`` more message bytes (bodies), counted from each length
        prefix as it arrives, until reset with None; the next ``free`` messages are not
        counted. A caller that must hold several messages at once (a call's args or results)
        bounds their total with it. ``shared``: a budget charged as well (with ``nbytes``
        set), and first, whose refusal ends the read with its error (so a caller whose
        ``shared`` also bounds the total chooses the error). A budget set where there was none
        counts the message in progress, if its length prefix came already.

        Raises:
            BadProtocolError: that message alone is over the budget."""
        started = self._budget is None and nbytes is not None
        self._budget = nbytes
        self._free = free
        self._counted = -1
        self._shared = shared if nbytes is not None else None
        if started and self._need >= 0:
            self._check(self._need)  # a message whose length prefix came already counts

    def count_only(self, n: int) -> None:
        """Charge only the next ``n`` messages to the budget set (after the free ones); the
        messages after them are not charged. A call's args are ``nargs`` messages: what
        follows them in the same read (the end of args, streamed items) is not args, and
        while the budget is set it is decoded one message per :meth:`feed` (the rest kept
        in :attr:`rest`), as the caller asks for it: never held decoded uncounted."""
        self._counted = n

    def set_first_limits(self, limits: codec.Limits | None) -> None:
        """Decode the next message to complete under ``limits`` (tighter ones, say, for a
        header that must be read cheaply before anything else is) instead of the reader's;
        the messages after it are under the reader's limits again."""
        self._first = limits

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete (:attr:`rest` apart)."""
        return len(self._head) + self._have + (4 if self._need >= 0 else 0)

    def take_rest(self) -> bytes:
        """:attr:`rest`, which is then empty: the chunk to feed next."""
        rest = self.rest
        self.rest = b""
        return rest

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Decoded values of every message completed by ``data`` (up to and including one
        read under first limits: what follows it is kept in :attr:`rest`; feed that first).

        Raises:
            BadProtocolError: a length above the limit (raised as soon as the 4 length bytes
                are in) or a body that does not decode.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if self.rest:  # (a caller that fed on without taking it: the rest comes first)
            data = self.take_rest() + data
        out: list[Any] = []
        end = len(data)
        pos = 0
        need = self._need
        limits = self._limits
        try:
            if need >= 0:  # in the middle of a body
                missing = need - self._have
                if end < missing:
                    self._parts.append(data)
                    self._have += end
                    return out
                parts = self._parts
                parts.append(data[:missing] if missing < end else data)
                self._parts = []
                self._have = 0
                self._need = -1
                head = _bulk_head_size(parts[0], need)
                first = self._first
                if head and first is None:  # one byte string: its bytes are the value
                    self._charging = False  # (one item)
                    parts[0] = parts[0][head:]
                    out.append(b"".join(parts))
                else:
                    self._first = None
                    body = b"".join(parts)
                    if self._charging:
                        walked = self._charge_items(body, first or limits)
                        out.append(codec.decode(body, first or limits, walked=walked))
                    else:
                        out.append(codec.decode(body, first or limits))
                    if first is not None:
                        if missing < end:
                            self.rest = data[missing:]
                        return out
                if not self._counted and self._budget is not None:
                    if missing < end:  # (the counted messages are all here: see below)
                        self.rest = data[missing:]
                    return out
                need = -1
                pos = missing
            elif self._head:
                take = 4 - len(self._head)
                if end < take:
                    self._head += data
                    return out
                (need,) = _LENGTH.unpack(self._head + data[:take])
                self._head = b""
                self._check(need)
                pos = take
            while True:
                if need < 0:
                    if end - pos < 4:
                        if pos < end:
                            self._head = data[pos:]
                        break
                    (need,) = _LENGTH.unpack_from(data, pos)
                    self._check(need)
                    pos += 4
                if end - pos < need:
                    self._need = need
                    if pos < end:
                        self._parts.append(data[pos:])
                        self._have = end - pos
                    break
                stop = pos + need
                first = self._first
                if first is not None:
                    self._first = None
                    body = data[pos:stop]
                    if self._charging:
                        walked = self._charge_items(body, first)
                        out.append(codec.decode(body, first, walked=walked))
                    else:
                        out.append(codec.decode(body, first))
                    if stop < end:
                        self.rest = data[stop:]
                    break
                if self._charging:
                    body = data[pos:stop]
                    walked = self._charge_items(body, limits)
                    out.append(codec.decode(body, limits, walked=walked))
                else:
                    out.append(codec.decode(data[pos:stop], limits))
                pos = stop
                need = -1
                if not self._counted and self._budget is not None:
                    # The counted messages (a call's args) are all here: what follows is
                    # not charged, so it is decoded only as it is asked for, one message
                    # at a time (held decoded, anything could sit there uncounted).
                    if pos < end:
                        self.rest = data[pos:]
                    break
        except errors.BadProtocolError:
            self._charging = False
            self._head = b""
            self._need = -1
            self._parts = []
            self._have = 0
            self.rest = b""
            raise
        return out

    def _check(self, need: int) -> None:
        limit = (self._first or self._limits).max_message_size
        if need > limit:
            raise errors.BadProtocolError(
                f"messages: a message of {need} bytes exceeds the limit of {limit}"
            )
        self._charging = False
        budget = self._budget
        if budget is not None:
            if self._free:
                self._free -= 1
                return
            counted = self._counted
            if counted == 0:
                return
            self._counted = counted - 1 if counted > 0 else -1
            self._take(need)
            self._charging = True  # (its items too, once it is all here: _charge_items)

    def _take(self, nbytes: int) -> None:
        budget = self._budget
        assert budget is not None
        shared = self._shared
        if shared is not None:  # (first: its refusal is the one raised)
            shared.take(nbytes)
        if nbytes > budget:
            raise errors.BadProtocolError(
                "messages: the messages of one call exceed the total allowed for it"
            )
        self._budget = budget - nbytes

    def _charge_items(self, body: bytes, limits: codec.Limits) -> bool:
        """(A charged message, all here, before it is decoded.) Charge what it may cost
        decoded beyond its bytes (:func:`decoded_charge`), so that a message of many small
        items cannot be held at ~70 times the budget. Returns whether its heads were walked
        to count them (``codec.decode``'s ``walked``)."""
        self._charging = False
        if self._budget is None:
            return False
        extra, walked = decoded_charge(body, limits)
        if extra:
            self._take(extra)
        return walked
