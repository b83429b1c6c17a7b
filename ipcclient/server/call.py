"""What a server method receives and returns: :class:`ServerCall` and :class:`Results`.

Owns: a call's view for the user's method (its context, security facts, the client's
streamed args and the results it streams back). Must not: authorize, look up methods, or
finish the call (the flow-serving code answers it once the method returns).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.headers import Request, Response, request_from_wire
from ipcclient.security.blessings import Blessings
from ipcclient.server.authorizer import CallSecurity
from ipcclient.stream import MessageStream
from ipcclient.wire.messages import encode_message_parts, encode_messages

if TYPE_CHECKING:
    from ipcclient.server.server import Server

__all__ = ["Results", "ServerCall"]

_STREAM_ITEM_MESSAGE = encode_messages(Response().to_wire())
"""The empty response header before each streamed result, encoded once."""


class Results:
    """Several results from one method: ``return Results(a, b)``."""

    __slots__ = ("values",)

    def __init__(self, *values: Any) -> None:
        self.values = values


class ServerCall:
    """What a server method gets: the call's context, security facts, and streaming.

    ``recv`` / iteration read the client's streamed args; ``send`` streams results back.
    Belongs to the worker running the call; do not share it across threads.
    """

    def __init__(
        self,
        ctx: Context,
        stream: MessageStream,
        request: Request,
        security: CallSecurity,
        server: Server,
    ) -> None:
        self.context = ctx
        self._stream = stream
        self.request = request
        self.security = security
        self.server = server
        self._recv_done = False

    @property
    def suffix(self) -> str:
        return self.request.suffix

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def remote_blessing_names(self) -> tuple[str, ...]:
        """The client's blessing names that validated for this call."""
        return self.security.client_names

    @property
    def granted_blessings(self) -> Blessings | None:
        """Blessings the client granted this server for the call (bound to our key)."""
        granted = self.request.granted
        return granted if isinstance(granted, Blessings) else None

    def recv(self) -> Any:
        """The client's next streamed arg.

        Raises:
            EndOfStreamError: the client closed its send side (also an ``EOFError``).
            CanceledError / TimeoutError: the call was cancelled or its deadline passed.
        """
        if self._recv_done:
            raise errors.EndOfStreamError("server: the client sent no more items")
        header = request_from_wire(self._stream.recv(self.context.deadline))
        if header.end_stream_args:
            self._recv_done = True
            raise errors.EndOfStreamError("server: the client sent no more items")
        if not header.is_stream_item:
            raise errors.BadProtocolError("server: expected a streaming header")
        return self._stream.recv(self.context.deadline)

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv()
            except errors.EndOfStreamError:
                return

    def send(self, item: Any) -> None:
        """Stream ``item`` to the client (blocks while the client's window is full, at most
        until the call's deadline or the server's ``send_timeout``)."""
        self._stream.flow.write(
            encode_message_parts(item, head=_STREAM_ITEM_MESSAGE),
            deadline=self.server._send_deadline(self.context),
            streamed=True,
        )
