"""Encrypted records: the byte stream of an established VC (floor 4, sans-IO).

Owns: sealing plaintext (the mux's frame bytes) into AEAD records and opening records back
into plaintext, with per-direction keys and counter nonces, a bounded record size, and the
limit on how many records one key may seal.

Must not: touch sockets, know about frames, flows or keys' origin (the handshake derives the
keys and hands them here), or ever reuse a nonce.

Record layout (all integers big-endian)::

    +---------------------+------------------------------------------+
    | length: u32         | ciphertext (length bytes) = AEAD(plain)   |
    +---------------------+------------------------------------------+

``ciphertext`` is AES-256-GCM over the plaintext with the 16-byte tag appended, nonce =
4 zero bytes || the 8-byte record counter of this direction (0, 1, 2, ...), and the 4 length
bytes as associated data. A record's plaintext is one or more whole or partial mux frames:
the receiver feeds the plaintext of every record, in order, to its frame decoder, so frame and
record boundaries are independent. Several frames sealed into one record cost one AEAD call
and one header; this is how a burst of small frames stays cheap.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipcclient import errors

__all__ = [
    "KEY_SIZE",
    "MAX_RECORDS_PER_KEY",
    "MAX_RECORD_PLAINTEXT",
    "TAG_SIZE",
    "RecordOpener",
    "RecordSealer",
]

KEY_SIZE = 32  # AES-256
TAG_SIZE = 16  # GCM tag
_LENGTH = struct.Struct(">I")
_NONCE_PREFIX = b"\x00\x00\x00\x00"
# The largest plaintext one record carries. 256 KiB holds four maximum-size frames (64 KiB
# payload each) so bulk transfers pay one AEAD call per ~256 KiB, while a receiver never
# buffers more than this (plus the tag) for a record it cannot yet open.
MAX_RECORD_PLAINTEXT = 256 * 1024
# Counter nonces never repeat; we stop far below 2^64 (GCM's per-key safety margin for this
# many records of this size is far above it too). A VC that reaches it is closed; the client
# dials a new one with fresh keys.
MAX_RECORDS_PER_KEY = 1 << 48


class RecordSealer:
    """Seals outgoing plaintext into records for one direction."""

    __slots__ = ("_aead", "_counter", "_limit")

    def __init__(self, key: bytes, *, first_counter: int = 0, limit: int = MAX_RECORDS_PER_KEY):
        if len(key) != KEY_SIZE:
            raise errors.BadArgError("records: key must be 32 bytes")
        self._aead = AESGCM(key)
        self._counter = first_counter
        self._limit = limit

    @property
    def counter(self) -> int:
        """The counter the next record will use."""
        return self._counter

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Records carrying ``plaintext`` (split when it exceeds the record maximum).

        Raises:
            BadStateError: the key's record limit is reached (the VC must close).
        """
        size = len(plaintext)
        if size <= MAX_RECORD_PLAINTEXT:
            return self._seal_one(plaintext)
        # Several records, encrypted in place into one buffer (no intermediate copies).
        records = -(-size // MAX_RECORD_PLAINTEXT)
        if self._counter + records > self._limit:
            raise errors.BadStateError("records: nonce counter exhausted; the VC must be redialed")
        view = memoryview(plaintext).cast("B")
        out = bytearray(size + records * (4 + TAG_SIZE))
        target = memoryview(out)
        pos = 0
        counter = self._counter
        encrypt_into = self._aead.encrypt_into
        for start in range(0, size, MAX_RECORD_PLAINTEXT):
            chunk = view[start : start + MAX_RECORD_PLAINTEXT]
            length = len(chunk) + TAG_SIZE
            header = _LENGTH.pack(length)
            target[pos : pos + 4] = header
            nonce = _NONCE_PREFIX + counter.to_bytes(8, "big")
            encrypt_into(nonce, chunk, header, target[pos + 4 : pos + 4 + length])
            counter += 1
            pos += 4 + length
        self._counter = counter
        target.release()
        return out

    def _seal_one(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        counter = self._counter
        if counter >= self._limit:
            raise errors.BadStateError("records: nonce counter exhausted; the VC must be redialed")
        self._counter = counter + 1
        header = _LENGTH.pack(len(plaintext) + TAG_SIZE)
        nonce = _NONCE_PREFIX + counter.to_bytes(8, "big")
        return header + self._aead.encrypt(nonce, bytes(plaintext), header)


class RecordOpener:
    """Opens incoming records of one direction, whatever the chunking of the input."""

    __slots__ = ("_aead", "_buffer", "_counter", "_failed", "_limit")

    def __init__(self, key: bytes, *, first_counter: int = 0, limit: int = MAX_RECORDS_PER_KEY):
        if len(key) != KEY_SIZE:
            raise errors.BadArgError("records: key must be 32 bytes")
        self._aead = AESGCM(key)
        self._counter = first_counter
        self._limit = limit
        self._buffer = bytearray()
        self._failed: errors.IPCError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet opened (a partial record)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The plaintexts of every record completed by ``data``, in order.

        Raises:
            BadProtocolError: a record is too large, fails authentication (tampered, replayed,
                reordered, reflected or from another key), or the counter is exhausted. The
                opener then stays failed: every later call raises the same error.
        """
        if self._failed is not None:
            raise self._failed
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length < TAG_SIZE or length > MAX_RECORD_PLAINTEXT + TAG_SIZE:
                    raise errors.BadProtocolError(f"records: bad record length {length}")
                if end - pos - 4 < length:
                    break
                counter = self._counter
                if counter >= self._limit:
                    raise errors.BadProtocolError("records: peer exceeded the record limit")
                view = memoryview(buf)
                try:
                    plain = self._aead.decrypt(
                        _NONCE_PREFIX + counter.to_bytes(8, "big"),
                        view[pos + 4 : pos + 4 + length],
                        view[pos : pos + 4],
                    )
                except InvalidTag:
                    raise errors.BadProtocolError(
                        "records: a record failed authentication (tampered, replayed or reordered)"
                    ) from None
                finally:
                    view.release()
                self._counter = counter + 1
                out.append(plain)
                pos += 4 + length
        except errors.BadProtocolError as exc:
            self._failed = exc
            self._buffer = bytearray()
            raise
        if pos:
            del buf[:pos]
        return out
