"""A loopback TCP proxy that injects faults, per direction, for the recovery tests.

``FaultProxy(target)`` listens on 127.0.0.1 and relays every accepted connection to
``target`` (``host:port``), one thread per direction. What it does to the bytes is set at any
time with :meth:`FaultProxy.set` and applies to the connections already open as well as new
ones; a fault's byte offset counts the bytes of that connection in that direction.

Directions: ``"up"`` (client to server) and ``"down"`` (server to client). Faults:

- ``Fault.cut(n)``: relay ``n`` more bytes, then close both sockets (an orderly FIN).
- ``Fault.rst(n)``: relay ``n`` more bytes, then reset both sockets (RST).
- ``Fault.blackhole()``: read and drop everything (the peer sees a silent, open connection).
- ``Fault.stall()``: stop reading (the sender's buffers fill up).
- ``Fault.flip(n)``: flip the low bit of the byte at offset ``n`` (counted from when the
  fault was set), relay the rest.
- ``Fault.latency(s)``: wait ``s`` seconds before relaying each chunk.
- ``Fault.none()`` (the default): relay.

``proxy.pipes[i].set(...)`` sets faults on one relayed connection only (a black-holed VC while
new connections get through).

``rcvbuf=n`` fixes the receive buffer of the proxy's accepted sockets at ``n`` bytes (the
kernel then never grows it): with ``Fault.stall()``, what the kernel takes before the
sender's socket is full stays bounded, however long the stall lasts.

``blackhole_accept=True`` makes the proxy accept connections and never answer nor relay
(a server that is up at the TCP level but dead above it).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

__all__ = ["Fault", "FaultProxy"]

_POLL = 0.05


@dataclass(frozen=True)
class Fault:
    kind: str = "none"
    at: int = 0
    delay: float = 0.0

    @classmethod
    def none(cls) -> Fault:
        return cls()

    @classmethod
    def cut(cls, at: int = 0) -> Fault:
        return cls("cut", at)

    @classmethod
    def rst(cls, at: int = 0) -> Fault:
        return cls("rst", at)

    @classmethod
    def blackhole(cls) -> Fault:
        return cls("blackhole")

    @classmethod
    def stall(cls) -> Fault:
        return cls("stall")

    @classmethod
    def flip(cls, at: int = 0) -> Fault:
        return cls("flip", at)

    @classmethod
    def latency(cls, delay: float) -> Fault:
        return cls("latency", 0, delay)


class _Pipe:
    """One relayed connection: two sockets and a pump per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.closed = False
        self.lock = threading.Lock()
        # Held across "is a stall in force? then read": set() takes it once, so that once it
        # returns no read starts that missed the fault (a pump descheduled between its select
        # and its recv read 64 KiB after a stall was set, freeing the sender's buffers).
        self.reading = threading.Lock()
        # Per direction: the fault in force and where its offset counts from.
        self.since: dict[str, tuple[Fault, int]] = {}
        self.own: dict[str, Fault] = {}  # faults of this connection only (see set)
        self.count = {"up": 0, "down": 0}

    def start(self) -> None:
        """Start relaying (once the pipe is in ``proxy.pipes``: a test may look for it as
        soon as anything went through it)."""
        client, server = self.client, self.server
        for direction, src, dst in (("up", client, server), ("down", server, client)):
            threading.Thread(
                target=self._pump,
                args=(direction, src, dst),
                name=f"proxy-{direction}",
                daemon=True,
            ).start()

    def _fault(self, direction: str) -> tuple[Fault, int]:
        """The fault in force and the offset (bytes relayed in this direction) it began at."""
        fault = self.own.get(direction) or self.proxy.faults[direction]
        with self.lock:
            held = self.since.get(direction)
            if held is None or held[0] is not fault:
                held = (fault, self.count[direction])
                self.since[direction] = held
            return held

    def set(self, up: Fault | None = None, down: Fault | None = None) -> None:
        """Set the faults of this connection only (over the proxy's)."""
        if up is not None:
            self.own["up"] = up
        if down is not None:
            self.own["down"] = down
        with self.reading:  # (see __init__)
            pass

    def close(self, *, reset: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        # A send that fails (the receiving end is gone) ends this direction only: the other
        # one still relays what it holds, and closes the pipe at its own end, as a relay
        # that half-closes does. (Closing both at once lost the answer a server had sent
        # before it closed, when the client's flow-control credit reached the closed server
        # and was refused.)
        other_closes = False
        try:
            while not self.closed:
                fault, start = self._fault(direction)
                if fault.kind == "stall":
                    time.sleep(_POLL)
                    continue
                try:
                    ready, _, _ = select.select([src], [], [], _POLL)
                    if not ready:
                        continue
                    with self.reading:  # (see __init__)
                        if self._fault(direction)[0].kind == "stall":
                            continue
                        data = src.recv(65536)
                except (OSError, ValueError):
                    break
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                fault, start = self._fault(direction)
                pos = self.count[direction] - start  # offset of data[0] since the fault began
                self.count[direction] += len(data)
                if fault.kind == "blackhole":
                    continue
                if fault.kind == "latency":
                    time.sleep(fault.delay)
                elif fault.kind == "flip" and pos <= fault.at < pos + len(data):
                    i = fault.at - pos
                    data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
                elif fault.kind in ("cut", "rst") and pos + len(data) > fault.at:
                    keep = max(0, fault.at - pos)
                    with contextlib.suppress(OSError):
                        dst.sendall(data[:keep])
                    self.close(reset=fault.kind == "rst")
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    other_closes = True
                    return
        finally:
            if not self.closed and not other_closes:
                self.close()


class FaultProxy:
    """See the module docstring. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self, target: str, *, blackhole_accept: bool = False, rcvbuf: int | None = None
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.blackhole_accept = blackhole_accept
        self.faults: dict[str, Fault] = {"up": Fault.none(), "down": Fault.none()}
        self.pipes: list[_Pipe] = []
        self.held: list[socket.socket] = []  # accepted and never answered (blackhole_accept)
        self.accepted = 0
        self._closed = False
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:  # (set before listen: the accepted sockets inherit it)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The address as an endpoint string (``@5@tcp@127.0.0.1:port@@@@@@``) is the
        caller's business; this is ``host:port``."""
        return self.address

    def set(self, up: Fault | None = None, down: Fault | None = None) -> None:
        """Set the fault of either direction (None: leave it)."""
        if up is not None:
            self.faults["up"] = up
        if down is not None:
            self.faults["down"] = down
        for pipe in list(self.pipes):
            with pipe.reading:  # (see _Pipe.__init__)
                pass

    def heal(self) -> None:
        self.faults = {"up": Fault.none(), "down": Fault.none()}

    def drop_all(self, *, reset: bool = False) -> None:
        """Close every relayed connection (with RST if ``reset``)."""
        for pipe in list(self.pipes):
            pipe.close(reset=reset)
        self.pipes.clear()
        for sock in self.held:
            sock.close()
        self.held.clear()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2)
        self.drop_all()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.blackhole_accept:
                self.held.append(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, client, server)
            self.pipes.append(pipe)  # (before it relays a byte: see _Pipe.start)
            pipe.start()
