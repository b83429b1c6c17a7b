"""A principal's blessing store and trusted blessing roots (in memory, thread-safe).

Owns: :class:`BlessingStore` (which blessings to present to which peers, and a default) and
:class:`BlessingRoots` (which root keys are trusted for which blessing names), and their plain
JSON-ready forms used by :mod:`~ipcclient.security.principal` to persist them.

Must not: touch files (persistence lives in principal.py), sign anything, or validate chains.
Every method takes the object's lock only around its own dictionary operations.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping
from typing import Any

from ipcclient import codec, errors
from ipcclient.security.blessings import Blessings
from ipcclient.security.keys import PublicKey
from ipcclient.security.patterns import BlessingPattern

__all__ = ["BlessingRoots", "BlessingStore"]


def _pattern(value: object) -> BlessingPattern:
    if not isinstance(value, str):
        raise errors.BadArgError("security: a blessing pattern is a string")
    pattern = BlessingPattern(value)
    if not pattern.is_valid():
        raise errors.BadArgError(f"security: invalid blessing pattern {value!r}")
    return pattern


def _blessings_to_plain(b: Blessings) -> dict[str, Any]:
    return {"names": b.names, "blessings": base64.b64encode(codec.encode(b)).decode("ascii")}


def _blessings_from_plain(value: Any) -> Blessings:
    if not isinstance(value, Mapping) or not isinstance(value.get("blessings"), str):
        raise errors.BadArgError("security: malformed stored blessings")
    try:
        decoded = codec.decode(base64.b64decode(value["blessings"], validate=True))
    except (ValueError, errors.BadProtocolError) as exc:
        raise errors.BadArgError(f"security: malformed stored blessings: {exc}") from exc
    if not isinstance(decoded, Blessings):
        raise errors.BadArgError("security: stored value is not blessings")
    return decoded


class BlessingStore:
    """Which blessings this principal presents to which peers.

    Every blessing put in the store must be bound to the principal's key.
    """

    def __init__(self, public_key: PublicKey) -> None:
        self._key = public_key
        self._lock = threading.Lock()
        self._peers: dict[BlessingPattern, Blessings] = {}
        self._default: Blessings | None = None

    @property
    def public_key(self) -> PublicKey:
        """The key of the principal owning the store."""
        return self._key

    def _check(self, blessings: Blessings | None) -> None:
        if blessings is None:
            return
        if not isinstance(blessings, Blessings):
            raise errors.BadArgError("security: expected Blessings")
        if blessings.public_key != self._key:
            raise errors.BadArgError("security: blessings are not bound to this principal's key")

    def set(self, blessings: Blessings | None, for_peers: str) -> Blessings | None:
        """Present ``blessings`` to peers matching ``for_peers`` (None removes); returns the
        blessings previously set for that pattern.

        Raises:
            BadArgError: invalid pattern, or blessings bound to another key.
        """
        pattern = _pattern(for_peers)
        self._check(blessings)
        with self._lock:
            old = self._peers.pop(pattern, None)
            if blessings is not None:
                self._peers[pattern] = blessings
        return old

    def for_peer(self, *peer_names: str) -> Blessings | None:
        """The union of the blessings whose pattern any of ``peer_names`` matches."""
        with self._lock:
            items = list(self._peers.items())
        return Blessings.union(*(b for p, b in items if p.matched_by(*peer_names)))

    @property
    def default(self) -> Blessings | None:
        """The blessings used when no peer-specific choice applies (e.g. as a server)."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, blessings: Blessings | None) -> None:
        self._check(blessings)
        with self._lock:
            self._default = blessings

    def peer_blessings(self) -> dict[BlessingPattern, Blessings]:
        """A snapshot of the pattern -> blessings table."""
        with self._lock:
            return dict(self._peers)

    def to_plain(self) -> dict[str, Any]:
        """A JSON-ready form (blessings as base64 CBOR, with their names for reading)."""
        with self._lock:
            default, peers = self._default, sorted(self._peers.items())
        return {
            "default": None if default is None else _blessings_to_plain(default),
            "peers": [{"pattern": str(p), **_blessings_to_plain(b)} for p, b in peers],
        }

    def load_plain(self, value: Any) -> None:
        """Replace the contents with a :meth:`to_plain` form.

        Raises:
            BadArgError: malformed value or blessings bound to another key.
        """
        if not isinstance(value, Mapping) or not isinstance(value.get("peers"), list):
            raise errors.BadArgError("security: malformed blessing store")
        raw_default = value.get("default")
        default = None if raw_default is None else _blessings_from_plain(raw_default)
        peers: dict[BlessingPattern, Blessings] = {}
        for item in value["peers"]:
            if not isinstance(item, Mapping):
                raise errors.BadArgError("security: malformed blessing store entry")
            b = _blessings_from_plain(item)
            self._check(b)
            peers[_pattern(item.get("pattern"))] = b
        self._check(default)
        with self._lock:
            self._peers = peers
            self._default = default


class BlessingRoots:
    """Root keys this principal trusts, each for the names matching some patterns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: dict[PublicKey, set[BlessingPattern]] = {}

    def add(self, root_key: PublicKey, pattern: str) -> None:
        """Trust ``root_key`` as the root of blessings whose names match ``pattern``.

        Raises:
            BadArgError: invalid key or pattern.
        """
        if not isinstance(root_key, PublicKey):
            raise errors.BadArgError("security: a root is a PublicKey")
        p = _pattern(pattern)
        with self._lock:
            self._roots.setdefault(root_key, set()).add(p)

    def add_blessings(self, blessings: Blessings) -> None:
        """Trust the root of every chain of ``blessings`` for names under its root name
        (Vanadium's AddToRoots).

        Raises:
            BadArgError: ``blessings`` is not Blessings.
        """
        given: object = blessings
        if not isinstance(given, Blessings):
            raise errors.BadArgError(
                f"security: roots are added from Blessings, not {type(given).__name__}"
            )
        for chain in blessings.chains:
            self.add(chain[0].public_key, chain[0].extension)

    def recognized(self, root_key: PublicKey, blessing_name: str) -> bool:
        """Whether ``root_key`` is trusted for ``blessing_name``."""
        with self._lock:
            patterns = list(self._roots.get(root_key, ()))
        return any(p.matched_by(blessing_name) for p in patterns)

    def dump(self) -> dict[PublicKey, list[BlessingPattern]]:
        """A snapshot of the trusted roots and their patterns."""
        with self._lock:
            return {k: sorted(v) for k, v in self._roots.items()}

    def to_plain(self) -> dict[str, Any]:
        """A JSON-ready form: keys as hex, sorted."""
        dumped = self.dump()
        return {
            "roots": sorted(
                ({"key": k.raw.hex(), "patterns": [str(p) for p in v]} for k, v in dumped.items()),
                key=lambda r: str(r["key"]),
            )
        }

    def load_plain(self, value: Any) -> None:
        """Replace the contents with a :meth:`to_plain` form.

        Raises:
            BadArgError: malformed value.
        """
        if not isinstance(value, Mapping) or not isinstance(value.get("roots"), list):
            raise errors.BadArgError("security: malformed blessing roots")
        roots: dict[PublicKey, set[BlessingPattern]] = {}
        for item in value["roots"]:
            if not isinstance(item, Mapping) or not isinstance(item.get("patterns"), list):
                raise errors.BadArgError("security: malformed blessing root")
            try:
                key = PublicKey.from_raw(bytes.fromhex(str(item.get("key"))))
            except ValueError as exc:
                raise errors.BadArgError("security: malformed root key") from exc
            roots[key] = {_pattern(p) for p in item["patterns"]}
        with self._lock:
            self._roots = roots
