"""``make demo``: the whole story of ipcclient in one readable script.

Owns: a narrated end-to-end run: principals created and saved in a temporary folder, an
embedded mount table and server started in-process, the server published under a name,
unary, streaming and bidirectional calls by name, a call refused because the server does not
match the pattern asked for, and a clean shutdown that leaves nothing running.

Must not: be imported by the library (it prints: that is its job as a command).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import ServerPattern
from ipcclient.security import Principal, caveats
from ipcclient.server.authorizer import AllowPatterns
from ipcclient.server.exposure import expose
from ipcclient.server.mounttable import MountTable
from ipcclient.server.publisher import Publisher
from ipcclient.server.server import Server, ServerCall

FORTUNES = [
    "A closed mouth gathers no feet.",
    "You will be authenticated, then authorized.",
    "Deadlines are a kindness to the future.",
]


@expose
class Fortune:
    """The demo service: one fortune, a stream of them, an echo, and a stream that doubles."""

    def Get(self, call: ServerCall) -> str:
        """One fortune."""
        return FORTUNES[0]

    def Stream(self, call: ServerCall, n: int) -> int:
        """Stream n fortunes, then return n."""
        for i in range(n):
            call.send(FORTUNES[i % len(FORTUNES)])
        return n

    def Echo(self, call: ServerCall, value: Any) -> Any:
        """Return value unchanged."""
        return value

    def Double(self, call: ServerCall) -> int:
        """For each item the client streams, stream back twice it; return how many."""
        count = 0
        for item in call:
            call.send(item * 2)
            count += 1
        return count

    def WhoAmI(self, call: ServerCall) -> list[str]:
        """The caller's blessing names, as this server validated them."""
        return list(call.remote_blessing_names)


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_principals(folder: Path) -> dict[str, Principal]:
    """An identity provider 'idp' blesses a mount table, a server and a client."""
    idp = Principal.generate()
    idp_blessings = idp.bless_self("idp")
    made: dict[str, Principal] = {}
    for who in ("mounttable", "fortune", "alice"):
        p = Principal.generate()
        b = idp.bless(p.public_key, idp_blessings, who, [caveats.expires_in(3600)])
        p.store.default = b
        p.store.set(b, "...")
        p.roots.add_blessings(idp_blessings)
        p.save(folder / who, passphrase=b"demo passphrase" if who == "alice" else None)
        made[who] = Principal.load(
            folder / who, passphrase=b"demo passphrase" if who == "alice" else None
        )
    return made


def main() -> int:
    threads_before = {t.ident for t in threading.enumerate()}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ipcclient-demo-") as tmp:
        say("== 1. Principals")
        p = make_principals(Path(tmp))
        for who, principal in p.items():
            default = principal.store.default
            say(
                f"   {who:<10} key {principal.public_key.fingerprint[:23]}  blessed "
                f"{default.names if default else []}  (saved to and loaded from {tmp}/{who})"
            )

        say("== 2. An embedded mount table")
        mt_server = Server(p["mounttable"], serves_mount_table=True)
        mt_ep = mt_server.listen("tcp", "127.0.0.1:0")
        mt_server.serve_dispatcher(MountTable(mount_patterns=["idp"], resolve_patterns=["idp"]))
        root = "/" + mt_ep
        say(f"   listening at {mt_ep}")

        say("== 3. The fortune server, published as 'apps/fortune'")
        publisher_client = Client(p["fortune"], roots=[root])
        publisher = Publisher(publisher_client, publisher_client.namespace, ttl=30)
        server = Server(p["fortune"], publisher=publisher)
        server.listen("tcp", "127.0.0.1:0")
        server.serve(Fortune(), AllowPatterns(["idp"]))
        server.add_name("apps/fortune")
        say(f"   endpoint {server.endpoints[0]}")

        say("== 4. Alice calls it by name")
        ctx = Context.background().with_timeout(10)
        with Client(p["alice"], roots=[root]) as client:
            (fortune,) = client.call(ctx, "apps/fortune", "Get")
            say(f"   Get()        -> {fortune!r}")
            (names,) = client.call(ctx, "apps/fortune", "WhoAmI")
            say(f"   WhoAmI()     -> the server saw {names}")
            with client.start_call(ctx, "apps/fortune", "Stream", [3]) as call:
                for item in call:
                    say(f"   Stream(3)    <- {item!r}")
                say(f"   Stream(3)    -> {call.finish()}")
            with client.start_call(ctx, "apps/fortune", "Double") as call:
                for i in (1, 2, 3):
                    call.send(i)
                    say(f"   Double: sent {i}, got {call.recv()}")
                call.close_send()
                say(f"   Double       -> {call.finish()}")

            say("== 5. A server that does not match the pattern asked for is refused")
            try:
                client.call(ctx, "apps/fortune", "Get", options=[ServerPattern("idp:bank")])
            except errors.NotTrustedError as err:
                say(f"   refused: {type(err).__name__} (request sent: {err.request_sent})")
                say(f"            {err.msg}")
            vcs = client.vc_count()
            say(f"   one VC per endpoint, shared by every call: {vcs} (mount table, server)")

        say("== 6. Clean shutdown")
        server.stop()
        publisher_client.close()
        mt_server.stop()
        leftover = _wait_for_threads(threads_before)
        say(f"   threads left running: {leftover or 'none'}")
        say(f"== done in {time.monotonic() - started:.2f} s")
        return 0 if not leftover else 1


def _wait_for_threads(before: set[Any], seconds: float = 5.0) -> list[str]:
    """Threads started by the demo that are still alive (the context timer is a process-wide
    daemon and is not the demo's)."""
    deadline = time.monotonic() + seconds
    while True:
        left = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name != "ipcclient-context-timer"
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
