"""Shared pieces of the ipcclient benchmark: a principal family and an echo service.

Not a test module (pytest collects ``test_*.py`` only). Loopback only.
"""

from __future__ import annotations

from typing import Any

from ipcclient.security import Principal, caveats
from ipcclient.server.server import ServerCall


def make_family() -> tuple[Principal, Principal]:
    """A server and a client principal, both blessed by one root and trusting it."""
    root = Principal.generate()
    root_b = root.bless_self("root")

    def member(ext: str) -> Principal:
        p = Principal.generate()
        b = root.bless(p.public_key, root_b, ext, [caveats.unconstrained_use()])
        p.store.default = b
        p.store.set(b, "...")
        p.roots.add_blessings(root_b)
        return p

    return member("server"), member("client")


class EchoService:
    """The benchmark's service: echo, and stream n items of a given size."""

    def Echo(self, call: ServerCall, payload: Any) -> Any:
        return payload

    def Stream(self, call: ServerCall, n: int, size: int) -> int:
        item = b"x" * size
        for _ in range(n):
            call.send(item)
        return n
