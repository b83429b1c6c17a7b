"""CBOR messages over a transport flow, with deadlines.

Owns: :class:`MessageStream`, which sends values as length-prefixed messages on a
:class:`~ipcclient.transport.conn.Flow` (many values in one flow write) and receives them
one at a time, waiting with a deadline. Both the client's call object and the server's
invoker speak the RPC protocol through it.

Must not: interpret headers (that is the caller's), or retry.
"""

from __future__ import annotations

import collections
from typing import Any

from ipcclient import codec, errors
from ipcclient.transport.conn import Flow
from ipcclient.wire.messages import Budget, MessageReader, encode_message_parts

__all__ = ["MessageStream"]


class MessageStream:
    """Messages on one flow. Not for concurrent use by several readers (one call, one owner)."""

    __slots__ = ("_eof", "_flow", "_limits", "_pending", "_reader_")

    def __init__(self, flow: Flow, limits: codec.Limits = codec.DEFAULT_LIMITS) -> None:
        self._flow = flow
        self._limits = limits
        self._reader_: MessageReader | None = None  # made on first use (a unary call's
        # server side may never read its flow: its request was read whole)
        self._pending: collections.deque[Any] = collections.deque()
        self._eof = False

    @property
    def _reader(self) -> MessageReader:
        reader = self._reader_
        if reader is None:
            reader = self._reader_ = MessageReader(self._limits)
        return reader

    @property
    def flow(self) -> Flow:
        return self._flow

    def set_budget(
        self, nbytes: int | None, *, free: int = 0, shared: Budget | None = None
    ) -> None:
        """Bound the total bytes of the messages received from now on (None: unbounded),
        not counting the next ``free`` ones, charging ``shared`` too; see
        :meth:`MessageReader.set_budget`. Messages already decoded do not count; one whose
        length prefix came already does."""
        self._reader.set_budget(nbytes, free=free, shared=shared)

    def count_only(self, n: int) -> None:
        """Charge only the next ``n`` messages to the budget (see
        :meth:`MessageReader.count_only`)."""
        self._reader.count_only(n)

    def set_first_limits(self, limits: codec.Limits | None) -> None:
        """Decode the next message under ``limits`` (see
        :meth:`MessageReader.set_first_limits`)."""
        self._reader.set_first_limits(limits)

    def push(self, value: Any) -> None:
        """Queue ``value`` as if it had been received next (a message read before the
        stream was made)."""
        self._pending.append(value)

    def send(
        self,
        *values: Any,
        end: bool = False,
        deadline: float | None = None,
        streamed: bool = False,
    ) -> None:
        """Write ``values`` as messages in one flow write; with ``end``, half-close after;
        ``streamed``: an item of a stream (see :meth:`Flow.write`)."""
        self._flow.write(
            encode_message_parts(*values), end=end, deadline=deadline, streamed=streamed
        )

    def send_encoded(
        self, data: list[bytes], *, deadline: float | None = None, streamed: bool = False
    ) -> None:
        """Write messages encoded already (:func:`encode_message_parts`), as :meth:`send`."""
        self._flow.write(data, deadline=deadline, streamed=streamed)

    def recv(self, deadline: float | None = None) -> Any:
        """The next message's value.

        Raises:
            EndOfStreamError: the peer closed its send side cleanly.
            BadProtocolError: the peer closed in the middle of a message, or sent garbage.
            TimeoutError / CanceledError / ConnectionFailedError: from the flow.
        """
        pending = self._pending
        while not pending:
            reader = self._reader_
            if reader is not None and reader.rest:  # (what followed a header: see feed)
                pending.extend(reader.feed(reader.take_rest()))
                continue
            if self._eof:
                raise errors.EndOfStreamError("stream: the peer closed its side of the flow")
            chunk = self._flow.read(deadline)
            if not chunk:
                self._eof = True
                if self._reader.buffered:
                    raise errors.BadProtocolError("stream: the flow ended inside a message")
                continue
            pending.extend(self._reader.feed(chunk))
        return pending.popleft()
