"""Fairness between a server's peers: the VCs from one remote address share one bound on
calls (``max_calls_per_address``) and on bytes of args held (half of
``max_args_bytes_total``), and all the server's calls one bound on bytes of args
(``max_args_bytes_total``). Each attacker dials from a loopback address of its own
(127.0.13.x; a legitimate client dials from 127.0.0.1), holds what it can, and a legitimate
call must still get through; the counts go back to 0 however the calls end."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipcclient import codec, errors
from ipcclient.client import Client
from ipcclient.server.authorizer import AllowEveryone, AllowPatterns
from ipcclient.server.capacity import ArgsCharge, ArgsTotal, VCState, hold_args
from ipcclient.server.exposure import expose
from ipcclient.server.server import Server, ServerOptions
from ipcclient.wire.messages import encode_messages
from tests.conftest import Family
from tests.hostile import HostilePeer, request_header, rss_bytes, server_address
from tests.transport.test_hostile_load import Legit, Service, bounded_threads, ctx, wait_until

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]

MiB = 1024 * 1024
ARG = encode_messages(b"x" * (MiB - 64))
"""One arg message of just under 1 MiB (so that two fit a 2 MiB budget)."""
ARG_BODY = len(ARG) - 4  # (what is charged: the message body, not its length prefix)


@contextlib.contextmanager
def peers_from(
    family: Family, server: Server, sources: list[str], *, who: str = "attacker"
) -> Iterator[list[HostilePeer]]:
    """Hostile peers (one VC each) of one principal, the i-th dialing from ``sources[i]``;
    closed at the end of the block."""
    principal = family.member(who)
    peers: list[HostilePeer] = []
    try:
        for source in sources:
            peers.append(HostilePeer(principal, server_address(server), source=source))
        yield peers
    finally:
        for p in peers:
            p.close()


def settled(server: Server) -> bool:
    """Nothing held any more: no call slot, no address counted, no bytes of args."""
    total = server._args_total
    return server._in_use == 0 and not server._peers and total.held == 0 and not total.by_peer


def refusals(peers: list[HostilePeer]) -> list[errors.IPCError]:
    return [err for p in peers for err in p.resets.values()]


def assert_backoff(errs: list[errors.IPCError], says: str) -> None:
    """Each error is the OverloadedError saying ``says``, to be retried after backing off."""
    assert errs
    for err in errs:
        assert isinstance(err, errors.OverloadedError), err
        assert err.action == errors.RetryAction.RETRY_BACKOFF, err
        assert says in err.msg, err.msg


def test_the_vcs_of_one_address_share_its_bound_on_calls(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Three VCs from one address each open max_calls_per_vc calls that send one of their
    two args and stop: together they get max_calls_per_address, not the whole pool."""
    opts = ServerOptions(
        workers=2, max_workers=16, max_calls_per_vc=8, max_calls_per_address=8, args_timeout=20.0
    )
    server, name = make_server(Service(), AllowEveryone(), options=opts)
    legit = Legit(make_client(), name)
    body = request_header("Count", 2) + encode_messages(b"a" * 100)
    with peers_from(family, server, ["127.0.13.2"] * 3) as peers:
        for p in peers:
            for _ in range(8):
                p.open(body)
        wait_until(lambda: len(refusals(peers)) + server._in_use == 24)  # all placed
        legit.check()  # the existing VC
        Legit(make_client(), name).check(2)  # a new client
        assert_backoff(refusals(peers), "this client's address has 8 calls")
        assert len(refusals(peers)) == 16
        assert server._peers["127.0.13.2"] == 8
    wait_until(lambda: settled(server))


def test_streams_with_no_deadline_from_one_address_leave_the_default_pool_half_free(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Default options: two VCs from one address open 128 streaming calls each, no deadline,
    never sending an item: 128 run (as long as the VCs live), 128 are refused at once, and
    another client still runs streams and unary calls."""
    service = Service()
    server, name = make_server(service, AllowEveryone(), options=ServerOptions())
    per_address = ServerOptions().max_calls_per_address
    with peers_from(family, server, ["127.0.13.3"] * 2) as peers:
        for p in peers:
            for _ in range(128):
                p.open(request_header("Stream", 0))
        wait_until(lambda: len(refusals(peers)) + server._in_use == 256)  # all placed
        client = make_client()
        streams = [client.start_call(ctx(), name, "Stream") for _ in range(8)]
        for _ in streams:
            assert service.streams.acquire(timeout=10)
        assert client.call(ctx(), name, "Echo", "through") == ("through",)
        for s in streams:
            s.close_send()
        assert [s.finish() for s in streams] == [(0,)] * 8
        assert_backoff(refusals(peers), f"has {per_address} calls")
        assert len(refusals(peers)) == 256 - per_address
        for _ in range(per_address):  # (with the 8 above: every stream admitted started)
            assert service.streams.acquire(timeout=10)
        wait_until(lambda: server._peers == {"127.0.13.3": per_address})
    wait_until(lambda: settled(server))  # the VCs broke: their streams ended


def test_headerless_flows_on_many_vcs_of_one_address_share_its_bound(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """A principal the authorizer refuses opens flows that never send a request header, on
    six VCs from one address: it holds at most max_calls_per_address workers, an
    authorized client gets through, and the held flows end at first_header_timeout."""
    opts = ServerOptions(
        workers=2,
        max_workers=16,
        max_calls_per_vc=8,
        max_headerless_per_vc=4,
        max_calls_per_address=8,
        first_header_timeout=3.5,  # (the held flows stay held while the test counts)
    )
    server, name = make_server(Service(), AllowPatterns(["root:client"]), options=opts)
    legit = Legit(make_client(), name)
    with peers_from(family, server, ["127.0.13.4"] * 6) as peers:
        with bounded_threads(16 + 10):
            fids = [(p, p.open()) for p in peers for _ in range(4)]
            wait_until(lambda: len(refusals(peers)) + server._in_use == 24)  # all placed
            legit.check()
            assert_backoff(refusals(peers), "this client's address has 8 calls")
            assert len(refusals(peers)) == 24 - 8
            assert server._peers["127.0.13.4"] == 8
        # The 8 held end at first_header_timeout (answered with an error), the VCs still open.
        wait_until(lambda: all(f in p.resets or f in p.ended for p, f in fids))
        wait_until(lambda: settled(server))


def test_counts_return_to_zero_however_calls_end(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Many VCs from a few addresses, each with calls that finish (inline, with args), are
    reset by the client, hold half-sent args, wait for a header, or are refused over a
    budget; half the VCs are killed at once, the rest left until their calls time out. No
    slot, address or byte of args stays counted."""
    opts = ServerOptions(
        workers=2,
        max_workers=64,
        max_calls_per_vc=16,
        max_calls_per_address=24,
        max_headerless_per_vc=2,
        first_header_timeout=1.0,
        args_timeout=1.0,
        max_args_bytes_per_vc=2 * MiB,
        max_args_bytes_total=8 * MiB,
    )
    service = Service()
    server, name = make_server(service, AllowEveryone(), options=opts)
    finished = request_header("Echo", 1) + encode_messages(b"y" * 1000, {"end_stream_args": True})
    sources = [f"127.0.13.{10 + i % 4}" for i in range(24)]
    for round_ in range(2):
        with peers_from(family, server, sources) as peers:
            done = []
            for p in peers:
                done.append((p, p.open(finished, end=True)))  # finishes (inline)
                p.reset(p.open(request_header("Stream", 0)))  # reset by the client
                half = p.open(request_header("Count", 3))
                p.send(half, ARG)  # holds ~1 MiB of args until args_timeout or the VC breaks
                p.open()  # waits for its header
                p.open(request_header("Stream", 0))  # runs until its VC ends
                over = p.open(request_header("Count", 3))
                p.send(over, ARG + ARG)  # over the VC's budget (or the server's)
            for p, fid in done:  # answered, or refused over a bound at once
                p.wait_ended(fid)
                assert fid in p.ended or isinstance(p.resets.get(fid), errors.OverloadedError)
            assert any(fid in p.ended for p, fid in done)
            assert server._args_total.held <= 8 * MiB
            assert all(n <= 24 for n in server._peers.values())
            for p in peers[::2]:  # half the VCs break now; the rest wait for the timeouts
                p.close()
            if round_ == 0:
                time.sleep(1.5)  # first_header_timeout and args_timeout pass
        wait_until(lambda: settled(server))
    Legit(make_client(), name).check(2)
    wait_until(lambda: settled(server))


def test_args_held_by_many_vcs_are_bounded_server_wide(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Four VCs from four addresses, each within its own budget, hold half-sent args: the
    server holds at most max_args_bytes_total; the calls beyond are reset with
    OverloadedError (back off), and calls without args still run."""
    opts = ServerOptions(
        max_args_bytes_per_vc=2 * MiB, max_args_bytes_total=4 * MiB, args_timeout=20.0
    )
    server, name = make_server(Service(), AllowEveryone(), options=opts)
    client = make_client()
    with peers_from(family, server, [f"127.0.13.{20 + i}" for i in range(4)]) as peers:
        for p in peers:
            for _ in range(2):
                fid = p.open(request_header("Count", 3))
                p.send(fid, ARG)  # 2 of the VC's 2 MiB; the third arg never comes
        wait_until(lambda: len(refusals(peers)) == 4)
        assert_backoff(refusals(peers), f"its calls hold more than {4 * MiB} bytes")
        assert server._args_total.held == 4 * ARG_BODY
        assert client.call(ctx(), name, "Count") == (0,)
    wait_until(lambda: settled(server))
    assert client.call(ctx(), name, "Echo", b"z" * MiB) == (b"z" * MiB,)


def test_one_address_cannot_hold_the_whole_args_budget(
    family: Family, make_server: MakeServer, make_client: MakeClient
) -> None:
    """Three VCs from one address hold half-sent args: together at most half the server's
    budget, so a call with a 1 MiB arg from another address still gets through."""
    opts = ServerOptions(
        max_args_bytes_per_vc=2 * MiB, max_args_bytes_total=4 * MiB, args_timeout=20.0
    )
    server, name = make_server(Service(), AllowEveryone(), options=opts)
    client = make_client()
    with peers_from(family, server, ["127.0.13.30"] * 3) as peers:
        for p in peers:
            for _ in range(2):
                fid = p.open(request_header("Count", 3))
                p.send(fid, ARG)
        wait_until(lambda: len(refusals(peers)) == 4)
        assert_backoff(refusals(peers), "from this client's address hold more than")
        assert server._args_total.by_peer == {"127.0.13.30": 2 * ARG_BODY}
        big = b"z" * (MiB - 64)
        assert client.call(ctx(), name, "Echo", big) == (big,)
    wait_until(lambda: settled(server))


@pytest.mark.parametrize("whole", [True, False], ids=["whole-request", "args-as-they-come"])
def test_args_of_many_small_items_are_charged_what_they_take_decoded(
    make_server: MakeServer, make_client: MakeClient, whole: bool
) -> None:
    """An empty map is one byte on the wire and ~70 decoded: args counted by their bytes
    alone let one call make the server hold ~70 times max_args_bytes (54 MB of such args
    took a server to 3.7 GB). Each item counts as DECODED_ITEM_BYTES at least, on both of
    the server's ways of reading args; strings and numbers cost their bytes, as before."""
    svc = Service()
    server, name = make_server(svc, AllowEveryone(), options=ServerOptions(max_args_bytes=MiB))
    client = make_client()
    dense = [{}] * 20_000  # (20 KB each; ~1.3 MB counted as decoded)
    with pytest.raises(errors.OverloadedError, match="allowed for one call") as info:
        if whole:
            client.call(ctx(), name, "Count", dense, dense)
        else:  # (the flow stays open: the server reads the args message by message)
            client.start_call(ctx(), name, "Count", [dense, dense]).finish()
    assert info.value.action == errors.RetryAction.NO_RETRY
    assert client.call(ctx(), name, "Count", [{}] * 2000, b"x" * 900_000) == (2,)
    wait_until(lambda: settled(server))


def test_text_args_past_ascii_are_charged_what_python_may_hold(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Text with one character past U+FFFF is held at 4 bytes a character: 400 KB of it is
    charged 1.6 MB, over a 1 MiB max_args_bytes; the same text in ASCII is not."""
    server, name = make_server(
        Service(), AllowEveryone(), options=ServerOptions(max_args_bytes=MiB)
    )
    client = make_client()
    with pytest.raises(errors.OverloadedError, match="allowed for one call"):
        client.call(ctx(), name, "Echo", "\U0001f600" + "a" * 400_000)
    assert client.call(ctx(), name, "Count", "a" * 400_000) == (1,)
    wait_until(lambda: settled(server))


@expose
class _Holds:
    def __init__(self) -> None:
        self.running = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()

    def Hold(self, call: Any, x: Any) -> int:
        with self.lock:
            self.running += 1
        self.gate.wait(20)  # (a method that takes a while and never reads its stream)
        return 0


def test_what_follows_a_calls_args_is_not_held_decoded(
    family: Family, make_server: MakeServer
) -> None:
    """The messages after a call's args (streamed items, whatever a peer puts there) are not
    charged to any args budget: decoded with the chunk that completed the last arg, a frame
    of empty maps after a 1-byte arg was held at ~70 times its size by each call until its
    method read it, if ever (100 such calls: ~435 MB). Now it waits undecoded."""
    svc = _Holds()
    server, _ = make_server(svc, AllowEveryone())
    peer = HostilePeer(family.member("attacker"), server_address(server))
    trailing = encode_messages([{}] * 60_000)  # (one frame: ~4 MB decoded)
    calls = 30
    try:
        before = rss_bytes()
        for _ in range(calls):
            peer.open(request_header("Hold", 1) + encode_messages(0) + trailing)
        wait_until(lambda: svc.running == calls, 30)
        grew = rss_bytes() - before
        assert grew < 40 * MiB, f"the server grew {grew / MiB:.0f} MiB for {calls} calls"
    finally:
        svc.gate.set()
        peer.close()
        wait_until(lambda: settled(server), 30)


def test_each_vc_over_a_unix_socket_is_its_own_peer(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """Every local client of a Unix socket has the same (empty) address: their calls are
    not bounded together, each VC's calls by max_calls_per_address alone."""
    service = Service()
    path = os.path.join(tempfile.mkdtemp(prefix="ipc-fair-"), "s")
    opts = ServerOptions(max_calls_per_vc=8, max_calls_per_address=2)
    server, name = make_server(
        service, AllowEveryone(), protocol="unix", address=path, options=opts
    )
    clients = [make_client() for _ in range(2)]
    streams = [c.start_call(ctx(), name, "Stream") for c in clients for _ in range(2)]
    try:
        for _ in streams:
            assert service.streams.acquire(timeout=10)
        assert len(server._peers) == 2  # a key per VC
        with pytest.raises(errors.OverloadedError):  # its VC's own bound of 2
            clients[0].start_call(ctx(), name, "Stream").finish()
    finally:
        for s in streams:
            s.close_send()
        assert [s.finish() for s in streams] == [(0,)] * 4
    wait_until(lambda: settled(server))


@pytest.mark.parametrize("field", ["max_calls_per_address", "max_args_bytes_total"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "8", None])
def test_the_new_bounds_are_ints_of_at_least_one(field: str, value: Any) -> None:
    bad: dict[str, Any] = {field: value}
    with pytest.raises(errors.BadArgError, match=field):
        ServerOptions(**bad)
    good: dict[str, Any] = {field: 1}
    assert getattr(ServerOptions(**good), field) == 1


def test_the_defaults_keep_the_fractions_the_docs_give() -> None:
    opts = ServerOptions()
    assert opts.max_calls_per_address == opts.max_workers // 2 == opts.max_calls_per_vc
    assert opts.max_args_bytes_total == 4 * opts.max_args_bytes_per_vc
    assert ArgsTotal(opts.max_args_bytes_total).peer_limit == 2 * opts.max_args_bytes_per_vc


def test_hold_args_charges_nothing_when_it_refuses() -> None:
    lock = threading.Lock()
    total = ArgsTotal(100)  # 50 per address
    a, b = VCState("10.0.0.1"), VCState("10.0.0.1")
    c, d = VCState(), VCState()  # (each its own peer, as over a Unix socket)
    assert hold_args(lock, a, 40, total, 40) is None
    refused = hold_args(lock, b, 40, total, 20)  # the address's 50 (not the VC's 40)
    assert refused is not None and "address" in refused.msg
    refused = hold_args(lock, a, 40, total, 1)  # the VC's 40
    assert refused is not None and "this VC" in refused.msg
    refused = hold_args(lock, c, 60, total, 60)  # more than its own address's 50, ever
    assert refused is not None and refused.action is errors.RetryAction.NO_RETRY
    assert hold_args(lock, c, 60, total, 50) is None
    assert hold_args(lock, d, 60, total, 10) is None
    refused = hold_args(lock, b, 40, total, 5)  # the server's 100 (not the address's 50)
    assert refused is not None and "its calls hold" in refused.msg
    assert (a.args_held, b.args_held, c.args_held, d.args_held) == (40, 0, 50, 10)
    assert total.held == 100
    assert total.by_peer == {"10.0.0.1": 40, c.peer: 50, d.peer: 10}
    for vc in (a, c, d):
        total.release_locked(vc.peer, vc.args_held)
    assert total.held == 0 and total.by_peer == {}


def test_an_empty_arg_charges_no_address() -> None:
    """An arg of 0 bytes is legal; charging it wrote a 0 entry for its address that no
    release removed (nothing was taken): one entry per Unix VC, or per address, for good."""
    lock = threading.Lock()
    total = ArgsTotal(100)
    for vc in (VCState("10.0.0.1"), VCState(), VCState()):
        assert hold_args(lock, vc, 40, total, 0) is None
        charge = ArgsCharge(lock, vc, 40, 40, total)
        charge.take(0)
        charge.release()
    assert total.by_peer == {} and total.held == 0


def test_args_no_vc_or_address_could_ever_hold_are_refused_for_good() -> None:
    """One address may hold half the total: with the total below twice max_args_bytes, a
    call within max_args_bytes was refused with "back off and retry", for good. A call's
    args over what its VC or its address may ever hold are now refused with NO_RETRY."""
    lock = threading.Lock()
    total = ArgsTotal(100)  # 50 per address
    vc = VCState("10.0.0.1")
    charge = ArgsCharge(lock, vc, 80, 200, total)  # (its own bound 200, the VC's 80)
    charge.take(30)
    with pytest.raises(errors.OverloadedError) as info:
        charge.take(30)  # 60: over the address's 50, with nothing else held
    assert info.value.action is errors.RetryAction.NO_RETRY
    refused = hold_args(lock, VCState("10.0.0.2"), 80, total, 60)  # (a whole request)
    assert refused is not None and refused.action is errors.RetryAction.NO_RETRY
    charge.release()
    assert total.by_peer == {} and total.held == 0


@pytest.mark.interpreted  # (replaces a function of ipcclient.codec at run time)
@pytest.mark.parametrize("whole", [True, False], ids=["whole-request", "args-as-they-come"])
def test_an_arg_counted_for_its_charge_is_not_walked_again_to_decode_it(
    make_server: MakeServer,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    whole: bool,
) -> None:
    """Counting a structured arg's items for its charge walks its CBOR heads, the walk the
    decoder makes before building such a value: the decoder is told so and does not walk
    them a second time (a large value of records took ~1.5-2x as long to read)."""
    walks: list[bytes] = []  # (the server's: the caller's thread walks what it sends)
    walk = codec._walk_heads
    caller = threading.current_thread()

    def counting(data: Any, limits: codec.Limits) -> int:
        if threading.current_thread() is not caller:
            walks.append(bytes(data))
        return walk(data, limits)

    monkeypatch.setattr(codec, "_walk_heads", counting)
    server, name = make_server(Service(), AllowEveryone())
    client = make_client()
    records = [{"a": i, "b": "x"} for i in range(400)]  # (one frame: a whole request)
    body = codec.encode(records)
    if whole:
        assert client.call(ctx(), name, "Count", records) == (1,)
    else:  # (the flow stays open: the server reads the args message by message)
        assert client.start_call(ctx(), name, "Count", [records, records]).finish() == (2,)
    assert walks.count(body) == (1 if whole else 2)
    wait_until(lambda: settled(server))
