"""Discharges for third-party caveats: the value, issuing one, the impetus, and the cache.

Owns: :class:`Discharge` (a discharger's signed statement that one third-party caveat holds,
under caveats of its own), :func:`issue_discharge` (the pure function a discharger server
calls), :class:`DischargeImpetus` and :func:`filtered_impetus` (what a client tells a
discharger, cut down to what the caveat requires), and :class:`DischargeCache` (thread-safe,
bounded, shared across calls).

Must not: make RPCs (fetching is the client's job, through an injected caller), sleep, or start
threads. The cache's lock is held only for dictionary operations.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ipcclient import codec, errors
from ipcclient.security.caveats import (
    MAX_CAVEATS,
    Caveat,
    ExpiryCaveat,
    SecurityCall,
    ThirdPartyCaveat,
    ThirdPartyRequirements,
    caveats_from_wire,
    validate_caveats,
)
from ipcclient.security.keys import PURPOSE_DISCHARGE, SIGNATURE_SIZE, PublicKey
from ipcclient.security.patterns import BlessingPattern

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "Discharge",
    "DischargeCache",
    "DischargeImpetus",
    "Fetch",
    "FetchKey",
    "Signer",
    "fetch_key",
    "filtered_impetus",
    "issue_discharge",
]

DEFAULT_CACHE_ENTRIES = 4096  # discharges one process keeps; each is well under 1 KiB
_CAVEAT_ID_LEN = 64  # hex SHA-256


class Signer(Protocol):
    """Anything that can sign with ipcclient purposes (a :class:`Principal`)."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, purpose: bytes, message: bytes) -> bytes: ...


def _discharge_digest(caveat_id: str, caveats: Sequence[Caveat]) -> bytes:
    return hashlib.sha256(codec.encode([caveat_id, [c.digest() for c in caveats]])).digest()


class Discharge:
    """A discharger's signed proof that the third-party caveat ``caveat_id`` holds.

    Attributes:
        caveat_id: the ID of the third-party caveat discharged.
        caveats: the discharge's own caveats (at least an expiry when issued here).
        signature: the discharger's signature (purpose ``discharge``) over :meth:`digest`.
    """

    __slots__ = ("caveat_id", "caveats", "signature")

    def __init__(self, caveat_id: str, caveats: Sequence[Caveat], signature: bytes) -> None:
        self.caveat_id = caveat_id
        self.caveats: tuple[Caveat, ...] = tuple(caveats)
        self.signature = signature

    def digest(self) -> bytes:
        """SHA-256 of the CBOR array ``[caveat_id, [caveat digests...]]``."""
        return _discharge_digest(self.caveat_id, self.caveats)

    @property
    def expiry(self) -> float | None:
        """The earliest expiry among the discharge's caveats, or None if it has none."""
        times = [c.not_after for c in self.caveats if isinstance(c, ExpiryCaveat)]
        return min(times) if times else None

    def verify(self, key: PublicKey) -> bool:
        """Whether the signature is ``key``'s over this discharge's digest."""
        return key.verify(self.signature, PURPOSE_DISCHARGE, self.digest())

    def validate_for(self, caveat: ThirdPartyCaveat, call: SecurityCall, *, depth: int = 1) -> None:
        """Raise unless this discharge makes ``caveat`` hold for ``call``.

        Checks: it names the caveat's ID, the caveat's discharger signed it, it carries an
        expiry, and every caveat of its own holds.

        Raises:
            BadDischargeError: with ``params[0]`` the caveat's ID.
        """
        cid = caveat.id
        which = f"security: the discharge for caveat {cid[:16]} (from {caveat.location})"
        if self.caveat_id != cid:
            raise errors.BadDischargeError(f"{which} is for another caveat", cid)
        if not self.verify(caveat.discharger_key):
            raise errors.BadDischargeError(f"{which} is not signed by its discharger", cid)
        if self.expiry is None:
            raise errors.BadDischargeError(f"{which} carries no expiry", cid)
        try:
            validate_caveats(self.caveats, call, depth=depth)
        except errors.IPCError as exc:
            raise errors.BadDischargeError(f"{which} does not hold: {exc.msg}", cid) from exc

    def to_wire(self) -> list[Any]:
        """The plain wire form ``[caveat_id, [caveat...], signature]``."""
        return [self.caveat_id, [c.to_wire() for c in self.caveats], self.signature]

    @classmethod
    def from_wire(cls, value: Any) -> Discharge:
        """Rebuild a discharge (structure only: :meth:`validate_for` checks the signature).

        Raises:
            BadProtocolError: the value is malformed.
        """
        items = codec.as_sequence(value, "discharge")
        if len(items) != 3:
            raise errors.BadProtocolError("security: a discharge is [id, caveats, signature]")
        cid, cavs, sig = items
        if not isinstance(cid, str) or len(cid) != _CAVEAT_ID_LEN:
            raise errors.BadProtocolError("security: malformed discharge caveat ID")
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise errors.BadProtocolError("security: malformed discharge signature")
        return cls(cid, caveats_from_wire(cavs, depth=1), sig)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Discharge):
            return NotImplemented
        return (self.caveat_id, self.caveats, self.signature) == (
            other.caveat_id,
            other.caveats,
            other.signature,
        )

    def __hash__(self) -> int:
        return hash((self.caveat_id, self.signature))

    def __repr__(self) -> str:
        return f"Discharge(caveat_id={self.caveat_id[:16]}..., expiry={self.expiry!r})"


def issue_discharge(
    principal: Signer,
    caveat: ThirdPartyCaveat,
    caveats: Sequence[Caveat],
    *,
    call: SecurityCall | None = None,
) -> Discharge:
    """Issue a discharge for ``caveat`` as its discharger.

    Args:
        principal: the discharger; its key must be the caveat's discharger key.
        caveat: the third-party caveat to discharge.
        caveats: the discharge's own caveats; at least one must be an expiry.
        call: the discharge request's facts, needed when the caveat has restrictions.

    Raises:
        BadArgError: wrong discharger, no expiry, too many caveats, or restrictions to check
            without a ``call``.
        NoAccessError: a restriction does not hold for ``call``.
    """
    if not isinstance(caveat, ThirdPartyCaveat):
        raise errors.BadArgError("security: can only discharge a third-party caveat")
    if principal.public_key != caveat.discharger_key:
        raise errors.BadArgError("security: this principal is not the caveat's discharger")
    own = tuple(caveats)
    if not all(isinstance(c, Caveat) for c in own) or len(own) > MAX_CAVEATS:
        raise errors.BadArgError("security: invalid discharge caveats")
    if not any(isinstance(c, ExpiryCaveat) for c in own):
        raise errors.BadArgError("security: a discharge needs at least one expiry caveat")
    if caveat.restrictions:
        if call is None:
            raise errors.BadArgError("security: the caveat has restrictions; pass the call")
        try:
            validate_caveats(caveat.restrictions, call)
        except errors.IPCError as exc:
            raise errors.NoAccessError(
                f"security: discharge refused: {exc.msg}", caveat.id
            ) from exc
    signature = principal.sign(PURPOSE_DISCHARGE, _discharge_digest(caveat.id, own))
    return Discharge(caveat.id, own, signature)


@dataclass(frozen=True)
class DischargeImpetus:
    """What a client tells a discharger about the call a discharge is for."""

    server: tuple[BlessingPattern, ...] = ()
    method: str = ""
    arguments: tuple[Any, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """``{"server": [pattern...], "method": str, "arguments": [...]}``."""
        return {
            "server": [str(p) for p in self.server],
            "method": self.method,
            "arguments": list(self.arguments),
        }

    @classmethod
    def from_wire(cls, value: Any) -> DischargeImpetus:
        """Rebuild from :meth:`to_wire`'s form.

        Raises:
            BadProtocolError: the value is malformed.
        """
        fields = codec.as_mapping(value, "discharge impetus")
        server = codec.as_sequence(fields.get("server", ()), "impetus server")
        method = fields.get("method", "")
        arguments = codec.as_sequence(fields.get("arguments", ()), "impetus arguments")
        if not isinstance(method, str) or not all(isinstance(p, str) for p in server):
            raise errors.BadProtocolError("security: malformed discharge impetus")
        return cls(tuple(BlessingPattern(p) for p in server), method, tuple(arguments))


def filtered_impetus(
    requirements: ThirdPartyRequirements, impetus: DischargeImpetus
) -> DischargeImpetus:
    """``impetus`` with every field the caveat does not require cleared (privacy)."""
    return DischargeImpetus(
        server=impetus.server if requirements.report_server else (),
        method=impetus.method if requirements.report_method else "",
        arguments=impetus.arguments if requirements.report_arguments else (),
    )


FetchKey = tuple[str, str, tuple[str, ...]]
"""What makes two fetches of a discharge the same (:func:`fetch_key`)."""


def fetch_key(caveat: ThirdPartyCaveat, impetus: DischargeImpetus) -> FetchKey:
    """Calls whose fetches of a discharge for ``caveat`` are the same request: the caveat's
    ID and what the discharger is told of the call (the impetus the caveat requires), so
    that a call never takes the answer to another call's server or method."""
    told = filtered_impetus(caveat.requirements, impetus)
    return caveat.id, told.method, tuple(str(p) for p in told.server)


def _cache_key(
    caveat_id: str, caveat: ThirdPartyCaveat | None, impetus: DischargeImpetus | None
) -> FetchKey:
    if caveat is None or impetus is None:
        return caveat_id, "", ()
    return fetch_key(caveat, impetus)


class Fetch:
    """One fetch of a discharge in progress, which calls making the same request
    (:func:`fetch_key`) await instead of fetching it again (see
    :meth:`DischargeCache.begin_fetch`). Its outcome, set by the fetching call before
    :meth:`DischargeCache.end_fetch`: the discharge, or the error, and whether that error
    came from the fetching call's own context (its deadline passed or it was cancelled)
    rather than from the discharger."""

    __slots__ = ("callers_own", "discharge", "error", "waiters")

    def __init__(self) -> None:
        self.discharge: Discharge | None = None
        self.error: errors.IPCError | None = None
        self.callers_own = False
        self.waiters: list[threading.Event] = []  # set when the fetch ends


class DischargeCache:
    """Discharges by third-party caveat; thread-safe, bounded, shared across calls.

    The key is what a fetch asks the discharger (:func:`fetch_key`): the caveat ID and, when
    the caveat requires them reported, the call's method and server patterns. A discharge
    issued for one method or server is kept for that one (a discharger may bind it to what
    it was told): pass ``caveat=`` and ``impetus=`` to :meth:`get` and :meth:`put`; without
    them the key is the caveat ID alone. Discharges for caveats that require the call's
    arguments (``report_arguments``) are never cached (as in Vanadium). A discharge without
    an expiry is not cached.

    When full, expired entries are purged first, then the soonest-expiring one is evicted.

    It also knows the fetches in progress, by request (:meth:`begin_fetch`), so that calls
    that miss the cache for the same caveat at once make one fetch, not one each.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise errors.BadArgError("security: a discharge cache holds at least one entry")
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: dict[FetchKey, tuple[float, Discharge]] = {}
        self._fetches: dict[FetchKey, Fetch] = {}

    def begin_fetch(self, key: FetchKey) -> tuple[Fetch, threading.Event | None]:
        """The fetch in progress for ``key`` (see :func:`fetch_key`), and None when the
        caller is to make it (it must then call :meth:`end_fetch`, whatever happens); else
        an event, set when the fetch that another call makes ends (a caller that stops
        waiting first calls :meth:`leave`)."""
        with self._lock:
            fetch = self._fetches.get(key)
            if fetch is None:
                fetch = self._fetches[key] = Fetch()
                return fetch, None
            event = threading.Event()
            fetch.waiters.append(event)
            return fetch, event

    def leave(self, fetch: Fetch, event: threading.Event) -> None:
        """A caller stops waiting for ``fetch`` (its deadline passed, or it was cancelled):
        forget its ``event``, so that callers that give up are not kept until the fetch
        ends."""
        with self._lock:
            if event in fetch.waiters:  # (else the fetch ended meanwhile)
                fetch.waiters.remove(event)

    def end_fetch(self, key: FetchKey, fetch: Fetch) -> None:
        """End ``fetch`` (its outcome set), waking the calls awaiting it."""
        with self._lock:
            if self._fetches.get(key) is fetch:
                del self._fetches[key]
            waiters, fetch.waiters = fetch.waiters, []
        for event in waiters:
            event.set()

    def get(
        self,
        caveat_id: str,
        now: float | None = None,
        *,
        min_validity: float = 0.0,
        caveat: ThirdPartyCaveat | None = None,
        impetus: DischargeImpetus | None = None,
    ) -> Discharge | None:
        """The cached discharge for ``caveat_id`` (for the call ``impetus`` describes, when
        ``caveat`` requires it reported: see the class) if it is still valid
        ``min_validity`` seconds after ``now`` (default ``time.time()``); an expired entry is
        purged."""
        key = _cache_key(caveat_id, caveat, impetus)
        limit = (time.time() if now is None else now) + min_validity
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < limit:
                if entry[0] < limit - min_validity:
                    del self._entries[key]
                return None
            return entry[1]

    def put(
        self,
        discharge: Discharge,
        *,
        caveat: ThirdPartyCaveat | None = None,
        now: float | None = None,
        impetus: DischargeImpetus | None = None,
    ) -> bool:
        """Cache ``discharge`` (obtained for the call ``impetus`` describes); returns
        whether it was cached.

        With ``caveat``, the discharge must be for it and signed by its discharger
        (else BadDischargeError), and is not cached when the caveat requires arguments.
        """
        if caveat is not None:
            if discharge.caveat_id != caveat.id or not discharge.verify(caveat.discharger_key):
                raise errors.BadDischargeError(
                    "security: discharge does not match its caveat", caveat.id
                )
            if caveat.requirements.report_arguments:
                return False
        expiry = discharge.expiry
        current = time.time() if now is None else now
        if expiry is None or expiry < current:
            return False
        key = _cache_key(discharge.caveat_id, caveat, impetus)
        with self._lock:
            self._entries[key] = (expiry, discharge)
            if len(self._entries) > self._max:
                for old in [k for k, (exp, _) in self._entries.items() if exp < current]:
                    del self._entries[old]
            while len(self._entries) > self._max:
                victim = min(self._entries, key=lambda k: self._entries[k][0])
                del self._entries[victim]
        return True

    def invalidate(self, *caveat_ids: str) -> None:
        """Forget the discharges for ``caveat_ids``, for every call they were obtained for
        (unknown IDs are ignored)."""
        if not caveat_ids:
            return
        gone = set(caveat_ids)
        with self._lock:
            for key in [k for k in self._entries if k[0] in gone]:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every discharge."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


codec.register("discharge", Discharge, Discharge.to_wire, Discharge.from_wire)
