"""An in-memory mount table and a fake network of them, for the namespace tests.

FAKE, on purpose: the real mount table server does not exist yet. ``InMemoryMountTable``
models the mount table's ``ResolveStep`` semantics (Vanadium's mounttable.ResolveStep): walk
the name's elements from the root, the first element with a live mount answers with the
remaining elements and the mount's servers (TTLs relative), no mount on the path is
"no such name" (NoExistError). ``FakeNetwork`` is a :class:`~ipcclient.naming.Caller` that
routes a terminal rooted name to the table at its address. Once the real mount table
exists, the namespace tests should run against it as well.

The tests at the bottom check the fake itself, so the namespace tests rest on something
that is checked.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ipcclient import errors
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.naming.namespace import MountEntry


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Mount:
    servers: dict[str, float] = field(default_factory=dict)  # server -> deadline, in order
    mt: bool = False
    leaf: bool = False


class InMemoryMountTable:
    """The ResolveStep semantics of a mount table, in memory."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._mounts: dict[tuple[str, ...], _Mount] = {}

    def mount(
        self, name: str, server: str, ttl: float, *, mt: bool = False, leaf: bool = False
    ) -> None:
        """Add ``server`` under ``name`` (a server mounted again gets the new deadline)."""
        key = names.components(name)
        if not key:
            raise errors.BadArgError("cannot mount at the root of a mount table")
        with self._lock:
            mount = self._mounts.setdefault(key, _Mount(mt=mt, leaf=leaf))
            if (mount.mt, mount.leaf) != (mt, leaf):
                raise errors.BadArgError("flags differ from the existing mount")
            mount.servers.pop(server, None)
            mount.servers[server] = self._clock() + ttl

    def unmount(self, name: str) -> None:
        with self._lock:
            self._mounts.pop(names.components(name), None)

    def resolve_step(self, suffix: str) -> dict[str, Any]:
        """The wire form of the first live mount on ``suffix``'s path, or NoExistError."""
        elems = names.components(suffix)
        now = self._clock()
        with self._lock:
            for cut in range(1, len(elems) + 1):
                mount = self._mounts.get(elems[:cut])
                if mount is None:
                    continue
                live = {s: d for s, d in mount.servers.items() if d > now}
                if not live:
                    del self._mounts[elems[:cut]]
                    continue
                return {
                    "name": "/".join(elems[cut:]),
                    "servers": [{"server": s, "ttl": d - now} for s, d in live.items()],
                    "serves_mount_table": mount.mt,
                    "is_leaf": mount.leaf,
                }
        raise errors.NoExistError(f"mount table: no such name {suffix!r}", suffix)


class FakeNetwork:
    """A Caller that routes calls to in-memory mount tables by the name's address.

    ``plain`` addresses are servers that are not mount tables (UnknownMethod on
    ResolveStep); ``down`` addresses fail to connect; ``errors_by_address`` make an address
    raise a given error; ``answers_by_address`` make it return given raw results.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tables: dict[str, InMemoryMountTable] = {}
        self.plain: set[str] = set()
        self.down: set[str] = set()
        self.errors_by_address: dict[str, errors.IPCError] = {}
        self.answers_by_address: dict[str, Sequence[Any]] = {}
        self.calls: list[str] = []
        self.contexts: list[Context] = []
        self._lock = threading.Lock()

    def table(self, address: str) -> InMemoryMountTable:
        return self.tables.setdefault(address, InMemoryMountTable(self.clock))

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **options: Any
    ) -> Sequence[Any]:
        assert names.is_terminal(name), f"the namespace must pass terminal names: {name!r}"
        address, suffix = names.split_address_name(name)
        with self._lock:
            self.calls.append(name)
            self.contexts.append(ctx)
        err = ctx.err()
        if err is not None:
            raise err
        if address in self.down:
            raise errors.ConnectionFailedError(f"dial {address}: connection refused")
        if address in self.errors_by_address:
            raise self.errors_by_address[address].with_context()
        if address in self.answers_by_address:
            return self.answers_by_address[address]
        if address in self.plain:
            raise errors.UnknownMethodError(f"{address}: no method {method}")
        table = self.tables.get(address)
        if table is None:
            raise errors.ConnectionFailedError(f"dial {address}: no such host")
        if method != "ResolveStep":
            raise errors.UnknownMethodError(f"mount table has no method {method}")
        if args:
            raise errors.BadArgError("ResolveStep takes no arguments")
        return [table.resolve_step(suffix)]


# -- tests of the fake itself ------------------------------------------------------------------


def test_resolve_step_answers_at_the_first_mount_on_the_path() -> None:
    clock = FakeClock()
    mt = InMemoryMountTable(clock)
    mt.mount("a/b", "/h:1", 10, mt=True)
    mt.mount("a/b/c", "/h:2", 10)  # shadowed by a/b, as in a real mount table
    wire = mt.resolve_step("a/b/c/d")
    entry = MountEntry.from_wire(wire, clock())
    assert entry.name == "c/d"
    assert [s.server for s in entry.servers] == ["/h:1"]
    assert entry.servers[0].deadline == pytest.approx(clock() + 10)
    assert entry.serves_mount_table is True


def test_resolve_step_no_mount_on_the_path_is_no_exist() -> None:
    mt = InMemoryMountTable(FakeClock())
    mt.mount("a/b", "/h:1", 10)
    with pytest.raises(errors.NoExistError):
        mt.resolve_step("a/c")
    with pytest.raises(errors.NoExistError):
        mt.resolve_step("a")


def test_resolve_step_skips_expired_mounts() -> None:
    clock = FakeClock()
    mt = InMemoryMountTable(clock)
    mt.mount("a", "/h:1", 5)
    mt.mount("a", "/h:2", 50)
    clock.advance(10)
    wire = mt.resolve_step("a/x")
    assert [s["server"] for s in wire["servers"]] == ["/h:2"]
    clock.advance(100)
    with pytest.raises(errors.NoExistError):
        mt.resolve_step("a/x")


def test_mount_flags_must_agree_and_root_is_refused() -> None:
    mt = InMemoryMountTable(FakeClock())
    mt.mount("a", "/h:1", 5, mt=True)
    with pytest.raises(errors.BadArgError):
        mt.mount("a", "/h:2", 5, mt=False)
    with pytest.raises(errors.BadArgError):
        mt.mount("", "/h:2", 5)
    mt.unmount("a")
    with pytest.raises(errors.NoExistError):
        mt.resolve_step("a")


def test_fake_network_routes_and_fails_like_a_network() -> None:
    clock = FakeClock()
    net = FakeNetwork(clock)
    net.table("mt:1").mount("a", "/h:1", 5)
    ctx = Context.background()
    (wire,) = net.call(ctx, "/mt:1//a/b", "ResolveStep", [])
    assert wire["name"] == "b"
    with pytest.raises(errors.ConnectionFailedError):
        net.call(ctx, "/nowhere:1//a", "ResolveStep", [])
    with pytest.raises(errors.UnknownMethodError):
        net.call(ctx, "/mt:1//a", "Glob", [])
    with pytest.raises(errors.BadArgError):
        net.call(ctx, "/mt:1//a", "ResolveStep", [1])
    with pytest.raises(AssertionError):
        net.call(ctx, "/mt:1/a/b", "ResolveStep", [])
    assert math.isfinite(clock())
