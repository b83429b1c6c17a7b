"""The ``ipc`` commands that call a server: ``call`` and ``signature``.

Owns: arguments read as JSON (from the command line, and items streamed from standard
input with ``--stdin``), results and streamed items printed as JSON, and a server's
signature printed with its docs. Must not: load principals itself or serve anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ipcclient import errors
from ipcclient.cli.exits import EXIT_OK, CommandError
from ipcclient.cli.session import call_context, call_options, client_for
from ipcclient.cli.text import Progress, out, to_json

__all__ = ["cmd_call", "cmd_signature"]


def _parse_args_json(raw: Sequence[str]) -> list[Any]:
    values = []
    for i, text in enumerate(raw, 1):
        try:
            values.append(json.loads(text))
        except (ValueError, RecursionError):  # (RecursionError: nested too deeply)
            raise CommandError(
                f"argument {i} ({text!r}) is not JSON; a string needs quotes: '\"{text}\"'"
            ) from None
    return values


def cmd_call(args: argparse.Namespace) -> int:
    values = _parse_args_json(args.args)
    if args.stdin and sys.stdin is None:  # (``<&-``: said before the call is made)
        raise CommandError("--stdin: standard input is closed")
    with client_for(args) as client, Progress(f"calling {args.name}.{args.method}") as progress:
        ctx = call_context(args)
        call = client.start_call(ctx, args.name, args.method, values, *call_options(args))
        with call:
            sender: threading.Thread | None = None
            failure: list[BaseException] = []
            if args.stdin:
                sender = threading.Thread(
                    target=_send_lines, args=(call, failure), name="ipc-stdin", daemon=True
                )
                sender.start()
            else:
                call.close_send()
            try:
                for count, item in enumerate(call, 1):
                    progress.clear()
                    out(to_json(item))
                    progress.note(f"{count} items")
                results = call.finish()
            except errors.IPCError:
                if failure:  # the call was cancelled because of bad input: say so
                    raise failure[0] from None
                raise
            if sender is not None:
                sender.join(1.0)
            if failure:
                raise failure[0]
    for value in results:
        out(to_json(value))
    return EXIT_OK


def _send_lines(call: Any, failure: list[BaseException]) -> None:
    """Stream each line of standard input as one item (JSON), then close the send side. A
    line that is not JSON, not text, or an item the call cannot send (nested too deeply,
    too large) cancels the call: ``failure`` says why."""
    try:
        for lineno, line in _input_lines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):  # (RecursionError: nested too deeply)
                raise CommandError(f"standard input line {lineno} is not JSON") from None
            try:
                call.send(item)
            except errors.BadArgError as exc:  # (cannot be encoded: nothing was sent)
                raise CommandError(f"standard input line {lineno}: {exc.msg}") from None
        call.close_send()
    except errors.IPCError:
        pass  # the call ended (the reader sees why)
    except BaseException as exc:
        failure.append(exc)
        call.cancel(errors.CanceledError("ipc: bad input on standard input"))


def _input_lines() -> Iterator[tuple[int, str]]:
    """Standard input's lines, numbered from 1. A line that is not text in the input's
    encoding is a CommandError naming it."""
    stdin = sys.stdin
    if stdin is None:
        raise CommandError("--stdin: standard input is closed")
    encoding = getattr(stdin, "encoding", None) or "utf-8"
    if getattr(stdin, "errors", None) == "strict" and isinstance(stdin, io.TextIOWrapper):
        # A strict decoder fails on the whole chunk read ahead, lines before the bad one
        # included: decode with surrogateescape and find the line that holds undecodable
        # bytes. (Not possible once the stream was read, for a passphrase: then the error
        # names the first line not yet streamed.)
        with contextlib.suppress(OSError, ValueError):  # (io.UnsupportedOperation)
            stdin.reconfigure(errors="surrogateescape")
    lineno = 0
    try:
        for lineno, line in enumerate(stdin, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # (lone surrogates: bytes the decoder could not read)
                raise CommandError(
                    f"standard input line {lineno} is not text in the input's encoding ({encoding})"
                ) from None
            yield lineno, line
    except UnicodeDecodeError:
        raise CommandError(
            f"standard input from line {lineno + 1} on is not text in the input's encoding "
            f"({encoding})"
        ) from None


def cmd_signature(args: argparse.Namespace) -> int:
    with client_for(args) as client, Progress(f"asking {args.name} for its signature"):
        (sig,) = client.call(
            call_context(args), args.name, "__Signature", options=call_options(args)
        )
    if not isinstance(sig, list):
        raise errors.BadProtocolError("the server's signature is not a list of methods")
    for method in sig:
        if not isinstance(method, dict):
            continue
        params = ", ".join(str(a) for a in method.get("args") or ())
        out(f"{method.get('name')}({params})")
        for line in str(method.get("doc") or "").strip().splitlines():
            out(f"    {line.strip()}")
    return EXIT_OK
