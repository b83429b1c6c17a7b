"""Object names: pure functions on name strings, with Vanadium's semantics.

Owns: what a name looks like and how it is taken apart and put together. A *rooted* name
starts with "/" and its first element is a server *address*: an endpoint ``@1@...@@`` (see
:mod:`ipcclient.naming.endpoint`), a short ``host:port`` or ``[v6]:port``, or
``(blessing)@host:port``. Everything after the address is the *suffix*, the name relative to
that server. A *relative* name is resolved from the namespace roots.

A rooted name may be *terminal*: ``/address//suffix`` (a double slash right after the
address) says "the suffix is final, send it to that server as it is, resolve nothing
further". This is Veyron's ``/ep//suffix`` form. A rooted name with an empty suffix
(``/address``) is terminal too. :func:`clean` keeps the terminal marker and collapses every
other run of slashes; it never touches the address element itself (an endpoint's unix
socket path may hold "//").

Must not: import anything from ipcclient but :mod:`ipcclient.errors`; parse endpoints (that
is :mod:`ipcclient.naming.endpoint`), resolve names or do any I/O.
"""

from __future__ import annotations

import re

from ipcclient import errors

__all__ = [
    "clean",
    "components",
    "escape",
    "is_reserved",
    "is_rooted",
    "is_terminal",
    "join",
    "join_address_name",
    "make_terminal",
    "split_address_name",
    "split_pattern_name",
    "unescape",
]

_HEX = "0123456789ABCDEF"
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_rooted(name: str) -> bool:
    """True when ``name`` starts with "/" (its first element is a server address).

    Raises:
        BadArgError: ``name`` is not a str (so do the functions below, which start here).
    """
    given: object = name
    if not isinstance(given, str):
        raise errors.BadArgError(f"naming: a name must be a str, not {type(given).__name__}")
    return name.startswith("/")


def _collapse(path: str) -> str:
    """Drop empty elements: no leading, trailing or repeated slashes."""
    return "/".join(part for part in path.split("/") if part)


def _split_rooted_raw(body: str) -> tuple[str, str]:
    """Split ``body`` (a rooted name without its leading slashes) into address and rest.

    ``rest`` is "" or starts with "/" (the separator); it is returned as written.
    """
    if body.startswith("@"):
        end = body.find("@@/")
        if end < 0:
            return body, ""
        return body[: end + 2], body[end + 2 :]
    if body.startswith("("):
        close = body.find(")@")
        if close >= 0:
            slash = body.find("/", close + 2)
            if slash < 0:
                return body, ""
            return body[:slash], body[slash:]
    slash = body.find("/")
    if slash < 0:
        return body, ""
    return body[:slash], body[slash:]


def _parse(name: str) -> tuple[str, str, bool]:
    """``(address, clean suffix, explicit terminal marker)``; address "" for relative names."""
    if not is_rooted(name):
        return "", _collapse(name), False
    body = name.lstrip("/")
    if not body:
        return "", "", False
    address, rest = _split_rooted_raw(body)
    marker = rest.startswith("//")
    suffix = _collapse(rest)
    return address, suffix, marker and bool(suffix)


def clean(name: str) -> str:
    """The canonical form of ``name``.

    Collapses runs of "/" and drops a trailing "/", except that it keeps (a) a rooted name's
    address element verbatim and (b) the terminal marker "//" right after the address. The
    root alone ("/", "//", ...) cleans to "/". Idempotent.

    Raises:
        BadArgError: ``name`` is not a str.
    """
    if not is_rooted(name):  # (which checks that it is a str)
        return _collapse(name)
    address, suffix, marker = _parse(name)
    if not address:
        return "/"
    if not suffix:
        return "/" + address
    return "/" + address + ("//" if marker else "/") + suffix


def components(name: str) -> tuple[str, ...]:
    """The elements of a relative name or of a rooted name's suffix, after cleaning."""
    _, suffix, _ = _parse(name)
    return tuple(suffix.split("/")) if suffix else ()


def split_address_name(name: str) -> tuple[str, str]:
    """``(address, suffix)`` of a cleaned name.

    For a relative name the address is "" and the suffix is the cleaned name. For a rooted
    name the address is its first element (an endpoint ``@...@@`` is split at ``@@/``; a
    ``(blessing)@host:port`` after the first "/" that follows ``)@``; otherwise at the first
    "/"). The suffix never carries the terminal marker: ask :func:`is_terminal` for that.
    """
    address, suffix, _ = _parse(name)
    return address, suffix


def is_terminal(name: str) -> bool:
    """True for a rooted name that must not be resolved further.

    That is ``/address//suffix`` or ``/address`` (empty suffix). Relative names never are.
    """
    address, suffix, marker = _parse(name)
    return bool(address) and (marker or not suffix)


def make_terminal(name: str) -> str:
    """``/address//suffix`` for a rooted ``name``.

    Raises:
        BadArgError: ``name`` is not rooted or has no address.
    """
    address, suffix, _ = _parse(name)
    if not address:
        raise errors.BadArgError(f"naming: only a rooted name can be made terminal: {name!r}")
    return join_address_name(address, suffix, terminal=True)


def join(*elements: str) -> str:
    """Join name elements with a single "/" between them, then :func:`clean`.

    Empty elements are dropped. The result is rooted when the first non-empty element is.
    """
    parts = [e for e in elements if e]
    if not parts:
        return ""
    first, rest = parts[0], parts[1:]
    pieces = [first.rstrip("/") or ("/" if is_rooted(first) else "")]
    pieces.extend(p.strip("/") for p in rest)
    joined = "/".join(p for p in pieces if p and p != "/")
    if is_rooted(first):
        joined = "/" + joined.lstrip("/")
    return clean(joined)


def join_address_name(address: str, name: str, *, terminal: bool = False) -> str:
    """The rooted name of ``name`` at the server ``address``.

    ``address`` may also be a rooted name (``/host:port/prefix``, as a mounted server often
    is); ``name`` is taken as relative to it. With ``terminal`` the result is
    ``/address//suffix``. An empty address gives :func:`clean` of ``name`` (never terminal).
    """
    if not address.strip("/"):
        return clean(name)
    base_addr, base_suffix, _ = _parse("/" + address.lstrip("/"))
    suffix = _collapse(base_suffix + "/" + name)
    if not suffix:
        return "/" + base_addr
    return "/" + base_addr + ("//" if terminal else "/") + suffix


def escape(text: str, special: str = "/") -> str:
    """%XX-escape "%" and every character of ``special`` in ``text`` (XX: uppercase hex).

    Only single-byte characters may be special (they are what separators are made of).
    """
    if any(ord(c) > 0x7F for c in special):
        raise errors.BadArgError("naming: escape: special characters must be ASCII")
    out: list[str] = []
    for ch in text:
        if ch == "%" or ch in special:
            code = ord(ch)
            out.append("%" + _HEX[code >> 4] + _HEX[code & 0xF])
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """Undo :func:`escape`: every "%" must start a %XX escape of an ASCII character.

    Raises:
        BadArgError: a "%" not followed by two hex digits, or an escape above %7F.
    """
    if "%" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        at = text.find("%", pos)
        if at < 0:
            out.append(text[pos:])
            return "".join(out)
        match = _ESCAPE_RE.match(text, at)
        if match is None:
            raise errors.BadArgError(f"naming: bad %-escape at offset {at} in {text!r}")
        code = int(match.group(1), 16)
        if code > 0x7F:
            raise errors.BadArgError(f"naming: %-escape above %7F at offset {at} in {text!r}")
        out.append(text[pos:at])
        out.append(chr(code))
        pos = at + 3


def is_reserved(element: str) -> bool:
    """True for a name element reserved to the system (it starts with "__")."""
    return element.startswith("__")


def split_pattern_name(name: str) -> tuple[str, str]:
    """Split ``__(pattern)/rest`` into ``(pattern, rest)``; ``("", name)`` without a pattern.

    The pattern is the blessing pattern the caller expects of the server. ``rest`` is rooted
    exactly when ``name`` was (``/__(p)/host:port/x`` gives ``("p", "/host:port/x")``).
    """
    rooted = is_rooted(name)
    body = name.lstrip("/")
    if not body.startswith("__("):
        return "", name
    close = body.find(")", 3)
    if close < 0:
        return "", name
    rest = body[close + 1 :]
    if rest and not rest.startswith("/"):
        return "", name
    rest = rest.lstrip("/")
    return body[3:close], ("/" + rest if rooted else rest) if rest else ""
