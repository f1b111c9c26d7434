"""The type checker, as part of the test command: mypy over the whole project, stricter on `workflows/`,
`activities/` and `streams/` (`[tool.mypy]` in pyproject.toml). It must report nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_mypy_finds_no_error() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
