"""Which methods of a served object clients may call: ``@expose``, or an explicit list.

Owns: the :func:`expose` decorator (on a method, or on a class for every public method the
class defines), :class:`Exposed` (an object with an explicit method list, what
``Server.serve(obj, methods=[...])`` builds), and :func:`exposed_methods`, the names a server
dispatches to (computed once per class).

A method is exposed when it is public (its name does not start with ``_``), it is a method
the class defines (a function, a static or class method, or a callable that binds like one,
such as a method wrapped by ``functools.lru_cache``; never a class, a property, a partial, a
builtin or another object's bound method: see :func:`_is_method`; nor a dataclass field),
and either the method itself or the class that defines it is decorated with :func:`expose`.
A call is dispatched to the class's attribute bound to the object, never to what the object
holds under the name itself. Nothing else of a served object can be
called remotely: helpers stay Python-only, and so do a class's other attributes (nested
classes, types held as attributes, properties, whose getters exposure never runs).

Must not: import the server (the server imports this), do I/O, or start threads.
"""

from __future__ import annotations

import dataclasses
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
        try:
            names = frozenset(methods)
        except TypeError as exc:  # (not iterable, or a name that is not hashable)
            raise errors.BadArgError(f"server: methods must be a list of names: {exc}") from exc
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
    try:  # (a descriptor of the class may compute the attribute: it was named explicitly)
        found = getattr(obj, name, None)
    except Exception as exc:
        raise errors.BadArgError(
            f"server: looking up {name!r} on {type(obj).__name__} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return callable(found) and not isinstance(found, type)


_CACHE: dict[type, frozenset[str]] = {}
_CACHE_LOCK = threading.Lock()


def _public(name: str) -> bool:
    return isinstance(name, str) and name.isidentifier() and not name.startswith("_")


def _marked(value: Any) -> bool:
    func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
    try:
        return getattr(func, _MARK, False) is True
    except Exception:  # (a lazy proxy held by the class fails its lookups: not a method)
        return False


def is_marked(method: Any) -> bool:
    """Whether ``method`` (a function, or a method bound to its object) was itself decorated
    with :func:`expose`, rather than exposed by the decorator on its class."""
    return _marked(method)


_BUILTINS = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)
"""Builtins (``print``, ``os.system``) and the methods of builtin types (``str.upper``)."""

_NOT_METHODS = (
    type,
    property,
    functools.cached_property,
    functools.partial,
    types.MethodType,
    *_BUILTINS,
)
"""Callables (or not) that a class namespace may hold but that are no methods of the class:
classes, properties, partials, another object's bound methods, builtins (``print``,
``os.system``) and the methods of builtin types (``str.upper``, ``object.__setattr__``)."""


def _is_method(value: Any, *, marked: bool) -> bool:
    """Whether ``value``, found in a class's own namespace, is a method of it clients may
    call. Nothing is evaluated to tell.

    - A function is (wherever it was written: one assigned in the class body, from a mixin
      say, is a method of the class as much as one defined there), and so is a static or
      class method of anything but a class or a builtin, and a ``functools.partialmethod``.
    - Another callable is when it binds like a method (its type has ``__get__``: a method
      wrapped by ``functools.lru_cache``, a decorator written as a class, a compiled
      method), unless it is one of :data:`_NOT_METHODS`: not a class (nested, or a type
      held as an attribute; a nested class decorated with ``@expose`` exposes its own
      methods, not the outer class's), a property, a ``functools.partial``, another
      object's bound method, a builtin such as ``print``, nor an object with ``__call__``
      whose type does not bind (a mock).
    - Marked (decorated with :func:`expose` itself): any callable but a class.

    A call is dispatched to the class's attribute, bound to the object, never to what the
    object itself holds under the name (see :func:`~ipcclient.server.dispatcher.find_method`),
    and a dataclass field is never a method (:func:`exposed_methods`)."""
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
        if isinstance(value, (type, *_BUILTINS)):
            return False
        return callable(value)
    if isinstance(value, types.FunctionType | functools.partialmethod):
        return True
    if isinstance(value, type) or not callable(value):
        return False
    if marked:
        return True
    if isinstance(value, _NOT_METHODS) or not hasattr(type(value), "__get__"):
        return False
    try:  # (a wrapper, such as lru_cache, is a method only of what it wraps)
        inner = inspect.unwrap(value)
    except Exception:  # (a cycle, or a lookup that fails: not a method)
        return False
    return inner is value or _is_method(inner, marked=False)


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
    # A dataclass's fields are values of its objects, whatever their defaults (not its
    # ClassVar attributes, which are the class's own: a method may be declared so).
    fields = (
        frozenset(f.name for f in dataclasses.fields(cls))
        if dataclasses.is_dataclass(cls)
        else frozenset()
    )
    for name in dir(cls):
        if not _public(name) or name in fields:
            continue
        for klass in cls.__mro__:
            if name in vars(klass):
                value = vars(klass)[name]
                marked = _marked(value) and not isinstance(value, type)
                if _is_method(value, marked=marked) and (marked or vars(klass).get(_MARK) is True):
                    names.add(name)
                break
    result = frozenset(names)
    with _CACHE_LOCK:
        _CACHE[cls] = result
    return result
