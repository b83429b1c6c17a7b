"""``finish_unary``: the whole-reply short way gives what the message-by-message way gives.

The replies here are malformed on purpose, which the project's server never sends, so the
flow is a scripted stand-in (the fault cannot be produced by a real part); the usual replies
are covered over real sockets in test_rpc.py."""

from __future__ import annotations

from typing import Any

import pytest

from ipcclient import errors
from ipcclient.call import finish_unary
from ipcclient.context import Context
from ipcclient.wire.messages import encode_messages


class ScriptedFlow:
    """What finish_unary uses of a flow, replaying ``chunks`` then EOF. ``short`` says
    whether the flow reports itself drained after the last chunk (then the short way is
    taken); otherwise it never does (the general way)."""

    def __init__(self, chunks: list[bytes], short: bool) -> None:
        self._chunks = list(chunks)
        self._short = short
        self.closed = False
        self.cancelled: errors.IPCError | None = None

    def read(self, deadline: float | None = None) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    @property
    def drained(self) -> bool:
        return self._short and not self._chunks

    def close(self) -> None:
        self.closed = True

    def cancel(self, err: errors.IPCError | None = None) -> None:
        self.cancelled = err


def _outcome(chunks: list[bytes], short: bool) -> tuple[str, Any]:
    flow = ScriptedFlow(chunks, short)
    try:
        result: tuple[str, Any] = ("ok", finish_unary(flow, Context.background(), None))
    except errors.IPCError as exc:
        result = ("error", (type(exc), exc.msg, exc.request_sent))
    assert flow.closed or flow.cancelled is not None  # the flow is always released
    return result


END1 = {"end": True, "nresults": 1}
REPLIES: dict[str, list[bytes]] = {
    "usual": [encode_messages(END1, b"hi")],
    "two results": [encode_messages({"end": True, "nresults": 2}, 1, "x")],
    "no result": [encode_messages({"end": True})],
    "an error": [encode_messages({"error": errors.NoAccessError("no"), "end": True})],
    "a result missing": [encode_messages({"end": True, "nresults": 2}, 1)],
    "an extra value": [encode_messages(END1, 1, 2)],
    "a message cut short": [encode_messages(END1) + b"\x00\x00\x00\x05ab"],
    "a bad message": [encode_messages(END1) + b"\x00\x00\x00\x01\xff"],
    "a message above the limit": [encode_messages(END1) + b"\x7f\xff\xff\xff"],
    "streaming left": [encode_messages({}, 1)],
    "not a header": [encode_messages([1], 2)],
    "nothing": [],
    "in two reads": [encode_messages(END1)[:3], encode_messages(END1)[3:] + encode_messages(7)],
}


@pytest.mark.parametrize("label", sorted(REPLIES))
def test_whole_reply_short_way_matches_the_general_way(label: str) -> None:
    chunks = REPLIES[label]
    assert _outcome(chunks, short=True) == _outcome(chunks, short=False)


def test_the_usual_reply_values() -> None:
    assert _outcome(REPLIES["usual"], short=True) == ("ok", (b"hi",))
    kind, (cls, _msg, sent) = _outcome(REPLIES["a result missing"], short=True)
    assert kind == "error" and cls is errors.BadProtocolError and sent is True
