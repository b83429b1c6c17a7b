"""Encrypted records: the byte stream of an established VC (sans-IO).

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
from collections.abc import Iterable, Iterator, Sequence

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
# Plaintexts of at least this size are sealed and opened through buffers the sealer and the
# opener keep (allocated on first use, then reused): a bulk transfer then allocates no fresh
# memory per record, which with glibc's malloc means no page faults on every large buffer
# (measured on a 1 MiB echo: ~1000 minor faults per call before, and 2.5x the time).
BULK_RECORD = 64 * 1024
_MAX_RECORD = 4 + MAX_RECORD_PLAINTEXT + TAG_SIZE  # a whole record, header included
# The opener's receive buffer starts here and grows (up to two maximum records) only when a
# record announces more than fits: an idle or chatty VC keeps 64 KiB, not half a MiB.
_RECV_INITIAL = 64 * 1024
_RECV_MAX = 2 * _MAX_RECORD


class RecordSealer:
    """Seals outgoing plaintext into records for one direction. One thread at a time."""

    __slots__ = ("_aead", "_counter", "_limit", "_out", "_plain")

    def __init__(self, key: bytes, *, first_counter: int = 0, limit: int = MAX_RECORDS_PER_KEY):
        if len(key) != KEY_SIZE:
            raise errors.BadArgError("records: key must be 32 bytes")
        self._aead = AESGCM(key)
        self._counter = first_counter
        self._limit = limit
        self._plain: bytearray | None = None  # bulk scratch buffers (seal_parts)
        self._out: bytearray | None = None

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
        for start in range(0, size, MAX_RECORD_PLAINTEXT):
            chunk = view[start : start + MAX_RECORD_PLAINTEXT]
            pos += self._seal_into(chunk, target[pos:])
        target.release()
        return out

    def seal_parts(
        self, parts: Sequence[bytes | bytearray | memoryview]
    ) -> Iterable[bytes | memoryview]:
        """Records carrying the concatenation of ``parts``, one at a time.

        Small plaintexts become one record of its own. From :data:`BULK_RECORD` bytes on,
        each record is gathered and sealed into buffers this sealer reuses: a yielded
        memoryview is valid only until the next one is requested (send it before that).

        Raises:
            BadStateError: the key's record limit is reached (the VC must close).
        """
        total = 0
        for part in parts:
            total += len(part)
        if total < BULK_RECORD:
            return (self._seal_one(parts[0] if len(parts) == 1 else b"".join(parts)),)
        return self._seal_bulk(parts)

    def _seal_bulk(
        self, parts: Sequence[bytes | bytearray | memoryview]
    ) -> Iterator[bytes | memoryview]:
        if self._plain is None or self._out is None:
            self._plain = bytearray(MAX_RECORD_PLAINTEXT)
            self._out = bytearray(_MAX_RECORD)
        with memoryview(self._plain) as plain, memoryview(self._out) as out:
            fill = 0
            for part in parts:
                view = memoryview(part).cast("B")
                size = len(view)
                pos = 0
                while pos < size:
                    take = min(size - pos, MAX_RECORD_PLAINTEXT - fill)
                    plain[fill : fill + take] = view[pos : pos + take]
                    fill += take
                    pos += take
                    if fill == MAX_RECORD_PLAINTEXT:
                        # (Sealed before the yield, not inside its expression: compiled by
                        # mypyc, the call inside a yield's expression ran twice.)
                        sealed = self._seal_into(plain, out)
                        yield out[:sealed]
                        fill = 0
            if fill:
                sealed = self._seal_into(plain[:fill], out)
                yield out[:sealed]

    def _seal_into(self, chunk: memoryview, target: memoryview) -> int:
        """Seal ``chunk`` as one record at the start of ``target``; its size."""
        counter = self._counter
        if counter >= self._limit:
            raise errors.BadStateError("records: nonce counter exhausted; the VC must be redialed")
        self._counter = counter + 1
        length = len(chunk) + TAG_SIZE
        header = _LENGTH.pack(length)
        target[:4] = header
        nonce = _NONCE_PREFIX + counter.to_bytes(8, "big")
        self._aead.encrypt_into(nonce, chunk, header, target[4 : 4 + length])
        return 4 + length

    def _seal_one(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        counter = self._counter
        if counter >= self._limit:
            raise errors.BadStateError("records: nonce counter exhausted; the VC must be redialed")
        self._counter = counter + 1
        header = _LENGTH.pack(len(plaintext) + TAG_SIZE)
        nonce = _NONCE_PREFIX + counter.to_bytes(8, "big")
        return header + self._aead.encrypt(nonce, bytes(plaintext), header)


class RecordOpener:
    """Opens incoming records of one direction, whatever the chunking of the input.

    Two ways in: :meth:`feed` (bytes in, plaintexts out) or, without copying the input,
    :meth:`receive_buffer` (receive straight into the opener's buffer) then :meth:`received`.
    One thread at a time.
    """

    __slots__ = ("_aead", "_buf", "_counter", "_end", "_failed", "_limit", "_plain", "_start")

    def __init__(self, key: bytes, *, first_counter: int = 0, limit: int = MAX_RECORDS_PER_KEY):
        if len(key) != KEY_SIZE:
            raise errors.BadArgError("records: key must be 32 bytes")
        self._aead = AESGCM(key)
        self._counter = first_counter
        self._limit = limit
        self._buf = bytearray(_RECV_INITIAL)  # received bytes are _buf[_start:_end]
        self._start = 0
        self._end = 0
        self._plain: bytearray | None = None  # bulk plaintext scratch (received)
        self._failed: errors.IPCError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet opened (a partial record)."""
        return self._end - self._start

    def release_buffer(self) -> None:
        """Let go of the receive buffers while nothing is buffered (an idle VC); the next
        :meth:`receive_buffer` makes a new one."""
        if self._start == self._end:
            self._buf = bytearray()
            self._start = self._end = 0
            self._plain = None

    def receive_buffer(self) -> memoryview:
        """Where the next received bytes go (write at most its length, then call
        :meth:`received`). Never empty: there is room for at least the rest of the partial
        record held."""
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        start, end = self._start, self._end
        need = _RECV_INITIAL
        if end - start >= 4:  # a partial record: make room for all of it
            need = max(need, 4 + _LENGTH.unpack_from(buf, start)[0])
        if len(buf) - start < need:
            if start:  # move the partial record to the front
                buf[: end - start] = buf[start:end]
                self._start, self._end = 0, end - start
            if len(buf) < need:
                buf.extend(bytes(min(max(need, 2 * len(buf)), _RECV_MAX) - len(buf)))
        elif end == len(buf):  # full but for a record that needs no more room: compact
            buf[: end - start] = buf[start:end]
            self._start, self._end = 0, end - start
        return memoryview(buf)[self._end :]

    def received(self, nbytes: int) -> Iterable[bytes | memoryview]:
        """``nbytes`` were written into :meth:`receive_buffer`: the plaintexts of the records
        they complete, in order. A plaintext of :data:`BULK_RECORD` bytes or more is a view
        of a buffer the opener reuses, valid only until the next one is requested.

        Raises:
            BadProtocolError: a record is too large, fails authentication (tampered, replayed,
                reordered, reflected or from another key), or the counter is exhausted. The
                opener then stays failed: every later call raises the same error.
        """
        if self._failed is not None:
            raise self._failed
        self._end += nbytes
        buf = self._buf
        start = self._start
        size = self._end - start - 4
        if (
            TAG_SIZE <= size < BULK_RECORD + TAG_SIZE
            and _LENGTH.unpack_from(buf, start)[0] == size
            and self._counter < self._limit
        ):
            # The usual receive: exactly one small record (a request, a reply).
            with memoryview(buf) as view:
                body = view[start + 4 : self._end]
                aad = view[start : start + 4]
                try:
                    plain = self._aead.decrypt(
                        _NONCE_PREFIX + self._counter.to_bytes(8, "big"), body, aad
                    )
                except InvalidTag:
                    plain = None  # (the general way below fails the opener)
                finally:
                    body.release()
                    aad.release()
            if plain is not None:
                self._counter += 1
                self._start = self._end = 0
                return (plain,)
        return self._open_buffered()

    def _open_buffered(self) -> Iterator[bytes | memoryview]:
        """:meth:`received` in general: every record the buffer completes, one at a time."""
        buf = self._buf
        try:
            with memoryview(buf) as view:
                while True:
                    pos, end = self._start, self._end
                    if end - pos < 4:
                        break
                    (length,) = _LENGTH.unpack_from(buf, pos)
                    if length < TAG_SIZE or length > MAX_RECORD_PLAINTEXT + TAG_SIZE:
                        raise errors.BadProtocolError(f"records: bad record length {length}")
                    if end - pos - 4 < length:
                        break
                    counter = self._counter
                    if counter >= self._limit:
                        raise errors.BadProtocolError("records: peer exceeded the record limit")
                    nonce = _NONCE_PREFIX + counter.to_bytes(8, "big")
                    body = view[pos + 4 : pos + 4 + length]
                    aad = view[pos : pos + 4]
                    size = length - TAG_SIZE
                    try:
                        if size < BULK_RECORD:
                            plain: bytes | memoryview = self._aead.decrypt(nonce, body, aad)
                        else:
                            if self._plain is None:
                                self._plain = bytearray(MAX_RECORD_PLAINTEXT)
                            plain = memoryview(self._plain)[:size]
                            self._aead.decrypt_into(nonce, body, aad, plain)
                    except InvalidTag:
                        raise errors.BadProtocolError(
                            "records: a record failed authentication (tampered, replayed or "
                            "reordered)"
                        ) from None
                    self._counter = counter + 1
                    self._start = pos + 4 + length
                    yield plain
        except errors.BadProtocolError as exc:
            self._failed = exc
            self._buf = bytearray()
            self._start = self._end = 0
            raise
        if self._start == self._end:
            self._start = self._end = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The plaintexts of every record completed by ``data``, in order (copies ``data``
        into the opener's buffer; see :meth:`received` for the errors)."""
        out: list[bytes] = []
        with memoryview(data) as raw:
            view = raw.cast("B")
            size = len(view)
            pos = 0
            while True:
                room = self.receive_buffer()
                take = min(len(room), size - pos)
                room[:take] = view[pos : pos + take]
                room.release()
                pos += take
                for plain in self.received(take):
                    out.append(plain if type(plain) is bytes else bytes(plain))
                if pos >= size:
                    break
            view.release()
        return out
