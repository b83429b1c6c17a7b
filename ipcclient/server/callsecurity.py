"""Authorizing one call: the client's blessings validated for it, then its authorizer.

Owns: :func:`authorize_call` (granted blessings and discharges checked, the client's
blessing names validated against the server's roots with the call's caveats, the result
cached on the VC while it stays valid, then the object's authorizer run) and the trimming of
that per-VC cache. Must not: read a call's args or answer it (a refusal is raised).
"""

from __future__ import annotations

import time
from typing import Any

from ipcclient import errors
from ipcclient.headers import Request
from ipcclient.security.blessings import Blessings, validate_blessings, validity_horizon
from ipcclient.security.caveats import SecurityCall
from ipcclient.security.discharges import Discharge
from ipcclient.security.principal import Principal
from ipcclient.server.authorizer import Authorizer, CallSecurity, DefaultAuthorizer
from ipcclient.server.capacity import VC_STATE
from ipcclient.transport.conn import Connection

__all__ = ["VC_CACHE_ENTRIES", "authorize_call", "trim_cache"]

VC_CACHE_ENTRIES = 256
"""Validated client names kept per VC (per method, suffix and discharges); cleared when full."""


def authorize_call(
    conn: Connection,
    request: Request,
    suffix: str,
    authorizer: Authorizer | None,
    principal: Principal,
    server_names: tuple[str, ...],
) -> CallSecurity:
    """The security facts of a call from ``conn`` to ``request.method`` at ``suffix``, once
    ``authorizer`` (None: the default) allowed it; raises the error to answer otherwise."""
    granted = request.granted
    authorizer = authorizer or DefaultAuthorizer()
    plain = granted is None and not request.discharges
    if plain:
        # The usual call (nothing granted, no discharges in the request): its security
        # facts depend only on the VC, the method and the suffix, so they are cached.
        fast = conn.cache.get(("call-security", request.method, suffix))
        if fast is not None and fast[1] > time.time():
            authorizer.authorize(fast[0])  # NoAccess: no refused discharge to report
            return fast[0]  # type: ignore[no-any-return]
    until: float | None = None
    if granted is not None:
        if not isinstance(granted, Blessings):
            raise errors.BadProtocolError("server: granted blessings are malformed")
        if granted.public_key != principal.public_key:
            raise errors.NoAccessError("server: blessing granted not bound to this server")
    discharges: dict[str, Discharge] = {d.caveat_id: d for d in conn.remote_discharges}
    for d in request.discharges:
        if not isinstance(d, Discharge):
            raise errors.BadProtocolError("server: a discharge in the request is malformed")
        discharges[d.caveat_id] = d
    remote = conn.remote_blessings
    # Keyed by what was checked: each discharge's caveat ID, digest (its caveats) and
    # signature. (By caveat ID alone, an expired or forged discharge for a caveat that a
    # valid one had discharged before on this VC reused that one's result.)
    key = (
        "client-names",
        request.method,
        suffix,
        tuple(sorted((d.caveat_id, d.digest(), d.signature) for d in discharges.values())),
    )
    now = time.time()
    hit = conn.cache.get(key)
    if hit is not None and hit[2] > now:
        names, rejected, until = hit[0], hit[1], hit[2]
    else:
        sc = SecurityCall(
            method=request.method,
            suffix=suffix,
            local_blessings=server_names,
            remote_blessings=remote,
            remote_discharges=discharges,
        )
        names, rejected = validate_blessings(remote, sc, principal.roots)
        if not any(r.error.id == errors.ErrorID.BAD_DISCHARGE.value for r in rejected):
            # Safe to reuse until the earliest expiry: every other caveat kind depends only
            # on the method, the suffix and the blessings of this VC.
            trim_cache(conn.cache)
            until = min(validity_horizon(remote, discharges.values()), now + 60.0)
            conn.cache[key] = (names, rejected, until)
    security = CallSecurity(
        method=request.method,
        suffix=suffix,
        client_names=tuple(names),
        rejected=tuple((r.name, r.error.msg) for r in rejected),
        server_names=server_names,
        client_key=conn.remote_key,
        server_key=principal.public_key,
        granted=granted,
    )
    if plain and until is not None:
        trim_cache(conn.cache)
        conn.cache[("call-security", request.method, suffix)] = (security, until)
    try:
        authorizer.authorize(security)
    except errors.NoAccessError:
        # A refused discharge names its caveat: say so, so the client refetches only it.
        for r in rejected:
            if isinstance(r.error, errors.BadDischargeError):
                raise r.error from None
        raise
    return security


def trim_cache(cache: dict[Any, Any]) -> None:
    """Clear a VC's cache of security facts when full. Its server state (``VC_STATE``, the
    VC's bounds and counts) is never out of the cache meanwhile: the reader thread looks it
    up for every new flow, and taking it out and back would let a flow make a fresh one,
    its counts at zero."""
    if len(cache) >= VC_CACHE_ENTRIES:
        for key in list(cache):
            if key != VC_STATE:
                cache.pop(key, None)
