"""Only exposed methods can be called remotely: ``@expose`` on a method or a class, or an
explicit ``serve(obj, methods=[...])``; an object that exposes nothing is refused at serve()."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import types
from collections.abc import Callable
from typing import Any, ClassVar
from unittest import mock

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


@expose
class WithAttributes:
    """A decorated class holding things that are not methods: none of them is exposed, and
    working out what is exposed evaluates none of them."""

    events: list[str] = []  # (a mutable class attribute: not callable, never exposed)

    @expose
    class Config:  # a nested class (decorated for its own methods): not a method
        def __init__(self, call: ServerCall) -> None:
            WithAttributes.events.append("Config made")

    Cache = dict  # a type held as an attribute

    @property
    def Size(self) -> Callable[..., int]:
        WithAttributes.events.append("Size read")
        return lambda call: 0

    @functools.cached_property
    def Cached(self) -> Callable[..., int]:
        WithAttributes.events.append("Cached read")
        return lambda call: 0

    def Get(self, call: ServerCall, key: str) -> str:
        return key

    @staticmethod
    def Static(call: ServerCall) -> str:
        return "static"

    @classmethod
    def Named(cls, call: ServerCall) -> str:
        return cls.__name__


def test_a_decorated_class_exposes_its_functions_only(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    obj = WithAttributes()
    assert exposed_methods(obj) == {"Get", "Static", "Named"}
    _, name = make_server(obj, AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Get", "k") == ("k",)
    assert client.call(_ctx(), name, "Static") == ("static",)
    assert client.call(_ctx(), name, "Named") == ("WithAttributes",)
    for method, args in (("Config", []), ("Cache", []), ("Size", [[1]]), ("Cached", [])):
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), name, method, *args)
    (sig,) = client.call(_ctx(), name, "__Signature")
    assert [m["name"] for m in sig] == ["Get", "Named", "Static"]
    # An explicit list refuses them too, without reading the properties.
    for bad in ("Config", "Cache", "Size", "Cached", "events"):
        with pytest.raises(errors.BadArgError, match="not a public method"):
            Exposed(obj, [bad])
    assert WithAttributes.events == []


def _logged(f: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that does not use functools.wraps: its wrapper takes (*args, **kwargs)."""

    def inner(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    return inner


class Variadic:
    @expose
    @_logged
    def Add(self, call: ServerCall, a: int, b: int) -> int:
        return a + b

    @expose
    def Echo(self, *args: Any) -> list[Any]:  # (args[0] is the call)
        return list(args[1:])


def test_a_method_taking_the_call_in_its_varargs_takes_any_args(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A method whose first parameter is ``*args`` (a plain ``(self, *args)``, or behind a
    decorator without functools.wraps) gets the call and the client's args in it: any
    number of args is let through (Python checks them)."""
    _, name = make_server(Variadic(), AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Add", 1, 2) == (3,)
    with pytest.raises(errors.UnknownError, match="TypeError"):
        client.call(_ctx(), name, "Add", 1)
    assert client.call(_ctx(), name, "Echo") == ([],)
    assert client.call(_ctx(), name, "Echo", "x", "y") == (["x", "y"],)
    (sig,) = client.call(_ctx(), name, "__Signature")
    assert [(m["name"], m["args"], m["varargs"]) for m in sig] == [
        ("Add", [], True),
        ("Echo", [], True),
    ]


class _PerSuffix:
    """Serves, per suffix, a namespace holding its own functions (of one type: the arity of
    each one's Get is its own)."""

    def __init__(self) -> None:
        self.objs = {
            "one": types.SimpleNamespace(Get=lambda call, a: f"one got {a}"),
            "two": types.SimpleNamespace(Get=lambda call, a, b: f"two got {a},{b}"),
        }

    def lookup(self, suffix: str) -> tuple[Any, Any]:
        if suffix not in self.objs:
            raise errors.UnknownSuffixError(f"nothing at {suffix!r}")
        return Exposed(self.objs[suffix], ["Get"]), AllowEveryone()


def test_the_arity_of_a_method_is_its_own_not_its_types(
    family: Family, make_client: MakeClient
) -> None:
    with Server(family.member("server")) as server:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve_dispatcher(_PerSuffix())
        client = make_client()
        for _ in range(2):  # (the second time from what was found the first)
            assert client.call(_ctx(), f"/{ep}/one", "Get", 1) == ("one got 1",)
            assert client.call(_ctx(), f"/{ep}/two", "Get", 1, 2) == ("two got 1,2",)
            with pytest.raises(errors.BadArgError, match="wrong number"):
                client.call(_ctx(), f"/{ep}/one", "Get", 1, 2)
            with pytest.raises(errors.BadArgError, match="wrong number"):
                client.call(_ctx(), f"/{ep}/two", "Get", 1)


class Uncallable:
    @expose
    def KwOnly(self, call: ServerCall, a: int, *, b: int) -> list[int]:
        return [a, b]

    @expose
    def KwDefault(self, call: ServerCall, a: int, *, b: int = 2) -> list[int]:
        return [a, b]


class NoCall:
    @expose
    def Ping(self) -> str:
        return "pong"


def test_serve_refuses_a_method_that_cannot_be_called(
    family: Family, make_client: MakeClient
) -> None:
    """A method that can never be called as ``method(call, *args)`` (a keyword-only
    parameter without a default: clients pass args by position; no parameter for the call)
    is refused at serve(); served by a dispatcher, calling it is BadArg."""
    with Server(family.member("server")) as server:
        with pytest.raises(errors.BadArgError, match="keyword-only parameter 'b'"):
            server.serve(Uncallable())
        with pytest.raises(errors.BadArgError, match="no parameter for the call"):
            server.serve(NoCall())
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve(Uncallable(), AllowEveryone(), methods=["KwDefault"])
        assert make_client().call(_ctx(), "/" + ep, "KwDefault", 1) == ([1, 2],)

    class Anything:
        def lookup(self, suffix: str) -> tuple[Any, Any]:
            return Uncallable(), AllowEveryone()

    with Server(family.member("server")) as server:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve_dispatcher(Anything())
        client = make_client()
        with pytest.raises(errors.BadArgError, match="keyword-only parameter 'b'"):
            client.call(_ctx(), "/" + ep, "KwOnly", 1)
        (sig,) = client.call(_ctx(), "/" + ep, "__Signature")
        assert [m["name"] for m in sig] == ["KwDefault"]


class _Traced:
    """A decorator written as a class (a descriptor, so it binds like a function; it names
    what it wraps, as ``functools.update_wrapper`` does)."""

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f
        functools.update_wrapper(self, f)

    def __call__(self, *args: Any) -> Any:
        return self.f(*args)

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else functools.partial(self.f, obj)


@expose
class Wrapped:
    """Methods a class decorated with @expose defines through wrappers, and a public helper
    a client cannot call."""

    @functools.lru_cache(maxsize=8)  # noqa: B019  (the instance lives as long as the test)
    def Square(self, call: ServerCall, n: int) -> int:
        return n * n

    def _add(self, call: ServerCall, a: int, *, b: int) -> int:
        return a + b

    Add1 = functools.partialmethod(_add, b=1)

    @_Traced
    def Logged(self, call: ServerCall, n: int) -> int:
        return n + 100

    def close(self) -> None:  # (a helper for the process, not for clients)
        return None

    Ping = staticmethod(functools.partial(lambda word, call: word, "pong"))


class Proxy:
    """An object that makes its methods on demand."""

    def __getattr__(self, name: str) -> Any:
        if name == "Echo":
            return lambda call, x: x
        raise AttributeError(name)


def test_methods_behind_wrappers_are_exposed_and_a_helper_does_not_stop_serving(
    make_server: MakeServer,
    make_client: MakeClient,
    family: Family,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``@expose`` on a class exposes methods wrapped by ``functools.lru_cache``,
    ``functools.partialmethod`` or a decorator written as a class (they are methods, not
    classes or properties); a public helper no client can call (no parameter for the call)
    is logged, not a reason to refuse the whole object, and a client calling it gets BadArg.
    A ``methods`` list may name a method an object makes with ``__getattr__``."""
    caplog.set_level(logging.WARNING, logger="ipcclient.server")
    _, name = make_server(Wrapped(), AllowEveryone())
    assert any("method close cannot be served" in r.getMessage() for r in caplog.records)
    client = make_client()
    assert client.call(_ctx(), name, "Square", 3) == (9,)
    assert client.call(_ctx(), name, "Add1", 4) == (5,)
    assert client.call(_ctx(), name, "Logged", 1) == (101,)
    assert client.call(_ctx(), name, "Ping") == ("pong",)  # (a static method: declared)
    with pytest.raises(errors.BadArgError, match="no parameter for the call"):
        client.call(_ctx(), name, "close")
    with Server(family.member("proxy")) as proxying:
        ep = proxying.listen("tcp", "127.0.0.1:0")
        proxying.serve(Proxy(), AllowEveryone(), methods=["Echo"])
        assert client.call(_ctx(), "/" + ep, "Echo", 7) == (7,)


def _wipe(mode: str, call: Any = None) -> str:
    return f"wiped ({mode})"


class _Notifier:
    def __call__(self, *args: Any) -> str:
        return "notified"


@expose
class HoldsCallables:
    """A class decorated with @expose that holds callable objects which are no methods of
    it: none of them may be called remotely."""

    on_shutdown = functools.partial(_wipe, "hard")
    notify = _Notifier()
    emit = print
    dump = staticmethod(print)
    system = staticmethod(os.system)
    hook = _Notifier().__call__  # (another object's bound method)
    backend = mock.MagicMock()

    def Get(self, call: ServerCall) -> str:
        return "got"


def _default_hook(call: Any = None) -> str:
    return "default"


@expose
@dataclasses.dataclass
class Job:
    """A dataclass whose field's default is a function: a value of the instance, not a
    method of the class (the instance may hold any callable there)."""

    on_done: Callable[..., Any] = _default_hook
    on_error: Callable[..., Any] = lambda call=None: "default"

    def Run(self, call: ServerCall) -> str:
        return "ran"


class _Lazy:
    """A descriptor that computes its value (and here fails, as a lazy connection may)."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        raise ConnectionRefusedError("the backend is down")


class LazyHolder:
    Echo = _Lazy()


class BrokenProxy:
    def __getattr__(self, name: str) -> Any:
        raise ConnectionRefusedError("the backend is down")


def test_callable_objects_a_class_holds_are_not_its_methods(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    """A partial, a callable instance, a builtin, another object's bound method or a mock
    held by a class decorated with @expose are not its methods and are not exposed (a
    client could run ``on_shutdown``), nor is a dataclass field whose default is a function
    (a client ran the callable the instance was built with). A proxy or a descriptor whose
    own lookup fails is a BadArgError at serve(), saying why."""
    obj = HoldsCallables()
    assert exposed_methods(obj) == {"Get"}
    _, name = make_server(obj, AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Get") == ("got",)
    for method in ("on_shutdown", "notify", "emit", "hook", "backend", "dump", "system"):
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), name, method)
    assert not HoldsCallables.backend.called
    fired: list[int] = []
    job = Job(on_done=lambda call=None: fired.append(1), on_error=lambda call=None: fired.append(2))
    _, job_name = make_server(job, AllowEveryone())
    for field in ("on_done", "on_error"):
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), job_name, field)
    assert fired == []
    (sig,) = client.call(_ctx(), job_name, "__Signature")
    assert [m["name"] for m in sig] == ["Run"]
    with (
        Server(family.member("lazy")) as server,
        pytest.raises(errors.BadArgError, match="ConnectionRefusedError"),
    ):
        server.serve(LazyHolder(), AllowEveryone(), methods=["Echo"])
    with (
        Server(family.member("proxy")) as server,
        pytest.raises(errors.BadArgError, match="ConnectionRefusedError"),
    ):
        server.serve(BrokenProxy(), AllowEveryone(), methods=["Echo"])


class _Mixin:
    def Put(self, call: ServerCall, x: int) -> int:
        return x


def _no_wraps(f: Callable[..., Any]) -> Callable[..., Any]:
    def inner(*args: Any) -> Any:
        return f(*args)

    return inner


class _LazySetting:
    """A lazy proxy a class may hold (its every lookup fails until configured)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("settings are not configured")


@expose
class Assembled:
    """Methods a class gets by assignment and through a decorator without functools.wraps
    are its methods; a lazy proxy it holds is not looked into."""

    Put = _Mixin.Put
    settings = _LazySetting()

    @_no_wraps
    def Twice(self, call: ServerCall, x: int) -> int:
        return 2 * x


def test_methods_by_assignment_or_a_plain_decorator_are_methods(
    make_server: MakeServer, make_client: MakeClient, family: Family
) -> None:
    """A function assigned in the class body (from a mixin) or made by a decorator without
    functools.wraps is a method of the class, as Python binds it; a lazy proxy the class
    holds does not stop serve(); a methods= that is not a list of names is a BadArgError."""
    _, name = make_server(Assembled(), AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Put", 3) == (3,)
    assert client.call(_ctx(), name, "Twice", 3) == (6,)
    with pytest.raises(errors.UnknownMethodError):
        client.call(_ctx(), name, "settings")
    with Server(family.member("s")) as server:
        for bad in (5, [["Get"]]):
            with pytest.raises(errors.BadArgError, match="list of names"):
                server.serve(Assembled(), AllowEveryone(), methods=bad)  # type: ignore[arg-type]


def _class_default(self: Any, call: Any) -> str:
    return "the class's"


@expose
class Handlers:
    """Holds a handler at class level (a function: a method of the class) and lets each
    object replace it; hides its own attributes from ``__dict__`` as some proxies do."""

    on_done = _class_default
    shout = functools.lru_cache(print)
    upper = str.upper
    set_attr = object.__setattr__

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        return {}

    def Run(self, call: ServerCall) -> str:
        return "ran"


class _Backend:
    Run = "the backend's own attribute"


@expose
class SlotProxy:
    """No ``__dict__``; every other lookup goes to a backend (down, or holding a ``Run``)."""

    __slots__ = ("_backend",)

    def __init__(self, backend: Any) -> None:
        object.__setattr__(self, "_backend", backend)

    def __getattr__(self, name: str) -> Any:
        if self._backend is None:
            raise RuntimeError(f"backend not configured (asked for {name!r})")
        return getattr(self._backend, name)

    def Run(self, call: ServerCall) -> str:
        return "ran"


def test_a_call_runs_the_classs_method_never_what_the_object_holds(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A call is bound from the class, as exposure was decided: an object's own handler
    under an exposed name never runs, however the object hides or forwards its attributes
    (a ``__dict__`` property, ``__getattr__`` on a slotted proxy); a proxy's failing
    backend does not stop serve(). Builtins, however wrapped, and the methods of builtin
    types are no methods of the class."""
    ran: list[str] = []
    obj = Handlers()
    object.__setattr__(obj, "on_done", lambda call=None: ran.append("the object's") or "x")
    _, name = make_server(obj, AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "on_done") == ("the class's",)
    assert ran == []
    for method in ("shout", "upper", "set_attr"):
        with pytest.raises(errors.UnknownMethodError):
            client.call(_ctx(), name, method)
    for backend in (None, _Backend()):
        _, proxied = make_server(SlotProxy(backend), AllowEveryone())
        assert client.call(_ctx(), proxied, "Run") == ("ran",)


def _shared_get(self: Any, call: Any) -> str:
    return "classvar"


class _NotReady:
    """A callable descriptor that computes the method it gives, and is not ready."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        raise AttributeError("lazy not ready")

    def __call__(self, *args: Any) -> str:
        return "never"


@expose
@dataclasses.dataclass
class Declared:
    """A dataclass declaring a method as a ClassVar (the class's, not a field), and holding
    a descriptor that fails."""

    x: int = 1
    Get: ClassVar[Callable[..., str]] = _shared_get
    Lazy = _NotReady()

    def Ok(self, call: ServerCall) -> str:
        return "ok"


def test_a_classvar_method_is_served_and_a_failing_descriptor_is_unknown(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    """A dataclass's ClassVar is the class's own attribute (only its fields are values of
    its objects): a method declared so is served. A descriptor whose lookup fails does not
    stop serve(); calling it is UnknownMethod, saying why."""
    _, name = make_server(Declared(), AllowEveryone())
    client = make_client()
    assert client.call(_ctx(), name, "Get") == ("classvar",)
    assert client.call(_ctx(), name, "Ok") == ("ok",)
    with pytest.raises(errors.UnknownMethodError, match="lazy not ready"):
        client.call(_ctx(), name, "Lazy")


class _NothingExposed:
    def Hi(self, call: ServerCall) -> str:  # (not decorated: not callable remotely)
        return "hi"


class _ReturnsUnexposed:
    def lookup(self, suffix: str) -> tuple[Any, Any]:
        return _NothingExposed(), AllowEveryone()


def test_a_dispatcher_returning_an_object_that_exposes_nothing_is_logged_once(
    family: Family, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """serve() refuses an object that exposes no method; a dispatcher's lookup may return
    one, and each call then failed with 'no method', the method being right there and
    nothing logged. The server now warns once per type, and the error says why."""
    with Server(family.member("server")) as server:
        ep = server.listen("tcp", "127.0.0.1:0")
        server.serve_dispatcher(_ReturnsUnexposed())
        client = make_client()
        with caplog.at_level(logging.WARNING, logger="ipcclient.server"):
            for _ in range(3):
                with pytest.raises(errors.UnknownMethodError, match="exposes none"):
                    client.call(_ctx(), f"/{ep}/x", "Hi")
    warned = [r for r in caplog.records if "exposes no method" in r.getMessage()]
    assert len(warned) == 1
    assert "_NothingExposed" in warned[0].getMessage()
    assert "@expose" in warned[0].getMessage()
