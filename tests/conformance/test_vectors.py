"""The implementation against the conformance vectors in tests/vectors/ (docs/protocol.md).

Every vector is checked both ways: ipcclient reproduces its bytes from its fields (encode) and
reads its bytes back into those fields (decode). The checked-in files are the reference; this
module never regenerates them (``tests/vectors/generate.py`` does, by hand).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from ipcclient import codec, errors
from ipcclient.headers import request_from_wire, response_from_wire
from ipcclient.naming import names
from ipcclient.naming.endpoint import Endpoint
from ipcclient.security.blessings import Blessings, certificate_digest, validate_blessings
from ipcclient.security.caveats import (
    Caveat,
    SecurityCall,
    ThirdPartyCaveat,
    ThirdPartyRequirements,
    caveat_from_wire,
)
from ipcclient.security.discharges import Discharge, issue_discharge
from ipcclient.security.keys import (
    PURPOSE_CERTIFICATE,
    PURPOSE_DISCHARGE,
    PURPOSE_HANDSHAKE,
    PublicKey,
    signed_bytes,
)
from ipcclient.security.principal import Principal
from ipcclient.security.store import BlessingRoots
from ipcclient.vc.handshake import ClientHandshake, ServerHandshake, VCSettings
from ipcclient.vc.records import RecordOpener, RecordSealer
from ipcclient.wire.frames import DATA, FLAG_FIN, FLAG_OPEN, Frame, FrameDecoder, encode_frame
from ipcclient.wire.messages import encode_messages, split_messages

pytestmark = pytest.mark.timeout(60)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILES = ("codec", "frames", "request", "blessings", "naming", "handshake")
FIXED_NOW = 1_800_000_000.0  # a validation time before every expiry of the vectors


def load(name: str) -> Any:
    return json.loads((VECTORS / f"{name}.json").read_text())


def unhex(text: str) -> bytes:
    return bytes.fromhex(text)


def from_tv(v: Any) -> Any:
    """A plain value from the typed JSON form (tests/vectors/README.md)."""
    if v is None or isinstance(v, bool):
        return v
    (kind,) = set(v) - {"value"} if "tag" in v else set(v)
    if kind == "int":
        return int(v["int"])
    if kind == "float":
        return float(v["float"])
    if kind == "text":
        return v["text"]
    if kind == "bytes":
        return unhex(v["bytes"])
    if kind == "array":
        return [from_tv(x) for x in v["array"]]
    if kind == "map":
        return {from_tv(k): from_tv(x) for k, x in v["map"]}
    if kind == "tag":
        return cbor2.CBORTag(v["tag"], from_tv(v["value"]))
    raise AssertionError(f"unknown typed value {v!r}")


def materialize(value: Any) -> Any:
    """Typed values as ipcclient holds them: an error tag becomes the error."""
    if isinstance(value, cbor2.CBORTag):
        assert value.tag == 0xF000, value
        return errors.from_wire(value.value)
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Strict equality: types must agree (a CBOR array may be a list or tuple), floats by
    their bits (so -0.0 != 0.0), errors by id, action, msg and params."""
    if isinstance(a, errors.IPCError) or isinstance(b, errors.IPCError):
        return (
            isinstance(a, errors.IPCError)
            and isinstance(b, errors.IPCError)
            and (a.id, a.action, a.msg) == (b.id, b.action, b.msg)
            and same(list(a.params), list(b.params))
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b)


def test_every_vector_file_is_cited_by_the_protocol_document() -> None:
    doc = (VECTORS.parent.parent / "docs" / "protocol.md").read_text()
    for name in FILES:
        assert f"{name}.json" in doc, name
    assert "tests/vectors/generate.py" in doc


# --- codec.json ------------------------------------------------------------------------------

CODEC = load("codec")


@pytest.mark.parametrize("vec", CODEC["values"], ids=lambda v: v["name"])
def test_codec_values_both_ways(vec: dict[str, Any]) -> None:
    value = from_tv(vec["value"])
    assert codec.encode(value).hex() == vec["hex"]
    assert same(codec.decode(unhex(vec["hex"])), value)


def test_codec_nan() -> None:
    assert codec.encode(math.nan).hex() == CODEC["nan"]["hex"]
    assert math.isnan(codec.decode(unhex(CODEC["nan"]["hex"])))


@pytest.mark.parametrize("vec", CODEC["decode_only"], ids=lambda v: v["name"])
def test_codec_accepts_other_encodings(vec: dict[str, Any]) -> None:
    assert same(codec.decode(unhex(vec["hex"])), from_tv(vec["value"]))


@pytest.mark.parametrize("vec", CODEC["refused"], ids=lambda v: v["name"])
def test_codec_refuses(vec: dict[str, Any]) -> None:
    with pytest.raises(errors.BadProtocolError):
        codec.decode(unhex(vec["hex"]))


def _error(vec: dict[str, Any]) -> errors.IPCError:
    return errors.IPCError(
        vec["msg"],
        *from_tv(vec["params"]),
        id=vec["id"],
        action=errors.RetryAction(vec["action"]),
    )


@pytest.mark.parametrize("vec", CODEC["errors"], ids=lambda v: v["name"])
def test_codec_errors_both_ways(vec: dict[str, Any]) -> None:
    assert codec.encode(_error(vec)).hex() == vec["hex"]
    decoded = codec.decode(unhex(vec["hex"]))
    assert same(decoded, _error(vec))
    if vec["id"] in errors.ERROR_CLASSES:  # a known ID gives its own class
        assert type(decoded) is errors.ERROR_CLASSES[vec["id"]]


def test_codec_overloaded_error_is_the_document_example() -> None:
    (vec,) = [v for v in CODEC["errors"] if v["id"] == "ipc.Overloaded"]
    assert codec.encode(errors.OverloadedError("busy")).hex() == vec["hex"]
    assert len(unhex(vec["hex"])) == 47


@pytest.mark.parametrize("vec", CODEC["errors_decode_only"], ids=lambda v: v["name"])
def test_codec_errors_defaults(vec: dict[str, Any]) -> None:
    assert same(codec.decode(unhex(vec["hex"])), _error(vec))


@pytest.mark.parametrize("vec", CODEC["errors_refused"], ids=lambda v: v["name"])
def test_codec_errors_refused(vec: dict[str, Any]) -> None:
    with pytest.raises(errors.BadProtocolError):
        codec.decode(unhex(vec["hex"]))


# --- frames.json -----------------------------------------------------------------------------

FRAMES = load("frames")


@pytest.mark.parametrize("vec", FRAMES["frames"], ids=lambda v: v["name"])
def test_frames_both_ways(vec: dict[str, Any]) -> None:
    frame = Frame(vec["type"], vec["flags"], vec["flow_id"], unhex(vec["payload"]))
    assert encode_frame(*frame).hex() == vec["hex"]
    data = unhex(vec["hex"])
    assert FrameDecoder(FRAMES["max_frame_payload"]).feed(data) == [frame]
    one_by_one = FrameDecoder(FRAMES["max_frame_payload"])
    got = [f for i in range(len(data)) for f in one_by_one.feed(data[i : i + 1])]
    assert got == [frame]


@pytest.mark.parametrize("vec", FRAMES["refused"], ids=lambda v: v["name"])
def test_frames_refused(vec: dict[str, Any]) -> None:
    with pytest.raises(errors.BadProtocolError):
        FrameDecoder(FRAMES["max_frame_payload"]).feed(unhex(vec["hex"]))


# --- request.json ----------------------------------------------------------------------------

REQUEST = load("request")


@pytest.mark.parametrize("vec", REQUEST["exchanges"], ids=lambda v: v["name"])
def test_request_and_reply_both_ways(vec: dict[str, Any]) -> None:
    flow = vec["flow_id"]
    for side, flags in (("request", FLAG_OPEN | FLAG_FIN), ("reply", FLAG_FIN)):
        values = [materialize(from_tv(m)) for m in vec[f"{side}_messages"]]
        data = unhex(vec[f"{side}_bytes"])
        # encode: the values, as headers ipcclient builds, give the bytes and the frame
        from_wire = request_from_wire if side == "request" else response_from_wire
        rebuilt = [from_wire(v).to_wire() if isinstance(v, dict) else v for v in values]
        assert encode_messages(*rebuilt) == data
        assert encode_frame(DATA, flags, flow, data).hex() == vec[f"{side}_frame"]
        # decode: the bytes give the values, and the headers validate
        decoded = split_messages(data)
        assert decoded is not None and same(decoded, values)
        (frame,) = FrameDecoder().feed(unhex(vec[f"{side}_frame"]))
        assert frame == Frame(DATA, flags, flow, data)


def test_the_document_example_request_is_71_bytes() -> None:
    echo = REQUEST["exchanges"][0]
    assert len(unhex(echo["request_bytes"])) == 71 == REQUEST["sizes"]["echo_request_bytes"]
    assert len(unhex(echo["reply_bytes"])) == 27
    doc = (VECTORS.parent.parent / "docs" / "protocol.md").read_text()
    assert "71 bytes = 4 + 38 + 4 + 3 + 4 + 18" in doc


@pytest.mark.parametrize("vec", REQUEST["refused_requests"], ids=lambda v: v["name"])
def test_request_refused(vec: dict[str, Any]) -> None:
    decoded = split_messages(unhex(vec["bytes"]))
    assert decoded is not None
    with pytest.raises(errors.BadProtocolError):
        request_from_wire(decoded[0])


# --- blessings.json --------------------------------------------------------------------------

BLESSINGS = load("blessings")


def principal(seed_hex: str) -> Principal:
    return Principal(ed25519.Ed25519PrivateKey.from_private_bytes(unhex(seed_hex)))


def caveat_of(entry: dict[str, Any]) -> Caveat:
    return caveat_from_wire([entry["kind"], unhex(entry["params"])])


def test_blessing_keys_come_from_their_seeds() -> None:
    for key in BLESSINGS["keys"].values():
        assert principal(key["seed"]).public_key.raw.hex() == key["public_key"]


def test_blessing_chain_digests_and_signatures() -> None:
    parent = bytes(32)
    for cert in BLESSINGS["chain"]["certificates"]:
        cavs = [caveat_of(c) for c in cert["caveats"]]
        for cav, entry in zip(cavs, cert["caveats"], strict=True):
            assert cav.digest().hex() == entry["digest"]
            assert cbor2.loads(cav.params) == from_tv(entry["params_value"])
        key = PublicKey.from_raw(unhex(cert["public_key"]))
        digest = certificate_digest(parent, cert["extension"], key, cavs)
        assert digest.hex() == cert["chained_digest"]
        # the document's formula, computed independently
        content = hashlib.sha256(unhex(cert["content_input"])).digest()
        assert content.hex() == cert["content"]
        assert hashlib.sha256(parent + content).digest() == digest
        assert signed_bytes(PURPOSE_CERTIFICATE, digest).hex() == cert["signed_bytes"]
        signer = PublicKey.from_raw(unhex(cert["signer_public_key"]))
        assert signer.verify(unhex(cert["signature"]), PURPOSE_CERTIFICATE, digest)
        parent = digest


def test_blessing_chain_encodes_from_the_seeds() -> None:
    """encode: the same keys bless the same names with the same caveats -> the same bytes
    (Ed25519 signatures are deterministic)."""
    keys = BLESSINGS["keys"]
    root, alice = principal(keys["root"]["seed"]), principal(keys["alice"]["seed"])
    root_cert, alice_cert, phone_cert = BLESSINGS["chain"]["certificates"]
    root_b = root.bless_self(root_cert["extension"], [caveat_of(c) for c in root_cert["caveats"]])
    assert codec.encode(root_b).hex() == BLESSINGS["root_blessings"]["blessings"]
    alice_b = root.bless(
        alice.public_key,
        root_b,
        alice_cert["extension"],
        [caveat_of(c) for c in alice_cert["caveats"]],
    )
    phone_b = alice.bless(
        PublicKey.from_raw(unhex(phone_cert["public_key"])),
        alice_b,
        phone_cert["extension"],
        [caveat_of(c) for c in phone_cert["caveats"]],
    )
    assert codec.encode(phone_b).hex() == BLESSINGS["chain"]["blessings"]
    for cert, entry in zip(phone_b.chains[0], BLESSINGS["chain"]["certificates"], strict=True):
        assert codec.encode(cert.to_wire()).hex() == entry["encoded"]


def test_blessings_decode() -> None:
    b = codec.decode(unhex(BLESSINGS["chain"]["blessings"]))
    assert isinstance(b, Blessings) and b.names == [BLESSINGS["chain"]["name"]]
    for cert, entry in zip(b.chains[0], BLESSINGS["chain"]["certificates"], strict=True):
        assert cert.extension == entry["extension"]
        assert cert.public_key.raw.hex() == entry["public_key"]
        assert cert.signature.hex() == entry["signature"]
        assert [c.params.hex() for c in cert.caveats] == [c["params"] for c in entry["caveats"]]
    union = codec.decode(unhex(BLESSINGS["union"]["blessings"]))
    assert isinstance(union, Blessings) and union.names == BLESSINGS["union"]["names"]
    assert codec.encode(union).hex() == BLESSINGS["union"]["blessings"]


@pytest.mark.parametrize("vec", BLESSINGS["caveats"], ids=lambda v: v["kind"])
def test_caveats_both_ways(vec: dict[str, Any]) -> None:
    cav = caveat_of(vec)
    assert cav.digest().hex() == vec["digest"]
    assert codec.encode(cav).hex() == vec["tagged"]
    decoded = codec.decode(unhex(vec["tagged"]))
    assert isinstance(decoded, Caveat) and decoded == cav and type(decoded) is type(cav)


def test_third_party_caveat_id() -> None:
    tp = BLESSINGS["third_party"]
    cav = ThirdPartyCaveat(
        unhex(tp["nonce"]),
        tp["location"],
        PublicKey.from_raw(unhex(tp["discharger_key"])),
        ThirdPartyRequirements(*tp["requirements"]),
        [caveat_of(c) for c in tp["restrictions"]],
    )
    assert cav.id == tp["id"] == hashlib.sha256(unhex(tp["id_input"])).hexdigest()
    (entry,) = [c for c in BLESSINGS["caveats"] if c["kind"] == "third-party"]
    assert cav.params.hex() == entry["params"]


def _third_party() -> ThirdPartyCaveat:
    (entry,) = [c for c in BLESSINGS["caveats"] if c["kind"] == "third-party"]
    cav = caveat_of(entry)
    assert isinstance(cav, ThirdPartyCaveat)
    return cav


def test_discharge_both_ways() -> None:
    vec = BLESSINGS["discharge"]
    disch = principal(BLESSINGS["keys"]["discharger"]["seed"])
    issued = issue_discharge(
        disch,
        _third_party(),
        [caveat_of(c) for c in vec["caveats"]],
        call=SecurityCall(timestamp=FIXED_NOW, method="Get"),
    )
    assert codec.encode(issued).hex() == vec["encoded"]
    decoded = codec.decode(unhex(vec["encoded"]))
    assert isinstance(decoded, Discharge) and decoded == issued
    assert decoded.digest() == hashlib.sha256(unhex(vec["digest_input"])).digest()
    assert signed_bytes(PURPOSE_DISCHARGE, decoded.digest()).hex() == vec["signed_bytes"]
    assert decoded.verify(disch.public_key) and decoded.signature.hex() == vec["signature"]


@pytest.mark.parametrize("case", BLESSINGS["validation"], ids=lambda c: c.get("why", "valid"))
def test_blessing_validation(case: dict[str, Any]) -> None:
    blessings = codec.decode(unhex(BLESSINGS["chain"]["blessings"]))
    roots = BlessingRoots()
    for key_hex, pattern in case["roots"]:
        roots.add(PublicKey.from_raw(unhex(key_hex)), pattern)
    discharge = codec.decode(unhex(BLESSINGS["discharge"]["encoded"]))
    call = SecurityCall(
        timestamp=FIXED_NOW,
        method=case["method"],
        local_blessings=tuple(case["local_names"]),
        remote_blessings=blessings,
        remote_discharges={discharge.caveat_id: discharge} if case["with_discharge"] else {},
    )
    names_ok, rejected = validate_blessings(blessings, call, roots)
    assert names_ok == case["names"]
    assert len(rejected) == (0 if case["names"] else 1)


def test_bad_signature_decodes_but_never_validates() -> None:
    b = codec.decode(unhex(BLESSINGS["bad_signature"]["hex"]))
    assert isinstance(b, Blessings)
    roots = BlessingRoots()
    roots.add(PublicKey.from_raw(unhex(BLESSINGS["keys"]["root"]["public_key"])), "...")
    names_ok, rejected = validate_blessings(b, SecurityCall(timestamp=FIXED_NOW), roots)
    assert names_ok == [] and isinstance(rejected[0].error, errors.NotTrustedError)


@pytest.mark.parametrize("vec", BLESSINGS["refused"], ids=lambda v: v["name"])
def test_blessings_refused(vec: dict[str, Any]) -> None:
    with pytest.raises(errors.BadProtocolError):
        codec.decode(unhex(vec["hex"]))


# --- naming.json -----------------------------------------------------------------------------

NAMING = load("naming")


def endpoint_fields(ep: Endpoint) -> dict[str, Any]:
    return {
        "protocol": ep.protocol,
        "address": ep.address,
        "routing_id": ep.routing_id.hex(),
        "min_version": ep.min_version,
        "max_version": ep.max_version,
        "flags": ep.flags,
        "blessings": list(ep.blessings),
    }


def endpoint_from(vec: dict[str, Any]) -> Endpoint:
    return Endpoint(
        protocol=vec["protocol"],
        address=vec["address"],
        routing_id=unhex(vec["routing_id"]),
        min_version=vec["min_version"],
        max_version=vec["max_version"],
        serves_mount_table="m" in vec["flags"],
        is_leaf="l" in vec["flags"],
        blessings=tuple(vec["blessings"]),
    )


@pytest.mark.parametrize("vec", NAMING["endpoints"], ids=lambda v: v["string"])
def test_endpoints_both_ways(vec: dict[str, Any]) -> None:
    ep = endpoint_from(vec)
    assert str(ep) == vec["string"]
    assert codec.encode(ep).hex() == vec["tagged"]
    parsed = Endpoint.parse(vec["string"])
    assert parsed == ep
    assert endpoint_fields(parsed) == {k: vec[k] for k in endpoint_fields(parsed)}
    assert codec.decode(unhex(vec["tagged"])) == ep


@pytest.mark.parametrize("vec", NAMING["parse_only"], ids=lambda v: v["name"])
def test_endpoint_other_forms(vec: dict[str, Any]) -> None:
    parsed = Endpoint.parse(vec["string"])
    assert str(parsed) == vec["canonical"]
    assert parsed == endpoint_from(vec)


@pytest.mark.parametrize("vec", NAMING["refused"], ids=lambda v: v["name"])
def test_endpoints_refused(vec: dict[str, Any]) -> None:
    with pytest.raises(errors.BadArgError):
        Endpoint.parse(vec["string"])
    with pytest.raises(errors.BadProtocolError):  # the same string from a peer
        codec.decode(cbor2.dumps(cbor2.CBORTag(0xF004, vec["string"])))


@pytest.mark.parametrize("vec", NAMING["names"], ids=lambda v: v["name"])
def test_names(vec: dict[str, Any]) -> None:
    assert names.clean(vec["name"]) == vec["clean"]
    assert names.split_address_name(vec["name"]) == (vec["address"], vec["suffix"])
    assert names.is_terminal(vec["name"]) is vec["terminal"]


# --- handshake.json --------------------------------------------------------------------------

HS = load("handshake")


class _Sides:
    """Both handshakes set up with the vector's keys, nonces and blessings."""

    def __init__(self, versions: tuple[int, int] = (1, 1)) -> None:
        self.client = principal(HS["client"]["seed"])
        self.server = principal(HS["server"]["seed"])
        self.client_blessings = codec.decode(unhex(HS["client"]["blessings"]))
        self.server_blessings = codec.decode(unhex(HS["server"]["blessings"]))
        self.authorized: list[tuple[Any, Any, Any]] = []
        settings = VCSettings(HS["window"], HS["max_frame"])
        self.ch = ClientHandshake(
            self.client,
            authorize_server=lambda k, b, d: self.authorized.append((k, b, d)),
            blessings_for_server=lambda _b: self.client_blessings,
            versions=versions,
            settings=settings,
            ephemeral_key=unhex(HS["client_ephemeral_private"]),
            hello_random=unhex(HS["client_random"]),
        )
        self.sh = ServerHandshake(
            self.server,
            blessings=self.server_blessings,
            settings=settings,
            ephemeral_key=unhex(HS["server_ephemeral_private"]),
            hello_random=unhex(HS["server_random"]),
        )


def test_handshake_reproduces_the_transcript() -> None:
    """encode: with the vector's keys and nonces, each side writes exactly the vector."""
    s = _Sides()
    assert s.ch.start().hex() == HS["client_hello"]
    assert s.sh.receive_data(unhex(HS["client_hello"])).hex() == (
        HS["server_hello"] + HS["server_auth_record"]
    )
    client_auth = s.ch.receive_data(unhex(HS["server_hello"] + HS["server_auth_record"]))
    assert client_auth.hex() == HS["client_auth_record"]
    ((key, blessings, discharges),) = s.authorized
    assert key.raw.hex() == HS["server"]["public_key"] and blessings == s.server_blessings
    assert discharges == ()
    assert s.ch.result is not None
    c_rec1 = s.ch.result.sealer.seal(unhex(HS["c2s_record_1_plaintext"]))
    assert bytes(c_rec1).hex() == HS["c2s_record_1"]
    s.sh.receive_data(unhex(HS["client_auth_record"] + HS["c2s_record_1"]))
    assert s.sh.result is not None
    assert s.sh.result.early_plaintext == [unhex(HS["c2s_record_1_plaintext"])]
    s_rec1 = s.sh.result.sealer.seal(unhex(HS["s2c_record_1_plaintext"]))
    assert bytes(s_rec1).hex() == HS["s2c_record_1"]


def test_handshake_client_accepts_the_servers_bytes() -> None:
    """decode (client side): the vector's server bytes, fed in one piece at a time."""
    s = _Sides()
    s.ch.start()
    incoming = unhex(HS["server_hello"] + HS["server_auth_record"])
    out = b""
    for i in range(0, len(incoming), 7):
        out += s.ch.receive_data(incoming[i : i + 7])
    assert out.hex() == HS["client_auth_record"]
    result = s.ch.result
    assert result is not None and result.remote_key.raw.hex() == HS["server"]["public_key"]
    assert result.remote_blessings.names == HS["server"]["names"]
    assert result.opener.feed(unhex(HS["s2c_record_1"])) == [unhex(HS["s2c_record_1_plaintext"])]


def test_handshake_server_accepts_the_clients_bytes() -> None:
    """decode (server side): the vector's ClientHello, then ClientAuth and the first record."""
    s = _Sides()
    s.sh.receive_data(unhex(HS["client_hello"]))
    s.sh.receive_data(unhex(HS["client_auth_record"] + HS["c2s_record_1"]))
    result = s.sh.result
    assert result is not None and result.remote_key.raw.hex() == HS["client"]["public_key"]
    assert result.remote_blessings.names == HS["client"]["names"]
    assert result.early_plaintext == [unhex(HS["c2s_record_1_plaintext"])]


def test_handshake_key_schedule_and_signatures() -> None:
    """The derived values of the vector follow the document's formulas, and ipcclient's records
    use exactly those keys."""
    th1 = hashlib.sha256(unhex(HS["client_hello"] + HS["server_hello"])).digest()
    assert th1.hex() == HS["th1"]
    assert unhex(HS["okm"]) == unhex(HS["c2s_key"] + HS["s2c_key"])
    fields = cbor2.loads(unhex(HS["client_hello"])[8:])
    assert same(fields, from_tv(HS["client_hello_fields"]))
    assert fields["key_share"].hex() == HS["client_ephemeral_public"]
    assert fields["random"].hex() == HS["client_random"]
    # ipcclient's records with the vector's keys: same bytes both ways
    c2s, s2c = unhex(HS["c2s_key"]), unhex(HS["s2c_key"])
    server_auth = unhex(HS["server_auth_plaintext"])
    assert bytes(RecordSealer(s2c).seal(server_auth)).hex() == HS["server_auth_record"]
    opened = RecordOpener(c2s).feed(unhex(HS["client_auth_record"] + HS["c2s_record_1"]))
    assert opened == [unhex(HS["client_auth_plaintext"]), unhex(HS["c2s_record_1_plaintext"])]
    th2 = hashlib.sha256(th1 + server_auth).digest()
    assert th2.hex() == HS["th2"]
    for side, th, label in (("server", th1, b"server"), ("client", th2, b"client")):
        auth = cbor2.loads(unhex(HS[f"{side}_auth_plaintext"]))
        assert signed_bytes(PURPOSE_HANDSHAKE, th + label).hex() == HS[f"{side}_auth_signed_bytes"]
        assert PublicKey.from_raw(auth["key"]).verify(auth["sig"], PURPOSE_HANDSHAKE, th + label)


def test_handshake_version_refusal() -> None:
    s = _Sides(versions=(2, 9))
    hello = s.ch.start()
    with pytest.raises(errors.VersionIncompatibleError):
        s.sh.receive_data(hello)
    assert s.sh.refusal.hex() == HS["refusal"]["server_hello"]
    fresh = _Sides(versions=tuple(HS["refusal"]["client_versions"]))  # type: ignore[arg-type]
    fresh.ch.start()
    with pytest.raises(errors.VersionIncompatibleError):
        fresh.ch.receive_data(unhex(HS["refusal"]["server_hello"]))


@pytest.mark.parametrize(
    "kwargs", [{"ephemeral_key": b"short"}, {"hello_random": bytes(31)}, {"ephemeral_key": "x"}]
)
def test_handshake_randomness_is_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.BadArgError):
        ServerHandshake(principal(HS["server"]["seed"]), blessings=None, **kwargs)


def test_the_documents_blessing_example_matches_the_vectors() -> None:
    doc = (VECTORS.parent.parent / "docs" / "protocol.md").read_text()
    root = BLESSINGS["chain"]["certificates"][0]
    assert root["extension"] == "vroot" and root["caveats"] == []
    assert root["content"] in doc and root["chained_digest"] in doc
    assert root["signature"][:16] in doc and root["signature"][-24:] in doc
    assert BLESSINGS["keys"]["root"]["seed"][:8] in doc
