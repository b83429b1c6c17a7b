"""The principal: a signing key with its blessing store and roots, and its on-disk form.

Owns: :class:`Principal` (Ed25519 key pair, signing with purposes, blessing itself and
others) and persistence of a principal in a directory:

* the directory itself: mode 0700 (save sets it on a directory of the current user's).
  Load refuses one that others may write to (mode & 0o002: anyone could swap or remove its
  files), and loads one only its group may write to (mode & 0o020), logging a warning (logger
  ``ipcclient.security``, once per directory in a process): ``mkdir`` under umask 002, the
  default where every user has a group of their own (Fedora, RHEL), makes such directories,
  and principals saved in them by earlier releases must keep loading;
* ``key.pem``: the private key, PKCS#8 PEM (encrypted with the ``cryptography`` package's
  BestAvailableEncryption when a passphrase is given, of at most :data:`MAX_PASSPHRASE`
  bytes), mode 0600; a key file readable or writable by group or others, or owned by another
  user, is refused (as ssh does);
* ``roots.json`` and ``store.json``: the blessing roots and store as readable JSON, signed by
  the principal (purpose ``principal-state``) so tampering on disk is detected; the
  ``public_key`` they name must be the principal's (:func:`stored_public_key` reads it, checked,
  without the private key).

Every file is written atomically: a temporary file in the same directory (``.key.pem.*.tmp``
and so on), flushed and fsynced, then ``os.replace`` (and the directory fsynced), so a crash
never leaves half a file. A crash can leave those temporary files, a plaintext copy of the key
among them; the next save removes them before it writes (so saves of one directory must not
run at the same time).

Must not: open sockets, start threads, or implement cryptography (Ed25519 and PEM come from
``cryptography``).

Errors: missing directory or key file -> NoExistError; unreadable or corrupt file, a
passphrase for an unencrypted key or one over :data:`MAX_PASSPHRASE` bytes -> BadArgError;
wrong permissions (key file, or a directory others may write to), missing or wrong passphrase
-> NoAccessError;
state file whose signature does not verify or that names another key -> NotTrustedError.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient import errors
from ipcclient.security.blessings import (
    _ROOT_PARENT_DIGEST,
    Blessings,
    Certificate,
    certificate_digest,
    check_size,
)
from ipcclient.security.caveats import MAX_CAVEATS, Caveat
from ipcclient.security.keys import (
    PURPOSE_CERTIFICATE,
    PURPOSE_STATE,
    PublicKey,
    signed_bytes,
)
from ipcclient.security.patterns import validate_extension
from ipcclient.security.store import BlessingRoots, BlessingStore

__all__ = [
    "KEY_FILE",
    "MAX_PASSPHRASE",
    "MAX_STATE_FILE",
    "ROOTS_FILE",
    "STATE_FORMAT",
    "STORE_FILE",
    "Principal",
    "read_bounded",
    "stored_public_key",
]

KEY_FILE = "key.pem"
ROOTS_FILE = "roots.json"
STORE_FILE = "store.json"
STATE_FORMAT = "ipcclient-principal-state-v1"
MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is under 300 bytes
MAX_STATE_FILE = 16 * 1024 * 1024  # a store or roots file; real ones are a few KiB
MAX_PASSPHRASE = 1023
"""The longest passphrase, in bytes: the most the ``cryptography`` package's OpenSSL backend
takes to encrypt or decrypt a PEM key."""

log = logging.getLogger("ipcclient.security")

_MAX_WARNED_DIRECTORIES = 1024
_warned_directories: set[str] = set()
"""Group-writable principal directories already warned about in this process (so a program
that loads its principal again and again logs it once); at most
:data:`_MAX_WARNED_DIRECTORIES`, past which a directory is warned about on every load."""
_warned_lock = threading.Lock()


class Principal:
    """An Ed25519 key pair with a blessing store and trusted blessing roots."""

    def __init__(
        self,
        private_key: ed25519.Ed25519PrivateKey,
        store: BlessingStore | None = None,
        roots: BlessingRoots | None = None,
    ) -> None:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise errors.BadArgError("security: a principal's key must be Ed25519")
        self._private_key = private_key
        self._public_key = PublicKey(private_key.public_key())
        if store is not None and store.public_key != self._public_key:
            raise errors.BadArgError("security: the blessing store belongs to another key")
        self.store: BlessingStore = store if store is not None else BlessingStore(self._public_key)
        self.roots: BlessingRoots = roots if roots is not None else BlessingRoots()

    @classmethod
    def generate(cls) -> Principal:
        """A principal with a fresh random key, an empty store and no trusted roots."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> PublicKey:
        """The principal's public key."""
        return self._public_key

    def sign(self, purpose: bytes, message: bytes) -> bytes:
        """Sign ``message`` for ``purpose`` (see :func:`~ipcclient.security.keys.signed_bytes`).

        Raises:
            BadArgError: invalid purpose or message.
        """
        return self._private_key.sign(signed_bytes(purpose, message))

    def bless_self(self, name: str, caveats: Sequence[Caveat] = ()) -> Blessings:
        """A one-certificate (root) blessing named ``name`` bound to this principal's key.

        Caveats are optional here: the principal restricts only itself.

        Raises:
            BadArgError: ``name`` is not a valid extension, ``caveats`` is not a list (None
                included) of Caveat values, there are more than :data:`MAX_CAVEATS`, or the
                blessing would encode to more than
                :data:`~ipcclient.security.blessings.MAX_BLESSINGS_SIZE` bytes.
        """
        ext = validate_extension(name)
        cavs = _check_caveats(caveats)
        digest = certificate_digest(_ROOT_PARENT_DIGEST, ext, self._public_key, cavs)
        cert = Certificate(ext, self._public_key, cavs, self.sign(PURPOSE_CERTIFICATE, digest))
        return check_size(Blessings([(cert,)]), "security")

    def bless(
        self,
        key: PublicKey,
        with_blessings: Blessings,
        extension: str,
        caveats: Sequence[Caveat],
    ) -> Blessings:
        """Extend every chain of ``with_blessings`` (which this principal must hold) by one
        certificate naming ``extension`` for ``key``.

        At least one caveat is required, as in Vanadium; pass
        ``[caveats.unconstrained_use()]`` to bless without restriction on purpose.

        Raises:
            BadArgError: ``with_blessings`` is not bound to this principal's key,
                ``caveats`` is not a list of Caveat values, no caveat or more than
                :data:`MAX_CAVEATS`, invalid extension or key, a chain would become too
                deep, or the blessings would encode to more than
                :data:`~ipcclient.security.blessings.MAX_BLESSINGS_SIZE` bytes.
        """
        if not isinstance(key, PublicKey):
            raise errors.BadArgError("security: the blessed key must be a PublicKey")
        if not isinstance(with_blessings, Blessings):
            raise errors.BadArgError("security: with_blessings must be Blessings")
        if with_blessings.public_key != self._public_key:
            raise errors.BadArgError("security: the blesser does not hold with_blessings")
        ext = validate_extension(extension)
        cavs = _check_caveats(caveats)
        if not cavs:
            raise errors.BadArgError(
                "security: bless needs at least one caveat (use caveats.unconstrained_use())"
            )
        chains = []
        for chain in with_blessings.chains:
            parent = _ROOT_PARENT_DIGEST
            for cert in chain:
                parent = cert.digest(parent)
            digest = certificate_digest(parent, ext, key, cavs)
            sig = self.sign(PURPOSE_CERTIFICATE, digest)
            chains.append((*chain, Certificate(ext, key, cavs, sig)))
        return check_size(Blessings(chains), "security")

    def add_to_roots(self, blessings: Blessings) -> None:
        """Trust the roots of ``blessings`` for their names (see BlessingRoots.add_blessings).

        Raises:
            BadArgError: ``blessings`` is not Blessings.
        """
        self.roots.add_blessings(blessings)

    # ---- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], passphrase: bytes | None = None) -> None:
        """Write the principal to ``directory`` (created with mode 0700 if missing; an existing
        directory of the current user's is given mode 0700). Temporary files an earlier save
        left behind (a crash) are removed first.

        Raises:
            BadArgError: ``directory`` is not a path (str or os.PathLike) or holds a NUL, the
                passphrase is not non-empty bytes or is over :data:`MAX_PASSPHRASE` bytes, or
                the directory cannot be written.
        """
        _check_passphrase(passphrase)
        path = _directory(directory)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase is not None
            else serialization.NoEncryption()
        )
        try:
            pem = self._private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        except ValueError as exc:  # (the passphrase is checked above; this is a backstop)
            raise errors.BadArgError(f"security: cannot encrypt the key: {exc}") from exc
        files = {
            KEY_FILE: pem,
            ROOTS_FILE: self._state_bytes(self.roots.to_plain()),
            STORE_FILE: self._state_bytes(self.store.to_plain()),
        }
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
            _remove_stale_temporaries(path, files)
            _atomic_write_all(path, files)
        except (OSError, ValueError) as exc:
            raise errors.BadArgError(f"security: cannot save principal to {path}: {exc}") from exc

    @classmethod
    def load(cls, directory: str | os.PathLike[str], passphrase: bytes | None = None) -> Principal:
        """Read a principal written by :meth:`save`.

        Missing ``roots.json`` / ``store.json`` load as empty (the key is what matters).

        A directory its group may write to (mode 0775, as ``mkdir`` makes it under umask
        002) is loaded, with a warning logged to ``ipcclient.security`` once per directory.

        Raises:
            NoExistError: no such directory or key file.
            NoAccessError: the directory is writable by others (mode & 0o002), the key file
                is accessible to group/others or owned by another user, or the passphrase is
                missing or wrong.
            BadArgError: ``directory`` is not a path (str or os.PathLike) or holds a NUL, the
                passphrase is not non-empty bytes of at most :data:`MAX_PASSPHRASE` (as
                :meth:`save` takes), a corrupt file, or a passphrase for an unencrypted key.
            NotTrustedError: a state file's signature does not verify, or it names another
                key than the principal's (edited, or copied from another principal).
        """
        _check_passphrase(passphrase)
        path = _directory(directory)
        if not path.is_dir():
            raise errors.NoExistError(f"security: no principal directory {path}")
        _check_directory_mode(path)
        key_path = path / KEY_FILE
        pem = _read_key_file(key_path)
        private_key = _parse_key(pem, passphrase, key_path)
        principal = cls(private_key)
        roots_plain = principal._read_state(path / ROOTS_FILE)
        if roots_plain is not None:
            principal.roots.load_plain(roots_plain)
        store_plain = principal._read_state(path / STORE_FILE)
        if store_plain is not None:
            principal.store.load_plain(store_plain)
        return principal

    def _state_bytes(self, data: dict[str, Any]) -> bytes:
        body = _canonical_json(data)
        doc = {
            "format": STATE_FORMAT,
            "public_key": self._public_key.raw.hex(),
            "data": data,
            "signature": base64.b64encode(self.sign(PURPOSE_STATE, body)).decode("ascii"),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def _read_state(self, file: Path) -> Any:
        state = _parse_state(file)
        if state is None:
            return None
        if state.public_key != self._public_key.raw.hex():
            # (The field is outside the signature: an edit to it alone would otherwise go
            # unnoticed here, while tools that read the key without the private key use it.)
            raise errors.NotTrustedError(
                f"security: {file} names another key than this principal's "
                "(edited, or copied from another principal)"
            )
        if not self._public_key.verify(state.signature, PURPOSE_STATE, state.body):
            raise errors.NotTrustedError(
                f"security: {file} is not signed by this principal (tampered or foreign)"
            )
        return state.data

    def __repr__(self) -> str:
        return f"Principal({self._public_key.fingerprint})"


class _State:
    """A state file's fields, as read (nothing verified but the format)."""

    __slots__ = ("body", "data", "public_key", "signature")

    def __init__(self, public_key: object, signature: bytes, body: bytes, data: Any) -> None:
        self.public_key = public_key
        self.signature = signature
        self.body = body
        self.data = data


def _parse_state(file: Path) -> _State | None:
    """The fields of the state file ``file`` (None when there is none).

    Raises:
        BadArgError: the file is too large, not a regular file, unreadable, not the state
            format, or malformed.
    """
    raw = read_bounded(file, MAX_STATE_FILE)
    if raw is None:
        return None
    if len(raw) > MAX_STATE_FILE:
        raise errors.BadArgError(f"security: {file} is too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
        sig = base64.b64decode(doc["signature"], validate=True)
        data = doc["data"]
        fmt = doc["format"]
        key = doc["public_key"]
        body = _canonical_json(data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise errors.BadArgError(f"security: corrupt principal file {file}") from exc
    if fmt != STATE_FORMAT:
        raise errors.BadArgError(f"security: {file} has unknown format {fmt!r}")
    return _State(key, sig, body, data)


def stored_public_key(directory: str | os.PathLike[str]) -> PublicKey:
    """The public key of the principal in ``directory``, read without its private key (to
    bless a principal whose passphrase, or whose key file, is not ours): the key
    ``store.json`` names, once the file's signature verifies with that key and, when
    ``key.pem`` can be read and is not encrypted, once it holds that same key.

    The ``public_key`` field is outside the signature: trusting it unchecked would bless
    whatever key an edit put there.

    Raises:
        NoExistError: no such directory or no ``store.json`` in it.
        BadArgError: ``directory`` is not a path, ``store.json`` is malformed or names no
            valid key, or ``key.pem`` is readable but corrupt.
        NotTrustedError: ``store.json`` is not signed by the key it names, or ``key.pem``
            holds another key.
    """
    path = _directory(directory)
    if not path.is_dir():
        raise errors.NoExistError(f"security: no principal directory {path}")
    file = path / STORE_FILE
    state = _parse_state(file)
    if state is None:
        raise errors.NoExistError(f"security: no {STORE_FILE} in {path}")
    named = state.public_key
    try:
        if not isinstance(named, str):
            raise ValueError("not text")
        key = PublicKey.from_raw(bytes.fromhex(named))
        if named != key.raw.hex():
            raise ValueError("not the lowercase hex save writes")
    except (ValueError, errors.BadArgError) as exc:
        raise errors.BadArgError(f"security: {file} names no valid public key: {exc}") from exc
    if not key.verify(state.signature, PURPOSE_STATE, state.body):
        raise errors.NotTrustedError(
            f"security: {file} is not signed by the key it names (edited by hand)"
        )
    held = _public_key_in_key_file(path / KEY_FILE)
    if held is not None and held != key:
        raise errors.NotTrustedError(
            f"security: {path / KEY_FILE} holds another key than {file} names"
        )
    return key


def _public_key_in_key_file(key_path: Path) -> PublicKey | None:
    """The public key of an unencrypted key file; None when there is no such file, it
    cannot be read (another user's), is not a regular file, or is encrypted."""
    try:
        pem = read_bounded(key_path, MAX_KEY_FILE)
    except errors.BadArgError:
        return None
    if pem is None or b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem:
        return None
    return PublicKey(_parse_key(pem, None, key_path).public_key())


def _check_passphrase(passphrase: object) -> None:
    """Refuse a passphrase that is not None or non-empty bytes (a str is not encoded for
    the caller: which encoding it was saved with is not ours to guess), or that is longer
    than the crypto library takes."""
    if passphrase is not None and (not isinstance(passphrase, bytes) or not passphrase):
        raise errors.BadArgError("security: a passphrase must be non-empty bytes")
    if passphrase is not None and len(passphrase) > MAX_PASSPHRASE:
        raise errors.BadArgError(
            f"security: a passphrase may be at most {MAX_PASSPHRASE} bytes, not {len(passphrase)}"
        )


def _directory(directory: object) -> Path:
    """``directory`` as a Path, when it is a str or an os.PathLike (without a NUL, which
    no file name holds)."""
    if not isinstance(directory, str | os.PathLike):
        raise errors.BadArgError(
            "security: a principal directory must be a str or os.PathLike, "
            f"not {type(directory).__name__}"
        )
    path = Path(directory)
    if "\0" in str(path):
        raise errors.BadArgError(
            f"security: a principal directory may not hold a NUL: {str(path)!r}"
        )
    return path


def _make_private(path: Path) -> None:
    """Give the directory ``path`` mode 0700 when it is the current user's (an existing one
    may have been made with a looser mode; another user's is left alone)."""
    if os.name != "posix":
        return
    st = os.stat(path)
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _check_directory_mode(path: Path) -> None:
    """Refuse a principal directory that others may write to: anyone could replace or remove
    its files (a missing state file loads as empty). One only its group may write to is
    loaded with a warning, once per directory in a process: it is what ``mkdir`` makes under
    umask 002 (the default with a group per user, as on Fedora and RHEL, where that group
    usually holds the user alone); refusing it broke principals that loaded before.

    Raises:
        NoAccessError: it is writable by others.
        BadArgError: it cannot be examined.
    """
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise errors.BadArgError(f"security: cannot examine {path}: {exc}") from exc
    if mode & 0o002:
        raise errors.NoAccessError(
            f"security: {path} is writable by others (mode {mode:04o}); chmod 700 it"
        )
    if mode & 0o020:
        key = os.path.abspath(path)
        with _warned_lock:
            first = key not in _warned_directories
            if first and len(_warned_directories) < _MAX_WARNED_DIRECTORIES:
                _warned_directories.add(key)
        if first:
            log.warning(
                "security: principal directory %s is writable by its group (mode %04o): "
                "members of the group could replace or remove its files; chmod 700 it",
                path,
                mode,
            )


def _remove_stale_temporaries(directory: Path, files: Iterable[str]) -> None:
    """Remove the temporary files (``.key.pem.*.tmp`` and so on) a save that crashed left
    in ``directory``: one of them may be a plaintext copy of the key."""
    prefixes = tuple(f".{name}." for name in files)
    with os.scandir(directory) as entries:
        stale = [
            entry.path
            for entry in entries
            if entry.name.startswith(prefixes)
            and entry.name.endswith(".tmp")
            and not entry.is_dir(follow_symlinks=False)
        ]
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_caveats(caveats: Sequence[Caveat]) -> tuple[Caveat, ...]:
    """The caveats of a new certificate: Caveat values, at most :data:`MAX_CAVEATS` (every
    peer refuses a certificate with more)."""
    given: object = caveats
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise errors.BadArgError(
            f"security: caveats must be a list of Caveat values, not {type(given).__name__}"
        )
    cavs = tuple(caveats)
    if not all(isinstance(c, Caveat) for c in cavs):
        raise errors.BadArgError("security: caveats must be Caveat values")
    if len(cavs) > MAX_CAVEATS:
        raise errors.BadArgError(
            f"security: a certificate carries at most {MAX_CAVEATS} caveats, not {len(cavs)}"
        )
    return cavs


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _atomic_write_all(directory: Path, files: dict[str, bytes]) -> None:
    """Write each of ``files`` (name: data) into ``directory`` with mode 0600: every file is
    written in full and synced to a temporary file first, and only then are they renamed
    into place, so a failed write (a full disk, say) leaves the previous files as they were.
    Each rename is atomic; a crash between the renames (a few microseconds) can leave new
    and old files side by side."""
    written: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            written.append((tmp, directory / name))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
        for tmp, target in written:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_bounded(file: Path, limit: int) -> bytes | None:
    """At most ``limit + 1`` bytes of the regular file ``file`` (more than ``limit`` means
    too large), or None when there is no such file. A FIFO, device or directory is refused
    without waiting on it.

    Raises:
        BadArgError: ``file`` is not a regular file, or cannot be read.
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.BadArgError(f"security: cannot read {file}: {exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.BadArgError(f"security: {file} is not a regular file")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise errors.BadArgError(f"security: cannot read {file}: {exc}") from exc
    finally:
        os.close(fd)


def _read_key_file(key_path: Path) -> bytes:
    try:
        # (Non-blocking: a FIFO put in its place is refused below, not waited on.)
        fd = os.open(key_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise errors.NoExistError(f"security: no key file {key_path}") from exc
    except OSError as exc:
        raise errors.NoAccessError(f"security: cannot open {key_path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.BadArgError(f"security: {key_path} is not a regular file")
        if os.name == "posix":
            if st.st_mode & 0o077:
                raise errors.NoAccessError(
                    f"security: {key_path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
                )
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                raise errors.NoAccessError(f"security: {key_path} is owned by another user")
        data = os.read(fd, MAX_KEY_FILE)
    finally:
        os.close(fd)
    return data


def _parse_key(pem: bytes, passphrase: bytes | None, key_path: Path) -> ed25519.Ed25519PrivateKey:
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
    if encrypted and passphrase is None:
        raise errors.NoAccessError(f"security: {key_path} is encrypted; a passphrase is needed")
    if not encrypted and passphrase is not None:
        raise errors.BadArgError(f"security: {key_path} is not encrypted; no passphrase expected")
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except UnsupportedAlgorithm as exc:
        raise errors.BadArgError(f"security: {key_path} does not hold an Ed25519 key") from exc
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise errors.NoAccessError(
                f"security: cannot decrypt {key_path}: wrong passphrase or corrupt file"
            ) from exc
        raise errors.BadArgError(f"security: corrupt key file {key_path}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise errors.BadArgError(f"security: {key_path} does not hold an Ed25519 key")
    return key
