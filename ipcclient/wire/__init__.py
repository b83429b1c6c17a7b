"""The sans-IO wire core: frames and the flow multiplexer.

Owns: re-exporting the public names of :mod:`ipcclient.wire.frames` and
:mod:`ipcclient.wire.mux`. The byte-level specification is ``docs/protocol.md`` sections 1-3.

Must not: open sockets, start threads, read clocks or know about keys and blessings; bytes go
in and events come out, calls go in and bytes come out.
"""

from ipcclient.wire.frames import Frame, FrameDecoder, encode_frame
from ipcclient.wire.mux import (
    ConnectionClosed,
    CreditAvailable,
    DataReceived,
    Event,
    FlowOpened,
    FlowReset,
    Mux,
    MuxConfig,
    PingAcked,
    PingReceived,
)

__all__ = [
    "ConnectionClosed",
    "CreditAvailable",
    "DataReceived",
    "Event",
    "FlowOpened",
    "FlowReset",
    "Frame",
    "FrameDecoder",
    "Mux",
    "MuxConfig",
    "PingAcked",
    "PingReceived",
    "encode_frame",
]
