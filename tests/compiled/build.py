"""Build the compiled wheel and a copy of this repository that runs the test suite against it:
``python -m tests.compiled.build [DEST]`` (default ``build/compiled``).

The copy holds the tests and the settings. Its ``ipcclient/`` is not the repository's: it is
the content of the wheel that ``IPCCLIENT_COMPILE=1 pip wheel .`` builds (``setup.py``, the
modules of ``ipcclient/compiled.py``), unpacked, so the suite runs against exactly what a
user who asks for the compiled build installs. Each compiled module's extension sits beside
its source and is imported in its place (Python looks for an extension before a ``.py`` of
the same name). Nothing here touches the repository's own ``ipcclient/``, so the pure-Python
build stays what everyone imports. ``make test-compiled`` builds the copy and runs the suite
there, leaving out the tests marked ``interpreted`` (they need the interpreter itself: a trace
or profile hook, or a function or method replaced at run time, which compiled callers never
look up).

Needs pip, mypy (its mypyc), setuptools, a C compiler and Python's headers where it runs (it
builds without isolation, so without a network). Fails, saying which, when the wheel does
not build or a module is not imported compiled from the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / "build" / "compiled"

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
import sys
from ipcclient import compiled
missing = sorted(set(compiled.MODULES) - set(compiled.compiled_modules()))
if missing:
    sys.exit("not imported compiled: " + ", ".join(missing))
print(len(compiled.MODULES))
"""


BUILD_TIMEOUT = 900.0
"""Seconds one step (the wheel's build, the check) may take; it takes about a minute."""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(args[:4])} ... took over {BUILD_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        out = "\n".join(
            line
            for line in (done.stdout + done.stderr).splitlines()
            if not line.startswith("WARNING: Location")  # (pip's notes on missing mirrors)
        )
        raise RuntimeError(f"{' '.join(args[:4])} ... failed:\n{out[-6000:]}")
    return done.stdout


def build(dest: Path) -> int:
    """Copy the repository to ``dest`` (a folder under ``build/``, emptied first), build the
    compiled wheel there, put the wheel's content in place of the copy's ``ipcclient/``, and
    check that the copy imports every module of ``ipcclient.compiled.MODULES`` compiled.

    Returns:
        How many modules are compiled.

    Raises:
        RuntimeError: ``dest`` is not under ``build/``, the wheel did not build, or a module
            is imported from its source.
    """
    dest = dest.resolve()
    if ROOT / "build" not in dest.parents:  # (it is emptied first: never anything else)
        raise RuntimeError(f"the compiled copy must be made under {ROOT / 'build'}, not {dest}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ROOT, dest, ignore=_SKIP)
    wheels = dest / "dist"
    env = {**os.environ, "IPCCLIENT_COMPILE": "1"}
    pip = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
    _run([*pip, "-w", str(wheels), "."], cwd=dest, env=env)
    (wheel,) = wheels.glob("ipcclient-*.whl")
    for made in ("ipcclient", "build", "ipcclient.egg-info"):
        shutil.rmtree(dest / made, ignore_errors=True)
    with zipfile.ZipFile(wheel) as unpacked:
        unpacked.extractall(dest)
    return int(_run([sys.executable, "-c", _CHECK], cwd=dest).strip())


def main(argv: list[str]) -> int:
    dest = Path(argv[0]).resolve() if argv else DEFAULT_DEST
    try:
        count = build(dest)
    except RuntimeError as exc:
        print(f"tests.compiled.build: {exc}", file=sys.stderr)
        return 1
    print(f"tests.compiled.build: {count} modules compiled in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
