"""Principals and peers made under the received rule for extensions keep working.

Every release before the stricter rule for new names (commit 095ff2d and earlier) made
blessings such as ``㈱acme`` (its NFKC form is ``(株)acme``) or ``alice❤️`` (U+FE0F, a variation
selector). The stricter rule once held every certificate to it, so a principal saved with such
a blessing no longer loaded and a peer holding one failed the handshake. Here such blessings
are made as that code made them (certificates signed by real keys, without the checks of
``Principal.bless``) and saved as its ``Principal.save`` wrote them.
"""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient import codec, errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ServerPattern
from ipcclient.security import (
    PURPOSE_CERTIFICATE,
    PURPOSE_STATE,
    BlessingPattern,
    Blessings,
    Certificate,
    Principal,
    PublicKey,
    caveats,
    is_valid_extension,
    validate_extension,
)
from ipcclient.security.blessings import certificate_digest
from ipcclient.server.authorizer import AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall

ANY = [caveats.unconstrained_use()]

VALID_BEFORE = {
    "emoji with U+FE0F": "alice\u2764\ufe0f",
    "keycap": "1\ufe0f\u20e3",
    "U+3231 parenthesized ideograph stock": "\u3231acme",
    "U+2474 parenthesized digit one": "\u2474",
    "U+02D0 IPA length mark": "a\u02d0b",
    "U+A789 modifier letter colon": "a\ua789b",
    "U+00B4 acute accent": "D\u00b4Angelo",
    "NFD cafe": unicodedata.normalize("NFD", "caf\u00e9"),
    "Arabic decimal separator": "\u0663\u066b\u0661\u0664",
    "Mongolian free variation selector": "\u182a\u180b",
    "U+309B voiced sound mark": "\u309b",
    "U+FF1A fullwidth colon": "idp\uff1aalice",
    "U+2026 ellipsis": "\u2026",
}
"""Extensions 095ff2d's rule took: each must still be taken from a peer or from disk."""

STILL_REFUSED = ["a:b", "a b", "x\u200b", "a\u202eb", "a\u00adb", "$", "...", "__x", "", "a\x00"]
"""Extensions 095ff2d's rule refused too: refused whoever made them."""


def _old_certificate(
    signer: Principal,
    parent: Sequence[Certificate],
    extension: str,
    key: PublicKey,
    cavs: Sequence[caveats.Caveat] = (),
) -> Certificate:
    """A certificate as 095ff2d's ``bless`` / ``bless_self`` made it: signed by ``signer``,
    after ``parent`` (a root when empty), with no check of ``extension`` beyond its rule."""
    digest = bytes(32)
    for cert in parent:
        digest = cert.digest(digest)
    digest = certificate_digest(digest, extension, key, cavs)
    return Certificate(extension, key, tuple(cavs), signer.sign(PURPOSE_CERTIFICATE, digest))


def old_bless_self(p: Principal, extension: str) -> Blessings:
    return Blessings([(_old_certificate(p, (), extension, p.public_key),)])


def old_bless(blesser: Principal, parent: Blessings, key: PublicKey, extension: str) -> Blessings:
    chain = parent.chains[0]
    return Blessings([(*chain, _old_certificate(blesser, chain, extension, key, ANY))])


def write_as_095ff2d(directory: Path, key: ed25519.Ed25519PrivateKey, p: Principal) -> None:
    """Write ``p`` (whose key is ``key``) into ``directory`` as 095ff2d's ``Principal.save``
    did: a PKCS#8 key file of mode 0600, and the roots and store as signed state files. The
    directory is made by ``os.mkdir`` under the caller's umask."""
    directory.mkdir()
    key_file = directory / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_file, 0o600)
    for name, data in (("roots.json", p.roots.to_plain()), ("store.json", p.store.to_plain())):
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        doc = {
            "format": "ipcclient-principal-state-v1",
            "public_key": p.public_key.raw.hex(),
            "data": data,
            "signature": base64.b64encode(p.sign(PURPOSE_STATE, body.encode())).decode(),
        }
        (directory / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.chmod(directory / name, 0o600)


def saved_old_principal(directory: Path, root_name: str, *names: str) -> Principal:
    """A principal saved in ``directory`` as 095ff2d saved it: blessed ``root_name`` by itself
    and ``root_name:<name>`` by an identity provider for each of ``names`` (its default is
    every one of them), trusting both roots."""
    key = ed25519.Ed25519PrivateKey.generate()
    p = Principal(key)
    own = old_bless_self(p, root_name)
    idp = Principal.generate()
    idp_root = old_bless_self(idp, root_name)
    given = [old_bless(idp, idp_root, p.public_key, n) for n in names]
    p.store.default = Blessings.union(own, *given)
    p.store.set(own, root_name)
    p.add_to_roots(own)
    p.add_to_roots(idp_root)
    write_as_095ff2d(directory, key, p)
    return p


# --- the two rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", list(VALID_BEFORE.values()), ids=list(VALID_BEFORE))
def test_an_extension_valid_before_is_valid_when_received(ext: str) -> None:
    """Each was refused everywhere, a peer's certificate and a saved principal's included."""
    assert is_valid_extension(ext, received=True)
    assert validate_extension(ext, received=True) == ext
    assert BlessingPattern(f"{ext}:x").is_valid()
    assert BlessingPattern(ext).matched_by(f"{ext}:x")
    p = Principal.generate()
    b = old_bless_self(p, ext)
    back = codec.decode(codec.encode(b))
    assert back == b and back.names == [ext]


@pytest.mark.parametrize("ext", STILL_REFUSED)
def test_what_was_refused_before_is_refused_when_received(ext: str) -> None:
    assert not is_valid_extension(ext, received=True)
    with pytest.raises(errors.BadArgError, match="invalid blessing extension"):
        validate_extension(ext, received=True)
    if ":" not in ext:  # (a pattern is components joined with ':')
        assert not BlessingPattern(f"x:{ext}:y").is_valid()
    cert = old_bless_self(Principal.generate(), "idp").chains[0][0]
    forged = Blessings([(Certificate(ext, cert.public_key, cert.caveats, cert.signature),)])
    with pytest.raises(errors.BadProtocolError, match="invalid certificate extension"):
        codec.decode(codec.encode(forged))


def test_received_must_be_a_bool() -> None:
    for wrong in (None, 1, "yes"):
        with pytest.raises(errors.BadArgError, match="received must be True or False"):
            is_valid_extension("x", received=wrong)  # type: ignore[arg-type]
        with pytest.raises(errors.BadArgError, match="received must be True or False"):
            validate_extension("x", received=wrong)  # type: ignore[arg-type]


# --- a principal saved before --------------------------------------------------------------


def test_a_principal_saved_with_such_blessings_loads(tmp_path: Path) -> None:
    """095ff2d saved it; the stricter rule once refused its roots (``invalid blessing pattern
    '㈱acme'``) and its store (the certificates, as a protocol error)."""
    d = tmp_path / "old"
    old = saved_old_principal(d, "\u3231acme", "alice\u2764\ufe0f", "caf\u00e9")
    os.chmod(d, 0o700)
    p = Principal.load(d)
    assert p.public_key == old.public_key
    default = p.store.default
    assert default is not None and default == old.store.default
    assert sorted(default.names) == [
        "\u3231acme",
        "\u3231acme:alice\u2764\ufe0f",
        "\u3231acme:caf\u00e9",
    ]
    assert p.store.peer_blessings() == old.store.peer_blessings()
    assert p.roots.dump() == old.roots.dump()
    assert p.store.for_peer("\u3231acme:server") == old_bless_self(p, "\u3231acme")
    # It can still bless, under the old name, with a new name that meets the stricter rule
    # (and not with one that does not), and save itself back.
    friend = Principal.generate()
    b = p.bless(friend.public_key, default, "friend", ANY)
    assert "\u3231acme:friend" in b.names
    with pytest.raises(errors.BadArgError, match="invalid blessing extension"):
        p.bless(friend.public_key, default, "bob\ufe0f", ANY)
    p.save(d)
    assert Principal.load(d).store.default == old.store.default


# --- a handshake with such a peer ------------------------------------------------------------


@expose
class _Who:
    def WhoAmI(self, call: ServerCall) -> list[str]:
        return list(call.remote_blessing_names)


def test_a_handshake_between_peers_holding_such_blessings() -> None:
    """A server blessed ``㈱acme:server`` and a client blessed ``㈱acme:alice❤️``, each
    trusting the ``㈱acme`` root, over a real VC on loopback: each once refused the other's
    certificates as a protocol error."""
    idp = Principal.generate()
    root = old_bless_self(idp, "\u3231acme")

    def member(name: str) -> Principal:
        p = Principal.generate()
        p.store.default = old_bless(idp, root, p.public_key, name)
        p.store.set(p.store.default, "...")
        p.add_to_roots(root)
        return p

    server = Server(member("server"))
    client: Client | None = None
    try:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve(_Who(), AllowPatterns(["\u3231acme:alice\u2764\ufe0f"]))
        client = Client(member("alice\u2764\ufe0f"))
        ctx = Context.background().with_timeout(10.0)
        got = client.call(ctx, "/" + ep, "WhoAmI", options=[ServerPattern("\u3231acme:server")])
        assert got == (["\u3231acme:alice\u2764\ufe0f"],)
        # The client's default authorization of the server (a shared name prefix) holds too.
        assert client.call(ctx, "/" + ep, "WhoAmI") == got
        stranger = Client(member("bob"))
        try:
            with pytest.raises(errors.NoAccessError, match="no blessing matches"):
                stranger.call(ctx, "/" + ep, "WhoAmI")
        finally:
            stranger.close()
    finally:
        if client is not None:
            client.close()
        server.stop(timeout=5.0)
