"""Server-side authorization of a call by the client's blessings.

Owns: the :class:`Authorizer` protocol a dispatcher returns with an object, the security
facts it sees (:class:`CallSecurity`), and the stock authorizers: the default (the client and
server share a blessing prefix, as Vanadium's DefaultAuthorizer), an allow list of patterns,
and allow-all for demos.

Must not: validate blessings itself (the server validates them against its roots and caveats
before any authorizer runs; authorizers see only names that validated), or do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.security.keys import PublicKey
from ipcclient.security.patterns import BlessingPattern

__all__ = [
    "AllowEveryone",
    "AllowPatterns",
    "Authorizer",
    "CallSecurity",
    "DefaultAuthorizer",
    "shares_prefix",
]


@dataclass(frozen=True)
class CallSecurity:
    """What an authorizer may look at for one call.

    Attributes:
        method: the method called.
        suffix: the object suffix called.
        client_names: the client's blessing names that validated (roots, caveats,
            discharges) for this call.
        rejected: client names that did not validate, with why (for error messages).
        server_names: the server's own blessing names.
        client_key: the client's authenticated public key.
        server_key: the server's public key.
        granted: blessings the client granted the server for this call, or None.
    """

    method: str
    suffix: str
    client_names: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    server_names: tuple[str, ...]
    client_key: PublicKey
    server_key: PublicKey
    granted: Any = None


class Authorizer(Protocol):
    """Decides whether a call may proceed; raises NoAccessError to refuse."""

    def authorize(self, call: CallSecurity) -> None: ...


def shares_prefix(a: str, b: str) -> bool:
    """True when one blessing name equals the other or extends it (component-wise)."""
    if a == b:
        return True
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return long_.startswith(short + ":")


def _refusal(call: CallSecurity, why: str) -> errors.NoAccessError:
    detail = f"client {list(call.client_names)!r} may not call {call.method!r}: {why}"
    if call.rejected:
        detail += "; rejected: " + "; ".join(f"{n} ({e})" for n, e in call.rejected)
    return errors.NoAccessError(detail)


class DefaultAuthorizer:
    """Allows a client whose key is the server's own, or one of whose validated names shares
    a prefix with one of the server's names (``alice:phone`` may call ``alice:tv``'s
    ``alice``-blessed server when one extends the other, as Vanadium's default)."""

    def authorize(self, call: CallSecurity) -> None:
        if call.client_key == call.server_key:
            return
        for c in call.client_names:
            for s in call.server_names:
                if shares_prefix(c, s):
                    return
        raise _refusal(call, "no blessing shares a prefix with the server's")


class AllowPatterns:
    """Allows a client with a validated name matched by any of ``patterns``.

    Args:
        patterns (Iterable[str]): blessing patterns (``"idp"``, ``"idp:alice:$"``,
            ``"..."``): a list of str, never one str.

    Raises:
        BadArgError: ``patterns`` is a single str or bytes, or not iterable, or one of them
            is not a str or not a valid blessing pattern.
    """

    # (patterns is typed Any: this checks it itself, so that in the compiled build too a
    # wrong type is a BadArgError, not the TypeError of a compiled function's boundary.)
    def __init__(self, patterns: Any) -> None:
        if isinstance(patterns, str):
            raise errors.BadArgError(
                "server: AllowPatterns takes a list of blessing patterns, not one str "
                f"(write AllowPatterns([{patterns!r:.40}]))"
            )
        if isinstance(patterns, bytes) or not isinstance(patterns, Iterable):
            raise errors.BadArgError(
                "server: AllowPatterns takes a list of blessing patterns (str), not "
                f"{type(patterns).__name__}"
            )
        checked: list[BlessingPattern] = []
        for p in patterns:
            if not isinstance(p, str):
                raise errors.BadArgError(
                    f"server: AllowPatterns: a blessing pattern is a str, not {type(p).__name__}"
                )
            pattern = BlessingPattern(p)
            if not pattern.is_valid():
                raise errors.BadArgError(f"server: AllowPatterns: invalid blessing pattern {p!r}")
            checked.append(pattern)
        self.patterns: Sequence[BlessingPattern] = tuple(checked)

    def authorize(self, call: CallSecurity) -> None:
        for p in self.patterns:
            if p.matched_by(*call.client_names):
                return
        raise _refusal(call, f"no blessing matches {[str(p) for p in self.patterns]!r}")


class AllowEveryone:
    """Allows every authenticated client (demos and public services such as a mount table
    that guards writes by other means)."""

    def authorize(self, call: CallSecurity) -> None:
        return None
