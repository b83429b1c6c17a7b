"""A peer that reads slowly but steadily must not hold a server's worker in a socket send.

Each send on a socket with a send timeout is bounded, but a peer taking a few KiB now and
then restarts that clock on every send; a worker that was the VC's flusher stayed in
``sendall`` for as long as the peer liked (its call's deadline and ``send_timeout`` passed
long before). Now a writer waits on one record for at most ``writer.HANDOFF_AFTER`` and
hands the rest to a drainer thread of the VC.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport.writer import HANDOFF_AFTER
from ipcclient.wire.messages import encode_messages
from tests import hostile
from tests.conftest import Family

MakeServer = Callable[..., tuple[Server, str]]


@expose
class Big:
    def __init__(self) -> None:
        self.returned = 0

    def Big(self, call: ServerCall, n: int) -> bytes:
        self.returned += 1
        return b"x" * n


def _small_buffer_socket(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """hostile.raw_socket with an 8 KiB receive buffer (set before connecting, so that the
    window the kernel offers stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(hostile.IO_TIMEOUT)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


def test_a_slowly_reading_peer_does_not_hold_the_worker_that_sent_to_it(
    family: Family, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Big()
    # (On the worker pool: a call run inline by the VC's reader thread already sends
    # without waiting on the socket.)
    server, _ = make_server(service, AllowEveryone(), options=ServerOptions(inline_calls=False))
    monkeypatch.setattr(hostile, "raw_socket", _small_buffer_socket)
    peer = hostile.HostilePeer(
        family.member("slow"),
        hostile.server_address(server),
        source="127.0.14.2",
        reader=False,
        window=2**31 - 1,  # (all the credit it could want: only the socket holds it back)
    )
    stop = threading.Event()
    got = [0]

    def read_slowly() -> None:  # 16 KiB every 0.2 s: never still long enough to time out
        while not stop.wait(0.2):
            try:
                data = peer.sock.recv(16384)
            except OSError:
                return
            if not data:
                return
            got[0] += len(data)

    reader = threading.Thread(target=read_slowly, daemon=True)
    try:
        # (A value is at most the codec's 4 MiB; the calls have a deadline of 2 s.)
        body = request_header_for_big(4_000_000)
        for _ in range(3):  # 12 MB: more than the socket buffers on both sides hold
            peer.open(body, end=True)
        wait_until(lambda: service.returned == 3)
        reader.start()
        # A worker hands the rest to a drainer after HANDOFF_AFTER on a record the socket
        # will not take; the workers whose results do not fit in MAX_QUEUED behind it wait
        # for room within their calls' deadlines. Before, the worker that was sending stayed
        # in sendall, past its deadline, until the peer had read it all (minutes at this
        # pace).
        deadline = time.monotonic() + 2.0 + HANDOFF_AFTER + 6.0
        while server._in_use:
            assert time.monotonic() < deadline, "the worker is still held by the slow peer"
            time.sleep(0.02)
        assert not peer.closed  # (the peer still reads: the VC carries on)
        (conn,) = [c for lst in server._listeners for c in lst.connections]
        assert not conn.closed
        seen = got[0]
        time.sleep(0.6)
        assert got[0] > seen  # the drainer keeps sending at the peer's pace
    finally:
        stop.set()
        peer.close()
        if reader.is_alive():
            reader.join(5)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def request_header_for_big(n: int) -> bytes:
    return hostile.request_header("Big", 1, deadline=2.0) + encode_messages(
        n, {"end_stream_args": True}
    )


def test_a_peer_taking_each_record_just_in_time_does_not_hold_the_worker_either(
    family: Family, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A peer taking 64 KiB every 50 ms lets each record out within HANDOFF_AFTER: a handoff
    clock per record never ran out, and the worker sent the whole 4 MB reply at the peer's
    pace (about 3 s), past its 2 s deadline. The clock now runs per send."""
    path = str(tmp_path / "s.sock")

    def unix_socket(address: str, source: str | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(hostile.IO_TIMEOUT)
        sock.connect(address)
        return sock

    monkeypatch.setattr(hostile, "raw_socket", unix_socket)
    service = Big()
    server, _ = make_server(
        service,
        AllowEveryone(),
        protocol="unix",
        address=path,
        options=ServerOptions(inline_calls=False),
    )
    peer = hostile.HostilePeer(
        family.member("steady"),
        path,  # type: ignore[arg-type]
        reader=False,
        window=2**31 - 1,
    )
    stop = threading.Event()

    def read_steadily() -> None:
        while not stop.wait(0.05):
            try:
                if not peer.sock.recv(65536):
                    return
            except OSError:
                return

    reader = threading.Thread(target=read_steadily, daemon=True)
    try:
        peer.open(request_header_for_big(4_000_000), end=True)
        started = time.monotonic()
        reader.start()
        wait_until(lambda: service.returned == 1)
        while server._in_use:
            held = time.monotonic() - started
            assert held < 2.0 + HANDOFF_AFTER, "the worker went on at the peer's pace"
            time.sleep(0.02)
    finally:
        stop.set()
        peer.close()
        if reader.is_alive():
            reader.join(5)
