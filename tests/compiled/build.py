"""Build a copy of this repository whose hot modules are compiled by mypyc, to run the test
suite against: ``python -m tests.compiled.build [DEST]`` (default ``build/compiled``).

The copy holds the package's sources, the tests and the settings. Each compiled module's
extension sits beside its source and is imported in its place (Python looks for an
extension before a ``.py`` of the same name). Nothing here touches the repository's own
``ipcclient/``, so the pure-Python build stays what everyone imports. ``make
test-compiled`` builds the copy and runs the suite there, leaving out the tests marked
``interpreted`` (they need the interpreter itself: a trace or profile hook, or a function or
method replaced at run time, which compiled callers never look up).

Needs mypy (its mypyc), setuptools, a C compiler and Python's headers. Fails, saying which,
when a module does not compile or is not imported compiled from the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / "build" / "compiled"

MODULES = (
    "ipcclient/codec.py",
    "ipcclient/headers.py",
    "ipcclient/stream.py",
    "ipcclient/vtrace.py",
    "ipcclient/wire/events.py",
    "ipcclient/wire/frames.py",
    "ipcclient/wire/messages.py",
    "ipcclient/wire/mux.py",
    "ipcclient/wire/muxstate.py",
    "ipcclient/vc/records.py",
    "ipcclient/transport/conn.py",
    "ipcclient/transport/flow.py",
    "ipcclient/transport/inline.py",
    "ipcclient/transport/polling.py",
    "ipcclient/transport/reader.py",
    "ipcclient/transport/readrole.py",
    "ipcclient/transport/waits.py",
    "ipcclient/transport/writer.py",
    "ipcclient/client/fast.py",
    "ipcclient/client/plan.py",
    "ipcclient/client/request.py",
    "ipcclient/client/retries.py",
    "ipcclient/server/authorizer.py",
    "ipcclient/server/call.py",
    "ipcclient/server/callsecurity.py",
    "ipcclient/server/capacity.py",
    "ipcclient/server/dispatcher.py",
    "ipcclient/server/flows.py",
    "ipcclient/server/server.py",
)
"""The modules compiled: most of the per-call path of both sides. The rest of the package
stays interpreted: it runs once per VC or less (handshake, security, naming), or it is on a
call's path but cannot be compiled as it is:
``transport/liveness.py`` (``KeepaliveConfig`` checks a user's values itself, and a compiled
dataclass would refuse a wrong type with a bare TypeError first), ``context.py`` (a class
derived from ``int``), ``call.py`` and ``client/api.py`` (objects that are weakly referenced,
and methods with closures mypyc does not compile)."""

_SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.so",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "_build",
)

_CHECK = """
import importlib, sys
bad = []
for path in sys.argv[1:]:
    name = path[:-3].replace("/", ".")
    module = importlib.import_module(name)
    if not module.__file__.endswith(".so"):
        bad.append(f"{name} -> {module.__file__}")
if bad:
    sys.exit("not imported compiled: " + ", ".join(bad))
"""


def build(dest: Path) -> None:
    """Copy the repository to ``dest`` (a folder under ``build/``, emptied first), compile
    :data:`MODULES` there, and check that the copy imports each of them compiled.

    Raises:
        RuntimeError: ``dest`` is not under ``build/``, mypyc failed, or a module is imported
            from its source.
    """
    dest = dest.resolve()
    if ROOT / "build" not in dest.parents:  # (it is emptied first: never anything else)
        raise RuntimeError(f"the compiled copy must be made under {ROOT / 'build'}, not {dest}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ROOT, dest, ignore=_SKIP)
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *MODULES],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mypyc failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    checked = subprocess.run(
        [sys.executable, "-c", _CHECK, *MODULES],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    if checked.returncode != 0:
        raise RuntimeError(checked.stderr.strip())


def main(argv: list[str]) -> int:
    dest = Path(argv[0]).resolve() if argv else DEFAULT_DEST
    try:
        build(dest)
    except RuntimeError as exc:
        print(f"tests.compiled.build: {exc}", file=sys.stderr)
        return 1
    print(f"tests.compiled.build: {len(MODULES)} modules compiled in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
