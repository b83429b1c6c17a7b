"""Only exposed methods can be called remotely: ``@expose`` on a method or a class, or an
explicit ``serve(obj, methods=[...])``; an object that exposes nothing is refused at serve()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipcclient import Client, Context, Server, errors, expose
from ipcclient.server.authorizer import AllowEveryone
from ipcclient.server.exposure import Exposed, exposed_methods
from ipcclient.server.server import ServerCall
from tests.conftest import Family

MakeServer = Callable[..., tuple[Server, str]]
MakeClient = Callable[..., Client]


class Cache:
    """The helper the exposure rule is for: ``clear_cache(reason)`` must not be callable."""

    def __init__(self) -> None:
        self.cleared: list[Any] = []

    @expose
    def Get(self, call: ServerCall, key: str) -> str:
        return f"value of {key}"

    @expose
    @staticmethod
    def Version(call: ServerCall) -> int:
        return 2

    def clear_cache(self, reason: Any) -> None:
        self.cleared.append(reason)


class Base:
    def Inherited(self, call: ServerCall) -> str:
        return "base"

    @expose
    def MarkedInBase(self, call: ServerCall) -> str:
        return "marked"


@expose
class Whole(Base):
    def One(self, call: ServerCall) -> int:
        return 1

    def Two(self, call: ServerCall) -> int:
        return 2

    def _hidden(self, call: ServerCall) -> int:
        return 0


class Legacy:
    def Get(self, call: ServerCall) -> str:
        return "legacy"

    def Put(self, call: ServerCall, v: Any) -> None:
        pass

    def Drop(self, call: ServerCall) -> None:
        raise AssertionError("never callable")


def _ctx() -> Context:
    return Context.background().with_timeout(20.0)


def test_exposed_methods_by_decorator() -> None:
    assert exposed_methods(Cache()) == {"Get", "Version"}
    # On a class: what it defines, plus what its bases marked; not what they left unmarked.
    assert exposed_methods(Whole()) == {"One", "Two", "MarkedInBase"}
    assert exposed_methods(Legacy()) == frozenset()
    assert exposed_methods(Exposed(Legacy(), ["Get"])) == {"Get"}
    with pytest.raises(errors.BadArgError):
        expose(42)


def test_a_helper_is_not_callable_remotely(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    cache = Cache()
    _, name = make_server(cache, AllowEveryone())
    client = make_client()
    assert client.call_one(_ctx(), name, "Get", "k") == "value of k"
    assert client.call_one(_ctx(), name, "Version") == 2
    with pytest.raises(errors.UnknownMethodError):
        client.call(_ctx(), name, "clear_cache")
    assert cache.cleared == []
    (sig,) = client.call(_ctx(), name, "__Signature")
    assert [m["name"] for m in sig] == ["Get", "Version"]


def test_a_decorated_class(make_server: MakeServer, make_client: MakeClient) -> None:
    _, name = make_server(Whole(), AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Two") == (2,)
    assert client.call(_ctx(), name, "MarkedInBase") == ("marked",)
    for method in ("Inherited", "_hidden", "__init__"):
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), name, method)


def test_an_explicit_method_list(family: Family, make_client: MakeClient) -> None:
    with Server(family.member("server")) as server:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve(Legacy(), AllowEveryone(), methods=["Get", "Put"])
        client = make_client()
        assert client.call(_ctx(), "/" + ep, "Get") == ("legacy",)
        assert client.call(_ctx(), "/" + ep, "Put", 1) == ()
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), "/" + ep, "Drop")
        (sig,) = client.call(_ctx(), "/" + ep, "__Signature")
        assert [m["name"] for m in sig] == ["Get", "Put"]


def test_serve_refuses_what_exposes_nothing(family: Family) -> None:
    with Server(family.member("server")) as server:
        with pytest.raises(errors.BadArgError, match=r"exposes no methods.*@ipcclient\.expose"):
            server.serve(Legacy())
        for bad in (["Nope"], ["_private"], ["clear"], [], "Get"):
            with pytest.raises(errors.BadArgError):
                server.serve(Legacy(), methods=bad)
        server.serve(Legacy(), methods=("Get",))  # nothing was served before: still free
