"""The ``ipc`` commands that serve until stopped: ``mounttable`` and ``serve``.

Owns: running a mount table or the example service, publishing it under ``--name``, and
stopping on Ctrl-C or SIGTERM with the calls in flight given ``--grace`` seconds. Must not:
make calls of its own (the publisher does the mounting).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Callable, Iterator

from ipcclient import env
from ipcclient.cli.exits import EXIT_OK, EXIT_USAGE, CommandError
from ipcclient.cli.principal import principal_for
from ipcclient.cli.session import client_for, namespace_roots
from ipcclient.cli.text import err, out, warnings_shown
from ipcclient.client import Client
from ipcclient.naming import is_rooted
from ipcclient.security.principal import Principal
from ipcclient.server.authorizer import AllowPatterns
from ipcclient.server.mounttable import MountTable
from ipcclient.server.publisher import Publisher
from ipcclient.server.server import Server

__all__ = ["cmd_mounttable", "cmd_serve"]


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C (a KeyboardInterrupt in the main thread) meanwhile."""
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _check_name(args: argparse.Namespace) -> None:
    """``--name`` needs somewhere to publish: a root mount table (``--namespace`` or the
    environment), unless the name is rooted. Checked before the principal is loaded."""
    if args.name and not is_rooted(args.name) and not namespace_roots(args):
        raise CommandError(
            f"--name {args.name}: no mount table to publish it in (pass --namespace ROOTS, "
            f"set {env.NAMESPACE_VAR}, or give a rooted name)",
            EXIT_USAGE,
        )


def _publishing(
    args: argparse.Namespace, principal: Principal
) -> tuple[Client | None, Publisher | None]:
    """The client and publisher that keep a daemon mounted under ``--name`` (both None
    when it is not given)."""
    if not args.name:
        return None, None
    client = client_for(args, principal)
    return client, Publisher(client, client.namespace, ttl=60)


def _run_daemon(
    args: argparse.Namespace,
    server: Server,
    client: Client | None,
    serve: Callable[[Server, str], str],
) -> int:
    """Listen on ``--listen``, let ``serve(server, endpoint)`` start serving (it returns the
    line to print on standard error), publish under ``--name``, print the rooted endpoint,
    and serve until Ctrl-C or SIGTERM (calls in flight get ``--grace`` seconds); then stop
    the server and close the publishing client. SIGTERM is handled before the endpoint is
    printed: a supervisor that reads it and stops the daemon at once still gets the
    orderly stop (its names unmounted) and exit code 0, as during the wait, not the default
    death. Meanwhile the library's warnings (a name that could not be published) print on
    standard error."""
    with warnings_shown("ipcclient"):  # (stopping too: an unmount that failed)
        try:
            with _sigterm_interrupts():
                try:
                    ep = server.listen("tcp", args.listen)
                    note = serve(server, ep)
                    if args.name:
                        server.add_name(args.name)
                    out("/" + ep)
                    err(note)
                except KeyboardInterrupt:
                    # Ctrl-C or SIGTERM while starting (a supervisor that stops the daemon
                    # as soon as it prints anything, a warning included): the same orderly
                    # stop as during the wait, below.
                    server.stop(grace=args.grace)
                    return EXIT_OK
                server.wait(grace=args.grace)
        finally:
            try:
                server.stop()
            finally:  # (even when a second Ctrl-C interrupts the stop)
                if client is not None:
                    client.close()
    return EXIT_OK


def cmd_mounttable(args: argparse.Namespace) -> int:
    _check_name(args)
    principal = principal_for(args)
    client, publisher = _publishing(args, principal)
    server = Server(principal, serves_mount_table=True, publisher=publisher)

    def serve(server: Server, ep: str) -> str:
        server.serve_dispatcher(
            MountTable(
                mount_patterns=args.mount_pattern or ("...",),
                resolve_patterns=args.resolve_pattern or ("...",),
            )
        )
        return f"mount table listening; use it with: export {env.NAMESPACE_VAR}=/{ep}"

    return _run_daemon(args, server, client, serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ipcclient.demo import Fortune  # the example service

    _check_name(args)
    principal = principal_for(args)
    client, publisher = _publishing(args, principal)
    server = Server(principal, publisher=publisher)

    def serve(server: Server, ep: str) -> str:
        default = principal.store.default
        allow = args.allow or sorted({n.split(":")[0] for n in (default.names if default else [])})
        server.serve(Fortune(), AllowPatterns(allow))
        where = f"as {args.name}" if args.name else "(not published: pass --name)"
        return f"serving the example service {where}; callers need a blessing matching {allow}"

    return _run_daemon(args, server, client, serve)
