"""Tests for ipcclient.naming.names: Vanadium's name semantics plus terminal names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import errors
from ipcclient.naming import names

EP = "@1@tcp@h:1@" + "0" * 32 + "@0@0@s@@@"
UNIX_EP = "@1@unix@/tmp//odd/@" + "0" * 32 + "@0@0@m@a:b@@"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("", ""),
        ("a", "a"),
        ("a/", "a"),
        ("a//b///c/", "a/b/c"),
        ("//a", "/a"),
        ("/", "/"),
        ("//", "/"),
        ("/h:1", "/h:1"),
        ("/h:1/", "/h:1"),
        ("/h:1//", "/h:1"),
        ("/h:1/a//b/", "/h:1/a/b"),
        ("/h:1//a//b/", "/h:1//a/b"),  # the terminal marker stays, the rest collapses
        ("/h:1///a", "/h:1//a"),
        ("///h:1/a", "/h:1/a"),
        ("/" + EP + "/a//b", "/" + EP + "/a/b"),
        ("/" + EP + "//a", "/" + EP + "//a"),
        ("/" + UNIX_EP + "//x/", "/" + UNIX_EP + "//x"),  # "//" inside the endpoint kept
        ("/(a:b)@h:1//x//y", "/(a:b)@h:1//x/y"),
    ],
)
def test_clean(name: str, want: str) -> None:
    assert names.clean(name) == want


@pytest.mark.parametrize(
    ("name", "address", "suffix"),
    [
        ("", "", ""),
        ("a/b", "", "a/b"),
        ("a//b/", "", "a/b"),
        ("/", "", ""),
        ("/h:1", "h:1", ""),
        ("/h:1/a/b", "h:1", "a/b"),
        ("/h:1//a/b", "h:1", "a/b"),
        ("/[::1]:80/a", "[::1]:80", "a"),
        ("/" + EP, EP, ""),
        ("/" + EP + "/a/b", EP, "a/b"),
        ("/" + EP + "//a", EP, "a"),
        ("/" + UNIX_EP + "/a", UNIX_EP, "a"),
        ("/(a:b)@h:1/x/y", "(a:b)@h:1", "x/y"),
        ("/(a/b)@h:1/x", "(a/b)@h:1", "x"),  # the "/" after ")@" ends the address
        ("/(a:b)@h:1", "(a:b)@h:1", ""),
        ("/(nope/x", "(nope", "x"),
        ("/@incomplete/x", "@incomplete/x", ""),  # no "@@/": all of it is the address
    ],
)
def test_split_address_name(name: str, address: str, suffix: str) -> None:
    assert names.split_address_name(name) == (address, suffix)


@pytest.mark.parametrize(
    ("name", "terminal"),
    [
        ("a/b", False),
        ("", False),
        ("/", False),
        ("/h:1", True),
        ("/h:1/", True),
        ("/h:1/a", False),
        ("/h:1//a", True),
        ("/" + EP + "//a/b", True),
        ("/" + EP + "/a/b", False),
    ],
)
def test_is_terminal(name: str, terminal: bool) -> None:
    assert names.is_terminal(name) is terminal


def test_make_terminal() -> None:
    assert names.make_terminal("/h:1/a//b") == "/h:1//a/b"
    assert names.make_terminal("/h:1//a") == "/h:1//a"
    assert names.make_terminal("/h:1") == "/h:1"
    for bad in ("a/b", "/", ""):
        with pytest.raises(errors.BadArgError):
            names.make_terminal(bad)


@pytest.mark.parametrize(
    ("elements", "want"),
    [
        ((), ""),
        (("", ""), ""),
        (("a", "b"), "a/b"),
        (("a/", "/b/", "c"), "a/b/c"),
        (("/h:1/", "/x"), "/h:1/x"),  # never an accidental terminal marker
        (("/", "a"), "/a"),
        (("", "/a", "b"), "/a/b"),
        (("/h:1//x", "y"), "/h:1//x/y"),
        (("a", "", "b"), "a/b"),
    ],
)
def test_join(elements: tuple[str, ...], want: str) -> None:
    assert names.join(*elements) == want


@pytest.mark.parametrize(
    ("address", "name", "terminal", "want"),
    [
        ("h:1", "a/b", False, "/h:1/a/b"),
        ("h:1", "a/b", True, "/h:1//a/b"),
        ("/h:1", "/a/", False, "/h:1/a"),
        ("h:1", "", True, "/h:1"),
        ("", "a//b", True, "a/b"),
        ("/", "/a", False, "/a"),
        ("/h:1/pre/fix", "a", True, "/h:1//pre/fix/a"),
        ("/h:1//pre", "a", False, "/h:1/pre/a"),
        (EP, "a", False, "/" + EP + "/a"),
        ("/" + EP, "a", True, "/" + EP + "//a"),
    ],
)
def test_join_address_name(address: str, name: str, terminal: bool, want: str) -> None:
    assert names.join_address_name(address, name, terminal=terminal) == want


def test_components() -> None:
    assert names.components("a//b/") == ("a", "b")
    assert names.components("/h:1//x/y") == ("x", "y")
    assert names.components("/h:1") == ()
    assert names.components("") == ()


@pytest.mark.parametrize(
    ("name", "pattern", "rest"),
    [
        ("a/b", "", "a/b"),
        ("__(dev:alice)/a/b", "dev:alice", "a/b"),
        ("/__(dev:alice)/h:1/a", "dev:alice", "/h:1/a"),
        ("__(p)", "p", ""),
        ("__(p)x/y", "", "__(p)x/y"),  # not a pattern prefix
        ("__(unclosed/a", "", "__(unclosed/a"),
        ("__x/a", "", "__x/a"),
    ],
)
def test_split_pattern_name(name: str, pattern: str, rest: str) -> None:
    assert names.split_pattern_name(name) == (pattern, rest)


def test_is_rooted_and_is_reserved() -> None:
    assert names.is_rooted("/a") and not names.is_rooted("a") and not names.is_rooted("")
    assert (
        names.is_reserved("__debug") and not names.is_reserved("_x") and not names.is_reserved("")
    )


def test_escape_and_unescape() -> None:
    assert names.escape("a/b%c") == "a%2Fb%25c"
    assert names.escape("x@y,z", "@,") == "x%40y%2Cz"
    assert names.unescape("a%2fb%25c") == "a/b%c"
    assert names.unescape("plain") == "plain"
    for bad in ("%", "%4", "%zz", "a%g0", "%C3%A9"):
        with pytest.raises(errors.BadArgError):
            names.unescape(bad)
    with pytest.raises(errors.BadArgError):
        names.escape("x", "\u00e9")


# -- properties --------------------------------------------------------------------------------

_name_text = st.text(alphabet=st.sampled_from("ab/@:()%[]1"), max_size=24)
_element = st.text(alphabet=st.sampled_from("abc:_-.1"), min_size=1, max_size=5)


@settings(max_examples=1000, deadline=None)
@given(_name_text)
def test_clean_is_idempotent_and_keeps_rootedness(name: str) -> None:
    once = names.clean(name)
    assert names.clean(once) == once
    assert names.is_rooted(once) == names.is_rooted(name)
    assert names.split_address_name(once) == names.split_address_name(name)
    assert names.is_terminal(once) == names.is_terminal(name)


@settings(max_examples=1000, deadline=None)
@given(_name_text)
def test_split_then_join_gives_the_clean_name(name: str) -> None:
    address, suffix = names.split_address_name(name)
    if address:
        rebuilt = names.join_address_name(address, suffix, terminal=names.is_terminal(name))
        assert rebuilt == names.clean(name)
    elif names.is_rooted(name):
        assert (names.clean(name), suffix) == ("/", "")
    else:
        assert suffix == names.clean(name)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["h:1", "[::1]:2", "(a:b)@h:3", EP, UNIX_EP]),
    st.lists(_element, max_size=5),
    st.booleans(),
)
def test_join_address_name_then_split_round_trips(
    address: str, elements: list[str], terminal: bool
) -> None:
    suffix = "/".join(elements)
    name = names.join_address_name(address, suffix, terminal=terminal)
    assert names.split_address_name(name) == (address, suffix)
    assert names.is_terminal(name) == (terminal or not suffix)
    assert names.components(name) == tuple(elements)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_element, max_size=3).map("/".join), max_size=5))
def test_join_concatenates_components(parts: list[str]) -> None:
    joined = names.join(*parts)
    want = tuple(e for p in parts for e in p.split("/") if e)
    assert names.components(joined) == want
    assert names.clean(joined) == joined


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["/", "@", "@,", "/@%"]))
def test_escape_round_trips_and_hides_specials(text: str, special: str) -> None:
    escaped = names.escape(text, special)
    assert names.unescape(escaped) == text
    assert not any(c in escaped for c in special.replace("%", ""))
