"""Build hook: ipcclient is pure Python unless the build is asked to compile.

``IPCCLIENT_COMPILE=1 pip install .`` (or ``pip wheel``) compiles the modules listed in
``ipcclient/compiled.py`` with mypyc. The build then needs mypy and the package's
dependencies (fetched as build requirements; mypy is not a dependency of the installed
package), a C compiler and Python's headers, and it fails, saying why, when one is missing:
a build that was asked to compile never quietly gives a pure one. Every other setting lives
in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
FLAG = "IPCCLIENT_COMPILE"
MYPY = "mypy>=1.10"
TYPED_DEPENDENCIES = ["cbor2>=6.0,<7", "cryptography>=47"]
"""The package's dependencies (as in ``pyproject.toml``): mypyc reads their types."""


def compiled_extensions() -> tuple[list[object], list[str]]:
    """The extension modules and extra build requirements of this build."""
    wanted = os.environ.get(FLAG, "").strip()
    if wanted in ("", "0"):
        return [], []
    if wanted != "1":
        sys.exit(f"setup.py: {FLAG} must be 0 or 1, not {wanted!r}")
    modules = runpy.run_path(str(HERE / "ipcclient" / "compiled.py"))["MODULES"]
    if any(cmd in sys.argv for cmd in ("editable_wheel", "develop")):
        # The extensions would land in the source tree and hide later edits of its sources.
        sys.exit(f"setup.py: {FLAG}=1 cannot make an editable install; install without -e")
    try:
        from mypyc.build import mypycify
    except ImportError:
        # Asking which requirements the build has (pip's first step): name mypy, and pip
        # installs it before building. Any other command without it: say so.
        if not set(sys.argv[1:]) & {"egg_info", "dist_info", "sdist"}:
            sys.exit(f"setup.py: {FLAG}=1 needs mypy ({MYPY}) installed where the build runs")
        return [], [MYPY, *TYPED_DEPENDENCIES]
    paths = [name.replace(".", "/") + ".py" for name in modules]
    return mypycify(paths, group_name="ipcclient"), [MYPY, *TYPED_DEPENDENCIES]


extensions, requires = compiled_extensions()
setup(ext_modules=extensions, setup_requires=requires)
