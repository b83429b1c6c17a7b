"""Caveats, the call facts they are checked against, and their deterministic encoding.

Owns: the :class:`Caveat` value and its kinds (expiry, method allow-list, peer-blessings
patterns, unconstrained use, third-party, and :class:`UnknownCaveat` for kinds this side does
not know), the byte encoding each caveat has (``[kind, params]`` where ``params`` is the
canonical CBOR of a plain value), the digest certificates and discharges sign, the
:class:`SecurityCall` facts caveats are validated against, and third-party requirements.

Must not: verify certificate chains (that is :mod:`~ipcclient.security.blessings`), fetch or
cache discharges (:mod:`~ipcclient.security.discharges`), or touch the wire beyond the plain
values handed to the codec. Validation FAILS CLOSED: an unknown kind never holds.

Encoding rule: ``params`` are the CBOR encoding (``codec.encode``) of a value made only of
arrays, text, bytes, integers and booleans, which cbor2 always encodes the same way. A
decoder re-encodes what it parsed and refuses params whose bytes differ, so one caveat has
exactly one encoding and equal caveats have equal digests.
"""

from __future__ import annotations

import hashlib
import os
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ipcclient import codec, errors
from ipcclient.security.keys import PUBLIC_KEY_SIZE, PublicKey
from ipcclient.security.patterns import BlessingPattern

if TYPE_CHECKING:
    from ipcclient.security.blessings import Blessings
    from ipcclient.security.discharges import Discharge

__all__ = [
    "KIND_EXPIRY",
    "KIND_METHOD",
    "KIND_PEER_BLESSINGS",
    "KIND_THIRD_PARTY",
    "KIND_UNCONSTRAINED",
    "MAX_CAVEAT_NESTING",
    "NONCE_SIZE",
    "CallInfo",
    "Caveat",
    "ExpiryCaveat",
    "MethodCaveat",
    "PeerBlessingsCaveat",
    "SecurityCall",
    "ThirdPartyCaveat",
    "ThirdPartyRequirements",
    "UnconstrainedCaveat",
    "UnknownCaveat",
    "caveat_from_wire",
    "caveats_from_wire",
    "expires_in",
    "expiry",
    "method",
    "peer_blessings",
    "third_party",
    "unconstrained_use",
    "validate_caveats",
]

KIND_EXPIRY = "expiry"
KIND_METHOD = "method"
KIND_PEER_BLESSINGS = "peer"
KIND_UNCONSTRAINED = "unconstrained"
KIND_THIRD_PARTY = "third-party"

NONCE_SIZE = 16  # random bytes that make every third-party caveat ID unique
MAX_KIND_LEN = 64  # kinds are short names
MAX_PARAMS_SIZE = 64 * 1024  # one caveat's params; real ones are well under 1 KiB
MAX_CAVEATS = 64  # caveats on one certificate, discharge or restriction list
MAX_LIST_ITEMS = 256  # methods or patterns in one caveat
MAX_TEXT_LEN = 1024  # a method name, pattern or discharger location
MAX_CAVEAT_NESTING = 4  # third-party restrictions / discharges inside each other
_NS = 1_000_000_000


@dataclass(frozen=True)
class SecurityCall:
    """The facts about one call (or handshake) that caveats are checked against.

    Attributes:
        timestamp: wall-clock time of the check, seconds since the epoch (``time.time()``).
        method: the method being called; ``""`` before a method is known (a handshake),
            which satisfies no method caveat.
        suffix: the object suffix being called.
        local_blessings: the names of this side's blessings (what peer caveats on the
            *remote* blessings are matched against).
        remote_blessings: the blessings the peer presented, if any.
        remote_discharges: discharges the peer presented, by third-party caveat ID.
        arguments: the call's arguments when known.
        discharge_results: what validating each third-party caveat gave, by (caveat ID,
            nesting depth), within this check: a caveat referenced many times (at each level
            of a discharge's own third-party caveats, say) has its discharge checked once,
            so the work is bounded by the discharges presented, not multiplied by every
            reference at every level (a peer could otherwise make one check cost hours).
    """

    timestamp: float = field(default_factory=time.time)
    method: str = ""
    suffix: str = ""
    local_blessings: tuple[str, ...] = ()
    remote_blessings: Blessings | None = None
    remote_discharges: Mapping[str, Discharge] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    arguments: tuple[Any, ...] | None = None
    discharge_results: dict[tuple[str, int], errors.IPCError | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )


CallInfo = SecurityCall
"""Another name for :class:`SecurityCall`."""


@dataclass(frozen=True)
class ThirdPartyRequirements:
    """What a client must tell a discharger when asking for a discharge."""

    report_server: bool = False
    report_method: bool = False
    report_arguments: bool = False

    def to_plain(self) -> list[bool]:
        return [self.report_server, self.report_method, self.report_arguments]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Caveat:
    """One restriction on a blessing or discharge.

    Attributes:
        kind: the caveat kind (a short name; unknown kinds are kept verbatim).
        params: the canonical CBOR encoding of the kind's parameters.

    Caveats are immutable values, equal when kind and params are equal.
    """

    __slots__ = ("_digest", "kind", "params")
    KIND: ClassVar[str] = ""

    def __init__(self, kind: str, params: bytes) -> None:
        if len(params) > MAX_PARAMS_SIZE:  # (every peer refuses such a caveat)
            raise errors.BadArgError(
                f"security: a {kind!r} caveat's parameters encode to {len(params)} bytes; "
                f"at most {MAX_PARAMS_SIZE}"
            )
        self.kind = kind
        self.params = params
        self._digest = _sha256(_sha256(kind.encode()) + _sha256(params))

    def digest(self) -> bytes:
        """SHA-256(SHA-256(kind) || SHA-256(params)): what certificates and discharges sign."""
        return self._digest

    def to_wire(self) -> list[Any]:
        """The plain wire form ``[kind, params]``."""
        return [self.kind, self.params]

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        """Raise when the caveat does not hold for ``call``.

        Raises:
            NotTrustedError: a first-party caveat does not hold, or the kind is unknown.
            BadDischargeError: a third-party caveat has no valid discharge (params[0] is its ID).
        """
        raise errors.NotTrustedError(f"security: unknown caveat kind {self.kind!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Caveat):
            return NotImplemented
        return self.kind == other.kind and self.params == other.params

    def __hash__(self) -> int:
        return hash((self.kind, self.params))

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, name):
            raise AttributeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, params={self.params.hex()})"


class UnknownCaveat(Caveat):
    """A caveat of a kind this side does not know: carried and signed, never satisfied."""

    __slots__ = ()


MAX_EXPIRY_NS = 2**63 - 1
"""The latest expiry (nanoseconds since the Unix epoch, about the year 2262): a signed 64-bit
count, so that every expiry is a float of seconds and compares with a clock."""


class ExpiryCaveat(Caveat):
    """Holds until a wall-clock time (inclusive)."""

    __slots__ = ("not_after_ns",)
    KIND = KIND_EXPIRY

    def __init__(self, not_after_ns: int) -> None:
        if (
            isinstance(not_after_ns, bool)
            or not isinstance(not_after_ns, int)
            or not 0 <= not_after_ns <= MAX_EXPIRY_NS
        ):
            raise errors.BadArgError(
                f"security: an expiry is a time in nanoseconds from 0 to {MAX_EXPIRY_NS}"
            )
        super().__init__(self.KIND, codec.encode(not_after_ns))
        self.not_after_ns = not_after_ns

    @property
    def not_after(self) -> float:
        """The expiry in seconds since the epoch."""
        return self.not_after_ns / _NS

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        if int(call.timestamp * _NS) > self.not_after_ns:
            raise errors.NotTrustedError(f"security: expired at {self.not_after:.3f}")

    def __repr__(self) -> str:
        return f"ExpiryCaveat(not_after={self.not_after!r})"


def _text_list(values: Sequence[Any], what: str) -> tuple[str, ...]:
    if not values:
        raise errors.BadArgError(f"security: a {what} caveat needs at least one entry")
    if len(values) > MAX_LIST_ITEMS:
        raise errors.BadArgError(f"security: a {what} caveat holds at most {MAX_LIST_ITEMS}")
    for v in values:
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT_LEN:
            raise errors.BadArgError(f"security: invalid {what} entry {v!r}")
    return tuple(values)


class MethodCaveat(Caveat):
    """Holds when the call's method is one of a non-empty list."""

    __slots__ = ("methods",)
    KIND = KIND_METHOD

    def __init__(self, methods: Sequence[str]) -> None:
        names = _text_list(methods, "method")
        super().__init__(self.KIND, codec.encode(list(names)))
        self.methods: tuple[str, ...] = names

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        if call.method not in self.methods:
            raise errors.NotTrustedError(
                f"security: method {call.method!r} not in the allowed {list(self.methods)}"
            )

    def __repr__(self) -> str:
        return f"MethodCaveat({list(self.methods)!r})"


class PeerBlessingsCaveat(Caveat):
    """Holds when this side's blessing names (the blessing holder's peer) match a pattern."""

    __slots__ = ("patterns",)
    KIND = KIND_PEER_BLESSINGS

    def __init__(self, patterns: Sequence[str]) -> None:
        texts = _text_list(patterns, "peer-blessings")
        super().__init__(self.KIND, codec.encode(list(texts)))
        self.patterns: tuple[BlessingPattern, ...] = tuple(BlessingPattern(p) for p in texts)

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        if not any(p.matched_by(*call.local_blessings) for p in self.patterns):
            raise errors.NotTrustedError(
                f"security: peer names {list(call.local_blessings)} match none of "
                f"{[str(p) for p in self.patterns]}"
            )

    def __repr__(self) -> str:
        return f"PeerBlessingsCaveat({[str(p) for p in self.patterns]!r})"


class UnconstrainedCaveat(Caveat):
    """Always holds: the explicit opt-out :meth:`Principal.bless` requires to bless freely."""

    __slots__ = ()
    KIND = KIND_UNCONSTRAINED

    def __init__(self) -> None:
        super().__init__(self.KIND, codec.encode([]))

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        return None

    def __repr__(self) -> str:
        return "UnconstrainedCaveat()"


class ThirdPartyCaveat(Caveat):
    """Holds only with a valid discharge from the named discharger.

    Attributes:
        nonce: 16 random bytes.
        location: the discharger's object name.
        discharger_key: the key that must sign the discharge.
        requirements: what the client must report to the discharger.
        restrictions: caveats the discharger must check before it issues a discharge.
        id: hex SHA-256 over the nonce, discharger key, location and restriction digests.
    """

    __slots__ = ("discharger_key", "id", "location", "nonce", "requirements", "restrictions")
    KIND = KIND_THIRD_PARTY

    def __init__(
        self,
        nonce: bytes,
        location: str,
        discharger_key: PublicKey,
        requirements: ThirdPartyRequirements,
        restrictions: Sequence[Caveat],
    ) -> None:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise errors.BadArgError(f"security: a third-party nonce is {NONCE_SIZE} bytes")
        if not isinstance(location, str) or not location or len(location) > MAX_TEXT_LEN:
            raise errors.BadArgError("security: a third-party caveat needs a discharger name")
        if not isinstance(discharger_key, PublicKey):
            raise errors.BadArgError("security: the discharger key must be a PublicKey")
        if not isinstance(requirements, ThirdPartyRequirements):
            raise errors.BadArgError("security: requirements must be ThirdPartyRequirements")
        rest = tuple(restrictions)
        if len(rest) > MAX_CAVEATS or not all(isinstance(c, Caveat) for c in rest):
            raise errors.BadArgError("security: invalid third-party restrictions")
        plain = [
            nonce,
            location,
            discharger_key.raw,
            requirements.to_plain(),
            [c.to_wire() for c in rest],
        ]
        super().__init__(self.KIND, codec.encode(plain))
        self.nonce = nonce
        self.location = location
        self.discharger_key = discharger_key
        self.requirements = requirements
        self.restrictions: tuple[Caveat, ...] = rest
        id_input = [nonce, discharger_key.raw, location, [c.digest() for c in rest]]
        self.id: str = _sha256(codec.encode(id_input)).hex()

    def validate(self, call: SecurityCall, *, depth: int = 0) -> None:
        if depth >= MAX_CAVEAT_NESTING:
            raise errors.BadDischargeError("security: discharges nested too deeply", self.id)
        results = call.discharge_results
        key = (self.id, depth)
        if key in results:  # (checked already in this call: see SecurityCall)
            failed = results[key]
            if failed is not None:
                raise failed
            return
        try:
            discharge = call.remote_discharges.get(self.id)
            if discharge is None:
                raise errors.BadDischargeError(
                    f"security: no discharge for third-party caveat {self.id} ({self.location})",
                    self.id,
                )
            discharge.validate_for(self, call, depth=depth + 1)
        except errors.IPCError as exc:
            results[key] = exc
            raise
        results[key] = None

    def __repr__(self) -> str:
        return f"ThirdPartyCaveat(id={self.id[:16]}..., location={self.location!r})"


# ---- construction helpers -------------------------------------------------------------------


def expiry(not_after: float) -> ExpiryCaveat:
    """A caveat that holds until ``not_after`` (seconds since the epoch, inclusive)."""
    if isinstance(not_after, bool) or not isinstance(not_after, int | float):
        raise errors.BadArgError("security: an expiry is a number of seconds")
    if not not_after >= 0 or not_after > 2**62 / _NS:
        raise errors.BadArgError("security: expiry out of range")
    return ExpiryCaveat(round(not_after * _NS))


def expires_in(seconds: float, now: float | None = None) -> ExpiryCaveat:
    """A caveat that holds for ``seconds`` from ``now`` (default: ``time.time()``).

    Raises:
        BadArgError: ``seconds`` (or ``now``) is not a number, or the expiry is out of
            range (see :func:`expiry`).
    """
    given: tuple[tuple[str, object], ...] = (("seconds", seconds),)
    if now is not None:
        given += (("now", now),)
    for what, value in given:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise errors.BadArgError(
                f"security: expires_in's {what} must be a number (seconds), "
                f"not {type(value).__name__}"
            )
    return expiry((time.time() if now is None else now) + seconds)


def method(*methods: str) -> MethodCaveat:
    """A caveat that holds only for the listed methods (at least one)."""
    return MethodCaveat(methods)


def peer_blessings(*patterns: str) -> PeerBlessingsCaveat:
    """A caveat that holds only when the peer's names match one of ``patterns``.

    Raises:
        BadArgError: no pattern, or an invalid one.
    """
    for p in patterns:
        if not BlessingPattern(p).is_valid():
            raise errors.BadArgError(f"security: invalid blessing pattern {p!r}")
    return PeerBlessingsCaveat(patterns)


def unconstrained_use() -> UnconstrainedCaveat:
    """The caveat that always holds (an explicit "no restriction" for :meth:`Principal.bless`)."""
    return UnconstrainedCaveat()


def third_party(
    location: str,
    discharger_key: PublicKey,
    requirements: ThirdPartyRequirements | None = None,
    restrictions: Sequence[Caveat] = (),
    *,
    nonce: bytes | None = None,
) -> ThirdPartyCaveat:
    """A third-party caveat dischargeable by ``discharger_key`` at ``location``.

    ``restrictions`` must hold at the discharger before it issues; the nonce is random unless
    given (tests only).
    """
    return ThirdPartyCaveat(
        os.urandom(NONCE_SIZE) if nonce is None else nonce,
        location,
        discharger_key,
        requirements if requirements is not None else ThirdPartyRequirements(),
        restrictions,
    )


def validate_caveats(caveats: Sequence[Caveat], call: SecurityCall, *, depth: int = 0) -> None:
    """Raise the first failure among ``caveats`` for ``call`` (see :meth:`Caveat.validate`)."""
    for c in caveats:
        c.validate(call, depth=depth)


# ---- decoding -------------------------------------------------------------------------------


def _bad(msg: str) -> errors.BadProtocolError:
    return errors.BadProtocolError(f"security: malformed caveat: {msg}")


def _parse_expiry(value: Any, depth: int) -> Caveat:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXPIRY_NS:
        raise _bad(f"expiry must be an integer from 0 to {MAX_EXPIRY_NS}")
    return ExpiryCaveat(value)


def _parse_texts(value: Any) -> list[str]:
    items = codec.as_sequence(value, "caveat list")
    if not items or len(items) > MAX_LIST_ITEMS:
        raise _bad("list size")
    out = []
    for v in items:
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT_LEN:
            raise _bad("list entry")
        out.append(v)
    return out


def _parse_method(value: Any, depth: int) -> Caveat:
    return MethodCaveat(_parse_texts(value))


def _parse_peer(value: Any, depth: int) -> Caveat:
    return PeerBlessingsCaveat(_parse_texts(value))


def _parse_unconstrained(value: Any, depth: int) -> Caveat:
    if codec.as_sequence(value, "unconstrained params"):
        raise _bad("unconstrained takes no parameters")
    return UnconstrainedCaveat()


def _parse_third_party(value: Any, depth: int) -> Caveat:
    items = codec.as_sequence(value, "third-party params")
    if len(items) != 5:
        raise _bad("third-party params have 5 fields")
    nonce, location, key_raw, reqs, rest = items
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise _bad("nonce")
    if not isinstance(location, str) or not location or len(location) > MAX_TEXT_LEN:
        raise _bad("location")
    if not isinstance(key_raw, bytes) or len(key_raw) != PUBLIC_KEY_SIZE:
        raise _bad("discharger key")
    flags = codec.as_sequence(reqs, "requirements")
    if len(flags) != 3 or not all(isinstance(f, bool) for f in flags):
        raise _bad("requirements")
    restrictions = caveats_from_wire(rest, depth=depth + 1)
    return ThirdPartyCaveat(
        nonce,
        location,
        PublicKey.from_raw(key_raw),
        ThirdPartyRequirements(*flags),
        restrictions,
    )


_PARSERS: Mapping[str, Callable[[Any, int], Caveat]] = {
    KIND_EXPIRY: _parse_expiry,
    KIND_METHOD: _parse_method,
    KIND_PEER_BLESSINGS: _parse_peer,
    KIND_UNCONSTRAINED: _parse_unconstrained,
    KIND_THIRD_PARTY: _parse_third_party,
}


def caveat_from_wire(value: Any, *, depth: int = 0) -> Caveat:
    """Rebuild a caveat from ``[kind, params]``.

    Known kinds are parsed and must be canonically encoded; unknown kinds are kept as
    :class:`UnknownCaveat` (they never validate).

    Raises:
        BadProtocolError: the value is malformed.
    """
    if depth > MAX_CAVEAT_NESTING:
        raise _bad("nested too deeply")
    items = codec.as_sequence(value, "caveat")
    if len(items) != 2:
        raise _bad("a caveat is [kind, params]")
    kind, params = items
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_LEN:
        raise _bad("kind")
    if not isinstance(params, bytes) or len(params) > MAX_PARAMS_SIZE:
        raise _bad("params")
    parser = _PARSERS.get(kind)
    if parser is None:
        return UnknownCaveat(kind, params)
    try:
        cav = parser(codec.decode(params), depth)
    except errors.BadProtocolError:
        raise
    except errors.IPCError as exc:
        raise _bad(f"{kind}: {exc.msg}") from exc
    if cav.params != params:
        raise _bad(f"{kind} params are not canonically encoded")
    return cav


def caveats_from_wire(value: Any, *, depth: int = 0) -> tuple[Caveat, ...]:
    """Rebuild a list of caveats (at most :data:`MAX_CAVEATS`).

    Raises:
        BadProtocolError: the value is malformed.
    """
    items = codec.as_sequence(value, "caveat list")
    if len(items) > MAX_CAVEATS:
        raise _bad(f"more than {MAX_CAVEATS} caveats")
    return tuple(caveat_from_wire(v, depth=depth) for v in items)


def _caveat_to_wire(c: Caveat) -> list[Any]:
    return c.to_wire()


codec.register("caveat", Caveat, _caveat_to_wire, caveat_from_wire)
