"""A hostile peer for load tests, built from the library's sans-IO parts (the client side of
the VC handshake, the record layer and the mux) over a raw socket: it can do what a real
client never does (open flows and send no header, hold args half sent, trickle bytes) and
still answer pings, so the server sees a live peer."""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ipcclient import errors
from ipcclient.headers import Request, Response
from ipcclient.naming.endpoint import Endpoint
from ipcclient.security import Principal
from ipcclient.transport.dial import drive_handshake, split_host_port
from ipcclient.vc.handshake import (
    SUPPORTED_VERSIONS,
    ClientHandshake,
    HandshakeResult,
    ServerHandshake,
    VCSettings,
)
from ipcclient.wire import mux as muxmod
from ipcclient.wire.messages import encode_messages

IO_TIMEOUT = 10.0


def server_address(server: Any) -> tuple[str, int]:
    """(host, port) of a server's first TCP listener."""
    return split_host_port(server._listeners[0].address)


def raw_socket(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A connected TCP socket from ``source`` (any 127.x.y.z address on Linux loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


def request_header(method: str, nargs: int, **kw: Any) -> bytes:
    """One request header message (length prefix included)."""
    return encode_messages(Request(method=method, nargs=nargs, **kw).to_wire())


class HostilePeer:
    """An authenticated VC driven by hand. ``open`` opens a flow (optionally with data),
    ``send`` adds to it; what the server sends is read by a thread that answers pings and
    records each flow's reset error and the bytes it received."""

    def __init__(
        self,
        principal: Principal,
        address: tuple[str, int],
        *,
        source: str = "127.0.0.2",
        mute: bool = False,
        reader: bool = True,
        window: int | None = None,
    ) -> None:
        self.mute = mute  # read, but never answer (no PING ACK, no window update)
        self.sock = raw_socket(address, source)
        hs = ClientHandshake(
            principal,
            authorize_server=lambda *_: None,
            blessings_for_server=lambda _b: principal.store.default,
            # (window: the per-flow window announced, up to 2^31-1, all of it honoured)
            settings=VCSettings() if window is None else VCSettings(initial_window=window),
        )
        drive_handshake(
            self.sock, hs.receive_data, lambda: hs.done, hs.start(), time.monotonic() + 10
        )
        assert hs.result is not None
        result = hs.result
        self.settings = result.peer_settings  # (what the server announced in its hello)
        self._sealer = result.sealer
        self._opener = result.opener
        self._mux = muxmod.Mux(
            muxmod.MuxConfig(),
            dialer=True,
            peer_initial_window=result.peer_settings.initial_window,
            peer_max_frame_payload=result.peer_settings.max_frame_payload,
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.resets: dict[int, errors.IPCError] = {}
        self.received: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.closed = False
        self._pending = list(result.early_plaintext)
        if reader:  # (without one, nothing the server sends is read or answered)
            threading.Thread(target=self._read, daemon=True).start()

    def open(self, data: bytes = b"", *, end: bool = False) -> int:
        with self._lock:
            fid = self._mux.open_flow()
            self._mux.send_data(fid, data, end=end)
            out = self._mux.data_to_send()
        self._write(out)
        return fid

    def send(self, fid: int, data: bytes, *, end: bool = False) -> int:
        """Queue what the flow's credit allows now; how many bytes went."""
        with self._lock:
            if fid in self.resets:
                return 0
            n = self._mux.send_data(fid, data, end=end)
            out = self._mux.data_to_send()
        self._write(out)
        return n

    def reset(self, fid: int) -> None:
        """Abort the flow (RESET, no error: the server sees it cancelled)."""
        with self._lock:
            self._mux.reset_flow(fid)
            out = self._mux.data_to_send()
        self._write(out)

    def wait_reset(self, fid: int, timeout: float = IO_TIMEOUT) -> errors.IPCError | None:
        with self._lock:
            self._changed.wait_for(lambda: fid in self.resets or self.closed, timeout)
            return self.resets.get(fid)

    def wait_ended(self, fid: int, timeout: float = IO_TIMEOUT) -> bytes:
        """What the server sent on ``fid`` once it ended it (FIN or RESET)."""
        with self._lock:
            self._changed.wait_for(
                lambda: fid in self.ended or fid in self.resets or self.closed, timeout
            )
            return bytes(self.received.get(fid, b""))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _write(self, out: bytes) -> None:
        if out:
            with contextlib.suppress(OSError):
                self.sock.sendall(self._sealer.seal(out))

    def _read(self) -> None:
        try:
            for plain in self._records():
                with self._lock:
                    for ev in self._mux.receive_data(plain):
                        if isinstance(ev, muxmod.DataReceived):
                            self.received.setdefault(ev.flow_id, bytearray()).extend(ev.data)
                            self._mux.acknowledge(ev.flow_id, len(ev.data))
                            if ev.end:
                                self.ended.add(ev.flow_id)
                        elif isinstance(ev, muxmod.FlowReset):
                            self.resets[ev.flow_id] = ev.error
                    out = self._mux.data_to_send()  # (PING ACKs, window updates)
                    self._changed.notify_all()
                if not self.mute:
                    self._write(out)
        except (OSError, errors.IPCError):
            pass
        finally:
            with self._lock:
                self.closed = True
                self._changed.notify_all()

    def _records(self) -> Iterator[bytes]:
        yield from self._pending
        self.sock.settimeout(None)
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            yield from self._opener.feed(data)


class _SansIOServer(abc.ABC):
    """What the servers below share: a listening socket on 127.0.0.1 (``endpoint``), an
    accept loop on a thread of its own that hands each connection to :meth:`_accepted`, and
    the accepting handshake and mux of a connection (:meth:`_open`). ``close`` stops the
    loop and joins every thread it started."""

    def __init__(self, principal: Principal) -> None:
        self._principal = principal
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)  # the accept loop looks at ``_stop`` this often
        host, port = self._sock.getsockname()
        self.endpoint = str(
            Endpoint(
                protocol="tcp",
                address=f"{host}:{port}",
                min_version=SUPPORTED_VERSIONS[0],
                max_version=SUPPORTED_VERSIONS[1],
            )
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _start(self) -> None:
        """(Last in a subclass's ``__init__``, once its own state is set.)"""
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT)
        for thread in self._threads:
            thread.join(IO_TIMEOUT)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """Serve ``conn`` on the accept thread, one connection at a time."""
        with conn:
            conn.settimeout(IO_TIMEOUT)
            with contextlib.suppress(OSError, errors.IPCError):
                self._connection(conn)

    @abc.abstractmethod
    def _connection(self, conn: socket.socket) -> None:
        """Serve one accepted connection until it ends."""

    def _open(self, conn: socket.socket) -> tuple[HandshakeResult, muxmod.Mux]:
        """The accepting handshake on ``conn``, and a mux for what follows it."""
        hs = ServerHandshake(self._principal, blessings=self._principal.store.default)
        drive_handshake(conn, hs.receive_data, lambda: hs.done, b"", time.monotonic() + 10)
        assert hs.result is not None
        result = hs.result
        mux = muxmod.Mux(
            muxmod.MuxConfig(),
            dialer=False,
            peer_initial_window=result.peer_settings.initial_window,
            peer_max_frame_payload=result.peer_settings.max_frame_payload,
        )
        return result, mux


class RefusingServer(_SansIOServer):
    """A server from the library's sans-IO parts (the accepting handshake, the record layer,
    the mux) that answers the first ``answer`` requests it receives with the result
    ``"ok"``, and every later one with GOAWAY saying it took none of the client's live flows
    (LAST_ID 0), then closes that connection: each refused request is one the client may
    send again. ``connections`` counts completed handshakes, ``refused`` refused requests,
    ``presented`` holds the blessing names each client presented in a completed handshake.
    It serves one connection at a time, on its accept thread."""

    def __init__(self, principal: Principal, *, answer: int = 0) -> None:
        super().__init__(principal)
        self._answer = answer
        self.connections = 0
        self.refused = 0
        self.presented: list[tuple[str, ...]] = []
        self._start()

    def _connection(self, conn: socket.socket) -> None:
        result, mux = self._open(conn)
        self.connections += 1
        self.presented.append(tuple(getattr(result.remote_blessings, "names", ())))
        pending = list(result.early_plaintext)
        while True:
            while not pending:
                data = conn.recv(65536)
                if not data:
                    return
                pending = list(result.opener.feed(data))
            for ev in mux.receive_data(pending.pop(0)):
                if isinstance(ev, muxmod.FlowOpened) and self._answer <= 0:
                    self.refused += 1
                    refusal = muxmod.Mux(muxmod.MuxConfig(), dialer=False, peer_initial_window=1)
                    refusal.close()  # GOAWAY, LAST_ID 0: the answered flows are over
                    conn.sendall(result.sealer.seal(mux.data_to_send() + refusal.data_to_send()))
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):  # until the client closes its side
                        pass
                    return
                if isinstance(ev, muxmod.DataReceived):
                    mux.acknowledge(ev.flow_id, len(ev.data))
                    if ev.end:
                        self._answer -= 1
                        reply = encode_messages(
                            Response(end_stream_results=True, nresults=1).to_wire(), "ok"
                        )
                        mux.send_data(ev.flow_id, reply, end=True)
            out = mux.data_to_send()
            if out:
                conn.sendall(result.sealer.seal(out))


class ScriptedServer(_SansIOServer):
    """A server from the library's sans-IO parts (as :class:`RefusingServer`) that answers
    the n-th request it receives (from 0) with ``reply(n, request_bytes)``: the reply's
    messages, sent whole with FIN within the client's flow control. Each connection has its
    own thread; ``requests`` counts the requests answered."""

    def __init__(self, principal: Principal, reply: Callable[[int, bytes], bytes]) -> None:
        super().__init__(principal)
        self._reply = reply
        self.requests = 0
        self._start()

    def _accepted(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._connection_thread, args=(conn,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _connection_thread(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, errors.IPCError):
            self._connection(conn)

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        result, mux = self._open(conn)
        pending = list(result.early_plaintext)
        requests: dict[int, bytearray] = {}
        outgoing: dict[int, bytes] = {}
        conn.settimeout(0.2)  # (looks at ``_stop`` this often)
        while not self._stop.is_set():
            if not pending:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                pending = list(result.opener.feed(data))
                continue
            for ev in mux.receive_data(pending.pop(0)):
                if isinstance(ev, muxmod.DataReceived):
                    mux.acknowledge(ev.flow_id, len(ev.data))
                    requests.setdefault(ev.flow_id, bytearray()).extend(ev.data)
                    if ev.end:
                        n, self.requests = self.requests, self.requests + 1
                        outgoing[ev.flow_id] = self._reply(n, bytes(requests.pop(ev.flow_id)))
            for fid, rest in list(outgoing.items()):
                try:
                    sent = mux.send_data(fid, rest, end=True)
                except errors.IPCError:  # (the flow is gone)
                    del outgoing[fid]
                    continue
                if sent >= len(rest):
                    del outgoing[fid]
                else:  # (the rest waits for credit)
                    outgoing[fid] = rest[sent:]
            out = mux.data_to_send()
            if out:
                conn.sendall(result.sealer.seal(out))


def rss_bytes() -> int:
    """This process's resident set size."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
