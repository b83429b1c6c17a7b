"""The exit codes of the ``ipc`` command and its own error.

Owns: the ``EXIT_*`` codes, :data:`EXIT_CODES` (the code of each error ID),
:func:`exit_code`, and :class:`CommandError` (a failure of the command line itself, with its
code). Must not: print anything or run a command.
"""

from __future__ import annotations

from ipcclient import errors

__all__ = [
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
    "exit_code",
]

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


class CommandError(Exception):
    """A failure of the command line's own (not an error from the library)."""

    def __init__(self, msg: str, code: int = EXIT_BAD_ARG) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code


def exit_code(exc: errors.IPCError) -> int:
    """The exit code for an error (see :data:`EXIT_CODES`). ``ipc.NoServers`` whose retry
    action is RETRY_CONNECTION (its servers were found and none could be connected to) is
    :data:`EXIT_CONNECTION`; otherwise (no server for the name) :data:`EXIT_NOT_FOUND`."""
    if exc.id == errors.ErrorID.NO_SERVERS.value and (
        exc.action is errors.RetryAction.RETRY_CONNECTION
    ):
        return EXIT_CONNECTION
    return EXIT_CODES.get(exc.id, EXIT_FAILED)
