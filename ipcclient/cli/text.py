"""What the ``ipc`` command prints, and the durations it reads.

Owns: writing a line to standard output or error, values as one line of JSON, durations
both ways (``15m`` to seconds, seconds to ``15m0s``), names as a tree, and :class:`Progress`
(a status line on a terminal while a command waits). Must not: call the library or decide
what a command does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ipcclient.cli.exits import CommandError
from ipcclient.security.patterns import _DEFAULT_IGNORABLE_RANGES

__all__ = [
    "Progress",
    "err",
    "human",
    "out",
    "parse_duration",
    "to_json",
    "tree_lines",
    "warnings_shown",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# Control characters other than newline and tab, shown escaped: text from a peer (a name, an
# error message) must not drive the user's terminal. Invisible characters are shown as \uXXXX
# (a character past U+FFFF as its two UTF-16 halves, \udb40\udd00), which inside a JSON string
# stands for the same character: every Default_Ignorable_Code_Point (the bidirectional
# controls, which reorder what follows them on the line; zero-width characters, variation
# selectors, the combining grapheme joiner, Hangul fillers, tags, which make text that looks
# equal but is not), U+2800 BRAILLE PATTERN BLANK, and the line and paragraph separators. A
# name this SDK makes holds none of them, but one received from a peer or loaded from an
# older principal may (see ipcclient.security.patterns).
_INVISIBLE = [c for lo, hi in _DEFAULT_IGNORABLE_RANGES for c in range(lo, hi + 1)]
_INVISIBLE += [0x2028, 0x2029, 0x2800]


def _escaped(c: int) -> str:
    if c <= 0xFFFF:
        return f"\\u{c:04x}"
    high, low = divmod(c - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (9, 10)}
_CONTROLS.update((c, _escaped(c)) for c in _INVISIBLE)


def out(text: str = "") -> None:
    """One line on standard output. Standard output closed when the command started
    (``>&-``: ``sys.stdout`` is None) is a BrokenPipeError, as when its reader went away."""
    if sys.stdout is None:
        raise BrokenPipeError("standard output is closed")
    _write(sys.stdout, text)


def err(text: str) -> None:
    """One line on standard error (nothing when it is closed, or its reader went away:
    there is nowhere to say it)."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):  # (ValueError: a closed stream)
            _write(sys.stderr, text)


def _write(stream: TextIO, text: str) -> None:
    """Write a line; what the stream's encoding cannot hold (a name with bytes that were not
    UTF-8, under a strict locale) is written as backslash escapes rather than failing."""
    line = text.translate(_CONTROLS) + "\n"
    try:
        stream.write(line)
    except UnicodeEncodeError:  # (nothing was written: the line is encoded first)
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(line.encode(encoding, "backslashreplace").decode(encoding, "replace"))
    stream.flush()


class _WarningsToStderr(logging.Handler):
    """Prints the library's warnings as ``ipc: warning: ...`` lines (the ``ipcclient`` logger
    has only a NullHandler, and the command configures no logging)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        err(f"ipc: warning: {record.getMessage()}")


@contextlib.contextmanager
def warnings_shown(logger: str) -> Iterator[None]:
    """Meanwhile, the warnings of ``logger`` (and of the loggers below it) print on
    standard error as ``ipc: warning: ...`` lines."""
    log = logging.getLogger(logger)
    shown = _WarningsToStderr()
    log.addHandler(shown)
    try:
        yield
    finally:
        log.removeHandler(shown)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)


def _plain(value: Any) -> Any:
    """``value`` with what JSON cannot hold in place made JSON: map keys that are not text,
    numbers, booleans or null (bytes as base64, others as repr), floats that are not finite
    (repr: ``"nan"``, ``"inf"``), tuples and sets as arrays. What is left over (bytes,
    objects) goes through :func:`_jsonable`. The decoder bounds how deep a value nests."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, str) or key is None or isinstance(key, int):  # (bool is an int)
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else repr(key)
    text = _jsonable(key)
    return text if isinstance(text, str) else repr(key)


def to_json(value: Any) -> str:
    """One value as one line of JSON (bytes as base64 text; values JSON cannot hold, map keys
    included, as their repr in a string)."""
    return json.dumps(_plain(value), default=_jsonable, ensure_ascii=False, allow_nan=False)


class Progress:
    """A one-line status on a terminal while a command waits (nothing when not a terminal).

    ``with Progress("calling x.Get"):`` shows ``calling x.Get ... 3 s`` after a short delay,
    redrawn twice a second; :meth:`note` adds a detail; :meth:`clear` erases the line before
    other output is printed (it comes back at the next redraw).
    """

    def __init__(self, label: str, stream: TextIO | None = None, delay: float = 1.0) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._delay = delay
        self._detail = ""
        self._lock = threading.Lock()
        self._shown = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        isatty = getattr(self._stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="ipc-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.clear()

    def note(self, detail: str) -> None:
        with self._lock:
            self._detail = detail

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
                self._shown = False

    def _run(self) -> None:
        if self._done.wait(self._delay):
            return
        while not self._done.is_set():
            with self._lock:
                elapsed = time.monotonic() - self._start
                detail = f", {self._detail}" if self._detail else ""
                self._stream.write(f"\r\x1b[K{self._label} ... {elapsed:.0f} s{detail}")
                self._stream.flush()
                self._shown = True
            self._done.wait(0.5)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` -> seconds."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise CommandError(f"bad duration {text!r} (e.g. 90s, 15m, 12h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def human(seconds: float) -> str:
    """``seconds`` as ``1d2h``, ``3h4m``, ``5m6s`` or ``7s`` (whole seconds; "?" when it is
    not a finite number of seconds >= 0)."""
    if not 0 <= seconds < float("inf"):  # (also NaN)
        return "?"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


def tree_lines(found: dict[str, list[str]]) -> Iterator[str]:
    """Names as an indented tree, each leaf followed by its servers."""
    tree: dict[str, Any] = {}
    for name in found:
        node = tree
        for comp in [c for c in name.split("/") if c] or [""]:
            node = node.setdefault(comp, {})

    def walk(node: dict[str, Any], prefix: str, path: str) -> Iterator[str]:
        items = sorted(node.items())
        for i, (comp, child) in enumerate(items):
            last = i == len(items) - 1
            full = f"{path}/{comp}" if path else comp
            servers = found.get(full, [])
            label = comp or "(root)"
            tail = "  " + ", ".join(servers) if servers else ""
            yield f"{prefix}{'└── ' if last else '├── '}{label}{tail}"
            yield from walk(child, prefix + ("    " if last else "│   "), full)

    yield from walk(tree, "", "")
