"""The client's side of security: which servers it trusts, what it grants, what discharges
it sends.

Owns: the handshake's check of a server (its blessings must validate under the client's
roots before the client reveals its own), which of the client's blessings a server is shown,
authorizing a server for one call (the names valid for the method and suffix, kept on the VC
until they may expire; the endpoint's blessings; the ``ServerPattern``,
``ServerPublicKey`` and ``SkipServerAuthorization`` options), granting (``Granter``), and the
discharges for the third-party caveats of the blessings the client presents (from the shared
cache, else fetched from their dischargers).

Must not: write a request, hold a lock across a discharge fetch, or decide a retry.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipcclient import errors
from ipcclient.client.plan import VC_STATE_ENTRIES, Authorization, vc_state
from ipcclient.context import WAIT_SLICE, Context
from ipcclient.headers import MAX_DISCHARGES
from ipcclient.naming.endpoint import Endpoint
from ipcclient.options import (
    CallOption,
    Granter,
    NoDischarges,
    NoRetry,
    ServerPattern,
    ServerPublicKey,
    SkipServerAuthorization,
    find_all,
    find_one,
)
from ipcclient.security.blessings import Blessings, validate_blessings, validity_horizon
from ipcclient.security.caveats import MAX_CAVEAT_NESTING, SecurityCall, ThirdPartyCaveat
from ipcclient.security.discharges import (
    Discharge,
    DischargeCache,
    DischargeImpetus,
    Fetch,
    FetchKey,
    fetch_key,
    filtered_impetus,
)
from ipcclient.security.keys import PublicKey
from ipcclient.security.patterns import BlessingPattern
from ipcclient.security.principal import Principal
from ipcclient.transport.conn import Connection

log = logging.getLogger("ipcclient.client")

DISCHARGE_MARGIN = 2.0
"""Seconds of validity a cached discharge must have left to be sent: one closer to its
expiry is fetched anew, so that it does not expire on its way to the server."""

AUTHORIZATION_TTL = 60.0
"""The longest an authorization is kept on a VC (seconds), even when the server's blessings
and discharges would hold longer."""

wall_clock: Callable[[], float] = time.time
"""The wall clock that authorizations, caveats and their expiry are checked against (a seam
for tests that move time forward)."""


def bare(msg: str) -> str:
    """``msg`` without the leading ``client:`` of the client's own messages (for composing
    one error's message from another's without repeating the component)."""
    return msg[8:] if msg.startswith("client: ") else msg


def server_names(
    principal: Principal,
    blessings: Blessings,
    discharges: Sequence[Any],
    *,
    method: str,
    suffix: str = "",
) -> tuple[list[str], list[Any]]:
    """The names of the server's ``blessings`` valid for ``method`` on ``suffix`` under the
    roots of ``principal``, and the rejected ones."""
    default = principal.store.default
    call = SecurityCall(
        method=method,
        suffix=suffix,
        timestamp=wall_clock(),
        local_blessings=tuple(default.names) if default is not None else (),
        remote_blessings=blessings,
        remote_discharges={d.caveat_id: d for d in discharges if isinstance(d, Discharge)},
    )
    return validate_blessings(blessings, call, principal.roots)


def vc_authorizer(principal: Principal) -> Callable[[Endpoint], Any]:
    """The handshake's check, per endpoint, made before we reveal our own blessings: the
    server's blessings must validate under our roots, and one of the names that validated
    must be one the endpoint names, if it names any (exactly: a delegate of the named
    server does not pass). A call that skips the endpoint's names dials the endpoint
    without them (:func:`endpoint_to_dial`)."""

    def for_endpoint(ep: Endpoint) -> Any:
        def authorize(key: PublicKey, blessings: Any, discharges: tuple[Any, ...]) -> list[str]:
            if not isinstance(blessings, Blessings):
                raise errors.NotTrustedError("client: the server presented no blessings")
            names_ok, rejected = server_names(principal, blessings, discharges, method="")
            if not names_ok:
                why = "; ".join(f"{r.name}: {bare(r.error.msg)}" for r in rejected)
                log.debug("client: server %s not trusted: %s", blessings.names, why)
                raise errors.NotTrustedError(
                    f"client: the server's blessings {blessings.names} are not trusted ({why})"
                )
            if ep.blessings and not any(b in names_ok for b in ep.blessings):
                raise _not_the_named_server(names_ok, ep)
            log.debug("client: server at handshake presents %s", names_ok)
            return names_ok  # (what our blessings are chosen for: see blessings_for_server)

        return authorize

    return for_endpoint


def _not_the_named_server(names: Sequence[str], ep: Endpoint) -> errors.NotTrustedError:
    log.debug("client: server %s is not the one %s names", list(names), ep)
    return errors.NotTrustedError(
        f"client: server {list(names)} is not the one the endpoint names ({list(ep.blessings)})"
    )


def endpoint_to_dial(ep: Endpoint, key: str, options: Sequence[CallOption]) -> tuple[Endpoint, str]:
    """The endpoint (and its VC key) a call dials for ``ep``: ``ep`` itself, unless the call
    skips matching the server against the names ``ep`` gives (``SkipServerAuthorization``):
    then ``ep`` without them, so that the handshake does not refuse the server for them, and
    so that the VC it makes is kept apart from those that checked them."""
    if not ep.blessings or not options or find_one(options, SkipServerAuthorization) is None:
        return ep, key
    bare_ep = dataclasses.replace(ep, blessings=())
    return bare_ep, str(bare_ep)


def blessings_for_server(principal: Principal) -> Callable[[Any], Blessings | None]:
    """Which of ``principal``'s blessings a server is shown, chosen by the server's names
    that validated under our roots (what :func:`vc_authorizer`'s check returns to the
    handshake), never by the names it merely presents: a chain it signed itself, named
    after a server we show other blessings to, must not get them."""

    def choose(validated: Any) -> Blessings | None:
        peer_names = (
            [n for n in validated if isinstance(n, str)] if isinstance(validated, list) else []
        )
        chosen = principal.store.for_peer(*peer_names)
        return chosen if chosen is not None else principal.store.default

    return choose


def authorize_server(
    principal: Principal,
    conn: Connection,
    ep: Endpoint,
    method: str,
    suffix: str,
    options: Sequence[CallOption],
) -> Authorization:
    """Authorize the server on ``conn`` for this call before any request byte is written.

    Raises:
        NotTrustedError: no blessing of the server is valid for the call, or the endpoint or
            an option names another server.
    """
    blessings = conn.remote_blessings
    if not isinstance(blessings, Blessings):
        raise errors.NotTrustedError("client: the server presented no blessings")
    authorized = vc_state(conn).authorized
    key = (method, suffix)
    now = wall_clock()
    hit = authorized.get(key)
    if hit is None or hit.valid_until <= now:
        names, rejected = server_names(
            principal, blessings, conn.remote_discharges, method=method, suffix=suffix
        )
        if not names:
            why = "; ".join(f"{r.name}: {bare(r.error.msg)}" for r in rejected)
            log.debug("client: no trusted blessing of the server for %s: %s", method, why)
            raise errors.NotTrustedError(f"client: no trusted server blessing ({why})")
        log.debug("client: server %s authorized for %s on %r", names, method, suffix)
        if len(authorized) >= VC_STATE_ENTRIES:
            authorized.clear()
        until = min(validity_horizon(blessings, conn.remote_discharges), now + AUTHORIZATION_TTL)
        hit = authorized[key] = Authorization(names, until)
    names = hit.server_names
    # Exact match: a delegate of the server must not pass for it.
    # (The handshake checked this already, unless the call skips it; kept here so that a
    # VC never serves a call its endpoint's names refuse, however it was made.)
    endpoint_ok = not ep.blessings or any(b in names for b in ep.blessings)
    if not endpoint_ok and (not options or find_one(options, SkipServerAuthorization) is None):
        raise _not_the_named_server(names, ep)
    if not options:
        return hit
    for opt in find_all(options, ServerPattern):
        if not opt.matched_by(names):
            raise errors.NotTrustedError(
                f"client: server {names} does not match the pattern(s) {list(opt.patterns)}"
            )
    key_opt = find_one(options, ServerPublicKey)
    if key_opt is not None and key_opt.key != conn.remote_key:
        raise errors.NotTrustedError("client: the server's public key is not the one asked for")
    return hit


def grant(conn: Connection, options: Sequence[CallOption]) -> Blessings | None:
    """The blessings the ``Granter`` options grant the server on ``conn`` (None: none).

    Raises:
        BadArgError: a Granter option's function returned something other than Blessings
            or None (a bug of the caller's; nothing is sent), naming that function.
        NotTrustedError: a granter's function raised (or is not callable).
    """
    granted: Blessings | None = None
    if not options:
        return granted
    for opt in find_all(options, Granter):
        try:
            got = opt.grant(conn.remote_blessings, conn.remote_key)
        except errors.IPCError as exc:
            raise errors.NotTrustedError(f"client: granter failed: {exc.msg}") from exc
        except Exception as exc:
            raise errors.NotTrustedError(f"client: granter failed: {exc!r}") from exc
        if got is not None:
            if not isinstance(got, Blessings):
                who = getattr(opt.grant, "__qualname__", None)
                raise errors.BadArgError(
                    f"client: the Granter option's function "
                    f"{who if isinstance(who, str) else repr(opt.grant)[:60]} returned "
                    f"{type(got).__name__}; a granter must return Blessings or None"
                )
            granted = Blessings.union(granted, got)
    return granted


FetchDischarges = Callable[
    [Context, list[ThirdPartyCaveat], DischargeImpetus, list[str]], list[Discharge]
]


def prepare_discharges(
    cache: DischargeCache,
    fetch: FetchDischarges,
    ctx: Callable[[], Context],
    blessings: Any,
    server_names: Sequence[str],
    method: str,
    args: Sequence[Any],
    options: Sequence[CallOption],
) -> tuple[tuple[Discharge, ...], list[str]]:
    """Discharges for the third-party caveats on the blessings we present: from the shared
    ``cache``, else fetched from their dischargers (by ``fetch``) and cached. A discharge
    may itself carry third-party caveats: discharges for those are gathered the same way,
    level by level, as deep as a validator looks (``MAX_CAVEAT_NESTING``). A fetch that
    fails is reported with the call's error (the second value)."""
    if not isinstance(blessings, Blessings) or (
        options and find_one(options, NoDischarges) is not None
    ):
        return (), []
    caveats = blessings.third_party_caveats()
    if not caveats:
        return (), []
    found: list[Discharge] = []
    problems: list[str] = []
    seen: set[str] = set()
    impetus = DischargeImpetus(tuple(BlessingPattern(n) for n in server_names), method, tuple(args))
    for _level in range(MAX_CAVEAT_NESTING):
        caveats = [cav for cav in caveats if cav.id not in seen]
        if not caveats:
            break
        seen.update(cav.id for cav in caveats)
        if len(seen) > MAX_DISCHARGES:
            raise errors.BadArgError(
                f"client: the blessings presented need discharges for {len(seen)} "
                f"third-party caveats; a request carries at most {MAX_DISCHARGES} discharges"
            )
        got: list[Discharge] = []
        missing: list[ThirdPartyCaveat] = []
        for cav in caveats:
            # (A discharge about to expire is fetched anew: it could expire on its way.)
            d = cache.get(cav.id, min_validity=DISCHARGE_MARGIN, caveat=cav, impetus=impetus)
            if d is not None:
                got.append(d)
            else:
                missing.append(cav)
        if missing:
            got.extend(fetch(ctx(), missing, impetus, problems))
        found.extend(got)
        # (Once each: discharges of one level often share a caveat; each copy would be
        # fetched and sent again, past the server's count of discharges in a request.)
        nested = {c.id: c for d in got for c in d.caveats if isinstance(c, ThirdPartyCaveat)}
        caveats = list(nested.values())
    return tuple(found), problems


_FETCHING = object()
"""Context key: the fetches (:func:`fetch_key`) the calls of this context make on behalf of,
so that a call made to fetch a discharge (a lookup of the discharger's name, say) never
awaits the very fetch it is part of."""


def _await(ctx: Context, cache: DischargeCache, flight: Fetch, done: threading.Event) -> None:
    """Wait for ``done`` (the end of ``flight``) within ``ctx``: raises ctx's error if it ends
    first, having left ``flight``."""
    handle = ctx.add_done_callback(lambda _err: done.set())
    try:
        while not done.wait(WAIT_SLICE):  # (in slices, so that KeyboardInterrupt is seen)
            pass
    finally:
        ctx.remove_done_callback(handle)
        if flight.waiters:
            cache.leave(flight, done)  # (no-op once the fetch ended)
    err = ctx.err()
    if err is not None:
        raise err


def fetch_discharges(
    call: Callable[..., tuple[Any, ...]],
    cache: DischargeCache,
    on_fetched: Callable[[], None],
    max_parallel: int,
    ctx: Context,
    caveats: list[ThirdPartyCaveat],
    impetus: DischargeImpetus,
    problems: list[str],
) -> list[Discharge]:
    """Fetch a discharge for each of ``caveats`` from its discharger (by ``call``, the
    client's ``call``, to the server at the caveat's location, which must authenticate with
    the caveat's discharger key; concurrently, at most ``max_parallel`` at once, within
    ``ctx``), cache each, and report each failure in ``problems``."""

    def fetch_one(cav: ThirdPartyCaveat, key: FetchKey) -> Discharge:
        log.debug("client: fetching a discharge for caveat %s from %s", cav.id[:12], cav.location)
        results = call(
            ctx.with_value(_FETCHING, ctx.value(_FETCHING, frozenset()) | {key}),
            cav.location,
            "Discharge",
            cav,
            filtered_impetus(cav.requirements, impetus).to_wire(),
            # Only the discharger is told what the call is (its method and args, if the
            # caveat asks): whoever answers at the location must hold the key that signs.
            options=(NoDischarges(), NoRetry(), ServerPublicKey(cav.discharger_key)),
        )
        d = results[0] if len(results) == 1 else None
        if not isinstance(d, Discharge):
            raise errors.BadProtocolError(
                f"client: the discharger sent no discharge ({len(results)} results)"
            )
        cache.put(d, caveat=cav, impetus=impetus)
        on_fetched()
        return d

    def fetch(cav: ThirdPartyCaveat) -> Discharge | None:
        key = fetch_key(cav, impetus)
        if key in ctx.value(_FETCHING, frozenset()):
            # A call made to fetch this very discharge (to look up its discharger, say): it
            # goes without it, as the call to the discharger itself does.
            problems.append(
                f"discharge for caveat {cav.id[:12]} from {cav.location}: needed on the way "
                "to its own discharger"
            )
            log.debug("client: caveat %s needed to reach its own discharger", cav.id[:12])
            return None
        try:
            if cav.requirements.report_arguments:
                return fetch_one(cav, key)
            return fetch_shared(cav, key)
        except errors.IPCError as exc:
            problems.append(f"discharge for caveat {cav.id[:12]} from {cav.location}: {exc}")
            # (Ended by the call's own deadline or cancel, or an interrupt: the call says so.)
            level = logging.DEBUG if ctx.done() else logging.WARNING
            log.log(level, "client: fetching a discharge from %s failed: %s", cav.location, exc)
            return None

    def fetch_shared(cav: ThirdPartyCaveat, key: FetchKey) -> Discharge:
        """One fetch per request (``key``) at a time: a call that finds one in progress
        awaits it (within its own ctx) and takes its discharge, or its error; it fetches
        anew only when that fetch ended by its own caller's deadline or cancellation, or
        by an error that is not an :class:`~ipcclient.errors.IPCError`."""
        while True:
            flight, done = cache.begin_fetch(key)
            if done is None:
                try:
                    flight.discharge = fetch_one(cav, key)
                    return flight.discharge
                except errors.IPCError as exc:
                    flight.error = exc
                    flight.callers_own = ctx.done()
                    raise
                finally:
                    cache.end_fetch(key, flight)
            _await(ctx, cache, flight, done)
            if flight.discharge is not None:
                return flight.discharge
            err = flight.error
            if err is not None and not flight.callers_own:
                raise err.with_context()  # (a fresh copy: each caller raises its own)
            # (that fetch ended by its caller's deadline or cancellation: fetch anew)

    if len(caveats) == 1:
        results = [fetch(caveats[0])]
    else:
        # The fetches run in the pool's threads, under a context of their own: an interrupt
        # (Ctrl-C) of the thread waiting for them cancels it, so that they end at once and
        # it does not wait out their deadline before the interrupt reaches its caller.
        fetching = ctx.with_cancel()
        ctx = fetching  # (the context fetch() and fetch_shared() use)
        pool = ThreadPoolExecutor(min(len(caveats), max_parallel), "ipc-discharge")
        try:
            results = list(pool.map(fetch, caveats))
        finally:
            fetching.cancel()  # (done, or interrupted; it is also let go of by ctx's parent)
            pool.shutdown(wait=True)
    return [d for d in results if d is not None]
