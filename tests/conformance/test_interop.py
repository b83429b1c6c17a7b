"""The interop service and its cases (docs/interop.md): every case passes against the real
server, a server that misbehaves fails the cases it breaks, and the command line serves and
runs them in separate processes."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipcclient import errors, interop
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[Server]:
    s = interop.start_server()
    try:
        yield s
    finally:
        s.stop()


def test_every_case_passes_against_the_interop_server(server: Server) -> None:
    results = interop.run_cases(server.endpoints[0])
    assert [r.name for r in results] == list(interop.CASES)
    assert [(r.name, r.error) for r in results if not r.passed] == []


@expose
class Misbehaving(interop.InteropService):
    """Gets every case wrong in its own way."""

    def EmptyCall(self, call: ServerCall) -> Any:  # type: ignore[override]
        return 0  # one result instead of none

    def StreamingOutputCall(self, call: ServerCall, sizes: list[int]) -> int:
        for n in sizes[:-1]:  # one item short
            call.send(bytes(n))
        return len(sizes)

    def StatusCall(self, call: ServerCall, error_id: str, msg: str, action: int) -> None:
        raise errors.IPCError(msg.strip(), id=error_id, action=errors.RetryAction(action))

    def Sleep(self, call: ServerCall, seconds: float) -> str:
        return "did not sleep"

    def Echo(self, call: ServerCall, value: Any) -> Any:
        return value  # None becomes no result at all


def test_cases_fail_against_a_misbehaving_server() -> None:
    s = Server(interop.interop_principal("server"))
    try:
        s.listen("tcp", "127.0.0.1:0")
        s.serve(Misbehaving(), AllowEveryone())
        results = {r.name: r for r in interop.run_cases(s.endpoints[0], timeout=10)}
    finally:
        s.stop()
    failed = {name for name, r in results.items() if not r.passed}
    assert failed == {
        "empty_unary",
        "server_streaming",
        "status_round_trip",
        "cancel_after_begin",  # (each ends with an EmptyCall)
        "cancel_after_first_response",
        "timeout_on_sleeping_server",
        "echo_values",
    }
    assert "message" in (results["status_round_trip"].error or "")
    assert "ipc.Timeout" in (results["timeout_on_sleeping_server"].error or "")
    assert results["large_unary"].passed and results["bidi_streaming"].passed


def test_unknown_case_is_refused(server: Server) -> None:
    with pytest.raises(errors.BadArgError):
        interop.run_cases(server.endpoints[0], ["no_such_case"])
    for bad in (None, 5):  # (an AttributeError before)
        with pytest.raises(errors.BadArgError, match="endpoint must be a str"):
            interop.run_cases(bad)  # type: ignore[arg-type]


def test_identities_are_the_published_ones() -> None:
    doc = (ROOT / "docs" / "interop.md").read_text()
    for role in ("server", "client"):
        p = interop.interop_principal(role)
        assert p.store.default is not None and p.store.default.names == [f"interop:{role}"]
        assert p.public_key.raw.hex() in doc
        assert interop.interop_seed(role).hex() in doc
        root = p.store.default.chains[0][0]
        assert root.public_key.raw.hex() in doc and interop.interop_seed("root").hex() in doc
    with pytest.raises(errors.BadArgError):
        interop.interop_principal("root")


def test_the_command_line_serves_and_runs() -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "ipcclient.interop", "serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(serve.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        assert line and line[0].startswith("@1@tcp@127.0.0.1:"), line
        endpoint = line[0].strip()
        assert "@interop:server@@" in endpoint
        run = subprocess.run(
            [
                *(sys.executable, "-m", "ipcclient.interop", "run", endpoint),
                *("--case", "empty_unary", "--case", "bidi_streaming"),
                *("--case", "status_round_trip"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.findall(r"^PASS (\w+)", run.stdout, re.M) == [
            "empty_unary",
            "bidi_streaming",
            "status_round_trip",
        ]
        assert "3 passed, 0 failed" in run.stdout
    finally:
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)
    assert serve.returncode == 0, serve.stderr.read() if serve.stderr else ""


def test_run_reports_failures_with_exit_code_1(server: Server) -> None:
    bad = Server(interop.interop_principal("server"))
    try:
        bad.listen("tcp", "127.0.0.1:0")
        bad.serve(Misbehaving(), AllowEveryone())
        code = interop.main(["run", bad.endpoints[0], "--case", "empty_unary", "--timeout", "10"])
    finally:
        bad.stop()
    assert code == 1
    assert interop.main(["run", server.endpoints[0], "--case", "empty_unary"]) == 0


def test_bad_arguments_are_refused_with_bad_arg(server: Server) -> None:
    from ipcclient.client import Client
    from ipcclient.context import Context

    name = "/" + server.endpoints[0]
    bad_calls: list[tuple[str, tuple[Any, ...]]] = [
        ("UnaryCall", (b"\x01", 1)),
        ("UnaryCall", (b"", -1)),
        ("UnaryCall", (b"", interop.MAX_PAYLOAD + 1)),
        ("StreamingOutputCall", ("not a list",)),
        ("StreamingOutputCall", ([True],)),
        ("StatusCall", ("", "m", 0)),
        ("StatusCall", ("x.Y", "m", 9)),
        ("Sleep", (-1,)),
        ("Sleep", ("long",)),
    ]
    with Client(interop.interop_principal("client")) as client:
        ctx = Context.background().with_timeout(30)
        for method, args in bad_calls:
            with pytest.raises(errors.BadArgError):
                client.call(ctx, name, method, *args)
        with client.start_call(ctx, name, "StreamingInputCall") as call:
            call.send("not bytes")
            with pytest.raises(errors.BadArgError):
                call.finish()
        ctx.cancel()


def test_a_reply_followed_by_a_reset_is_kept(server: Server) -> None:
    """protocol.md 3.7 and 5.1: the client has not sent its end of args when the server
    replies; the server then resets the flow, and the client still gets the reply."""
    from ipcclient.client import Client
    from ipcclient.context import Context

    with Client(interop.interop_principal("client")) as client:
        ctx = Context.background().with_timeout(30)
        call = client.start_call(ctx, "/" + server.endpoints[0], "Echo", ["kept"])
        deadline = time.monotonic() + 20
        while call.flow.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(call.flow.error, errors.CanceledError)  # the server's empty RESET
        assert call.finish() == ("kept",)
        ctx.cancel()
