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
keys at most, fewer when the gateway's answers are bounded lower: every page fits), all at
the revision of the first, and matches them as it goes (a
:class:`~ipcclient.server.mountstore.GlobScan`), so it holds one page and the answer, stops
reading once the answer is full (:data:`~ipcclient.server.mountstore.MAX_GLOB_RESULTS`
items, :data:`~ipcclient.server.mountstore.MAX_GLOB_BYTES`), and answers what the in-memory
store would for the same mounts. Mount is a read then a
transaction guarded by the name's revision (so MT / LEAF agreement and the per-name bound
hold whatever other replicas do at the same time); Mount with REPLACE is one transaction that
deletes the name's servers and puts the new one; Unmount is one delete. A refresh is a put
with a fresh lease (leases are shared by the mounts of one second with the same TTL, so a
busy table does not grant one per mount).

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
    b64,
    prefix_end,
    unb64,
)
from ipcclient.server.mountstore import (
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
"""Seconds a granted lease is reused for further mounts with the same TTL (its TTL covers
the difference; readers go by each mount's own expiry)."""
MAX_TXN_ATTEMPTS = 8
"""Times a Mount re-reads and retries when other replicas change the same name meanwhile."""
GLOB_PAGE_KEYS = 512
"""Keys one page of a Glob's range read holds at most (~0.3 MiB for names of a few dozen
characters and endpoints of 200; at most 24 MiB, within the gateway's 64 MiB)."""
MAX_KV_BYTES = 48 * 1024
"""Bytes one mount takes at most in a range answer, beyond twice its key's prefix: a name
and a server of 4096 characters each (16 KiB each in UTF-8 at worst), in base64, with the
JSON around them. A Glob page holds as many keys as fit in the gateway's bound at this
size."""
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
        if max_mounts < 1 or max_servers_per_name < 1 or not request_timeout > 0:
            raise errors.BadArgError("mount table: bounds must be positive")
        if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
            raise errors.BadArgError(f"etcd: bad prefix {prefix!r}")
        if not prefix.endswith("/"):
            prefix += "/"
        self._gw = EtcdGateway(
            endpoints, timeout=request_timeout, max_response_bytes=max_response_bytes
        )
        kv_bytes = MAX_KV_BYTES + 2 * len(prefix.encode())
        self._page_keys = max(1, min(GLOB_PAGE_KEYS, max_response_bytes // kv_bytes))
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
        return self._mounts_key + path.encode() + b"\x00"

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
            value = json.loads(unb64(kv.get("value")))
            mount = _Mount(
                path.decode(),
                server.decode(),
                float(value["e"]),
                bool(value["mt"]),
                bool(value["l"]),
                created,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            mount = None
        if mount is None or not sep or not server:
            log.warning("mount table: ignoring a malformed key in etcd: %r", key[:200])
            return None
        return mount

    def _live(self, response: dict[str, Any], now: float) -> list[_Mount]:
        """The live mounts of a range response, in mount order."""
        found = (self._parse(kv) for kv in _items(response.get("kvs", []), "kvs"))
        return sorted(
            (m for m in found if m is not None and m.expires > now), key=lambda m: m.created
        )

    # -- requests --------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _request(self, path: str, body: dict[str, Any], deadline: float) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.TimeoutError(f"mount table: no time left for etcd {path}")
        return self._gw.request(path, body, left)

    def _txn(self, deadline: float, success: list[dict[str, Any]], **extra: Any) -> Any:
        return self._request("/v3/kv/txn", {"success": success, **extra}, deadline)

    def _lease(self, seconds: float, deadline: float) -> str:
        ttl = math.ceil(seconds + LEASE_REUSE)
        now = time.monotonic()
        with self._lock:
            hit = self._leases.get(ttl)
            if hit is not None and now - hit[1] < LEASE_REUSE:
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
        key = b64(self._node_key(comps) + server.encode())
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
            read = self._txn(deadline, [{"request_range": node}, {"request_range": all_mounts}])
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
            if key not in present and total >= self._max_mounts:
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
            try:
                put["request_put"]["lease"] = self._lease(seconds, deadline)
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
                    ]
                    self._txn(deadline, ops)
                    return
                answer = self._txn(deadline, [put], compare=[guard])
            except LeaseNotFound:
                self._forget_leases()
                continue
            if answer.get("succeeded"):
                return
        raise errors.OverloadedError(
            f"mount table: {'/'.join(comps)!r} kept changing under this mount; try again",
            action=errors.RetryAction.RETRY_BACKOFF,
        )

    def unmount(self, comps: tuple[str, ...], server: str, *, timeout: float | None = None) -> None:
        deadline = self._deadline(timeout)
        if server:
            target = {"key": b64(self._node_key(comps) + server.encode())}
        else:
            target = self._node_range(comps)
        self._request("/v3/kv/deleterange", target, deadline)

    def resolve(self, comps: tuple[str, ...], *, timeout: float | None = None) -> Resolved | None:
        if not comps:
            return None  # nothing is mounted at the root of a table
        deadline = self._deadline(timeout)
        ops = [{"request_range": self._node_range(comps[:i])} for i in range(1, len(comps) + 1)]
        answer = self._txn(deadline, ops)
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
            # The name's own keys, then those of the names below it ("/" sorts before "0");
            # a sibling such as "a-b" next to "a" falls in between and is left out below.
            start, end = name + b"\x00", name + b"0"
        else:
            start, end = self._mounts_key, prefix_end(self._mounts_key)
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
        while not scan.full():
            body: dict[str, Any] = {
                "key": b64(start),
                "range_end": b64(end),
                "limit": self._page_keys,
            }
            if revision is not None:  # (every page from the same revision: one snapshot)
                body["revision"] = str(revision)
            answer = self._request("/v3/kv/range", body, deadline)
            if revision is None:
                header = _obj(answer.get("header", {}), "header")
                revision = _number(header.get("revision"), "revision")
            kvs = _items(answer.get("kvs", []), "kvs")
            for kv in kvs:
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
        answer = self._request("/v3/kv/range", {"key": b64(self._acl_key)}, self._deadline(timeout))
        kvs = _items(answer.get("kvs", []), "kvs")
        return self._acl_of(kvs[0]) if kvs else None

    def set_access(
        self, acl: AccessLists, *, only_if_absent: bool = False, timeout: float | None = None
    ) -> AccessLists:
        deadline = self._deadline(timeout)
        put = {
            "request_put": {
                "key": b64(self._acl_key),
                "value": b64(json.dumps(acl.to_json()).encode()),
            }
        }
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
            compare=[absent],
            failure=[{"request_range": {"key": b64(self._acl_key)}}],
        )
        if answer.get("succeeded"):
            return acl
        (read,) = _ranges(answer, 1, "/v3/kv/txn")
        kvs = _items(read.get("kvs", []), "kvs")
        return self._acl_of(kvs[0]) if kvs else acl

    def _acl_of(self, item: object) -> AccessLists:
        kv = _obj(item, "a key-value")
        try:
            value = json.loads(unb64(kv.get("value")))
        except (ValueError, RecursionError):
            raise errors.BadStateError("mount table: stored access lists are not JSON") from None
        return AccessLists.from_json(value)

    def close(self) -> None:
        self._gw.close()


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
