"""The ``ipc principal`` commands, and reading principals and blessings for the others.

Owns: loading a principal (asking for its passphrase when its key is encrypted, and keeping
it to save the principal back), the principal of ``--credentials``, blessings as one line
of text, reading blessings and keys from a directory, a file, standard input or the command
line, describing caveats, and ``create``, ``fork``, ``bless``, ``set-default``,
``add-root`` and ``dump``. Must not: resolve names or make calls.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ipcclient import codec, env, errors
from ipcclient.cli.exits import EXIT_OK, CommandError
from ipcclient.cli.text import err, human, out, parse_duration, warnings_shown
from ipcclient.security import caveats as cav
from ipcclient.security.blessings import Blessings
from ipcclient.security.caveats import Caveat, ExpiryCaveat
from ipcclient.security.keys import PublicKey
from ipcclient.security.principal import (
    KEY_FILE,
    MAX_STATE_FILE,
    STORE_FILE,
    Principal,
    read_bounded,
    stored_public_key,
)

__all__ = [
    "BLESSING_TOKEN_PREFIX",
    "blessing_token",
    "cmd_principal_add_root",
    "cmd_principal_bless",
    "cmd_principal_create",
    "cmd_principal_dump",
    "cmd_principal_fork",
    "cmd_principal_set_default",
    "load_principal",
    "principal_for",
    "read_blessings",
    "read_passphrase",
]

BLESSING_TOKEN_PREFIX = "ipcb1:"
"""How a blessing printed by ``ipc principal bless`` starts (then base64url CBOR)."""
MAX_TOKEN = 1 << 20
"""Characters of a blessing token read from a file or standard input (a token of a long
chain with many caveats is a few KiB)."""


def read_passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    """Ask for a passphrase: on the terminal without echo, else one line of standard input
    (for scripts). Never from the command line.

    The passphrase is the text's UTF-8 bytes; bytes that were not UTF-8 and that the stream
    kept as lone surrogates (standard input under a C or UTF-8 mode locale) are given back as
    they were. End of input at the terminal (Ctrl-D) or a line the stream cannot decode is a
    command error."""
    if sys.stdin is None:  # (``<&-``)
        raise CommandError("no passphrase given (standard input is closed)")
    try:
        if sys.stdin.isatty():
            first = getpass.getpass(prompt)
            if confirm and getpass.getpass("Again: ") != first:
                raise CommandError("the passphrases differ")
        else:
            err(prompt + "(reading a line of standard input)")
            first = sys.stdin.readline().rstrip("\r\n")
    except EOFError:
        raise CommandError("no passphrase given (end of input at the prompt)") from None
    except UnicodeDecodeError:  # (the decoder's message would show a byte of the secret)
        raise CommandError(
            "the passphrase is not text in the input's encoding (with PYTHONUTF8=1 any bytes "
            "are taken as they are)"
        ) from None
    if not first:
        raise CommandError("an empty passphrase")
    return first.encode("utf-8", "surrogateescape")


_PASSPHRASES: dict[str, bytes] = {}
"""Passphrases asked for in this run, by directory (to save a principal back as it was)."""


def _encrypted(directory: Path) -> bool:
    try:
        head = read_bounded(directory / KEY_FILE, 64)  # (the PEM header line)
    except errors.IPCError:
        return False  # (Principal.load says what is wrong with the file)
    return head is not None and b"ENCRYPTED" in head.split(b"\n", 1)[0]


def load_principal(directory: str | os.PathLike[str]) -> Principal:
    """The principal in ``directory``, asking for its passphrase when its key is encrypted.

    What loading warns about (a directory its group may write to) is printed to standard
    error."""
    path = Path(directory)
    passphrase = read_passphrase(f"Passphrase for {path}: ") if _encrypted(path) else None
    with warnings_shown("ipcclient.security"):
        principal = Principal.load(path, passphrase=passphrase)
    if passphrase is not None:
        _PASSPHRASES[os.path.abspath(path)] = passphrase
    return principal


def principal_for(args: argparse.Namespace) -> Principal:
    chosen = env.credentials_dir(args.credentials)
    if chosen is None:
        raise CommandError(
            f"no credentials: pass --credentials DIR or set {env.CREDENTIALS_VAR} "
            "(make one with: ipc principal create DIR)"
        )
    return load_principal(chosen)


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
    file = directory / STORE_FILE
    try:
        raw = read_bounded(file, MAX_STATE_FILE)
        if raw is None or len(raw) > MAX_STATE_FILE:
            raise CommandError(f"{file} is {'missing' if raw is None else 'too large'}")
        doc = json.loads(raw.decode("utf-8"))
    except (errors.IPCError, ValueError, RecursionError) as exc:
        raise CommandError(f"cannot read the principal in {directory}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CommandError(f"{directory / STORE_FILE} is malformed")
    return doc


def read_blessings(arg: str) -> Blessings:
    """Blessings from ``-`` (standard input), a principal directory (its default), a file
    holding a token, or a token itself."""
    if arg == "-":
        return _from_token(_read_stdin(MAX_TOKEN + 1))
    if arg.strip().startswith(BLESSING_TOKEN_PREFIX):
        return _from_token(arg)  # (a token is often longer than a file name may be)
    path = Path(arg)
    try:
        if path.is_dir():
            return _stored_default(path)
        raw = read_bounded(path, MAX_TOKEN)
        if raw is not None and len(raw) > MAX_TOKEN:
            raise CommandError(f"{arg!r} is too large to hold a blessing")
        text = None if raw is None else raw.decode("utf-8")
    except (OSError, errors.IPCError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read blessings from {arg!r}: {exc}") from exc
    if text is None:
        raise CommandError(
            f"cannot read blessings from {arg!r}: no such file or directory (a blessing "
            f"itself starts with {BLESSING_TOKEN_PREFIX!r})"
        )
    return _from_token(text)


def _read_stdin(limit: int) -> str:
    """Up to ``limit`` characters of standard input (a CommandError when it is closed or is
    not text in its encoding)."""
    if sys.stdin is None:  # (``<&-``)
        raise CommandError("standard input is closed")
    try:
        return sys.stdin.read(limit)
    except UnicodeDecodeError:
        raise CommandError(
            f"standard input is not text in its encoding ({sys.stdin.encoding}); a blessing "
            f"is one line starting with {BLESSING_TOKEN_PREFIX!r}"
        ) from None


def _target_key(arg: str) -> PublicKey:
    """The key to bless: a principal directory's (the key its signed ``store.json`` names,
    checked against its ``key.pem`` when that is readable and not encrypted), or a raw key
    in hex."""
    if Path(arg).is_dir():
        return stored_public_key(arg)
    try:
        return PublicKey.from_raw(bytes.fromhex(arg.replace(":", "")))
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
        state = f"in {human(left)}" if left > 0 else f"EXPIRED {human(-left)} ago"
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


def _dump_blessings(b: Blessings, indent: str) -> None:
    for chain in b.chains:
        out(f"{indent}{':'.join(c.extension for c in chain)}")
        for cert in chain:
            cavs = "; ".join(_describe_caveat(c) for c in cert.caveats) or "no caveats"
            out(f"{indent}  {cert.extension:<16} {cavs}")


def cmd_principal_create(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / KEY_FILE).exists() and not args.force:
        raise errors.ExistError(f"{directory} already holds a principal (--force replaces it)")
    if args.blessing is not None and not args.blessing.strip():
        raise CommandError("--blessing: an empty name (leave the flag out for DIR's name)")
    name = args.blessing if args.blessing is not None else directory.resolve().name
    p = Principal.generate()
    b = p.bless_self(name)
    p.store.default = b
    p.store.set(b, "...")
    p.roots.add_blessings(b)
    _save(p, directory, args.encrypt)
    out(f"created {directory}: blessed as {name}, key {p.public_key.fingerprint}")
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
    out(f"created {child_dir}: blessed as {names_}, key {child.public_key.fingerprint}")
    return EXIT_OK


def cmd_principal_bless(args: argparse.Namespace) -> int:
    blesser = load_principal(args.dir)
    default = blesser.store.default
    if default is None:
        raise CommandError(f"{args.dir} has no default blessings to extend")
    b = blesser.bless(_target_key(args.target), default, args.extension, _caveats(args))
    token = blessing_token(b)
    if args.out is not None:
        _write_new_file(Path(args.out), token + "\n", replace=args.force)
        err(f"wrote {', '.join(b.names)} to {args.out}")
    else:
        out(token)
    return EXIT_OK


_NEW_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _write_new_file(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to a new file at ``path``. Whatever is there already (a file, a
    symbolic link, even a dangling one) is an ExistError, unless ``replace``: then a new
    file takes its place atomically (a symbolic link is replaced, not followed)."""
    data = text.encode("utf-8")
    if not replace:
        try:
            fd = os.open(path, _NEW_FILE_FLAGS, 0o666)
        except FileExistsError:
            raise errors.ExistError(f"{path} already exists (--force replaces it)") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    for attempt in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise errors.ExistError(f"cannot make a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except IsADirectoryError:
        os.unlink(tmp)
        raise CommandError(f"{path} is a directory") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_principal_set_default(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    b = read_blessings(args.blessings)
    p.store.default = b  # BadArgError when bound to another key
    p.store.set(b, "...")
    p.save(args.dir, passphrase=_same_passphrase(args.dir))
    out(f"{args.dir}: default blessings {', '.join(b.names)}")
    return EXIT_OK


def _same_passphrase(directory: str) -> bytes | None:
    """Saving back a principal keeps its encryption (the passphrase already asked for)."""
    if not _encrypted(Path(directory)):
        return None
    cached = _PASSPHRASES.get(os.path.abspath(directory))
    return cached if cached is not None else read_passphrase(f"Passphrase for {directory}: ")


def cmd_principal_add_root(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    if args.pattern is not None and not args.pattern.strip():
        raise CommandError("--pattern: an empty pattern (leave the flag out for the root's name)")
    b = read_blessings(args.blessings)
    if args.pattern is not None:
        for chain in b.chains:
            p.roots.add(chain[0].public_key, args.pattern)
    else:
        p.roots.add_blessings(b)
    p.save(args.dir, passphrase=_same_passphrase(args.dir))
    roots = sorted(
        {args.pattern if args.pattern is not None else chain[0].extension for chain in b.chains}
    )
    out(f"{args.dir}: now trusts {', '.join(roots)}")
    return EXIT_OK


def cmd_principal_dump(args: argparse.Namespace) -> int:
    p = load_principal(args.dir)
    out(f"Principal:   {args.dir}")
    out(f"Public key:  {p.public_key.fingerprint}")
    out(f"             {p.public_key.raw.hex()}")
    default = p.store.default
    out(f"Default:     {', '.join(default.names) if default else '(none)'}")
    if default is not None:
        _dump_blessings(default, "  ")
    peers = p.store.peer_blessings()
    if peers:
        out("Presented to peers:")
        for pattern, b in sorted(peers.items()):
            out(f"  {pattern!s:<16} {', '.join(b.names)}")
    out("Trusted roots:")
    for key, patterns in sorted(p.roots.dump().items(), key=lambda kv: kv[0].fingerprint):
        out(f"  {', '.join(str(x) for x in patterns):<16} {key.fingerprint}")
    return EXIT_OK
