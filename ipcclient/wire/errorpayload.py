"""The error carried by a RESET or GOAWAY frame: encoded to fit, and decoded back (sans-IO).

Owns: :func:`encode_error` (an error as CBOR in at most a given number of bytes, shortened
to its id, action and the start of its message when it does not fit or cannot be encoded)
and :func:`decode_error`. Must not: build frames or keep any state.
"""

from __future__ import annotations

from ipcclient import codec, errors

__all__ = ["decode_error", "encode_error"]

# When an error does not fit a peer's frame (or cannot be encoded), it is sent shortened to
# its id, action and the first characters of its message: at most 64*4 + 128*4 + ~40 bytes,
# under MIN_FRAME_PAYLOAD whatever the UTF-8.
_SHORT_ERROR_ID_CHARS = 64
_SHORT_ERROR_MSG_CHARS = 128


def encode_error(err: errors.IPCError, room: int) -> bytes:
    """``err`` as CBOR in at most ``room`` bytes (``room`` is at least
    :data:`~ipcclient.wire.frames.MIN_FRAME_PAYLOAD`), shortened if need be."""
    try:
        payload = codec.encode(err)
    except errors.BadArgError:  # params that have no CBOR form
        payload = b""
    if not payload or len(payload) > room:
        short = errors.IPCError(
            err.msg[:_SHORT_ERROR_MSG_CHARS],
            id=err.id[:_SHORT_ERROR_ID_CHARS],
            action=err.action,
        )
        payload = codec.encode(short)
    return payload


def decode_error(payload: bytes) -> errors.IPCError:
    """The error a RESET or GOAWAY payload carries.

    Raises:
        BadProtocolError: the payload is not CBOR, or not an error.
    """
    value = codec.decode(payload)
    if not isinstance(value, errors.IPCError):
        raise errors.BadProtocolError("mux: RESET/GOAWAY payload is not an error")
    return value
