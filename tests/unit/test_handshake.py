"""The VC handshake: versions, key agreement, mutual authentication, tampering, relays."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.transport.manager import TransportOptions
from ipcclient.vc import handshake
from ipcclient.vc.handshake import ClientHandshake, HandshakeResult, ServerHandshake, VCSettings
from ipcclient.wire.muxstate import MuxConfig
from tests.identities import Identity, make_identity


def _accept_all(_key: Any, _blessings: Any, _discharges: Any) -> None:
    return None


def _client(ident: Identity, **kw: Any) -> ClientHandshake:
    kw.setdefault("authorize_server", _accept_all)
    kw.setdefault("blessings_for_server", lambda _b: None)
    return ClientHandshake(ident, **kw)


def _run(
    client: ClientHandshake, server: ServerHandshake
) -> tuple[HandshakeResult, HandshakeResult]:
    to_server = client.start()
    to_client = server.receive_data(to_server)
    to_server = client.receive_data(to_client)
    assert client.done and not server.done
    assert server.receive_data(to_server) == b""
    assert server.done
    assert client.result is not None and server.result is not None
    return client.result, server.result


def test_handshake_establishes_a_mutually_authenticated_encrypted_vc() -> None:
    c_id, s_id = make_identity(), make_identity()
    seen: list[Any] = []

    def authorize(key: Any, blessings: Any, discharges: Any) -> None:
        seen.append(key)

    client = _client(c_id, authorize_server=authorize, settings=VCSettings(initial_window=4096))
    server = ServerHandshake(s_id, blessings=None, settings=VCSettings(max_frame_payload=2048))
    c, s = _run(client, server)
    assert seen == [s_id.public_key]
    assert c.remote_key == s_id.public_key and s.remote_key == c_id.public_key
    assert c.local_key == c_id.public_key and s.local_key == s_id.public_key
    assert c.version == s.version == handshake.SUPPORTED_VERSIONS[1]
    assert c.peer_settings == VCSettings(max_frame_payload=2048)
    assert s.peer_settings == VCSettings(initial_window=4096)
    # Records flow both ways with the derived keys.
    assert s.opener.feed(c.sealer.seal(b"ping")) == [b"ping"]
    assert c.opener.feed(s.sealer.seal(b"pong")) == [b"pong"]


def test_early_mux_bytes_after_client_auth_are_kept() -> None:
    client, server = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)
    to_client = server.receive_data(client.start())
    auth = client.receive_data(to_client)
    assert client.result is not None
    early = client.result.sealer.seal(b"first frames")
    server.receive_data(auth + early[:3])
    assert server.result is not None
    assert server.result.early_plaintext == []
    assert server.result.opener.feed(early[3:]) == [b"first frames"]
    client2, server2 = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)
    auth2 = client2.receive_data(server2.receive_data(client2.start()))
    assert client2.result is not None
    server2.receive_data(auth2 + client2.result.sealer.seal(b"early"))
    assert server2.result is not None and server2.result.early_plaintext == [b"early"]


@given(cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30))
@settings(max_examples=30, deadline=None)
def test_any_chunking_of_the_handshake_bytes(cuts: list[int]) -> None:
    client, server = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)

    def dribble(data: bytes, feed: Any) -> bytes:
        out = b""
        pos = 0
        for n in [*cuts, len(data)]:
            out += feed(data[pos : pos + n])
            pos += n
            if pos >= len(data):
                break
        return out

    to_client = dribble(client.start(), server.receive_data)
    to_server = dribble(to_client, client.receive_data)
    dribble(to_server, server.receive_data)
    assert client.done and server.done


@pytest.mark.parametrize(
    ("client_range", "server_range", "expected"),
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((2, 9), (1, 4), 4)],
)
def test_highest_common_version(
    client_range: tuple[int, int], server_range: tuple[int, int], expected: int
) -> None:
    client = _client(make_identity(), versions=client_range)
    server = ServerHandshake(make_identity(), blessings=None, versions=server_range)
    c, s = _run(client, server)
    assert c.version == s.version == expected


def test_no_common_version_fails_before_any_secret() -> None:
    client = _client(make_identity(), versions=(1, 1))
    server = ServerHandshake(make_identity(), blessings=None, versions=(2, 3))
    with pytest.raises(errors.VersionIncompatibleError):
        server.receive_data(client.start())
    refusal = server.refusal
    # The refusal is a clear hello: no key share, nothing encrypted.
    assert refusal.startswith(handshake.MAGIC)
    assert b"key_share" not in refusal
    with pytest.raises(errors.VersionIncompatibleError):
        client.receive_data(refusal)
    with pytest.raises(errors.VersionIncompatibleError):
        server.receive_data(b"more")


def test_a_refusals_text_is_shown_as_one_safe_line() -> None:
    """A refusal is unauthenticated: its text (CR, terminal escapes, up to a whole hello of
    it) once reached the client's error message verbatim."""
    client = _client(make_identity())
    client.start()
    said = "no common version\rFAKE: all good\x1b[2J\x1b[31m red \x07" + "x" * 900
    forged = handshake._encode_hello({"error": errors.VersionIncompatibleError(said)})
    with pytest.raises(errors.VersionIncompatibleError) as info:
        client.receive_data(forged)
    text = str(info.value)
    assert text.isprintable() and len(text) < 300, text
    assert text.startswith("ipc.VersionIncompatible: handshake: the server refused: no common")
    assert "\\x1b[2J" in text and text.endswith("...")


def test_a_window_no_peer_accepts_is_refused_when_configured() -> None:
    """The sans-IO mux takes any window; a VC's hello may not announce one below 1024 (a
    server so configured once failed every call with a BadProtocol from its clients)."""
    with pytest.raises(errors.BadArgError, match="initial_window >= 1024"):
        TransportOptions(mux=MuxConfig(initial_window=512))
    assert TransportOptions(mux=MuxConfig(initial_window=1024)).settings.initial_window == 1024


def test_server_choosing_outside_the_client_range_is_refused() -> None:
    client = _client(make_identity(), versions=(1, 2))
    server = ServerHandshake(make_identity(), blessings=None, versions=(3, 3))
    hello = codec.decode(client.start()[8:])
    assert list(hello["versions"]) == [1, 2]
    # Forge a server hello choosing version 3 (a downgrade/upgrade attempt by a relay).
    forged = handshake._encode_hello(
        {"version": 3, "key_share": b"\x09" * 32, "random": b"\x00" * 32,
         "window": 65536, "max_frame": 65536}
    )  # fmt: skip
    with pytest.raises(errors.VersionIncompatibleError):
        client.receive_data(forged)
    assert server.done is False


def test_client_refusing_the_server_reveals_nothing() -> None:
    def refuse(key: Any, blessings: Any, discharges: Any) -> None:
        raise errors.NotTrustedError("server does not match the pattern")

    client = _client(make_identity(), authorize_server=refuse)
    server = ServerHandshake(make_identity(), blessings=None)
    to_client = server.receive_data(client.start())
    with pytest.raises(errors.NotTrustedError):
        client.receive_data(to_client)
    assert client.result is None
    with pytest.raises(errors.NotTrustedError):
        client.receive_data(b"")


def test_a_downgrade_by_a_relay_breaks_the_keys() -> None:
    """A relay that rewrites the client's offered range cannot make the two sides agree."""
    client = _client(make_identity(), versions=(1, 2))
    server = ServerHandshake(make_identity(), blessings=None, versions=(1, 2))
    hello = client.start()
    fields = dict(codec.decode(hello[8:]))
    fields["versions"] = [1, 1]
    tampered = handshake._encode_hello(fields)
    to_client = server.receive_data(tampered)
    with pytest.raises((errors.NotTrustedError, errors.BadProtocolError)):
        client.receive_data(to_client)


def test_man_in_the_middle_relay_cannot_complete() -> None:
    """Mallory runs a server handshake toward Alice and a client handshake toward Bob."""
    alice, mallory, bob = make_identity(), make_identity(), make_identity()
    a = _client(alice)
    m_server = ServerHandshake(mallory, blessings=None)
    m_client = _client(mallory)
    b = ServerHandshake(bob, blessings=None)
    # Mallory relays Bob's hello+auth to Alice instead of her own.
    b_out = b.receive_data(m_client.start())
    m_server.receive_data(a.start())  # Mallory's own state for Alice
    with pytest.raises((errors.NotTrustedError, errors.BadProtocolError)):
        a.receive_data(b_out)  # Bob's hello+auth were made for another transcript


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_tampering_with_any_handshake_byte_fails(data: st.DataObject) -> None:
    client, server = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)
    c_hello = bytearray(client.start())
    which = data.draw(st.sampled_from(["client_hello", "server_msgs", "client_auth"]))
    if which == "client_hello":
        i = data.draw(st.integers(min_value=0, max_value=len(c_hello) - 1))
        c_hello[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        with pytest.raises(errors.IPCError):
            to_client = server.receive_data(bytes(c_hello))
            if not to_client:
                raise errors.BadProtocolError("server waits for bytes that never come")
            client.receive_data(to_client)
            raise errors.BadProtocolError("stalled")
        return
    to_client = bytearray(server.receive_data(bytes(c_hello)))
    if which == "server_msgs":
        i = data.draw(st.integers(min_value=0, max_value=len(to_client) - 1))
        to_client[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        with pytest.raises(errors.IPCError):
            if not client.receive_data(bytes(to_client)):
                raise errors.BadProtocolError("client waits for bytes that never come")
        return
    to_server = bytearray(client.receive_data(bytes(to_client)))
    i = data.draw(st.integers(min_value=0, max_value=len(to_server) - 1))
    to_server[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(errors.IPCError):
        server.receive_data(bytes(to_server))
        if not server.done:
            raise errors.BadProtocolError("server waits for bytes that never come")


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n", b"\x8fIPC\xff\xff\xff\xff", b"\x8fIPC\x00\x00\x00\x01\xff"],
)
def test_garbage_and_floods_fail_at_once(garbage: bytes) -> None:
    with pytest.raises(errors.BadProtocolError):
        ServerHandshake(make_identity(), blessings=None).receive_data(garbage)


def test_low_order_key_share_is_refused() -> None:
    client = _client(make_identity())
    fields = dict(codec.decode(client.start()[8:]))
    fields["key_share"] = b"\x00" * 32
    with pytest.raises(errors.BadProtocolError):
        ServerHandshake(make_identity(), blessings=None).receive_data(
            handshake._encode_hello(fields)
        )


def test_api_misuse_is_bad_state() -> None:
    client = _client(make_identity())
    with pytest.raises(errors.BadStateError):
        client.receive_data(b"x")
    client.start()
    with pytest.raises(errors.BadStateError):
        client.start()
    client = _client(make_identity())
    server = ServerHandshake(make_identity(), blessings=None)
    _run(client, server)
    with pytest.raises(errors.BadStateError):
        server.receive_data(b"")
    with pytest.raises(errors.BadStateError):
        client.receive_data(b"")
    with pytest.raises(errors.BadArgError):
        ServerHandshake(make_identity(), blessings=None, versions=(3, 2))


def test_real_principals_exchange_blessings_bound_to_their_keys() -> None:
    from ipcclient.security import Principal

    alice, server_p = Principal.generate(), Principal.generate()
    a_bless = alice.bless_self("alice")
    s_bless = server_p.bless_self("server")
    seen: dict[str, Any] = {}

    def authorize(key: Any, blessings: Any, discharges: Any) -> None:
        seen["server"] = blessings

    client = ClientHandshake(
        alice, authorize_server=authorize, blessings_for_server=lambda _b: a_bless
    )
    server = ServerHandshake(server_p, blessings=s_bless)
    c, s = _run(client, server)
    assert seen["server"] == s_bless
    assert s.remote_blessings == a_bless and s.remote_key == alice.public_key
    assert c.remote_blessings.names == ["server"]


def test_blessings_not_bound_to_the_signing_key_are_refused() -> None:
    from ipcclient.security import Principal

    mallory, victim = Principal.generate(), Principal.generate()
    stolen = victim.bless_self("victim")  # bound to the victim's key, not mallory's
    client = ClientHandshake(
        make_identity(), authorize_server=_accept_all, blessings_for_server=lambda _b: None
    )
    server = ServerHandshake(mallory, blessings=stolen)
    with pytest.raises(errors.NotTrustedError, match="not bound"):
        client.receive_data(server.receive_data(client.start()))


@pytest.mark.parametrize("versions", [[-1, 1], [2, 1], [1, 1 << 40], [True, 1]])
def test_malformed_version_ranges_are_protocol_errors(versions: list[Any]) -> None:
    client = _client(make_identity())
    fields = dict(codec.decode(client.start()[8:]))
    fields["versions"] = versions
    with pytest.raises(errors.BadProtocolError, match="versions"):
        ServerHandshake(make_identity(), blessings=None).receive_data(
            handshake._encode_hello(fields)
        )


@pytest.mark.parametrize("version", [0, 1 << 32, -1])
def test_a_server_version_outside_a_u32_is_a_protocol_error(version: int) -> None:
    """docs/protocol.md 4.1: the ServerHello's version is an integer in 1..2^32-1, checked
    before it is compared with the client's range (2^32 was taken for a version the client
    does not speak)."""
    client = _client(make_identity())
    client.start()
    forged = handshake._encode_hello(
        {
            "version": version,
            "key_share": b"\x09" * 32,
            "random": bytes(32),
            "window": 65536,
            "max_frame": 65536,
        }
    )
    with pytest.raises(errors.BadProtocolError, match="version"):
        client.receive_data(forged)


@pytest.mark.parametrize("versions", [(0, 1), (2, 1), (1, 1 << 32)])
def test_a_version_range_no_hello_may_carry_is_refused_up_front(
    versions: tuple[int, int],
) -> None:
    with pytest.raises(errors.BadArgError, match="version range"):
        ServerHandshake(make_identity(), blessings=None, versions=versions)
    with pytest.raises(errors.BadArgError, match="version range"):
        ClientHandshake(
            make_identity(),
            authorize_server=_accept_all,
            blessings_for_server=lambda _b: None,
            versions=versions,
        )


def test_a_refused_client_auth_is_answered_with_a_sealed_goaway() -> None:
    from ipcclient.wire.frames import GOAWAY, FrameDecoder

    client, server = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)
    assert server.rejection(errors.NotTrustedError("x")) == b""  # no keys yet: nothing to say
    auth = bytearray(client.receive_data(server.receive_data(client.start())))
    auth[-1] ^= 1  # tamper with the ClientAuth record
    with pytest.raises(errors.BadProtocolError) as info:
        server.receive_data(bytes(auth))
    assert client.result is not None
    plains = client.result.opener.feed(server.rejection(info.value))
    frames = FrameDecoder().feed(b"".join(plains))
    assert [(f.type, f.flow_id) for f in frames] == [(GOAWAY, 0)]
    assert codec.decode(frames[0].payload).id == "ipc.BadProtocol"


def test_a_long_rejection_is_shortened_to_the_frame_the_client_accepts() -> None:
    """The rejection's error was encoded whole: longer than the client's largest frame
    payload, the client's decoder refused the GOAWAY as a protocol error, and the reason
    was lost."""
    from ipcclient.vc.handshake import VCSettings
    from ipcclient.wire.frames import GOAWAY, FrameDecoder

    client = _client(make_identity(), settings=VCSettings(max_frame_payload=1024))
    server = ServerHandshake(make_identity(), blessings=None)
    client.receive_data(server.receive_data(client.start()))
    assert client.result is not None
    plains = client.result.opener.feed(server.rejection(errors.NotTrustedError("why " * 2000)))
    frames = FrameDecoder(1024).feed(b"".join(plains))
    assert [(f.type, f.flow_id) for f in frames] == [(GOAWAY, 0)]
    err = codec.decode(frames[0].payload)
    assert err.id == "ipc.NotTrusted" and err.msg.startswith("why why")


def test_a_failure_in_the_feed_of_the_hello_is_answered_after_the_servers_hello() -> None:
    """A client whose first write held more than its hello, and something broken after it:
    the server's rejection was a sealed GOAWAY alone, without the hello and auth the client
    needs to open it."""
    from ipcclient.wire.frames import GOAWAY, FrameDecoder

    client, server = _client(make_identity()), ServerHandshake(make_identity(), blessings=None)
    with pytest.raises(errors.BadProtocolError) as info:
        server.receive_data(client.start() + bytes(64))  # (a record that does not open)
    client.receive_data(server.rejection(info.value))
    assert client.result is not None
    frames = FrameDecoder().feed(b"".join(client.result.early_plaintext))
    assert [(f.type, f.flow_id) for f in frames] == [(GOAWAY, 0)]
    assert codec.decode(frames[0].payload).id == "ipc.BadProtocol"


def test_a_forged_refusal_cannot_choose_the_clients_error() -> None:
    """A refusal is unauthenticated: only 'no common version' is believed, and with the
    client's own retry action; anything else is a protocol error."""
    client = _client(make_identity())
    client.start()
    forged = handshake._encode_hello(
        {"error": errors.CanceledError("stop", action=errors.RetryAction.RETRY_BACKOFF)}
    )
    with pytest.raises(errors.BadProtocolError):
        client.receive_data(forged)
    client2 = _client(make_identity())
    client2.start()
    lying = handshake._encode_hello(
        {"error": errors.VersionIncompatibleError("old", action=errors.RetryAction.RETRY_BACKOFF)}
    )
    with pytest.raises(errors.VersionIncompatibleError) as info:
        client2.receive_data(lying)
    assert info.value.action is errors.RetryAction.NO_RETRY


def test_a_flow_limit_is_announced_only_when_set_and_reaches_the_peer() -> None:
    """docs/protocol.md 4.1: ``"max_flows"`` is in a hello only when the side announces a
    limit; the peer's result carries it (0: none announced)."""
    client = _client(make_identity())
    server = ServerHandshake(make_identity(), blessings=None, settings=VCSettings(max_flows=7))
    hello = client.start()
    assert "max_flows" not in codec.decode(hello[8:])
    to_client = server.receive_data(hello)
    assert codec.decode(to_client[8 : 8 + int.from_bytes(to_client[4:8], "big")])["max_flows"] == 7
    assert server.receive_data(client.receive_data(to_client)) == b""
    assert client.result is not None and server.result is not None
    assert client.result.peer_settings.max_flows == 7
    assert server.result.peer_settings.max_flows == 0


@pytest.mark.parametrize("limit", [0, -1, 1 << 32, True, "8", 2.0])
def test_a_flow_limit_outside_1_to_a_u32_is_a_protocol_error(limit: Any) -> None:
    client = _client(make_identity())
    client.start()
    forged = handshake._encode_hello(
        {
            "version": 1,
            "key_share": b"\x09" * 32,
            "random": bytes(32),
            "window": 65536,
            "max_frame": 65536,
            "max_flows": limit,
        }
    )
    with pytest.raises(errors.BadProtocolError, match="max_flows"):
        client.receive_data(forged)
