"""Dialing: a connected socket for an address, and a VC handshake driven over it.

Owns: the supported protocols (``tcp``, ``tcp4``, ``tcp6``, ``unix``), parsing ``host:port``
addresses, opening a connected socket with a deadline (:func:`open_socket`), and running a
sans-IO handshake over a blocking socket with a deadline and bounded reads
(:func:`drive_handshake`).

Must not: keep sockets or VCs, hold any lock, or know what the handshake decides.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ipcclient import errors

__all__ = [
    "HANDSHAKE_RECV",
    "PROTOCOLS",
    "drive_handshake",
    "family_of",
    "open_socket",
    "split_host_port",
]

PROTOCOLS = ("tcp", "tcp4", "tcp6", "unix")
HANDSHAKE_RECV = 64 * 1024
"""Bytes read per recv during a handshake (a whole handshake is a few KiB)."""


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port).

    Raises:
        BadArgError: not of that form, or the port is not 0..65535.
    """
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1 : close + 2] != ":":
            raise errors.BadArgError(f"transport: bad address {address!r}")
        host, port_text = address[1:close], address[close + 2 :]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise errors.BadArgError(f"transport: bad address {address!r} (want host:port)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise errors.BadArgError(f"transport: bad port in {address!r}")
    return host, int(port_text)


def family_of(protocol: str) -> int:
    if protocol == "tcp4":
        return socket.AF_INET
    if protocol == "tcp6":
        return socket.AF_INET6
    if protocol == "tcp":
        return socket.AF_UNSPEC
    if protocol == "unix":
        return socket.AF_UNIX
    raise errors.BadArgError(f"transport: unknown protocol {protocol!r} (know {PROTOCOLS})")


def _timeout_left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise errors.TimeoutError(f"transport: deadline passed before {what}")
    return left


def open_socket(protocol: str, address: str, deadline: float) -> socket.socket:
    """A connected socket to ``address`` over ``protocol``, or a clear error by ``deadline``.

    Raises:
        BadArgError: unknown protocol or malformed address.
        TimeoutError: the deadline passed.
        ConnectionFailedError: refused, unreachable, or no such socket (retry may help).
    """
    family = family_of(protocol)
    left = _timeout_left(deadline, f"dialing {protocol}:{address}")
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
            return sock
        host, port = split_host_port(address)
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        last: OSError | None = None
        for fam, kind, proto, _canon, sockaddr in infos:
            sock = socket.socket(fam, kind, proto)
            try:
                sock.settimeout(_timeout_left(deadline, f"dialing {protocol}:{address}"))
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last or OSError(f"no addresses for {address}")
    except errors.IPCError:  # (ours are OSErrors too: TimeoutError, ConnectionFailedError)
        raise
    except TimeoutError as exc:
        raise errors.TimeoutError(f"transport: dialing {protocol}:{address} timed out") from exc
    except OSError as exc:
        raise errors.ConnectionFailedError(
            f"transport: dialing {protocol}:{address} failed: {exc}"
        ) from exc


def drive_handshake(
    sock: socket.socket,
    feed: Callable[[bytes], bytes],
    is_done: Callable[[], bool],
    first: bytes,
    deadline: float,
) -> None:
    """Send ``first``, then feed received bytes and send replies until ``is_done()``."""
    try:
        if first:
            sock.settimeout(_timeout_left(deadline, "the handshake"))
            sock.sendall(first)
        while not is_done():
            sock.settimeout(_timeout_left(deadline, "the handshake finished"))
            data = sock.recv(HANDSHAKE_RECV)
            if not data:
                raise errors.ConnectionFailedError(
                    "transport: the peer closed during the handshake"
                )
            out = feed(data)
            if out:
                sock.settimeout(_timeout_left(deadline, "the handshake finished"))
                sock.sendall(out)
        sock.settimeout(None)
    except errors.IPCError:  # (ours are OSErrors too: TimeoutError, ConnectionFailedError)
        raise
    except TimeoutError as exc:
        raise errors.TimeoutError("transport: the handshake did not finish in time") from exc
    except OSError as exc:
        raise errors.ConnectionFailedError(f"transport: handshake I/O failed: {exc}") from exc
