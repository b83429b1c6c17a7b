"""The scripts in examples/ run as the tutorial says: the command-line tour in bash, and the
Python server and client in two processes against a mount table run by ``ipc``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.rpc.test_cli import TIMEOUT, Daemon, _env, ipc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_tutorial_script_runs() -> None:
    bindir = str(Path(sys.executable).parent)
    env = _env(PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, str(EXAMPLES / "tutorial.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Default:     idp:alice" in out
    assert "└── apps\n    └── fortune  /@" in out
    assert "Stream(n)\n    Stream n fortunes, then return n." in out
    assert '"A closed mouth gathers no feet."' in out
    assert "2\n4\n6\n3\n" in out
    assert out.rstrip().endswith("after the server stopped:")  # unmounted: nothing left
    assert "no names match '...'" in done.stderr


def test_python_server_and_client_examples(tmp_path: Path) -> None:
    for cmd in (
        ("principal", "create", str(tmp_path / "idp"), "--blessing", "idp"),
        ("principal", "fork", str(tmp_path / "idp"), str(tmp_path / "mt"), "mt"),
        ("principal", "fork", str(tmp_path / "idp"), str(tmp_path / "fortune"), "fortune"),
        ("principal", "fork", str(tmp_path / "idp"), str(tmp_path / "alice"), "alice"),
    ):
        assert ipc(*cmd).returncode == 0
    mt = Daemon("--credentials", str(tmp_path / "mt"), "mounttable", env=_env())
    try:
        ns = mt.line
        server = Daemon.script(
            EXAMPLES / "fortune_server.py",
            "tutorial/fortune",
            env=_env(IPCCLIENT_CREDENTIALS=str(tmp_path / "fortune"), IPCCLIENT_NAMESPACE=ns),
        )
        try:
            client_env = _env(IPCCLIENT_CREDENTIALS=str(tmp_path / "alice"), IPCCLIENT_NAMESPACE=ns)
            done = subprocess.run(
                [sys.executable, str(EXAMPLES / "fortune_client.py"), "tutorial/fortune"],
                capture_output=True,
                text=True,
                env=client_env,
                timeout=TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == [
                "Get -> Deadlines are a kindness to the future.",
                "Both -> 'Deadlines are a kindness to the future.', "
                "'You will be authenticated, then authorized.'",
                "Stream <- Deadlines are a kindness to the future.",
                "Stream <- You will be authenticated, then authorized.",
                "Stream -> 2",
            ]
            sig = ipc("signature", "tutorial/fortune", env=client_env)
            assert "Both()\n    Two results at once" in sig.stdout
        finally:
            assert server.stop() == 0  # SIGTERM: unmounts and exits cleanly
        glob = ipc(
            "glob", env=_env(IPCCLIENT_CREDENTIALS=str(tmp_path / "alice"), IPCCLIENT_NAMESPACE=ns)
        )
        assert "fortune" not in glob.stdout
    finally:
        mt.stop()
