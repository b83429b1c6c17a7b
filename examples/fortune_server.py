"""Serve a fortune object under a name until Ctrl-C (or SIGTERM).

Runs as the principal in $IPCCLIENT_CREDENTIALS and publishes itself in the mount tables
of $IPCCLIENT_NAMESPACE (see docs/tutorial.md)::

    IPCCLIENT_CREDENTIALS=~/ipc/fortune python examples/fortune_server.py tutorial/fortune

Callers need a blessing that shares this server's root (``idp`` in the tutorial).
"""

from __future__ import annotations

import signal
import sys

from ipcclient import AllowPatterns, Client, Publisher, Results, Server, ServerCall, expose

FORTUNES = [
    "Deadlines are a kindness to the future.",
    "You will be authenticated, then authorized.",
    "A closed mouth gathers no feet.",
]


@expose  # every public method below may be called remotely
class Fortune:
    """What the server offers; each method's docstring is what `ipc signature` shows."""

    def Get(self, call: ServerCall) -> str:
        """One fortune."""
        return FORTUNES[0]

    def Stream(self, call: ServerCall, n: int) -> int:
        """Stream n fortunes, then return n."""
        for i in range(n):
            call.send(FORTUNES[i % len(FORTUNES)])
        return n

    def Both(self, call: ServerCall) -> Results:
        """Two results at once: the caller gets (first, second)."""
        return Results(FORTUNES[0], FORTUNES[1])


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "tutorial/fortune"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does
    with Client.from_env() as client:  # the principal and namespace from the environment
        server = Server(client.principal, publisher=Publisher(client, client.namespace))
        endpoint = server.listen("tcp", "127.0.0.1:0")
        default = client.principal.store.default
        roots = sorted({n.split(":")[0] for n in default.names}) if default else []
        server.serve(Fortune(), AllowPatterns(roots))  # anyone blessed by the same root
        server.add_name(name)
        print(f"/{endpoint}", flush=True)
        print(f"serving as {name}; Ctrl-C stops", file=sys.stderr, flush=True)
        server.wait(grace=5.0)  # until Ctrl-C: unmount, let calls finish, stop
    return 0


if __name__ == "__main__":
    sys.exit(main())
