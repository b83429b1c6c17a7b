"""The ``ipc`` command (also ``python -m ipcclient``): principals, a mount table, names, calls.

Owns: parsing the command line (``argparse``), turning each sub-command into library calls,
printing what they return (results as JSON), the passphrase prompt, a progress line on a
terminal while waiting, and the exit code of each kind of error (:data:`EXIT_CODES`).

Must not: be imported by the library (it prints and reads the terminal: that is its job),
or reach below the public API of the modules it drives.

Sub-commands::

    ipc principal create DIR [--blessing NAME] [--encrypt] [--force]
    ipc principal fork DIR CHILD EXTENSION [--for DURATION] [--method M]... [--encrypt]
    ipc principal bless DIR TARGET EXTENSION [--for DURATION] [--method M]... [--out FILE]
    ipc principal set-default DIR BLESSINGS
    ipc principal add-root DIR BLESSINGS [--pattern P]
    ipc principal dump DIR
    ipc mounttable [--listen ADDR] [--name NAME]
    ipc resolve NAME
    ipc glob [PATTERN]
    ipc mount NAME SERVER [--ttl SECONDS] [--mt] [--leaf] [--replace]
    ipc unmount NAME [SERVER]
    ipc call NAME METHOD [ARG]... [--stdin] [--server-pattern P]...
    ipc signature NAME
    ipc serve [--name NAME] [--listen ADDR] [--allow PATTERN]...

Every command that runs as a principal reads ``--credentials`` or ``IPCCLIENT_CREDENTIALS``;
every command that resolves names reads ``--namespace`` or ``IPCCLIENT_NAMESPACE``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ipcclient import codec, env, errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.naming import names
from ipcclient.options import CallOption, ServerPattern
from ipcclient.security import caveats as cav
from ipcclient.security.blessings import Blessings
from ipcclient.security.caveats import Caveat, ExpiryCaveat
from ipcclient.security.keys import PublicKey
from ipcclient.security.principal import KEY_FILE, STORE_FILE, Principal
from ipcclient.server.authorizer import AllowPatterns
from ipcclient.server.mounttable import LEAF, MT, REPLACE, MountTable
from ipcclient.server.publisher import Publisher
from ipcclient.server.server import Server

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
"""Any other error (an internal error, a bad state, a protocol error, a bug)."""
EXIT_USAGE = 2
"""The command line itself is wrong (argparse's own code)."""
EXIT_BAD_ARG = 3
"""A bad argument: not JSON, a malformed name or blessing, a missing principal, a file."""
EXIT_NOT_FOUND = 4
"""No such name, server, method or object."""
EXIT_NO_ACCESS = 5
"""Refused: the server does not let us in, or we do not trust the server."""
EXIT_TIMEOUT = 6
"""The deadline (``--timeout``) passed."""
EXIT_CONNECTION = 7
"""The server could not be reached, or is overloaded."""
EXIT_REMOTE = 8
"""The server's method raised an error of its own."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C) or cancelled."""
EXIT_BROKEN_PIPE = 141
"""Whoever read the output stopped reading (as a command killed by SIGPIPE); nothing printed."""

EXIT_CODES: dict[str, int] = {
    errors.ErrorID.BAD_ARG.value: EXIT_BAD_ARG,
    errors.ErrorID.EXIST.value: EXIT_BAD_ARG,
    errors.ErrorID.NO_EXIST.value: EXIT_NOT_FOUND,
    errors.ErrorID.NO_SERVERS.value: EXIT_NOT_FOUND,
    errors.ErrorID.UNKNOWN_METHOD.value: EXIT_NOT_FOUND,
    errors.ErrorID.UNKNOWN_SUFFIX.value: EXIT_NOT_FOUND,
    errors.ErrorID.NO_ACCESS.value: EXIT_NO_ACCESS,
    errors.ErrorID.NOT_TRUSTED.value: EXIT_NO_ACCESS,
    errors.ErrorID.BAD_DISCHARGE.value: EXIT_NO_ACCESS,
    errors.ErrorID.TIMEOUT.value: EXIT_TIMEOUT,
    errors.ErrorID.CONNECTION_FAILED.value: EXIT_CONNECTION,
    errors.ErrorID.VERSION_INCOMPATIBLE.value: EXIT_CONNECTION,
    errors.ErrorID.OVERLOADED.value: EXIT_CONNECTION,
    errors.ErrorID.UNKNOWN.value: EXIT_REMOTE,
    errors.ErrorID.CANCELED.value: EXIT_INTERRUPTED,
}
"""The exit code of each error ID; any other ID exits with :data:`EXIT_FAILED`."""

DEFAULT_TIMEOUT = 30.0
BLESSING_TOKEN_PREFIX = "ipcb1:"
"""How a blessing printed by ``ipc principal bless`` starts (then base64url CBOR)."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class CommandError(Exception):
    """A failure of the command line's own (not an error from the library)."""

    def __init__(self, msg: str, code: int = EXIT_BAD_ARG) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code


# --- output helpers --------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def to_json(value: Any) -> str:
    """One value as one line of JSON (bytes as base64 text; other non-JSON values as repr)."""
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


class Progress:
    """A one-line status on a terminal while a command waits (nothing when not a terminal).

    ``with Progress("calling x.Get"):`` shows ``calling x.Get ... 3 s`` after a short delay,
    redrawn twice a second; :meth:`note` adds a detail; :meth:`clear` erases the line before
    other output is printed (it comes back at the next redraw).
    """

    def __init__(self, label: str, stream: TextIO | None = None, delay: float = 1.0) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._delay = delay
        self._detail = ""
        self._lock = threading.Lock()
        self._shown = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        isatty = getattr(self._stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="ipc-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.clear()

    def note(self, detail: str) -> None:
        with self._lock:
            self._detail = detail

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
                self._shown = False

    def _run(self) -> None:
        if self._done.wait(self._delay):
            return
        while not self._done.is_set():
            with self._lock:
                elapsed = time.monotonic() - self._start
                detail = f", {self._detail}" if self._detail else ""
                self._stream.write(f"\r\x1b[K{self._label} ... {elapsed:.0f} s{detail}")
                self._stream.flush()
                self._shown = True
            self._done.wait(0.5)


# --- principals ------------------------------------------------------------------------------


def read_passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    """Ask for a passphrase: on the terminal without echo, else one line of standard input
    (for scripts). Never from the command line."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != first:
            raise CommandError("the passphrases differ")
    else:
        _err(prompt + "(reading a line of standard input)")
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise CommandError("an empty passphrase")
    return first.encode("utf-8")


_PASSPHRASES: dict[str, bytes] = {}
"""Passphrases asked for in this run, by directory (to save a principal back as it was)."""


def _encrypted(directory: Path) -> bool:
    try:
        with (directory / KEY_FILE).open("rb") as f:
            return b"ENCRYPTED" in f.readline()
    except OSError:
        return False


def load_principal(directory: str | os.PathLike[str]) -> Principal:
    """The principal in ``directory``, asking for its passphrase when its key is encrypted."""
    path = Path(directory)
    passphrase = read_passphrase(f"Passphrase for {path}: ") if _encrypted(path) else None
    principal = Principal.load(path, passphrase=passphrase)
    if passphrase is not None:
        _PASSPHRASES[os.path.abspath(path)] = passphrase
    return principal


def _principal_for(args: argparse.Namespace) -> Principal:
    chosen = env.credentials_dir(args.credentials)
    if chosen is None:
        raise CommandError(
            f"no credentials: pass --credentials DIR or set {env.CREDENTIALS_VAR} "
            "(make one with: ipc principal create DIR)"
        )
    return load_principal(chosen)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` -> seconds."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise CommandError(f"bad duration {text!r} (e.g. 90s, 15m, 12h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _caveats(args: argparse.Namespace) -> list[Caveat]:
    made: list[Caveat] = []
    if args.duration is not None:
        made.append(cav.expires_in(parse_duration(args.duration)))
    if args.method:
        made.append(cav.method(*args.method))
    return made or [cav.unconstrained_use()]


def blessing_token(b: Blessings) -> str:
    """Blessings as one line of text (what ``bless`` prints and the others read)."""
    return BLESSING_TOKEN_PREFIX + base64.urlsafe_b64encode(codec.encode(b)).decode("ascii")


def _from_token(token: str) -> Blessings:
    token = token.strip()
    if not token.startswith(BLESSING_TOKEN_PREFIX):
        raise CommandError(f"not a blessing (it should start with {BLESSING_TOKEN_PREFIX!r})")
    try:
        raw = base64.urlsafe_b64decode(token[len(BLESSING_TOKEN_PREFIX) :].encode("ascii"))
        value = codec.decode(raw)
    except (ValueError, errors.BadProtocolError) as exc:
        raise CommandError(f"a malformed blessing: {exc}") from exc
    if not isinstance(value, Blessings):
        raise CommandError("the text does not hold blessings")
    return value


def _stored_default(directory: Path) -> Blessings:
    """A principal directory's default blessings, read without its key (they are public)."""
    data = _read_store(directory).get("data")
    default = data.get("default") if isinstance(data, dict) else None
    if not isinstance(default, dict) or not isinstance(default.get("blessings"), str):
        raise CommandError(f"{directory} has no default blessings")
    try:
        value = codec.decode(base64.b64decode(default["blessings"], validate=True))
    except (ValueError, errors.BadProtocolError) as exc:
        raise CommandError(f"{directory}: malformed stored blessings: {exc}") from exc
    if not isinstance(value, Blessings):
        raise CommandError(f"{directory}: malformed stored blessings")
    return value


def _read_store(directory: Path) -> Any:
    try:
        doc = json.loads((directory / STORE_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the principal in {directory}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CommandError(f"{directory / STORE_FILE} is malformed")
    return doc


def read_blessings(arg: str) -> Blessings:
    """Blessings from ``-`` (standard input), a principal directory (its default), a file
    holding a token, or a token itself."""
    if arg == "-":
        return _from_token(sys.stdin.read())
    path = Path(arg)
    if path.is_dir():
        return _stored_default(path)
    if path.is_file():
        return _from_token(path.read_text("utf-8"))
    return _from_token(arg)


def _target_key(arg: str) -> PublicKey:
    """The key to bless: a principal directory's, or a raw key in hex."""
    path = Path(arg)
    if path.is_dir():
        raw = _read_store(path).get("public_key")
        if not isinstance(raw, str):
            raise CommandError(f"{path / STORE_FILE} names no public key")
    else:
        raw = arg
    try:
        return PublicKey.from_raw(bytes.fromhex(raw.replace(":", "")))
    except ValueError as exc:
        raise CommandError(f"{arg!r} is neither a principal directory nor a public key") from exc


def _save(p: Principal, directory: Path, encrypt: bool) -> None:
    passphrase = (
        read_passphrase(f"New passphrase for {directory}: ", confirm=True) if encrypt else None
    )
    p.save(directory, passphrase=passphrase)


def _describe_caveat(c: Caveat) -> str:
    if isinstance(c, ExpiryCaveat):
        when = datetime.fromtimestamp(c.not_after).astimezone()
        left = c.not_after - time.time()
        state = f"in {_human(left)}" if left > 0 else f"EXPIRED {_human(-left)} ago"
        return f"expires {when:%Y-%m-%d %H:%M:%S %Z} ({state})"
    if isinstance(c, cav.MethodCaveat):
        return "only methods " + ", ".join(c.methods)
    if isinstance(c, cav.PeerBlessingsCaveat):
        return "only with peers " + ", ".join(c.patterns)
    if isinstance(c, cav.UnconstrainedCaveat):
        return "unconstrained"
    if isinstance(c, cav.ThirdPartyCaveat):
        return f"needs a discharge from {c.location}"
    return repr(c)


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


def _dump_blessings(b: Blessings, indent: str) -> None:
    for chain in b.chains:
        _out(f"{indent}{':'.join(c.extension for c in chain)}")
        for cert in chain:
            cavs = "; ".join(_describe_caveat(c) for c in cert.caveats) or "no caveats"
            _out(f"{indent}  {cert.extension:<16} {cavs}")


def cmd_principal_create(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / KEY_FILE).exists() and not args.force:
        raise errors.ExistError(f"{directory} already holds a principal (--force replaces it)")
    name = args.blessing or directory.resolve().name
    p = Principal.generate()
    b = p.bless_self(name)
    p.store.default = b
    p.store.set(b, "...")
    p.roots.add_blessings(b)
    _save(p, directory, args.encrypt)
    _out(f"created {directory}: blessed as {name}, key {p.public_key.fingerprint}")
    return EXIT_OK


def cmd_principal_fork(args: argparse.Namespace) -> int:
    parent = load_principal(args.dir)
    default = parent.store.default
    if default is None:
        raise CommandError(f"{args.dir} has no default blessings to extend")
    child_dir = Path(args.child)
    if (child_dir / KEY_FILE).exists() and not args.force:
        raise errors.ExistError(f"{child_dir} already holds a principal (--force replaces it)")
    child = Principal.generate()
    b = parent.bless(child.public_key, default, args.extension, _caveats(args))
    child.store.default = b
    child.store.set(b, "...")
    for key, patterns in parent.roots.dump().items():
        for pattern in patterns:
            child.roots.add(key, str(pattern))
    child.roots.add_blessings(b)
    _save(child, child_dir, args.encrypt)
    names_ = ", ".join(b.names)
    _out(f"created {child_dir}: blessed as {names_}, key {child.public_key.fingerprint}")
    return EXIT_OK


def cmd_principal_bless(args: argparse.Namespace) -> int:
    blesser = load_principal(args.dir)
    default = blesser.store.default
    if default is None:
        raise CommandError(f"{args.dir} has no default blessings to extend")
    b = blesser.bless(_target_key(args.target), default, args.extension, _caveats(args))
    token = blessing_token(b)
    if args.out:
        Path(args.out).write_text(token + "\n", "utf-8")
        _err(f"wrote {', '.join(b.names)} to {args.out}")
    else:
        _out(token)
    return EXIT_OK


def cmd_principal_set_default(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    b = read_blessings(args.blessings)
    p.store.default = b  # BadArgError when bound to another key
    p.store.set(b, "...")
    p.save(args.dir, passphrase=_same_passphrase(args.dir))
    _out(f"{args.dir}: default blessings {', '.join(b.names)}")
    return EXIT_OK


def _same_passphrase(directory: str) -> bytes | None:
    """Saving back a principal keeps its encryption (the passphrase already asked for)."""
    if not _encrypted(Path(directory)):
        return None
    cached = _PASSPHRASES.get(os.path.abspath(directory))
    return cached if cached is not None else read_passphrase(f"Passphrase for {directory}: ")


def cmd_principal_add_root(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    b = read_blessings(args.blessings)
    if args.pattern:
        for chain in b.chains:
            p.roots.add(chain[0].public_key, args.pattern)
    else:
        p.roots.add_blessings(b)
    p.save(args.dir, passphrase=_same_passphrase(args.dir))
    roots = sorted({args.pattern or chain[0].extension for chain in b.chains})
    _out(f"{args.dir}: now trusts {', '.join(roots)}")
    return EXIT_OK


def cmd_principal_dump(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    _out(f"Principal:   {args.dir}")
    _out(f"Public key:  {p.public_key.fingerprint}")
    _out(f"             {p.public_key.raw.hex()}")
    default = p.store.default
    _out(f"Default:     {', '.join(default.names) if default else '(none)'}")
    if default is not None:
        _dump_blessings(default, "  ")
    peers = p.store.peer_blessings()
    if peers:
        _out("Presented to peers:")
        for pattern, b in sorted(peers.items()):
            _out(f"  {pattern!s:<16} {', '.join(b.names)}")
    _out("Trusted roots:")
    for key, patterns in sorted(p.roots.dump().items(), key=lambda kv: kv[0].fingerprint):
        _out(f"  {', '.join(str(x) for x in patterns):<16} {key.fingerprint}")
    return EXIT_OK


# --- names and calls -------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    roots = None if args.namespace is None else [r for r in args.namespace.split(",") if r]
    return Client(_principal_for(args), roots=env.roots(roots))


def _ctx(args: argparse.Namespace) -> Context:
    timeout = float(args.timeout)
    if not (math.isfinite(timeout) and timeout > 0):
        raise CommandError(f"--timeout must be > 0 seconds, got {args.timeout!r}")
    return Context.background().with_timeout(timeout)


def _options(args: argparse.Namespace) -> list[CallOption]:
    return [ServerPattern(*args.server_pattern)] if args.server_pattern else []


def cmd_resolve(args: argparse.Namespace) -> int:
    with _client(args) as client, Progress(f"resolving {args.name}"):
        entry = client.namespace.resolve(_ctx(args), args.name)
    for name in entry.names():
        _out(name)
    return EXIT_OK


def _mount_targets(client: Client, ctx: Context, name: str) -> list[str]:
    entry = client.namespace.resolve_to_mount_table(ctx, name)
    if not entry.servers:
        raise errors.NoServersError(f"no mount table holds {name!r}")
    return [names.join_address_name(s.server, entry.name, terminal=True) for s in entry.servers]


def cmd_mount(args: argparse.Namespace) -> int:
    flags = (MT if args.mt else 0) | (LEAF if args.leaf else 0) | (REPLACE if args.replace else 0)
    ttl = parse_duration(args.ttl)
    with _client(args) as client:
        ctx = _ctx(args)
        for target in _mount_targets(client, ctx, args.name):
            client.call(ctx, target, "Mount", args.server, ttl, flags, options=_options(args))
    _out(f"mounted {args.server} at {args.name} for {_human(ttl)}")
    return EXIT_OK


def cmd_unmount(args: argparse.Namespace) -> int:
    with _client(args) as client:
        ctx = _ctx(args)
        for target in _mount_targets(client, ctx, args.name):
            client.call(ctx, target, "Unmount", args.server, options=_options(args))
    _out(f"unmounted {args.server or 'every server'} from {args.name}")
    return EXIT_OK


def cmd_glob(args: argparse.Namespace) -> int:
    pattern = args.pattern
    with _client(args) as client, Progress(f"glob {pattern}") as progress:
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
        ctx = _ctx(args)
        for target in targets:
            with client.start_call(ctx, target, "Glob", [pattern], *_options(args)) as call:
                for item in call:
                    if isinstance(item, dict) and isinstance(item.get("name"), str):
                        servers = [
                            _mounted(s) for s in item.get("servers") or () if isinstance(s, dict)
                        ]
                        found.setdefault(item["name"], []).extend(servers)
                        progress.note(f"{len(found)} names")
                call.finish()
    for line in tree_lines(found):
        _out(line)
    if not found:
        _err(f"no names match {args.pattern!r}")
    return EXIT_OK


def _mounted(server: dict[str, Any]) -> str:
    ttl = server.get("ttl")
    tail = "" if not isinstance(ttl, int | float) else f" (ttl {_human(ttl)})"
    return f"{server.get('server')}{tail}"


def tree_lines(found: dict[str, list[str]]) -> Iterator[str]:
    """Names as an indented tree, each leaf followed by its servers."""
    tree: dict[str, Any] = {}
    for name in found:
        node = tree
        for comp in [c for c in name.split("/") if c] or [""]:
            node = node.setdefault(comp, {})

    def walk(node: dict[str, Any], prefix: str, path: str) -> Iterator[str]:
        items = sorted(node.items())
        for i, (comp, child) in enumerate(items):
            last = i == len(items) - 1
            full = f"{path}/{comp}" if path else comp
            servers = found.get(full, [])
            label = comp or "(root)"
            tail = "  " + ", ".join(servers) if servers else ""
            yield f"{prefix}{'└── ' if last else '├── '}{label}{tail}"
            yield from walk(child, prefix + ("    " if last else "│   "), full)

    yield from walk(tree, "", "")


def _parse_args_json(raw: Sequence[str]) -> list[Any]:
    values = []
    for i, text in enumerate(raw, 1):
        try:
            values.append(json.loads(text))
        except ValueError:
            raise CommandError(
                f"argument {i} ({text!r}) is not JSON; a string needs quotes: '\"{text}\"'"
            ) from None
    return values


def cmd_call(args: argparse.Namespace) -> int:
    values = _parse_args_json(args.args)
    with _client(args) as client, Progress(f"calling {args.name}.{args.method}") as progress:
        ctx = _ctx(args)
        call = client.start_call(ctx, args.name, args.method, values, *_options(args))
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
                    _out(to_json(item))
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
        _out(to_json(value))
    return EXIT_OK


def _send_lines(call: Any, failure: list[BaseException]) -> None:
    """Stream each line of standard input as one item (JSON), then close the send side."""
    try:
        for lineno, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise CommandError(f"standard input line {lineno} is not JSON") from None
            call.send(item)
        call.close_send()
    except errors.IPCError:
        pass  # the call ended (the reader sees why)
    except BaseException as exc:
        failure.append(exc)
        call.cancel(errors.CanceledError("ipc: bad input on standard input"))


def cmd_signature(args: argparse.Namespace) -> int:
    with _client(args) as client, Progress(f"asking {args.name} for its signature"):
        (sig,) = client.call(_ctx(args), args.name, "__Signature", options=_options(args))
    if not isinstance(sig, list):
        raise errors.BadProtocolError("the server's signature is not a list of methods")
    for method in sig:
        if not isinstance(method, dict):
            continue
        params = ", ".join(str(a) for a in method.get("args") or ())
        _out(f"{method.get('name')}({params})")
        for line in str(method.get("doc") or "").strip().splitlines():
            _out(f"    {line.strip()}")
    return EXIT_OK


# --- daemons ---------------------------------------------------------------------------------


def _serve_until_stopped(server: Server, grace: float) -> None:
    """Block until Ctrl-C or SIGTERM, then stop (calls in flight get ``grace`` seconds)."""

    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.wait(grace=grace)
    finally:
        signal.signal(signal.SIGTERM, old)


def _publishing_client(args: argparse.Namespace, principal: Principal) -> Client:
    roots = None if args.namespace is None else [r for r in args.namespace.split(",") if r]
    return Client(principal, roots=env.roots(roots))


def cmd_mounttable(args: argparse.Namespace) -> int:
    principal = _principal_for(args)
    client: Client | None = None
    publisher: Publisher | None = None
    if args.name:
        client = _publishing_client(args, principal)
        publisher = Publisher(client, client.namespace, ttl=60)
    server = Server(principal, serves_mount_table=True, publisher=publisher)
    try:
        ep = server.listen("tcp", args.listen)
        server.serve_dispatcher(
            MountTable(
                mount_patterns=args.mount_pattern or ("...",),
                resolve_patterns=args.resolve_pattern or ("...",),
            )
        )
        if args.name:
            server.add_name(args.name)
        _out("/" + ep)
        _err(f"mount table listening; use it with: export {env.NAMESPACE_VAR}=/{ep}")
        _serve_until_stopped(server, args.grace)
    finally:
        server.stop()
        if client is not None:
            client.close()
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ipcclient.demo import Fortune  # the example service

    principal = _principal_for(args)
    client: Client | None = None
    publisher: Publisher | None = None
    if args.name:
        client = _publishing_client(args, principal)
        publisher = Publisher(client, client.namespace, ttl=60)
    server = Server(principal, publisher=publisher)
    try:
        ep = server.listen("tcp", args.listen)
        default = principal.store.default
        allow = args.allow or sorted({n.split(":")[0] for n in (default.names if default else [])})
        server.serve(Fortune(), AllowPatterns(allow))
        if args.name:
            server.add_name(args.name)
        _out("/" + ep)
        where = f"as {args.name}" if args.name else "(not published: pass --name)"
        _err(f"serving the example service {where}; callers need a blessing matching {allow}")
        _serve_until_stopped(server, args.grace)
    finally:
        server.stop()
        if client is not None:
            client.close()
    return EXIT_OK


# --- the parser and main ---------------------------------------------------------------------


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
    p.add_argument("--out", metavar="FILE", help="write the blessing to FILE")
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

    def call_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", default=DEFAULT_TIMEOUT, type=float, metavar="SECONDS")
        p.add_argument(
            "--server-pattern",
            action="append",
            metavar="P",
            help="only a server whose blessings match P (repeatable)",
        )

    def daemon_flags(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--listen", default="127.0.0.1:0", metavar="ADDR")
        p.add_argument("--name", help=f"publish the {what} under NAME in the namespace")
        p.add_argument(
            "--grace",
            default=5.0,
            type=float,
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
    call_flags(p)
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


def exit_code(exc: errors.IPCError) -> int:
    """The exit code for an error (see :data:`EXIT_CODES`)."""
    return EXIT_CODES.get(exc.id, EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (errors print one line, ``-v`` a traceback)."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except errors.IPCError as exc:
        return _fail(args, exc, f"{exc.id}: {exc.msg or type(exc).__name__}", exit_code(exc))
    except CommandError as exc:
        return _fail(args, exc, exc.msg, exc.code)
    except BrokenPipeError:
        # The reader of our output went away (``ipc glob | head``): stop quietly, as a
        # command killed by SIGPIPE does, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail(args, exc, f"{exc.strerror or exc}: {exc.filename or ''}", EXIT_BAD_ARG)
    except KeyboardInterrupt as exc:
        return _fail(args, exc, "interrupted", EXIT_INTERRUPTED)


def _fail(args: argparse.Namespace, exc: BaseException, text: str, code: int) -> int:
    if args.verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    _err(f"ipc: error: {text}")
    return code


def console_main() -> None:
    """The ``ipc`` console script."""
    sys.exit(main())
