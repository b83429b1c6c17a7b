"""Which object and method serve a call: dispatchers, the exposed-method lookup, arities
and the reserved ``__Signature`` method.

Owns: :class:`Dispatcher` (the protocol), :class:`LeafDispatcher`, :func:`find_method`,
:func:`arity`, :data:`SIGNATURE_METHOD` and :func:`signature`. Must not: authorize a caller
or run a method (the flow-serving code does both).
"""

from __future__ import annotations

import inspect
import threading
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


_ARITIES: dict[tuple[type, str], tuple[int, int | None]] = {}
_ARITIES_LOCK = threading.Lock()


def arity(obj: Any, name: str, method: Callable[..., Any]) -> tuple[int, int | None]:
    """(min, max) positional args a method takes after the call object (max None: *args)."""
    key = (type(obj), name)
    found = _ARITIES.get(key)
    if found is not None:
        return found
    lo, hi = 0, 0
    unbounded = False
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return (0, None)
    for p in params[1:]:  # the first is the ServerCall
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is p.empty:
                lo += 1
        elif p.kind is p.VAR_POSITIONAL:
            unbounded = True
    result = (lo, None if unbounded else hi)
    with _ARITIES_LOCK:
        _ARITIES[key] = result
    return result


SIGNATURE_METHOD = "__Signature"
"""The reserved method every server answers: what the object served at the suffix offers
(see :func:`signature`). Authorized like any other method of the object."""


def signature(obj: Any) -> list[dict[str, Any]]:
    """What ``__Signature`` answers for ``obj``: one map per exposed method (see
    :func:`~ipcclient.server.exposure.expose`), sorted by name: ``{"name": str, "args":
    [parameter names], "varargs": bool, "doc": str}`` (the parameters after the
    :class:`~ipcclient.server.call.ServerCall`; the docstring cleaned of indentation)."""
    out: list[dict[str, Any]] = []
    for name in sorted(exposed_methods(obj)):
        method = find_method(obj, name)
        args: list[str] = []
        varargs = False
        try:
            params = list(inspect.signature(method).parameters.values())[1:]
        except (TypeError, ValueError):
            params = []
            varargs = True
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                args.append(p.name)
            elif p.kind is p.VAR_POSITIONAL:
                varargs = True
        out.append(
            {"name": name, "args": args, "varargs": varargs, "doc": inspect.getdoc(method) or ""}
        )
    return out


def find_method(obj: Any, name: str) -> Callable[..., Any]:
    """The exposed method ``name`` of ``obj`` (an :class:`Exposed` stands for its object)."""
    if name not in exposed_methods(obj):
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    method = getattr(target(obj), name, None)
    if method is None or not callable(method):
        raise errors.UnknownMethodError(f"server: no method {name!r}")
    return method  # type: ignore[no-any-return]


def target(obj: Any) -> Any:
    """The object whose methods are called: the one an :class:`Exposed` wraps, else ``obj``."""
    return obj.obj if type(obj) is Exposed else obj
