"""A minimal signing identity for tests of layers below the principal."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient.security.keys import PublicKey, signed_bytes


class Identity:
    def __init__(self) -> None:
        self._private = ed25519.Ed25519PrivateKey.generate()
        self.public_key = PublicKey(self._private.public_key())

    def sign(self, purpose: bytes, message: bytes) -> bytes:
        return self._private.sign(signed_bytes(purpose, message))


def make_identity() -> Identity:
    return Identity()
