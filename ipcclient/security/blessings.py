"""Certificates, blessings (sets of certificate chains) and their validation.

Owns: :class:`Certificate`, :class:`Blessings`, the chained digest every certificate signs,
the wire form registered with the codec under ``"blessings"``, and
:func:`validate_blessings` (Vanadium's RemoteBlessingNames: which names of a peer's blessings
hold for a call, and why the others do not).

Must not: hold private keys (a :class:`~ipcclient.security.principal.Principal` signs), decide
authorization policy (servers' authorizers and the client's server check come later), or touch
sockets. Decoding checks structure only; trust is always the separate, explicit step of
:func:`validate_blessings`.

Digest of certificate ``i`` in a chain (``d[-1]`` is 32 zero bytes)::

    content[i] = SHA-256(CBOR([extension, public_key_raw, [caveat digests...]]))
    d[i]       = SHA-256(d[i-1] || content[i])

Certificate ``i`` carries the signature (purpose ``cert``) of ``d[i]`` by the key of
certificate ``i-1``; the root certificate signs itself. Because ``d[i]`` folds in every earlier
certificate, no certificate can be moved to another chain or position.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcclient import codec, errors
from ipcclient.security.caveats import (
    Caveat,
    ExpiryCaveat,
    SecurityCall,
    ThirdPartyCaveat,
    caveats_from_wire,
)
from ipcclient.security.keys import (
    PUBLIC_KEY_SIZE,
    PURPOSE_CERTIFICATE,
    SIGNATURE_SIZE,
    PublicKey,
)
from ipcclient.security.patterns import is_valid_extension, join_name

__all__ = [
    "MAX_BLESSINGS_SIZE",
    "MAX_CHAINS",
    "MAX_CHAIN_DEPTH",
    "Blessings",
    "Certificate",
    "RejectedBlessing",
    "RootsChecker",
    "certificate_digest",
    "check_size",
    "validate_blessings",
]

MAX_CHAINS = 32  # chains in one Blessings value (a principal rarely holds more than a few)
MAX_CHAIN_DEPTH = 32  # certificates in one chain (delegation depth)
MAX_BLESSINGS_SIZE = 48 * 1024
"""The most bytes the blessings a principal makes (``bless``, ``bless_self``) may encode to:
a handshake's auth message carries them with the discharges in at most 64 KiB, and every
peer refuses a larger one."""
_ROOT_PARENT_DIGEST = bytes(32)


def certificate_digest(
    parent_digest: bytes, extension: str, public_key: PublicKey, caveats: Sequence[Caveat]
) -> bytes:
    """``d[i]`` for a certificate whose predecessor's digest is ``parent_digest``."""
    content = hashlib.sha256(
        codec.encode([extension, public_key.raw, [c.digest() for c in caveats]])
    ).digest()
    return hashlib.sha256(parent_digest + content).digest()


class Certificate:
    """One link of a blessing chain: extension, blessed key, caveats, blesser's signature."""

    __slots__ = ("_hash", "_key", "caveats", "extension", "public_key", "signature")

    extension: str
    public_key: PublicKey
    caveats: tuple[Caveat, ...]
    signature: bytes
    _key: tuple[str, bytes, tuple[Caveat, ...], bytes]
    _hash: int

    def __init__(
        self,
        extension: str,
        public_key: PublicKey,
        caveats: Sequence[Caveat],
        signature: bytes,
    ) -> None:
        # Immutable (see __setattr__): chains are set members and cache keys, so the
        # comparison key and its hash are made once here.
        cavs = tuple(caveats)
        key = (extension, public_key.raw, cavs, signature)
        setter = object.__setattr__
        setter(self, "extension", extension)
        setter(self, "public_key", public_key)
        setter(self, "caveats", cavs)
        setter(self, "signature", signature)
        setter(self, "_key", key)
        setter(self, "_hash", hash(key))

    def digest(self, parent_digest: bytes) -> bytes:
        """This certificate's chained digest given its predecessor's."""
        return certificate_digest(parent_digest, self.extension, self.public_key, self.caveats)

    def to_wire(self) -> list[Any]:
        """``[extension, public_key_raw, [caveat...], signature]``."""
        return [
            self.extension,
            self.public_key.raw,
            [c.to_wire() for c in self.caveats],
            self.signature,
        ]

    @classmethod
    def from_wire(cls, value: Any) -> Certificate:
        """Rebuild a certificate (structure only).

        The extension is held to the rule for received ones (``received=True``: see
        :mod:`~ipcclient.security.patterns`), not to the stricter one for names this SDK
        makes: this decodes a peer's certificates and a saved principal's, which earlier
        releases and other implementations made under that rule.

        Raises:
            BadProtocolError: the value is malformed.
        """
        items = codec.as_sequence(value, "certificate")
        if len(items) != 4:
            raise errors.BadProtocolError("security: a certificate has 4 fields")
        ext, key, cavs, sig = items
        if not is_valid_extension(ext, received=True):
            raise errors.BadProtocolError("security: invalid certificate extension")
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
            raise errors.BadProtocolError("security: malformed certificate public key")
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise errors.BadProtocolError("security: malformed certificate signature")
        assert isinstance(ext, str)
        return cls(ext, PublicKey.from_raw(key), caveats_from_wire(cavs), sig)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Certificate):
            return NotImplemented
        return self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Certificate is immutable")

    def __reduce__(self) -> tuple[Any, ...]:  # (copy and pickle go through __init__)
        return (Certificate, (self.extension, self.public_key, self.caveats, self.signature))

    def __repr__(self) -> str:
        return f"Certificate({self.extension!r}, {self.public_key!r}, {len(self.caveats)} caveats)"


Chain = tuple[Certificate, ...]


MAX_VERIFIED_CHAINS = 4096
"""Chains whose signatures this process has verified and remembers (LRU). A chain is keyed
by its whole content, so only an identical chain hits; the cache saves the Ed25519 verifies
(the dominant cost of authorizing each call) when the same peer calls again."""
_verified: collections.OrderedDict[Chain, None] = collections.OrderedDict()
_verified_lock = threading.Lock()


def _check_chain_signatures(chain: Chain) -> None:
    with _verified_lock:
        try:
            _verified.move_to_end(chain)  # (one lookup: KeyError when it is not there)
            return
        except KeyError:
            pass
    _verify_chain(chain)
    with _verified_lock:
        _verified[chain] = None
        if len(_verified) > MAX_VERIFIED_CHAINS:
            _verified.popitem(last=False)


def _verify_chain(chain: Chain) -> None:
    parent = _ROOT_PARENT_DIGEST
    signer = chain[0].public_key
    for cert in chain:
        digest = cert.digest(parent)
        if not signer.verify(cert.signature, PURPOSE_CERTIFICATE, digest):
            raise errors.NotTrustedError(
                f"security: bad signature on certificate {cert.extension!r}"
            )
        parent = digest
        signer = cert.public_key


class Blessings:
    """One or more certificate chains, all bound to the same public key.

    Attributes:
        chains: the chains, each root first.
    """

    __slots__ = ("_set", "chains")

    def __init__(self, chains: Iterable[Sequence[Certificate]]) -> None:
        seen: dict[Chain, None] = {}
        for chain in chains:
            seen.setdefault(tuple(chain), None)
        tupled = tuple(seen)
        if not tupled:
            raise errors.BadArgError("security: blessings need at least one chain")
        if len(tupled) > MAX_CHAINS:
            raise errors.BadArgError(f"security: at most {MAX_CHAINS} chains")
        for chain in tupled:
            if not chain or len(chain) > MAX_CHAIN_DEPTH:
                raise errors.BadArgError(
                    f"security: a chain holds 1 to {MAX_CHAIN_DEPTH} certificates"
                )
            if not all(isinstance(c, Certificate) for c in chain):
                raise errors.BadArgError("security: a chain holds certificates")
        key = tupled[0][-1].public_key
        if any(chain[-1].public_key != key for chain in tupled):
            raise errors.BadArgError("security: all chains must be bound to the same key")
        self.chains: tuple[Chain, ...] = tupled
        self._set = frozenset(tupled)

    @property
    def public_key(self) -> PublicKey:
        """The key every chain is bound to."""
        return self.chains[0][-1].public_key

    @property
    def names(self) -> list[str]:
        """Every chain's name (unvalidated: see :func:`validate_blessings`)."""
        return [join_name([c.extension for c in chain]) for chain in self.chains]

    def third_party_caveats(self) -> list[ThirdPartyCaveat]:
        """Every third-party caveat on any certificate, each ID once."""
        found: dict[str, ThirdPartyCaveat] = {}
        for chain in self.chains:
            for cert in chain:
                for cav in cert.caveats:
                    if isinstance(cav, ThirdPartyCaveat):
                        found.setdefault(cav.id, cav)
        return list(found.values())

    @staticmethod
    def union(*blessings: Blessings | None) -> Blessings | None:
        """All chains of ``blessings`` (Nones skipped); None when there are none.

        Raises:
            BadArgError: the blessings are bound to different keys.
        """
        chains = [chain for b in blessings if b is not None for chain in b.chains]
        return Blessings(chains) if chains else None

    def to_wire(self) -> list[Any]:
        """``[chain...]`` where a chain is ``[certificate...]``, root first."""
        return [[cert.to_wire() for cert in chain] for chain in self.chains]

    @classmethod
    def from_wire(cls, value: Any) -> Blessings:
        """Rebuild blessings (structure only; validate with :func:`validate_blessings`).

        Raises:
            BadProtocolError: the value is malformed.
        """
        chains = codec.as_sequence(value, "blessings")
        if not chains or len(chains) > MAX_CHAINS:
            raise errors.BadProtocolError(f"security: blessings hold 1 to {MAX_CHAINS} chains")
        parsed = []
        for chain in chains:
            certs = codec.as_sequence(chain, "chain")
            if not certs or len(certs) > MAX_CHAIN_DEPTH:
                raise errors.BadProtocolError("security: malformed certificate chain")
            parsed.append([Certificate.from_wire(c) for c in certs])
        try:
            return cls(parsed)
        except errors.BadArgError as exc:
            raise errors.BadProtocolError(f"security: malformed blessings: {exc.msg}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Blessings):
            return NotImplemented
        return self._set == other._set

    def __hash__(self) -> int:
        return hash(self._set)

    def __repr__(self) -> str:
        return f"Blessings({self.names!r})"


class RootsChecker(Protocol):
    """What validation needs from blessing roots (a :class:`BlessingRoots`)."""

    def recognized(self, root_key: PublicKey, blessing_name: str) -> bool: ...


@dataclass(frozen=True)
class RejectedBlessing:
    """A chain name that did not validate, and the error saying why."""

    name: str
    error: errors.IPCError


def validate_blessings(
    blessings: Blessings | None, call: SecurityCall, roots: RootsChecker
) -> tuple[list[str], list[RejectedBlessing]]:
    """The names of ``blessings`` that hold for ``call``, and the rejected ones.

    A chain's name is accepted when every signature in the chain verifies, ``roots``
    recognizes the root key for that name, and every caveat on every certificate holds for
    ``call`` (third-party caveats need a valid discharge in ``call.remote_discharges``).

    Rejection errors: NotTrustedError (signature, root, first-party caveat, unknown caveat
    kind) or BadDischargeError (third-party caveat; ``params[0]`` is the caveat ID).
    """
    accepted: list[str] = []
    rejected: list[RejectedBlessing] = []
    if blessings is None:
        return accepted, rejected
    for chain in blessings.chains:
        name = join_name([c.extension for c in chain])
        try:
            _check_chain_signatures(chain)
            if not roots.recognized(chain[0].public_key, name):
                raise errors.NotTrustedError(
                    f"security: root {chain[0].public_key.fingerprint} not trusted for {name!r} "
                    "(to trust it, add the identity provider's blessings to the roots: "
                    "principal.roots.add_blessings(provider_blessings))"
                )
            for cert in chain:
                for cav in cert.caveats:
                    cav.validate(call)
        except errors.IPCError as exc:
            rejected.append(RejectedBlessing(name, exc))
        else:
            accepted.append(name)
    return accepted, rejected


def validity_horizon(blessings: Blessings | None, discharges: Iterable[Any] = ()) -> float:
    """The wall-clock time until which a validation of ``blessings`` (with ``discharges``)
    for a given method and suffix cannot change: the earliest expiry among every caveat on
    every certificate and on every discharge (``math.inf`` when nothing expires).

    Callers cache validated names per (method, suffix) until then; every other caveat kind
    depends only on things fixed for a VC (the method, the suffix, the local blessings).
    """
    horizon = math.inf
    if blessings is not None:
        for chain in blessings.chains:
            for cert in chain:
                for cav in cert.caveats:
                    if isinstance(cav, ExpiryCaveat):
                        horizon = min(horizon, cav.not_after)
    for d in discharges:
        expiry = getattr(d, "expiry", None)
        if isinstance(expiry, float | int):
            horizon = min(horizon, float(expiry))
    return horizon


def check_size(blessings: Blessings, whose: str) -> Blessings:
    """``blessings``, if they encode to at most :data:`MAX_BLESSINGS_SIZE` bytes, since every
    peer refuses a handshake that carries more; else a BadArgError that starts with
    ``whose`` (the part of the library that refuses them)."""
    size = len(codec.encode(blessings))
    if size > MAX_BLESSINGS_SIZE:
        raise errors.BadArgError(
            f"{whose}: the blessings encode to {size} bytes; a handshake carries at most "
            f"{MAX_BLESSINGS_SIZE}"
        )
    return blessings


codec.register("blessings", Blessings, Blessings.to_wire, Blessings.from_wire)
