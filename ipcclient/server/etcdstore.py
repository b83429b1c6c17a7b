"""A mount table store shared through etcd, so several mount table processes answer alike.

Owns: :class:`EtcdStore` (a :class:`~ipcclient.server.mountstore.MountStore`): the layout
of a mount table's keys in etcd and the reads, transactions and leases of each store
operation. It talks to etcd through :class:`~ipcclient.server.etcdgateway.EtcdGateway`
(re-exported here), which owns the HTTP side.

Layout under the prefix ``P`` (a mount table's keys and nothing else):

``P m/<name>\\x00<server>``
    One mount: ``<name>`` is the mounted name's components joined with ``/``, ``<server>``
    the mounted rooted name. The value is JSON ``{"e": expiry (Unix time), "mt": bool,
    "l": bool}``. The key is attached to a lease whose TTL covers the mount's TTL: etcd
    deletes it when the mount expires (no sweeper); a reader also ignores a key whose expiry
    passed before etcd reaped it. Mount order is the keys' creation revision, so a refresh
    (a put on the same key) keeps a server's place; an expired key not yet reaped is deleted
    before the server is mounted again, so that mount goes last (as in memory).
``P acl``
    The access lists, JSON ``{"mount": [...]|null, "resolve": [...]|null}``.

Resolution is one transaction of range reads (one per prefix of the name, the first with a
live server answers). Glob reads the keys below the name in pages (:data:`GLOB_PAGE_KEYS`
keys at most, fewer when the gateway's answers are bounded lower: every page fits; a
name's siblings that sort among its keys, ``a-b`` next to ``a``, are jumped over), all at
the revision of the first (read again from the start, at the current revision, when etcd
compacts that one meanwhile), and matches them as it goes (a
:class:`~ipcclient.server.mountstore.GlobScan`), so it holds one page and the answer, stops
reading once the answer is full (:data:`~ipcclient.server.mountstore.MAX_GLOB_RESULTS`
items, :data:`~ipcclient.server.mountstore.MAX_GLOB_BYTES`), and answers what the in-memory
store would for the same mounts. Mount is a read then a
transaction guarded by the name's revision (so MT / LEAF agreement and the per-name bound
hold whatever other replicas do at the same time; with REPLACE it deletes the name's servers
and puts the new one). A mount that adds a key counts the table's keys in the same
transaction and deletes its key again when other replicas took the table past
``max_mounts`` meanwhile. Unmount is one delete. A refresh is a put
with a lease that covers its TTL (leases have coarse TTLs, four steps per doubling, and are
shared by every mount they still cover, so a busy table does not grant one per mount).

The bounds are the in-memory store's but one: the bytes of the names and servers held
(:data:`~ipcclient.server.mountstore.MAX_TABLE_BYTES`) are not counted, since a replica holds
no mounts in memory and etcd cannot sum its keys' sizes in the transaction that mounts
(expiry through leases would leave any stored total behind). etcd holds at most
``max_mounts`` keys of at most a name and a server of 4096 characters each (~800 MiB for
100,000 mounts with ASCII names), within its own storage quota.

An answer from etcd that is not shaped as the gateway's JSON (a list where an object
belongs, a count that is not a number...) is :class:`~ipcclient.errors.InternalError`
naming what was malformed, never a bare Python error; a stored value that is not JSON (or
nested too deeply to decode) is a malformed mount (ignored, logged) or malformed access
lists (:class:`~ipcclient.errors.BadStateError`).

A request ends as soon as the call the store serves is done (the mount store's
``CALL_CONTEXT``: the client cancelled, or its deadline passed), with that call's error.

Must not: hold a lock across a request, block past a deadline, or import anything from
ipcclient but :mod:`ipcclient.errors`, the mount store and the etcd gateway.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ipcclient import errors
from ipcclient.server.etcdgateway import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_RESPONSE_BYTES,
    EtcdGateway,
    LeaseNotFound,
    RevisionCompacted,
    b64,
    prefix_end,
    unb64,
)
from ipcclient.server.mountstore import (
    CALL_CONTEXT,
    MAX_GLOB_BYTES,
    MAX_GLOB_RESULTS,
    MAX_NODES,
    MAX_SERVERS_PER_NAME,
    AccessLists,
    GlobScan,
    Resolved,
    flags_conflict,
    table_full,
    too_many_servers,
)

__all__ = [
    "ACCESS_REFRESH",
    "DEFAULT_PREFIX",
    "DEFAULT_REQUEST_TIMEOUT",
    "GLOB_PAGE_KEYS",
    "EtcdGateway",
    "EtcdStore",
]

log = logging.getLogger("ipcclient.mounttable.etcd")

DEFAULT_PREFIX = "/ipcclient/mounttable/"
"""Where a table's keys live when no prefix is given."""
ACCESS_REFRESH = 1.0
"""Seconds a table reuses the access lists it read: a change reaches every replica within
this long."""
LEASE_REUSE = 1.0
"""Seconds a lease must outlast the mount it is given to (readers go by each mount's own
expiry)."""
MAX_TXN_ATTEMPTS = 8
"""Times a Mount re-reads and retries when other replicas change the same name meanwhile."""
GLOB_PAGE_KEYS = 512
"""Keys one page of a Glob's range read holds at most (~0.3 MiB for names of a few dozen
characters and endpoints of 200; at most 24 MiB, within the gateway's 32 MiB)."""
GLOB_RESTARTS = 3
"""Times a Glob starts its scan again, at the current revision, when etcd compacted the
revision its pages are read at; then OverloadedError (RETRY_BACKOFF)."""
MAX_KV_BYTES = 48 * 1024
"""Bytes one mount takes at most in a range answer, beyond twice its key's prefix: a name
and a server of 4096 characters each (16 KiB each in UTF-8 at worst), in base64, with the
JSON around them. A Glob page holds as many keys as fit in the gateway's bound at this
size."""
SMALL_ANSWER_BYTES = 256 * 1024
"""Bytes an answer holding no key-value (a write, a count, a lease) takes at most: the
bound of every answer beyond what its key-values take."""
SMALL_ANSWER_ITEMS = 1024
"""JSON values an answer holding no key-value takes at most (its headers and responses)."""
MAX_ACCESS_BYTES = 1024 * 1024
"""Bytes the stored access lists may take (as JSON); larger ones are refused (BadArg)."""
MAX_VALUE_BYTES = 256
"""Bytes a mount's stored value takes at most (``{"e": ..., "mt": ..., "l": ...}``); a
larger one is malformed (not decoded)."""

_MAX_LEASE_CACHE = 64


_NUMBER = re.compile(r"-?[0-9]{1,20}")  # (the gateway writes int64 as decimal strings)


def _malformed(what: str) -> errors.InternalError:
    return errors.InternalError(f"mount table: etcd answered malformed JSON: {what}")


def _obj(value: object, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object, else InternalError naming ``what``."""
    if not isinstance(value, dict):
        raise _malformed(f"{what} is a {type(value).__name__}, not an object")
    return value


def _items(value: object, what: str) -> list[Any]:
    """``value`` when it is a JSON list, else InternalError naming ``what``."""
    if not isinstance(value, list):
        raise _malformed(f"{what} is a {type(value).__name__}, not a list")
    return value


def _number(value: object, what: str) -> int:
    """An int64 of the gateway's (a number or a decimal string), else InternalError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return int(value)
    raise _malformed(f"{what} is not a number: {value!r:.40}")


def _ranges(answer: dict[str, Any], count: int, what: str) -> list[dict[str, Any]]:
    """The ``response_range`` of each of the ``count`` range reads of a txn answer."""
    responses = _items(answer.get("responses", []), f"{what} responses")
    if len(responses) != count:
        raise _malformed(f"{what} answered {len(responses)} responses, not {count}")
    return [
        _obj(_obj(r, f"{what} response").get("response_range", {}), f"{what} response_range")
        for r in responses
    ]


@dataclass(frozen=True)
class _Mount:
    path: str
    server: str
    expires: float
    mt: bool
    leaf: bool
    created: int


class EtcdStore:
    """Mounts and access lists in etcd under ``prefix``: every table on the same cluster and
    prefix sees the same names at once.

    Args:
        endpoints: the etcd members' client URLs (``http://host:2379``), a list or a
            comma-separated str; the store fails over between them.
        prefix: the key prefix of this table (a ``/`` is added when it does not end in one).
        request_timeout: seconds an operation may take when the call has no deadline.
        max_mounts: the most mounts the table may hold.
        max_servers_per_name: the most servers at one name.
        clock: the wall clock mounts expire on (shared by every replica: keep their clocks
            in sync, as etcd's own leases already need).
        max_response_bytes: the largest answer read from etcd (Glob pages are sized to
            fit in it).
    """

    access_refresh = ACCESS_REFRESH

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_mounts: int = MAX_NODES,
        max_servers_per_name: int = MAX_SERVERS_PER_NAME,
        clock: Callable[[], float] = time.time,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        for value in (max_mounts, max_servers_per_name, request_timeout):
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise errors.BadArgError(
                    f"mount table: bounds must be positive numbers, got {value!r:.40}"
                )
        if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
            raise errors.BadArgError(f"etcd: bad prefix {prefix!r}")
        if not prefix.endswith("/"):
            prefix += "/"
        self._gw = EtcdGateway(
            endpoints, timeout=request_timeout, max_response_bytes=max_response_bytes
        )
        kv_bytes = MAX_KV_BYTES + 2 * len(prefix.encode())
        self._kv_bytes = kv_bytes
        self._page_keys = max(1, min(GLOB_PAGE_KEYS, max_response_bytes // kv_bytes))
        # Keys one name may hold: its live servers, and as many again (and more) whose
        # mounts expired and whose leases etcd has not ended yet.
        self._name_keys = 4 * max_servers_per_name + 16
        self._timeout = request_timeout
        self._prefix = prefix.encode()
        self._mounts_key = self._prefix + b"m/"
        self._acl_key = self._prefix + b"acl"
        self._max_mounts = max_mounts
        self._max_servers = max_servers_per_name
        self._clock = clock
        self._lock = threading.Lock()  # guards the lease cache only
        self._leases: dict[int, tuple[str, float]] = {}

    @property
    def prefix(self) -> str:
        """The key prefix (ending in ``/``)."""
        return self._prefix.decode()

    @property
    def gateway(self) -> EtcdGateway:
        """The gateway client (its endpoints, ``close``)."""
        return self._gw

    # -- keys ------------------------------------------------------------------------------

    def _node_key(self, comps: tuple[str, ...]) -> bytes:
        path = "/".join(comps)
        if "\x00" in path:
            raise errors.BadArgError("mount table: a name may not contain NUL")
        return self._mounts_key + _utf8(path, "a name") + b"\x00"

    def _node_range(self, comps: tuple[str, ...]) -> dict[str, Any]:
        key = self._node_key(comps)
        return {"key": b64(key), "range_end": b64(key[:-1] + b"\x01")}

    def _parse(self, item: object) -> _Mount | None:
        """One key-value of a range answer; None (logged) for a key this table did not
        write as a mount. A key-value not shaped as the gateway's is InternalError."""
        kv = _obj(item, "a key-value")
        key = _key(kv)[len(self._mounts_key) :]
        created = _number(kv.get("create_revision", 0), "create_revision")
        path, sep, server = key.partition(b"\x00")
        try:
            raw = unb64(kv.get("value"))
            if len(raw) > MAX_VALUE_BYTES:
                raise ValueError("too long")
            value = json.loads(raw)
            expires = value["e"]
            if isinstance(expires, bool) or not isinstance(expires, int | float):
                raise TypeError("the expiry is not a number")
            expires = float(expires)  # (OverflowError for an int beyond a float's range)
            if not math.isfinite(expires):
                raise ValueError("the expiry is not finite")
            mount = _Mount(
                path.decode(),
                server.decode(),
                expires,
                bool(value["mt"]),
                bool(value["l"]),
                created,
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            UnicodeDecodeError,
            RecursionError,
            OverflowError,
        ):
            mount = None
        if mount is None or not sep or not server:
            log.warning("mount table: ignoring a malformed key in etcd: %r", key[:200])
            return None
        return mount

    def _budget(self, keys: int, ranges: int = 1) -> dict[str, int]:
        """The bounds of an answer holding up to ``keys`` key-values (each counted at its
        largest) in ``ranges`` responses. With key-values, only its bytes: the JSON values
        it may hold follow from those (the gateway's ``MAX_ITEMS_PER_BYTE``), since real
        keys are far smaller than their largest and a name may hold more of them."""
        if not keys:
            return {"max_bytes": SMALL_ANSWER_BYTES, "max_items": SMALL_ANSWER_ITEMS + 16 * ranges}
        return {"max_bytes": SMALL_ANSWER_BYTES + keys * self._kv_bytes}

    def _live(self, response: dict[str, Any], now: float) -> list[_Mount]:
        """The live mounts of a range response, in mount order."""
        found = (self._parse(kv) for kv in _items(response.get("kvs", []), "kvs"))
        return sorted(
            (m for m in found if m is not None and m.expires > now), key=lambda m: m.created
        )

    # -- requests --------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _request(
        self,
        path: str,
        body: dict[str, Any],
        deadline: float,
        bounds: dict[str, int] | None = None,
        *,
        lease: bool = False,
    ) -> Any:
        """One gateway request; its answer bounded by ``bounds`` (:meth:`_budget`; default:
        no key-value). ``lease``: it carries a lease (LeaseNotFound is then possible)."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.TimeoutError(f"mount table: no time left for etcd {path}")
        with self._gw.bounded(lease=lease, **(bounds or self._budget(0))):
            return self._gw.request(path, body, left, ctx=CALL_CONTEXT.get())

    def _txn(
        self,
        deadline: float,
        success: list[dict[str, Any]],
        bounds: dict[str, int] | None = None,
        *,
        lease: bool = False,
        **extra: Any,
    ) -> Any:
        body = {"success": success, **extra}
        return self._request("/v3/kv/txn", body, deadline, bounds, lease=lease)

    def _lease(self, seconds: float, deadline: float) -> str:
        ttl = _lease_ttl(seconds + LEASE_REUSE)
        now = time.monotonic()
        with self._lock:
            hit = self._leases.get(ttl)
            # (the lease's time counts from before it was asked for: it lasts no less)
            if hit is not None and now - hit[1] + seconds + LEASE_REUSE <= ttl:
                return hit[0]
        answer = self._request("/v3/lease/grant", {"TTL": ttl}, deadline)
        lease = str(answer.get("ID", ""))
        if not lease or lease == "0":
            raise errors.InternalError(f"etcd: lease grant answered no ID: {answer!r}"[:300])
        with self._lock:
            if len(self._leases) >= _MAX_LEASE_CACHE:
                self._leases.clear()
            self._leases[ttl] = (lease, now)
        return lease

    def _forget_leases(self) -> None:
        with self._lock:
            self._leases.clear()

    # -- MountStore ------------------------------------------------------------------------

    def mount(
        self,
        comps: tuple[str, ...],
        server: str,
        seconds: float,
        *,
        mt: bool,
        leaf: bool,
        replace: bool,
        timeout: float | None = None,
    ) -> None:
        deadline = self._deadline(timeout)
        node = self._node_range(comps)
        key = b64(self._node_key(comps) + _utf8(server, "a server"))
        all_mounts = {
            "key": b64(self._mounts_key),
            "range_end": b64(prefix_end(self._mounts_key)),
            "count_only": True,
        }
        for attempt in range(MAX_TXN_ATTEMPTS):
            if attempt:  # another replica changed the name meanwhile: back off a little
                pause = random.uniform(0, 0.01 * attempt)
                if time.monotonic() + pause < deadline:
                    time.sleep(pause)
            read = self._txn(
                deadline,
                [{"request_range": node}, {"request_range": all_mounts}],
                self._budget(self._name_keys, 2),
            )
            mine, counted = _ranges(read, 2, "/v3/kv/txn")
            total = _number(counted.get("count", 0), "count")
            revision = _number(_obj(read.get("header", {}), "header").get("revision"), "revision")
            now = self._clock()
            kvs = _items(mine.get("kvs", []), "kvs")
            present = {b64(_key(_obj(kv, "a key-value"))) for kv in kvs}
            live = [] if replace else self._live(mine, now)
            if live:
                flags_conflict(comps, (live[0].mt, live[0].leaf), (mt, leaf))
            if server not in {m.server for m in live} and len(live) >= self._max_servers:
                raise too_many_servers(comps, self._max_servers)
            # Whether this mount adds a key to the table (a REPLACE of a name with servers
            # takes one away too).
            grows = not present if replace else key not in present
            if grows and total >= self._max_mounts:
                raise table_full(self._max_mounts, "mounts")
            guard = {
                "key": node["key"],
                "range_end": node["range_end"],
                "target": "MOD",
                "result": "LESS",
                "mod_revision": str(revision + 1),
            }
            if not replace and key in present and server not in {m.server for m in live}:
                # The server's mount expired and etcd has not reaped its key yet: a put would
                # keep the old key's creation revision, so the new mount would keep its old
                # place. Delete the stale key first; the mount is then a new one and goes
                # last, as in memory.
                delete = {"request_delete_range": {"key": key}}
                self._txn(deadline, [delete], compare=[guard])
                continue
            value = json.dumps({"e": now + seconds, "mt": mt, "l": leaf}).encode()
            put = {"request_put": {"key": key, "value": b64(value), "lease": ""}}
            # The count after the put, read in the same transaction: other replicas may have
            # added keys since the read above (the guard covers this name only).
            count = {"request_range": all_mounts}
            ops: list[dict[str, Any]] = [put, count]
            if replace:
                # etcd refuses a put inside a range the same txn deletes: delete around it.
                raw = unb64(key)
                ops = [
                    {"request_delete_range": {"key": node["key"], "range_end": key}},
                    {
                        "request_delete_range": {
                            "key": b64(raw + b"\x00"),
                            "range_end": node["range_end"],
                        }
                    },
                    put,
                    count,
                ]
            try:
                put["request_put"]["lease"] = self._lease(seconds, deadline)
                answer = self._txn(
                    deadline, ops, self._budget(0, len(ops)), lease=True, compare=[guard]
                )
            except LeaseNotFound:
                self._forget_leases()
                continue
            if answer.get("succeeded"):
                if grows:
                    self._undo_if_full(answer, len(ops), key, deadline)
                return
        raise errors.OverloadedError(
            f"mount table: {'/'.join(comps)!r} kept changing under this mount; try again",
            action=errors.RetryAction.RETRY_BACKOFF,
        )

    def _undo_if_full(self, answer: Any, ops: int, key: str, deadline: float) -> None:
        """After a mount added ``key`` in the txn that answered ``answer`` (its last of
        ``ops`` responses the table's count): when other replicas' mounts meanwhile took
        the table past its bound, delete the key again (unless a later put made it anew)
        and raise the full table's error. Racing mounts may all go back; none goes over."""
        counted = _ranges(answer, ops, "/v3/kv/txn")[-1]
        if _number(counted.get("count", 0), "count") <= self._max_mounts:
            return
        revision = _number(_obj(answer.get("header", {}), "header").get("revision"), "revision")
        mine = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}
        self._txn(deadline, [{"request_delete_range": {"key": key}}], compare=[mine])
        raise table_full(self._max_mounts, "mounts")

    def unmount(self, comps: tuple[str, ...], server: str, *, timeout: float | None = None) -> None:
        deadline = self._deadline(timeout)
        if server:
            target = {"key": b64(self._node_key(comps) + _utf8(server, "a server"))}
        else:
            target = self._node_range(comps)
        self._request("/v3/kv/deleterange", target, deadline)

    def resolve(self, comps: tuple[str, ...], *, timeout: float | None = None) -> Resolved | None:
        if not comps:
            return None  # nothing is mounted at the root of a table
        deadline = self._deadline(timeout)
        ops = [{"request_range": self._node_range(comps[:i])} for i in range(1, len(comps) + 1)]
        answer = self._txn(deadline, ops, self._budget(len(ops) * self._name_keys, len(ops)))
        now = self._clock()
        for i, response in enumerate(_ranges(answer, len(ops), "/v3/kv/txn")):
            live = self._live(response, now)
            if live:
                return Resolved(
                    i + 1,
                    tuple((m.server, max(0.0, m.expires - now)) for m in live),
                    live[0].mt,
                    live[0].leaf,
                )
        return None

    def glob(
        self,
        comps: tuple[str, ...],
        pattern: tuple[str, ...],
        *,
        limit: int = MAX_GLOB_RESULTS,
        max_bytes: int = MAX_GLOB_BYTES,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        deadline = self._deadline(timeout)
        if comps:
            name = self._node_key(comps)[:-1]
            # The name's own keys, then those of the names below it ("/" sorts before "0").
            # Siblings such as "a-b" next to "a" sort in between: the scan jumps over them
            # (one page may hold some, never more), and reads the range in as few pages as
            # when there are none.
            span = (name + b"\x00", name + b"0")
            skip: tuple[bytes, bytes] | None = (name + b"\x01", name + b"/")
        else:
            span, skip = (self._mounts_key, prefix_end(self._mounts_key)), None
        for _ in range(GLOB_RESTARTS):
            try:
                return self._glob_at_one_revision(
                    comps, pattern, span, skip, limit, max_bytes, deadline
                )
            except RevisionCompacted:
                # Other writes and etcd's compaction overtook the scan: start it again, at
                # the current revision.
                log.info("mount table: etcd compacted a Glob's revision; scanning again")
        raise errors.OverloadedError(
            "mount table: etcd compacted each revision a Glob read at; try again",
            action=errors.RetryAction.RETRY_BACKOFF,
        )

    def _glob_at_one_revision(
        self,
        comps: tuple[str, ...],
        pattern: tuple[str, ...],
        span: tuple[bytes, bytes],
        skip: tuple[bytes, bytes] | None,
        limit: int,
        max_bytes: int,
        deadline: float,
    ) -> list[dict[str, Any]]:
        """Glob over the keys of ``span`` but ``skip``, read in pages all at the first's
        revision.

        Raises:
            RevisionCompacted: etcd compacted that revision before the last page.
        """
        base = "/".join(comps)
        now = self._clock()
        scan = GlobScan(pattern, limit, max_bytes)
        group: list[_Mount] = []  # the keys of one name (they may span pages)

        def flush() -> None:
            live = sorted((m for m in group if m.expires > now), key=lambda m: m.created)
            if live:
                rel = _relative(live[0].path, base, bool(comps))
                if rel is not None:
                    servers = [(m.server, m.expires) for m in live]
                    scan.add(rel, servers, live[0].mt, live[0].leaf, now)
            group.clear()

        revision: int | None = None
        start, end = span
        while not scan.full():
            body: dict[str, Any] = {
                "key": b64(start),
                "range_end": b64(end),
                "limit": self._page_keys,
            }
            if revision is not None:  # (every page from the same revision: one snapshot)
                body["revision"] = str(revision)
            answer = self._request("/v3/kv/range", body, deadline, self._budget(self._page_keys))
            if revision is None:
                header = _obj(answer.get("header", {}), "header")
                revision = _number(header.get("revision"), "revision")
            kvs = _items(answer.get("kvs", []), "kvs")
            for kv in kvs:
                if skip is not None and skip[0] <= _key(_obj(kv, "a key-value")) < skip[1]:
                    continue
                mount = self._parse(kv)
                if mount is None:
                    continue
                if group and mount.path != group[0].path:
                    flush()
                    if scan.full():
                        return scan.items
                group.append(mount)
            more = answer.get("more", False)
            if not isinstance(more, bool):
                raise _malformed(f"more is a {type(more).__name__}, not a bool")
            if not more or not kvs:
                break
            following = _key(_obj(kvs[-1], "a key-value")) + b"\x00"
            if following <= start:
                raise _malformed("a page of a range read did not move past its start")
            if skip is not None and skip[0] <= following < skip[1]:
                following = skip[1]
            start = following
        flush()
        return scan.items

    def sweep(self) -> int:
        """etcd expires mounts itself (leases): this only counts them."""
        return self.size()

    def size(self) -> int:
        deadline = self._deadline(None)
        answer = self._request(
            "/v3/kv/range",
            {
                "key": b64(self._mounts_key),
                "range_end": b64(prefix_end(self._mounts_key)),
                "count_only": True,
            },
            deadline,
        )
        return _number(answer.get("count", 0), "count")

    def get_access(self, *, timeout: float | None = None) -> AccessLists | None:
        answer = self._request(
            "/v3/kv/range", {"key": b64(self._acl_key)}, self._deadline(timeout), self._acl_budget()
        )
        kvs = _items(answer.get("kvs", []), "kvs")
        return self._acl_of(kvs[0]) if kvs else None

    def set_access(
        self, acl: AccessLists, *, only_if_absent: bool = False, timeout: float | None = None
    ) -> AccessLists:
        deadline = self._deadline(timeout)
        value = json.dumps(acl.to_json()).encode()
        if len(value) > MAX_ACCESS_BYTES:
            raise errors.BadArgError(f"mount table: access lists over {MAX_ACCESS_BYTES} bytes")
        put = {"request_put": {"key": b64(self._acl_key), "value": b64(value)}}
        if not only_if_absent:
            self._txn(deadline, [put])
            return acl
        absent = {
            "key": b64(self._acl_key),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": "0",
        }
        answer = self._txn(
            deadline,
            [put],
            self._acl_budget(),
            compare=[absent],
            failure=[{"request_range": {"key": b64(self._acl_key)}}],
        )
        if answer.get("succeeded"):
            return acl
        (read,) = _ranges(answer, 1, "/v3/kv/txn")
        kvs = _items(read.get("kvs", []), "kvs")
        return self._acl_of(kvs[0]) if kvs else acl

    def _acl_budget(self) -> dict[str, int]:
        """The bounds of an answer holding the access lists (in base64: 4/3 their size)."""
        return {
            "max_bytes": SMALL_ANSWER_BYTES + 2 * MAX_ACCESS_BYTES,
            "max_items": SMALL_ANSWER_ITEMS,
        }

    def _acl_of(self, item: object) -> AccessLists:
        kv = _obj(item, "a key-value")
        try:
            value = json.loads(unb64(kv.get("value")))
        except (ValueError, RecursionError):
            raise errors.BadStateError("mount table: stored access lists are not JSON") from None
        return AccessLists.from_json(value)

    def close(self) -> None:
        self._gw.close()


def _utf8(text: str, what: str) -> bytes:
    """``text`` in UTF-8; BadArg when it cannot be (a lone surrogate)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise errors.BadArgError(f"mount table: {what} is not valid Unicode") from None


def _lease_ttl(seconds: float) -> int:
    """The TTL of a lease granted for mounts of ``seconds``: the first of 4, 5, 6, 7, 8, 10,
    12, 14, 16, 20, ... (four steps per doubling) of at least 1.25 times that. Mounts with
    different TTLs so share leases, and a lease covers further mounts for at least a
    quarter of ``seconds`` after its grant (:meth:`EtcdStore._lease`): a busy table holds a
    few leases per step, whatever TTLs its publishers ask for. A key outlives its mount by
    less than its TTL and 5 s."""
    need = max(4, math.ceil(1.25 * seconds))
    shift = max(0, need.bit_length() - 3)  # need is in [4 << shift, 8 << shift)
    return -(-need // (1 << shift)) << shift


def _relative(path: str, base: str, below: bool) -> tuple[str, ...] | None:
    """The components of the mounted name ``path`` relative to ``base`` (a Glob's name;
    ``below``: it is not the table's root), or None for a name not below it (a sibling
    such as ``a-b`` next to ``a``) or not one a mount could have (an empty component)."""
    if below:
        if path == base:
            return ()
        if not path.startswith(base + "/"):
            return None
        path = path[len(base) + 1 :]
    rel = tuple(path.split("/"))
    return None if "" in rel else rel


def _key(kv: dict[str, Any]) -> bytes:
    """The key of a key-value (base64 in the gateway's JSON)."""
    try:
        return unb64(kv.get("key"))
    except ValueError:
        raise _malformed("a key is not base64") from None
