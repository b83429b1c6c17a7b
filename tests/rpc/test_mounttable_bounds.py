"""The mount table's bounds on memory and time, in both stores, over real loopback TCP.

What the names and servers held are charged (:data:`~ipcclient.server.mountstore.MAX_TABLE_BYTES`),
what a Glob answer is charged (:data:`~ipcclient.server.mountstore.MAX_GLOB_BYTES`), a Glob
read from etcd in pages, one deadline per call (its store reads and its access check), access
lists that cannot be read granting nothing, and what etcd may answer that Python's JSON
decoder cannot take. Real Servers, Clients, MountTables and a real etcd (the session's); the
fakes inject what a real etcd cannot do on demand: a proxy in front of it that delays what
it forwards (a slow etcd), and a gateway answering JSON nested too deeply.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.options import NoRetry
from ipcclient.security import Principal
from ipcclient.server import mounttable
from ipcclient.server.authorizer import CallSecurity
from ipcclient.server.etcdstore import EtcdStore
from ipcclient.server.mountstore import MemoryStore, name_bytes, server_bytes
from ipcclient.server.mounttable import MountTable
from tests.etcd_server import Member, etcd_post
from tests.rpc.test_mounttable import FakeClock, Family, at, client_for, ctx, serving
from tests.rpc.test_mounttable_etcd import fake_gateway

# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


def prefix() -> str:
    return f"/test/{uuid.uuid4().hex}/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _no_delay(path: str, body: bytes) -> float:
    return 0.0


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    target = ""
    released: threading.Event
    delay: Callable[[str, bytes], float] = staticmethod(_no_delay)
    """Seconds to hold a request (its path and body) before forwarding it: set by the test."""


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        delay = self.server.delay(self.path, body)
        if delay > 0:
            self.server.released.wait(delay)
        req = urllib.request.Request(
            self.server.target + self.path,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as exc:  # (etcd's refusals are HTTP 4xx with JSON)
            status, data = exc.code, exc.read()
        except OSError:
            return
        with contextlib.suppress(OSError):  # (the store may have given up meanwhile)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


@contextlib.contextmanager
def delaying_proxy(target: str) -> Iterator[_ProxyServer]:
    """A proxy in front of etcd at ``target`` that holds each request for
    ``proxy.delay(path, body)`` seconds (an etcd slow on demand: the one fault a real etcd
    cannot produce at will); ``proxy.url`` is its address. Held requests are let go on exit."""
    proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
    proxy.target = target
    proxy.released = threading.Event()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        proxy.shutdown()
        proxy.server_close()


def proxy_url(proxy: _ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.server_address[1]}"


def security(method: str, name: str) -> CallSecurity:
    """What the server hands an authorizer for a call by a client blessed ``name``."""
    key = Principal.generate().public_key
    return CallSecurity(
        method=method,
        suffix="n",
        client_names=(name,),
        rejected=(),
        server_names=("root:mt",),
        client_key=key,
        server_key=key,
    )


def glob(client: Any, name: str, pattern: str) -> tuple[list[dict[str, Any]], int]:
    with client.start_call(ctx(), name, "Glob", [pattern]) as call:
        items = list(call)
        (count,) = call.finish()
    return items, count


def shape(items: list[dict[str, Any]]) -> list[tuple[str, list[str], bool, bool]]:
    """What two stores must answer alike (the TTLs left differ by the time between)."""
    return [
        (i["name"], [s["server"] for s in i["servers"]], i["serves_mount_table"], i["is_leaf"])
        for i in items
    ]


def long_server(i: int, length: int = 4000) -> str:
    head = f"/127.0.0.1:{1 + i}/"
    return head + "x" * (length - len(head))


# -- finding: the bytes of its names and servers bound an in-memory table ------------------


def test_a_table_full_of_bytes_refuses_mounts_over_rpc(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """Without the bound, every name could hold 256 servers of 4096 characters (~1 MiB per
    name, ~100 GiB for a table within MAX_NODES); a Mount past it is refused as a full
    table is (OverloadedError, NO_RETRY), and a full table sweeps first."""
    clock = FakeClock()
    servers = [long_server(i) for i in range(5)]
    names = 3 * name_bytes("a")  # (a, b and c or d: one node each)
    table = MountTable(clock=clock, max_table_bytes=names + 3 * server_bytes(servers[0]))
    _, mt = serving(stack, family.member("mt"), table=table)
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "a"), "Mount", servers[0], 10.0, 0)
    client.call(ctx(), at(mt, "a"), "Mount", servers[1], 10.0, 0)
    client.call(ctx(), at(mt, "b"), "Mount", servers[2], 10.0, 0)
    with pytest.raises(errors.OverloadedError, match="full") as info:
        client.call(ctx(), at(mt, "c"), "Mount", servers[3], 10.0, 0, options=(NoRetry(),))
    assert info.value.action is errors.RetryAction.NO_RETRY
    with pytest.raises(errors.OverloadedError, match="full"):  # (a name with room, too)
        client.call(ctx(), at(mt, "a"), "Mount", servers[3], 10.0, 0, options=(NoRetry(),))
    client.call(ctx(), at(mt, "a"), "Mount", servers[0], 30.0, 0)  # a refresh adds nothing
    assert table.node_count() == 3  # (the refused mounts left no node behind)
    clock.now += 20  # a/servers[1] and b expire; nothing looks at them: the sweep finds them
    client.call(ctx(), at(mt, "c"), "Mount", servers[3], 10.0, 0)
    client.call(ctx(), at(mt, "d"), "Mount", servers[4], 10.0, 0)
    with pytest.raises(errors.OverloadedError, match="full"):
        client.call(ctx(), at(mt, "e"), "Mount", servers[1], 10.0, 0, options=(NoRetry(),))


def test_every_way_a_server_leaves_gives_its_bytes_back() -> None:
    clock = FakeClock()
    s1, s2, s3 = (long_server(i, 100) for i in range(3))
    store = MemoryStore(clock=clock, max_table_bytes=2 * (name_bytes("a") + server_bytes(s1)))

    def mount(name: str, server: str, ttl: float = 10.0, *, replace: bool = False) -> None:
        store.mount((name,), server, ttl, mt=False, leaf=False, replace=replace)

    def refused(name: str, server: str) -> None:
        with pytest.raises(errors.OverloadedError, match="full") as info:
            mount(name, server)
        assert info.value.action is errors.RetryAction.NO_RETRY

    mount("a", s1)
    mount("b", s2)
    refused("c", s3)
    mount("a", s1, 20.0)  # a refresh
    mount("a", s3, replace=True)  # REPLACE: s3 takes s1's bytes
    refused("c", s1)
    mount("b", s1, replace=True)  # REPLACE of a server by itself (at "b": s2 goes too)
    refused("c", s2)
    store.unmount(("a",), s3)  # one server
    mount("c", s3)
    refused("d", s2)
    store.unmount(("c",), "")  # every server of a name
    mount("c", s3, 1.0)
    clock.now += 2  # c expired: a lookup through it drops it
    assert store.resolve(("c", "x")) is None
    mount("d", s3, 1.0)
    clock.now += 2  # d expired: a Glob through it drops it
    assert [i["name"] for i in store.glob((), ("...",))] == ["b"]
    mount("e", s3, 1.0)
    clock.now += 2  # e expired and nothing looked: the full table sweeps before refusing
    mount("f", s3)
    refused("g", s2)
    with pytest.raises(errors.BadArgError):
        MemoryStore(max_table_bytes=0)


def test_the_components_of_names_are_charged_too() -> None:
    """A node's component may be 4096 characters: 100,000 of them once took ~400 MB
    whatever the servers took. A node is charged as it is made and given back as it goes
    (unmounted, pruned by a lookup, swept)."""
    clock = FakeClock()
    short = "/127.0.0.1:1"
    long_a, long_b = "a" * 1500, "b" * 1500
    store = MemoryStore(clock=clock, max_table_bytes=2 * server_bytes(short) + 2000)

    def mount(comps: tuple[str, ...], ttl: float = 10.0) -> None:
        store.mount(comps, short, ttl, mt=False, leaf=False, replace=False)

    mount((long_a,))
    with pytest.raises(errors.OverloadedError, match="full"):
        mount((long_b,))
    with pytest.raises(errors.OverloadedError, match="full"):
        mount(("x", long_b[:600], "y"))  # (the nodes on the way count, the last one too)
    mount(("x", long_b[:300], "y"))
    assert store.size() == 5  # (the refused mounts made no node)
    store.unmount(("x", long_b[:300], "y"), "")  # the path is pruned: its bytes go back
    store.unmount((long_a,), short)
    mount((long_b,), 1.0)
    with pytest.raises(errors.OverloadedError, match="full"):
        mount((long_a,))
    clock.now += 2  # long_b expired: a lookup through it prunes it
    assert store.resolve((long_b, "x")) is None
    mount((long_a,), 1.0)
    clock.now += 2  # long_a expired: the sweep of the full table removes its node
    mount((long_b,))
    assert store.size() == 2


@pytest.fixture(params=["memory", "etcd"])
def make_table(request: pytest.FixtureRequest) -> Iterator[Callable[[], MountTable]]:
    made: list[MountTable] = []

    def make() -> MountTable:
        if request.param == "memory":
            table = MountTable()
        else:
            member = request.getfixturevalue("etcd")
            table = MountTable(store=EtcdStore(member.url, prefix()))
        made.append(table)
        return table

    yield make
    for table in made:
        table.close()


def test_a_glob_answer_is_cut_off_by_its_bytes(
    stack: contextlib.ExitStack,
    family: Family,
    make_table: Callable[[], MountTable],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Glob stops adding items once they are charged MAX_GLOB_BYTES, as it does at
    MAX_GLOB_RESULTS items (it once built 10,000 items of 256 servers of 4096 characters,
    under the store's lock), in either store alike."""
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    for n in range(6):
        for i in range(4):
            client.call(ctx(), at(mt, f"n{n}"), "Mount", long_server(i, 1000), 30.0, 0)
    items, count = glob(client, at(mt, ""), "...")
    assert [i["name"] for i in items] == [f"n{n}" for n in range(6)] and count == 6
    per_item = 2 + 128 + 4 * server_bytes(long_server(0, 1000))
    monkeypatch.setattr(mounttable, "MAX_GLOB_BYTES", 2 * per_item + 1)
    with caplog.at_level(logging.WARNING, logger="ipcclient.mounttable"):
        items, count = glob(client, at(mt, ""), "...")
    assert [i["name"] for i in items] == ["n0", "n1", "n2"] and count == 3  # the 3rd reaches it
    assert [s["server"] for s in items[2]["servers"]] == [long_server(i, 1000) for i in range(4)]
    assert "cut off at 3 items" in caplog.text


# -- finding: etcd's Glob reads its range in pages ----------------------------------------


def test_a_glob_larger_than_one_etcd_answer_is_read_in_pages(
    stack: contextlib.ExitStack, family: Family, etcd: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One range read of every key below the name once made an answer larger than the
    gateway takes (InternalError) where the in-memory store answered; pages fit, and the
    read stops once the answer is full."""
    limit = 256 * 1024
    store = EtcdStore(etcd.url, prefix(), max_response_bytes=limit)
    tables = [MountTable(), MountTable(store=store)]
    stack.callback(tables[1].close)
    mts = [serving(stack, family.member("mt"), table=t)[1] for t in tables]
    client = client_for(stack, family.member("client"))
    for mt in mts:
        for n in range(8):
            for i in range(24):
                client.call(ctx(), at(mt, f"n{n}"), "Mount", long_server(i), 600.0, 0)
    answers = [glob(client, at(mt, ""), "...") for mt in mts]
    assert answers[1][1] == answers[0][1] == 8
    assert shape(answers[1][0]) == shape(answers[0][0])
    assert [s["server"] for s in answers[1][0][5]["servers"]] == [long_server(i) for i in range(24)]
    assert sum(len(s) for _, servers, _, _ in shape(answers[1][0]) for s in servers) > 2 * limit

    requests: list[str] = []
    real = store.gateway.request

    def counted(
        path: str, body: dict[str, Any], timeout: float | None = None, **kwargs: Any
    ) -> Any:
        requests.append(path)
        return real(path, body, timeout, **kwargs)

    monkeypatch.setattr(store.gateway, "request", counted)
    (item,) = store.glob((), ("...",), limit=1)
    assert item["name"] == "n0" and len(item["servers"]) == 24
    assert len(requests) <= 24 // 5 + 2  # (5 keys a page here): n0's pages and one more
    requests.clear()
    assert [i["name"] for i in store.glob(("n3",), ("...",))] == [""]
    assert len(requests) <= 24 // 5 + 1


def test_globs_answer_alike_in_memory_and_etcd_wherever_they_are_cut_off(
    etcd: Member,
) -> None:
    """Names whose characters sort before "/" (etcd reads "a-b" between "a" and "a/b"),
    mount points shadowing names below them, expired mounts, a name's servers split across
    pages (a page of one key here): every store answers the same items, in the same order,
    cut off at the same place by count or by bytes."""
    wall = FakeClock()
    wall.now = time.time()
    mono = FakeClock()
    memory = MemoryStore(clock=mono)
    etcd_store = EtcdStore(etcd.url, prefix(), clock=wall, max_response_bytes=60_000)
    try:
        mounts = [
            ("a-b/c", 2, 60.0),
            ("a/b", 1, 60.0),
            ("a/b/shadowed", 1, 60.0),
            ("a!/x/y", 3, 60.0),
            ("a.b", 1, 60.0),
            ("a/c", 2, 60.0),
            ("a/c-d/e", 1, 60.0),
            ("b", 1, 1.0),  # expires: "b/..." shows through
            ("b/c", 2, 60.0),
            ("b/c/d", 1, 60.0),
            ("b/c d/e", 1, 60.0),
            ("b/c-d", 1, 60.0),
            ("c", 3, 60.0),
            ("c/below", 1, 60.0),
            ("d/é/f", 1, 60.0),
            ("d/e/f", 1, 60.0),
        ]
        for name, count, ttl in mounts:
            comps = tuple(name.split("/"))
            for i in range(count):
                for store in (memory, etcd_store):
                    store.mount(comps, long_server(i, 40), ttl, mt=False, leaf=False, replace=False)
        mono.now += 2
        wall.now += 2
        cases = [((), ("...",)), ((), ("*",)), ((), ("*", "...")), (("b",), ("...",))]
        cases += [(("a",), ("*",)), (("a",), ("...", "*")), ((), ("...", "[ef]", "f"))]
        cases += [(("c",), ("...",)), (("a", "b"), ("*",)), (("d",), ("...",))]
        for comps, pattern in cases:
            full = shape(memory.glob(comps, pattern))
            assert shape(etcd_store.glob(comps, pattern)) == full, (comps, pattern)
            for limit in range(1, len(full) + 1):
                cut = shape(memory.glob(comps, pattern, limit=limit))
                assert cut == full[:limit]
                assert shape(etcd_store.glob(comps, pattern, limit=limit)) == cut
            for max_bytes in (1, 300, 500, 1000):
                cut = shape(memory.glob(comps, pattern, max_bytes=max_bytes))
                assert shape(etcd_store.glob(comps, pattern, max_bytes=max_bytes)) == cut
        names = [n for n, *_ in shape(memory.glob((), ("...",)))]
        assert (
            names
            == sorted(names)
            == [
                "a!/x/y",
                "a-b/c",
                "a.b",
                "a/b",
                "a/c",
                "a/c-d/e",
                "b/c",
                "b/c d/e",
                "b/c-d",
                "c",
                "d/e/f",
                "d/é/f",
            ]
        )
    finally:
        etcd_store.close()


# -- finding: one deadline per call, and access lists that cannot be read -----------------


def test_a_glob_keeps_to_one_deadline_for_all_its_store_reads(etcd: Member) -> None:
    """Glob resolves the name, then reads below it: both within the call's one deadline
    (each once got the whole of it: 1.4 s for a call of 1 s)."""
    pfx = prefix()
    fast = EtcdStore(etcd.url, pfx)
    fast.mount(("a", "b"), "/127.0.0.1:1", 60.0, mt=False, leaf=False, replace=False)
    fast.close()
    with delaying_proxy(etcd.url) as proxy:
        table = MountTable(store=EtcdStore(proxy_url(proxy), pfx))
        try:
            proxy.delay = lambda path, body: 0.7
            started = time.monotonic()
            with pytest.raises(errors.TimeoutError):
                list(table._glob("a", "...", timeout=1.0))
            assert time.monotonic() - started < 1.3
            proxy.delay = lambda path, body: 0.0
            assert [i["name"] for i in table._glob("a", "...", timeout=1.0)] == ["b"]
        finally:
            table.close()


def test_the_access_lists_are_read_within_the_calls_deadline(etcd: Member) -> None:
    """A read of the access lists gets the call's time left (it once got 2 s whatever the
    deadline); one cut short by the call's deadline is not held against the store."""
    with delaying_proxy(etcd.url) as proxy:
        table = MountTable(
            store=EtcdStore(proxy_url(proxy), prefix()), resolve_patterns=("root:client",)
        )
        try:
            proxy.delay = lambda path, body: 1.5
            started = time.monotonic()
            with pytest.raises(errors.TimeoutError):
                table._authorize(security("ResolveStep", "root:client"), 0.5)
            assert time.monotonic() - started < 1.0
            proxy.delay = lambda path, body: 0.0
            table._authorize(security("ResolveStep", "root:client"), 0.5)  # read, not refused
            with pytest.raises(errors.NoAccessError):
                table._authorize(security("ResolveStep", "root:other"), 0.5)
        finally:
            table.close()


def test_access_lists_that_cannot_be_read_grant_nothing_and_the_failure_is_remembered(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    """Replica B starts with lists that let everyone in, but the table's stored lists (A
    stored them first) let only root:client resolve. While etcd does not answer B's read
    of them, B grants nothing (it once fell back on its own lists, and let a stranger in);
    and the calls after the first failed read are refused at once for a moment (each
    once waited 2 s again)."""
    pfx = prefix()
    table_a = MountTable(
        store=EtcdStore(etcd.url, pfx),
        mount_patterns=("root:admin",),
        resolve_patterns=("root:client",),
    )
    stack.callback(table_a.close)
    _, mt_a = serving(stack, family.member("mt"), table=table_a)
    admin = client_for(stack, family.member("admin"), mt_a)
    admin.call(ctx(), at(mt_a, "n"), "Mount", "/127.0.0.1:4000", 30.0, 0)  # (seeds the lists)
    acl_key = b64((pfx + "acl").encode()).encode()
    with delaying_proxy(etcd.url) as proxy:
        proxy.delay = lambda path, body: 30.0 if acl_key in body else 0.0
        table_b = MountTable(
            store=EtcdStore(proxy_url(proxy), pfx), mount_patterns=None, resolve_patterns=None
        )
        stack.callback(table_b.close)
        _, mt_b = serving(stack, family.member("mt"), table=table_b)
        stranger = client_for(stack, family.member("stranger"), mt_b)
        client = client_for(stack, family.member("client"), mt_b)

        started = time.monotonic()
        with pytest.raises(errors.OverloadedError, match="access lists") as info:
            stranger.call(ctx(5.0), at(mt_b, "n"), "ResolveStep", options=(NoRetry(),))
        assert info.value.action is errors.RetryAction.RETRY_BACKOFF
        assert time.monotonic() - started < mounttable.ACCESS_READ_TIMEOUT + 1.5
        started = time.monotonic()
        for caller in (client, stranger):
            with pytest.raises(errors.OverloadedError, match="access lists"):
                caller.call(ctx(5.0), at(mt_b, "n"), "ResolveStep", options=(NoRetry(),))
        # (Remembered: refused at once; not remembered, each waits ACCESS_READ_TIMEOUT.)
        assert time.monotonic() - started < 1.0

        proxy.delay = lambda path, body: 0.0
        time.sleep(mounttable.ACCESS_RETRY_AFTER)
        (wire,) = client.call(ctx(), at(mt_b, "n"), "ResolveStep", options=(NoRetry(),))
        assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:4000"]
        with pytest.raises(errors.NoAccessError):
            stranger.call(ctx(), at(mt_b, "n"), "ResolveStep", options=(NoRetry(),))


# -- finding: JSON nested too deeply for Python's decoder ---------------------------------

_NESTED = b"[" * 100_000 + b"]" * 100_000


def test_an_answer_nested_too_deeply_is_a_failed_member_not_a_recursion_error(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """It once raised a bare RecursionError from the store (ipc.Unknown to a client)."""

    def nested(conn: Any, body: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(_NESTED)}\r\n\r\n".encode()
            + _NESTED
        )

    with fake_gateway(nested) as url:
        store = EtcdStore(url, prefix(), request_timeout=2.0)
        stack.callback(store.close)
        for operation in (lambda: store.resolve(("a",)), store.get_access, store.size):
            with pytest.raises(errors.OverloadedError, match="nested too deeply") as info:
                operation()
            assert info.value.action is errors.RetryAction.RETRY_BACKOFF
        with pytest.raises(errors.OverloadedError, match="nested too deeply"):
            store.glob((), ("...",))
        _, mt = serving(stack, family.member("mt"), table=MountTable(store=store))
        client = client_for(stack, family.member("client"), mt)
        with pytest.raises(errors.OverloadedError):
            client.call(ctx(), at(mt, "a"), "ResolveStep", options=(NoRetry(),))


def test_stored_values_nested_too_deeply_are_malformed(etcd: Member) -> None:
    """A mount whose value is JSON nested too deeply is ignored as malformed; access lists
    so stored are BadState (each once raised a bare RecursionError)."""
    pfx = prefix()
    store = EtcdStore(etcd.url, pfx)
    try:
        store.mount(("a",), "/127.0.0.1:1", 60.0, mt=False, leaf=False, replace=False)
        key = (pfx + "m/a\x00/127.0.0.1:2").encode()
        etcd_post(etcd, "/v3/kv/put", {"key": b64(key), "value": b64(_NESTED)})
        found = store.resolve(("a", "x"))
        assert found is not None and [s for s, _ in found.servers] == ["/127.0.0.1:1"]
        assert [i["name"] for i in store.glob((), ("...",))] == ["a"]
        etcd_post(etcd, "/v3/kv/put", {"key": b64((pfx + "acl").encode()), "value": b64(_NESTED)})
        with pytest.raises(errors.BadStateError, match="not JSON"):
            store.get_access()
    finally:
        store.close()
