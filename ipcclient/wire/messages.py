"""Messages on a flow: length-prefixed CBOR values (sans-IO).

Owns: how the byte stream of one flow is cut into messages: each message is a u32 big-endian
length followed by that many bytes of one CBOR value. Writing one or many values into one
buffer (so a whole unary request is one flow write) and reassembling messages from whatever
chunks the flow delivers, with the message size limit enforced from the length alone, before
any byte of the body is buffered beyond it.

Must not: know what a message means (request and response headers are the call layer's), touch
sockets or threads.
"""

from __future__ import annotations

import struct
from typing import Any

from ipcclient import codec, errors

__all__ = ["MessageReader", "encode_messages"]

_LENGTH = struct.Struct(">I")


def encode_messages(*values: Any) -> bytes:
    """One buffer holding each value as a length-prefixed CBOR message, in order."""
    out = bytearray()
    for value in values:
        body = codec.encode(value)
        out += _LENGTH.pack(len(body))
        out += body
    return bytes(out)


class MessageReader:
    """Reassembles messages from a flow's bytes and decodes them under codec limits."""

    __slots__ = ("_buf", "_limits", "_need")

    def __init__(self, limits: codec.Limits = codec.DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._need = -1  # body length of the message being read; -1 while reading its length

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Decoded values of every message completed by ``data``.

        Raises:
            BadProtocolError: a length above the limit (raised as soon as the 4 length bytes
                are in) or a body that does not decode.
        """
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = 0
        end = len(buf)
        limit = self._limits.max_message_size
        while True:
            if self._need < 0:
                if end - pos < 4:
                    break
                (need,) = _LENGTH.unpack_from(buf, pos)
                if need > limit:
                    self._buf = bytearray()
                    raise errors.BadProtocolError(
                        f"messages: a message of {need} bytes exceeds the limit of {limit}"
                    )
                pos += 4
                self._need = need
            need = self._need
            if end - pos < need:
                break
            out.append(codec.decode(buf[pos : pos + need], self._limits))
            pos += need
            self._need = -1
        if pos:
            del buf[:pos]
        return out
