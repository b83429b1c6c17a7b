"""The ``ipc`` command, run for real: each command in its own process (``python -m
ipcclient``), a mount table daemon and the example service as background processes, all over
loopback; plus the pure helpers of the command line in-process."""

from __future__ import annotations

import argparse
import ctypes
import getpass
import io
import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipcclient import Client, errors
from ipcclient import cli as ipc_cli
from ipcclient import env as ipc_env
from ipcclient.security import Principal
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerCall
from tests.conftest import Family

TIMEOUT = 60.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A daemon started by a test ends when the test process ends, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _env(**extra: str | None) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in (ipc_env.CREDENTIALS_VAR, ipc_env.NAMESPACE_VAR)
    }
    for k, v in extra.items():
        if v is not None:
            base[k] = v
    return base


def ipc(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ipcclient ARGS`` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "ipcclient", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env if env is not None else _env(),
        cwd=cwd,
        timeout=TIMEOUT,
        check=False,
    )


class Daemon:
    """A long-running ``ipc`` command (mount table, serve) and the first line it printed."""

    def __init__(self, *args: str, env: dict[str, str], script: Path | None = None) -> None:
        command = [str(script)] if script is not None else ["-m", "ipcclient"]
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.line = self._first_line()

    @classmethod
    def script(cls, path: Path, *args: str, env: dict[str, str]) -> Daemon:
        """A Python script (rather than an ``ipc`` command) run the same way."""
        return cls(*args, env=env, script=path)

    def _first_line(self) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=0.5):
                    line = self.proc.stdout.readline().strip()
                    if line:
                        return line
                if self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        self.stop()
        raise AssertionError(f"daemon printed no endpoint: {self.proc.stderr}")

    def stop(self) -> int:
        """SIGTERM (a graceful stop), then the exit code; killed if it does not end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
            raise
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


class World:
    """Principals made with the CLI, a mount table and the published example service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for cmd in (
            ("principal", "create", str(root / "idp")),
            ("principal", "fork", str(root / "idp"), str(root / "mt"), "mounttable", "--for", "1h"),
            ("principal", "fork", str(root / "idp"), str(root / "server"), "fortune"),
            ("principal", "fork", str(root / "idp"), str(root / "alice"), "alice", "--for", "1d"),
        ):
            done = ipc(*cmd)
            assert done.returncode == 0, done.stderr
        self.mt = Daemon("--credentials", str(root / "mt"), "mounttable", env=_env())
        self.namespace = self.mt.line
        self.server = Daemon(
            "serve", "--name", "apps/fortune", env=self.env(credentials=str(root / "server"))
        )
        self.endpoint = self.server.line

    def env(self, credentials: str | None = None) -> dict[str, str]:
        return _env(
            IPCCLIENT_CREDENTIALS=credentials or str(self.root / "alice"),
            IPCCLIENT_NAMESPACE=self.namespace,
        )

    def ipc(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return ipc(*args, env=self.env(), stdin=stdin)

    def stop(self) -> None:
        self.server.stop()
        self.mt.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("cli"))
    try:
        yield w
    finally:
        w.stop()


# --- against the daemons -----------------------------------------------------------------------


def test_call_unary_and_streaming(world: World) -> None:
    done = world.ipc("call", "apps/fortune", "Get")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "A closed mouth gathers no feet."

    done = world.ipc("call", "apps/fortune", "Stream", "3", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(lines) == 4 and lines[-1] == 3  # three items as they came, then the result

    done = world.ipc("call", "apps/fortune", "Echo", '{"a": [1, 2.5, null, "x"]}')
    assert json.loads(done.stdout) == {"a": [1, 2.5, None, "x"]}

    done = world.ipc("call", "apps/fortune", "WhoAmI")
    assert json.loads(done.stdout) == ["idp:alice"]


def test_call_streams_stdin_lines_as_items(world: World) -> None:
    done = world.ipc("call", "apps/fortune", "Double", "--stdin", stdin="1\n2\n\n3\n")
    assert done.returncode == 0, done.stderr
    assert [json.loads(x) for x in done.stdout.splitlines()] == [2, 4, 6, 3]

    done = world.ipc("call", "apps/fortune", "Double", "--stdin", stdin="1\nnot json\n")
    assert done.returncode == ipc_cli.EXIT_BAD_ARG
    assert "line 2 is not JSON" in done.stderr


def test_signature_lists_methods_args_and_docs(world: World) -> None:
    done = world.ipc("signature", "apps/fortune")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Stream(n)\n    Stream n fortunes, then return n." in out
    assert "Echo(value)" in out and "Get()" in out
    assert "__Signature" not in out

    done = world.ipc("signature", world.namespace)  # the mount table's own methods
    assert "Mount(server, ttl, flags)" in done.stdout and "Glob(pattern)" in done.stdout


def test_resolve_glob_mount_unmount(world: World) -> None:
    done = world.ipc("resolve", "apps/fortune")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [world.endpoint]

    done = world.ipc("mount", "x/y", "/127.0.0.1:9", "--ttl", "2m")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mounted /127.0.0.1:9 at x/y for 1m5")  # (read back: <= 2m)
    # A TTL over the table's maximum (24 h): what it kept is printed, not what was asked.
    done = world.ipc("mount", "x/z", "/127.0.0.1:9", "--ttl", "999d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mounted /127.0.0.1:9 at x/z for 23h59m"), done.stdout
    assert world.ipc("unmount", "x/z").returncode == 0
    # Below a mount of the same server, ResolveStep answers with that mount: its TTL (24 h)
    # was printed as the new mount's; now what was asked is.
    assert world.ipc("mount", "w", "/127.0.0.1:9", "--ttl", "999d").returncode == 0
    done = world.ipc("mount", "w/v", "/127.0.0.1:9", "--ttl", "2m")
    assert done.stdout.startswith("mounted /127.0.0.1:9 at w/v (asked for 2m"), done.stdout
    assert world.ipc("unmount", "w/v").returncode == 0
    assert world.ipc("unmount", "w").returncode == 0
    tree = world.ipc("glob").stdout
    assert "├── apps\n│   └── fortune  " + world.endpoint in tree
    assert "└── x\n    └── y  /127.0.0.1:9 (ttl " in tree
    assert world.ipc("glob", "x/*").stdout.startswith("└── x\n    └── y")

    done = world.ipc("unmount", "x/y")
    assert done.returncode == 0, done.stderr
    assert "x" not in world.ipc("glob").stdout.split()
    rooted = world.ipc("glob", world.namespace + "/apps/*")
    assert "fortune" in rooted.stdout, rooted.stderr
    # A folder's name alone matches no mounted name: the command says how to list it.
    folder = world.ipc("glob", "apps")
    assert folder.returncode == 0 and folder.stdout == ""
    assert "no names match 'apps' (what is below it: 'apps/*', or 'apps/...'" in folder.stderr
    wild = world.ipc("glob", "nothing/*")
    assert wild.stderr.strip() == "no names match 'nothing/*'"


def test_errors_have_one_line_and_an_exit_code_per_kind(world: World) -> None:
    cases = [
        # (a name that does not exist may be retried until the deadline: keep it short)
        (("call", "apps/nothing", "Get", "--timeout", "3"), ipc_cli.EXIT_NOT_FOUND, "NoServers"),
        # (a server that refuses connections: found, not reachable)
        (("call", "/127.0.0.1:1", "Get", "--timeout", "3"), ipc_cli.EXIT_CONNECTION, "NoServers"),
        (("call", "apps/fortune", "Nope"), ipc_cli.EXIT_NOT_FOUND, "ipc.UnknownMethod"),
        (("call", "apps/fortune", "Get", "bare"), ipc_cli.EXIT_BAD_ARG, "'\"bare\"'"),
        (("call", "apps/fortune", "Get", "1"), ipc_cli.EXIT_BAD_ARG, "ipc.BadArg"),
        (
            ("call", "apps/fortune", "Get", "--server-pattern", "idp:bank"),
            ipc_cli.EXIT_NO_ACCESS,
            "ipc.NotTrusted",
        ),
        (("call", "apps/fortune", "Get", "--timeout", "0"), ipc_cli.EXIT_BAD_ARG, "--timeout"),
        (("call", "apps/fortune", "Stream", '"x"'), ipc_cli.EXIT_REMOTE, "ipc.Unknown"),
    ]
    for args, code, text in cases:
        done = world.ipc(*args)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ipc: error: ") and text in lines[0]

    verbose = world.ipc("-v", "call", "apps/fortune", "Nope")
    assert verbose.returncode == ipc_cli.EXIT_NOT_FOUND
    assert "Traceback" in verbose.stderr

    nobody = ipc("call", "apps/fortune", "Get", env=_env(IPCCLIENT_NAMESPACE=world.namespace))
    assert nobody.returncode == ipc_cli.EXIT_BAD_ARG
    assert "no credentials" in nobody.stderr

    usage = ipc("call")
    assert usage.returncode == ipc_cli.EXIT_USAGE


def test_errors_give_the_commands_advice_not_the_librarys(world: World) -> None:
    """The library's errors advise a program (pass WaitForReady(), give the client roots,
    call principal.roots.add_blessings); the command says its own flags instead."""
    missing = world.ipc("call", "apps/nothing", "Get", "--timeout", "3")
    assert missing.returncode == ipc_cli.EXIT_NOT_FOUND
    assert "pass --wait to wait for it" in missing.stderr
    assert "WaitForReady" not in missing.stderr
    creds = str(world.root / "alice")
    rootless = ipc("call", "apps/x", "Get", env=_env(IPCCLIENT_CREDENTIALS=creds))
    assert rootless.returncode == ipc_cli.EXIT_NOT_FOUND, rootless.stderr
    assert "pass --namespace /host:port or set IPCCLIENT_NAMESPACE" in rootless.stderr
    assert "roots=" not in rootless.stderr
    unrooted = ipc("--namespace", "127.0.0.1:1", "call", "apps/x", "Get", env=world.env())
    assert unrooted.returncode == ipc_cli.EXIT_BAD_ARG, unrooted.stderr
    assert "a rooted name starts with '/': '/127.0.0.1:1'" in unrooted.stderr
    other = world.root / "stranger"
    assert ipc("principal", "create", str(other)).returncode == 0
    untrusted = ipc("call", world.endpoint, "Get", env=_env(IPCCLIENT_CREDENTIALS=str(other)))
    assert untrusted.returncode == ipc_cli.EXIT_NO_ACCESS, untrusted.stderr
    assert "ipc principal add-root DIR PROVIDER_BLESSINGS" in untrusted.stderr
    assert "add_blessings" not in untrusted.stderr


def test_wait_finds_a_server_mounted_after_the_call_started(world: World) -> None:
    """``--wait``: a call made before its server is published finds it once it is; without
    it the same call fails at once with NotFound's exit code."""
    fast = world.ipc("call", "apps/late", "Get", "--timeout", "20")
    assert fast.returncode == ipc_cli.EXIT_NOT_FOUND, fast.stderr
    call = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipcclient",
            *("call", "apps/late", "Get", "--wait", "--timeout", "30"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.env(),
    )
    try:
        time.sleep(1.0)  # (the call starts and finds nothing mounted yet)
        assert call.poll() is None, call.communicate()
        late = Daemon(
            "serve", "--name", "apps/late", env=world.env(credentials=str(world.root / "server"))
        )
        try:
            out, err = call.communicate(timeout=TIMEOUT)
        finally:
            late.stop()
    finally:
        if call.poll() is None:
            call.kill()
            call.communicate(timeout=TIMEOUT)
    assert call.returncode == 0, err
    assert json.loads(out) == "A closed mouth gathers no feet."


def test_explicit_flags_win_over_the_environment(world: World) -> None:
    # The environment names a namespace with nothing in it; --namespace wins.
    env = _env(
        IPCCLIENT_CREDENTIALS=str(world.root / "nobody"),
        IPCCLIENT_NAMESPACE="/127.0.0.1:9",
    )
    done = ipc(
        "--credentials",
        str(world.root / "alice"),
        "--namespace",
        world.namespace,
        "call",
        "apps/fortune",
        "Get",
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_serve_stops_on_sigterm_and_unmounts(world: World) -> None:
    server = Daemon(
        "serve", "--name", "apps/short", env=world.env(credentials=str(world.root / "server"))
    )
    try:
        assert "short" in world.ipc("glob", "apps/*").stdout
        assert json.loads(world.ipc("call", "apps/short", "Echo", "7").stdout) == 7
    finally:
        code = server.stop()
    assert code == 0
    assert "short" not in world.ipc("glob", "apps/*").stdout


# --- principals --------------------------------------------------------------------------------


def test_principal_create_fork_bless_set_default_add_root_dump(tmp_path: Path) -> None:
    idp, bob = tmp_path / "idp", tmp_path / "bob"
    assert ipc("principal", "create", str(idp), "--blessing", "acme").returncode == 0
    again = ipc("principal", "create", str(idp))
    assert again.returncode == ipc_cli.EXIT_BAD_ARG and "already holds" in again.stderr

    assert ipc("principal", "create", str(bob)).returncode == 0
    token = tmp_path / "bob.blessing"
    done = ipc(
        "principal", "bless", str(idp), str(bob), "friend", "--for", "2h", "--out", str(token)
    )
    assert done.returncode == 0, done.stderr
    assert token.read_text().startswith(ipc_cli.BLESSING_TOKEN_PREFIX)
    assert ipc("principal", "set-default", str(bob), str(token)).returncode == 0
    assert ipc("principal", "add-root", str(bob), str(idp)).returncode == 0

    dump = ipc("principal", "dump", str(bob))
    assert dump.returncode == 0, dump.stderr
    assert "Default:     acme:friend" in dump.stdout
    assert "expires " in dump.stdout and "(in 1h59m" in dump.stdout
    loaded = Principal.load(bob)
    assert loaded.store.default is not None and loaded.store.default.names == ["acme:friend"]
    idp_key = Principal.load(idp).public_key
    assert loaded.roots.recognized(idp_key, "acme:friend")
    assert idp_key.fingerprint in dump.stdout

    # A token on standard input, bound to another key, is refused.
    printed = ipc("principal", "bless", str(idp), str(idp), "self", "--method", "Get")
    assert printed.returncode == 0
    wrong = ipc("principal", "set-default", str(bob), "-", stdin=printed.stdout)
    assert wrong.returncode == ipc_cli.EXIT_BAD_ARG and "not bound" in wrong.stderr
    bad = ipc("principal", "fork", str(idp), str(tmp_path / "c"), "c", "--for", "soon")
    assert bad.returncode == ipc_cli.EXIT_BAD_ARG and "bad duration" in bad.stderr


def test_bad_local_input_is_one_line_and_an_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these once ended in a traceback (or a misleading error): a blessing token on
    the command line longer than a file name may be (ENAMETOOLONG), a blessing file that is
    not UTF-8, JSON arguments nested too deeply (RecursionError), a store file nested too
    deeply, and --grace nan (accepted, then refused only at shutdown)."""
    idp, bob = tmp_path / "idp", tmp_path / "bob"
    for who in (idp, bob):
        assert ipc_cli.main(["principal", "create", str(who)]) == ipc_cli.EXIT_OK
    bless = ["principal", "bless", str(idp), str(bob), "friend", "--for", "2h"]
    capsys.readouterr()
    assert ipc_cli.main(bless) == ipc_cli.EXIT_OK
    token = capsys.readouterr().out.strip()
    assert len(token) > 255  # (longer than a file name may be)
    assert ipc_cli.main(["principal", "set-default", str(bob), token]) == ipc_cli.EXIT_OK
    assert Principal.load(bob).store.default.names == ["idp:friend"]  # type: ignore[union-attr]

    def fails(code: int, *argv: str) -> str:
        assert ipc_cli.main(list(argv)) == code
        printed = capsys.readouterr().err.strip().splitlines()
        assert len(printed) == 1 and printed[0].startswith("ipc: error: "), printed
        return printed[0]

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" * 100)
    fails(ipc_cli.EXIT_BAD_ARG, "principal", "set-default", str(bob), str(binary))
    deep = "[" * 5000 + "]" * 5000
    assert "is not JSON" in fails(ipc_cli.EXIT_BAD_ARG, "call", "/127.0.0.1:1", "Echo", deep)
    (idp / "store.json").write_text(deep)
    fails(ipc_cli.EXIT_BAD_ARG, "principal", "add-root", str(bob), str(idp))
    with pytest.raises(SystemExit) as exited:
        ipc_cli.main(["serve", "--grace", "nan"])
    assert exited.value.code == ipc_cli.EXIT_USAGE
    assert "--grace: must be a number of seconds >= 0" in capsys.readouterr().err


def test_encrypted_principal_asks_for_its_passphrase(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    done = ipc("principal", "create", str(secret), "--encrypt", stdin="hunter22\n")
    assert done.returncode == 0, done.stderr
    assert b"ENCRYPTED" in (secret / "key.pem").read_bytes()
    assert Principal.load(secret, passphrase=b"hunter22").store.default is not None

    ok = ipc("principal", "dump", str(secret), stdin="hunter22\n")
    assert ok.returncode == 0 and "Default:     secret" in ok.stdout
    wrong = ipc("principal", "dump", str(secret), stdin="nope\n")
    assert wrong.returncode == ipc_cli.EXIT_NO_ACCESS and "passphrase" in wrong.stderr

    # Saving back keeps the encryption, with the passphrase asked once.
    done = ipc("principal", "add-root", str(secret), str(secret), stdin="hunter22\n")
    assert done.returncode == 0, done.stderr
    assert b"ENCRYPTED" in (secret / "key.pem").read_bytes()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) >= 1 and printed[-1].startswith("ipc: error: "), printed
    assert not any("Traceback" in line for line in printed), printed
    return printed[-1]


def test_bless_takes_a_directory_key_only_from_its_signed_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bless DIR TARGETDIR`` once blessed whatever key the unsigned ``public_key`` field
    of TARGETDIR/store.json named (an edit made it bless mallory's key as bob)."""
    idp, bob, mallory = tmp_path / "idp", tmp_path / "bob", tmp_path / "mallory"
    for who in (idp, bob, mallory):
        assert ipc_cli.main(["principal", "create", str(who)]) == ipc_cli.EXIT_OK
    bob_key, mallory_key = Principal.load(bob).public_key, Principal.load(mallory).public_key
    store = bob / "store.json"
    good = store.read_text()
    capsys.readouterr()

    doc = json.loads(good)
    doc["public_key"] = mallory_key.raw.hex()
    store.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    bless = ["principal", "bless", str(idp), str(bob), "friend"]
    assert ipc_cli.main(bless) == ipc_cli.EXIT_NO_ACCESS
    assert "not signed by the key it names" in _one_error_line(capsys)
    assert ipc_cli.main(["principal", "dump", str(bob)]) == ipc_cli.EXIT_NO_ACCESS
    assert "names another key" in _one_error_line(capsys)

    store.write_text((mallory / "store.json").read_text())  # signed, but not bob's key.pem
    assert ipc_cli.main(bless) == ipc_cli.EXIT_NO_ACCESS
    assert "holds another key" in _one_error_line(capsys)

    store.write_text(good)
    assert ipc_cli.main(bless) == ipc_cli.EXIT_OK
    token = capsys.readouterr().out.strip()
    assert ipc_cli.read_blessings(token).public_key == bob_key


def test_bless_a_directory_whose_key_is_encrypted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blesser needs no passphrase of the target's: its key is read from store.json."""
    idp, carol = tmp_path / "idp", tmp_path / "carol"
    assert ipc_cli.main(["principal", "create", str(idp)]) == ipc_cli.EXIT_OK
    monkeypatch.setattr(sys, "stdin", io.StringIO("carol's secret\n"))
    assert ipc_cli.main(["principal", "create", str(carol), "--encrypt"]) == ipc_cli.EXIT_OK
    capsys.readouterr()
    assert ipc_cli.main(["principal", "bless", str(idp), str(carol), "c"]) == ipc_cli.EXIT_OK
    token = capsys.readouterr().out.strip()
    carol_key = Principal.load(carol, passphrase=b"carol's secret").public_key
    assert ipc_cli.read_blessings(token).public_key == carol_key


def test_passphrase_too_long_ctrl_d_or_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each once ended in a traceback and exit code 1: a passphrase over 1023 bytes (the
    crypto library's ValueError), Ctrl-D at the terminal's prompt (getpass's EOFError), a
    line standard input cannot decode (UnicodeDecodeError)."""
    d = tmp_path / "p"
    monkeypatch.setattr(sys, "stdin", io.StringIO("x" * 1100 + "\n"))
    assert ipc_cli.main(["principal", "create", str(d), "--encrypt"]) == ipc_cli.EXIT_BAD_ARG
    assert "at most 1023 bytes" in _one_error_line(capsys)
    assert not d.exists()

    assert ipc_cli.main(["principal", "create", str(d)]) == ipc_cli.EXIT_OK
    Principal.load(d).save(d, passphrase=b"pw")

    def ctrl_d(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr(getpass, "getpass", ctrl_d)
    capsys.readouterr()
    assert ipc_cli.main(["principal", "dump", str(d)]) == ipc_cli.EXIT_BAD_ARG
    assert "end of input" in _one_error_line(capsys)
    assert ipc_cli.main(["principal", "create", str(tmp_path / "q"), "--encrypt"]) == 3
    assert "end of input" in _one_error_line(capsys)

    strict = io.TextIOWrapper(io.BytesIO(b"\xff\xfe\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", strict)
    assert ipc_cli.main(["principal", "dump", str(d)]) == ipc_cli.EXIT_BAD_ARG
    line = _one_error_line(capsys)
    assert "not text in the input's encoding" in line and "0xff" not in line  # (no secret)


def test_a_passphrase_that_is_not_utf8_is_used_as_its_bytes(tmp_path: Path) -> None:
    """Standard input read with surrogateescape (UTF-8 mode, a C locale) gives lone
    surrogates for bytes that are not UTF-8: encoding them strictly once ended in a
    UnicodeEncodeError traceback. They are now the bytes that were read."""
    d = tmp_path / "p"
    env = _env(PYTHONUTF8="1")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "ipcclient", *args],
            input=b"\xff\xfe\n",
            capture_output=True,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )

    done = run("principal", "create", str(d), "--encrypt")
    assert done.returncode == 0, done.stderr
    assert Principal.load(d, passphrase=b"\xff\xfe").store.default is not None
    dump = run("principal", "dump", str(d))
    assert dump.returncode == 0 and b"Default:     p" in dump.stdout, dump.stderr


def test_extensions_that_print_like_others_are_refused_and_output_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--blessing idp`` + U+FE0F (invisible) once made a root that printed as ``idp``;
    bidirectional controls and zero-width characters in printed text reached the terminal."""
    for name in ("idp\ufe0f", "id\u034fp", "idp\uff1aalice", "jose\u0301", "\u3231acme"):
        code = ipc_cli.main(["principal", "create", str(tmp_path / "x"), "--blessing", name])
        assert code == ipc_cli.EXIT_BAD_ARG
        assert "invalid blessing extension" in _one_error_line(capsys)
    assert not (tmp_path / "x").exists()
    ipc_cli.out("a\u202eb\u200dc\u2066d\ufeffe\x1bf")
    ipc_cli.err("g\u200bh")
    printed = capsys.readouterr()
    assert printed.out == "a\\u202eb\\u200dc\\u2066d\\ufeffe\\x1bf\n"
    assert printed.err == "g\\u200bh\n"
    ipc_cli.out(ipc_cli.to_json(["\u200d", "\u202e"]))  # (inside JSON: the same text)
    assert json.loads(capsys.readouterr().out) == ["\u200d", "\u202e"]


def test_names_made_before_work_and_their_invisible_characters_print_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A principal saved by an earlier release with the blessing ``㈱acme:alice❤️`` (U+FE0F)
    once failed to load (exit 3); its variation selector, like every other default-ignorable
    character and U+2800, once printed as nothing."""
    from tests.unit.test_security_compat import saved_old_principal

    d = tmp_path / "old"
    saved_old_principal(d, "\u3231acme", "alice\u2764\ufe0f")
    os.chmod(d, 0o700)
    assert ipc_cli.main(["principal", "dump", str(d)]) == ipc_cli.EXIT_OK
    dumped = capsys.readouterr().out
    assert "\u3231acme:alice\u2764\\ufe0f" in dumped and "\ufe0f" not in dumped
    # A name made now meets the stricter rule; U+00B4 and U+309B are not look-alikes.
    for name in ("D\u00b4Angelo", "\u309b"):
        new = tmp_path / f"new{len(name)}"
        assert ipc_cli.main(["principal", "create", str(new), "--blessing", name]) == 0
        assert f"blessed as {name}," in capsys.readouterr().out
    invisible = "a\ufe0fb\u180bc\u3164d\u034fe\u2800f\U000e0100g\u00adh"
    ipc_cli.out(invisible)
    assert capsys.readouterr().out == (
        "a\\ufe0fb\\u180bc\\u3164d\\u034fe\\u2800f\\udb40\\udd00g\\u00adh\n"
    )
    ipc_cli.out(ipc_cli.to_json([invisible]))  # (inside JSON: the same text)
    assert json.loads(capsys.readouterr().out) == [invisible]


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_principal_directory_others_may_write_to_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One only its group may write to (``mkdir`` under umask 002) is used, with a warning
    line: it was once refused (exit code 5)."""
    d = tmp_path / "p"
    d.mkdir()
    os.chmod(d, 0o777)
    assert ipc_cli.main(["principal", "create", str(d)]) == ipc_cli.EXIT_OK
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700  # save made it private
    os.chmod(d, 0o777)
    capsys.readouterr()
    assert ipc_cli.main(["principal", "dump", str(d)]) == ipc_cli.EXIT_NO_ACCESS
    line = _one_error_line(capsys)
    assert "writable by others" in line and "chmod 700" in line
    os.chmod(d, 0o775)
    assert ipc_cli.main(["principal", "dump", str(d)]) == ipc_cli.EXIT_OK
    printed = capsys.readouterr()
    assert printed.out.startswith(f"Principal:   {d}\n")
    (warning,) = printed.err.strip().splitlines()
    assert warning.startswith("ipc: warning: ") and str(d) in warning and "chmod 700" in warning
    # set-default saves the principal back: its directory is private again.
    assert ipc_cli.main(["principal", "set-default", str(d), str(d)]) == ipc_cli.EXIT_OK
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_console_script_and_module_run() -> None:
    assert ipc("--help").returncode == 0
    script = Path(sys.executable).with_name("ipc")
    done = subprocess.run(
        [str(script), "principal", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0 and "set-default" in done.stdout


# --- in-process: helpers and the environment ------------------------------------------------


def test_exit_codes_by_kind() -> None:
    assert ipc_cli.exit_code(errors.TimeoutError("x")) == ipc_cli.EXIT_TIMEOUT
    assert ipc_cli.exit_code(errors.ConnectionFailedError("x")) == ipc_cli.EXIT_CONNECTION
    assert ipc_cli.exit_code(errors.BadDischargeError("x")) == ipc_cli.EXIT_NO_ACCESS
    assert ipc_cli.exit_code(errors.CanceledError("x")) == ipc_cli.EXIT_INTERRUPTED
    assert ipc_cli.exit_code(errors.InternalError("x")) == ipc_cli.EXIT_FAILED
    assert ipc_cli.exit_code(errors.IPCError("x", id="peer.Custom")) == ipc_cli.EXIT_FAILED
    assert ipc_cli.exit_code(errors.NoServersError("x")) == ipc_cli.EXIT_NOT_FOUND
    unreachable = errors.NoServersError("x", action=errors.RetryAction.RETRY_CONNECTION)
    assert ipc_cli.exit_code(unreachable) == ipc_cli.EXIT_CONNECTION


def test_durations_trees_and_json() -> None:
    assert ipc_cli.parse_duration("90") == 90.0
    assert ipc_cli.parse_duration("15m") == 900.0
    assert ipc_cli.parse_duration("1.5h") == 5400.0
    for bad in ("", "0", "-3s", "3w"):
        with pytest.raises(ipc_cli.CommandError):
            ipc_cli.parse_duration(bad)
    lines = list(ipc_cli.tree_lines({"a/b": ["/s1"], "a/c": [], "d": ["/s2", "/s3"]}))
    assert lines == ["├── a", "│   ├── b  /s1", "│   └── c", "└── d  /s2, /s3"]
    assert ipc_cli.to_json(b"\x00\x01") == '"AAE="'
    assert ipc_cli.to_json((1, "é")) == '[1, "é"]'
    # What a server may send that JSON cannot hold: map keys that are bytes or arrays (a
    # TypeError traceback once), NaN and infinities (printed as bare NaN and Infinity).
    odd = {b"k": 1, (1, 2): [float("nan"), float("-inf")], 3: {None: 1.5, float("inf"): 2}}
    printed = ipc_cli.to_json(odd)
    assert printed == '{"aw==": 1, "(1, 2)": ["nan", "-inf"], "3": {"null": 1.5, "inf": 2}}'
    assert json.loads(printed, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only() -> None:
    tty = _Tty()
    with ipc_cli.Progress("waiting for x", stream=tty, delay=0.0) as progress:
        progress.note("2 items")
        deadline = time.monotonic() + 10
        while "2 items" not in tty.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "waiting for x ... " in tty.getvalue() and "2 items" in tty.getvalue()
    assert tty.getvalue().endswith("\r\x1b[K")  # the line is erased at the end

    plain = io.StringIO()
    with ipc_cli.Progress("waiting", stream=plain, delay=0.0):
        time.sleep(0.05)
    assert plain.getvalue() == ""


def test_client_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Principal.generate()
    p.store.default = p.bless_self("envy")
    p.save(tmp_path / "envy")
    monkeypatch.setenv(ipc_env.CREDENTIALS_VAR, str(tmp_path / "envy"))
    monkeypatch.setenv(ipc_env.NAMESPACE_VAR, " /127.0.0.1:8101, ,/127.0.0.1:8102 ")
    with Client.from_env() as client:
        assert client.principal.public_key == p.public_key
        assert client.namespace.roots == ("/127.0.0.1:8101", "/127.0.0.1:8102")
    with Client.from_env(tmp_path / "envy", roots=["/127.0.0.1:9"]) as client:
        assert client.namespace.roots == ("/127.0.0.1:9",)

    monkeypatch.setenv(ipc_env.CREDENTIALS_VAR, str(tmp_path / "missing"))
    with pytest.raises(errors.NoExistError, match="IPCCLIENT_CREDENTIALS"):
        Client.from_env()
    monkeypatch.delenv(ipc_env.CREDENTIALS_VAR)
    monkeypatch.delenv(ipc_env.NAMESPACE_VAR)
    with Client.from_env() as client:  # neither: a fresh principal and no roots, as Client()
        assert client.namespace.roots == ()
        assert client.principal.public_key != p.public_key
    with pytest.raises(errors.BadArgError):
        ipc_env.roots("/127.0.0.1:1")  # type: ignore[arg-type]


def test_main_in_process_reports_a_missing_principal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ipc_cli.main(["principal", "dump", str(tmp_path / "none")])
    assert code == ipc_cli.EXIT_NOT_FOUND
    assert capsys.readouterr().err.startswith("ipc: error: ipc.NoExist")


@expose
class _LyingGlob:
    """A mount table whose Glob streams whatever items it is given."""

    items: list[Any] = []

    def Glob(self, call: ServerCall, pattern: str) -> int:
        for item in self.items:
            call.send(item)
        return len(self.items)

    def lookup(self, suffix: str) -> tuple[Any, AllowEveryone]:  # (every suffix)
        return self, AllowEveryone()


def test_glob_prints_what_a_lying_mount_table_streams_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed items (servers not a list, a TTL of inf, NaN or 10**400) once ended
    ``ipc glob`` with a TypeError, OverflowError or ValueError traceback; a name with
    terminal escape sequences in it is shown escaped, not sent to the terminal."""
    family = Family()
    family.member("cli").save(tmp_path)
    liar = _LyingGlob()
    liar.items = [
        {"name": "a", "servers": 5},
        {"name": "b", "servers": [{"server": "/h:1", "ttl": float("inf")}]},
        {"name": "c", "servers": [{"server": "/h:1", "ttl": float("nan")}]},
        {"name": "d", "servers": [{"server": ["/h:1"], "ttl": 10**400}]},
        {"name": "e\x1b]0;pwned\x07\x1b[2J", "servers": [{"server": "/h:1", "ttl": 5}]},
    ]
    server = Server(family.member("mt"), serves_mount_table=True)
    try:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve_dispatcher(liar)
        args = ["--credentials", str(tmp_path), "--namespace", "/" + ep]
        code = ipc_cli.main([*args, "glob", "--timeout", "10", "..."])
    finally:
        server.stop()
    printed = capsys.readouterr()
    assert code == ipc_cli.EXIT_OK, printed.err
    lines = printed.out.splitlines()
    assert lines[:3] == ["├── a", "├── b  /h:1 (ttl ?)", "├── c  /h:1 (ttl ?)"]
    assert lines[3].startswith("├── d  ? (ttl ") and lines[3].endswith("d17h)")
    assert lines[4:] == ["└── e\\x1b]0;pwned\\x07\\x1b[2J  /h:1 (ttl 5s)"]


def test_mounttable_published_under_a_name(world: World) -> None:
    sub = Daemon("mounttable", "--name", "sub", env=world.env(credentials=str(world.root / "mt")))
    try:
        assert "└── sub  " + sub.line in world.ipc("glob").stdout
        # A name below "sub" lives in the second table: resolution walks into it.
        done = world.ipc("mount", "sub/x", "/127.0.0.1:9")
        assert done.returncode == 0, done.stderr
        assert world.ipc("resolve", "sub/x").stdout.split() == ["/127.0.0.1:9"]
        assert "x  /127.0.0.1:9" in world.ipc("glob", sub.line + "/...").stdout
    finally:
        assert sub.stop() == 0
    assert "sub" not in world.ipc("glob").stdout


def test_a_closed_output_ends_quietly(world: World) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipcclient", "signature", "apps/fortune"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.env(),
    )
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head` does once it has read enough
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == ipc_cli.EXIT_BROKEN_PIPE
    assert err == ""


# --- standard streams: bytes that are not text, closed streams, items that cannot go -----------


def _ipc_bytes(
    *args: str,
    env: dict[str, str],
    stdin: bytes = b"",
    close: int | None = None,
    stdout: int = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m ipcclient ARGS`` on bytes; ``close``: a standard stream (0, 1, 2) the
    command starts with closed (as ``<&-``, ``>&-``, ``2>&-``)."""

    def closing() -> None:  # pragma: no cover - runs in the child before exec
        if close is not None:
            os.close(close)

    return subprocess.run(
        [sys.executable, "-m", "ipcclient", *args],
        input=stdin if close != 0 else None,
        stdin=subprocess.DEVNULL if close == 0 else None,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=closing,
        timeout=TIMEOUT,
        check=False,
    )


def _error_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipc: error: "), lines
    return lines[0]


def test_stdin_items_that_cannot_be_read_or_sent_end_the_call_at_once(world: World) -> None:
    """An item the call cannot encode (nested over 64 deep, over 4 MiB) was once dropped
    without closing the send side: the call hung until --timeout and exited 6. A line that
    is not text in a strict locale ended in a UnicodeDecodeError traceback."""
    strict = {**world.env(), "PYTHONIOENCODING": "utf-8:strict"}
    lenient = {**world.env(), "PYTHONIOENCODING": "utf-8:surrogateescape"}
    deep = b"[" * 100 + b"]" * 100
    large = b'"' + b"x" * (5 << 20) + b'"'
    cases = [
        (b"1\n" + deep + b"\n2\n", world.env(), "standard input line 2: ", "deeper than 64"),
        (b"1\n" + large + b"\n", world.env(), "standard input line 2: ", "message limit"),
        (b"1\n\xff\xfe\n2\n", strict, "standard input line 2 is not text", "(utf-8)"),
        (b'1\n"\xff\xfe"\n', lenient, "standard input line 2 is not text", "(utf-8)"),
    ]
    for stdin, env, first, second in cases:
        args = ("call", "apps/fortune", "Double", "--stdin", "--timeout", "20")
        done = _ipc_bytes(*args, env=env, stdin=stdin)
        assert done.returncode == ipc_cli.EXIT_BAD_ARG, (stdin[:20], done.stderr)
        line = _error_line(done.stderr)
        assert first in line and second in line, line


def test_closed_or_broken_standard_streams_are_no_traceback(world: World) -> None:
    """``ipc --version | head -c0`` (parsing ran outside main's handling), standard output
    closed (``sys.stdout`` is None), standard input closed with ``--stdin``, and standard
    error closed (the error line failed, exit code 1) each ended in a traceback."""
    read, write = os.pipe()
    os.close(read)  # (the reader went away before anything was written)
    try:
        done = _ipc_bytes("--version", env=world.env(), stdout=write)
    finally:
        os.close(write)
    assert done.returncode == ipc_cli.EXIT_BROKEN_PIPE and done.stderr == b""

    done = _ipc_bytes("call", "apps/fortune", "Stream", "3", env=world.env(), close=1)
    assert done.returncode == ipc_cli.EXIT_BROKEN_PIPE and done.stderr == b""

    done = _ipc_bytes("call", "apps/fortune", "Double", "--stdin", env=world.env(), close=0)
    assert done.returncode == ipc_cli.EXIT_BAD_ARG
    assert "standard input is closed" in _error_line(done.stderr)

    done = _ipc_bytes("call", "apps/nothing", "Get", env=world.env(), close=2)
    assert done.returncode == ipc_cli.EXIT_NOT_FOUND


def test_bytes_that_are_not_utf8_under_a_strict_locale(tmp_path: Path) -> None:
    """A blessing on standard input that is not text ended in a UnicodeDecodeError
    traceback, and printing a directory name holding such bytes in a UnicodeEncodeError
    traceback (after the principal was saved)."""
    env = _env(PYTHONIOENCODING="utf-8:strict")
    c2 = str(tmp_path / "c2")
    assert _ipc_bytes("principal", "create", c2, env=env).returncode == 0
    done = _ipc_bytes("principal", "set-default", c2, "-", env=env, stdin=b"ipcb1:\xff\n")
    assert done.returncode == ipc_cli.EXIT_BAD_ARG
    assert "standard input is not text" in _error_line(done.stderr)

    odd = os.fsdecode(bytes(tmp_path) + b"/\xff")
    done = _ipc_bytes("principal", "create", odd, "--blessing", "okname", env=env)
    assert done.returncode == 0, done.stderr
    assert b"/\\udcff: blessed as okname" in done.stdout
    done = _ipc_bytes("principal", "dump", odd, env=env)
    assert done.returncode == 0, done.stderr
    assert b"/\\udcff\n" in done.stdout and b"Default:     okname" in done.stdout


def test_out_escapes_what_the_encoding_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", strict)
    ipc_cli.out("pc/\udcff é")
    assert raw.getvalue() == b"pc/\\udcff \\xe9\n"
    monkeypatch.setattr(sys, "stderr", None)
    ipc_cli.err("nowhere to say it")  # (standard error closed: nothing, no AttributeError)
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(BrokenPipeError):
        ipc_cli.out("x")


def test_bless_out_never_replaces_a_file_or_follows_a_link_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` once overwrote whatever was there, through a symbolic link too: a typo
    (``--out idp/key.pem``) destroyed a private key."""
    idp = tmp_path / "idp"
    assert ipc_cli.main(["principal", "create", str(idp)]) == ipc_cli.EXIT_OK
    key = (idp / "key.pem").read_bytes()
    bless = ["principal", "bless", str(idp), str(idp), "x", "--out"]
    assert ipc_cli.main([*bless, str(idp / "key.pem")]) == ipc_cli.EXIT_BAD_ARG
    line = _one_error_line(capsys)
    assert "ipc.Exist" in line and "(--force replaces it)" in line
    assert (idp / "key.pem").read_bytes() == key

    target, link = tmp_path / "target", tmp_path / "link"
    link.symlink_to(target)  # (dangling: following it would create the target)
    assert ipc_cli.main([*bless, str(link)]) == ipc_cli.EXIT_BAD_ARG
    assert "ipc.Exist" in _one_error_line(capsys)
    assert not target.exists()
    assert ipc_cli.main([*bless, str(link), "--force"]) == ipc_cli.EXIT_OK
    assert not link.is_symlink() and not target.exists()
    assert link.read_text().startswith(ipc_cli.BLESSING_TOKEN_PREFIX)

    new = tmp_path / "new"
    assert ipc_cli.main([*bless, str(new)]) == ipc_cli.EXIT_OK
    new.write_text("old")
    assert ipc_cli.main([*bless, str(new), "--force"]) == ipc_cli.EXIT_OK
    assert new.read_text().startswith(ipc_cli.BLESSING_TOKEN_PREFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idp", "link", "new"]  # (no temp)


def test_empty_names_and_missing_blessing_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--blessing ''`` and ``--pattern ''`` fell back to the defaults without a word; a
    BLESSINGS file that does not exist was reported as "not a blessing"."""
    c2 = tmp_path / "c2"
    assert ipc_cli.main(["principal", "create", str(c2), "--blessing", ""]) == 3
    assert "--blessing: an empty name" in _one_error_line(capsys)
    assert not c2.exists()
    assert ipc_cli.main(["principal", "create", str(c2)]) == ipc_cli.EXIT_OK
    assert ipc_cli.main(["principal", "add-root", str(c2), str(c2), "--pattern", ""]) == 3
    assert "--pattern: an empty pattern" in _one_error_line(capsys)
    missing = str(tmp_path / "nonexist")
    assert ipc_cli.main(["principal", "set-default", str(c2), missing]) == 3
    assert "no such file" in _one_error_line(capsys)


def _wait_for_line(stream: Any, text: str, timeout: float = TIMEOUT) -> str:
    """The first line of ``stream`` (a pipe) holding ``text``, read until ``timeout``."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                line = stream.readline()
                if text in line:
                    return str(line)
                if not line:
                    break
    finally:
        sel.close()
    raise AssertionError(f"no line with {text!r}")


def test_daemon_names_need_a_namespace_and_failing_mounts_are_reported(
    tmp_path: Path,
) -> None:
    """``--name`` with no namespace printed "serving ... as NAME" and published nothing;
    a mount table that could not be reached went unreported (the library's warnings had
    no handler)."""
    server = str(tmp_path / "server")
    assert ipc("principal", "create", server).returncode == 0
    for args in (("serve", "--name", "apps/x"), ("mounttable", "--name", "sub")):
        done = ipc("--credentials", server, *args)
        assert done.returncode == ipc_cli.EXIT_USAGE, done.stderr
        assert "no mount table to publish it in" in done.stderr

    closed = socket.socket()  # (bound, not listening: a connection is refused)
    closed.bind(("127.0.0.1", 0))
    try:
        root = "/127.0.0.1:%d" % closed.getsockname()[1]
        daemon = Daemon(
            "--credentials", server, "--namespace", root, "serve", "--name", "apps/x", env=_env()
        )
        try:
            assert daemon.proc.stderr is not None
            line = _wait_for_line(daemon.proc.stderr, "ipc: warning: publisher:")
            assert "apps/x" in line and "Connection refused" in line
        finally:
            assert daemon.stop() == 0
    finally:
        closed.close()


def test_a_daemon_stopped_while_it_starts_stops_in_order(
    family: Family, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (or Ctrl-C) can land before the daemon waits: a supervisor stopping it at
    its first line, which may be a warning a background thread printed. That ended with
    the KeyboardInterrupt's exit code 130 instead of the orderly stop's 0."""
    from ipcclient.cli.daemons import _run_daemon

    server = Server(family.member("server"))
    args = argparse.Namespace(listen="127.0.0.1:0", name=None, grace=0.0)

    def serve(srv: Server, ep: str) -> str:
        raise KeyboardInterrupt  # (the signal, as it lands while starting)

    assert _run_daemon(args, server, None, serve) == 0
    assert server.wait(timeout=0)  # (stopped: True at once)
    assert capsys.readouterr().out == ""


def test_a_servers_refusal_keeps_the_servers_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that does not trust our root says to add it to *its* roots: rewriting that
    into 'ipc principal add-root' would send the user to change their own principal."""

    def refused(args: argparse.Namespace) -> int:
        raise errors.NoAccessError(
            "server: not trusted (to trust it, add the identity provider's blessings to the "
            "roots: principal.roots.add_blessings(provider_blessings))"
        )

    monkeypatch.setattr(ipc_cli, "cmd_signature", refused)
    assert ipc_cli.main(["signature", "x"]) == ipc_cli.EXIT_NO_ACCESS
    line = capsys.readouterr().err
    assert "principal.roots.add_blessings(provider_blessings)" in line
    assert "add-root" not in line


@pytest.mark.interpreted  # (replaces a Server's stop on the instance)
def test_a_second_interrupt_while_a_daemon_stops_still_closes_its_client(
    family: Family,
) -> None:
    from ipcclient.cli.daemons import _run_daemon

    server = Server(family.member("server"))
    client = Client(family.member("client"))
    stop = server.stop

    def stop_interrupted(*a: Any, **kw: Any) -> None:
        stop(*a, **kw)
        raise KeyboardInterrupt  # (a second Ctrl-C, as the stop ends)

    monkeypatch_stop = pytest.MonkeyPatch()
    monkeypatch_stop.setattr(server, "stop", stop_interrupted)
    args = argparse.Namespace(listen="127.0.0.1:0", name=None, grace=0.0)

    def serve(srv: Server, ep: str) -> str:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            _run_daemon(args, server, client, serve)
    finally:
        monkeypatch_stop.undo()
    assert client.closed


# --- python -m ipcclient.interop ---------------------------------------------------------------


@pytest.mark.usefixtures("ctrl_c")  # (the run started with SIGINT ignored would inherit it)
def test_interop_command_refuses_bad_timeouts_and_is_interrupted_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --timeout -1`` was accepted; Ctrl-C during ``run`` printed a KeyboardInterrupt
    traceback; ``serve`` handled SIGINT only once its server had started."""
    from ipcclient import interop

    for bad in ("-1", "0", "nan", "inf"):
        with pytest.raises(SystemExit) as exited:
            interop.main(["run", "/127.0.0.1:1", "--timeout", bad])
        assert exited.value.code == 2
        assert "--timeout: must be a number of seconds > 0" in capsys.readouterr().err

    silent = socket.socket()  # accepts, never answers: the run waits in its first case
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent.settimeout(TIMEOUT)
    port = silent.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipcclient.interop", "run", f"/127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        conn, _ = silent.accept()  # (the run has started: Python's SIGINT handler is in)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        conn.close()
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130 and err == "interop: interrupted\n", err

    real_start = interop.start_server
    before = signal.getsignal(signal.SIGINT)

    def interrupted_while_starting(protocol: str, address: str) -> Server:
        signal.raise_signal(signal.SIGINT)  # (Ctrl-C while the server starts)
        return real_start(protocol, address)

    monkeypatch.setattr(interop, "start_server", interrupted_while_starting)
    assert interop.main(["serve"]) == 0  # started, then stopped in order
    assert capsys.readouterr().out.startswith("@")
    assert signal.getsignal(signal.SIGINT) is before
