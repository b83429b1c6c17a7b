"""Length-prefixed CBOR messages on a flow."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.wire.messages import (
    DECODED_ITEM_BYTES,
    MessageReader,
    decoded_charge,
    encode_messages,
)

values = st.lists(
    st.one_of(st.none(), st.integers(), st.text(max_size=30), st.binary(max_size=300),
              st.lists(st.integers(), max_size=5)),
    min_size=1, max_size=10,
)  # fmt: skip


class Recorded:
    """A shared budget that allows everything and records each charge."""

    def __init__(self) -> None:
        self.charged: list[int] = []

    def take(self, nbytes: int) -> None:
        self.charged.append(nbytes)


@given(values=values, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=15))
@settings(max_examples=200, deadline=None)
def test_round_trip_under_any_chunking(values: list[Any], cuts: list[int]) -> None:
    data = encode_messages(*values)
    reader = MessageReader()
    got: list[Any] = []
    last = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        got.extend(reader.feed(data[last:cut]))
        last = max(last, cut)
    assert got == values
    assert reader.buffered == 0


def test_length_over_the_limit_is_refused_from_the_prefix_alone() -> None:
    reader = MessageReader(codec.Limits(max_message_size=100))
    with pytest.raises(errors.BadProtocolError, match="exceeds the limit"):
        reader.feed(struct.pack(">I", 101))
    assert reader.buffered == 0


def test_bad_bodies_are_bad_protocol() -> None:
    with pytest.raises(errors.BadProtocolError):
        MessageReader().feed(struct.pack(">I", 0))
    with pytest.raises(errors.BadProtocolError):
        MessageReader().feed(struct.pack(">I", 1) + b"\xff")


def test_partial_message_waits() -> None:
    data = encode_messages("hello")
    reader = MessageReader()
    assert reader.feed(data[:3]) == []
    assert reader.feed(data[3:6]) == []
    assert reader.feed(data[6:]) == ["hello"]


def test_a_budget_bounds_the_total_of_several_messages() -> None:
    reader = MessageReader()
    data = encode_messages(b"a" * 100, b"b" * 100, b"c" * 100)
    reader.set_budget(250)
    with pytest.raises(errors.BadProtocolError, match="total allowed"):
        reader.feed(data)
    reader2 = MessageReader()
    reader2.set_budget(400)
    assert len(reader2.feed(data)) == 3
    reader2.set_budget(None)
    assert reader2.feed(encode_messages(b"x" * 1000)) == [b"x" * 1000]


@given(cut=st.integers(min_value=0, max_value=400))
@settings(max_examples=100, deadline=None)
def test_only_the_counted_messages_are_charged(cut: int) -> None:
    """Two args filling the budget exactly, then the end of args and an item streamed after
    them: charged are the two args only, however the bytes were cut into chunks."""
    args = encode_messages(b"a" * 100, b"b" * 100)  # bodies of 102 bytes each
    data = args + encode_messages({"endArgs": True}, b"streamed")
    cut %= len(data) + 1
    shared = Recorded()
    reader = MessageReader()
    reader.set_budget(204, shared=shared)
    reader.count_only(2)
    got = reader.feed(data[:cut]) + reader.feed(data[cut:])
    while reader.rest:  # (what follows the args: one message per feed)
        got += reader.feed(reader.take_rest())
    assert got == [b"a" * 100, b"b" * 100, {"endArgs": True}, b"streamed"]
    assert shared.charged == [102, 102]
    uncounted = MessageReader()  # (without count_only, the end of args is over the budget)
    uncounted.set_budget(204)
    with pytest.raises(errors.BadProtocolError, match="total allowed"):
        uncounted.feed(data)


@given(cut=st.integers(min_value=0, max_value=30000))
@settings(max_examples=50, deadline=None)
def test_a_budget_counts_a_message_of_many_small_items_as_what_it_takes_decoded(
    cut: int,
) -> None:
    """An empty map is one byte on the wire and ~70 decoded: a budget of bytes alone let
    one call hold ~70 times it. Each item now counts as DECODED_ITEM_BYTES at least (the
    message's items counted from its heads, before it is decoded), however it is cut."""
    dense = encode_messages([{}] * 20000)  # 20 KB, 20,001 items
    cut %= len(dense) + 1
    shared = Recorded()
    reader = MessageReader()
    reader.set_budget(1 << 20, shared=shared)
    with pytest.raises(errors.BadProtocolError, match="total allowed"):
        reader.feed(dense[:cut])
        reader.feed(dense[cut:])
    assert sum(shared.charged) == 20001 * DECODED_ITEM_BYTES  # (bytes, then the rest of the items)
    roomy = MessageReader()
    roomy.set_budget(2 << 20)
    assert roomy.feed(dense[:cut]) + roomy.feed(dense[cut:]) == [[{}] * 20000]
    # Strings and numbers are one item each: charged their bytes only.
    bulk = encode_messages(b"x" * 500_000, "y" * 500_000, 10**18)
    plain = MessageReader()
    plain.set_budget(1_000_030)
    assert plain.feed(bulk) == [b"x" * 500_000, "y" * 500_000, 10**18]


@pytest.mark.interpreted  # (replaces a function of ipcclient.codec at run time)
@pytest.mark.parametrize("first", [False, True], ids=["reader-limits", "first-limits"])
@pytest.mark.parametrize("cut", [0, 1, 5, 3000])
def test_a_message_counted_for_its_budget_is_walked_once(
    monkeypatch: pytest.MonkeyPatch, cut: int, first: bool
) -> None:
    """Counting a structured message's items for its charge walks its heads, the walk the
    decoder makes before cbor2 builds such a value: it is not made a second time, whether
    the message came whole or in pieces."""
    records = [{"a": i, "b": "x"} for i in range(1000)]
    data = encode_messages(records)  # (its sender walked it too: before the count)
    walked: list[int] = []
    walk = codec._walk_heads

    def counting(data: Any, limits: codec.Limits) -> int:
        walked.append(len(data))
        return walk(data, limits)

    monkeypatch.setattr(codec, "_walk_heads", counting)
    reader = MessageReader()
    reader.set_budget(1 << 20)
    if first:
        reader.set_first_limits(codec.Limits(max_items=10_000))
    got = reader.feed(data[:cut]) + reader.feed(data[cut:])
    assert got == [records]
    assert walked == [len(data) - 4]
    unbudgeted = MessageReader()  # (the decoder's own walk, when nothing counted first)
    assert unbudgeted.feed(data) == [records]
    assert walked == [len(data) - 4] * 2


def test_checking_an_encoded_message_walks_its_heads_without_decoding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender checks a large structured message against the limits a peer decodes under
    by walking its heads, as the peer's decoder does first; it does not build the value
    (which cost as much again as the walk)."""

    def no_decoder(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded")

    records = [{"a": i, "b": "x"} for i in range(1000)]
    body = codec.encode(records)
    monkeypatch.setattr(codec.cbor2, "CBORDecoder", no_decoder)
    codec.check_encoded(body)
    with pytest.raises(errors.BadArgError, match="1000 items"):
        codec.check_encoded(body, codec.Limits(max_items=1000))


@pytest.mark.parametrize(
    ("value", "items"),
    [(b"x" * 1000, 1), ("t" * 1000, 1), (2**60, 1), (1.5, 1), (None, 1), ([1] * 100, 101),
     ([{}] * 1000, 1001), ({"k": list(range(300))}, 303)],
)  # fmt: skip
def test_what_holding_a_message_decoded_may_cost_beyond_its_bytes(value: Any, items: int) -> None:
    body = codec.encode(value)
    if items == 1:  # (a string, a number, a simple value: its bytes are what it takes)
        assert decoded_charge(body) == (0, False)
        if isinstance(value, str):  # (unless text past ASCII: up to 4 bytes a character)
            wide = codec.encode("\U0001f600" + value)
            assert decoded_charge(wide) == (3 * len(wide), False)
        return
    assumed = len(body) if len(body) <= 256 else items  # (a short message: an item a byte)
    walked = len(body) > 256  # (its heads were read to count them)
    assert decoded_charge(body) == (max(0, assumed * DECODED_ITEM_BYTES - len(body)), walked)
    if walked:
        assert codec.count_items(body) == items


def test_what_follows_the_counted_messages_is_decoded_only_as_it_is_asked_for() -> None:
    """The messages after a call's args are not charged to its budget: decoded with the
    chunk that completed the last arg, a frame of empty maps after a 1-byte arg was held at
    ~70 times its size, uncounted, until the method read it (if ever)."""
    trailing = encode_messages([{}] * 5000, [{}] * 5000)
    data = encode_messages(0) + trailing
    for cut in (len(data), 3):  # (the arg whole in the chunk, or completed by the next one)
        reader = MessageReader()
        reader.set_budget(1 << 20)
        reader.count_only(1)
        got = reader.feed(data[:cut])
        if cut != len(data):
            assert got == []
            got = reader.feed(data[cut:])
        assert got == [0]
        assert reader.rest == trailing  # (kept as it came)
        assert reader.feed(reader.take_rest()) == [[{}] * 5000]  # one at a time
        assert reader.feed(reader.take_rest()) == [[{}] * 5000]
        assert reader.rest == b""
    free = MessageReader()  # (no budget: every whole message of a chunk, as before)
    assert free.feed(data) == [0, [{}] * 5000, [{}] * 5000]


def test_a_shared_budget_is_charged_first_and_its_refusal_is_raised() -> None:
    class Full:
        def take(self, nbytes: int) -> None:
            raise errors.OverloadedError(f"full: {nbytes}")

    reader = MessageReader()
    reader.set_budget(10, shared=Full())  # (the reader's own budget is over too)
    with pytest.raises(errors.OverloadedError, match="full: 102"):
        reader.feed(encode_messages(b"a" * 100))


@given(cut=st.integers(min_value=0, max_value=200))
@settings(max_examples=100, deadline=None)
def test_a_message_under_first_limits_ends_its_feed(cut: int) -> None:
    """What follows a header read under first limits is kept undecoded until fed again (a
    server decides on the header, and authorizes its caller, before any arg is decoded),
    however the bytes were cut into chunks; a bad message after it is found only then."""
    header = {"method": "Echo", "nargs": 2}
    data = encode_messages(header, "a") + struct.pack(">I", 1) + b"\xff"
    cut %= len(data) + 1
    reader = MessageReader()
    reader.set_first_limits(codec.Limits(max_message_size=64))
    after = len(encode_messages(header))
    got = reader.feed(data[:cut])
    if got:  # (a stream feeds the rest before the flow's next chunk)
        assert reader.rest == data[after:cut]
        chunks = [reader.take_rest(), data[cut:]]
    else:  # the header is not complete in the first chunk
        got = reader.feed(data[cut:])
        assert reader.rest == data[after:]
        chunks = [reader.take_rest()]
    assert got == [header]
    with pytest.raises(errors.BadProtocolError):  # (only now: the header's feed did not)
        for chunk in chunks:
            reader.feed(chunk)
    assert reader.rest == b"" and reader.buffered == 0


def test_a_message_spanning_chunks_under_first_limits_ends_its_feed_too() -> None:
    header = encode_messages({"method": "Echo"})
    reader = MessageReader()
    reader.set_first_limits(codec.DEFAULT_LIMITS)
    assert reader.feed(header[:5]) == []
    assert reader.feed(header[5:] + encode_messages(1, 2)) == [{"method": "Echo"}]
    assert reader.feed(reader.take_rest()) == [1, 2]  # (the reader's own limits again)
    assert reader.rest == b""


def test_message_parts_keep_bulk_values_uncopied() -> None:
    from ipcclient.wire.messages import encode_message_parts

    big, other = os.urandom(70_000), os.urandom(5000)
    parts = encode_message_parts("hdr", big, 7, other, head=b"H", tail=b"T")
    assert b"".join(parts) == encode_messages("hdr", big, 7, other, head=b"H", tail=b"T")
    assert any(p is big for p in parts) and any(p is other for p in parts)
    assert len(parts) == 5  # small, big, small, other, tail
    assert encode_message_parts("only", "small") == [encode_messages("only", "small")]
    assert MessageReader().feed(b"".join(parts)[1:-1]) == ["hdr", big, 7, other]


def test_a_feed_with_a_rest_still_held_reads_the_rest_first() -> None:
    """A caller that feeds on without taking :attr:`MessageReader.rest` loses nothing and
    gets nothing out of order."""
    reader = MessageReader()
    reader.set_first_limits(codec.DEFAULT_LIMITS)
    assert reader.feed(encode_messages("header", 1, 2)) == ["header"]
    assert reader.feed(encode_messages(3)) == [1, 2, 3]
    assert reader.rest == b""
