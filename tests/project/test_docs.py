"""The README's example runs as written, and the demo tells its whole story."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["fortune"] == "Deadlines are a kindness to the future."
    assert namespace["items"] == ["fortune 0", "fortune 1", "fortune 2"]
    assert namespace["count"] == 3


def test_demo_runs_and_leaves_nothing_running() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ipcclient.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Get()        -> 'A closed mouth gathers no feet.'" in out.stdout
    assert "refused: NotTrustedError (request sent: False)" in out.stdout
    assert "threads left running: none" in out.stdout
