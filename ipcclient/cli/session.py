"""What every command that calls needs from its flags: a client, a context, call options.

Owns: the client of ``--credentials`` and ``--namespace`` (or the environment), the
context of ``--timeout`` and the options of ``--server-pattern`` and ``--wait``. Must not:
make a call or print anything.
"""

from __future__ import annotations

import argparse
import math

from ipcclient import env
from ipcclient.cli.exits import CommandError
from ipcclient.cli.principal import principal_for
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.options import CallOption, ServerPattern, WaitForReady
from ipcclient.security.principal import Principal

__all__ = ["DEFAULT_TIMEOUT", "call_context", "call_options", "client_for", "namespace_roots"]

DEFAULT_TIMEOUT = 30.0
"""Seconds a command waits by default (``--timeout``)."""


def client_for(args: argparse.Namespace, principal: Principal | None = None) -> Client:
    """A client as ``principal`` (default: the principal of ``--credentials``) with the
    root mount tables of ``--namespace`` (default: the environment's)."""
    return Client(
        principal if principal is not None else principal_for(args), roots=namespace_roots(args)
    )


def namespace_roots(args: argparse.Namespace) -> tuple[str, ...]:
    """The root mount tables of ``--namespace`` (default: the environment's)."""
    roots = None if args.namespace is None else [r for r in args.namespace.split(",") if r]
    return env.roots(roots)


def call_context(args: argparse.Namespace) -> Context:
    timeout = float(args.timeout)
    if not (math.isfinite(timeout) and timeout > 0):
        raise CommandError(f"--timeout must be > 0 seconds, got {args.timeout!r}")
    return Context.background().with_timeout(timeout)


def call_options(args: argparse.Namespace) -> list[CallOption]:
    """The options of ``--server-pattern`` and ``--wait``."""
    options: list[CallOption] = []
    if args.server_pattern:
        options.append(ServerPattern(*args.server_pattern))
    if getattr(args, "wait", False):
        options.append(WaitForReady())
    return options
