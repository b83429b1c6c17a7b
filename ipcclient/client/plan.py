"""What a call to a name needs before its request is written, as typed values.

Owns: :class:`Route` (where a server's name leads: endpoint, VC key, suffix; pure, so
cached), :class:`CallPlan` (a frozen value: the route, the server names authorized for the
method, until when, the discharges and the granted blessings), :class:`VCState` (the client's
typed state on one VC, stored under one key in ``Connection.cache``: the authorizations and
the plans the fast path may reuse), and the pure helpers that turn server names into routes.

Must not: do I/O, authorize anything itself (``security`` does), or hold a lock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ipcclient import errors
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint
from ipcclient.security.blessings import Blessings
from ipcclient.security.discharges import Discharge
from ipcclient.transport.conn import Connection

_PROTOCOL_RANK = {"unix": 0, "tcp4": 1, "tcp": 1, "tcp6": 1}
"""Order of servers by protocol (a local Unix socket first; unknown protocols last)."""

VC_STATE_ENTRIES = 256
"""Authorizations (and plans) kept per VC, per method and suffix; cleared when full."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one server's name leads: its endpoint, the VC map's key for it, the suffix."""

    endpoint: Endpoint
    vc_key: str
    suffix: str


@dataclass(frozen=True, slots=True)
class Authorization:
    """The server names of a VC's peer that are valid for a method and suffix, and the wall
    clock time until which that answer holds."""

    server_names: list[str]
    valid_until: float


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Everything the general path decided about a call before writing its request: where
    (``route``), to whom (``server_names``, valid until ``valid_until`` on the wall clock),
    and what travels with it (``discharges``, ``granted``). A plan with no discharges and no
    granted blessings, made for a call without options, is kept on its VC: the fast path
    reuses it for the next call of the same method and suffix until it expires."""

    route: Route
    server_names: list[str]
    valid_until: float
    discharges: tuple[Discharge, ...] = ()
    granted: Blessings | None = None


@dataclass(slots=True)
class VCState:
    """The client's state on one VC (see :func:`vc_state`). Entries are only added (a dict
    insert, atomic for readers) and dropped all at once when the map is full."""

    authorized: dict[tuple[str, str], Authorization] = field(default_factory=dict)
    plans: dict[tuple[str, str], CallPlan] = field(default_factory=dict)


VC_STATE_KEY = object()
"""The key of :class:`VCState` in ``Connection.cache`` (an object no other part can name)."""


def vc_state(conn: Connection) -> VCState:
    """The client's state on ``conn``, made on first use."""
    state: VCState | None = conn.cache.get(VC_STATE_KEY)
    if state is None:
        state = conn.cache[VC_STATE_KEY] = VCState()
    return state


def keep_plan(conn: Connection, method: str, plan: CallPlan) -> None:
    """Keep ``plan`` on ``conn`` for the fast path (bounded)."""
    plans = vc_state(conn).plans
    if len(plans) >= VC_STATE_ENTRIES:
        plans.clear()
    plans[(method, plan.route.suffix)] = plan


@functools.lru_cache(maxsize=1024)
def split_server(server: str) -> tuple[str, str]:
    """``names.split_address_name`` of a server's name (pure; the same names come back)."""
    return names.split_address_name(server)


def dial_plan(address: str, versions: tuple[int, int]) -> tuple[Endpoint, str]:
    """The endpoint at ``address`` and its VC key, if this client can dial it.

    Raises:
        the endpoint's parse error, VersionIncompatibleError, NoServersError (a protocol this
            client cannot dial).
    """
    ep, key = parse_endpoint(address)
    ep.check_compatibility(versions)
    if not ep.is_dialable:
        raise errors.NoServersError(f"client: cannot dial protocol {ep.protocol!r}")
    return ep, key


dial_plan_cached = functools.lru_cache(maxsize=1024)(dial_plan)
""":func:`dial_plan` for hashable versions; errors are not cached (they are raised anew)."""


@functools.lru_cache(maxsize=1024)
def parse_endpoint(address: str) -> tuple[Endpoint, str]:
    """An endpoint and its canonical string (the VC map's key). Endpoint strings repeat call
    after call; parsing each once saves most of the work."""
    ep = Endpoint.parse(address)
    return ep, str(ep)


def server_rank(server: str) -> int:
    """Where ``server`` goes in the order servers are tried (by protocol)."""
    address, _ = names.split_address_name(server)
    try:
        return _PROTOCOL_RANK.get(parse_endpoint(address)[0].protocol, 9)
    except errors.IPCError:
        return 10


def single_route(servers: tuple[str, ...] | None, versions: object) -> Route | None:
    """The route of ``servers`` when it is exactly one rooted, dialable server (and the
    versions are hashable), else None."""
    if servers is None or len(servers) != 1 or type(versions) is not tuple:
        return None
    address, suffix = split_server(servers[0])
    if not address:
        return None
    try:
        ep, key = dial_plan_cached(address, versions)
    except errors.IPCError:
        return None
    return Route(ep, key, suffix)
