"""Measure what each hostile-load attack costs a server with default options.

    python -m tests.bench.attacks [--server-path DIR] [--only NAME ...]

The server runs in a child process from the ipcclient found in ``--server-path`` (default:
this checkout), so the same attacks can be measured against another version; the attacker
(tests/hostile.py) and the legitimate clients use this checkout. Prints one line per attack:
legitimate calls that got through, the server's peak RSS and threads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ClientOptions
from ipcclient.transport.manager import split_host_port
from ipcclient.vc.handshake import ClientHandshake
from ipcclient.wire.messages import encode_messages
from tests.conftest import Family
from tests.hostile import HostilePeer, raw_socket, request_header

SERVER = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from ipcclient.security import Principal
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.server import Server
try:
    from ipcclient.server.exposure import expose
except ImportError:  # a version from before explicit exposure serves every public method
    def expose(cls):
        return cls

@expose
class Service:
    def Echo(self, call, x):
        return x
    def Count(self, call, *args):
        return len(args)
    def Stream(self, call):
        return sum(1 for _ in call)
    def Open(self, call):
        call.send("started")
        return sum(1 for _ in call)

import dataclasses, os
from ipcclient.server.server import ServerOptions
from ipcclient.transport.manager import TransportOptions
cap = os.environ.get("IPC_BENCH_MAX_CONNECTIONS")
options = ServerOptions()
if cap and "max_connections" in TransportOptions.__dataclass_fields__:
    options = ServerOptions(transport=TransportOptions(max_connections=int(cap)))
server = Server(Principal.load(sys.argv[2]), options=options)
ep = server.listen("tcp", "127.0.0.1:0")
server.serve(Service(), AllowEveryone())
print(ep, flush=True)
sys.stdin.read()
"""


class Child:
    def __init__(self, path: str, family: Family) -> None:
        self.dir = tempfile.mkdtemp()
        family.member("server").save(self.dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, path, self.dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().strip()
        self.name = "/" + self.endpoint
        tcp = next(p for p in self.endpoint.split("@") if p.count(":") == 1)
        self.address = split_host_port(tcp)
        self.peak_rss = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def status(self) -> tuple[int, int]:
        rss = threads = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        return rss, threads

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                rss, threads = self.status()
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_threads = max(self.peak_threads, threads)

    def stop(self) -> None:
        self._stop.set()
        self.proc.kill()
        self.proc.wait()


def client(family: Family) -> Client:
    return Client(family.member("client"), options=ClientOptions(default_call_timeout=5.0))


def calls(c: Client, name: str, n: int, timeout: float = 3.0) -> tuple[int, float]:
    """(calls through, slowest) of ``n`` Echo calls, each with ``timeout``."""
    ok = 0
    worst = 0.0
    for i in range(n):
        start = time.monotonic()
        with contextlib.suppress(errors.IPCError):
            c.call(Context.background().with_timeout(timeout), name, "Echo", i)
            ok += 1
            worst = max(worst, time.monotonic() - start)
    return ok, worst


def new_clients(family: Family, name: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        c = client(family)
        try:
            ok += calls(c, name, 1, 5.0)[0]
        finally:
            c.close()
    return ok


def headerless(family: Family, child: Child) -> str:
    legit = client(family)
    calls(legit, child.name, 3)
    peer = HostilePeer(family.member("attacker"), child.address)
    for _ in range(3000):
        peer.open()
    time.sleep(1)
    ok, worst = calls(legit, child.name, 9)
    fresh = new_clients(family, child.name, 8)
    peer.close()
    legit.close()
    return f"existing VC {ok}/9 (slowest {worst * 1000:.0f} ms), new clients {fresh}/8"


def half_sent_args(family: Family, child: Child) -> str:
    legit = client(family)
    calls(legit, child.name, 3)
    peer = HostilePeer(family.member("attacker"), child.address)
    arg = encode_messages(b"x" * (4 * 1024 * 1024 - 8))
    flows = {peer.open(request_header("Count", 16)): 0 for _ in range(16)}
    end = time.monotonic() + 8
    while time.monotonic() < end:  # 15 args of 4 MiB each, as credit allows; never the 16th
        for fid, sent in flows.items():
            if sent < 15 * len(arg) and fid not in peer.resets:
                piece = arg[sent % len(arg) :]
                flows[fid] = sent + peer.send(fid, piece)
        time.sleep(0.01)
    ok, worst = calls(legit, child.name, 9)
    resets = len(peer.resets)
    peer.close()
    legit.close()
    return f"legit {ok}/9 (slowest {worst * 1000:.0f} ms); flows reset {resets}/16"


def pool_one_address(family: Family, child: Child, vcs: int = 3) -> str:
    """``vcs`` VCs from one address each open 128 calls (a VC's bound) that send one of
    their two args and stop: do calls from elsewhere still get a worker?"""
    legit = client(family)
    calls(legit, child.name, 3)
    attacker = family.member("attacker")
    peers = [HostilePeer(attacker, child.address, source="127.0.13.2") for _ in range(vcs)]
    body = request_header("Count", 2) + encode_messages(b"a" * 100)
    for peer in peers:
        for _ in range(128):
            peer.open(body)
    time.sleep(1)
    refused = sum(len(peer.resets) for peer in peers)
    ok, worst = calls(legit, child.name, 9)
    fresh = new_clients(family, child.name, 4)
    for peer in peers:
        peer.close()
    legit.close()
    return (
        f"refused {refused}/{vcs * 128}; existing VC {ok}/9 (slowest {worst * 1000:.0f} ms), "
        f"new clients {fresh}/4"
    )


def args_many_vcs(family: Family, child: Child, vcs: int = 8) -> str:
    """``vcs`` VCs, each from an address of its own, each hold half-sent args up to its
    VC's budget (16 flows of 15 args of 4 MiB, never the 16th, as ``half_sent_args``)."""
    attacker = family.member("attacker")
    peers = [HostilePeer(attacker, child.address, source=f"127.0.14.{2 + i}") for i in range(vcs)]
    arg = encode_messages(b"x" * (4 * 1024 * 1024 - 8))

    def attack(peer: HostilePeer) -> None:
        flows = {peer.open(request_header("Count", 16)): 0 for _ in range(16)}
        end = time.monotonic() + 8
        while time.monotonic() < end:
            for fid, sent in flows.items():
                if sent < 15 * len(arg) and fid not in peer.resets:
                    piece = arg[sent % len(arg) :]
                    flows[fid] = sent + peer.send(fid, piece)
            time.sleep(0.01)

    threads = [threading.Thread(target=attack, args=(p,), daemon=True) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    legit = client(family)
    ok, worst = calls(legit, child.name, 9)
    resets = sum(len(peer.resets) for peer in peers)
    for peer in peers:
        peer.close()
    legit.close()
    return (
        f"{vcs} VCs: legit {ok}/9 (slowest {worst * 1000:.0f} ms); flows reset {resets}/{vcs * 16}"
    )


def slowloris(family: Family, child: Child, count: int = 128) -> str:
    hello = ClientHandshake(
        family.member("x"), authorize_server=lambda *_: None, blessings_for_server=lambda _b: None
    ).start()
    stop = threading.Event()

    def attack() -> None:
        socks: dict[int, Any] = {}
        sent: dict[int, int] = {}
        while not stop.is_set():
            for i in range(count):
                try:
                    if i not in socks:
                        socks[i] = raw_socket(child.address, "127.0.0.2")
                        sent[i] = 0
                    socks[i].send(hello[sent[i] : sent[i] + 1])
                    sent[i] = min(sent[i] + 1, len(hello) - 1)
                except OSError:
                    sock = socks.pop(i, None)
                    if sock is not None:
                        sock.close()
            stop.wait(1.0)
        for sock in socks.values():
            sock.close()

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    time.sleep(2)
    fresh = new_clients(family, child.name, 7)
    stop.set()
    thread.join(10)
    return f"new clients {fresh}/7"


def silent(family: Family, child: Child) -> str:
    socks = []
    for i in range(2000):
        with contextlib.suppress(OSError):
            socks.append(raw_socket(child.address, f"127.0.{1 + i // 200}.{2 + i % 200}"))
    time.sleep(0.5)
    fresh = new_clients(family, child.name, 8)
    for s in socks:
        s.close()
    return f"new clients {fresh}/8"


def idle_vcs(family: Family, child: Child, count: int = 300) -> str:
    rss0, threads0 = child.status()
    attacker = family.member("attacker")
    peers = []
    for i in range(count):
        source = f"127.{2 + i // 62500}.{2 + i // 250 % 250}.{2 + i % 250}"
        with contextlib.suppress(errors.IPCError, OSError):
            peers.append(HostilePeer(attacker, child.address, source=source, reader=False))
    time.sleep(3)
    rss, threads = child.status()
    for p in peers:
        p.close()
    per_vc = (rss - rss0) / max(1, len(peers)) / 1024
    return (
        f"{len(peers)} VCs: threads {threads0} -> {threads}, "
        f"RSS {rss0 >> 20} -> {rss >> 20} MiB (~{per_vc:.0f} KiB per idle VC)"
    )


def pathological_header(family: Family, child: Child) -> str:
    legit = client(family)
    base = sorted(calls(legit, child.name, 1)[1] for _ in range(50))[-1]
    peer = HostilePeer(family.member("attacker"), child.address)
    n = 262_143
    body = b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n
    msg = len(body).to_bytes(4, "big") + body
    cpu0 = child.cpu()
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            fid = peer.open(msg, end=True)
            peer.wait_ended(fid, 5)

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    worst = sorted(calls(legit, child.name, 1)[1] for _ in range(50))[-1]
    stop.set()
    thread.join(10)
    sent = len(peer.received) or 1
    cpu = (child.cpu() - cpu0) / sent
    peer.close()
    legit.close()
    return (
        f"legit slowest of 50: {base * 1000:.1f} ms undisturbed, {worst * 1000:.1f} ms "
        f"under attack; server CPU per header ~{cpu * 1000:.1f} ms ({sent} headers)"
    )


def streams(family: Family, child: Child, count: int = 16) -> str:
    legit = client(family)
    ctx = Context.background().with_timeout(8)
    open_calls = [legit.start_call(ctx, child.name, "Open") for _ in range(count)]
    started = 0
    for c in open_calls:
        with contextlib.suppress(errors.IPCError):
            c.recv()
            started += 1
    ok, _ = calls(legit, child.name, 1, 3.0)
    with contextlib.suppress(errors.IPCError):
        legit.start_call(Context.background().with_timeout(3), child.name, "Open").recv()
        started += 1
    for c in open_calls:
        with contextlib.suppress(errors.IPCError):
            c.close_send()
            c.finish()
    legit.close()
    return (
        f"{count} streams opened, then one more: {started}/{count + 1} started; "
        f"a unary call {'went through' if ok else 'FAILED'}"
    )


ATTACKS: dict[str, Callable[[Family, Child], str]] = {
    "headerless": headerless,
    "half-sent-args": half_sent_args,
    "pool-one-address": pool_one_address,
    "args-many-vcs": args_many_vcs,
    "slowloris": slowloris,
    "silent": silent,
    "idle-vcs": idle_vcs,
    "idle-vcs-10k": lambda f, c: idle_vcs(f, c, 10_000),
    "header": pathological_header,
    "streams-16": streams,
    "streams-64": lambda f, c: streams(f, c, 64),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-path", default=os.getcwd())
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    family = Family()
    for name, attack in ATTACKS.items():
        if args.only and name not in args.only:
            continue
        child = Child(args.server_path, family)
        try:
            rss0, _ = child.status()
            result = attack(family, child)
            print(
                f"{name}: {result}; server RSS {rss0 >> 20} MiB -> peak {child.peak_rss >> 20} "
                f"MiB, peak threads {child.peak_threads}",
                flush=True,
            )
        finally:
            child.stop()


if __name__ == "__main__":
    main()
