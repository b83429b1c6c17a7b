"""The discharger service: issues discharges for the third-party caveats it owns.

Owns: :class:`Discharger` (served as an object: ``server.serve(Discharger(p),
AllowEveryone())``), whose one wire method ``Discharge(caveat, impetus) -> Discharge`` checks
that the caveat is a third-party caveat naming this principal's key, that it is not revoked,
and that its restrictions hold for the call the client describes, then signs a discharge that
expires ``validity`` seconds later; and :class:`RevocationList`, the Python-side admin handle
(``discharger.revocations.revoke(caveat_id)``), which is not remotely callable (the server
only invokes callable public attributes, and the list is an attribute, not a method).

Must not: make RPCs, keep state beyond the revocation list, or issue a discharge without an
expiry. The impetus is the client's *unauthenticated* description of the call it will make:
restrictions checked against it are a courtesy gate, never a substitute for the server's own
checks (see docs/services.md).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from ipcclient import errors
from ipcclient.security import caveats as cav
from ipcclient.security.caveats import SecurityCall, ThirdPartyCaveat
from ipcclient.security.discharges import Discharge, DischargeImpetus, issue_discharge
from ipcclient.security.principal import Principal
from ipcclient.server.call import ServerCall
from ipcclient.server.exposure import expose

__all__ = ["DEFAULT_VALIDITY", "MAX_REVOKED", "MAX_VALIDITY", "Discharger", "RevocationList"]

log = logging.getLogger("ipcclient.discharger")

DEFAULT_VALIDITY = 60.0
"""Seconds a discharge is valid: short, so a revocation takes effect within a minute."""
MAX_VALIDITY = 24 * 3600.0
"""Longest validity a discharger may be configured with (a revocation must bite daily)."""
MAX_REVOKED = 1_000_000
"""Caveat IDs one revocation list holds (64-char IDs: about 100 MB at the bound)."""


class RevocationList:
    """Thread-safe, bounded set of revoked third-party caveat IDs."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        for cid in ids:
            self.revoke(cid)

    def revoke(self, caveat_id: str) -> None:
        """Refuse discharges for ``caveat_id`` from now on.

        Raises:
            BadArgError: not a str, or the list is full.
        """
        if not isinstance(caveat_id, str) or not caveat_id:
            raise errors.BadArgError("discharger: a caveat ID is a non-empty str")
        with self._lock:
            if caveat_id not in self._ids and len(self._ids) >= MAX_REVOKED:
                raise errors.BadArgError(f"discharger: revocation list full ({MAX_REVOKED})")
            self._ids.add(caveat_id)

    def restore(self, caveat_id: str) -> None:
        """Undo :meth:`revoke` (unknown IDs are ignored)."""
        with self._lock:
            self._ids.discard(caveat_id)

    def __contains__(self, caveat_id: object) -> bool:
        with self._lock:
            return caveat_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class Discharger:
    """Issues discharges for third-party caveats whose discharger key is ``principal``'s.

    Args:
        principal: the discharger's principal (its key signs the discharges).
        revoked: caveat IDs revoked from the start.
        validity: seconds each discharge is valid (``0 < validity <= MAX_VALIDITY``).

    Attributes:
        revocations: the :class:`RevocationList` (Python only, not remotely callable).
    """

    def __init__(
        self,
        principal: Principal,
        *,
        revoked: set[str] | None = None,
        validity: float = DEFAULT_VALIDITY,
    ) -> None:
        if isinstance(validity, bool) or not isinstance(validity, int | float):
            raise errors.BadArgError("discharger: validity must be a number of seconds")
        if not (math.isfinite(validity) and 0 < validity <= MAX_VALIDITY):
            raise errors.BadArgError(f"discharger: validity must be in (0, {MAX_VALIDITY}]")
        self._principal = principal
        self._validity = float(validity)
        self.revocations = RevocationList(revoked or ())

    @expose
    def Discharge(self, call: ServerCall, caveat: Any, impetus: Any) -> Discharge:
        """Issue a discharge for ``caveat`` (the wire method).

        Raises:
            BadArgError: ``caveat`` is not a third-party caveat, or the impetus is malformed.
            NoAccessError: the caveat is not this discharger's, is revoked, or a restriction
                does not hold for the call the impetus describes.
        """
        if not isinstance(caveat, ThirdPartyCaveat):
            raise errors.BadArgError("discharger: can only discharge a third-party caveat")
        if caveat.discharger_key != self._principal.public_key:
            raise errors.NoAccessError(
                f"discharger: caveat {caveat.id[:16]} names another discharger", caveat.id
            )
        if caveat.id in self.revocations:
            log.info("discharger: refused revoked caveat %s", caveat.id[:16])
            raise errors.NoAccessError(f"discharger: caveat {caveat.id[:16]} is revoked", caveat.id)
        try:
            imp = DischargeImpetus.from_wire(impetus if impetus is not None else {})
        except errors.BadProtocolError as exc:
            raise errors.BadArgError(f"discharger: malformed impetus: {exc.msg}") from exc
        now = time.time()
        # The facts the restrictions are checked against: the call the client says it will
        # make (server names it will talk to, method, arguments), as far as the caveat's
        # requirements made it report them.
        facts = SecurityCall(
            timestamp=now,
            method=imp.method,
            local_blessings=tuple(str(p) for p in imp.server),
            arguments=imp.arguments,
        )
        discharge = issue_discharge(
            self._principal, caveat, [cav.expires_in(self._validity, now)], call=facts
        )
        log.debug(
            "discharger: issued for %s to %s", caveat.id[:16], list(call.remote_blessing_names)
        )
        return discharge
