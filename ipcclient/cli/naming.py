"""The ``ipc`` commands on names: ``resolve``, ``mount``, ``unmount`` and ``glob``.

Owns: those commands (mount and unmount in every mount table that holds the name; glob over
the root mount tables or a rooted pattern, printed as a tree). Must not: load principals
itself (the session does) or serve anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from ipcclient import env, errors
from ipcclient.cli.exits import EXIT_OK
from ipcclient.cli.session import call_context, call_options, client_for
from ipcclient.cli.text import Progress, err, human, out, parse_duration, tree_lines
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.naming.endpoint import canonical_server
from ipcclient.naming.mountentry import MountEntry
from ipcclient.server.mounttable import LEAF, MT, REPLACE

__all__ = ["cmd_glob", "cmd_mount", "cmd_resolve", "cmd_unmount"]


def cmd_resolve(args: argparse.Namespace) -> int:
    with client_for(args) as client, Progress(f"resolving {args.name}"):
        entry = client.namespace.resolve(call_context(args), args.name)
    for name in entry.names():
        out(name)
    return EXIT_OK


def _mount_targets(client: Client, ctx: Context, name: str) -> list[str]:
    entry = client.namespace.resolve_to_mount_table(ctx, name)
    if not entry.servers:
        raise errors.NoServersError(f"no mount table holds {name!r}")
    return [names.join_address_name(s.server, entry.name, terminal=True) for s in entry.servers]


def cmd_mount(args: argparse.Namespace) -> int:
    flags = (MT if args.mt else 0) | (LEAF if args.leaf else 0) | (REPLACE if args.replace else 0)
    ttl = parse_duration(args.ttl)
    granted: list[float | None] = []
    with client_for(args) as client:
        ctx = call_context(args)
        for target in _mount_targets(client, ctx, args.name):
            client.call(ctx, target, "Mount", args.server, ttl, flags, options=call_options(args))
            granted.append(_granted_ttl(client, ctx, target, args.server, args))
    known = [t for t in granted if t is not None]
    if known:  # (a table clamps the TTL to its own maximum: say what it kept)
        out(f"mounted {args.server} at {args.name} for {human(min(known))}")
    else:
        out(f"mounted {args.server} at {args.name} (asked for {human(ttl)})")
    return EXIT_OK


def _granted_ttl(
    client: Client, ctx: Context, target: str, server: str, args: argparse.Namespace
) -> float | None:
    """The TTL the mount table at ``target`` now lists for ``server`` at the name itself,
    read back with ResolveStep; None when it cannot be read (the mounter may not resolve
    there, say, or a mount above the name answers for it)."""
    try:
        mine = canonical_server(server)
        (value,) = client.call(ctx, target, "ResolveStep", options=call_options(args))
        entry = MountEntry.from_wire(value, 0.0)  # (deadlines counted from 0: the TTLs)
    except (errors.IPCError, ValueError):  # (ValueError: not one result)
        return None
    if entry.name:  # (the answer of a mount above the name: not the mount just made)
        return None
    ttls = [s.deadline for s in entry.servers if s.server == mine]
    return max(ttls) if ttls else None


def cmd_unmount(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        ctx = call_context(args)
        for target in _mount_targets(client, ctx, args.name):
            client.call(ctx, target, "Unmount", args.server, options=call_options(args))
    out(f"unmounted {args.server or 'every server'} from {args.name}")
    return EXIT_OK


def cmd_glob(args: argparse.Namespace) -> int:
    pattern = args.pattern
    with client_for(args) as client, Progress(f"glob {pattern}") as progress:
        if names.is_rooted(pattern):
            address, rest = names.split_address_name(pattern)
            targets, pattern = ["/" + address], rest or "..."
        else:
            targets = list(client.namespace.roots)
            if not targets:
                raise errors.NoServersError(
                    f"no mount table to glob: set {env.NAMESPACE_VAR} or pass --namespace"
                )
        found: dict[str, list[str]] = {}
        ctx = call_context(args)
        for target in targets:
            with client.start_call(ctx, target, "Glob", [pattern], *call_options(args)) as call:
                for item in call:
                    if isinstance(item, dict) and isinstance(item.get("name"), str):
                        listed = item.get("servers")
                        if not isinstance(listed, list | tuple):
                            listed = ()  # (a malformed item from the mount table: no servers)
                        servers = [_mounted(s) for s in listed if isinstance(s, dict)]
                        found.setdefault(item["name"], []).extend(servers)
                        progress.note(f"{len(found)} names")
                call.finish()
    for line in tree_lines(found):
        out(line)
    if not found:
        last = args.pattern.rstrip("/").rsplit("/", 1)[-1]
        below = (
            f" (what is below it: '{args.pattern.rstrip('/')}/*', or "
            f"'{args.pattern.rstrip('/')}/...' for everything)"
            if last and not any(c in last for c in "*?[") and last != "..."
            else ""
        )
        err(f"no names match {args.pattern!r}{below}")
    return EXIT_OK


def _mounted(server: dict[str, Any]) -> str:
    ttl = server.get("ttl")
    name = server.get("server")
    tail = "" if not isinstance(ttl, int | float) else f" (ttl {human(ttl)})"
    return f"{name if isinstance(name, str) else '?'}{tail}"
