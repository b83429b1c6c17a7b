"""ipcclient in the anchors' benchmark harness (the same five workloads as the peers).

Run by ``tests/bench/run.py`` (``make bench``); it needs the harness in
``../shared/bench-anchors`` (its ``common.py``), found beside this repository. The server runs
in its own process on 127.0.0.1; the client is one shared :class:`ipcclient.Client`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ANCHORS = os.environ.get(
    "IPCCLIENT_BENCH_ANCHORS", os.path.join(os.path.dirname(REPO), "shared", "bench-anchors")
)
sys.path.insert(0, ANCHORS)
sys.path.insert(0, REPO)

import common  # noqa: E402  (the anchors' harness)

from ipcclient import (  # noqa: E402
    AllowEveryone,
    Client,
    ClientOptions,
    Context,
    Principal,
    Server,
    ServerCall,
    ServerOptions,
    TransportOptions,
    caveats,
    codec,
)
from ipcclient.security import Blessings  # noqa: E402
from ipcclient.server.exposure import expose  # noqa: E402
from ipcclient.transport.manager import CLIENT_BUSY_POLL  # noqa: E402


@expose
class EchoService:
    def Echo(self, call: ServerCall, payload: Any) -> Any:
        return payload

    def Stream(self, call: ServerCall, n: int, size: int) -> int:
        chunk = os.urandom(size)
        for _ in range(n):
            call.send(chunk)
        return n


def serve(options: ServerOptions | None = None) -> None:
    root = Principal.generate()
    root_b = root.bless_self("root")
    principal = Principal.generate()
    principal.store.default = root.bless(
        principal.public_key, root_b, "server", [caveats.unconstrained_use()]
    )
    server = Server(principal, options=options)
    ep = server.listen("tcp", "127.0.0.1:0")
    server.serve(EchoService(), AllowEveryone())
    port = ep.split("@")[3].rsplit(":", 1)[1]
    common.server_ready(port, ep + "|" + codec.encode(root_b).hex())
    import threading

    threading.Event().wait()


def serve_nopoll() -> None:
    serve(ServerOptions(transport=TransportOptions(busy_poll=0)))


def serve_alwayspoll() -> None:
    serve(ServerOptions(transport=TransportOptions(busy_poll_adapt=False)))


class IpcAdapter(common.Adapter):
    name = "ipcclient (AES-256-GCM, Ed25519 blessings)"
    options = ClientOptions(default_call_timeout=600)
    shared = True
    note = "one Client shared by the 8 threads: one VC, every call a flow; stream = one call"

    def __init__(self, port: int, extra: str = "") -> None:
        super().__init__(port, extra)
        ep, root_hex = extra.split("|")
        self.name_ = "/" + ep
        root_b = codec.decode(bytes.fromhex(root_hex))
        assert isinstance(root_b, Blessings)
        self.principal = Principal.generate()
        self.principal.store.default = self.principal.bless_self("client")
        self.principal.roots.add_blessings(root_b)

    def connect(self) -> tuple[Client, Context]:
        client = Client(self.principal, options=self.options)
        return client, Context.background().with_timeout(3600)

    def echo(self, c: tuple[Client, Context], payload: bytes) -> bytes:
        client, ctx = c
        (out,) = client.call(ctx, self.name_, "Echo", payload)
        return out  # type: ignore[no-any-return]

    def stream(self, c: tuple[Client, Context], n: int, size: int) -> Iterator[bytes]:
        client, ctx = c
        call = client.start_call(ctx, self.name_, "Stream", [n, size])
        yield from call
        call.finish()

    def close(self, c: tuple[Client, Context]) -> None:
        c[0].close()


class IpcNoPollAdapter(IpcAdapter):
    name = "ipcclient, busy_poll=0 on both sides"
    options = ClientOptions(default_call_timeout=600, transport=TransportOptions(busy_poll=0))


class IpcAlwaysPollAdapter(IpcAdapter):
    name = "ipcclient, busy_poll_adapt=False on both sides"
    options = ClientOptions(
        default_call_timeout=600,
        transport=TransportOptions(busy_poll=CLIENT_BUSY_POLL, busy_poll_adapt=False),
    )


if __name__ == "__main__":
    common.main(
        os.path.abspath(__file__),
        {"default": serve, "nopoll": serve_nopoll, "alwayspoll": serve_alwayspoll},
        {"default": IpcAdapter, "nopoll": IpcNoPollAdapter, "alwayspoll": IpcAlwaysPollAdapter},
    )
