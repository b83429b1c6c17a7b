"""CBOR encoding of headers and values, with the project's tags and hard limits.

Owns: turning Python values into CBOR bytes and back (RFC 8949, via cbor2), the one table of
CBOR tag numbers the project uses, and the limits a decoder enforces on what a peer sends
(message size, nesting depth, item count, map keys that are containers) *before* building
Python objects.

Must not: touch sockets, frames or flows; know what a header means. Every failure to decode is
a :class:`~ipcclient.errors.BadProtocolError` and nothing else; every failure to encode is a
:class:`~ipcclient.errors.BadArgError`.

What a value may be on the wire: ``None``, ``bool``, ``int`` (any size; bignums use tags 2/3),
``float``, ``str`` (a ``collections.UserString`` goes as text), ``bytes`` (``bytearray`` and
``memoryview`` go as bytes), lists/tuples (decoded as lists; any other sequence, such as a
deque or a range, goes as a list), dicts (keys of any of the former; any other mapping goes
as a dict), CBOR simple values and ``undefined`` (harmless scalars, accepted both ways), and
the project's tagged types. Other
CBOR tags (dates, regexes, MIME, shared references, sets, ...) are refused by the decoder so
that a peer cannot make this side run a parser it did not ask for or build a cyclic object;
indefinite-length items are refused too.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import email.message
import fractions
import functools
import io
import ipaddress
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from ipcclient import errors

__all__ = [
    "DEFAULT_LIMITS",
    "TAGS",
    "Limits",
    "check_encoded",
    "check_size",
    "count_items",
    "decode",
    "encode",
    "register",
]


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces on one message from a peer.

    Attributes:
        max_message_size: bytes in one encoded message. 4 MiB, as gRPC's default maximum
            receive size: big enough for bulk payloads (the benchmark's 1 MiB echo), small
            enough that a peer cannot make one message cost unbounded memory.
        max_depth: container nesting. 64 is far deeper than any header the protocol defines
            and keeps recursion well inside Python's stack.
        max_items: data items (every scalar, container and tag counts one) in one message.
            Bounds the Python objects one message can make: the worst case, nested empty
            containers, costs about 60 bytes each, so 262,144 items stay under ~16 MiB.
        max_compound_keys: map keys that are arrays, maps or tagged values (bignums
            among them) in one message, counted over all its maps. Python hashes such keys
            from their contents with no secret, so a peer could send thousands that share
            one hash, and building the map would take time quadratic in their number. Text
            and byte strings hash with a per-process secret, and no more than about two
            hundred integers or floats that fit CBOR's plain heads share a hash: keys of
            those kinds are not limited (a map of such colliding keys costs a few times
            what a map of as many plain keys costs, no more).

    A map key may not be a map or a project tag, nor hold one (an array key holds only
    scalars, bignums and arrays of them): comparing two such keys that share a hash could
    cost a lookup in a map of colliding keys for each of their entries. Those are refused
    whatever the limits.
    """

    max_message_size: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_items: int = 262_144
    max_compound_keys: int = 64


DEFAULT_LIMITS: Limits = Limits()

# The one place where the project's CBOR tag numbers live. They are taken from the
# first-come-first-served range of the IANA CBOR tags registry, a block of 16 from 0xF000.
TAGS: Mapping[str, int] = {
    "error": 0xF000,  # ipcclient.errors.IPCError (wire form: errors.to_wire)
    "blessings": 0xF001,  # security: a set of certificate chains
    "discharge": 0xF002,  # security: a discharge for a third-party caveat
    "caveat": 0xF003,  # security: one caveat
    "endpoint": 0xF004,  # naming: an endpoint
}
_TAG_NUMBERS = frozenset(TAGS.values())

# CBOR tags cbor2 would interpret by itself; the decoder refuses every one of them except the
# bignums (2, 3), which are plain integers.
_REFUSED_BUILTIN_TAGS = (
    0, 1, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 38,
    52, 54, 100, 256, 258, 260, 261, 262, 263, 1004, 43000, 55799,
)  # fmt: skip

_encoders: dict[type, tuple[int, Callable[[Any], Any]]] = {}


def register(
    name: str,
    cls: type,
    to_wire: Callable[[Any], Any],
    from_wire: Callable[[Any], Any],
) -> None:
    """Register a project type under its tag from :data:`TAGS`.

    ``to_wire(obj)`` returns a plain CBOR-encodable value; ``from_wire(value)`` rebuilds the
    object from that value (decoded as any value is: lists and dicts) and raises
    :class:`~ipcclient.errors.BadProtocolError` (or any exception, converted to it) when the
    value is malformed. Subclasses of ``cls`` encode under the same tag.
    """
    if name not in TAGS:
        raise errors.BadArgError(f"codec: no tag number is reserved for {name!r}")
    tag = TAGS[name]
    _encoders[cls] = (tag, to_wire)
    _OTHER_KINDS.clear()  # (a project type is not a container: see _nests_other)
    _SEMANTIC_OVERRIDES[tag] = _project_tag_decoder(from_wire)


def _encoder_for(cls: type) -> tuple[int, Callable[[Any], Any]] | None:
    for klass in cls.__mro__:
        found = _encoders.get(klass)
        if found is not None:
            if klass is not cls:
                _encoders[cls] = found
            return found
    return None


def _default(encoder: Any, value: Any) -> None:
    found = _encoder_for(type(value))
    if found is None:
        raise errors.BadArgError(f"codec: cannot encode a value of type {type(value).__name__}")
    tag, to_wire = found
    wire = to_wire(value)
    if isinstance(wire, list | tuple | dict):
        _check_shape(wire, DEFAULT_LIMITS)  # (a map key in it is refused as anywhere)
    encoder.encode_length(6, tag)  # major type 6: the tag head, then the tagged value
    encoder.encode(wire)


def _refuse_type(_encoder: Any, value: Any) -> None:
    raise errors.BadArgError(
        f"codec: values of type {type(value).__name__} have no wire form in ipcclient "
        "(send plain values: None, bool, int, float, str, bytes, lists and dicts)"
    )


# Types cbor2 would encode with tags that the decoder (on either side) refuses: refusing them
# here gives the sender a clear BadArgError instead of the peer a BadProtocolError.
_REFUSED_TYPES: dict[type, Callable[[Any, Any], None]] = dict.fromkeys(
    (
        datetime.datetime,
        datetime.date,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        re.Pattern,
        email.message.Message,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        set,
        frozenset,
        cbor2.CBORTag,
        complex,
    ),
    _refuse_type,
)


def _encode_view(encoder: Any, value: memoryview) -> None:
    encoder.encode(value.tobytes())  # (cbor2 would make a list of its bytes)


def _encode_user_string(encoder: Any, value: collections.UserString) -> None:
    encoder.encode(value.data)  # (cbor2 would take it for a sequence of such strings, forever)


_ENCODERS: dict[type, Callable[[Any, Any], None]] = {
    **_REFUSED_TYPES,
    memoryview: _encode_view,
    collections.UserString: _encode_user_string,
}
"""The encoder's callbacks by exact type: the refused types, ``memoryview`` sent as bytes and
``collections.UserString`` as text."""


_PLAIN_SCALARS = frozenset({bytes, str, int, float, bool, type(None)})
"""Exact types whose CBOR form never holds a refused tag: encoded without the per-value
type checks of ``_REFUSED_TYPES`` (which cost more than the encoding of a small value)."""
_OPAQUE_SCALARS = frozenset({cbor2.CBORSimpleValue, type(cbor2.undefined)})
"""The types cbor2 decodes the CBOR simple values and ``undefined`` to."""


def encode(value: Any) -> bytes:
    """Encode one value as CBOR bytes.

    Raises:
        BadArgError: the value (or something inside it) has no CBOR form here, or it nests
            deeper or holds more items than a peer decodes in one message
            (:data:`DEFAULT_LIMITS`).
    """
    if isinstance(value, _NESTING) or (
        type(value) not in _PLAIN_SCALARS and _nests_other(type(value))
    ):
        _check_shape(value, DEFAULT_LIMITS)
    try:
        if type(value) in _PLAIN_SCALARS:
            return cbor2.dumps(value)
        return cbor2.dumps(value, default=_default, encoders=_ENCODERS)
    except errors.IPCError:
        raise
    except Exception as exc:  # cbor2 raises several kinds; the caller sees one
        err = errors.BadArgError(f"codec: cannot encode value: {exc}")
        err.__cause__ = exc  # (set by hand too: compiled by mypyc, "from" is dropped)
        raise err from exc


_NESTING = (list, tuple, dict)
"""The usual containers of a value (see :func:`_nests_other` for the others)."""
_ARRAYS = (list, tuple)

_OTHER_KINDS: dict[type, bool] = {}
"""What :func:`_nests_other` found for each type it was asked about."""


def _nests_other(kind: type) -> bool:
    """Whether a value of ``kind``, not a list, tuple or dict, is a container all the same:
    cbor2 encodes any other sequence (a deque, a range, an ``array.array``) as an array and
    any other mapping as a map, so its shape is checked as a list's or a dict's is (a deque
    nested a hundred thousand deep crashed the process, a range of a billion took ~5 GB).
    Strings, bytes, bytearray, memoryview and the project's types are not."""
    known = _OTHER_KINDS.get(kind)
    if known is None:
        known = (
            issubclass(kind, Sequence | Mapping)
            and not issubclass(kind, str | bytes | bytearray | memoryview)
            and kind is not collections.UserString  # (sent as text: see _ENCODERS)
            and _encoder_for(kind) is None
        )
        if len(_OTHER_KINDS) < _OTHER_KINDS_KEPT:
            _OTHER_KINDS[kind] = known
    return known


_OTHER_KINDS_KEPT = 4096
"""At most this many types are remembered by :func:`_nests_other` (a program making classes
on the fly must not grow it for good)."""


def _check_shape(value: Any, limits: Limits) -> None:
    """Refuse a value (a list, tuple or dict, or another sequence or mapping: typed Any so
    that the compiled build takes those too) that nests deeper than ``limits.max_depth``
    containers or whose encoding would hold more than ``limits.max_items`` items, before
    cbor2 sees it: its encoder recurses in C without a guard (a value nested ten thousand
    deep crashes the process) and writes a shared part once per place it fills (a list
    holding one list twice, sixty times over, would never end); no peer decodes such a
    value anyway.
    Counted as the decoder counts, but for tags (a large integer, an error, blessings),
    which add a level and an item there: so this never refuses what a peer would take, and
    :func:`check_encoded` is the exact check of the encoded message.

    Walks the containers a level at a time, each once per place it fills: never more
    than ``max_items`` of them, since each counts as an item."""
    level: list[Any] = [value]
    depth = 0  # of the containers in ``level`` (the value itself: 0, as the decoder counts)
    items = 1
    nesting = _NESTING
    plain = _PLAIN_SCALARS
    other = _nests_other
    arrays = _ARRAYS
    while level:
        depth += 1  # (now: of their items)
        inner: list[Any] = []
        for container in level:
            size = len(container)
            if size and depth > limits.max_depth:
                raise _over_shape(f"it nests deeper than {limits.max_depth} levels")
            if isinstance(container, dict) or (
                not isinstance(container, arrays) and isinstance(container, Mapping)
            ):
                items += 2 * size
                if items > limits.max_items:  # (before a look at each key)
                    raise _over_shape(f"it holds more than {limits.max_items} items")
                if not plain.issuperset(map(type, container)):
                    for key in container:
                        _check_key(key)
                if size < _FLAT_CHECK or not (_flat(container) and _flat(container.values())):
                    for key, item in container.items():
                        if isinstance(key, nesting):
                            inner.append(key)
                        if isinstance(item, nesting) or (
                            type(item) not in plain and other(type(item))
                        ):
                            inner.append(item)
            else:
                items += size
                if items > limits.max_items:  # (before a look at each item: a long range)
                    raise _over_shape(f"it holds more than {limits.max_items} items")
                if size < _FLAT_CHECK or not _flat(container):
                    for item in container:
                        if isinstance(item, nesting) or (
                            type(item) not in plain and other(type(item))
                        ):
                            inner.append(item)
            if items > limits.max_items:
                raise _over_shape(f"it holds more than {limits.max_items} items")
        level = inner


def _check_key(key: Any) -> None:
    """Refuse a map key that a peer refuses: one that is, or holds, a mapping or a value of
    a project type (a key may be a scalar, or a tuple of scalars and tuples)."""
    pending = [key]
    seen = 0  # (a tuple may hold one tuple twice, at every level: bounded by items)
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind in _PLAIN_SCALARS:
            continue
        seen += 1
        if seen > DEFAULT_LIMITS.max_items:
            raise _over_shape(f"it holds more than {DEFAULT_LIMITS.max_items} items")
        if isinstance(item, tuple):
            pending.extend(item)
        elif kind in _OPAQUE_SCALARS:
            continue
        elif not isinstance(item, int | float | str | bytes) or _encoder_for(kind) is not None:
            raise errors.BadArgError(
                "codec: a map key may be None, a bool, an int, a float, a string, bytes, a "
                f"CBOR simple value or a tuple of them, not a {kind.__name__} (a peer refuses "
                "it)"
            )


_FLAT_CHECK = 16
"""A container this long or longer is first looked at as a whole: see :func:`_flat`."""


def _flat(items: Any) -> bool:
    """Whether none of ``items`` is a container (a pass over their types at C speed)."""
    plain = _PLAIN_SCALARS
    return not any(
        issubclass(kind, _NESTING) or (kind not in plain and _nests_other(kind))
        for kind in set(map(type, items))
    )


def _over_shape(why: str) -> errors.BadArgError:
    return errors.BadArgError(
        f"codec: the value is over the limits a peer accepts in one message: {why}"
    )


_SMALL_HEADS = tuple(bytes((i,)) for i in range(256))


def cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type ``major`` (0-7) with argument ``n`` >= 0
    (RFC 8949 section 3.1): what cbor2 writes before a string, array or map of length
    ``n``, or for the unsigned integer ``n`` (major 0)."""
    m = major << 5
    if n < 24:
        return _SMALL_HEADS[m | n]
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return _SMALL_HEADS[m | 25] + n.to_bytes(2, "big")
    if n < 0x1_0000_0000:
        return _SMALL_HEADS[m | 26] + n.to_bytes(4, "big")
    return _SMALL_HEADS[m | 27] + n.to_bytes(8, "big")


_FLOAT64 = struct.Struct(">Bd")


def encode_float(x: float) -> bytes:
    """A float as cbor2 writes it: 64 bits, except infinities and NaN (16 bits)."""
    if x - x == 0.0:  # finite
        return _FLOAT64.pack(0xFB, x)
    return cbor2.dumps(x)


def encode_scalar(value: Any) -> bytes | None:
    """A byte string, an ASCII text string or a small unsigned integer the way cbor2 writes
    it, built without cbor2 (which costs more than the work when it runs cold, as it does
    after every wait for a peer); None for anything else (use :func:`encode`)."""
    kind = type(value)
    if kind is bytes:
        data: bytes = value
        return cbor_head(2, len(data)) + data
    if kind is str:
        text: str = value
        if text.isascii():
            return cbor_head(3, len(text)) + text.encode("ascii")
        return None
    if kind is int:
        number: int = value
        if 0 <= number < 0x1_0000_0000:
            return cbor_head(0, number)
    return None


def _refuse_tag(*_: Any) -> Any:
    raise errors.BadProtocolError("codec: CBOR tag not allowed")


_SEMANTIC_OVERRIDES: dict[int, Callable[..., Any]] = dict.fromkeys(
    _REFUSED_BUILTIN_TAGS, _refuse_tag
)
"""The decoder's callbacks by tag number: the refused built-in tags, and each project tag
(added by :func:`register`)."""


def _tag_hook(tag: cbor2.CBORTag, _immutable: bool) -> Any:
    """Called by the decoder with every tag it has no decoder for."""
    raise errors.BadProtocolError(f"codec: unknown CBOR tag {tag.tag}")


def _project_tag_decoder(from_wire: Callable[[Any], Any]) -> Callable[[Any, bool], Any]:
    """The decoder's callback for one project tag: ``from_wire`` of the tag's value. The
    value is decoded as it would be outside the tag (the decoder's fallback for tags would
    decode it as if it were a map key, which :func:`_object_hook` refuses)."""

    def decode_tag(value: Any, immutable: bool) -> Any:
        if immutable:
            raise _in_a_key()
        return from_wire(value)

    return decode_tag


def _object_hook(value: Any, immutable: bool) -> Any:
    """Called by the decoder with every map it built; ``immutable``: the map is a map key,
    or inside one."""
    if immutable:
        raise _in_a_key()
    return value


def _in_a_key() -> errors.BadProtocolError:
    # (cbor2 decodes a bignum's value as it decodes a key: a map there ends here too.)
    return errors.BadProtocolError(
        "codec: a map key may not be a map or a project tag, nor hold one (nor may a bignum)"
    )


def _walk_heads(data: bytes | bytearray | memoryview, limits: Limits) -> int:
    """Walk the CBOR heads of one message and refuse it when it holds more than
    ``limits.max_items`` items, more than ``limits.max_compound_keys`` map keys that are
    arrays, maps or tags, or nests deeper than ``limits.max_depth``.

    Only heads are read: string contents and the arguments of scalars are skipped, nothing
    is allocated but one entry per open container. The walk stops as soon as a limit is
    passed. Declared lengths larger than the bytes left are refused too. Returns the number
    of items (the message's own value included).
    """
    raw = data if type(data) is bytes else bytes(data)
    end = len(raw)
    item_limit = limits.max_items
    key_limit = limits.max_compound_keys
    depth_limit = limits.max_depth
    widths = _ITEM_WIDTHS
    long_run = _LONG_RUN
    pos = 0
    count = 0
    keys = 0
    # The containers open around the next item: how many items each has left to give, and
    # whether it is a map (where an item is a key when its container has an even number
    # left). The innermost one is kept out of the lists, in ``left`` and ``in_map``; the
    # message itself is an array of one.
    outer_left: list[int] = []
    outer_map: list[bool] = []
    left = 1
    in_map = False
    while True:
        while not left:
            if not outer_left:
                if pos != end:
                    raise errors.BadProtocolError("codec: trailing bytes after the CBOR message")
                return count
            left = outer_left.pop()
            in_map = outer_map.pop()
        if pos >= end:
            raise errors.BadProtocolError("codec: truncated CBOR message")
        initial = raw[pos]
        width = widths[initial]
        if width:
            # A scalar of a fixed size (never a compound key): one item, skipped whole.
            run = 1
            if (
                left >= long_run
                and pos + 3 * width < end
                and widths[raw[pos + width]] == width
                and widths[raw[pos + 2 * width]] == width
                and widths[raw[pos + 3 * width]] == width
            ):
                # A run of at least 4 of one width (an array of floats, say): their heads
                # are a width apart, so the run is found with slices, in windows that
                # double (16, 32, ... heads): in proportion to its length, not to the
                # container's.
                strip = _HEADS_OF_WIDTH[width]
                run = 0
                window = long_run
                while True:
                    start = pos + width * run
                    ask = min(window, left - run)
                    heads = raw[start : min(start + width * ask, end - width + 1) : width]
                    got = len(heads) - len(heads.lstrip(strip))
                    run += got
                    if got < ask or run >= left:
                        break
                    window *= 2
            pos += width * run
            if pos > end:
                raise errors.BadProtocolError("codec: truncated CBOR item")
            left -= run
            count += run
            if count > item_limit:
                raise errors.BadProtocolError(f"codec: message holds more than {item_limit} items")
            continue
        is_key = in_map and not left & 1
        left -= 1
        count += 1
        if count > item_limit:
            raise errors.BadProtocolError(f"codec: message holds more than {item_limit} items")
        pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > end:
                raise errors.BadProtocolError("codec: truncated CBOR head")
            if major == 6:
                pos += size  # (a tag's number: not needed here; scalars went above)
                arg = 0
            elif size == 1:
                arg = raw[pos]
                pos += 1
            else:
                arg = int.from_bytes(raw[pos : pos + size], "big")
                pos += size
        else:
            raise errors.BadProtocolError("codec: indefinite or reserved CBOR length")
        if major < 4 or major == 7:
            if major == 2 or major == 3:
                if arg > end - pos:
                    raise errors.BadProtocolError("codec: CBOR string longer than the message")
                pos += arg
            continue
        if major == 4:
            if arg > end - pos:
                raise errors.BadProtocolError("codec: CBOR array longer than the message")
            inner = arg
        elif major == 5:
            if arg > (end - pos) // 2:
                raise errors.BadProtocolError("codec: CBOR map longer than the message")
            inner = 2 * arg
        else:
            inner = 1
        if is_key:
            keys += 1
            if keys > key_limit:
                raise errors.BadProtocolError(
                    f"codec: message holds more than {key_limit} map keys that are arrays, "
                    "maps or tagged values"
                )
        if not inner:
            continue
        if len(outer_left) >= depth_limit:
            raise errors.BadProtocolError(f"codec: message nests deeper than {depth_limit}")
        if inner <= _SMALL_CONTAINER:
            # A small array, map or tag of scalars only ({"x": 1, "y": 2}, say) is skipped
            # whole.
            flat = _scalars(inner).match(raw, pos)
            if flat is not None:
                pos = flat.end()
                count += inner
                if count > item_limit:
                    raise errors.BadProtocolError(
                        f"codec: message holds more than {item_limit} items"
                    )
                continue
        outer_left.append(left)
        outer_map.append(in_map)
        left = inner
        in_map = major == 5


def _could_hold_compound_keys(data: bytes | bytearray | memoryview, limit: int) -> bool:
    """Whether ``data`` could hold more than ``limit`` map keys that are arrays, maps or tags:
    each such key begins with a byte in 0x80-0xDF (and is at least one byte, its value one
    more), so a message with no more such bytes, or of no more than twice as many bytes,
    cannot. (Its first bytes are counted first: in a message of many numbers, they are
    enough to say that it could.)"""
    if len(data) <= 2 * limit:
        return False
    raw = data if type(data) is bytes else bytes(data)
    first = raw[:_FIRST_BYTES]
    if len(first) - len(first.translate(None, _CONTAINER_HEADS)) > limit:
        return True
    return len(raw) > _FIRST_BYTES and (
        len(raw) - len(raw.translate(None, _CONTAINER_HEADS)) > limit
    )


_FIRST_BYTES = 4096
"""How many bytes :func:`_could_hold_compound_keys` counts before counting them all."""


def check_size(size: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a message of ``size`` encoded bytes that is over ``limits``' message size.

    Raises:
        BadArgError: it is.
    """
    if size > limits.max_message_size:
        raise errors.BadArgError(
            f"codec: a value of {size} bytes once encoded is over the message limit of "
            f"{limits.max_message_size} bytes (send it in pieces, e.g. as a stream)"
        )


def count_items(data: bytes, limits: Limits = DEFAULT_LIMITS) -> int:
    """How many items the message ``data`` holds, as the decoder counts them (the value
    itself, and each element, key and value inside), found from its heads alone, without
    decoding it.

    Raises:
        BadProtocolError: the message is malformed or over ``limits`` (as :func:`decode`
            would refuse it, but for what only decoding finds: text that is not UTF-8,
            refused tags or keys).
    """
    size = len(data)
    if size > limits.max_message_size:
        raise errors.BadProtocolError(
            f"codec: message of {size} bytes exceeds the limit of {limits.max_message_size}"
        )
    if not size:
        raise errors.BadProtocolError("codec: empty message")
    return _walk_heads(data, limits)


def check_encoded(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse, before it is sent, an encoded message that a peer's :func:`decode` under
    ``limits`` would refuse: for its size, its number of items, its nesting or its map keys.

    A byte or text string or a scalar is one item at no depth: only its size is looked at. A
    container's heads are walked, as the peer's decoder walks them before it builds a value
    (:func:`_walk_heads`, which counts the items, nesting and container keys the limits
    bound), only when it could reach a limit: every container head is a byte in 0x80-0xDF,
    so a message with no more such bytes than ``max_depth`` cannot nest deeper, nor hold
    more than that many keys that are containers, and one of no more bytes than
    ``max_items`` cannot hold more items. It is not decoded: what else a decoder refuses (a
    refused tag or type, a map in a map key, text that is not UTF-8), :func:`encode`
    refuses before it makes the bytes.

    Raises:
        BadArgError: over a limit (or otherwise refused by the decoder); nothing was sent.
    """
    size = len(data)
    check_size(size, limits)
    if not size or (data[0] >> 5) not in (4, 5, 6):
        return
    bound = min(limits.max_depth, limits.max_compound_keys)
    if size <= limits.max_items and (
        size <= bound or size - len(data.translate(None, _CONTAINER_HEADS)) <= bound
    ):
        return
    try:
        _walk_heads(data, limits)
    except errors.BadProtocolError as exc:
        raise errors.BadArgError(
            f"codec: the value is over the limits a peer accepts in one message "
            f"({limits.max_items} items, {limits.max_depth} levels of nesting, "
            f"{limits.max_compound_keys} map keys that are containers): {exc.msg}"
        ) from None


_CONTAINER_HEADS = bytes(range(0x80, 0xE0))
"""The initial bytes of CBOR arrays, maps and tags (major types 4, 5 and 6)."""


def _item_widths() -> list[int]:
    widths = [0] * 256
    for head in (*range(0x00, 0x18), *range(0x20, 0x38), *range(0xE0, 0xF8)):
        widths[head] = 1
    for info, width in ((24, 2), (25, 3), (26, 5), (27, 9)):
        widths[info] = widths[0x20 + info] = widths[0xE0 + info] = width
    for length in range(24):
        widths[0x40 + length] = widths[0x60 + length] = 1 + length
    return widths


_ITEM_WIDTHS = _item_widths()
"""For each initial byte, the size of the whole item when it is a scalar of a fixed size
(integers, floats, simple values, strings of fewer than 24 bytes), else 0."""
_HEADS_OF_WIDTH = {
    width: bytes(h for h in range(256) if _ITEM_WIDTHS[h] == width)
    for width in set(_ITEM_WIDTHS) - {0}
}
"""The initial bytes of the items of each width of :data:`_ITEM_WIDTHS`."""

_SCALAR = b"(?:%s)" % b"|".join(
    b"[%s]%s" % (re.escape(heads), b".{%d}" % (width - 1) if width > 1 else b"")
    for width, heads in sorted(_HEADS_OF_WIDTH.items())
)
"""One item that :data:`_ITEM_WIDTHS` gives a width, as a regular expression."""
_LONG_RUN = 16
"""A container with this many items left or more is looked at for a run of scalars of one
width (in fewer, looking costs more than it saves)."""
_SMALL_CONTAINER = 8
"""An array, map or tag of this many items or fewer is looked at as a whole (for more, a
container that turns out to hold another costs more to look at than it saves)."""


@functools.cache
def _scalars(count: int) -> re.Pattern[bytes]:
    """Exactly ``count`` items that :data:`_ITEM_WIDTHS` gives a width."""
    return re.compile(b"%s{%d}" % (_SCALAR, count), re.DOTALL)


_ONE_BYTE: dict[int, Callable[[], Any]] = {
    0xA0: dict,  # {}
    0x80: list,  # []
    0xF4: lambda: False,
    0xF5: lambda: True,
    0xF6: lambda: None,
}
_ONE_BYTE.update({i: functools.partial(int, i) for i in range(24)})  # 0..23
"""Values that are one byte on the wire, built without running the decoder (containers are
fresh objects each time)."""


_SHORT_WAY_ITEMS = 8
_SHORT_WAY_DEPTH = 2
"""The fast paths of :func:`decode` (one string, a constant map of at most 7 items and
depth 1) apply only under limits at least this loose."""

_STRING_HEADS = {24: 2, 25: 3, 26: 5, 27: 9}
"""Head sizes of a CBOR string by its additional info (1-, 2-, 4-, 8-byte lengths)."""

_CONSTANT_MAPS: tuple[dict[str, Any], ...] = (
    {"end_stream_args": True},
    *({"end": True, "nresults": n} for n in range(4)),
    {"end": True},
)
_CONSTANT_MESSAGES: dict[bytes, dict[str, Any]] = {cbor2.dumps(v): v for v in _CONSTANT_MAPS}
"""Flat maps of plain values sent on every call (the end of args, the usual final response
headers): recognised by their bytes and copied, instead of decoded."""


def _invalid(exc: BaseException) -> errors.BadProtocolError:
    """The error for input the decoder refused, caused by the decoder's own error (set by
    hand as well as by ``raise ... from``: compiled by mypyc, ``from`` is dropped)."""
    err = errors.BadProtocolError(f"codec: invalid CBOR: {exc}")
    err.__cause__ = exc
    return err


def decode(
    data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS, *, walked: bool = False
) -> Any:
    """Decode exactly one CBOR value from ``data`` under ``limits``.

    ``walked``: the caller counted ``data``'s items with :func:`count_items` under the same
    ``limits`` (to charge a budget for them), which is the walk of its heads this function
    would make before cbor2 builds the value; it is not made twice.

    Raises:
        BadProtocolError: for anything that is not one valid, allowed value within the limits
            (garbage, truncation, trailing bytes, refused tags, too deep, too many items,
            too large). No other exception escapes.
    """
    size = len(data)
    if size > limits.max_message_size:
        raise errors.BadProtocolError(
            f"codec: message of {size} bytes exceeds the limit of {limits.max_message_size}"
        )
    if size == 0:
        raise errors.BadProtocolError("codec: empty message")
    first = data[0]
    if limits.max_items < _SHORT_WAY_ITEMS or limits.max_depth < _SHORT_WAY_DEPTH:
        pass  # (limits so tight that the fast paths below could exceed them)
    elif size == 1:  # one-byte values (empty headers, small ints, flags) are common
        factory = _ONE_BYTE.get(first)
        if factory is not None:
            return factory()
    elif 0x40 <= first <= 0x7B:
        # One definite byte or text string (an arg, a result): its head says how long it
        # is, so it is the whole message exactly when the sizes agree (no decoder needed).
        info = first & 0x1F
        head = 1 if info < 24 else (_STRING_HEADS.get(info, 0))
        if head and size >= head:
            length = info if head == 1 else int.from_bytes(data[1:head], "big")
            if head + length == size:
                body = bytes(data[head:])
                if first < 0x60:
                    return body
                with contextlib.suppress(UnicodeDecodeError):  # (the decoder says why)
                    return body.decode("utf-8")
    elif type(data) is bytes:
        constant = _CONSTANT_MESSAGES.get(data)
        if constant is not None:
            return dict(constant)
    # A message can hold at most one item per byte, so small messages need no walk.
    if walked:
        pass
    elif size > limits.max_items or _could_hold_compound_keys(data, limits.max_compound_keys):
        _walk_heads(data, limits)
    try:
        stream = io.BytesIO(data)
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_tag_hook,
            object_hook=_object_hook,
            semantic_decoders=_SEMANTIC_OVERRIDES,
            max_depth=limits.max_depth,
            allow_indefinite=False,
        ).decode()
        if stream.tell() != size:
            raise errors.BadProtocolError("codec: trailing bytes after the CBOR message")
    except errors.BadProtocolError:
        raise
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, errors.BadProtocolError):
            raise cause from None
        raise _invalid(exc) from exc
    except (errors.IPCError, ValueError, TypeError, KeyError, IndexError, OverflowError,
            RecursionError, UnicodeError, MemoryError) as exc:  # fmt: skip
        raise _invalid(exc) from exc
    return value


def as_sequence(value: Any, what: str) -> Sequence[Any]:
    """``value`` if it is a CBOR array (list or tuple), else BadProtocolError."""
    if isinstance(value, list | tuple):
        return value
    raise errors.BadProtocolError(f"codec: {what} must be an array")


def as_mapping(value: Any, what: str) -> Mapping[Any, Any]:
    """``value`` if it is a CBOR map, else BadProtocolError."""
    if isinstance(value, Mapping):
        return value
    raise errors.BadProtocolError(f"codec: {what} must be a map")


register("error", errors.IPCError, errors.to_wire, errors.from_wire)
