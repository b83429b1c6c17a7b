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
GIL making single dict reads and inserts atomic, and tolerates lost counts: the fast path
reads the VC map, the VC's state and the route map without the lock; the per-VC state and the
route map are filled without a lock (two threads may both compute the same entry; either
value is right) and cleared whole when full; ``Client.stats`` counters and the ``_closed`` and
``_abandoned`` checks are unlocked. Under free-threaded Python these need a lock or an
atomic container.

Must not: be imported by any module of ``ipcclient`` below it (only the CLI, the interop
service and the package's own top level use it).
"""

from ipcclient.client.api import Client
from ipcclient.client.vcs import HAPPY_EYEBALLS_STAGGER, STALE_DIAL

__all__ = ["HAPPY_EYEBALLS_STAGGER", "STALE_DIAL", "Client"]
