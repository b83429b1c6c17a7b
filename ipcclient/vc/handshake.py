"""The VC handshake: versions, key agreement, mutual authentication (sans-IO).

Owns: the two handshake state machines (:class:`ClientHandshake`, :class:`ServerHandshake`)
that turn a fresh byte stream into an authenticated, encrypted VC: protocol version
negotiation, ephemeral X25519 key agreement, HKDF key derivation bound to the transcript
(both hellos included, so a man in the middle cannot force a downgrade), and mutual
authentication by signatures over the transcript with each side's principal key. The client
authorizes the server's blessings *before* it sends anything that identifies itself.

Must not: touch sockets, clocks or threads (the transport enforces the handshake deadline and
feeds bytes), validate blessings against roots itself (the caller's ``authorize_server``
callback does that), or know about frames and flows beyond handing their settings over.

Layout (see docs/protocol.md section 4 for the byte-by-byte specification)::

    C -> S  MAGIC(4) | u32 len | CBOR ClientHello          (clear)
    S -> C  MAGIC(4) | u32 len | CBOR ServerHello          (clear)
            -- both derive keys from X25519 + HKDF(salt = transcript hash) --
    S -> C  record 0: CBOR ServerAuth  {key, blessings, discharges, sig}
    C -> S  record 0: CBOR ClientAuth  {key, blessings, discharges, sig}
            -- records 1.. carry mux frames in both directions --
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ipcclient import codec, errors
from ipcclient.security.blessings import Blessings
from ipcclient.security.discharges import Discharge
from ipcclient.security.keys import PURPOSE_HANDSHAKE, PublicKey
from ipcclient.vc.records import KEY_SIZE, RecordOpener, RecordSealer
from ipcclient.wire.errorpayload import encode_error
from ipcclient.wire.frames import GOAWAY, encode_frame

__all__ = [
    "MAGIC",
    "MAX_HELLO_SIZE",
    "SUPPORTED_VERSIONS",
    "ClientHandshake",
    "HandshakeResult",
    "Identity",
    "ServerHandshake",
    "VCSettings",
]

MAGIC = b"\x8fIPC"
"""First bytes of both hellos: not ASCII, so a peer speaking another protocol fails at once."""
SUPPORTED_VERSIONS = (1, 1)
"""The RPC protocol versions this side speaks, as an inclusive (min, max) range."""
MAX_VERSION = (1 << 32) - 1
"""The highest protocol version a hello may carry (a u32)."""
MIN_WINDOW = 1024
"""The smallest per-flow window a hello may announce (docs/protocol.md)."""
MAX_FLOWS = (1 << 32) - 1
"""The highest flow limit a hello may announce (a u32)."""
MAX_HELLO_SIZE = 1024
"""A hello is a small map of fixed fields; anything larger is a flood."""
MAX_AUTH_SIZE = 64 * 1024
"""An auth message carries blessings and discharges: a few KiB in practice, 64 KiB at most."""
RANDOM_SIZE = 32
_KEY_SHARE_SIZE = 32
_HELLO_HEAD = struct.Struct(">4sI")
_KDF_INFO = b"ipcclient vc v1 record keys"
_SERVER_LABEL = b"server"
_CLIENT_LABEL = b"client"


class Identity(Protocol):
    """What a handshake needs of a principal: its public key and a signing function."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, purpose: bytes, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class VCSettings:
    """Per-VC mux settings each side announces in its hello.

    Attributes:
        initial_window: bytes this side buffers per flow before granting credit.
        max_frame_payload: the largest frame payload this side accepts.
        max_flows: the most flows the peer may have open toward this side at once (this
            side refuses more with OverloadedError; a peer that knows waits for one to end
            instead); 0: none announced (the hello leaves ``"max_flows"`` out).
    """

    initial_window: int = 1024 * 1024
    max_frame_payload: int = 64 * 1024
    max_flows: int = 0


@dataclass
class HandshakeResult:
    """An established VC's security and settings.

    ``early_plaintext`` holds mux bytes that arrived in the same reads as the handshake's
    last message; feed them to the mux before anything else.
    """

    version: int
    sealer: RecordSealer
    opener: RecordOpener
    local_key: PublicKey
    remote_key: PublicKey
    local_blessings: Any
    remote_blessings: Any
    remote_discharges: tuple[Any, ...]
    peer_settings: VCSettings
    early_plaintext: list[bytes] = field(default_factory=list)


class _State(enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    DONE = "done"
    FAILED = "failed"


def _encode_hello(fields: dict[str, Any]) -> bytes:
    body = codec.encode(fields)
    return _HELLO_HEAD.pack(MAGIC, len(body)) + body


def _parse_hello(buf: bytearray) -> tuple[dict[str, Any], bytes] | None:
    """(fields, raw bytes) of a complete hello at the start of ``buf``, or None if partial."""
    if len(buf) < _HELLO_HEAD.size:
        if not MAGIC.startswith(bytes(buf[: len(MAGIC)])):
            raise errors.BadProtocolError("handshake: not an ipcclient peer (bad magic)")
        return None
    magic, length = _HELLO_HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise errors.BadProtocolError("handshake: not an ipcclient peer (bad magic)")
    if length > MAX_HELLO_SIZE:
        raise errors.BadProtocolError(f"handshake: hello of {length} bytes is too large")
    total = _HELLO_HEAD.size + length
    if len(buf) < total:
        return None
    raw = bytes(buf[:total])
    del buf[:total]
    fields = codec.as_mapping(codec.decode(raw[_HELLO_HEAD.size :]), "hello")
    return dict(fields), raw


def _int_field(fields: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = fields.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise errors.BadProtocolError(f"handshake: bad {name!r} in hello")
    return value


def _bytes_field(fields: Any, name: str, size: int) -> bytes:
    value = fields.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise errors.BadProtocolError(f"handshake: bad {name!r}")
    return value


def _settings_from(fields: dict[str, Any]) -> VCSettings:
    return VCSettings(
        initial_window=_int_field(fields, "window", MIN_WINDOW, (1 << 31) - 1),
        max_frame_payload=_int_field(fields, "max_frame", 1024, 16 * 1024 * 1024),
        max_flows=(_int_field(fields, "max_flows", 1, MAX_FLOWS) if "max_flows" in fields else 0),
    )


def _hello_fields(settings: VCSettings, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with this side's settings added (``"max_flows"`` only when announced)."""
    fields["window"] = settings.initial_window
    fields["max_frame"] = settings.max_frame_payload
    if settings.max_flows:
        fields["max_flows"] = settings.max_flows
    return fields


def _derive_keys(
    private: x25519.X25519PrivateKey, peer_share: bytes, transcript: bytes
) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key) from the shared secret and transcript."""
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
    except ValueError as exc:  # a low-order point gives an all-zero secret; refuse it
        raise errors.BadProtocolError("handshake: bad key share") from exc
    okm = HKDF(
        algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=transcript, info=_KDF_INFO
    ).derive(shared)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def _auth_message(
    identity: Identity, blessings: Any, discharges: Sequence[Any], transcript: bytes, label: bytes
) -> bytes:
    """Our auth message.

    Raises:
        BadArgError: it is larger than :data:`MAX_AUTH_SIZE`, which the peer would refuse
            (our blessings and discharges are too large).
    """
    auth = codec.encode(
        {
            "key": identity.public_key.raw,
            "blessings": blessings,
            "discharges": list(discharges),
            "sig": identity.sign(PURPOSE_HANDSHAKE, transcript + label),
        }
    )
    if len(auth) > MAX_AUTH_SIZE:
        raise errors.BadArgError(
            f"handshake: our blessings and discharges encode to {len(auth)} bytes; a peer "
            f"accepts at most {MAX_AUTH_SIZE}"
        )
    return auth


def _check_auth(
    plain: bytes, transcript: bytes, label: bytes
) -> tuple[PublicKey, Any, tuple[Any, ...]]:
    """The peer's verified key, its blessings and discharges from an auth message."""
    if len(plain) > MAX_AUTH_SIZE:
        raise errors.BadProtocolError("handshake: auth message too large")
    fields = codec.as_mapping(codec.decode(plain), "auth message")
    key = PublicKey.from_raw(_bytes_field(fields, "key", 32))
    sig = fields.get("sig")
    if not isinstance(sig, bytes) or not key.verify(sig, PURPOSE_HANDSHAKE, transcript + label):
        raise errors.NotTrustedError("handshake: the peer's transcript signature does not verify")
    blessings = fields.get("blessings")
    if blessings is not None:
        if not isinstance(blessings, Blessings):
            raise errors.BadProtocolError("handshake: 'blessings' is not a blessings value")
        if blessings.public_key != key:
            raise errors.NotTrustedError(
                "handshake: the peer's blessings are not bound to the key it authenticated with"
            )
    discharges = fields.get("discharges", ())
    if not isinstance(discharges, list | tuple) or not all(
        isinstance(d, Discharge) for d in discharges
    ):
        raise errors.BadProtocolError("handshake: bad discharges")
    return key, blessings, tuple(discharges)


class _Base:
    def __init__(
        self,
        versions: tuple[int, int],
        settings: VCSettings,
        ephemeral_key: bytes | None,
        hello_random: bytes | None,
    ) -> None:
        lo, hi = versions
        if not 1 <= lo <= hi <= MAX_VERSION:
            raise errors.BadArgError("handshake: bad version range")
        if ephemeral_key is not None and (
            not isinstance(ephemeral_key, bytes) or len(ephemeral_key) != _KEY_SHARE_SIZE
        ):
            raise errors.BadArgError("handshake: an ephemeral key is 32 bytes")
        if hello_random is not None and (
            not isinstance(hello_random, bytes) or len(hello_random) != RANDOM_SIZE
        ):
            raise errors.BadArgError(f"handshake: a hello random is {RANDOM_SIZE} bytes")
        self._versions = versions
        self._settings = settings
        self._state = _State.HELLO
        self._buf = bytearray()
        self._error: errors.IPCError | None = None
        self._ephemeral = (
            x25519.X25519PrivateKey.generate()
            if ephemeral_key is None
            else x25519.X25519PrivateKey.from_private_bytes(ephemeral_key)
        )
        self._random = os.urandom(RANDOM_SIZE) if hello_random is None else hello_random
        self._share = self._ephemeral.public_key().public_bytes_raw()
        self.result: HandshakeResult | None = None
        self._opener: RecordOpener | None = None
        self._sealer: RecordSealer | None = None

    @property
    def done(self) -> bool:
        """True once the VC is established (``result`` is set)."""
        return self._state is _State.DONE

    def _fail(self, exc: errors.IPCError) -> errors.IPCError:
        self._state = _State.FAILED
        self._error = exc
        self._buf = bytearray()
        return exc

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._state is _State.DONE:
            raise errors.BadStateError("handshake: already complete")

    def _auth_record(self) -> list[bytes]:
        """The plaintexts of the records received so far (the first one is the peer's auth
        message, the rest early frames), or [] while the first is incomplete."""
        assert self._opener is not None
        if not self._buf:
            return []
        data = bytes(self._buf)
        self._buf.clear()
        plains = self._opener.feed(data)
        if not plains and self._opener.buffered > MAX_AUTH_SIZE + 64:
            raise errors.BadProtocolError("handshake: auth message too large")
        return plains

    def _absorb(self, data: bytes | bytearray | memoryview) -> None:
        # Bounded by construction: a hello's declared length is checked (<= MAX_HELLO_SIZE)
        # as soon as its 8-byte head is here, and the record opener bounds auth records.
        self._buf += data


class ClientHandshake(_Base):
    """The dialing side. Call :meth:`start`, send its bytes, then feed what arrives."""

    def __init__(
        self,
        identity: Identity,
        *,
        authorize_server: Callable[[PublicKey, Any, tuple[Any, ...]], Any],
        blessings_for_server: Callable[[Any], Any],
        discharges_for_server: Callable[[Any], Sequence[Any]] = lambda _b: (),
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        settings: VCSettings = VCSettings(),
        ephemeral_key: bytes | None = None,
        hello_random: bytes | None = None,
    ) -> None:
        """
        Args:
            identity: the client's principal (public key and signer).
            authorize_server: called with the server's verified key, blessings and
                discharges; raises (e.g. NotTrustedError) to refuse the server. It runs
                before the client sends its own key or blessings. What it returns (say,
                the server's names it trusts) is what ``blessings_for_server`` is given;
                None: the server's blessings are given instead.
            blessings_for_server: picks the blessings to present to this server, from
                what ``authorize_server`` returned (may return None to present none).
            discharges_for_server: discharges for third-party caveats on the blessings
                presented (default none).
            versions: the inclusive range of protocol versions to offer.
            settings: this side's mux settings.
            ephemeral_key, hello_random: the X25519 private key (32 bytes) and the hello's
                ``random`` to use instead of fresh random ones. Only for reproducible test
                vectors: reusing them on real connections breaks the handshake's security.
        """
        super().__init__(versions, settings, ephemeral_key, hello_random)
        self._identity = identity
        self._authorize = authorize_server
        self._blessings_for = blessings_for_server
        self._discharges_for = discharges_for_server
        self._client_hello = b""
        self._transcript = b""
        self._version = 0
        self._peer_settings = VCSettings()

    def start(self) -> bytes:
        """The ClientHello to send first."""
        if self._client_hello:
            raise errors.BadStateError("handshake: already started")
        self._client_hello = _encode_hello(
            _hello_fields(
                self._settings,
                {
                    "versions": list(self._versions),
                    "key_share": self._share,
                    "random": self._random,
                },
            )
        )
        return self._client_hello

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed bytes from the server; returns bytes to send (the ClientAuth when done).

        Raises:
            VersionIncompatibleError: no common version (before any secret is exchanged).
            NotTrustedError: the server failed authentication or ``authorize_server``.
            BadProtocolError: anything malformed, oversized or tampered with.
        """
        self._check_usable()
        if not self._client_hello:
            raise errors.BadStateError("handshake: start() first")
        try:
            self._absorb(data)
            return self._step()
        except errors.IPCError as exc:
            raise self._fail(exc) from None

    def _step(self) -> bytes:
        if self._state is _State.HELLO:
            parsed = _parse_hello(self._buf)
            if parsed is None:
                return b""
            fields, raw = parsed
            if "error" in fields:
                # A refusal travels in the clear, unauthenticated: believe only what it may
                # say (no common version), never an error class or retry action it chose.
                err = fields["error"]
                if isinstance(err, errors.VersionIncompatibleError):
                    said = err.msg[:200] + ("..." if len(err.msg) > 200 else "")
                    raise errors.VersionIncompatibleError(f"handshake: the server refused: {said}")
                raise errors.BadProtocolError("handshake: the server refused the handshake")
            version = _int_field(fields, "version", 1, MAX_VERSION)
            lo, hi = self._versions
            if not lo <= version <= hi:
                raise errors.VersionIncompatibleError(
                    f"handshake: server chose version {version}, outside {lo}..{hi}"
                )
            self._version = version
            self._peer_settings = _settings_from(fields)
            share = _bytes_field(fields, "key_share", _KEY_SHARE_SIZE)
            _bytes_field(fields, "random", RANDOM_SIZE)
            self._transcript = hashlib.sha256(self._client_hello + raw).digest()
            c2s, s2c = _derive_keys(self._ephemeral, share, self._transcript)
            self._sealer = RecordSealer(c2s)
            self._opener = RecordOpener(s2c)
            self._state = _State.AUTH
        assert self._opener is not None and self._sealer is not None
        if self._state is _State.AUTH:
            plains = self._auth_record()
            if not plains:
                return b""
            key, blessings, discharges = _check_auth(plains[0], self._transcript, _SERVER_LABEL)
            # Authorize the server before revealing anything about ourselves.
            verdict = self._authorize(key, blessings, discharges)
            transcript2 = hashlib.sha256(self._transcript + plains[0]).digest()
            mine = self._blessings_for(blessings if verdict is None else verdict)
            auth = _auth_message(
                self._identity, mine, self._discharges_for(blessings), transcript2, _CLIENT_LABEL
            )
            out = bytes(self._sealer.seal(auth))
            self.result = HandshakeResult(
                version=self._version,
                sealer=self._sealer,
                opener=self._opener,
                local_key=self._identity.public_key,
                remote_key=key,
                local_blessings=mine,
                remote_blessings=blessings,
                remote_discharges=discharges,
                peer_settings=self._peer_settings,
                early_plaintext=plains[1:],
            )
            self._state = _State.DONE
            return out
        return b""  # pragma: no cover - DONE and FAILED are refused by _check_usable


class ServerHandshake(_Base):
    """The accepting side. Feed what arrives; send what :meth:`receive_data` returns."""

    def __init__(
        self,
        identity: Identity,
        *,
        blessings: Any,
        discharges: Sequence[Any] = (),
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        settings: VCSettings = VCSettings(),
        ephemeral_key: bytes | None = None,
        hello_random: bytes | None = None,
    ) -> None:
        """See :class:`ClientHandshake` for ``ephemeral_key`` and ``hello_random``."""
        super().__init__(versions, settings, ephemeral_key, hello_random)
        self._identity = identity
        self._blessings = blessings
        self._discharges = tuple(discharges)
        self._transcript2 = b""
        self._version = 0
        self._peer_settings = VCSettings()
        self._unsent = b""  # the hello and auth not yet returned, while a later step runs

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed bytes from the client; returns bytes to send.

        A version mismatch returns a ServerHello carrying a VersionIncompatible error *and*
        raises that error on the next call; use :attr:`refusal` to send it before closing.

        Raises:
            VersionIncompatibleError, NotTrustedError, BadProtocolError: see the client.
        """
        self._check_usable()
        try:
            self._absorb(data)
            return self._step()
        except errors.IPCError as exc:
            raise self._fail(exc) from None

    refusal: bytes = b""
    """When the handshake failed on versions, the hello that tells the client why."""

    def rejection(self, err: errors.IPCError) -> bytes:
        """After a failure once the keys exist (the client's auth was refused): a sealed
        GOAWAY frame carrying ``err``, so the client learns why; empty before the keys.
        When the failure came in the same feed as the client's hello, the server's hello and
        auth, never returned, come first: the client cannot open the GOAWAY without them."""
        if self._sealer is None:
            return b""
        # (Shortened to the frame payload the client accepts, as any error a peer is sent.)
        payload = encode_error(err, self._peer_settings.max_frame_payload)
        return self._unsent + bytes(self._sealer.seal(encode_frame(GOAWAY, 0, 0, payload)))

    def _step(self) -> bytes:
        if self._state is _State.HELLO:
            parsed = _parse_hello(self._buf)
            if parsed is None:
                return b""
            fields, client_raw = parsed
            versions = fields.get("versions")
            if (
                not isinstance(versions, list | tuple)
                or len(versions) != 2
                or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_VERSION
                    for v in versions
                )
                or versions[0] > versions[1]
            ):
                raise errors.BadProtocolError("handshake: bad 'versions' in hello")
            peer_lo, peer_hi = versions
            lo, hi = self._versions
            chosen = min(hi, peer_hi)
            if chosen < max(lo, peer_lo):
                err = errors.VersionIncompatibleError(
                    f"handshake: no common version (server {lo}..{hi}, client {peer_lo}..{peer_hi})"
                )
                self.refusal = _encode_hello({"error": err})
                raise err
            self._version = chosen
            self._peer_settings = _settings_from(fields)
            share = _bytes_field(fields, "key_share", _KEY_SHARE_SIZE)
            _bytes_field(fields, "random", RANDOM_SIZE)
            server_hello = _encode_hello(
                _hello_fields(
                    self._settings,
                    {"version": chosen, "key_share": self._share, "random": self._random},
                )
            )
            transcript = hashlib.sha256(client_raw + server_hello).digest()
            c2s, s2c = _derive_keys(self._ephemeral, share, transcript)
            # (Our auth first: should it be too large, the failure comes before the keys,
            # and the connection closes with nothing sent, as the client could open nothing.)
            auth = _auth_message(
                self._identity, self._blessings, self._discharges, transcript, _SERVER_LABEL
            )
            self._sealer = RecordSealer(s2c)
            self._opener = RecordOpener(c2s)
            self._transcript = transcript
            self._transcript2 = hashlib.sha256(transcript + auth).digest()
            self._state = _State.AUTH
            out = server_hello + self._sealer.seal(auth)
            if self._buf:  # the client cannot have sent more yet, but be exact
                self._unsent = out  # (for rejection, should the next step fail)
                out += self._step()
                self._unsent = b""
            return out
        assert self._opener is not None and self._sealer is not None
        if self._state is _State.AUTH:
            plains = self._auth_record()
            if not plains:
                return b""
            key, blessings, discharges = _check_auth(plains[0], self._transcript2, _CLIENT_LABEL)
            self.result = HandshakeResult(
                version=self._version,
                sealer=self._sealer,
                opener=self._opener,
                local_key=self._identity.public_key,
                remote_key=key,
                local_blessings=self._blessings,
                remote_blessings=blessings,
                remote_discharges=discharges,
                peer_settings=self._peer_settings,
                early_plaintext=plains[1:],
            )
            self._state = _State.DONE
        return b""
