"""A second, independent client written from docs/protocol.md alone (and docs/interop.md for
the interop cases), talking to the real ipcclient Server over loopback TCP.

The client side uses only the standard library, cbor2 and cryptography: the hellos, the key
schedule, the records, the auth messages, the blessings (our own root and certificate, signed
with our own Ed25519 key), the frames and the request/response messages are all built here.
ipcclient is used only to run the server under test and to make the server's principal.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ipcclient.security import Principal, caveats
from ipcclient.security.keys import PublicKey
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerOptions

pytestmark = pytest.mark.timeout(60)

IO_TIMEOUT = 5.0

# --- section 1: conventions, project tags ----------------------------------------------------

TAG_ERROR = 0xF000
TAG_BLESSINGS = 0xF001
TAG_DISCHARGE = 0xF002

# --- section 2: frames -----------------------------------------------------------------------

DATA, CREDIT, RESET, PING, GOAWAY = 0, 1, 2, 3, 4
FIN, OPEN = 0x01, 0x02
ACK = 0x01
FRAME_HEADER = struct.Struct(">BBII")

# --- section 4: handshake ----------------------------------------------------------------------

MAGIC = b"\x8fIPC"
MAX_HELLO = 1024
MAX_RECORD = 262_160
MAX_PLAINTEXT = MAX_RECORD - 16
HKDF_INFO = b"ipcclient vc v1 record keys"
SIG_PREFIX = b"ipcclient-sig-v1\x00"
MY_WINDOW = 1_048_576
MY_MAX_FRAME = 65_536


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, purpose: bytes, message: bytes) -> bytes:
    """security.md "Domain separation": prefix || purpose || 00 || message."""
    return key.sign(SIG_PREFIX + purpose + b"\x00" + message)


def verify(key_raw: bytes, sig: bytes, purpose: bytes, message: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(key_raw).verify(
        sig, SIG_PREFIX + purpose + b"\x00" + message
    )


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def connect(endpoint: str) -> socket.socket:
    """Dial the address field of an endpoint string (naming.md, "Endpoints")."""
    fields = endpoint.split("@")
    assert fields[0] == "" and fields[1] == "1", endpoint
    assert fields[2] == "tcp", endpoint
    address = fields[3].replace("%40", "@").replace("%25", "%")
    host, _, port = address.rpartition(":")
    assert len(fields[4]) == 32 and int(fields[4], 16) >= 0  # routing id: 32 hex digits
    assert fields[7] in ("s", "m", "ml", "l")
    assert endpoint.endswith("@@")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=IO_TIMEOUT)
    sock.settimeout(IO_TIMEOUT)
    return sock


# --- 4.1 hellos --------------------------------------------------------------------------------


def encode_hello(fields: dict[str, Any]) -> bytes:
    body = cbor2.dumps(fields)
    assert len(body) <= MAX_HELLO
    return MAGIC + struct.pack(">I", len(body)) + body


def read_hello(sock: socket.socket) -> tuple[bytes, dict[str, Any]]:
    magic = recv_exact(sock, 4)
    assert magic == MAGIC, magic
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    assert length <= MAX_HELLO
    body = recv_exact(sock, length)
    value = cbor2.loads(body)
    assert isinstance(value, dict)
    return magic + struct.pack(">I", length) + body, value


def check_error(value: Any) -> dict[str, Any]:
    """Section 1, "Errors": tag 0xF000 around a map with text keys."""
    assert isinstance(value, cbor2.CBORTag) and value.tag == TAG_ERROR, value
    err = value.value  # cbor2 may give a frozendict/tuples inside a tag
    assert isinstance(err, Mapping) and set(err) <= {"id", "action", "msg", "params"}, err
    assert isinstance(err["id"], str) and 1 <= len(err["id"]) <= 256
    assert isinstance(err.get("action", 0), int)
    assert isinstance(err.get("msg", ""), str)
    assert isinstance(err.get("params", []), (list, tuple))
    return dict(err)


# --- security.md "Wire forms": caveats, certificates, blessings ----------------------------------


def caveat(kind: str, params: Any) -> list[Any]:
    return [kind, cbor2.dumps(params)]


def caveat_digest(cav: list[Any]) -> bytes:
    kind, params = cav
    return h(h(kind.encode()) + h(params))


def chain_digests(chain: list[list[Any]]) -> list[bytes]:
    d = bytes(32)
    out = []
    for extension, key_raw, cavs, _sig in chain:
        content = h(cbor2.dumps([extension, key_raw, [caveat_digest(c) for c in cavs]]))
        d = h(d + content)
        out.append(d)
    return out


def certificate(
    signer: Ed25519PrivateKey, prev: list[list[Any]], extension: str, key_raw: bytes, cavs: list
) -> list[Any]:
    """Append-ready certificate: signed by ``signer`` over the chained digest."""
    unsigned = [extension, key_raw, cavs, b""]
    d = chain_digests([*prev, unsigned])[-1]
    return [extension, key_raw, cavs, sign(signer, b"cert", d)]


def verify_blessings(tagged: Any, bound_key: bytes) -> tuple[list[str], list[bytes]]:
    """Check structure, every certificate signature and the binding to ``bound_key``.
    Returns the chain names and their root keys."""
    assert isinstance(tagged, cbor2.CBORTag) and tagged.tag == TAG_BLESSINGS, tagged
    chains = tagged.value
    # cbor2 may hand arrays inside a tag back as tuples; both are CBOR arrays.
    assert isinstance(chains, (list, tuple)) and 1 <= len(chains) <= 32
    names, roots = [], []
    for chain in chains:
        assert isinstance(chain, (list, tuple)) and 1 <= len(chain) <= 32
        digests = chain_digests(chain)
        for i, (cert, d) in enumerate(zip(chain, digests, strict=True)):
            extension, key_raw, cavs, sig = cert
            assert isinstance(extension, str) and len(key_raw) == 32 and len(sig) == 64
            for cav in cavs:
                assert isinstance(cav[0], str) and isinstance(cav[1], bytes)
                cbor2.loads(cav[1])
            signer = chain[i - 1][1] if i else key_raw
            verify(signer, sig, b"cert", d)
        assert chain[-1][1] == bound_key, "blessings not bound to the auth key"
        names.append(":".join(cert[0] for cert in chain))
        roots.append(chain[0][1])
    return names, roots


# --- 4.5 records ------------------------------------------------------------------------------


class RecordLayer:
    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self.send_aead, self.recv_aead = AESGCM(send_key), AESGCM(recv_key)
        self.send_counter = self.recv_counter = 0

    @staticmethod
    def nonce(counter: int) -> bytes:
        return bytes(4) + struct.pack(">Q", counter)

    def seal(self, plaintext: bytes) -> bytes:
        header = struct.pack(">I", len(plaintext) + 16)
        ct = self.send_aead.encrypt(self.nonce(self.send_counter), plaintext, header)
        self.send_counter += 1
        return header + ct

    def send(self, plaintext: bytes) -> None:
        self.sock.sendall(self.seal(plaintext))

    def recv(self) -> bytes:
        header = recv_exact(self.sock, 4)
        (length,) = struct.unpack(">I", header)
        assert 16 <= length <= MAX_RECORD, length
        ct = recv_exact(self.sock, length)
        pt = self.recv_aead.decrypt(self.nonce(self.recv_counter), ct, header)
        self.recv_counter += 1
        return pt


# --- 4.1-4.3 the handshake --------------------------------------------------------------------


class VC:
    """A client VC: handshake, then frames over records, then calls over flows."""

    def __init__(
        self,
        sock: socket.socket,
        me: Ed25519PrivateKey,
        my_blessings: cbor2.CBORTag,
        trusted_server_root: bytes,
        *,
        honest: bool = True,
    ) -> None:
        self.sock = sock
        x_priv = X25519PrivateKey.generate()
        client_hello = encode_hello(
            {
                "versions": [1, 1],
                "key_share": raw_public(x_priv),
                "random": os.urandom(32),
                "window": MY_WINDOW,
                "max_frame": MY_MAX_FRAME,
            }
        )
        sock.sendall(client_hello)
        server_hello, sh = read_hello(sock)
        assert "error" not in sh, sh
        assert sh["version"] == 1
        assert isinstance(sh["key_share"], bytes) and len(sh["key_share"]) == 32
        assert isinstance(sh["random"], bytes) and len(sh["random"]) == 32
        assert 1 <= sh["window"] <= 2**31 - 1
        assert 1024 <= sh["max_frame"] <= 16_777_216
        self.peer_window, self.peer_max_frame = sh["window"], sh["max_frame"]
        # 3.8: the flows we may have open at once (ipcclient's server always announces it)
        self.peer_max_flows = sh["max_flows"]
        assert type(self.peer_max_flows) is int and 1 <= self.peer_max_flows <= 2**32 - 1

        # 4.2 keys
        th1 = h(client_hello + server_hello)
        shared = x_priv.exchange(X25519PublicKey.from_public_bytes(sh["key_share"]))
        assert shared != bytes(32)
        okm = HKDF(algorithm=SHA256(), length=64, salt=th1, info=HKDF_INFO).derive(shared)
        self.records = RecordLayer(sock, send_key=okm[0:32], recv_key=okm[32:64])

        # 4.3 ServerAuth: record 0 of s2c
        server_auth_pt = self.records.recv()
        assert len(server_auth_pt) <= 65_536
        sa = cbor2.loads(server_auth_pt)
        assert isinstance(sa, dict)
        assert len(sa["key"]) == 32 and len(sa["sig"]) == 64
        assert isinstance(sa["discharges"], list)
        verify(sa["key"], sa["sig"], b"vc-auth", th1 + b"server")
        assert sa["blessings"] is not None
        names, roots = verify_blessings(sa["blessings"], sa["key"])
        # Authorize the server: a chain rooted at the key we trust.
        assert any(r == trusted_server_root for r in roots), names
        self.server_names = names
        self.server_key = sa["key"]

        # ClientAuth: record 0 of c2s
        th2 = h(th1 + server_auth_pt)
        client_auth = cbor2.dumps(
            {
                "key": raw_public(me),
                "blessings": my_blessings,
                "discharges": [],
                # A dishonest client signs th1 (no ServerAuth in it) instead of th2.
                "sig": sign(me, b"vc-auth", (th2 if honest else th1) + b"client"),
            }
        )
        # Held back so that it leaves in the same write as the first frames (4: the server
        # MUST accept records that arrive in the same read as ClientAuth).
        self.pending = self.records.seal(client_auth)

        self.next_flow = 1
        self.inbuf = bytearray()
        self.credits_sent = self.credits_received = 0
        self.late_frames = 0

    # --- frames (section 2) over records (4.5) ---

    def write(self, stream: bytes, chunk: int = MAX_PLAINTEXT) -> None:
        """Send frame-stream bytes, cut into records every ``chunk`` bytes wherever that
        falls (frame and record boundaries are independent)."""
        out = bytearray(self.pending)
        self.pending = b""
        for i in range(0, len(stream), chunk):
            out += self.records.seal(stream[i : i + chunk])
        self.sock.sendall(out)

    def send_frame(self, ftype: int, flags: int, flow: int, payload: bytes = b"") -> None:
        self.write(frame(ftype, flags, flow, payload))

    def recv_frame(self) -> tuple[int, int, int, bytes]:
        """The next frame, reassembled from as many records as it takes."""
        while True:
            if len(self.inbuf) >= FRAME_HEADER.size:
                ftype, flags, flow, length = FRAME_HEADER.unpack_from(self.inbuf)
                assert ftype <= GOAWAY and length <= MY_MAX_FRAME, (ftype, length)
                if ftype in (DATA, CREDIT, RESET):
                    assert flow != 0
                else:
                    assert flow == 0
                if len(self.inbuf) >= FRAME_HEADER.size + length:
                    payload = bytes(self.inbuf[FRAME_HEADER.size : FRAME_HEADER.size + length])
                    del self.inbuf[: FRAME_HEADER.size + length]
                    return ftype, flags, flow, payload
            self.inbuf += self.records.recv()

    # --- section 5: one call per flow, with flow control (3.4) ---

    def call(
        self,
        method: str,
        args: list[Any],
        *,
        streamed_args: list[Any] | None = None,
        header: dict[str, Any] | None = None,
        chunk: int = MAX_PLAINTEXT,
    ) -> Reply:
        flow = self.next_flow
        self.next_flow += 2
        hdr = {"method": method, "nargs": len(args), "deadline": 5.0, **(header or {})}
        hdr = {k: v for k, v in hdr.items() if v is not None}  # None: leave the key out
        msgs = [hdr, *args]
        for item in streamed_args or []:
            msgs += [{}, item]
        msgs.append({"end_stream_args": True})
        data = b"".join(message(m) for m in msgs)

        credit = self.peer_window  # our send credit: the server's initial window
        window = MY_WINDOW  # what the server may still send us on this flow
        ungranted = 0
        body = bytearray()
        peer_fin = False

        def process() -> None:
            nonlocal credit, window, ungranted, peer_fin
            ftype, flags, fid, payload = self.recv_frame()
            if ftype == PING:
                assert len(payload) == 8
                if not flags & ACK:
                    self.send_frame(PING, ACK, 0, payload)
                return
            assert ftype != GOAWAY, ("GOAWAY", cbor2.loads(payload) if payload else None)
            if fid != flow:
                # 3.3: our parity and announced before: a late frame of an ended flow.
                assert fid % 2 == 1 and fid < flow, (ftype, flags, fid)
                self.late_frames += 1
                return
            if ftype == RESET:
                raise FlowReset(check_error(cbor2.loads(payload)) if payload else None)
            if ftype == CREDIT:
                assert flags == 0 and len(payload) == 4
                (n,) = struct.unpack(">I", payload)
                assert n > 0
                credit += n
                self.credits_received += 1
                assert credit <= 2**31 - 1
                return
            assert ftype == DATA and not flags & OPEN and not peer_fin
            window -= len(payload)
            assert window >= 0, "the server sent beyond our window"
            body.extend(payload)
            if flags & FIN:
                peer_fin = True  # no CREDIT after the peer's FIN
                return
            ungranted += len(payload)  # consumed at once
            if ungranted >= MY_WINDOW // 4:
                self.send_frame(CREDIT, 0, flow, struct.pack(">I", ungranted))
                window += ungranted
                ungranted = 0
                self.credits_sent += 1

        offset, first = 0, True
        while first or offset < len(data):
            while credit == 0:
                process()
            n = min(len(data) - offset, self.peer_max_frame, credit)
            flags = (OPEN if first else 0) | (FIN if offset + n == len(data) else 0)
            self.write(frame(DATA, flags, flow, data[offset : offset + n]), chunk)
            credit -= n
            offset += n
            first = False
        while not peer_fin:
            process()
        return parse_response(parse_messages(bytes(body)), bytes(body))


class FlowReset(Exception):
    """The server reset the flow (2.3); ``error`` is its error map or None (cancelled)."""

    def __init__(self, error: dict[str, Any] | None) -> None:
        super().__init__(error)
        self.error = error


class Reply(NamedTuple):
    streamed: list[Any]
    results: list[Any]
    error: dict[str, Any] | None
    raw: bytes


def frame(ftype: int, flags: int, flow: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(ftype, flags, flow, len(payload)) + payload


def message(value: Any) -> bytes:
    """Section 5: u32 length || one CBOR value."""
    encoded = cbor2.dumps(value)
    return struct.pack(">I", len(encoded)) + encoded


def parse_messages(stream: bytes) -> list[Any]:
    out, i = [], 0
    while i < len(stream):
        (length,) = struct.unpack_from(">I", stream, i)
        assert 0 < length <= 4 * 1024 * 1024
        out.append(cbor2.loads(stream[i + 4 : i + 4 + length]))
        i += 4 + length
    assert i == len(stream), "trailing bytes after the last message"
    return out


def parse_response(msgs: list[Any], raw: bytes) -> Reply:
    """5.1: (Response{}, item)* then Response{end, nresults} and the results, or
    Response{error, end} and nothing after it."""
    streamed: list[Any] = []
    i = 0
    while True:
        header = msgs[i]
        assert isinstance(header, Mapping), header
        assert set(header) <= {"error", "end", "nresults", "trace"}, header
        i += 1
        if header.get("error") is not None:
            assert header.get("end") is True and i == len(msgs), msgs
            return Reply(streamed, [], check_error(header["error"]), raw)
        if header.get("end"):
            n = header.get("nresults", 0)
            results = msgs[i : i + n]
            assert len(results) == n and i + n == len(msgs)
            return Reply(streamed, results, None, raw)
        assert header == {}, header
        streamed.append(msgs[i])
        i += 1


# --- the system under test ----------------------------------------------------------------------


@expose
class Service:
    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def Echo(self, call: Any, x: Any) -> Any:
        return x

    def Count(self, call: Any, n: int) -> int:
        for i in range(n):
            call.send(i)
        return n

    def Whoami(self, call: Any) -> list[str]:
        return sorted(call.remote_blessing_names)

    def Sum(self, call: Any) -> int:
        return sum(call)

    def Block(self, call: Any) -> str:
        self.started.set()
        assert self.release.wait(IO_TIMEOUT)
        return "released"


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Any:
    """A real server (blessed "sroot:server" by an ipcclient root) and our own identity: an
    Ed25519 root "me" (self-signed) and a client key blessed "me:client" under it."""
    sroot = Principal.generate()
    sroot_b = sroot.bless_self("sroot")
    sp = Principal.generate()
    sp.store.default = sroot.bless(sp.public_key, sroot_b, "server", [caveats.unconstrained_use()])

    my_root = Ed25519PrivateKey.generate()
    me = Ed25519PrivateKey.generate()
    root_cert = certificate(my_root, [], "me", raw_public(my_root), [])
    cavs = [
        caveat("unconstrained", []),
        caveat("expiry", (int(time.time()) + 3600) * 1_000_000_000),
    ]
    client_cert = certificate(my_root, [root_cert], "client", raw_public(me), cavs)
    my_blessings = cbor2.CBORTag(TAG_BLESSINGS, [[root_cert, client_cert]])
    # Our blessings must pass our own verifier before we present them.
    assert verify_blessings(my_blessings, raw_public(me))[0] == ["me:client"]
    sp.roots.add(PublicKey.from_raw(raw_public(my_root)), "me")

    server = Server(sp, options=getattr(request, "param", None))
    service = Service()
    try:
        endpoint = server.listen("tcp", "127.0.0.1:0")
        server.serve(service, AllowEveryone())
        yield endpoint, me, my_blessings, sroot.public_key.raw, service
    finally:
        service.release.set()
        server.stop()


# The doc's 5.2 example request (71 bytes) and 5.3 reply (27 bytes), transcribed.
DOC_ECHO_REQUEST = bytes.fromhex(
    "00000026 a3 666d6574686f64 644563686f 656e61726773 01"
    " 68646561646c696e65 fb4014000000000000"
    " 00000003 426869"
    " 00000012 a16f656e645f73747265616d5f61726773f5".replace(" ", "")
)
DOC_ECHO_REPLY = bytes.fromhex(
    "00000010 a2 63656e64 f5 686e726573756c7473 01 00000003 426869".replace(" ", "")
)


def test_calls_over_an_independent_client(world: Any) -> None:
    endpoint, me, my_blessings, server_root, _ = world
    sock = connect(endpoint)
    try:
        vc = VC(sock, me, my_blessings, server_root)
        assert vc.server_names == ["sroot:server"]

        # Flow 1: the doc's own example, byte for byte (sent behind ClientAuth in one write).
        req = [{"method": "Echo", "nargs": 1, "deadline": 5.0}, b"hi", {"end_stream_args": True}]
        assert b"".join(message(m) for m in req) == DOC_ECHO_REQUEST
        reply = vc.call("Echo", [b"hi"])
        assert reply.results == [b"hi"] and reply.raw == DOC_ECHO_REPLY

        # Flow 3: a richer value, the request cut into 7-byte records.
        value = {"a": [1, -2, 2.5, "x", b"\x00\xff", None, True], "big": 2**70, "n": -(2**70)}
        reply = vc.call("Echo", [value], chunk=7)
        assert reply.streamed == [] and reply.results == [value] and reply.error is None

        # Flow 5: streamed results.
        reply = vc.call("Count", [5])
        assert reply.streamed == [0, 1, 2, 3, 4] and reply.results == [5]

        # Flow 7: streamed args.
        reply = vc.call("Sum", [], streamed_args=[1, 2, 3, 4])
        assert reply.results == [10]

        # Flow 9: the server validated the blessings we built byte by byte.
        assert vc.call("Whoami", []).results == [["me:client"]]

        # Flow 11: 1.5 MB each way: DATA split at max_frame, CREDIT both ways (3.4).
        big = os.urandom(1_500_000)
        assert vc.call("Echo", [big], chunk=100_003).results == [big]
        assert vc.credits_sent >= 1 and vc.credits_received >= 1

        # Flows 13, 15: errors travel as Response{error, end} (5.3, 5.4).
        assert vc.call("Nope", []).error["id"] == "ipc.UnknownMethod"
        err = vc.call("Echo", [1], header={"suffix": "no/such"}).error
        assert err["id"] == "ipc.UnknownSuffix"

        # Flow 17: a leading "/" in the suffix is ignored; no deadline is fine too.
        reply = vc.call("Echo", ["x"], header={"suffix": "/", "deadline": None})
        assert reply.results == ["x"]

        # Flow 19: other header fields (trace context without collection, language).
        ctx = {"t": os.urandom(16), "s": os.urandom(16), "f": 0}
        reply = vc.call("Echo", [2], header={"trace": ctx, "language": "en-US"})
        assert reply.results == [2]

        # Flow 21: cancellation (5.5): open a long stream, RESET it; whatever the server had
        # sent before it saw the RESET is late (3.3) and dropped; flow 23 works as usual.
        flow = vc.next_flow
        vc.next_flow += 2
        request = message({"method": "Count", "nargs": 1}) + message(1_000_000)
        vc.write(frame(DATA, OPEN, flow, request))
        vc.send_frame(RESET, 0, flow)
        assert vc.call("Echo", ["after"]).results == ["after"]

        # PING / ACK (2.4, 3.9), skipping late frames of flow 21.
        vc.send_frame(PING, 0, 0, struct.pack(">Q", 42))
        got = vc.recv_frame()
        while got[0] != PING:
            assert got[0] in (DATA, RESET) and got[2] == flow
            got = vc.recv_frame()
        assert got == (PING, ACK, 0, struct.pack(">Q", 42))

        assert vc.next_flow == 25
        vc.send_frame(GOAWAY, 0, 0)
    finally:
        sock.close()


def test_version_refusal(world: Any) -> None:
    endpoint, *_ = world
    sock = connect(endpoint)
    try:
        hello = encode_hello(
            {
                "versions": [2, 9],
                "key_share": raw_public(X25519PrivateKey.generate()),
                "random": os.urandom(32),
                "window": MY_WINDOW,
                "max_frame": MY_MAX_FRAME,
            }
        )
        sock.sendall(hello)
        _, refusal = read_hello(sock)
        assert set(refusal) == {"error"}, refusal
        assert check_error(refusal["error"])["id"] == "ipc.VersionIncompatible"
        assert sock.recv(1) == b""  # then the server closes
    finally:
        sock.close()


def test_bad_client_signature_is_refused(world: Any) -> None:
    """A ClientAuth signed over the wrong transcript is refused (4.3): the server seals a
    GOAWAY carrying an ipc.NotTrusted error into its record 1 and closes; no call is answered."""
    endpoint, me, my_blessings, server_root, _ = world
    sock = connect(endpoint)
    try:
        vc = VC(sock, me, my_blessings, server_root, honest=False)
        vc.send_frame(DATA, OPEN | FIN, 1, message({"method": "Echo", "nargs": 0}))
        ftype, _flags, fid, payload = vc.recv_frame()
        assert (ftype, fid) == (GOAWAY, 0)
        assert check_error(cbor2.loads(payload))["id"] == "ipc.NotTrusted"
        with pytest.raises(ConnectionError):
            vc.recv_frame()
    finally:
        sock.close()


@pytest.mark.parametrize(
    "world", [ServerOptions(workers=1, max_workers=1, max_queued=0)], indirect=True
)
def test_overloaded_server_resets_the_new_flow(world: Any) -> None:
    """5.4: no free worker and a full queue: the new flow is RESET with ipc.Overloaded,
    retry action 3 (2.3, 3.8); the busy call then completes normally."""
    endpoint, me, my_blessings, server_root, service = world
    sock = connect(endpoint)
    try:
        vc = VC(sock, me, my_blessings, server_root)
        request = message({"method": "Block"}) + message({"end_stream_args": True})
        vc.write(frame(DATA, OPEN | FIN, 1, request))
        assert service.started.wait(IO_TIMEOUT)
        vc.next_flow = 3
        with pytest.raises(FlowReset) as info:
            vc.call("Echo", [1])
        assert info.value.error is not None
        assert info.value.error["id"] == "ipc.Overloaded"
        assert info.value.error["action"] == 3
        service.release.set()
        body = bytearray()
        while True:
            ftype, flags, fid, payload = vc.recv_frame()
            assert (ftype, fid) == (DATA, 1)
            body += payload
            if flags & FIN:
                break
        assert parse_response(parse_messages(bytes(body)), bytes(body)).results == ["released"]
    finally:
        sock.close()


def _raw_call(vc: Any, flow: int, stream: bytes) -> Reply:
    """Send ``stream`` as the whole client side of ``flow`` (OPEN|FIN) and read the reply."""
    vc.write(frame(DATA, OPEN | FIN, flow, stream))
    body = bytearray()
    while True:
        ftype, flags, fid, payload = vc.recv_frame()
        if (ftype, fid) != (DATA, flow):
            continue
        body += payload
        if flags & FIN:
            return parse_response(parse_messages(bytes(body)), bytes(body))


def test_malformed_requests_get_bad_protocol_and_the_vc_keeps_serving(world: Any) -> None:
    """5.2/5.4: a header that is not a map, a field of the wrong type, or a body that is not
    CBOR is answered with ipc.BadProtocol on that flow; the VC and the server go on."""
    endpoint, me, my_blessings, server_root, _ = world
    sock = connect(endpoint)
    try:
        vc = VC(sock, me, my_blessings, server_root)
        bad_streams = [
            message(["not", "a", "map"]),
            message({"method": "Echo", "nargs": "one"}),
            message({"method": 7}),
            struct.pack(">I", 3) + b"\xff\xfe\xfd",
        ]
        flow = 1
        for stream in bad_streams:
            reply = _raw_call(vc, flow, stream)
            assert reply.error is not None and reply.error["id"] == "ipc.BadProtocol", reply
            flow += 2
        vc.next_flow = flow
        assert vc.call("Echo", ["still serving"]).results == ["still serving"]
    finally:
        sock.close()


# --- docs/interop.md: the interop cases, played by this client --------------------------------

INTEROP_ROOT_SEED = hashlib.sha256(b"ipcclient interop root").digest()
STREAM_SIZES = [31415, 9, 2653, 58979]
INPUT_SIZES = [27182, 8, 1828, 45904]
STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


class RawCall:
    """One call driven message by message (for ping-pong and cancellation): the flow is
    opened with the request header, nothing else is sent until asked. Everything stays
    within the initial windows, so no CREDIT is needed either way."""

    def __init__(self, vc: VC, method: str) -> None:
        self.vc, self.flow = vc, vc.next_flow
        vc.next_flow += 2
        self.buf = bytearray()
        self.sent = 0
        self.write(message({"method": method, "deadline": 5.0}), flags=OPEN)

    def write(self, data: bytes, flags: int = 0) -> None:
        self.sent += len(data)
        assert self.sent <= self.vc.peer_window
        self.vc.write(frame(DATA, flags, self.flow, data))

    def send_item(self, item: Any) -> None:
        self.write(message({}) + message(item))

    def recv(self) -> Any:
        """The next message of the server on this flow."""
        while True:
            if len(self.buf) >= 4:
                (length,) = struct.unpack_from(">I", self.buf)
                if len(self.buf) >= 4 + length:
                    value = cbor2.loads(bytes(self.buf[4 : 4 + length]))
                    del self.buf[: 4 + length]
                    return value
            ftype, flags, fid, payload = self.vc.recv_frame()
            if ftype == PING:
                if not flags & ACK:
                    self.vc.send_frame(PING, ACK, 0, payload)
                continue
            if fid != self.flow:  # 3.3: a late frame of a flow that ended
                assert fid % 2 == 1 and fid < self.flow, (ftype, fid)
                continue
            if ftype == RESET:
                raise FlowReset(check_error(cbor2.loads(payload)) if payload else None)
            if ftype == CREDIT:
                continue
            assert ftype == DATA
            self.buf += payload

    def reset(self) -> None:
        self.vc.send_frame(RESET, 0, self.flow)


def same_value(a: Any, b: Any) -> bool:
    """Equal with the same CBOR type (-0.0 keeps its sign; arrays may come back as tuples)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def case_empty_unary(vc: VC) -> None:
    reply = vc.call("EmptyCall", [])
    assert reply.error is None and reply.results == [] and reply.streamed == []


def case_large_unary(vc: VC) -> None:
    reply = vc.call("UnaryCall", [bytes(2_000_000), 3_000_000])
    assert reply.error is None and reply.results == [bytes(3_000_000)]


def case_server_streaming(vc: VC) -> None:
    reply = vc.call("StreamingOutputCall", [STREAM_SIZES])
    assert [len(x) for x in reply.streamed] == STREAM_SIZES and reply.results == [4]


def case_client_streaming(vc: VC) -> None:
    reply = vc.call("StreamingInputCall", [], streamed_args=[bytes(n) for n in INPUT_SIZES])
    assert reply.results == [74922]


def case_bidi_streaming(vc: VC) -> None:
    call = RawCall(vc, "FullDuplexCall")
    for n in STREAM_SIZES:
        call.send_item(n)
        assert call.recv() == {} and call.recv() == bytes(n)
    call.write(message({"end_stream_args": True}), flags=FIN)
    assert call.recv() == {"end": True, "nresults": 1} and call.recv() == 4


def case_status_round_trip(vc: VC) -> None:
    for error_id, action in (("interop.Custom", 0), ("ipc.NoExist", 0), ("interop.Backoff", 3)):
        err = vc.call("StatusCall", [error_id, STATUS_MESSAGE, action]).error
        assert err is not None
        assert (err["id"], err["msg"], err.get("action", 0)) == (error_id, STATUS_MESSAGE, action)


def case_cancel_after_begin(vc: VC) -> None:
    RawCall(vc, "StreamingInputCall").reset()
    case_empty_unary(vc)


def case_cancel_after_first_response(vc: VC) -> None:
    call = RawCall(vc, "FullDuplexCall")
    call.send_item(STREAM_SIZES[0])
    assert call.recv() == {} and call.recv() == bytes(STREAM_SIZES[0])
    call.reset()
    case_empty_unary(vc)


def case_timeout_on_sleeping_server(vc: VC) -> None:
    started = time.monotonic()
    err = vc.call("Sleep", [30], header={"deadline": 0.5}).error
    assert err is not None and err["id"] == "ipc.Timeout", err
    assert time.monotonic() - started < 15
    case_empty_unary(vc)


def case_echo_values(vc: VC) -> None:
    values = [None, True, 0, -1, 2**64 - 1, 2**70, -(2**70), 1.5, -0.0, float("inf"), ""]
    values += ["h\u00e9llo \U0001f608", b"", b"\x00\xff", [1, [2, [3]]]]
    values += [{"a": 1, "b": [None, b"x"], 7: "int key"}]
    for v in values:
        reply = vc.call("Echo", [v])
        assert reply.error is None and len(reply.results) == 1
        assert same_value(reply.results[0], v), (v, reply.results)


INTEROP_CASES = {
    "empty_unary": case_empty_unary,
    "large_unary": case_large_unary,
    "server_streaming": case_server_streaming,
    "client_streaming": case_client_streaming,
    "bidi_streaming": case_bidi_streaming,
    "status_round_trip": case_status_round_trip,
    "cancel_after_begin": case_cancel_after_begin,
    "cancel_after_first_response": case_cancel_after_first_response,
    "timeout_on_sleeping_server": case_timeout_on_sleeping_server,
    "echo_values": case_echo_values,
}


def test_interop_cases_over_an_independent_client() -> None:
    """Every case of docs/interop.md against `python -m ipcclient.interop serve`'s server,
    trusting the interop root from its published seed."""
    from ipcclient import interop  # only to run the server under test and list its cases

    assert list(INTEROP_CASES) == list(interop.CASES)
    trusted_root = raw_public(Ed25519PrivateKey.from_private_bytes(INTEROP_ROOT_SEED))
    my_root, me = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    root_cert = certificate(my_root, [], "me", raw_public(my_root), [])
    client_cert = certificate(my_root, [root_cert], "client", raw_public(me), [])
    my_blessings = cbor2.CBORTag(TAG_BLESSINGS, [[root_cert, client_cert]])
    server = interop.start_server()
    try:
        sock = connect(server.endpoints[0])
        try:
            vc = VC(sock, me, my_blessings, trusted_root)
            assert vc.server_names == ["interop:server"]
            for case in INTEROP_CASES.values():
                case(vc)
        finally:
            sock.close()
    finally:
        server.stop()


def test_reply_then_reset_when_the_client_is_still_sending() -> None:
    """5.1: the server answers a call whose client has not sent FIN with its reply and FIN,
    then an empty RESET; the reply before the RESET is complete (3.7)."""
    from ipcclient import interop  # only to run the server under test

    trusted_root = raw_public(Ed25519PrivateKey.from_private_bytes(INTEROP_ROOT_SEED))
    me = Ed25519PrivateKey.generate()
    my_blessings = cbor2.CBORTag(TAG_BLESSINGS, [[certificate(me, [], "me", raw_public(me), [])]])
    server = interop.start_server()
    try:
        sock = connect(server.endpoints[0])
        try:
            vc = VC(sock, me, my_blessings, trusted_root)
            request = message({"method": "Echo", "nargs": 1}) + message("kept")
            vc.write(frame(DATA, OPEN, 1, request))  # no end of args, no FIN
            body, seen = bytearray(), []
            while True:
                ftype, flags, fid, payload = vc.recv_frame()
                assert fid == 1, (ftype, fid)
                seen.append((ftype, flags & FIN))
                if ftype == RESET:
                    assert payload == b""
                    break
                assert ftype == DATA
                body += payload
            assert seen[-2:] == [(DATA, FIN), (RESET, 0)]
            assert parse_response(parse_messages(bytes(body)), bytes(body)).results == ["kept"]
        finally:
            sock.close()
    finally:
        server.stop()
