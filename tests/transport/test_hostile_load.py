"""The server under hostile load: each attack runs from a hostile peer (tests/hostile.py)
while a legitimate client keeps making calls, which must get through within twice their
undisturbed p99 plus ``SLACK``; the server's memory and threads stay bounded. Limits and
timeouts are configured small so that each attack takes a few seconds."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.headers import Request, response_from_wire
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall, ServerOptions
from ipcclient.transport import parking
from ipcclient.transport.conn import KeepaliveConfig
from ipcclient.transport.manager import TransportOptions
from ipcclient.vc.handshake import ClientHandshake
from ipcclient.wire.messages import encode_messages, split_messages
from tests.conftest import Family
from tests.hostile import HostilePeer, raw_socket, request_header, rss_bytes, server_address

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]

SLACK = 3.0
"""Seconds a legitimate call may take beyond twice its undisturbed p99 during an attack (the
test machine is shared and loaded: no tight timing)."""


@expose
class Service:
    def __init__(self) -> None:
        self.streams = threading.Semaphore(0)

    def Echo(self, call: ServerCall, x: Any) -> Any:
        return x

    def Count(self, call: ServerCall, *args: Any) -> int:
        return len(args)

    def Stream(self, call: ServerCall) -> int:
        self.streams.release()
        return sum(1 for _ in call)  # waits for the client's items until it closes


def ctx(seconds: float = 20.0) -> Context:
    return Context.background().with_timeout(seconds)


class Legit:
    """A legitimate client's calls: their undisturbed p99, then calls checked against it."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        times = sorted(self._one(i) for i in range(20))
        self.p99 = times[-1]  # (of 20 calls: the slowest)
        self.worst = 0.0

    def _one(self, i: int) -> float:
        start = time.monotonic()
        assert self.client.call(ctx(), self.name, "Echo", i) == (i,)
        return time.monotonic() - start

    def check(self, n: int = 5) -> None:
        for i in range(n):
            took = self._one(i)
            self.worst = max(self.worst, took)
            assert took <= 2 * self.p99 + SLACK, (took, self.p99)


@contextlib.contextmanager
def bounded_threads(most: int) -> Iterator[None]:
    """The process may gain at most ``most`` threads while the block runs."""
    before = threading.active_count()
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], threading.active_count())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(5)
    assert peak[0] - before <= most + 1, (before, peak[0])  # (+1: the watcher)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def error_of(body: bytes) -> errors.IPCError | None:
    messages = split_messages(body)
    assert messages, body
    return response_from_wire(messages[0]).error


def test_flows_without_a_header_cannot_hold_every_call_slot(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    opts = ServerOptions(
        workers=2, max_calls_per_vc=32, max_headerless_per_vc=4, first_header_timeout=1.0
    )
    server, name = make_server(Service(), AllowEveryone(), options=opts)
    legit = Legit(make_client(), name)
    peer = HostilePeer(family.member("attacker"), server_address(server))
    try:
        with bounded_threads(32 + 10):
            fids = [peer.open() for _ in range(300)]
            legit.check()  # the existing VC
            Legit(make_client(), name).check()  # a new client
            wait_until(lambda: all(f in peer.resets or f in peer.ended for f in fids))
        refused = [f for f in fids if isinstance(peer.resets.get(f), errors.OverloadedError)]
        assert len(refused) >= 300 - 4  # refused at once or after a moment; 4 timed out
        assert server._pool.threads <= 32 + 2
    finally:
        peer.close()


def test_args_held_half_sent_are_bounded_per_vc_and_in_time(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    opts = ServerOptions(max_args_bytes_per_vc=2 * 1024 * 1024, args_timeout=1.5)
    server, name = make_server(Service(), AllowEveryone(), options=opts)
    legit = Legit(make_client(), name)
    peer = HostilePeer(family.member("attacker"), server_address(server))
    arg = encode_messages(b"x" * (1024 * 1024))  # the last of 3 args is never sent
    before = rss_bytes()
    try:
        with bounded_threads(30):
            fids = [peer.open(request_header("Count", 3)) for _ in range(16)]
            for fid in fids:
                peer.send(fid, arg)
            legit.check()
            wait_until(lambda: all(f in peer.resets for f in fids))
        kinds = {type(peer.resets[f]) for f in fids}
        assert errors.OverloadedError in kinds  # over the VC's budget: at once
        assert kinds <= {errors.OverloadedError, errors.TimeoutError}  # the rest: in time
        assert rss_bytes() - before < 64 * 1024 * 1024
        assert server._in_use == 0 or wait_until(lambda: server._in_use == 0) is None
    finally:
        peer.close()


def test_an_unauthorized_caller_is_refused_before_its_args_are_read(
    family: Family, make_server: MakeServer
) -> None:
    server, _ = make_server(Service(), AllowPatterns(["root:client"]))
    peer = HostilePeer(family.member("attacker"), server_address(server))
    try:
        # An arg of 3 MiB announced, 10 bytes of it sent, no deadline: only a refusal made
        # before reading the args can answer.
        announced = (3 * 1024 * 1024).to_bytes(4, "big") + b"\x5a" + b"\x00" * 9
        fid = peer.open(request_header("Echo", 1) + announced)
        body = peer.wait_ended(fid)
        assert isinstance(error_of(body), errors.NoAccessError)
    finally:
        peer.close()


def _slowloris(address: tuple[str, int], sources: list[str], stop: threading.Event) -> None:
    """Connections that send a valid ClientHello one byte at a time, reconnecting when the
    server drops them."""
    from ipcclient.security import Principal

    hello = ClientHandshake(
        Principal.generate(),
        authorize_server=lambda *_: None,
        blessings_for_server=lambda _b: None,
    ).start()
    socks: dict[int, Any] = {}
    sent: dict[int, int] = {}
    while not stop.is_set():
        for i, source in enumerate(sources):
            if stop.is_set():
                break
            try:
                if i not in socks:
                    socks[i] = raw_socket(address, source)
                    sent[i] = 0
                socks[i].send(hello[sent[i] : sent[i] + 1])
                sent[i] = min(sent[i] + 1, len(hello) - 1)
            except OSError:
                sock = socks.pop(i, None)
                if sock is not None:
                    sock.close()
        stop.wait(0.2)
    for sock in socks.values():
        sock.close()


def test_a_slow_handshake_flood_does_not_keep_new_clients_out(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    transport = TransportOptions(
        max_pending_handshakes=16,
        max_handshakes_per_address=4,
        first_byte_timeout=0.5,
        handshake_timeout=3.0,
    )
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(transport=transport)
    )
    legit = Legit(make_client(), name)
    sources = [f"127.0.0.{2 + i // 4}" for i in range(128)]  # 32 addresses, 4 each... and more
    sources += ["127.0.0.2"] * 32  # over the per-address bound: closed at once
    stop = threading.Event()
    attack = threading.Thread(
        target=_slowloris, args=(server_address(server), sources, stop), daemon=True
    )
    try:
        with bounded_threads(60):
            attack.start()
            time.sleep(0.5)
            for _ in range(7):
                Legit(make_client(), name).check(2)  # new clients get through
            legit.check()
        assert server._listeners[0]._shed.total > 0  # the attack filled the pending handshakes
    finally:
        stop.set()
        attack.join(10)


def test_pending_handshakes_are_bounded_per_address(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    transport = TransportOptions(max_handshakes_per_address=4, first_byte_timeout=5.0)
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(transport=transport)
    )
    listener = server._listeners[0]
    socks = [raw_socket(server_address(server), "127.0.0.7") for _ in range(10)]
    try:
        wait_until(lambda: listener._refused_address.total == 6)
        closed = 0
        for sock in socks:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed == 6  # the 4 first still wait for their handshake
        Legit(make_client(), name).check(2)  # another address is served
    finally:
        for sock in socks:
            sock.close()


def test_silent_connections_are_shed_and_logged_sparingly(
    make_server: MakeServer, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    transport = TransportOptions(max_pending_handshakes=16, first_byte_timeout=0.5)
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(transport=transport)
    )
    legit = Legit(make_client(), name)
    address = server_address(server)
    socks = []
    caplog.set_level(logging.WARNING, logger="ipcclient.transport")
    try:
        with bounded_threads(40):
            for i in range(500):
                with contextlib.suppress(OSError):
                    socks.append(raw_socket(address, f"127.0.{1 + i // 100}.{2 + i % 100}"))
            for _ in range(6):
                Legit(make_client(), name).check(2)
            legit.check()
        assert server._listeners[0]._shed.total > 0
        warnings = [r for r in caplog.records if r.name == "ipcclient.transport"]
        assert len(warnings) <= 5  # one per kind and interval, however many were dropped
    finally:
        for sock in socks:
            sock.close()


def test_a_connection_cap_bounds_idle_authenticated_vcs(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    transport = TransportOptions(max_connections=20)
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(transport=transport)
    )
    legit = Legit(make_client(), name)  # connected before the attack
    attacker = family.member("attacker")
    peers: list[HostilePeer] = []
    try:
        with bounded_threads(2 * 20 + 10):  # a reader each side per VC, at most the cap
            for i in range(60):
                with contextlib.suppress(errors.IPCError, OSError):
                    peers.append(
                        HostilePeer(attacker, server_address(server), source=f"127.0.1.{i + 2}")
                    )
            legit.check()
        wait_until(lambda: len(server.connections) <= 20)
        assert len(peers) < 60  # the others were refused
        assert len([p for p in peers if not p.closed]) <= 19
    finally:
        for p in peers:
            p.close()


def test_a_pathological_header_is_refused_cheaply(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    server, name = make_server(Service(), AllowEveryone())
    legit = Legit(make_client(), name)
    peer = HostilePeer(family.member("attacker"), server_address(server))
    count = 65_000  # 65,000 empty arrays in one array: within the header's bytes, not items
    header = b"\x99" + count.to_bytes(2, "big") + b"\x80" * count
    big = 262_143  # as large as a message may be, over the header's bytes: refused at once
    huge = b"\x9a" + big.to_bytes(4, "big") + b"\x80" * big
    try:
        fids = []
        for i in range(20):
            body = header if i % 2 else huge
            fids.append(peer.open(len(body).to_bytes(4, "big") + body, end=True))
        legit.check()
        for fid in fids:
            assert isinstance(error_of(peer.wait_ended(fid)), errors.BadProtocolError)
    finally:
        peer.close()


def test_an_argument_of_colliding_map_keys_is_refused_cheaply(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Thousands of map keys crafted to share one hash (multiples of 2^61-1, which Python
    hashes alike) would make building the map take seconds of CPU, with the GIL held, for
    each such argument: the server refuses them before building anything, and a legitimate
    client's calls go on."""
    server, name = make_server(Service(), AllowEveryone())
    legit = Legit(make_client(), name)
    peer = HostilePeer(family.member("attacker"), server_address(server))
    pairs = b"".join(
        b"\xc2\x4a" + (k * (2**61 - 1)).to_bytes(10, "big") + b"\x00" for k in range(256, 16_256)
    )
    arg = b"\xb9" + (16_000).to_bytes(2, "big") + pairs  # a map of 16,000 bignum keys
    body = request_header("Echo", 1) + len(arg).to_bytes(4, "big") + arg
    try:
        fids = [peer.open(body, end=True) for _ in range(4)]
        legit.check()
        for fid in fids:
            assert isinstance(error_of(peer.wait_ended(fid)), errors.BadProtocolError)
    finally:
        peer.close()
    assert legit.worst <= 2 * legit.p99 + SLACK


def test_a_client_with_64_open_streams_still_gets_a_unary_call_through(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    service = Service()
    _, name = make_server(service, AllowEveryone(), options=ServerOptions(workers=2))
    client = make_client()
    streams = [client.start_call(ctx(), name, "Stream") for _ in range(64)]
    try:
        for _ in streams:
            assert service.streams.acquire(timeout=10)
        assert client.call(ctx(), name, "Echo", "through") == ("through",)
    finally:
        for s in streams:
            s.close_send()
        assert [s.finish() for s in streams] == [(0,)] * 64


def test_beyond_max_workers_a_call_is_refused_at_once(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    service = Service()
    _, name = make_server(service, AllowEveryone(), options=ServerOptions(workers=1, max_workers=4))
    client = make_client()
    streams = [client.start_call(ctx(), name, "Stream") for _ in range(4)]
    try:
        for _ in streams:
            assert service.streams.acquire(timeout=10)
        start = time.monotonic()
        with pytest.raises(errors.OverloadedError):
            client.start_call(ctx(), name, "Echo", [1]).finish()
        assert time.monotonic() - start < 5  # refused, not queued behind the streams
    finally:
        for s in streams:
            s.close_send()
        assert [s.finish() for s in streams] == [(0,)] * 4


def test_an_idle_vc_whose_keepalive_leaves_less_than_the_watchers_round_is_not_parked(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """The idle watcher checks parked VCs once a round (1 s): with a ping due 0.3 s after
    the last input and the peer dead at 0.9 s, a parked VC was judged dead at its first
    check without ever being pinged, and a healthy client lost its VC a second after its
    last call. It keeps its reader thread now, which pings in time."""
    transport = TransportOptions(keepalive=KeepaliveConfig(interval=0.3, timeout=0.9))
    _, name = make_server(Service(), AllowEveryone(), options=ServerOptions(transport=transport))
    client = make_client()
    assert client.call(ctx(), name, "Echo", b"x") == (b"x",)
    (conn,) = client._vcs.values()
    time.sleep(2.0)  # (idle: the server pings every 0.3 s, the client answers)
    assert not conn.closed, conn.error
    assert client.call(ctx(), name, "Echo", b"y") == (b"y",)
    assert client.stats["dials"] == 1


def test_idle_vcs_cost_no_thread_each_and_keep_their_keepalive(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    transport = TransportOptions(
        park_idle=0.2, keepalive=KeepaliveConfig(interval=0.8, timeout=3.0)
    )
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(transport=transport)
    )
    legit = Legit(make_client(), name)
    address = server_address(server)
    attacker = family.member("attacker")
    peers: list[HostilePeer] = []
    try:
        before = threading.active_count()
        for i in range(100):
            peers.append(HostilePeer(attacker, address, source=f"127.0.3.{i + 2}"))
        mute = HostilePeer(attacker, address, source="127.0.4.2", mute=True)
        peers.append(mute)
        # Each peer has a reader thread in this process; the server's VCs give theirs up.
        wait_until(lambda: threading.active_count() <= before + len(peers) + 5)
        # (Each ping and its answer wake a VC for a moment: most, not all, are parked.)
        wait_until(lambda: parking.IDLE.parked >= 50)
        wait_until(lambda: mute.closed)  # pinged while parked, never answered: broken
        time.sleep(1.0)  # two more ping rounds, answered
        assert not any(p.closed for p in peers if p is not mute)
        legit.check()  # a parked VC wakes for its client's next call
        fid = peers[0].open(request_header("Echo", 1) + encode_messages(7), end=True)
        assert split_messages(peers[0].wait_ended(fid))[1] == 7
    finally:
        for p in peers:
            p.close()
    server.stop()
    wait_until(lambda: parking.IDLE.parked == 0)
    # With nothing parked the watcher's thread ends and its epoll descriptor is closed (it
    # stayed open for the life of the process).
    wait_until(lambda: not any(t.name == "ipc-idle" for t in threading.enumerate()))
    assert parking.IDLE._selector is None


_END_OF_ARGS = {"end_stream_args": True}


@expose
class Flood:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def Flood(self, call: ServerCall, size: int) -> None:
        item = b"x" * size
        try:
            while True:
                call.send(item)
        except errors.IPCError as exc:
            self.ended.append(exc.id)
            raise


def test_a_peer_announcing_a_huge_window_and_not_reading_costs_bounded_memory(
    family: Family, make_server: MakeServer
) -> None:
    """A client may announce a window of 2^31-1 bytes per flow and then stop reading. The
    server's writers queued all their credit allowed behind the sender blocked on the full
    socket: memory grew without bound (hundreds of MiB a minute). Now what is queued on a VC
    stays under MAX_QUEUED (and what the socket holds), and the streaming methods wait."""
    from ipcclient.transport.writer import MAX_QUEUED

    flood = Flood()
    server, _ = make_server(flood, AllowEveryone())
    peer = HostilePeer(
        family.member("attacker"), server_address(server), reader=False, window=2**31 - 1
    )
    try:
        for _ in range(4):
            body = request_header("Flood", 1) + encode_messages(64 * 1024, _END_OF_ARGS)
            peer.open(body, end=True)
        wait_until(lambda: any(lst.connections for lst in server._listeners))
        (conn,) = [c for lst in server._listeners for c in lst.connections]
        most = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and most <= 3 * MAX_QUEUED:
            with conn._lock:
                queued = sum(len(piece) for piece in conn._mux._out)
            most = max(most, queued)
            time.sleep(0.05)
        assert most <= MAX_QUEUED + 1024 * 1024, most
    finally:
        peer.close()
    wait_until(lambda: len(flood.ended) == 4)  # (each send ends when the VC does)


@pytest.mark.parametrize(
    "cut",
    ["no-end-of-items", "header-without-item", "whole"],
)
def test_a_client_stream_cut_short_is_not_taken_for_a_whole_one(
    family: Family, make_server: MakeServer, cut: str
) -> None:
    """A client that closes its send side without the end-of-items message (or after an
    item's header, before the item) has cut its stream short (docs/protocol.md 5.1): the
    method's loop over the items ended as if the client had sent them all, and the call
    succeeded on part of them. ServerCall.recv now raises BadProtocolError, which the client
    gets; a stream that ends properly is counted whole."""
    server, _ = make_server(Service(), AllowEveryone())
    item = encode_messages(Request().to_wire())
    data = request_header("Stream", 0) + item + encode_messages(1) + item
    data += {
        "no-end-of-items": encode_messages(2),
        "header-without-item": b"",
        "whole": encode_messages(2, Request(end_stream_args=True).to_wire()),
    }[cut]
    peer = HostilePeer(family.member("client"), server_address(server))
    try:
        body = peer.wait_ended(peer.open(data, end=True))
    finally:
        peer.close()
    if cut == "whole":
        assert split_messages(body)[1:] == [2]
    else:
        err = error_of(body)
        assert isinstance(err, errors.BadProtocolError), body
        assert "before the end of its items" in err.msg
