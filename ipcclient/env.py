"""Configuration from the environment: whose credentials to use and which mount tables.

Owns: the two environment variables a program (and the ``ipc`` command) reads, and how
they are read:

``IPCCLIENT_CREDENTIALS``
    A principal directory (as written by :meth:`Principal.save` or ``ipc principal
    create``): the identity a program runs as.
``IPCCLIENT_NAMESPACE``
    Comma-separated rooted names of the root mount tables, e.g. ``/127.0.0.1:8101``.

An explicit argument always wins over the environment. :meth:`ipcclient.Client.from_env`
builds a client from both.

Must not: prompt (a library never reads the terminal; pass ``passphrase=``), open sockets,
or start threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ipcclient import errors
from ipcclient.security.principal import Principal

__all__ = ["CREDENTIALS_VAR", "NAMESPACE_VAR", "credentials_dir", "load_principal", "roots"]

CREDENTIALS_VAR = "IPCCLIENT_CREDENTIALS"
"""The environment variable naming the principal directory to run as."""
NAMESPACE_VAR = "IPCCLIENT_NAMESPACE"
"""The environment variable listing the root mount tables, comma-separated."""


def credentials_dir(
    directory: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The principal directory to use: ``directory`` if given, else ``IPCCLIENT_CREDENTIALS``
    when set and not empty, else None."""
    if directory is not None:
        return os.fspath(directory)
    value = (os.environ if environ is None else environ).get(CREDENTIALS_VAR, "").strip()
    return value or None


def load_principal(
    directory: str | os.PathLike[str] | None = None,
    *,
    passphrase: bytes | None = None,
    environ: Mapping[str, str] | None = None,
) -> Principal | None:
    """Load the principal at ``directory`` (or ``IPCCLIENT_CREDENTIALS``); None when
    neither is set.

    Raises:
        NoExistError, NoAccessError, BadArgError, NotTrustedError: as
            :meth:`Principal.load` (the message names the variable when it came from there).
    """
    chosen = credentials_dir(directory, environ)
    if chosen is None:
        return None
    try:
        return Principal.load(chosen, passphrase=passphrase)
    except errors.IPCError as exc:
        if directory is not None:
            raise
        raise type(exc)(f"{exc.msg} (from ${CREDENTIALS_VAR})") from exc


def roots(
    explicit: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The root mount tables: ``explicit`` if given, else ``IPCCLIENT_NAMESPACE`` split at
    commas (blanks ignored), else none.

    Raises:
        BadArgError: ``explicit`` is a single string (pass a list).
    """
    if explicit is not None:
        if isinstance(explicit, str):
            raise errors.BadArgError("env: roots must be a sequence of names, not one str")
        return tuple(explicit)
    value = (os.environ if environ is None else environ).get(NAMESPACE_VAR, "")
    return tuple(part.strip() for part in value.split(",") if part.strip())
