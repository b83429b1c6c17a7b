"""Making VCs: dialing and listening, sockets in, established VCs out.

Owns: :class:`TransportOptions` (the knobs of the VCs a manager makes), :class:`StreamManager`
(dial: a socket and the client handshake, see :mod:`~ipcclient.transport.dial`; listen) and
:class:`Listener`: an accept thread that hands each new socket to a bounded set of handshake
threads (bounded per remote address too, the oldest shed when full, a first-byte timeout) and
each established VC to the owner, under a cap on connections; its repeated warnings are
rate-limited (:mod:`~ipcclient.transport.ratelog`). ``open_socket``, ``split_host_port`` and
``PROTOCOLS`` are imported from here too.

Must not: cache VCs (the client owns its VC map), resolve names, or know RPC. Never holds a
lock across a dial or a handshake.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipcclient import errors
from ipcclient.context import LONGEST_WAIT
from ipcclient.transport.conn import Connection, Flow, KeepaliveConfig
from ipcclient.transport.dial import (
    PROTOCOLS,
    Dialing,
    drive_handshake,
    family_of,
    open_socket,
    split_host_port,
)
from ipcclient.transport.ratelog import Throttle
from ipcclient.vc.handshake import (
    MIN_WINDOW,
    SUPPORTED_VERSIONS,
    ClientHandshake,
    HandshakeResult,
    Identity,
    ServerHandshake,
    VCSettings,
)
from ipcclient.wire.mux import MuxConfig

__all__ = [
    "PROTOCOLS",
    "Listener",
    "StreamManager",
    "TransportOptions",
    "open_socket",
    "split_host_port",
]

log = logging.getLogger("ipcclient.transport")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""A handshake that has not finished by then fails: a stalled peer cannot hold a thread."""
ACCEPT_ERROR_PAUSE = 0.05
"""Pause after a failed accept (out of descriptors, say) before trying again."""
MAX_PENDING_HANDSHAKES = 64
"""Accepted sockets still in their handshake (one thread each), by default; a new connection
beyond sheds the oldest one (see ``TransportOptions.max_pending_handshakes``)."""

MAX_HANDSHAKES_PER_ADDRESS = 8
"""Pending handshakes from one remote IP address, by default; more are closed at once."""

FIRST_BYTE_TIMEOUT = 2.0
"""A new connection that sends nothing for this long is closed (default)."""

MAX_CONNECTIONS = 4096
"""Accepted VCs (and pending handshakes) a listener holds at once, by default; more are
closed at once."""

MAX_CONNECTIONS_PER_ADDRESS = 1024
"""Accepted VCs (and pending handshakes) from one remote IP address a listener holds at
once, by default (a quarter of ``MAX_CONNECTIONS``): one address cannot fill the listener
and keep every other client out. More are closed at once."""

PARK_IDLE = 1.0
"""Seconds an accepted VC stays idle (no flow, no input) before its reader thread ends and
the process's idle watcher takes it (default; see ``TransportOptions.park_idle``)."""

DEFAULT_BUSY_POLL = 0.0002
"""Seconds a reader thread polls before sleeping (see ``TransportOptions.busy_poll``): longer
than a quick client's turnaround between a reply and its next call on loopback."""

IDLE_TIMEOUT = 300.0
"""Seconds a dialed VC stays open with no call on it before it closes (default; see
``TransportOptions.idle_timeout``)."""

CLIENT_BUSY_POLL = 0.0005
"""What a client's VCs poll by default (``ClientOptions.transport``): only its reader thread
polls, only while several calls are in flight, where the gaps between replies stretch with
the number of callers."""

MAX_BUSY_POLL = 0.01
"""The most ``busy_poll`` may be: polling longer than this would waste more than it saves. (With
this much, a peer sending one small message every few milliseconds keeps a reader polling
nearly all the time.)"""


@dataclass(frozen=True)
class TransportOptions:
    """Knobs of the VCs a manager makes (both sides).

    Attributes:
        mux: this side's mux limits (its receive window and frame size are announced to the
            peer in the handshake).
        keepalive: liveness timers.
        handshake_timeout: upper bound on one handshake, whatever the caller's deadline.
        versions: the protocol versions offered.
        lead_reads: on dialed VCs, let a caller waiting for the peer read the socket itself
            (leader/follower; no thread hop for a lone caller). False: the VC's reader
            thread does all reading, as on accepted VCs.
        busy_poll: seconds (at most ``MAX_BUSY_POLL``; 0: never; ``DEFAULT_BUSY_POLL``
            here and for servers, ``CLIENT_BUSY_POLL`` in ``ClientOptions``) a VC's reader thread
            keeps polling its socket without blocking (yielding the CPU between polls)
            before it sleeps in a blocking receive, as long as the peer's recent gaps were
            shorter than that; after one longer gap it stops polling until a gap is short
            again, so an idle or slow peer costs about one poll per change of pace (and per
            keepalive ping).
            Polled: every accepted VC's reader thread; a dialed VC's while it reads for
            several calls in flight (or always, with ``lead_reads=False``); never a lone
            caller reading its own reply. A peer that answers or calls back quickly then
            finds this side awake: no wake-up of a sleeping thread (on a VM an
            inter-processor interrupt and a halted virtual CPU to restart) on either side.
            A read that leaves part of a record (a large message, a peer trickling bytes)
            is followed by a blocking read, not a poll; at most ``os.cpu_count() - 1``
            (at least 1) threads of a process poll at once. A peer whose small messages keep
            coming faster than ``busy_poll`` keeps a reader polling between them (a CPU
            kept busy while it does). What it costs and buys: docs/performance.md.
        busy_poll_adapt: poll only where it pays, as each reader measures on its own
            traffic: of the reads the rules above allow a poll for, it polls for some and
            sleeps for others, and keeps polling only while a sleep makes the wait for the
            peer's bytes clearly longer (where waking a thread is expensive); elsewhere it
            sleeps, and polls for one read in ``polling.EXPLORE_EVERY`` to notice a change.
            False: poll whenever the rules allow (for a machine known to wake threads
            slowly). Either way ``busy_poll=0`` never polls.
        max_connections: (listening) accepted VCs and pending handshakes held at once;
            a connection beyond is closed at once (see ``MAX_CONNECTIONS``).
        max_pending_handshakes: (listening) handshakes running at once (a thread each); a
            new connection beyond sheds the oldest pending one, so a slow flood cannot keep
            new clients out.
        max_connections_per_address: (listening) accepted VCs and pending handshakes from
            one remote IP address (not bounded on Unix sockets; at most ``max_connections``
            in effect); a connection beyond is closed at once.
        max_handshakes_per_address: (listening) pending handshakes from one remote IP
            address (not bounded on Unix sockets); a connection beyond is closed at once.
        first_byte_timeout: (listening) a new connection that sends nothing for this long
            is closed (the whole handshake is bounded by ``handshake_timeout``).
        park_idle: (listening) an accepted VC with no flow and no input for this many
            seconds gives up its reader thread: one thread of the process watches every
            such VC and starts a reader for it when input comes (the first call after
            the pause pays a thread start); 0: each VC keeps its thread, as does one
            whose keepalive ``timeout`` is less than 2 s after its ``interval`` (the watcher
            checks once a second: it must have a chance to ping before the timeout).
        idle_timeout: (dialing) a dialed VC with no call on it for this many seconds closes
            (a GOAWAY, a normal close, and its socket and reader thread go); the next call
            to that endpoint dials again. A call that finds the VC closing as it starts
            dials again without counting a retry. 0: a VC to a live server stays open until
            the client closes.
    """

    mux: MuxConfig = field(default_factory=MuxConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    versions: tuple[int, int] = SUPPORTED_VERSIONS
    lead_reads: bool = True
    busy_poll: float = DEFAULT_BUSY_POLL
    busy_poll_adapt: bool = True
    max_connections: int = MAX_CONNECTIONS
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES
    max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    first_byte_timeout: float = FIRST_BYTE_TIMEOUT
    park_idle: float = PARK_IDLE
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.mux, MuxConfig) or self.mux.initial_window < MIN_WINDOW:
            # (The sans-IO mux takes any window; a hello announcing one this small is
            # refused by every peer.)
            raise errors.BadArgError(
                f"transport: mux must be a MuxConfig with initial_window >= {MIN_WINDOW}"
            )
        poll = self.busy_poll
        number = isinstance(poll, int | float) and not isinstance(poll, bool)
        if not number or not 0 <= poll <= MAX_BUSY_POLL:
            raise errors.BadArgError(
                f"transport: busy_poll must be seconds in [0, {MAX_BUSY_POLL}], got {poll!r}"
            )
        if not isinstance(self.busy_poll_adapt, bool):
            raise errors.BadArgError(
                f"transport: busy_poll_adapt must be a bool, got {self.busy_poll_adapt!r}"
            )
        for name in (
            "max_connections",
            "max_pending_handshakes",
            "max_handshakes_per_address",
            "max_connections_per_address",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.BadArgError(f"transport: {name} must be an int >= 1, got {value!r}")
        park = self.park_idle
        if not isinstance(park, int | float) or isinstance(park, bool) or park < 0:
            raise errors.BadArgError(f"transport: park_idle must be seconds >= 0, got {park!r}")
        idle = self.idle_timeout
        if (
            not isinstance(idle, int | float)
            or isinstance(idle, bool)
            or not 0 <= idle <= LONGEST_WAIT  # (NaN fails too)
        ):
            raise errors.BadArgError(
                f"transport: idle_timeout must be seconds >= 0 and <= {LONGEST_WAIT:g}, "
                f"got {idle!r}"
            )
        first = self.first_byte_timeout
        if (
            not isinstance(first, int | float)
            or isinstance(first, bool)
            or not 0 < first <= LONGEST_WAIT  # (NaN fails too)
        ):
            raise errors.BadArgError(
                f"transport: first_byte_timeout must be seconds > 0 and <= {LONGEST_WAIT:g}, "
                f"got {first!r}"
            )

    @property
    def settings(self) -> VCSettings:
        return VCSettings(
            initial_window=self.mux.initial_window, max_frame_payload=self.mux.max_frame_payload
        )


class Listener:
    """A listening socket and the thread that accepts on it (see :meth:`StreamManager.listen`)."""

    def __init__(
        self,
        manager: StreamManager,
        protocol: str,
        address: str,
        *,
        blessings: Any,
        discharges: Callable[[], Sequence[Any]],
        on_flow: Callable[[Flow], Callable[[], None] | None],
        on_connection: Callable[[Connection], None] | None,
        backlog: int,
        max_flows: int = 0,
    ) -> None:
        self._manager = manager
        # Each accepted VC's inbound flow limit (at most ``max_flows``), announced in the
        # hello so that a client waits for a flow to end rather than be refused.
        mux = manager.options.mux
        if 0 < max_flows < mux.max_inbound_flows:  # (0 there refuses every flow: kept)
            mux = dataclasses.replace(mux, max_inbound_flows=max_flows)
        self._mux = mux
        self._settings = dataclasses.replace(
            manager.options.settings, max_flows=mux.max_inbound_flows
        )
        self.protocol = protocol
        self._blessings = blessings
        self._discharges = discharges
        self._on_flow = on_flow
        self._on_connection = on_connection
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        # Sockets in their handshake, oldest first, with their remote address ("" on Unix
        # sockets), and how many per address; a shed socket leaves the dict at once.
        self._pending: collections.OrderedDict[socket.socket, str] = collections.OrderedDict()
        self._per_address: dict[str, int] = {}
        # Handshakes that succeeded whose VC is not yet in _connections: they count toward
        # max_connections in between, or a burst of handshakes ending together would let
        # the accept loop take that many sockets over the cap.
        self._establishing = 0
        # Accepted VCs from each remote address (TCP only), and each VC's address.
        self._vcs_per_address: dict[str, int] = {}
        self._vc_address: dict[Connection, str] = {}
        self._refused = Throttle("connections refused (too many connections)")
        self._refused_address = Throttle(
            "connections refused (too many pending handshakes from one address)"
        )
        self._refused_address_vcs = Throttle(
            "connections refused (too many connections from one address)"
        )
        self._shed = Throttle("pending handshakes shed (too many pending handshakes)")
        self._failed = Throttle("accept failed")
        self._own_auth = Throttle(
            "handshakes failed on this side's own auth (nothing was sent to the peer)"
        )
        self._closed = False
        family = family_of(protocol)
        self._unix_path: str | None = None
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                raise errors.ConnectionFailedError(
                    f"transport: cannot listen on {address}: {exc}"
                ) from exc
            self._unix_path = address
            self.address = address
        else:
            host, port = split_host_port(address)
            if family == socket.AF_UNSPEC:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise errors.ConnectionFailedError(
                    f"transport: cannot listen on {address}: {exc}"
                ) from exc
            bound = sock.getsockname()
            self.address = (
                f"[{bound[0]}]:{bound[1]}"
                if family == socket.AF_INET6
                else (f"{bound[0]}:{bound[1]}")
            )
        sock.listen(backlog)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"ipc-listen-{self.address}", daemon=True
        )
        self._thread.start()

    @property
    def connections(self) -> list[Connection]:
        """The established VCs accepted here and still open."""
        with self._lock:
            return list(self._connections)

    def close(self, *, close_connections: bool = True, timeout: float = 2.0) -> None:
        """Stop accepting; with ``close_connections``, close every VC accepted here."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._connections)
            # Handshakes still going on end now (their threads wake and close their sockets),
            # not when the peer finishes or their timeout passes: no VC is taken any more.
            # Shut under the lock, as the accept loop sheds one (see there).
            for pending in self._pending:
                with contextlib.suppress(OSError):
                    pending.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout)
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
        if close_connections:
            for conn in conns:
                conn.close()

    def abandon_after_fork(self) -> None:
        """In a child after fork(): forget this listener without touching the parent's. Only
        this process's copies of the listening socket, of the sockets in their handshake and
        of the VCs accepted here are closed (no shutdown, no GOAWAY; a Unix socket's path is
        left in place); the threads that served them did not survive the fork. No lock: a
        thread of the parent may have held it at the fork."""
        self._closed = True
        conns, self._connections = list(self._connections), set()
        pending = list(self._pending)
        self._pending = collections.OrderedDict()
        self._per_address = {}
        self._establishing = 0
        self._vcs_per_address = {}
        self._vc_address = {}
        for sock in (self._sock, *pending):
            with contextlib.suppress(OSError):
                sock.close()
        for conn in conns:
            conn.abandon_after_fork()

    def _accept_loop(self) -> None:
        opts = self._manager.options
        while True:
            try:
                sock, peer = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                # EMFILE/ENFILE/ENOBUFS under load, ECONNABORTED: keep accepting.
                self._failed.event(f"on {self.address}: {exc}")
                time.sleep(ACCEPT_ERROR_PAUSE)
                continue
            address = peer[0] if isinstance(peer, tuple) and peer else ""
            shed: socket.socket | None = None
            refused: Throttle | None = None
            closed = False
            with self._lock:
                per = self._per_address.get(address, 0)
                if self._closed:  # (close() ran since the accept: it shut the pending ones)
                    closed = True
                elif (
                    len(self._connections) + len(self._pending) + self._establishing
                    >= opts.max_connections
                ):
                    refused = self._refused
                elif address and per >= opts.max_handshakes_per_address:
                    refused = self._refused_address
                elif address and per + self._vcs_per_address.get(address, 0) >= min(
                    opts.max_connections_per_address, opts.max_connections
                ):
                    refused = self._refused_address_vcs
                else:
                    if len(self._pending) >= opts.max_pending_handshakes:
                        shed, shed_address = self._pending.popitem(last=False)
                        self._drop_address_locked(shed_address)
                        # Its thread wakes and closes it. Shut while the lock is held (the
                        # call never blocks): that thread leaves _pending, under this lock,
                        # before it closes, so its close cannot land inside this shutdown.
                        with contextlib.suppress(OSError):
                            shed.shutdown(socket.SHUT_RDWR)
                    self._pending[sock] = address
                    # (Counted again after the shed: it may have been from this address.)
                    self._per_address[address] = self._per_address.get(address, 0) + 1
            if closed:
                sock.close()
                return
            if refused is not None:
                refused.event(f"from {address or 'a local socket'} on {self.address}")
                sock.close()
                continue
            if shed is not None:
                self._shed.event(f"on {self.address}")
            try:
                threading.Thread(
                    target=self._handshake, args=(sock,), name="ipc-handshake", daemon=True
                ).start()
            except RuntimeError as exc:  # no thread to be had
                self._failed.event(f"no thread for a handshake: {exc}")
                self._end_pending(sock)
                sock.close()

    def _drop_address_locked(self, address: str) -> None:
        left = self._per_address.get(address, 0) - 1
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def _end_pending(self, sock: socket.socket, *, established: bool = False) -> str | None:
        """The handshake on ``sock`` ended: it is no longer pending. With ``established``
        its count moves to the address's accepted VCs in the same step (so the accept loop
        never sees the address one short); :meth:`_uncount_vc_locked` gives it back. Its count
        toward ``max_connections`` moves to ``_establishing`` until :meth:`_handshake` has
        added its VC or given up on it. Returns its remote address (None when it was shed
        meanwhile; "" on Unix sockets)."""
        with self._lock:
            if established:
                self._establishing += 1
            address = self._pending.pop(sock, None)
            if address is not None:
                self._drop_address_locked(address)
                if established and address:
                    self._vcs_per_address[address] = self._vcs_per_address.get(address, 0) + 1
            return address

    def _uncount_vc_locked(self, address: str) -> None:
        left = self._vcs_per_address.get(address, 0) - 1
        if left > 0:
            self._vcs_per_address[address] = left
        else:
            self._vcs_per_address.pop(address, None)

    def _handshake(self, sock: socket.socket) -> None:
        opts = self._manager.options
        result: HandshakeResult | None = None
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            if not poller.poll(opts.first_byte_timeout * 1000):
                raise errors.TimeoutError("transport: the peer sent nothing in time")
            result = self._manager._accept_handshake(
                sock,
                blessings=self._blessings,
                discharges=self._discharges(),
                settings=self._settings,
            )
        except errors.BadArgError as exc:
            # Our own auth message, not the peer's input (which fails otherwise): blessings
            # and discharges too large for any peer. Every handshake fails alike, so say so
            # where the server's owner looks.
            self._own_auth.event(f"on {self.address}: {exc}")
        except (errors.IPCError, OSError) as exc:
            log.debug("transport: handshake from a peer failed: %s", exc)
        except Exception:  # pragma: no cover - a bug must not kill the listener
            log.exception("transport: handshake crashed")
        finally:
            # Out of _pending before any close: the accept loop shuts a shed socket only
            # while it is pending, under the lock (see _accept_loop).
            address = self._end_pending(sock, established=result is not None)
            if result is None:
                sock.close()
        if result is None:
            return
        counted = address or ""  # (TCP: counted by _end_pending; None: shed as it finished)
        try:
            conn = Connection(
                sock,
                result,
                dialer=False,
                config=self._mux,
                on_flow=self._on_flow,
                on_close=self._forget,
                keepalive=self._manager.options.keepalive,
                busy_poll=self._manager.options.busy_poll,
                park_idle=self._manager.options.park_idle,
                busy_poll_adapt=self._manager.options.busy_poll_adapt,
            )
        except Exception as exc:  # out of descriptors for the wake pipe, say
            sock.close()
            with self._lock:
                self._establishing -= 1
                if counted:
                    self._uncount_vc_locked(counted)
            self._failed.event(f"no VC for a connection on {self.address}: {exc}")
            return
        with self._lock:
            self._establishing -= 1
            if self._closed:
                refuse = True
                if counted:
                    self._uncount_vc_locked(counted)
            else:
                refuse = False
                self._connections.add(conn)
                if counted:
                    self._vc_address[conn] = counted
        if refuse:
            conn.close()
            return
        if self._on_connection is not None:
            try:
                self._on_connection(conn)
            except Exception:  # the owner's bug must not leave the VC without a reader
                log.exception("transport: the on_connection callback failed")
        conn.run_reader()  # this thread reads for the VC from now on

    def _forget(self, conn: Connection, _err: errors.IPCError) -> None:
        with self._lock:
            self._connections.discard(conn)
            address = self._vc_address.pop(conn, None)
            if address is not None:
                self._uncount_vc_locked(address)


class StreamManager:
    """Makes VCs: dials endpoints and listens for peers, for one principal."""

    def __init__(self, identity: Identity, options: TransportOptions | None = None) -> None:
        self.identity = identity
        self.options = options or TransportOptions()

    def dial(
        self,
        protocol: str,
        address: str,
        *,
        deadline: float,
        authorize_server: Callable[[Any, Any, tuple[Any, ...]], Any],
        blessings_for_server: Callable[[Any], Any],
        discharges_for_server: Callable[[Any], Sequence[Any]] = lambda _b: (),
        on_close: Callable[[Connection, errors.IPCError], None] | None = None,
        start: bool = True,
    ) -> Connection:
        """Dial, run the handshake, and return the started VC (with ``start=False``, not
        started: the caller then makes a thread its reader, :meth:`Connection.run_reader`,
        or closes it).

        The whole dial (connect and handshake) ends by ``deadline`` (a ``time.monotonic()``
        value), and the handshake also by ``options.handshake_timeout``.

        Raises:
            TimeoutError, ConnectionFailedError, BadArgError: from the dial.
            VersionIncompatibleError, NotTrustedError, BadProtocolError: from the handshake.
        """
        dialing = self.start_dial(
            protocol,
            address,
            deadline=deadline,
            authorize_server=authorize_server,
            blessings_for_server=blessings_for_server,
            discharges_for_server=discharges_for_server,
        )
        dialing.run()
        return self.finish_dial(dialing, on_close=on_close, start=start)

    def start_dial(
        self,
        protocol: str,
        address: str,
        *,
        deadline: float,
        authorize_server: Callable[[Any, Any, tuple[Any, ...]], Any],
        blessings_for_server: Callable[[Any], Any],
        discharges_for_server: Callable[[Any], Sequence[Any]] = lambda _b: (),
    ) -> Dialing:
        """A dial (see :meth:`dial`) to drive in steps (:class:`Dialing`), then to turn into
        a VC with :meth:`finish_dial` once it is done.

        Raises:
            BadArgError: unknown protocol or malformed address.
            TimeoutError: the deadline passed already.
            ConnectionFailedError: the address cannot be resolved.
        """
        hs = ClientHandshake(
            self.identity,
            authorize_server=authorize_server,
            blessings_for_server=blessings_for_server,
            discharges_for_server=discharges_for_server,
            versions=self.options.versions,
            settings=self.options.settings,
        )
        dialing = Dialing(
            protocol,
            address,
            deadline,
            handshake=(hs.start(), hs.receive_data, lambda: hs.done),
            handshake_timeout=self.options.handshake_timeout,
        )
        dialing.state = hs
        return dialing

    def finish_dial(
        self,
        dialing: Dialing,
        *,
        on_close: Callable[[Connection, errors.IPCError], None] | None = None,
        start: bool = True,
    ) -> Connection:
        """The VC of a dial that is done (see :meth:`dial` for ``on_close`` and ``start``)."""
        hs: ClientHandshake = dialing.state
        sock = dialing.sock
        assert dialing.done and sock is not None and hs.result is not None
        result: HandshakeResult = hs.result
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "transport: handshake with %s done in %.1f ms: server %s",
                dialing.name,
                (time.monotonic() - dialing.connected_at) * 1e3,
                list(getattr(result.remote_blessings, "names", ()) or ()),
            )
        try:
            conn = Connection(
                sock,
                result,
                dialer=True,
                config=self.options.mux,
                on_close=on_close,
                keepalive=self.options.keepalive,
                name=dialing.name,
                lead_reads=self.options.lead_reads,
                busy_poll=self.options.busy_poll,
                busy_poll_adapt=self.options.busy_poll_adapt,
                idle_timeout=self.options.idle_timeout,
            )
        except BaseException:
            sock.close()  # out of descriptors for the wake pipe, say
            raise
        if start:
            conn.start()
        return conn

    def listen(
        self,
        protocol: str,
        address: str,
        *,
        blessings: Any,
        on_flow: Callable[[Flow], Callable[[], None] | None],
        discharges: Callable[[], Sequence[Any]] = tuple,
        on_connection: Callable[[Connection], None] | None = None,
        backlog: int = 128,
        max_flows: int = 0,
    ) -> Listener:
        """Listen on ``address`` (``host:0`` picks a free port; ``listener.address`` tells
        which). Every flow a peer opens on an accepted VC goes to ``on_flow`` (called on the
        VC's reader thread: hand it to a worker, do not block), which may instead return a
        job to run on that thread when ``flow.connection.inline_available()`` says so (see
        :meth:`Connection.inline_available`).

        Each accepted VC takes at most ``max_flows`` live flows from its peer at once (0:
        the mux's ``max_inbound_flows``; the lower of the two otherwise), refusing more with
        OverloadedError; the limit is announced in the handshake, and this project's dialer
        waits for a flow to end instead of going over it."""
        if not isinstance(max_flows, int) or isinstance(max_flows, bool) or max_flows < 0:
            raise errors.BadArgError(f"transport: max_flows must be an int >= 0, got {max_flows!r}")
        return Listener(
            self,
            protocol,
            address,
            blessings=blessings,
            discharges=discharges,
            on_flow=on_flow,
            on_connection=on_connection,
            backlog=backlog,
            max_flows=max_flows,
        )

    def _accept_handshake(
        self,
        sock: socket.socket,
        *,
        blessings: Any,
        discharges: Sequence[Any],
        settings: VCSettings,
    ) -> HandshakeResult:
        hs = ServerHandshake(
            self.identity,
            blessings=blessings,
            discharges=discharges,
            versions=self.options.versions,
            settings=settings,
        )
        deadline = time.monotonic() + self.options.handshake_timeout
        try:
            drive_handshake(sock, hs.receive_data, lambda: hs.done, b"", deadline)
        except errors.VersionIncompatibleError:
            if hs.refusal:
                with contextlib.suppress(OSError):
                    sock.settimeout(1.0)
                    sock.sendall(hs.refusal)
            raise
        except errors.IPCError as exc:
            goaway = hs.rejection(exc)  # the client's auth was refused: tell it why
            if goaway:
                with contextlib.suppress(OSError):
                    sock.settimeout(1.0)
                    sock.sendall(goaway)
            raise
        assert hs.result is not None
        return hs.result
