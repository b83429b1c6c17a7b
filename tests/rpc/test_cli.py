"""The ``ipc`` command, run for real: each command in its own process (``python -m
ipcclient``), a mount table daemon and the example service as background processes, all over
loopback; plus the pure helpers of the command line in-process."""

from __future__ import annotations

import ctypes
import getpass
import io
import json
import os
import selectors
import signal
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
