"""The interop service and its cases: ``python -m ipcclient.interop serve | run ENDPOINT``.

Owns: :class:`InteropService` (the methods an implementation in another language calls to
run the standard cases), the well-known interop identities (:func:`interop_principal`: keys
from published seeds, so a client or server written elsewhere can present or trust them),
the case list (:data:`CASES`) and a runner that plays every case against any server
(:func:`run_cases`), and the command line that serves or runs them. docs/interop.md says what
each case sends and must observe.

Must not: be imported by the library (it prints: that is its job as a command), or be used
for anything but testing: its private keys are public by design.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient import errors
from ipcclient.client import Client
from ipcclient.context import Context
from ipcclient.security import Principal, caveats
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Results, Server, ServerCall

__all__ = [
    "CASES",
    "ROOT_NAME",
    "CaseResult",
    "InteropService",
    "interop_principal",
    "interop_seed",
    "main",
    "run_cases",
    "start_server",
]

ROOT_NAME = "interop"
"""The blessing root of the interop identities: ``interop:server`` and ``interop:client``."""
MAX_PAYLOAD = 4 * 1024 * 1024 - 64
"""The largest payload a method accepts or makes: one value under the codec's 4 MiB."""
MAX_SLEEP = 60.0
"""The longest ``Sleep`` honours (a server cannot be pinned by one call)."""

LARGE_REQUEST = 2_000_000
LARGE_RESPONSE = 3_000_000
STREAM_SIZES = (31_415, 9, 2_653, 58_979)
INPUT_SIZES = (27_182, 8, 1_828, 45_904)
STATUS_ID = "interop.Custom"
STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
ECHO_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**64 - 1,
    2**70,
    -(2**70),
    1.5,
    -0.0,
    math.inf,
    "",
    "h\u00e9llo \U0001f608",
    b"",
    b"\x00\xff",
    [1, [2, [3]]],
    {"a": 1, "b": [None, b"x"], 7: "int key"},
)
SLEEP_DEADLINE = 0.5
"""The client's deadline in ``timeout_on_sleeping_server``."""
SLEEP_SECONDS = 30.0
"""What that case asks the server to sleep (far beyond the deadline)."""


def interop_seed(label: str) -> bytes:
    """The published Ed25519 seed of an interop identity: SHA-256 of
    ``"ipcclient interop " + label`` (``root``, ``server`` or ``client``)."""
    return hashlib.sha256(b"ipcclient interop " + label.encode()).digest()


def interop_principal(role: str) -> Principal:
    """The well-known ``server`` or ``client`` identity: blessed ``interop:<role>`` by the
    interop root (unconstrained), trusting that root for ``interop`` names."""
    if role not in ("server", "client"):
        raise errors.BadArgError(f"interop: no identity {role!r} (server or client)")
    root = Principal(ed25519.Ed25519PrivateKey.from_private_bytes(interop_seed("root")))
    root_b = root.bless_self(ROOT_NAME)
    me = Principal(ed25519.Ed25519PrivateKey.from_private_bytes(interop_seed(role)))
    me.store.default = root.bless(me.public_key, root_b, role, [caveats.unconstrained_use()])
    me.store.set(me.store.default, "...")
    me.add_to_roots(root_b)
    return me


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PAYLOAD:
        raise errors.BadArgError(f"interop: {what} must be an integer in 0..{MAX_PAYLOAD}")
    return value


@expose
class InteropService:
    """The methods of the interop cases (docs/interop.md). Payloads are zero bytes."""

    def EmptyCall(self, call: ServerCall) -> None:
        """No args, no results."""
        return None

    def UnaryCall(self, call: ServerCall, payload: bytes, response_size: int) -> bytes:
        """Checks ``payload`` is all zero bytes; returns ``response_size`` zero bytes."""
        if not isinstance(payload, bytes) or payload.count(0) != len(payload):
            raise errors.BadArgError("interop: payload must be zero bytes")
        return bytes(_size(response_size, "response_size"))

    def StreamingOutputCall(self, call: ServerCall, sizes: list[int]) -> int:
        """Streams one item of ``n`` zero bytes per entry of ``sizes``; returns their count."""
        if not isinstance(sizes, list) or len(sizes) > 1024:
            raise errors.BadArgError("interop: sizes must be a list of at most 1024 sizes")
        checked = [_size(n, "a size") for n in sizes]
        for n in checked:
            call.send(bytes(n))
        return len(checked)

    def StreamingInputCall(self, call: ServerCall) -> int:
        """Reads streamed byte strings until the client's end; returns their total size."""
        total = 0
        for item in call:
            if not isinstance(item, bytes):
                raise errors.BadArgError("interop: streamed items must be bytes")
            total += len(item)
        return total

    def FullDuplexCall(self, call: ServerCall) -> int:
        """For each streamed size ``n`` read, streams ``n`` zero bytes back at once; returns
        how many it answered."""
        count = 0
        for n in call:
            call.send(bytes(_size(n, "a size")))
            count += 1
        return count

    def StatusCall(self, call: ServerCall, error_id: str, msg: str, action: int) -> None:
        """Fails with exactly this error ID, message and retry action."""
        if not isinstance(error_id, str) or not 1 <= len(error_id) <= 256:
            raise errors.BadArgError("interop: error_id must be 1..256 characters")
        if not isinstance(msg, str) or not isinstance(action, int) or not 0 <= action <= 3:
            raise errors.BadArgError("interop: msg must be text and action 0..3")
        raise errors.IPCError(msg, id=error_id, action=errors.RetryAction(action))

    def Sleep(self, call: ServerCall, seconds: float) -> str:
        """Waits ``seconds`` (at most :data:`MAX_SLEEP`) or until the call's context is done
        (deadline or cancellation: then fails with that error)."""
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise errors.BadArgError("interop: seconds must be a non-negative number")
        if call.context.wait(min(float(seconds), MAX_SLEEP)):
            raise call.context.err() or errors.CanceledError("interop: sleep cancelled")
        return "slept"

    def Echo(self, call: ServerCall, value: Any) -> Any:
        """Returns its argument (one result, even when it is null)."""
        return Results(value)


def start_server(protocol: str = "tcp", address: str = "127.0.0.1:0") -> Server:
    """A running interop server (identity ``interop:server``, everyone may call)."""
    server = Server(interop_principal("server"))
    try:
        server.listen(protocol, address)
        server.serve(InteropService(), AllowEveryone())
    except BaseException:
        server.stop()
        raise
    return server


# --- the cases --------------------------------------------------------------------------------


class CaseFailed(Exception):
    """A case observed something other than what it must."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CaseFailed(what)


def _one(results: Sequence[Any], what: str) -> Any:
    _check(len(results) == 1, f"{what} must return one result, got {len(results)}")
    return results[0]


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome: ``error`` is None when it passed."""

    name: str
    seconds: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None


def _empty_unary(client: Client, ctx: Context, name: str) -> None:
    _check(client.call(ctx, name, "EmptyCall") == (), "EmptyCall must return no results")


def _large_unary(client: Client, ctx: Context, name: str) -> None:
    reply = _one(
        client.call(ctx, name, "UnaryCall", bytes(LARGE_REQUEST), LARGE_RESPONSE), "UnaryCall"
    )
    _check(reply == bytes(LARGE_RESPONSE), f"expected {LARGE_RESPONSE} zero bytes")


def _server_streaming(client: Client, ctx: Context, name: str) -> None:
    with client.start_call(ctx, name, "StreamingOutputCall", [list(STREAM_SIZES)]) as call:
        got = [len(item) for item in call]
        results = call.finish()
    _check(got == list(STREAM_SIZES), f"streamed sizes {got}, expected {list(STREAM_SIZES)}")
    _check(results == (len(STREAM_SIZES),), f"result {results}, expected ({len(STREAM_SIZES)},)")


def _client_streaming(client: Client, ctx: Context, name: str) -> None:
    with client.start_call(ctx, name, "StreamingInputCall") as call:
        for n in INPUT_SIZES:
            call.send(bytes(n))
        results = call.finish()
    _check(results == (sum(INPUT_SIZES),), f"result {results}, expected ({sum(INPUT_SIZES)},)")


def _bidi_streaming(client: Client, ctx: Context, name: str) -> None:
    with client.start_call(ctx, name, "FullDuplexCall") as call:
        for n in STREAM_SIZES:  # ping-pong: each answer before the next request
            call.send(n)
            reply = call.recv()
            _check(reply == bytes(n), f"expected {n} zero bytes back")
        call.close_send()
        _check(list(call) == [], "no streamed result may follow the client's end")
        results = call.finish()
    _check(results == (len(STREAM_SIZES),), f"result {results}")


def _status_round_trip(client: Client, ctx: Context, name: str) -> None:
    # start_call + finish: Client.call would retry the action-3 error (back off) by itself.
    for error_id, action in ((STATUS_ID, 0), ("ipc.NoExist", 0), ("interop.Backoff", 3)):
        try:
            client.start_call(ctx, name, "StatusCall", [error_id, STATUS_MESSAGE, action]).finish()
        except errors.IPCError as err:
            _check(err.id == error_id, f"error id {err.id!r}, expected {error_id!r}")
            _check(err.msg == STATUS_MESSAGE, f"error message {err.msg!r} differs")
            _check(int(err.action) == action, f"retry action {int(err.action)}, expected {action}")
        else:
            raise CaseFailed("StatusCall must fail")


def _cancel_after_begin(client: Client, ctx: Context, name: str) -> None:
    call = client.start_call(ctx, name, "StreamingInputCall")
    call.cancel()
    try:
        call.finish()
    except errors.CanceledError:
        pass
    else:
        raise CaseFailed("a cancelled call must end with ipc.Canceled")
    _empty_unary(client, ctx, name)  # the VC still serves


def _cancel_after_first_response(client: Client, ctx: Context, name: str) -> None:
    call = client.start_call(ctx, name, "FullDuplexCall")
    call.send(STREAM_SIZES[0])
    _check(call.recv() == bytes(STREAM_SIZES[0]), "first response")
    call.cancel()
    try:
        call.recv()
    except errors.CanceledError:
        pass
    else:
        raise CaseFailed("a cancelled call must end with ipc.Canceled")
    _empty_unary(client, ctx, name)


def _timeout_on_sleeping_server(client: Client, ctx: Context, name: str) -> None:
    started = time.monotonic()
    try:
        client.call(ctx.with_timeout(SLEEP_DEADLINE), name, "Sleep", SLEEP_SECONDS)
    except errors.TimeoutError:
        pass
    else:
        raise CaseFailed("a call past its deadline must end with ipc.Timeout")
    took = time.monotonic() - started
    _check(took < SLEEP_SECONDS / 2, f"the timeout took {took:.1f} s")
    _empty_unary(client, ctx, name)


def _echo_values(client: Client, ctx: Context, name: str) -> None:
    for value in ECHO_VALUES:
        got = _one(client.call(ctx, name, "Echo", value), f"Echo({value!r})")
        same = got == value and type(got) is type(value)
        if isinstance(value, float) and not math.isnan(value):
            same = same and math.copysign(1.0, got) == math.copysign(1.0, value)
        _check(same, f"Echo({value!r}) returned {got!r}")


CASES: dict[str, Callable[[Client, Context, str], None]] = {
    "empty_unary": _empty_unary,
    "large_unary": _large_unary,
    "server_streaming": _server_streaming,
    "client_streaming": _client_streaming,
    "bidi_streaming": _bidi_streaming,
    "status_round_trip": _status_round_trip,
    "cancel_after_begin": _cancel_after_begin,
    "cancel_after_first_response": _cancel_after_first_response,
    "timeout_on_sleeping_server": _timeout_on_sleeping_server,
    "echo_values": _echo_values,
}
"""Every case, in the order they run (docs/interop.md)."""


def run_cases(
    endpoint: str,
    cases: Sequence[str] | None = None,
    *,
    client: Client | None = None,
    timeout: float = 30.0,
) -> list[CaseResult]:
    """Run ``cases`` (default: all) against the server at ``endpoint`` (an endpoint string
    or a name); each case gets ``timeout`` seconds. Uses ``client`` or a fresh one with the
    ``interop:client`` identity (closed afterwards)."""
    if not isinstance(endpoint, str):
        raise errors.BadArgError(
            f"interop: the endpoint must be a str (an endpoint or a name), got {endpoint!r:.60}"
        )
    names = list(CASES) if cases is None else list(cases)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise errors.BadArgError(f"interop: unknown case(s) {unknown}; known: {list(CASES)}")
    target = endpoint if not endpoint.startswith("@") else "/" + endpoint
    own = client is None
    used = client if client is not None else Client(interop_principal("client"))
    results = []
    try:
        for case in names:
            started = time.monotonic()
            ctx = Context.background().with_timeout(timeout)
            try:
                CASES[case](used, ctx, target)
            except Exception as exc:  # a case reports whatever went wrong, and the next runs
                why = str(exc) if isinstance(exc, CaseFailed) else f"{type(exc).__name__}: {exc}"
                results.append(CaseResult(case, time.monotonic() - started, why))
            else:
                results.append(CaseResult(case, time.monotonic() - started))
            finally:
                ctx.cancel()
    finally:
        if own:
            used.close()
    return results


# --- the command ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    # The handlers come first: SIGINT or SIGTERM while the server starts stops it in order
    # (not a KeyboardInterrupt, or the default death, half way through starting).
    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_int = signal.signal(signal.SIGINT, on_signal)
    try:
        server = start_server(args.protocol, args.address)
        try:
            sys.stdout.write(server.endpoints[0] + "\n")
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    return 0


def _run(args: argparse.Namespace) -> int:
    results = run_cases(args.endpoint, args.case or None, timeout=args.timeout)
    for r in results:
        line = f"PASS {r.name} ({r.seconds:.2f} s)" if r.passed else f"FAIL {r.name}: {r.error}"
        sys.stdout.write(line + "\n")
    failed = sum(1 for r in results if not r.passed)
    sys.stdout.write(f"{len(results) - failed} passed, {failed} failed\n")
    sys.stdout.flush()
    return 1 if failed else 0


def _seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds > 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Serve or run the cases; returns the exit code: 0, 1 (a case failed), 2 (usage, or an
    error: one line on standard error), 130 (interrupted: Ctrl-C)."""
    parser = argparse.ArgumentParser(
        prog="python -m ipcclient.interop",
        description="The ipcclient interop service and its cases (docs/interop.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the interop server; prints its endpoint")
    serve.add_argument("--protocol", default="tcp", help="tcp (default) or unix")
    serve.add_argument("--address", default="127.0.0.1:0", help="default 127.0.0.1:0")
    run = sub.add_parser("run", help="run the cases against a server")
    run.add_argument("endpoint", help="the server's endpoint string (or a name)")
    run.add_argument("--case", action="append", choices=list(CASES), help="one case (repeatable)")
    run.add_argument("--timeout", type=_seconds, default=30.0, help="seconds per case")
    args = parser.parse_args(argv)
    try:
        return _serve(args) if args.command == "serve" else _run(args)
    except errors.IPCError as exc:
        sys.stderr.write(f"interop: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interop: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
