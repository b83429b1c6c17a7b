"""Bad input to a public API is refused at once with BadArgError, naming the argument.

Never a bare Python exception (TypeError, AttributeError, ValueError...), and never a value
accepted that fails only later, at call time. Each case here failed before its check: with a
bare exception (the message said which), or by accepting the value (then ``pytest.raises``
fails), as each test's docstring says. The few tests that need a server start a real one on
127.0.0.1:0 and bound every call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipcclient import (
    AllowEveryone,
    AllowPatterns,
    BackoffPolicy,
    Client,
    ClientOptions,
    Context,
    Granter,
    Namespace,
    Principal,
    Publisher,
    RetryBudget,
    Server,
    ServerOptions,
    caveats,
    errors,
    expose,
)
from ipcclient.naming import names
from ipcclient.options import ServerPattern, ServerPublicKey
from ipcclient.retry import BackoffKind
from ipcclient.server.server import LeafDispatcher
from ipcclient.transport.manager import StreamManager

ANY = [caveats.unconstrained_use()]


@pytest.fixture
def principals() -> tuple[Principal, Principal]:
    """(server, client): each blessed by one root ``idp`` and trusting it."""
    idp = Principal.generate()
    root = idp.bless_self("idp")
    made = []
    for who in ("server", "client"):
        p = Principal.generate()
        p.store.default = idp.bless(p.public_key, root, who, ANY)
        p.add_to_roots(root)
        made.append(p)
    return made[0], made[1]


@pytest.fixture
def server(principals: tuple[Principal, Principal]) -> Iterator[Server]:
    srv = Server(principals[0])
    yield srv
    srv.stop(timeout=2.0)


@expose
class _Svc:
    def Get(self, call: Any) -> str:
        return "hi"


def _ctx() -> Context:
    return Context.background().with_timeout(5.0)


def _refused(match: str) -> Any:
    return pytest.raises(errors.BadArgError, match=match)


# --- the client ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"principal": "alice"}, "principal"),
        ({"principal": 5}, "principal"),
        ({"namespace": ["/127.0.0.1:1"]}, "namespace"),
        ({"options": {"dial_timeout": 1.0}}, "options"),
        ({"stream_manager": object()}, "stream_manager"),
    ],
)
def test_client_refuses_arguments_of_the_wrong_type(kwargs: dict[str, Any], named: str) -> None:
    """Before: all accepted; ``Client("alice")`` then failed every call after ~0.9 s of
    retries as NoServers (``dialing ... failed: AttributeError``)."""
    principal = kwargs.pop("principal", None)
    with _refused(f"client: {named} must be a "):
        Client(principal, **kwargs)


@pytest.mark.parametrize("credentials", [5, b"/tmp", 1.5])
def test_client_from_env_refuses_credentials_that_are_not_a_path(credentials: Any) -> None:
    """Before: a bare TypeError from ``os.fspath``."""
    with _refused("client: credentials must be a principal directory"):
        Client.from_env(credentials)


def test_client_refuses_a_str_principal_and_takes_its_types() -> None:
    """The user's case: ``Client("alice")`` is refused when made (before: accepted, and
    every call failed after ~0.9 s of retries). Every right value still goes through."""
    with _refused("client: principal must be a Principal or None, not str"):
        Client("alice")  # type: ignore[arg-type]
    p = Principal.generate()
    p.store.default = p.bless_self("me")
    with Client(
        p, namespace=Namespace([]), options=ClientOptions(), stream_manager=StreamManager(p)
    ) as c:
        assert c.principal is p
    with Client() as c:
        assert isinstance(c.principal, Principal)


# --- authorizers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorizer", "match"),
    [
        ("notanauthorizer", "must be an Authorizer .* or None, not str"),
        (5, "must be an Authorizer .* or None, not int"),
        (object(), "must be an Authorizer .* or None, not object"),
        (AllowEveryone, r"must be an Authorizer instance, not the class AllowEveryone"),
    ],
)
def test_serve_refuses_an_authorizer_without_authorize(
    server: Server, principals: tuple[Principal, Principal], authorizer: Any, match: str
) -> None:
    """Before: accepted; every call then answered ipc.Unknown (AttributeError; for the
    class, a TypeError: ``authorize`` called without its ``self``)."""
    with _refused(f"server: the authorizer {match}"):
        server.serve(_Svc(), authorizer)
    # Nothing was served: the server can still serve, and a call then works.
    ep = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve(_Svc(), AllowPatterns(["idp"]))
    with Client(principals[1]) as c:
        assert c.call(_ctx(), ep, "Get") == ("hi",)


def test_serve_dispatcher_refuses_an_object_without_lookup(server: Server) -> None:
    """Before: accepted; every call then failed with a bare AttributeError inside."""
    with _refused("server: serve_dispatcher needs a Dispatcher"):
        server.serve_dispatcher(5)  # type: ignore[arg-type]
    server.serve_dispatcher(LeafDispatcher(_Svc()))  # (nothing was kept)


@pytest.mark.parametrize(
    ("patterns", "match"),
    [
        ("idp", r"not one str \(write AllowPatterns\(\['idp'\]\)\)"),
        (b"idp", "not bytes"),
        (None, "not NoneType"),
        (5, "not int"),
        ([1], "a blessing pattern is a str, not int"),
        (["idp", None], "a blessing pattern is a str, not NoneType"),
        ([b"idp"], "a blessing pattern is a str, not bytes"),
        (["idp:"], "invalid blessing pattern 'idp:'"),
        ([""], "invalid blessing pattern ''"),
        (["idp::alice"], "invalid blessing pattern"),
    ],
)
def test_allow_patterns_refuses_what_is_not_a_list_of_patterns(patterns: Any, match: str) -> None:
    """Before: ``AllowPatterns("idp")`` silently became ['i', 'd', 'p'], ``[1]`` became
    ['1'], invalid patterns were kept (and matched nothing), None was a bare TypeError."""
    with _refused(f"server: AllowPatterns.*{match}"):
        AllowPatterns(patterns)


def test_allow_patterns_refuses_one_str_and_keeps_valid_patterns() -> None:
    """The user's case: ``AllowPatterns("idp")`` (before: the patterns 'i', 'd', 'p'). Valid
    patterns from any iterable are kept as they are."""
    with _refused("server: AllowPatterns takes a list of blessing patterns, not one str"):
        AllowPatterns("idp")
    kept = AllowPatterns(p for p in ["idp", "idp:alice:$", "...", "a:b:c"])
    assert [str(p) for p in kept.patterns] == ["idp", "idp:alice:$", "...", "a:b:c"]


# --- Principal.load / save ---------------------------------------------------------------


def test_principal_load_refuses_a_str_passphrase_as_save_does(tmp_path: Path) -> None:
    """Before: load with a str passphrase said NoAccess "wrong passphrase or corrupt file"
    (it is the right passphrase, of the wrong type); save already said BadArg."""
    p = Principal.generate()
    p.save(tmp_path / "p", passphrase=b"correct horse")
    for bad in ("correct horse", b"", 5):
        with _refused("security: a passphrase must be non-empty bytes"):
            Principal.load(tmp_path / "p", passphrase=bad)  # type: ignore[arg-type]
        with _refused("security: a passphrase must be non-empty bytes"):
            p.save(tmp_path / "q", passphrase=bad)  # type: ignore[arg-type]
    loaded = Principal.load(tmp_path / "p", passphrase=b"correct horse")
    assert loaded.public_key == p.public_key


@pytest.mark.parametrize("directory", [None, 5, b"/tmp/x"])
def test_principal_load_and_save_refuse_a_directory_that_is_not_a_path(directory: Any) -> None:
    """Before: a bare TypeError from ``Path(...)``."""
    with _refused("security: a principal directory must be a str or os.PathLike"):
        Principal.load(directory)
    with _refused("security: a principal directory must be a str or os.PathLike"):
        Principal.generate().save(directory)


def test_principal_load_refuses_none_and_takes_a_pathlike_or_a_str(tmp_path: Path) -> None:
    """The user's case: ``Principal.load(None)`` (before: a bare TypeError). Both path
    types still load."""
    with _refused("security: a principal directory must be a str or os.PathLike, not None"):
        Principal.load(None)  # type: ignore[arg-type]
    p = Principal.generate()
    p.save(str(tmp_path / "p"))
    assert Principal.load(tmp_path / "p").public_key == p.public_key
    assert Principal.load(os.fspath(tmp_path / "p")).public_key == p.public_key


# --- the rest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((None,), {}, "server: principal must be a Principal, not NoneType"),
        (("alice",), {}, "server: principal must be a Principal, not str"),
        ((), {"options": {"workers": 1}}, "server: options must be a ServerOptions"),
        ((), {"blessings": "idp:server"}, "server: blessings must be Blessings"),
    ],
)
def test_server_refuses_arguments_of_the_wrong_type(
    principals: tuple[Principal, Principal],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    """Before: bare AttributeErrors (``'NoneType' object has no attribute 'store'``,
    ``'dict' object has no attribute 'transport'``, ``'str' ... 'public_key'``)."""
    with _refused(match):
        Server(*(args or (principals[0],)), **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("transport", "x", "ServerOptions.transport must be a TransportOptions, not str"),
        ("header_limits", {}, "ServerOptions.header_limits must be a codec Limits"),
        ("inline_calls", "yes", "ServerOptions.inline_calls must be a bool"),
        ("max_queued", True, "max_queued must be >= 0"),
    ],
)
def test_server_options_refuse_fields_of_the_wrong_type(field: str, value: Any, match: str) -> None:
    """Before: accepted; ``transport="x"`` then failed in listen with a bare
    AttributeError (``'str' object has no attribute 'versions'``)."""
    with _refused(f"server: {match}"):
        ServerOptions(**{field: value})


@pytest.mark.parametrize(
    ("protocol", "address", "named"),
    [("tcp", None, "address"), ("tcp", 8080, "address"), (None, "127.0.0.1:0", "protocol")],
)
def test_server_listen_refuses_a_protocol_or_address_that_is_not_a_str(
    server: Server, protocol: Any, address: Any, named: str
) -> None:
    """Before: ``listen("tcp", None)`` raised a bare AttributeError (``startswith``)."""
    with _refused(f"server: listen's {named} must be a str"):
        server.listen(protocol, address)
    assert server.endpoints == []


@pytest.mark.parametrize("cavs", [None, 5, "abc"])
def test_bless_refuses_caveats_that_are_not_a_list(cavs: Any) -> None:
    """Before: ``bless_self("x", None)`` and ``bless(..., None)`` raised a bare TypeError
    ('NoneType' object is not iterable); "abc" said "caveats must be Caveat values"."""
    idp = Principal.generate()
    with _refused("security: caveats must be a list of Caveat values"):
        idp.bless_self("x", cavs)
    other = Principal.generate()
    with _refused("security: caveats must be a list of Caveat values"):
        idp.bless(other.public_key, idp.bless_self("idp"), "x", cavs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("10",), "expires_in's seconds must be a number"),
        ((None,), "expires_in's seconds must be a number"),
        ((True,), "expires_in's seconds must be a number"),
        ((10, "now"), "expires_in's now must be a number"),
    ],
)
def test_expires_in_refuses_what_is_not_a_number(args: tuple[Any, ...], match: str) -> None:
    """Before: a bare TypeError (``unsupported operand type(s) for +``); True was taken as
    one second."""
    with _refused(f"security: {match}"):
        caveats.expires_in(*args)
    assert caveats.expires_in(10, now=1000).not_after == 1010  # (numbers still work)


@pytest.mark.parametrize("blessings", [None, "idp", 5])
def test_add_to_roots_refuses_what_is_not_blessings(blessings: Any) -> None:
    """Before: a bare AttributeError (``'NoneType' object has no attribute 'chains'``)."""
    p = Principal.generate()
    with _refused("security: roots are added from Blessings"):
        p.add_to_roots(blessings)
    with _refused("security: roots are added from Blessings"):
        p.roots.add_blessings(blessings)
    assert p.roots.dump() == {}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BackoffPolicy.vanadium(reserve=-1), "BackoffPolicy.reserve must be"),
        (
            lambda: BackoffPolicy(base="0.1"),  # type: ignore[arg-type]
            "BackoffPolicy.base must be",
        ),
        (lambda: BackoffPolicy(jitter=True), "BackoffPolicy.jitter must be"),
        (
            lambda: BackoffPolicy(kind="power"),  # type: ignore[arg-type]
            "BackoffPolicy.kind must be a BackoffKind",
        ),
        (lambda: BackoffPolicy(kind=BackoffKind.POWER, base=0.5), "a POWER backoff needs"),
        (
            lambda: RetryBudget(ttl="10"),  # type: ignore[arg-type]
            "ttl must be",
        ),
        (
            lambda: RetryBudget(buckets=1.5),  # type: ignore[arg-type]
            "buckets must be an int",
        ),
    ],
)
def test_retry_policies_refuse_bad_values_with_bad_arg(make: Any, match: str) -> None:
    """Before: a bare ValueError (``BackoffPolicy.reserve must be a finite number >= 0``),
    or a bare TypeError from ``math.isfinite("10")``, or ``kind="power"`` accepted."""
    with _refused(f"retry: {match}"):
        make()


@pytest.mark.parametrize("name", [None, 5, b"/a"])
def test_names_clean_refuses_what_is_not_a_str(name: Any) -> None:
    """Before: a bare AttributeError (``'NoneType' object has no attribute 'startswith'``)."""
    with _refused("naming: a name must be a str"):
        names.clean(name)


def test_namespace_flush_cache_entry_refuses_what_is_not_a_str() -> None:
    """Before: a bare AttributeError (``startswith``)."""
    with _refused("namespace: a name must be a str, not NoneType"):
        Namespace([]).flush_cache_entry(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("roots", [None, 5, b"/127.0.0.1:1"])
def test_namespace_and_client_refuse_roots_that_are_not_a_sequence(roots: Any) -> None:
    """Before: ``Client(roots=None)`` and ``Namespace(None)`` raised a bare TypeError
    (``'NoneType' object is not iterable``); bytes were taken as a sequence of ints."""
    with _refused("namespace: roots must be a sequence of names"):
        Namespace(roots)
    with _refused("namespace: roots must be a sequence of names"):
        Client(roots=roots)


@pytest.mark.parametrize("servers", [5, None, b"/127.0.0.1:1"])
def test_publisher_add_name_refuses_servers_that_are_not_a_sequence(servers: Any) -> None:
    """Before: a bare TypeError (``'int' object is not iterable``)."""
    p = Principal.generate()
    p.store.default = p.bless_self("me")
    with Client(p) as client:
        publisher = Publisher(client, Namespace([]))
        try:
            with _refused("publisher: servers must be a sequence of str"):
                publisher.add_name("x", servers)
            assert publisher.names() == []
        finally:
            publisher.stop(1.0)


def test_a_granter_returning_something_else_is_named_in_the_error(
    server: Server, principals: tuple[Principal, Principal]
) -> None:
    """A Granter whose function returns a str: the call fails at once, before any request
    byte, with a BadArgError naming that function and what it returned (before: ipc.NoServers,
    "no compatible server ... a granter must return Blessings")."""
    ep = "/" + server.listen("tcp", "127.0.0.1:0")
    server.serve(_Svc(), AllowPatterns(["idp"]))

    def my_granter(server_blessings: Any, key: Any) -> Any:
        return "not blessings"

    with Client(principals[1]) as c, pytest.raises(errors.BadArgError) as info:
        c.call(_ctx(), ep, "Get", options=[Granter(my_granter)])
    err = info.value
    assert "my_granter" in err.msg and "returned str" in err.msg
    assert err.request_sent is False
    assert err.action is errors.RetryAction.NO_RETRY


@pytest.mark.parametrize(
    "make",
    [
        lambda: Granter("x"),  # type: ignore[arg-type]
        lambda: Granter(None),  # type: ignore[arg-type]
        lambda: ServerPattern("idp", 5),  # type: ignore[arg-type]
        lambda: ServerPublicKey(b"\x00" * 32),  # type: ignore[arg-type]
    ],
)
def test_call_options_refuse_values_of_the_wrong_type(make: Any) -> None:
    """Before: accepted; the call then failed as NotTrusted ("granter failed: TypeError")
    or with a bare exception while matching the server."""
    with _refused("options: "):
        make()


@pytest.mark.parametrize(
    "use",
    [names.is_rooted, names.components, names.split_address_name, names.is_terminal],
)
@pytest.mark.parametrize("name", [None, 5, b"/a"])
def test_name_functions_refuse_what_is_not_a_str(use: Any, name: Any) -> None:
    """Before: bare AttributeErrors (``'NoneType' object has no attribute 'startswith'``)."""
    with _refused("naming: a name must be a str"):
        use(name)
