"""Regenerate the conformance vectors of docs/protocol.md from fixed seeds.

Run from the repository root: ``python tests/vectors/generate.py`` (rewrites the ``*.json``
files next to this script). Every key, nonce and random value is derived from a fixed text
seed (:func:`seed`), every time is fixed, and Ed25519 signatures are deterministic, so the
output is the same on every run: a change in any vector is a change of the wire.

The vectors are built with ipcclient, but the digests, keys and signatures of the handshake
and the blessings are also computed here from the document's formulas (with hashlib,
cryptography and cbor2 alone) and asserted equal, so a vector never records a value the
document does not define. ``tests/conformance/test_vectors.py`` then checks the
implementation against the checked-in files in both directions; it never regenerates them.

Values inside vectors use a typed JSON form (README.md in this folder): ``null``, ``true``,
``false``, ``{"int": "<decimal>"}``, ``{"float": "<repr>"}``, ``{"text": ...}``,
``{"bytes": "<hex>"}``, ``{"array": [...]}``, ``{"map": [[key, value], ...]}`` (in encoding
order) and ``{"tag": n, "value": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from ipcclient import codec, errors  # noqa: E402
from ipcclient.headers import Request, Response, TraceContext  # noqa: E402
from ipcclient.naming import names  # noqa: E402
from ipcclient.naming.endpoint import Endpoint  # noqa: E402
from ipcclient.security import caveats  # noqa: E402
from ipcclient.security.blessings import Blessings  # noqa: E402
from ipcclient.security.caveats import Caveat, SecurityCall, ThirdPartyRequirements  # noqa: E402
from ipcclient.security.discharges import issue_discharge  # noqa: E402
from ipcclient.security.principal import Principal  # noqa: E402
from ipcclient.vc.handshake import ClientHandshake, ServerHandshake, VCSettings  # noqa: E402
from ipcclient.wire import frames  # noqa: E402
from ipcclient.wire.messages import encode_messages  # noqa: E402

SIG_PREFIX = b"ipcclient-sig-v1\x00"
EXPIRY_2100_NS = 4_102_444_800 * 1_000_000_000  # 2100-01-01T00:00:00Z


def seed(label: str) -> bytes:
    """32 fixed bytes: SHA-256 of ``"ipcclient test vector: " + label``."""
    return hashlib.sha256(b"ipcclient test vector: " + label.encode()).digest()


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def principal(label: str) -> Principal:
    return Principal(ed25519.Ed25519PrivateKey.from_private_bytes(seed(label)))


def tv(value: Any) -> Any:
    """The typed JSON form of a plain CBOR value."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, list | tuple):
        return {"array": [tv(v) for v in value]}
    if isinstance(value, Mapping):
        return {"map": [[tv(k), tv(v)] for k, v in value.items()]}
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": tv(value.value)}
    raise TypeError(f"no typed form for {type(value).__name__}")


def error_fields(err: errors.IPCError) -> dict[str, Any]:
    return {"id": err.id, "action": int(err.action), "msg": err.msg, "params": tv(list(err.params))}


# --- codec.json ---------------------------------------------------------------------------


def codec_vectors() -> dict[str, Any]:
    values: list[tuple[str, Any]] = [
        ("zero", 0),
        ("uint 23 (immediate)", 23),
        ("uint 24 (one-byte argument)", 24),
        ("uint 255", 255),
        ("uint 256", 256),
        ("uint 65536", 65536),
        ("uint 2^32", 2**32),
        ("uint 2^64-1", 2**64 - 1),
        ("bignum 2^64 (tag 2)", 2**64),
        ("bignum 2^70 (tag 2)", 2**70),
        ("nint -1", -1),
        ("nint -25", -25),
        ("nint -2^64", -(2**64)),
        ("negative bignum -2^70 (tag 3)", -(2**70)),
        ("false", False),
        ("true", True),
        ("null", None),
        ("float 5.0 (always 64 bits)", 5.0),
        ("float 1.5", 1.5),
        ("float -0.0", -0.0),
        ("float 1e300", 1e300),
        ("float infinity (16 bits)", math.inf),
        ("float -infinity (16 bits)", -math.inf),
        ("empty text", ""),
        ("text", "Echo"),
        ("text, non-ASCII", "h\u00e9llo \u2603"),
        ("empty bytes", b""),
        ("bytes", b"hi"),
        ("empty array", []),
        ("array", [1, "a", b"\x00\xff", None, True, 2.5]),
        ("empty map", {}),
        ("map with text keys, in insertion order", {"method": "Echo", "nargs": 1}),
        ("map with an integer key and nesting", {1: [{"a": []}], "b": {"c": None}}),
    ]
    plain = [{"name": n, "value": tv(v), "hex": codec.encode(v).hex()} for n, v in values]
    decode_only = [
        ("half float 1.5", "f93e00", 1.5),
        ("single float 1.5", "fa3fc00000", 1.5),
        ("uint 5 in a non-shortest head", "1805", 5),
    ]
    reordered = cbor2.dumps({"nargs": 1, "method": "Echo"})
    decode_only.append(("map keys in any order", reordered.hex(), {"nargs": 1, "method": "Echo"}))
    nan = codec.encode(math.nan).hex()
    refused = [
        ("indefinite-length array", "9f01ff"),
        ("indefinite-length text", "7f6161ff"),
        ("indefinite-length map", "bf6161f5ff"),
        ("tag 1 (epoch date)", "c11a514b67b0"),
        ("tag 258 (set)", "d9010280"),
        ("tag 28 (shared reference)", "d81c80"),
        ("trailing bytes", "0000"),
        ("truncated", "6568656c6c"),
        ("empty message", ""),
        ("invalid UTF-8 in text", "62c328"),
        ("nesting 65 deep", "81" * 65 + "00"),
        ("reserved additional information 28", "1c"),
        (
            "65 map keys that are arrays (at most 64 keys may be arrays, maps or tags)",
            (
                codec.cbor_head(5, 65)
                + b"".join(b"\x81" + cbor2.dumps(i) + b"\xf6" for i in range(65))
            ).hex(),
        ),
        (
            "65 bignum map keys, over two maps",
            (
                b"\x82"
                + b"".join(
                    codec.cbor_head(5, n)
                    + b"".join(cbor2.dumps(2**64 + i) + b"\xf6" for i in range(n))
                    for n in (32, 33)
                )
            ).hex(),
        ),
    ]
    overloaded = errors.OverloadedError("busy")
    unknown = errors.IPCError(
        "app says no", "p1", 7, id="app.Custom", action=errors.RetryAction.RETRY_CONNECTION
    )
    errs = [
        {
            "name": 'OverloadedError("busy") (protocol.md section 1)',
            **error_fields(overloaded),
            "hex": codec.encode(overloaded).hex(),
        },
        {
            "name": "an ID this side does not know, kept verbatim",
            **error_fields(unknown),
            "hex": codec.encode(unknown).hex(),
        },
    ]
    error_decode_only = [
        {
            "name": "only an id: action 0, msg empty, params empty",
            "hex": cbor2.dumps(cbor2.CBORTag(0xF000, {"id": "ipc.NoExist"})).hex(),
            "id": "ipc.NoExist",
            "action": 0,
            "msg": "",
            "params": tv([]),
        },
        {
            "name": "an unknown action code reads as 0",
            "hex": cbor2.dumps(
                cbor2.CBORTag(0xF000, {"params": [], "action": 99, "id": "ipc.Timeout"})
            ).hex(),
            "id": "ipc.Timeout",
            "action": 0,
            "msg": "",
            "params": tv([]),
        },
    ]
    error_refused = [
        ("no id", cbor2.dumps(cbor2.CBORTag(0xF000, {"msg": "x"})).hex()),
        ("id is not text", cbor2.dumps(cbor2.CBORTag(0xF000, {"id": 5})).hex()),
        ("not a map", cbor2.dumps(cbor2.CBORTag(0xF000, ["ipc.Unknown"])).hex()),
    ]
    return {
        "description": "protocol.md section 1: CBOR values. 'values': encode value -> hex and "
        "decode hex -> value. 'decode_only': a receiver accepts these encodings (ipcclient never "
        "writes them). 'refused': a receiver refuses these (ipc.BadProtocol). 'errors': tag "
        "0xF000 values both ways; 'errors_decode_only' and 'errors_refused' likewise.",
        "values": plain,
        "nan": {"name": "NaN (16 bits)", "hex": nan},
        "decode_only": [{"name": n, "hex": x, "value": tv(v)} for n, x, v in decode_only],
        "refused": [{"name": n, "hex": x} for n, x in refused],
        "errors": errs,
        "errors_decode_only": error_decode_only,
        "errors_refused": [{"name": n, "hex": x} for n, x in error_refused],
    }


# --- frames.json --------------------------------------------------------------------------


def frames_vectors() -> dict[str, Any]:
    overloaded = codec.encode(errors.OverloadedError("busy"))
    good = [
        ("DATA OPEN|FIN 'hello' on flow 1 (section 3.11)", frames.DATA, 3, 1, b"hello"),
        ("DATA FIN 'world' on flow 1 (section 3.11)", frames.DATA, 1, 1, b"world"),
        ("DATA OPEN alone on flow 3", frames.DATA, 2, 3, b""),
        ("DATA FIN alone on flow 2 (acceptor's parity)", frames.DATA, 1, 2, b""),
        ("DATA, flags 0, empty (valid, means nothing)", frames.DATA, 0, 7, b""),
        ("CREDIT 262144 on flow 3", frames.CREDIT, 0, 3, struct.pack(">I", 262_144)),
        ("CREDIT 2^32-1 on flow 2^32-1", frames.CREDIT, 0, 2**32 - 1, b"\xff" * 4),
        ("RESET flow 5, empty (cancelled)", frames.RESET, 0, 5, b""),
        ("RESET flow 7 with ipc.Overloaded", frames.RESET, 0, 7, overloaded),
        ("PING 42", frames.PING, 0, 0, struct.pack(">Q", 42)),
        ("PING ACK 42", frames.PING, 1, 0, struct.pack(">Q", 42)),
    ]
    bad = [
        ("type 0x05", "05000000000100000000"),
        ("DATA with flag 0x04", "00040000000100000000"),
        ("DATA on flow 0", "00000000000000000000"),
        ("CREDIT on flow 0", "0100000000000000000400000001"),
        ("CREDIT with a 3-byte payload", "01000000000100000003000001"),
        ("CREDIT of 0", "0100000000010000000400000000"),
        ("CREDIT with flag 0x01", "0101000000010000000400000001"),
        ("RESET on flow 0", "02000000000000000000"),
        ("PING on flow 1", "030000000001000000080000000000000000"),
        ("PING with a 7-byte payload", "0300000000000000000700000000000000"),
        (
            "length 65537 above the default maximum (checked from the header alone)",
            "00000000000100010001",
        ),
    ]
    return {
        "description": "protocol.md section 2: frames. 'frames': fields <-> hex (a receiver with "
        "the "
        "default 65,536-byte maximum accepts each). 'refused': each is a protocol error for such a "
        "receiver, detectable once the 10 header bytes (and for CREDIT the payload) are in. No "
        "GOAWAY payload vectors here.",
        "max_frame_payload": frames.DEFAULT_MAX_FRAME_PAYLOAD,
        "frames": [
            {
                "name": n,
                "type": t,
                "flags": f,
                "flow_id": fid,
                "payload": p.hex(),
                "hex": frames.encode_frame(t, f, fid, p).hex(),
            }
            for n, t, f, fid, p in good
        ],
        "refused": [{"name": n, "hex": x} for n, x in bad],
    }


# --- request.json -------------------------------------------------------------------------


def message(value: Any) -> bytes:
    return encode_messages(value)


def request_vectors() -> dict[str, Any]:
    echo_req = [
        Request(method="Echo", nargs=1, deadline=5.0).to_wire(),
        b"hi",
        Request(end_stream_args=True).to_wire(),
    ]
    echo_reply = [Response(end_stream_results=True, nresults=1).to_wire(), b"hi"]
    req_bytes = encode_messages(*echo_req)
    reply_bytes = encode_messages(*echo_reply)
    assert len(req_bytes) == 71, len(req_bytes)

    count_req = [
        Request(suffix="counter", method="Count", nargs=1).to_wire(),
        2,
        Request(end_stream_args=True).to_wire(),
    ]
    count_reply = [
        Response().to_wire(),
        0,
        Response().to_wire(),
        1,
        Response(end_stream_results=True, nresults=1).to_wire(),
        2,
    ]
    sum_req = [
        Request(method="Sum").to_wire(),
        Request().to_wire(),
        1,
        Request().to_wire(),
        2,
        Request(end_stream_args=True).to_wire(),
    ]
    sum_reply = [Response(end_stream_results=True, nresults=1).to_wire(), 3]
    none_req = [Request(method="Ping").to_wire(), Request(end_stream_args=True).to_wire()]
    none_reply = [Response(end_stream_results=True).to_wire()]
    multi_reply = [Response(end_stream_results=True, nresults=2).to_wire(), "a", None]
    err = errors.UnknownMethodError("server: no method 'Nope'")
    err_req = [Request(method="Nope").to_wire(), Request(end_stream_args=True).to_wire()]
    err_reply = [Response(error=err, end_stream_results=True).to_wire()]
    trace = TraceContext(bytes(range(16)), bytes(range(16, 32)), 1)
    trace_req = [
        Request(suffix="a/b", method="Echo", nargs=1, trace=trace, language="en-US").to_wire(),
        "x",
        Request(end_stream_args=True).to_wire(),
    ]

    def plain(msgs: list[Any]) -> list[Any]:
        """The messages as plain CBOR (an error becomes its tag 0xF000 map)."""
        return [cbor2.loads(codec.encode(m)) for m in msgs]

    def exchange(
        name: str, flow: int, req: list[Any], reply: list[Any], note: str
    ) -> dict[str, Any]:
        rq = encode_messages(*req)
        rp = encode_messages(*reply)
        return {
            "name": name,
            "note": note,
            "flow_id": flow,
            "request_messages": [tv(m) for m in plain(req)],
            "request_bytes": rq.hex(),
            "request_frame": frames.encode_frame(
                frames.DATA, frames.FLAG_OPEN | frames.FLAG_FIN, flow, rq
            ).hex(),
            "reply_messages": [tv(m) for m in plain(reply)],
            "reply_bytes": rp.hex(),
            "reply_frame": frames.encode_frame(frames.DATA, frames.FLAG_FIN, flow, rp).hex(),
        }

    return {
        "description": "protocol.md section 5: calls on a flow. Each exchange is the client's "
        "whole "
        "byte stream (messages: u32 length || CBOR value) and the server's, and each as one DATA "
        "frame (OPEN|FIN from the client, FIN from the server). Messages are in typed JSON; an "
        "error is shown as its tag 0xF000 map.",
        "exchanges": [
            exchange(
                "Echo(b'hi') with 5 s left (section 5.2, 71 bytes)",
                1,
                echo_req,
                echo_reply,
                "protocol.md 5.2 and 5.3",
            ),
            exchange(
                "Count(2) at suffix 'counter': streamed results",
                3,
                count_req,
                count_reply,
                "two streamed results, then the final result",
            ),
            exchange(
                "Sum(): streamed args 1 and 2",
                5,
                sum_req,
                sum_reply,
                "each streamed arg follows an empty header",
            ),
            exchange(
                "Ping(): no results",
                7,
                none_req,
                none_reply,
                "a method returning nothing: nresults absent (0)",
            ),
            exchange(
                "Pair(): two results",
                9,
                none_req[:1] + none_req[1:],
                multi_reply,
                "Results('a', None): two results, the second null",
            ),
            exchange(
                "Nope(): an error",
                11,
                err_req,
                err_reply,
                "Response{error, end}; no results follow",
            ),
            exchange(
                "Echo('x') with suffix, language and a trace context",
                13,
                trace_req,
                [Response(end_stream_results=True, nresults=1).to_wire(), "x"],
                "trace flag 1 asks for spans; this reply shows none",
            ),
        ],
        "refused_requests": [
            {"name": "header not a map", "bytes": message(["not", "a", "map"]).hex()},
            {
                "name": "nargs not an integer",
                "bytes": message({"method": "Echo", "nargs": "one"}).hex(),
            },
            {"name": "method not text", "bytes": message({"method": 7}).hex()},
            {"name": "nargs above 1024", "bytes": message({"method": "Echo", "nargs": 1025}).hex()},
        ],
        "sizes": {"echo_request_bytes": len(req_bytes), "echo_reply_bytes": len(reply_bytes)},
    }


# --- blessings.json -----------------------------------------------------------------------


def caveat_entry(c: Caveat) -> dict[str, Any]:
    digest = h(h(c.kind.encode()) + h(c.params))
    assert digest == c.digest()
    return {
        "kind": c.kind,
        "params": c.params.hex(),
        "params_value": tv(cbor2.loads(c.params)),
        "digest": digest.hex(),
    }


def chain_entries(chain: tuple[Any, ...]) -> list[dict[str, Any]]:
    d = bytes(32)
    out = []
    signer = chain[0].public_key.raw
    for cert in chain:
        cav_digests = [c.digest() for c in cert.caveats]
        content_input = cbor2.dumps([cert.extension, cert.public_key.raw, cav_digests])
        content = h(content_input)
        d = h(d + content)
        signed = SIG_PREFIX + b"cert\x00" + d
        ed25519.Ed25519PublicKey.from_public_bytes(signer).verify(cert.signature, signed)
        out.append(
            {
                "extension": cert.extension,
                "public_key": cert.public_key.raw.hex(),
                "caveats": [caveat_entry(c) for c in cert.caveats],
                "content_input": content_input.hex(),
                "content": content.hex(),
                "chained_digest": d.hex(),
                "signer_public_key": signer.hex(),
                "signed_bytes": signed.hex(),
                "signature": cert.signature.hex(),
                "encoded": cbor2.dumps(cert.to_wire()).hex(),
            }
        )
        signer = cert.public_key.raw
    return out


def blessings_vectors() -> dict[str, Any]:
    root = principal("root")
    alice = principal("alice")
    disch = principal("discharger")
    root_b = root.bless_self("vroot")
    tp = caveats.third_party(
        "/127.0.0.1:8101/discharger",
        disch.public_key,
        ThirdPartyRequirements(report_server=False, report_method=True, report_arguments=False),
        [caveats.method("Get")],
        nonce=seed("third-party nonce")[:16],
    )
    cavs = [
        caveats.expiry(EXPIRY_2100_NS / 1e9),
        caveats.method("Get", "Echo"),
        caveats.peer_blessings("vroot:server"),
        tp,
    ]
    alice_b = root.bless(alice.public_key, root_b, "alice", cavs)
    alice_phone_key = principal("alice phone")
    phone_b = alice.bless(
        alice_phone_key.public_key, alice_b, "phone", [caveats.unconstrained_use()]
    )
    (chain,) = phone_b.chains

    tp_id_input = cbor2.dumps(
        [tp.nonce, disch.public_key.raw, tp.location, [c.digest() for c in tp.restrictions]]
    )
    assert h(tp_id_input).hex() == tp.id
    discharge = issue_discharge(
        disch, tp, [caveats.expiry(EXPIRY_2100_NS / 1e9)], call=SecurityCall(method="Get")
    )
    d_input = cbor2.dumps([discharge.caveat_id, [c.digest() for c in discharge.caveats]])
    d_signed = SIG_PREFIX + b"discharge\x00" + h(d_input)
    ed25519.Ed25519PublicKey.from_public_bytes(disch.public_key.raw).verify(
        discharge.signature, d_signed
    )

    union = Blessings.union(
        root.bless(alice_phone_key.public_key, root_b, "phone2", [caveats.unconstrained_use()]),
        phone_b,
    )
    assert union is not None

    lone = [
        caveats.expiry(EXPIRY_2100_NS / 1e9),
        caveats.method("Get"),
        caveats.peer_blessings("vroot:server", "vroot:server2:$"),
        caveats.unconstrained_use(),
        tp,
    ]
    return {
        "description": "protocol.md section 6: keys are Ed25519 private seeds (RFC 8032, "
        "32 bytes); "
        "public keys raw. Each certificate lists its caveats (params and digest), the CBOR input "
        "of its content hash, the chained digest, the signer's key, the exact signed bytes and the "
        "signature. 'blessings' is the tag 0xF001 value of the chain; 'union' two chains bound to "
        "one key. 'validation' lists what a validator with the given roots concludes. "
        "'caveats' each caveat alone, tagged 0xF003. Time: every expiry is 2100-01-01.",
        "keys": {
            "root": {"seed": seed("root").hex(), "public_key": root.public_key.raw.hex()},
            "alice": {"seed": seed("alice").hex(), "public_key": alice.public_key.raw.hex()},
            "alice phone": {
                "seed": seed("alice phone").hex(),
                "public_key": alice_phone_key.public_key.raw.hex(),
            },
            "discharger": {
                "seed": seed("discharger").hex(),
                "public_key": disch.public_key.raw.hex(),
            },
        },
        "chain": {
            "name": "vroot:alice:phone",
            "certificates": chain_entries(chain),
            "blessings": codec.encode(phone_b).hex(),
        },
        "root_blessings": {"name": "vroot", "blessings": codec.encode(root_b).hex()},
        "union": {"names": union.names, "blessings": codec.encode(union).hex()},
        "caveats": [{**caveat_entry(c), "tagged": codec.encode(c).hex()} for c in lone],
        "third_party": {
            "nonce": tp.nonce.hex(),
            "location": tp.location,
            "discharger_key": disch.public_key.raw.hex(),
            "requirements": [False, True, False],
            "restrictions": [caveat_entry(c) for c in tp.restrictions],
            "id_input": tp_id_input.hex(),
            "id": tp.id,
        },
        "discharge": {
            "caveat_id": discharge.caveat_id,
            "caveats": [caveat_entry(c) for c in discharge.caveats],
            "digest_input": d_input.hex(),
            "signed_bytes": d_signed.hex(),
            "signature": discharge.signature.hex(),
            "encoded": codec.encode(discharge).hex(),
        },
        "validation": [
            {
                "roots": [[root.public_key.raw.hex(), "vroot"]],
                "method": "Get",
                "local_names": ["vroot:server"],
                "with_discharge": True,
                "names": ["vroot:alice:phone"],
            },
            {
                "roots": [[root.public_key.raw.hex(), "vroot"]],
                "method": "Put",
                "local_names": ["vroot:server"],
                "with_discharge": True,
                "names": [],
                "why": "the method caveat allows Get and Echo only",
            },
            {
                "roots": [[root.public_key.raw.hex(), "vroot"]],
                "method": "Get",
                "local_names": ["vroot:server"],
                "with_discharge": False,
                "names": [],
                "why": "the third-party caveat needs the discharge "
                "(ipc.BadDischarge naming its ID)",
            },
            {
                "roots": [[root.public_key.raw.hex(), "vroot"]],
                "method": "Get",
                "local_names": ["vroot:other"],
                "with_discharge": True,
                "names": [],
                "why": "the peer caveat requires the validator to be vroot:server",
            },
            {
                "roots": [[alice.public_key.raw.hex(), "vroot"]],
                "method": "Get",
                "local_names": ["vroot:server"],
                "with_discharge": True,
                "names": [],
                "why": "the root key is not trusted for vroot",
            },
        ],
        "bad_signature": {
            "note": "the chain with one bit of its last signature flipped: it decodes (decoding "
            "checks structure only) and validation rejects it (ipc.NotTrusted), whatever the roots",
            "hex": _tampered(phone_b).hex(),
        },
        "refused": [
            {"name": "extension with ':'", "hex": _bad_extension(chain).hex()},
            {
                "name": "a chain of zero certificates",
                "hex": cbor2.dumps(cbor2.CBORTag(0xF001, [[]])).hex(),
            },
            {"name": "no chains", "hex": cbor2.dumps(cbor2.CBORTag(0xF001, [])).hex()},
        ],
    }


def _tampered(b: Blessings) -> bytes:
    wire = b.to_wire()
    sig = bytearray(wire[0][-1][3])
    sig[0] ^= 1
    wire[0][-1][3] = bytes(sig)
    return cbor2.dumps(cbor2.CBORTag(0xF001, wire))


def _bad_extension(chain: tuple[Any, ...]) -> bytes:
    wire = [[c.to_wire() for c in chain]]
    wire[0][0][0] = "v:root"
    return cbor2.dumps(cbor2.CBORTag(0xF001, wire))


# --- naming.json --------------------------------------------------------------------------


def naming_vectors() -> dict[str, Any]:
    eps = [
        Endpoint("tcp", "127.0.0.1:8101", serves_mount_table=True),
        Endpoint(
            "tcp",
            "[::1]:9000",
            routing_id=bytes(range(1, 17)),
            min_version=3,
            max_version=7,
            blessings=("dev:alice",),
        ),
        Endpoint("unix", "/run/app@x.sock", is_leaf=True, blessings=("a,b", "c")),
        Endpoint(
            "tcp",
            "10.0.0.1:1",
            serves_mount_table=True,
            is_leaf=True,
            blessings=("x%y@z", "idp:srv"),
        ),
    ]

    def fields(ep: Endpoint) -> dict[str, Any]:
        return {
            "protocol": ep.protocol,
            "address": ep.address,
            "routing_id": ep.routing_id.hex(),
            "min_version": ep.min_version,
            "max_version": ep.max_version,
            "flags": ep.flags,
            "blessings": list(ep.blessings),
        }

    parse_only = [
        (
            "upper-case routing id",
            "@1@tcp@h:1@0102030405060708090A0B0C0D0E0F10@0@0@s@@@",
            Endpoint("tcp", "h:1", routing_id=bytes(range(1, 17))),
        ),
        (
            "flags 'lm' (any order)",
            "@1@tcp@h:1@00000000000000000000000000000000@0@0@lm@@@",
            Endpoint("tcp", "h:1", serves_mount_table=True, is_leaf=True),
        ),
        (
            "short form host:port",
            "127.0.0.1:8101",
            Endpoint("tcp", "127.0.0.1:8101", serves_mount_table=True),
        ),
        (
            "short form [v6]:port",
            "[::1]:8101",
            Endpoint("tcp", "[::1]:8101", serves_mount_table=True),
        ),
        (
            "short form (blessing)@host:port",
            "(dev:mt)@h:8101",
            Endpoint("tcp", "h:8101", serves_mount_table=True, blessings=("dev:mt",)),
        ),
    ]
    refused = [
        ("format 2", "@2@tcp@h:1@00000000000000000000000000000000@0@0@s@@@"),
        ("no trailing @@", "@1@tcp@h:1@00000000000000000000000000000000@0@0@s@"),
        ("routing id of 31 digits", "@1@tcp@h:1@0000000000000000000000000000000@0@0@s@@@"),
        ("empty flags", "@1@tcp@h:1@00000000000000000000000000000000@0@0@@@@"),
        ("flags 's' with 'm'", "@1@tcp@h:1@00000000000000000000000000000000@0@0@sm@@@"),
        ("repeated flag", "@1@tcp@h:1@00000000000000000000000000000000@0@0@mm@@@"),
        ("min above max", "@1@tcp@h:1@00000000000000000000000000000000@7@3@s@@@"),
        ("version not decimal", "@1@tcp@h:1@00000000000000000000000000000000@x@0@s@@@"),
        ("stray % in the address", "@1@tcp@h%zz:1@00000000000000000000000000000000@0@0@s@@@"),
        ("tcp port out of range", "@1@tcp@h:70000@00000000000000000000000000000000@0@0@s@@@"),
        ("empty blessing name", "@1@tcp@h:1@00000000000000000000000000000000@0@0@s@a,,b@@"),
        ("too many fields", "@1@tcp@h:1@extra@00000000000000000000000000000000@0@0@s@@@"),
    ]
    name_cases = [
        "a/b/c",
        "a//b///c/",
        "/127.0.0.1:8101/a/b",
        "/127.0.0.1:8101//a/b",
        "/127.0.0.1:8101",
        "/[::1]:8101/x",
        "/(dev:mt)@h:8101/x/y",
        f"/{eps[0]}/apps/fortune",
        f"/{eps[0]}//apps/fortune",
        f"/{eps[2]}/x",
        "/h:1/a//b",
    ]
    return {
        "description": "protocol.md section 7. 'endpoints': string <-> fields, and the tag 0xF004 "
        "encoding. 'parse_only': accepted, written back in the canonical full form. 'refused': "
        "malformed (ipc.BadArg from a user, ipc.BadProtocol from a peer). 'names': a name, its "
        "cleaned form, its (address, suffix) split and whether it is terminal.",
        "endpoints": [
            {"string": str(ep), **fields(ep), "tagged": codec.encode(ep).hex()} for ep in eps
        ],
        "parse_only": [
            {"name": n, "string": s, "canonical": str(ep), **fields(ep)} for n, s, ep in parse_only
        ],
        "refused": [{"name": n, "string": s} for n, s in refused],
        "names": [
            {
                "name": n,
                "clean": names.clean(n),
                "address": names.split_address_name(n)[0],
                "suffix": names.split_address_name(n)[1],
                "terminal": names.is_terminal(n),
            }
            for n in name_cases
        ],
    }


# --- handshake.json -----------------------------------------------------------------------


def handshake_vectors(request: dict[str, Any]) -> dict[str, Any]:
    server_root = principal("server root")
    server = principal("server")
    client = principal("client")
    root_b = server_root.bless_self("vroot")
    server_b = server_root.bless(server.public_key, root_b, "server", [caveats.unconstrained_use()])
    client_b = client.bless_self("vclient")
    c_eph, s_eph = seed("client ephemeral x25519"), seed("server ephemeral x25519")
    c_rand, s_rand = seed("client hello random"), seed("server hello random")
    settings = VCSettings()

    seen: list[Any] = []
    ch = ClientHandshake(
        client,
        authorize_server=lambda key, b, d: seen.append((key, b, d)),
        blessings_for_server=lambda _b: client_b,
        settings=settings,
        ephemeral_key=c_eph,
        hello_random=c_rand,
    )
    sh = ServerHandshake(
        server, blessings=server_b, settings=settings, ephemeral_key=s_eph, hello_random=s_rand
    )
    client_hello = ch.start()
    server_out = sh.receive_data(client_hello)
    (sh_len,) = struct.unpack_from(">I", server_out, 4)
    server_hello, server_auth_record = server_out[: 8 + sh_len], server_out[8 + sh_len :]
    client_auth_record = ch.receive_data(server_out)
    assert ch.result is not None

    # The key schedule, from the document's formulas alone.
    th1 = h(client_hello + server_hello)
    c_priv = x25519.X25519PrivateKey.from_private_bytes(c_eph)
    s_priv = x25519.X25519PrivateKey.from_private_bytes(s_eph)
    s_pub = s_priv.public_key().public_bytes_raw()
    shared = c_priv.exchange(x25519.X25519PublicKey.from_public_bytes(s_pub))
    okm = HKDF(algorithm=SHA256(), length=64, salt=th1, info=b"ipcclient vc v1 record keys").derive(
        shared
    )
    c2s, s2c = okm[:32], okm[32:]

    def nonce(n: int) -> bytes:
        return bytes(4) + struct.pack(">Q", n)

    def open_record(key: bytes, n: int, record: bytes) -> bytes:
        return AESGCM(key).decrypt(nonce(n), record[4:], record[:4])

    server_auth = open_record(s2c, 0, server_auth_record)
    th2 = h(th1 + server_auth)
    client_auth = open_record(c2s, 0, client_auth_record)
    sa, ca = cbor2.loads(server_auth), cbor2.loads(client_auth)
    ed25519.Ed25519PublicKey.from_public_bytes(sa["key"]).verify(
        sa["sig"], SIG_PREFIX + b"vc-auth\x00" + th1 + b"server"
    )
    ed25519.Ed25519PublicKey.from_public_bytes(ca["key"]).verify(
        ca["sig"], SIG_PREFIX + b"vc-auth\x00" + th2 + b"client"
    )

    # The first frame records: the Echo request of request.json and its reply.
    echo = request["exchanges"][0]
    c_rec1 = bytes(ch.result.sealer.seal(bytes.fromhex(echo["request_frame"])))
    sh.receive_data(client_auth_record + c_rec1)
    assert sh.result is not None and sh.result.early_plaintext == [
        bytes.fromhex(echo["request_frame"])
    ]
    s_rec1 = bytes(sh.result.sealer.seal(bytes.fromhex(echo["reply_frame"])))
    assert open_record(c2s, 1, c_rec1).hex() == echo["request_frame"]
    assert open_record(s2c, 1, s_rec1).hex() == echo["reply_frame"]

    def hello_fields(raw: bytes) -> Any:
        return tv(cbor2.loads(raw[8:]))

    return {
        "description": "protocol.md section 4: one whole handshake with fixed keys and nonces, "
        "then "
        "the first frame record each way (the Echo exchange of request.json on flow 1). "
        "Principal keys are Ed25519 seeds; ephemeral keys X25519 private keys (RFC 7748). Records "
        "are u32 length || AES-256-GCM ciphertext with its tag. A client that sends these exact "
        "hellos gets these exact records.",
        "server_root": {
            "seed": seed("server root").hex(),
            "public_key": server_root.public_key.raw.hex(),
            "name": "vroot",
        },
        "server": {
            "seed": seed("server").hex(),
            "public_key": server.public_key.raw.hex(),
            "blessings": codec.encode(server_b).hex(),
            "names": server_b.names,
        },
        "client": {
            "seed": seed("client").hex(),
            "public_key": client.public_key.raw.hex(),
            "blessings": codec.encode(client_b).hex(),
            "names": client_b.names,
        },
        "client_ephemeral_private": c_eph.hex(),
        "client_ephemeral_public": c_priv.public_key().public_bytes_raw().hex(),
        "server_ephemeral_private": s_eph.hex(),
        "server_ephemeral_public": s_pub.hex(),
        "client_random": c_rand.hex(),
        "server_random": s_rand.hex(),
        "window": settings.initial_window,
        "max_frame": settings.max_frame_payload,
        "client_hello": client_hello.hex(),
        "client_hello_fields": hello_fields(client_hello),
        "server_hello": server_hello.hex(),
        "server_hello_fields": hello_fields(server_hello),
        "th1": th1.hex(),
        "shared_secret": shared.hex(),
        "okm": okm.hex(),
        "c2s_key": c2s.hex(),
        "s2c_key": s2c.hex(),
        "server_auth_plaintext": server_auth.hex(),
        "server_auth_signed_bytes": (SIG_PREFIX + b"vc-auth\x00" + th1 + b"server").hex(),
        "server_auth_record": server_auth_record.hex(),
        "th2": th2.hex(),
        "client_auth_plaintext": client_auth.hex(),
        "client_auth_signed_bytes": (SIG_PREFIX + b"vc-auth\x00" + th2 + b"client").hex(),
        "client_auth_record": client_auth_record.hex(),
        "c2s_record_1": c_rec1.hex(),
        "c2s_record_1_plaintext": echo["request_frame"],
        "s2c_record_1": s_rec1.hex(),
        "s2c_record_1_plaintext": echo["reply_frame"],
        "refusal": {
            "client_versions": [2, 9],
            "server_hello": _refusal().hex(),
        },
    }


def _refusal() -> bytes:
    server = principal("server")
    sh = ServerHandshake(
        server,
        blessings=server.bless_self("vserver"),
        ephemeral_key=seed("server ephemeral x25519"),
    )
    hello = ClientHandshake(
        principal("client"),
        authorize_server=lambda *a: None,
        blessings_for_server=lambda _b: None,
        versions=(2, 9),
        ephemeral_key=seed("client ephemeral x25519"),
        hello_random=seed("client hello random"),
    ).start()
    try:
        sh.receive_data(hello)
    except errors.VersionIncompatibleError:
        return sh.refusal
    raise AssertionError("the server accepted versions 2..9")


def main() -> None:
    request = request_vectors()
    outputs = {
        "codec.json": codec_vectors(),
        "frames.json": frames_vectors(),
        "request.json": request,
        "blessings.json": blessings_vectors(),
        "naming.json": naming_vectors(),
        "handshake.json": handshake_vectors(request),
    }
    for name, data in outputs.items():
        (HERE / name).write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
