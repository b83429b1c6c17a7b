"""The compiled build a user can ask for (``IPCCLIENT_COMPILE=1 pip install ...``): the list of
compiled modules, how an install tells which build it is, and what ``setup.py`` does when the
build is asked to compile and cannot.

The run against the compiled build (``make test-compiled``) sets ``IPCCLIENT_TEST_COMPILED=1``:
there every listed module must be imported compiled, and in the pure run none may be.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ipcclient import cli, compiled

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_this_run_imports_the_build_it_means_to_test() -> None:
    expected = compiled.MODULES if os.environ.get("IPCCLIENT_TEST_COMPILED") == "1" else ()
    assert compiled.compiled_modules() == expected


def test_every_listed_module_exists_once_with_its_source() -> None:
    assert len(set(compiled.MODULES)) == len(compiled.MODULES)
    for name in compiled.MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name


def test_ipc_version_says_which_build(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(["--version"])
    assert ended.value.code == 0
    line = capsys.readouterr().out.strip()
    count = len(compiled.compiled_modules())
    build = f"compiled: {count} of {len(compiled.MODULES)} modules" if count else "pure Python"
    assert re.fullmatch(rf"ipcclient \S+ \(Python 3\.\d+\.\d+\S*, {build}\)", line), line


def _setup(tmp_path: Path, code: str, flag: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in the repository, with IPCCLIENT_COMPILE=flag and
    a mypyc that cannot be imported (as where mypy is not installed)."""
    fake = tmp_path / "no_mypy"
    (fake / "mypyc").mkdir(parents=True, exist_ok=True)
    (fake / "mypyc" / "__init__.py").write_text("raise ImportError('no mypyc here')\n")
    env = {**os.environ, "IPCCLIENT_COMPILE": flag, "PYTHONPATH": str(fake)}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


REQUIRES = "from setuptools import build_meta; print(build_meta.get_requires_for_build_wheel())"


def test_asking_to_compile_adds_mypy_and_the_typed_dependencies_to_the_build(
    tmp_path: Path,
) -> None:
    asked = _setup(tmp_path, REQUIRES, "1")
    assert asked.returncode == 0, asked.stderr
    assert "'mypy>=1.10'" in asked.stdout
    meta = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r"^dependencies = \[(.*?)\]", meta, re.S | re.M)
    assert declared is not None
    for dependency in re.findall(r'"([^"]+)"', declared.group(1)):
        assert repr(dependency) in asked.stdout, dependency
    pure = _setup(tmp_path, REQUIRES, "0")
    assert pure.returncode == 0, pure.stderr
    assert "mypy" not in pure.stdout


def test_a_build_asked_to_compile_without_mypy_fails_saying_so(tmp_path: Path) -> None:
    run = "import sys, runpy; sys.argv = ['setup.py', 'build_ext']; runpy.run_path('setup.py')"
    done = _setup(tmp_path, run, "1")
    assert done.returncode != 0
    assert "IPCCLIENT_COMPILE=1 needs mypy (mypy>=1.10) installed where the build runs" in (
        done.stderr
    )


def test_a_flag_other_than_0_or_1_is_refused(tmp_path: Path) -> None:
    done = _setup(tmp_path, "import runpy; runpy.run_path('setup.py')", "yes")
    assert done.returncode != 0
    assert "IPCCLIENT_COMPILE must be 0 or 1, not 'yes'" in done.stderr


def test_an_editable_install_asked_to_compile_is_refused(tmp_path: Path) -> None:
    run = "import sys, runpy; sys.argv = ['setup.py', 'editable_wheel']; runpy.run_path('setup.py')"
    done = _setup(tmp_path, run, "1")
    assert done.returncode != 0
    assert "IPCCLIENT_COMPILE=1 cannot make an editable install" in done.stderr
