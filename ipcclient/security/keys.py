"""Public keys, signature purposes and the signed-bytes layout.

Owns: the :class:`PublicKey` value (an Ed25519 public key compared by its 32 raw bytes), the
purpose constants that domain-separate every signature, and the one function that lays out
the bytes a signature covers (:func:`signed_bytes`).

Must not: hold private keys (that is :mod:`ipcclient.security.principal`), touch files,
sockets or the wire, or implement any cryptographic primitive: Ed25519 comes from the
``cryptography`` package.

Every signature in ipcclient is an Ed25519 signature over::

    b"ipcclient-sig-v1\\x00" + purpose + b"\\x00" + message

so a signature made for one purpose never verifies for another. Ed25519 hashes the signer's
public key into every signature, so a signature is also bound to the key that made it (what
Vanadium achieves by hashing the key DER into its ECDSA digests).
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient import errors

__all__ = [
    "PUBLIC_KEY_SIZE",
    "PURPOSE_CERTIFICATE",
    "PURPOSE_DISCHARGE",
    "PURPOSE_HANDSHAKE",
    "PURPOSE_MESSAGE",
    "PURPOSE_STATE",
    "SIGNATURE_PREFIX",
    "SIGNATURE_SIZE",
    "PublicKey",
    "check_purpose",
    "signed_bytes",
]

SIGNATURE_PREFIX = b"ipcclient-sig-v1\x00"
"""Leading bytes of everything signed; the version lets a future scheme never collide."""

PURPOSE_CERTIFICATE = b"cert"
"""A certificate in a blessing chain (signs the chained digest)."""
PURPOSE_DISCHARGE = b"discharge"
"""A discharge for a third-party caveat (signs the discharge digest)."""
PURPOSE_HANDSHAKE = b"vc-auth"
"""The VC handshake (signs the transcript hash)."""
PURPOSE_MESSAGE = b"message"
"""Application messages signed with :meth:`Principal.sign`."""
PURPOSE_STATE = b"principal-state"
"""The blessing store and roots files a principal writes (detects tampering on disk)."""

PUBLIC_KEY_SIZE = 32  # Ed25519 public keys are 32 bytes (RFC 8032)
SIGNATURE_SIZE = 64  # Ed25519 signatures are 64 bytes (RFC 8032)
MAX_PURPOSE_LEN = 64  # purposes are short constants; a long one is a caller's mistake


def check_purpose(purpose: bytes) -> None:
    """Refuse a purpose that is empty, too long, not bytes, or contains a NUL byte.

    Raises:
        BadArgError: the purpose is not usable.
    """
    if not isinstance(purpose, bytes) or not purpose:
        raise errors.BadArgError("security: a signature purpose must be non-empty bytes")
    if b"\x00" in purpose or len(purpose) > MAX_PURPOSE_LEN:
        raise errors.BadArgError(
            f"security: a signature purpose may not contain NUL or exceed {MAX_PURPOSE_LEN} bytes"
        )


def signed_bytes(purpose: bytes, message: bytes) -> bytes:
    """The exact bytes an ipcclient signature covers for ``purpose`` and ``message``."""
    check_purpose(purpose)
    if not isinstance(message, bytes | bytearray | memoryview):
        raise errors.BadArgError("security: a signed message must be bytes")
    return SIGNATURE_PREFIX + purpose + b"\x00" + bytes(message)


class PublicKey:
    """An Ed25519 public key, equal and hashed by its 32 raw bytes.

    Attributes:
        raw: the 32-byte encoding (RFC 8032), which is also the wire form.
    """

    __slots__ = ("_key", "raw")

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key
        self.raw: bytes = key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        """The key from its 32 raw bytes.

        Raises:
            BadArgError: ``raw`` is not a 32-byte Ed25519 public key.
        """
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE:
            raise errors.BadArgError("security: an Ed25519 public key is exactly 32 bytes")
        try:
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:  # pragma: no cover - cryptography accepts any 32 bytes today
            raise errors.BadArgError(f"security: invalid Ed25519 public key: {exc}") from exc

    @classmethod
    def from_der(cls, der: bytes) -> PublicKey:
        """The key from a DER SubjectPublicKeyInfo.

        Raises:
            BadArgError: ``der`` is not an Ed25519 SubjectPublicKeyInfo.
        """
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError) as exc:
            raise errors.BadArgError(f"security: invalid DER public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise errors.BadArgError("security: only Ed25519 public keys are supported")
        return cls(key)

    @property
    def der(self) -> bytes:
        """The DER SubjectPublicKeyInfo encoding (for tools that want PKIX)."""
        return self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def fingerprint(self) -> str:
        """A short human-readable digest of the key: the first 16 bytes of SHA-256, hex."""
        return ":".join(f"{b:02x}" for b in hashlib.sha256(self.raw).digest()[:16])

    def verify(self, signature: bytes, purpose: bytes, message: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message`` for ``purpose``.

        Never raises for a bad signature (wrong length, wrong bytes): it returns False.

        Raises:
            BadArgError: ``purpose`` is not a valid purpose (a caller's mistake).
        """
        data = signed_bytes(purpose, message)
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.raw == other.raw

    def __hash__(self) -> int:
        return hash((PublicKey, self.raw))

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint})"
