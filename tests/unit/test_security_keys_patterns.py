"""Keys, signature domain separation, extension rules and BlessingPattern properties."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import errors
from ipcclient.security import (
    ALL_PRINCIPALS,
    PURPOSE_CERTIFICATE,
    PURPOSE_DISCHARGE,
    PURPOSE_HANDSHAKE,
    PURPOSE_MESSAGE,
    BlessingPattern,
    Principal,
    PublicKey,
    is_valid_extension,
    patterns,
    signed_bytes,
    validate_extension,
)

PURPOSES = [PURPOSE_CERTIFICATE, PURPOSE_DISCHARGE, PURPOSE_HANDSHAKE, PURPOSE_MESSAGE]

ext_strategy = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
ext_strategy = ext_strategy.filter(is_valid_extension)
name_strategy = st.lists(ext_strategy, min_size=1, max_size=5)


def test_signature_verifies_for_its_purpose_only() -> None:
    p = Principal.generate()
    msg = b"transcript-hash"
    for purpose in PURPOSES:
        sig = p.sign(purpose, msg)
        for other in PURPOSES:
            assert p.public_key.verify(sig, other, msg) is (other == purpose)


def test_signature_bound_to_message_and_key() -> None:
    p, q = Principal.generate(), Principal.generate()
    sig = p.sign(PURPOSE_MESSAGE, b"hello")
    assert p.public_key.verify(sig, PURPOSE_MESSAGE, b"hello")
    assert not p.public_key.verify(sig, PURPOSE_MESSAGE, b"hellO")
    assert not q.public_key.verify(sig, PURPOSE_MESSAGE, b"hello")
    assert not p.public_key.verify(sig[:-1], PURPOSE_MESSAGE, b"hello")
    assert not p.public_key.verify(b"x" * 64, PURPOSE_MESSAGE, b"hello")


def test_purpose_and_message_boundary_is_unambiguous() -> None:
    # "ab" + NUL + "c" must not equal "a" + NUL + "b\0c": purposes cannot contain NUL.
    with pytest.raises(errors.BadArgError):
        signed_bytes(b"a\x00b", b"c")
    assert signed_bytes(b"ab", b"c") == b"ipcclient-sig-v1\x00ab\x00c"
    for bad in (b"", "text", b"x" * 65):
        with pytest.raises(errors.BadArgError):
            signed_bytes(bad, b"m")  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        signed_bytes(b"ok", "not-bytes")  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        Principal.generate().public_key.verify(b"", b"a\x00", b"m")


def test_public_key_raw_der_round_trip_and_equality() -> None:
    k = Principal.generate().public_key
    assert len(k.raw) == 32
    assert PublicKey.from_raw(k.raw) == k
    assert PublicKey.from_der(k.der) == k
    assert hash(PublicKey.from_raw(k.raw)) == hash(k)
    assert k != Principal.generate().public_key
    assert k != "not a key"
    assert k.fingerprint in repr(k)
    for bad in (b"", b"x" * 31, "x" * 32):
        with pytest.raises(errors.BadArgError):
            PublicKey.from_raw(bad)  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        PublicKey.from_der(b"garbage")


def test_public_key_from_der_refuses_other_key_types() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(errors.BadArgError):
        PublicKey.from_der(der)


@pytest.mark.parametrize(
    "ext",
    [
        "",
        "a:b",
        "__x",
        "$",
        "...",
        "a b",
        "a,b",
        "a@b",
        "a/b",
        "a(b",
        "tab\t",
        "x\u200b",
        7,
        "x" * 257,
    ],
)
def test_invalid_extensions(ext: object) -> None:
    assert not is_valid_extension(ext)
    with pytest.raises(errors.BadArgError):
        validate_extension(ext)


@pytest.mark.parametrize("ext", ["alice", "a_b", "a.b-c", "x$", "_x", "é", "x" * 256])
def test_valid_extensions(ext: str) -> None:
    assert validate_extension(ext) == ext


_DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]


def _valid_when_received(ext: str) -> bool:
    """The rule for an extension received or loaded (every release's rule before the one for
    new names), written out one character at a time."""
    if not ext or len(ext) > 256 or ext in ("$", "...") or ext.startswith("__"):
        return False
    return not any(
        ch in ":,@()<>/" or ch.isspace() or unicodedata.category(ch)[0] in ("C", "Z") for ch in ext
    )


def _valid_when_made(ext: str) -> bool:
    """The rule for an extension this SDK makes, written out one character at a time (the
    module decides plain-ASCII extensions without this loop). The look-alikes without an NFKC
    mapping are the module's own list."""
    reserved = ":,@()<>/"
    if not _valid_when_received(ext):
        return False
    folded = unicodedata.normalize("NFKC", ext)
    if folded in ("$", "...") or folded.startswith("__"):
        return False
    if unicodedata.normalize("NFC", ext) != ext:
        return False
    for ch in ext:
        if ch == "\u2800" or any(lo <= ord(ch) <= hi for lo, hi in _DEFAULT_IGNORABLE):
            return False
        if ch in patterns._LOOKALIKES:
            return False
        if any(c in reserved for c in unicodedata.normalize("NFKC", ch)):
            return False
    return True


@settings(max_examples=400)
@given(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12)
    | st.text(max_size=12)
    | st.text(alphabet=st.sampled_from("ab:_-.$ \t\x7f\x00]^\\\u00e9\u200b"), max_size=6)
    | st.text(
        alphabet=st.sampled_from(
            "ae_.$\u0301\u00e9\ufe0f\u034f\u3164\u2800\uff1a\u2236\u2215\uff0c"
            "\u2026\uff04\uff3f\u00a8\u0430\U000e0100"
            "\u00b4\u309b\u3231\u2474\u02d0\ua789\u066b\u180b\u20e3\u0663\ufdfa"
        ),
        max_size=6,
    )
)
def test_extension_validity_follows_the_rules(ext: str) -> None:
    assert is_valid_extension(ext) == _valid_when_made(ext)
    assert is_valid_extension(ext, received=True) == _valid_when_received(ext)
    # A pattern names names others made: its components are held to the received rule.
    if ":" not in ext:  # (a pattern is components joined with ':')
        assert BlessingPattern(f"x:{ext}:y").is_valid() == _valid_when_received(ext)


def test_pattern_examples() -> None:
    p = BlessingPattern("a:b")
    assert p.matched_by("a:b")
    assert p.matched_by("a:b:c")
    assert not p.matched_by("a:bc")
    assert not p.matched_by("a")
    assert p.matched_by("x", "a:b:c")
    assert not p.matched_by()
    exact = BlessingPattern("a:b:$")
    assert exact.matched_by("a:b") and not exact.matched_by("a:b:c")
    assert p.make_non_extendable() == exact
    assert exact.make_non_extendable() == exact
    assert ALL_PRINCIPALS.make_non_extendable() == ALL_PRINCIPALS
    assert ALL_PRINCIPALS.matched_by("anything:at:all")
    assert not ALL_PRINCIPALS.matched_by()
    assert "a:b" in repr(p)


@pytest.mark.parametrize("pattern", ["", "a::b", ":a", "a:", "$", "a:$:b", "__a", "a b", "a:..."])
def test_invalid_patterns_match_nothing(pattern: str) -> None:
    p = BlessingPattern(pattern)
    assert not p.is_valid()
    assert not p.matched_by(pattern, "a", "a:b", "a b", "")


def test_non_string_names_never_match() -> None:
    assert not BlessingPattern("a").matched_by(None, 3)  # type: ignore[arg-type]
    assert not ALL_PRINCIPALS.matched_by(None)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(name_strategy)
def test_pattern_reflexive(parts: list[str]) -> None:
    name = ":".join(parts)
    assert BlessingPattern(name).is_valid()
    assert BlessingPattern(name).matched_by(name)
    assert BlessingPattern(name + ":$").matched_by(name)


@settings(max_examples=60, deadline=None)
@given(name_strategy, name_strategy)
def test_pattern_extension_closed_and_exactness(parts: list[str], more: list[str]) -> None:
    name = ":".join(parts)
    longer = name + ":" + ":".join(more)
    assert BlessingPattern(name).matched_by(longer)
    assert not BlessingPattern(name + ":$").matched_by(longer)
    # a longer pattern is never matched by a proper prefix of it
    assert not BlessingPattern(longer).matched_by(name)


@settings(max_examples=60, deadline=None)
@given(name_strategy, ext_strategy)
def test_no_false_prefix_match_on_partial_components(parts: list[str], tail: str) -> None:
    name = ":".join(parts)
    assert not BlessingPattern(name).matched_by(name + tail)
    assert ALL_PRINCIPALS.matched_by(name + tail)


@settings(max_examples=60, deadline=None)
@given(name_strategy, name_strategy)
def test_pattern_matches_iff_component_prefix(pattern: list[str], name: list[str]) -> None:
    expected = name[: len(pattern)] == pattern
    assert BlessingPattern(":".join(pattern)).matched_by(":".join(name)) is expected
