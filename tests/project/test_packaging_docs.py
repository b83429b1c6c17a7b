"""What a user meets before any code runs: the API reference lists every public name, module
docstrings carry no private vocabulary, and the package metadata, license and sdist are
complete."""

from __future__ import annotations

import re
from pathlib import Path

import ipcclient

ROOT = Path(__file__).resolve().parents[2]


def test_api_reference_lists_every_public_name() -> None:
    api = (ROOT / "docs" / "api.rst").read_text()
    missing = [
        name
        for name in ipcclient.__all__
        if name != "__version__" and f"ipcclient.{name}" not in api
    ]
    assert missing == []


def test_module_docstrings_use_no_private_vocabulary() -> None:
    words = re.compile(r"\bfloor \d|\bthe seed\b|\bshort way|DESIGN\.md|\bissue \d", re.I)
    found = []
    for path in sorted((ROOT / "ipcclient").rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if words.search(line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert found == []


def test_license_and_metadata() -> None:
    assert (
        "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text()
    )
    meta = (ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in meta and 'license-files = ["LICENSE"]' in meta
    assert 'requires-python = ">=3.10"' in meta
    for minor in (10, 11, 12, 13):
        assert f'"Programming Language :: Python :: 3.{minor}"' in meta
    assert '"Operating System :: POSIX :: Linux"' in meta
    assert 'ipc = "ipcclient.cli:console_main"' in meta


def test_sdist_carries_the_whole_test_suite() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    for line in ("graft tests", "graft examples", "graft docs", "include LICENSE README.md"):
        assert any(m.startswith(line) for m in manifest), line
    # What the tests read beside themselves is grafted with them.
    assert (ROOT / "tests" / "conftest.py").is_file()
    assert (ROOT / "examples" / "tutorial.sh").is_file()
