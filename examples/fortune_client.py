"""Call the fortune server by name, as the principal in $IPCCLIENT_CREDENTIALS, resolving
through the mount tables of $IPCCLIENT_NAMESPACE (see docs/tutorial.md)::

    IPCCLIENT_CREDENTIALS=~/ipc/alice python examples/fortune_client.py tutorial/fortune
"""

from __future__ import annotations

import sys

from ipcclient import Client, Context, IPCError


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "tutorial/fortune"
    ctx = Context.background().with_timeout(10.0)  # every call below shares this deadline
    with Client.from_env() as client:
        try:
            fortune = client.call_one(ctx, name, "Get")  # one result
            print(f"Get -> {fortune}")
            first, second = client.call(ctx, name, "Both")  # several results: a tuple
            print(f"Both -> {first!r}, {second!r}")
            with client.start_call(ctx, name, "Stream", [2]) as call:
                for item in call:  # streamed items, as they arrive
                    print(f"Stream <- {item}")
                (count,) = call.finish()
            print(f"Stream -> {count}")
        except IPCError as err:
            print(f"failed: {err.id}: {err.msg}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
