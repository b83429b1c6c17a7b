"""A server in a child process, for tests that kill it (python -m tests.child_server DIR).

Loads the principal saved in DIR, serves a small streaming service on 127.0.0.1, prints its
endpoint on one line, and runs until killed or until its stdin closes.
"""

from __future__ import annotations

import sys
import threading
import time

from ipcclient.security import Principal
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall


@expose
class Streamer:
    def Echo(self, call: ServerCall, x: object) -> object:
        return x

    def Forever(self, call: ServerCall) -> None:
        i = 0
        while not call.context.done():
            call.send(i)
            i += 1
            time.sleep(0.01)


def main() -> None:
    principal = Principal.load(sys.argv[1])
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:0"
    server = Server(principal)
    ep = server.listen("tcp", address)
    server.serve(Streamer(), AllowEveryone())
    print(ep, flush=True)
    threading.Timer(120, lambda: sys.exit(3)).start()  # never outlive a test run
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
