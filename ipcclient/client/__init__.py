"""The client: names in, calls out, one VC per endpoint.

A package of small parts, from the bottom up:

- :mod:`~ipcclient.client.plan`: typed values: a server's route, the call plan, the client's
  state on one VC (no I/O).
- :mod:`~ipcclient.client.request`: a call's argument checks, the one request-header encoder
  and the request writer.
- :mod:`~ipcclient.client.security`: server authorization, granting, discharges.
- :mod:`~ipcclient.client.retries`: a call's one retry window.
- :mod:`~ipcclient.client.resolution`: names to servers; one error when every server failed.
- :mod:`~ipcclient.client.vcs`: the VC cache (get, dial once, race a name's servers, evict,
  after fork).
- :mod:`~ipcclient.client.fast`: the fast path of the usual unary call, from a plan the
  general path kept.
- :mod:`~ipcclient.client.api`: the public :class:`Client` and the general path of a call.

Concurrency: besides the VC cache's lock (a leaf, held for no I/O), the client relies on the
GIL for a few unlocked reads and counts (the fast path's lookups, the per-VC state and route
map filled without a lock, ``Client.stats``); docs/concurrency.md lists them with the
transport's, in one place, for free-threaded Python.

Must not: be imported by any module of ``ipcclient`` below it (only the CLI, the interop
service and the package's own top level use it).
"""

from ipcclient.client.api import Client
from ipcclient.client.vcs import HAPPY_EYEBALLS_STAGGER, STALE_DIAL

__all__ = ["HAPPY_EYEBALLS_STAGGER", "STALE_DIAL", "Client"]
