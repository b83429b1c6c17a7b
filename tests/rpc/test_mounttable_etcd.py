"""Mount table replicas sharing their state through a real etcd (started by the fixtures).

Every replica is a real Server with a MountTable on an EtcdStore; clients are real Clients
over loopback TCP. The suite shared with the in-memory store is in tests/rpc/test_mounttable.py
(parametrized); these are the tests only a shared store can fail.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming.namespace import Namespace
from ipcclient.options import NoRetry
from ipcclient.server.etcdgateway import EtcdGateway
from ipcclient.server.etcdstore import EtcdStore
from ipcclient.server.mountstore import CALL_CONTEXT
from ipcclient.server.mounttable import MT, REPLACE, MountTable
from ipcclient.server.mounttabled import serve_mount_table
from ipcclient.server.server import Server
from tests.etcd_server import Member, cluster, etcd_post
from tests.rpc.test_mounttable import (
    FakeClock,
    Family,
    Label,
    at,
    client_for,
    ctx,
    serving,
    wait_until,
)


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


def prefix() -> str:
    return f"/test/{uuid.uuid4().hex}/"


def replica(
    stack: contextlib.ExitStack,
    family: Family,
    endpoints: str | Sequence[str],
    pfx: str,
    **kwargs: Any,
) -> tuple[Server, str, MountTable]:
    """A mount table server on the shared store; stopped and closed by ``stack``."""
    table = MountTable(store=EtcdStore(endpoints, pfx), **kwargs)
    stack.callback(table.close)
    server, name = serving(stack, family.member("mt"), table=table)
    return server, name, table


def etcd_count(member: Member, key_prefix: str) -> int:
    """Keys under ``key_prefix``, read from etcd directly (not through the store)."""
    start = key_prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    body = {
        "key": base64.b64encode(start).decode(),
        "range_end": base64.b64encode(end).decode(),
        "count_only": True,
    }
    req = urllib.request.Request(
        member.url + "/v3/kv/range",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read()).get("count", 0))


def servers_of(client: Client, name: str) -> list[str]:
    client.namespace.flush_cache_entry(name)
    return [s.server for s in client.namespace.resolve(ctx(), name).servers]


def test_mounted_through_a_resolves_through_b(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    pfx = prefix()
    _, mt_a, _ = replica(stack, family, etcd.url, pfx)
    _, mt_b, _ = replica(stack, family, etcd.url, pfx)
    _, svc = serving(stack, family.member("server"), Label("shared"))
    on_a = client_for(stack, family.member("admin"), mt_a)
    on_b = client_for(stack, family.member("client"), mt_b)

    on_a.call(ctx(), at(mt_a, "apps/echo"), "Mount", svc, 30.0, 0)
    (wire,) = on_b.call(ctx(), at(mt_b, "apps/echo/obj"), "ResolveStep")  # at once
    assert wire["name"] == "obj" and [s["server"] for s in wire["servers"]] == [svc]
    assert on_b.call(ctx(), "apps/echo", "Who") == ("shared",)
    with on_b.start_call(ctx(), at(mt_b, ""), "Glob", ["..."]) as call:
        assert [i["name"] for i in call] == ["apps/echo"]
        call.finish()

    on_b.call(ctx(), at(mt_b, "apps/echo"), "Unmount", svc)  # unmounted through B ...
    with pytest.raises(errors.NoExistError):  # ... gone through A
        on_a.call(ctx(), at(mt_a, "apps/echo"), "ResolveStep", options=(NoRetry(),))
    # A different prefix is a different table on the same cluster.
    _, mt_c, _ = replica(stack, family, etcd.url, prefix())
    on_c = client_for(stack, family.member("client2"), mt_c)
    on_a.call(ctx(), at(mt_a, "only/a"), "Mount", svc, 30.0, 0)
    with pytest.raises(errors.NoExistError):
        on_c.call(ctx(), at(mt_c, "only/a"), "ResolveStep", options=(NoRetry(),))


def test_ttl_expiry_is_the_lease(stack: contextlib.ExitStack, family: Family, etcd: Member) -> None:
    pfx = prefix()
    _, mt, _ = replica(stack, family, etcd.url, pfx)
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "brief"), "Mount", "/127.0.0.1:1001", 0.5, 0)
    client.call(ctx(), at(mt, "long"), "Mount", "/127.0.0.1:1002", 60.0, 0)
    assert etcd_count(etcd, pfx + "m/") == 2

    def gone() -> bool:
        try:
            client.call(ctx(), at(mt, "brief"), "ResolveStep", options=(NoRetry(),))
        except errors.NoExistError:
            return True
        return False

    assert wait_until(gone, 5.0)  # the reader goes by the mount's own expiry ...
    assert wait_until(
        lambda: etcd_count(etcd, pfx + "m/") == 1, 15.0
    )  # ... and etcd deletes the key
    (wire,) = client.call(ctx(), at(mt, "long"), "ResolveStep")
    assert 50 < wire["servers"][0]["ttl"] <= 60


def test_refresh_keeps_the_order_and_the_flags_rule_holds_across_replicas(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    pfx = prefix()
    _, mt_a, _ = replica(stack, family, etcd.url, pfx)
    _, mt_b, _ = replica(stack, family, etcd.url, pfx)
    on_a = client_for(stack, family.member("a"), mt_a)
    on_b = client_for(stack, family.member("b"), mt_b)
    s1, s2 = "/127.0.0.1:2001", "/127.0.0.1:2002"
    on_a.call(ctx(), at(mt_a, "n"), "Mount", s1, 10.0, MT)
    on_b.call(ctx(), at(mt_b, "n"), "Mount", s2, 10.0, MT)
    on_b.call(ctx(), at(mt_b, "n"), "Mount", s1, 60.0, MT)  # a refresh through the other
    (wire,) = on_a.call(ctx(), at(mt_a, "n"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == [s1, s2]
    assert wire["servers"][0]["ttl"] > 50
    with pytest.raises(errors.BadArgError):
        on_b.call(ctx(), at(mt_b, "n"), "Mount", "/127.0.0.1:2003", 10.0, 0)
    on_b.call(ctx(), at(mt_b, "n"), "Mount", "/127.0.0.1:2003", 10.0, REPLACE)
    (wire,) = on_a.call(ctx(), at(mt_a, "n"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:2003"]
    assert wire["serves_mount_table"] is False


def test_concurrent_mounts_through_two_replicas_respect_the_bound(etcd: Member) -> None:
    pfx = prefix()
    stores = [EtcdStore(etcd.url, pfx, max_servers_per_name=3) for _ in range(2)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def mount(i: int) -> None:
        try:
            stores[i % 2].mount(
                ("x",), f"/127.0.0.1:{3000 + i}", 30.0, mt=False, leaf=False, replace=False
            )
            result = "ok"
        except errors.OverloadedError as exc:
            result = "full" if exc.action is errors.RetryAction.NO_RETRY else "busy"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=mount, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        found = stores[0].resolve(("x",))
        assert found is not None and len(outcomes) == 8
        # Never more than the bound, and each mount that succeeded is there.
        assert len(found.servers) == outcomes.count("ok") <= 3
        assert outcomes.count("ok") + outcomes.count("busy") >= 3
    finally:
        for s in stores:
            s.close()


def test_access_lists_are_shared(stack: contextlib.ExitStack, family: Family, etcd: Member) -> None:
    pfx = prefix()
    _, mt_a, table_a = replica(stack, family, etcd.url, pfx, mount_patterns=("root:admin",))
    # B starts with other patterns: the ones A stored first are the table's.
    _, mt_b, table_b = replica(stack, family, etcd.url, pfx, mount_patterns=("...",))
    admin = client_for(stack, family.member("admin"), mt_a, mt_b)
    other = client_for(stack, family.member("other"), mt_a, mt_b)
    admin.call(ctx(), at(mt_a, "n"), "Mount", "/127.0.0.1:4000", 30.0, 0)
    with pytest.raises(errors.NoAccessError):
        other.call(ctx(), at(mt_b, "m"), "Mount", "/127.0.0.1:4001", 30.0, 0)

    table_a.set_access(mount_patterns=("root:other",), resolve_patterns=("...",))

    def other_may_mount() -> bool:
        try:
            other.call(
                ctx(), at(mt_b, "m"), "Mount", "/127.0.0.1:4001", 30.0, 0, options=(NoRetry(),)
            )
        except errors.NoAccessError:
            return False
        return True

    assert wait_until(other_may_mount, 10.0)  # B reads the new lists within its refresh
    assert table_b.store.get_access() is not None


def test_unreachable_etcd_is_a_typed_error_within_the_deadline() -> None:
    from tests.etcd_server import free_port

    store = EtcdStore([f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"], prefix())
    try:
        started = time.monotonic()
        with pytest.raises(errors.OverloadedError) as info:
            store.resolve(("a", "b"), timeout=3.0)
        assert info.value.action is errors.RetryAction.RETRY_BACKOFF
        assert len(info.value.tried) == 2
        with pytest.raises(errors.TimeoutError):
            store.mount(
                ("a",), "/127.0.0.1:1", 5.0, mt=False, leaf=False, replace=False, timeout=0.0
            )
        assert time.monotonic() - started < 10
    finally:
        store.close()
    with pytest.raises(errors.BadArgError):
        EtcdStore("ftp://127.0.0.1:1", prefix())
    with pytest.raises(errors.BadArgError):
        EtcdStore("", prefix())
    for bad in ("x", None, math.nan, True, 0, -1.0):
        with pytest.raises(errors.BadArgError):  # (a TypeError or ValueError before)
            EtcdStore("127.0.0.1:1", prefix(), request_timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(errors.BadArgError):
            EtcdGateway("127.0.0.1:1", timeout=bad)  # type: ignore[arg-type]
        if bad is not None:  # (None: the gateway's own timeout)
            with pytest.raises(errors.BadArgError):
                EtcdGateway("127.0.0.1:1").request("/v3/kv/range", {}, timeout=bad)  # type: ignore[arg-type]


class RecordingCaller:
    """The real client, recording which server each ResolveStep went to."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.names: list[str] = []

    def call(self, c: Context, name: str, method: str, args: Sequence[Any], **options: Any) -> Any:
        self.names.append(name)
        return self.client.call(c, name, method, *args, options=(NoRetry(),))


def test_a_replica_killed_clients_with_two_roots_keep_resolving(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    pfx = prefix()
    server_a, mt_a, _ = replica(stack, family, etcd.url, pfx)
    _, mt_b, _ = replica(stack, family, etcd.url, pfx)
    _, svc = serving(stack, family.member("server"), Label("up"))
    client = client_for(stack, family.member("client"), mt_a, mt_b)
    client.call(ctx(), at(mt_a, "svc"), "Mount", svc, 60.0, 0)
    assert client.call(ctx(), "svc", "Who") == ("up",)

    server_a.stop()  # replica A is gone
    fresh = client_for(stack, family.member("client2"), mt_a, mt_b)
    assert fresh.call(ctx(), "svc", "Who") == ("up",)
    assert servers_of(client, "svc") == [svc]

    # The namespace remembers that B answered: the next resolution asks B first.
    recorder = RecordingCaller(fresh)
    ns = Namespace([mt_a, mt_b], recorder, cache_size=0)
    assert [s.server for s in ns.resolve(ctx(), "svc").servers] == [svc]
    assert [n.split("//")[0] for n in recorder.names] == [mt_a, mt_b]
    recorder.names.clear()
    assert [s.server for s in ns.resolve(ctx(), "svc").servers] == [svc]
    assert [n.split("//")[0] for n in recorder.names] == [mt_b]


def test_replicas_recover_when_etcd_restarts(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    pfx = prefix()
    _, mt_a, _ = replica(stack, family, etcd.url, pfx)
    _, mt_b, _ = replica(stack, family, etcd.url, pfx)
    client = client_for(stack, family.member("client"), mt_a, mt_b)
    client.call(ctx(), at(mt_a, "kept"), "Mount", "/127.0.0.1:5001", 60.0, 0)

    etcd.stop()
    try:
        with pytest.raises(errors.IPCError) as info:
            client.call(ctx(5.0), at(mt_b, "kept"), "ResolveStep", options=(NoRetry(),))
        assert isinstance(info.value, errors.OverloadedError | errors.TimeoutError)
    finally:
        etcd.start()
        etcd.wait_ready()

    def answers() -> bool:
        try:
            (wire,) = client.call(ctx(), at(mt_b, "kept"), "ResolveStep", options=(NoRetry(),))
        except (errors.OverloadedError, errors.TimeoutError):
            return False
        return [s["server"] for s in wire["servers"]] == ["/127.0.0.1:5001"]

    assert wait_until(answers, 20.0)  # the same replicas, not restarted
    client.call(ctx(), at(mt_a, "after"), "Mount", "/127.0.0.1:5002", 60.0, 0)
    (wire,) = client.call(ctx(), at(mt_b, "after"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:5002"]


def test_a_three_member_cluster_losing_one_member_keeps_serving(
    stack: contextlib.ExitStack, family: Family
) -> None:
    with cluster(3) as members:
        urls = [m.url for m in members]
        pfx = prefix()
        _, mt_a, _ = replica(stack, family, urls, pfx)
        _, mt_b, _ = replica(stack, family, list(reversed(urls)), pfx)
        client = client_for(stack, family.member("client"), mt_a, mt_b)
        client.call(ctx(), at(mt_a, "before"), "Mount", "/127.0.0.1:6001", 60.0, 0)

        members[0].stop()  # A's first member: its requests fail over to the others

        def serving_again() -> bool:
            try:
                client.call(
                    ctx(),
                    at(mt_a, "during"),
                    "Mount",
                    "/127.0.0.1:6002",
                    60.0,
                    0,
                    options=(NoRetry(),),
                )
            except (errors.OverloadedError, errors.TimeoutError):
                return False  # a new leader is being elected
            return True

        assert wait_until(serving_again, 20.0)
        for mt in (mt_a, mt_b):
            for name, server in (("before", "/127.0.0.1:6001"), ("during", "/127.0.0.1:6002")):
                (wire,) = client.call(ctx(), at(mt, name), "ResolveStep")
                assert [s["server"] for s in wire["servers"]] == [server]
        stack.close()  # the replicas go before the cluster does


def test_a_replica_process_from_the_command_line(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    pfx = prefix()
    credentials = tempfile.mkdtemp(prefix="ipcclient-mt-")
    stack.callback(shutil.rmtree, credentials, True)
    family.member("mt-process").save(credentials)
    log = stack.enter_context(open(os.path.join(credentials, "stderr.log"), "w+"))  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipcclient.server.mounttabled",
            "--etcd",
            etcd.url,
            "--prefix",
            pfx,
            "--mount",
            "*",
            "--resolve",
            "*",
            "--credentials",
            credentials,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        remote = proc.stdout.readline().strip()  # the replica prints its name when serving
        assert remote.startswith("/@")
        principal = family.member("mt")
        server, table, local = serve_mount_table(principal, etcd=[etcd.url], prefix=pfx)
        stack.callback(table.close)
        stack.callback(server.stop)
        client = client_for(stack, family.member("client"), remote, local)
        client.call(ctx(), at(local, "x"), "Mount", "/127.0.0.1:7001", 30.0, 0)
        (wire,) = client.call(ctx(), at(remote, "x/y"), "ResolveStep")
        assert wire["name"] == "y" and wire["servers"][0]["server"] == "/127.0.0.1:7001"
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)  # (it takes ~0.1 s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = None
        log.seek(0)
        assert code == 0, (
            f"the replica did not stop on SIGTERM; its log ends:\n{log.read()[-3000:]}"
        )


def test_a_silent_root_does_not_use_up_the_deadline(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    # A root that accepts TCP connections and never says a word (a hung host): the only way
    # to get one, since a real server always answers.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.callback(silent.close)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    dead_root = "/127.0.0.1:%d" % silent.getsockname()[1]
    _, mt_b, _ = replica(stack, family, etcd.url, prefix())
    client = client_for(stack, family.member("client"), dead_root, mt_b)
    client.call(ctx(), at(mt_b, "svc"), "Mount", "/127.0.0.1:8001", 60.0, 0)

    started = time.monotonic()
    entry = client.namespace.resolve(ctx(8.0), "svc")  # the silent root is asked first
    assert [s.server for s in entry.servers] == ["/127.0.0.1:8001"]
    assert time.monotonic() - started < 8.0
    client.namespace.flush_cache_entry("svc")
    entry = client.namespace.resolve(ctx(8.0), "svc")  # B answered last: asked first now
    assert [s.server for s in entry.servers] == ["/127.0.0.1:8001"]


# -- faults a real etcd cannot produce: a fake gateway on loopback ------------------------


@contextlib.contextmanager
def fake_gateway(
    answer: Callable[[socket.socket, bytes], None],
) -> Iterator[str]:
    """``http://127.0.0.1:port`` of a server that reads each request and lets ``answer``
    write whatever it likes back (one thread per connection; all closed on exit)."""
    with fake_member(lambda conn, path, body: answer(conn, body)) as url:
        yield url


@contextlib.contextmanager
def fake_member(
    answer: Callable[[socket.socket, str, bytes], None],
) -> Iterator[str]:
    """:func:`fake_gateway` whose ``answer`` is also told each request's path."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += conn.recv(65536)
                answer(conn, head.split(b" ")[1].decode(), body)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conns.append(conn)
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in conns:
            conn.close()


def json_answer(value: Any) -> Callable[[socket.socket, bytes], None]:
    """A fake gateway answer: HTTP 200 with ``value`` as JSON."""
    data = json.dumps(value).encode()

    def answer(conn: socket.socket, body: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    return answer


def test_a_member_trickling_its_answer_keeps_to_the_deadline() -> None:
    # Each byte comes in time for a per-read socket timeout; the request as a whole must
    # still end at its deadline (the answer would take 40 s).
    def trickle(conn: socket.socket, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: 400\r\n\r\n")
        for _ in range(400):
            conn.sendall(b" ")
            time.sleep(0.1)

    def trickle_headers(conn: socket.socket, body: bytes) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 400:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    for answer in (trickle, trickle_headers):
        with fake_gateway(answer) as url:
            store = EtcdStore(url, prefix())
            try:
                started = time.monotonic()
                with pytest.raises(errors.TimeoutError):
                    store.resolve(("a",), timeout=1.0)
                assert time.monotonic() - started < 1.8
            finally:
                store.close()


def silent_member(stack: contextlib.ExitStack) -> int:
    """The port of a listener that accepts connections and never says a word (a hung host:
    a real etcd always answers); closed by ``stack``."""
    silent = socket.socket()
    stack.callback(silent.close)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    return int(silent.getsockname()[1])


def test_a_silent_tls_member_keeps_to_the_deadline(stack: contextlib.ExitStack) -> None:
    port = silent_member(stack)
    store = EtcdStore(f"https://127.0.0.1:{port}", prefix())
    stack.callback(store.close)
    started = time.monotonic()
    with pytest.raises(errors.TimeoutError):
        store.resolve(("a",), timeout=1.0)
    assert time.monotonic() - started < 1.8


MALFORMED = {
    "a key-value is a str, not an object": {
        "header": {"revision": "5"},
        "responses": [{"response_range": {"kvs": ["x"]}}, {"response_range": {"kvs": ["x"]}}],
        "kvs": ["x"],
        "count": "1",
    },
    "not base64": {
        "header": {"revision": "5"},
        "responses": [{"response_range": {"kvs": [{"key": "!!!", "value": "e30="}]}}] * 2,
        "kvs": [{"key": "!!!", "value": "e30="}],
        "count": "1",
    },
    "not a list": {"header": {"revision": "5"}, "responses": {"a": 1}, "kvs": {}, "count": "1"},
    "responses, not": {"header": {"revision": "5"}, "responses": [{}], "count": "1"},
    "not a number": {
        "header": {"revision": "x"},
        "responses": [{"response_range": {}}, {"response_range": {"count": "many"}}],
        "count": "many",
    },
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_gateway_answer_is_a_typed_error(
    stack: contextlib.ExitStack, family: Family, what: str
) -> None:
    with fake_gateway(json_answer(MALFORMED[what])) as url:
        store = EtcdStore(url, prefix(), request_timeout=2.0)
        stack.callback(store.close)
        operations: list[Callable[[], object]] = [
            lambda: store.resolve(("a", "b")),
            lambda: store.mount(("a",), "/127.0.0.1:5", 10.0, mt=False, leaf=False, replace=False),
        ]
        if what != "responses, not":  # (a plain range read has no responses)
            operations.append(lambda: store.glob((), ("...",)))
            operations.append(store.size)
            operations.append(store.get_access)
        failed = 0
        for operation in operations:
            try:
                operation()
            except errors.InternalError as exc:
                assert "etcd answered malformed JSON" in str(exc) and what in str(exc)
                failed += 1
        assert failed >= 2

        # Through a real client: a typed error naming the fault, not ipc.Unknown.
        table = MountTable(store=store)
        _, mt = serving(stack, family.member("mt"), table=table)
        client = client_for(stack, family.member("client"), mt)
        with pytest.raises(errors.InternalError) as info:
            client.call(ctx(), at(mt, "a"), "Mount", "/127.0.0.1:5", 10.0, 0, options=(NoRetry(),))
        assert "etcd answered malformed JSON" in str(info.value)
        try:  # (a ResolveStep reads no revision or count: "not a number" answers it)
            client.call(ctx(), at(mt, "a/b"), "ResolveStep", options=(NoRetry(),))
        except errors.IPCError as exc:
            assert isinstance(exc, errors.NoExistError | errors.InternalError), exc


def test_a_server_mounted_again_after_expiring_goes_last_as_in_memory(
    stack: contextlib.ExitStack, family: Family, etcd: Member
) -> None:
    # etcd has not reaped the expired key yet (its lease lasts longer than the mount): a put
    # on it would keep its creation revision, so the server would keep its first place.
    memory_clock, wall_clock = FakeClock(), FakeClock()
    wall_clock.now = time.time()
    tables = [
        MountTable(clock=memory_clock),
        MountTable(store=EtcdStore(etcd.url, prefix(), clock=wall_clock)),
    ]
    stack.callback(tables[1].close)
    client = client_for(stack, family.member("client"))
    mts = [serving(stack, family.member("mt"), table=t)[1] for t in tables]
    a, b = "/127.0.0.1:1", "/127.0.0.1:2"

    def order(mt: str) -> list[str]:
        (wire,) = client.call(ctx(), at(mt, "svc"), "ResolveStep", options=(NoRetry(),))
        return [s["server"] for s in wire["servers"]]

    for mt in mts:
        client.call(ctx(), at(mt, "svc"), "Mount", a, 1.0, 0)
        client.call(ctx(), at(mt, "svc"), "Mount", b, 30.0, 0)
    memory_clock.now += 2
    wall_clock.now += 2  # A expired
    for mt in mts:
        assert order(mt) == [b]
        client.call(ctx(), at(mt, "svc"), "Mount", a, 30.0, 0)  # a new mount: last
        assert order(mt) == [b, a]
        client.call(ctx(), at(mt, "svc"), "Mount", b, 30.0, 0)  # a refresh: keeps its place
        assert order(mt) == [b, a]


# -- bounds and faults of the etcd store -------------------------------------------------


def raw_answer(
    status: bytes, data: bytes, headers: bytes = b""
) -> Callable[[socket.socket, bytes], None]:
    """A fake gateway answer: ``status`` (``b"429 Too Many Requests"``) with ``data``."""

    def answer(conn: socket.socket, body: bytes) -> None:
        conn.sendall(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/json\r\n"
            + headers
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    return answer


def forward(member: Member, conn: socket.socket, path: str, body: bytes) -> None:
    """Answer a fake member's request with what ``member`` answers to it."""
    req = urllib.request.Request(
        member.url + path, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        data, status = exc.read(), exc.code
    conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)


def etcd_error(message: str, code: int) -> bytes:
    """The body of etcd's refusal of a request (its gateway's JSON)."""
    return json.dumps({"error": message, "code": code, "message": message}).encode()


def b64s(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_large_answer_of_tiny_values_is_refused_before_decoding(etcd: Member) -> None:
    # 8 MiB of "[]," would take seconds of json.loads with the GIL held (and ~200 MB); the
    # answer to a read of the access lists can hold a few values of at most ~2 MiB.
    tiny = b'{"header":{"revision":"1"},"kvs":[],"x":[' + b"[]," * ((8 << 20) // 3) + b"[]]}"
    small = b'{"header":{"revision":"1"},"count":"1","x":[' + b"[]," * 5000 + b"[]]}"
    for data in (tiny, small):  # (small: within the bytes of a count, not its values)
        with fake_gateway(raw_answer(b"200 OK", data)) as url:
            alone = EtcdStore(url, prefix())
            with_etcd = EtcdStore([url, etcd.url], prefix())
            try:
                started = time.monotonic()
                with pytest.raises(errors.OverloadedError) as info:
                    alone.get_access(timeout=2.0) if data is tiny else alone.size()
                assert info.value.action is errors.RetryAction.RETRY_BACKOFF
                assert time.monotonic() - started < 1.0
                assert with_etcd.get_access(timeout=2.0) is None  # the next member answers
                assert with_etcd.size() == 0
            finally:
                alone.close()
                with_etcd.close()


def test_an_expiry_beyond_a_float_is_a_malformed_mount(etcd: Member) -> None:
    pfx = prefix()
    value = b'{"e": 1' + b"0" * 400 + b', "mt": false, "l": false}'
    etcd_post(
        etcd,
        "/v3/kv/put",
        {"key": b64s(f"{pfx}m/svc\x00/127.0.0.1:9".encode()), "value": b64s(value)},
    )
    store = EtcdStore(etcd.url, pfx)
    try:
        assert store.resolve(("svc",)) is None
        assert store.glob((), ("...",)) == []
        store.mount(("svc",), "/127.0.0.1:5", 10.0, mt=False, leaf=False, replace=False)
        found = store.resolve(("svc",))
        assert found is not None and [s for s, _ in found.servers] == ["/127.0.0.1:5"]
    finally:
        store.close()


def test_max_mounts_holds_when_replicas_mount_at_once(etcd: Member) -> None:
    pfx = prefix()
    stores = [EtcdStore(etcd.url, pfx, max_mounts=5) for _ in range(4)]
    barrier = threading.Barrier(24)
    outcomes: dict[int, str] = {}

    def mount(i: int) -> None:
        barrier.wait(10)
        try:
            stores[i % 4].mount(
                (f"n{i}",),
                f"/127.0.0.1:{1000 + i}",
                60.0,
                mt=False,
                leaf=False,
                replace=i % 2 == 1,
                timeout=10.0,
            )
            outcomes[i] = "ok"
        except errors.OverloadedError as exc:
            outcomes[i] = "full" if exc.action is errors.RetryAction.NO_RETRY else "busy"

    threads = [threading.Thread(target=mount, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(outcomes) == 24
        ok = list(outcomes.values()).count("ok")
        assert 1 <= ok <= 5 and stores[0].size() == ok
        assert etcd_count(etcd, pfx + "m/") == ok
    finally:
        for s in stores:
            s.close()


FAILED_MEMBER = {
    "429": raw_answer(
        b"429 Too Many Requests",
        etcd_error("etcdserver: too many requests", 8),
    ),
    "redirect": raw_answer(b"307 Temporary Redirect", b"", b"Location: http://127.0.0.1:1/\r\n"),
    "404 of a proxy": raw_answer(b"404 Not Found", b'{"code":5,"message":"Not Found"}'),
    "400 empty": raw_answer(b"400 Bad Request", b""),
    "200 list": raw_answer(b"200 OK", b"[1,2]"),
    "oversized": raw_answer(
        b"200 OK", b'{"header":{"revision":"1"},"x":"' + b"a" * 300_000 + b'"}'
    ),
}


@pytest.mark.parametrize("what", list(FAILED_MEMBER))
def test_a_member_answering_what_etcd_would_not_is_failed_over(etcd: Member, what: str) -> None:
    pfx = prefix()
    good = EtcdStore(etcd.url, pfx)
    good.mount(("svc",), "/127.0.0.1:5", 60.0, mt=False, leaf=False, replace=False)
    good.close()
    with fake_gateway(FAILED_MEMBER[what]) as url:
        bound = 256 * 1024  # ("oversized": the answer is larger)
        store = EtcdStore([url, etcd.url], pfx, max_response_bytes=bound)
        alone = EtcdStore(url, pfx, max_response_bytes=bound)
        try:
            found = store.resolve(("svc",), timeout=4.0)
            assert found is not None and found.servers[0][0] == "/127.0.0.1:5"
            store.unmount(("other",), "", timeout=4.0)
            assert store.size() == 1
            with pytest.raises(errors.OverloadedError) as info:
                alone.size()
            assert info.value.action is errors.RetryAction.RETRY_BACKOFF
        finally:
            store.close()
            alone.close()


def test_lease_not_found_without_a_lease_is_an_internal_error() -> None:
    refusal = etcd_error("etcdserver: requested lease not found", 5)
    with fake_gateway(raw_answer(b"404 Not Found", refusal)) as url:
        store = EtcdStore(url, prefix())
        try:
            operations: list[Callable[[], object]] = [
                lambda: store.resolve(("svc",)),
                lambda: store.unmount(("svc",), ""),
                store.get_access,
                lambda: store.mount(
                    ("svc",), "/127.0.0.1:5", 10.0, mt=False, leaf=False, replace=False
                ),
            ]
            for operation in operations:
                with pytest.raises(errors.InternalError, match="lease not found"):
                    operation()
        finally:
            store.close()


def test_a_lone_surrogate_is_a_bad_argument(etcd: Member) -> None:
    store = EtcdStore(etcd.url, prefix())
    try:
        operations: list[Callable[[], object]] = [
            lambda: store.mount(
                ("a\ud800",), "/127.0.0.1:5", 10.0, mt=False, leaf=False, replace=False
            ),
            lambda: store.mount(
                ("a",), "/127.0.0.1:5\udc00", 10.0, mt=False, leaf=False, replace=False
            ),
            lambda: store.resolve(("a\ud800", "b")),
            lambda: store.unmount(("a\ud800",), ""),
            lambda: store.unmount(("a",), "/\ud800"),
            lambda: store.glob(("a\ud800",), ("*",)),
        ]
        for operation in operations:
            with pytest.raises(errors.BadArgError):
                operation()
    finally:
        store.close()


def test_a_glob_scans_again_when_etcd_compacts_its_revision(etcd: Member) -> None:
    pfx = prefix()
    value = b64s(json.dumps({"e": time.time() + 3600, "mt": False, "l": False}).encode())
    puts = [
        {"request_put": {"key": b64s(f"{pfx}m/n{i:02d}\x00/127.0.0.1:1".encode()), "value": value}}
        for i in range(30)
    ]
    etcd_post(etcd, "/v3/kv/txn", {"success": puts})
    pages = {"n": 0}

    def compacting(conn: socket.socket, path: str, body: bytes) -> None:
        if path == "/v3/kv/range":
            pages["n"] += 1
            if pages["n"] == 2:  # between the first two pages: writes, then a compaction
                revision = etcd_post(etcd, "/v3/kv/put", {"key": b64s(b"/other"), "value": ""})
                etcd_post(etcd, "/v3/kv/compaction", {"revision": revision["header"]["revision"]})
        forward(etcd, conn, path, body)

    with fake_member(compacting) as url:
        # A gateway bound of ten keys' worth: pages of ten keys.
        store = EtcdStore(url, pfx, max_response_bytes=10 * (48 * 1024 + 2 * len(pfx)) + 100)
        try:
            items = store.glob((), ("...",), timeout=5.0)
            assert [i["name"] for i in items] == [f"n{i:02d}" for i in range(30)]
            assert pages["n"] > 4  # (the scan began again)
        finally:
            store.close()

    compacted = etcd_error("etcdserver: mvcc: required revision has been compacted", 11)
    first = json.dumps(
        {
            "header": {"revision": "9"},
            "more": True,
            "kvs": [{"key": b64s(pfx.encode() + b"m/a\x00/s"), "value": value}],
        }
    ).encode()

    def always_compacted(conn: socket.socket, body: bytes) -> None:
        data, status = (
            (compacted, b"400 Bad Request") if b"revision" in body else (first, b"200 OK")
        )
        raw_answer(status, data)(conn, body)

    with fake_gateway(always_compacted) as url:
        store = EtcdStore(url, pfx)
        try:
            with pytest.raises(errors.OverloadedError) as info:
                store.glob((), ("...",), timeout=5.0)
            assert info.value.action is errors.RetryAction.RETRY_BACKOFF
        finally:
            store.close()


def test_a_glob_of_a_name_does_not_read_its_siblings(etcd: Member) -> None:
    pfx = prefix()
    value = b64s(json.dumps({"e": time.time() + 3600, "mt": False, "l": False}).encode())
    names = [f"a-{i:03d}" for i in range(100)] + ["a/b", "a/c"]
    puts = [
        {"request_put": {"key": b64s(f"{pfx}m/{n}\x00/127.0.0.1:1".encode()), "value": value}}
        for n in names
    ]
    etcd_post(etcd, "/v3/kv/txn", {"success": puts})
    keys = {"n": 0}

    def counting(conn: socket.socket, path: str, body: bytes) -> None:
        req = urllib.request.Request(
            etcd.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        keys["n"] += len(json.loads(data).get("kvs", []))
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)

    with fake_member(counting) as url:
        # A gateway bound of five keys' worth: pages of five keys.
        store = EtcdStore(url, pfx, max_response_bytes=5 * (48 * 1024 + 2 * len(pfx)) + 100)
        try:
            assert [i["name"] for i in store.glob(("a",), ("*",))] == ["b", "c"]
            assert keys["n"] == 5 + 2  # a page of siblings at most, then "a/b" and "a/c"
        finally:
            store.close()


def test_refreshes_with_ever_different_ttls_share_leases(etcd: Member) -> None:
    def leases() -> int:
        return len(etcd_post(etcd, "/v3/lease/leases", {}).get("leases", []))

    store = EtcdStore(etcd.url, prefix())
    try:
        before = leases()
        for i in range(100):  # one mount refreshed with a new TTL each time
            store.mount(("svc",), "/127.0.0.1:5", 80000.0 + i, mt=False, leaf=False, replace=False)
        assert leases() - before <= 2
        store.unmount(("svc",), "")
    finally:
        store.close()


# -- a call's cancel ends the store's wait on etcd ------------------------------------------


def _cancel_after(seconds: float) -> Context:
    """A context with a long deadline, cancelled ``seconds`` from now."""
    c = Context.background().with_timeout(30)
    timer = threading.Timer(seconds, c.cancel)
    timer.daemon = True
    timer.start()
    return c


def test_a_request_to_a_silent_member_ends_when_its_context_is_cancelled(
    stack: contextlib.ExitStack,
) -> None:
    """Before, a request waited for its deadline (30 s here) whatever its caller's context
    said; now a cancel shuts the connection in use, plain or TLS, and the request ends with
    CanceledError at once (a context done before the request: nothing is sent)."""
    port = silent_member(stack)
    for scheme in ("http", "https"):
        gateway = EtcdGateway(f"{scheme}://127.0.0.1:{port}")
        stack.callback(gateway.close)
        started = time.monotonic()
        with pytest.raises(errors.CanceledError):
            gateway.request("/v3/kv/range", {"key": "YQ=="}, 30.0, ctx=_cancel_after(0.3))
        assert time.monotonic() - started < 2.0, scheme
    done = Context.background().with_cancel()
    done.cancel()
    started = time.monotonic()
    with pytest.raises(errors.CanceledError):
        EtcdGateway(f"http://127.0.0.1:{port}").request("/v3/kv/range", {}, 30.0, ctx=done)
    assert time.monotonic() - started < 0.5


def test_the_store_ends_its_wait_when_the_call_it_serves_is_cancelled(
    stack: contextlib.ExitStack,
) -> None:
    port = silent_member(stack)
    store = EtcdStore(f"http://127.0.0.1:{port}", prefix())
    stack.callback(store.close)
    token = CALL_CONTEXT.set(_cancel_after(0.3))
    try:
        started = time.monotonic()
        with pytest.raises(errors.CanceledError):
            store.resolve(("a",), timeout=30.0)
        assert time.monotonic() - started < 2.0
    finally:
        CALL_CONTEXT.reset(token)


@pytest.mark.parametrize("access_due", [False, True])
def test_a_cancelled_mount_stops_waiting_on_a_stopped_etcd(
    stack: contextlib.ExitStack, family: Family, etcd: Member, access_due: bool
) -> None:
    """etcd stops answering (its process stopped: a hung host); a client's Mount is
    cancelled: the replica's method ends then, not at the call's deadline, whether it waits
    for the mount or (``access_due``) for the access lists first, and the cancel is not
    taken for a failure of the store (which would refuse every call for a second)."""
    server, mt, table = replica(stack, family, etcd.url, prefix())
    client = client_for(stack, family.member("admin"), mt)
    client.call(ctx(), at(mt, "a"), "Mount", "/127.0.0.1:8001", 60.0, 0)
    if access_due:
        table._cached_at = -math.inf  # (as once ACCESS_REFRESH has passed)
    assert etcd.proc is not None
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        c = _cancel_after(0.5)
        with pytest.raises(errors.CanceledError):
            client.call(c, at(mt, "b"), "Mount", "/127.0.0.1:8002", 60.0, 0)
        cancelled = time.monotonic()
        while server._in_use:  # (before: the method went on until the call's 30 s)
            assert time.monotonic() - cancelled < 2.0, "the method still waits on etcd"
            time.sleep(0.01)
        assert table._failed is None
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    client.call(ctx(10), at(mt, "b"), "Mount", "/127.0.0.1:8002", 60.0, 0)
    assert servers_of(client, "b") == ["/127.0.0.1:8002"]


def _tls_files(directory: str) -> tuple[str, str, str]:
    """A test CA's certificate, and a certificate it issued for 127.0.0.1 with its key:
    files in ``directory`` (a temp folder)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipcclient test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths[0], paths[1], paths[2]


def test_a_member_over_tls_is_served_and_a_cancel_ends_a_request_to_it(
    stack: contextlib.ExitStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A real etcd serving its clients over HTTPS: the store mounts and resolves through
    it (the gateway makes the TLS handshake itself, so that a cancel can end it); with the
    member stopped, a cancelled request ends at once."""
    ca, cert, key = _tls_files(str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # (trusted by the default context, here only)
    with cluster(1, tls=(cert, key)) as (member,):
        assert member.url.startswith("https://")
        store = EtcdStore(member.url, prefix())
        stack.callback(store.close)
        store.mount(("tls",), "/127.0.0.1:8001", 30.0, mt=False, leaf=False, replace=False)
        found = store.resolve(("tls", "x"))
        assert found is not None and [s for s, _ in found.servers] == ["/127.0.0.1:8001"]
        assert member.proc is not None
        member.proc.send_signal(signal.SIGSTOP)
        try:
            token = CALL_CONTEXT.set(_cancel_after(0.3))
            try:
                started = time.monotonic()
                with pytest.raises(errors.CanceledError):
                    store.resolve(("tls",), timeout=30.0)
                assert time.monotonic() - started < 2.0
            finally:
                CALL_CONTEXT.reset(token)
        finally:
            member.proc.send_signal(signal.SIGCONT)
        found = store.resolve(("tls",))  # (a fresh connection after the one shut)
        assert found is not None


@contextlib.contextmanager
def unreachable_member() -> Iterator[tuple[int, Callable[[], None]]]:
    """The port of a listener whose queue of connections is full: the kernel drops the next
    SYNs, so a connect to it hangs, as to a host cut off by a network partition; and a
    function that makes room in the queue (the next SYN sent again gets in, and its
    connection waits there, never accepted: a member that never speaks)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued: list[socket.socket] = []

    def make_room() -> None:
        listener.setblocking(False)
        with contextlib.suppress(OSError):
            while True:
                queued.append(listener.accept()[0])

    try:
        for _ in range(8):  # (until a connect no longer completes at once)
            s = socket.socket()
            s.setblocking(False)
            queued.append(s)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        yield port, make_room
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_a_cancel_ends_a_connect_in_progress() -> None:
    """Before, a cancel during the TCP connect to a member that drops SYNs was seen only
    when the attempt's time ran out (10 s here): the socket did not exist yet for the
    cancel to shut. Now each socket is there before it connects."""
    with unreachable_member() as (port, _):
        gateway = EtcdGateway(f"http://127.0.0.1:{port}", timeout=10.0)
        try:
            started = time.monotonic()
            with pytest.raises(errors.CanceledError):
                gateway.request("/v3/kv/range", {"key": "YQ=="}, ctx=_cancel_after(0.3))
            assert time.monotonic() - started < 2.0
        finally:
            gateway.close()


def test_a_tls_handshake_keeps_to_the_request_deadline() -> None:
    """A connect that takes half the time (the member's queue full until its SYN is sent
    again, 1 s in), then a member that never answers the TLS handshake: the handshake was
    given the attempt's whole timeout again, and the request ended a second past its
    deadline."""
    with unreachable_member() as (port, make_room):
        gateway = EtcdGateway(f"https://127.0.0.1:{port}", timeout=2.0)
        timer = threading.Timer(0.5, make_room)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(errors.TimeoutError):
                gateway.request("/v3/kv/range", {"key": "YQ=="})
            assert time.monotonic() - started < 2.6
        finally:
            timer.join()
            gateway.close()


def test_a_cancel_running_late_never_shuts_a_connection_in_use_by_another_request() -> None:
    """A context's callbacks run after the cancel let its lock go, one after the other: a
    request that got its answer meanwhile gave its connection back to the idle pool, and
    the late abort shut it under the next request, which was then sent a second time on a
    fresh connection (found by an independent review; widened here by a slow callback of
    the same context that runs first)."""
    seen: collections.Counter[str] = collections.Counter()

    def answer(conn: socket.socket, path: str, body: bytes) -> None:
        seen[path] += 1
        time.sleep(0.2 if path == "/a" else 0.6)
        json_answer({})(conn, body)

    with fake_member(answer) as url:
        gateway = EtcdGateway(url)
        try:
            c = Context.background().with_cancel()
            c.add_done_callback(lambda _err: time.sleep(0.5))  # (runs before the abort's)
            threading.Timer(0.1, c.cancel).start()
            assert gateway.request("/a", {}, 5.0, ctx=c) == {}  # (answered before the abort)
            assert len(gateway._idle[0]) == 1
            assert gateway.request("/b", {}, 5.0) == {}  # (the late abort comes meanwhile)
            assert seen == {"/a": 1, "/b": 1}
        finally:
            gateway.close()
