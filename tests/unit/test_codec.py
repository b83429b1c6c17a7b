"""The CBOR codec: round trips, the tag registry, and limits on what a peer sends."""

from __future__ import annotations

import array
import collections
import struct
import subprocess
import sys
import time
import tracemalloc
import types
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.codec import Limits

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), children, max_size=5),
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_tuples_decode_as_lists() -> None:
    assert codec.decode(codec.encode((1, (2, 3)))) == [1, [2, 3]]


def test_big_integers_use_bignums() -> None:
    n = 2**200 + 5
    assert codec.decode(codec.encode([n, -n])) == [n, -n]


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_garbage_gives_bad_protocol_or_a_value(data: bytes) -> None:
    _bad_protocol_or_a_wire_value(data, codec.DEFAULT_LIMITS)


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=300)
def test_garbage_with_the_item_walk_gives_bad_protocol_or_a_value(data: bytes) -> None:
    # max_items below the size forces the pre-decode walk on every input.
    _bad_protocol_or_a_wire_value(data, Limits(max_items=1))


def _bad_protocol_or_a_wire_value(data: bytes, limits: Limits) -> None:
    """Decoding either fails with BadProtocolError or gives a value that is itself a valid
    wire value (it encodes again, and that encoding decodes)."""
    try:
        value = codec.decode(data, limits)
    except errors.BadProtocolError as exc:
        assert exc.id == "ipc.BadProtocol"
        return
    codec.decode(codec.encode(value))


def test_empty_and_trailing_bytes_are_refused() -> None:
    with pytest.raises(errors.BadProtocolError):
        codec.decode(b"")
    with pytest.raises(errors.BadProtocolError):
        codec.decode(codec.encode(1) + b"\x00")


def test_message_size_limit_checked_first() -> None:
    with pytest.raises(errors.BadProtocolError, match="exceeds the limit"):
        codec.decode(b"\x00" * 11, Limits(max_message_size=10))


def test_depth_limit() -> None:
    deep: Any = 0
    for _ in range(70):
        deep = [deep]
    data = cbor2.dumps(deep)  # (a peer's bytes: our own encoder refuses it, see below)
    with pytest.raises(errors.BadProtocolError):
        codec.decode(data)
    assert codec.decode(data, Limits(max_depth=100)) == deep
    with pytest.raises(errors.BadArgError, match="nests deeper than 64"):
        codec.encode(deep)


def test_item_limit() -> None:
    data = codec.encode(list(range(1000)))
    assert len(codec.decode(data)) == 1000
    with pytest.raises(errors.BadProtocolError, match="more than 100 items"):
        codec.decode(data, Limits(max_items=100))
    nested = codec.encode({"a": [[] for _ in range(300)]})
    with pytest.raises(errors.BadProtocolError):
        codec.decode(nested, Limits(max_items=200))


@pytest.mark.parametrize(
    "head",
    [
        b"\x9b" + struct.pack(">Q", 2**40),  # array of 2^40 items
        b"\xbb" + struct.pack(">Q", 2**40),  # map of 2^40 pairs
        b"\x5b" + struct.pack(">Q", 2**40),  # byte string of 2^40 bytes
        b"\x7b" + struct.pack(">Q", 2**40),  # text string of 2^40 bytes
    ],
)
def test_huge_declared_lengths_allocate_nothing(head: bytes) -> None:
    for limits in (codec.DEFAULT_LIMITS, Limits(max_items=1)):
        tracemalloc.start()
        try:
            with pytest.raises(errors.BadProtocolError):
                codec.decode(head + b"\x00" * 16, limits)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


def test_walk_refuses_lengths_beyond_the_message() -> None:
    for data in (b"\x82\x01", b"\xa2\x01\x02\x03", b"\x43ab", b"\x19\x01", b"\x1c"):
        with pytest.raises(errors.BadProtocolError, match=r"truncated|longer than|indefinite"):
            codec._walk_heads(data, codec.DEFAULT_LIMITS)
    with pytest.raises(errors.BadProtocolError, match="trailing"):
        codec._walk_heads(b"\x81\x01\x02", codec.DEFAULT_LIMITS)


def test_walk_accepts_what_it_should() -> None:
    data = codec.encode({"k": [1, b"xx", "s", -3, 1.5, None, True, 2**70]})
    assert codec.decode(data, Limits(max_items=12)) == codec.decode(data)
    with pytest.raises(errors.BadProtocolError):
        codec.decode(data, Limits(max_items=11))


_SCALARS_OF_EVERY_WIDTH = [0, 23, 24, 255, 256, 65535, 65536, 2**32, -1, -25, -300, 1.5]
_SCALARS_OF_EVERY_WIDTH += [None, True, "", "a", "\u00e9", b"x" * 23, "y" * 24]


@given(
    st.lists(st.tuples(st.sampled_from(_SCALARS_OF_EVERY_WIDTH), st.integers(1, 12)), max_size=12),
    st.sampled_from(["array", "map", "small arrays", "small maps"]),
    st.integers(1, 23),
)
@settings(max_examples=400)
def test_the_walk_counts_every_item_of_scalars_it_skips(
    runs: list[tuple[Any, int]], shape: str, chunk: int
) -> None:
    """The walk skips a run of scalars of one width, and a small container of scalars, at
    once: it counts each of them, and refuses one cut short."""
    values = [value for value, repeat in runs for _ in range(repeat)]
    encoded = [codec.encode(value) for value in values]
    if "map" in shape:
        encoded = encoded[: len(encoded) // 2 * 2]

    def container(parts: list[bytes]) -> bytes:
        if "map" in shape:
            return _map(list(zip(parts[::2], parts[1::2], strict=True)))
        return codec.cbor_head(4, len(parts)) + b"".join(parts)

    if shape.startswith("small"):
        step = 2 * chunk if "map" in shape else chunk
        chunks = [encoded[i : i + step] for i in range(0, len(encoded), step)]
        data = codec.cbor_head(4, len(chunks)) + b"".join(container(c) for c in chunks)
        items = 1 + len(chunks) + len(encoded)
    else:
        data = container(encoded)
        items = 1 + len(encoded)
    codec._walk_heads(data, Limits(max_items=items))
    with pytest.raises(errors.BadProtocolError, match="more than"):
        codec._walk_heads(data, Limits(max_items=items - 1))
    if encoded:
        for cut in (1, len(data) // 2):
            with pytest.raises(errors.BadProtocolError, match=r"truncated|longer than"):
                codec._walk_heads(data[:-cut], Limits(max_items=items))


def test_the_walk_stays_linear_when_runs_of_one_width_are_short() -> None:
    """Pairs of one width broken by a scalar of another: the walk looks for runs of one
    width, and must not look at the rest of the container each time it finds a pair (it
    did, and a 437 KB value took 7 s to walk). Compared with a value of as many items that
    has no such pairs, in the same process: a walk that looked at the rest would take
    hundreds of times as long."""

    def cpu(data: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            codec._walk_heads(data, codec.DEFAULT_LIMITS)
            best = min(best, time.process_time() - start)
        return best

    units = 40_000
    pairs = codec.cbor_head(4, 3 * units) + b"\x18\x20\x18\x20\x01" * units
    alternating = codec.cbor_head(4, 3 * units) + b"\x18\x20\x01" * (3 * units // 2)
    assert cpu(pairs) < 4 * cpu(alternating) + 0.005


def test_indefinite_lengths_are_refused() -> None:
    for data in (b"\x9f\x01\xff", b"\x5f\x41a\xff", b"\xbf\x01\x02\xff"):
        with pytest.raises(errors.BadProtocolError):
            codec.decode(data)


@pytest.mark.parametrize(
    "tag", [0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 258, 43000, 55799, 99, 0xF00F]
)
def test_foreign_tags_are_refused(tag: int) -> None:
    value = {0: "2020-01-01T00:00:00Z", 43000: [1.0, 2.0]}.get(tag, 1)  # (well-formed)
    data = cbor2.dumps(cbor2.CBORTag(tag, value))
    with pytest.raises(errors.BadProtocolError):
        codec.decode(data)


def test_malformed_project_tag_value_is_bad_protocol() -> None:
    data = cbor2.dumps(cbor2.CBORTag(codec.TAGS["error"], [1, 2]))
    with pytest.raises(errors.BadProtocolError):
        codec.decode(data)


def test_unencodable_values_are_bad_arg() -> None:
    with pytest.raises(errors.BadArgError):
        codec.encode(object())
    with pytest.raises(errors.BadArgError):
        codec.encode({1, 2})


class _Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class _SubPoint(_Point):
    pass


def test_register_custom_type_and_subclass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_encoders", dict(codec._encoders))
    monkeypatch.setattr(codec, "_SEMANTIC_OVERRIDES", dict(codec._SEMANTIC_OVERRIDES))

    def from_wire(v: Any) -> _Point:
        x, y = codec.as_sequence(v, "point")
        return _Point(x, y)

    codec.register("endpoint", _Point, lambda p: [p.x, p.y], from_wire)
    back = codec.decode(codec.encode({"p": _SubPoint(1, 2)}))
    assert isinstance(back["p"], _Point) and (back["p"].x, back["p"].y) == (1, 2)
    with pytest.raises(errors.BadProtocolError):
        codec.decode(cbor2.dumps(cbor2.CBORTag(codec.TAGS["endpoint"], 5)))


def test_register_needs_a_reserved_name() -> None:
    with pytest.raises(errors.BadArgError):
        codec.register("nope", _Point, lambda p: p, lambda v: v)


def test_tag_numbers_are_unique() -> None:
    assert len(set(codec.TAGS.values())) == len(codec.TAGS)


def test_as_mapping_and_sequence() -> None:
    assert codec.as_mapping({"a": 1}, "x") == {"a": 1}
    with pytest.raises(errors.BadProtocolError):
        codec.as_mapping([1], "x")
    with pytest.raises(errors.BadProtocolError):
        codec.as_sequence({}, "x")


@pytest.mark.parametrize(
    "value",
    [
        __import__("datetime").datetime(2020, 1, 1),
        __import__("decimal").Decimal("1.5"),
        __import__("uuid").UUID(int=5),
        frozenset({1}),
        cbor2.CBORTag(99, 1),
        1j,
    ],
)
def test_types_without_a_wire_form_are_refused_when_encoding(value: object) -> None:
    with pytest.raises(errors.BadArgError, match="no wire form"):
        codec.encode([value])


def test_a_user_string_goes_as_text() -> None:
    """A UserString is a sequence of UserStrings to cbor2, without end (the old code crashed
    on it): it goes as its text. A subclass is refused (nested too deep), not a crash."""

    class Named(collections.UserString):
        pass

    assert codec.decode(codec.encode([collections.UserString("hi")])) == ["hi"]
    with pytest.raises(errors.BadArgError, match="nests deeper"):
        codec.encode(Named("x"))


def test_a_memoryview_goes_as_bytes() -> None:
    """cbor2 writes a memoryview as an array of its bytes' values: b"ab" arrived as [97, 98],
    the wrong type and several times larger. It goes as bytes, as a bytearray does."""
    view = memoryview(b"abc")[1:]
    assert codec.decode(codec.encode(view)) == b"bc"
    assert codec.decode(codec.encode({"k": [view, bytearray(b"x")]})) == {"k": [b"bc", b"x"]}


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        (collections.deque([1, [2]]), [1, [2]]),
        (range(3), [0, 1, 2]),
        (array.array("h", [5, -5]), [5, -5]),
        (collections.UserList([1]), [1]),
        (collections.UserDict({"a": collections.deque([1])}), {"a": [1]}),
        (types.MappingProxyType({"b": range(2)}), {"b": [0, 1]}),
    ],
)
def test_other_sequences_and_mappings_go_as_lists_and_dicts(value: Any, decoded: Any) -> None:
    assert codec.decode(codec.encode(value)) == decoded
    assert codec.decode(codec.encode([value])) == [decoded]


@pytest.mark.parametrize(
    "make",
    [
        lambda inner: collections.deque([inner]),
        lambda inner: collections.UserList([inner]),
        lambda inner: collections.UserDict({"k": inner}),
        lambda inner: [collections.deque([inner])],
    ],
    ids=["deque", "UserList", "UserDict", "list-of-deque"],
)
def test_other_containers_are_held_to_the_limits_like_lists_and_dicts(make: Any) -> None:
    """Only lists, tuples and dicts had their nesting and items checked before cbor2 saw a
    value, and cbor2 writes any other sequence or mapping as an array or a map: a deque
    nested 20,000 deep crashed the process (its encoder recurses in C without a guard; see
    the subprocess case below), and a range of a billion numbers took gigabytes before the
    message size was looked at."""
    value: Any = None
    for _ in range(100):
        value = make(value)
    with pytest.raises(errors.BadArgError, match="nests deeper than 64"):
        codec.encode(value)
    start = time.monotonic()
    with pytest.raises(errors.BadArgError, match="more than 262144 items"):
        codec.encode(make(range(10**9)))
    assert time.monotonic() - start < 5  # (refused from its length: nothing is made)


def test_a_deque_nested_too_deep_is_refused_not_a_crash() -> None:
    script = (
        "import collections\n"
        "from ipcclient import codec, errors\n"
        "v = collections.deque()\n"
        "for _ in range(20_000):\n"
        "    v = collections.deque([v])\n"
        "try:\n"
        "    codec.encode(v)\n"
        "except errors.BadArgError as exc:\n"
        "    print(exc.msg)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "nests deeper than 64 levels" in done.stdout


# --- the decoder's short ways (one string, a constant header) ---------------------------------
def _generic_decode(data: bytes) -> Any:
    """What the general path makes of ``data`` (a bytearray skips the constant table, and a
    leading no-op byte cannot be used, so decode through cbor2 directly)."""
    return cbor2.loads(data)


@given(st.one_of(st.binary(max_size=70_000), st.text(max_size=3000)))
@settings(max_examples=200, deadline=None)
def test_a_lone_string_decodes_as_the_general_decoder_does(value: bytes | str) -> None:
    data = cbor2.dumps(value)
    got = codec.decode(data)
    assert type(got) is type(value) and got == value == _generic_decode(data)
    assert codec.decode(memoryview(data)) == value
    # Cut short or with a byte too many, the same head no longer matches: refused.
    if data[1:]:
        with pytest.raises(errors.BadProtocolError):
            codec.decode(data[:-1])
    with pytest.raises(errors.BadProtocolError):
        codec.decode(data + b"\x00")


def test_a_string_head_of_every_size_and_bad_text() -> None:
    for n in (0, 23, 24, 255, 256, 65_535, 65_536):
        for value in (b"b" * n, "t" * n):
            assert codec.decode(cbor2.dumps(value)) == value
    # A non-minimal head (1-byte length 5) is still one string of the right size.
    assert codec.decode(b"\x58\x05hello") == b"hello"
    assert codec.decode(b"\x59\x00\x02hi") == b"hi"
    for bad_text in (b"\x62\xff\xfe", b"\x63\xed\xa0\x80"):  # (an encoded surrogate too)
        with pytest.raises(errors.BadProtocolError, match="invalid CBOR"):
            codec.decode(bad_text)
    # Under limits tighter than the short ways allow, the decoder decides.
    with pytest.raises(errors.BadProtocolError):
        codec.decode(cbor2.dumps({"end": True, "nresults": 1}), Limits(max_items=2))
    assert codec.decode(b"\x42hi", Limits(max_items=1)) == b"hi"
    with pytest.raises(errors.BadProtocolError):
        codec.decode(b"\x5f\x41a\xff")  # indefinite: refused as before


def test_bad_text_carries_the_decoders_own_error_as_its_cause() -> None:
    for bad_text in (b"\x62\xff\xfe", b"\x63\xed\xa0\x80"):
        with pytest.raises(errors.BadProtocolError, match="invalid CBOR") as raised:
            codec.decode(bad_text)
        assert isinstance(raised.value.__cause__, cbor2.CBORDecodeError)


def test_constant_headers_decode_to_fresh_maps() -> None:
    for value in codec._CONSTANT_MAPS:
        data = cbor2.dumps(value)
        first = codec.decode(data)
        assert first == value and first is not value
        first["mutated"] = True
        assert codec.decode(data) == value  # the table is never handed out
        assert codec.decode(bytearray(data)) == value  # the general way agrees


# --- hand-built CBOR for plain values (no cbor2 on the hot path) -----------------------------
@given(
    st.one_of(
        st.binary(max_size=70_000),
        st.text(max_size=300),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    )
)
@settings(max_examples=400, deadline=None)
def test_encode_scalar_writes_what_cbor2_writes_or_declines(value: Any) -> None:
    got = codec.encode_scalar(value)
    if got is None:
        # Only what it does not do: non-ASCII text, ints outside 0..2**32-1, other types.
        assert not (
            type(value) is bytes
            or (type(value) is str and value.isascii())
            or (type(value) is int and 0 <= value < 2**32)
        )
    else:
        assert got == cbor2.dumps(value) == codec.encode(value)
    if type(value) is float:
        assert codec.encode_float(value) == cbor2.dumps(value)


def test_cbor_head_boundaries() -> None:
    for n in (0, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1):
        assert codec.cbor_head(0, n) == cbor2.dumps(n)
        assert codec.cbor_head(2, n)[0] >> 5 == 2


# -- map keys whose hashes a peer can make collide ----------------------------------------------

_M61 = 2**61 - 1
"""Python hashes an integer as its value modulo this prime: every multiple of it hashes alike."""


def _colliding_bignums(n: int) -> list[int]:
    """``n`` distinct integers with one hash, all too big for a plain CBOR head (bignums)."""
    return [k * _M61 for k in range(8, 8 + n)]


def test_thousands_of_colliding_bignum_keys_are_refused_before_the_map_is_built() -> None:
    keys = _colliding_bignums(16_000)
    assert len({hash(k) for k in keys}) == 1
    # (The map is written by hand: building it here would take the time the test is about.)
    data = codec.cbor_head(5, len(keys)) + b"".join(cbor2.dumps(k) + b"\x00" for k in keys)
    assert len(data) < codec.DEFAULT_LIMITS.max_items  # (~200 KB: within every other limit)
    with pytest.raises(errors.BadProtocolError, match="more than 64 map keys"):
        codec.decode(data)
    # As the item of an array key (a tuple: its hash is built from its items' hashes) too.
    data = codec.cbor_head(5, len(keys)) + b"".join(
        b"\x81" + cbor2.dumps(k) + b"\x00" for k in keys
    )
    with pytest.raises(errors.BadProtocolError, match="more than 64 map keys"):
        codec.decode(data)


def _map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return codec.cbor_head(5, len(pairs)) + b"".join(k + v for k, v in pairs)


_COMPOUND_KEYS = [
    cbor2.dumps(2**64 + 5),  # a bignum (tag 2)
    cbor2.dumps(-(2**64) - 5),  # a negative bignum (tag 3)
    b"\x82\x01\x02",  # an array (decoded as a tuple)
    b"\x80",  # an empty array
]


@pytest.mark.parametrize("key", _COMPOUND_KEYS)
def test_compound_keys_are_counted_over_the_whole_message(key: bytes) -> None:
    """64 keys that are arrays or bignums in one message pass, over two maps and nested in
    a value; the 65th is refused, wherever it is."""

    def message(n: int) -> bytes:
        # n entries {(i, key): i} (the integer makes the keys distinct), split as
        # [{32 entries}, {"k": {the rest}}].
        pairs = [(b"\x82" + cbor2.dumps(i) + key, cbor2.dumps(i)) for i in range(n)]
        first, second = pairs[:32], pairs[32:]
        return b"\x82" + _map(first) + b"\xa1\x61k" + _map(second)

    value = codec.decode(message(64))
    assert len(value[0]) == 32 and len(value[1]["k"]) == 32
    with pytest.raises(errors.BadProtocolError, match="more than 64 map keys"):
        codec.decode(message(65))
    assert codec.decode(message(65), Limits(max_compound_keys=65)) == codec.decode(
        message(65), Limits(max_compound_keys=10**6)
    )


@pytest.mark.parametrize(
    "data",
    [
        "a1a10102f6",  # {{1: 2}: null}
        "a18281a10102f6f6",  # {[[{1: 2}], null]: null}
        "a1d9f00080f6",  # {<error tag>: null}
        "82a18101f6a1a0f6",  # [{[1]: null}, {{}: null}]
    ],
)
def test_a_map_or_a_project_tag_as_or_inside_a_map_key_is_refused(data: str) -> None:
    """Comparing two such keys that share a hash could cost a lookup in a map of colliding
    keys for each of their entries: refused whatever the limits, and at the sender too."""
    with pytest.raises(errors.BadProtocolError, match="may not be a map or a project tag"):
        codec.decode(bytes.fromhex(data), Limits(max_compound_keys=10**6))


def test_a_project_tags_value_decodes_as_it_would_outside_the_tag() -> None:
    """Maps and arrays inside a project tag (not in a key) are plain dicts and lists, and
    may hold project tags themselves."""
    sent = errors.NoExistError("x", {"a": [1, {"b": 2}], "c": errors.AbortedError("y")})
    (back,) = codec.decode(codec.encode([sent]))
    assert isinstance(back, errors.NoExistError)
    (param,) = back.params
    assert type(param) is dict and param["a"] == [1, {"b": 2}] and type(param["a"]) is list
    assert isinstance(param["c"], errors.AbortedError)


def test_the_sender_refuses_a_map_or_a_project_value_in_a_map_key() -> None:
    frozen = cbor2.loads(bytes.fromhex("a1a10102f6"))  # (a key cbor2 made immutable)
    key = next(iter(frozen))
    for value in (
        {key: 1},
        {(1, key): 1},
        [{((1,), (2, key)): 1}],
        {errors.NoExistError("x"): 1},
    ):
        with pytest.raises(errors.BadArgError, match="map key"):
            codec.encode(value)
    assert codec.decode(codec.encode({(1, (2, 2**70)): 1})) == {(1, (2, 2**70)): 1}
    opaque = {cbor2.undefined: 1, cbor2.CBORSimpleValue(5): 2, (cbor2.CBORSimpleValue(7),): 3}
    assert codec.decode(codec.encode(opaque)) == opaque
    # Inside a project type's wire form too (an error's params), before a byte is sent.
    with pytest.raises(errors.BadArgError, match="map key"):
        codec.encode([errors.NoExistError("m", {(errors.NoExistError("x"),): 1})])


def test_keys_of_plain_kinds_are_not_limited() -> None:
    for keys in (
        list(range(-50_000, 50_000)),  # plain integers (at most ~9 share a hash)
        [float(i) + 0.5 for i in range(50_000)],
        [f"k{i}" for i in range(50_000)],  # strings hash with a per-process secret
        [b"k%d" % i for i in range(50_000)],
        [k * _M61 for k in range(1, 8)],  # the colliding multiples that fit 64 bits
    ):
        data = cbor2.dumps(dict.fromkeys(keys, None))
        assert len(codec.decode(data)) == len(keys)
    # Containers and tags as values (not keys) are not limited either.
    value = {"a": [(i, 2**70) for i in range(5_000)], "b": [{"x": [i]} for i in range(5_000)]}
    assert codec.decode(cbor2.dumps(value)) == {
        "a": [[i, 2**70] for i in range(5_000)],
        "b": [{"x": [i]} for i in range(5_000)],
    }


def _compound_keys(value: Any) -> int:
    """How many map keys in ``value`` encode as an array, a map or a tag (here: a tuple or an
    integer beyond 64 bits), counted as the decoder counts them."""
    if isinstance(value, dict):
        return sum(_compound(k) + _compound_keys(k) + _compound_keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_compound_keys(item) for item in value)
    return 0


def _compound(key: Any) -> int:
    return int(isinstance(key, tuple) or (isinstance(key, int) and not -(2**64) <= key < 2**64))


_keys = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66),
    st.text(max_size=3),
    st.tuples(st.integers(min_value=-(2**66), max_value=2**66)),
    st.tuples(),
)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
        max_leaves=40,
    ),
    st.integers(min_value=0, max_value=6),
)
@settings(max_examples=300, deadline=None)
def test_the_compound_key_limit_refuses_exactly_the_values_over_it(value: Any, limit: int) -> None:
    """Property: under any limit on compound keys, the decoder refuses a value exactly when it
    holds more of them, and the sender's check agrees with it."""
    data = cbor2.dumps(value)
    limits = Limits(max_compound_keys=limit)
    over = _compound_keys(value) > limit
    try:
        codec.decode(data, limits)
        refused = False
    except errors.BadProtocolError:
        refused = True
    assert refused == over
    try:
        codec.check_encoded(data, limits)
        checked = False
    except errors.BadArgError:
        checked = True
    assert checked == over


@given(
    st.recursive(
        st.none() | st.integers() | st.binary(max_size=3),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
        max_leaves=30,
    ),
    st.integers(min_value=0, max_value=12),
)
@settings(max_examples=300, deadline=None)
def test_the_walk_before_decoding_agrees_with_the_decoder_on_depth(value: Any, depth: int) -> None:
    """Property: a walk forced on every message (no compound key allowed, and the value has
    none) refuses a value for its depth exactly when the decoder alone does."""
    data = cbor2.dumps(value)
    outcomes = []
    for limits in (Limits(max_depth=depth), Limits(max_depth=depth, max_compound_keys=0)):
        try:
            outcomes.append(codec.decode(data, limits) == value or "differs")
        except errors.BadProtocolError:
            outcomes.append(False)
    assert outcomes[0] == outcomes[1]
