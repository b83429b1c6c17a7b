"""Run a mount table process: in memory, or one replica of a table shared through etcd.

Owns: :func:`serve_mount_table` (what a command line calls: a started Server with a
MountTable on the chosen store) and :func:`main`, its command line::

    python -m ipcclient.server.mounttabled --listen 127.0.0.1:8101 \\
        --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --prefix /prod/mt/ \\
        --credentials ~/.ipc/mt

Every replica started with the same ``--etcd`` cluster and ``--prefix`` serves the same
names. Without ``--etcd`` the table lives in this process's memory.

Must not: print from the library function (only :func:`main` writes to stdout/stderr).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from ipcclient import errors
from ipcclient.security import Principal
from ipcclient.server.etcdstore import DEFAULT_PREFIX, EtcdStore
from ipcclient.server.mounttable import MountTable
from ipcclient.server.server import Server

__all__ = ["main", "serve_mount_table"]

log = logging.getLogger("ipcclient.mounttable")


def serve_mount_table(
    principal: Principal,
    listen: str = "127.0.0.1:0",
    *,
    protocol: str = "tcp",
    etcd: str | Sequence[str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    mount_patterns: Sequence[str] | None = ("...",),
    resolve_patterns: Sequence[str] | None = ("...",),
) -> tuple[Server, MountTable, str]:
    """Start a mount table server; returns ``(server, table, "/" + endpoint)``.

    With ``etcd`` (member URLs, a list or a comma-separated str) the table is a replica of
    the one stored under ``prefix``; without it, the table is in memory. Stop it with
    ``server.stop()`` then ``table.close()``.

    Raises:
        BadArgError: a bad endpoint, prefix or pattern.
        IPCError: the server could not listen.
    """
    store = EtcdStore(etcd, prefix) if etcd else None
    table = MountTable(
        store=store, mount_patterns=mount_patterns, resolve_patterns=resolve_patterns
    )
    server = Server(principal, serves_mount_table=True)
    try:
        endpoint = server.listen(protocol, listen)
        server.serve_dispatcher(table)
    except BaseException:
        server.stop()
        table.close()
        raise
    return server, table, "/" + endpoint


def _patterns(value: str | None) -> tuple[str, ...] | None:
    """``None`` (not given): every validated blessing; ``"*"``: everyone; else the list."""
    if value is None:
        return ("...",)
    if value == "*":
        return None
    return tuple(p for p in value.split(",") if p)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ipcclient.server.mounttabled", description="Run a mount table."
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on")
    parser.add_argument("--etcd", help="etcd member URLs, comma-separated (default: in memory)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the table's etcd key prefix")
    parser.add_argument("--credentials", help="a principal directory (default: a new one)")
    parser.add_argument(
        "--mount", help="blessing patterns allowed to mount, comma-separated ('*': everyone)"
    )
    parser.add_argument(
        "--resolve", help="blessing patterns allowed to resolve, comma-separated ('*': everyone)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Handled before the name is printed: whoever reads it and stops this process at once
    # still gets the orderly stop, not the default death.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.credentials:
            principal = Principal.load(args.credentials)
        else:
            principal = Principal.generate()
            principal.store.default = principal.bless_self("mounttable")
        server, table, name = serve_mount_table(
            principal,
            args.listen,
            etcd=args.etcd,
            prefix=args.prefix,
            mount_patterns=_patterns(args.mount),
            resolve_patterns=_patterns(args.resolve),
        )
    except errors.IPCError as exc:
        print(f"mounttable: {exc}", file=sys.stderr)
        return 2
    print(name, flush=True)
    # In short slices: a signal can be delivered to any thread, and its handler runs only
    # when the main thread runs Python code (a long wait would hold it back that long).
    while not stop.wait(0.5):
        pass
    server.stop()
    table.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
