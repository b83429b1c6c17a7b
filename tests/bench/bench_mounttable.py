"""The mount table's own line in ``make bench``: an etcd-backed replica next to the in-memory one.

For each store, one mount table server on 127.0.0.1 and one client: ResolveStep latency
(p50 / p99 of sequential calls on a name mounted three levels down) and Mount throughput
(sequential calls, each a new name, and from 8 threads). The etcd member is a real one,
started here like the tests start it. Never part of the test suite.

    python -m tests.bench.bench_mounttable [--seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable

from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.server.etcdstore import EtcdStore
from ipcclient.server.mounttable import MountTable
from tests.etcd_server import cluster
from tests.rpc.test_mounttable import Family, at, serving

THREADS = 8


def timed(seconds: float, op: Callable[[int], None]) -> list[float]:
    """Latencies (s) of ``op(i)`` run back to back for ``seconds``."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        op(i)
        out.append(time.perf_counter() - t0)
        i += 1
    return out


def measure(table: MountTable, seconds: float) -> dict[str, float]:
    family = Family()
    with contextlib.ExitStack() as stack:
        _, mt = serving(stack, family.member("mt"), table=table)
        client = Client(family.member("client"), roots=[mt])
        stack.callback(client.close)
        ctx = Context.background().with_timeout(600)
        svc = "/127.0.0.1:9000"
        client.call(ctx, at(mt, "bench/svc/a"), "Mount", svc, 600.0, 0)
        name = at(mt, "bench/svc/a/obj")
        for _ in range(50):
            client.call(ctx, name, "ResolveStep")
        lat = sorted(timed(seconds, lambda i: client.call(ctx, name, "ResolveStep") and None))
        run = uuid.uuid4().hex[:8]
        mounts = timed(
            seconds,
            lambda i: client.call(ctx, at(mt, f"m/{run}/{i}"), "Mount", svc, 600.0, 0) and None,
        )
        count = [0] * THREADS
        stop = time.perf_counter() + seconds

        def worker(t: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                client.call(ctx, at(mt, f"t/{run}/{t}/{i}"), "Mount", svc, 600.0, 0)
                i += 1
            count[t] = i

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    return {
        "resolve_p50_us": statistics.median(lat) * 1e6,
        "resolve_p99_us": lat[int(len(lat) * 0.99) - 1] * 1e6,
        "mounts_s": len(mounts) / sum(mounts),
        "mounts_s_8thr": sum(count) / elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    rows = [("memory", measure(MountTable(), args.seconds))]
    with cluster(1) as (member,):
        table = MountTable(store=EtcdStore(member.url, "/bench/"))
        try:
            rows.append(("etcd (1 member)", measure(table, args.seconds)))
        finally:
            table.close()
    out = sys.stdout
    out.write("| mount table store | resolve p50 us | resolve p99 us | mounts/s | ")
    out.write(f"mounts/s {THREADS} thr |\n|---|---:|---:|---:|---:|\n")
    for label, r in rows:
        out.write(
            f"| {label} | {r['resolve_p50_us']:.0f} | {r['resolve_p99_us']:.0f} | "
            f"{r['mounts_s']:,.0f} | {r['mounts_s_8thr']:,.0f} |\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
