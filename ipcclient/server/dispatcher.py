"""Which object and method serve a call: dispatchers, the exposed-method lookup, arities
and the reserved ``__Signature`` method.

Owns: :class:`Dispatcher` (the protocol), :class:`LeafDispatcher`, :func:`find_method`,
:func:`arity` and :func:`parameters` (what args a method takes), :data:`SIGNATURE_METHOD`
and :func:`signature`. Must not: authorize a caller or run a method (the flow-serving code
does both).
"""

from __future__ import annotations

import inspect
import logging
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ipcclient import errors
from ipcclient.server.authorizer import Authorizer
from ipcclient.server.exposure import Exposed, exposed_methods

__all__ = [
    "SIGNATURE_METHOD",
    "Dispatcher",
    "LeafDispatcher",
    "arity",
    "find_method",
    "parameters",
    "signature",
    "target",
]


class Dispatcher(Protocol):
    """Maps a suffix to the object serving it and its authorizer (None: the default)."""

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        """Raise UnknownSuffixError when nothing is served at ``suffix``."""
        ...


class LeafDispatcher:
    """Serves one object at the empty suffix only."""

    def __init__(self, obj: Any, authorizer: Authorizer | None = None) -> None:
        self.obj = obj
        self.authorizer = authorizer

    def lookup(self, suffix: str) -> tuple[Any, Authorizer | None]:
        if suffix:
            raise errors.UnknownSuffixError(f"server: nothing is served at suffix {suffix!r}")
        return self.obj, self.authorizer


_ARITIES: weakref.WeakKeyDictionary[Callable[..., Any], tuple[int, int | None]] = (
    weakref.WeakKeyDictionary()
)
"""Arities found, per plain function (a static method, or a function an object holds, such
as a namespace's or a module's): never per type or name, which objects of one type need not
share. Kept only while the function lives."""
_BOUND_ARITIES: weakref.WeakKeyDictionary[Callable[..., Any], tuple[int, int | None]] = (
    weakref.WeakKeyDictionary()
)
"""The same, per function of a bound method (its ``self``, or ``cls``, not counted)."""
_ARITIES_LOCK = threading.Lock()


def arity(obj: Any, name: str, method: Callable[..., Any]) -> tuple[int, int | None]:
    """(min, max) positional args a method takes after the call object (max None: *args).

    Raises:
        BadArgError: the method can never be called as ``method(call, *args)`` (see
            :func:`parameters`).
    """
    bound = type(method) is types.MethodType
    func = method.__func__ if bound else method  # type: ignore[attr-defined]
    cache = _BOUND_ARITIES if bound else _ARITIES
    if type(func) is types.FunctionType:
        found = cache.get(func)
        if found is not None:
            return found
    shape = parameters(name, method)
    if shape is None:
        return (0, None)
    args, lo, varargs = shape
    result = (lo, None if varargs else len(args))
    if type(func) is types.FunctionType:
        with _ARITIES_LOCK:
            cache[func] = result
    return result


def parameters(name: str, method: Callable[..., Any]) -> tuple[list[str], int, bool] | None:
    """What a client passes to ``method``: the names of its positional parameters after the
    one for the :class:`~ipcclient.server.call.ServerCall`, how many of them are required,
    and whether it takes ``*args`` (a method declared ``(self, *args)``, or wrapped by a
    decorator taking ``(*args, **kwargs)``, takes the call and any args in its ``*args``).
    None when Python cannot tell (some built-ins): any number of args.

    Raises:
        BadArgError: ``method(call, *args)`` can never work: it takes no parameter for the
            call, or it has a keyword-only parameter without a default (clients pass args by
            position only).
    """
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind in (params[0].KEYWORD_ONLY, params[0].VAR_KEYWORD):
        raise errors.BadArgError(
            f"server: method {name} cannot be served: it takes no parameter for the call "
            f"(declare it as {name}(self, call, ...))"
        )
    args: list[str] = []
    lo = 0
    varargs = params[0].kind is params[0].VAR_POSITIONAL  # (the call is in its *args)
    for p in params[1:]:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append(p.name)
            if p.default is p.empty:
                lo += 1
        elif p.kind is p.VAR_POSITIONAL:
            varargs = True
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise errors.BadArgError(
                f"server: method {name} cannot be served: its keyword-only parameter "
                f"{p.name!r} has no default (clients pass arguments by position only)"
            )
    return args, lo, varargs


SIGNATURE_METHOD = "__Signature"
"""The reserved method every server answers: what the object served at the suffix offers
(see :func:`signature`). Authorized like any other method of the object."""


def signature(obj: Any) -> list[dict[str, Any]]:
    """What ``__Signature`` answers for ``obj``: one map per exposed method (see
    :func:`~ipcclient.server.exposure.expose`), sorted by name: ``{"name": str, "args":
    [parameter names], "varargs": bool, "doc": str}`` (the parameters after the
    :class:`~ipcclient.server.call.ServerCall`; the docstring cleaned of indentation). A
    method that cannot be called (see :func:`parameters`) is left out."""
    out: list[dict[str, Any]] = []
    for name in sorted(exposed_methods(obj)):
        try:
            method = find_method(obj, name)
            shape = parameters(name, method)
        except errors.UnknownMethodError:  # (the object's own attribute: not a method)
            continue
        except errors.BadArgError:  # (it cannot be called: serve() refuses it, calls get BadArg)
            continue
        args, varargs = ([], True) if shape is None else (shape[0], shape[2])
        out.append(
            {"name": name, "args": args, "varargs": varargs, "doc": inspect.getdoc(method) or ""}
        )
    return out


log = logging.getLogger("ipcclient.server")

_UNEXPOSED_TYPES_SEEN: set[type] = set()
"""Types of objects a dispatcher returned that expose no method, already warned about (at
most ``_MAX_UNEXPOSED_WARNINGS``)."""
_MAX_UNEXPOSED_WARNINGS = 256


def find_method(obj: Any, name: str) -> Callable[..., Any]:
    """The exposed method ``name`` of ``obj`` (an :class:`Exposed` stands for its object).
    An object that exposes no method at all (a dispatcher's lookup returned it; ``serve``
    refuses one) is logged once per type: every call to it fails."""
    exposed = exposed_methods(obj)
    if name not in exposed:
        if not exposed:
            cls = type(obj)
            if (
                cls not in _UNEXPOSED_TYPES_SEEN
                and len(_UNEXPOSED_TYPES_SEEN) < _MAX_UNEXPOSED_WARNINGS
            ):
                _UNEXPOSED_TYPES_SEEN.add(cls)
                log.warning(
                    "server: a dispatcher returned a %s.%s, which exposes no method (decorate "
                    "its class with @expose, or return Exposed(obj, [names])): every call to "
                    "it fails with UnknownMethod",
                    cls.__module__,
                    cls.__qualname__,
                )
            raise errors.UnknownMethodError(
                f"server: no method {name!r} (the object served there exposes none)"
            )
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    if type(obj) is Exposed:  # (an explicit list: the server's owner named the attributes)
        method = getattr(obj.obj, name, None)
    else:
        # Bound from the class that defines it, as exposure was decided: never whatever the
        # object itself holds under that name (its ``__dict__``, ``__getattribute__`` or
        # ``__getattr__`` are not asked), so exposure and dispatch cannot disagree.
        method = None
        cls = type(obj)
        for klass in cls.__mro__:
            if name in vars(klass):
                attr = vars(klass)[name]
                bind = getattr(type(attr), "__get__", None)
                try:
                    method = attr if bind is None else bind(attr, obj, cls)
                except Exception as exc:  # (a descriptor that computes it, and fails)
                    raise errors.UnknownMethodError(
                        f"server: method {name!r} could not be looked up: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                break
    if method is None or not callable(method):
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    return method  # type: ignore[no-any-return]


def target(obj: Any) -> Any:
    """The object whose methods are called: the one an :class:`Exposed` wraps, else ``obj``."""
    return obj.obj if type(obj) is Exposed else obj
