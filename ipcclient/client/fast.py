"""The fast path of the usual unary call.

Owns: :func:`fast_call`, which makes the usual unary call (no options; a rooted name naming
one server whose VC is cached and open) from the :class:`~ipcclient.client.plan.CallPlan`
the general path kept on that VC, and gives up (returns None, with nothing sent) whenever
there is none, it expired, or anything else is unusual: the general path then makes the
call. It specialises only what the plan makes certain and rejoins the general path's parts
(the header encoder, the request writer, the unary finish) at once.

Must not: authorize, grant, fetch discharges, resolve, dial or retry (the general path does
all of it), take a lock, or raise an error the general path would not raise.

Concurrency: it reads the VC map and the VC's state without a lock (single dict reads, atomic
under the GIL); a VC that closes meanwhile fails ``connect`` or the write, and the general
path takes over.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ipcclient import errors, vtrace
from ipcclient.call import finish_unary
from ipcclient.client import plan as _plan
from ipcclient.client import security, vcs
from ipcclient.client.plan import VC_STATE_KEY, Route, VCState
from ipcclient.client.request import encode_request_header, write_request
from ipcclient.context import SYSTEM_CLOCK, Context

if TYPE_CHECKING:
    from ipcclient.client.api import Client

ROUTES = 1024
"""Names whose fast-path route (or its absence) is kept; cleared when full."""


def fast_call(
    client: Client, ctx: Context, name: object, method: object, args: tuple[Any, ...]
) -> tuple[Any, ...] | None:
    """The usual unary call by the fast path, or None with nothing sent (the general path
    then makes it). Usual: no options, a rooted name naming one server, its VC cached
    and open, and a :class:`CallPlan` the general path made on that VC for this method
    and suffix that has not expired (the server authorized, no discharges to send,
    nothing granted). The fast path decides nothing the plan does not say: it opens a
    flow, writes the header (:func:`encode_request_header`) and args
    (:func:`write_request`) and reads the reply (:func:`finish_unary`), with no call
    object, retry loop or stream object; the bytes and every error are the general
    path's. ``name`` and ``method`` may be anything a caller passed: wrong types go to the
    general path, which says what is wrong."""
    if type(name) is not str or type(method) is not str or ctx.done():
        return None  # the general path raises what it must, with nothing sent
    if client._closed or client._abandoned or client._forks != vcs.forks:
        return None
    if client._routes_namespace is not client.namespace:  # routes depend on the namespace
        client._routes.clear()
        client._routes_namespace = client.namespace
    try:
        route = client._routes[name]
    except KeyError:
        route = _route(client, name)
    if route is None:
        return None
    conn = client._vcs.get(route.vc_key)
    if conn is None or conn._error is not None or conn.suspect:
        return None
    state: VCState | None = conn.cache.get(VC_STATE_KEY)
    if state is None:
        return None
    plan = state.plans.get((method, route.suffix))
    if plan is None or plan.valid_until <= security.wall_clock():
        return None  # the general path authorizes again (or says why not)
    try:
        flow = conn.connect()
    except errors.IPCError:
        return None  # the general path evicts and redials
    if flow is None:
        return None  # at the server's flow limit: the general path waits for a flow
    deadline = ctx.deadline
    if deadline is not None and ctx._clock is not SYSTEM_CLOCK:
        deadline = ctx.monotonic_deadline()  # (the transport waits on time.monotonic)
    flow.set_deadline(deadline)
    # From here the context's end (cancel, deadline) cancels the flow: it wakes a write
    # blocked on flow control as well as the wait for the response.
    handle = ctx.add_done_callback(flow.cancel)
    span: vtrace.Span | None = None
    if vtrace.current_span(ctx) is None:
        # A new trace that nobody records (no span in the context, so not collected):
        # the call's span would be seen nowhere; only its ids travel.
        trace_id, span_id = vtrace.new_ids()
        flags = 0
    else:
        span = vtrace.new_span(ctx, f"<client>{name!r}.{method}")
        trace_id, span_id, flags = span.trace_id, span.span_id, span.flags
    try:
        relative = None if deadline is None else max(0.0, deadline - time.monotonic())
        head = encode_request_header(
            route.suffix, method, len(args), relative, trace_id, span_id, flags
        )
        unsent = write_request(flow, head, args, True, deadline, flow.cancel, [])
        if unsent is not None:
            return None  # nothing reached the wire: the general path starts over
        client.stats["calls_started"] += 1
        collect = trace_id if span is not None and span.collecting else None
        return finish_unary(flow, ctx, collect)
    except BaseException:
        flow.cancel(errors.CanceledError("call: interrupted"))  # (no-op once it ended)
        raise
    finally:
        ctx.remove_done_callback(handle)
        if span is not None:
            span.finish()


def _route(client: Client, name: str) -> Route | None:
    """The route of ``name`` for :func:`fast_call` when it names exactly one server
    without resolving, else None. Pure, so kept (bounded)."""
    route = _plan.single_route(
        client._servers_without_resolving(name), client._manager.options.versions
    )
    if len(client._routes) >= ROUTES:
        client._routes.clear()
    client._routes[name] = route
    return route
