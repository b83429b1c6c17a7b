"""The ``ipc`` command (also ``python -m ipcclient``): principals, a mount table, names, calls.

Owns: the command line's parser (``argparse``), :func:`main` (running one sub-command and
turning what it raised into one line on standard error and an exit code) and the ``ipc``
console script. The sub-commands live beside it: :mod:`~ipcclient.cli.principal`,
:mod:`~ipcclient.cli.naming`, :mod:`~ipcclient.cli.calls` and :mod:`~ipcclient.cli.daemons`;
what they share is in :mod:`~ipcclient.cli.session` (client, context and options from the
flags), :mod:`~ipcclient.cli.text` (output, JSON, durations, the progress line) and
:mod:`~ipcclient.cli.exits` (the exit code of each kind of error, :data:`EXIT_CODES`).

Must not: be imported by the library (it prints and reads the terminal: that is its job),
or reach below the public API of the modules it drives.

Sub-commands (``ipc --version`` says whether the install is compiled)::

    ipc principal create DIR [--blessing NAME] [--encrypt] [--force]
    ipc principal fork DIR CHILD EXTENSION [--for DURATION] [--method M]... [--encrypt]
    ipc principal bless DIR TARGET EXTENSION [--for DURATION] [--method M]... [--out FILE [--force]]
    ipc principal set-default DIR BLESSINGS
    ipc principal add-root DIR BLESSINGS [--pattern P]
    ipc principal dump DIR
    ipc mounttable [--listen ADDR] [--name NAME]
    ipc resolve NAME
    ipc glob [PATTERN]
    ipc mount NAME SERVER [--ttl SECONDS] [--mt] [--leaf] [--replace]
    ipc unmount NAME [SERVER]
    ipc call NAME METHOD [ARG]... [--stdin] [--server-pattern P]... [--wait]
    ipc signature NAME
    ipc serve [--name NAME] [--listen ADDR] [--allow PATTERN]...

Every command that runs as a principal reads ``--credentials`` or ``IPCCLIENT_CREDENTIALS``;
every command that resolves names reads ``--namespace`` or ``IPCCLIENT_NAMESPACE``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ipcclient
from ipcclient import compiled, env, errors
from ipcclient.cli.calls import cmd_call, cmd_signature
from ipcclient.cli.daemons import cmd_mounttable, cmd_serve
from ipcclient.cli.exits import (
    EXIT_BAD_ARG,
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_ACCESS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CommandError,
    exit_code,
)
from ipcclient.cli.naming import cmd_glob, cmd_mount, cmd_resolve, cmd_unmount
from ipcclient.cli.principal import (
    BLESSING_TOKEN_PREFIX,
    blessing_token,
    cmd_principal_add_root,
    cmd_principal_bless,
    cmd_principal_create,
    cmd_principal_dump,
    cmd_principal_fork,
    cmd_principal_set_default,
    load_principal,
    read_blessings,
    read_passphrase,
)
from ipcclient.cli.session import DEFAULT_TIMEOUT
from ipcclient.cli.text import Progress, err, out, parse_duration, to_json, tree_lines

__all__ = [
    "BLESSING_TOKEN_PREFIX",
    "DEFAULT_TIMEOUT",
    "EXIT_BAD_ARG",
    "EXIT_BROKEN_PIPE",
    "EXIT_CODES",
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_NO_ACCESS",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CommandError",
    "Progress",
    "blessing_token",
    "build_parser",
    "console_main",
    "exit_code",
    "load_principal",
    "main",
    "parse_duration",
    "read_blessings",
    "read_passphrase",
    "to_json",
    "tree_lines",
    "version_line",
]


def _grace(text: str) -> float:
    """``--grace``: seconds >= 0, checked when the command starts (not when it stops)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipc",
        description="ipcclient's command line: principals, a mount table, names and calls.",
        epilog=(
            f"Environment: {env.CREDENTIALS_VAR} (a principal directory), "
            f"{env.NAMESPACE_VAR} (comma-separated root mount tables). "
            "Exit codes: 0 ok, 1 other error, 2 usage, 3 bad argument, 4 not found, "
            "5 no access / not trusted, 6 timeout, 7 connection, 8 the server's method "
            "failed, 130 interrupted, 141 output closed."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="the version, the Python running it, and whether this install is compiled",
    )
    parser.add_argument(
        "--credentials", metavar="DIR", help=f"principal directory (default ${env.CREDENTIALS_VAR})"
    )
    parser.add_argument(
        "--namespace", metavar="ROOTS", help=f"root mount tables (default ${env.NAMESPACE_VAR})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = sub.add_parser("principal", help="create and inspect principals and blessings")
    psub = pr.add_subparsers(dest="action", required=True, metavar="ACTION")

    def caveat_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--for",
            dest="duration",
            metavar="DURATION",
            help="expire after DURATION (90s, 15m, 12h, 7d)",
        )
        p.add_argument(
            "--method", action="append", metavar="M", help="only for method M (repeatable)"
        )

    p = psub.add_parser("create", help="a new principal blessed by itself")
    p.add_argument("dir")
    p.add_argument("--blessing", metavar="NAME", help="its blessing name (default: DIR's name)")
    p.add_argument("--encrypt", action="store_true", help="encrypt the key (asks a passphrase)")
    p.add_argument("--force", action="store_true", help="replace a principal already there")
    p.set_defaults(func=cmd_principal_create)

    p = psub.add_parser("fork", help="a new principal blessed by DIR as DIR's name:EXTENSION")
    p.add_argument("dir")
    p.add_argument("child")
    p.add_argument("extension")
    caveat_flags(p)
    p.add_argument("--encrypt", action="store_true", help="encrypt the key (asks a passphrase)")
    p.add_argument("--force", action="store_true", help="replace a principal already there")
    p.set_defaults(func=cmd_principal_fork)

    p = psub.add_parser("bless", help="bless another key; prints the blessing")
    p.add_argument("dir")
    p.add_argument("target", help="a principal directory or a public key in hex")
    p.add_argument("extension")
    caveat_flags(p)
    p.add_argument("--out", metavar="FILE", help="write the blessing to a new file FILE")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=cmd_principal_bless)

    p = psub.add_parser("set-default", help="present BLESSINGS by default")
    p.add_argument("dir")
    p.add_argument("blessings", help="a blessing, a file holding one, or - (standard input)")
    p.set_defaults(func=cmd_principal_set_default)

    p = psub.add_parser("add-root", help="trust the root of BLESSINGS")
    p.add_argument("dir")
    p.add_argument("blessings", help="a blessing, a file, - , or a principal directory")
    p.add_argument("--pattern", help="trust it only for names matching PATTERN")
    p.set_defaults(func=cmd_principal_add_root)

    p = psub.add_parser("dump", help="names, key, caveats and roots of a principal")
    p.add_argument("dir")
    p.set_defaults(func=cmd_principal_dump)

    def call_flags(p: argparse.ArgumentParser, *, wait: bool = True) -> None:
        p.add_argument("--timeout", default=DEFAULT_TIMEOUT, type=float, metavar="SECONDS")
        p.add_argument(
            "--server-pattern",
            action="append",
            metavar="P",
            help="only a server whose blessings match P (repeatable)",
        )
        if wait:
            p.add_argument(
                "--wait",
                action="store_true",
                help="until --timeout, wait for NAME to be mounted and its server to answer "
                "(default: fail at once when the name is not mounted)",
            )

    def daemon_flags(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--listen", default="127.0.0.1:0", metavar="ADDR")
        p.add_argument("--name", help=f"publish the {what} under NAME in the namespace")
        p.add_argument(
            "--grace",
            default=5.0,
            type=_grace,
            metavar="SECONDS",
            help="on Ctrl-C, let calls in flight finish for this long",
        )

    p = sub.add_parser("mounttable", help="run a mount table; prints its rooted endpoint")
    daemon_flags(p, "mount table")
    p.add_argument("--mount-pattern", action="append", metavar="P", help="who may mount")
    p.add_argument("--resolve-pattern", action="append", metavar="P", help="who may resolve")
    p.set_defaults(func=cmd_mounttable)

    p = sub.add_parser("serve", help="run the example fortune service")
    daemon_flags(p, "service")
    p.add_argument("--allow", action="append", metavar="P", help="callers allowed (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("resolve", help="the servers of a name")
    p.add_argument("name")
    call_flags(p, wait=False)
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("glob", help="the names matching PATTERN, as a tree")
    p.add_argument("pattern", nargs="?", default="...")
    call_flags(p)
    p.set_defaults(func=cmd_glob)

    p = sub.add_parser("mount", help="mount SERVER at NAME")
    p.add_argument("name")
    p.add_argument("server")
    p.add_argument("--ttl", default="5m", help="how long the mount lasts (default 5m)")
    p.add_argument("--mt", action="store_true", help="SERVER is a mount table")
    p.add_argument("--leaf", action="store_true", help="SERVER serves nothing below NAME")
    p.add_argument("--replace", action="store_true", help="replace what is mounted at NAME")
    call_flags(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", help="unmount SERVER (default: every server) from NAME")
    p.add_argument("name")
    p.add_argument("server", nargs="?", default="")
    call_flags(p)
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("call", help="call METHOD on NAME; arguments and results as JSON")
    p.add_argument("name")
    p.add_argument("method")
    p.add_argument("args", nargs="*", metavar="ARG", help="one JSON value per argument")
    p.add_argument(
        "--stdin", action="store_true", help="stream each line of standard input as an item"
    )
    call_flags(p)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("signature", help="the methods NAME offers, with their docs")
    p.add_argument("name")
    call_flags(p)
    p.set_defaults(func=cmd_signature)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: prints :func:`version_line` and exits (worked out only when asked: it
    looks for each compiled module's file)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        out(version_line())
        parser.exit()


def version_line() -> str:
    """``ipc --version``: e.g. ``ipcclient 0.1.0 (Python 3.11.7, compiled: 30 of 30 modules)``
    or ``(Python 3.11.7, pure Python)``."""
    count = len(compiled.compiled_modules())
    build = f"compiled: {count} of {len(compiled.MODULES)} modules" if count else "pure Python"
    return f"ipcclient {ipcclient.__version__} (Python {platform.python_version()}, {build})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (errors print one line, ``-v`` a traceback)."""
    verbose = False
    try:
        # (Parsing prints too: --version to a closed pipe is a BrokenPipeError, below.)
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except errors.IPCError as exc:
        text = f"{exc.id}: {exc.msg or type(exc).__name__}"
        if not isinstance(exc, errors.NoAccessError):  # (a server's refusal advises it)
            text = _command_line_hints(text)
        return _fail(verbose, exc, text, exit_code(exc))
    except CommandError as exc:
        return _fail(verbose, exc, exc.msg, exc.code)
    except BrokenPipeError:
        # The reader of our output went away (``ipc glob | head``), or standard output was
        # closed from the start (``>&-``): stop quietly, as a command killed by SIGPIPE
        # does, and keep Python from complaining at exit.
        if sys.stdout is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail(verbose, exc, f"{exc.strerror or exc}: {exc.filename or ''}", EXIT_BAD_ARG)
    except KeyboardInterrupt as exc:
        return _fail(verbose, exc, "interrupted", EXIT_INTERRUPTED)


_HINTS = (
    ("pass WaitForReady() to wait for it", "pass --wait to wait for it"),
    (
        "give the client roots=['/host:port']",
        f"pass --namespace /host:port or set {env.NAMESPACE_VAR}",
    ),
    (
        "principal.roots.add_blessings(provider_blessings)",
        "ipc principal add-root DIR PROVIDER_BLESSINGS",
    ),
)
"""The library's advice to a program, and the same advice to a user of this command."""


def _command_line_hints(text: str) -> str:
    """An error's line with the library's advice (a call option, a Python call) given as
    the command's flags and commands instead."""
    for api, command in _HINTS:
        text = text.replace(api, command)
    return text


def _fail(verbose: bool, exc: BaseException, text: str, code: int) -> int:
    if verbose and sys.stderr is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    err(f"ipc: error: {text}")
    return code


def console_main() -> None:
    """The ``ipc`` console script."""
    sys.exit(main())
