"""Blessing names, extensions and :class:`BlessingPattern` matching.

Owns: the rules for one extension and for a full blessing name (extensions joined with
``":"``), and Vanadium's pattern matching with ``":"`` as the separator:

* a pattern ``"a:b"`` is matched by the name ``"a:b"`` and by every extension ``"a:b:..."``
  of it, never by ``"a:bc"`` (components are compared whole);
* ``"a:b:$"`` is matched by ``"a:b"`` only;
* ``"..."`` (:data:`ALL_PRINCIPALS`) is matched by every name;
* an empty or invalid pattern is matched by nothing.

Must not: know keys, certificates or the wire; raise from :meth:`BlessingPattern.matched_by`
(an invalid pattern or name simply does not match).

Extension rules (checked by :func:`validate_extension`): non-empty, at most
:data:`MAX_EXTENSION_LEN` characters, not ``"$"`` or ``"..."``, not starting with ``"__"``
(reserved, as in Vanadium), and free of ``: , @ ( ) < > /``, whitespace and control or
format characters. ``:`` separates components; ``,`` ``@`` ``/`` and the brackets appear in
lists, endpoints and object names (``__(pattern)``); whitespace and invisible characters make
names that look alike but differ.
"""

from __future__ import annotations

import re
import unicodedata

from ipcclient import errors

__all__ = [
    "ALL_PRINCIPALS",
    "CHAIN_SEPARATOR",
    "MAX_EXTENSION_LEN",
    "NO_EXTENSION",
    "BlessingPattern",
    "is_valid_extension",
    "join_name",
    "validate_extension",
]

CHAIN_SEPARATOR = ":"
NO_EXTENSION = "$"
MAX_EXTENSION_LEN = 256  # one component; a chain of at most 32 of them bounds a name
_ALL = "..."
_FORBIDDEN_CHARS = frozenset(":,@()<>/")
_PLAIN_ASCII = re.compile(
    "["
    + re.escape("".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in _FORBIDDEN_CHARS))
    + "]+"
)
"""An extension made only of printable, non-space ASCII characters other than the forbidden
ones: valid as far as its characters go, decided without looking at each character in
Python (the usual extension; every certificate a peer sends has its extensions checked)."""


def _extension_problem(ext: object) -> str | None:
    if not isinstance(ext, str):
        return "an extension must be a string"
    if not ext:
        return "an extension may not be empty"
    if len(ext) > MAX_EXTENSION_LEN:
        return f"an extension may not exceed {MAX_EXTENSION_LEN} characters"
    if ext in (NO_EXTENSION, _ALL):
        return f"{ext!r} is reserved for patterns"
    if ext.startswith("__"):
        return "an extension may not start with '__' (reserved)"
    if _PLAIN_ASCII.fullmatch(ext):
        return None
    for ch in ext:
        if ch in _FORBIDDEN_CHARS:
            return f"an extension may not contain {ch!r}"
        if ch.isspace() or unicodedata.category(ch)[0] in ("C", "Z"):
            return "an extension may not contain whitespace, control or format characters"
    return None


def is_valid_extension(ext: object) -> bool:
    """Whether ``ext`` is a valid single extension (see the module docstring)."""
    return _extension_problem(ext) is None


def validate_extension(ext: object) -> str:
    """``ext`` if it is a valid extension.

    Raises:
        BadArgError: it is not, with the reason.
    """
    problem = _extension_problem(ext)
    if problem is not None:
        raise errors.BadArgError(f"security: invalid blessing extension {ext!r}: {problem}")
    return str(ext)


def join_name(extensions: tuple[str, ...] | list[str]) -> str:
    """The blessing name of a chain: its extensions joined with ``":"``."""
    return CHAIN_SEPARATOR.join(extensions)


class BlessingPattern(str):
    """A pattern over blessing names (a ``str``), with Vanadium's matching rules."""

    __slots__ = ()

    def _parts(self) -> tuple[tuple[str, ...], bool] | None:
        """(components, exact) for a valid non-universal pattern, else None."""
        text = str(self)
        if not text or text == _ALL:
            return None
        parts = text.split(CHAIN_SEPARATOR)
        exact = parts[-1] == NO_EXTENSION
        if exact:
            parts = parts[:-1]
        if not parts or not all(is_valid_extension(p) for p in parts):
            return None
        return tuple(parts), exact

    def is_valid(self) -> bool:
        """Whether the pattern is ``"..."`` or components (each a valid extension),
        optionally ending in ``":$"``."""
        return str(self) == _ALL or self._parts() is not None

    def matched_by(self, *names: str) -> bool:
        """Whether at least one of ``names`` matches this pattern. Never raises."""
        if str(self) == _ALL:
            return any(isinstance(n, str) for n in names)
        parsed = self._parts()
        if parsed is None:
            return False
        comps, exact = parsed
        for name in names:
            candidate: object = name  # callers may pass non-strings at runtime: no match
            if not isinstance(candidate, str):
                continue
            given = candidate.split(CHAIN_SEPARATOR)
            if len(given) < len(comps) or (exact and len(given) != len(comps)):
                continue
            if tuple(given[: len(comps)]) == comps:
                return True
        return False

    def make_non_extendable(self) -> BlessingPattern:
        """The pattern matched only by exactly the names it names (``"a:b"`` → ``"a:b:$"``)."""
        text = str(self)
        if text == _ALL or text.endswith(CHAIN_SEPARATOR + NO_EXTENSION):
            return self
        return BlessingPattern(text + CHAIN_SEPARATOR + NO_EXTENSION)

    def __repr__(self) -> str:
        return f"BlessingPattern({str(self)!r})"


ALL_PRINCIPALS = BlessingPattern(_ALL)
"""The pattern every name matches."""
