"""Shared fixtures: principals blessed by one root, servers and clients over loopback.

Every server and client a test makes through these fixtures is stopped/closed afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings

from ipcclient.client import Client
from ipcclient.options import ClientOptions
from ipcclient.security import Blessings, Principal, caveats
from ipcclient.server.authorizer import Authorizer
from ipcclient.server.server import Server, ServerOptions


@dataclass
class Family:
    """A root identity provider and helpers to make principals it blessed."""

    root: Principal = field(default_factory=Principal.generate)

    def __post_init__(self) -> None:
        self.root_blessings: Blessings = self.root.bless_self("root")

    def member(self, extension: str, *cavs: caveats.Caveat) -> Principal:
        """A principal blessed ``root:<extension>`` that trusts the root. An extension with
        ":" is a chain: ``a:b`` is blessed ``b`` by a principal blessed ``a`` by the root.
        ``cavs`` go on the last certificate."""
        blesser, blessings = self.root, self.root_blessings
        parts = extension.split(":")
        p = blesser
        for i, part in enumerate(parts):
            p = Principal.generate()
            last = i == len(parts) - 1
            chosen = (list(cavs) or None) if last else None
            blessings = blesser.bless(
                p.public_key, blessings, part, chosen or [caveats.unconstrained_use()]
            )
            blesser = p
        b = blessings
        p.store.default = b
        p.store.set(b, "...")
        p.roots.add_blessings(self.root_blessings)
        return p


# No per-example deadline (Hypothesis's default is 200 ms): on a loaded CI machine a stall of
# the process fails an example that is merely slow, as "unreliable timings". Every test still
# has pytest-timeout's bound.
settings.register_profile("ipcclient", deadline=None)
settings.load_profile("ipcclient")


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt in the main thread for the test's length, as
    Python sets it up by default, even when the suite started with SIGINT ignored (a
    background job of a non-interactive shell: there a test pressing Ctrl-C would wait for
    an interrupt that never comes)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.fixture
def family() -> Family:
    return Family()


@pytest.fixture
def make_server(family: Family) -> Iterator[Callable[..., tuple[Server, str]]]:
    """``make_server(obj, authorizer=None, principal=None, **options)`` -> (server, name)."""
    made: list[Server] = []

    def make(
        obj: Any,
        authorizer: Authorizer | None = None,
        *,
        principal: Principal | None = None,
        protocol: str = "tcp",
        address: str = "127.0.0.1:0",
        options: ServerOptions | None = None,
    ) -> tuple[Server, str]:
        srv = Server(principal or family.member("server"), options=options)
        made.append(srv)
        ep = srv.listen(protocol, address)
        srv.serve(obj, authorizer)
        return srv, "/" + ep

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def make_client(family: Family) -> Iterator[Callable[..., Client]]:
    """``make_client(principal=None, **kw)`` -> a Client (closed after the test)."""
    made: list[Client] = []

    def make(principal: Principal | None = None, **kw: Any) -> Client:
        if "options" not in kw:
            kw["options"] = ClientOptions(default_call_timeout=20.0)
        c = Client(principal or family.member("client"), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def etcd() -> Iterator[Any]:
    """One real etcd member for the whole session (tests take a prefix of their own)."""
    from tests.etcd_server import cluster

    with cluster(1) as (member,):
        yield member


def refuse_threads(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Make starting a thread whose name begins with ``prefix`` fail as a process at its
    thread limit fails (``RuntimeError: can't start new thread``): the one fault a real
    part cannot produce on demand. ``monkeypatch.undo()`` (or the test's end) lifts it."""
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(prefix):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
