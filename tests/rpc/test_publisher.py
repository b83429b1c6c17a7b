"""The publisher over real loopback TCP: mounts kept alive by refreshes, unmounted on stop."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import CallOption, NoRetry
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.mounttable import MAX_TTL, MT, MountTable
from ipcclient.server.publisher import Publisher
from tests.conftest import refuse_threads
from tests.rpc.test_mounttable import Family, Label, at, client_for, ctx, serving, wait_until


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


def _servers(client: Client, mt: str, name: str) -> list[str]:
    """The servers mounted at ``name`` in ``mt`` now (no client cache involved)."""
    try:
        (wire,) = client.call(ctx(), at(mt, name), "ResolveStep", options=(NoRetry(),))
    except errors.NoExistError:
        return []
    return [s["server"] for s in wire["servers"]]


def _publisher(stack: contextlib.ExitStack, client: Client, **kwargs: float) -> Publisher:
    pub = Publisher(client, client.namespace, **kwargs)
    stack.callback(pub.stop)
    return pub


def _published_setup(
    stack: contextlib.ExitStack, family: Family, *more_roots: str, **kwargs: float
) -> tuple[str, str, Client, Publisher]:
    """A mount table, a server to publish, a client whose roots are the table (and
    ``more_roots``), and a publisher on that client: (table, server, client, publisher)."""
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), mt, *more_roots)
    return mt, svc, client, _publisher(stack, client, **kwargs)


def test_refresh_keeps_a_mount_alive_beyond_its_ttl(
    stack: contextlib.ExitStack, family: Family
) -> None:
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    server, svc = serving(stack, family.member("server"), Label("pub"))
    client = client_for(stack, family.member("client"), mt)
    # (A refresh every 0.12 s: a stall of up to ~0.45 s of the refresher keeps the name.)
    pub = _publisher(stack, client, ttl=0.6, refresh_fraction=0.2)

    pub.add_name("apps/pub", server.endpoints)
    assert _servers(client, mt, "apps/pub") == [svc]
    first = pub.status()["apps/pub"]
    assert first.last_error is None and first.last_mount is not None

    end = time.monotonic() + 2.0  # more than three TTLs
    while time.monotonic() < end:
        assert _servers(client, mt, "apps/pub") == [svc]
        time.sleep(0.05)
    later = pub.status()["apps/pub"]
    assert later.last_error is None and later.last_mount is not None
    assert later.last_mount > first.last_mount
    assert client.call(ctx(), "apps/pub", "Who") == ("pub",)

    pub.stop()
    assert _servers(client, mt, "apps/pub") == []  # unmounted at once, not left to expire
    assert pub.names() == []
    with pytest.raises(errors.BadStateError):
        pub.add_name("again", server.endpoints)
    pub.stop()  # idempotent


def test_remove_name_and_replace_servers(stack: contextlib.ExitStack, family: Family) -> None:
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    server_a, svc_a = serving(stack, family.member("server"), Label("A"))
    server_b, svc_b = serving(stack, family.member("server2"), Label("B"))
    client = client_for(stack, family.member("client"), mt)
    pub = _publisher(stack, client, ttl=30.0)

    pub.add_name("x", server_a.endpoints)
    pub.add_name("y", [*server_a.endpoints, *server_b.endpoints])
    assert _servers(client, mt, "y") == [svc_a, svc_b]
    pub.add_name("x", server_b.endpoints)  # replaces: A is unmounted from x
    assert _servers(client, mt, "x") == [svc_b]
    pub.remove_name("y")
    assert _servers(client, mt, "y") == []
    assert pub.names() == ["x"]
    with pytest.raises(errors.BadArgError):
        pub.add_name("/rooted/name", server_a.endpoints)
    with pytest.raises(errors.BadArgError):
        pub.add_name("z", [])


def test_publish_through_two_levels_of_mount_tables(
    stack: contextlib.ExitStack, family: Family
) -> None:
    _, root_mt = serving(stack, family.member("mt"), table=MountTable())
    child, child_mt = serving(stack, family.member("childmt"), table=MountTable())
    server, svc = serving(stack, family.member("server"), Label("deep"))
    client = client_for(stack, family.member("client"), root_mt)
    pub = _publisher(stack, client, ttl=30.0)

    pub.add_name("child", child.endpoints, serves_mount_table=True)
    pub.add_name("child/deep/svc", server.endpoints)
    assert _servers(client, child_mt, "deep/svc") == [svc]  # it landed in the child table
    assert _servers(client, root_mt, "child") == [child_mt]
    assert client.call(ctx(), "child/deep/svc", "Who") == ("deep",)
    other = client_for(stack, family.member("client2"), root_mt)
    assert other.call(ctx(), "child/deep/svc", "Echo", "hi") == ("hi",)

    pub.stop()
    assert _servers(client, child_mt, "deep/svc") == []
    assert _servers(client, root_mt, "child") == []


def test_errors_are_recorded_and_retried_not_raised(
    stack: contextlib.ExitStack, family: Family, caplog: pytest.LogCaptureFixture
) -> None:
    table = MountTable(mount_patterns=("root:admin",))
    _, mt = serving(stack, family.member("mt"), table=table)
    server, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), mt)
    pub = _publisher(stack, client, ttl=0.4, refresh_fraction=0.5, call_timeout=2.0)

    with caplog.at_level(logging.WARNING, logger="ipcclient.publisher"):
        pub.add_name("p", server.endpoints)  # refused: logged and recorded, not raised
    status = pub.status()["p"]
    assert status.last_mount is None and status.last_error is not None
    assert "NoAccess" in status.last_error or "no_access" in status.last_error.lower()
    assert any("publishing 'p' failed" in r.getMessage() for r in caplog.records)

    # The refresher keeps trying; once the table lets this client mount, the name appears.
    table.set_access(mount_patterns=("...",), resolve_patterns=("...",))
    assert wait_until(lambda: _servers(client, mt, "p") == [svc], 3.0)
    assert wait_until(lambda: pub.status()["p"].last_error is None, 3.0)


def test_stop_is_bounded_when_the_mount_table_is_gone(
    stack: contextlib.ExitStack, family: Family
) -> None:
    mt_server, mt = serving(stack, family.member("mt"), table=MountTable())
    server, _ = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), mt)
    pub = _publisher(stack, client, ttl=30.0, call_timeout=1.0)
    pub.add_name("p", server.endpoints)
    mt_server.stop()
    start = time.monotonic()
    pub.stop(timeout=1.0)
    assert time.monotonic() - start < 3.0


def test_server_add_name_publishes_and_stop_unmounts(
    stack: contextlib.ExitStack, family: Family
) -> None:
    from ipcclient.server.server import Server

    _, mt = serving(stack, family.member("mt"), table=MountTable())
    sp = family.member("server")
    pub_client = client_for(stack, sp, mt)  # the server's own client, to reach the table
    server = Server(sp, publisher=Publisher(pub_client, pub_client.namespace, ttl=30.0))
    stack.callback(server.stop)
    svc = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve(Label("named"), AllowEveryone())
    server.add_name("apps/named")

    client = client_for(stack, family.member("client"), mt)
    assert _servers(client, mt, "apps/named") == [svc]
    assert client.call(ctx(), "apps/named", "Who") == ("named",)
    server.stop()
    assert _servers(client, mt, "apps/named") == []


@pytest.fixture
def silent_table(stack: contextlib.ExitStack) -> str:
    """The rooted name of a mount table host that accepts connections and never answers."""
    listener = socket.socket()
    stack.callback(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)

    threading.Thread(target=accept, daemon=True).start()

    def close_held() -> None:
        for conn in held:
            conn.close()

    stack.callback(close_held)
    return f"/127.0.0.1:{listener.getsockname()[1]}"


def test_a_silent_replica_costs_only_its_own_mounts(
    stack: contextlib.ExitStack, family: Family, silent_table: str
) -> None:
    # Two replicas as roots, the first never answers. Each table is mounted through in a lane
    # of its own with its own deadline, so the live replica keeps the name, and the silent one
    # shows in last_error; stop() unmounts through the live one as well.
    _, live = serving(stack, family.member("mt"), table=MountTable())
    server, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), silent_table, live)
    probe = client_for(stack, family.member("probe"))
    # (Resolution gives the silent root its share, 1 s, then asks the live one.)
    pub = _publisher(stack, client, ttl=30.0, call_timeout=2.0)

    start = time.monotonic()
    pub.add_name("p", server.endpoints)
    assert time.monotonic() - start < 5.0
    assert _servers(probe, live, "p") == [svc]
    status = pub.status()["p"]
    assert status.last_error is not None and silent_table in status.last_error
    assert live not in status.last_error

    start = time.monotonic()
    pub.stop(timeout=1.5)
    assert time.monotonic() - start < 3.0
    assert _servers(probe, live, "p") == []


class _PausedCaller:
    """Forwards to a client; once armed, the refresher thread's next Mount waits for ``go``
    (a mount table slow to answer), so the test can change the publisher meanwhile."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.armed = False
        self.started = threading.Event()
        self.go = threading.Event()
        self.landed = threading.Event()  # (the paused Mount returned)

    def call(
        self, c: Context, name: str, method: str, *args: Any, options: Sequence[CallOption] = ()
    ) -> tuple[Any, ...]:
        if method == "Mount" and self.armed and threading.current_thread().name == "ipc-publisher":
            self.armed = False
            self.started.set()
            self.go.wait(5.0)
            try:
                return self.client.call(c, name, method, *args, options=options)
            finally:
                self.landed.set()
        return self.client.call(c, name, method, *args, options=options)


@pytest.mark.parametrize("change", ["remove", "replace", "stop"])
def test_a_refresh_in_flight_does_not_undo_a_change(
    stack: contextlib.ExitStack, family: Family, change: str
) -> None:
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, svc_a = serving(stack, family.member("server"), Label("A"))
    _, svc_b = serving(stack, family.member("server2"), Label("B"))
    client = client_for(stack, family.member("client"), mt)
    caller = _PausedCaller(client)
    pub = Publisher(caller, client.namespace, ttl=5.0, refresh_fraction=0.05)
    stack.callback(pub.stop)

    pub.add_name("svc", [svc_a, svc_b])
    caller.armed = True
    assert caller.started.wait(5.0)  # the refresher is in its Mount of A
    if change == "remove":
        pub.remove_name("svc")
        expected: list[str] = []
    elif change == "replace":
        pub.add_name("svc", [svc_b])
        expected = [svc_b]
    else:
        threading.Timer(0.2, caller.go.set).start()  # the Mount lands after stop's join
        pub.stop(timeout=0.2)
        expected = []
    assert _servers(client, mt, "svc") == expected
    caller.go.set()  # the Mount of the old servers lands now, after the change
    assert caller.landed.wait(5.0)
    # (Well within the TTL: what the refresh mounted would still be there, unless undone.)
    assert wait_until(lambda: _servers(client, mt, "svc") == expected, 2.0)
    time.sleep(0.4)  # and the later refreshes do not bring them back either
    assert _servers(client, mt, "svc") == expected


def test_a_ttl_beyond_the_tables_max_is_asked_as_the_max(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The table grants at most MAX_TTL; a publisher asking more would refresh too late (a
    # 3-day TTL refreshed every 36 h leaves the name unmounted 12 h of every 36), and a huge
    # one must not break the refresher's wait.
    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: died.append(repr(a.exc_value)))
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    server, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), mt)
    asked: list[float] = []

    class Recording:
        def call(
            self, c: Context, name: str, method: str, *args: Any, options: Sequence[CallOption] = ()
        ) -> tuple[Any, ...]:
            if method == "Mount":
                asked.append(args[1])
            return client.call(c, name, method, *args, options=options)

    for ttl in (3 * 86400.0, 1e12, 10**400):
        pub = Publisher(Recording(), client.namespace, ttl=ttl)
        stack.callback(pub.stop)
        pub.add_name(f"p{len(asked)}", server.endpoints)
    assert asked == [MAX_TTL] * 3
    assert _servers(client, mt, "p1") == [svc]
    time.sleep(0.2)
    assert died == []
    for bad in (0, -1.0, math.nan, math.inf, True, "60", -(10**400)):
        with pytest.raises(errors.BadArgError):
            Publisher(client, client.namespace, ttl=bad)  # type: ignore[arg-type]
        with pytest.raises(errors.BadArgError):
            Publisher(client, client.namespace, call_timeout=bad)  # type: ignore[arg-type]
    pub = Publisher(client, client.namespace)
    for bad in (None, "x", math.nan):  # (a TypeError before; NaN was taken as no time)
        with pytest.raises(errors.BadArgError, match="stop's timeout"):
            pub.stop(bad)  # type: ignore[arg-type]
    pub.stop(0.5)  # (still stops)


def test_add_name_changes_the_flags_of_a_published_name(
    stack: contextlib.ExitStack, family: Family
) -> None:
    mt, svc, client, pub = _published_setup(stack, family, ttl=60.0)

    for smt in (False, True, False):
        pub.add_name("svc", [svc], serves_mount_table=smt)
        (wire,) = client.call(ctx(), at(mt, "svc"), "ResolveStep", options=(NoRetry(),))
        assert wire["serves_mount_table"] is smt
        assert [s["server"] for s in wire["servers"]] == [svc]
        assert pub.status()["svc"].last_error is None


class _GatedCaller:
    """Forwards to a client; the first Mount and the first Unmount made from the thread named
    ``thread`` each wait until the test lets them go (a mount table slow to answer), so the
    test can change the publisher between a call's start and its answer."""

    def __init__(self, client: Client, thread: str) -> None:
        self.client = client
        self.thread = thread
        self.reached = {"Mount": threading.Event(), "Unmount": threading.Event()}
        self.release = {"Mount": threading.Event(), "Unmount": threading.Event()}

    def call(
        self, c: Context, name: str, method: str, *args: Any, options: Sequence[CallOption] = ()
    ) -> tuple[Any, ...]:
        if threading.current_thread().name == self.thread and method in self.reached:
            self.reached[method].set()
            self.release[method].wait(5.0)
        return self.client.call(c, name, method, *args, options=options)


def test_the_undo_of_a_late_mount_keeps_a_server_published_again(
    stack: contextlib.ExitStack, family: Family
) -> None:
    # A refresh's Mount lands after remove_name, so the refresh unmounts it again; while that
    # Unmount is in flight, add_name publishes the same server once more and mounts it. The
    # undo lands after that Mount: the refresh must see the server is published and mount it
    # again, not leave the name published and unmounted until the next refresh.
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("A"))
    client = client_for(stack, family.member("client"), mt)
    caller = _GatedCaller(client, "test-refresh")
    pub = Publisher(caller, client.namespace, ttl=60.0)  # (no refresh of its own meanwhile)
    stack.callback(pub.stop)

    pub.add_name("svc", [svc])
    refresh = threading.Thread(target=pub.refresh_now, name="test-refresh", daemon=True)
    refresh.start()
    assert caller.reached["Mount"].wait(5.0)  # the refresh's Mount is in flight
    pub.remove_name("svc")
    assert _servers(client, mt, "svc") == []
    caller.release["Mount"].set()  # it lands after the Unmount ...
    assert caller.reached["Unmount"].wait(5.0)  # ... and the refresh is undoing it
    assert _servers(client, mt, "svc") == [svc]
    pub.add_name("svc", [svc])  # published again meanwhile, and mounted
    assert _servers(client, mt, "svc") == [svc]
    caller.release["Unmount"].set()  # the undo lands after add_name's Mount
    refresh.join(5.0)
    assert not refresh.is_alive()
    assert _servers(client, mt, "svc") == [svc]
    assert pub.names() == ["svc"]
    assert pub.status()["svc"].last_error is None


def test_a_change_of_flags_replaces_once_per_table(
    stack: contextlib.ExitStack, family: Family
) -> None:
    # Two replicas; the second refuses this publisher's Mounts for now. After a change of
    # serves_mount_table, the live one takes the REPLACE Mount once: the refreshes after it
    # do not wipe the name there again (evicting what another process mounted under it),
    # however long the other replica keeps failing.
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    refusing = MountTable(mount_patterns=("root:admin",))
    _, mt2 = serving(stack, family.member("mt2"), table=refusing)
    _, svc = serving(stack, family.member("server"), Label("p"))
    _, svc2 = serving(stack, family.member("server2"), Label("q"))
    client = client_for(stack, family.member("client"), mt, mt2)
    other = client_for(stack, family.member("other"))
    pub = _publisher(stack, client, ttl=60.0)

    def flags_at(table: str) -> bool:
        (wire,) = client.call(ctx(), at(table, "svc"), "ResolveStep", options=(NoRetry(),))
        return bool(wire["serves_mount_table"])

    pub.add_name("svc", [svc])
    pub.add_name("svc", [svc], serves_mount_table=True)  # REPLACE at mt; mt2 refuses
    assert flags_at(mt) is True and _servers(client, mt, "svc") == [svc]
    error = pub.status()["svc"].last_error
    assert error is not None and mt2 in error and mt not in error.replace(mt2, "")
    # Another process mounts under the same name with the same flags.
    other.call(ctx(), at(mt, "svc"), "Mount", svc2, 60.0, MT, options=(NoRetry(),))
    for _ in range(2):
        pub.refresh_now()  # mt2 still refuses: the name is not done replacing there
        assert _servers(client, mt, "svc") == [svc, svc2]
    assert pub.status()["svc"].last_error is not None

    # Changing the flags again starts over: every table takes a REPLACE Mount once more.
    pub.add_name("svc", [svc], serves_mount_table=False)
    assert flags_at(mt) is False and _servers(client, mt, "svc") == [svc]
    refusing.set_access(mount_patterns=("...",), resolve_patterns=("...",))
    pub.refresh_now()
    assert pub.status()["svc"].last_error is None
    assert flags_at(mt2) is False and _servers(client, mt2, "svc") == [svc]
    other.call(ctx(), at(mt, "svc"), "Mount", svc2, 60.0, 0, options=(NoRetry(),))
    pub.refresh_now()
    assert _servers(client, mt, "svc") == [svc, svc2]


def test_a_lane_whose_thread_cannot_start_runs_in_the_calling_thread(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the process's thread limit the second replica's lane cannot have a thread: it runs
    # in the calling thread instead, so add_name mounts through both and does not raise,
    # and stop() still unmounts through both.
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, mt2 = serving(stack, family.member("mt2"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), mt, mt2)
    pub = _publisher(stack, client, ttl=60.0)
    refuse_threads(monkeypatch, "ipc-publisher-lane")

    pub.add_name("svc", [svc])
    assert _servers(client, mt, "svc") == [svc]
    assert _servers(client, mt2, "svc") == [svc]
    assert pub.status()["svc"].last_error is None
    pub.stop()
    assert _servers(client, mt, "svc") == []
    assert _servers(client, mt2, "svc") == []


def test_the_mounts_through_one_table_share_one_call_timeout(
    stack: contextlib.ExitStack, family: Family, silent_table: str
) -> None:
    # Three servers, a live replica and a silent one: the silent one's lane costs one
    # call_timeout in all (not one per server), and the live one keeps all three.
    _, live = serving(stack, family.member("mt"), table=MountTable())
    svcs = [serving(stack, family.member(f"server{i}"), Label(str(i)))[1] for i in range(3)]
    client = client_for(stack, family.member("client"), live, silent_table)
    pub = _publisher(stack, client, ttl=60.0, call_timeout=0.6)

    start = time.monotonic()
    pub.add_name("p", svcs)
    assert time.monotonic() - start < 1.4  # (one call_timeout per server would be 1.8 s)
    assert _servers(client, live, "p") == svcs
    error = pub.status()["p"].last_error
    assert error is not None and silent_table in error and live not in error

    start = time.monotonic()
    pub.refresh_now()
    assert time.monotonic() - start < 1.4
    assert _servers(client, live, "p") == svcs

    start = time.monotonic()
    pub.remove_name("p")
    assert time.monotonic() - start < 1.4
    assert _servers(client, live, "p") == []


def test_a_refresher_that_cannot_start_fails_nothing_and_starts_later(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the process's thread limit the refresher cannot start: add_name still mounts (it
    # raised RuntimeError, and stop() then failed joining the unstarted thread), status()
    # says the name is not refreshed, refresh_now (or add_name) starts the refresher, and
    # stop() unmounts.
    mt, svc, client, pub = _published_setup(stack, family, ttl=60.0)
    refuse_threads(monkeypatch, "ipc-publisher")
    pub.add_name("svc", [svc])
    assert _servers(client, mt, "svc") == [svc]
    assert pub._thread is None
    error = pub.status()["svc"].last_error  # (it said nothing while the name expired)
    assert error is not None and "not refreshed" in error
    monkeypatch.undo()
    pub.refresh_now()  # (tries the refresher again)
    assert pub._thread is not None and pub._thread.is_alive()
    assert pub.status()["svc"].last_error is None
    pub.add_name("other", [svc])
    pub.stop()
    assert _servers(client, mt, "svc") == []
    assert _servers(client, mt, "other") == []


def test_stop_unmounts_many_names_through_one_table(
    stack: contextlib.ExitStack, family: Family
) -> None:
    # The unmounts of stop() share call_timeout per name at each table, not across every
    # name (many names on one healthy table were left mounted once call_timeout had passed).
    mt, svc, client, pub = _published_setup(stack, family, ttl=60.0, call_timeout=0.5)
    names = [f"n{i}" for i in range(40)]
    for name in names:
        pub.add_name(name, [svc])
    slow = client.call

    def slower(ctx: Any, name: str, method: str, *args: Any, **kw: Any) -> Any:
        if method == "Unmount":
            time.sleep(0.05)  # (40 x 50 ms: far past one call_timeout, well within stop's)
        return slow(ctx, name, method, *args, **kw)

    pub._caller = types.SimpleNamespace(call=slower)
    pub.stop(timeout=20)
    assert all(_servers(client, mt, name) == [] for name in names)


def test_stop_gives_up_on_a_table_that_does_not_answer(
    stack: contextlib.ExitStack, family: Family, silent_table: str
) -> None:
    # A replica that does not answer costs stop() one call_timeout, not one per name (each
    # name's unmounts there waited out a call_timeout of their own); the live one is cleared.
    live, svc, client, pub = _published_setup(
        stack, family, silent_table, ttl=60.0, call_timeout=0.3
    )
    names = [f"n{i}" for i in range(10)]
    for name in names:
        pub.add_name(name, [svc])
    start = time.monotonic()
    pub.stop(timeout=20)
    assert time.monotonic() - start < 1.5  # (one call_timeout per name would be 3 s)
    assert all(_servers(client, live, name) == [] for name in names)


def test_status_says_not_refreshed_beside_a_mount_error(
    stack: contextlib.ExitStack, family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name whose Mount failed while the refresher cannot start shows both: the error, and
    # that nothing will retry it (it showed the error alone, which promises a retry).
    _, svc = serving(stack, family.member("server"), Label("p"))
    client = client_for(stack, family.member("client"), "/127.0.0.1:1")  # (nothing there)
    pub = _publisher(stack, client, ttl=60.0, call_timeout=0.5)
    refuse_threads(monkeypatch, "ipc-publisher")
    pub.add_name("svc", [svc])
    error = pub.status()["svc"].last_error
    assert error is not None and "not refreshed" in error
    assert error.index("not refreshed") > 0  # (after the mount's own error)


def test_a_silent_replica_does_not_let_names_expire_at_the_live_one(
    stack: contextlib.ExitStack, family: Family, silent_table: str
) -> None:
    # Eight names, a live replica and a silent one. Each refresh mounts every name through
    # the live one at once; the silent one costs the refresh one call_timeout in all (the
    # names after the first are not asked there), not one per name: 8 x 0.4 s per refresh
    # would outlast the 1.6 s TTL, and the names would expire at the live table.
    live, svc, _, pub = _published_setup(
        stack, family, silent_table, ttl=1.6, refresh_fraction=0.5, call_timeout=0.4
    )
    probe = client_for(stack, family.member("probe"))
    names = [f"n{i}" for i in range(8)]
    for name in names:
        pub.add_name(name, [svc])

    missing: list[str] = []
    end = time.monotonic() + 4.0  # two and a half TTLs, three or four refreshes
    while time.monotonic() < end:
        missing += [n for n in names if _servers(probe, live, n) != [svc]]
        time.sleep(0.1)
    assert missing == []

    start = time.monotonic()
    pub.refresh_now()
    assert time.monotonic() - start < 1.2  # (one call_timeout per name would be 3.2 s)
    for name in names:
        error = pub.status()[name].last_error
        assert error is not None and silent_table in error and live not in error
    assert sum("not asked" in (pub.status()[n].last_error or "") for n in names) >= 6


@pytest.mark.parametrize(
    ("name", "server"),
    [
        ("ok", "not an endpoint"),
        ("ok", "tcp@@x"),
        ("ok", "/@1@tcp@nonsense"),
        ("ok", "/127.0.0.1:1" + "/x" * 3000),  # longer than a mount table takes
        ("__reserved/x", None),
        ("a/__b", None),
        ("a/b\x00c", None),
    ],
)
def test_add_name_refuses_what_no_mount_table_takes(
    stack: contextlib.ExitStack, family: Family, name: str, server: str | None
) -> None:
    # Raised at once, nothing published or asked of the table: the refreshes would only
    # retry, forever, a Mount every table refuses.
    mt, svc, client, pub = _published_setup(stack, family, ttl=60.0)
    pub.add_name("good", [svc])
    start = time.monotonic()
    with pytest.raises(errors.BadArgError):
        pub.add_name(name, [svc, server] if server is not None else [svc])
    assert time.monotonic() - start < 0.5
    assert pub.names() == ["good"]
    assert pub.status()["good"].last_error is None
    if server is not None:
        assert _servers(client, mt, name) == []
    # A short form (a mount table's host:port) and a rooted name with a suffix are servers.
    pub.add_name("other", ["127.0.0.1:1", svc + "/sub"])
    assert _servers(client, mt, "other") == ["/127.0.0.1:1", svc + "/sub"]
