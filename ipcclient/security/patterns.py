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

Extension rules. Two of them, so that what this SDK makes is held to more than what it takes:

* the rule for every extension, *received* or made (``received=True`` of
  :func:`validate_extension` and :func:`is_valid_extension`; every certificate decoded from the
  wire or from a saved principal, and every component of a :class:`BlessingPattern`):
  non-empty, at most :data:`MAX_EXTENSION_LEN` characters, not ``"$"`` or ``"..."``, not
  starting with ``"__"`` (reserved, as in Vanadium), free of ``: , @ ( ) < > /``, whitespace,
  control and format characters (category C and Z: this takes in the bidirectional controls
  and zero-width characters). It is the rule of every release before the stricter one for new
  names, and it must not tighten: a peer, or a principal saved on disk, holding a blessing
  that met it would stop working (a certificate's extension is signed; nothing can rename it);
* the rule for an extension this SDK *creates* (the default: :meth:`Principal.bless
  <ipcclient.security.principal.Principal.bless>`, ``bless_self``, and through them the
  ``ipc principal`` commands), the above and: no invisible character (Unicode's
  Default_Ignorable_Code_Point: variation selectors, the combining grapheme joiner, Hangul
  fillers, tags; and U+2800 BRAILLE PATTERN BLANK), Unicode normalization form NFC, no
  character whose NFKC form holds one of ``: , @ ( ) < > /`` (U+FF1A FULLWIDTH COLON, U+2474
  PARENTHESIZED DIGIT ONE), none of :data:`_LOOKALIKES` (symbols and punctuation that look like
  one of those without an NFKC mapping to it: U+2236 RATIO, U+2215 DIVISION SLASH, and the one
  letter U+02D0 MODIFIER LETTER TRIANGULAR COLON), and no NFKC form equal to ``"$"`` or
  ``"..."`` or starting with ``"__"``.

``:`` separates components; ``,`` ``@`` ``/`` and the brackets appear in lists, endpoints and
object names (``__(pattern)``). Patterns compare names code point by code point, so an
invisible character, a look-alike of a separator or a second spelling of the same text (NFD
``e`` + U+0301 beside NFC U+00E9) makes a name that prints like another but is not it. Letters
of every script and other symbols stay valid, including those whose NFKC form holds a space and
a combining mark (U+00B4 ACUTE ACCENT, U+309B KATAKANA-HIRAGANA VOICED SOUND MARK): nothing in
the grammar is a space, and they resemble no separator.

A :class:`BlessingPattern`'s components are held to the received rule: a pattern (an access
list, a trusted root, a peer-blessings caveat) names names others made, and must be able to
name every one a peer may hold.
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

_DEFAULT_IGNORABLE_RANGES = (
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
)
"""Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt; Python's
unicodedata has no property lookup): characters a renderer may show as nothing (variation
selectors, the combining grapheme joiner, Hangul fillers, tags). Many are also of category
C, which both rules refuse; the others (Mn, Lo) are why the table exists. The ``ipc`` command
shows each of them escaped (``ipcclient/cli/text.py``), since a received name may hold them."""

_INVISIBLE = frozenset(
    chr(c) for lo, hi in _DEFAULT_IGNORABLE_RANGES for c in range(lo, hi + 1)
) | frozenset("\u2800")
"""Characters refused as invisible in a new extension: the Default_Ignorable ranges (the
Hangul fillers among them, although of category Lo: they print as nothing) and U+2800
BRAILLE PATTERN BLANK (a symbol that prints as a blank)."""

_LOOKALIKES = frozenset(
    # ':'
    "\u02d0\u02f8\u0589\u05c3\u0703\u0704\u1361\u16ec\u1803\u1809\u205a\u2236\ua789"
    # '/'
    "\u1735\u2044\u2215\u2571\u29f8\u2f03\u31d3"
    # ','
    "\u00b8\u060d\u066b\u201a"
    # '(' ')'
    "\u2768\u2769\u276a\u276b\u27ee\u27ef\ufd3e\ufd3f"
    # '<' '>'
    "\u02c2\u02c3\u2039\u203a\u2329\u232a\u276c\u276d\u276e\u276f\u27e8\u27e9"
    "\u3008\u3009"
)
"""Characters that look like a separator (``: / , ( ) < >``) but whose NFKC form is not it,
refused in a new extension: Unicode's confusables (confusables.txt) for those characters,
less the letters of other scripts (U+A4FD LISU LETTER TONE MYA JEU, U+30CE KATAKANA LETTER NO,
U+4E3F: they are how names are written there) and the combining marks. Symbols and
punctuation (of categories P, S, N) but for one letter: U+02D0 MODIFIER LETTER TRIANGULAR
COLON (Lm), the IPA length mark, which most fonts draw as a colon, kept beside U+A789 MODIFIER
LETTER COLON and U+02F8 MODIFIER LETTER RAISED COLON (Sk): ``idp`` U+02D0 ``alice`` prints
as ``idp:alice``."""


def _received_problem(ext: object) -> str | None:
    """What is wrong with ``ext`` under the rule every extension is held to (see the module
    docstring); None when nothing is."""
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


def _new_problem(ext: str) -> str | None:
    """What else is wrong with ``ext`` (which meets the received rule) as an extension this SDK
    makes; None when nothing is."""
    if _PLAIN_ASCII.fullmatch(ext):
        return None
    for ch in ext:
        if ch in _INVISIBLE:
            return f"an extension may not contain the invisible character U+{ord(ch):04X}"
        if ch in _LOOKALIKES:
            return (
                f"an extension may not contain U+{ord(ch):04X}, which looks like a reserved "
                "character"
            )
        folded = unicodedata.normalize("NFKC", ch)
        if any(c in _FORBIDDEN_CHARS for c in folded):
            return (
                f"an extension may not contain U+{ord(ch):04X}, a form of {folded!r} "
                "(its NFKC form holds a reserved character)"
            )
    if not unicodedata.is_normalized("NFC", ext):
        return "an extension must be in Unicode normalization form NFC"
    folded = unicodedata.normalize("NFKC", ext)
    if folded in (NO_EXTENSION, _ALL) or folded.startswith("__"):
        return f"an extension may not be a form of {folded!r} (reserved)"
    return None


def _extension_problem(ext: object, received: object) -> str | None:
    if not isinstance(received, bool):
        raise errors.BadArgError(
            f"security: received must be True or False, not {type(received).__name__}"
        )
    problem = _received_problem(ext)
    if problem is not None or received:
        return problem
    assert isinstance(ext, str)
    return _new_problem(ext)


def is_valid_extension(ext: object, *, received: bool = False) -> bool:
    """Whether ``ext`` is a valid single extension: for a blessing this SDK makes, or with
    ``received=True`` for one it received or loaded (see the module docstring).

    Raises:
        BadArgError: ``received`` is not a bool.
    """
    return _extension_problem(ext, received) is None


def validate_extension(ext: object, *, received: bool = False) -> str:
    """``ext`` if it is a valid extension: for a blessing this SDK makes, or with
    ``received=True`` for one it received or loaded (see the module docstring).

    Raises:
        BadArgError: it is not, with the reason; or ``received`` is not a bool.
    """
    problem = _extension_problem(ext, received)
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
        if not parts or not all(_received_problem(p) is None for p in parts):
            return None
        return tuple(parts), exact

    def is_valid(self) -> bool:
        """Whether the pattern is ``"..."`` or components (each a valid extension under the
        received rule: see the module docstring), optionally ending in ``":$"``."""
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
