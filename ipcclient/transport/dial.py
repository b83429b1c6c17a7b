"""Dialing: a connected socket for an address, and a VC handshake driven over it.

Owns: the supported protocols (``tcp``, ``tcp4``, ``tcp6``, ``unix``), parsing ``host:port``
addresses, a dial in progress (:class:`Dialing`: the connect, then a sans-IO handshake, over
a non-blocking socket, advanced in steps that each wait at most until a given time, so the
thread driving it can look at other things between steps or hand the dial to another
thread), opening a connected socket with a deadline (:func:`open_socket`, a dial without a
handshake, run to its end), and running a sans-IO handshake over a blocking socket with a
deadline and bounded reads (:func:`drive_handshake`, the accepting side's).

Must not: keep sockets or VCs, hold any lock, or know what the handshake decides.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from ipcclient import errors

__all__ = [
    "HANDSHAKE_RECV",
    "PROTOCOLS",
    "Dialing",
    "drive_handshake",
    "family_of",
    "open_socket",
    "split_host_port",
]

log = logging.getLogger("ipcclient.transport")

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
    """A connected (blocking) socket to ``address`` over ``protocol``, or a clear error by
    ``deadline``: a :class:`Dialing` without a handshake, run to its end.

    Raises:
        BadArgError: unknown protocol or malformed address.
        TimeoutError: the deadline passed.
        ConnectionFailedError: refused, unreachable, or no such socket (retry may help).
    """
    dialing = Dialing(protocol, address, deadline)
    dialing.run()
    assert dialing.sock is not None
    return dialing.sock


_NO_HANDSHAKE: tuple[bytes, Callable[[bytes], bytes], Callable[[], bool]] = (
    b"",
    lambda _data: b"",
    lambda: True,
)


class Dialing:
    """One dial in progress: the connect (each address ``getaddrinfo`` gives, in turn), then
    the handshake (``first`` sent, what arrives fed to ``feed`` and its answers sent, until
    ``is_done()``), over a non-blocking socket.

    One thread at a time drives it with :meth:`step`, which waits at most until the time it
    is given, so the driving thread may look at its own context between steps and hand the
    dial to another thread (which calls :meth:`run`). The whole dial ends by ``deadline``
    and the handshake also by ``handshake_timeout`` after the connect. On any error the
    socket is closed. When it is done, :attr:`sock` is the connected socket, blocking again.

    Raises (from the constructor, :meth:`step` and :meth:`run`):
        BadArgError: unknown protocol or malformed address.
        TimeoutError: a deadline passed.
        ConnectionFailedError: refused, unreachable, no such socket, or the peer closed or
            failed during the handshake (retry may help).
        the handshake's own errors (from ``feed``).
    """

    def __init__(
        self,
        protocol: str,
        address: str,
        deadline: float,
        handshake: tuple[bytes, Callable[[bytes], bytes], Callable[[], bool]] | None = None,
        handshake_timeout: float = float("inf"),
    ) -> None:
        self.deadline = deadline
        self._what = f"{protocol}:{address}"
        family = family_of(protocol)
        _timeout_left(deadline, f"dialing {self._what}")
        if family == socket.AF_UNIX:
            self._targets: list[tuple[int, int, int, Any]] = [
                (socket.AF_UNIX, socket.SOCK_STREAM, 0, address)
            ]
        else:
            host, port = split_host_port(address)
            try:
                infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            except OSError as exc:
                raise self._failed(exc) from exc
            self._targets = [(fam, kind, proto, addr) for fam, kind, proto, _c, addr in infos]
        self._next = 0
        self._last: OSError | None = None
        self.sock: socket.socket | None = None
        self._connected = False
        first, self._feed, self._is_done = handshake or _NO_HANDSHAKE
        self._out = first
        self._handshake_timeout = handshake_timeout
        self._handshake_deadline = deadline
        self.connected_at = 0.0
        """When the connect ended (``time.monotonic()``), for the log."""
        self.done = False
        self._error: errors.IPCError | None = None
        self.name = self._what
        """``protocol:address``."""
        self.state: Any = None
        """What the dialer keeps with the dial (its handshake object)."""

    def run(self) -> None:
        """Drive the dial to its end (or its error)."""
        while not self.step(self.deadline):
            pass

    def step(self, until: float) -> bool:
        """Advance the dial, waiting at most until ``until`` (a ``time.monotonic()`` value);
        True once it is done. Raises as the class says (the socket then closed)."""
        if self.done:
            return True
        if self._error is not None:
            raise self._error  # (it failed before: it stays failed)
        try:
            if not self._connected and not self._connect_step(until):
                return False
            return self._handshake_step(until)
        except BaseException as exc:
            self.close()
            if isinstance(exc, errors.IPCError):
                self._error = exc
            else:  # (an interrupt: the dial is over all the same)
                self._error = errors.ConnectionFailedError(
                    f"transport: dialing {self._what} was interrupted"
                )
            log.debug("transport: dial %s failed: %s", self._what, exc)
            raise

    def close(self) -> None:
        """Close the socket (a dial given up)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    # --- the connect --------------------------------------------------------------------
    def _failed(self, exc: OSError) -> errors.IPCError:
        return errors.ConnectionFailedError(f"transport: dialing {self._what} failed: {exc}")

    def _connect_step(self, until: float) -> bool:
        """Connect to the addresses in turn (a timeout ends the dial, another failure moves
        on to the next address); True once connected, False at ``until``."""
        while True:
            if self.sock is None:
                if self._next >= len(self._targets):
                    last = self._last or OSError(f"no addresses for {self._what}")
                    raise self._failed(last) from last
                fam, kind, proto, addr = self._targets[self._next]
                self._next += 1
                try:
                    sock = socket.socket(fam, kind, proto)
                except OSError as exc:
                    raise self._failed(exc) from exc
                self.sock = sock
                sock.setblocking(False)
                try:
                    code = sock.connect_ex(addr)  # (0, EINPROGRESS, or why it failed)
                except OSError as exc:  # (an address the socket refuses: a long path, ...)
                    self._last = exc
                    self.close()
                    continue
            elif self._wait(select.POLLOUT, until, self.deadline, self._connect_late):
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            else:
                return False
            if code == 0:
                break
            if code != errno.EINPROGRESS:
                # This address failed (refused, unreachable; EAGAIN: a Unix socket's
                # backlog is full): the next one.
                self._last = OSError(code, os.strerror(code))
                self.close()
        sock = self.sock
        assert sock is not None
        if sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                raise self._failed(exc) from exc
        self._connected = True
        self.connected_at = time.monotonic()
        self._handshake_deadline = min(self.deadline, self.connected_at + self._handshake_timeout)
        return True

    def _connect_late(self) -> errors.IPCError:
        return errors.TimeoutError(f"transport: dialing {self._what} timed out")

    # --- the handshake ------------------------------------------------------------------
    def _handshake_late(self) -> errors.IPCError:
        return errors.TimeoutError("transport: the handshake did not finish in time")

    def _handshake_step(self, until: float) -> bool:
        sock = self.sock
        assert sock is not None
        end = self._handshake_deadline
        try:
            while True:
                if self._out:
                    try:
                        sent = sock.send(self._out)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    self._out = self._out[sent:]
                    if self._out:
                        if not self._wait(select.POLLOUT, until, end, self._handshake_late):
                            return False
                        continue
                if self._is_done():
                    break
                if not self._wait(select.POLLIN, until, end, self._handshake_late):
                    return False
                try:
                    data = sock.recv(HANDSHAKE_RECV)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    raise errors.ConnectionFailedError(
                        "transport: the peer closed during the handshake"
                    )
                self._out = self._feed(data)
        except errors.IPCError:
            raise
        except OSError as exc:
            raise errors.ConnectionFailedError(f"transport: handshake I/O failed: {exc}") from exc
        sock.setblocking(True)
        self.done = True
        return True

    def _wait(
        self, events: int, until: float, end: float, late: Callable[[], errors.IPCError]
    ) -> bool:
        """Wait until the socket is ready for ``events``: True; False at ``until`` (before
        ``end``); ``late()`` raised at ``end``."""
        sock = self.sock
        assert sock is not None
        now = time.monotonic()
        if now >= end:
            raise late()
        stop = min(until, end)
        poller = select.poll()
        poller.register(sock, events)
        # (``until`` passed: a look without waiting. poll rounds up to whole milliseconds:
        # never waits past ``stop`` by more.)
        if poller.poll(max(0.0, stop - now) * 1000):
            return True
        if time.monotonic() >= end:
            raise late()
        return False


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
