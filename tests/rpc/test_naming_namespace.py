"""Tests for ipcclient.naming.namespace: resolution, the TTL cache, flush, wire forms.

Most mount tables here are the in-memory fakes of tests/unit/test_naming_fake_mounttable.py,
which can answer what a real table never does (malformed entries, loops, any error). The
tests of what the cache holds resolve through the real mount table server over loopback, as
do the namespace tests of tests/rpc/test_mounttable.py.
"""

from __future__ import annotations

import contextlib
import gc
import math
import threading
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import Client, errors
from ipcclient.context import Context
from ipcclient.naming import Endpoint, names
from ipcclient.naming.namespace import (
    DEFAULT_STEP_TIMEOUT,
    MAX_CACHE_BYTES,
    MAX_RESOLVE_DEPTH,
    MountedServer,
    MountEntry,
    Namespace,
    ResolutionDepthExceededError,
)
from ipcclient.server.mountstore import MAX_SERVERS_PER_NAME, MemoryStore
from ipcclient.server.mounttable import MountTable
from tests.conftest import Family
from tests.rpc.test_mounttable import Label, client_for, serving
from tests.rpc.test_mounttable import ctx as loopback_ctx
from tests.unit.test_naming_fake_mounttable import FakeClock, FakeNetwork

SERVER = str(Endpoint("tcp", "srv:1"))  # a plain server ("s" flag)
SERVER_NAME = "/" + SERVER
_PLAIN: dict[str, bool] = {"mt": False, "leaf": False, "replace": False}  # (store.mount flags)


class NoCalls:
    """A caller that fails the test if it is ever used."""

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **options: Any
    ) -> Sequence[Any]:
        raise AssertionError(f"unexpected call {method} on {name}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def net(clock: FakeClock) -> FakeNetwork:
    """root:1 mounts apps -> mt2:1 (a mount table, TTL 100); mt2:1 mounts fortune -> SERVER."""
    net = FakeNetwork(clock)
    net.table("root:1").mount("apps", "/mt2:1", 100, mt=True)
    net.table("mt2:1").mount("fortune", SERVER_NAME, 50)
    return net


@pytest.fixture
def ns(net: FakeNetwork, clock: FakeClock) -> Namespace:
    return Namespace(["/root:1"], net, clock=clock)


CTX = Context.background()


# -- names that need no call -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "want_name", "want_server", "want_mt"),
    [
        (SERVER_NAME + "/a/b", "a/b", SERVER_NAME, False),  # not a mount table endpoint
        ("/mt:1//a/b", "a/b", "/mt:1", True),  # terminal: no further resolution
        ("/mt:1", "", "/mt:1", True),  # the mount table itself
        ("/" + str(Endpoint("tcp", "h:1", serves_mount_table=True)), "", None, True),
        ("/__(a:b)" + SERVER_NAME + "/x", "x", SERVER_NAME, False),  # pattern stripped
    ],
)
def test_rooted_names_resolve_without_calls(
    name: str, want_name: str, want_server: str | None, want_mt: bool
) -> None:
    for ns in (Namespace([], NoCalls()), Namespace([], None)):
        entry = ns.resolve(CTX, name)
        assert entry.name == want_name
        assert len(entry.servers) == 1
        assert entry.servers[0].deadline == math.inf
        if want_server is not None:
            assert entry.servers[0].server == want_server
        assert entry.serves_mount_table is want_mt


def test_leaf_flag_of_a_rooted_endpoint_is_kept() -> None:
    ep = Endpoint("tcp", "h:1", is_leaf=True)
    entry = Namespace([]).resolve(CTX, ep.name("x"))
    assert entry.is_leaf is True
    assert entry.names() == ["/" + str(ep) + "//x"]


# -- walking mount tables ----------------------------------------------------------------------


def test_relative_name_through_two_levels_of_mount_tables(
    ns: Namespace, net: FakeNetwork, clock: FakeClock
) -> None:
    entry = ns.resolve(CTX, "apps/fortune/x/y")
    assert net.calls == ["/root:1//apps/fortune/x/y", "/mt2:1//fortune/x/y"]
    assert entry.name == "x/y"
    assert [s.server for s in entry.servers] == [SERVER_NAME]
    assert entry.servers[0].deadline == pytest.approx(clock() + 50)
    assert entry.serves_mount_table is False
    assert entry.names() == [SERVER_NAME + "//x/y"]
    assert names.split_address_name(entry.names()[0]) == (SERVER, "x/y")


def test_rooted_name_at_a_mount_table_continues_through_it(ns: Namespace, net: FakeNetwork) -> None:
    entry = ns.resolve(CTX, "/mt2:1/fortune/z")
    assert net.calls == ["/mt2:1//fortune/z"]
    assert (entry.name, entry.servers[0].server) == ("z", SERVER_NAME)


def test_mounted_server_with_a_suffix_is_joined(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("a", "/mt2:1/deep/er", 100, mt=True)
    net.table("mt2:1").mount("deep/er/b", SERVER_NAME + "/obj", 100)
    entry = Namespace(["/root:1"], net, clock=clock).resolve(CTX, "a/b/c")
    assert net.calls == ["/root:1//a/b/c", "/mt2:1//deep/er/b/c"]
    assert entry.names() == [SERVER_NAME + "//obj/c"]


def test_resolving_the_empty_name_gives_the_roots() -> None:
    entry = Namespace(["/r1:1", "/r2:1"], NoCalls()).resolve(CTX, "")
    assert [s.server for s in entry.servers] == ["/r1:1", "/r2:1"]
    assert entry.serves_mount_table is True


def test_no_such_name_is_no_exist(ns: Namespace) -> None:
    with pytest.raises(errors.NoExistError) as info:
        ns.resolve(CTX, "apps/nothing/here")
    assert not isinstance(info.value, ResolutionDepthExceededError)


def test_servers_are_tried_in_order_first_failing(clock: FakeClock, net: FakeNetwork) -> None:
    net.down.add("dead:1")
    ns = Namespace(["/dead:1", "/root:1"], net, clock=clock)
    entry = ns.resolve(CTX, "apps/fortune")
    assert net.calls == ["/dead:1//apps/fortune", "/root:1//apps/fortune", "/mt2:1//fortune"]
    assert entry.name == ""


def test_every_server_failing_raises_the_last_error_with_what_was_tried(
    clock: FakeClock, net: FakeNetwork
) -> None:
    net.down.update({"dead:1", "dead:2"})
    ns = Namespace(["/dead:1", "/dead:2"], net, clock=clock)
    with pytest.raises(errors.ConnectionFailedError) as info:
        ns.resolve(CTX, "apps")
    assert len(info.value.tried) == 2
    assert "dead:1" in info.value.tried[0] and "dead:2" in info.value.tried[1]
    assert net.calls == ["/dead:1//apps", "/dead:2//apps"]


def test_no_exist_from_the_first_server_stops_at_once(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("r1:1")
    net.table("r2:1").mount("a", SERVER_NAME, 10)
    ns = Namespace(["/r1:1", "/r2:1"], net, clock=clock)
    with pytest.raises(errors.NoExistError):
        ns.resolve(CTX, "a")
    assert net.calls == ["/r1:1//a"]


@pytest.mark.parametrize(
    "err",
    [
        errors.UnknownMethodError("no ResolveStep"),
        errors.UnknownSuffixError("no object"),
        errors.BadArgError("bad"),
    ],
)
def test_not_a_mount_table_ends_resolution_with_the_current_entry(
    clock: FakeClock, err: errors.IPCError
) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("svc", "/plain:1", 100, mt=True)  # claims to be a mount table
    net.errors_by_address["plain:1"] = err
    ns = Namespace(["/root:1"], net, clock=clock)
    entry = ns.resolve(CTX, "svc/x")
    assert (entry.name, [s.server for s in entry.servers]) == ("x", ["/plain:1"])
    assert entry.serves_mount_table is True
    assert net.calls == ["/root:1//svc/x", "/plain:1//x"]


def test_a_bad_arg_of_our_own_is_not_the_servers_answer(clock: FakeClock, net: FakeNetwork) -> None:
    """A BadArgError raised before the request went out (request_sent False: the client's own
    refusal) says nothing about the server: the next server is asked."""
    net.errors_by_address["bad:1"] = errors.BadArgError("refused here", request_sent=False)
    ns = Namespace(["/bad:1", "/root:1"], net, clock=clock)
    assert ns.resolve(CTX, "apps/fortune").servers[0].server == SERVER_NAME
    assert net.calls[0] == "/bad:1//apps/fortune"


@pytest.mark.parametrize(
    "answer",
    [[], [{"name": "x"}, {"name": "y"}], ["not a map"], [{"servers": "nope"}], "str"],
)
def test_malformed_answers_are_bad_protocol_and_the_next_server_is_tried(
    clock: FakeClock, net: FakeNetwork, answer: Any
) -> None:
    net.answers_by_address["bad:1"] = answer
    ns = Namespace(["/bad:1", "/root:1"], net, clock=clock)
    assert ns.resolve(CTX, "apps/fortune").servers[0].server == SERVER_NAME
    with pytest.raises(errors.BadProtocolError):
        Namespace(["/bad:1"], net, clock=clock).resolve(CTX, "apps")


def test_depth_limit(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("a", "/root:1/a", 100, mt=True)  # a loop
    ns = Namespace(["/root:1"], net, clock=clock)
    with pytest.raises(ResolutionDepthExceededError) as info:
        ns.resolve(CTX, "a/x")
    assert isinstance(info.value, errors.NoExistError)
    assert info.value.action is errors.RetryAction.NO_RETRY
    assert len(net.calls) == 1  # every later step came from the cache
    uncached = Namespace(["/root:1"], net, clock=clock, cache_size=0)
    with pytest.raises(ResolutionDepthExceededError):
        uncached.resolve(CTX, "a/x")
    assert len(net.calls) == 1 + MAX_RESOLVE_DEPTH


def test_relative_name_without_roots_is_a_non_retryable_no_servers() -> None:
    with pytest.raises(errors.NoServersError) as info:
        Namespace([]).resolve(CTX, "a/b")
    assert info.value.action is errors.RetryAction.NO_RETRY


def test_a_step_without_a_caller_is_no_servers() -> None:
    with pytest.raises(errors.NoServersError):
        Namespace(["/root:1"]).resolve(CTX, "a/b")


def test_caller_can_be_set_later(net: FakeNetwork, clock: FakeClock) -> None:
    assert Namespace(["/root:1"]).caller is None
    ns = Namespace(["/root:1"], clock=clock)
    ns.set_caller(net)
    assert ns.caller is net
    assert ns.resolve(CTX, "apps/fortune").servers[0].server == SERVER_NAME


@pytest.mark.parametrize("name", ["/@1@tcp@h:1@@", "/h:1:x:y/a", "/", "//"])
def test_malformed_rooted_names_are_bad_arg(name: str) -> None:
    with pytest.raises(errors.BadArgError):
        Namespace([], NoCalls()).resolve(CTX, name)


def test_a_non_str_name_is_bad_arg() -> None:
    with pytest.raises(errors.BadArgError):
        Namespace([]).resolve(CTX, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("ctx", [None, 1.0, "ctx"])
def test_a_context_that_is_not_one_is_bad_arg(ctx: object) -> None:
    """(An AttributeError before, from deep inside.)"""
    ns = Namespace(["/127.0.0.1:1"], NoCalls())
    with pytest.raises(errors.BadArgError, match="takes a Context first"):
        ns.resolve(ctx, "a/b")  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError, match="takes a Context first"):
        ns.resolve_to_mount_table(ctx, "a/b")  # type: ignore[arg-type]


def test_step_timeout_defaults_to_30s_and_a_deadline_is_passed_on(
    ns: Namespace, net: FakeNetwork
) -> None:
    before = time.monotonic()
    ns.resolve(CTX, "apps/fortune")
    first = net.contexts[0].deadline
    assert first is not None
    assert before + DEFAULT_STEP_TIMEOUT <= first <= time.monotonic() + DEFAULT_STEP_TIMEOUT
    assert net.contexts[0].done()  # the per-step context is released after the call
    ns.flush_cache_entry("apps/fortune")
    with CTX.with_timeout(5) as ctx:
        ns.resolve(ctx, "apps/fortune")
        assert net.contexts[-1] is ctx


def test_a_done_context_stops_resolution_before_any_call(ns: Namespace, net: FakeNetwork) -> None:
    ctx = CTX.with_cancel()
    ctx.cancel()
    with pytest.raises(errors.CanceledError):
        ns.resolve(ctx, "apps/fortune")
    assert net.calls == []


def test_the_lock_is_not_held_while_calling(clock: FakeClock, net: FakeNetwork) -> None:
    seen: list[bool] = []

    class Checking:
        def call(
            self, ctx: Context, name: str, method: str, args: Sequence[Any], **options: Any
        ) -> Sequence[Any]:
            seen.append(namespace._lock.locked())
            return net.call(ctx, name, method, args)

    namespace = Namespace(["/root:1"], Checking(), clock=clock)
    namespace.resolve(CTX, "apps/fortune")
    assert seen == [False, False]


# -- resolve_to_mount_table --------------------------------------------------------------------


def test_resolve_to_mount_table(ns: Namespace, net: FakeNetwork) -> None:
    entry = ns.resolve_to_mount_table(CTX, "apps/fortune/x")
    assert (entry.name, [s.server for s in entry.servers]) == ("fortune/x", ["/mt2:1"])
    assert entry.serves_mount_table
    # A name the last mount table does not have yet: that mount table is the answer.
    entry = ns.resolve_to_mount_table(CTX, "apps/newname")
    assert (entry.name, [s.server for s in entry.servers]) == ("newname", ["/mt2:1"])
    entry = ns.resolve_to_mount_table(CTX, "unknown")
    assert (entry.name, [s.server for s in entry.servers]) == ("unknown", ["/root:1"])


def test_resolve_to_mount_table_stops_at_a_non_mount_table(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("svc", "/plain:1", 100, mt=True)
    net.plain.add("plain:1")
    entry = Namespace(["/root:1"], net, clock=clock).resolve_to_mount_table(CTX, "svc/x")
    assert [s.server for s in entry.servers] == ["/root:1"]
    assert entry.name == "svc/x"
    loop = FakeNetwork(clock)
    loop.table("root:1").mount("a", "/root:1/a", 100, mt=True)
    with pytest.raises(ResolutionDepthExceededError):
        Namespace(["/root:1"], loop, clock=clock).resolve_to_mount_table(CTX, "a/x")


def test_resolve_to_mount_table_of_a_non_mount_table_name() -> None:
    entry = Namespace([], NoCalls()).resolve_to_mount_table(CTX, SERVER_NAME + "/x")
    assert entry.servers[0].server == SERVER_NAME


# -- the cache ---------------------------------------------------------------------------------


def test_cache_is_used_before_expiry_and_refreshed_after(
    ns: Namespace, net: FakeNetwork, clock: FakeClock
) -> None:
    ns.resolve(CTX, "apps/fortune/x")
    assert len(net.calls) == 2
    clock.advance(49)
    entry = ns.resolve(CTX, "apps/fortune/x")
    assert len(net.calls) == 2  # no call: both steps from the cache
    assert entry.servers[0].deadline == pytest.approx(clock() + 1)
    clock.advance(2)  # the second level (TTL 50) expired, the first (TTL 100) did not
    net.table("mt2:1").mount("fortune", SERVER_NAME, 50)  # the server refreshes its mount
    ns.resolve(CTX, "apps/fortune/x")
    assert net.calls[2:] == ["/mt2:1//fortune/x"]
    clock.advance(60)  # now the first level expired too
    net.table("root:1").mount("apps", "/mt2:1", 100, mt=True)
    net.table("mt2:1").mount("fortune", SERVER_NAME, 50)
    ns.resolve(CTX, "apps/fortune/x")
    assert net.calls[3:] == ["/root:1//apps/fortune/x", "/mt2:1//fortune/x"]


def test_cache_longest_prefix_serves_other_names_below_a_mount(
    ns: Namespace, net: FakeNetwork
) -> None:
    net.table("mt2:1").mount("other", SERVER_NAME + "/o", 50)
    ns.resolve(CTX, "apps/fortune/x")
    entry = ns.resolve(CTX, "apps/other/y")
    assert net.calls[2:] == ["/mt2:1//other/y"]  # the root's answer for "apps" came from cache
    assert entry.names() == [SERVER_NAME + "//o/y"]
    assert ns.resolve(CTX, "apps/fortune/z").name == "z"
    assert len(net.calls) == 3


def test_zero_ttl_answers_are_not_cached(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.answers_by_address["root:1"] = [
        {"name": "", "servers": [{"server": SERVER_NAME, "ttl": 0}]}
    ]
    ns = Namespace(["/root:1"], net, clock=clock)
    ns.resolve(CTX, "a")
    ns.resolve(CTX, "a")
    assert len(net.calls) == 2
    assert ns.cache_size() == 0


def test_answers_whose_name_is_not_a_suffix_are_not_cached(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.answers_by_address["root:1"] = [
        {"name": "zzz", "servers": [{"server": SERVER_NAME, "ttl": 10}]}
    ]
    ns = Namespace(["/root:1"], net, clock=clock)
    assert ns.resolve(CTX, "a/b").name == "zzz"
    assert ns.resolve(CTX, "a").name == "zzz"
    assert ns.cache_size() == 0


def test_cache_is_bounded_stale_entries_first(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    root = net.table("root:1")
    for i in range(10):
        root.mount(f"n{i}", SERVER_NAME, 10 if i == 0 else 1000)
    ns = Namespace(["/root:1"], net, clock=clock, cache_size=4)
    ns.resolve(CTX, "n0")
    clock.advance(20)  # n0's entry is now stale
    for i in range(1, 4):
        ns.resolve(CTX, f"n{i}")
    assert ns.cache_size() == 4
    ns.resolve(CTX, "n4")  # full: drop the stale n0, then the oldest down to 3, then insert
    assert ns.cache_size() == 4
    calls = len(net.calls)
    ns.resolve(CTX, "n4")
    ns.resolve(CTX, "n3")
    assert len(net.calls) == calls  # the newest survived
    for i in range(5, 10):
        ns.resolve(CTX, f"n{i}")
        assert ns.cache_size() <= 4


def test_cache_size_must_be_non_negative() -> None:
    with pytest.raises(errors.BadArgError):
        Namespace([], cache_size=-1)


# -- flush -------------------------------------------------------------------------------------


def test_flush_forgets_every_entry_on_the_path(
    ns: Namespace, net: FakeNetwork, clock: FakeClock
) -> None:
    ns.resolve(CTX, "apps/fortune/x")
    assert ns.cache_size() == 2
    assert ns.flush_cache_entry("apps/fortune/x") is True
    assert ns.cache_size() == 0
    assert ns.flush_cache_entry("apps/fortune/x") is False
    ns.resolve(CTX, "apps/fortune/x")
    assert len(net.calls) == 4


def test_flush_of_a_rooted_name(ns: Namespace, net: FakeNetwork) -> None:
    ns.resolve(CTX, "/mt2:1/fortune/x")
    assert ns.cache_size() == 1
    assert ns.flush_cache_entry("/mt2:1/fortune/other") is True
    assert ns.cache_size() == 0


def test_flush_matches_components_not_string_prefixes(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    root = net.table("root:1")
    root.mount("a/b", SERVER_NAME + "/1", 100)
    root.mount("a/bc", SERVER_NAME + "/2", 100)
    ns = Namespace(["/root:1"], net, clock=clock)
    ns.resolve(CTX, "a/b/x")
    ns.resolve(CTX, "a/bc/y")
    assert ns.cache_size() == 2
    assert ns.flush_cache_entry("a/b/x") is True
    assert ns.cache_size() == 1
    calls = len(net.calls)
    assert ns.resolve(CTX, "a/bc/y").names() == [SERVER_NAME + "//2/y"]
    assert len(net.calls) == calls  # a/bc was not forgotten


def test_flush_forgets_deeper_entries_at_the_same_server(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    root = net.table("root:1")
    root.mount("a/b", SERVER_NAME + "/1", 100)
    root.mount("a/b/c", SERVER_NAME + "/2", 100)
    ns = Namespace(["/root:1"], net, clock=clock)
    ns.resolve(CTX, "a/b/x")  # cached under (root:1, a/b)
    ns.resolve(CTX, "/root:1/a/b/c")  # resolves at a/b too: same key
    assert ns.cache_size() == 1
    assert ns.flush_cache_entry("a/b") is True
    assert ns.cache_size() == 0


def test_flush_does_not_short_circuit_across_replicas(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("apps", "/mt2:1", 100, mt=True)
    net.table("root:1").mount("apps", "/mt3:1", 100, mt=True)
    net.table("mt2:1").mount("f", SERVER_NAME, 100)
    net.table("mt3:1").mount("f", SERVER_NAME, 100)
    ns = Namespace(["/root:1"], net, clock=clock)
    ns.resolve(CTX, "/mt2:1/f/x")  # cache (mt2, f)
    ns.resolve(CTX, "/mt3:1/f/x")  # cache (mt3, f)
    ns.resolve(CTX, "apps/f/x")  # cache (root, apps); the next step hits (mt2, f)
    assert ns.cache_size() == 3
    assert ns.flush_cache_entry("apps/f/x") is True
    assert ns.cache_size() == 0  # Vanadium would have kept (mt3, f) and (root, apps)


def test_flush_of_each_root_for_a_relative_name(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    for r in ("r1:1", "r2:1"):
        net.table(r).mount("a", SERVER_NAME, 100)
    ns = Namespace(["/r1:1", "/r2:1"], net, clock=clock)
    ns.resolve(CTX, "/r1:1/a")
    ns.resolve(CTX, "/r2:1/a")
    assert ns.cache_size() == 2
    assert ns.flush_cache_entry("a/b") is True
    assert ns.cache_size() == 0


def test_flush_terminates_on_a_cached_loop(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.table("root:1").mount("a", "/root:1/a", 100, mt=True)
    ns = Namespace(["/root:1"], net, clock=clock)
    with pytest.raises(ResolutionDepthExceededError):
        ns.resolve(CTX, "a/x")
    assert ns.flush_cache_entry("a/x") is True
    assert ns.cache_size() == 0


def test_flush_removes_stale_entries_too(ns: Namespace, clock: FakeClock) -> None:
    ns.resolve(CTX, "apps/fortune")
    clock.advance(1000)
    assert ns.flush_cache_entry("apps/fortune") is True
    assert ns.cache_size() == 0


# -- roots -------------------------------------------------------------------------------------


def test_roots_and_set_roots() -> None:
    ns = Namespace(["/r1:1//"])
    assert list(ns.roots) == ["/r1:1"]
    ns.set_roots(["/r2:1", "/" + SERVER])
    roots: tuple[str, ...] = ns.roots
    assert roots == ("/r2:1", "/" + SERVER)
    bad: Any
    for bad in (["r1:1"], ["/"], "/r1:1", ["/@1@tcp@x@@"], [3]):
        with pytest.raises(errors.BadArgError):
            ns.set_roots(bad)
    assert ns.roots == roots


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_resolves_and_flushes_smoke(
    ns: Namespace, net: FakeNetwork, clock: FakeClock
) -> None:
    for i in range(20):
        net.table("mt2:1").mount(f"s{i}", SERVER_NAME + f"/o{i}", 1000)
    failures: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(150):
                i = (j * 7 + k) % 20
                entry = ns.resolve(CTX, f"apps/s{i}/leaf")
                assert entry.names() == [SERVER_NAME + f"//o{i}/leaf"]
                if j % 25 == 0:
                    ns.flush_cache_entry(f"apps/s{i}")
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert ns.cache_size() <= 21
    assert len(net.calls) < 8 * 150  # the cache did its job


# -- wire forms --------------------------------------------------------------------------------


def test_mount_entry_wire_round_trip_uses_relative_ttls() -> None:
    entry = MountEntry(
        "a/b", (MountedServer("/h:1", 110.0), MountedServer("/h:2", math.inf)), True, True
    )
    wire = entry.to_wire(100.0)
    assert wire["servers"] == [{"server": "/h:1", "ttl": 10.0}, {"server": "/h:2", "ttl": None}]
    assert MountEntry.from_wire(wire, 100.0) == entry
    later = MountEntry.from_wire(wire, 500.0)
    assert later.servers[0].deadline == 510.0
    assert MountedServer("/h:1", 50.0).to_wire(100.0)["ttl"] == 0.0


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {"name": 3, "servers": []},
        {"name": "/rooted", "servers": []},
        {"name": "a"},
        {"name": "a", "servers": [{"server": "", "ttl": 1}]},
        {"name": "a", "servers": [{"server": "/h:1", "ttl": -1}]},
        {"name": "a", "servers": [{"server": "/h:1", "ttl": math.nan}]},
        {"name": "a", "servers": [{"server": "/h:1", "ttl": True}]},
        {"name": "a", "servers": [{"server": "/h:1", "ttl": "1"}]},
        # (a ttl whose repr fails: a list holding an int of more than 4,300 digits)
        {"name": "a", "servers": [{"server": "/h:1", "ttl": [10**5000]}]},
        {"name": "a", "servers": ["/h:1"]},
        {"name": "a", "servers": [], "serves_mount_table": 1},
        {"name": "a", "servers": [{"server": "/h:1", "ttl": 1}] * 1025},
        {"name": "x" * 20000, "servers": []},
    ],
)
def test_mount_entry_from_wire_rejects_malformed(wire: Any) -> None:
    with pytest.raises(errors.BadProtocolError):
        MountEntry.from_wire(wire, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["name", "servers", "server", "ttl", "x"]), inner)
        ),
        max_leaves=12,
    )
)
def test_mount_entry_from_wire_garbage_is_bad_protocol_or_valid(value: Any) -> None:
    try:
        entry = MountEntry.from_wire(value, 0.0)
    except errors.BadProtocolError:
        return
    assert MountEntry.from_wire(entry.to_wire(0.0), 0.0) == entry


def test_the_cache_of_every_server_is_checked_before_any_call(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.down.add("r1:1")
    net.table("r2:1").mount("a", SERVER_NAME, 100)
    ns = Namespace(["/r1:1", "/r2:1"], net, clock=clock)
    ns.resolve(CTX, "/r2:1/a/x")  # caches (r2:1, a)
    assert net.calls == ["/r2:1//a/x"]
    assert ns.resolve(CTX, "a/y").names() == [SERVER_NAME + "//y"]
    assert net.calls == ["/r2:1//a/x"]  # the dead first root was never dialled


def test_a_mount_table_answer_without_servers_is_no_servers(clock: FakeClock) -> None:
    net = FakeNetwork(clock)
    net.answers_by_address["root:1"] = [{"name": "x", "servers": [], "serves_mount_table": True}]
    with pytest.raises(errors.NoServersError) as info:
        Namespace(["/root:1"], net, clock=clock).resolve(CTX, "a/x")
    assert info.value.action is errors.RetryAction.RETRY_REFETCH


def test_resolve_to_mount_table_of_a_terminal_name_makes_no_call() -> None:
    entry = Namespace([], NoCalls()).resolve_to_mount_table(CTX, "/mt:1//a/b")
    assert (entry.name, entry.servers[0].server, entry.serves_mount_table) == ("a/b", "/mt:1", True)


def test_a_huge_ttl_is_bad_protocol() -> None:
    with pytest.raises(errors.BadProtocolError):
        MountedServer.from_wire({"server": "/h:1", "ttl": 10**400}, 0.0)


# -- what the cache holds ----------------------------------------------------------------------


def test_the_cache_is_bounded_by_what_its_entries_hold(family: Family) -> None:
    # A real mount table over loopback, each name holding the most servers it takes
    # (MAX_SERVERS_PER_NAME, names of ~4000 characters): each answer is ~1 MiB, so forty
    # of them would be held whole by a cache bounded by its count of entries alone.
    store = MemoryStore()
    long = "x" * 3980
    for i in range(40):
        for j in range(MAX_SERVERS_PER_NAME):
            store.mount((f"n{i}",), f"/127.0.0.1:{1000 + j}/{long}", 3600.0, **_PLAIN)
    with contextlib.ExitStack() as stack:
        _, mt = serving(stack, family.member("mt"), table=MountTable(store=store))
        ns = client_for(stack, family.member("client"), mt).namespace
        for i in range(40):
            entry = ns.resolve(loopback_ctx(), f"n{i}")
            assert len(entry.servers) == MAX_SERVERS_PER_NAME
            assert ns.cache_bytes() <= MAX_CACHE_BYTES
        assert 20 <= ns.cache_size() < 40
        assert ns.cache_bytes() > MAX_CACHE_BYTES // 2
        assert ns.flush_cache_entry("n39") is True  # the newest are kept ...
        assert ns.flush_cache_entry("n0") is False  # ... the oldest went first
        for i in range(40):
            ns.flush_cache_entry(f"n{i}")
        assert (ns.cache_size(), ns.cache_bytes()) == (0, 0)


class _HugeAnswers:
    """A mount table answering every ResolveStep with 1000 servers of ~4000 characters: an
    answer within the wire's limits (~4 MiB) that this project's mount table never gives."""

    def __init__(self) -> None:
        self.calls = 0

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **options: Any
    ) -> Sequence[Any]:
        self.calls += 1
        servers = [
            {"server": f"/127.0.0.1:{1000 + j}/{'x' * 3980}{self.calls}", "ttl": 3600.0}
            for j in range(1000)
        ]
        return [{"name": "", "servers": servers, "serves_mount_table": False, "is_leaf": False}]


def test_an_answer_too_big_to_cache_is_used_and_not_kept() -> None:
    caller = _HugeAnswers()
    ns = Namespace(["/127.0.0.1:9"], caller)
    tracemalloc.start()
    try:
        for i in range(8):
            assert len(ns.resolve(CTX, f"n{i}").servers) == 1000
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024  # (8 answers of ~4 MiB each were kept whole)
    assert (ns.cache_size(), ns.cache_bytes()) == (0, 0)
    ns.resolve(CTX, "n0")
    assert caller.calls == 9  # asked again: nothing cached


def test_failover_between_replicas_keeps_no_entry_the_cache_dropped(family: Family) -> None:
    # Names mounted as mount tables with a hundred long replica names each; the first
    # replica (a real table) answers, and is remembered as the one to ask first. Once the
    # cache has dropped the entries, nothing keeps their replicas' names (the namespace once
    # kept every list of replicas it had failed over between: up to 1024 of them).
    root_store, child_store = MemoryStore(), MemoryStore()
    long = "y" * 3980
    with contextlib.ExitStack() as stack:
        _, root = serving(stack, family.member("mt"), table=MountTable(store=root_store))
        _, child = serving(stack, family.member("child"), table=MountTable(store=child_store))
        _, svc = serving(stack, family.member("server"), Label("svc"))
        for i in range(31):
            replicas = [f"{child}/{long}/{i}"]
            replicas += [f"/127.0.0.1:{1000 + j}/{long}/{i}" for j in range(99)]
            for replica in replicas:
                root_store.mount((f"d{i}",), replica, 3600.0, **{**_PLAIN, "mt": True})
            child_store.mount((long, str(i), "x"), svc, 3600.0, **_PLAIN)
        ns = client_for(stack, family.member("client"), root).namespace
        assert ns.resolve(loopback_ctx(), "d0/x").names() == [svc]  # (warm up)
        ns.flush_cache_entry("d0/x")
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for i in range(1, 31):
                assert ns.resolve(loopback_ctx(), f"d{i}/x").names() == [svc]
                ns.flush_cache_entry(f"d{i}/x")
            assert ns.cache_size() == 0
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert held - before < 3 * 1024 * 1024  # (30 lists of 100 names of 4 KiB: 12 MiB)


@pytest.mark.parametrize("how", ["closed", "collected"])
def test_clients_sharing_a_namespace_resolve_while_one_of_them_is_open(
    family: Family, how: str
) -> None:
    """The first client made with a namespace resolves through it for every client made with
    it (the namespace holds it weakly); once that client was closed or collected, the
    others' names through a mount table failed "client: closed". Each client made with the
    namespace is kept as a caller now: the first one still open resolves."""
    store = MemoryStore()
    with contextlib.ExitStack() as stack:
        _, root = serving(stack, family.member("mt"), table=MountTable(store=store))
        _, svc = serving(stack, family.member("server"), Label("svc"))
        store.mount(("svc",), svc, 3600.0, **_PLAIN)
        ns = Namespace([root])
        first = Client(family.member("client"), namespace=ns)
        second = Client(family.member("client"), namespace=ns)
        stack.callback(second.close)
        assert first.call(loopback_ctx(), "svc", "Who") == ("svc",)
        first.close()
        if how == "collected":
            del first
            gc.collect()
        ns.flush_cache_entry("svc")
        assert second.call(loopback_ctx(), "svc", "Who") == ("svc",)
