"""Which methods of a served object clients may call: ``@expose``, or an explicit list.

Owns: the :func:`expose` decorator (on a method, or on a class for every public method the
class defines), :class:`Exposed` (an object with an explicit method list, what
``Server.serve(obj, methods=[...])`` builds), and :func:`exposed_methods`, the names a server
dispatches to (computed once per class).

A method is exposed when it is public (its name does not start with ``_``), it is a method
the class defines (a function: plain, static or class method; or a callable that binds like
one, such as a method wrapped by ``functools.lru_cache``; never a class, nor a callable
object the class merely holds), and either the method itself or the
class that defines it is decorated with :func:`expose`. Nothing else of a served object can be
called remotely: helpers stay Python-only, and so do a class's other attributes (nested
classes, types held as attributes, properties, whose getters exposure never runs).

Must not: import the server (the server imports this), do I/O, or start threads.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Iterable
from typing import Any, TypeVar

from ipcclient import errors

__all__ = ["Exposed", "expose", "exposed_methods", "is_marked"]

_MARK = "__ipc_exposed__"

T = TypeVar("T")


def expose(target: T) -> T:
    """Let clients call a method (``@expose`` on it) or every public method a class
    defines (``@expose`` on the class; methods it inherits from undecorated bases are not
    included). Returns ``target`` unchanged apart from the mark.

    Raises:
        BadArgError: ``target`` is neither a class nor a function.
    """
    func = target.__func__ if isinstance(target, staticmethod | classmethod) else target
    if not (isinstance(func, type) or callable(func)):
        raise errors.BadArgError(f"expose: cannot expose {target!r}")
    try:
        setattr(func, _MARK, True)
    except (AttributeError, TypeError) as exc:
        raise errors.BadArgError(f"expose: cannot mark {target!r}: {exc}") from exc
    return target


class Exposed:
    """An object served with an explicit list of methods (``serve(obj, methods=[...])``);
    a dispatcher may return one from ``lookup`` too.

    Raises:
        BadArgError: a name is not a public method of ``obj``, or the list is empty.
    """

    __slots__ = ("methods", "obj")

    def __init__(self, obj: Any, methods: Iterable[str]) -> None:
        if isinstance(methods, str):
            raise errors.BadArgError("server: methods must be a list of names, not one str")
        names = frozenset(methods)
        if not names:
            raise errors.BadArgError("server: methods=[] exposes nothing")
        for name in names:
            if not _public(name) or not _callable_attribute(obj, name):
                raise errors.BadArgError(
                    f"server: {name!r} is not a public method of {type(obj).__name__}"
                )
        self.obj = obj
        self.methods = names


def _callable_attribute(obj: Any, name: str) -> bool:
    """Whether ``obj.name`` is a method or function (of its class, or one it holds itself, as
    a module or a namespace does), found without running a property's getter: a class (a
    nested one, or a type held as an attribute) or a property (or a cached one) is not
    one."""
    try:
        static = inspect.getattr_static(obj, name)
    except AttributeError:
        # Not there to see without running code: an object that makes its attributes on
        # demand (``__getattr__``: a proxy). The name was listed explicitly: ask it.
        try:
            found = getattr(obj, name, None)
        except Exception as exc:  # (the proxy's own failure: its backend is down, say)
            raise errors.BadArgError(
                f"server: looking up {name!r} on {type(obj).__name__} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return callable(found) and not isinstance(found, type)
    if isinstance(static, type | property | functools.cached_property):
        return False
    return callable(getattr(obj, name, None))


_CACHE: dict[type, frozenset[str]] = {}
_CACHE_LOCK = threading.Lock()


def _public(name: str) -> bool:
    return isinstance(name, str) and name.isidentifier() and not name.startswith("_")


def _marked(value: Any) -> bool:
    func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
    return getattr(func, _MARK, False) is True


def is_marked(method: Any) -> bool:
    """Whether ``method`` (a function, or a method bound to its object) was itself decorated
    with :func:`expose`, rather than exposed by the decorator on its class."""
    return _marked(method)


def _is_method(value: Any) -> bool:
    """Whether ``value``, found in a class's own namespace, is a method clients may call: a
    function (plain, static or class method), a ``functools.partialmethod``, or another
    callable that binds like a method (a method wrapped by ``functools.lru_cache``, or by a
    decorator written as a class with ``__get__``). A class (nested, or a type held as an
    attribute; a nested class decorated with ``@expose`` exposes its own methods, not the
    outer class's), a property and a callable object the class merely holds (a
    ``functools.partial``, a mock, a builtin such as ``print``, another object's bound
    method) never are, and nothing is evaluated to tell."""
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    if isinstance(value, type | property | functools.cached_property):
        return False
    if isinstance(value, types.FunctionType | functools.partialmethod):
        return True
    # A callable that binds to the object as a method does (its type has ``__get__``): not a
    # callable object merely held by the class (a partial, a mock, a builtin, another
    # object's bound method, an instance with ``__call__``), which is no method of it.
    return callable(value) and hasattr(type(value), "__get__")


def exposed_methods(obj: Any) -> frozenset[str]:
    """The names of the methods clients may call on ``obj`` (for an :class:`Exposed`, its
    list): the public functions its class (or a base) marked with :func:`expose`, or that a
    class decorated with it defines. Read from the classes' namespaces only: no attribute of
    ``obj`` is read (a property's getter never runs)."""
    if type(obj) is Exposed:
        return obj.methods
    cls = type(obj)
    found = _CACHE.get(cls)
    if found is not None:
        return found
    names = set()
    for name in dir(cls):
        if not _public(name):
            continue
        for klass in cls.__mro__:
            if name in vars(klass):
                value = vars(klass)[name]
                marked = _marked(value) and not isinstance(value, type)
                if _is_method(value) and (marked or vars(klass).get(_MARK) is True):
                    names.add(name)
                break
    result = frozenset(names)
    with _CACHE_LOCK:
        _CACHE[cls] = result
    return result
