"""``make bench``: ipcclient beside its peers in one run, reported as ratios to the targets.

Runs the anchors' harness (``../shared/bench-anchors``) for gRPC sync (insecure and TLS),
Pyro5 (msgpack) and the raw cbor2 + AEAD multiplexed socket, and ``bench_ipcclient.py`` for
ipcclient, interleaved over rounds, each system in its own processes on 127.0.0.1. Prints the
medians and the ratios the project is held to. Never part of the test suite.

    python -m tests.bench.run [--rounds 3] [--seconds 3] [--only ipcclient,grpc] [--pin]

``--pin`` runs everything (the driver, each client and each server process) on CPU 0, where
waking a thread on another CPU costs nothing; without it the scheduler is free. The CPU model
is printed with every table. ``ipcclient-nopoll`` is ipcclient with busy polling off on both
sides (``TransportOptions(busy_poll=0)``), ``ipcclient-alwayspoll`` with polling whenever the
rules allow (``busy_poll_adapt=False``: no judging whether it pays); the ``-compiled`` rows
are the same adapter run from the copy whose hot modules are compiled by mypyc
(``tests/compiled/build.py``).

First it prints the mount table's own line (``bench_mounttable.py``: resolve latency and
mounts/s through an etcd-backed replica next to the in-memory one; ``--only mounttable``
runs only that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ANCHORS = os.environ.get(
    "IPCCLIENT_BENCH_ANCHORS", os.path.join(os.path.dirname(REPO), "shared", "bench-anchors")
)
COMPILED = os.path.join(REPO, "build", "compiled", "tests", "bench", "bench_ipcclient.py")
"""The adapter in the copy whose hot modules are compiled by mypyc. ``make bench`` builds the
copy first (``tests.compiled.build``); run directly, this measures whatever copy is there
(build it again after a change); without one the compiled rows are left out."""
SUITE = [
    ("ipcclient", os.path.join(HERE, "bench_ipcclient.py"), "default"),
    ("ipcclient-nopoll", os.path.join(HERE, "bench_ipcclient.py"), "nopoll"),
    ("ipcclient-alwayspoll", os.path.join(HERE, "bench_ipcclient.py"), "alwayspoll"),
    ("ipcclient-compiled", COMPILED, "default"),
    ("ipcclient-compiled-nopoll", COMPILED, "nopoll"),
    ("grpc", os.path.join(ANCHORS, "bench_grpc.py"), "insecure"),
    ("grpc-tls", os.path.join(ANCHORS, "bench_grpc.py"), "tls"),
    ("pyro5-msgpack", os.path.join(ANCHORS, "bench_pyro5.py"), "msgpack"),
    ("raw-mux", os.path.join(ANCHORS, "bench_raw.py"), "cbor+chacha+mux"),
]
COLUMNS = [
    ("1: p50 us", "w1", "p50_us", "{:.0f}"),
    ("1: p99 us", "w1", "p99_us", "{:.0f}"),
    ("1: client CPU us", "w1", "client_cpu_us", "{:.0f}"),
    ("1: server CPU us", "w1", "server_cpu_us", "{:.0f}"),
    ("1: client+server CPU us", "w1", "total_cpu_us", "{:.0f}"),
    ("2: 8 thr calls/s", "w2", "calls_s", "{:,.0f}"),
    ("3: 1 MiB MiB/s", "w3", "MiB_s", "{:,.0f}"),
    ("4: stream msgs/s", "w4", "msgs_s", "{:,.0f}"),
    ("5: connect ms", "w5", "median_ms", "{:.2f}"),
]
# (what, ipcclient metric, peer, peer metric, target ratio, higher is better)
TARGETS = [
    ("unary p50 vs Pyro5 msgpack (<= 1.0)", ("w1", "p50_us"), "pyro5-msgpack", 1.0, False),
    ("client CPU vs raw mux (<= 1.35)", ("w1", "client_cpu_us"), "raw-mux", 1.35, False),
    ("8 threads vs gRPC sync (>= 3.5)", ("w2", "calls_s"), "grpc", 3.5, True),
    ("streaming vs gRPC sync (>= 7)", ("w4", "msgs_s"), "grpc", 7.0, True),
    ("1 MiB bulk vs gRPC TLS (>= 1.3)", ("w3", "MiB_s"), "grpc-tls", 1.3, True),
    ("client+server CPU vs raw mux (<= 1.35)", ("w1", "total_cpu_us"), "raw-mux", 1.35, False),
    ("client+server CPU vs Pyro5 (<= 1.0)", ("w1", "total_cpu_us"), "pyro5-msgpack", 1.0, False),
    ("8 threads vs Pyro5 msgpack (>= 1.3)", ("w2", "calls_s"), "pyro5-msgpack", 1.3, True),
    ("connect + first call, ms (<= 1 ms)", ("w5", "median_ms"), None, 1.0, False),
]
OURS = (
    "ipcclient",
    "ipcclient-nopoll",
    "ipcclient-alwayspoll",
    "ipcclient-compiled",
    "ipcclient-compiled-nopoll",
)


def cpu_model() -> str:
    """The CPU model as /proc/cpuinfo names it (every figure is printed beside it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run_one(script: str, variant: str, seconds: float) -> dict[str, Any] | None:
    cmd = [sys.executable, script, "--variant", variant, "--seconds", str(seconds)]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(script)
        )
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"  TIMEOUT {script} {variant}\n")
        return None
    if out.returncode != 0:
        sys.stderr.write(f"  FAILED {script} {variant}:\n{out.stderr[-2000:]}\n")
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    w1 = result.get("w1")
    if w1 and w1.get("client_cpu_us") is not None and w1.get("server_cpu_us") is not None:
        w1["total_cpu_us"] = w1["client_cpu_us"] + w1["server_cpu_us"]
    return result


def run_mounttable(seconds: float) -> None:
    """The mount table's line: an etcd-backed replica next to the in-memory one."""
    cmd = [sys.executable, "-m", "tests.bench.bench_mounttable", "--seconds", str(seconds)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    except subprocess.TimeoutExpired:
        sys.stderr.write("  TIMEOUT bench_mounttable\n")
        return
    if out.returncode != 0:
        sys.stderr.write(f"  FAILED bench_mounttable:\n{out.stderr[-2000:]}\n")
        return
    sys.stdout.write(out.stdout + "\n")
    sys.stdout.flush()


def median(runs: list[dict[str, Any] | None], w: str, k: str) -> float | None:
    vals = [r[w][k] for r in runs if r and r.get(w)]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", help="comma-separated system keys")
    ap.add_argument("--pin", action="store_true", help="run everything on CPU 0")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})  # inherited by every process started from here
    if not args.only or "mounttable" in args.only.split(","):
        run_mounttable(args.seconds)
    if args.only == "mounttable":
        return 0
    if not os.path.isdir(ANCHORS):
        sys.stderr.write(f"bench: the anchors harness is not at {ANCHORS} (set ")
        sys.stderr.write("IPCCLIENT_BENCH_ANCHORS)\n")
        return 2
    # (The compiled copy's adapter finds the anchors from here; each runs in its own folder.)
    os.environ["IPCCLIENT_BENCH_ANCHORS"] = os.path.abspath(ANCHORS)
    suite = [s for s in SUITE if not args.only or s[0] in args.only.split(",")]
    suite = [s for s in suite if s[1] != COMPILED or os.path.exists(COMPILED)]
    results: dict[str, list[dict[str, Any] | None]] = {key: [] for key, _, _ in suite}
    started = time.time()
    for rnd in range(args.rounds):
        for key, script, variant in suite:
            t0 = time.time()
            results[key].append(run_one(script, variant, args.seconds))
            sys.stderr.write(f"round {rnd + 1}/{args.rounds} {key} {time.time() - t0:.0f}s\n")
    out = sys.stdout
    out.write(
        f"CPU: {cpu_model()} x{os.cpu_count()}; scheduling: "
        f"{'pinned to CPU 0' if args.pin else 'default'}; rounds={args.rounds} "
        f"seconds={args.seconds} wall={time.time() - started:.0f}s\n\n"
    )
    out.write("| system | " + " | ".join(c[0] for c in COLUMNS) + " |\n")
    out.write("|---|" + "---:|" * len(COLUMNS) + "\n")
    for key, runs in results.items():
        cells = []
        for _, w, k, fmt in COLUMNS:
            m = median(runs, w, k)
            cells.append("n/a" if m is None else fmt.format(m))
        out.write(f"| {key} | " + " | ".join(cells) + " |\n")
    out.write("\n| target | system | ipcclient / peer | met |\n|---|---|---:|---|\n")
    for what, (w, k), peer, target, higher in TARGETS:
        for ours in OURS:
            if ours not in results or (peer is not None and peer not in results):
                continue
            mine = median(results[ours], w, k)
            theirs = 1.0 if peer is None else median(results[peer], w, k)
            if mine is None or not theirs:
                out.write(f"| {what} | {ours} | n/a | n/a |\n")
                continue
            ratio = mine / theirs
            met = ratio >= target if higher else ratio <= target
            out.write(f"| {what} | {ours} | {ratio:.2f} | {'yes' if met else 'no'} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
