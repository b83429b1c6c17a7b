"""Endpoints: where a server listens and what it says about itself.

Owns: the :class:`Endpoint` value, its string form (parse and format), the protocol version
compatibility check the client runs before dialing, and the endpoint's CBOR tag (the string
form under ``codec.TAGS["endpoint"]``).

Must not: import anything from ipcclient but :mod:`ipcclient.errors`, :mod:`ipcclient.codec`
and :mod:`ipcclient.naming.names`; resolve names, dial, or look up hosts.

String form (format version 1)::

    @1@<protocol>@<address>@<routing id>@<min version>@<max version>@<flags>@<blessings>@@

* ``protocol``: ``[A-Za-z0-9][A-Za-z0-9._+-]*``. ``tcp``, ``tcp4``, ``tcp6`` and ``unix`` are
  dialable; any other protocol parses, but :attr:`Endpoint.is_dialable` is false.
* ``address``: non-empty. For ``tcp*``: ``host:port`` or ``[v6]:port`` (port 0-65535, host
  may be empty as in ``:0``, a listen spec); for ``unix``: a socket path; otherwise anything.
  "%" and "@" are escaped as ``%25`` and ``%40`` so that the string splits on "@" safely.
  "/" is *not* escaped: an endpoint ends at its first ``@@`` and no field can hold "@".
* ``routing id``: 32 hex digits (16 bytes); all zeros is the null routing ID.
* ``min version``, ``max version``: decimal RPC protocol versions, ``0`` = unknown (any).
* ``flags``: non-empty, letters from ``m`` (serves a mount table), ``l`` (leaf: the server has
  no names below it) and ``s`` (a plain server, neither). ``s`` must not be combined with
  ``m``. Formatted canonically as ``m``, ``ml``, ``l`` or ``s``. Unlike Vanadium (where *no*
  flag meant "mount table") a full endpoint always says what it is, and a server's default
  is ``s``. Requiring a non-empty flags field also guarantees that no field of an endpoint
  can start right after an empty one, so ``@@/`` appears only where the endpoint ends.
* ``blessings``: comma-separated blessing names, each with "%", "," and "@" escaped.

Short forms, as Vanadium's: ``host:port``, ``[v6]:port`` and ``(blessing)@host:port`` give
protocol ``tcp``, the null routing ID, versions 0..0 and flag ``m`` (a bare address in a name
is taken to be a mount table); ``unix:/path`` gives a ``unix`` mount table endpoint (usable with
:meth:`Endpoint.parse`, not inside a rooted name, whose address ends at the first "/").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ipcclient import codec, errors
from ipcclient.naming.names import clean, escape, is_rooted, split_address_name, unescape

__all__ = [
    "DIALABLE_PROTOCOLS",
    "FORMAT_VERSION",
    "MAX_ENDPOINT_LEN",
    "NULL_ROUTING_ID",
    "Endpoint",
    "canonical_server",
    "check_version_compatibility",
    "endpoint_of",
]

FORMAT_VERSION = "1"
NULL_ROUTING_ID = bytes(16)
ROUTING_ID_LEN = 16
DIALABLE_PROTOCOLS = frozenset({"tcp", "tcp4", "tcp6", "unix"})
_TCP_PROTOCOLS = frozenset({"tcp", "tcp4", "tcp6"})
# A bound on what parse() accepts: an endpoint with a few dozen blessings fits easily, and a
# peer cannot make one endpoint string cost unbounded work.
MAX_ENDPOINT_LEN = 64 * 1024
# Versions are unsigned 32-bit on the wire.
MAX_VERSION = 2**32 - 1

_PROTOCOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_HOST_RE = re.compile(r"[A-Za-z0-9._-]*\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_DIGITS_RE = re.compile(r"[0-9]{1,10}\Z")
_HEX32_RE = re.compile(r"[0-9A-Fa-f]{32}\Z")
_FLAG_LETTERS = frozenset("msl")


def _bad(msg: str) -> errors.BadArgError:
    return errors.BadArgError("endpoint: " + msg)


def _split_host_port(address: str) -> tuple[str, str]:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``; BadArgError when malformed."""
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1 : close + 2] != ":":
            raise _bad(f"malformed [v6]:port address {address!r}")
        host, port = address[1:close], address[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(f"malformed IPv6 address {host!r} in {address!r}") from None
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise _bad(f"address {address!r} is not host:port")
        if not _HOST_RE.match(host):
            raise _bad(f"malformed host {host!r} in {address!r} (IPv6 needs [brackets])")
    if not _PORT_RE.match(port) or int(port) > 65535:
        raise _bad(f"malformed port {port!r} in {address!r}")
    return host, port


def _check_address(protocol: str, address: str) -> None:
    if not address:
        raise _bad("empty address")
    if protocol in _TCP_PROTOCOLS:
        host, _ = _split_host_port(address)
        if protocol == "tcp4" and address.startswith("["):
            raise _bad(f"tcp4 endpoint with an IPv6 address {address!r}")
        if protocol == "tcp6" and host and not address.startswith("["):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                pass
            else:
                raise _bad(f"tcp6 endpoint with an IPv4 address {address!r}")
    elif protocol == "unix" and "\x00" in address:
        raise _bad("unix socket path holds a NUL byte")


@dataclass(frozen=True)
class Endpoint:
    """A server's endpoint: a frozen, hashable value (equality on every field).

    Construct directly (fields are validated: :class:`~ipcclient.errors.BadArgError`) or
    with :meth:`parse`; ``str(ep)`` is the full string form and ``Endpoint.parse(str(ep)) ==
    ep`` always holds. The defaults describe a plain server: null routing ID, versions
    unknown, flags ``s``, no blessings.
    """

    protocol: str
    address: str
    routing_id: bytes = NULL_ROUTING_ID
    min_version: int = 0
    max_version: int = 0
    serves_mount_table: bool = False
    is_leaf: bool = False
    blessings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, str) or not _PROTOCOL_RE.match(self.protocol):
            raise _bad(f"malformed protocol {self.protocol!r}")
        if not isinstance(self.address, str):
            raise _bad("address must be a str")
        _check_address(self.protocol, self.address)
        if not isinstance(self.routing_id, bytes) or len(self.routing_id) != ROUTING_ID_LEN:
            raise _bad(f"routing id must be {ROUTING_ID_LEN} bytes")
        for label, v in (("min", self.min_version), ("max", self.max_version)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_VERSION:
                raise _bad(f"{label} version must be an int in 0..{MAX_VERSION}, got {v!r}")
        if self.min_version and self.max_version and self.min_version > self.max_version:
            raise _bad(f"min version {self.min_version} > max version {self.max_version}")
        if not isinstance(self.serves_mount_table, bool) or not isinstance(self.is_leaf, bool):
            raise _bad("serves_mount_table and is_leaf must be bools")
        if not isinstance(self.blessings, tuple):
            raise _bad("blessings must be a tuple of str")
        for b in self.blessings:
            if not isinstance(b, str) or not b:
                raise _bad(f"blessing names must be non-empty str, got {b!r}")

    # -- string form ----------------------------------------------------------------------

    @property
    def flags(self) -> str:
        """The canonical flags field: ``m``, ``ml``, ``l`` or ``s``."""
        out = ("m" if self.serves_mount_table else "") + ("l" if self.is_leaf else "")
        return out or "s"

    def __str__(self) -> str:
        fields = (
            FORMAT_VERSION,
            self.protocol,
            escape(self.address, "@"),
            self.routing_id.hex(),
            str(self.min_version),
            str(self.max_version),
            self.flags,
            ",".join(escape(b, ",@") for b in self.blessings),
        )
        return "@" + "@".join(fields) + "@@"

    def name(self, suffix: str = "") -> str:
        """The rooted name of ``suffix`` at this endpoint: ``/@1@...@@/suffix``."""
        text = "/" + str(self)
        return text + "/" + suffix.strip("/") if suffix.strip("/") else text

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse the full form or a short form (see the module docstring).

        Raises:
            BadArgError: anything malformed, with a message saying what.
        """
        if not isinstance(text, str):
            raise _bad(f"expected a str, got {type(text).__name__}")
        if len(text) > MAX_ENDPOINT_LEN:
            raise _bad(f"longer than {MAX_ENDPOINT_LEN} characters")
        if text.startswith("@"):
            return cls._parse_full(text)
        return cls._parse_short(text)

    @classmethod
    def _parse_full(cls, text: str) -> Endpoint:
        if len(text) < 4 or not text.endswith("@@"):
            raise _bad(f"{text!r} does not end with '@@'")
        fields = text[1:-2].split("@")
        if fields[0] != FORMAT_VERSION:
            raise _bad(f"unsupported format version {fields[0]!r} (this side reads '1')")
        if len(fields) != 8:
            raise _bad(f"expected 8 '@'-separated fields, got {len(fields)} in {text!r}")
        _, protocol, address, rid, vmin, vmax, flags, blessings = fields
        if not _HEX32_RE.match(rid):
            raise _bad(f"routing id must be 32 hex digits, got {rid!r}")
        for label, v in (("min", vmin), ("max", vmax)):
            if not _DIGITS_RE.match(v):
                raise _bad(f"{label} version must be decimal digits, got {v!r}")
        letters = set(flags)
        if not flags or len(letters) != len(flags) or not letters <= _FLAG_LETTERS:
            raise _bad(f"flags must be distinct letters from 'msl', got {flags!r}")
        if "s" in letters and "m" in letters:
            raise _bad(f"flags {flags!r}: 's' (not a mount table) contradicts 'm'")
        names = tuple(unescape(b) for b in blessings.split(",")) if blessings else ()
        return cls(
            protocol=protocol,
            address=unescape(address),
            routing_id=bytes.fromhex(rid),
            min_version=int(vmin),
            max_version=int(vmax),
            serves_mount_table="m" in letters,
            is_leaf="l" in letters,
            blessings=names,
        )

    @classmethod
    def _parse_short(cls, text: str) -> Endpoint:
        blessings: tuple[str, ...] = ()
        address = text
        if text.startswith("("):
            close = text.find(")@")
            if close < 0:
                raise _bad(f"{text!r}: '(blessing)' must be followed by '@host:port'")
            blessing = unescape(text[1:close])
            if not blessing:
                raise _bad(f"{text!r}: empty blessing")
            blessings = (blessing,)
            address = text[close + 2 :]
        elif text.startswith("unix:"):
            path = text[len("unix:") :]
            return cls(protocol="unix", address=path, serves_mount_table=True)
        if not address:
            raise _bad("empty endpoint")
        if "@" in address or "/" in address:
            raise _bad(f"{text!r} is neither '@1@...@@' nor host:port")
        return cls(protocol="tcp", address=address, serves_mount_table=True, blessings=blessings)

    # -- use --------------------------------------------------------------------------------

    @property
    def is_dialable(self) -> bool:
        """True when the client knows how to dial it (tcp*, unix; tcp with a host and port)."""
        if self.protocol not in DIALABLE_PROTOCOLS:
            return False
        if self.protocol == "unix":
            return True
        host, port = _split_host_port(self.address)
        return bool(host) and int(port) != 0

    @property
    def protocol_family(self) -> str:
        """``tcp`` for tcp/tcp4/tcp6, otherwise the protocol itself."""
        return "tcp" if self.protocol in _TCP_PROTOCOLS else self.protocol

    def dial_key(self) -> tuple[str, str, bytes]:
        """``(protocol family, address, routing id)``: endpoints that reach the same process.

        Two endpoints with the same dial key may share one VC, whatever their flags,
        versions or blessings say.
        """
        return (self.protocol_family, self.address, self.routing_id)

    @property
    def is_null_routing_id(self) -> bool:
        """True when the routing ID is the null one (the endpoint names no process)."""
        return self.routing_id == NULL_ROUTING_ID

    def check_compatibility(self, supported: tuple[int, int]) -> tuple[int, int]:
        """The overlap of the endpoint's advertised versions with ``supported``.

        A bound of 0 on the endpoint means "unknown" and does not restrict. Returns the
        ``(min, max)`` both sides may use.

        Raises:
            BadArgError: ``supported`` is not a ``(min, max)`` pair with ``1 <= min <= max``.
            VersionIncompatibleError: the ranges do not overlap.
        """
        return check_version_compatibility(self, supported)


def endpoint_of(name: str) -> Endpoint:
    """The endpoint named by a rooted name's address element (``/host:port/x``: host:port).
    Every server name the naming layer keeps (roots, mounted servers, a mount table's
    answers) must pass this check.

    Raises:
        BadArgError: ``name`` is not a rooted name, has no address, or its address is not
            an endpoint.
    """
    if not isinstance(name, str) or not is_rooted(name):
        hint = f" (a rooted name starts with '/': '/{name}')" if isinstance(name, str) else ""
        raise _bad(f"{name!r} is not a rooted name{hint}")
    address, _ = split_address_name(name)
    if not address:
        raise _bad(f"the rooted name {name!r} has no address")
    return Endpoint.parse(address)


def canonical_server(name: str) -> str:
    """A server's rooted name spelled once: a full endpoint in its canonical form (two
    spellings of one endpoint, ``%3A`` for ``:`` or an upper-case routing id, are one
    server); a short form (``/host:port``) is kept as written. The mount table stores this.

    Raises:
        BadArgError: as :func:`endpoint_of`.
    """
    ep = endpoint_of(name)
    address, suffix = split_address_name(name)
    if address.startswith("@"):
        address = str(ep)
    return clean("/" + address + ("/" + suffix if suffix else ""))


def check_version_compatibility(ep: Endpoint, supported: tuple[int, int]) -> tuple[int, int]:
    """See :meth:`Endpoint.check_compatibility`."""
    try:
        lo, hi = supported
    except (TypeError, ValueError):
        raise errors.BadArgError(
            f"supported versions must be a (min, max) pair: {supported!r}"
        ) from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not (
        1 <= lo <= hi
    ):
        raise errors.BadArgError(f"supported versions must satisfy 1 <= min <= max: {supported!r}")
    ep_lo = ep.min_version or lo
    ep_hi = ep.max_version or hi
    use_lo, use_hi = max(lo, ep_lo), min(hi, ep_hi)
    if use_lo > use_hi:
        raise errors.VersionIncompatibleError(
            f"endpoint {ep} speaks RPC versions {ep.min_version}..{ep.max_version}, "
            f"this side {lo}..{hi}",
            ep.min_version,
            ep.max_version,
            lo,
            hi,
        )
    return use_lo, use_hi


def _to_wire(ep: Endpoint) -> str:
    return str(ep)


def _from_wire(value: Any) -> Endpoint:
    if not isinstance(value, str):
        raise errors.BadProtocolError("endpoint: the wire form must be a string")
    try:
        return Endpoint.parse(value)
    except errors.BadArgError as exc:
        raise errors.BadProtocolError(f"peer sent a malformed endpoint: {exc.msg}") from None


codec.register("endpoint", Endpoint, _to_wire, _from_wire)
