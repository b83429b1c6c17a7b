"""The mount table over real loopback TCP: real Servers, MountTables, Clients, principals.

The helpers at the top (:class:`Family`, :func:`serving`) are shared with the discharger and
publisher tests. Every Server and Client a test makes is closed by an ``ExitStack``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming import Endpoint, names
from ipcclient.naming.namespace import MountEntry
from ipcclient.options import NoRetry
from ipcclient.security import Principal, caveats
from ipcclient.security.caveats import Caveat
from ipcclient.server import mountstore
from ipcclient.server.authorizer import AllowEveryone, Authorizer
from ipcclient.server.etcdstore import EtcdStore
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import LEAF, MT, REPLACE, MountTable
from ipcclient.server.server import Server, ServerCall
from ipcclient.wire.messages import encode_messages, split_messages

# -- shared helpers ------------------------------------------------------------------------


class Family:
    """Principals blessed by one root, each trusting it (``root:<ext>``)."""

    def __init__(self, root_name: str = "root") -> None:
        self.root = Principal.generate()
        self.root_blessings = self.root.bless_self(root_name)

    def member(self, ext: str, cavs: Sequence[Caveat] = ()) -> Principal:
        p = Principal.generate()
        b = self.root.bless(
            p.public_key, self.root_blessings, ext, list(cavs) or [caveats.unconstrained_use()]
        )
        p.store.default = b
        p.store.set(b, "...")
        p.roots.add_blessings(self.root_blessings)
        return p


@expose
class Label:
    """A service that says who it is and echoes."""

    def __init__(self, label: str) -> None:
        self.label = label

    def Who(self, call: ServerCall) -> str:
        return self.label

    def Echo(self, call: ServerCall, value: Any) -> Any:
        return value


def ctx(seconds: float = 5.0) -> Context:
    return Context.background().with_timeout(seconds)


def serving(
    stack: contextlib.ExitStack,
    principal: Principal,
    obj: Any = None,
    *,
    authorizer: Authorizer | None = None,
    table: MountTable | None = None,
) -> tuple[Server, str]:
    """A started server (closed by ``stack``) and its rooted name ``/<endpoint>``."""
    server = Server(principal, serves_mount_table=table is not None)
    stack.callback(server.stop)
    ep = server.listen("tcp", "127.0.0.1:0")
    if table is not None:
        server.serve_dispatcher(table)
    else:
        server.serve(obj, authorizer if authorizer is not None else AllowEveryone())
    return server, "/" + ep


def client_for(stack: contextlib.ExitStack, principal: Principal, *roots: str) -> Client:
    client = Client(principal, roots=list(roots))
    stack.callback(client.close)
    return client


def at(table_name: str, name: str) -> str:
    """The terminal name of ``name`` inside the mount table ``table_name``."""
    return names.join_address_name(table_name, name, terminal=True)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


TableFactory = Callable[..., MountTable]


@pytest.fixture(params=["memory", "etcd"])
def make_table(request: pytest.FixtureRequest) -> Iterator[TableFactory]:
    """``make_table(**kwargs)`` -> a MountTable on the storage under test: in memory, or in
    the session's real etcd under a prefix of its own (one per table made)."""
    made: list[MountTable] = []

    def make(**kwargs: Any) -> MountTable:
        if request.param == "memory":
            table = MountTable(**kwargs)
        else:
            member = request.getfixturevalue("etcd")
            prefix = f"/test/{uuid.uuid4().hex}/"
            table = MountTable(store=EtcdStore(member.url, prefix), **kwargs)
        made.append(table)
        return table

    yield make
    for table in made:
        table.close()


# -- tests ---------------------------------------------------------------------------------


def test_mount_then_call_by_relative_name(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    _, svc = serving(stack, family.member("server"), Label("echo"))
    client = client_for(stack, family.member("client"), mt)

    assert client.call(ctx(), at(mt, "apps/echo"), "Mount", svc, 30.0, 0) == ()
    assert client.call(ctx(), "apps/echo", "Echo", [1, "two"]) == ([1, "two"],)
    entry = client.namespace.resolve(ctx(), "apps/echo/sub")
    assert [s.server for s in entry.servers] == [svc]
    assert entry.name == "sub" and not entry.serves_mount_table
    assert 25 < entry.servers[0].deadline - time.monotonic() <= 30

    (wire,) = client.call(ctx(), at(mt, "apps/echo/x/y"), "ResolveStep")
    got = MountEntry.from_wire(wire, 0.0)
    assert got.name == "x/y" and [s.server for s in got.servers] == [svc]
    with pytest.raises(errors.NoExistError):
        client.call(ctx(), at(mt, "apps"), "ResolveStep", options=(NoRetry(),))
    with pytest.raises(errors.NoServersError):
        client.call(ctx(), "apps/other", "Who", options=(NoRetry(),))


def test_a_leading_slash_of_the_suffix_is_ignored_by_the_table(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """The spec lets a request's suffix start with ``/``; the table must see the same name
    the dispatcher does (it mounted ``/apps/echo`` at ``echo``, taking ``apps`` for an
    address)."""
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("echo"))
    client = client_for(stack, family.member("client"), mt)
    with pytest.raises(errors.NoExistError):  # (and the client now has a VC to the table)
        client.call(ctx(), at(mt, "apps/echo"), "ResolveStep", options=(NoRetry(),))
    (conn,) = client._vcs.values()
    flow = conn.connect()
    header = {"suffix": "/apps/echo", "method": "Mount", "nargs": 3}
    flow.write(encode_messages(header, svc, 30.0, 0, {"end_stream_args": True}), end=True)
    reply = b""
    while chunk := flow.read(time.monotonic() + 5):
        reply += chunk
    flow.close()
    assert split_messages(reply) == [{"end": True}]
    assert client.call(ctx(), "apps/echo", "Who") == ("echo",)
    (wire,) = client.call(ctx(), at(mt, "apps/echo"), "ResolveStep")
    assert [s.server for s in MountEntry.from_wire(wire, 0.0).servers] == [svc]


def test_a_callers_huge_integers_are_taken_or_refused_with_a_bad_arg(
    stack: contextlib.ExitStack, family: Family
) -> None:
    """A ttl too large for a float is the longest ttl (it once answered ipc.Unknown with an
    OverflowError, and logged it); flags too long to print are refused as bad flags (a
    ValueError once)."""
    _, mt = serving(stack, family.member("mt"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("echo"))
    client = client_for(stack, family.member("client"), mt)
    assert client.call(ctx(), at(mt, "a"), "Mount", svc, 2**2000, 0) == ()
    entry = client.namespace.resolve(ctx(), "a")
    assert [s.server for s in entry.servers] == [svc]
    with pytest.raises(errors.BadArgError, match="bad flags"):
        client.call(ctx(), at(mt, "b"), "Mount", svc, 10.0, 10**5000, options=(NoRetry(),))
    with pytest.raises(errors.BadArgError, match="ttl must be > 0"):  # (an OverflowError once)
        client.call(ctx(), at(mt, "c"), "Mount", svc, -(10**400), 0, options=(NoRetry(),))
    with pytest.raises(errors.BadArgError, match="ttl must be > 0"):  # (too long to print)
        client.call(ctx(), at(mt, "d"), "Mount", svc, -(10**5000), 0, options=(NoRetry(),))
    from ipcclient.server import mounttable

    with pytest.raises(errors.BadArgError, match="ttl must be > 0"):  # (was a ValueError)
        mounttable._check_ttl(-(10**5000))


@expose
class _LyingMountTable:
    """A mount table that answers every ResolveStep with the entry it is given."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {}

    def ResolveStep(self, call: ServerCall) -> dict[str, Any]:
        return self.answer

    def lookup(self, suffix: str) -> tuple[Any, Authorizer]:  # (every suffix: a dispatcher)
        return self, AllowEveryone()


_ZEROS = "0" * 32
_MALFORMED_SERVERS = [
    "garbage",  # not rooted: joined with a name, it would be resolved from the roots again
    "/",  # no address: the same
    "//",
    f"/@1@tcp@h:99999@{_ZEROS}@0@0@m@@",  # a port out of range
    "/h:99999",
    f"/@1@tcp@h%zz:1@{_ZEROS}@0@0@m@@",  # a bad escape
]


@pytest.mark.parametrize("bad", _MALFORMED_SERVERS)
def test_a_malformed_server_in_an_answer_is_left_out_and_the_good_ones_are_used(
    stack: contextlib.ExitStack, family: Family, bad: str
) -> None:
    """A root mount table answers with a malformed server before a good second-level table:
    the call reaches the server mounted there (it once went to the second-level table
    itself, as if the bad server had said "not a mount table", or recursed until a bare
    RecursionError when the server was "/")."""
    liar = _LyingMountTable()
    liar_server = Server(family.member("mt1"), serves_mount_table=True)
    stack.callback(liar_server.stop)
    root = "/" + liar_server.listen("tcp", "127.0.0.1:0")
    liar_server.serve_dispatcher(liar)
    _, second = serving(stack, family.member("mt2"), table=MountTable())
    _, svc = serving(stack, family.member("server"), Label("target"))
    client = client_for(stack, family.member("client"), root)
    assert client.call(ctx(), at(second, "x"), "Mount", svc, 30.0, 0) == ()
    good = {"server": second, "ttl": None}
    liar.answer = {"name": "x", "servers": [{"server": bad, "ttl": None}, good]}
    liar.answer["serves_mount_table"] = True
    assert client.call(ctx(), "a/x", "Who") == ("target",)
    # With only malformed servers, the answer is malformed: a typed error, not a loop.
    liar.answer["servers"] = [{"server": bad, "ttl": None}]
    client.namespace.flush_cache_entry("a/x")
    with pytest.raises(errors.NoServersError, match="bad server"):
        client.call(ctx(), "a/x", "Who", options=(NoRetry(),))


def test_two_levels_of_mount_tables(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, root_mt = serving(stack, family.member("mt"), table=make_table())
    _, child_mt = serving(stack, family.member("childmt"), table=make_table())
    _, svc = serving(stack, family.member("server"), Label("deep"))
    client = client_for(stack, family.member("client"), root_mt)

    client.call(ctx(), at(root_mt, "child"), "Mount", child_mt, 30.0, MT)
    (wire,) = client.call(ctx(), at(root_mt, "child/svc"), "ResolveStep")
    assert wire["serves_mount_table"] is True and wire["name"] == "svc"
    # Mount the server in the child table through the namespace (a relative name).
    mt_entry = client.namespace.resolve_to_mount_table(ctx(), "child/svc")
    assert [s.server for s in mt_entry.servers] == [child_mt] and mt_entry.name == "svc"
    client.call(ctx(), mt_entry.names()[0], "Mount", svc, 30.0, 0)

    assert client.call(ctx(), "child/svc", "Who") == ("deep",)
    entry = client.namespace.resolve(ctx(), "child/svc/obj")
    assert [s.server for s in entry.servers] == [svc] and entry.name == "obj"
    # A fresh client resolves it too, with nothing cached.
    other = client_for(stack, family.member("client2"), root_mt)
    assert other.call(ctx(), "child/svc", "Echo", 7) == (7,)


def test_ttl_expiry_in_real_time(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    _, svc = serving(stack, family.member("server"), Label("brief"))
    client = client_for(stack, family.member("client"), mt)
    # (The TTL leaves a dial, a handshake and the call, with etcd's round trips, to fit.)
    client.call(ctx(), at(mt, "brief"), "Mount", svc, 1.0, 0)
    assert client.call(ctx(), "brief", "Who") == ("brief",)

    def gone() -> bool:
        try:
            client.call(ctx(), "brief", "Who", options=(NoRetry(),))
        except errors.NoServersError:
            return True
        return False

    assert wait_until(gone, 3.0)
    with pytest.raises(errors.NoExistError):
        client.namespace.resolve(ctx(), "brief")


def test_ttl_expiry_with_injected_clock(stack: contextlib.ExitStack, family: Family) -> None:
    clock = FakeClock()
    table = MountTable(clock=clock)
    _, mt = serving(stack, family.member("mt"), table=table)
    _, svc = serving(stack, family.member("server"), Label("x"))
    _, svc2 = serving(stack, family.member("server2"), Label("y"))
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "a"), "Mount", svc, 5.0, 0)
    client.call(ctx(), at(mt, "a"), "Mount", svc2, 50.0, 0)
    clock.now += 10
    (wire,) = client.call(ctx(), at(mt, "a/b"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == [svc2]
    assert wire["servers"][0]["ttl"] == pytest.approx(40.0)
    clock.now += 100
    with pytest.raises(errors.NoExistError):
        client.call(ctx(), at(mt, "a/b"), "ResolveStep", options=(NoRetry(),))
    fresh = client_for(stack, family.member("client2"), mt)
    with pytest.raises(errors.NoServersError):
        fresh.call(ctx(), "a", "Who", options=(NoRetry(),))
    assert table.sweep() == 1  # only the root node is left


def test_flush_cache_entry_after_the_server_moves(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    _, svc_a = serving(stack, family.member("server"), Label("A"))
    _, svc_b = serving(stack, family.member("server2"), Label("B"))
    client = client_for(stack, family.member("client"), mt)
    admin = client_for(stack, family.member("admin"), mt)

    admin.call(ctx(), at(mt, "svc"), "Mount", svc_a, 30.0, 0)
    assert client.call(ctx(), "svc", "Who") == ("A",)
    admin.call(ctx(), at(mt, "svc"), "Mount", svc_b, 30.0, REPLACE)  # the service moves
    assert client.call(ctx(), "svc", "Who") == ("A",)  # still the cached resolution
    assert client.namespace.flush_cache_entry("svc") is True
    assert client.call(ctx(), "svc", "Who") == ("B",)


def test_unmount_one_and_all(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    s1, s2 = "/127.0.0.1:1001", "/127.0.0.1:1002"
    client.call(ctx(), at(mt, "n"), "Mount", s1, 30.0, 0)
    client.call(ctx(), at(mt, "n"), "Mount", s2, 30.0, 0)
    client.call(ctx(), at(mt, "n"), "Mount", s1, 60.0, 0)  # refresh keeps the order
    (wire,) = client.call(ctx(), at(mt, "n"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == [s1, s2]

    client.call(ctx(), at(mt, "n"), "Unmount", s1)
    (wire,) = client.call(ctx(), at(mt, "n"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == [s2]
    client.call(ctx(), at(mt, "n"), "Unmount", "")
    with pytest.raises(errors.NoExistError):
        client.call(ctx(), at(mt, "n"), "ResolveStep", options=(NoRetry(),))
    client.call(ctx(), at(mt, "n"), "Unmount", "")  # idempotent
    client.call(ctx(), at(mt, "never/mounted"), "Unmount", s1)


def _glob(client: Client, name: str, pattern: str) -> tuple[list[str], int]:
    with client.start_call(ctx(), name, "Glob", [pattern]) as call:
        items = list(call)
        (count,) = call.finish()
    return sorted(i["name"] for i in items), count


def test_glob(stack: contextlib.ExitStack, family: Family, make_table: TableFactory) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    for name in ("a/x", "a/y", "a/y/shadowed", "b", "c/d/e"):
        client.call(ctx(), at(mt, name), "Mount", "/127.0.0.1:2000", 30.0, 0)
    client.call(ctx(), at(mt, "m"), "Mount", "/127.0.0.1:2001", 30.0, MT | LEAF)

    assert _glob(client, at(mt, ""), "*") == (["b", "m"], 2)
    assert _glob(client, at(mt, ""), "...") == (["a/x", "a/y", "b", "c/d/e", "m"], 5)
    assert _glob(client, at(mt, ""), "a/*") == (["a/x", "a/y"], 2)
    assert _glob(client, at(mt, "a"), "*") == (["x", "y"], 2)
    assert _glob(client, at(mt, ""), ".../e") == (["c/d/e"], 1)
    assert _glob(client, at(mt, ""), "[ab]*") == (["b"], 1)
    assert _glob(client, at(mt, "nothing"), "...") == ([], 0)
    with client.start_call(ctx(), at(mt, ""), "Glob", ["m"]) as call:
        (item,) = list(call)
        call.finish()
    assert item["serves_mount_table"] is True and item["is_leaf"] is True
    assert item["servers"][0]["server"] == "/127.0.0.1:2001"
    assert 29 < item["servers"][0]["ttl"] <= 30
    # At or below a mount point, Glob shows what ResolveStep does: the mount, not the names
    # it shadows (a/y/shadowed once showed at "a/y"; "a/y/shadowed" below it as "").
    assert _glob(client, at(mt, "a/y"), "...") == ([""], 1)
    assert _glob(client, at(mt, "a/y"), "*") == ([], 0)
    assert _glob(client, at(mt, "a/y/shadowed"), "...") == ([], 0)
    # A run of "..." is one "..." (it once took seconds per node, holding the table's lock);
    # a rooted pattern is refused (it once lost its first element without a word).
    many = "/".join(["..."] * 255 + ["e"])
    assert _glob(client, at(mt, ""), many) == (["c/d/e"], 1)
    with pytest.raises(errors.BadArgError, match="must be relative"):
        _glob(client, at(mt, ""), "/a/*")
    with pytest.raises(errors.BadArgError, match="more than 64 components"):
        _glob(client, at(mt, ""), "/".join(["*"] * 65))


def test_two_spellings_of_one_endpoint_are_one_server(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    _, svc = serving(stack, family.member("server"), Label("svc"))
    client = client_for(stack, family.member("client"), mt)
    ep = Endpoint.parse(svc[1:])
    other = "/" + str(ep).replace(ep.address, ep.address.replace(":", "%3A"))
    assert other != svc and Endpoint.parse(other[1:]) == ep
    client.call(ctx(), at(mt, "s"), "Mount", other + "/x", 30.0, 0)
    client.call(ctx(), at(mt, "s"), "Mount", svc + "/x", 30.0, 0)
    (wire,) = client.call(ctx(), at(mt, "s"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == [svc + "/x"]
    client.call(ctx(), at(mt, "s"), "Unmount", other + "/x")
    with pytest.raises(errors.NoExistError):
        client.call(ctx(), at(mt, "s"), "ResolveStep", options=(NoRetry(),))


def test_a_glob_too_costly_for_the_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The matcher's steps are bounded (the store's lock is held while it runs)."""
    table = MountTable()
    for i in range(50):
        table._mount(f"d{i}/n", "/127.0.0.1:2000", 30.0, 0)
    pattern = "/".join(["*", "..."] * 20 + ["zz"])  # up to 21 live positions per node
    assert list(table._glob("", pattern)) == []
    monkeypatch.setattr(mountstore, "MAX_GLOB_STEPS", 100)
    with pytest.raises(errors.OverloadedError, match="too costly"):
        list(table._glob("", pattern))
    assert [i["name"] for i in table._glob("", "d1/*")] == ["d1/n"]  # a cheap one still runs


def test_a_name_deeper_than_any_mount_resolves_through_the_mount_that_holds_it(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    """An object's name may go on far below its mount point: ResolveStep of a name longer
    than MAX_COMPONENTS answers the mount on its path (it once refused it with BadArg, which
    the namespace reads as "not a mount table": the call then went to the mount table)."""
    _, mt = serving(stack, family.member("mt"), table=make_table())
    _, svc = serving(stack, family.member("server"), Label("svc"))
    admin = client_for(stack, family.member("admin"), mt)
    admin.call(ctx(), at(mt, "app"), "Mount", svc, 30.0, 0)
    deep = "app/" + "/".join(["x"] * 80)
    client = client_for(stack, family.member("client"), mt)  # (a cold cache)
    entry = client.namespace.resolve(ctx(), deep)
    assert [s.server for s in entry.servers] == [svc]
    assert entry.name == "/".join(["x"] * 80)


def test_access_control_by_blessings(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    table = make_table(mount_patterns=("root:admin",), resolve_patterns=("root:client",))
    _, mt = serving(stack, family.member("mt"), table=table)
    admin = client_for(stack, family.member("admin"), mt)
    client = client_for(stack, family.member("client"), mt)
    outsider = client_for(stack, family.member("stranger"), mt)

    admin.call(ctx(), at(mt, "n"), "Mount", "/127.0.0.1:3000", 30.0, 0)
    with pytest.raises(errors.NoAccessError):
        client.call(ctx(), at(mt, "n"), "Mount", "/127.0.0.1:3001", 30.0, 0)
    with pytest.raises(errors.NoAccessError):
        client.call(ctx(), at(mt, "n"), "Unmount", "")
    (wire,) = client.call(ctx(), at(mt, "n"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:3000"]
    with pytest.raises(errors.NoAccessError):
        outsider.call(ctx(), at(mt, "n"), "ResolveStep", options=(NoRetry(),))
    with pytest.raises(errors.NoAccessError):
        outsider.namespace.resolve(ctx(), "n")
    with pytest.raises(errors.NoAccessError):
        _glob(outsider, at(mt, ""), "...")
    with pytest.raises(errors.UnknownMethodError):
        outsider.call(ctx(), at(mt, "n"), "lookup", "n", options=(NoRetry(),))


def test_bad_requests_are_refused(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    ok = "/127.0.0.1:4000"

    def refused(name: str, *args: Any) -> None:
        with pytest.raises(errors.BadArgError):
            client.call(ctx(), at(mt, name), "Mount", *args, options=(NoRetry(),))

    refused("", ok, 10.0, 0)  # the root of the table
    refused("x/__reserved", ok, 10.0, 0)
    refused("x", "relative-name", 10.0, 0)
    refused("x", "/@not@an@endpoint", 10.0, 0)
    refused("x", ok, 0.0, 0)
    refused("x", ok, -1.0, 0)
    refused("x", ok, "10", 0)
    refused("x\x00y", ok, 10.0, 0)  # (the in-memory store took it; etcd's keys end with NUL)
    refused("x", ok, 10.0, 8)
    refused("/".join(["c"] * 65), ok, 10.0, 0)

    client.call(ctx(), at(mt, "x"), "Mount", ok, 10.0, MT)
    refused("x", "/127.0.0.1:4001", 10.0, 0)  # flags differ from the live mount
    client.call(ctx(), at(mt, "x"), "Mount", "/127.0.0.1:4001", 10.0, REPLACE)
    (wire,) = client.call(ctx(), at(mt, "x"), "ResolveStep")
    assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:4001"]
    assert wire["serves_mount_table"] is False
    client.call(ctx(), at(mt, "y"), "Mount", ok, 1e9, 0)  # clamped to MAX_TTL
    (wire,) = client.call(ctx(), at(mt, "y"), "ResolveStep")
    assert wire["servers"][0]["ttl"] <= 24 * 3600


def test_bounds_on_servers_and_nodes(stack: contextlib.ExitStack, family: Family) -> None:
    clock = FakeClock()
    table = MountTable(clock=clock, max_nodes=4, max_servers_per_name=2)
    _, mt = serving(stack, family.member("mt"), table=table)
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "a"), "Mount", "/127.0.0.1:1", 10.0, 0)
    client.call(ctx(), at(mt, "a"), "Mount", "/127.0.0.1:2", 10.0, 0)
    with pytest.raises(errors.OverloadedError) as info:
        client.call(ctx(), at(mt, "a"), "Mount", "/127.0.0.1:3", 10.0, 0)
    assert info.value.action is errors.RetryAction.NO_RETRY
    client.call(ctx(), at(mt, "b/c"), "Mount", "/127.0.0.1:1", 10.0, 0)  # 4 nodes with root
    with pytest.raises(errors.OverloadedError):
        client.call(ctx(), at(mt, "d"), "Mount", "/127.0.0.1:1", 10.0, 0, options=(NoRetry(),))
    assert table.node_count() == 4
    clock.now += 20  # everything expires; a full table sweeps before refusing
    client.call(ctx(), at(mt, "d"), "Mount", "/127.0.0.1:1", 10.0, 0)
    assert table.node_count() == 2


def test_a_sweep_on_the_path_being_mounted_keeps_the_node_count(
    stack: contextlib.ExitStack, family: Family
) -> None:
    # The table is full of expired mounts, one of them on the path of the new mount: the
    # sweep that makes room removes that path too, and the nodes it re-creates are counted.
    clock = FakeClock()
    table = MountTable(clock=clock, max_nodes=4)
    _, mt = serving(stack, family.member("mt"), table=table)
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "a/b"), "Mount", "/127.0.0.1:1", 1.0, 0)
    client.call(ctx(), at(mt, "x"), "Mount", "/127.0.0.1:1", 1.0, 0)  # 4 nodes with root
    clock.now += 2
    client.call(ctx(), at(mt, "a/b/c"), "Mount", "/127.0.0.1:2", 30.0, 0)
    assert table.node_count() == 4  # root, a, b, c: the bound holds, and the count is true
    with pytest.raises(errors.OverloadedError):
        client.call(ctx(), at(mt, "y"), "Mount", "/127.0.0.1:1", 10.0, 0, options=(NoRetry(),))
    client.call(ctx(), at(mt, "a/b/c"), "Unmount", "/127.0.0.1:2")
    assert table.node_count() == 1 and table.sweep() == 1


def test_a_name_holding_nul_is_never_mounted_in_any_store(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    # Mount refuses it (BadArg); the other methods answer as for any name never mounted, the
    # same in every store (BadArg from ResolveStep would read as "not a mount table").
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "apps/x"), "Mount", "/127.0.0.1:1", 30.0, 0)
    with pytest.raises(errors.BadArgError):
        client.call(ctx(), at(mt, "apps/y\x00z"), "Mount", "/127.0.0.1:1", 30.0, 0)
    for name in ("apps/y\x00z", "\x00", "apps\x00/x"):
        with pytest.raises(errors.NoExistError):
            client.call(ctx(), at(mt, name), "ResolveStep", options=(NoRetry(),))
        with pytest.raises(errors.NoExistError):
            client.namespace.resolve(ctx(), name)
        with client.start_call(ctx(), at(mt, name), "Glob", ["..."]) as call:
            assert list(call) == []
        assert client.call(ctx(), at(mt, name), "Unmount", "") == ()
    (wire,) = client.call(ctx(), at(mt, "apps/x/a\x00b"), "ResolveStep")  # below a mount
    assert wire["name"] == "a\x00b"
    assert [s["server"] for s in wire["servers"]] == ["/127.0.0.1:1"]


def test_same_semantics_as_the_in_memory_model(
    stack: contextlib.ExitStack, family: Family, make_table: TableFactory
) -> None:
    """The scenarios of tests/unit/test_naming_fake_mounttable.py, against the real table."""
    _, mt = serving(stack, family.member("mt"), table=make_table())
    client = client_for(stack, family.member("client"), mt)
    client.call(ctx(), at(mt, "a/b"), "Mount", "/127.0.0.1:1", 10.0, MT)
    client.call(ctx(), at(mt, "a/b/c"), "Mount", "/127.0.0.1:2", 10.0, 0)  # shadowed
    (wire,) = client.call(ctx(), at(mt, "a/b/c/d"), "ResolveStep")
    entry = MountEntry.from_wire(wire, 0.0)
    assert entry.name == "c/d" and [s.server for s in entry.servers] == ["/127.0.0.1:1"]
    assert entry.serves_mount_table is True
    for missing in ("a/c", "a", ""):
        with pytest.raises(errors.NoExistError):
            client.call(ctx(), at(mt, missing), "ResolveStep", options=(NoRetry(),))


def test_store_settings_belong_to_the_store(etcd: Any) -> None:
    store = EtcdStore(etcd.url, f"/test/{uuid.uuid4().hex}")
    try:
        settings: list[dict[str, Any]] = [{"clock": FakeClock()}, {"max_nodes": 5}]
        settings += [{"max_servers_per_name": 2}, {"max_table_bytes": 1000}]
        for kwargs in settings:
            with pytest.raises(errors.BadArgError):
                MountTable(store=store, **kwargs)
        table = MountTable(store=store)
        assert table.store is store and store.prefix.endswith("/")
        assert table.node_count() == 0 and table.sweep() == 0
    finally:
        store.close()
    with pytest.raises(errors.BadArgError):
        MountTable(max_ttl=0)
    with pytest.raises(errors.BadArgError):
        MountTable(mount_patterns="root:admin")


_SIGNAL_TO_ANOTHER_THREAD = """
import signal, sys, threading, time
from ipcclient.server import mounttabled

def main_thread_is_waiting():
    # Serving (its listener is up) and asleep in its wait for the stop signal.
    if not any(t.name.startswith("ipc-listen") for t in threading.enumerate()):
        return False
    frame = sys._current_frames().get(threading.main_thread().ident)
    names = set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return "main" in names and "wait" in names

def kick():
    deadline = time.monotonic() + 20
    while not main_thread_is_waiting() and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not main

threading.Thread(target=kick, daemon=True).start()
sys.exit(mounttabled.main(["--listen", "127.0.0.1:0"]))
"""


def test_the_mount_table_process_stops_when_another_thread_gets_the_signal() -> None:
    """The kernel may hand a process's SIGTERM to any of its threads, and Python runs the
    handler only when the main thread runs: the process stops at once all the same (it
    waited an hour once, when its main thread slept in one long wait)."""
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_TO_ANOTHER_THREAD],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("/@")
