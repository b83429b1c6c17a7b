"""Which methods of a served object clients may call: ``@expose``, or an explicit list.

Owns: the :func:`expose` decorator (on a method, or on a class for every public method the
class defines), :class:`Exposed` (an object with an explicit method list, what
``Server.serve(obj, methods=[...])`` builds), and :func:`exposed_methods`, the names a server
dispatches to (computed once per class).

A method is exposed when it is public (its name does not start with ``_``), it is a method
the class defines (a function written in the class body, or a wrapper of one such as
``functools.lru_cache``; a static or class method; never a class, nor a callable the class
merely holds: see :func:`_is_method`), and either the method itself or the
class that defines it is decorated with :func:`expose`. Nothing else of a served object can be
called remotely: helpers stay Python-only, and so do a class's other attributes (nested
classes, types held as attributes, properties, whose getters exposure never runs).

Must not: import the server (the server imports this), do I/O, or start threads.
"""

from __future__ import annotations

import contextlib
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
    return getattr(func, _MARK, False) is True


def is_marked(method: Any) -> bool:
    """Whether ``method`` (a function, or a method bound to its object) was itself decorated
    with :func:`expose`, rather than exposed by the decorator on its class."""
    return _marked(method)


def _is_method(value: Any, klass: type, *, marked: bool) -> bool:
    """Whether ``value``, found in ``klass``'s own namespace, is a method of it clients may
    call. Nothing is evaluated to tell.

    - A static or class method (an explicit declaration: whatever callable it wraps, a
      ``functools.partial`` say) or a ``functools.partialmethod`` is.
    - A function is, when it was written in the class body (its ``__qualname__`` is inside
      the class's), and so is a wrapper of such a function (``functools.lru_cache``, a
      decorator using ``functools.wraps`` or ``update_wrapper``: its ``__wrapped__``).
    - Nothing else is, unless ``marked`` (decorated with :func:`expose` itself): not a
      class (nested, or a type held as an attribute; a nested class decorated with
      ``@expose`` exposes its own methods, not the outer class's), a property, nor a
      callable the class merely holds (a function written elsewhere, such as a dataclass
      field's default, a ``functools.partial``, a mock, a builtin such as ``print``,
      another object's bound method, an instance with ``__call__``)."""
    if isinstance(value, type | property | functools.cached_property):
        return False
    if isinstance(value, staticmethod | classmethod):
        return callable(value.__func__) and not isinstance(value.__func__, type)
    if isinstance(value, functools.partialmethod):
        return True
    if not callable(value):
        return False
    if marked:
        return True
    func = value
    with contextlib.suppress(ValueError):  # (a cycle of __wrapped__: not a method)
        func = inspect.unwrap(value)
    if not isinstance(func, types.FunctionType):
        return False
    return func.__qualname__.startswith(klass.__qualname__ + ".")


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
                if _is_method(value, klass, marked=marked) and (
                    marked or vars(klass).get(_MARK) is True
                ):
                    names.add(name)
                break
    result = frozenset(names)
    with _CACHE_LOCK:
        _CACHE[cls] = result
    return result
