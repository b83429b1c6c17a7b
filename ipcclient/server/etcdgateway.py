"""A small client of etcd's v3 JSON gateway (``POST /v3/...``), on the standard library.

Owns: :class:`EtcdGateway` (HTTP/1.1 keep-alive connections to every member given, a
deadline on every request that each read and write keeps to, however the member spreads
its answer out, failover to the next member when one does not answer or answers what
etcd itself would not (a redirect, 429, a body that is not its JSON, or is larger or more
finely divided than the caller's bounds), the member that answered last tried first),
the errors it tells its caller apart (:class:`LeaseNotFound` for a request carrying a
lease, :class:`RevisionCompacted` for one reading at a revision; etcd's other refusals are
InternalError), a request's end as soon as the caller's context is done (its connection
shut from the thread that cancels), and the gateway's key encoding (base64, and the end of
a prefix range).
Must not: know the layout of a mount table's keys (:mod:`ipcclient.server.etcdstore` does),
hold its lock across a request, decode an answer past its deadline or beyond its bounds,
or import anything from ipcclient but :mod:`ipcclient.errors` and
:mod:`ipcclient.context`.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import http.client
import json
import math
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from ipcclient import errors
from ipcclient.context import LONGEST_WAIT, Context

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_IDLE_PER_MEMBER",
    "MAX_RESPONSE_BYTES",
    "MIN_ATTEMPT_TIMEOUT",
    "EtcdGateway",
    "LeaseNotFound",
    "RevisionCompacted",
    "b64",
    "prefix_end",
    "unb64",
]

DEFAULT_REQUEST_TIMEOUT = 5.0
"""Seconds one store operation may take when its caller has no deadline."""
MAX_IDLE_PER_MEMBER = 8
"""Idle keep-alive connections kept to one etcd member."""
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""Largest gateway response read, unless a gateway is given another bound. Each request
may be given a lower one (``max_bytes``): the mount table sizes each of its reads by what
it can hold (a Glob reads its range in pages)."""
MAX_ITEMS_PER_BYTE = 16
"""Without a ``max_items`` of its caller's, an answer may hold one JSON value (counted as
its ``[``, ``{`` and ``,``) per this many bytes: decoding a body of tiny values (``[[],[],
...]``) takes far longer and more memory than its size suggests, with the GIL held."""
MIN_ATTEMPT_TIMEOUT = 0.5
"""Seconds a request to one member gets at least while other members are left to try."""


_BOUNDS: contextvars.ContextVar[tuple[int | None, int | None, bool]] = contextvars.ContextVar(
    "etcd_gateway_bounds", default=(None, None, False)
)
"""What :meth:`EtcdGateway.bounded` set for the requests made within it."""


class LeaseNotFound(Exception):
    """etcd no longer knows the lease a request carried (it expired or etcd lost it)."""


class RevisionCompacted(Exception):
    """etcd compacted away the revision a read asked for."""


class MemberFailed(Exception):
    """Internal: a member did not answer, or answered that it cannot serve now."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    """The bytes of the gateway's base64 (absent: empty).

    Raises:
        ValueError: ``text`` is not base64 (``binascii.Error``).
    """
    if not isinstance(text, str):
        return b""
    return base64.b64decode(text, validate=True)


def prefix_end(key: bytes) -> bytes:
    """The smallest key greater than every key starting with ``key``."""
    b = bytearray(key)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"


def _arm(sock: socket.socket, deadline: float) -> None:
    """Give the next read or write on ``sock`` the time left until ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")  # (the builtin: an OSError)
    sock.settimeout(left)


class _DeadlineSocket(socket.socket):
    """A socket whose every read and write gets only the time left until ``deadline`` (a
    socket timeout alone is per read: a member trickling its answer a byte at a time would
    stretch a request without end)."""

    deadline = math.inf

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        _arm(self, self.deadline)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        _arm(self, self.deadline)
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self, self.deadline)
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """:class:`_DeadlineSocket` for TLS (what an ``https`` member's context wraps with)."""

    deadline = math.inf

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        _arm(self, self.deadline)
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        _arm(self, self.deadline)
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self, self.deadline)
        super().sendall(data, flags)


def _dial(conn: _Connection | _TLSConnection, sock_class: type[socket.socket]) -> socket.socket:
    """``conn``'s TCP connection, each address of its host in turn (as
    ``socket.create_connection``), within ``conn.timeout``. Each socket is published in
    ``conn.sock`` before it connects, so that an abort (:func:`_abort`) ends a connect in
    progress too; the lookup of the host's addresses cannot be cut short."""
    failure: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(
        conn.host, conn.port, 0, socket.SOCK_STREAM
    ):
        sock = sock_class(family, kind, proto)
        conn.sock = sock
        if conn.aborted:  # (after conn.sock is set: see _abort)
            _shut(sock)
        try:
            sock.settimeout(conn.timeout)
            sock.connect(address)
        except OSError as exc:
            failure = exc
            conn.sock = None
            sock.close()
            if conn.aborted:
                break
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure if failure is not None else OSError(f"no address for {conn.host}")


class _Connection(http.client.HTTPConnection):
    """An HTTP connection whose socket keeps to the request's :attr:`deadline`, and is shut
    once :func:`_abort` was called (at once, or as soon as it has one)."""

    deadline = math.inf
    aborted = False

    def connect(self) -> None:
        sys.audit("http.client.connect", self, self.host, self.port)
        self.timeout = max(0.001, self.deadline - time.monotonic())
        sock = _dial(self, _DeadlineSocket)
        assert isinstance(sock, _DeadlineSocket)
        sock.deadline = self.deadline


class _TLSConnection(http.client.HTTPSConnection):
    """:class:`_Connection` over TLS (its context makes :class:`_DeadlineSSLSocket`). The
    TLS handshake runs once ``self.sock`` is the TLS socket, so that an abort during it (a
    member that accepts and never answers) shuts that socket too."""

    deadline = math.inf
    aborted = False

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context

    def connect(self) -> None:
        sys.audit("http.client.connect", self, self.host, self.port)
        self.timeout = max(0.001, self.deadline - time.monotonic())
        plain = _dial(self, socket.socket)
        self.sock = self._tls.wrap_socket(
            plain, server_hostname=self.host, do_handshake_on_connect=False
        )
        if isinstance(self.sock, _DeadlineSSLSocket):
            self.sock.deadline = self.deadline
        if self.aborted:  # (after self.sock is set: see _abort)
            _shut(self.sock)
        _arm(self.sock, self.deadline)  # (the handshake too ends by the deadline)
        self.sock.do_handshake()


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` both ways, waking a connect, read or write blocked on it in another
    thread (a TLS socket is shut underneath its TLS layer, which then fails as at a lost
    peer)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _abort(conn: http.client.HTTPConnection) -> None:
    """End the request under way on ``conn`` (from any thread; never blocks): its socket is
    shut now, or as soon as ``connect`` makes one. The flag is set before the socket is
    read, and ``connect`` sets the socket before it reads the flag, so one of them shuts
    it."""
    if isinstance(conn, _Connection | _TLSConnection):
        conn.aborted = True
    sock = conn.sock
    if sock is not None:
        _shut(sock)


class _AbortLink:
    """A context's done callback for one attempt on one connection: it aborts the
    connection (:func:`_abort`) only until the attempt is over (:meth:`cut`), so that a
    callback running late never shuts a connection given back to the idle pool."""

    __slots__ = ("_conn", "_live", "_lock")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # (its own: held only around the non-blocking shut)
        self._live = True

    def __call__(self, _err: errors.IPCError) -> None:
        with self._lock:
            if self._live:
                _abort(self._conn)

    def cut(self) -> bool:
        """End the link; True when the connection was aborted (it must not be reused)."""
        with self._lock:
            self._live = False
        return bool(getattr(self._conn, "aborted", False))


def _set_deadline(conn: http.client.HTTPConnection, deadline: float) -> None:
    """The deadline of the request about to be made on ``conn`` (and of its dial)."""
    if isinstance(conn, _Connection | _TLSConnection):
        conn.deadline = deadline
    if isinstance(conn.sock, _DeadlineSocket | _DeadlineSSLSocket):
        conn.sock.deadline = deadline


def _parse_endpoints(endpoints: str | Sequence[str]) -> tuple[tuple[str, str, int], ...]:
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    out: list[tuple[str, str, int]] = []
    for raw in endpoints:
        text = raw.strip()
        if "://" not in text:
            text = "http://" + text
        url = urllib.parse.urlsplit(text)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise errors.BadArgError(f"etcd: bad endpoint {raw!r} (want http://host:port)")
        try:
            port = url.port or (443 if url.scheme == "https" else 2379)
        except ValueError:
            raise errors.BadArgError(f"etcd: bad port in endpoint {raw!r}") from None
        out.append((url.scheme, url.hostname, port))
    if not out:
        raise errors.BadArgError("etcd: no endpoints given")
    return tuple(out)


def _timeout(value: object) -> float:
    """A request's time in seconds: a number > 0 (at most ``LONGEST_WAIT``)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not value > 0  # (NaN fails too)
    ):
        raise errors.BadArgError(f"etcd: a timeout must be seconds > 0, got {value!r:.40}")
    return float(min(value, LONGEST_WAIT))


class EtcdGateway:
    """Requests to etcd's v3 JSON gateway, failing over between the cluster's members.

    Thread-safe: each request takes an idle connection (or opens one) for itself; the lock
    guards only the idle lists. The member that answered last is tried first.

    Args:
        endpoints: ``http://host:port`` of each member (a comma-separated str or a list).
        timeout: seconds a request may take when the caller gives no timeout.
        max_response_bytes: the largest answer read (a member answering more failed); a
            request may be given a lower bound.

    Raises:
        BadArgError: no endpoint, a bad one, or ``max_response_bytes`` < 1.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise errors.BadArgError("etcd: max_response_bytes must be a positive int")
        self._members = _parse_endpoints(endpoints)
        self._timeout = _timeout(timeout)
        self._max_response = max_response_bytes
        self._lock = threading.Lock()
        self._idle: dict[int, list[http.client.HTTPConnection]] = {
            i: [] for i in range(len(self._members))
        }
        self._preferred = 0
        self._closed = False

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The members, as ``scheme://host:port``."""
        return tuple(f"{s}://{h}:{p}" for s, h, p in self._members)

    @property
    def max_response_bytes(self) -> int:
        """The largest answer read."""
        return self._max_response

    @contextlib.contextmanager
    def bounded(
        self, *, max_bytes: int | None = None, max_items: int | None = None, lease: bool = False
    ) -> Iterator[None]:
        """Within: each :meth:`request` of this thread (or task) expects an answer of at most
        ``max_bytes`` (no more than the gateway's bound) and ``max_items`` JSON values
        (counted as ``[``, ``{`` and ``,``; they bound the nesting too): a member answering
        more failed, and the next one is asked. ``lease``: the requests carry a lease."""
        token = _BOUNDS.set((max_bytes, max_items, lease))
        try:
            yield
        finally:
            _BOUNDS.reset(token)

    def request(
        self,
        path: str,
        body: dict[str, Any],
        timeout: float | None = None,
        *,
        ctx: Context | None = None,
    ) -> Any:
        """POST ``body`` to ``path`` (``/v3/kv/range``...) and return the decoded answer,
        within the bounds of :meth:`bounded` (by default, the gateway's). With ``ctx``, the
        request ends as soon as that context is done (its connection is shut, never reused),
        with the context's error.

        Raises:
            CanceledError, TimeoutError: ``ctx`` is done (cancelled, or past its deadline).
            TimeoutError: the time ran out.
            OverloadedError: no member answered (back off and retry).
            InternalError: etcd refused the request.
            LeaseNotFound: etcd no longer knows the lease (only when :meth:`bounded` said
                the request carries one).
            RevisionCompacted: the revision ``body`` reads at was compacted.
        """
        budget = self._timeout if timeout is None else _timeout(timeout)
        deadline = time.monotonic() + budget
        payload = json.dumps(body).encode()
        max_bytes, max_items, lease = _BOUNDS.get()
        limit = _Limits(
            self._max_response if max_bytes is None else max(1, min(max_bytes, self._max_response)),
            max_items,
            lease,
            "revision" in body,
        )
        with self._lock:
            first = self._preferred
        order = [(first + i) % len(self._members) for i in range(len(self._members))]
        failures: list[str] = []
        for n, member in enumerate(order):
            if ctx is not None:
                done = ctx.err()
                if done is not None:
                    raise done
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.TimeoutError(
                    f"etcd: {path} ran out of time ({budget:.1f}s)", tried=failures
                )
            others = len(order) - n - 1
            attempt = (
                left if others == 0 else max(left / (others + 1), min(left, MIN_ATTEMPT_TIMEOUT))
            )
            try:
                answer = self._try(member, path, payload, attempt, limit, ctx)
            except MemberFailed as exc:
                failures.append(f"{self.endpoints[member]}: {exc}")
                continue
            if member != first:
                with self._lock:
                    self._preferred = member
            return answer
        if time.monotonic() >= deadline:
            raise errors.TimeoutError(
                f"etcd: {path} ran out of time ({budget:.1f}s)", tried=failures
            )
        raise errors.OverloadedError(
            f"mount table: its etcd storage does not answer ({'; '.join(failures)})",
            action=errors.RetryAction.RETRY_BACKOFF,
            tried=failures,
        )

    def _try(
        self,
        member: int,
        path: str,
        payload: bytes,
        timeout: float,
        limit: _Limits,
        ctx: Context | None,
    ) -> Any:
        """One member: an idle connection first, a fresh one when that one is stale. A done
        ``ctx`` shuts the connection in use (see :class:`_AbortLink`)."""
        deadline = time.monotonic() + timeout
        for fresh in (False, True):
            if ctx is not None:
                done = ctx.err()
                if done is not None:  # (before taking a connection it would shut)
                    raise done
            conn = None if fresh else self._take(member)
            reused = conn is not None
            if conn is None:
                conn = self._connect(member, max(0.001, deadline - time.monotonic()))
            link = handle = None
            if ctx is not None:
                link = _AbortLink(conn)
                handle = ctx.add_done_callback(link)
            aborted = False
            try:
                _set_deadline(conn, deadline)  # every read and write ends by it, the dial too
                conn.request(
                    "POST", path, body=payload, headers={"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                data = resp.read(limit.max_bytes + 1)
                status = resp.status
                keep = not resp.will_close
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if ctx is not None:
                    done = ctx.err()
                    if done is not None:
                        raise done from None
                if reused and time.monotonic() < deadline:
                    continue  # a keep-alive connection the member closed: dial again
                raise MemberFailed(f"{type(exc).__name__}: {exc}") from None
            finally:
                if ctx is not None and handle is not None and link is not None:
                    ctx.remove_done_callback(handle)
                    aborted = link.cut()  # (a callback running late does nothing now)
            if keep and not aborted and len(data) <= limit.max_bytes:
                self._give(member, conn)
            else:
                conn.close()
            if time.monotonic() >= deadline:  # (the read may have used it all up)
                raise MemberFailed(f"{path} answered too late")
            return _decode(path, status, data, limit)
        raise MemberFailed("no connection")  # pragma: no cover (the loop always returns)

    def _connect(self, member: int, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = self._members[member]
        if scheme == "https":
            context = ssl.create_default_context()
            context.sslsocket_class = _DeadlineSSLSocket
            return _TLSConnection(host, port, timeout=timeout, context=context)
        return _Connection(host, port, timeout=timeout)

    def _take(self, member: int) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle[member]
            return idle.pop() if idle else None

    def _give(self, member: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[member]
            if not self._closed and len(idle) < MAX_IDLE_PER_MEMBER:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; requests after this still work (and close theirs)."""
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            for idle in self._idle.values():
                idle.clear()
        for c in conns:
            c.close()


class _Limits:
    """What one request's answer may be, and which refusals its caller tells apart."""

    __slots__ = ("compactable", "lease", "max_bytes", "max_items")

    def __init__(
        self, max_bytes: int, max_items: int | None, lease: bool, compactable: bool
    ) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_bytes // MAX_ITEMS_PER_BYTE + 64 if max_items is None else max_items
        self.lease = lease
        self.compactable = compactable


def _decode(path: str, status: int, data: bytes, limit: _Limits) -> Any:
    """The answer of a member, or the error it stands for (:class:`MemberFailed` for what
    etcd itself would not answer: another member may)."""
    if len(data) > limit.max_bytes:
        raise MemberFailed(f"{path} answered more than {limit.max_bytes} bytes")
    # Counting is a scan at memory speed; json.loads of a body of tiny values is not.
    items = data.count(b"[") + data.count(b"{") + data.count(b",")
    if items > limit.max_items:
        raise MemberFailed(
            f"{path} answered JSON divided too finely or nested too deeply "
            f"({items} values, more than {limit.max_items})"
        )
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        raise MemberFailed(f"{path} answered HTTP {status} with no JSON") from None
    except RecursionError:  # (nested deeper than the interpreter's stack: not etcd)
        raise MemberFailed(f"{path} answered HTTP {status} with JSON nested too deeply") from None
    if not isinstance(answer, dict):
        raise MemberFailed(f"{path} answered HTTP {status} with a JSON {type(answer).__name__}")
    if status == 200 and "error" not in answer:
        return answer
    error, code = answer.get("error"), answer.get("code")
    message = str(answer.get("message") or error)
    # etcd's own refusal of the request: HTTP 4xx carrying its error and gRPC code. The rest
    # (a redirect, 429, a proxy's 404, DeadlineExceeded, ResourceExhausted ("too many
    # requests"), Unavailable, 5xx) is a member that cannot serve now: another one may.
    refused = (
        400 <= status < 500
        and status != 429
        and isinstance(error, str)
        and isinstance(code, int)
        and code not in (4, 8, 14)
    )
    if not refused:
        raise MemberFailed(f"HTTP {status}: {message:.200}")
    if limit.lease and "lease not found" in message:
        raise LeaseNotFound(message)
    if limit.compactable and "required revision has been compacted" in message:
        raise RevisionCompacted(message)
    raise errors.InternalError(f"etcd: {path} failed: HTTP {status}: {message:.300}")
