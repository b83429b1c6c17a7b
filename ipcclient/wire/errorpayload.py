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
    :data:`~ipcclient.wire.frames.MIN_FRAME_PAYLOAD`), shortened if need be.

    Always an error the peer reads (:func:`decode_error`): an error whose ID or message a
    peer refuses (an empty or overlong ID, a message that is not text, params over the
    decoder's limits) or that cannot be encoded is sent as a stand-in with its ID (or
    ``ipc.Unknown``), action and message start. A payload the peer refuses would end the
    whole VC (a protocol error), not only the flow it was meant for."""
    payload = b""
    if _readable(err):
        try:
            payload = codec.encode(err)
            # Params that encode but that the peer's decoder refuses (more map keys that
            # are containers than it takes, a message over its size limit) go as a
            # stand-in too.
            codec.check_encoded(payload)
        except errors.BadArgError:  # params that have no CBOR form, text that is not UTF-8
            payload = b""
    if not payload or len(payload) > room:
        payload = codec.encode(_stand_in(err))
    return payload


def _readable(err: errors.IPCError) -> bool:
    """Whether a peer's :func:`~ipcclient.errors.from_wire` takes ``err``'s ID and message."""
    wid = err.id
    return (
        isinstance(wid, str) and 0 < len(wid) <= errors.MAX_WIRE_ID_LEN and isinstance(err.msg, str)
    )


def _text(value: object, chars: int) -> str:
    """At most ``chars`` characters of ``value`` as text that encodes to UTF-8."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # (a broken __str__)
            value = ""
    return value[:chars].encode("utf-8", "replace").decode("utf-8")


def _stand_in(err: errors.IPCError) -> errors.IPCError:
    return errors.IPCError(
        _text(err.msg, _SHORT_ERROR_MSG_CHARS),
        id=_text(err.id, _SHORT_ERROR_ID_CHARS) or errors.ErrorID.UNKNOWN.value,
        action=errors.RetryAction.from_wire(err.action),
    )


def decode_error(payload: bytes) -> errors.IPCError:
    """The error a RESET or GOAWAY payload carries.

    Raises:
        BadProtocolError: the payload is not CBOR, or not an error.
    """
    value = codec.decode(payload)
    if not isinstance(value, errors.IPCError):
        raise errors.BadProtocolError("mux: RESET/GOAWAY payload is not an error")
    return value
