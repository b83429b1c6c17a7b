"""Mount table replicas sharing their state through a real etcd (started by the fixtures).

Every replica is a real Server with a MountTable on an EtcdStore; clients are real Clients
over loopback TCP. The suite shared with the in-memory store is in tests/rpc/test_mounttable.py
(parametrized); these are the tests only a shared store can fail.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
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
from ipcclient.server.etcdstore import EtcdStore
from ipcclient.server.mounttable import MT, REPLACE, MountTable
from ipcclient.server.mounttabled import serve_mount_table
from ipcclient.server.server import Server
from tests.etcd_server import Member, cluster
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
                answer(conn, body)

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


def test_a_silent_tls_member_keeps_to_the_deadline(stack: contextlib.ExitStack) -> None:
    silent = socket.socket()
    stack.callback(silent.close)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    store = EtcdStore(f"https://127.0.0.1:{silent.getsockname()[1]}", prefix())
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
