"""Names to servers, and one error when every server of a name failed.

Owns: :class:`NamespaceCaller` (how the namespace calls mount tables through the client),
resolving a name through the namespace with the client's rules (a name no mount table
has fails at once unless the call waits for ready; a mount table's error keeps its own
retry action, so one that cannot be reached may be retried and one that fails with a
NO_RETRY error ends the call), and classifying the failures of a call's servers into the
one error the caller sees, saying why in one line.

Must not: dial, write a request, or retry (the caller's retry loop does).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipcclient import errors
from ipcclient.client.security import bare
from ipcclient.context import Context
from ipcclient.naming.namespace import (
    MountEntry,
    NameNotFoundError,
    Namespace,
    ResolutionDepthExceededError,
)
from ipcclient.options import NoRetry

if TYPE_CHECKING:
    from ipcclient.client.api import Client

log = logging.getLogger("ipcclient.client")


def classify(
    name: str,
    servers: Sequence[str],
    failures: list[errors.IPCError],
    last: errors.IPCError | None,
    tried: list[str],
) -> errors.IPCError:
    """The one error for "every server of ``name`` failed", saying why in one line."""
    if not servers:
        return errors.NoServersError(
            f"client: {name!r} resolved to no servers (its mount entry is empty)", tried=tried
        )
    if any(isinstance(f, errors.NotTrustedError) for f in failures):
        nt = next(f for f in failures if isinstance(f, errors.NotTrustedError))
        return errors.NotTrustedError(nt.msg, tried=tried)
    if failures and all(
        isinstance(f, errors.VersionIncompatibleError | errors.BadArgError) for f in failures
    ):
        # Hopeless whatever we retry: say so at once rather than retry to the deadline.
        return errors.NoServersError(
            f"client: no compatible server for {name!r}: {bare(last.msg) if last else ''}",
            action=errors.RetryAction.NO_RETRY,
            tried=tried,
        )
    if failures and all(isinstance(f, errors.BadProtocolError) for f in failures):
        # Every server spoke garbage: not worth retrying.
        return errors.BadProtocolError(
            f"client: no server for {name!r} speaks the protocol: {bare(failures[-1].msg)}",
            tried=tried,
        )
    if failures and all(isinstance(f, errors.TimeoutError) for f in failures):
        return errors.TimeoutError(
            f"client: {bare(last.msg) if last else 'timed out'}", tried=tried
        )
    if isinstance(last, errors.CanceledError):
        return last
    action = (
        last.action
        if last is not None and last.action is not errors.RetryAction.NO_RETRY
        else errors.RetryAction.RETRY_REFETCH
    )
    if last is not None and isinstance(last, errors.ConnectionFailedError):
        where = "its server" if len(servers) == 1 else f"any of its {len(servers)} servers"
        return errors.NoServersError(
            f"client: cannot connect to {where} for {name!r}: {bare(last.msg)} "
            "(is the server running at that address?)",
            action=action,
            tried=tried,
        )
    detail = f": {last.id}: {bare(last.msg)}" if last is not None else ""
    return errors.NoServersError(
        f"client: no server for {name!r} could be reached{detail}", action=action, tried=tried
    )


def resolve(
    namespace: Namespace, ctx: Context, name: str, tried: list[str], wait: Callable[[], bool]
) -> MountEntry:
    """Resolve ``name`` through the namespace. A name no mount table has fails at once
    unless the call waits for ready (``wait()``; then it is retried until the deadline: the
    server may be about to mount it); so do a relative name without roots and a malformed
    name. Any other failure keeps its own retry action: a mount table that cannot be reached
    (or is overloaded) may be retried; one that was reached and failed with a NO_RETRY error
    (a malformed answer, an internal error) ends the call at once."""
    try:
        entry = namespace.resolve(ctx, name)
    except errors.NoExistError as exc:
        tried.append(f"resolve {name!r}: {exc.id}")
        if isinstance(exc, ResolutionDepthExceededError):
            raise errors.NoServersError(
                f"client: resolving {name!r} failed: {exc.msg} (a loop of mount tables?)",
                action=errors.RetryAction.NO_RETRY,
                tried=tried,
            ) from exc
        waiting = wait()
        where = exc.msg if isinstance(exc, NameNotFoundError) else f"{exc.id}: {exc.msg}"
        hint = (
            "waiting for it to be mounted"
            if waiting
            else "check the name, and that its server is running and published under "
            "it; pass WaitForReady() to wait for it"
        )
        raise errors.NoServersError(
            f"client: {name!r} is not mounted: {where} ({hint})",
            action=errors.RetryAction.RETRY_REFETCH if waiting else errors.RetryAction.NO_RETRY,
            tried=tried,
        ) from exc
    except (
        errors.TimeoutError,
        errors.CanceledError,
        errors.BadArgError,
        errors.NoAccessError,
        errors.NotTrustedError,
    ) as exc:
        # (Said of the call to a mount table, whose request was sent; the caller's own
        # request was not.)
        raise exc.with_context(request_sent=False) from exc
    except errors.IPCError as exc:
        tried.append(f"resolve {name!r}: {exc.id}")
        if isinstance(exc, errors.NoServersError) and exc.action is errors.RetryAction.NO_RETRY:
            raise exc.with_context(tried=tried) from exc  # (no roots, say: hopeless)
        log.debug("client: resolving %r failed: %s", name, exc)
        if exc.action is errors.RetryAction.NO_RETRY:
            # A mount table was reached and failed in a way that will not go away by itself
            # (a malformed answer, an internal error): the call ends now. Only errors whose
            # own action allows a retry (the table could not be reached, or was overloaded)
            # are retried, as that action says.
            raise errors.NoServersError(
                f"client: cannot resolve {name!r}: its mount table failed: {exc.id}: "
                f"{bare(exc.msg)}",
                action=errors.RetryAction.NO_RETRY,
                tried=tried,
            ) from exc
        raise errors.NoServersError(
            f"client: cannot resolve {name!r}: no mount table answered ({bare(exc.msg) or exc.id})",
            action=exc.action,
            tried=tried,
        ) from exc
    tried.append(f"resolved {name!r} to {len(entry.servers)} server(s)")
    if log.isEnabledFor(logging.DEBUG):
        log.debug("client: %r resolved to %s", name, [s.server for s in entry.servers])
    return entry


class NamespaceCaller:
    """Adapts the clients of one namespace to its Caller protocol (names arrive terminal):
    the calls go through the first of them still open. Held weakly (a namespace must not
    keep a dropped client alive): every client made with the namespace is added, so that
    one closed or collected leaves the others resolving."""

    def __init__(self, client: Client) -> None:
        self._clients = [weakref.ref(client)]

    def add(self, client: Client) -> None:
        """Another client made with this namespace (the dead ones are forgotten)."""
        alive = [ref for ref in self._clients if ref() is not None]
        self._clients = [*alive, weakref.ref(client)]  # (one assignment: callers read it)

    def call(
        self, ctx: Context, name: str, method: str, args: Sequence[Any], **_options: Any
    ) -> Sequence[Any]:
        for ref in self._clients:
            client = ref()
            if client is not None and not client.closed:
                return client.call(ctx, name, method, *args, options=(NoRetry(),))
        raise errors.BadStateError("client: closed")
